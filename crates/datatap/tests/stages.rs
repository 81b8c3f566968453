//! The engine's stages overlap: the commit thread appends and acknowledges, a sync thread
//! runs the group commit's fdatasync, and the applier writes the LVs behind them. These
//! tests pin the orderings between the stages that clients and crash recovery rely on.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::MemoryVolume;
use redoubt_datatap::{BlockVolume, Engine, EngineConfig, FsVolume, Op, Payload};
use redoubt_journal::{PowerCut, SimFs, StdFs};

const LV_BYTES: u64 = 1 << 20;

fn start_gated(dir: &Path) -> (Engine, u32, Arc<GatedVolume>, std::thread::JoinHandle<()>) {
    let gated = Arc::new(GatedVolume::closed(LV_BYTES));
    let volume: Arc<dyn BlockVolume> = gated.clone();
    let (engine, opened, thread) = Engine::start(
        StdFs,
        &dir.join("group"),
        &dir.join("journal"),
        vec![("a".to_string(), volume)],
        EngineConfig::new("g", 64 << 20),
    )
    .unwrap();
    (engine, opened[0].lv_id, gated, thread)
}

#[test]
fn a_read_of_an_acknowledged_write_not_yet_applied_returns_the_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, lv_id, gated, thread) = start_gated(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let written = engine
        .submit_blocking(Op::Write {
            lv_id,
            offset_bytes: 8192,
            data: Payload::from_slice(&[0x5a; 4096]),
            fua: false,
        })
        .unwrap();
    // Durable, and handed to the applier, which is stuck at the LV's closed gate.
    engine.submit_blocking(Op::Flush).unwrap();
    assert!(engine.watermarks().durable_seq.load(Ordering::Acquire) >= written);
    assert!(engine.watermarks().applied_seq.load(Ordering::Acquire) < written);
    assert!(engine.must_settle_before_read(lv_id, 8192, 4096));
    assert!(!engine.must_settle_before_read(lv_id, 0, 8192));

    let reader = {
        let engine = engine.clone();
        let gated = gated.clone();
        runtime.spawn(async move {
            engine.wait_readable(lv_id, 8192, 4096).await.unwrap();
            let mut bytes = vec![0u8; 4096];
            gated.read_at(&mut bytes, 8192).unwrap();
            bytes
        })
    };
    // A read of other blocks does not wait for the stuck apply.
    runtime
        .block_on(engine.wait_readable(lv_id, 0, 8192))
        .unwrap();
    gated.set_open(true);
    let bytes = runtime.block_on(reader).unwrap();
    assert!(
        bytes.iter().all(|byte| *byte == 0x5a),
        "the read saw the LV before the write"
    );
    assert!(engine.watermarks().applied_seq.load(Ordering::Acquire) >= written);
    drop(engine);
    thread.join().unwrap();
}

#[test]
fn a_checkpoint_never_passes_the_applier() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, lv_id, gated, thread) = start_gated(dir.path());
    let before = engine.watermarks().checkpoint_seq.load(Ordering::Acquire);
    let mut last = 0;
    for index in 0..8u64 {
        last = engine
            .submit_blocking(Op::Write {
                lv_id,
                offset_bytes: index * 4096,
                data: Payload::from_slice(&[index as u8 + 1; 4096]),
                fua: index == 7,
            })
            .unwrap();
    }
    // Every write is durable; none is in the LV: a checkpoint now would have to wait.
    let checkpoint = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.submit_blocking(Op::Checkpoint).unwrap())
    };
    while gated.waiting.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let watermarks = engine.watermarks();
    assert_eq!(watermarks.checkpoint_seq.load(Ordering::Acquire), before);
    assert!(watermarks.applied_seq.load(Ordering::Acquire) < last);
    gated.set_open(true);
    let checkpointed = checkpoint.join().unwrap();
    assert_eq!(
        checkpointed, last,
        "the checkpoint covers what the applier wrote, all of it"
    );
    assert!(
        watermarks.checkpoint_seq.load(Ordering::Acquire)
            <= watermarks.applied_seq.load(Ordering::Acquire)
    );
    drop(engine);
    thread.join().unwrap();
}

#[test]
fn a_flush_reply_never_precedes_the_fdatasync_that_covers_it() {
    // The power goes out the moment each FLUSH is answered: every write before it survives.
    for round in 0..40u64 {
        let fs = SimFs::new();
        let start = |fs: &SimFs| {
            let volume = FsVolume::open(fs, Path::new("/g/lv"), LV_BYTES).unwrap();
            let (engine, opened, thread) = Engine::start(
                fs.clone(),
                Path::new("/g"),
                Path::new("/g/journal"),
                vec![("lv".to_string(), Arc::new(volume) as Arc<dyn BlockVolume>)],
                EngineConfig::new("g", 1 << 20),
            )
            .unwrap();
            (engine, opened[0].lv_id, opened[0].volume.clone(), thread)
        };
        let (engine, lv_id, _, thread) = start(&fs);
        let writes = 1 + round % 7;
        for index in 0..writes {
            engine
                .submit_blocking(Op::Write {
                    lv_id,
                    offset_bytes: index * 4096,
                    data: Payload::from_slice(&[(round + index) as u8 | 1; 4096]),
                    fua: false,
                })
                .unwrap();
        }
        engine.submit_blocking(Op::Flush).unwrap();
        fs.crash_after(0);
        drop(engine);
        thread.join().unwrap();
        fs.power_cut(PowerCut::DropUnsynced);

        let (engine, _, volume, thread) = start(&fs);
        for index in 0..writes {
            let mut bytes = vec![0u8; 4096];
            volume.read_at(&mut bytes, index * 4096).unwrap();
            assert!(
                bytes.iter().all(|byte| *byte == (round + index) as u8 | 1),
                "round {round}: write {index} was acknowledged before a FLUSH and lost"
            );
        }
        drop(engine);
        thread.join().unwrap();
    }
}

/// An in-memory LV whose writes wait while its gate is closed: a slow applier, on demand.
pub struct GatedVolume {
    pub memory: MemoryVolume,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Writes that have started and are waiting at the closed gate.
    pub waiting: std::sync::atomic::AtomicU64,
}

impl GatedVolume {
    pub fn closed(size_bytes: u64) -> GatedVolume {
        GatedVolume {
            memory: MemoryVolume::zeroed(size_bytes, std::time::Duration::ZERO),
            open: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
            waiting: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }

    fn pass_gate(&self) {
        let mut open = self.open.lock().unwrap();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl BlockVolume for GatedVolume {
    fn size_bytes(&self) -> u64 {
        self.memory.size_bytes()
    }
    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> std::io::Result<()> {
        self.memory.read_at(buffer, offset_bytes)
    }
    fn write_at(&self, bytes: &[u8], offset_bytes: u64) -> std::io::Result<()> {
        self.pass_gate();
        self.memory.write_at(bytes, offset_bytes)
    }
    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        self.pass_gate();
        self.memory.write_zeroes(offset_bytes, length_bytes)
    }
    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        self.write_zeroes(offset_bytes, length_bytes)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}
