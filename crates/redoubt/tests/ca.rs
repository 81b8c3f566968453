//! `redoubt ca init|issue` and the daemons' `--tls-dir`: keys 0600, nothing overwritten,
//! path-like names refused, and a daemon whose identity does not load refuses to start
//! (exit 2) instead of running without TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn redoubt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redoubt"))
        .args(args)
        .output()
        .expect("run redoubt")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn ca_commands_and_tls_dir() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("ca");
    let ca_arg = ca.to_str().expect("utf-8 path");
    let init = redoubt(&["ca", "init", "--dir", ca_arg]);
    assert!(init.status.success(), "{}", text(&init));
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    let before = std::fs::read(ca.join("ca.pem")).expect("ca.pem");

    // Again: refused (exit 2), nothing changed.
    let again = redoubt(&["ca", "init", "--dir", ca_arg]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert_eq!(std::fs::read(ca.join("ca.pem")).expect("ca.pem"), before);

    let issue = redoubt(&["ca", "issue", "dr-b", "--dir", ca_arg]);
    assert!(issue.status.success(), "{}", text(&issue));
    assert_eq!(mode(&ca.join("dr-b.key")), 0o600);
    for name in ["../evil", "a/b", "..", "ca"] {
        let refused = redoubt(&["ca", "issue", name, "--dir", ca_arg]);
        assert_eq!(refused.status.code(), Some(2), "{name}: {}", text(&refused));
    }
    assert!(!root.path().join("evil.key").exists());

    // An agent told to use TLS without its certificate does not start.
    let state = root.path().join("state");
    let state_arg = state.to_str().expect("utf-8 path");
    let missing = redoubt(&[
        "agent",
        "--name",
        "prod-a",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state_arg,
        "--tls-dir",
        ca_arg,
    ]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("prod-a.pem"), "{}", text(&missing));
    // Nor with a key others can read.
    std::fs::set_permissions(ca.join("dr-b.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let readable = redoubt(&[
        "agent",
        "--name",
        "dr-b",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state_arg,
        "--tls-dir",
        ca_arg,
    ]);
    assert_eq!(readable.status.code(), Some(2), "{}", text(&readable));
    assert!(text(&readable).contains("chmod 600"), "{}", text(&readable));
}
