//! A real filesystem on a protected LV: the kernel's ext4 on a loop device over `nbdfuse`
//! over the datatap's NBD export (this kernel has no `nbd` module), files written with fsync,
//! replicated to a recovery server, and the replica mounted read-only there with the files
//! intact: the replica is a crash-consistent image a filesystem accepts. Needs root (loop
//! devices, mounts); CI runs as root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn run(program: &str, args: &[&str]) -> String {
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

/// Undoes, in reverse order, what the test set up, even when an assertion fails.
#[derive(Default)]
struct Cleanup {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
    fuse: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for mount in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&mount).status();
        }
        for device in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").args(["--detach", &device]).status();
        }
        for fuse in self.fuse.drain(..).rev() {
            let _ = Command::new("fusermount3").arg("-u").arg(&fuse).status();
            let _ = Command::new("umount").arg(&fuse).status();
        }
        for mut child in self.children.drain(..).rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(cleanup: &mut Cleanup, args: &[String]) -> String {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    cleanup.children.push(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line.trim().strip_prefix("ready ").unwrap().to_string()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn ext4_on_a_protected_volume_replicates_and_the_replica_mounts_with_the_files() {
    let root = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup::default();
    let path = |name: &str| root.path().join(name);
    let text = |path: PathBuf| path.display().to_string();
    for dir in ["fuse", "mnt", "replica-mnt"] {
        std::fs::create_dir_all(path(dir)).unwrap();
    }

    let apply = start(
        &mut cleanup,
        &[
            "apply",
            "--dir",
            &text(path("dr-b")),
            "--group",
            "fs",
            "--name",
            "dr-b",
            "--listen",
            "127.0.0.1:0",
            "--volume",
            "lv0:128MiB",
            "--status-file",
            &text(path("dr-b.json")),
        ]
        .map(str::to_string),
    );
    let uri = start(
        &mut cleanup,
        &[
            "datatap",
            "--dir",
            &text(path("prod-a")),
            "--group",
            "fs",
            "--volume",
            "lv0:128MiB",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &format!("dr-b={apply}"),
            "--status-file",
            &text(path("prod-a.json")),
        ]
        .map(str::to_string),
    );

    // The export as a file (nbdfuse), the file as a block device (loop), ext4 on it.
    let fuse = Command::new("nbdfuse")
        .arg(path("fuse"))
        .arg(&uri)
        .spawn()
        .expect("run nbdfuse (libnbd-bin)");
    cleanup.children.push(fuse);
    cleanup.fuse.push(path("fuse"));
    wait_until("nbdfuse exposes the export", || path("fuse/nbd").exists());
    let device = run("losetup", &["--find", "--show", &text(path("fuse/nbd"))]);
    cleanup.loops.push(device.clone());
    run("mkfs.ext4", &["-q", &device]);
    run("mount", &[&device, &text(path("mnt"))]);
    cleanup.mounts.push(path("mnt"));
    let mut expected = Vec::new();
    for index in 0..20u32 {
        let name = format!("file-{index:02}.bin");
        let data: Vec<u8> = (0..(64 * 1024 + index * 4096))
            .map(|i| (i.wrapping_mul(31).wrapping_add(index)) as u8)
            .collect();
        let file_path = path("mnt").join(&name);
        std::fs::write(&file_path, &data).unwrap();
        std::fs::File::open(&file_path).unwrap().sync_all().unwrap();
        expected.push((name, data));
    }
    run("umount", &[&text(path("mnt"))]);
    cleanup.mounts.clear();
    run("losetup", &["--detach", &device]);
    cleanup.loops.clear();

    // The recovery server holds everything production journaled.
    wait_until("the replica applied everything", || {
        let production = status(&path("prod-a.json"));
        let recovery = status(&path("dr-b.json"));
        let journal = production["journal_seq"].as_u64().unwrap_or(u64::MAX);
        journal > 0
            && recovery["applied_seq"].as_u64() == Some(journal)
            && production["applied_seq"].as_u64() == Some(journal)
    });

    // The replica, read-only, is a filesystem with the files.
    let replica = path("dr-b/groups/fs/replication/lv0");
    let replica_device = run(
        "losetup",
        &["--find", "--show", "--read-only", &text(replica)],
    );
    cleanup.loops.push(replica_device.clone());
    run(
        "mount",
        &[
            "-o",
            "ro,noload",
            &replica_device,
            &text(path("replica-mnt")),
        ],
    );
    cleanup.mounts.push(path("replica-mnt"));
    for (name, data) in &expected {
        let found = std::fs::read(path("replica-mnt").join(name))
            .unwrap_or_else(|error| panic!("{name} on the replica: {error}"));
        assert!(found == *data, "{name} differs on the replica");
    }
}
