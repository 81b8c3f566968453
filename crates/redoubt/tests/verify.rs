//! Online verify and checksum resync end to end, on `redoubt lab` (a console and three
//! agents on loopback; group erp: prod-a → dr-b, dr-c; lv_data01 256 MiB, lv_logs 64 MiB):
//! - verify under a running fio write load reports no difference;
//! - one byte flipped in a replica file is found, and the report names the server, the LV
//!   and the region (offset and length); verify exits 1;
//! - `resync --checksum` resends only that region (bytes sent measured against the LV size),
//!   after which verify is clean again.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redoubt_testkit::NbdClient;
use serde_json::Value;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn redoubt(dir: &Path, args: &[&str]) -> std::process::Output {
    let env = std::fs::read_to_string(dir.join("lab.env")).unwrap_or_default();
    let mut command = Command::new(binary());
    command.args(args);
    for line in env.lines() {
        if let Some((key, value)) = line.split_once('=') {
            command.env(key, value);
        }
    }
    command.output().unwrap()
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// Stops the lab even when an assertion fails.
struct Lab<'a>(&'a Path);

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["lab", "down", "--dir"])
            .arg(self.0)
            .output();
    }
}

/// Kills fio if the test fails while it runs.
struct Fio(std::process::Child);

impl Drop for Fio {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bytes production's send process sent to `server` so far.
fn sent_bytes(dir: &Path, server: &str) -> u64 {
    let target = target_status(dir, server);
    target["sent_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no sent_bytes for {server} in the status: {target}"))
}

/// The `targets` entry of `server` in `redoubt status --format json`.
fn target_status(dir: &Path, server: &str) -> Value {
    let output = redoubt(dir, &["status", "erp", "--format", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    status["groups"][0]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|target| target["server"] == server)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether `server` applied everything production journaled.
fn caught_up(dir: &Path, server: &str) -> bool {
    let target = target_status(dir, server);
    target["applied_seq"].as_u64().is_some() && target["applied_seq"] == target["journal_seq"]
}

#[test]
fn verify_under_load_finds_a_flipped_byte_and_checksum_resync_sends_only_its_region() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lab");
    let dir_text = dir.display().to_string();
    let up = Command::new(binary())
        .args(["lab", "up", "--dir", &dir_text])
        .output()
        .unwrap();
    let _lab = Lab(&dir);
    assert!(up.status.success(), "lab up: {}", text(&up));
    let up = text(&up);
    let export = up
        .lines()
        .find_map(|line| {
            line.split_whitespace()
                .find(|word| word.ends_with("/lv_data01"))
        })
        .unwrap()
        .to_string();

    // Known, incompressible data in lv_data01, through production's export.
    let address = export
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv_data01")
        .to_string();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let known: Vec<u8> = (0..(8u32 << 20))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut client = NbdClient::connect(&address, "lv_data01").unwrap();
    assert_eq!(client.write(0, &known, false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    drop(client);

    // Verify while fio keeps writing to lv_logs.
    let logs_uri = export.replace("/lv_data01", "/lv_logs");
    let fio = Command::new("fio")
        .args([
            "--name=load",
            // Jobs as threads of this one process, so that killing it stops the writes.
            "--thread",
            "--ioengine=nbd",
            &format!("--uri={logs_uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=64M",
            "--time_based",
            "--runtime=300",
            // A steady load the replicas keep up with (4 MiB/s of 4 KiB writes), so that the
            // bytes the resync sends can be told from fio's afterwards.
            "--rate=4m",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run fio");
    let mut fio = Fio(fio);
    // fio is writing once production's journal moves.
    let journal_seq = || {
        let output = redoubt(&dir, &["status", "erp", "--format", "json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        status["groups"][0]["targets"][0]["journal_seq"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = journal_seq();
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_seq() < before + 200 {
        assert!(Instant::now() < deadline, "fio never started writing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let clean = redoubt(&dir, &["verify", "erp", "--format", "json"]);
    assert!(
        fio.0.try_wait().unwrap().is_none(),
        "fio still writes when verify ends"
    );
    assert!(
        clean.status.success(),
        "verify under load: {}",
        text(&clean)
    );
    let result: Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(result["differences_total"], 0, "{result}");
    assert_eq!(
        result["regions"], 320,
        "256 + 64 regions of 1 MiB: {result}"
    );
    assert_eq!(result["servers"].as_array().unwrap().len(), 3, "{result}");
    let _ = fio.0.kill();
    let _ = fio.0.wait();

    // One byte flipped in dr-b's replica of lv_data01, region 2, behind the ABA's back.
    let replica = dir.join("data/dr-b/groups/erp/replication/lv_data01");
    let offset = (2 << 20) + 4321;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&replica)
        .unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut byte).unwrap();
    assert_eq!(
        byte[0], known[offset as usize],
        "the replica holds the known data"
    );
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let found = redoubt(&dir, &["verify", "erp", "--format", "json"]);
    assert_eq!(
        found.status.code(),
        Some(1),
        "verify exits 1 on a difference: {}",
        text(&found)
    );
    let result: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(result["differences_total"], 1, "{result}");
    assert_eq!(
        result["differences"][0],
        serde_json::json!({
            "server": "dr-b", "volume": "lv_data01", "region": 2,
            "offset_bytes": 2 << 20, "length_bytes": 1 << 20,
        }),
        "{result}"
    );
    let found_text = redoubt(&dir, &["verify", "erp"]);
    assert!(
        text(&found_text).contains("dr-b lv_data01 region 2 (offset 2097152 bytes, 1048576 bytes)"),
        "{}",
        text(&found_text)
    );

    // Checksum resync of dr-b: only the differing region travels. First let fio's writes
    // drain, so that the bytes sent are the resync's alone.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up(&dir, "dr-b") {
        assert!(
            Instant::now() < deadline,
            "dr-b never caught up after fio: {}",
            text(&redoubt(&dir, &["status", "erp", "--format", "json"]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent_before = sent_bytes(&dir, "dr-b");
    let resync = redoubt(
        &dir,
        &[
            "resync",
            "erp",
            "--server",
            "dr-b",
            "--checksum",
            "--format",
            "json",
        ],
    );
    assert!(resync.status.success(), "resync: {}", text(&resync));
    let result: Value = serde_json::from_slice(&resync.stdout).unwrap();
    assert_eq!(result["regions_differing"], 1, "{result}");
    assert_eq!(result["resent_bytes"], 1 << 20, "{result}");
    assert_eq!(result["volumes_bytes"], 320u64 << 20, "{result}");
    let sent = sent_bytes(&dir, "dr-b") - sent_before;
    let lv_bytes = 320u64 << 20;
    eprintln!("checksum resync sent {sent} bytes to dr-b for {lv_bytes} bytes of LVs");
    assert!(
        (1 << 20..2 << 20).contains(&sent),
        "one incompressible 1 MiB region travels, not the LVs: {sent} of {lv_bytes} bytes"
    );
    let mut byte = [0u8; 1];
    let mut file = std::fs::File::open(&replica).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut byte).unwrap();
    assert_eq!(
        byte[0], known[offset as usize],
        "the flipped byte is repaired"
    );
    // While dr-b received the region it kept a snapshot of its state before, and deleted it
    // once the super transaction ended (status says so; the replica is consistent again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let target = target_status(&dir, "dr-b");
        let note = target["pre_resync"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if note.contains("deleted") && target["replica_consistent"] == true {
            assert!(note.contains("super transaction ended at seq"), "{note}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dr-b never reported its pre-resync snapshot kept and deleted: {target}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshots = redoubt(&dir, &["snapshot", "list", "erp", "--format", "json"]);
    assert!(
        !text(&snapshots).contains("pre-resync"),
        "no pre-resync snapshot is left: {}",
        text(&snapshots)
    );
    let again = redoubt(&dir, &["verify", "erp", "--format", "json"]);
    assert!(
        again.status.success(),
        "verify after resync: {}",
        text(&again)
    );

    // Bad input gets a clear error and changes nothing.
    let bad_region = redoubt(&dir, &["verify", "erp", "--region-size-bytes", "1000"]);
    assert_eq!(bad_region.status.code(), Some(1), "{}", text(&bad_region));
    assert!(
        text(&bad_region).contains("region size 1000 bytes"),
        "{}",
        text(&bad_region)
    );
    let not_recovery = redoubt(&dir, &["resync", "erp", "--server", "prod-a", "--checksum"]);
    assert_eq!(
        not_recovery.status.code(),
        Some(2),
        "{}",
        text(&not_recovery)
    );
    assert!(
        text(&not_recovery).contains("prod-a is not a recovery server of group erp"),
        "{}",
        text(&not_recovery)
    );
    let no_checksum = redoubt(&dir, &["resync", "erp", "--server", "dr-b"]);
    assert_eq!(no_checksum.status.code(), Some(2), "{}", text(&no_checksum));
    let after = redoubt(&dir, &["verify", "erp", "--format", "json"]);
    assert!(after.status.success(), "{}", text(&after));
}
