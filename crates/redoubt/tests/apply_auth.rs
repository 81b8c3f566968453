//! Issue #18 finding 8: a standalone `redoubt apply` took data from any sender. Now
//! `--production NAME` refuses any other sender's Hello before anything is stored, and
//! `--tls-dir` requires a certificate of the cluster CA that names that production: a rogue
//! `redoubt datatap --target` in plain text, one with another server's certificate, and one
//! with the right name but no certificate write nothing; the real production replicates.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redoubt_testkit::DatatapProcess;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn ok(args: &[&str]) {
    let output = Command::new(binary()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "redoubt {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Apply {
    child: Child,
    address: String,
    replica: PathBuf,
}

impl Drop for Apply {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_apply(dir: &Path, extra: &[&str]) -> Apply {
    let mut child = Command::new(binary())
        .args(["apply", "--dir"])
        .arg(dir)
        .args([
            "--name",
            "dr-b",
            "--listen",
            "127.0.0.1:0",
            "--volume",
            "lv0:4MiB",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let address = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("apply did not start: {line:?}"))
        .to_string();
    Apply {
        child,
        address,
        replica: dir.join("groups/datatap/replication/lv0"),
    }
}

/// A production (or an impostor) whose lv0 holds `byte` everywhere (a source file) and
/// that starts a full sync of it to `apply`; answers its status file's target entry once the
/// target has an error, or once the replica holds the data when `expect_applied`.
fn send(dir: &Path, apply: &Apply, byte: u8, extra: &[&str], expect_applied: bool) -> Value {
    std::fs::create_dir_all(dir).unwrap();
    let source = dir.join("source");
    std::fs::write(&source, vec![byte; 4 * MIB]).unwrap();
    let volume = format!("lv0:4MiB:{}", source.display());
    let status_file = dir.join("status.json");
    let target = format!("dr-b={}", apply.address);
    let status_arg = status_file.display().to_string();
    let mut args = vec![
        "--target",
        &target,
        "--status-file",
        &status_arg,
        "--full-sync",
    ];
    args.extend_from_slice(extra);
    let _datatap = DatatapProcess::start(binary(), &dir.join("data"), &[&volume], &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let target = &status["targets"][0];
        if expect_applied && replica_holds(apply, byte) {
            return target.clone();
        }
        if !expect_applied && target["last_error"].is_string() {
            return target.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no outcome from the sender: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replica_holds(apply: &Apply, byte: u8) -> bool {
    std::fs::read(&apply.replica).is_ok_and(|data| data.iter().all(|b| *b == byte))
}

#[test]
fn apply_takes_data_only_from_its_production_and_over_tls_only_from_its_certificate() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    let ca_arg = ca.display().to_string();
    ok(&["ca", "init", "--dir", &ca_arg]);
    for name in ["prod-a", "dr-b", "evil"] {
        ok(&["ca", "issue", name, "--dir", &ca_arg]);
    }

    // Plain text, but --production: another sender's Hello is refused.
    let plain = start_apply(&root.path().join("dr-b-plain"), &["--production", "prod-a"]);
    let refused = send(
        &root.path().join("evil-1"),
        &plain,
        0x66,
        &["--name", "evil"],
        false,
    );
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("NotProduction"),
        "{refused}"
    );
    assert!(
        replica_holds(&plain, 0),
        "nothing of the impostor reached the replica"
    );
    drop(plain);

    // Mutual TLS: no certificate, or a certificate of another server, is refused.
    let secured = start_apply(
        &root.path().join("dr-b-tls"),
        &["--production", "prod-a", "--tls-dir", &ca_arg],
    );
    let no_certificate = send(
        &root.path().join("evil-2"),
        &secured,
        0x66,
        &["--name", "prod-a"],
        false,
    );
    // It spoke plain text to a TLS port: it never got a Welcome.
    assert_eq!(no_certificate["connected"], false, "{no_certificate}");
    send(
        &root.path().join("evil-3"),
        &secured,
        0x67,
        &["--name", "evil", "--tls-dir", &ca_arg, "--tls-name", "evil"],
        false,
    );
    assert!(
        replica_holds(&secured, 0),
        "nothing of the impostors reached the replica"
    );
    // The production with its own certificate replicates.
    send(
        &root.path().join("prod-a"),
        &secured,
        0x55,
        &[
            "--name",
            "prod-a",
            "--tls-dir",
            &ca_arg,
            "--tls-name",
            "prod-a",
        ],
        true,
    );
    assert!(replica_holds(&secured, 0x55));
}
