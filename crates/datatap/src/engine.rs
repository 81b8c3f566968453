//! The group engine: the one place where a replication group's writes get their order.
//!
//! ```text
//!  NBD connections ──Op──▶ queue (bounded) ──▶ commit thread:
//!                                                1. append the batch to the journal
//!                                                2. hand it to the OS (write, no fsync)
//!                                                3. acknowledge plain writes
//!                                                4. when a FLUSH/FUA/read needs it, or every
//!                                                   SYNC_INTERVAL_MS: one fdatasync (group
//!                                                   commit), then apply to the LVs in seq order
//! ```
//!
//! # Durability contract
//!
//! - A reply to FLUSH, or to a write with FUA, means every write acknowledged before it is
//!   in the fdatasync'ed journal, so it survives a power cut.
//! - A plain write is acknowledged once its record is in the OS (written, not synced): a
//!   crash of any process loses no acknowledged write; a power cut may lose the writes after
//!   the last FLUSH, as NBD allows. Durable no later than `sync_interval_ms` anyway.
//! - The LVs are written only with records that are already durable in the journal. Were an
//!   LV written first, a power cut could keep the LV block and lose its record, and the
//!   replicas (fed from the journal) would never learn of a write that production holds.
//! - The LVs are fdatasync'ed only at checkpoints; on start, the journal records after the
//!   last checkpoint are replayed onto them.
//!
//! Until a write is applied to its LV, a read of its blocks first forces the sync and apply
//! (see [`Engine::must_settle_before_read`]), so reads always see acknowledged writes.
//!
//! # Ordering
//!
//! One thread appends and applies, so the LVs receive writes in journal order even when a
//! client has overlapping writes in flight: production's LVs and the journal never disagree
//! about which of two overlapping writes came last. Large writes that share no byte are
//! written several at a time (their order cannot matter; a crash replays them all from the
//! journal anyway), and overlapping ones never share such a run.
//!
//! # Journal overflow
//!
//! When the journal is full even after a checkpoint and a prune (records not yet shipped to
//! a recovery server are kept), writes go straight to the LVs and the group is marked as
//! needing a resync, persisted before the first such write. Client writes never fail or
//! block because a recovery server is away.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redoubt_journal::{
    Entry, GroupId, Journal, JournalConfig, JournalError, JournalFs, OwnedRecord, PreparedSync,
    RecordKind, ResyncTargets, StdFs,
};
use redoubt_volume::{CreateLvOptions, GroupStore, IoMode, VolumeSpec};

use crate::block::BlockVolume;
use tokio::sync::oneshot;

use crate::error::DatatapError;
use crate::payload::Payload;
use crate::state::GroupState;

/// Ops waiting for the commit thread; senders wait beyond this (backpressure).
pub const QUEUE_DEPTH_MAX: usize = 1024;
/// Most ops in one group commit.
pub const BATCH_OPS_MAX: usize = 512;
/// Most payload bytes in one group commit.
pub const BATCH_BYTES_MAX: u64 = 64 << 20;
/// Default journal bytes written between two checkpoints.
pub const CHECKPOINT_INTERVAL_BYTES_DEFAULT: u64 = 256 << 20;
/// An idle engine checkpoints after this long, so a restart replays little.
pub const CHECKPOINT_IDLE_MS_DEFAULT: u64 = 2000;
/// Acknowledged writes become durable (and reach the LVs and the send process) within this.
pub const SYNC_INTERVAL_MS_DEFAULT: u64 = 20;
/// Acknowledged data held in memory waiting for its fdatasync; beyond it, sync now.
pub const UNSYNCED_BYTES_MAX: u64 = 64 << 20;
pub use crate::applier::{APPLY_BACKLOG_BYTES_MAX, APPLY_RUN_OPS_MAX, APPLY_THREADS_MAX};
/// A sync-mode write waits this long for the recovery servers; then the group turns async,
/// loudly, rather than hang its clients (status: `sync_degraded`).
pub const SYNC_TARGET_TIMEOUT_MS_DEFAULT: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub group: String,
    pub journal_capacity_bytes: u64,
    pub segment_size_bytes: u64,
    pub checkpoint_interval_bytes: u64,
    pub checkpoint_idle_ms: u64,
    pub sync_interval_ms: u64,
    pub io_mode: IoMode,
    /// Sync mode: a write is acknowledged only once every recovery server holds it durably.
    pub sync_replication: bool,
    /// How long a sync-mode write waits for the targets before the group turns async.
    pub sync_target_timeout_ms: u64,
}

impl EngineConfig {
    pub fn new(group: &str, journal_capacity_bytes: u64) -> EngineConfig {
        // A segment is at most an eighth of the container, so pruning can free space in steps.
        let segment_size_bytes = (journal_capacity_bytes / 8).clamp(
            redoubt_journal::SEGMENT_SIZE_BYTES_MIN,
            redoubt_journal::SEGMENT_SIZE_BYTES_DEFAULT,
        );
        EngineConfig {
            group: group.to_string(),
            journal_capacity_bytes,
            segment_size_bytes,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES_DEFAULT
                .min(journal_capacity_bytes / 2),
            checkpoint_idle_ms: CHECKPOINT_IDLE_MS_DEFAULT,
            sync_interval_ms: SYNC_INTERVAL_MS_DEFAULT,
            // The LVs take only journal-durable records, in batches, and are fdatasync'ed at
            // checkpoints: the page cache absorbs that well, while O_DIRECT makes the one
            // applying thread wait for the device on every write (measured: random 4 KiB
            // writes 20.3k IOPS buffered vs 5.7k direct; README, "Benchmarks").
            io_mode: IoMode::Hybrid,
            sync_replication: false,
            sync_target_timeout_ms: SYNC_TARGET_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// What a connection asks of the group.
#[derive(Debug)]
pub enum Op {
    Write {
        lv_id: u32,
        offset_bytes: u64,
        data: Payload,
        fua: bool,
    },
    WriteZeroes {
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u32,
        fua: bool,
    },
    Trim {
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u32,
    },
    /// Completes once everything submitted before it is durable.
    Flush,
    /// A named point in the history (`redoubt mark`).
    Marker { name: String },
    /// Syncs the LVs and records a checkpoint now.
    Checkpoint,
    /// Starts a super transaction: every region of these LVs (all LVs when empty) is sent to
    /// the recovery servers again, in order with new writes (initialization steps 12 and 13),
    /// for `targets` (the others stay consistent through it).
    FullSync {
        lv_ids: Vec<u32>,
        targets: ResyncTargets,
    },
    /// Checksum resync: these (lv_id, region of `DIRTY_REGION_BYTES`) regions are sent again,
    /// as a super transaction, through the same path as a full sync (`redoubt resync
    /// --checksum` marks the regions whose hashes differ on a replica).
    ResyncRegions {
        regions: Vec<(u32, u64)>,
        targets: ResyncTargets,
    },
}

impl Op {
    pub(crate) fn payload_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("the group's data path has stopped: {0}")]
    Stopped(String),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<u64, OpError>>,
}

/// Watermarks for status and tests. `applied ≤ durable ≤ appended`, `checkpoint ≤ applied`.
#[derive(Debug, Default)]
pub struct Watermarks {
    pub appended_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub applied_seq: AtomicU64,
    pub checkpoint_seq: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub needs_resync: AtomicBool,
    /// Bytes of dirty regions still to resync after a journal overflow.
    pub resync_remaining_bytes: AtomicU64,
    /// Bytes of the running super transaction (full, overflow or checksum resync): what
    /// `resync_remaining_bytes` counts down from; 0 when none runs.
    pub resync_total_bytes: AtomicU64,
    /// Whom the running super transaction is for; the other recovery servers are not
    /// syncing (their progress reads 100 %).
    pub resync_targets: std::sync::Mutex<ResyncTargets>,
    /// The LCA raises this as targets acknowledge; the journal is pruned only up to it.
    /// `u64::MAX` while the group has no send process.
    pub shipped_seq: AtomicU64,
    /// Woken whenever `durable_seq` moves, so the send process ships without polling.
    pub durable_changed: tokio::sync::Notify,
    /// Woken whenever `shipped_seq` moves (a target acknowledged), for sync mode.
    pub shipped_changed: tokio::sync::Notify,
    /// Woken whenever `applied_seq` moves or the engine stops: reads of blocks whose write is
    /// acknowledged but not yet in the LV wait on it.
    pub applied_changed: tokio::sync::Notify,
    /// Sync mode gave up waiting for a target and the group runs async until the targets
    /// catch up again.
    pub sync_degraded: AtomicBool,
    /// Open while this server holds the production fence of the group (`gate.rs`); writes
    /// fail while it is closed. Open for good when no fence is configured.
    pub write_gate: crate::gate::WriteGate,
}

pub(crate) struct Shared {
    group: String,
    volumes: BTreeMap<u32, Arc<dyn BlockVolume>>,
    pub(crate) watermarks: Arc<Watermarks>,
    failure: Mutex<Option<String>>,
    /// Acknowledged writes not yet applied to their LV.
    pub(crate) pending: Mutex<crate::pending::PendingWrites>,
    journal: JournalLocation,
    sync_replication: bool,
    sync_target_timeout_ms: u64,
    /// Online verify's copy-before-write hashing seam (`verify.rs`).
    pub(crate) verify: Arc<crate::verify::VerifyHook>,
}

impl Shared {
    /// Why the data path stopped, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    /// Stops the group's data path for good; the first reason wins. Logged once, here.
    pub(crate) fn fail(&self, reason: String) {
        if let Ok(mut failure) = self.failure.lock() {
            if failure.is_none() {
                tracing::error!(group = %self.group, %reason, "datatap stopped");
                *failure = Some(reason);
            }
        }
        // Readers waiting for an apply that will never come must see the failure.
        self.watermarks.applied_changed.notify_waiters();
    }
}

/// A handle on a group's engine; cheap to clone, one per connection.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    queue: flume::Sender<Pending>,
}

/// Where the group's journal is and what identifies it: what the send process needs to read it.
#[derive(Clone, Debug)]
pub struct JournalLocation {
    pub dir: std::path::PathBuf,
    pub group_id: GroupId,
}

pub struct OpenedVolume {
    pub name: String,
    pub lv_id: u32,
    pub volume: Arc<dyn BlockVolume>,
}

impl Engine {
    /// Opens (or creates) the group's LVs in `store` and its journal, replays the journal past
    /// the last checkpoint onto the LVs, and starts the commit thread.
    pub fn open(
        store: &mut GroupStore,
        specs: &[VolumeSpec],
        config: EngineConfig,
    ) -> Result<(Engine, Vec<OpenedVolume>, std::thread::JoinHandle<()>), DatatapError> {
        let mut volumes: Vec<(String, Arc<dyn BlockVolume>)> = Vec::new();
        for spec in specs {
            let volume = store.ensure_volume(spec, CreateLvOptions::default(), config.io_mode)?;
            volumes.push((spec.name.clone(), Arc::new(volume)));
        }
        let group_dir = store.layout().group_dir().to_path_buf();
        let journal_dir = store.layout().journal_dir();
        Engine::start(StdFs, &group_dir, &journal_dir, volumes, config)
    }

    /// [`Engine::open`] over any file system and any LVs: the seam that lets tests cut the power.
    pub fn start<F: JournalFs>(
        fs: F,
        group_dir: &std::path::Path,
        journal_dir: &std::path::Path,
        volumes: Vec<(String, Arc<dyn BlockVolume>)>,
        config: EngineConfig,
    ) -> Result<(Engine, Vec<OpenedVolume>, std::thread::JoinHandle<()>), DatatapError> {
        fs.create_dir_all(group_dir)
            .map_err(|source| DatatapError::io("create group directory", group_dir, source))?;
        let mut state = match GroupState::load(&fs, group_dir)? {
            Some(state) => state,
            None => GroupState::new(rand::random()),
        };
        let mut opened: Vec<OpenedVolume> = Vec::new();
        for (name, volume) in volumes {
            let lv_id = state.lv_id(&name).map_err(DatatapError::Config)?;
            opened.push(OpenedVolume {
                lv_id,
                name,
                volume,
            });
        }
        // The ids must be durable before any record carrying them is.
        state.save(&fs, group_dir)?;
        let group_id = state
            .group_id_bytes()
            .ok_or_else(|| DatatapError::Config("bad group id in state".into()))?;
        let mut journal_config =
            JournalConfig::new(GroupId(group_id), config.journal_capacity_bytes);
        journal_config.segment_size_bytes = config.segment_size_bytes;
        journal_config.seq_first_new = state.checkpoint_seq + 1;
        let journal = Journal::open(fs.clone(), journal_dir, journal_config)?;

        let volumes: BTreeMap<u32, Arc<dyn BlockVolume>> =
            opened.iter().map(|v| (v.lv_id, v.volume.clone())).collect();
        let replayed = replay(&journal, &volumes, state.checkpoint_seq)?;
        for volume in volumes.values() {
            volume.sync().map_err(|source| {
                DatatapError::io("sync volume after replay", group_dir, source)
            })?;
        }
        state.checkpoint_seq = journal.durable_seq();
        state.save(&fs, group_dir)?;
        if replayed > 0 {
            tracing::info!(group = %config.group, replayed, "replayed journal records onto the volumes");
        }

        let watermarks = Arc::new(Watermarks::default());
        for watermark in [
            &watermarks.appended_seq,
            &watermarks.durable_seq,
            &watermarks.applied_seq,
        ] {
            watermark.store(journal.durable_seq(), Ordering::Relaxed);
        }
        watermarks
            .checkpoint_seq
            .store(state.checkpoint_seq, Ordering::Relaxed);
        watermarks
            .journal_bytes
            .store(journal.size_bytes(), Ordering::Relaxed);
        watermarks
            .needs_resync
            .store(state.needs_resync, Ordering::Relaxed);
        watermarks.resync_remaining_bytes.store(
            state
                .dirty_regions
                .values()
                .map(|set| set.len() as u64)
                .sum::<u64>()
                * crate::state::DIRTY_REGION_BYTES,
            Ordering::Relaxed,
        );
        watermarks.resync_total_bytes.store(
            watermarks.resync_remaining_bytes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if let Ok(mut targets) = watermarks.resync_targets.lock() {
            *targets = state.resync_targets();
        }
        watermarks.shipped_seq.store(u64::MAX, Ordering::Relaxed);

        let shared = Arc::new(Shared {
            group: config.group.clone(),
            volumes: volumes.clone(),
            watermarks: watermarks.clone(),
            failure: Mutex::new(None),
            pending: Mutex::new(crate::pending::PendingWrites::default()),
            journal: JournalLocation {
                dir: journal_dir.to_path_buf(),
                group_id: GroupId(group_id),
            },
            sync_replication: config.sync_replication,
            sync_target_timeout_ms: config.sync_target_timeout_ms,
            verify: Arc::new(crate::verify::VerifyHook::new(
                journal.durable_seq(),
                opened
                    .iter()
                    .map(|v| crate::verify::VerifyVolume {
                        name: v.name.clone(),
                        lv_id: v.lv_id,
                        volume: v.volume.clone(),
                    })
                    .collect(),
            )),
        });
        let (sender, receiver) = flume::bounded(QUEUE_DEPTH_MAX);
        // Unbounded in count, bounded in bytes by the backlog; at most one drain or
        // checkpoint request waits at a time, and notices come one per checkpoint.
        let (work_sender, work_receiver) = flume::unbounded();
        let (notice_sender, notice_receiver) = flume::unbounded();
        let backlog = Arc::new(crate::applier::Backlog::default());
        let applier = crate::applier::Applier {
            volumes: volumes.clone(),
            shared: shared.clone(),
            work: work_receiver,
            notices: notice_sender,
            backlog: backlog.clone(),
            applied_seq: journal.durable_seq(),
            synced_seq: journal.durable_seq(),
            bytes_since_checkpoint: 0,
            checkpoint_interval_bytes: config.checkpoint_interval_bytes,
            checkpoint_idle_ms: config.checkpoint_idle_ms,
        };
        let applier_thread = std::thread::Builder::new()
            .name(format!("apply-{}", shared.group))
            .spawn(move || applier.run())
            .map_err(|source| DatatapError::io("spawn apply thread", group_dir, source))?;
        let (sync_sender, sync_receiver) = flume::bounded::<PreparedSync<F>>(1);
        let (synced_sender, synced_receiver) = flume::bounded(1);
        let syncer_thread = std::thread::Builder::new()
            .name(format!("sync-{}", shared.group))
            .spawn(move || {
                while let Ok(prepared) = sync_receiver.recv() {
                    if synced_sender.send(prepared.run()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| DatatapError::io("spawn sync thread", group_dir, source))?;
        let committer = Committer {
            syncer: Some(sync_sender),
            syncer_thread: Some(syncer_thread),
            synced: synced_receiver,
            sync_in_flight: None,
            durable_waiters: VecDeque::new(),
            fs,
            journal,
            volumes,
            state,
            group_dir: group_dir.to_path_buf(),
            queue: receiver,
            shared: shared.clone(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            unsynced_since: None,
            applier: Some(work_sender),
            applier_thread: Some(applier_thread),
            notices: notice_receiver,
            backlog,
            overflow_unsynced: false,
            overflowed_in_batch: false,
            resync_blocked_until: None,
            config,
        };
        let thread = std::thread::Builder::new()
            .name(format!("commit-{}", shared.group))
            .spawn(move || committer.run())
            .map_err(|source| DatatapError::io("spawn commit thread", group_dir, source))?;
        Ok((
            Engine {
                shared,
                queue: sender,
            },
            opened,
            thread,
        ))
    }

    /// Whether writes wait for the recovery servers (sync mode, not degraded to async).
    pub fn sync_replication(&self) -> bool {
        self.shared.sync_replication
    }

    /// Sync mode: waits until every recovery server holds `seq` durably, or turns the group
    /// async after the timeout. Returns at once while the group is degraded, until the targets
    /// hold everything before `seq`, which restores sync mode.
    pub async fn wait_shipped(&self, seq: u64) {
        let watermarks = &self.shared.watermarks;
        if watermarks.sync_degraded.load(Ordering::Acquire) {
            // Caught up: the targets hold everything before this write.
            if watermarks
                .shipped_seq
                .load(Ordering::Acquire)
                .saturating_add(1)
                >= seq
            {
                watermarks.sync_degraded.store(false, Ordering::Release);
                tracing::warn!(group = %self.shared.group, "recovery servers caught up: sync mode restored");
            } else {
                return;
            }
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.shared.sync_target_timeout_ms);
        loop {
            let shipped_changed = watermarks.shipped_changed.notified();
            tokio::pin!(shipped_changed);
            shipped_changed.as_mut().enable();
            if watermarks.shipped_seq.load(Ordering::Acquire) >= seq {
                return;
            }
            if tokio::time::timeout_at(deadline, shipped_changed)
                .await
                .is_err()
            {
                if !watermarks.sync_degraded.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        group = %self.shared.group,
                        timeout_ms = self.shared.sync_target_timeout_ms,
                        "a recovery server did not acknowledge in time: the group continues in ASYNC mode until it catches up"
                    );
                }
                return;
            }
        }
    }

    pub fn journal(&self) -> &JournalLocation {
        &self.shared.journal
    }

    pub fn watermarks(&self) -> &Arc<Watermarks> {
        &self.shared.watermarks
    }

    /// Total size of the group's LVs, the denominator of the resync (super transaction) %.
    pub fn volumes_bytes(&self) -> u64 {
        self.shared
            .volumes
            .values()
            .map(|volume| volume.size_bytes())
            .sum()
    }

    /// Online verify of this group's LVs (`verify.rs`).
    pub fn verify_hook(&self) -> &Arc<crate::verify::VerifyHook> {
        &self.shared.verify
    }

    pub fn volume(&self, lv_id: u32) -> Option<&Arc<dyn BlockVolume>> {
        self.shared.volumes.get(&lv_id)
    }

    /// Why the engine stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Whether a read of `[offset, offset + length)` of `lv_id` overlaps an acknowledged write
    /// that is not in the LV yet; [`Engine::wait_readable`] waits for those.
    pub fn must_settle_before_read(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> bool {
        self.pending_seq(lv_id, offset_bytes, length_bytes)
            .is_some()
    }

    /// The newest seq among acknowledged writes to these blocks not yet applied to the LV.
    fn pending_seq(&self, lv_id: u32, offset_bytes: u64, length_bytes: u64) -> Option<u64> {
        let Ok(pending) = self.shared.pending.lock() else {
            // Poisoned: a thread panicked while it held the map; wait for everything.
            return Some(self.shared.watermarks.appended_seq.load(Ordering::Acquire));
        };
        pending.newest_overlapping(lv_id, offset_bytes, length_bytes)
    }

    /// Returns once a read of these blocks sees every write acknowledged before the call:
    /// at once when none is pending; otherwise after the commit thread made the pending
    /// records durable (a FLUSH is submitted if they are not) and the applier wrote them.
    pub async fn wait_readable(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<(), OpError> {
        let Some(seq) = self.pending_seq(lv_id, offset_bytes, length_bytes) else {
            return Ok(());
        };
        let watermarks = &self.shared.watermarks;
        if watermarks.durable_seq.load(Ordering::Acquire) < seq {
            self.submit(Op::Flush).await?;
        }
        loop {
            let applied_changed = watermarks.applied_changed.notified();
            tokio::pin!(applied_changed);
            applied_changed.as_mut().enable();
            if watermarks.applied_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if let Some(reason) = self.failure() {
                return Err(OpError::Stopped(reason));
            }
            applied_changed.await;
        }
    }

    /// A closed write gate refuses writes: the production fence is lost.
    fn refuse_if_fenced(&self, op: &Op) -> Result<(), OpError> {
        if crate::gate::gated(op) && !self.shared.watermarks.write_gate.is_open() {
            return Err(OpError::Stopped(format!(
                "group {} is fenced: this server no longer holds the production role",
                self.shared.group
            )));
        }
        Ok(())
    }

    /// Submits an op and waits for its outcome: the seq it got (or the last durable seq for
    /// a flush).
    pub async fn submit(&self, op: Op) -> Result<u64, OpError> {
        if let Some(reason) = self.failure() {
            return Err(OpError::Stopped(reason));
        }
        self.refuse_if_fenced(&op)?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send_async(Pending { op, reply })
            .await
            .map_err(|_| OpError::Stopped("the commit thread has exited".into()))?;
        outcome
            .await
            .map_err(|_| OpError::Stopped("the commit thread has exited".into()))?
    }

    /// The blocking form of [`Engine::submit`], for threads outside the runtime.
    pub fn submit_blocking(&self, op: Op) -> Result<u64, OpError> {
        if let Some(reason) = self.failure() {
            return Err(OpError::Stopped(reason));
        }
        self.refuse_if_fenced(&op)?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { op, reply })
            .map_err(|_| OpError::Stopped("the commit thread has exited".into()))?;
        outcome
            .blocking_recv()
            .map_err(|_| OpError::Stopped("the commit thread has exited".into()))?
    }
}

/// Applies the records after `checkpoint_seq` to the LVs. Idempotent: the records are
/// whole-range overwrites applied in order, so replaying one the LV already has changes
/// nothing.
fn replay<F: JournalFs>(
    journal: &Journal<F>,
    volumes: &BTreeMap<u32, Arc<dyn BlockVolume>>,
    checkpoint_seq: u64,
) -> Result<u64, DatatapError> {
    let from = checkpoint_seq + 1;
    if journal.durable_seq() < from {
        return Ok(0);
    }
    let mut count = 0;
    for record in journal.read_from(from)? {
        let record = record?;
        apply_record(volumes, &record)?;
        count += 1;
    }
    Ok(count)
}

fn apply_record(
    volumes: &BTreeMap<u32, Arc<dyn BlockVolume>>,
    record: &OwnedRecord,
) -> Result<(), DatatapError> {
    let header = &record.header;
    let Some(volume) = volumes.get(&header.lv_id) else {
        // A record for an LV that has since been removed from the group: nothing to apply.
        return Ok(());
    };
    let replay_error = |error: std::io::Error| DatatapError::Replay {
        seq: header.seq,
        reason: error.to_string(),
    };
    match header.kind {
        RecordKind::Write => volume
            .write_at(&record.payload, header.offset_bytes)
            .map_err(replay_error),
        RecordKind::WriteZeroes => volume
            .write_zeroes(header.offset_bytes, u64::from(header.length_bytes))
            .map_err(replay_error),
        RecordKind::Trim => volume
            .trim(header.offset_bytes, u64::from(header.length_bytes))
            .map_err(replay_error),
        RecordKind::Marker | RecordKind::Undo => Ok(()),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

struct Committer<F: JournalFs> {
    fs: F,
    journal: Journal<F>,
    volumes: BTreeMap<u32, Arc<dyn BlockVolume>>,
    state: GroupState,
    group_dir: PathBuf,
    queue: flume::Receiver<Pending>,
    shared: Arc<Shared>,
    /// Acknowledged ops in the journal but not yet fdatasync'ed (so not yet with the
    /// applier), in seq order.
    unsynced: Vec<(u64, Op)>,
    unsynced_bytes: u64,
    /// When the oldest record not yet fdatasync'ed was appended.
    unsynced_since: Option<Instant>,
    /// The sync thread runs each group commit's fdatasync while this thread appends.
    syncer: Option<flume::Sender<PreparedSync<F>>>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
    synced: flume::Receiver<Result<u64, JournalError>>,
    /// The last seq the running fdatasync covers.
    sync_in_flight: Option<u64>,
    /// FUA writes, markers and FLUSHes, each with the seq that must be durable first, in
    /// that order.
    durable_waiters: VecDeque<(u64, Reply, DurableWaiter)>,
    /// The next stage; `None` once the commit thread is stopping.
    applier: Option<flume::Sender<crate::applier::Work>>,
    applier_thread: Option<std::thread::JoinHandle<()>>,
    notices: flume::Receiver<crate::applier::Notice>,
    backlog: Arc<crate::applier::Backlog>,
    /// Writes went to the LVs without the journal since the last LV sync.
    overflow_unsynced: bool,
    /// The journal was full during the current batch: no resync pass now.
    overflowed_in_batch: bool,
    /// A resync pass found the journal full: the next one waits until then.
    resync_blocked_until: Option<Instant>,
    config: EngineConfig,
}

/// Bytes of dirty regions one resync pass reads and journals.
pub const RESYNC_BYTES_PER_PASS: u64 = 4 << 20;
/// After a resync pass found the journal full, the next pass waits this long.
pub const RESYNC_RETRY_MS: u64 = 100;

/// How an op reached the journal.
enum Logged {
    Seq(u64),
    /// Journal overflow: it goes to the LV only.
    Direct,
    /// Flush and checkpoint take no seq.
    Nothing,
}

type Reply = oneshot::Sender<Result<u64, OpError>>;

/// Where a checkpoint's journal prune runs.
enum Prune {
    /// Before the checkpoint returns: an explicit checkpoint, or one that makes room.
    Now,
    /// On the applier's thread, behind the commit thread: the periodic checkpoints.
    OnApplier,
}

/// What wakes the commit thread.
enum Event {
    Op(Result<Pending, flume::RecvError>),
    Synced(Result<Result<u64, JournalError>, flume::RecvError>),
    Notice(Result<crate::applier::Notice, flume::RecvError>),
    Timeout,
}

/// A reply held until the journal is synced and the LVs are applied.
enum Waiter {
    /// Marks the LVs' regions for the resync once what came before is settled.
    FullSync(Vec<u32>, ResyncTargets),
    /// Marks these regions for the resync once what came before is settled.
    ResyncRegions(Vec<(u32, u64)>, ResyncTargets),
    /// A FUA write, a marker or a FLUSH: answered once durable.
    Durable(DurableWaiter),
    Checkpoint,
}

/// A reply that waits only for the journal's fdatasync.
enum DurableWaiter {
    /// A FUA write or a marker: answered with its seq.
    Seq(u64),
    /// Answered with the durable seq, once writes that bypassed the journal are synced too.
    Flush,
}

/// The LV range an op writes, if any.
pub(crate) fn op_range(op: &Op) -> Option<(u32, u64, u64)> {
    match op {
        Op::Write {
            lv_id,
            offset_bytes,
            data,
            ..
        } => Some((*lv_id, *offset_bytes, data.len() as u64)),
        Op::WriteZeroes {
            lv_id,
            offset_bytes,
            length_bytes,
            ..
        }
        | Op::Trim {
            lv_id,
            offset_bytes,
            length_bytes,
        } => Some((*lv_id, *offset_bytes, u64::from(*length_bytes))),
        Op::Flush
        | Op::Marker { .. }
        | Op::Checkpoint
        | Op::FullSync { .. }
        | Op::ResyncRegions { .. } => None,
    }
}

impl<F: JournalFs> Committer<F> {
    fn run(mut self) {
        let sync_interval = Duration::from_millis(self.config.sync_interval_ms);
        let idle = Duration::from_millis(self.config.checkpoint_idle_ms);
        loop {
            if self.failure().is_some() {
                self.answer_waiters_stopped();
            }
            let timeout = match (self.sync_in_flight, self.unsynced_since) {
                // Its completion wakes this thread.
                (Some(_), _) => idle,
                (None, Some(since)) => sync_interval.saturating_sub(since.elapsed()),
                // A pending resync goes on between client requests.
                (None, None) if self.resync_pending() => {
                    self.resync_blocked_until.map_or(Duration::ZERO, |until| {
                        until.saturating_duration_since(Instant::now())
                    })
                }
                (None, None) => idle,
            };
            // Backpressure: with this much not yet durable, wait for the running sync first.
            let take_ops =
                self.sync_in_flight.is_none() || self.unsynced_bytes < UNSYNCED_BYTES_MAX * 2;
            let selector = flume::Selector::new();
            let selector = if take_ops {
                selector.recv(&self.queue, Event::Op)
            } else {
                selector
            };
            let event = selector
                .recv(&self.synced, Event::Synced)
                .recv(&self.notices, Event::Notice)
                .wait_timeout(timeout)
                .unwrap_or(Event::Timeout);
            match event {
                Event::Op(Ok(first)) => {
                    let mut batch = vec![first];
                    let mut bytes = batch[0].op.payload_bytes();
                    while batch.len() < BATCH_OPS_MAX && bytes < BATCH_BYTES_MAX {
                        match self.queue.try_recv() {
                            Ok(pending) => {
                                bytes += pending.op.payload_bytes();
                                batch.push(pending);
                            }
                            Err(_) => break,
                        }
                    }
                    self.overflowed_in_batch = false;
                    self.process(batch);
                    if !self.overflowed_in_batch {
                        self.resync_pass_or_fail();
                    }
                }
                Event::Synced(Ok(outcome)) => {
                    if let Err(error) = self.finish_sync(outcome) {
                        self.fail(format!("sync the journal: {error}"));
                    }
                    self.start_sync_if_wanted();
                }
                Event::Notice(Ok(crate::applier::Notice::Checkpointed(seq))) => {
                    if let Err(error) = self.record_checkpoint(seq, Prune::OnApplier) {
                        self.fail(format!("checkpoint: {error}"));
                    }
                }
                Event::Timeout => {
                    if self.resync_pending() {
                        self.resync_pass_or_fail();
                    } else {
                        self.start_sync_if_wanted();
                    }
                }
                // A stage is gone (they only stop when told to, or by a panic).
                Event::Notice(Err(_)) | Event::Synced(Err(_)) => {
                    self.fail("a thread of the data path has exited".into());
                    self.answer_waiters_stopped();
                    self.stop();
                    return;
                }
                Event::Op(Err(_)) => {
                    self.settle_or_fail();
                    if self.failure().is_none()
                        && (self.shared.watermarks.applied_seq.load(Ordering::Acquire)
                            > self.state.checkpoint_seq
                            || self.overflow_unsynced)
                    {
                        self.checkpoint_or_fail();
                    }
                    self.answer_waiters_stopped();
                    self.stop();
                    return;
                }
            }
        }
    }

    fn answer_waiters_stopped(&mut self) {
        for (_, reply, _) in std::mem::take(&mut self.durable_waiters) {
            let _ = reply.send(Err(self.stopped()));
        }
    }

    /// Lets the sync thread and the applier finish what they have and waits for them.
    fn stop(&mut self) {
        self.syncer = None;
        if let Some(thread) = self.syncer_thread.take() {
            if thread.join().is_err() {
                self.fail("the sync thread panicked".into());
            }
        }
        self.applier = None;
        if let Some(thread) = self.applier_thread.take() {
            if thread.join().is_err() {
                self.fail("the apply thread panicked".into());
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    fn fail(&self, reason: String) {
        self.shared.fail(reason);
    }

    fn stopped(&self) -> OpError {
        OpError::Stopped(self.failure().unwrap_or_else(|| "stopped".into()))
    }

    fn process(&mut self, batch: Vec<Pending>) {
        let mut acknowledged: Vec<(Reply, u64)> = Vec::new();
        let mut waiting: Vec<(Reply, Waiter)> = Vec::new();
        for Pending { op, reply } in batch {
            if self.failure().is_some() {
                let _ = reply.send(Err(self.stopped()));
                continue;
            }
            match self.log(&op) {
                Ok(Logged::Seq(seq)) => {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                    let needs_durability = matches!(
                        op,
                        Op::Write { fua: true, .. }
                            | Op::WriteZeroes { fua: true, .. }
                            | Op::Marker { .. }
                    );
                    self.track_unsynced(seq, op);
                    if needs_durability {
                        waiting.push((reply, Waiter::Durable(DurableWaiter::Seq(seq))));
                    } else {
                        acknowledged.push((reply, seq));
                    }
                }
                Ok(Logged::Direct) => {
                    // Journal overflow. Everything journaled goes to the LVs first, so the LVs
                    // still receive writes in order.
                    self.settle_or_fail();
                    let outcome = self.apply_direct(&op);
                    let _ = reply.send(outcome);
                }
                Ok(Logged::Nothing) => {
                    let waiter = match op {
                        Op::Checkpoint => Waiter::Checkpoint,
                        Op::FullSync { lv_ids, targets } => Waiter::FullSync(lv_ids, targets),
                        Op::ResyncRegions { regions, targets } => {
                            Waiter::ResyncRegions(regions, targets)
                        }
                        _ => Waiter::Durable(DurableWaiter::Flush),
                    };
                    waiting.push((reply, waiter));
                }
                Err(error) => {
                    self.fail(format!("append to the journal: {error}"));
                    let _ = reply.send(Err(self.stopped()));
                }
            }
        }
        if self.failure().is_none() {
            // From here on a process crash loses no acknowledged write (the OS has them).
            if let Err(error) = self.journal.write_out() {
                self.fail(format!("write the journal: {error}"));
            }
        }
        self.shared
            .watermarks
            .appended_seq
            .store(self.journal.appended_seq(), Ordering::Relaxed);
        for (reply, seq) in acknowledged {
            let outcome = if self.failure().is_none() {
                Ok(seq)
            } else {
                Err(self.stopped())
            };
            let _ = reply.send(outcome);
        }
        // FLUSH, FUA and markers wait for a group commit on the sync thread; the rest needs
        // the LVs current, now.
        let written_seq = self.journal.written_seq();
        let mut needs_lvs = Vec::new();
        for (reply, waiter) in waiting {
            match waiter {
                Waiter::Durable(waiter) => {
                    let seq = match waiter {
                        DurableWaiter::Seq(seq) => seq,
                        DurableWaiter::Flush => written_seq,
                    };
                    debug_assert!(self
                        .durable_waiters
                        .back()
                        .is_none_or(|(last, _, _)| *last <= seq));
                    self.durable_waiters.push_back((seq, reply, waiter));
                }
                other => needs_lvs.push((reply, other)),
            }
        }
        if needs_lvs.is_empty() {
            self.answer_durable_waiters();
            self.start_sync_if_wanted();
            return;
        }
        self.settle_or_fail();
        for (reply, waiter) in needs_lvs {
            let outcome = if self.failure().is_some() {
                Err(self.stopped())
            } else {
                match waiter {
                    Waiter::FullSync(lv_ids, targets) => {
                        match self.mark_full_sync(&lv_ids, &targets) {
                            Ok(()) => Ok(self.applied_seq()),
                            Err(error) => {
                                self.fail(format!("start a full sync: {error}"));
                                Err(self.stopped())
                            }
                        }
                    }
                    Waiter::ResyncRegions(regions, targets) => {
                        match self.mark_regions(&regions, &targets) {
                            Ok(()) => Ok(self.applied_seq()),
                            Err(error) => {
                                self.fail(format!("start a checksum resync: {error}"));
                                Err(self.stopped())
                            }
                        }
                    }
                    Waiter::Checkpoint => match self.checkpoint() {
                        Ok(()) => Ok(self.state.checkpoint_seq),
                        Err(error) => {
                            self.fail(format!("checkpoint: {error}"));
                            Err(self.stopped())
                        }
                    },
                    Waiter::Durable(_) => unreachable!("durable waiters were queued above"),
                }
            };
            let _ = reply.send(outcome);
        }
    }

    /// Answers the FUA writes, markers and FLUSHes whose seq is durable, in order. A FLUSH
    /// reply never precedes the fdatasync that covers every write before it.
    fn answer_durable_waiters(&mut self) {
        let durable_seq = self.journal.durable_seq();
        while self
            .durable_waiters
            .front()
            .is_some_and(|(seq, _, _)| *seq <= durable_seq)
        {
            let Some((seq, reply, waiter)) = self.durable_waiters.pop_front() else {
                break;
            };
            assert!(
                seq <= durable_seq,
                "a durable reply waits for its fdatasync"
            );
            let outcome = if self.failure().is_some() {
                Err(self.stopped())
            } else {
                match waiter {
                    DurableWaiter::Seq(seq) => Ok(seq),
                    DurableWaiter::Flush => self.sync_direct_writes().map(|()| durable_seq),
                }
            };
            let _ = reply.send(outcome);
        }
    }

    fn applied_seq(&self) -> u64 {
        self.shared.watermarks.applied_seq.load(Ordering::Acquire)
    }

    /// Remembers an acknowledged op until it is durable and handed to the applier, and marks
    /// its blocks so that reads of them wait for the apply.
    fn track_unsynced(&mut self, seq: u64, op: Op) {
        crate::applier::remember_pending(&self.shared.pending, seq, &op);
        self.unsynced_bytes += op.payload_bytes();
        debug_assert!(self.unsynced.last().is_none_or(|(last, _)| *last < seq));
        self.unsynced.push((seq, op));
    }

    /// Appends the op's record; on a full journal, checkpoints and prunes once, then falls
    /// back to writing without the journal.
    fn log(&mut self, op: &Op) -> Result<Logged, DatatapError> {
        let timestamp_ns = now_ns();
        let entry = match op {
            Op::Write {
                lv_id,
                offset_bytes,
                data,
                ..
            } => Entry::write(*lv_id, *offset_bytes, data.as_slice(), timestamp_ns),
            Op::WriteZeroes {
                lv_id,
                offset_bytes,
                length_bytes,
                ..
            } => Entry::write_zeroes(*lv_id, *offset_bytes, *length_bytes, timestamp_ns),
            Op::Trim {
                lv_id,
                offset_bytes,
                length_bytes,
            } => Entry::trim(*lv_id, *offset_bytes, *length_bytes, timestamp_ns),
            Op::Marker { name } => Entry::marker(name, timestamp_ns),
            Op::Flush | Op::Checkpoint | Op::FullSync { .. } | Op::ResyncRegions { .. } => {
                return Ok(Logged::Nothing)
            }
        };
        let payload_crc32c = match op {
            Op::Write { data, .. } => data.crc32c(),
            _ => crc32c::crc32c(entry.payload),
        };
        match self.journal.append_with_crc(&entry, payload_crc32c) {
            Ok(seq) => Ok(Logged::Seq(seq)),
            Err(JournalError::JournalFull { .. }) => {
                self.settle()?;
                self.checkpoint()?;
                match self.journal.append_with_crc(&entry, payload_crc32c) {
                    Ok(seq) => Ok(Logged::Seq(seq)),
                    Err(JournalError::JournalFull { .. }) if !matches!(op, Op::Marker { .. }) => {
                        self.overflowed_in_batch = true;
                        self.mark_dirty(op)?;
                        if !self.state.needs_resync {
                            self.state.needs_resync = true;
                            self.state.save(&self.fs, &self.group_dir)?;
                            self.shared
                                .watermarks
                                .needs_resync
                                .store(true, Ordering::Relaxed);
                            tracing::warn!(
                                group = %self.shared.group,
                                "journal full: writing without the journal; replicas need a resync"
                            );
                        }
                        Ok(Logged::Direct)
                    }
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Records the regions an op that bypasses the journal will write; durable before the write.
    fn mark_dirty(&mut self, op: &Op) -> Result<(), DatatapError> {
        let Some((lv_id, offset_bytes, length_bytes)) = op_range(op) else {
            return Ok(());
        };
        let first = offset_bytes / crate::state::DIRTY_REGION_BYTES;
        let last = (offset_bytes + length_bytes.max(1) - 1) / crate::state::DIRTY_REGION_BYTES;
        // No recovery server received these writes: the resync is for every one. Only a
        // narrower super transaction under way needs widening; this runs per direct write.
        if self.state.resync_targets.is_some() {
            self.join_resync(&ResyncTargets::Every);
        }
        let regions = self.state.dirty_regions.entry(lv_id).or_default();
        let mut added = false;
        for region in first..=last {
            added |= regions.insert(region);
        }
        if added {
            self.state.save(&self.fs, &self.group_dir)?;
            self.publish_resync_remaining();
        }
        Ok(())
    }

    /// Every region of the LVs becomes dirty: the resync passes send them all (a super
    /// transaction), in order with the writes that keep coming.
    fn mark_full_sync(
        &mut self,
        lv_ids: &[u32],
        targets: &ResyncTargets,
    ) -> Result<(), DatatapError> {
        self.join_resync(targets);
        let chosen: Vec<(u32, u64)> = self
            .volumes
            .iter()
            .filter(|(lv_id, _)| lv_ids.is_empty() || lv_ids.contains(lv_id))
            .map(|(lv_id, volume)| (*lv_id, volume.size_bytes()))
            .collect();
        for (lv_id, size_bytes) in chosen {
            let regions = size_bytes.div_ceil(crate::state::DIRTY_REGION_BYTES);
            self.state
                .dirty_regions
                .entry(lv_id)
                .or_default()
                .extend(0..regions);
        }
        self.state.needs_resync = true;
        self.state.save(&self.fs, &self.group_dir)?;
        self.shared
            .watermarks
            .needs_resync
            .store(true, Ordering::Release);
        self.publish_resync_remaining();
        Ok(())
    }

    /// Checksum resync: the given regions (of existing LVs) become dirty.
    fn mark_regions(
        &mut self,
        regions: &[(u32, u64)],
        targets: &ResyncTargets,
    ) -> Result<(), DatatapError> {
        self.join_resync(targets);
        for (lv_id, region) in regions {
            let Some(volume) = self.volumes.get(lv_id) else {
                continue;
            };
            if *region
                >= volume
                    .size_bytes()
                    .div_ceil(crate::state::DIRTY_REGION_BYTES)
            {
                continue;
            }
            self.state
                .dirty_regions
                .entry(*lv_id)
                .or_default()
                .insert(*region);
        }
        if self.state.dirty_regions.is_empty() {
            return Ok(());
        }
        self.state.needs_resync = true;
        self.state.save(&self.fs, &self.group_dir)?;
        self.shared
            .watermarks
            .needs_resync
            .store(true, Ordering::Release);
        self.publish_resync_remaining();
        Ok(())
    }

    /// A request for `targets` joins the pending super transaction (or starts one): it is for
    /// whoever needs either. Saved with the regions the caller marks next.
    fn join_resync(&mut self, targets: &ResyncTargets) {
        let joined = if self.resync_pending() {
            self.state.resync_targets().widened(targets)
        } else {
            targets.clone()
        };
        self.state.resync_targets = crate::state::targets_field(&joined);
        self.publish_resync_targets(joined);
    }

    /// What status reads as the servers the super transaction is for.
    fn publish_resync_targets(&self, targets: ResyncTargets) {
        if let Ok(mut published) = self.shared.watermarks.resync_targets.lock() {
            *published = targets;
        }
    }

    fn publish_resync_remaining(&self) {
        let regions: u64 = self
            .state
            .dirty_regions
            .values()
            .map(|set| set.len() as u64)
            .sum();
        let remaining = regions * crate::state::DIRTY_REGION_BYTES;
        let watermarks = &self.shared.watermarks;
        let before = watermarks
            .resync_remaining_bytes
            .swap(remaining, Ordering::AcqRel);
        // The total grows by what was added; a finished super transaction has none.
        let total = watermarks.resync_total_bytes.load(Ordering::Acquire);
        let total = if remaining == 0 {
            0
        } else {
            total
                .saturating_add(remaining.saturating_sub(before))
                .max(remaining)
        };
        watermarks
            .resync_total_bytes
            .store(total, Ordering::Release);
    }

    /// Dirty regions to send, or the end marker of a super transaction still to journal.
    fn resync_pending(&self) -> bool {
        !self.state.dirty_regions.is_empty() || self.state.resync_begin_seq.is_some()
    }

    fn resync_pass_or_fail(&mut self) {
        if !self.resync_pending() || self.failure().is_some() {
            return;
        }
        if self
            .resync_blocked_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        self.resync_blocked_until = None;
        if let Err(error) = self.resync_pass() {
            self.fail(format!("resync dirty regions: {error}"));
        }
    }

    /// One pass of the super transaction after a journal overflow: reads a few dirty regions
    /// from the LVs as they are now (after everything before is applied) and journals them as
    /// ordinary writes, so the replicas receive them in order with everything else; the
    /// regions leave the bitmap once those records are durable.
    fn resync_pass(&mut self) -> Result<(), DatatapError> {
        self.settle()?;
        // The replicas learn where the mix of two points in time starts: a resync target
        // keeps a snapshot of the seq before it (`replication::snapshot`).
        // A super transaction that a wider request joined (a second server added while the
        // first one syncs) announces itself again, naming them all: the regions sent before
        // were not for the newcomer, and they are all dirty again for it.
        let targets = self.state.resync_targets();
        let begun = self.state.resync_begin_seq.is_some();
        if !self.state.dirty_regions.is_empty()
            && (!begun || !self.state.resync_begun_for().covers(&targets))
        {
            let Some(seq) = self.journal_resync_marker(&targets.begin_marker())? else {
                return Ok(());
            };
            if !begun {
                self.state.resync_begin_seq = Some(seq);
            }
            self.state.resync_begun_for = crate::state::targets_field(&targets);
            self.settle()?;
            self.state.save(&self.fs, &self.group_dir)?;
            tracing::info!(group = %self.shared.group, seq, ?targets, "super transaction begins");
        }
        let mut taken: Vec<(u32, u64)> = Vec::new();
        let mut bytes = 0;
        'outer: for (lv_id, regions) in &self.state.dirty_regions {
            for region in regions {
                taken.push((*lv_id, *region));
                bytes += crate::state::DIRTY_REGION_BYTES;
                if bytes >= RESYNC_BYTES_PER_PASS {
                    break 'outer;
                }
            }
        }
        for (lv_id, region) in &taken {
            let Some(volume) = self.volumes.get(lv_id).cloned() else {
                continue;
            };
            let offset = region * crate::state::DIRTY_REGION_BYTES;
            let length =
                crate::state::DIRTY_REGION_BYTES.min(volume.size_bytes().saturating_sub(offset));
            if length == 0 {
                continue;
            }
            let mut data = Payload::for_filling(length as usize);
            volume
                .read_at(data.as_mut_slice(), offset)
                .map_err(|source| {
                    DatatapError::io("read a dirty region", &self.group_dir, source)
                })?;
            // A region of zeroes travels as a zeroing record, not as a MiB of zeroes.
            let entry = if data.as_slice().iter().all(|byte| *byte == 0) {
                Entry::write_zeroes(
                    *lv_id,
                    offset,
                    u32::try_from(length).unwrap_or(u32::MAX),
                    now_ns(),
                )
            } else {
                Entry::write(*lv_id, offset, data.as_slice(), now_ns())
            };
            match self.journal.append(&entry) {
                Ok(seq) => {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                    // The LV already holds this data (it was just read from it, after
                    // everything before was applied): the record is for the replicas only,
                    // so it passes through the LV side as a no-op, in its place in the order.
                    debug_assert!(self.unsynced.last().is_none_or(|(last, _)| *last < seq));
                    self.unsynced.push((seq, Op::Flush));
                }
                // Still full (a target is behind): the rest waits for space; checkpoint so that
                // whatever the targets hold can be pruned meanwhile.
                Err(JournalError::JournalFull { .. }) => {
                    self.settle()?;
                    self.checkpoint()?;
                    self.resync_blocked_until =
                        Some(Instant::now() + Duration::from_millis(RESYNC_RETRY_MS));
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.settle()?;
        for (lv_id, region) in &taken {
            if let Some(regions) = self.state.dirty_regions.get_mut(lv_id) {
                regions.remove(region);
                if regions.is_empty() {
                    self.state.dirty_regions.remove(lv_id);
                }
            }
        }
        if self.state.dirty_regions.is_empty() {
            if let Some(begin_seq) = self.state.resync_begin_seq {
                // Saved first: the regions sent stay out of the bitmap even if the end
                // marker has to wait for journal space.
                self.state.save(&self.fs, &self.group_dir)?;
                let Some(end_seq) =
                    self.journal_resync_marker(redoubt_journal::RESYNC_END_MARKER)?
                else {
                    self.publish_resync_remaining();
                    return Ok(());
                };
                self.settle()?;
                self.state.resync_begin_seq = None;
                self.state.resync_begun_for = None;
                self.state.resync_targets = None;
                self.publish_resync_targets(ResyncTargets::Every);
                tracing::info!(group = %self.shared.group, begin_seq, end_seq, "super transaction complete");
            }
            self.state.needs_resync = false;
            self.shared
                .watermarks
                .needs_resync
                .store(false, Ordering::Release);
        }
        self.state.save(&self.fs, &self.group_dir)?;
        self.publish_resync_remaining();
        Ok(())
    }

    /// Journals a product marker of the super transaction. `None`: the journal is full (a
    /// target is behind); the pass is tried again after [`RESYNC_RETRY_MS`].
    fn journal_resync_marker(&mut self, name: &str) -> Result<Option<u64>, DatatapError> {
        match self.journal.append(&Entry::marker(name, now_ns())) {
            Ok(seq) => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                debug_assert!(self.unsynced.last().is_none_or(|(last, _)| *last < seq));
                self.unsynced.push((seq, Op::Flush));
                Ok(Some(seq))
            }
            Err(JournalError::JournalFull { .. }) => {
                self.settle()?;
                self.checkpoint()?;
                self.resync_blocked_until =
                    Some(Instant::now() + Duration::from_millis(RESYNC_RETRY_MS));
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether a group commit is due: a reply waits for one, too much is not durable, or the
    /// oldest record not covered by one has waited `sync_interval_ms`.
    fn sync_wanted(&self) -> bool {
        let durable_seq = self.journal.durable_seq();
        self.durable_waiters
            .front()
            .is_some_and(|(seq, _, _)| *seq > durable_seq)
            || self.unsynced_bytes >= UNSYNCED_BYTES_MAX
            || self.unsynced_since.is_some_and(|since| {
                since.elapsed() >= Duration::from_millis(self.config.sync_interval_ms)
            })
    }

    fn start_sync_if_wanted(&mut self) {
        if self.failure().is_some() || self.sync_in_flight.is_some() || !self.sync_wanted() {
            return;
        }
        if let Err(error) = self.start_sync() {
            self.fail(format!("sync the journal: {error}"));
        }
    }

    /// Hands the group commit's fdatasync to the sync thread; this thread goes on appending.
    fn start_sync(&mut self) -> Result<(), DatatapError> {
        assert!(self.sync_in_flight.is_none(), "one group commit at a time");
        match self.journal.prepare_sync()? {
            // A segment seal already made everything durable.
            None => {
                self.unsynced_since = None;
                self.on_durable()
            }
            Some(prepared) => {
                self.sync_in_flight = Some(prepared.seq());
                self.unsynced_since = None;
                self.syncer
                    .as_ref()
                    .ok_or_else(|| self.applier_gone())?
                    .send(prepared)
                    .map_err(|_| self.applier_gone())
            }
        }
    }

    fn finish_sync(&mut self, outcome: Result<u64, JournalError>) -> Result<(), DatatapError> {
        assert!(
            self.sync_in_flight.take().is_some(),
            "a sync outcome without a sync"
        );
        self.journal.complete_sync(outcome)?;
        self.on_durable()
    }

    /// Makes every appended record durable, on this thread (after the running group commit,
    /// if any), and hands the records to the applier.
    fn sync(&mut self) -> Result<(), DatatapError> {
        if self.sync_in_flight.is_some() {
            let outcome = self.synced.recv().map_err(|_| self.applier_gone())?;
            self.finish_sync(outcome)?;
        }
        self.journal.sync()?;
        self.unsynced_since = None;
        self.on_durable()
    }

    /// The journal's durable seq moved (or may have): publish it, hand the durable records to
    /// the applier in seq order, and answer the replies that waited for it.
    fn on_durable(&mut self) -> Result<(), DatatapError> {
        let durable_seq = self.journal.durable_seq();
        self.shared
            .watermarks
            .durable_seq
            .store(durable_seq, Ordering::Release);
        self.shared.watermarks.durable_changed.notify_waiters();
        let durable_count = self
            .unsynced
            .partition_point(|(seq, _)| *seq <= durable_seq);
        if durable_count > 0 {
            let records: Vec<(u64, Op)> = self.unsynced.drain(..durable_count).collect();
            let payload_bytes: u64 = records.iter().map(|(_, op)| op.payload_bytes()).sum();
            self.unsynced_bytes -= payload_bytes;
            let applier_thread = &self.applier_thread;
            self.backlog
                .reserve(payload_bytes, || {
                    applier_thread
                        .as_ref()
                        .is_some_and(|thread| !thread.is_finished())
                })
                .map_err(|()| self.applier_gone())?;
            self.applier
                .as_ref()
                .ok_or_else(|| self.applier_gone())?
                .send(crate::applier::Work::Records {
                    records,
                    durable_seq,
                    payload_bytes,
                })
                .map_err(|_| self.applier_gone())?;
        }
        self.answer_durable_waiters();
        self.shared
            .watermarks
            .journal_bytes
            .store(self.journal.size_bytes(), Ordering::Relaxed);
        Ok(())
    }

    fn applier_gone(&self) -> DatatapError {
        DatatapError::Failed {
            group: self.shared.group.clone(),
            reason: "the apply thread has exited".into(),
        }
    }

    /// Sends the applier a request and waits for its answer: it answers after everything
    /// handed to it before.
    fn ask_applier<T>(
        &self,
        request: impl FnOnce(flume::Sender<T>) -> crate::applier::Work,
    ) -> Result<T, DatatapError> {
        let (reply, answer) = flume::bounded(1);
        self.applier
            .as_ref()
            .ok_or_else(|| self.applier_gone())?
            .send(request(reply))
            .map_err(|_| self.applier_gone())?;
        answer.recv().map_err(|_| self.applier_gone())
    }

    /// [`Committer::sync`], then waits until the applier has written everything to the LVs:
    /// for what reads the LVs or writes them directly.
    fn settle(&mut self) -> Result<(), DatatapError> {
        self.sync()?;
        let applied_seq = self.ask_applier(crate::applier::Work::Drain)?;
        if let Some(reason) = self.failure() {
            return Err(DatatapError::Failed {
                group: self.shared.group.clone(),
                reason,
            });
        }
        assert_eq!(
            applied_seq,
            self.journal.durable_seq(),
            "a drained applier holds every durable record"
        );
        Ok(())
    }

    fn settle_or_fail(&mut self) {
        if self.failure().is_some() {
            return;
        }
        if let Err(error) = self.settle() {
            self.fail(format!("sync and apply: {error}"));
        }
    }

    fn apply_op(&self, op: &Op) -> std::io::Result<()> {
        crate::applier::apply_to_volumes(&self.volumes, op)
    }

    /// Journal overflow: the op goes to the LV only (FUA syncs it there).
    fn apply_direct(&mut self, op: &Op) -> Result<u64, OpError> {
        if self.failure().is_some() {
            return Err(self.stopped());
        }
        let fua = matches!(
            op,
            Op::Write { fua: true, .. } | Op::WriteZeroes { fua: true, .. }
        );
        let verify = &self.shared.verify;
        let result = verify
            .around_apply(None, op_range(op), || self.apply_op(op))
            .and_then(|()| {
                if fua {
                    op_range(op)
                        .and_then(|(lv_id, _, _)| self.volumes.get(&lv_id))
                        .map_or(Ok(()), |volume| volume.sync())
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.overflow_unsynced = true;
                Ok(self.applied_seq())
            }
            Err(error) => {
                self.fail(format!("write to a volume: {error}"));
                Err(OpError::Io(error.to_string()))
            }
        }
    }

    /// A FLUSH after writes that bypassed the journal must sync the LVs themselves.
    fn sync_direct_writes(&mut self) -> Result<(), OpError> {
        if !self.overflow_unsynced {
            return Ok(());
        }
        match self.sync_volumes() {
            Ok(()) => {
                self.overflow_unsynced = false;
                Ok(())
            }
            Err(error) => {
                self.fail(format!("sync the volumes: {error}"));
                Err(OpError::Io(error.to_string()))
            }
        }
    }

    fn sync_volumes(&self) -> Result<(), DatatapError> {
        for volume in self.volumes.values() {
            volume
                .sync()
                .map_err(|source| DatatapError::io("sync volume", &self.group_dir, source))?;
        }
        Ok(())
    }

    fn checkpoint_or_fail(&mut self) {
        if self.failure().is_some() {
            return;
        }
        if let Err(error) = self.checkpoint() {
            self.fail(format!("checkpoint: {error}"));
        }
    }

    /// Checkpoints now: every acknowledged record reaches the LVs, the applier syncs them,
    /// and the state file records it; then the journal is pruned.
    fn checkpoint(&mut self) -> Result<(), DatatapError> {
        self.settle()?;
        let seq = self
            .ask_applier(crate::applier::Work::Checkpoint)?
            .map_err(|reason| DatatapError::Failed {
                group: self.shared.group.clone(),
                reason,
            })?;
        // The applier synced the LVs: direct writes of an overflow are durable too.
        self.overflow_unsynced = false;
        self.record_checkpoint(seq, Prune::Now)
    }

    /// The applier synced the LVs holding every record up to `seq`: the state file says so,
    /// and the journal is pruned up to what is both checkpointed and shipped.
    fn record_checkpoint(&mut self, seq: u64, prune: Prune) -> Result<(), DatatapError> {
        assert!(
            seq <= self.applied_seq(),
            "a checkpoint never passes the applier"
        );
        assert!(seq <= self.journal.durable_seq());
        if seq > self.state.checkpoint_seq {
            self.state.checkpoint_seq = seq;
            self.state.save(&self.fs, &self.group_dir)?;
        }
        let watermarks = &self.shared.watermarks;
        watermarks
            .checkpoint_seq
            .store(self.state.checkpoint_seq, Ordering::Release);
        let shipped_seq = watermarks.shipped_seq.load(Ordering::Acquire);
        if let Some(prune_now) = self
            .journal
            .prepare_prune(self.state.checkpoint_seq.min(shipped_seq))?
        {
            if matches!(prune, Prune::Now) {
                prune_now.run()?;
                watermarks
                    .journal_bytes
                    .store(self.journal.size_bytes(), Ordering::Relaxed);
                return Ok(());
            }
            // Removing a large file can take tens of milliseconds: not on this thread.
            self.applier
                .as_ref()
                .ok_or_else(|| self.applier_gone())?
                .send(crate::applier::Work::Run(Box::new(move || {
                    prune_now
                        .run()
                        .map(|_| ())
                        .map_err(|error| format!("prune the journal: {error}"))
                })))
                .map_err(|_| self.applier_gone())?;
        }
        watermarks
            .journal_bytes
            .store(self.journal.size_bytes(), Ordering::Relaxed);
        Ok(())
    }
}
