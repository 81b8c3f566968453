//! Running other programs (the real peers) and failing loudly when they fail.

use std::process::{Command, Output};

/// Runs `program` with `args`; panics if it cannot start (the tool is missing: install it).
pub fn run(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run {program} {args:?}: {error} (scripts/deps.sh installs the test tools)"
        ),
    }
}

/// Runs and asserts success; returns stdout as text.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
