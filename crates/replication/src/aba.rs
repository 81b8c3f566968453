//! The apply process (ABA) of one group on a recovery server.
//!
//! ```text
//!  LCA ──Records──▶ connection task ──append_replicated + fdatasync──▶ journal copy (durable)
//!                        │  └──Ack{durable_seq}──▶ LCA (sync mode waits on it)
//!                        └──records──▶ apply thread ──in seq order──▶ replica LVs
//!                                           └── checkpoint: sync LVs, persist applied_seq
//! ```
//!
//! **Invariants.** A record is acknowledged durable only after the journal copy's fdatasync.
//! The replica receives records strictly in seq order, only records already durable in the
//! copy, so after any crash the replica is production as of `applied_seq` at a checkpoint,
//! and the records after it are replayed from the copy on start: the replica is always a
//! prefix of production's history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redoubt_journal::{
    lv_id_for_name, GroupId, Journal, JournalConfig, OwnedRecord, RecordKind, StdFs,
};
use redoubt_volume::{
    ContainerCapacities, CreateLvOptions, GroupStore, IoMode, Volume, VolumeSpec,
};
use redoubt_wire::{Frame, HelloReply, ReceiverConfig, ReceiverSession, Refuse, RefuseCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::conn::{FrameReader, FrameWriter};
use crate::error::ReplicationError;

/// Records applied between two checkpoints of the replica.
pub const CHECKPOINT_INTERVAL_RECORDS: u64 = 4096;
/// An idle apply thread checkpoints after this long.
pub const CHECKPOINT_IDLE_MS: u64 = 1000;
/// The ABA sends an Ack at least this often while connected, so the LCA sees applied_seq move.
pub const ACK_INTERVAL_MS: u64 = 200;
/// Batches waiting for the apply thread; the connection stops reading beyond it.
pub const APPLY_QUEUE_BATCHES_MAX: usize = 64;

const STATE_FILE_NAME: &str = "aba.json";

#[derive(Clone, Debug)]
pub struct AbaConfig {
    /// This recovery server's name; Hellos must be addressed to it.
    pub server_name: String,
    pub group: String,
    pub data_dir: PathBuf,
    pub volumes: Vec<VolumeSpec>,
    pub capacities: ContainerCapacities,
    pub config_version: u64,
    /// How far back rollback must reach: undo records older than this are pruned (and the
    /// undo journal's capacity prunes the oldest first when it is full).
    pub retention_seconds: u64,
    /// The server whose send process this replica takes records from: the group's (acting)
    /// production. A Hello from any other sender is refused before anything is written, so
    /// an old production that comes back after a failover cannot feed its own history into
    /// a replica that follows the new one (same journal id, overlapping seqs). `None`: any
    /// sender (the standalone `redoubt apply` tool).
    pub production: Option<String>,
}

/// What the ABA has done, for status and tests.
#[derive(Debug, Default)]
pub struct AbaStatus {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub received_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub applied_seq: AtomicU64,
    pub checkpoint_seq: AtomicU64,
    pub received_bytes: AtomicU64,
    /// The first seq of the most recent connection's first batch (tests check resumption).
    pub last_connection_first_seq: AtomicU64,
    /// Oldest seq whose undo record the replica still has: the rollback window's start.
    pub undo_first_seq: AtomicU64,
    /// Bytes in the journal copy (received, not yet pruned): the target backlog.
    pub journal_bytes: AtomicU64,
    /// Latest seq that cannot be undone (a discard larger than a record); rollback reaches
    /// back to just after it at most.
    pub undo_barrier_seq: AtomicU64,
    /// While non-zero, retention pruning keeps the undo records from this seq on (a snapshot
    /// being created reads them; `snapshot.rs`).
    pub undo_pin_seq: AtomicU64,
    /// Apply is paused by a rollback: records are still received and stored, not applied.
    pub paused: AtomicBool,
    /// Records the running (or last) rollback has to undo or redo, and has done.
    pub rollback_total_records: AtomicU64,
    pub rollback_done_records: AtomicU64,
    /// The replica equals production as of its applied seq (`resync::ResyncState`).
    pub replica_synced: AtomicBool,
    /// The `resync:begin` seq of the super transaction under way on this replica; 0: none.
    pub resync_begin_seq: AtomicU64,
    /// The apply thread's view of which seqs are consistent, as of its last run.
    pub resync: Mutex<crate::resync::ResyncState>,
    /// Set when this replica's restore history was cut short by a failover or failback.
    pub history_reset: Mutex<Option<HistoryReset>>,
}

impl AbaStatus {
    /// Why this replica at `seq` would not be production as of `seq` (`None`: it would).
    /// Snapshots, rollbacks and promotions refuse such points.
    pub fn inconsistent_reason(&self, seq: u64) -> Option<String> {
        self.resync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .inconsistent_reason(seq)
    }
}

/// Why and how far a rolled-back replica is paused (kept in the state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// The roll-forward file holds the redo of seqs `rollforward_first_seq..=rollforward_last_seq`.
    pub rollforward_first_seq: u64,
    pub rollforward_last_seq: u64,
    /// False when a crash interrupted a rollback while it captured: moving forward is
    /// impossible, the replica needs a new full sync.
    pub rollforward_complete: bool,
    /// Set while a rollback runs: (from, to); a restart finishes it.
    pub rolling_back: Option<(u64, u64)>,
    pub since_unix_ms: u64,
}

/// What a replica can be rolled to, and the markers and record times to resolve points.
#[derive(Clone, Debug, Default)]
pub struct RestoreWindow {
    pub first_seq: u64,
    pub last_seq: u64,
    pub applied_seq: u64,
    pub paused: bool,
    pub markers: Vec<redoubt_points::Marker>,
    /// (seq, unix ns) of every record in the window, ascending.
    pub times: Vec<(u64, u64)>,
}

/// What a rollback did.
#[derive(Clone, Debug)]
pub struct RollbackReport {
    pub from_seq: u64,
    pub to_seq: u64,
    pub undone_records: u64,
    pub redone_records: u64,
}

/// Sees every run of records on the apply thread just before the replica is written with
/// it, while the replica still holds the data the run overwrites (snapshots copy what they
/// need then: `snapshot.rs`). The records of one run never overlap. The apply waits for it;
/// an observer handles its own failures.
pub trait ApplyObserver: Send + Sync {
    fn before_apply(&self, run: &[OwnedRecord], replica: &BTreeMap<u32, Arc<Volume>>);

    /// A super transaction began or ended on this replica; called on the apply thread once
    /// the run holding its marker is applied (so the replica has reached the marker), before
    /// the next run. Called again for a marker a restart replays.
    fn resync_changed(&self, _event: crate::resync::ResyncEvent) {}
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AbaState {
    /// Hex of production's journal group id, learnt from the first Hello.
    group_id: Option<String>,
    /// The replica holds every record up to this seq durably.
    checkpoint_seq: u64,
    /// Set while a rollback holds the replica at `checkpoint_seq`.
    #[serde(default)]
    paused: Option<Paused>,
    /// As of `checkpoint_seq`; a restart replays the records after it.
    #[serde(default)]
    resync: crate::resync::ResyncState,
    /// Why this replica's restore history starts later than its markers and the group's
    /// retention would say (it followed a new production without the undo of the history
    /// before), for `points`.
    #[serde(default)]
    history_reset: Option<HistoryReset>,
}

/// A replica's restore window was cut short: from `seq` on only, since `since_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReset {
    pub seq: u64,
    pub since_unix_ms: u64,
    pub reason: String,
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    let mut bytes = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

fn load_state(dir: &Path) -> Result<AbaState, ReplicationError> {
    let path = dir.join(STATE_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| ReplicationError::State {
            action: "parse",
            path,
            reason: error.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(AbaState::default()),
        Err(error) => Err(error.into()),
    }
}

fn save_state(dir: &Path, state: &AbaState) -> Result<(), ReplicationError> {
    let path = dir.join(STATE_FILE_NAME);
    let text = serde_json::to_vec_pretty(state).map_err(|error| ReplicationError::State {
        action: "encode",
        path: path.clone(),
        reason: error.to_string(),
    })?;
    redoubt_durable::replace(&path, &text)?;
    Ok(())
}

struct Store {
    journal: Option<Journal<StdFs>>,
    state: AbaState,
    group_dir: PathBuf,
    journal_dir: PathBuf,
    journal_capacity_bytes: u64,
}

impl Store {
    fn open_journal(&mut self, group_id: [u8; 16]) -> Result<(), ReplicationError> {
        let mut config = JournalConfig::new(GroupId(group_id), self.journal_capacity_bytes);
        config.segment_size_bytes = (self.journal_capacity_bytes / 8).clamp(
            redoubt_journal::SEGMENT_SIZE_BYTES_MIN,
            redoubt_journal::SEGMENT_SIZE_BYTES_DEFAULT,
        );
        config.seq_first_new = self.state.checkpoint_seq + 1;
        self.journal = Some(Journal::open(StdFs, &self.journal_dir, config)?);
        Ok(())
    }

    fn durable_seq(&self) -> u64 {
        self.journal
            .as_ref()
            .map_or(self.state.checkpoint_seq, |journal| journal.durable_seq())
    }
}

enum ApplyMessage {
    /// Durable records to apply (records at or below the applied seq are skipped).
    Records(Vec<OwnedRecord>),
    /// Checkpoint now (the journal copy needs room).
    Checkpoint,
    /// A new replica starts after this seq (first contact with production's journal).
    StartAfter(u64),
    /// Roll the replica to this seq (back through undo, or forward through the roll-forward
    /// file while paused) and pause apply.
    Rollback {
        to_seq: u64,
        reply: flume::Sender<Result<RollbackReport, ReplicationError>>,
    },
    /// Replay what a rollback undid, then the journal copy, and apply again.
    Resume {
        reply: flume::Sender<Result<u64, ReplicationError>>,
    },
    Window {
        reply: flume::Sender<Result<RestoreWindow, ReplicationError>>,
    },
}

/// How long storing a batch waits for room in a full journal copy before giving up.
pub const STORE_WAIT_FOR_SPACE_MS: u64 = 60_000;
/// How long one wait for a checkpoint lasts before storing is tried again.
const STORE_RETRY_MS: u64 = 200;

/// The ABA of one group: its storage, its apply thread and its status.
pub struct Aba {
    config: AbaConfig,
    status: Arc<AbaStatus>,
    store: Arc<Mutex<Store>>,
    apply: flume::Sender<ApplyMessage>,
    busy: AtomicBool,
    /// Online verify's copy-before-write hashing seam on the apply thread (`verify.rs`).
    verify: Arc<redoubt_datatap::verify::VerifyHook>,
    /// The replica LVs by lv_id (snapshot views read them).
    replica: BTreeMap<u32, Arc<Volume>>,
}

impl Aba {
    /// Opens (or creates) the group's replica LVs and journal copy, replays the durable
    /// records the replica does not have yet, and starts the apply thread.
    pub fn open(
        config: AbaConfig,
    ) -> Result<(Arc<Aba>, std::thread::JoinHandle<()>), ReplicationError> {
        Aba::open_observed(config, None)
    }

    /// [`Aba::open`] with an observer that sees every run before the replica is written,
    /// from the first record on (the replay after a restart included).
    pub fn open_observed(
        config: AbaConfig,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<(Arc<Aba>, std::thread::JoinHandle<()>), ReplicationError> {
        let mut group_store =
            GroupStore::open_or_create(&config.data_dir, &config.group, config.capacities)?;
        let mut volumes: BTreeMap<u32, Arc<Volume>> = BTreeMap::new();
        for spec in &config.volumes {
            // A replica is a container LV; only a configured production that follows another
            // server after a failover replicates into its own sources (the agent decides).
            let replica = spec.clone();
            let volume =
                group_store.ensure_volume(&replica, CreateLvOptions::default(), IoMode::Hybrid)?;
            let lv_id = lv_id_for_name(&spec.name);
            if volumes.insert(lv_id, Arc::new(volume)).is_some() {
                return Err(ReplicationError::Config(format!(
                    "two volumes of group {} map to lv_id {lv_id:#010x}",
                    config.group
                )));
            }
        }
        let group_dir = group_store.layout().group_dir().to_path_buf();
        let journal_dir = group_store.layout().journal_dir();
        let state = load_state(&group_dir)?;
        let mut store = Store {
            journal: None,
            state,
            group_dir: group_dir.clone(),
            journal_dir,
            journal_capacity_bytes: config.capacities.log_record_file_bytes,
        };
        let mut replay = Vec::new();
        let paused = store.state.paused.clone();
        if let Some(group_id) = store.state.group_id.as_deref().and_then(unhex) {
            store.open_journal(group_id)?;
            // A paused replica applies nothing until resumed: the copy waits.
            if let Some(journal) = store.journal.as_ref().filter(|_| paused.is_none()) {
                let from = store.state.checkpoint_seq + 1;
                if journal.durable_seq() >= from {
                    for record in journal.read_from(from)? {
                        replay.push(record?);
                    }
                }
            }
        }
        let status = Arc::new(AbaStatus::default());
        let durable = store.durable_seq();
        status.durable_seq.store(durable, Ordering::Relaxed);
        status.received_seq.store(durable, Ordering::Relaxed);
        status
            .applied_seq
            .store(store.state.checkpoint_seq, Ordering::Relaxed);
        status
            .checkpoint_seq
            .store(store.state.checkpoint_seq, Ordering::Relaxed);
        status.paused.store(paused.is_some(), Ordering::Relaxed);
        let resync = store.state.resync.clone();
        publish_resync(&status, &resync, store.state.checkpoint_seq);
        if let Ok(mut reset) = status.history_reset.lock() {
            reset.clone_from(&store.state.history_reset);
        }
        let markers = crate::recovery::load_markers(&group_dir)?;
        let store = Arc::new(Mutex::new(store));
        let (apply, queue) = flume::bounded(APPLY_QUEUE_BATCHES_MAX);
        let verify = crate::verify::replica_hook(
            &config.volumes,
            &volumes,
            status.applied_seq.load(Ordering::Relaxed),
        );
        let replica = volumes.clone();
        let applier = Applier {
            observer,
            verify: verify.clone(),
            volumes,
            store: store.clone(),
            status: status.clone(),
            applied_seq: status.applied_seq.load(Ordering::Relaxed),
            since_checkpoint: 0,
            group_dir,
            undo: None,
            undo_capacity_bytes: config.capacities.log_record_file_bytes,
            retention_seconds: config.retention_seconds,
            applied_times: std::collections::VecDeque::new(),
            markers,
            markers_dirty: false,
            undo_index: None,
            resync,
            resync_events: Vec::new(),
            server_name: config.server_name.clone(),
        };
        if let Some((from, to)) = paused.and_then(|paused| paused.rolling_back) {
            tracing::warn!(group = %config.group, from, to, "finishing a rollback a crash interrupted");
            let (reply, _) = flume::bounded(1);
            apply
                .send(ApplyMessage::Rollback { to_seq: to, reply })
                .map_err(|_| ReplicationError::Config("apply thread gone".into()))?;
        }
        if !replay.is_empty() {
            apply
                .send(ApplyMessage::Records(replay))
                .map_err(|_| ReplicationError::Config("apply thread gone".into()))?;
        }
        let thread = std::thread::Builder::new()
            .name(format!("apply-{}", config.group))
            .spawn(move || applier.run(queue))?;
        Ok((
            Arc::new(Aba {
                config,
                status,
                store,
                apply,
                busy: AtomicBool::new(false),
                verify,
                replica,
            }),
            thread,
        ))
    }

    pub fn status(&self) -> &Arc<AbaStatus> {
        &self.status
    }

    /// Online verify of this replica (`verify.rs`).
    pub fn verify_hook(&self) -> &Arc<redoubt_datatap::verify::VerifyHook> {
        &self.verify
    }

    pub fn config(&self) -> &AbaConfig {
        &self.config
    }

    /// The replica LVs by lv_id.
    pub fn replica_volumes(&self) -> &BTreeMap<u32, Arc<Volume>> {
        &self.replica
    }

    /// Production's journal group id, once the first Hello told it.
    pub fn group_id(&self) -> Option<GroupId> {
        let store = self.store.lock().ok()?;
        store.state.group_id.as_deref().and_then(unhex).map(GroupId)
    }

    /// Where the undo journal lives.
    pub fn undo_dir(&self) -> PathBuf {
        self.store
            .lock()
            .map(|store| store.group_dir.join("undo"))
            .unwrap_or_else(|poisoned| poisoned.into_inner().group_dir.join("undo"))
    }

    /// Serves LCA connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let aba = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            if let Err(error) =
                                aba.serve_connection(Box::new(stream), None, shutdown).await
                            {
                                tracing::info!(group = %aba.config.group, %peer, %error, "replication connection ended");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "accept failed"),
                },
            }
        }
    }

    /// Serves one already-accepted LCA connection until it ends or `shutdown` turns true.
    /// For a process (the agent) that accepts on one port for several purposes and routes
    /// replication connections here itself.
    /// The stream is plain TCP or TLS; `authenticated_peer` is the server name the peer's
    /// certificate proved (TLS), which the Hello's sender must be.
    pub async fn serve_stream(
        self: &Arc<Self>,
        stream: crate::conn::BoxStream,
        authenticated_peer: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ReplicationError> {
        self.serve_connection(stream, authenticated_peer, shutdown)
            .await
    }

    /// Why a Hello's sender may not feed this replica (`None`: it may).
    fn refuse_sender(
        &self,
        hello: &redoubt_wire::Hello,
        authenticated_peer: Option<&str>,
    ) -> Option<Refuse> {
        if let Some(peer) = authenticated_peer.filter(|peer| *peer != hello.sender_name) {
            return Some(Refuse {
                code: RefuseCode::NotProduction,
                message: format!(
                    "the Hello names sender {} but the peer's certificate is server {peer}",
                    hello.sender_name
                ),
            });
        }
        let expected = self.config.production.as_deref()?;
        (hello.sender_name != expected).then(|| Refuse {
            code: RefuseCode::NotProduction,
            message: format!(
                "{} follows {expected} as the production server of group {}, not {}: after a failover the old production comes back with `redoubt failback {}`",
                self.config.server_name, self.config.group, hello.sender_name, self.config.group
            ),
        })
    }

    async fn serve_connection(
        self: &Arc<Self>,
        stream: crate::conn::BoxStream,
        authenticated_peer: Option<String>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ReplicationError> {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read_half);
        let mut writer = FrameWriter::new(write_half);
        let Frame::Hello(hello) = reader.receive().await? else {
            return Err(ReplicationError::Unexpected("first frame other than Hello"));
        };
        if let Some(refuse) = self.refuse_sender(&hello, authenticated_peer.as_deref()) {
            tracing::warn!(group = %self.config.group, sender = %hello.sender_name, reason = %refuse.message, "replication connection refused");
            writer.send(&Frame::Refuse(refuse)).await?;
            return Ok(());
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            let refuse = Refuse {
                code: RefuseCode::Busy,
                message: format!(
                    "group {} already has a send process connected",
                    self.config.group
                ),
            };
            writer.send(&Frame::Refuse(refuse)).await?;
            return Ok(());
        }
        let result = self
            .serve_session(hello, &mut reader, &mut writer, &mut shutdown)
            .await;
        self.status.connected.store(false, Ordering::Release);
        self.busy.store(false, Ordering::Release);
        result
    }

    async fn serve_session(
        &self,
        hello: redoubt_wire::Hello,
        reader: &mut FrameReader<crate::conn::StreamReadHalf>,
        writer: &mut FrameWriter<crate::conn::StreamWriteHalf>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ReplicationError> {
        let (group_id, durable_seq) = {
            let store = self.store.clone();
            let hello_group_id = hello.group_id.0;
            let journal_first_seq = hello.journal.first_seq;
            let apply = self.apply.clone();
            let status = self.status.clone();
            let group_name_matches = hello.group_name == self.config.group;
            tokio::task::spawn_blocking(move || -> Result<([u8; 16], u64), ReplicationError> {
                let mut store = store
                    .lock()
                    .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
                if store.state.group_id.is_none() && group_name_matches {
                    // First contact: this replica now belongs to that journal, and starts where
                    // production's journal starts. What came before reaches it through the full
                    // sync (initialization step 12) that every plan adding a recovery server
                    // runs, journaled after this point.
                    store.state.group_id = Some(hex(&hello_group_id));
                    store.state.checkpoint_seq = journal_first_seq.saturating_sub(1);
                    save_state(&store.group_dir.clone(), &store.state)?;
                    store.open_journal(hello_group_id)?;
                    status
                        .applied_seq
                        .store(store.state.checkpoint_seq, Ordering::Release);
                    status
                        .checkpoint_seq
                        .store(store.state.checkpoint_seq, Ordering::Release);
                    let _ = apply.send(ApplyMessage::StartAfter(store.state.checkpoint_seq));
                }
                let group_id = store
                    .state
                    .group_id
                    .as_deref()
                    .and_then(unhex)
                    .unwrap_or([0; 16]);
                Ok((group_id, store.durable_seq()))
            })
            .await
            .map_err(|error| ReplicationError::Config(error.to_string()))??
        };
        let mut session = ReceiverSession::new(
            ReceiverConfig {
                group_id: GroupId(group_id),
                group_name: self.config.group.clone(),
                server_name: self.config.server_name.clone(),
                config_version: self.config.config_version,
            },
            durable_seq,
            self.status
                .applied_seq
                .load(Ordering::Acquire)
                .min(durable_seq),
            false,
        )?;
        match session.on_hello(&hello)? {
            HelloReply::Welcome(welcome) => {
                writer.send(&Frame::Welcome(welcome)).await?;
                reader.set_version(welcome.version);
                writer.set_version(welcome.version);
            }
            HelloReply::Refuse(refuse) => {
                writer.send(&Frame::Refuse(refuse)).await?;
                return Ok(());
            }
        }
        self.status.connected.store(true, Ordering::Release);
        self.status.connections.fetch_add(1, Ordering::Relaxed);
        let mut first_batch = true;
        let mut ack_timer = tokio::time::interval(Duration::from_millis(ACK_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = ack_timer.tick() => {
                    let applied = self.status.applied_seq.load(Ordering::Acquire);
                    if applied > session.applied_seq() && applied <= session.durable_seq() {
                        session.on_applied(applied)?;
                    }
                    writer.send(&Frame::Ack(session.ack(self.backlog_bytes()))).await?;
                }
                frame = reader.receive() => match frame? {
                    Frame::Records(batch) => {
                        session.on_records(&batch)?;
                        if first_batch {
                            self.status.last_connection_first_seq.store(batch.first_seq(), Ordering::Relaxed);
                            first_batch = false;
                        }
                        self.status.received_seq.store(batch.last_seq(), Ordering::Relaxed);
                        self.status.received_bytes.fetch_add(batch.len_bytes(), Ordering::Relaxed);
                        let records: Vec<OwnedRecord> = batch.iter().map(|record| record.to_owned_record()).collect();
                        // The records come back from the blocking task: one copy of each payload, not two.
                        let (durable, records) = self.store_durably(records).await?;
                        session.on_durable(durable)?;
                        self.status.durable_seq.store(durable, Ordering::Release);
                        self.apply
                            .send_async(ApplyMessage::Records(records))
                            .await
                            .map_err(|_| ReplicationError::Config("apply thread gone".into()))?;
                        let applied = self.status.applied_seq.load(Ordering::Acquire);
                        if applied > session.applied_seq() && applied <= session.durable_seq() {
                            session.on_applied(applied)?;
                        }
                        writer.send(&Frame::Ack(session.ack(self.backlog_bytes()))).await?;
                    }
                    Frame::Heartbeat(_) => {
                        writer.send(&Frame::Ack(session.ack(self.backlog_bytes()))).await?;
                    }
                    Frame::Goodbye(_) => return Ok(()),
                    _ => return Err(ReplicationError::Unexpected("handshake frame after the handshake")),
                },
            }
        }
    }

    fn backlog_bytes(&self) -> u64 {
        let durable = self.status.durable_seq.load(Ordering::Relaxed);
        let applied = self.status.applied_seq.load(Ordering::Relaxed);
        durable.saturating_sub(applied)
    }

    /// Appends a batch to the journal copy and makes it durable. When the copy is full, what
    /// was appended is made durable and the rest waits for the apply thread's checkpoints to
    /// prune applied records (bounded by `STORE_WAIT_FOR_SPACE_MS`): a slow replica slows the
    /// sender down instead of failing the connection.
    async fn store_durably(
        &self,
        records: Vec<OwnedRecord>,
    ) -> Result<(u64, Vec<OwnedRecord>), ReplicationError> {
        let store = self.store.clone();
        let status = self.status.clone();
        let apply = self.apply.clone();
        tokio::task::spawn_blocking(
            move || -> Result<(u64, Vec<OwnedRecord>), ReplicationError> {
                let deadline =
                    std::time::Instant::now() + Duration::from_millis(STORE_WAIT_FOR_SPACE_MS);
                let mut next = 0;
                loop {
                    let mut guard = store
                        .lock()
                        .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
                    let journal = guard
                        .journal
                        .as_mut()
                        .ok_or_else(|| ReplicationError::Config("journal copy not open".into()))?;
                    while let Some(record) = records.get(next) {
                        match journal.append_replicated(&record.as_record()) {
                            Ok(_) => next += 1,
                            Err(redoubt_journal::JournalError::JournalFull { .. }) => break,
                            Err(error) => return Err(error.into()),
                        }
                    }
                    let durable = journal.sync()?;
                    status
                        .journal_bytes
                        .store(journal.size_bytes(), Ordering::Relaxed);
                    if next == records.len() {
                        return Ok((durable, records));
                    }
                    drop(guard);
                    if std::time::Instant::now() > deadline {
                        return Err(ReplicationError::Config(format!(
                            "the journal copy stayed full for {} s: the replica does not keep up",
                            STORE_WAIT_FOR_SPACE_MS / 1000
                        )));
                    }
                    // What is durable so far may be applied and pruned meanwhile.
                    let _ = apply.send(ApplyMessage::Records(records[..next].to_vec()));
                    let _ = apply.send(ApplyMessage::Checkpoint);
                    let checkpoint = status.checkpoint_seq.load(Ordering::Acquire);
                    let wait_until =
                        std::time::Instant::now() + Duration::from_millis(STORE_RETRY_MS);
                    while status.checkpoint_seq.load(Ordering::Acquire) == checkpoint
                        && std::time::Instant::now() < wait_until
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            },
        )
        .await
        .map_err(|error| ReplicationError::Config(error.to_string()))?
    }
}

struct Applier {
    observer: Option<Arc<dyn ApplyObserver>>,
    verify: Arc<redoubt_datatap::verify::VerifyHook>,
    volumes: BTreeMap<u32, Arc<Volume>>,
    store: Arc<Mutex<Store>>,
    status: Arc<AbaStatus>,
    applied_seq: u64,
    since_checkpoint: u64,
    group_dir: PathBuf,
    /// The undo journal: for every redo seq applied, the replica's data it overwrote (same
    /// seq), so the replica can be rolled back. Opened once the group id is known.
    undo: Option<Journal<StdFs>>,
    undo_capacity_bytes: u64,
    retention_seconds: u64,
    /// (seq, write time in unix ns) of the last record of each applied run, oldest first:
    /// what retention pruning looks up.
    applied_times: std::collections::VecDeque<(u64, u64)>,
    /// Event markers applied, oldest first (bounded by `recovery::MARKERS_MAX`).
    markers: Vec<redoubt_points::Marker>,
    markers_dirty: bool,
    /// (seq, time) of every undo record and the latest undo barrier, built by the first
    /// `window` (one scan of the undo journal) and kept up to date by `apply_run`, so a
    /// rollback does not read the undo journal's payloads just to know its window.
    undo_index: Option<UndoIndex>,
    /// What the super-transaction markers applied so far say about the replica.
    resync: crate::resync::ResyncState,
    /// Events of the run being applied, reported to the observer after it.
    resync_events: Vec<crate::resync::ResyncEvent>,
    /// This recovery server: a super transaction for others leaves its replica consistent.
    server_name: String,
}

fn publish_resync(status: &AbaStatus, resync: &crate::resync::ResyncState, applied_seq: u64) {
    status
        .replica_synced
        .store(resync.consistent_at(applied_seq), Ordering::Release);
    status
        .resync_begin_seq
        .store(resync.open_begin_seq().unwrap_or(0), Ordering::Release);
    let mut shared = status
        .resync
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *shared != *resync {
        *shared = resync.clone();
    }
}

#[derive(Default)]
struct UndoIndex {
    times: std::collections::VecDeque<(u64, u64)>,
    barrier_seq: u64,
}

/// Most (seq, time) samples kept for retention pruning; older ones are merged away.
const APPLIED_TIMES_MAX: usize = 65_536;

/// Name of the undo record standing for a redo record that overwrote nothing (a marker, or a
/// volume this server does not have): it keeps the undo seqs equal to the redo seqs.
const UNDO_NOTHING_MARKER: &str = "undo:none";
/// Name of the undo record standing for a redo record too large to undo: rollback cannot go
/// back past its seq.
pub const UNDO_BARRIER_MARKER: &str = "undo:barrier";

impl Applier {
    fn run(mut self, queue: flume::Receiver<ApplyMessage>) {
        let idle = Duration::from_millis(CHECKPOINT_IDLE_MS);
        loop {
            match queue.recv_timeout(idle) {
                Ok(ApplyMessage::Records(_)) if self.status.paused.load(Ordering::Acquire) => {
                    // Durable in the journal copy: resuming reads them from there.
                }
                Ok(ApplyMessage::Rollback { to_seq, reply }) => {
                    let outcome = self.rollback(to_seq);
                    if let Err(error) = &outcome {
                        tracing::error!(%error, to_seq, "rollback failed");
                    }
                    publish_resync(&self.status, &self.resync, self.applied_seq);
                    let _ = reply.send(outcome);
                }
                Ok(ApplyMessage::Resume { reply }) => {
                    let outcome = self.resume();
                    if let Err(error) = &outcome {
                        tracing::error!(%error, "resume failed");
                    }
                    publish_resync(&self.status, &self.resync, self.applied_seq);
                    let _ = reply.send(outcome);
                }
                Ok(ApplyMessage::Window { reply }) => {
                    let _ = reply.send(self.window());
                }
                Ok(ApplyMessage::Records(records)) => {
                    let records: Vec<OwnedRecord> = records
                        .into_iter()
                        .filter(|record| record.header.seq > self.applied_seq)
                        .collect();
                    if let Err(error) = self.apply_batch(&records) {
                        tracing::error!(%error, "apply stopped");
                        return;
                    }
                    if self.since_checkpoint >= CHECKPOINT_INTERVAL_RECORDS
                        || self.journal_copy_half_full()
                    {
                        self.checkpoint_or_log();
                    }
                }
                Ok(ApplyMessage::Checkpoint) => self.checkpoint_or_log(),
                Ok(ApplyMessage::StartAfter(seq)) => {
                    // Only ever for a replica that has applied nothing yet.
                    if self.applied_seq == 0 {
                        self.applied_seq = seq;
                        self.verify.set_applied(seq);
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    if self.since_checkpoint > 0 {
                        self.checkpoint_or_log();
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    if self.since_checkpoint > 0 {
                        self.checkpoint_or_log();
                    }
                    return;
                }
            }
        }
    }

    /// Applies records in seq order, in runs whose ranges do not overlap: for each run the
    /// overwritten data is captured into the undo journal and made durable first, then the
    /// run is written to the replica. (A run never holds two writes to the same bytes, so
    /// each capture sees the data its write replaces.)
    fn apply_batch(&mut self, records: &[OwnedRecord]) -> Result<(), ReplicationError> {
        let mut run_start = 0;
        let mut ranges: Vec<(u32, u64, u64)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let header = &record.header;
            let range = (
                header.lv_id,
                header.offset_bytes,
                header.offset_bytes + u64::from(header.length_bytes),
            );
            let overlaps = ranges
                .iter()
                .any(|(lv, start, end)| *lv == range.0 && *start < range.2 && range.1 < *end);
            if overlaps {
                self.apply_run(&records[run_start..index])?;
                run_start = index;
                ranges.clear();
            }
            ranges.push(range);
        }
        self.apply_run(&records[run_start..])
    }

    fn undo_journal(&mut self) -> Result<&mut Journal<StdFs>, ReplicationError> {
        if self.undo.is_none() {
            let group_id = {
                let store = self
                    .store
                    .lock()
                    .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
                store.state.group_id.as_deref().and_then(unhex)
            }
            .ok_or_else(|| {
                ReplicationError::Config("undo journal before the group id is known".into())
            })?;
            let mut config = JournalConfig::new(GroupId(group_id), self.undo_capacity_bytes);
            config.segment_size_bytes = (self.undo_capacity_bytes / 8).clamp(
                redoubt_journal::SEGMENT_SIZE_BYTES_MIN,
                redoubt_journal::SEGMENT_SIZE_BYTES_DEFAULT,
            );
            config.seq_first_new = self.applied_seq + 1;
            self.undo = Some(Journal::open(StdFs, self.group_dir.join("undo"), config)?);
        }
        self.undo
            .as_mut()
            .ok_or_else(|| ReplicationError::Config("undo journal not open".into()))
    }

    fn apply_run(&mut self, run: &[OwnedRecord]) -> Result<(), ReplicationError> {
        if run.is_empty() {
            return Ok(());
        }
        let mut captured: Vec<(redoubt_journal::RecordHeader, Vec<u8>)> = Vec::new();
        for record in run {
            let header = &record.header;
            let undo_header =
                |kind: RecordKind, lv_id: u32, offset_bytes: u64, length_bytes: u32| {
                    redoubt_journal::RecordHeader {
                        kind,
                        lv_id,
                        offset_bytes,
                        length_bytes,
                        seq: header.seq,
                        timestamp_ns: header.timestamp_ns,
                    }
                };
            let volume = self.volumes.get(&header.lv_id);
            match (header.kind, volume) {
                // Zeroing or discarding more than a record can carry (mkfs discards a whole
                // device): no undo is possible across it; the rollback window starts after it.
                (RecordKind::WriteZeroes | RecordKind::Trim, Some(_))
                    if header.length_bytes > redoubt_journal::RECORD_PAYLOAD_BYTES_MAX =>
                {
                    captured.push((
                        undo_header(RecordKind::Marker, 0, 0, 0),
                        UNDO_BARRIER_MARKER.as_bytes().to_vec(),
                    ));
                    self.status
                        .undo_barrier_seq
                        .store(header.seq, Ordering::Relaxed);
                }
                (RecordKind::Write | RecordKind::WriteZeroes | RecordKind::Trim, Some(volume)) => {
                    let mut old = vec![0u8; header.length_bytes as usize];
                    volume.read_at(&mut old, header.offset_bytes)?;
                    captured.push((
                        undo_header(
                            RecordKind::Undo,
                            header.lv_id,
                            header.offset_bytes,
                            header.length_bytes,
                        ),
                        old,
                    ));
                }
                (RecordKind::Marker, _) => captured.push((
                    undo_header(RecordKind::Marker, 0, 0, 0),
                    record.payload.clone(),
                )),
                _ => captured.push((
                    undo_header(RecordKind::Marker, 0, 0, 0),
                    UNDO_NOTHING_MARKER.as_bytes().to_vec(),
                )),
            }
        }
        let undo = self.undo_journal()?;
        for (header, payload) in &captured {
            // After a crash the replay may meet records whose undo is already durable.
            if header.seq <= undo.appended_seq() {
                continue;
            }
            let record = redoubt_journal::Record {
                header: *header,
                payload,
            };
            match undo.append_replicated(&record) {
                Ok(_) => {}
                Err(redoubt_journal::JournalError::JournalFull { .. }) => {
                    // The rollback window shrinks from its old end: drop the oldest segment.
                    let oldest = undo
                        .sealed_segments()
                        .next()
                        .map(|segment| segment.last_seq);
                    match oldest {
                        Some(last_seq) => {
                            undo.prune_through(last_seq)?;
                            undo.append_replicated(&record)?;
                        }
                        None => {
                            return Err(redoubt_journal::JournalError::JournalFull {
                                capacity_bytes: undo.capacity_bytes(),
                                used_bytes: undo.size_bytes(),
                                record_bytes: record.encoded_size_bytes(),
                            }
                            .into())
                        }
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        undo.sync()?;
        let undo_first = undo.first_seq().unwrap_or(0);
        if let Some(index) = self.undo_index.as_mut() {
            // The undo journal may have dropped its oldest segment to make room: so does the
            // index, so it stays as small as the journal it describes.
            while index
                .times
                .front()
                .is_some_and(|(seq, _)| *seq < undo_first)
            {
                index.times.pop_front();
            }
            for (header, payload) in &captured {
                if index.times.back().is_none_or(|(seq, _)| *seq < header.seq) {
                    index.times.push_back((header.seq, header.timestamp_ns));
                }
                if header.kind == RecordKind::Marker && payload == UNDO_BARRIER_MARKER.as_bytes() {
                    index.barrier_seq = index.barrier_seq.max(header.seq);
                }
            }
        }
        self.status
            .undo_first_seq
            .store(undo_first, Ordering::Relaxed);
        if let Some(observer) = &self.observer {
            observer.before_apply(run, &self.volumes);
        }
        for record in run {
            self.apply(record)?;
        }
        publish_resync(&self.status, &self.resync, self.applied_seq);
        if !self.resync_events.is_empty() {
            let events = std::mem::take(&mut self.resync_events);
            if let Some(observer) = &self.observer {
                for event in events {
                    observer.resync_changed(event);
                }
            }
        }
        if let Some(last) = run.last() {
            if self.applied_times.len() >= APPLIED_TIMES_MAX {
                self.applied_times.pop_front();
            }
            self.applied_times
                .push_back((last.header.seq, last.header.timestamp_ns));
        }
        Ok(())
    }

    /// Prunes undo records older than the retention (whole sealed segments only).
    fn prune_undo_by_retention(&mut self) -> Result<(), ReplicationError> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
            });
        let horizon_ns =
            now_ns.saturating_sub(self.retention_seconds.saturating_mul(1_000_000_000));
        let mut expired_seq = None;
        while self
            .applied_times
            .front()
            .is_some_and(|(_, time)| *time < horizon_ns)
        {
            expired_seq = self.applied_times.pop_front().map(|(seq, _)| seq);
        }
        let pin = self.status.undo_pin_seq.load(Ordering::Acquire);
        let expired_seq = match (expired_seq, pin) {
            (Some(seq), pin) if pin > 0 => Some(seq.min(pin - 1)),
            (expired, _) => expired,
        };
        if let (Some(seq), Some(undo)) = (expired_seq, self.undo.as_mut()) {
            undo.prune_through(seq)?;
            self.status
                .undo_first_seq
                .store(undo.first_seq().unwrap_or(0), Ordering::Relaxed);
        }
        Ok(())
    }

    fn apply(&mut self, record: &OwnedRecord) -> Result<(), ReplicationError> {
        let header = &record.header;
        assert_eq!(
            header.seq,
            self.applied_seq + 1,
            "the replica receives records in seq order"
        );
        let apply_error = |error: redoubt_volume::VolumeError| ReplicationError::Apply {
            seq: header.seq,
            reason: error.to_string(),
        };
        let write = || -> Result<(), ReplicationError> {
            if let Some(volume) = self.volumes.get(&header.lv_id) {
                match header.kind {
                    RecordKind::Write => volume
                        .write_at(&record.payload, header.offset_bytes)
                        .map_err(apply_error)?,
                    RecordKind::WriteZeroes => volume
                        .write_zeroes(header.offset_bytes, u64::from(header.length_bytes))
                        .map_err(apply_error)?,
                    RecordKind::Trim => {
                        volume
                            .trim(header.offset_bytes, u64::from(header.length_bytes))
                            .map_err(apply_error)?;
                    }
                    RecordKind::Marker | RecordKind::Undo => {}
                }
            }
            Ok(())
        };
        self.verify.around_apply(
            Some(header.seq),
            crate::verify::record_range(record),
            || Ok(write()),
        )??;
        if header.kind == RecordKind::Marker {
            crate::recovery::index_marker(&mut self.markers, header, &record.payload);
            self.markers_dirty = true;
        }
        let marker = (header.kind == RecordKind::Marker).then_some(record.payload.as_slice());
        if let Some(event) = self
            .resync
            .on_applied(header.seq, marker, &self.server_name)
        {
            tracing::info!(?event, "super transaction marker applied");
            self.resync_events.push(event);
        }
        self.applied_seq = header.seq;
        self.since_checkpoint += 1;
        self.status
            .applied_seq
            .store(self.applied_seq, Ordering::Release);
        Ok(())
    }

    /// The journal copy is pruned at checkpoints; checkpointing when it is half full keeps
    /// room for what is on the way.
    fn journal_copy_half_full(&self) -> bool {
        self.store.lock().ok().is_some_and(|store| {
            store
                .journal
                .as_ref()
                .is_some_and(|journal| journal.size_bytes() * 2 > journal.capacity_bytes())
        })
    }

    fn checkpoint_or_log(&mut self) {
        if let Err(error) = self.checkpoint() {
            tracing::error!(%error, "replica checkpoint failed");
        }
    }

    /// Syncs the replica LVs, records the applied seq, and prunes the journal copy up to it.
    fn checkpoint(&mut self) -> Result<(), ReplicationError> {
        for volume in self.volumes.values() {
            volume.sync()?;
        }
        let mut store = self
            .store
            .lock()
            .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
        store.state.checkpoint_seq = self.applied_seq;
        store.state.resync = self.resync.clone();
        save_state(&self.group_dir, &store.state)?;
        if self.markers_dirty {
            crate::recovery::save_markers(&self.group_dir, &self.markers)?;
            self.markers_dirty = false;
        }
        if let Some(journal) = store.journal.as_mut() {
            journal.prune_through(self.applied_seq)?;
            self.status
                .journal_bytes
                .store(journal.size_bytes(), Ordering::Relaxed);
        }
        drop(store);
        self.prune_undo_by_retention()?;
        self.status
            .checkpoint_seq
            .store(self.applied_seq, Ordering::Release);
        self.since_checkpoint = 0;
        Ok(())
    }
}

impl Aba {
    async fn ask<T: Send + 'static>(
        &self,
        message: impl FnOnce(flume::Sender<Result<T, ReplicationError>>) -> ApplyMessage,
    ) -> Result<T, ReplicationError> {
        let (reply, answer) = flume::bounded(1);
        self.apply
            .send_async(message(reply))
            .await
            .map_err(|_| ReplicationError::Config("the apply thread has stopped".into()))?;
        answer
            .recv_async()
            .await
            .map_err(|_| ReplicationError::Config("the apply thread has stopped".into()))?
    }

    /// What this replica can be rolled to, with markers and record times.
    pub async fn window(&self) -> Result<RestoreWindow, ReplicationError> {
        self.ask(|reply| ApplyMessage::Window { reply }).await
    }

    /// Rolls the replica to `to_seq` (back through the undo journal, or forward again while
    /// paused) and leaves apply paused there. Progress: `status().rollback_*_records`.
    pub async fn rollback(&self, to_seq: u64) -> Result<RollbackReport, ReplicationError> {
        self.ask(|reply| ApplyMessage::Rollback { to_seq, reply })
            .await
    }

    /// Moves a paused replica forward to everything it had, then applies again; answers the
    /// applied seq. A replica that is not paused answers at once.
    pub async fn resume(&self) -> Result<u64, ReplicationError> {
        self.ask(|reply| ApplyMessage::Resume { reply }).await
    }
}

/// Undo records read per step of a rollback (bounded memory: one segment's worth at most).
const ROLLBACK_READ_RECORDS_MAX: usize = 4096;

impl Applier {
    fn paused_state(&self) -> Result<Option<Paused>, ReplicationError> {
        let store = self
            .store
            .lock()
            .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
        Ok(store.state.paused.clone())
    }

    /// Persists the replica's seq and pause state together (one state-file rename).
    fn save_pause(&mut self, paused: Option<Paused>) -> Result<(), ReplicationError> {
        let mut store = self
            .store
            .lock()
            .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
        store.state.checkpoint_seq = self.applied_seq;
        store.state.paused = paused.clone();
        save_state(&self.group_dir, &store.state)?;
        drop(store);
        self.status
            .paused
            .store(paused.is_some(), Ordering::Release);
        self.status
            .applied_seq
            .store(self.applied_seq, Ordering::Release);
        self.status
            .checkpoint_seq
            .store(self.applied_seq, Ordering::Release);
        self.since_checkpoint = 0;
        Ok(())
    }

    fn window(&mut self) -> Result<RestoreWindow, ReplicationError> {
        let paused = self.paused_state()?;
        let applied = self.applied_seq;
        let last = match &paused {
            Some(paused) if paused.rollforward_complete => paused.rollforward_last_seq.max(applied),
            _ => applied,
        };
        let mut window = RestoreWindow {
            first_seq: applied,
            last_seq: last,
            applied_seq: applied,
            paused: paused.is_some(),
            markers: self.markers.clone(),
            times: Vec::new(),
        };
        let group_id_known = self
            .store
            .lock()
            .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?
            .state
            .group_id
            .is_some();
        if !group_id_known {
            return Ok(window);
        }
        let (undo_first, durable) = {
            let undo = self.undo_journal()?;
            let Some(undo_first) = undo.first_seq() else {
                return Ok(window);
            };
            (undo_first, undo.durable_seq())
        };
        if self.undo_index.is_none() {
            let mut index = UndoIndex::default();
            if durable >= undo_first {
                let undo = self.undo_journal()?;
                for record in undo.read_from(undo_first)? {
                    let record = record?;
                    index
                        .times
                        .push_back((record.header.seq, record.header.timestamp_ns));
                    if record.header.kind == RecordKind::Marker
                        && record.payload == UNDO_BARRIER_MARKER.as_bytes()
                    {
                        index.barrier_seq = record.header.seq;
                    }
                }
            }
            self.undo_index = Some(index);
        }
        let mut barrier_seq = 0;
        if let Some(index) = self.undo_index.as_mut() {
            // Pruning (retention, capacity) drops the oldest records.
            while index
                .times
                .front()
                .is_some_and(|(seq, _)| *seq < undo_first)
            {
                index.times.pop_front();
            }
            window.times = index
                .times
                .iter()
                .copied()
                .take_while(|(seq, _)| *seq <= last)
                .collect();
            if index.barrier_seq >= undo_first {
                barrier_seq = index.barrier_seq;
            }
        }
        window.first_seq = undo_first.saturating_sub(1).max(barrier_seq).min(applied);
        Ok(window)
    }

    fn rollback(&mut self, to_seq: u64) -> Result<RollbackReport, ReplicationError> {
        let paused = self.paused_state()?;
        if let Some((from, to)) = paused.as_ref().and_then(|paused| paused.rolling_back) {
            // A crash interrupted this rollback: finish it (idempotent), without capturing.
            let mut paused = paused.clone().unwrap_or_else(|| unreachable_paused(from));
            paused.rollforward_complete = false;
            self.applied_seq = from;
            return self.roll_back(paused, from, to, false);
        }
        let window = self.window()?;
        if to_seq < window.first_seq || to_seq > window.last_seq {
            return Err(ReplicationError::Config(format!(
                "seq {to_seq} is outside the restore window seq {}..={} of this replica",
                window.first_seq, window.last_seq
            )));
        }
        if let Some(reason) = self.resync.inconsistent_reason(to_seq) {
            return Err(ReplicationError::Config(format!(
                "cannot roll back to seq {to_seq}: {reason}"
            )));
        }
        let from = self.applied_seq;
        let paused = match paused {
            Some(paused) => paused,
            None => {
                crate::rollback::Rollforward::create(&self.group_dir)?.sync()?;
                Paused {
                    rollforward_first_seq: from + 1,
                    rollforward_last_seq: from,
                    rollforward_complete: true,
                    rolling_back: None,
                    since_unix_ms: now_unix_ms(),
                }
            }
        };
        if to_seq >= from {
            let redone = self.roll_forward(&paused, to_seq)?;
            self.save_pause(Some(paused))?;
            return Ok(RollbackReport {
                from_seq: from,
                to_seq,
                undone_records: 0,
                redone_records: redone,
            });
        }
        self.roll_back(paused, from, to_seq, true)
    }

    /// Applies the undo records `from..to+1`, newest first, capturing each redo's data into
    /// the roll-forward file first when `capture` (see `rollback.rs` for why a restart can
    /// finish this).
    fn roll_back(
        &mut self,
        mut paused: Paused,
        from: u64,
        to: u64,
        capture: bool,
    ) -> Result<RollbackReport, ReplicationError> {
        paused.rolling_back = Some((from, to));
        if !capture {
            paused.rollforward_complete = false;
        }
        self.save_pause(Some(paused.clone()))?;
        let mut rollforward = if capture {
            Some(crate::rollback::Rollforward::open(&self.group_dir)?)
        } else {
            None
        };
        self.status
            .rollback_total_records
            .store(from - to, Ordering::Relaxed);
        self.status
            .rollback_done_records
            .store(0, Ordering::Relaxed);
        // Walk down in bounded chunks: read a chunk ascending, apply it descending.
        let mut upper = from;
        while upper > to {
            let lower = upper
                .saturating_sub(ROLLBACK_READ_RECORDS_MAX as u64)
                .max(to);
            let chunk: Vec<OwnedRecord> = {
                let undo = self.undo_journal()?;
                let mut chunk = Vec::new();
                for record in undo.read_from(lower + 1)? {
                    let record = record?;
                    if record.header.seq > upper {
                        break;
                    }
                    chunk.push(record);
                }
                chunk
            };
            if chunk.len() as u64 != upper - lower
                || chunk.first().map(|record| record.header.seq) != Some(lower + 1)
            {
                return Err(ReplicationError::Config(format!(
                    "the undo journal does not hold every record of seq {}..={upper}: cannot roll back",
                    lower + 1
                )));
            }
            for record in chunk.iter().rev() {
                let header = &record.header;
                let volume = self.volumes.get(&header.lv_id).cloned();
                if let Some(rollforward) = rollforward.as_mut() {
                    if header.seq < paused.rollforward_first_seq {
                        match (header.kind, &volume) {
                            (RecordKind::Undo, Some(volume)) => {
                                let mut redo = vec![0u8; header.length_bytes as usize];
                                volume.read_at(&mut redo, header.offset_bytes)?;
                                let redo_header = redoubt_journal::RecordHeader {
                                    kind: RecordKind::Write,
                                    ..*header
                                };
                                rollforward.append(&redo_header, &redo)?;
                            }
                            _ => {
                                let marker = redoubt_journal::RecordHeader {
                                    kind: RecordKind::Marker,
                                    lv_id: 0,
                                    offset_bytes: 0,
                                    length_bytes: 0,
                                    ..*header
                                };
                                rollforward.append(&marker, &record.payload)?;
                            }
                        }
                        paused.rollforward_first_seq = header.seq;
                    }
                }
                if let (RecordKind::Undo, Some(volume)) = (header.kind, &volume) {
                    // Snapshots keep what the undo overwrites, as for any write.
                    if let Some(observer) = &self.observer {
                        observer.before_apply(std::slice::from_ref(record), &self.volumes);
                    }
                    volume.write_at(&record.payload, header.offset_bytes)?;
                } else if header.kind == RecordKind::Marker
                    && record.payload == UNDO_BARRIER_MARKER.as_bytes()
                {
                    return Err(ReplicationError::Config(format!(
                        "seq {} zeroed more than a record can undo: the replica cannot go back past it",
                        header.seq
                    )));
                }
                self.status
                    .rollback_done_records
                    .fetch_add(1, Ordering::Relaxed);
            }
            upper = lower;
        }
        if let Some(rollforward) = rollforward.as_mut() {
            rollforward.sync()?;
        }
        for volume in self.volumes.values() {
            volume.sync()?;
        }
        self.applied_seq = to;
        publish_resync(&self.status, &self.resync, to);
        paused.rolling_back = None;
        self.save_pause(Some(paused))?;
        tracing::info!(from, to, "replica rolled back; apply paused");
        Ok(RollbackReport {
            from_seq: from,
            to_seq: to,
            undone_records: from - to,
            redone_records: 0,
        })
    }

    /// Re-applies the roll-forward file's records after the applied seq, through `to`.
    fn roll_forward(&mut self, paused: &Paused, to: u64) -> Result<u64, ReplicationError> {
        let from = self.applied_seq;
        if to <= from {
            return Ok(0);
        }
        if !paused.rollforward_complete {
            return Err(ReplicationError::Config(
                "a crash interrupted the rollback of this replica, so what it undid cannot be \
                 redone: roll back further, or re-initialize the replica (full sync)"
                    .into(),
            ));
        }
        let mut rollforward = crate::rollback::Rollforward::open(&self.group_dir)?;
        let records = rollforward.read_range(from, to)?;
        let contiguous = records
            .iter()
            .enumerate()
            .all(|(index, record)| record.header.seq == from + 1 + index as u64);
        if !contiguous || records.len() as u64 != to - from {
            return Err(ReplicationError::Config(format!(
                "the roll-forward file does not hold every record of seq {}..={to}",
                from + 1
            )));
        }
        self.status
            .rollback_total_records
            .store(to - from, Ordering::Relaxed);
        self.status
            .rollback_done_records
            .store(0, Ordering::Relaxed);
        for chunk in records.chunks(ROLLBACK_READ_RECORDS_MAX) {
            self.apply_batch(chunk)?;
            self.status
                .rollback_done_records
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        for volume in self.volumes.values() {
            volume.sync()?;
        }
        Ok(to - from)
    }

    fn resume(&mut self) -> Result<u64, ReplicationError> {
        let Some(paused) = self.paused_state()? else {
            return Ok(self.applied_seq);
        };
        if paused.rolling_back.is_some() {
            return Err(ReplicationError::Config(
                "a rollback is still running on this replica".into(),
            ));
        }
        self.roll_forward(&paused, paused.rollforward_last_seq)?;
        self.save_pause(None)?;
        if let Ok(rollforward) = crate::rollback::Rollforward::open(&self.group_dir) {
            rollforward.remove()?;
        }
        // Then what arrived meanwhile, from the journal copy.
        let pending: Vec<OwnedRecord> = {
            let store = self
                .store
                .lock()
                .map_err(|_| ReplicationError::Config("store lock poisoned".into()))?;
            let mut pending = Vec::new();
            if let Some(journal) = store.journal.as_ref() {
                if journal.durable_seq() > self.applied_seq {
                    for record in journal.read_from(self.applied_seq + 1)? {
                        pending.push(record?);
                    }
                }
            }
            pending
        };
        for chunk in pending.chunks(ROLLBACK_READ_RECORDS_MAX) {
            self.apply_batch(chunk)?;
        }
        self.checkpoint()?;
        tracing::info!(applied_seq = self.applied_seq, "replica resumed applying");
        Ok(self.applied_seq)
    }
}

fn unreachable_paused(from: u64) -> Paused {
    Paused {
        rollforward_first_seq: from + 1,
        rollforward_last_seq: from,
        rollforward_complete: false,
        rolling_back: None,
        since_unix_ms: now_unix_ms(),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The journal id a replica learnt from production (`aba.json`), if any.
pub fn read_group_id(group_dir: &Path) -> Option<[u8; 16]> {
    load_state(group_dir)
        .ok()
        .and_then(|state| state.group_id.as_deref().and_then(unhex))
}

/// How a follower's restore history came through the switch to a new production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerHistory {
    /// Its undo journal, markers and super transactions through the checkpoint stay: every
    /// restore point it had before the switch is still one.
    Kept,
    /// Its restore window starts at the checkpoint, for this reason (also kept for `points`).
    Reset(HistoryReset),
}

/// Makes `group_dir` the state of a replica that holds production's history through
/// `checkpoint_seq` and resumes after it (a server that follows a new production after a
/// failover or a failback; its journal copy must be empty). `replica_synced`: its LVs equal
/// production as of `checkpoint_seq` (not so for an old production that wrote after it).
///
/// The undo of the history before the switch stays when it is the undo of the new
/// production's history too: the LVs equal that history at `checkpoint_seq` and the undo
/// journal reaches it. Records after `checkpoint_seq` (what this server applied of a history
/// the failover left behind) go, and so do markers after it. Otherwise the window starts
/// afresh at `checkpoint_seq`, every marker goes (none is restorable here any more), and the
/// reason is kept for `points`.
pub fn start_following(
    group_dir: &Path,
    group_id: [u8; 16],
    checkpoint_seq: u64,
    replica_synced: bool,
    now_unix_ms: u64,
) -> Result<FollowerHistory, ReplicationError> {
    std::fs::create_dir_all(group_dir)?;
    let previous = load_state(group_dir).unwrap_or_default();
    let undo_dir = group_dir.join("undo");
    let same_group = previous.group_id.as_deref().and_then(unhex) == Some(group_id);
    let undo = if undo_dir.exists() && same_group {
        let mut config = JournalConfig::new(GroupId(group_id), UNDO_REOPEN_CAPACITY_BYTES);
        config.seq_first_new = checkpoint_seq + 1;
        Some(Journal::open(StdFs, &undo_dir, config)?)
    } else {
        None
    };
    let reaches = undo.as_ref().is_some_and(|undo| {
        undo.durable_seq() >= checkpoint_seq
            && undo
                .first_seq()
                .is_some_and(|first| first <= checkpoint_seq + 1)
    });
    let why_not = if !replica_synced {
        Some(format!(
            "its volumes did not equal the new production's history at seq {checkpoint_seq} (it wrote after the failover point, or a super transaction was under way)"
        ))
    } else if !reaches {
        Some(format!(
            "it holds no undo of the history through seq {checkpoint_seq} (it was production meanwhile, or its undo journal did not reach that far)"
        ))
    } else {
        None
    };
    let (history, resync, history_reset) = match (why_not, undo) {
        (None, Some(undo)) => {
            undo.truncate_after(checkpoint_seq)?;
            let mut markers = crate::recovery::load_markers(group_dir)?;
            markers.retain(|marker| marker.seq <= checkpoint_seq);
            crate::recovery::save_markers(group_dir, &markers)?;
            let mut resync = previous.resync.clone();
            resync
                .intervals
                .retain(|interval| interval.begin_seq <= checkpoint_seq);
            (
                FollowerHistory::Kept,
                resync,
                previous.history_reset.clone(),
            )
        }
        (why_not, undo) => {
            drop(undo);
            redoubt_durable::remove_dir_all(&undo_dir)?;
            crate::recovery::save_markers(group_dir, &[])?;
            let reset = HistoryReset {
                seq: checkpoint_seq,
                since_unix_ms: now_unix_ms,
                reason: why_not.unwrap_or_else(|| "it kept no undo journal".to_string()),
            };
            (
                FollowerHistory::Reset(reset.clone()),
                crate::resync::ResyncState::following_from(checkpoint_seq, replica_synced),
                Some(reset),
            )
        }
    };
    save_state(
        group_dir,
        &AbaState {
            group_id: Some(hex(&group_id)),
            checkpoint_seq,
            paused: None,
            resync,
            history_reset,
        },
    )?;
    Ok(history)
}

/// Reopening an undo journal only to cut it: the container's cap is checked by the apply
/// thread when it appends, so any cap above what the directory holds will do.
const UNDO_REOPEN_CAPACITY_BYTES: u64 = 1 << 50;
