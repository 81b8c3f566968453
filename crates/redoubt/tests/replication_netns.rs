//! Replication across servers in their own network namespaces (`redoubt_testkit::netns`):
//! production's datatap ships to two recovery servers while the link to one is cut and the
//! apply process of the other is killed with SIGKILL; both resume where they stopped (no full
//! resync) and end byte-identical to production, each proven a prefix by the history checker.
//! Needs root (network namespaces); CI runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redoubt_history::{
    check_exact, generate, History, MemoryImages, WorkloadConfig, WorkloadEvent, WriteOp,
};
use redoubt_testkit::netns::{Spawned, TestBed};
use redoubt_testkit::NbdClient;
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const LV_SIZES_BYTES: [u64; 2] = [32 << 20, 8 << 20];
const APPLY_PORT: u16 = 7411;
const NBD_PORT: u16 = 10809;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn volumes() -> Vec<String> {
    vec![
        "--volume".into(),
        "lv0:32MiB".into(),
        "--volume".into(),
        "lv1:8MiB".into(),
    ]
}

fn start_apply(bed: &mut TestBed, server: &str, dir: &Path) -> Spawned {
    let listen = format!("{}:{APPLY_PORT}", bed.address(server).unwrap());
    let mut args = vec![
        "apply".to_string(),
        "--dir".into(),
        dir.display().to_string(),
        "--group".into(),
        "erp".into(),
        "--name".into(),
        server.into(),
        "--listen".into(),
        listen.clone(),
        "--status-file".into(),
        dir.join("status.json").display().to_string(),
    ];
    args.extend(volumes());
    let process = bed.spawn(server, binary(), &args).unwrap();
    let line = process.wait_for_line("ready ", READY_TIMEOUT).unwrap();
    assert_eq!(line, format!("ready {listen}"));
    process
}

fn status(path: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(value) = serde_json::from_str::<Value>(&text) {
                return value;
            }
        }
        assert!(Instant::now() < deadline, "no status at {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seq(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

/// Writes `events` from inside `prod-a` through NBD, recording the acknowledged history.
fn write(
    bed: &TestBed,
    address: &str,
    events: Vec<WorkloadEvent>,
    run_id: u64,
    history: &mut History,
) {
    let address = address.to_string();
    let acknowledged: Vec<WriteOp> = bed
        .run_in("prod-a", move || {
            let mut clients = [
                NbdClient::connect(&address, "lv0").unwrap(),
                NbdClient::connect(&address, "lv1").unwrap(),
            ];
            let mut acknowledged = Vec::new();
            for event in events {
                match event {
                    WorkloadEvent::Write(op) => {
                        let client = &mut clients[op.lv_index as usize];
                        assert_eq!(
                            client
                                .write(op.offset_bytes, &op.payload(run_id), false)
                                .unwrap(),
                            0
                        );
                        acknowledged.push(op);
                    }
                    WorkloadEvent::Flush => {
                        for client in clients.iter_mut() {
                            assert_eq!(client.flush().unwrap(), 0);
                        }
                    }
                }
            }
            acknowledged
        })
        .unwrap();
    for op in acknowledged {
        history.record_write_ack_order(op).unwrap();
    }
}

fn replica(dir: &Path, index: usize) -> Vec<u8> {
    std::fs::read(dir.join(format!("groups/erp/replication/lv{index}"))).unwrap()
}

#[test]
fn recovery_servers_resume_after_a_link_cut_and_a_sigkill_and_converge() {
    let mut bed = TestBed::new(&["prod-a", "dr-b", "dr-c"])
        .unwrap_or_else(|error| panic!("test bed: {error}"));
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["prod-a", "dr-b", "dr-c"]
        .iter()
        .map(|name| root.path().join(name))
        .collect();
    let _dr_b = start_apply(&mut bed, "dr-b", &dirs[1]);
    let mut dr_c = start_apply(&mut bed, "dr-c", &dirs[2]);

    let nbd_address = format!("{}:{NBD_PORT}", bed.address("prod-a").unwrap());
    let mut args = vec![
        "datatap".to_string(),
        "--dir".into(),
        dirs[0].display().to_string(),
        "--group".into(),
        "erp".into(),
        "--listen".into(),
        nbd_address.clone(),
        "--target".into(),
        format!("dr-b={}:{APPLY_PORT}", bed.address("dr-b").unwrap()),
        "--target".into(),
        format!("dr-c={}:{APPLY_PORT}", bed.address("dr-c").unwrap()),
        "--status-file".into(),
        dirs[0].join("status.json").display().to_string(),
    ];
    args.extend(volumes());
    let production = bed.spawn("prod-a", binary(), &args).unwrap();
    production.wait_for_line("ready ", READY_TIMEOUT).unwrap();

    let run_id = 0xc0ffee;
    let mut workload = WorkloadConfig::new(5, LV_SIZES_BYTES.to_vec(), 3000);
    workload.blocks_per_write_max = 16;
    let events = generate(&workload).unwrap();
    let thirds: Vec<Vec<WorkloadEvent>> = events
        .chunks(events.len() / 3 + 1)
        .map(|c| c.to_vec())
        .collect();
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();

    write(&bed, &nbd_address, thirds[0].clone(), run_id, &mut history);
    // The link to dr-b goes down and dr-c's apply process is killed while writes go on.
    bed.link_down("dr-b").unwrap();
    write(&bed, &nbd_address, thirds[1].clone(), run_id, &mut history);
    dr_c.kill9().unwrap();
    write(&bed, &nbd_address, thirds[2].clone(), run_id, &mut history);
    // Production itself (datatap and send processes) is killed and comes back.
    let mut production = production;
    production.kill9().unwrap();
    let production = bed.spawn("prod-a", binary(), &args).unwrap();
    production.wait_for_line("ready ", READY_TIMEOUT).unwrap();
    let production_status = status(&dirs[0].join("status.json"));
    assert_eq!(
        production_status["needs_resync"], false,
        "{production_status}"
    );
    let _dr_c = start_apply(&mut bed, "dr-c", &dirs[2]);
    bed.link_up("dr-b").unwrap();

    let journal_seq = history.seq_last();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let applied: Vec<u64> = dirs[1..]
            .iter()
            .map(|dir| seq(&status(&dir.join("status.json")), "applied_seq"))
            .collect();
        if applied.iter().all(|applied| *applied >= journal_seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovery servers at {applied:?}, production at {journal_seq}: {}",
            status(&dirs[0].join("status.json"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (dir, name) in dirs[1..].iter().zip(["dr-b", "dr-c"]) {
        let recovery = status(&dir.join("status.json"));
        if name == "dr-c" {
            // Its apply process was killed: the new one resumed after what it held durably.
            let first = seq(&recovery, "last_connection_first_seq");
            assert!(
                first > 1,
                "{name} resumed after its durable seq, not from the start: {recovery}"
            );
        }
        let mut images = MemoryImages::from_lvs((0..2).map(|index| replica(dir, index)).collect());
        check_exact(&history, journal_seq, &mut images)
            .unwrap_or_else(|violation| panic!("{name}: {violation}"));
        for index in 0..2 {
            let production_lv =
                std::fs::read(dirs[0].join(format!("groups/erp/replication/lv{index}"))).unwrap();
            assert!(
                replica(dir, index) == production_lv,
                "{name} lv{index} differs from production"
            );
        }
    }
    let production_status = status(&dirs[0].join("status.json"));
    assert_eq!(production_status["needs_resync"], false);
    for target in production_status["targets"].as_array().unwrap() {
        assert_eq!(target["needs_resync"], false, "{target}");
    }
}
