//! A `redoubt lab` for the attach, filesystem and guide tests: up in a temporary directory,
//! the CLI run with its environment, and a teardown that leaves no mount, loop device, helper
//! or daemon behind even when an assertion fails.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub mounts: Vec<PathBuf>,
}

impl Lab {
    pub fn up() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            dir,
            mounts: Vec::new(),
        };
        let output = Command::new(binary())
            .args(["lab", "up", "--dir"])
            .arg(lab.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "lab up: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The lab's environment (REDOUBT_CONSOLE, REDOUBT_TOKEN_FILE, …) from `lab.env`.
    pub fn env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path().join("lab.env"))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
            .collect()
    }

    /// `redoubt ARGS` with the lab's environment.
    pub fn redoubt(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `redoubt ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.redoubt(args);
        assert!(
            output.status.success(),
            "redoubt {args:?} exited {:?}: {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The `address` of a server in the lab's configuration.
    pub fn agent_address(&self, server: &str) -> String {
        let config = std::fs::read_to_string(self.path().join("lab.toml")).unwrap();
        let mut current = None;
        for line in config.lines() {
            if let Some(name) = line.strip_prefix("name = ") {
                current = Some(name.trim_matches('"').to_string());
            }
            if let Some(address) = line.strip_prefix("address = ") {
                if current.as_deref() == Some(server) {
                    return address.trim_matches('"').to_string();
                }
            }
        }
        panic!("no server {server} in lab.toml");
    }

    /// Restarts an agent the hard way: SIGKILL, then the same command line again.
    pub fn kill_and_restart_agent(&self, server: &str) {
        let pid_file = self.path().join("pids").join(format!("{server}.pid"));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        run("kill", &["-KILL", &pid.to_string()]);
        wait_until("the agent is gone", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        });
        // Started again as systemd would (Restart=on-failure): a start that finds the port
        // still held for a moment exits, and is tried again.
        let log_path = self
            .path()
            .join("logs")
            .join(format!("{server}.restarted.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&args[0])
                .args(&args[1..])
                .envs(self.env())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap();
            let started = loop {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                // "ready ADDRESS" on a line of its own ("already in use" contains "ready ").
                if text.lines().any(|line| line.starts_with("ready ")) {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    assert!(
                        text.contains("Address already in use"),
                        "the restarted agent {server} exited: {text}"
                    );
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if started {
                std::fs::write(&pid_file, child.id().to_string()).unwrap();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the port of {server} stayed in use for 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

use std::os::unix::process::CommandExt;

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.path().join("logs"));
        }
        for mount in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&mount).status();
        }
        clean_attachments(self.path());
        let _ = Command::new(binary())
            .args(["lab", "down", "--purge", "--dir"])
            .arg(self.path())
            .stdout(Stdio::null())
            .status();
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The block device a link points at.
pub fn link_target(link: &str) -> String {
    std::fs::read_link(link)
        .unwrap_or_else(|error| panic!("{link}: {error}"))
        .display()
        .to_string()
}

/// Writes `data` to `path` and makes it durable (file and directory).
pub fn write_durably(path: &Path, data: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent).unwrap().sync_all().unwrap();
    }
}

/// Undoes whatever an agent under `root` still has attached (device, FUSE mount, helper,
/// link), from the agents' registries (`attachments.json`, searched 3 levels deep).
pub fn clean_attachments(root: &Path) {
    let mut registries = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .is_some_and(|name| name == "attachments.json")
            {
                registries.push(path);
            } else if depth < 3 && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                dirs.push((path, depth + 1));
            }
        }
    }
    for registry in registries {
        let Ok(text) = std::fs::read_to_string(&registry) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for attachment in value["attachments"].as_array().into_iter().flatten() {
            if let Some(device) = attachment["device"].as_str() {
                let _ = Command::new("umount")
                    .arg(device)
                    .stderr(Stdio::null())
                    .status();
                if device.starts_with("/dev/loop") {
                    let _ = Command::new("losetup").args(["--detach", device]).status();
                }
            }
            if let Some(file) = attachment["fuse_file"].as_str() {
                if let Some(mount) = Path::new(file).parent() {
                    let _ = Command::new("umount")
                        .arg(mount)
                        .stderr(Stdio::null())
                        .status();
                }
            }
            if let Some(link) = attachment["link"].as_str() {
                let _ = std::fs::remove_file(link);
                if let Some(parent) = Path::new(link).parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            let helper = attachment["helper_pid"].as_u64().filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "nbdfuse")
            });
            if let Some(pid) = helper {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The end of every log in `dir`, for a failing test's output.
pub fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        eprintln!("--- {} (last {} lines)", entry.path().display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}
