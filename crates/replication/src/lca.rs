//! The send process (LCA) of one group towards one recovery server.
//!
//! ```text
//!  datatap journal dir ──read_directory(next..=durable)──▶ RecordsBatchBuilder ──▶ zstd? ──▶
//!     throttle ──Records──▶ ABA            ◀──Ack{durable_seq}── (shipped watermark, pruning)
//! ```
//!
//! Each read of the journal resumes where the previous one stopped (`ReadPosition`): a read of
//! the tail costs the new records, not the whole segment written so far (which made every
//! sync-mode write wait milliseconds on a busy segment).
//!
//! It reconnects forever with a capped backoff and always resumes after the target's durable
//! seq (never from zero, never skipping). The datatap prunes its journal only up to the lowest
//! seq every target holds durably (`Watermarks::shipped_seq`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redoubt_datatap::{JournalLocation, Watermarks};
use redoubt_journal::{read_directory, ReadPosition, StdFs};
use redoubt_wire::{
    BatchCompressor, BatchPush, Frame, Heartbeat, JournalPosition, RecordsBatch,
    RecordsBatchBuilder, SenderConfig, SenderSession, Start, IN_FLIGHT_BYTES_MAX_DEFAULT,
};
use tokio::sync::{watch, Notify};

use crate::conn::{FrameReader, FrameWriter};
use crate::error::ReplicationError;

/// Uncompressed bytes per Records frame.
pub const BATCH_BYTES_DEFAULT: u32 = 4 << 20;
/// A connection attempt gives up after this long.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 2_000;
/// First wait after a failed attempt; doubles up to the maximum.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// A Heartbeat is sent when nothing else was sent for this long.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;

#[derive(Clone, Debug)]
pub struct LcaConfig {
    pub group: String,
    pub sender_name: String,
    pub target_name: String,
    /// `host:port` of the target's ABA.
    pub target_address: String,
    pub config_version: u64,
    pub journal: JournalLocation,
    /// zstd level, or None for no compression.
    pub compression_level: Option<i32>,
    /// 0 = unlimited.
    pub throttle_bytes_per_second: u64,
    pub batch_bytes: u32,
}

/// One target as the LCA sees it.
#[derive(Debug, Default)]
pub struct TargetStatus {
    pub connected: AtomicBool,
    pub sent_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub applied_seq: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub target_backlog_bytes: AtomicU64,
    pub needs_resync: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// Woken on every Ack.
    pub acked: Notify,
    /// Batches sent and not yet applied by the target, oldest first (for lag and backlog).
    pub unapplied: Mutex<std::collections::VecDeque<SentBatch>>,
    /// Bytes per second the target applies, smoothed over time (`SPEED_SMOOTHING_MS`).
    pub applied_bytes_per_second: AtomicU64,
    /// When the last acknowledgement arrived (unix ms; 0 = never).
    pub last_ack_unix_ms: AtomicU64,
    /// When the last acknowledgement that applied bytes arrived (unix ms; 0 = never). An idle
    /// target keeps acknowledging, so the speed's staleness is judged by this one.
    pub last_applied_unix_ms: AtomicU64,
}

/// A batch on its way: what lag and backlog are computed from.
#[derive(Debug, Clone, Copy)]
pub struct SentBatch {
    pub first_seq: u64,
    pub last_seq: u64,
    /// When production acknowledged the batch's first write (unix ns).
    pub first_timestamp_ns: u64,
    pub bytes: u64,
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

impl TargetStatus {
    /// Recovery point: how old the oldest write is that the target has not applied yet, in
    /// seconds (0 when it has applied everything that was sent).
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self
            .unapplied
            .lock()
            .ok()
            .and_then(|queue| queue.front().map(|batch| batch.first_timestamp_ns));
        match oldest {
            Some(timestamp_ns) => unix_ns().saturating_sub(timestamp_ns) as f64 / 1e9,
            None => 0.0,
        }
    }

    /// Bytes sent and not yet applied by the target.
    pub fn backlog_bytes(&self) -> u64 {
        self.unapplied
            .lock()
            .map(|queue| queue.iter().map(|batch| batch.bytes).sum())
            .unwrap_or(0)
    }

    /// Applied MB/s; 0 when the target applied nothing for `SPEED_STALE_MS`, so an idle group
    /// never shows the rate of its last burst.
    pub fn speed_mb_s(&self) -> f64 {
        self.speed_mb_s_at(unix_ns() / 1_000_000)
    }

    fn speed_mb_s_at(&self, now_ms: u64) -> f64 {
        let last = self.last_applied_unix_ms.load(Ordering::Relaxed);
        if last == 0 || now_ms.saturating_sub(last) > SPEED_STALE_MS {
            return 0.0;
        }
        self.applied_bytes_per_second.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn on_applied(&self, applied_seq: u64) {
        self.on_applied_at(applied_seq, unix_ns() / 1_000_000);
    }

    fn on_applied_at(&self, applied_seq: u64, now_ms: u64) {
        let mut bytes = 0;
        if let Ok(mut queue) = self.unapplied.lock() {
            while queue
                .front()
                .is_some_and(|batch| batch.last_seq <= applied_seq)
            {
                bytes += queue.pop_front().map_or(0, |batch| batch.bytes);
            }
        }
        let previous_ms = self.last_ack_unix_ms.swap(now_ms, Ordering::Relaxed);
        if bytes > 0 {
            self.last_applied_unix_ms.store(now_ms, Ordering::Relaxed);
        }
        if previous_ms > 0 && now_ms > previous_ms {
            let elapsed_ms = now_ms - previous_ms;
            let rate = bytes.saturating_mul(1000) / elapsed_ms;
            let old = self.applied_bytes_per_second.load(Ordering::Relaxed);
            // Smoothing by time, not by acknowledgement: acks come every batch under load and
            // every ACK_INTERVAL_MS when idle, so a per-ack weight would mean different windows.
            let weight = (elapsed_ms as f64 / SPEED_SMOOTHING_MS as f64).min(1.0);
            let smoothed = old as f64 * (1.0 - weight) + rate as f64 * weight;
            self.applied_bytes_per_second
                .store(smoothed as u64, Ordering::Relaxed);
        }
    }
}

/// Without an applied byte for this long the applied speed reads 0.
pub const SPEED_STALE_MS: u64 = 2_000;
/// The applied speed averages roughly this last stretch of time.
pub const SPEED_SMOOTHING_MS: u64 = 1_000;

/// The targets of one group, for the shipped watermark: the journal may be pruned only up to
/// what every one of them holds durably.
#[derive(Debug, Default)]
pub struct Targets {
    pub statuses: Vec<Arc<TargetStatus>>,
}

impl Targets {
    fn shipped_seq(&self) -> u64 {
        self.statuses
            .iter()
            .map(|status| status.durable_seq.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

fn journal_position(
    location: &JournalLocation,
    durable_seq: u64,
) -> Result<JournalPosition, ReplicationError> {
    let names = std::fs::read_dir(&location.dir)?;
    let mut first = None;
    for entry in names {
        let name = entry?.file_name();
        if let Some((first_seq, _)) = name
            .to_str()
            .and_then(redoubt_journal::parse_segment_file_name)
        {
            first = Some(first.map_or(first_seq, |current: u64| current.min(first_seq)));
        }
    }
    let first_seq = first.unwrap_or(durable_seq + 1).min(durable_seq + 1);
    Ok(JournalPosition {
        first_seq,
        last_seq: durable_seq,
    })
}

/// Runs the LCA for one target until `shutdown` turns true.
pub async fn run(
    config: LcaConfig,
    watermarks: Arc<Watermarks>,
    status: Arc<TargetStatus>,
    targets: Arc<Targets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = tokio::select! {
            _ = shutdown.changed() => return,
            outcome = session(&config, &watermarks, &status, &targets) => outcome,
        };
        status.connected.store(false, Ordering::Release);
        let message = match outcome {
            Ok(()) => "the target closed the connection".to_string(),
            Err(error) => error.to_string(),
        };
        if let Ok(mut last_error) = status.last_error.lock() {
            *last_error = Some(message.clone());
        }
        tracing::info!(group = %config.group, target = %config.target_name, %message, "replication interrupted; reconnecting");
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
        if status.connected.load(Ordering::Acquire) {
            backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        }
    }
}

async fn session(
    config: &LcaConfig,
    watermarks: &Arc<Watermarks>,
    status: &Arc<TargetStatus>,
    targets: &Arc<Targets>,
) -> Result<(), ReplicationError> {
    // Mutual TLS when this process holds an identity for the sender (`redoubt-tls`).
    let stream = crate::conn::connect(
        &config.target_address,
        &config.sender_name,
        &config.target_name,
        CONNECT_TIMEOUT_MS,
    )
    .await?;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(write_half);
    let mut sender = SenderSession::new(SenderConfig {
        group_id: config.journal.group_id,
        group_name: config.group.clone(),
        config_version: config.config_version,
        sender_name: config.sender_name.clone(),
        target_name: config.target_name.clone(),
        in_flight_bytes_max: IN_FLIGHT_BYTES_MAX_DEFAULT,
    });
    let durable_seq = watermarks.durable_seq.load(Ordering::Acquire);
    let position = journal_position(&config.journal, durable_seq)?;
    writer.send(&Frame::Hello(sender.hello(position)?)).await?;
    let welcome = match reader.receive().await? {
        Frame::Welcome(welcome) => welcome,
        Frame::Refuse(refuse) => {
            if refuse.code.needs_resync() {
                status.needs_resync.store(true, Ordering::Release);
            }
            return Err(ReplicationError::Refused {
                target: config.target_name.clone(),
                message: format!("{:?}: {}", refuse.code, refuse.message),
            });
        }
        _ => {
            return Err(ReplicationError::Unexpected(
                "frame other than Welcome or Refuse",
            ))
        }
    };
    let next_seq = match sender.on_welcome(&welcome, position)? {
        Start::FromSeq(seq) => seq,
        Start::FullResync => {
            status.needs_resync.store(true, Ordering::Release);
            return Err(ReplicationError::Refused {
                target: config.target_name.clone(),
                message: "the target needs a full resync".into(),
            });
        }
    };
    reader.set_version(welcome.version);
    writer.set_version(welcome.version);
    status.connected.store(true, Ordering::Release);
    status
        .durable_seq
        .store(welcome.resume_after_seq, Ordering::Release);
    status
        .sent_seq
        .store(welcome.resume_after_seq, Ordering::Release);
    watermarks
        .shipped_seq
        .store(targets.shipped_seq(), Ordering::Release);
    if let Ok(mut last_error) = status.last_error.lock() {
        *last_error = None;
    }
    let sender = Arc::new(Mutex::new(sender));
    let acks = receive_acks(
        reader,
        sender.clone(),
        status.clone(),
        targets.clone(),
        watermarks.clone(),
    );
    let sends = send_records(config, watermarks, status, &sender, &mut writer, next_seq);
    tokio::select! {
        result = acks => result,
        result = sends => result,
    }
}

async fn receive_acks(
    mut reader: FrameReader<crate::conn::StreamReadHalf>,
    sender: Arc<Mutex<SenderSession>>,
    status: Arc<TargetStatus>,
    targets: Arc<Targets>,
    watermarks: Arc<Watermarks>,
) -> Result<(), ReplicationError> {
    loop {
        match reader.receive().await? {
            Frame::Ack(ack) => {
                {
                    let mut sender = sender
                        .lock()
                        .map_err(|_| ReplicationError::Config("sender lock poisoned".into()))?;
                    sender.on_ack(&ack)?;
                }
                status.durable_seq.store(ack.durable_seq, Ordering::Release);
                status.applied_seq.store(ack.applied_seq, Ordering::Release);
                status
                    .target_backlog_bytes
                    .store(ack.backlog_bytes, Ordering::Relaxed);
                status.on_applied(ack.applied_seq);
                watermarks
                    .shipped_seq
                    .store(targets.shipped_seq(), Ordering::Release);
                watermarks.shipped_changed.notify_waiters();
                status.acked.notify_waiters();
            }
            Frame::Heartbeat(_) => {}
            Frame::Goodbye(goodbye) => {
                return Err(ReplicationError::Refused {
                    target: "target".into(),
                    message: format!("goodbye: {:?} {}", goodbye.reason, goodbye.message),
                })
            }
            _ => {
                return Err(ReplicationError::Unexpected(
                    "handshake frame after the handshake",
                ))
            }
        }
    }
}

/// A token bucket over bytes per second; `0` means unlimited.
struct Throttle {
    bytes_per_second: u64,
    window_start: Instant,
    window_bytes: u64,
}

impl Throttle {
    async fn take(&mut self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        self.window_bytes += bytes;
        let allowed =
            Duration::from_secs_f64(self.window_bytes as f64 / self.bytes_per_second as f64);
        let elapsed = self.window_start.elapsed();
        if allowed > elapsed {
            tokio::time::sleep(allowed - elapsed).await;
        }
        if elapsed > Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
    }
}

async fn send_records(
    config: &LcaConfig,
    watermarks: &Arc<Watermarks>,
    status: &Arc<TargetStatus>,
    sender: &Arc<Mutex<SenderSession>>,
    writer: &mut FrameWriter<crate::conn::StreamWriteHalf>,
    mut next_seq: u64,
) -> Result<(), ReplicationError> {
    let mut throttle = Throttle {
        bytes_per_second: config.throttle_bytes_per_second,
        window_start: Instant::now(),
        window_bytes: 0,
    };
    // Where the last read stopped: the next one starts there, not at the segment's start.
    let mut position: Option<ReadPosition> = None;
    let mut compressor = config
        .compression_level
        .map(BatchCompressor::new)
        .transpose()?;
    loop {
        let durable_changed = watermarks.durable_changed.notified();
        tokio::pin!(durable_changed);
        durable_changed.as_mut().enable();
        let durable_seq = watermarks.durable_seq.load(Ordering::Acquire);
        if next_seq > durable_seq {
            let heartbeat = tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
            tokio::select! {
                _ = durable_changed => {}
                _ = heartbeat => {
                    writer
                        .send(&Frame::Heartbeat(Heartbeat { now_ns: 0, durable_seq }))
                        .await?;
                }
            }
            continue;
        }
        let location = config.journal.clone();
        let resume = position.take();
        let mut batch_compressor = compressor.take();
        // Reading and compressing are CPU and disk work: off the runtime, so the connections'
        // tasks and the acknowledgements that sync-mode writes wait for are never held up.
        let (read, batch_compressor) = tokio::task::spawn_blocking(move || {
            let read = read_batches(
                &location,
                next_seq,
                durable_seq,
                config_batch_bytes(),
                resume,
                batch_compressor.as_mut(),
            );
            (read, batch_compressor)
        })
        .await
        .map_err(|error| ReplicationError::Config(error.to_string()))?;
        compressor = batch_compressor;
        let (batches, after) = read?;
        position = after;
        for batch in batches {
            let bytes = batch.len_bytes();
            loop {
                let acked = status.acked.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                let can_send = sender
                    .lock()
                    .map_err(|_| ReplicationError::Config("sender lock poisoned".into()))?
                    .can_send(bytes);
                if can_send {
                    break;
                }
                acked.await;
            }
            throttle.take(bytes).await;
            // Framed as it is, not copied: a batch is up to 4 MiB.
            let frame = Frame::Records(batch);
            writer.send(&frame).await?;
            let Frame::Records(batch) = frame else {
                return Err(ReplicationError::Unexpected("a Records frame changed kind"));
            };
            sender
                .lock()
                .map_err(|_| ReplicationError::Config("sender lock poisoned".into()))?
                .on_batch_sent(&batch)?;
            next_seq = batch.last_seq() + 1;
            if let Ok(mut queue) = status.unapplied.lock() {
                queue.push_back(SentBatch {
                    first_seq: batch.first_seq(),
                    last_seq: batch.last_seq(),
                    first_timestamp_ns: batch
                        .iter()
                        .next()
                        .map_or(0, |record| record.header.timestamp_ns),
                    bytes,
                });
            }
            status.sent_seq.store(batch.last_seq(), Ordering::Release);
            status.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

fn config_batch_bytes() -> u32 {
    BATCH_BYTES_DEFAULT
}

/// Reads `from..=to` from the journal directory into batches of at most `batch_bytes`,
/// starting at `resume` (where the previous read stopped) when it fits; returns the batches
/// and where this read stopped. A position that turns out stale (the record there is not the
/// one it names) costs one read from the segment's start, never a wrong record.
fn read_batches(
    location: &JournalLocation,
    from: u64,
    to: u64,
    batch_bytes: u32,
    resume: Option<ReadPosition>,
    mut compressor: Option<&mut BatchCompressor>,
) -> Result<(Vec<RecordsBatch>, Option<ReadPosition>), ReplicationError> {
    let (builders, after) = match read_batches_at(location, from, to, batch_bytes, resume) {
        Err(error) if resume.is_some() => {
            tracing::debug!(%error, "read from the last position failed: reading from the segment's start");
            read_batches_at(location, from, to, batch_bytes, None)?
        }
        result => result?,
    };
    let batches = builders
        .into_iter()
        .map(|builder| builder.finish_with(compressor.as_deref_mut()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((batches, after))
}

fn read_batches_at(
    location: &JournalLocation,
    from: u64,
    to: u64,
    batch_bytes: u32,
    resume: Option<ReadPosition>,
) -> Result<(Vec<RecordsBatchBuilder>, Option<ReadPosition>), ReplicationError> {
    let mut reader = read_directory(StdFs, &location.dir, location.group_id, from, to)?;
    if let Some(resume) = resume {
        reader = reader.resume_at(resume);
    }
    let mut batches = Vec::new();
    let mut builder = RecordsBatchBuilder::new(batch_bytes);
    // Bound the memory one read holds: a few batches, the rest on the next pass.
    let batches_per_read_max = 8;
    loop {
        let before = reader.position();
        let Some(record) = reader.next() else {
            break;
        };
        let record = record?;
        if builder.push_owned(&record)? == BatchPush::Full {
            batches.push(std::mem::replace(
                &mut builder,
                RecordsBatchBuilder::new(batch_bytes),
            ));
            if batches.len() >= batches_per_read_max {
                // This record goes in the next read, which starts at it.
                return Ok((batches, before));
            }
            if builder.push_owned(&record)? != BatchPush::Added {
                return Err(ReplicationError::Config(format!(
                    "record {} does not fit an empty batch",
                    record.header.seq
                )));
            }
        }
    }
    if !builder.is_empty() {
        batches.push(builder);
    }
    Ok((batches, reader.position()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_backlog_and_speed_follow_the_acknowledgements() {
        let status = TargetStatus::default();
        assert_eq!(status.lag_seconds(), 0.0);
        assert_eq!(status.backlog_bytes(), 0);
        let an_hour_ago = unix_ns() - 3600 * 1_000_000_000;
        {
            let mut queue = status.unapplied.lock().unwrap();
            queue.push_back(SentBatch {
                first_seq: 1,
                last_seq: 10,
                first_timestamp_ns: an_hour_ago,
                bytes: 1000,
            });
            queue.push_back(SentBatch {
                first_seq: 11,
                last_seq: 20,
                first_timestamp_ns: unix_ns(),
                bytes: 500,
            });
        }
        assert_eq!(status.backlog_bytes(), 1500);
        assert!(
            status.lag_seconds() >= 3599.0,
            "the oldest unapplied write is an hour old"
        );
        status.on_applied(10);
        assert_eq!(status.backlog_bytes(), 500);
        assert!(status.lag_seconds() < 60.0);
        status.on_applied(20);
        assert_eq!(status.backlog_bytes(), 0);
        assert_eq!(status.lag_seconds(), 0.0, "caught up: no lag");
        assert!(status.last_ack_unix_ms.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn idle_acknowledgements_do_not_keep_a_burst_rate_alive() {
        let status = TargetStatus::default();
        let batch = |first_seq, last_seq| SentBatch {
            first_seq,
            last_seq,
            first_timestamp_ns: unix_ns(),
            bytes: 100_000_000,
        };
        let start_ms = 1_000_000;
        status.on_applied_at(0, start_ms);
        status.unapplied.lock().unwrap().push_back(batch(1, 10));
        status.on_applied_at(10, start_ms + 1_000);
        let burst = status.speed_mb_s_at(start_ms + 1_000);
        assert!((99.0..=101.0).contains(&burst), "100 MB in 1 s: {burst}");
        // Idle: the target acknowledges every ACK_INTERVAL_MS, applying nothing.
        let mut now_ms = start_ms + 1_000;
        while now_ms < start_ms + 1_000 + SPEED_STALE_MS {
            now_ms += crate::aba::ACK_INTERVAL_MS;
            status.on_applied_at(10, now_ms);
        }
        now_ms += crate::aba::ACK_INTERVAL_MS;
        status.on_applied_at(10, now_ms);
        assert_eq!(status.speed_mb_s_at(now_ms), 0.0, "idle reads 0");
        assert!(status.last_ack_unix_ms.load(Ordering::Relaxed) == now_ms);
    }
}
