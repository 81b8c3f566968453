//! End to end on loopback: NBD client → datatap → journal → LCA → ABA → replica, to two
//! recovery servers, judged by the history checker and by byte comparison; then a recovery
//! server goes away and comes back, and replication resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redoubt_datatap::{bind, serve, Engine, EngineConfig, Export, Exports, Listen};
use redoubt_history::{
    check_exact, generate, History, MemoryImages, WorkloadConfig, WorkloadEvent,
};
use redoubt_replication::{lca, Aba, AbaConfig, LcaConfig, TargetStatus, Targets};
use redoubt_testkit::NbdClient;
use redoubt_volume::{ContainerCapacities, GroupStore, VolumeSpec};
use tokio::sync::watch;

const GROUP: &str = "erp";
const LV_SIZES_BYTES: [u64; 2] = [16 << 20, 8 << 20];

fn specs() -> Vec<VolumeSpec> {
    LV_SIZES_BYTES
        .iter()
        .enumerate()
        .map(|(index, size)| VolumeSpec {
            name: format!("lv{index}"),
            size_bytes: *size,
            source: None,
        })
        .collect()
}

fn capacities() -> ContainerCapacities {
    ContainerCapacities {
        replication_bytes: 64 << 20,
        log_record_file_bytes: 512 << 20,
        snapshot_bytes: 1 << 20,
    }
}

struct Recovery {
    dir: PathBuf,
    name: String,
    port: u16,
    aba: Option<Arc<Aba>>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recovery {
    fn start(runtime: &tokio::runtime::Runtime, dir: &Path, name: &str, port: u16) -> Recovery {
        let (aba, thread) = Aba::open(AbaConfig {
            server_name: name.to_string(),
            group: GROUP.into(),
            data_dir: dir.to_path_buf(),
            volumes: specs(),
            capacities: capacities(),
            config_version: 0,
            retention_seconds: 24 * 3600,
            // Every send process of these tests is prod-a's.
            production: Some("prod-a".into()),
        })
        .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(aba.clone().serve(listener, stopped));
        Recovery {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            port,
            aba: Some(aba),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.aba = None;
    }

    fn applied_seq(&self) -> u64 {
        self.aba
            .as_ref()
            .map_or(0, |aba| aba.status().applied_seq.load(Ordering::Acquire))
    }

    fn replica(&self, index: usize) -> Vec<u8> {
        std::fs::read(
            self.dir
                .join(format!("groups/{GROUP}/replication/lv{index}")),
        )
        .unwrap()
    }
}

/// The send process's configuration for `target` at `address`, shipping `engine`'s journal.
fn lca_config(
    sender: impl Into<String>,
    target: impl Into<String>,
    address: String,
    engine: &Engine,
    compression_level: Option<i32>,
) -> LcaConfig {
    LcaConfig {
        group: GROUP.into(),
        sender_name: sender.into(),
        target_name: target.into(),
        target_address: address,
        config_version: 0,
        journal: engine.journal().clone(),
        compression_level,
        throttle_bytes_per_second: 0,
        batch_bytes: lca::BATCH_BYTES_DEFAULT,
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Production for a test: the datatap's engine over two LVs, their NBD exports on 127.0.0.1,
/// and the commit thread to join at the end.
struct Production {
    engine: Engine,
    watermarks: Arc<redoubt_datatap::Watermarks>,
    nbd_address: String,
    commit_thread: std::thread::JoinHandle<()>,
}

fn start_production(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    config: EngineConfig,
    stopped: watch::Receiver<bool>,
) -> Production {
    let mut store = GroupStore::open_or_create(dir, GROUP, capacities()).unwrap();
    let (engine, opened, commit_thread) = Engine::open(&mut store, &specs(), config).unwrap();
    let exports = Arc::new(Exports::new(
        opened
            .into_iter()
            .map(|volume| Export {
                name: volume.name,
                lv_id: volume.lv_id,
                volume: volume.volume,
                engine: engine.clone(),
                read_only: false,
                description: String::new(),
            })
            .collect(),
    ));
    let bound = runtime
        .block_on(bind(&Listen::Tcp("127.0.0.1:0".into())))
        .unwrap();
    let nbd_address = bound
        .uri("lv0")
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv0")
        .to_string();
    runtime.spawn(serve(bound, exports, stopped));
    Production {
        watermarks: engine.watermarks().clone(),
        engine,
        nbd_address,
        commit_thread,
    }
}

#[test]
fn two_recovery_servers_converge_to_production_and_resume_after_an_outage() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let production_dir = root.path().join("prod-a");

    // Production: datatap with two LVs and the journal it writes.
    let (stop_nbd, nbd_stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        nbd_address,
        commit_thread,
    } = start_production(
        &runtime,
        &production_dir,
        EngineConfig::new(GROUP, 512 << 20),
        nbd_stopped.clone(),
    );
    watermarks.shipped_seq.store(0, Ordering::Release);

    // Two recovery servers and a send process towards each.
    let mut recoveries = vec![
        Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0),
        Recovery::start(&runtime, &root.path().join("dr-c"), "dr-c", 0),
    ];
    let statuses: Vec<Arc<TargetStatus>> = recoveries
        .iter()
        .map(|_| Arc::new(TargetStatus::default()))
        .collect();
    let targets = Arc::new(Targets {
        statuses: statuses.clone(),
    });
    let (stop_lca, lca_stopped) = watch::channel(false);
    for (recovery, status) in recoveries.iter().zip(&statuses) {
        let config = lca_config(
            "prod-a",
            recovery.name.clone(),
            format!("127.0.0.1:{}", recovery.port),
            &engine,
            Some(1),
        );
        runtime.spawn(lca::run(
            config,
            watermarks.clone(),
            status.clone(),
            targets.clone(),
            lca_stopped.clone(),
        ));
    }

    // A history of self-describing writes across both LVs, through NBD.
    let run_id = 0x7e57;
    let mut workload = WorkloadConfig::new(11, LV_SIZES_BYTES.to_vec(), 4000);
    workload.blocks_per_write_max = 16;
    let events = generate(&workload).unwrap();
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();
    let mut clients = [
        NbdClient::connect(&nbd_address, "lv0").unwrap(),
        NbdClient::connect(&nbd_address, "lv1").unwrap(),
    ];
    let mut write = |events: &[WorkloadEvent], history: &mut History| {
        for event in events {
            if let WorkloadEvent::Write(op) = event {
                assert_eq!(
                    clients[op.lv_index as usize]
                        .write(op.offset_bytes, &op.payload(run_id), false)
                        .unwrap(),
                    0
                );
                history.record_write_ack_order(*op).unwrap();
            }
        }
        for client in clients.iter_mut() {
            assert_eq!(client.flush().unwrap(), 0);
        }
    };
    let (first, rest) = events.split_at(events.len() / 2);
    write(first, &mut history);
    let durable = watermarks.durable_seq.load(Ordering::Acquire);
    let written = first
        .iter()
        .filter(|e| matches!(e, WorkloadEvent::Write(_)))
        .count() as u64;
    assert!(durable >= written, "durable {durable} < written {written}");
    let report = |statuses: &[Arc<TargetStatus>], recoveries: &[Recovery]| {
        for (status, recovery) in statuses.iter().zip(recoveries) {
            eprintln!(
                "{}: connected={} sent={} durable={} applied={} error={:?} aba_applied={}",
                recovery.name,
                status.connected.load(Ordering::Relaxed),
                status.sent_seq.load(Ordering::Relaxed),
                status.durable_seq.load(Ordering::Relaxed),
                status.applied_seq.load(Ordering::Relaxed),
                status.last_error.lock().unwrap(),
                recovery.applied_seq()
            );
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !recoveries.iter().all(|r| r.applied_seq() >= durable) {
        if Instant::now() > deadline {
            report(&statuses, &recoveries);
            panic!("replicas did not catch up with {durable}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(statuses
        .iter()
        .all(|s| s.sent_bytes.load(Ordering::Relaxed) > 0));

    // dr-b goes away; production keeps writing; dr-b comes back on the same port.
    let port = recoveries[0].port;
    recoveries[0].stop();
    if let Some(thread) = recoveries[0].thread.take() {
        thread.join().unwrap();
    }
    write(rest, &mut history);
    let durable = watermarks.durable_seq.load(Ordering::Acquire);
    wait_until("dr-c applied everything", || {
        recoveries[1].applied_seq() >= durable
    });
    let dir = recoveries[0].dir.clone();
    recoveries[0] = Recovery::start(&runtime, &dir, "dr-b", port);
    wait_until("dr-b caught up after its outage", || {
        recoveries[0].applied_seq() >= durable
    });
    let resumed_from = recoveries[0]
        .aba
        .as_ref()
        .unwrap()
        .status()
        .last_connection_first_seq
        .load(Ordering::Acquire);
    assert!(
        resumed_from > 1,
        "dr-b resumed after its durable seq, not from the start (got {resumed_from})"
    );
    wait_until("production heard every target's durable seq", || {
        statuses
            .iter()
            .all(|s| s.durable_seq.load(Ordering::Acquire) >= durable)
    });
    assert_eq!(watermarks.shipped_seq.load(Ordering::Acquire), durable);

    // Every replica is byte-identical to production, and equals production at the last seq.
    let production: Vec<Vec<u8>> = (0..2)
        .map(|index| {
            let mut bytes = Vec::new();
            for offset in (0..LV_SIZES_BYTES[index]).step_by(1 << 20) {
                bytes.extend(clients[index].read(offset, 1 << 20).unwrap().unwrap());
            }
            bytes
        })
        .collect();
    for recovery in &recoveries {
        let mut images =
            MemoryImages::from_lvs((0..2).map(|index| recovery.replica(index)).collect());
        check_exact(&history, history.seq_last(), &mut images)
            .unwrap_or_else(|violation| panic!("{}: {violation}", recovery.name));
        for (index, bytes) in production.iter().enumerate() {
            assert!(
                recovery.replica(index) == *bytes,
                "{} lv{index} differs from production",
                recovery.name
            );
        }
    }

    let _ = stop_lca.send(true);
    let _ = stop_nbd.send(true);
    for recovery in &mut recoveries {
        recovery.stop();
        if let Some(thread) = recovery.thread.take() {
            thread.join().unwrap();
        }
    }
    drop(clients);

    // The undo journal rolls a replica back: undoing the records after seq S, newest first,
    // gives exactly production as of S, for several S across the window.
    let recovery = &recoveries[1];
    let undo_records = read_undo(&recovery.dir);
    let window_first = undo_records.first().unwrap().header.seq;
    assert_eq!(undo_records.last().unwrap().header.seq, history.seq_last());
    for target in [
        history.seq_last() - 1,
        history.seq_last() / 2,
        window_first.saturating_sub(1).max(history.seq_last() / 4),
    ] {
        if target + 1 < window_first {
            continue;
        }
        let mut lvs: Vec<Vec<u8>> = (0..2).map(|index| recovery.replica(index)).collect();
        for record in undo_records.iter().rev().filter(|r| r.header.seq > target) {
            if record.header.kind == redoubt_journal::RecordKind::Undo {
                let index = (0..2)
                    .find(|i| {
                        redoubt_journal::lv_id_for_name(&format!("lv{i}")) == record.header.lv_id
                    })
                    .unwrap();
                let offset = record.header.offset_bytes as usize;
                lvs[index][offset..offset + record.payload.len()].copy_from_slice(&record.payload);
            }
        }
        let mut images = MemoryImages::from_lvs(lvs);
        check_exact(&history, target, &mut images)
            .unwrap_or_else(|violation| panic!("rolled back to {target}: {violation}"));
    }
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}

#[test]
fn sync_mode_acknowledges_only_what_the_target_holds_and_degrades_instead_of_hanging() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(GROUP, 512 << 20);
    config.sync_replication = true;
    config.sync_target_timeout_ms = 500;
    let (stop, stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        nbd_address,
        commit_thread,
    } = start_production(
        &runtime,
        &root.path().join("prod-a"),
        config,
        stopped.clone(),
    );
    watermarks.shipped_seq.store(0, Ordering::Release);
    let mut recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0);
    let status = Arc::new(TargetStatus::default());
    let targets = Arc::new(Targets {
        statuses: vec![status.clone()],
    });
    let config = lca_config(
        "prod-a",
        "dr-b",
        format!("127.0.0.1:{}", recovery.port),
        &engine,
        None,
    );
    runtime.spawn(lca::run(
        config,
        watermarks.clone(),
        status.clone(),
        targets,
        stopped,
    ));

    let mut client = NbdClient::connect(&nbd_address, "lv0").unwrap();
    for index in 0..200u64 {
        assert_eq!(
            client
                .write(index * 4096, &[index as u8; 4096], false)
                .unwrap(),
            0
        );

        // The reply means the recovery server already holds this write durably.
        let on_target = recovery
            .aba
            .as_ref()
            .unwrap()
            .status()
            .durable_seq
            .load(Ordering::Acquire);
        assert!(
            on_target > index,
            "write {} acknowledged while the target holds only {on_target} (degraded: {}, shipped {})",
            index + 1,
            watermarks.sync_degraded.load(Ordering::Acquire),
            watermarks.shipped_seq.load(Ordering::Acquire)
        );
    }
    assert!(!watermarks.sync_degraded.load(Ordering::Acquire));

    // The target goes away: writes still complete (after the timeout), the group turns async.
    let port = recovery.port;
    recovery.stop();
    if let Some(thread) = recovery.thread.take() {
        thread.join().unwrap();
    }
    assert_eq!(client.write(0, &[0xee; 4096], false).unwrap(), 0);
    assert!(
        watermarks.sync_degraded.load(Ordering::Acquire),
        "the group says it is no longer sync"
    );
    for index in 1..50u64 {
        assert_eq!(client.write(index * 4096, &[0xee; 4096], false).unwrap(), 0);
    }
    // It comes back, catches up, and the next write restores sync mode.
    let recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", port);
    let durable = watermarks.durable_seq.load(Ordering::Acquire);
    wait_until("the target caught up", || {
        watermarks.shipped_seq.load(Ordering::Acquire) >= durable
    });
    assert_eq!(client.write(0, &[0x11; 4096], false).unwrap(), 0);
    assert!(
        !watermarks.sync_degraded.load(Ordering::Acquire),
        "sync mode restored"
    );
    let on_target = recovery
        .aba
        .as_ref()
        .unwrap()
        .status()
        .durable_seq
        .load(Ordering::Acquire);
    assert_eq!(on_target, watermarks.durable_seq.load(Ordering::Acquire));

    let _ = stop.send(true);
    drop(client);
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}

fn read_undo(dir: &Path) -> Vec<redoubt_journal::OwnedRecord> {
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("groups/{GROUP}/aba.json"))).unwrap(),
    )
    .unwrap();
    let hex = state["group_id"].as_str().unwrap();
    let mut group_id = [0u8; 16];
    for (index, byte) in group_id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).unwrap();
    }
    let config = redoubt_journal::JournalConfig::new(
        redoubt_journal::GroupId(group_id),
        capacities().log_record_file_bytes,
    );
    let journal = redoubt_journal::Journal::open(
        redoubt_journal::StdFs,
        dir.join(format!("groups/{GROUP}/undo")),
        config,
    )
    .unwrap();
    let first = journal.first_seq().unwrap();
    journal
        .read_from(first)
        .unwrap()
        .map(|record| record.unwrap())
        .collect()
}

#[test]
fn a_journal_overflow_falls_back_to_the_dirty_bitmap_and_the_resync_converges() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    // A small journal: the writes below overflow it while the recovery server is away.
    let (stop, stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        nbd_address,
        commit_thread,
    } = start_production(
        &runtime,
        &root.path().join("prod-a"),
        EngineConfig::new(GROUP, 16 << 20),
        stopped.clone(),
    );
    watermarks.shipped_seq.store(0, Ordering::Release);
    let dr_dir = root.path().join("dr-b");
    let mut recovery = Recovery::start(&runtime, &dr_dir, "dr-b", 0);
    let port = recovery.port;
    recovery.stop();
    if let Some(thread) = recovery.thread.take() {
        thread.join().unwrap();
    }
    let status = Arc::new(TargetStatus::default());
    let targets = Arc::new(Targets {
        statuses: vec![status.clone()],
    });
    let config = lca_config(
        "prod-a",
        "dr-b",
        format!("127.0.0.1:{port}"),
        &engine,
        Some(1),
    );
    runtime.spawn(lca::run(
        config,
        watermarks.clone(),
        status.clone(),
        targets,
        stopped,
    ));

    let run_id = 0xb17;
    let mut workload = WorkloadConfig::new(3, LV_SIZES_BYTES.to_vec(), 2500);
    workload.blocks_per_write_max = 16;
    let events = generate(&workload).unwrap();
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();
    let mut clients = [
        NbdClient::connect(&nbd_address, "lv0").unwrap(),
        NbdClient::connect(&nbd_address, "lv1").unwrap(),
    ];
    for event in &events {
        if let WorkloadEvent::Write(op) = event {
            assert_eq!(
                clients[op.lv_index as usize]
                    .write(op.offset_bytes, &op.payload(run_id), false)
                    .unwrap(),
                0,
                "writes never fail because a target is away"
            );
            history.record_write_ack_order(*op).unwrap();
        }
    }
    assert!(
        watermarks.needs_resync.load(Ordering::Acquire),
        "the journal overflowed into the bitmap"
    );
    assert!(watermarks.resync_remaining_bytes.load(Ordering::Acquire) > 0);

    // The recovery server returns: the journal drains, the dirty regions are resynced.
    let recovery = Recovery::start(&runtime, &dr_dir, "dr-b", port);
    wait_until("the resync completed and the replica caught up", || {
        !watermarks.needs_resync.load(Ordering::Acquire)
            && recovery.applied_seq() >= watermarks.durable_seq.load(Ordering::Acquire)
            && watermarks.durable_seq.load(Ordering::Acquire)
                == watermarks.applied_seq.load(Ordering::Acquire)
    });
    assert_eq!(watermarks.resync_remaining_bytes.load(Ordering::Acquire), 0);
    for (index, client) in clients.iter_mut().enumerate() {
        let mut production = Vec::new();
        for offset in (0..LV_SIZES_BYTES[index]).step_by(1 << 20) {
            production.extend(client.read(offset, 1 << 20).unwrap().unwrap());
        }
        assert!(
            recovery.replica(index) == production,
            "lv{index} converged after the resync"
        );
    }
    let mut images = MemoryImages::from_lvs((0..2).map(|index| recovery.replica(index)).collect());
    check_exact(&history, history.seq_last(), &mut images).unwrap();
    // The super transaction was bracketed by its markers (the begin waited for journal
    // space), and the replica knows it is consistent again.
    let aba_status = recovery.aba.as_ref().unwrap().status().clone();
    assert_eq!(aba_status.resync_begin_seq.load(Ordering::Acquire), 0);
    assert!(aba_status.replica_synced.load(Ordering::Acquire));
    let resync = aba_status.resync.lock().unwrap().clone();
    assert_eq!(resync.intervals.len(), 1, "{resync:?}");
    let interval = resync.intervals[0];
    let end_seq = interval.end_seq.expect("the super transaction ended");
    assert!(interval.begin_seq < end_seq, "{resync:?}");
    assert!(end_seq <= watermarks.durable_seq.load(Ordering::Acquire));

    let _ = stop.send(true);
    drop(clients);
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}

#[test]
fn a_full_sync_brings_data_written_before_a_recovery_server_joined() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        nbd_address,
        commit_thread,
    } = start_production(
        &runtime,
        &root.path().join("prod-a"),
        EngineConfig::new(GROUP, 64 << 20),
        stopped.clone(),
    );

    // Production has data (and has pruned its journal) before any recovery server exists.
    let mut client = NbdClient::connect(&nbd_address, "lv0").unwrap();
    // More than a journal segment (8 MiB here), so the checkpoint prunes the journal.
    let old: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 253) as u8 + 1).collect();
    for (index, chunk) in old.chunks(1 << 20).enumerate() {
        assert_eq!(
            client
                .write((2 << 20) + ((index as u64) << 20), chunk, false)
                .unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::Checkpoint))
        .unwrap();
    assert!(
        std::fs::read_dir(&engine.journal().dir)
            .unwrap()
            .flatten()
            .all(|entry| !entry
                .file_name()
                .to_string_lossy()
                .starts_with("0000000000000001.seg")),
        "the journal's first segment was pruned (kept as a spare at most)"
    );

    // A recovery server joins; the full sync (steps 12/13) sends every region in order.
    watermarks.shipped_seq.store(
        watermarks.durable_seq.load(Ordering::Acquire),
        Ordering::Release,
    );
    let recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0);
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::FullSync {
            lv_ids: Vec::new(),
            targets: redoubt_datatap::ResyncTargets::Every,
        }))
        .unwrap();
    assert!(
        watermarks.needs_resync.load(Ordering::Acquire),
        "the super transaction is running"
    );
    let status = Arc::new(TargetStatus::default());
    let targets = Arc::new(Targets {
        statuses: vec![status.clone()],
    });
    let config = lca_config(
        "prod-a",
        "dr-b",
        format!("127.0.0.1:{}", recovery.port),
        &engine,
        Some(1),
    );
    runtime.spawn(lca::run(
        config,
        watermarks.clone(),
        status.clone(),
        targets,
        stopped,
    ));
    // New writes keep coming during the super transaction.
    let new: Vec<u8> = vec![0xab; 1 << 20];
    assert_eq!(client.write(3 << 20, &new, false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    wait_until("the full sync completed and dr-b caught up", || {
        !watermarks.needs_resync.load(Ordering::Acquire)
            && watermarks.durable_seq.load(Ordering::Acquire)
                == watermarks.applied_seq.load(Ordering::Acquire)
            && recovery.applied_seq() >= watermarks.durable_seq.load(Ordering::Acquire)
    });
    let first = recovery
        .aba
        .as_ref()
        .unwrap()
        .status()
        .last_connection_first_seq
        .load(Ordering::Acquire);
    assert!(
        first > 1,
        "the new replica started where production's journal starts ({first})"
    );
    let mut production = Vec::new();
    for offset in (0..LV_SIZES_BYTES[0]).step_by(1 << 20) {
        production.extend(client.read(offset, 1 << 20).unwrap().unwrap());
    }
    assert_eq!(&production[(3 << 20)..(4 << 20)], &new[..]);
    assert!(
        recovery.replica(0) == production,
        "the replica has the data written before it joined"
    );
    let _ = stop.send(true);
    drop(client);
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}

/// Issue #7's bar: a known history with markers, a replica rolled back to ten random points
/// (by seq, by time, by marker) equals production as of each; moving forward again while
/// paused works; a restart keeps the pause; resuming catches up with production.
#[test]
fn rollback_reaches_ten_points_by_seq_time_and_marker_then_resumes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        commit_thread,
        ..
    } = start_production(
        &runtime,
        &root.path().join("prod-a"),
        EngineConfig::new(GROUP, 512 << 20),
        stopped.clone(),
    );
    watermarks.shipped_seq.store(0, Ordering::Release);
    let mut recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0);
    let status = Arc::new(TargetStatus::default());
    let targets = Arc::new(Targets {
        statuses: vec![status.clone()],
    });
    let lca_config = lca_config(
        "prod-a",
        "dr-b",
        format!("127.0.0.1:{}", recovery.port),
        &engine,
        None,
    );
    runtime.spawn(lca::run(
        lca_config,
        watermarks.clone(),
        status.clone(),
        targets,
        stopped.clone(),
    ));

    // The history, through the engine so each write's seq is known exactly; a marker every
    // 150 writes; (seq, time) of every write kept to pick time points.
    let run_id = 0x0b5e;
    let mut workload = WorkloadConfig::new(23, LV_SIZES_BYTES.to_vec(), 1500);
    workload.blocks_per_write_max = 8;
    let events = generate(&workload).unwrap();
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();
    let mut markers: Vec<(String, u64)> = Vec::new();
    let mut write_times: Vec<(u64, std::time::SystemTime)> = Vec::new();
    for event in &events {
        let WorkloadEvent::Write(op) = event else {
            continue;
        };
        let seq = runtime
            .block_on(engine.submit(redoubt_datatap::Op::Write {
                lv_id: redoubt_journal::lv_id_for_name(&format!("lv{}", op.lv_index)),
                offset_bytes: op.offset_bytes,
                data: redoubt_datatap::Payload::from_slice(&op.payload(run_id)),
                fua: false,
            }))
            .unwrap();
        history.record_write(*op, seq).unwrap();
        write_times.push((seq, std::time::SystemTime::now()));
        if op.write_id % 150 == 0 {
            let name = format!("m{}", op.write_id / 150);
            let seq = runtime
                .block_on(engine.submit(redoubt_datatap::Op::Marker { name: name.clone() }))
                .unwrap();
            markers.push((name, seq));
        }
    }
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::Flush))
        .unwrap();
    let last = watermarks.durable_seq.load(Ordering::Acquire);
    wait_until("dr-b applied everything", || recovery.applied_seq() >= last);
    let aba = recovery.aba.clone().unwrap();
    let window = runtime.block_on(aba.window()).unwrap();
    assert_eq!(window.last_seq, last);
    assert!(
        window.first_seq <= 1,
        "the whole history is in the window: {window:?}"
    );
    let marker_seqs: Vec<(String, u64)> = window
        .markers
        .iter()
        .map(|marker| (marker.name.clone(), marker.seq))
        .collect();
    assert_eq!(marker_seqs, markers, "the replica indexed every marker");

    // Ten points, random but seeded, resolved the way `redoubt rollback --to` does.
    let mut rng = 0x5eed_u64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut points = Vec::new();
    for index in 0..10 {
        let text = match index % 3 {
            0 => format!("seq:{}", next(last + 1)),
            1 => {
                let (_, time) = write_times[next(write_times.len() as u64) as usize];
                humantime::format_rfc3339_nanos(time).to_string()
            }
            _ => format!("mark:{}", markers[next(markers.len() as u64) as usize].0),
        };
        points.push(text);
    }
    let replica_images = |recovery: &Recovery| {
        MemoryImages::from_lvs((0..2).map(|index| recovery.replica(index)).collect())
    };
    for text in &points {
        let point = redoubt_points::Point::parse(text).unwrap();
        let window = runtime.block_on(aba.window()).unwrap();
        let resolved = redoubt_points::Window {
            first_seq: window.first_seq,
            last_seq: window.last_seq,
            markers: &window.markers,
            times: &window.times,
        }
        .resolve(&point)
        .unwrap_or_else(|error| panic!("{text}: {error}"));
        // What the point means, computed independently from the test's own records.
        let expected_seq = match &point {
            redoubt_points::Point::Seq(seq) => *seq,
            redoubt_points::Point::Mark(name) => markers.iter().find(|(n, _)| n == name).unwrap().1,
            redoubt_points::Point::Time { .. } => {
                let time = humantime::parse_rfc3339(text).unwrap();
                write_times
                    .iter()
                    .rev()
                    .find(|(_, t)| *t <= time)
                    .map(|(seq, _)| *seq)
                    .unwrap()
            }
            redoubt_points::Point::Latest => last,
        };
        assert!(
            history.seq_floor(resolved.seq) == history.seq_floor(expected_seq),
            "{text} resolved to seq {} but means seq {expected_seq}",
            resolved.seq
        );
        let report = runtime.block_on(aba.rollback(resolved.seq)).unwrap();
        assert_eq!(report.to_seq, resolved.seq);
        assert!(aba.status().paused.load(Ordering::Acquire));
        assert_eq!(
            aba.status().applied_seq.load(Ordering::Acquire),
            resolved.seq
        );
        check_exact(&history, resolved.seq, &mut replica_images(&recovery)).unwrap_or_else(
            |violation| panic!("rolled to {text} (seq {}): {violation}", resolved.seq),
        );
    }

    // Production keeps writing while the replica is paused: stored, not applied.
    let extra = vec![0x5a; 64 << 10];
    let extra_seq = runtime
        .block_on(engine.submit(redoubt_datatap::Op::Write {
            lv_id: redoubt_journal::lv_id_for_name("lv1"),
            offset_bytes: 0,
            data: redoubt_datatap::Payload::from_slice(&extra),
            fua: false,
        }))
        .unwrap();
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::Flush))
        .unwrap();
    wait_until("dr-b stored the new write", || {
        aba.status().durable_seq.load(Ordering::Acquire) >= extra_seq
    });
    let paused_at = aba.status().applied_seq.load(Ordering::Acquire);
    assert!(paused_at < extra_seq);

    // A restart keeps the pause and the image.
    let port = recovery.port;
    drop(aba);
    recovery.stop();
    if let Some(thread) = recovery.thread.take() {
        thread.join().unwrap();
    }
    recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", port);
    let aba = recovery.aba.clone().unwrap();
    assert!(aba.status().paused.load(Ordering::Acquire));
    assert_eq!(aba.status().applied_seq.load(Ordering::Acquire), paused_at);
    check_exact(&history, paused_at, &mut replica_images(&recovery)).unwrap();

    // Resume: everything undone is redone, then the new write; the replica equals production.
    let applied = runtime.block_on(aba.resume()).unwrap();
    assert!(
        applied >= extra_seq,
        "resumed to {applied}, production at {extra_seq}"
    );
    assert!(!aba.status().paused.load(Ordering::Acquire));
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::Checkpoint))
        .unwrap();
    for index in 0..2 {
        let production = std::fs::read(
            root.path()
                .join(format!("prod-a/groups/{GROUP}/replication/lv{index}")),
        )
        .unwrap();
        assert!(
            recovery.replica(index) == production,
            "lv{index} equals production after resume"
        );
    }
    assert_eq!(&recovery.replica(1)[..extra.len()], &extra[..]);

    let _ = stop.send(true);
    drop(aba);
    recovery.stop();
    if let Some(thread) = recovery.thread.take() {
        thread.join().unwrap();
    }
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}

#[test]
fn a_replica_takes_records_only_from_the_production_it_follows() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let production = start_production(
        &runtime,
        &root.path().join("prod"),
        EngineConfig::new(GROUP, 256 << 20),
        stopped.clone(),
    );
    let mut client = NbdClient::connect(&production.nbd_address, "lv0").unwrap();
    assert_eq!(client.write(0, &[0x6bu8; 65536], false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    // dr-b follows prod-a. An old production (same journal id, its own history) connects
    // first: it is refused before a byte is stored, and says why.
    let mut recovery = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0);
    let send = |sender: &str| {
        let status = Arc::new(TargetStatus::default());
        let (stop_lca, lca_stopped) = watch::channel(false);
        runtime.spawn(lca::run(
            lca_config(
                sender,
                "dr-b",
                format!("127.0.0.1:{}", recovery.port),
                &production.engine,
                None,
            ),
            production.watermarks.clone(),
            status.clone(),
            Arc::new(Targets {
                statuses: vec![status.clone()],
            }),
            lca_stopped,
        ));
        (status, stop_lca)
    };
    let (old, stop_old) = send("prod-x");
    wait_until("the old production's send process is refused", || {
        old.last_error
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|error| error.contains("follows prod-a"))
    });
    let error = old.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("redoubt failback"), "{error}");
    let aba = recovery.aba.clone().unwrap();
    assert_eq!(aba.status().received_seq.load(Ordering::Acquire), 0);
    assert_eq!(aba.status().connections.load(Ordering::Acquire), 0);
    assert!(recovery.replica(0).iter().all(|byte| *byte == 0));
    let _ = stop_old.send(true);
    // The production it follows is served.
    let (_current, stop_current) = send("prod-a");
    let durable = production.watermarks.durable_seq.load(Ordering::Acquire);
    wait_until("dr-b applied prod-a's writes", || {
        recovery.applied_seq() >= durable
    });
    assert!(recovery.replica(0)[..65536]
        .iter()
        .all(|byte| *byte == 0x6b));
    drop(client);
    let _ = stop_current.send(true);
    let _ = stop.send(true);
    drop(aba);
    recovery.stop();
    drop(production.engine);
    let _ = production.commit_thread.join();
}

/// Issue #23 item 7: a recovery server added to a group gets every region through a super
/// transaction for it alone; the server that was in sync receives the same records in order
/// and stays consistent at every seq (it could be failed over to throughout), while the new
/// one is inconsistent until the end marker. Both end equal to production.
#[test]
fn a_full_sync_for_an_added_server_leaves_the_synced_one_consistent() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let Production {
        engine,
        watermarks,
        nbd_address,
        commit_thread,
    } = start_production(
        &runtime,
        &root.path().join("prod-a"),
        EngineConfig::new(GROUP, 64 << 20),
        stopped.clone(),
    );
    watermarks.shipped_seq.store(0, Ordering::Release);
    let start_lca =
        |target: &str, port: u16, status: &Arc<TargetStatus>, targets: &Arc<Targets>| {
            let config = lca_config(
                "prod-a",
                target,
                format!("127.0.0.1:{port}"),
                &engine,
                Some(1),
            );
            runtime.spawn(lca::run(
                config,
                watermarks.clone(),
                status.clone(),
                targets.clone(),
                stopped.clone(),
            ));
        };
    // dr-b follows production from its first write.
    let dr_b = Recovery::start(&runtime, &root.path().join("dr-b"), "dr-b", 0);
    let status_b = Arc::new(TargetStatus::default());
    start_lca(
        "dr-b",
        dr_b.port,
        &status_b,
        &Arc::new(Targets {
            statuses: vec![status_b.clone()],
        }),
    );
    let mut client = NbdClient::connect(&nbd_address, "lv0").unwrap();
    let old: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    assert_eq!(client.write(0, &old, false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    wait_until("dr-b caught up", || {
        dr_b.applied_seq() >= watermarks.durable_seq.load(Ordering::Acquire)
    });

    // dr-c is added: step 12 marks every LV for it alone.
    let dr_c = Recovery::start(&runtime, &root.path().join("dr-c"), "dr-c", 0);
    let status_c = Arc::new(TargetStatus::default());
    start_lca(
        "dr-c",
        dr_c.port,
        &status_c,
        &Arc::new(Targets {
            statuses: vec![status_b.clone(), status_c.clone()],
        }),
    );
    runtime
        .block_on(engine.submit(redoubt_datatap::Op::FullSync {
            lv_ids: Vec::new(),
            targets: redoubt_datatap::ResyncTargets::Only(["dr-c".to_string()].into()),
        }))
        .unwrap();
    assert_eq!(
        *watermarks.resync_targets.lock().unwrap(),
        redoubt_datatap::ResyncTargets::Only(["dr-c".to_string()].into()),
        "status reads the super transaction as dr-c's only"
    );
    let new: Vec<u8> = vec![0xcd; 1 << 20];
    assert_eq!(client.write(1 << 20, &new, false).unwrap(), 0);
    assert_eq!(client.flush().unwrap(), 0);
    wait_until("the full sync completed and both caught up", || {
        let durable = watermarks.durable_seq.load(Ordering::Acquire);
        !watermarks.needs_resync.load(Ordering::Acquire)
            && watermarks.applied_seq.load(Ordering::Acquire) == durable
            && dr_b.applied_seq() >= durable
            && dr_c.applied_seq() >= durable
    });

    let resync_of = |recovery: &Recovery| {
        recovery
            .aba
            .as_ref()
            .unwrap()
            .status()
            .resync
            .lock()
            .unwrap()
            .clone()
    };
    let on_b = resync_of(&dr_b);
    assert!(
        on_b.intervals.is_empty(),
        "dr-b saw no super transaction of its own: {on_b:?}"
    );
    let durable = watermarks.durable_seq.load(Ordering::Acquire);
    for seq in 1..=durable {
        assert!(on_b.consistent_at(seq), "dr-b at seq {seq}: {on_b:?}");
    }
    let on_c = resync_of(&dr_c);
    assert_eq!(on_c.intervals.len(), 1, "{on_c:?}");
    let end_seq = on_c.intervals[0]
        .end_seq
        .expect("dr-c's super transaction ended");
    assert!(on_c.consistent_at(end_seq) && !on_c.consistent_at(end_seq - 1));
    let mut production = Vec::new();
    for offset in (0..LV_SIZES_BYTES[0]).step_by(1 << 20) {
        production.extend(client.read(offset, 1 << 20).unwrap().unwrap());
    }
    assert!(dr_b.replica(0) == production, "dr-b equals production");
    assert!(dr_c.replica(0) == production, "dr-c equals production");
    let _ = stop.send(true);
    drop(client);
    drop(runtime);
    drop(engine);
    let _ = commit_thread.join();
}
