//! Snapshots end to end on `redoubt lab` (a console and three agents on loopback; group erp:
//! prod-a → dr-b, dr-c): `redoubt snapshot create|list|delete` through the console, the
//! snapshot exports read and written by qemu-io, the snapshot container usage in
//! `status --format json`, bad input refused with exit 2, and a killed agent that comes back
//! with its snapshots.

mod common;

use common::lab::{wait_until, Lab};
use redoubt_testkit::NbdClient;
use serde_json::Value;

fn status(lab: &Lab) -> Value {
    serde_json::from_str(&lab.ok(&["status", "erp", "--format", "json"])).unwrap()
}

fn caught_up(lab: &Lab, server: &str) -> bool {
    let output = lab.redoubt(&["status", "erp", "--format", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    status["groups"][0]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|target| target["server"] == server)
        .is_some_and(|target| {
            // The initial full sync done too: while it runs, a snapshot keeps a pre-image of
            // every region it rewrites, more than this lab's snapshot container holds.
            target["applied_seq"].as_u64().is_some()
                && target["applied_seq"] == target["journal_seq"]
                && target["super_transaction_pct"].as_f64() >= Some(100.0)
        })
}

fn export_of(snapshot: &Value, volume: &str) -> String {
    snapshot["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|export| export["volume"] == volume)
        .and_then(|export| export["export"].as_str())
        .unwrap()
        .to_string()
}

fn qemu_io(args: &[&str]) -> std::process::Output {
    redoubt_testkit::peers::run("qemu-io", args)
}

fn write_production(address: &str, byte: u8) {
    let mut client = NbdClient::connect(address, "lv_data01").unwrap();
    assert_eq!(client.write(0, &vec![byte; 1 << 20], false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
}

#[test]
fn snapshot_create_list_delete_through_the_console_with_exports_and_a_restart() {
    let lab = Lab::up();
    let export = status(&lab)["groups"][0]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "lv_data01")
        .and_then(|volume| volume["export"].as_str())
        .unwrap()
        .to_string();
    let address = export
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv_data01")
        .to_string();
    write_production(&address, 0x11);
    wait_until("dr-b applied the first write", || caught_up(&lab, "dr-b"));

    let created: Value = serde_json::from_str(&lab.ok(&[
        "snapshot", "create", "erp", "--server", "dr-b", "--at", "latest", "--name", "before",
        "--format", "json",
    ]))
    .unwrap();
    assert_eq!(created["name"], "before");
    assert_eq!(created["server"], "dr-b");
    let point = created["point"]["seq"].as_u64().unwrap();
    assert!(point > 0);
    let dev: Value = serde_json::from_str(&lab.ok(&[
        "snapshot",
        "create",
        "erp",
        "-s",
        "dr-b",
        "--at",
        &format!("seq:{point}"),
        "--writable",
        "--name",
        "dev",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(dev["writable"], true);

    // Production moves on; the snapshots stay at their point.
    write_production(&address, 0x22);
    wait_until("dr-b applied the second write", || caught_up(&lab, "dr-b"));
    let before_uri = export_of(&created, "lv_data01");
    let read = qemu_io(&["-r", "-f", "raw", "-c", "read -P 0x11 0 1M", &before_uri]);
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("read 1048576/1048576"),
        "{read:?}"
    );
    // The writable one takes writes; the read-only one refuses them.
    let dev_uri = export_of(&dev, "lv_data01");
    let wrote = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x33 0 64k",
        "-c",
        "flush",
        &dev_uri,
    ]);
    assert!(wrote.status.success(), "{wrote:?}");
    let read = qemu_io(&["-r", "-f", "raw", "-c", "read -P 0x33 0 64k", &dev_uri]);
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("read 65536/65536"),
        "{read:?}"
    );
    let refused = qemu_io(&["-f", "raw", "-c", "write -P 0x44 0 4k", &before_uri]);
    let refused_text = format!("{refused:?}");
    assert!(
        refused_text.contains("ermission") || refused_text.contains("ead-only"),
        "{refused_text}"
    );

    // Usage is reported: per server in the list, per target in status.
    let list: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "list", "erp", "--format", "json"])).unwrap();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
    let usage = status(&lab)["groups"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["server"] == "dr-b")
        .and_then(|target| target["snapshot_usage_pct"].as_f64())
        .unwrap();
    assert!(usage > 0.0, "snapshot_usage_pct of dr-b: {usage}");

    // Bad input: exit 2, nothing created.
    for args in [
        vec![
            "snapshot",
            "create",
            "erp",
            "-s",
            "dr-b",
            "--at",
            "yesterday",
        ],
        vec![
            "snapshot",
            "create",
            "erp",
            "-s",
            "dr-b",
            "--at",
            "seq:999999999",
        ],
        vec![
            "snapshot", "create", "erp", "-s", "prod-a", "--at", "latest",
        ],
        vec![
            "snapshot", "create", "erp", "-s", "dr-b", "--at", "latest", "--name", "Bad/x",
        ],
        vec![
            "snapshot", "create", "erp", "-s", "dr-b", "--at", "latest", "--name", "before",
        ],
    ] {
        let output = lab.redoubt(&args);
        let code = output.status.code();
        assert!(
            matches!(code, Some(2) | Some(3)),
            "{args:?} exited {code:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let list: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "list", "erp", "--format", "json"])).unwrap();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);

    // A killed agent comes back with its snapshots (new export port, same data).
    lab.kill_and_restart_agent("dr-b");
    let mut restored = Value::Null;
    wait_until("dr-b lists its snapshots again", || {
        let output = lab.redoubt(&["snapshot", "list", "erp", "--format", "json"]);
        restored = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        restored["snapshots"]
            .as_array()
            .is_some_and(|list| list.len() == 2)
    });
    let dev_again = restored["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|snapshot| snapshot["name"] == "dev")
        .unwrap()
        .clone();
    let dev_uri = export_of(&dev_again, "lv_data01");
    let read = qemu_io(&[
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x33 0 64k",
        "-c",
        "read -P 0x11 64k 960k",
        &dev_uri,
    ]);
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("read 983040/983040"),
        "{read:?}"
    );

    // Deleted: its export goes, and its writes with it.
    lab.ok(&["snapshot", "delete", "erp", "dev", "--server", "dr-b"]);
    let gone = qemu_io(&["-r", "-f", "raw", "-c", "read 0 4k", &dev_uri]);
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("read 4096/4096"),
        "{gone:?}"
    );
    let list: Value =
        serde_json::from_str(&lab.ok(&["snapshot", "list", "erp", "--format", "json"])).unwrap();
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|snapshot| snapshot["name"].as_str())
        .collect();
    assert_eq!(names, vec!["before"]);
    let missing = lab.redoubt(&["snapshot", "delete", "erp", "dev", "--server", "dr-b"]);
    assert!(!missing.status.success());
}
