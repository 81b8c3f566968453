//! `redoubt-sim`: a deterministic, single-threaded simulation of replication, in the spirit of
//! FoundationDB's and TigerBeetle's simulators.
//!
//! One root seed drives everything: the workload, the scheduler, the link faults and the power
//! cuts ([`SplitMix64`]; no OS randomness, no clock, no threads, no sleeps). The same seed runs
//! the same steps on every machine, so a failing seed is a complete bug report.
//!
//! # Actors
//!
//! ```text
//!  workload ─▶ Production ──read_from(durable)──▶ Sender (LCA) ══ Link ══▶ Receiver (ABA)
//!   (history)   Journal<SimFs>,                   SenderSession,   bytes,    FrameReceiver,
//!               group commit                      RecordsBatch-    delays,   ReceiverSession,
//!                                                 Builder,         faults    journal copy
//!                                                 FrameSequencer             (append_replicated,
//!                                                                             sync, Ack), replica
//!                                                                             image + checkpoint
//! ```
//!
//! - **Production**: a `Journal<SimFs>` fed by [`redoubt_history::generate`] (writes, some
//!   markers, flushes) with group commits (`sync`). Only writes that became durable enter the
//!   [`History`], with the seq the journal gave them; that history is the oracle of
//!   production's image as of any seq.
//! - **Sender** (the LCA): Hello with the durable journal position, then reads durable records
//!   with `read_from`, builds batches (sometimes compressed), respects the in-flight cap, and
//!   handles Welcome, Ack and Heartbeat.
//! - **Link**: per connection, one byte pipe per direction. Bytes arrive in order, after a
//!   seeded delay, a frame often split across several deliveries.
//! - **Receiver** (the ABA): stores each batch with `append_replicated` + `sync` in its own
//!   `Journal<SimFs>`, acks `durable_seq`, applies durable records in seq order to an
//!   in-memory replica ([`MemoryImages`]), and persists a checkpoint (image + `applied_seq`)
//!   at random steps; after a crash it restarts from the checkpoint and replays the copy.
//!
//! # Fault classes (first 80% of the planned steps)
//!
//! - connection reset: both sides lose their session state and in-flight bytes; the sender
//!   reconnects with a fresh Hello after a few steps;
//! - a corrupted byte in flight, or a replay of an earlier frame of the same connection and
//!   direction: the receiving side must reject it (decode error) and reset the connection;
//!   a corrupted or replayed frame that decodes is a failure, and so is a decode error with
//!   no injected fault;
//! - production power cut (`PowerCut::TearUnsynced`): unsynced records may vanish (or survive
//!   torn-tail recovery); the workload continues from the recovered seq; the LCA dies too;
//! - receiver power cut, at a step boundary or in the middle of a store (armed with
//!   `SimFs::crash_after`): the replica reverts to its checkpoint.
//!
//! # Invariants (checked after every step)
//!
//! 1. `apply-order`: the receiver applies records strictly in seq order, each once per replica
//!    state (no gap, no duplicate), across reconnects and crashes.
//! 2. `replica-equals-production`: the replica image equals production's image as of exactly
//!    `applied_seq` ([`check_exact`] against the history).
//! 3. `watermarks`: `applied_seq <= receiver durable <= production durable`; the sender's
//!    durable view never exceeds what it sent; acks never go backwards within a connection;
//!    durable seqs never go backwards (`durability`: what a sync covered survives power cuts).
//! 4. `resume`: the first Records batch of a connection starts exactly at receiver durable + 1.
//! 5. `liveness`: once faults stop, the replica converges to production's final durable seq
//!    (within as many extra steps as were planned).
//!
//! Also `fault-rejected` (a corrupted or replayed frame is never accepted), `protocol` (no
//! session or decode error without an injected fault) and `storage` (journals never fail
//! outside an injected crash).
//!
//! # Replaying a seed
//!
//! A failure prints `seed=<n> step=<s> invariant=<name>: ...`. Replay it with
//!
//! ```text
//! REDOUBT_SIM_SEED=<n> cargo test -p redoubt-sim replay_one -- --nocapture
//! ```
//!
//! [`SimOptions::bug`] injects a deliberate bug ([`Bug`]) so tests prove the harness catches
//! what it claims to (`replay_one` replays without a bug; pass the same [`SimOptions`] to
//! [`run`] to replay a bug-injected failure).

use std::collections::VecDeque;
use std::fmt;

use redoubt_history::{
    check_exact, generate, History, MemoryImages, SplitMix64, WorkloadConfig, WorkloadEvent,
    WriteOp,
};
use redoubt_journal::{
    lv_id_for_name, Entry, GroupId, Journal, JournalConfig, JournalError, OwnedRecord, PowerCut,
    RecordKind, SimFs,
};
use redoubt_wire::{
    Ack, BatchPush, Frame, FrameReceiver, FrameSequencer, Heartbeat, HelloReply, JournalPosition,
    ReceiverConfig, ReceiverSession, RecordsBatch, RecordsBatchBuilder, SenderConfig,
    SenderSession, Start,
};

/// LV sizes of the simulated group: small, so overwrites (which expose ordering bugs) are
/// frequent and a full image check is cheap.
pub const LV_SIZES_BYTES: [u64; 2] = [32 * 4096, 16 * 4096];
/// Steps of one seed unless the options say otherwise.
pub const STEPS_DEFAULT: u64 = 300;
/// Faults happen in the first `FAULT_PERCENT` of the planned steps; the rest is quiet.
pub const FAULT_PERCENT: u64 = 80;

const PRODUCTION_DIR: &str = "/production/journal";
const COPY_DIR: &str = "/recovery/journal";
const SEGMENT_SIZE_BYTES: u64 = 32 * 1024;
const JOURNAL_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;
const BATCH_BUDGET_BYTES: u32 = 32 * 1024;
const BATCHES_PER_PUMP_MAX: usize = 8;
const IN_FLIGHT_BYTES_MAX: u64 = 192 * 1024;
const APPLY_RECORDS_PER_STEP_MAX: u64 = 8;
const LINK_DELAY_STEPS_MAX: u64 = 3;
const RECONNECT_DELAY_STEPS_MAX: u64 = 6;
const REPLAYABLE_FRAMES_KEPT: usize = 8;
const GROUP_NAME: &str = "sim";
const SERVER_NAME: &str = "recovery1";
const CONFIG_VERSION: u64 = 1;

/// A deliberate bug, to prove the harness detects what it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The receiver applies the records of one apply step in reverse order (invariant 1).
    ApplyReversed,
    /// After a reconnect to a receiver that has data, the sender skips one seq (invariant 4).
    ResumeSkipsSeq,
    /// A checkpoint claims one record more than the replica image holds (invariant 2).
    CheckpointAhead,
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    pub seed: u64,
    /// Planned steps; the last `100 - FAULT_PERCENT` percent are fault-free.
    pub steps: u64,
    pub bug: Option<Bug>,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            steps: STEPS_DEFAULT,
            bug: None,
        }
    }
}

/// The invariant a failure violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    ApplyOrder,
    ReplicaEqualsProduction,
    Watermarks,
    Durability,
    Resume,
    Liveness,
    FaultRejected,
    Protocol,
    Storage,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::ApplyOrder => "apply-order",
            Invariant::ReplicaEqualsProduction => "replica-equals-production",
            Invariant::Watermarks => "watermarks",
            Invariant::Durability => "durability",
            Invariant::Resume => "resume",
            Invariant::Liveness => "liveness",
            Invariant::FaultRejected => "fault-rejected",
            Invariant::Protocol => "protocol",
            Invariant::Storage => "storage",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A violated invariant, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "seed={seed} step={step} invariant={invariant}: {detail} \
     (replay: REDOUBT_SIM_SEED={seed} cargo test -p redoubt-sim replay_one -- --nocapture)"
)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub invariant: Invariant,
    pub detail: String,
}

/// What one seed did (so tests can assert the faults really happened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub steps_run: u64,
    pub production_durable_seq: u64,
    pub applied_seq: u64,
    pub writes_durable: u64,
    pub connections: u64,
    pub resets: u64,
    pub corruptions_injected: u64,
    pub replays_injected: u64,
    pub faulty_frames_rejected: u64,
    pub production_crashes: u64,
    pub receiver_crashes: u64,
    pub batches_sent: u64,
    pub compressed_batches_sent: u64,
    pub resumes_with_data: u64,
    pub image_checks: u64,
}

/// Internal failure before the step and seed are attached.
struct Violation {
    invariant: Invariant,
    detail: String,
}

fn violation(invariant: Invariant, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        detail: detail.into(),
    }
}

type Step<T = ()> = Result<T, Violation>;

/// Runs one seed; `Err` names the first violated invariant with seed and step.
pub fn run(options: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(options).map_err(|v| SimFailure {
        seed: options.seed,
        step: 0,
        invariant: v.invariant,
        detail: v.detail,
    })?;
    sim.run_all().map_err(|v| SimFailure {
        seed: options.seed,
        step: sim.now,
        invariant: v.invariant,
        detail: v.detail,
    })?;
    Ok(sim.report)
}

// ---------------------------------------------------------------------------------------------
// Link

#[derive(Debug)]
struct Chunk {
    /// Stream offset of `bytes[0]` in this direction.
    offset: u64,
    bytes: Vec<u8>,
    due: u64,
}

/// One direction of one connection: in-order bytes with delays, plus fault bookkeeping.
#[derive(Debug, Default)]
struct Pipe {
    chunks: VecDeque<Chunk>,
    pushed_bytes: u64,
    last_due: u64,
    /// Recent frames' bytes, for replay faults.
    frames: VecDeque<Vec<u8>>,
    /// Stream offsets of injected faults (a flipped byte, or the start of a replayed frame).
    faults: Vec<u64>,
}

impl Pipe {
    fn push(&mut self, bytes: Vec<u8>, now: u64, rng: &mut SplitMix64, remember: bool) {
        if remember {
            if self.frames.len() == REPLAYABLE_FRAMES_KEPT {
                self.frames.pop_front();
            }
            self.frames.push_back(bytes.clone());
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let take = if rest.len() > 1 && rng.percent(40) {
                1 + rng.below(rest.len() as u64 - 1) as usize
            } else {
                rest.len()
            };
            let (head, tail) = rest.split_at(take);
            let due = (now + rng.below(LINK_DELAY_STEPS_MAX + 1)).max(self.last_due);
            self.last_due = due;
            self.chunks.push_back(Chunk {
                offset: self.pushed_bytes,
                bytes: head.to_vec(),
                due,
            });
            self.pushed_bytes += head.len() as u64;
            rest = tail;
        }
    }

    fn deliver(&mut self, now: u64, endpoint: &mut Endpoint) {
        while self.chunks.front().is_some_and(|chunk| chunk.due <= now) {
            if let Some(chunk) = self.chunks.pop_front() {
                endpoint.inbuf.extend_from_slice(&chunk.bytes);
            }
        }
    }

    fn fault_in(&self, from: u64, to: u64) -> bool {
        self.faults
            .iter()
            .any(|&offset| from <= offset && offset < to)
    }
}

/// The receiving and sending framing state of one side of a connection.
#[derive(Debug, Default)]
struct Endpoint {
    inbuf: Vec<u8>,
    /// Stream offset of `inbuf[0]`.
    consumed: u64,
    frames: FrameReceiver,
    out: FrameSequencer,
}

struct SenderSide {
    endpoint: Endpoint,
    session: SenderSession,
    streaming: bool,
    /// Set by a Welcome whose resume point is past 0 (the receiver has data).
    resumed_with_data: bool,
    last_ack: Option<Ack>,
}

struct ReceiverSide {
    endpoint: Endpoint,
    session: Option<ReceiverSession>,
    first_batch_seen: bool,
}

struct Connection {
    to_receiver: Pipe,
    to_sender: Pipe,
    sender: SenderSide,
    receiver: ReceiverSide,
}

// ---------------------------------------------------------------------------------------------
// Production and receiver

struct Production {
    fs: SimFs,
    journal: Journal<SimFs>,
    events: Vec<WorkloadEvent>,
    next_event: usize,
    /// Appended, not yet durable: (the write, or None for a marker; its seq).
    pending: Vec<(Option<WriteOp>, u64)>,
    history: History,
    /// Highest durable seq any Ack reported: production may prune through it.
    shipped_seq: u64,
    durable_max: u64,
}

struct Receiver {
    fs: SimFs,
    journal: Journal<SimFs>,
    crash_armed: bool,
    image: MemoryImages,
    applied_seq: u64,
    checkpoint_image: MemoryImages,
    checkpoint_seq: u64,
    /// Highest seq a `sync` of the copy returned: must survive every power cut.
    synced_max: u64,
}

/// The independent observer of invariant 1.
struct ApplyChecker {
    next_expected: u64,
    log: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    ProductionWrite,
    ProductionSync,
    ProductionPrune,
    SenderConnect,
    SenderPump,
    SenderPoll,
    SenderHeartbeat,
    ReceiverPoll,
    ReceiverApply,
    ReceiverCheckpoint,
    ReceiverPrune,
    ReceiverHeartbeat,
    Idle,
    FaultReset,
    FaultCorrupt,
    FaultReplay,
    FaultProductionCrash,
    FaultReceiverCrash,
    FaultArmReceiverCrash,
}

struct Sim {
    bug: Option<Bug>,
    steps: u64,
    now: u64,
    rng: SplitMix64,
    run_id: u64,
    lv_ids: Vec<u32>,
    production: Production,
    receiver: Receiver,
    connection: Option<Connection>,
    reconnect_at: u64,
    apply: ApplyChecker,
    report: SimReport,
}

fn storage(what: &str, error: JournalError) -> Violation {
    violation(Invariant::Storage, format!("{what}: {error}"))
}

fn journal_config(seq_first_new: u64) -> JournalConfig {
    let mut config = JournalConfig::new(GroupId([0x5E; 16]), JOURNAL_CAPACITY_BYTES);
    config.segment_size_bytes = SEGMENT_SIZE_BYTES;
    config.seq_first_new = seq_first_new;
    config
}

fn sender_config() -> SenderConfig {
    SenderConfig {
        group_id: GroupId([0x5E; 16]),
        group_name: GROUP_NAME.to_owned(),
        config_version: CONFIG_VERSION,
        sender_name: "production1".to_owned(),
        target_name: SERVER_NAME.to_owned(),
        in_flight_bytes_max: IN_FLIGHT_BYTES_MAX,
    }
}

fn receiver_config() -> ReceiverConfig {
    ReceiverConfig {
        group_id: GroupId([0x5E; 16]),
        group_name: GROUP_NAME.to_owned(),
        server_name: SERVER_NAME.to_owned(),
        config_version: CONFIG_VERSION,
    }
}

impl Sim {
    fn new(options: &SimOptions) -> Step<Sim> {
        let mut rng = SplitMix64::new(options.seed);
        let run_id = rng.next_u64();
        let mut workload = WorkloadConfig::new(
            rng.next_u64(),
            LV_SIZES_BYTES.to_vec(),
            options.steps.max(1),
        );
        workload.blocks_per_write_max = 4;
        workload.flush_every_writes_mean = 8;
        let events = generate(&workload)
            .map_err(|error| violation(Invariant::Storage, format!("workload: {error}")))?;
        let history = History::new(run_id, &LV_SIZES_BYTES)
            .map_err(|error| violation(Invariant::Storage, format!("history: {error}")))?;
        let production_fs = SimFs::new();
        let production_journal =
            Journal::open(production_fs.clone(), PRODUCTION_DIR, journal_config(1))
                .map_err(|error| storage("open production journal", error))?;
        let receiver_fs = SimFs::new();
        let copy = Journal::open(receiver_fs.clone(), COPY_DIR, journal_config(1))
            .map_err(|error| storage("open journal copy", error))?;
        let image = MemoryImages::zeroed(&LV_SIZES_BYTES);
        let lv_ids = (0..LV_SIZES_BYTES.len())
            .map(|index| lv_id_for_name(&format!("lv{index}")))
            .collect();
        Ok(Sim {
            bug: options.bug,
            steps: options.steps,
            now: 0,
            rng,
            run_id,
            lv_ids,
            production: Production {
                fs: production_fs,
                journal: production_journal,
                events,
                next_event: 0,
                pending: Vec::new(),
                history,
                shipped_seq: 0,
                durable_max: 0,
            },
            receiver: Receiver {
                fs: receiver_fs,
                journal: copy,
                crash_armed: false,
                checkpoint_image: image.clone(),
                image,
                applied_seq: 0,
                checkpoint_seq: 0,
                synced_max: 0,
            },
            connection: None,
            reconnect_at: 0,
            apply: ApplyChecker {
                next_expected: 1,
                log: Vec::new(),
            },
            report: SimReport::default(),
        })
    }

    fn quiet(&self) -> bool {
        self.now >= self.steps * FAULT_PERCENT / 100
    }

    fn converged(&self) -> bool {
        self.production.pending.is_empty()
            && self.production.next_event_is_done_or_quiet()
            && self.receiver.applied_seq == self.production.journal.durable_seq()
    }

    fn run_all(&mut self) -> Step {
        let mut quiet_started = false;
        let limit = self.steps.saturating_mul(2);
        loop {
            if self.now >= self.steps && self.converged() {
                break;
            }
            if self.now >= limit {
                return Err(violation(
                    Invariant::Liveness,
                    format!(
                        "not converged {} steps after faults stopped: applied {}, receiver durable \
                         {}, production durable {} (appended {}), connected {}",
                        limit - self.steps * FAULT_PERCENT / 100,
                        self.receiver.applied_seq,
                        self.receiver.journal.durable_seq(),
                        self.production.journal.durable_seq(),
                        self.production.journal.appended_seq(),
                        self.connection.is_some()
                    ),
                ));
            }
            if self.quiet() && !quiet_started {
                quiet_started = true;
                // Disarm a pending mid-operation crash: faults are over.
                self.receiver.fs.crash_after(u64::MAX);
                self.receiver.crash_armed = false;
                self.production.next_event = self.production.events.len();
            }
            self.step()?;
            self.check()?;
            self.now += 1;
        }
        self.report.steps_run = self.now;
        self.report.production_durable_seq = self.production.journal.durable_seq();
        self.report.applied_seq = self.receiver.applied_seq;
        self.report.writes_durable = self.production.history.writes().len() as u64;
        // Final full check: the replica is production as of its final durable seq.
        let durable = self.production.journal.durable_seq();
        check_exact(&self.production.history, durable, &mut self.receiver.image).map_err(
            |error| {
                violation(
                    Invariant::Liveness,
                    format!("final replica is not production at {durable}: {error}"),
                )
            },
        )?;
        Ok(())
    }

    fn step(&mut self) -> Step {
        if let Some(connection) = self.connection.as_mut() {
            connection
                .to_receiver
                .deliver(self.now, &mut connection.receiver.endpoint);
            connection
                .to_sender
                .deliver(self.now, &mut connection.sender.endpoint);
        }
        let action = self.pick();
        self.perform(action)?;
        // The journal's durable seq also moves without `sync` (sealing a segment syncs it):
        // every write at or below it is in production's history from now on.
        let durable = self.production.journal.durable_seq();
        self.production.record_durable(durable)
    }

    fn pick(&mut self) -> Action {
        let quiet = self.quiet();
        let mut choices: Vec<(u64, Action)> = vec![(2, Action::Idle)];
        if !quiet && self.production.next_event < self.production.events.len() {
            choices.push((12, Action::ProductionWrite));
        }
        if !self.production.pending.is_empty() || !quiet {
            choices.push((6, Action::ProductionSync));
        }
        choices.push((1, Action::ProductionPrune));
        match &self.connection {
            None => {
                if self.now >= self.reconnect_at {
                    choices.push((10, Action::SenderConnect));
                }
            }
            Some(connection) => {
                if connection.sender.streaming {
                    choices.push((8, Action::SenderPump));
                    choices.push((1, Action::SenderHeartbeat));
                }
                if !connection.sender.endpoint.inbuf.is_empty() {
                    choices.push((8, Action::SenderPoll));
                }
                if !connection.receiver.endpoint.inbuf.is_empty() {
                    choices.push((8, Action::ReceiverPoll));
                }
                if connection.receiver.session.is_some() {
                    choices.push((1, Action::ReceiverHeartbeat));
                }
                if !quiet {
                    choices.push((1, Action::FaultReset));
                    if !connection.to_receiver.chunks.is_empty()
                        || !connection.to_sender.chunks.is_empty()
                    {
                        choices.push((1, Action::FaultCorrupt));
                    }
                    if !connection.to_receiver.frames.is_empty() {
                        choices.push((1, Action::FaultReplay));
                    }
                }
            }
        }
        if self.receiver.applied_seq < self.receiver.journal.durable_seq() {
            choices.push((6, Action::ReceiverApply));
        }
        choices.push((2, Action::ReceiverCheckpoint));
        choices.push((1, Action::ReceiverPrune));
        if !quiet {
            choices.push((1, Action::FaultProductionCrash));
            choices.push((1, Action::FaultReceiverCrash));
            if !self.receiver.crash_armed {
                choices.push((1, Action::FaultArmReceiverCrash));
            }
        }
        let total: u64 = choices.iter().map(|(weight, _)| weight).sum();
        let mut ticket = self.rng.below(total);
        for (weight, action) in &choices {
            if ticket < *weight {
                return *action;
            }
            ticket -= weight;
        }
        Action::Idle
    }

    fn perform(&mut self, action: Action) -> Step {
        match action {
            Action::ProductionWrite => self.production_write(),
            Action::ProductionSync => self.production_sync(),
            Action::ProductionPrune => {
                let shipped = self.production.shipped_seq;
                self.production
                    .journal
                    .prune_through(shipped)
                    .map_err(|error| storage("prune production journal", error))?;
                Ok(())
            }
            Action::SenderConnect => self.sender_connect(),
            Action::SenderPump => self.sender_pump(),
            Action::SenderPoll => self.sender_poll(),
            Action::SenderHeartbeat => self.sender_heartbeat(),
            Action::ReceiverPoll => self.receiver_poll(),
            Action::ReceiverApply => self.receiver_apply(),
            Action::ReceiverCheckpoint => {
                self.receiver_checkpoint();
                Ok(())
            }
            Action::ReceiverPrune => {
                let checkpoint = self.receiver.checkpoint_seq;
                match self.receiver.journal.prune_through(checkpoint) {
                    Ok(_) => Ok(()),
                    Err(error) => self.receiver_storage_error("prune journal copy", error),
                }
            }
            Action::ReceiverHeartbeat => self.receiver_heartbeat(),
            Action::Idle => Ok(()),
            Action::FaultReset => {
                self.reset();
                Ok(())
            }
            Action::FaultCorrupt => {
                self.fault_corrupt();
                Ok(())
            }
            Action::FaultReplay => {
                self.fault_replay();
                Ok(())
            }
            Action::FaultProductionCrash => self.production_crash(),
            Action::FaultReceiverCrash => self.receiver_crash(),
            Action::FaultArmReceiverCrash => {
                self.receiver.fs.crash_after(self.rng.below(6));
                self.receiver.crash_armed = true;
                Ok(())
            }
        }
    }

    // --- production -----------------------------------------------------------------------

    fn production_write(&mut self) -> Step {
        let Some(&event) = self.production.events.get(self.production.next_event) else {
            return Ok(());
        };
        self.production.next_event += 1;
        if self.rng.percent(8) {
            let seq = self
                .production
                .journal
                .append(&Entry::marker("sim-marker", self.now))
                .map_err(|error| storage("append marker", error))?;
            self.production.pending.push((None, seq));
        }
        match event {
            WorkloadEvent::Write(op) => {
                let payload = op.payload(self.run_id);
                let lv_id = self.lv_id(op.lv_index)?;
                let seq = self
                    .production
                    .journal
                    .append(&Entry::write(lv_id, op.offset_bytes, &payload, self.now))
                    .map_err(|error| storage("append write", error))?;
                self.production.pending.push((Some(op), seq));
                Ok(())
            }
            WorkloadEvent::Flush => self.production_sync(),
        }
    }

    fn lv_id(&self, lv_index: u32) -> Step<u32> {
        self.lv_ids
            .get(lv_index as usize)
            .copied()
            .ok_or_else(|| violation(Invariant::Storage, format!("no lv {lv_index}")))
    }

    fn production_sync(&mut self) -> Step {
        let durable = self
            .production
            .journal
            .sync()
            .map_err(|error| storage("sync production journal", error))?;
        self.production.record_durable(durable)
    }

    fn production_crash(&mut self) -> Step {
        self.report.production_crashes += 1;
        self.reset();
        let durable_before = self.production.journal.durable_seq();
        let cut_seed = self.rng.next_u64();
        self.production
            .fs
            .power_cut(PowerCut::TearUnsynced { seed: cut_seed });
        self.production.journal = Journal::open(
            self.production.fs.clone(),
            PRODUCTION_DIR,
            journal_config(1),
        )
        .map_err(|error| storage("recover production journal", error))?;
        let durable = self.production.journal.durable_seq();
        if durable < durable_before {
            return Err(violation(
                Invariant::Durability,
                format!(
                    "production durable seq went from {durable_before} to {durable} in a power cut"
                ),
            ));
        }
        // Records that survived the torn tail must be exactly the ones appended.
        if durable > durable_before {
            let reader = self
                .production
                .journal
                .read_from(durable_before + 1)
                .map_err(|error| storage("read recovered records", error))?;
            for record in reader {
                let record = record.map_err(|error| storage("read recovered record", error))?;
                self.check_recovered(&record)?;
            }
        }
        self.production.record_durable(durable)?;
        self.production.pending.clear();
        Ok(())
    }

    fn check_recovered(&self, record: &OwnedRecord) -> Step {
        let seq = record.header.seq;
        let appended = self
            .production
            .pending
            .iter()
            .find(|(_, pending_seq)| *pending_seq == seq);
        let matches = match appended {
            Some((Some(op), _)) => {
                record.header.kind == RecordKind::Write
                    && record.payload == op.payload(self.run_id)
                    && record.header.offset_bytes == op.offset_bytes
            }
            Some((None, _)) => record.header.kind == RecordKind::Marker,
            None => false,
        };
        if matches {
            Ok(())
        } else {
            Err(violation(
                Invariant::Durability,
                format!("production recovered seq {seq}, which differs from what was appended"),
            ))
        }
    }

    // --- connection and link --------------------------------------------------------------

    fn reset(&mut self) {
        if self.connection.take().is_some() {
            self.report.resets += 1;
            self.reconnect_at = self.now + 1 + self.rng.below(RECONNECT_DELAY_STEPS_MAX);
        }
    }

    fn fault_corrupt(&mut self) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let pipe = if connection.to_sender.chunks.is_empty()
            || (!connection.to_receiver.chunks.is_empty() && self.rng.percent(60))
        {
            &mut connection.to_receiver
        } else {
            &mut connection.to_sender
        };
        if pipe.chunks.is_empty() {
            return;
        }
        let index = self.rng.below(pipe.chunks.len() as u64) as usize;
        let flip = 1 + self.rng.below(255) as u8;
        if let Some(chunk) = pipe.chunks.get_mut(index) {
            let at = self.rng.below(chunk.bytes.len() as u64) as usize;
            if let Some(byte) = chunk.bytes.get_mut(at) {
                *byte ^= flip;
                pipe.faults.push(chunk.offset + at as u64);
                self.report.corruptions_injected += 1;
            }
        }
    }

    fn fault_replay(&mut self) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let pipe = &mut connection.to_receiver;
        if pipe.frames.is_empty() {
            return;
        }
        let index = self.rng.below(pipe.frames.len() as u64) as usize;
        if let Some(frame) = pipe.frames.get(index).cloned() {
            pipe.faults.push(pipe.pushed_bytes);
            pipe.push(frame, self.now, &mut self.rng, false);
            self.report.replays_injected += 1;
        }
    }

    fn send_to_receiver(&mut self, frame: &Frame) -> Step {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        connection
            .sender
            .endpoint
            .out
            .encode(frame, &mut bytes)
            .map_err(|error| violation(Invariant::Protocol, format!("encode: {error}")))?;
        connection
            .to_receiver
            .push(bytes, self.now, &mut self.rng, true);
        Ok(())
    }

    fn send_to_sender(&mut self, frame: &Frame) -> Step {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        connection
            .receiver
            .endpoint
            .out
            .encode(frame, &mut bytes)
            .map_err(|error| violation(Invariant::Protocol, format!("encode: {error}")))?;
        connection
            .to_sender
            .push(bytes, self.now, &mut self.rng, true);
        Ok(())
    }

    /// Decode the next frame arriving at one side. `Ok(None)`: nothing complete (or the
    /// connection was reset because a fault was rejected).
    fn next_frame(&mut self, at_receiver: bool) -> Step<Option<Frame>> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        let (endpoint, pipe) = if at_receiver {
            (&mut connection.receiver.endpoint, &connection.to_receiver)
        } else {
            (&mut connection.sender.endpoint, &connection.to_sender)
        };
        let side = if at_receiver { "receiver" } else { "sender" };
        match endpoint.frames.decode(&endpoint.inbuf) {
            Ok(None) => Ok(None),
            Ok(Some((frame, used))) => {
                let start = endpoint.consumed;
                let end = start + used as u64;
                if pipe.fault_in(start, end) {
                    return Err(violation(
                        Invariant::FaultRejected,
                        format!(
                            "the {side} accepted a corrupted or replayed {:?} frame (stream bytes \
                             {start}..{end})",
                            frame.frame_type()
                        ),
                    ));
                }
                endpoint.inbuf.drain(..used);
                endpoint.consumed = end;
                Ok(Some(frame))
            }
            Err(error) => {
                let start = endpoint.consumed;
                let end = start + endpoint.inbuf.len() as u64;
                if !pipe.fault_in(start, end) {
                    return Err(violation(
                        Invariant::Protocol,
                        format!("the {side} rejected a frame no fault touched: {error}"),
                    ));
                }
                self.report.faulty_frames_rejected += 1;
                self.reset();
                Ok(None)
            }
        }
    }

    // --- sender (LCA) ---------------------------------------------------------------------

    fn journal_position(&self) -> JournalPosition {
        let durable = self.production.journal.durable_seq();
        let first = self
            .production
            .journal
            .first_seq()
            .unwrap_or(durable + 1)
            .min(durable + 1);
        JournalPosition {
            first_seq: first,
            last_seq: durable,
        }
    }

    fn sender_connect(&mut self) -> Step {
        self.report.connections += 1;
        let session = SenderSession::new(sender_config());
        let hello = session
            .hello(self.journal_position())
            .map_err(|error| violation(Invariant::Protocol, format!("hello: {error}")))?;
        self.connection = Some(Connection {
            to_receiver: Pipe::default(),
            to_sender: Pipe::default(),
            sender: SenderSide {
                endpoint: Endpoint::default(),
                session,
                streaming: false,
                resumed_with_data: false,
                last_ack: None,
            },
            receiver: ReceiverSide {
                endpoint: Endpoint::default(),
                session: None,
                first_batch_seen: false,
            },
        });
        self.send_to_receiver(&Frame::Hello(hello))
    }

    /// Handle every complete frame that has arrived at the sender.
    fn sender_poll(&mut self) -> Step {
        while let Some(frame) = self.next_frame(false)? {
            self.sender_handle(frame)?;
        }
        Ok(())
    }

    fn sender_handle(&mut self, frame: Frame) -> Step {
        let position = self.journal_position();
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let sender = &mut connection.sender;
        match frame {
            Frame::Welcome(welcome) => {
                let start = sender
                    .session
                    .on_welcome(&welcome, position)
                    .map_err(|error| violation(Invariant::Protocol, format!("welcome: {error}")))?;
                let expected = welcome.resume_after_seq + 1;
                if start != Start::FromSeq(expected) {
                    return Err(violation(
                        Invariant::Resume,
                        format!(
                            "Welcome resumes after {} but the sender starts at {start:?}",
                            welcome.resume_after_seq
                        ),
                    ));
                }
                sender.endpoint.frames.set_version(welcome.version);
                sender.endpoint.out.set_version(welcome.version);
                sender.streaming = true;
                sender.resumed_with_data = welcome.resume_after_seq > 0;
                if sender.resumed_with_data {
                    self.report.resumes_with_data += 1;
                }
                Ok(())
            }
            Frame::Ack(ack) => {
                if let Some(last) = sender.last_ack {
                    if ack.durable_seq < last.durable_seq || ack.applied_seq < last.applied_seq {
                        return Err(violation(
                            Invariant::Watermarks,
                            format!(
                                "ack went backwards within a connection: {last:?} then {ack:?}"
                            ),
                        ));
                    }
                }
                sender.last_ack = Some(ack);
                let durable = sender
                    .session
                    .on_ack(&ack)
                    .map_err(|error| violation(Invariant::Protocol, format!("ack: {error}")))?;
                self.production.shipped_seq = self.production.shipped_seq.max(durable);
                Ok(())
            }
            Frame::Heartbeat(heartbeat) => {
                let durable = sender.session.on_heartbeat(&heartbeat).map_err(|error| {
                    violation(Invariant::Protocol, format!("heartbeat: {error}"))
                })?;
                self.production.shipped_seq = self.production.shipped_seq.max(durable);
                Ok(())
            }
            other => Err(violation(
                Invariant::Protocol,
                format!("the sender received an unexpected {:?}", other.frame_type()),
            )),
        }
    }

    fn sender_heartbeat(&mut self) -> Step {
        let durable_seq = self.production.journal.durable_seq();
        self.send_to_receiver(&Frame::Heartbeat(Heartbeat {
            now_ns: self.now,
            durable_seq,
        }))
    }

    fn sender_pump(&mut self) -> Step {
        let durable = self.production.journal.durable_seq();
        let skip = self.bug == Some(Bug::ResumeSkipsSeq);
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let sender = &mut connection.sender;
        // The deliberate bug: a resumed sender starts one seq late, bypassing the session.
        let buggy_first = skip && sender.resumed_with_data;
        sender.resumed_with_data = false;
        let mut next = sender.session.next_seq() + u64::from(buggy_first);
        let mut batches = Vec::new();
        while batches.len() < BATCHES_PER_PUMP_MAX && next <= durable {
            let reader = self
                .production
                .journal
                .read_from(next)
                .map_err(|error| storage("read production journal", error))?;
            let mut builder = RecordsBatchBuilder::new(BATCH_BUDGET_BYTES);
            for record in reader {
                let record = record.map_err(|error| storage("read production record", error))?;
                let pushed = builder
                    .push_owned(&record)
                    .map_err(|error| violation(Invariant::Protocol, format!("batch: {error}")))?;
                if pushed == BatchPush::Full {
                    break;
                }
            }
            if builder.is_empty() {
                break;
            }
            let level = self.rng.percent(30).then_some(1);
            let batch = builder
                .finish(level)
                .map_err(|error| violation(Invariant::Protocol, format!("batch: {error}")))?;
            next = batch.last_seq() + 1;
            batches.push(batch);
        }
        for (index, batch) in batches.into_iter().enumerate() {
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let session = &mut connection.sender.session;
            if !(buggy_first && index == 0) {
                if !session.can_send(batch.len_bytes()) {
                    break;
                }
                session.on_batch_sent(&batch).map_err(|error| {
                    violation(Invariant::Protocol, format!("batch sent: {error}"))
                })?;
            }
            self.report.batches_sent += 1;
            if batch.is_compressed() {
                self.report.compressed_batches_sent += 1;
            }
            self.send_to_receiver(&Frame::Records(batch))?;
            if buggy_first {
                break;
            }
        }
        Ok(())
    }

    // --- receiver (ABA) -------------------------------------------------------------------

    /// Handle every complete frame that has arrived at the receiver.
    fn receiver_poll(&mut self) -> Step {
        while let Some(frame) = self.next_frame(true)? {
            self.receiver_handle(frame)?;
        }
        Ok(())
    }

    fn receiver_handle(&mut self, frame: Frame) -> Step {
        match frame {
            Frame::Hello(hello) => {
                let durable = self.receiver.journal.durable_seq();
                let applied = self.receiver.applied_seq.min(durable);
                let mut session = ReceiverSession::new(receiver_config(), durable, applied, false)
                    .map_err(|error| violation(Invariant::Protocol, format!("session: {error}")))?;
                let reply = session
                    .on_hello(&hello)
                    .map_err(|error| violation(Invariant::Protocol, format!("hello: {error}")))?;
                let welcome = match reply {
                    HelloReply::Welcome(welcome) => welcome,
                    HelloReply::Refuse(refuse) => {
                        return Err(violation(
                            Invariant::Resume,
                            format!("the receiver refused the sender: {refuse}"),
                        ))
                    }
                };
                if let Some(connection) = self.connection.as_mut() {
                    connection.receiver.session = Some(session);
                }
                self.send_to_sender(&Frame::Welcome(welcome))?;
                if let Some(connection) = self.connection.as_mut() {
                    connection
                        .receiver
                        .endpoint
                        .frames
                        .set_version(welcome.version);
                    connection
                        .receiver
                        .endpoint
                        .out
                        .set_version(welcome.version);
                }
                Ok(())
            }
            Frame::Records(batch) => self.receiver_store(&batch),
            Frame::Heartbeat(_) => self.receiver_ack(),
            other => Err(violation(
                Invariant::Protocol,
                format!(
                    "the receiver received an unexpected {:?}",
                    other.frame_type()
                ),
            )),
        }
    }

    fn receiver_store(&mut self, batch: &RecordsBatch) -> Step {
        let durable = self.receiver.journal.durable_seq();
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let receiver = &mut connection.receiver;
        if !receiver.first_batch_seen {
            receiver.first_batch_seen = true;
            if batch.first_seq() != durable + 1 {
                return Err(violation(
                    Invariant::Resume,
                    format!(
                        "the first batch of a connection starts at seq {}, but the receiver holds \
                         seqs through {durable} durably (expected {})",
                        batch.first_seq(),
                        durable + 1
                    ),
                ));
            }
        }
        let Some(session) = receiver.session.as_mut() else {
            return Err(violation(
                Invariant::Protocol,
                "Records before the handshake",
            ));
        };
        session
            .on_records(batch)
            .map_err(|error| violation(Invariant::Protocol, format!("records: {error}")))?;
        for record in batch.iter() {
            if let Err(error) = self.receiver.journal.append_replicated(&record) {
                return self.receiver_storage_error("append to journal copy", error);
            }
        }
        let durable = match self.receiver.journal.sync() {
            Ok(durable) => durable,
            Err(error) => return self.receiver_storage_error("sync journal copy", error),
        };
        self.receiver.synced_max = self.receiver.synced_max.max(durable);
        if let Some(session) = self
            .connection
            .as_mut()
            .and_then(|connection| connection.receiver.session.as_mut())
        {
            session
                .on_durable(durable)
                .map_err(|error| violation(Invariant::Protocol, format!("durable: {error}")))?;
        }
        self.receiver_ack()
    }

    fn receiver_ack(&mut self) -> Step {
        let applied = self.receiver.applied_seq;
        let backlog = self.receiver.journal.durable_seq().saturating_sub(applied);
        let Some(session) = self
            .connection
            .as_mut()
            .and_then(|connection| connection.receiver.session.as_mut())
        else {
            return Ok(());
        };
        if applied > session.applied_seq() {
            session
                .on_applied(applied.min(session.durable_seq()))
                .map_err(|error| violation(Invariant::Protocol, format!("applied: {error}")))?;
        }
        let ack = session.ack(backlog);
        self.send_to_sender(&Frame::Ack(ack))
    }

    fn receiver_heartbeat(&mut self) -> Step {
        let Some(session) = self
            .connection
            .as_ref()
            .and_then(|connection| connection.receiver.session.as_ref())
        else {
            return Ok(());
        };
        let durable_seq = session.durable_seq();
        self.send_to_sender(&Frame::Heartbeat(Heartbeat {
            now_ns: self.now,
            durable_seq,
        }))
    }

    /// A journal-copy error is a crash if one was armed, otherwise a real failure.
    fn receiver_storage_error(&mut self, what: &str, error: JournalError) -> Step {
        if self.receiver.crash_armed {
            self.receiver_crash()
        } else {
            Err(storage(what, error))
        }
    }

    fn receiver_apply(&mut self) -> Step {
        let durable = self.receiver.journal.durable_seq();
        let from = self.receiver.applied_seq + 1;
        if from > durable {
            return Ok(());
        }
        let count = 1 + self.rng.below(APPLY_RECORDS_PER_STEP_MAX);
        let reader = self
            .receiver
            .journal
            .read_from(from)
            .map_err(|error| storage("read journal copy", error))?;
        let mut records = Vec::new();
        for record in reader.take(count as usize) {
            records.push(record.map_err(|error| storage("read journal copy record", error))?);
        }
        if self.bug == Some(Bug::ApplyReversed) && records.len() >= 2 {
            records.reverse();
        }
        for record in &records {
            self.apply_record(record)?;
            self.apply.log.push(record.header.seq);
            self.receiver.applied_seq = self.receiver.applied_seq.max(record.header.seq);
        }
        Ok(())
    }

    fn apply_record(&mut self, record: &OwnedRecord) -> Step {
        let header = &record.header;
        match header.kind {
            RecordKind::Write => {
                let lv_index = self
                    .lv_ids
                    .iter()
                    .position(|&id| id == header.lv_id)
                    .ok_or_else(|| {
                        violation(
                            Invariant::Storage,
                            format!("seq {} names unknown lv id {:#x}", header.seq, header.lv_id),
                        )
                    })?;
                let lv = self.receiver.image.lv_mut(lv_index as u32);
                let target = usize::try_from(header.offset_bytes)
                    .ok()
                    .and_then(|start| lv.get_mut(start..start.checked_add(record.payload.len())?))
                    .ok_or_else(|| {
                        violation(
                            Invariant::Storage,
                            format!("seq {} writes past the end of lv {lv_index}", header.seq),
                        )
                    })?;
                target.copy_from_slice(&record.payload);
                Ok(())
            }
            RecordKind::Marker => Ok(()),
            other => Err(violation(
                Invariant::Storage,
                format!("seq {} has unexpected kind {other:?}", header.seq),
            )),
        }
    }

    fn receiver_checkpoint(&mut self) {
        let mut seq = self.receiver.applied_seq;
        if self.bug == Some(Bug::CheckpointAhead) && seq < self.receiver.journal.durable_seq() {
            seq += 1;
        }
        self.receiver.checkpoint_image = self.receiver.image.clone();
        self.receiver.checkpoint_seq = seq;
    }

    fn receiver_crash(&mut self) -> Step {
        self.report.receiver_crashes += 1;
        self.reset();
        let cut_seed = self.rng.next_u64();
        self.receiver
            .fs
            .power_cut(PowerCut::TearUnsynced { seed: cut_seed });
        self.receiver.crash_armed = false;
        self.receiver.journal = Journal::open(
            self.receiver.fs.clone(),
            COPY_DIR,
            journal_config(self.receiver.checkpoint_seq + 1),
        )
        .map_err(|error| storage("recover journal copy", error))?;
        let durable = self.receiver.journal.durable_seq();
        if durable < self.receiver.synced_max {
            return Err(violation(
                Invariant::Durability,
                format!(
                    "the journal copy was synced through {} but recovered only through {durable}",
                    self.receiver.synced_max
                ),
            ));
        }
        self.receiver.image = self.receiver.checkpoint_image.clone();
        self.receiver.applied_seq = self.receiver.checkpoint_seq;
        // A new replica state: the next record applied must follow the checkpoint.
        self.apply.next_expected = self.receiver.checkpoint_seq + 1;
        self.apply.log.clear();
        Ok(())
    }

    // --- invariants -----------------------------------------------------------------------

    fn check(&mut self) -> Step {
        // 1. Apply order.
        for seq in self.apply.log.drain(..) {
            if seq != self.apply.next_expected {
                return Err(violation(
                    Invariant::ApplyOrder,
                    format!(
                        "the receiver applied seq {seq} when seq {} was next",
                        self.apply.next_expected
                    ),
                ));
            }
            self.apply.next_expected += 1;
        }
        if self.receiver.applied_seq + 1 != self.apply.next_expected {
            return Err(violation(
                Invariant::ApplyOrder,
                format!(
                    "applied_seq is {} but the records applied end at {}",
                    self.receiver.applied_seq,
                    self.apply.next_expected - 1
                ),
            ));
        }
        // 3. Watermarks.
        let applied = self.receiver.applied_seq;
        let receiver_durable = self.receiver.journal.durable_seq();
        let production_durable = self.production.journal.durable_seq();
        if !(applied <= receiver_durable && receiver_durable <= production_durable) {
            return Err(violation(
                Invariant::Watermarks,
                format!(
                    "expected applied {applied} <= receiver durable {receiver_durable} <= \
                     production durable {production_durable}"
                ),
            ));
        }
        if production_durable < self.production.durable_max {
            return Err(violation(
                Invariant::Durability,
                format!(
                    "production durable seq went back from {} to {production_durable}",
                    self.production.durable_max
                ),
            ));
        }
        self.production.durable_max = production_durable;
        if let Some(connection) = &self.connection {
            let session = &connection.sender.session;
            let sent = session.next_seq().saturating_sub(1);
            if connection.sender.streaming
                && (session.durable_seq() > sent || session.durable_seq() > receiver_durable)
            {
                return Err(violation(
                    Invariant::Watermarks,
                    format!(
                        "the sender believes seq {} durable, but sent through {sent} and the \
                         receiver holds {receiver_durable}",
                        session.durable_seq()
                    ),
                ));
            }
        }
        // 2. The replica is production as of exactly applied_seq.
        self.report.image_checks += 1;
        check_exact(&self.production.history, applied, &mut self.receiver.image).map_err(
            |error| {
                violation(
                    Invariant::ReplicaEqualsProduction,
                    format!("the replica is not production as of applied seq {applied}: {error}"),
                )
            },
        )?;
        Ok(())
    }
}

impl Production {
    fn next_event_is_done_or_quiet(&self) -> bool {
        // In the quiet phase the workload is cut short, so this is always true then.
        self.next_event >= self.events.len()
    }

    /// Records every pending write with `seq <= durable` in the history.
    fn record_durable(&mut self, durable: u64) -> Step {
        let split = self.pending.partition_point(|(_, seq)| *seq <= durable);
        for (op, seq) in self.pending.drain(..split) {
            if let Some(op) = op {
                self.history
                    .record_write(op, seq)
                    .map_err(|error| violation(Invariant::Storage, format!("history: {error}")))?;
            }
        }
        Ok(())
    }
}
