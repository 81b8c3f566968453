//! Snapshots of a replica, end to end on loopback: NBD client → datatap → journal → LCA →
//! ABA → replica, with snapshots taken at many points while apply goes on, judged by the
//! history checker; writable snapshots; a restart; a full snapshot container; and the
//! snapshot exports read by nbdcopy and qemu-io while fio writes to production.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redoubt_datatap::{
    bind, serve, BackendExport, Engine, EngineConfig, Export, ExportBackend, Exports, Listen,
};
use redoubt_history::{
    check_exact, generate, History, ImageReader, MemoryImages, WorkloadConfig, WorkloadEvent,
    BLOCK_SIZE_BYTES,
};
use redoubt_journal::lv_id_for_name;
use redoubt_points::Point;
use redoubt_replication::aba::ApplyObserver;
use redoubt_replication::snapshot::{Snapshot, SnapshotError, SnapshotExport, SnapshotSet};
use redoubt_replication::{lca, Aba, AbaConfig, LcaConfig, TargetStatus, Targets};
use redoubt_testkit::peers::run_ok;
use redoubt_testkit::NbdClient;
use redoubt_volume::{ContainerCapacities, GroupStore, VolumeSpec};
use tokio::sync::watch;

const GROUP: &str = "erp";
const LV_SIZES_BYTES: [u64; 2] = [16 << 20, 8 << 20];
const RUN_ID: u64 = 0x5a4d;

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

fn capacities(snapshot_bytes: u64) -> ContainerCapacities {
    ContainerCapacities {
        replication_bytes: 64 << 20,
        log_record_file_bytes: 256 << 20,
        snapshot_bytes,
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes the ABA's observer from the snapshot set (the set itself, or a test's wrapper).
type WrapObserver = Box<dyn FnOnce(Arc<SnapshotSet>) -> Arc<dyn ApplyObserver>>;

fn the_set_itself() -> WrapObserver {
    Box::new(|set| set)
}

/// A recovery server's ABA with its snapshot set.
struct Recovery {
    dir: PathBuf,
    port: u16,
    aba: Option<Arc<Aba>>,
    set: Option<Arc<SnapshotSet>>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    snapshot_bytes: u64,
}

impl Recovery {
    fn start(
        runtime: &tokio::runtime::Runtime,
        dir: &Path,
        port: u16,
        snapshot_bytes: u64,
        wrap: WrapObserver,
    ) -> Recovery {
        let set = SnapshotSet::open(
            GROUP,
            &dir.join(format!("groups/{GROUP}/snapshot")),
            snapshot_bytes,
        )
        .unwrap();
        let observer: Arc<dyn ApplyObserver> = wrap(set.clone());
        let (aba, thread) = Aba::open_observed(
            AbaConfig {
                server_name: "dr-b".into(),
                group: GROUP.into(),
                data_dir: dir.to_path_buf(),
                volumes: specs(),
                capacities: capacities(snapshot_bytes),
                config_version: 0,
                retention_seconds: 24 * 3600,
                production: None,
            },
            Some(observer),
        )
        .unwrap();
        set.attach(aba.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(aba.clone().serve(listener, stopped));
        Recovery {
            dir: dir.to_path_buf(),
            port,
            aba: Some(aba),
            set: Some(set),
            stop: Some(stop),
            thread: Some(thread),
            snapshot_bytes,
        }
    }

    fn set(&self) -> &Arc<SnapshotSet> {
        self.set.as_ref().unwrap()
    }

    fn applied_seq(&self) -> u64 {
        self.aba
            .as_ref()
            .map_or(0, |aba| aba.status().applied_seq.load(Ordering::Acquire))
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.aba = None;
        self.set = None;
        if let Some(thread) = self.thread.take() {
            // The apply thread ends once the ABA's last handle (its connection) is gone.
            thread.join().unwrap();
        }
    }

    fn replica(&self) -> MemoryImages {
        MemoryImages::from_lvs(
            (0..LV_SIZES_BYTES.len())
                .map(|index| {
                    std::fs::read(
                        self.dir
                            .join(format!("groups/{GROUP}/replication/lv{index}")),
                    )
                    .unwrap()
                })
                .collect(),
        )
    }
}

/// Production, one recovery server and a send process between them.
struct Bed {
    runtime: tokio::runtime::Runtime,
    _root: tempfile::TempDir,
    engine: Option<Engine>,
    watermarks: Arc<redoubt_datatap::Watermarks>,
    nbd_address: String,
    commit_thread: Option<std::thread::JoinHandle<()>>,
    recovery: Recovery,
    stop: watch::Sender<bool>,
    history: History,
    events: Vec<WorkloadEvent>,
    next_event: usize,
}

impl Bed {
    fn new(write_count: u64, snapshot_bytes: u64) -> Bed {
        Bed::observed(write_count, snapshot_bytes, the_set_itself())
    }

    fn observed(write_count: u64, snapshot_bytes: u64, wrap: WrapObserver) -> Bed {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let (stop, stopped) = watch::channel(false);
        let mut store =
            GroupStore::open_or_create(&root.path().join("prod-a"), GROUP, capacities(1 << 20))
                .unwrap();
        let (engine, opened, commit_thread) =
            Engine::open(&mut store, &specs(), EngineConfig::new(GROUP, 256 << 20)).unwrap();
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
        runtime.spawn(serve(bound, exports, stopped.clone()));
        let watermarks = engine.watermarks().clone();
        watermarks.shipped_seq.store(0, Ordering::Release);
        let recovery =
            Recovery::start(&runtime, &root.path().join("dr-b"), 0, snapshot_bytes, wrap);
        let status = Arc::new(TargetStatus::default());
        let targets = Arc::new(Targets {
            statuses: vec![status.clone()],
        });
        runtime.spawn(lca::run(
            LcaConfig {
                group: GROUP.into(),
                sender_name: "prod-a".into(),
                target_name: "dr-b".into(),
                target_address: format!("127.0.0.1:{}", recovery.port),
                config_version: 0,
                journal: engine.journal().clone(),
                compression_level: None,
                throttle_bytes_per_second: 0,
                batch_bytes: lca::BATCH_BYTES_DEFAULT,
            },
            watermarks.clone(),
            status,
            targets,
            stopped,
        ));
        let mut workload = WorkloadConfig::new(7, LV_SIZES_BYTES.to_vec(), write_count);
        workload.blocks_per_write_max = 16;
        Bed {
            runtime,
            _root: root,
            engine: Some(engine),
            watermarks,
            nbd_address,
            commit_thread: Some(commit_thread),
            recovery,
            stop,
            history: History::new(RUN_ID, &LV_SIZES_BYTES).unwrap(),
            events: generate(&workload).unwrap(),
            next_event: 0,
        }
    }

    /// Writes the next `count` writes of the workload through NBD, recording them.
    fn write(&mut self, count: usize) {
        let mut clients = [
            NbdClient::connect(&self.nbd_address, "lv0").unwrap(),
            NbdClient::connect(&self.nbd_address, "lv1").unwrap(),
        ];
        let mut written = 0;
        while written < count && self.next_event < self.events.len() {
            if let WorkloadEvent::Write(op) = &self.events[self.next_event] {
                let status = clients[op.lv_index as usize]
                    .write(op.offset_bytes, &op.payload(RUN_ID), false)
                    .unwrap();
                assert_eq!(status, 0);
                self.history.record_write_ack_order(*op).unwrap();
                written += 1;
            }
            self.next_event += 1;
        }
        for client in clients.iter_mut() {
            assert_eq!(client.flush().unwrap(), 0);
        }
    }

    fn wait_applied(&self) {
        let durable = self.watermarks.durable_seq.load(Ordering::Acquire);
        wait_until("the replica applied everything", || {
            self.recovery.applied_seq() >= durable
        });
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.recovery.stop();
        self.engine = None;
        if let Some(thread) = self.commit_thread.take() {
            let _ = thread.join();
        }
    }
}

/// A snapshot as images for the checker.
struct SnapshotImages<'a>(&'a Snapshot);

impl ImageReader for SnapshotImages<'_> {
    fn read_block(
        &mut self,
        lv_index: u32,
        block_index: u64,
        buf: &mut [u8; BLOCK_SIZE_BYTES],
    ) -> std::io::Result<()> {
        let lv_id = lv_id_for_name(&format!("lv{lv_index}"));
        self.0
            .read_at(lv_id, buf, block_index * BLOCK_SIZE_BYTES as u64)
            .map_err(|error| error.to_io_error())
    }
}

fn check_snapshot(history: &History, snapshot: &Snapshot) {
    check_exact(history, snapshot.point_seq(), &mut SnapshotImages(snapshot)).unwrap_or_else(
        |violation| {
            panic!(
                "snapshot {} at seq {}: {violation}",
                snapshot.name(),
                snapshot.point_seq()
            )
        },
    );
}

#[test]
fn snapshots_at_many_points_equal_production_while_apply_goes_on() {
    let mut bed = Bed::new(3000, 512 << 20);
    bed.write(1000);
    bed.wait_applied();
    let applied = bed.recovery.applied_seq();
    let set = bed.recovery.set().clone();
    // Points across the whole window, the first image (seq 0) and the newest included.
    let mut snapshots = Vec::new();
    for (index, seq) in [0, 1, 137, applied / 2, applied - 1, applied]
        .into_iter()
        .enumerate()
    {
        let snapshot = set
            .create(&format!("s{index}"), &Point::Seq(seq), false)
            .unwrap();
        assert_eq!(snapshot.point_seq(), seq);
        if seq > 0 {
            assert!(
                snapshot.point_time_unix_ns().is_some(),
                "seq {seq} has a time"
            );
        }
        check_snapshot(&bed.history, &snapshot);
        snapshots.push(snapshot);
    }
    // A time resolves to the last record written at or before it.
    let middle = &snapshots[3];
    let time_ns = middle.point_time_unix_ns().unwrap();
    let by_time = set
        .create("by-time", &Point::Time { unix_ns: time_ns }, false)
        .unwrap();
    assert!(by_time.point_seq() >= middle.point_seq());
    assert_eq!(by_time.point_time_unix_ns(), Some(time_ns));
    check_snapshot(&bed.history, &by_time);
    snapshots.push(by_time);
    // Production keeps writing (overwriting the same hot blocks) while more snapshots are
    // taken at `latest`, which moves under them.
    let writer_set = set.clone();
    let creator = std::thread::spawn(move || {
        let mut created = Vec::new();
        for index in 0..4 {
            let snapshot = writer_set
                .create(&format!("live{index}"), &Point::Latest, index % 2 == 1)
                .unwrap();
            created.push(snapshot);
            std::thread::sleep(Duration::from_millis(20));
        }
        created
    });
    bed.write(1000);
    let live = creator.join().unwrap();
    bed.write(1000);
    bed.wait_applied();
    snapshots.extend(live);
    for snapshot in &snapshots {
        check_snapshot(&bed.history, snapshot);
    }
    // The replica itself moved on to the last write.
    check_exact(
        &bed.history,
        bed.history.seq_last(),
        &mut bed.recovery.replica(),
    )
    .unwrap();
    // Usage: every snapshot holds pre-images; the set reports their sum.
    let total: u64 = snapshots.iter().map(|s| s.usage_bytes()).sum();
    assert_eq!(set.usage_bytes(), total);
    assert!(set.usage_pct() > 0.0);
    // Names are checked, a taken name and a point outside the window are refused.
    assert!(matches!(
        set.create("s0", &Point::Latest, false),
        Err(SnapshotError::Exists(_))
    ));
    assert!(matches!(
        set.create("Bad/Name", &Point::Latest, false),
        Err(SnapshotError::InvalidName(_))
    ));
    let beyond = bed.recovery.applied_seq() + 10;
    let error = set
        .create("future", &Point::Seq(beyond), false)
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::Point(_)) && error.to_string().contains("window"),
        "{error}"
    );
    assert!(set.get("future").is_none());
}

#[test]
fn a_writable_snapshot_keeps_its_writes_apart_and_loses_them_on_delete() {
    let mut bed = Bed::new(1200, 256 << 20);
    bed.write(600);
    bed.wait_applied();
    let set = bed.recovery.set().clone();
    let point = bed.recovery.applied_seq() - 100;
    let snapshot = set.create("test", &Point::Seq(point), true).unwrap();
    let lv0 = lv_id_for_name("lv0");
    // Unaligned and aligned writes, then production goes on writing over the same blocks.
    let mine = vec![0xabu8; 3 * 4096];
    snapshot.write_at(lv0, &mine, 4096 + 512).unwrap();
    snapshot.write_zeroes(lv0, 1 << 20, 64 << 10).unwrap();
    snapshot.flush().unwrap();
    let read_only = set.create("ro", &Point::Seq(point), false).unwrap();
    bed.write(600);
    bed.wait_applied();
    let mut read = vec![0u8; mine.len()];
    snapshot.read_at(lv0, &mut read, 4096 + 512).unwrap();
    assert!(read == mine, "the snapshot reads back its own writes");
    let mut zeroes = vec![1u8; 64 << 10];
    snapshot.read_at(lv0, &mut zeroes, 1 << 20).unwrap();
    assert!(zeroes.iter().all(|byte| *byte == 0));
    // The replica never saw them: it is exactly production as of its last write.
    check_exact(
        &bed.history,
        bed.history.seq_last(),
        &mut bed.recovery.replica(),
    )
    .unwrap();
    assert!(snapshot.usage_bytes() > 3 * 4096);
    // A read-only snapshot refuses writes.
    assert!(matches!(
        read_only.write_at(lv0, &mine, 0),
        Err(SnapshotError::ReadOnly(_))
    ));
    // Deleted, its writes are gone: the same point again reads production as of the point.
    let used_before = set.usage_bytes();
    set.delete("test").unwrap();
    assert!(set.usage_bytes() < used_before);
    assert!(matches!(
        set.delete("test"),
        Err(SnapshotError::NotFound(_))
    ));
    let again = set.create("test", &Point::Seq(point), true).unwrap();
    check_snapshot(&bed.history, &again);
    check_snapshot(&bed.history, &read_only);
}

#[test]
fn snapshots_and_their_writes_survive_a_restart() {
    let mut bed = Bed::new(1500, 256 << 20);
    bed.write(500);
    bed.wait_applied();
    let point = bed.recovery.applied_seq() - 50;
    let lv1 = lv_id_for_name("lv1");
    {
        let set = bed.recovery.set().clone();
        set.create("keep", &Point::Seq(point), false).unwrap();
        let writable = set.create("work", &Point::Seq(point), true).unwrap();
        writable.write_at(lv1, &[0x5au8; 8192], 8192).unwrap();
        writable.flush().unwrap();
    }
    bed.write(500);
    bed.wait_applied();
    let port = bed.recovery.port;
    let snapshot_bytes = bed.recovery.snapshot_bytes;
    let dir = bed.recovery.dir.clone();
    bed.recovery.stop();
    // Production writes while the recovery server is down; it catches up after the restart,
    // and the snapshots must see those writes' pre-images too.
    bed.write(500);
    bed.recovery = Recovery::start(&bed.runtime, &dir, port, snapshot_bytes, the_set_itself());
    bed.wait_applied();
    let set = bed.recovery.set().clone();
    let names: Vec<String> = set.list().iter().map(|s| s.name().to_string()).collect();
    assert_eq!(names, vec!["keep".to_string(), "work".to_string()]);
    let keep = set.get("keep").unwrap();
    assert_eq!(keep.point_seq(), point);
    check_snapshot(&bed.history, &keep);
    let work = set.get("work").unwrap();
    let mut read = vec![0u8; 8192];
    work.read_at(lv1, &mut read, 8192).unwrap();
    assert!(read.iter().all(|byte| *byte == 0x5a));
    let usage: u64 = set.list().iter().map(|s| s.usage_bytes()).sum();
    assert_eq!(set.usage_bytes(), usage);
}

#[test]
fn a_snapshot_keeps_its_point_through_a_rollback_of_its_replica_and_the_resume() {
    let mut bed = Bed::new(1000, 256 << 20);
    bed.write(600);
    bed.wait_applied();
    let set = bed.recovery.set().clone();
    let point = bed.recovery.applied_seq() - 50;
    let snapshot = set.create("kept", &Point::Seq(point), false).unwrap();
    bed.write(200);
    bed.wait_applied();
    // The replica goes back before the snapshot's point, then forward again.
    let aba = bed.recovery.aba.clone().unwrap();
    let back_to = point - 200;
    let report = bed.runtime.block_on(aba.rollback(back_to)).unwrap();
    assert_eq!(report.to_seq, back_to);
    check_exact(&bed.history, back_to, &mut bed.recovery.replica()).unwrap();
    check_snapshot(&bed.history, &snapshot);
    bed.runtime.block_on(aba.resume()).unwrap();
    bed.write(200);
    bed.wait_applied();
    check_snapshot(&bed.history, &snapshot);
}

#[test]
fn a_full_snapshot_container_invalidates_the_snapshot_and_apply_goes_on() {
    // 1 MiB of snapshot container: far less than the writes after the point.
    let mut bed = Bed::new(800, 1 << 20);
    bed.write(100);
    bed.wait_applied();
    let set = bed.recovery.set().clone();
    let snapshot = set.create("small", &Point::Latest, true).unwrap();
    bed.write(700);
    bed.wait_applied();
    let reason = snapshot.invalid().expect("the snapshot ran out of room");
    assert!(reason.contains("snapshot container is full"), "{reason}");
    let mut buffer = vec![0u8; 4096];
    assert!(matches!(
        snapshot.read_at(lv_id_for_name("lv0"), &mut buffer, 0),
        Err(SnapshotError::Invalid { .. })
    ));
    // The replica did not stop.
    check_exact(
        &bed.history,
        bed.history.seq_last(),
        &mut bed.recovery.replica(),
    )
    .unwrap();
    // Deleting frees the room; a new snapshot works.
    set.delete("small").unwrap();
    assert_eq!(set.usage_bytes(), 0);
    let fresh = set.create("fresh", &Point::Latest, false).unwrap();
    check_snapshot(&bed.history, &fresh);
}

/// The snapshot's LVs served over NBD on loopback, as the agent does.
fn serve_snapshot(bed: &Bed, snapshot: &Arc<Snapshot>) -> (String, watch::Sender<bool>) {
    let exports = snapshot
        .volumes()
        .iter()
        .map(|volume| BackendExport {
            name: format!("{}.{}", snapshot.name(), volume.name),
            description: String::new(),
            backend: Arc::new(SnapshotExport {
                snapshot: snapshot.clone(),
                lv_id: volume.lv_id,
            }) as Arc<dyn ExportBackend>,
        })
        .collect();
    let bound = bed
        .runtime
        .block_on(bind(&Listen::Tcp("127.0.0.1:0".into())))
        .unwrap();
    let base = bound.uri("x").trim_end_matches("/x").to_string();
    let (stop, stopped) = watch::channel(false);
    bed.runtime.spawn(serve(
        bound,
        Arc::new(Exports::with_backends(exports)),
        stopped,
    ));
    (base, stop)
}

#[test]
fn snapshot_exports_read_by_nbdcopy_and_qemu_io_while_fio_writes_production() {
    let mut bed = Bed::new(1500, 256 << 20);
    bed.write(1500);
    bed.wait_applied();
    let point = bed.recovery.applied_seq();
    let set = bed.recovery.set().clone();
    let snapshot = set.create("exp", &Point::Seq(point), false).unwrap();
    let writable = set.create("dev", &Point::Seq(point), true).unwrap();
    let (base, stop_exports) = serve_snapshot(&bed, &snapshot);
    let (dev_base, stop_dev) = serve_snapshot(&bed, &writable);
    // fio overwrites production's lv0 with verified random data meanwhile.
    let production_uri = format!("nbd://{}/lv0", bed.nbd_address);
    let fio = std::thread::spawn(move || {
        run_ok(
            "fio",
            &[
                "--name=prod",
                "--ioengine=nbd",
                &format!("--uri={production_uri}"),
                "--rw=randwrite",
                "--bs=64k",
                "--iodepth=8",
                "--size=16M",
                "--loops=3",
                "--verify=crc32c",
                "--verify_state_save=0",
                "--verify_fatal=1",
                "--do_verify=1",
            ],
        )
    });
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    wait_until("fio's writes reach the replica", || {
        bed.recovery.applied_seq() > point + 50
    });
    for (index, size) in LV_SIZES_BYTES.iter().enumerate() {
        let image = work.path().join(format!("lv{index}.img"));
        run_ok(
            "nbdcopy",
            &[
                &format!("{base}/exp.lv{index}"),
                &image.display().to_string(),
            ],
        );
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(bytes.len() as u64, *size);
        images.push(bytes);
    }
    let fio_output = fio.join().unwrap();
    assert!(fio_output.contains("WRITE:"), "{fio_output}");
    bed.wait_applied();
    assert!(
        bed.recovery.applied_seq() > point + 100,
        "fio's writes were applied"
    );
    check_exact(&bed.history, point, &mut MemoryImages::from_lvs(images))
        .unwrap_or_else(|violation| panic!("nbdcopy of the snapshot: {violation}"));
    // qemu-io: a read-only export refuses writes; the writable one takes them, reads them
    // back, and they never reach the replica.
    let refused = redoubt_testkit::peers::run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 64k",
            &format!("{base}/exp.lv0"),
        ],
    );
    let refused_text = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused_text.contains("ermission")
            || refused_text.contains("read-only")
            || refused_text.contains("Read-only"),
        "{refused_text}"
    );
    let replica_lv1 = || {
        std::fs::read(
            bed.recovery
                .dir
                .join(format!("groups/{GROUP}/replication/lv1")),
        )
        .unwrap()
    };
    let replica_before = replica_lv1();
    let dev_uri = format!("{dev_base}/dev.lv1");
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x77 128k 256k",
            "-c",
            "flush",
            &dev_uri,
        ],
    );
    let read = run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x77 128k 256k", &dev_uri],
    );
    assert!(read.contains("read 262144/262144"), "{read}");
    assert!(
        replica_lv1() == replica_before,
        "the writable snapshot's writes never reach the replica"
    );
    let _ = stop_dev.send(true);
    let _ = stop_exports.send(true);
    set.delete("dev").unwrap();
    let again = set.create("dev", &Point::Seq(point), false).unwrap();
    check_snapshot(&bed.history, &again);
}

/// What a resync target looked like in the middle of a super transaction, seen from its apply
/// thread: the pre-resync snapshot's whole image, read between two runs of resync records.
#[derive(Default)]
struct MidResync {
    /// Runs applied since `resync:begin`; `None` outside a super transaction.
    runs_since_begin: Option<u64>,
    began: Vec<(u64, bool)>,
    ended: Vec<u64>,
    /// (point seq, LV images) of the pre-resync snapshot, and the replica's resync state then.
    seen: Option<(u64, Vec<Vec<u8>>, u64, bool)>,
    /// A run of the super transaction found no pre-resync snapshot.
    missing: bool,
}

struct MidResyncObserver {
    set: Arc<SnapshotSet>,
    aba_status: std::sync::OnceLock<Arc<redoubt_replication::aba::AbaStatus>>,
    findings: Arc<std::sync::Mutex<MidResync>>,
}

impl ApplyObserver for MidResyncObserver {
    fn before_apply(
        &self,
        run: &[redoubt_journal::OwnedRecord],
        replica: &std::collections::BTreeMap<u32, Arc<redoubt_volume::Volume>>,
    ) {
        self.set.before_apply(run, replica);
        let mut findings = self.findings.lock().unwrap();
        let Some(runs) = findings.runs_since_begin.as_mut() else {
            return;
        };
        *runs += 1;
        if findings.seen.is_some() {
            return;
        }
        // The replica has applied the begin marker and some regions: it is a mix now.
        let Some(snapshot) = self
            .set
            .get(redoubt_replication::snapshot::PRE_RESYNC_SNAPSHOT_NAME)
        else {
            // Judged by the test thread (a panic here would only stop apply).
            findings.missing = true;
            return;
        };
        let images = LV_SIZES_BYTES
            .iter()
            .enumerate()
            .map(|(index, size)| {
                let mut image = vec![0u8; *size as usize];
                snapshot
                    .read_at(lv_id_for_name(&format!("lv{index}")), &mut image, 0)
                    .unwrap();
                image
            })
            .collect();
        let status = self.aba_status.get().unwrap();
        findings.seen = Some((
            snapshot.point_seq(),
            images,
            status.resync_begin_seq.load(Ordering::Acquire),
            status.replica_synced.load(Ordering::Acquire),
        ));
    }

    fn resync_changed(&self, event: redoubt_replication::resync::ResyncEvent) {
        use redoubt_replication::resync::ResyncEvent;
        self.set.resync_changed(event);
        let mut findings = self.findings.lock().unwrap();
        match event {
            ResyncEvent::Began {
                begin_seq,
                consistent_before,
            } => {
                findings.began.push((begin_seq, consistent_before));
                findings.runs_since_begin = Some(0);
            }
            ResyncEvent::Ended { end_seq, .. } => {
                findings.ended.push(end_seq);
                findings.runs_since_begin = None;
            }
        }
    }
}

#[test]
fn a_resync_target_keeps_a_snapshot_of_its_state_before_the_resync_until_it_completes() {
    let findings = Arc::new(std::sync::Mutex::new(MidResync::default()));
    let status_slot: Arc<std::sync::OnceLock<Arc<MidResyncObserver>>> = Arc::default();
    let wrap: WrapObserver = {
        let findings = findings.clone();
        let status_slot = status_slot.clone();
        Box::new(move |set| {
            let observer = Arc::new(MidResyncObserver {
                set,
                aba_status: std::sync::OnceLock::new(),
                findings,
            });
            let _ = status_slot.set(observer.clone());
            observer
        })
    };
    let mut bed = Bed::observed(1600, 256 << 20, wrap);
    let _ = status_slot
        .get()
        .unwrap()
        .aba_status
        .set(bed.recovery.aba.as_ref().unwrap().status().clone());
    // The replica followed production from seq 1: consistent at every seq.
    bed.write(800);
    bed.wait_applied();
    let before = bed.watermarks.durable_seq.load(Ordering::Acquire);
    assert_eq!(before, bed.history.seq_last(), "only writes so far");
    let status = bed.recovery.aba.as_ref().unwrap().status().clone();
    assert!(status.replica_synced.load(Ordering::Acquire));

    // A full sync of every LV (what step 12 or a checksum resync starts), with production
    // writing on during it.
    let engine = bed.engine.clone().unwrap();
    bed.runtime
        .block_on(engine.submit(redoubt_datatap::Op::FullSync {
            lv_ids: Vec::new(),
            targets: redoubt_datatap::ResyncTargets::Every,
        }))
        .unwrap();
    bed.write(400);
    wait_until("the super transaction ended on production", || {
        !bed.watermarks.needs_resync.load(Ordering::Acquire)
    });
    bed.write(10);
    bed.wait_applied();

    let findings = findings.lock().unwrap();
    assert_eq!(
        findings.began,
        vec![(before + 1, true)],
        "one super transaction, begun right after the writes, on a consistent replica"
    );
    assert!(
        !findings.missing,
        "no pre-resync snapshot in the middle of the super transaction"
    );
    assert_eq!(findings.ended.len(), 1, "and it ended");
    assert!(findings.ended[0] > before + 1);
    let (point_seq, images, begin_seq_then, synced_then) = findings
        .seen
        .clone()
        .expect("the snapshot was read in the middle of the super transaction");
    assert_eq!(
        point_seq, before,
        "the snapshot keeps the seq before the begin marker"
    );
    assert_eq!(
        begin_seq_then,
        before + 1,
        "read while the resync was under way"
    );
    assert!(!synced_then, "the replica was a mix then");
    // The mid-resync snapshot is production as of the seq before the resync, exactly.
    check_exact(&bed.history, before, &mut MemoryImages::from_lvs(images))
        .unwrap_or_else(|violation| panic!("pre-resync snapshot at seq {before}: {violation}"));
    // Done: the snapshot is gone, its space too, and the replica equals production.
    assert!(bed
        .recovery
        .set()
        .get(redoubt_replication::snapshot::PRE_RESYNC_SNAPSHOT_NAME)
        .is_none());
    assert_eq!(bed.recovery.set().usage_bytes(), 0);
    assert!(status.replica_synced.load(Ordering::Acquire));
    assert_eq!(status.resync_begin_seq.load(Ordering::Acquire), 0);
    check_exact(
        &bed.history,
        bed.history.seq_last(),
        &mut bed.recovery.replica(),
    )
    .unwrap();
    let note = bed.recovery.set().pre_resync_note().unwrap();
    assert!(note.contains("deleted"), "{note}");

    // The seqs of the super transaction are no point to restore to: a snapshot or a
    // rollback there is refused and changes nothing; before it and from its end on is fine.
    let end_seq = findings.ended[0];
    let set = bed.recovery.set().clone();
    let inside = set.create("inside", &Point::Seq(before + 2), false);
    match inside {
        Err(SnapshotError::Point(reason)) => {
            assert!(reason.contains("inside the super transaction"), "{reason}")
        }
        other => panic!("a snapshot inside the super transaction: {:?}", other.err()),
    }
    assert!(set.get("inside").is_none());
    let aba = bed.recovery.aba.clone().unwrap();
    let refused = bed.runtime.block_on(aba.rollback(end_seq - 1)).unwrap_err();
    assert!(
        refused.to_string().contains("inside the super transaction"),
        "{refused}"
    );
    assert!(!status.paused.load(Ordering::Acquire), "nothing changed");
    let at_end = set.create("at-end", &Point::Seq(end_seq), false).unwrap();
    assert_eq!(at_end.invalid(), None);
    let before_it = set.create("before-it", &Point::Seq(before), false).unwrap();
    check_snapshot(&bed.history, &before_it);
}
