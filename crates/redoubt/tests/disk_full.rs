//! Issue #4's "a disk that fills up": the datatap on a small tmpfs (journal and LVs on it)
//! is written until the disk is full. It must answer errors — never hang, never crash the
//! host — and lose no acknowledged write: once the disk has room again, the restarted
//! datatap replays and every write acknowledged before the disk filled reads back (the
//! history checker proves the image is a prefix at least as new as the last acknowledgement).
//! Needs root for `mount -t tmpfs` (CI runs as root).

use std::path::Path;
use std::process::Command;

use redoubt_history::{
    check_at_least, generate, History, MemoryImages, WorkloadConfig, WorkloadEvent,
};
use redoubt_testkit::{DatatapProcess, NbdClient};

const LV_SIZES_BYTES: [u64; 2] = [8 << 20, 4 << 20];

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn mount_tmpfs(dir: &Path, size: &str) {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mount a {size} tmpfs on {} (needs root)",
        dir.display()
    );
}

/// Unmounts even when an assertion fails.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    // 12 MiB of LVs and 10 MiB left for the journal, which is allowed to grow to 1 GiB.
    mount_tmpfs(&disk, "22m");
    let _mounted = Mounted(&disk);
    let mut datatap = DatatapProcess::start(
        binary(),
        &disk.join("data"),
        &["lv0:8MiB", "lv1:4MiB"],
        &["--journal-capacity", "1GiB"],
    );
    let address = datatap.address();

    let run_id = 0xf011;
    let events = generate(&WorkloadConfig::new(7, LV_SIZES_BYTES.to_vec(), 20_000)).unwrap();
    let mut clients = [
        NbdClient::connect(&address, "lv0").unwrap(),
        NbdClient::connect(&address, "lv1").unwrap(),
    ];
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();
    let mut acknowledged_seq = 0;
    let mut refused = None;
    for event in &events {
        let WorkloadEvent::Write(op) = event else {
            continue;
        };
        history.record_write_ack_order(*op).unwrap();
        match clients[op.lv_index as usize].write(op.offset_bytes, &op.payload(run_id), false) {
            Ok(0) => acknowledged_seq = op.write_id,
            // The disk is full: an error reply or the connection closed. Either way, no
            // acknowledgement for this write.
            other => {
                refused = Some(format!("{other:?}"));
                break;
            }
        }
    }
    let refused = refused.expect("10 MiB of journal room ran out before 20 000 writes");
    eprintln!("disk full after {acknowledged_seq} acknowledged writes: {refused}");
    assert!(acknowledged_seq > 100, "the disk held some writes first");
    // Reads still answer or the server went down cleanly; it is not hung: a new request
    // gets an answer or a closed connection.
    let answered =
        NbdClient::connect(&address, "lv0").and_then(|mut client| client.read(0, 4096).map(|_| ()));
    eprintln!("after the disk filled, a new connection's read: {answered:?}");
    datatap.kill9();
    drop(clients);

    // Room again, then the datatap replays: every acknowledged write is there.
    let status = Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(status.success(), "grow the tmpfs");
    datatap.restart();
    let address = datatap.address();
    let mut images = Vec::new();
    for (index, size) in LV_SIZES_BYTES.iter().enumerate() {
        let mut client = NbdClient::connect(&address, &format!("lv{index}")).unwrap();
        let mut bytes = Vec::new();
        for offset in (0..*size).step_by(1 << 20) {
            bytes.extend(client.read(offset, 1 << 20).unwrap().unwrap());
        }
        images.push(bytes);
    }
    let mut images = MemoryImages::from_lvs(images);
    let proof = check_at_least(&history, acknowledged_seq, &mut images)
        .unwrap_or_else(|violation| panic!("after the disk filled: {violation}"));
    assert!(proof.seq_max >= acknowledged_seq);
    // And it takes writes again.
    let mut client = NbdClient::connect(&address, "lv0").unwrap();
    assert_eq!(client.write(0, &vec![0x42; 4096], true).unwrap(), 0);
    datatap.stop();
}
