//! `redoubt lab up` from nothing: a console and three agents, the example group initialized,
//! data written through the export reaching both recovery servers; then a configuration
//! change (a volume added) applied with `config apply`, a tampered replica caught by step 20,
//! and `lab down` stopping everything.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redoubt_testkit::NbdClient;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn redoubt(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env(
            "REDOUBT_CONSOLE",
            std::fs::read_to_string(dir.join("lab.env"))
                .ok()
                .and_then(|env| {
                    env.lines()
                        .find_map(|line| line.strip_prefix("REDOUBT_CONSOLE=").map(str::to_string))
                })
                .unwrap_or_default(),
        )
        .env("REDOUBT_TOKEN_FILE", dir.join("console/token"))
        .env("REDOUBT_CA_FILE", dir.join("tls/ca.pem"))
        .output()
        .unwrap()
}

fn ok(output: std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {text}");
    text
}

/// Stops the lab even when an assertion fails.
struct Lab<'a>(&'a Path);

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["lab", "down", "--dir"])
            .arg(self.0)
            .output();
    }
}

#[test]
fn lab_up_initializes_replicates_applies_a_change_and_goes_down() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lab");
    let dir_text = dir.display().to_string();
    let up = ok(Command::new(binary())
        .args(["lab", "up", "--dir", &dir_text])
        .output()
        .unwrap());
    let _lab = Lab(&dir);
    assert!(up.contains("The lab is up."), "{up}");
    // The commands it prints run as shown: `redoubt` is not on this test's PATH, so they name
    // the binary by its path.
    let stop = up
        .lines()
        .find_map(|line| line.trim().strip_prefix("stop:"))
        .unwrap_or_else(|| panic!("no stop hint:\n{up}"));
    let program = stop.split_whitespace().next().unwrap();
    assert_eq!(
        std::fs::canonicalize(program).ok().as_deref(),
        std::fs::canonicalize(binary()).ok().as_deref(),
        "the stop hint names a command the shell cannot run: {stop}"
    );
    assert!(
        up.contains("\u{2713} 20. Verify configuration on prod-a, dr-b, dr-c"),
        "every step checked off:\n{up}"
    );
    let export = up
        .lines()
        .find_map(|line| {
            line.split_whitespace()
                .find(|word| word.ends_with("/lv_data01"))
        })
        .unwrap()
        .to_string();
    let address = export
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv_data01")
        .to_string();

    // Data written through production's export reaches both recovery servers.
    let mut client = NbdClient::connect(&address, "lv_data01").unwrap();
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert_eq!(client.write(1 << 20, &data, false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    // Issue #18 finding 9: what the lab creates is its user's only, whatever the umask.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for server in ["prod-a", "dr-b", "dr-c"] {
            let group_dir = dir.join(format!("data/{server}/groups/erp"));
            let volume = group_dir.join("replication/lv_data01");
            assert_eq!(mode(&volume), 0o600, "{}", volume.display());
            assert_eq!(mode(&group_dir), 0o700, "{}", group_dir.display());
        }
        let journal = dir.join("data/prod-a/groups/erp/journal");
        for entry in std::fs::read_dir(&journal).unwrap().flatten() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for server in ["dr-b", "dr-c"] {
        let replica = dir.join(format!("data/{server}/groups/erp/replication/lv_data01"));
        loop {
            let bytes = std::fs::read(&replica).unwrap();
            if bytes[(1 << 20)..(5 << 20)] == data[..] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{server} did not receive the write"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // fio writes with crc32c verification through the export; once drained, both replicas
    // are byte-identical to production.
    let logs_uri = export.replace("/lv_data01", "/lv_logs");
    let fio = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={logs_uri}"),
            "--rw=randwrite",
            "--bsrange=4k-256k",
            "--iodepth=16",
            "--size=48M",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randseed=7",
        ])
        .output()
        .expect("run fio");
    assert!(
        fio.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&fio.stdout)
    );
    let production_logs = dir.join("data/prod-a/groups/erp/replication/lv_logs");
    let deadline = Instant::now() + Duration::from_secs(60);
    for server in ["dr-b", "dr-c"] {
        let replica = dir.join(format!("data/{server}/groups/erp/replication/lv_logs"));
        while std::fs::read(&replica).unwrap() != std::fs::read(&production_logs).unwrap() {
            assert!(
                Instant::now() < deadline,
                "{server}'s lv_logs never matched production after fio"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let status = ok(redoubt(&dir, &["status", "--format", "json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["groups"][0]["direction"], "prod-a -> dr-b, dr-c");

    // A change: a volume added. The plan's steps run and the LV appears on every server.
    let config = std::fs::read_to_string(dir.join("lab.toml")).unwrap()
        + "\n[[group.volume]]\nname = \"lv_index\"\nsize = \"32MiB\"\n";
    let changed = dir.join("changed.toml");
    std::fs::write(&changed, config).unwrap();
    // `config plan` without --from plans against what is in effect on the console, and shows
    // the plan `config apply` then shows.
    let planned = ok(redoubt(
        &dir,
        &["config", "plan", &changed.display().to_string()],
    ));
    let (base, plan_text) = planned.split_once('\n').unwrap();
    assert_eq!(
        base, "Planned against configuration version 1, in effect on the console.",
        "{planned}"
    );
    assert!(!plan_text.contains("new group"), "{planned}");
    // Deleting the group is a deletion, never "no change".
    let lab_toml = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    let without_group = dir.join("without-group.toml");
    std::fs::write(
        &without_group,
        &lab_toml[..lab_toml.find("[[group]]").unwrap()],
    )
    .unwrap();
    let deletion = ok(redoubt(
        &dir,
        &["config", "plan", &without_group.display().to_string()],
    ));
    assert!(!deletion.contains("No change"), "{deletion}");
    assert!(deletion.contains("[DELETES DATA]"), "{deletion}");
    let applied = ok(redoubt(
        &dir,
        &["config", "apply", &changed.display().to_string(), "--yes"],
    ));
    assert!(
        applied.contains(plan_text),
        "plan and apply show the same plan:\n{planned}\n---\n{applied}"
    );
    // Not a terminal: the plan once, then one line per change of state, rows under steps.
    assert!(
        !applied.contains('\u{b7}'),
        "no line for what has not started (the plan listed it):\n{applied}"
    );
    assert!(
        applied
            .lines()
            .any(|line| line.starts_with("        \u{2713} dr-b (recovery1)")),
        "rows indented under their step:\n{applied}"
    );
    assert!(
        applied
            .lines()
            .any(|line| line.starts_with("  \u{2713} 13. Set new logical volume")),
        "{applied}"
    );
    assert!(
        applied.contains("13. Set new logical volume lv_index as requiring replication"),
        "{applied}"
    );
    for server in ["prod-a", "dr-b", "dr-c"] {
        let lv = dir.join(format!("data/{server}/groups/erp/replication/lv_index"));
        assert_eq!(
            std::fs::metadata(&lv).unwrap().len(),
            32 << 20,
            "{}",
            lv.display()
        );
    }
    let history = ok(redoubt(&dir, &["config", "history", "--format", "json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&history)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Tampering: a replica LV deleted by hand makes the next initialization fail on exactly
    // that server, naming the file.
    std::fs::remove_file(dir.join("data/dr-c/groups/erp/replication/lv_index")).unwrap();
    let tampered = std::fs::read_to_string(&changed)
        .unwrap()
        .replace("retention = \"24h\"", "retention = \"48h\"");
    std::fs::write(&changed, tampered).unwrap();
    let failed = redoubt(
        &dir,
        &["config", "apply", &changed.display().to_string(), "--yes"],
    );
    let text = String::from_utf8_lossy(&failed.stdout).to_string()
        + &String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{text}");
    assert!(
        text.contains("lv_index"),
        "the failure names the missing LV:\n{text}"
    );
    assert!(
        text.contains("dr-c"),
        "on the server that was tampered with:\n{text}"
    );
    let watched = redoubt(&dir, &["config", "watch", "erp"]);
    assert_eq!(
        watched.status.code(),
        Some(1),
        "a failed initialization stays failed until retried"
    );
    // A second change while one is failed is refused (exit code 3).
    let refused = redoubt(
        &dir,
        &[
            "config",
            "apply",
            &dir.join("lab.toml").display().to_string(),
            "--yes",
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let down = ok(Command::new(binary())
        .args(["lab", "down", "--dir", &dir_text])
        .output()
        .unwrap());
    assert!(down.contains("Stopped 4 process(es)"), "{down}");
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "the export is gone"
    );
}
