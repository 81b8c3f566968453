//! The applier: the stage after the commit thread. It writes journal-durable records to the
//! group's LVs in seq order and makes the LVs durable at checkpoints, on its own thread, so
//! the commit thread goes on appending and acknowledging while the LVs are written and synced.
//!
//! ```text
//!  commit thread ──Work::Records (durable, seq order)──▶ applier ──▶ LVs
//!        ▲                                                  │
//!        └───────────── Notice::Checkpointed(seq) ──────────┘  (state file + prune stay with
//!                                                               the commit thread)
//! ```
//!
//! Orderings this stage keeps (each asserted here or in the commit thread):
//! - only records the commit thread has made durable arrive here, and they arrive and are
//!   written in seq order (overlapping writes never share a parallel run);
//! - `applied_seq` moves only after the LV writes of every record up to it returned, and a
//!   block leaves the pending map (what reads wait on) only then;
//! - a checkpoint syncs the LVs and reports the applied seq they hold: it never passes the
//!   applier, and the commit thread records it in the state file only after that sync.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::block::BlockVolume;
use crate::engine::{op_range, Op, Shared};
use crate::pending::PendingWrites;

/// Most large non-overlapping writes applied to the LVs together.
pub const APPLY_RUN_OPS_MAX: usize = 64;
/// Most of those writes in flight at once.
pub const APPLY_THREADS_MAX: usize = 4;
/// The applier publishes its progress (and frees reads) at least every this many bytes
/// applied, and at the end of every batch.
pub const APPLIED_PUBLISH_BYTES: u64 = 4 << 20;
/// Durable records handed to the applier and not yet written to the LVs; the commit thread
/// waits beyond it (backpressure) rather than hold more payloads in memory.
pub const APPLY_BACKLOG_BYTES_MAX: u64 = 64 << 20;

/// What the commit thread asks of the applier, in order.
pub(crate) enum Work {
    /// Durable records, in seq order, continuing the previous ones exactly.
    Records {
        records: Vec<(u64, Op)>,
        durable_seq: u64,
        payload_bytes: u64,
    },
    /// Answer with the applied seq once everything handed over before is in the LVs.
    Drain(flume::Sender<u64>),
    /// Sync the LVs now and answer with the seq they hold.
    Checkpoint(flume::Sender<Result<u64, String>>),
    /// Slow file-system housekeeping off the commit thread (removing pruned segments).
    Run(Box<dyn FnOnce() -> Result<(), String> + Send>),
}

/// What the applier tells the commit thread on its own initiative.
pub(crate) enum Notice {
    /// The LVs are synced and hold every record up to this seq: record the checkpoint.
    Checkpointed(u64),
}

/// Payload bytes handed to the applier and not yet applied, with a bound the commit thread
/// waits on.
#[derive(Default)]
pub(crate) struct Backlog {
    bytes: Mutex<u64>,
    drained: Condvar,
}

/// How long the commit thread waits for backlog space before it checks that the applier is
/// still alive.
const BACKLOG_WAIT_SLICE_MS: u64 = 100;

impl Backlog {
    /// Waits until `bytes` more fit under [`APPLY_BACKLOG_BYTES_MAX`] (one oversized handoff
    /// into an empty backlog always fits), then counts them. `alive` says whether the applier
    /// can still make room; if not, the handoff fails.
    pub(crate) fn reserve(&self, bytes: u64, alive: impl Fn() -> bool) -> Result<(), ()> {
        let Ok(mut held) = self.bytes.lock() else {
            return Err(());
        };
        while *held > 0 && *held + bytes > APPLY_BACKLOG_BYTES_MAX {
            if !alive() {
                return Err(());
            }
            let Ok((next, _)) = self
                .drained
                .wait_timeout(held, Duration::from_millis(BACKLOG_WAIT_SLICE_MS))
            else {
                return Err(());
            };
            held = next;
        }
        *held += bytes;
        Ok(())
    }

    fn release(&self, bytes: u64) {
        if let Ok(mut held) = self.bytes.lock() {
            assert!(*held >= bytes, "the backlog releases only what it holds");
            *held -= bytes;
            self.drained.notify_all();
        }
    }
}

pub(crate) struct Applier {
    pub(crate) volumes: BTreeMap<u32, Arc<dyn BlockVolume>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) work: flume::Receiver<Work>,
    pub(crate) notices: flume::Sender<Notice>,
    pub(crate) backlog: Arc<Backlog>,
    /// Last seq written to the LVs.
    pub(crate) applied_seq: u64,
    /// The seq the LVs were last synced at.
    pub(crate) synced_seq: u64,
    pub(crate) bytes_since_checkpoint: u64,
    pub(crate) checkpoint_interval_bytes: u64,
    pub(crate) checkpoint_idle_ms: u64,
}

impl Applier {
    pub(crate) fn run(mut self) {
        let idle = Duration::from_millis(self.checkpoint_idle_ms);
        loop {
            match self.work.recv_timeout(idle) {
                Ok(Work::Records {
                    records,
                    durable_seq,
                    payload_bytes,
                }) => {
                    if self.shared.failure().is_some() {
                        self.backlog.release(payload_bytes);
                        continue;
                    }
                    let outcome = self.apply(records, durable_seq);
                    self.backlog.release(payload_bytes);
                    if let Err(reason) = outcome {
                        self.shared.fail(reason);
                        continue;
                    }
                    if self.bytes_since_checkpoint >= self.checkpoint_interval_bytes {
                        self.checkpoint_and_notify();
                    }
                }
                Ok(Work::Drain(reply)) => {
                    let _ = reply.send(self.applied_seq);
                }
                Ok(Work::Checkpoint(reply)) => {
                    let _ = reply.send(self.checkpoint());
                }
                Ok(Work::Run(job)) => {
                    if let Err(reason) = job() {
                        self.shared.fail(reason);
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    if self.applied_seq > self.synced_seq {
                        self.checkpoint_and_notify();
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn checkpoint_and_notify(&mut self) {
        match self.checkpoint() {
            Ok(seq) => {
                let _ = self.notices.send(Notice::Checkpointed(seq));
            }
            Err(reason) => self.shared.fail(reason),
        }
    }

    /// Syncs the LVs; returns the seq they now hold durably.
    fn checkpoint(&mut self) -> Result<u64, String> {
        if let Some(reason) = self.shared.failure() {
            return Err(reason);
        }
        for volume in self.volumes.values() {
            volume
                .sync()
                .map_err(|error| format!("sync a volume for a checkpoint: {error}"))?;
        }
        self.synced_seq = self.applied_seq;
        self.bytes_since_checkpoint = 0;
        Ok(self.applied_seq)
    }

    /// Writes `records` to the LVs in seq order.
    fn apply(&mut self, records: Vec<(u64, Op)>, durable_seq: u64) -> Result<(), String> {
        let mut queue: VecDeque<(u64, Op)> = records.into();
        let mut unpublished: Vec<(u64, Op)> = Vec::new();
        let mut unpublished_bytes = 0u64;
        while !queue.is_empty() {
            let run = take_parallel_run(&mut queue);
            let (Some((first, _)), Some((last, _))) = (run.first(), run.last()) else {
                break;
            };
            let (first, last) = (*first, *last);
            assert!(last <= durable_seq, "only durable records reach the LVs");
            assert!(
                first == self.applied_seq + 1,
                "records reach the LVs in seq order, none skipped"
            );
            if let [(seq, op)] = run.as_slice() {
                let volumes = &self.volumes;
                self.shared
                    .verify
                    .around_apply(Some(*seq), op_range(op), || apply_to_volumes(volumes, op))
                    .map_err(|error| format!("apply seq {seq} to its volume: {error}"))?;
            } else {
                self.apply_parallel_run(&run).map_err(|error| {
                    format!("apply seq {first}..={last} to the volumes: {error}")
                })?;
            }
            self.applied_seq = last;
            let run_bytes = run
                .iter()
                .map(|(_, op)| op.payload_bytes().max(1))
                .sum::<u64>();
            self.bytes_since_checkpoint += run_bytes;
            unpublished_bytes += run_bytes;
            unpublished.extend(run);
            if unpublished_bytes >= APPLIED_PUBLISH_BYTES {
                self.publish_applied(&mut unpublished);
                unpublished_bytes = 0;
            }
        }
        self.publish_applied(&mut unpublished);
        Ok(())
    }

    /// Publishes `applied_seq` and lets reads of the applied records go, once per batch (or
    /// [`APPLIED_PUBLISH_BYTES`]) rather than per record: a lock and a wake-up per 4 KiB
    /// write was a good part of this thread's time.
    fn publish_applied(&self, applied: &mut Vec<(u64, Op)>) {
        if applied.is_empty() {
            return;
        }
        self.forget_pending(applied);
        applied.clear();
        self.shared
            .watermarks
            .applied_seq
            .store(self.applied_seq, Ordering::Release);
        self.shared.watermarks.applied_changed.notify_waiters();
    }

    /// Applied records no longer make reads wait, unless a later write to the same range
    /// is still on its way.
    fn forget_pending(&self, run: &[(u64, Op)]) {
        let Ok(mut pending) = self.shared.pending.lock() else {
            return;
        };
        for (seq, op) in run {
            if let Some((lv_id, offset_bytes, length_bytes)) = op_range(op) {
                pending.remove_applied(lv_id, offset_bytes, length_bytes, *seq);
            }
        }
    }

    /// Writes a run from [`take_parallel_run`] with up to [`APPLY_THREADS_MAX`] writes in
    /// flight (direct writes wait for the disk: one at a time leaves it idle between them).
    fn apply_parallel_run(&self, run: &[(u64, Op)]) -> std::io::Result<()> {
        let ranges: Vec<(u64, Option<crate::verify::LvRange>)> =
            run.iter().map(|(seq, op)| (*seq, op_range(op))).collect();
        let threads = run.len().min(APPLY_THREADS_MAX);
        let chunk_len = run.len().div_ceil(threads);
        let volumes = &self.volumes;
        self.shared.verify.around_apply_run(&ranges, || {
            std::thread::scope(|scope| {
                let writers: Vec<_> = run
                    .chunks(chunk_len)
                    .map(|chunk| {
                        scope.spawn(move || {
                            for (_, op) in chunk {
                                apply_to_volumes(volumes, op)?;
                            }
                            Ok::<(), std::io::Error>(())
                        })
                    })
                    .collect();
                let mut outcome = Ok(());
                for writer in writers {
                    let result = writer
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("an apply thread panicked")));
                    if outcome.is_ok() {
                        outcome = result;
                    }
                }
                outcome
            })
        })
    }
}

/// Marks the range of an acknowledged, not yet applied record, so reads of it wait.
pub(crate) fn remember_pending(pending: &Mutex<PendingWrites>, seq: u64, op: &Op) {
    if let Some((lv_id, offset_bytes, length_bytes)) = op_range(op) {
        if let Ok(mut pending) = pending.lock() {
            pending.insert(lv_id, offset_bytes, length_bytes, seq);
        }
    }
}

/// The next records to apply: one, or a run of large writes that touch no byte in common
/// (at most [`APPLY_RUN_OPS_MAX`]), written with several in flight. Overlapping writes never
/// share a run, so the LVs keep the order of the journal wherever it matters.
fn take_parallel_run(queue: &mut VecDeque<(u64, Op)>) -> Vec<(u64, Op)> {
    let large = |op: &Op| matches!(op, Op::Write { data, .. } if data.len() >= redoubt_volume::HYBRID_DIRECT_WRITE_BYTES_MIN);
    let mut run: Vec<(u64, Op)> = Vec::new();
    let mut ranges: Vec<(u32, u64, u64)> = Vec::new();
    while let Some((_, op)) = queue.front() {
        if !run.is_empty() {
            let fits = large(op)
                && run.len() < APPLY_RUN_OPS_MAX
                && op_range(op).is_some_and(|(lv_id, start, length)| {
                    ranges.iter().all(|(other_lv, other_start, other_length)| {
                        *other_lv != lv_id
                            || start + length <= *other_start
                            || other_start + other_length <= start
                    })
                });
            if !fits {
                break;
            }
        }
        let Some((seq, op)) = queue.pop_front() else {
            break;
        };
        let first_is_small = run.is_empty() && !large(&op);
        if let Some(range) = op_range(&op) {
            ranges.push(range);
        }
        run.push((seq, op));
        if first_is_small {
            break;
        }
    }
    run
}

/// Writes `op` to its LV (nothing for ops that write no LV).
pub(crate) fn apply_to_volumes(
    volumes: &BTreeMap<u32, Arc<dyn BlockVolume>>,
    op: &Op,
) -> std::io::Result<()> {
    let Some((lv_id, _, _)) = op_range(op) else {
        return Ok(());
    };
    let Some(volume) = volumes.get(&lv_id) else {
        // Validated by the server before the op was submitted.
        return Ok(());
    };
    match op {
        Op::Write {
            offset_bytes, data, ..
        } => volume.write_at(data.as_slice(), *offset_bytes),
        Op::WriteZeroes {
            offset_bytes,
            length_bytes,
            ..
        } => volume.write_zeroes(*offset_bytes, u64::from(*length_bytes)),
        Op::Trim {
            offset_bytes,
            length_bytes,
            ..
        } => volume.trim(*offset_bytes, u64::from(*length_bytes)),
        Op::Flush
        | Op::Marker { .. }
        | Op::Checkpoint
        | Op::FullSync { .. }
        | Op::ResyncRegions { .. } => Ok(()),
    }
}
