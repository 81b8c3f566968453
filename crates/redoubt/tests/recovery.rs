//! Issue #7 end to end on the lab (console + prod-a, dr-b, dr-c with mutual TLS), through
//! the CLI only: a marker and a rollback to it, resume; an unplanned failover after kill -9
//! of production (the promoted server serves every replicated write and takes new ones, the
//! other recovery server follows it); failback with only the delta sent; then a planned
//! failover and failback that lose nothing. At each transition, status (JSON, text, XML valid
//! against docs/status.xsd) names the acting production, its exports and followers, and what
//! became of the old production.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redoubt_testkit::NbdClient;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn redoubt(dir: &Path, args: &[&str]) -> std::process::Output {
    let console = std::fs::read_to_string(dir.join("lab.env"))
        .ok()
        .and_then(|env| {
            env.lines()
                .find_map(|line| line.strip_prefix("REDOUBT_CONSOLE=").map(str::to_string))
        })
        .unwrap_or_default();
    Command::new(binary())
        .args(args)
        .env("REDOUBT_CONSOLE", console)
        .env("REDOUBT_TOKEN_FILE", dir.join("console/token"))
        .env("REDOUBT_CA_FILE", dir.join("tls/ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(output: std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "failed ({:?}): {text}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

fn json(output: std::process::Output) -> Value {
    let text = ok(output);
    serde_json::from_str(text.trim()).unwrap_or_else(|error| panic!("{error}: {text}"))
}

struct Lab<'a>(&'a Path);

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["lab", "down", "--dir"])
            .arg(self.0)
            .output();
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `host:port` of a server's agent or NBD listener, from the lab's configuration.
fn lab_address(dir: &Path, server: &str, key: &str) -> String {
    let config = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    let section = config
        .split("[[server]]")
        .find(|section| section.contains(&format!("name = \"{server}\"")))
        .unwrap();
    section
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = \"")))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

fn replica(dir: &Path, server: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!("data/{server}/groups/erp/replication/lv_data01"))).unwrap()
}

fn write(address: &str, offset: usize, byte: u8) {
    let mut client = NbdClient::connect(address, "lv_data01").unwrap();
    assert_eq!(
        client
            .write(offset as u64, &vec![byte; MIB], false)
            .unwrap(),
        0
    );
    assert_eq!(client.flush().unwrap(), 0);
}

fn read(address: &str, offset: usize) -> Vec<u8> {
    let mut client = NbdClient::connect(address, "lv_data01").unwrap();
    client.read(offset as u64, MIB as u32).unwrap().unwrap()
}

/// Connects to the NBD export of `volume` that a snapshot or test failover answer lists.
fn connect_export(answer: &Value, volume: &str) -> NbdClient {
    let export = answer["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|export| export["volume"] == volume)
        .unwrap_or_else(|| panic!("no export of {volume}: {answer}"))["export"]
        .as_str()
        .unwrap()
        .to_string();
    let (address, name) = export.trim_start_matches("nbd://").split_once('/').unwrap();
    NbdClient::connect(address, name).unwrap()
}

fn server_points<'a>(points: &'a Value, server: &str) -> &'a Value {
    points["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["server"] == server)
        .unwrap()
}

fn kill_agent(dir: &Path, name: &str) {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("pids/{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: a pid this test's lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    while unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_agent(dir: &Path, name: &str) -> std::process::Child {
    let listen = lab_address(dir, name, "address");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(format!("logs/{name}.log")))
        .unwrap();
    let child = Command::new(binary())
        .args(["agent", "--name", name, "--listen", &listen, "--state-dir"])
        .arg(dir.join(format!("agents/{name}")))
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(dir.join(format!("pids/{name}.pid")), child.id().to_string()).unwrap();
    wait_until("the restarted agent listens", || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    child
}

/// The group's entry of `redoubt status --format json`.
fn group_status(dir: &Path) -> Value {
    json(redoubt(dir, &["status", "erp", "--format", "json"]))["groups"][0].clone()
}

/// Waits until status names `production` as the acting production with `followers` as its
/// targets, every one of them replicating (status 30); returns that group status.
fn wait_for_status(dir: &Path, production: &str, followers: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let group = group_status(dir);
        let servers: Vec<&str> = group["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|target| target["server"].as_str())
            .collect();
        let replicating = group["targets"]
            .as_array()
            .is_some_and(|targets| targets.iter().all(|target| target["status_code"] == 30));
        if group["production"] == production && servers == followers && replicating {
            return group;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {production} -> {followers:?} replicating: {group}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Text and XML status agree with the JSON: the acting production, its direction, and an XML
/// document valid against docs/status.xsd with every follower replicating (status 30).
fn check_text_and_xml_status(dir: &Path, group: &Value) {
    let text = ok(redoubt(dir, &["status", "erp"]));
    let production = group["production"].as_str().unwrap();
    assert!(
        text.contains(&format!("  production {production}")),
        "{text}"
    );
    assert!(
        text.contains(group["direction"].as_str().unwrap()),
        "{text}"
    );
    assert!(!text.contains("null"), "{text}");
    let xml = ok(redoubt(dir, &["status", "erp", "--format", "xml"]));
    common::status_xml::assert_valid(&xml, dir);
    assert!(
        xml.contains(&format!("<production>{production}</production>")),
        "{xml}"
    );
    let followers = group["targets"].as_array().unwrap().len();
    assert_eq!(
        xml.matches("<status>30</status>").count(),
        followers,
        "{xml}"
    );
}

#[test]
fn markers_rollback_failover_and_failback_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lab");
    ok(Command::new(binary())
        .args(["lab", "up", "--dir"])
        .arg(&dir)
        .output()
        .unwrap());
    let _lab = Lab(&dir);
    let prod_a = lab_address(&dir, "prod-a", "nbd_listen");
    let dr_b = lab_address(&dir, "dr-b", "nbd_listen");

    // History: 0x11 everywhere in the first 4 MiB, a marker, then 0x22 in the first MiB.
    for index in 0..4 {
        write(&prod_a, index * MIB, 0x11);
    }
    let marker = json(redoubt(
        &dir,
        &["mark", "erp", "before-upgrade", "--format", "json"],
    ));
    let marker_seq = marker["seq"].as_u64().unwrap();
    write(&prod_a, 0, 0x22);
    let caught_up = |server: &str| {
        let points = json(redoubt(&dir, &["points", "erp", "--format", "json"]));
        let production = server_points(&points, "prod-a")["last_seq"]
            .as_u64()
            .unwrap();
        server_points(&points, server)["applied_seq"]
            .as_u64()
            .unwrap()
            >= production
    };
    wait_until("dr-b and dr-c applied everything", || {
        caught_up("dr-b") && caught_up("dr-c")
    });
    let points = json(redoubt(&dir, &["points", "erp", "--format", "json"]));
    assert!(
        points["markers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "before-upgrade" && m["seq"] == marker_seq),
        "the marker is listed: {points}"
    );
    // The initial sync's seqs are listed as no restore point; the replica is consistent after.
    let dr_b_points = server_points(&points, "dr-b");
    let initial_sync = &dr_b_points["unrestorable"][0];
    assert_eq!(initial_sync["begin_seq"], 1, "{dr_b_points}");
    // dr-b received seq 1: its empty image before it was production's too.
    assert_eq!(dr_b_points["consistent_from_seq"], 0, "{dr_b_points}");
    let sync_end = initial_sync["end_seq"].as_u64().unwrap();
    assert!(sync_end < marker_seq, "{dr_b_points}");
    let text_points = ok(redoubt(&dir, &["points", "erp"]));
    assert!(
        text_points.contains(&format!(
            "not restorable: seq 1..={} (super transaction)",
            sync_end - 1
        )),
        "{text_points}"
    );

    // Rollback needs a confirmation; with --yes, dr-b is production as of the marker.
    let refused = redoubt(
        &dir,
        &[
            "rollback",
            "erp",
            "-s",
            "dr-b",
            "--to",
            "mark:before-upgrade",
        ],
    );
    assert_eq!(refused.status.code(), Some(3), "no --yes, no rollback");
    ok(redoubt(
        &dir,
        &[
            "rollback",
            "erp",
            "-s",
            "dr-b",
            "--to",
            "mark:before-upgrade",
            "--yes",
        ],
    ));
    assert!(replica(&dir, "dr-b")[..MIB].iter().all(|b| *b == 0x11));
    let points = json(redoubt(&dir, &["points", "erp", "--format", "json"]));
    assert_eq!(server_points(&points, "dr-b")["paused"], true);
    let text = ok(redoubt(&dir, &["status", "erp"]));
    assert!(
        text.contains("apply PAUSED by a rollback") && text.contains("redoubt resume erp -s dr-b"),
        "status shows the pause: {text}"
    );
    assert_eq!(server_points(&points, "dr-b")["applied_seq"], marker_seq);
    ok(redoubt(&dir, &["resume", "erp", "-s", "dr-b"]));
    wait_until("dr-b applies again", || {
        replica(&dir, "dr-b")[..MIB].iter().all(|b| *b == 0x22)
    });

    // A test failover: dr-c's latest point as writable snapshots, while production and
    // replication go on; the test's writes never reach the replica and vanish on delete.
    let test = json(redoubt(
        &dir,
        &[
            "failover", "erp", "-s", "dr-c", "--test", "--format", "json",
        ],
    ));
    let snapshot_name = test["name"].as_str().unwrap().to_string();
    let status = group_status(&dir);
    assert_eq!(
        status["production"], "prod-a",
        "a test failover moves nothing: {status}"
    );
    assert_eq!(status["failover"], Value::Null, "{status}");
    let mut snapshot = connect_export(&test, "lv_data01");
    assert!(snapshot
        .read(0, MIB as u32)
        .unwrap()
        .unwrap()
        .iter()
        .all(|b| *b == 0x22));
    assert_eq!(snapshot.write(0, &vec![0x66; MIB], false).unwrap(), 0);
    assert_eq!(snapshot.flush().unwrap(), 0);
    assert!(snapshot
        .read(0, MIB as u32)
        .unwrap()
        .unwrap()
        .iter()
        .all(|b| *b == 0x66));
    drop(snapshot);
    write(&prod_a, MIB, 0x12);
    wait_until("dr-c keeps applying during the test", || {
        replica(&dir, "dr-c")[MIB..2 * MIB]
            .iter()
            .all(|b| *b == 0x12)
    });
    assert!(replica(&dir, "dr-c")[..MIB].iter().all(|b| *b == 0x22));
    ok(redoubt(
        &dir,
        &["snapshot", "delete", "erp", &snapshot_name, "-s", "dr-c"],
    ));
    wait_until("dr-b has everything before production goes", || {
        caught_up("dr-b")
    });

    // Unplanned failover: production is killed; dr-b serves every replicated write.
    kill_agent(&dir, "prod-a");
    let failover = json(redoubt(
        &dir,
        &["failover", "erp", "-s", "dr-b", "--yes", "--format", "json"],
    ));
    assert_eq!(
        failover["context"]["acting_production"], "dr-b",
        "{failover}"
    );
    assert_eq!(failover["context"]["kind"], "unplanned");
    // Status follows: dr-b serves, with its exports; dr-c follows it; prod-a is unreachable.
    let status = wait_for_status(&dir, "dr-b", &["dr-c"]);
    assert_eq!(status["configured_production"], "prod-a", "{status}");
    assert_eq!(status["direction"], "dr-b -> dr-c", "{status}");
    assert_eq!(status["data_path"], "loaded", "{status}");
    assert_eq!(status["failover"]["state"], "before_commit", "{status}");
    assert_eq!(status["failover"]["kind"], "unplanned", "{status}");
    assert_eq!(
        status["failover"]["old_production"],
        serde_json::json!({"server": "prod-a", "state": "unreachable"}),
        "{status}"
    );
    let export = status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "lv_data01")
        .unwrap()["export"]
        .clone();
    assert_eq!(export, format!("nbd://{dr_b}/lv_data01"), "{status}");
    check_text_and_xml_status(&dir, &status);
    assert!(read(&dr_b, 0).iter().all(|b| *b == 0x22));
    assert!(read(&dr_b, MIB).iter().all(|b| *b == 0x12));
    write(&dr_b, 2 * MIB, 0x33);
    wait_until("dr-c follows the new production", || {
        replica(&dir, "dr-c")[2 * MIB..3 * MIB]
            .iter()
            .all(|b| *b == 0x33)
    });
    ok(redoubt(&dir, &["failover", "commit", "erp", "--yes"]));
    let status = wait_for_status(&dir, "dr-b", &["dr-c"]);
    assert_eq!(status["failover"]["state"], "committed", "{status}");
    // Applications get their block device from the acting production.
    let attached = json(redoubt(
        &dir,
        &["attach", "erp", "lv_logs", "--format", "json"],
    ));
    assert_eq!(attached["server"], "dr-b", "{attached}");
    let link = Path::new("/dev/redoubt/erp/lv_logs");
    assert!(link.exists(), "attach on dr-b made {}", link.display());
    ok(redoubt(&dir, &["detach", "erp", "lv_logs"]));
    assert!(!link.exists(), "detach removed {}", link.display());

    // Failback: prod-a comes back; only the regions written since the failover cross.
    let mut prod_a_agent = start_agent(&dir, "prod-a");
    // Back before the failback, prod-a learns from dr-b and dr-c that dr-b took over: its
    // datatap stays down (no second server taking writes), and says why.
    wait_until("prod-a keeps its datatap down", || {
        std::fs::read_to_string(dir.join("logs/prod-a.log"))
            .unwrap_or_default()
            .lines()
            .any(|line| {
                line.contains("data path not resumed")
                    && line.contains("dr-b acts as production of group erp")
            })
    });
    let status = wait_for_status(&dir, "dr-b", &["dr-c"]);
    assert_eq!(
        status["failover"]["old_production"]["state"], "fenced",
        "prod-a is back but keeps its data path down: {status}"
    );
    let (host, port) = prod_a.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert!(
        std::net::TcpStream::connect((host, port)).is_err(),
        "no NBD export on the old production before failback"
    );
    let failback = json(redoubt(
        &dir,
        &["failback", "erp", "--yes", "--format", "json"],
    ));
    let sent = failback["delta"]["bytes"].as_u64().unwrap();
    let total = failback["delta"]["volumes_bytes"].as_u64().unwrap();
    eprintln!("failback delta: {sent} of {total} bytes");
    assert!(
        sent > 0 && sent <= 4 * MIB as u64,
        "delta {sent} bytes: {failback}"
    );
    assert!(sent * 20 < total, "the delta is a small part of the LVs");
    assert!(read(&prod_a, 2 * MIB).iter().all(|b| *b == 0x33));
    assert!(read(&prod_a, 0).iter().all(|b| *b == 0x22));
    write(&prod_a, 3 * MIB, 0x44);
    wait_until("dr-b follows prod-a again", || {
        replica(&dir, "dr-b")[3 * MIB..4 * MIB]
            .iter()
            .all(|b| *b == 0x44)
    });

    // The restore window survives failover and failback (#23 item 4). dr-c followed dr-b,
    // then prod-a, keeping its undo: the marker set before the failover is still a restore
    // point there, and a snapshot at it equals production as of the marker.
    let points = json(redoubt(&dir, &["points", "erp", "--format", "json"]));
    let dr_c_points = server_points(&points, "dr-c");
    assert!(
        dr_c_points["first_seq"].as_u64().unwrap() < marker_seq,
        "dr-c's window reaches before the marker: {dr_c_points}"
    );
    assert_eq!(dr_c_points["history_reset"], Value::Null, "{dr_c_points}");
    assert_eq!(
        dr_c_points["unrestorable"].as_array().unwrap().len(),
        1,
        "the failback's delta resync was prod-a's only, not dr-c's: {dr_c_points}"
    );
    let listed = points["markers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "before-upgrade")
        .unwrap_or_else(|| panic!("the marker is still listed: {points}"));
    assert_eq!(
        listed["restorable_on"],
        serde_json::json!(["dr-c"]),
        "{points}"
    );
    // dr-b was production meanwhile and has no undo of those writes: its window starts at
    // the failback, and points says so instead of listing markers it cannot reach.
    let dr_b_points = server_points(&points, "dr-b");
    let reset = &dr_b_points["history_reset"];
    assert!(
        reset["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("no undo")),
        "{dr_b_points}"
    );
    assert_eq!(reset["seq"], dr_b_points["first_seq"], "{dr_b_points}");
    let text = ok(redoubt(&dir, &["points", "erp"]));
    assert!(
        text.contains("window starts at seq") && text.contains("restorable on dr-c"),
        "{text}"
    );
    let snapshot = json(redoubt(
        &dir,
        &[
            "snapshot",
            "create",
            "erp",
            "-s",
            "dr-c",
            "--at",
            "mark:before-upgrade",
            "--name",
            "pre-upgrade",
            "--format",
            "json",
        ],
    ));
    assert_eq!(snapshot["point"]["seq"], marker_seq, "{snapshot}");
    let mut at_marker = connect_export(&snapshot, "lv_data01");
    // The whole LV (256 MiB in the lab), not a sample: equal to production as of the marker.
    for index in 0..256u64 {
        let data = at_marker
            .read(index * MIB as u64, MIB as u32)
            .unwrap()
            .unwrap();
        // As of the marker: 0x11 in the first 4 MiB, nothing written after them yet.
        let expected = if index < 4 { 0x11 } else { 0 };
        assert!(
            data.iter().all(|b| *b == expected),
            "MiB {index} of the snapshot at the marker"
        );
    }
    drop(at_marker);
    ok(redoubt(
        &dir,
        &["snapshot", "delete", "erp", "pre-upgrade", "-s", "dr-c"],
    ));

    // After failback the configuration says it all again.
    let status = wait_for_status(&dir, "prod-a", &["dr-b", "dr-c"]);
    assert_eq!(status["failover"], Value::Null, "{status}");
    assert_eq!(status["direction"], "prod-a -> dr-b, dr-c", "{status}");
    check_text_and_xml_status(&dir, &status);

    // Planned failover and back: nothing is lost either way.
    let planned = json(redoubt(
        &dir,
        &["failover", "erp", "--yes", "--format", "json"],
    ));
    assert_eq!(planned["context"]["kind"], "planned", "{planned}");
    let status = wait_for_status(&dir, "dr-b", &["dr-c", "prod-a"]);
    assert_eq!(
        status["failover"]["old_production"]["state"], "following",
        "{status}"
    );
    check_text_and_xml_status(&dir, &status);
    assert!(read(&dr_b, 3 * MIB).iter().all(|b| *b == 0x44));
    write(&dr_b, 0, 0x55);
    ok(redoubt(&dir, &["failback", "erp", "--yes"]));
    assert!(read(&prod_a, 0).iter().all(|b| *b == 0x55));
    wait_until("dr-c has it too", || {
        replica(&dir, "dr-c")[..MIB].iter().all(|b| *b == 0x55)
    });
    ok(Command::new(binary())
        .args(["lab", "down", "--dir"])
        .arg(&dir)
        .output()
        .unwrap());
    // `lab down` stopped it (its pid file is the restarted process).
    prod_a_agent.wait().unwrap();
}
