//! A real file system on a protected LV, end to end, the way a user does it: `redoubt attach`
//! gives the production server `/dev/redoubt/erp/lv_data01` (FUSE + loop on this kernel, which
//! has no `nbd` module), ext4 on it, files written with fsync, the file system frozen (a
//! consistent image), replication drained to both recovery servers, a snapshot taken on dr-b
//! (`redoubt snapshot create`) and attached there read-only (`redoubt attach --snapshot`),
//! mounted, every file intact; each replica LV mounted read-only holds them too. Needs root
//! (loop devices, mounts); CI runs as root.

mod common;

use std::path::{Path, PathBuf};

use common::lab::{link_target, run, wait_until, write_durably, Lab};

const LINK: &str = "/dev/redoubt/erp/lv_data01";

fn status(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&lab.ok(&["status", "erp", "--format", "json"])).unwrap()
}

/// Every recovery server applied everything production journaled.
fn drained(lab: &Lab) -> bool {
    let status = status(lab);
    let Some(group) = status["groups"]
        .as_array()
        .and_then(|groups| groups.first())
    else {
        return false;
    };
    let targets = group["targets"].as_array().cloned().unwrap_or_default();
    !targets.is_empty()
        && targets.iter().all(|target| {
            let journal = target["journal_seq"].as_u64().unwrap_or(u64::MAX);
            journal > 0 && target["applied_seq"].as_u64() == Some(journal)
        })
}

/// Mounts a replica LV read-only through a read-only loop device; unmounts and detaches it
/// (also when an assertion fails) when the guard goes.
struct ReadOnlyImage {
    device: String,
    mount: PathBuf,
}

impl ReadOnlyImage {
    fn mount(image: &Path, mount: &Path) -> ReadOnlyImage {
        std::fs::create_dir_all(mount).unwrap();
        let device = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                &image.display().to_string(),
            ],
        );
        let guard = ReadOnlyImage {
            device,
            mount: mount.to_path_buf(),
        };
        run(
            "mount",
            &[
                "-o",
                "ro,noload",
                &guard.device,
                &mount.display().to_string(),
            ],
        );
        guard
    }
}

impl Drop for ReadOnlyImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.device])
            .status();
    }
}

#[test]
fn ext4_on_an_attached_volume_replicates_and_each_replica_mounts_with_the_files() {
    let mut lab = Lab::up();
    let mount = lab.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();

    let out = lab.ok(&["attach", "erp", "lv_data01"]);
    assert!(out.contains(LINK), "{out}");
    assert!(link_target(LINK).starts_with("/dev/"));
    run("mkfs.ext4", &["-q", LINK]);
    run("mount", &[LINK, &mount.display().to_string()]);
    lab.mounts.push(mount.clone());

    let mut expected = Vec::new();
    for index in 0..20u32 {
        let name = format!("file-{index:02}.bin");
        let data: Vec<u8> = (0..(64 * 1024 + index * 4096))
            .map(|i| (i.wrapping_mul(31).wrapping_add(index)) as u8)
            .collect();
        write_durably(&mount.join(&name), &data);
        expected.push((name, data));
    }
    // A consistent image: ext4 flushes its journal into place when frozen.
    run("fsfreeze", &["--freeze", &mount.display().to_string()]);
    // While frozen: everything reaches the recovery servers, and dr-b takes a snapshot of
    // that point.
    let thawed = std::panic::catch_unwind(|| {
        wait_until("the replicas applied everything", || drained(&lab));
        lab.ok(&[
            "snapshot", "create", "erp", "--server", "dr-b", "--at", "latest", "--name", "fs",
        ])
    });
    run("fsfreeze", &["--unfreeze", &mount.display().to_string()]);
    if let Err(panic) = thawed {
        std::panic::resume_unwind(panic);
    }

    // The snapshot, attached on dr-b read-only, mounted: the files are there.
    let out = lab.ok(&["attach", "erp", "lv_data01", "--snapshot", "fs"]);
    let snapshot_link = "/dev/redoubt/erp/lv_data01@fs";
    assert!(
        out.contains(snapshot_link) && out.contains("on dr-b") && out.contains("read-only"),
        "{out}"
    );
    let snapshot_mount = lab.path().join("snapshot-mnt");
    std::fs::create_dir_all(&snapshot_mount).unwrap();
    run(
        "mount",
        &[
            "-o",
            "ro,noload",
            snapshot_link,
            &snapshot_mount.display().to_string(),
        ],
    );
    lab.mounts.push(snapshot_mount.clone());
    for (name, data) in &expected {
        let found = std::fs::read(snapshot_mount.join(name))
            .unwrap_or_else(|error| panic!("{name} on the snapshot: {error}"));
        assert!(found == *data, "{name} differs on the snapshot");
    }
    // Read-only: a write to the device is refused.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(snapshot_link)
        .and_then(|device| {
            use std::os::unix::fs::FileExt;
            device.write_all_at(&[0u8; 4096], 1 << 20)?;
            device.sync_all()
        });
    assert!(written.is_err(), "the snapshot's device accepts writes");
    run("umount", &[&snapshot_mount.display().to_string()]);
    lab.mounts.pop();
    lab.ok(&["detach", "erp", "lv_data01", "--snapshot", "fs"]);
    lab.ok(&["snapshot", "delete", "erp", "fs", "--server", "dr-b"]);

    // The replica LVs themselves, read-only, hold the same file system.
    for server in ["dr-b", "dr-c"] {
        let replica = lab
            .path()
            .join("data")
            .join(server)
            .join("groups/erp/replication/lv_data01");
        let image = ReadOnlyImage::mount(&replica, &lab.path().join(format!("{server}-mnt")));
        for (name, data) in &expected {
            let found = std::fs::read(image.mount.join(name))
                .unwrap_or_else(|error| panic!("{name} on {server}: {error}"));
            assert!(found == *data, "{name} differs on {server}");
        }
    }

    run("umount", &[&mount.display().to_string()]);
    lab.mounts.clear();
    lab.ok(&["detach", "erp", "lv_data01"]);
}
