//! The user guide cannot rot: every ` ```sh ` block of `docs/guide/*.md` runs, in order, one
//! page per `bash -euo pipefail` in a fresh directory, with this build's `redoubt` first on the
//! PATH. A page marked `<!-- guide-test: pending: CMD… -->` waits for commands that do not
//! exist yet: the test checks that each is indeed still missing (and fails once it exists, so
//! the marker goes and the page runs). Needs root (attach, mkfs, mount); CI runs as root.
//!
//! The pages see `REDOUBT_ETC`: the source tree's `packaging/etc/redoubt`, where the package's
//! settings files (`/etc/redoubt/*.env` once installed) are. Some pages leave files the test
//! then checks (`PAGE_CHECKS`): the install page's cluster (CA, a certificate in each agent's
//! `tls` directory, agents and console started as the systemd units start them, `config apply`
//! over mutual TLS) must end with every server reachable, and its agent started without a
//! certificate must make `config apply` say that server serves no TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{binary, clean_attachments};

/// Longest one page may run.
const PAGE_TIMEOUT_MS: u64 = 600_000;
const PENDING_MARKER: &str = "<!-- guide-test: pending:";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guide_dir() -> PathBuf {
    workspace().join("docs/guide")
}

/// Checks of what a page left in its directory (and printed), after it ran and before its
/// daemons and files go.
type PageCheck = fn(dir: &Path, output: &str);

/// The pages whose results are checked; each must run (no `pending` marker, `sh` blocks).
const PAGE_CHECKS: &[(&str, PageCheck)] = &[("install.md", check_install)];

/// The install page: its cluster ran with mutual TLS and the first configuration reached
/// every server; an agent without a certificate was named as serving no TLS.
fn check_install(dir: &Path, output: &str) {
    let read = |path: &str| {
        std::fs::read_to_string(dir.join(path))
            .unwrap_or_else(|error| panic!("install.md leaves {path}: {error}\n{output}"))
    };
    let status: serde_json::Value = serde_json::from_str(&read("status.json"))
        .unwrap_or_else(|error| panic!("install.md: status.json is no JSON: {error}"));
    let servers = status["servers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = servers
        .iter()
        .filter_map(|server| server["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["db1", "dr1"],
        "install.md: the servers of status.json"
    );
    for server in &servers {
        assert_eq!(
            server["reachable"], true,
            "install.md: a server of the first configuration is not reachable: {server}"
        );
        assert_eq!(server["config_version"], 1, "install.md: {server}");
    }
    let group = &status["groups"][0];
    assert_eq!(group["name"], "erp", "install.md: {status}");
    assert_eq!(group["initialization"]["state"], "idle", "{group}");
    assert_eq!(group["production_reachable"], true, "{group}");
    for target in group["targets"].as_array().cloned().unwrap_or_default() {
        assert_eq!(target["reachable"], true, "install.md: {target}");
    }
    // The daemons ran with their certificates: TLS on, the console's API HTTPS.
    for agent in ["db1", "dr1", "dr2"] {
        let log = read(&format!("{agent}/agent.log"));
        assert!(
            log.lines().any(|line| line.starts_with("ready 127.0.0.1:")),
            "install.md: {agent}'s agent did not start:\n{log}"
        );
        assert!(
            !log.contains("TLS is off"),
            "install.md: {agent}'s agent ran without TLS:\n{log}"
        );
    }
    let console = read("console/console.log");
    assert!(
        console.contains("ready https://127.0.0.1:"),
        "install.md: the console's API is not HTTPS:\n{console}"
    );
    // dr2's agent without a certificate: config apply named it and the fix.
    let refused = read("apply-dr2.log");
    for expected in ["dr2 serves no TLS", "redoubt ca issue dr2", "failed"] {
        assert!(
            refused.contains(expected),
            "install.md: config apply with an agent without a certificate does not say \
             {expected:?}:\n{refused}"
        );
    }
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

fn run_page(name: &str, blocks: &[String], check: Option<PageCheck>) {
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
        .env("REDOUBT_ETC", workspace().join("packaging/etc/redoubt"))
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
    if let Some(check) = check {
        check(dir.path(), &output);
    }
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
    let mut ran = Vec::new();
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
        let check = PAGE_CHECKS
            .iter()
            .find(|(page, _)| *page == name)
            .map(|(_, check)| *check);
        run_page(&name, &blocks, check);
        ran.push(name);
    }
    assert!(ran.len() >= 2, "the guide's walkthroughs ran: {ran:?}");
    for (page, _) in PAGE_CHECKS {
        assert!(
            ran.iter().any(|name| name == page),
            "docs/guide/{page} did not run (its results are checked): ran {ran:?}"
        );
    }
}

/// The `KEY=value` keys of a settings file.
fn settings_keys(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('=').map(|(key, _)| key.trim()))
        .collect()
}

/// The install page starts its agents and console on one machine with the settings file and
/// the `ExecStart` of the systemd unit (only the state directory differs), so what the doc
/// test runs is what the services run; the units' variables are keys of their settings files.
#[test]
fn the_install_page_starts_the_daemons_as_the_systemd_units_do() {
    let page = std::fs::read_to_string(guide_dir().join("install.md")).unwrap();
    let run = sh_blocks(&page).join("\n");
    for unit in ["redoubt-agent.service", "redoubt-console.service"] {
        let text =
            std::fs::read_to_string(workspace().join("packaging/systemd").join(unit)).unwrap();
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .unwrap_or_else(|| panic!("{unit} has no {key}"))
                .trim()
                .to_string()
        };
        let exec_start = field("ExecStart=");
        let (command, state_dir) = exec_start.rsplit_once(' ').unwrap();
        assert!(
            command.ends_with(" --state-dir"),
            "{unit}: ExecStart ends with --state-dir DIR: {exec_start}"
        );
        let command = command
            .strip_prefix("/usr/bin/")
            .unwrap_or_else(|| panic!("{unit}: ExecStart runs /usr/bin/redoubt: {exec_start}"));
        assert!(
            run.contains(&format!("exec {command} ")),
            "docs/guide/install.md starts {unit}'s daemon otherwise than `{command} DIR` \
             (its ExecStart): update the page's runnable equivalent"
        );
        assert!(
            page.contains(state_dir),
            "docs/guide/install.md does not name {unit}'s state directory {state_dir}"
        );
        let settings = field("EnvironmentFile=");
        let settings_name = Path::new(&settings).file_name().unwrap().to_string_lossy();
        assert!(
            run.contains(&format!("\"$etc/{settings_name}\"")),
            "docs/guide/install.md does not start {unit}'s daemon with {settings}"
        );
        let packaged = std::fs::read_to_string(
            workspace()
                .join("packaging/etc/redoubt")
                .join(settings_name.as_ref()),
        )
        .unwrap();
        let keys = settings_keys(&packaged);
        for variable in command.split("${").skip(1) {
            let variable = variable.split('}').next().unwrap();
            assert!(
                keys.contains(&variable),
                "{unit} uses ${{{variable}}}, which {settings} does not set"
            );
        }
    }
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
