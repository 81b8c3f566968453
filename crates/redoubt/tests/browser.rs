//! The web console in a real browser: starts a lab, then runs the Playwright test
//! (`tests/browser/console.test.js`, node's test runner, Debian's chromium) against its
//! console: login, the Change Replication Group wizard adding an LV with checkmarks appearing
//! step by step, the summary returning, a snapshot, a failed step retried from the page after a
//! repair, no error logged by any page.
//!
//! `REDOUBT_SCREENSHOTS=DIR` keeps the pages' screenshots (docs/screenshots is made so).

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

/// Stops the lab even when an assertion fails.
struct Lab(PathBuf);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["lab", "down", "--purge", "--dir"])
            .arg(&self.0)
            .output();
    }
}

#[test]
fn web_console_in_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/deps.sh (npm ci in tests/browser)"
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lab");
    let up = Command::new(binary())
        .args(["lab", "up", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _lab = Lab(dir.clone());
    assert!(
        up.status.success(),
        "lab up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let console = std::fs::read_to_string(dir.join("lab.env"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("REDOUBT_CONSOLE=").map(str::to_string))
        .unwrap();
    let mut node = Command::new("node");
    node.args(["--test", "--test-reporter=tap", "console.test.js"])
        .current_dir(&browser_dir)
        .env("REDOUBT_CONSOLE", &console)
        .env("REDOUBT_TOKEN_FILE", dir.join("console/token"))
        .env("REDOUBT_CA_FILE", dir.join("tls/ca.pem"))
        .env("REDOUBT_LAB_DIR", &dir)
        // The lab's console is HTTPS: Playwright's own requests (node) trust the lab's CA.
        .env("NODE_EXTRA_CA_CERTS", dir.join("tls/ca.pem"))
        .env("TMPDIR", root.path());
    let output = node
        .output()
        .expect("run node (scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser test failed:\n{text}");
    assert!(text.contains("# pass 1"), "the browser test ran:\n{text}");
}
