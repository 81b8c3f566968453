//! The user guide cannot rot: every ` ```sh ` block of `docs/guide/*.md` runs, in order, one
//! page per `bash -euo pipefail` in a fresh directory, with this build's `redoubt` first on the
//! PATH. A page marked `<!-- guide-test: pending: CMD… -->` waits for commands that do not
//! exist yet: the test checks that each is indeed still missing (and fails once it exists, so
//! the marker goes and the page runs). Needs root (attach, mkfs, mount); CI runs as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{binary, clean_attachments};

/// Longest one page may run.
const PAGE_TIMEOUT_MS: u64 = 600_000;
const PENDING_MARKER: &str = "<!-- guide-test: pending:";

fn guide_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/guide")
}

/// The ` ```sh ` blocks of a page, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unterminated ```sh block");
    blocks
}

/// The commands a pending page waits for.
fn pending_commands(text: &str) -> Option<Vec<String>> {
    let start = text.find(PENDING_MARKER)? + PENDING_MARKER.len();
    let end = start + text[start..].find("-->")?;
    Some(
        text[start..end]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// Stops what a page left running when it failed half-way.
struct PageCleanup<'a> {
    dir: &'a Path,
}

impl Drop for PageCleanup<'_> {
    fn drop(&mut self) {
        for mount in ["mnt", "snap"] {
            let _ = Command::new("umount")
                .arg(self.dir.join(mount))
                .stderr(Stdio::null())
                .status();
        }
        clean_attachments(self.dir);
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("daemons.pid")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").arg(pid).stderr(Stdio::null()).status();
            }
        }
        if self.dir.join("lab").exists() {
            let _ = Command::new(binary())
                .args(["lab", "down", "--purge", "--dir"])
                .arg(self.dir.join("lab"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run_page(name: &str, blocks: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = PageCleanup { dir: dir.path() };
    let script = format!("set -euo pipefail\nset -x\n{}", blocks.join("\n"));
    std::fs::write(dir.path().join("page.sh"), &script).unwrap();
    let bin_dir = binary().parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = dir.path().join("page.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("bash")
        .arg("page.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("REDOUBT_CONSOLE")
        .env_remove("REDOUBT_TOKEN_FILE")
        .env_remove("REDOUBT_CA_FILE")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(PAGE_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} ran longer than {PAGE_TIMEOUT_MS} ms:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "docs/guide/{name}: a command failed ({status}); the page's run (set -x):\n{output}"
    );
    eprintln!("docs/guide/{name}: {} blocks ran", blocks.len());
}

#[test]
fn every_walkthrough_of_the_user_guide_runs() {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(guide_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    let mut ran = 0;
    for page in &pages {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(page).unwrap();
        let blocks = sh_blocks(&text);
        if let Some(commands) = pending_commands(&text) {
            assert!(
                !commands.is_empty(),
                "{name}: a pending marker names no command"
            );
            for command in &commands {
                let help = Command::new(binary())
                    .args([command.as_str(), "--help"])
                    .output()
                    .unwrap();
                assert!(
                    !help.status.success(),
                    "docs/guide/{name} waits for `redoubt {command}`, which exists now: remove \
                     its `guide-test: pending` marker so the doc test runs the page"
                );
            }
            eprintln!(
                "NOT RUN: docs/guide/{name} ({} blocks) waits for `redoubt {}`",
                blocks.len(),
                commands.join("`, `redoubt ")
            );
            continue;
        }
        if blocks.is_empty() {
            continue;
        }
        run_page(&name, &blocks);
        ran += 1;
    }
    assert!(ran >= 2, "the guide's walkthroughs ran: {ran} pages");
}

#[test]
fn sh_blocks_are_extracted_in_order_and_pending_markers_are_read() {
    let page =
        "intro\n```sh\necho one\n```\n```text\nnot run\n```\n```sh\necho two\necho three\n```\n";
    assert_eq!(sh_blocks(page), ["echo one\n", "echo two\necho three\n"]);
    assert_eq!(
        pending_commands("x <!-- guide-test: pending: mark points -->"),
        Some(vec!["mark".to_string(), "points".to_string()])
    );
    assert_eq!(pending_commands(page), None);
}
