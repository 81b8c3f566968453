//! Snapshots of a replica at a point: read-only or writable views of every LV of a group as
//! production was at one seq, while apply goes on (`docs/snapshots.md`).
//!
//! ```text
//!  create(P): undo records P+1..=A0 ──first pre-image of each byte──▶ pre-image log + map
//!  apply thread, every later run ──ApplyObserver, gaps only──────────▶ pre-image log + map
//!                                  (synced before the replica is written)
//!  read(b) = overlay(b) if writable and written, else pre-image(b) if mapped, else replica(b)
//! ```
//!
//! **Why it is exact.** A byte's value at P is the pre-image of the first write after P that
//! touched it, or, when nothing after P touched it, the replica's current value. The map only
//! ever fills gaps, so each byte keeps the oldest pre-image it got. At creation the undo
//! journal provides the pre-images of the writes P+1..=A0 (A0: the last seq the observer had
//! seen when the snapshot joined it); from then on the observer copies, before each run is
//! applied, the replica's bytes the run overwrites that the map does not cover yet. A reader
//! holds the view's read lock across its map lookup and its replica read, and the observer
//! holds the write lock while it fills the map, before the apply writes the replica, so a
//! read never sees a byte overwritten after it looked the byte up.
//!
//! **Independence.** After creation a snapshot needs nothing from the undo journal: pruning,
//! retention and rollback do not affect it. Its data lives in the group's snapshot container
//! (`<data_dir>/groups/<group>/snapshot/.views/<name>/`), bounded by the container's
//! capacity: when a pre-image does not fit, the snapshot is marked invalid (reads fail with
//! EIO, `list` says why) and apply continues; a write to a writable snapshot that does not fit
//! fails with ENOSPC.
//!
//! Anything else that writes a replica LV must call the observer first too: a rollback hands
//! it the undo records it is about to write back (`ApplyObserver::before_apply`), so a
//! snapshot keeps its point whatever the replica does.
//!
//! **The pre-resync snapshot.** While a super transaction runs (`crate::resync`) the replica
//! is a mix of two points in time. When its `resync:begin` marker at seq B is applied and the
//! replica equalled production as of B-1, the set creates the read-only snapshot
//! [`PRE_RESYNC_SNAPSHOT_NAME`] at B-1 on the apply thread (the undo records from B on are
//! durable and still there), and deletes it when `resync:end` is applied: there is always a
//! usable image of the group on the server. It costs what any snapshot costs (a pre-image of
//! every region the resync rewrites, in the snapshot container); when the container cannot
//! hold them the snapshot turns invalid, the resync goes on, and `pre_resync_note` says so.

mod extents;
mod files;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use redoubt_journal::{OwnedRecord, RecordKind, StdFs};
use redoubt_points::{Marker, Point, Window};
use redoubt_volume::Volume;
use serde::{Deserialize, Serialize};

use crate::aba::{Aba, ApplyObserver, UNDO_BARRIER_MARKER};
pub use extents::{ExtentMap, Piece};
use files::{Overlay, PreimageLog, ENTRY_DATA_BYTES_MAX, OVERLAY_BLOCK_BYTES};

/// The snapshot a resync target keeps of its state before a super transaction; users cannot
/// create a snapshot of this name (they may delete it, to free its container space).
pub const PRE_RESYNC_SNAPSHOT_NAME: &str = "pre-resync";

/// Snapshots one group may have at once.
pub const SNAPSHOTS_PER_GROUP_MAX: usize = 64;
/// Bytes zeroed per step of a WRITE_ZEROES or TRIM on a writable snapshot.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;
/// Directory of the snapshots inside the snapshot container (a dot: no LV name collides).
pub const VIEWS_DIR_NAME: &str = ".views";
const META_FILE_NAME: &str = "snapshot.json";
const PREIMAGES_FILE_NAME: &str = "preimages.log";

const LINUX_ENOSPC: i32 = 28;
const LINUX_EPERM: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid snapshot name {0:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("a snapshot named {0:?} already exists in this group")]
    Exists(String),
    #[error("no snapshot named {0:?} in this group")]
    NotFound(String),
    #[error("{0}")]
    Point(String),
    #[error("the group already has {SNAPSHOTS_PER_GROUP_MAX} snapshots; delete one first")]
    TooMany,
    #[error("the snapshot container is full: {needed_bytes} more bytes needed, {used_bytes} of {capacity_bytes} bytes used")]
    ContainerFull {
        needed_bytes: u64,
        used_bytes: u64,
        capacity_bytes: u64,
    },
    #[error("snapshot {name} is no longer usable: {reason}")]
    Invalid { name: String, reason: String },
    #[error("snapshot {0} is read-only")]
    ReadOnly(String),
    #[error("bytes {offset_bytes}..{end_bytes} are outside LV {volume} ({size_bytes} bytes)")]
    OutOfRange {
        volume: String,
        offset_bytes: u64,
        end_bytes: u64,
        size_bytes: u64,
    },
    #[error("no LV with id {0:#010x} in this snapshot")]
    NoSuchVolume(u32),
    #[error("the replica is not attached yet")]
    NotAttached,
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{action}: {source}")]
    Journal {
        action: &'static str,
        #[source]
        source: redoubt_journal::JournalError,
    },
    #[error("{action}: {reason}")]
    State {
        action: &'static str,
        reason: String,
    },
}

impl SnapshotError {
    fn io(action: &'static str) -> impl FnOnce(io::Error) -> SnapshotError {
        move |source| SnapshotError::Io { action, source }
    }

    /// The error as an `io::Error` with the errno an NBD client should see (NBD carries
    /// only the errno: the message is logged here).
    pub fn to_io_error(&self) -> io::Error {
        tracing::warn!(error = %self, "snapshot request failed");
        match self {
            SnapshotError::ContainerFull { .. } => io::Error::from_raw_os_error(LINUX_ENOSPC),
            SnapshotError::ReadOnly(_) => io::Error::from_raw_os_error(LINUX_EPERM),
            SnapshotError::OutOfRange { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, self.to_string())
            }
            _ => io::Error::other(self.to_string()),
        }
    }
}

/// The name rule of the configuration (`[a-z0-9][a-z0-9._-]{0,62}`).
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// One LV of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotVolume {
    pub name: String,
    pub lv_id: u32,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    point_seq: u64,
    point_time_unix_ns: Option<u64>,
    writable: bool,
    created_unix_ms: u64,
    volumes: Vec<SnapshotVolume>,
    /// False until the pre-images of P+1..=A0 are all in the log.
    ready: bool,
    invalid: Option<String>,
}

fn save_meta(dir: &Path, meta: &Meta) -> Result<(), SnapshotError> {
    let text = serde_json::to_vec_pretty(meta).map_err(|error| SnapshotError::State {
        action: "encode snapshot metadata",
        reason: error.to_string(),
    })?;
    redoubt_durable::replace(&dir.join(META_FILE_NAME), &text)
        .map_err(SnapshotError::io("write snapshot metadata"))
}

fn load_meta(dir: &Path) -> Result<Meta, SnapshotError> {
    let bytes = std::fs::read(dir.join(META_FILE_NAME))
        .map_err(SnapshotError::io("read snapshot metadata"))?;
    serde_json::from_slice(&bytes).map_err(|error| SnapshotError::State {
        action: "parse snapshot metadata",
        reason: format!("{}: {error}", dir.display()),
    })
}

/// Bytes the snapshots of one group take in the snapshot container, against its capacity.
#[derive(Debug)]
pub struct Usage {
    used_bytes: AtomicU64,
    capacity_bytes: u64,
}

impl Usage {
    fn reserve(&self, bytes: u64) -> Result<(), SnapshotError> {
        let mut used = self.used_bytes.load(Ordering::Acquire);
        loop {
            if used.saturating_add(bytes) > self.capacity_bytes {
                return Err(SnapshotError::ContainerFull {
                    needed_bytes: bytes,
                    used_bytes: used,
                    capacity_bytes: self.capacity_bytes,
                });
            }
            match self.used_bytes.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// The pre-image side of a snapshot: the log and, per LV, what of it the log covers.
struct View {
    log: PreimageLog,
    maps: BTreeMap<u32, ExtentMap>,
    invalid: Option<String>,
}

type Replica = Arc<OnceLock<BTreeMap<u32, Arc<Volume>>>>;

/// One snapshot: read it (and write it, when writable) per LV.
pub struct Snapshot {
    name: String,
    dir: PathBuf,
    point_seq: u64,
    point_time_unix_ns: Option<u64>,
    writable: bool,
    created_unix_ms: u64,
    volumes: Vec<SnapshotVolume>,
    view: RwLock<View>,
    overlay: Option<Mutex<Overlay>>,
    usage: Arc<Usage>,
    replica: Replica,
    /// Set when the pre-images of P+1..=A0 are in (creation done).
    ready: std::sync::atomic::AtomicBool,
    /// Set by delete: a client still connected gets errors, never stale data.
    deleted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Snapshot")
            .field("name", &self.name)
            .field("point_seq", &self.point_seq)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn point_seq(&self) -> u64 {
        self.point_seq
    }

    pub fn point_time_unix_ns(&self) -> Option<u64> {
        self.point_time_unix_ns
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    pub fn created_unix_ms(&self) -> u64 {
        self.created_unix_ms
    }

    pub fn volumes(&self) -> &[SnapshotVolume] {
        &self.volumes
    }

    pub fn volume(&self, lv_id: u32) -> Option<&SnapshotVolume> {
        self.volumes.iter().find(|volume| volume.lv_id == lv_id)
    }

    /// Why the snapshot cannot be used any more (its container ran full, a disk error).
    pub fn invalid(&self) -> Option<String> {
        self.read_view().invalid.clone()
    }

    /// Bytes this snapshot takes in the snapshot container (pre-images and overlay).
    pub fn usage_bytes(&self) -> u64 {
        let preimages = self.read_view().log.size_bytes();
        let overlay = self
            .overlay
            .as_ref()
            .map_or(0, |overlay| lock(overlay).size_bytes());
        preimages + overlay
    }

    /// Bytes of the LVs this snapshot keeps pre-images of.
    pub fn preserved_bytes(&self) -> u64 {
        self.read_view()
            .maps
            .values()
            .map(ExtentMap::covered_bytes)
            .sum()
    }

    fn read_view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_range(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<(), SnapshotError> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(SnapshotError::NotFound(self.name.clone()));
        }
        let volume = self
            .volume(lv_id)
            .ok_or(SnapshotError::NoSuchVolume(lv_id))?;
        let end = offset_bytes.checked_add(length_bytes);
        match end {
            Some(end) if end <= volume.size_bytes => Ok(()),
            _ => Err(SnapshotError::OutOfRange {
                volume: volume.name.clone(),
                offset_bytes,
                end_bytes: offset_bytes.saturating_add(length_bytes),
                size_bytes: volume.size_bytes,
            }),
        }
    }

    /// Reads the view as of the point (pre-images, else the replica), without the overlay.
    fn read_view_at(
        &self,
        lv_id: u32,
        buffer: &mut [u8],
        offset_bytes: u64,
    ) -> Result<(), SnapshotError> {
        let replica = self.replica.get().ok_or(SnapshotError::NotAttached)?;
        let volume = replica
            .get(&lv_id)
            .ok_or(SnapshotError::NoSuchVolume(lv_id))?;
        let view = self.read_view();
        if let Some(reason) = &view.invalid {
            return Err(SnapshotError::Invalid {
                name: self.name.clone(),
                reason: reason.clone(),
            });
        }
        let end = offset_bytes + buffer.len() as u64;
        let pieces = match view.maps.get(&lv_id) {
            Some(map) => map.lookup(offset_bytes, end),
            None => vec![Piece {
                start: offset_bytes,
                end,
                file_offset: None,
            }],
        };
        for piece in pieces {
            let part = &mut buffer
                [(piece.start - offset_bytes) as usize..(piece.end - offset_bytes) as usize];
            match piece.file_offset {
                Some(file_offset) => view
                    .log
                    .read_at(part, file_offset)
                    .map_err(SnapshotError::io("read a pre-image"))?,
                None => volume
                    .read_at(part, piece.start)
                    .map_err(|error| SnapshotError::Io {
                        action: "read the replica",
                        source: io::Error::other(error.to_string()),
                    })?,
            }
        }
        Ok(())
    }

    /// Reads LV `lv_id` of the snapshot: production as of the point, with a writable
    /// snapshot's own writes on top.
    pub fn read_at(
        &self,
        lv_id: u32,
        buffer: &mut [u8],
        offset_bytes: u64,
    ) -> Result<(), SnapshotError> {
        self.check_range(lv_id, offset_bytes, buffer.len() as u64)?;
        self.read_view_at(lv_id, buffer, offset_bytes)?;
        let Some(overlay) = &self.overlay else {
            return Ok(());
        };
        let overlay = lock(overlay);
        let end = offset_bytes + buffer.len() as u64;
        let mut position = offset_bytes;
        while position < end {
            let block = position / OVERLAY_BLOCK_BYTES;
            let block_end = ((block + 1) * OVERLAY_BLOCK_BYTES).min(end);
            if let Some(slot) = overlay.slot(lv_id, block) {
                let part = &mut buffer
                    [(position - offset_bytes) as usize..(block_end - offset_bytes) as usize];
                overlay
                    .read_slot(part, slot, position % OVERLAY_BLOCK_BYTES)
                    .map_err(SnapshotError::io("read the overlay"))?;
            }
            position = block_end;
        }
        Ok(())
    }

    /// Writes to a writable snapshot (copy-on-write into its overlay; the replica is never
    /// written). Durable after [`Snapshot::flush`].
    pub fn write_at(
        &self,
        lv_id: u32,
        data: &[u8],
        offset_bytes: u64,
    ) -> Result<(), SnapshotError> {
        let Some(overlay) = &self.overlay else {
            return Err(SnapshotError::ReadOnly(self.name.clone()));
        };
        self.check_range(lv_id, offset_bytes, data.len() as u64)?;
        if let Some(reason) = self.invalid() {
            return Err(SnapshotError::Invalid {
                name: self.name.clone(),
                reason,
            });
        }
        let mut overlay = lock(overlay);
        let end = offset_bytes + data.len() as u64;
        let mut position = offset_bytes;
        let mut block_data = vec![0u8; OVERLAY_BLOCK_BYTES as usize];
        while position < end {
            let block = position / OVERLAY_BLOCK_BYTES;
            let block_start = block * OVERLAY_BLOCK_BYTES;
            let block_end = (block_start + OVERLAY_BLOCK_BYTES).min(end);
            let part =
                &data[(position - offset_bytes) as usize..(block_end - offset_bytes) as usize];
            let in_block = position - block_start;
            match overlay.slot(lv_id, block) {
                Some(slot) => overlay
                    .write_slot(part, slot, in_block)
                    .map_err(SnapshotError::io("write the overlay"))?,
                None => {
                    self.usage.reserve(Overlay::block_cost_bytes())?;
                    if part.len() as u64 != OVERLAY_BLOCK_BYTES {
                        // The LV's size is a multiple of 4096 (volume store rule), so the
                        // whole block exists.
                        self.read_view_at(lv_id, &mut block_data, block_start)?;
                    }
                    block_data[in_block as usize..in_block as usize + part.len()]
                        .copy_from_slice(part);
                    if let Err(error) = overlay.add_block(lv_id, block, &block_data) {
                        self.usage.release(Overlay::block_cost_bytes());
                        return Err(SnapshotError::Io {
                            action: "write the overlay",
                            source: error,
                        });
                    }
                }
            }
            position = block_end;
        }
        Ok(())
    }

    /// Zeroes a range of a writable snapshot.
    pub fn write_zeroes(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<(), SnapshotError> {
        self.check_range(lv_id, offset_bytes, length_bytes)?;
        let zeroes = vec![0u8; ZERO_CHUNK_BYTES.min(length_bytes) as usize];
        let end = offset_bytes + length_bytes;
        let mut position = offset_bytes;
        while position < end {
            let step = (end - position).min(ZERO_CHUNK_BYTES);
            self.write_at(lv_id, &zeroes[..step as usize], position)?;
            position += step;
        }
        Ok(())
    }

    /// Makes the writes to a writable snapshot durable.
    pub fn flush(&self) -> Result<(), SnapshotError> {
        if let Some(overlay) = &self.overlay {
            lock(overlay)
                .sync()
                .map_err(SnapshotError::io("sync the overlay"))?;
        }
        Ok(())
    }

    fn invalidate(&self, view: &mut View, reason: String) {
        tracing::error!(snapshot = %self.name, %reason, "snapshot invalidated; apply continues");
        view.invalid = Some(reason.clone());
        if let Ok(mut meta) = load_meta(&self.dir) {
            meta.invalid = Some(reason);
            let _ = save_meta(&self.dir, &meta);
        }
    }

    /// Copies into the pre-image log what of `run`'s ranges the map does not cover yet,
    /// from the replica (which still holds it), synced before it returns. Undo records count
    /// as writes of their range: a rollback passes the undo records it is about to put back.
    fn capture(&self, run: &[OwnedRecord], replica: &BTreeMap<u32, Arc<Volume>>) {
        let mut view = self.write_view();
        if view.invalid.is_some() {
            return;
        }
        let mut appended = false;
        let mut buffer = Vec::new();
        for record in run {
            let header = &record.header;
            if !matches!(
                header.kind,
                RecordKind::Write | RecordKind::WriteZeroes | RecordKind::Trim | RecordKind::Undo
            ) {
                continue;
            }
            let (Some(volume), Some(size)) = (
                replica.get(&header.lv_id),
                self.volume(header.lv_id).map(|v| v.size_bytes),
            ) else {
                continue;
            };
            let start = header.offset_bytes.min(size);
            let end = (header.offset_bytes + u64::from(header.length_bytes)).min(size);
            let gaps = view.maps.entry(header.lv_id).or_default().gaps(start, end);
            for (gap_start, gap_end) in gaps {
                let mut position = gap_start;
                while position < gap_end {
                    let step = (gap_end - position).min(ENTRY_DATA_BYTES_MAX);
                    buffer.resize(step as usize, 0);
                    let outcome = self
                        .usage
                        .reserve(PreimageLog::entry_bytes(step))
                        .and_then(|()| {
                            volume.read_at(&mut buffer, position).map_err(|error| {
                                SnapshotError::Io {
                                    action: "read the replica before apply",
                                    source: io::Error::other(error.to_string()),
                                }
                            })
                        })
                        .and_then(|()| {
                            view.log
                                .append(header.lv_id, position, header.seq, &buffer)
                                .map_err(SnapshotError::io("append a pre-image"))
                        });
                    match outcome {
                        Ok(data_offset) => {
                            view.maps.entry(header.lv_id).or_default().insert_gap(
                                position,
                                position + step,
                                data_offset,
                            );
                            appended = true;
                        }
                        Err(error) => {
                            self.invalidate(
                                &mut view,
                                format!("keep the pre-image of seq {}: {error}", header.seq),
                            );
                            return;
                        }
                    }
                    position += step;
                }
            }
        }
        if appended {
            if let Err(error) = view.log.sync() {
                self.invalidate(&mut view, format!("sync the pre-image log: {error}"));
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

struct Registry {
    snapshots: BTreeMap<String, Arc<Snapshot>>,
    /// The last seq of the last run the observer saw: a snapshot joining now gets every
    /// later run.
    observed_seq: u64,
}

/// What a replica offers to snapshot: `first_seq..=last_seq`, with markers and record times
/// to resolve points.
#[derive(Clone, Debug, Default)]
pub struct SnapshotWindow {
    pub first_seq: u64,
    pub last_seq: u64,
    pub markers: Vec<Marker>,
    pub times: Vec<(u64, u64)>,
}

/// The snapshots of one group on a recovery server.
pub struct SnapshotSet {
    group: String,
    views_dir: PathBuf,
    usage: Arc<Usage>,
    replica: Replica,
    /// Weak: the ABA's apply thread holds this set as its observer.
    aba: OnceLock<Weak<Aba>>,
    registry: Mutex<Registry>,
    /// One creation at a time (it pins the undo journal).
    creating: Mutex<()>,
    /// What became of the last pre-resync snapshot, for status.
    pre_resync_note: Mutex<Option<String>>,
}

impl ApplyObserver for SnapshotSet {
    fn before_apply(&self, run: &[OwnedRecord], replica: &BTreeMap<u32, Arc<Volume>>) {
        let mut registry = lock(&self.registry);
        for snapshot in registry.snapshots.values() {
            snapshot.capture(run, replica);
        }
        if let Some(last) = run.last() {
            registry.observed_seq = registry.observed_seq.max(last.header.seq);
        }
    }

    fn resync_changed(&self, event: crate::resync::ResyncEvent) {
        self.keep_pre_resync_snapshot(event);
    }
}

impl SnapshotSet {
    /// Loads the snapshots kept in `snapshot_container_dir` (a snapshot whose creation a
    /// crash interrupted is removed). Pass the set to [`Aba::open_observed`] as its observer,
    /// then [`SnapshotSet::attach`] the ABA.
    pub fn open(
        group: &str,
        snapshot_container_dir: &Path,
        capacity_bytes: u64,
    ) -> Result<Arc<SnapshotSet>, SnapshotError> {
        let views_dir = snapshot_container_dir.join(VIEWS_DIR_NAME);
        std::fs::create_dir_all(&views_dir)
            .map_err(SnapshotError::io("create the snapshot directory"))?;
        let usage = Arc::new(Usage {
            used_bytes: AtomicU64::new(0),
            capacity_bytes,
        });
        let replica: Replica = Arc::new(OnceLock::new());
        let mut snapshots = BTreeMap::new();
        let entries =
            std::fs::read_dir(&views_dir).map_err(SnapshotError::io("list the snapshots"))?;
        for entry in entries {
            let entry = entry.map_err(SnapshotError::io("list the snapshots"))?;
            let dir = entry.path();
            let meta = match load_meta(&dir) {
                Ok(meta) if meta.ready => meta,
                outcome => {
                    tracing::warn!(dir = %dir.display(), ready = outcome.is_ok(), "removing a snapshot whose creation did not finish");
                    redoubt_durable::remove_dir_all(&dir)
                        .map_err(SnapshotError::io("remove an unfinished snapshot"))?;
                    continue;
                }
            };
            let snapshot = load_snapshot(&dir, meta, usage.clone(), replica.clone())?;
            snapshots.insert(snapshot.name.clone(), Arc::new(snapshot));
        }
        Ok(Arc::new(SnapshotSet {
            group: group.to_string(),
            views_dir,
            usage,
            replica,
            aba: OnceLock::new(),
            registry: Mutex::new(Registry {
                snapshots,
                observed_seq: 0,
            }),
            creating: Mutex::new(()),
            pre_resync_note: Mutex::new(None),
        }))
    }

    /// Connects the set to the group's ABA (opened with this set as its observer).
    pub fn attach(&self, aba: Arc<Aba>) {
        let _ = self.replica.set(aba.replica_volumes().clone());
        let _ = self.aba.set(Arc::downgrade(&aba));
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.usage.capacity_bytes
    }

    /// Bytes all snapshots of the group take (pre-images and overlays).
    pub fn usage_bytes(&self) -> u64 {
        self.usage.used_bytes.load(Ordering::Acquire)
    }

    /// `usage_bytes` as a percentage of the snapshot container's capacity.
    pub fn usage_pct(&self) -> f64 {
        if self.usage.capacity_bytes == 0 {
            0.0
        } else {
            self.usage_bytes().min(self.usage.capacity_bytes) as f64 * 100.0
                / self.usage.capacity_bytes as f64
        }
    }

    /// The snapshots, by name (one being created is not listed until it is ready).
    pub fn list(&self) -> Vec<Arc<Snapshot>> {
        lock(&self.registry)
            .snapshots
            .values()
            .filter(|snapshot| snapshot.ready.load(Ordering::Acquire))
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Snapshot>> {
        lock(&self.registry)
            .snapshots
            .get(name)
            .filter(|snapshot| snapshot.ready.load(Ordering::Acquire))
            .cloned()
    }

    fn aba(&self) -> Result<Arc<Aba>, SnapshotError> {
        self.aba
            .get()
            .and_then(Weak::upgrade)
            .ok_or(SnapshotError::NotAttached)
    }

    /// What can be snapshotted now. Reads the undo journal's record headers when
    /// `with_times` (to resolve times and markers).
    pub fn window(&self, with_times: bool) -> Result<SnapshotWindow, SnapshotError> {
        let aba = self.aba()?;
        let status = aba.status();
        let applied = status.applied_seq.load(Ordering::Acquire);
        let undo_dir = aba.undo_dir();
        let oldest_undo = oldest_undo_seq(&undo_dir)?;
        let barrier = status.undo_barrier_seq.load(Ordering::Acquire);
        let first_seq = match oldest_undo {
            Some(oldest) if oldest <= applied => oldest - 1,
            _ => applied,
        }
        .max(barrier)
        .min(applied);
        let mut window = SnapshotWindow {
            first_seq,
            last_seq: applied,
            ..SnapshotWindow::default()
        };
        if with_times && first_seq < applied {
            if let Some(group_id) = aba.group_id() {
                let reader = redoubt_journal::read_directory(
                    StdFs,
                    &undo_dir,
                    group_id,
                    first_seq + 1,
                    applied,
                )
                .map_err(|source| SnapshotError::Journal {
                    action: "read the undo journal",
                    source,
                })?;
                for record in reader {
                    let record = record.map_err(|source| SnapshotError::Journal {
                        action: "read the undo journal",
                        source,
                    })?;
                    window
                        .times
                        .push((record.header.seq, record.header.timestamp_ns));
                    if record.header.kind == RecordKind::Marker {
                        let name = std::str::from_utf8(&record.payload).ok().filter(|name| {
                            !name.starts_with("undo:")
                                && redoubt_points::check_marker_name(name).is_ok()
                        });
                        if let Some(name) = name {
                            window.markers.push(Marker {
                                name: name.to_string(),
                                seq: record.header.seq,
                                time_unix_ns: record.header.timestamp_ns,
                            });
                        }
                    }
                }
            }
        }
        Ok(window)
    }

    /// Resolves `point` against what this replica can snapshot.
    pub fn resolve(&self, point: &Point) -> Result<redoubt_points::Resolved, SnapshotError> {
        let with_times = matches!(point, Point::Time { .. } | Point::Mark(_));
        let window = self.window(with_times)?;
        let resolved = Window {
            first_seq: window.first_seq,
            last_seq: window.last_seq,
            markers: &window.markers,
            times: &window.times,
        }
        .resolve(point)
        .map_err(|error| SnapshotError::Point(error.to_string()))?;
        let mut resolved = resolved;
        if resolved.time_unix_ns.is_none() && resolved.seq > window.first_seq {
            resolved.time_unix_ns = self.record_time(resolved.seq);
        }
        Ok(resolved)
    }

    /// The write time of the record `seq`, from its undo record (`None` when unknown).
    fn record_time(&self, seq: u64) -> Option<u64> {
        let aba = self.aba().ok()?;
        let group_id = aba.group_id()?;
        let mut reader =
            redoubt_journal::read_directory(StdFs, &aba.undo_dir(), group_id, seq, seq).ok()?;
        let record = reader.next()?.ok()?;
        (record.header.seq == seq).then_some(record.header.timestamp_ns)
    }

    /// Creates snapshot `name` of every LV at `point`; apply goes on meanwhile.
    pub fn create(
        &self,
        name: &str,
        point: &Point,
        writable: bool,
    ) -> Result<Arc<Snapshot>, SnapshotError> {
        if !is_valid_name(name) {
            return Err(SnapshotError::InvalidName(name.to_string()));
        }
        let _creating = lock(&self.creating);
        {
            let registry = lock(&self.registry);
            if registry.snapshots.contains_key(name) {
                return Err(SnapshotError::Exists(name.to_string()));
            }
            if registry.snapshots.len() >= SNAPSHOTS_PER_GROUP_MAX {
                return Err(SnapshotError::TooMany);
            }
        }
        let aba = self.aba()?;
        let resolved = self.resolve(point)?;
        let point_seq = resolved.seq;
        if let Some(reason) = aba.status().inconsistent_reason(point_seq) {
            return Err(SnapshotError::Point(format!(
                "no snapshot at seq {point_seq}: {reason}"
            )));
        }
        let dir = self.views_dir.join(name);
        if dir.exists() {
            redoubt_durable::remove_dir_all(&dir)
                .map_err(SnapshotError::io("remove a stale snapshot directory"))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(SnapshotError::io("create the snapshot directory"))?;
        let volumes: Vec<SnapshotVolume> = aba
            .config()
            .volumes
            .iter()
            .map(|spec| SnapshotVolume {
                name: spec.name.clone(),
                lv_id: redoubt_journal::lv_id_for_name(&spec.name),
                size_bytes: spec.size_bytes,
            })
            .collect();
        let meta = Meta {
            name: name.to_string(),
            point_seq,
            point_time_unix_ns: resolved.time_unix_ns,
            writable,
            created_unix_ms: now_unix_ms(),
            volumes,
            ready: false,
            invalid: None,
        };
        let outcome = save_meta(&dir, &meta).and_then(|()| self.build(&aba, &dir, meta));
        aba.status().undo_pin_seq.store(0, Ordering::Release);
        match outcome {
            Ok(snapshot) => Ok(snapshot),
            Err(error) => {
                if let Some(snapshot) = lock(&self.registry).snapshots.remove(name) {
                    self.usage.release(snapshot.usage_bytes());
                }
                let _ = redoubt_durable::remove_dir_all(&dir);
                Err(error)
            }
        }
    }

    /// Joins the observer, then fills the map from the undo records P+1..=A0.
    fn build(
        &self,
        aba: &Arc<Aba>,
        dir: &Path,
        mut meta: Meta,
    ) -> Result<Arc<Snapshot>, SnapshotError> {
        let point_seq = meta.point_seq;
        let status = aba.status();
        // Keep the undo records after the point until they are copied.
        status.undo_pin_seq.store(point_seq + 1, Ordering::Release);
        let log = PreimageLog::create(&dir.join(PREIMAGES_FILE_NAME))
            .map_err(SnapshotError::io("create the pre-image log"))?;
        let overlay = if meta.writable {
            Some(Mutex::new(
                Overlay::open(dir).map_err(SnapshotError::io("create the overlay"))?,
            ))
        } else {
            None
        };
        let snapshot = Arc::new(Snapshot {
            name: meta.name.clone(),
            dir: dir.to_path_buf(),
            point_seq,
            point_time_unix_ns: meta.point_time_unix_ns,
            writable: meta.writable,
            created_unix_ms: meta.created_unix_ms,
            volumes: meta.volumes.clone(),
            view: RwLock::new(View {
                log,
                maps: BTreeMap::new(),
                invalid: None,
            }),
            overlay,
            usage: self.usage.clone(),
            replica: self.replica.clone(),
            ready: std::sync::atomic::AtomicBool::new(false),
            deleted: std::sync::atomic::AtomicBool::new(false),
        });
        let joined_seq = {
            let mut registry = lock(&self.registry);
            let joined = registry
                .observed_seq
                .max(status.applied_seq.load(Ordering::Acquire));
            registry
                .snapshots
                .insert(meta.name.clone(), snapshot.clone());
            joined
        };
        if point_seq > joined_seq {
            return Err(SnapshotError::Point(format!(
                "seq {point_seq} is not applied on this replica yet (applied: {joined_seq})"
            )));
        }
        let base = self.copy_undo(aba, &snapshot, point_seq, joined_seq)?;
        {
            let mut view = snapshot.write_view();
            view.log
                .sync()
                .map_err(SnapshotError::io("sync the pre-image log"))?;
            // What the observer copied since joining covers only what the undo records left.
            let live = std::mem::replace(&mut view.maps, base);
            for (lv_id, map) in live {
                let merged = view.maps.entry(lv_id).or_default();
                for (start, end, file_offset) in map.iter() {
                    for (gap_start, gap_end) in merged.gaps(start, end) {
                        merged.insert_gap(gap_start, gap_end, file_offset + (gap_start - start));
                    }
                }
            }
            if let Some(reason) = &view.invalid {
                return Err(SnapshotError::Invalid {
                    name: meta.name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        meta.ready = true;
        save_meta(dir, &meta)?;
        snapshot.ready.store(true, Ordering::Release);
        tracing::info!(group = %self.group, snapshot = %meta.name, point_seq, joined_seq, "snapshot created");
        Ok(snapshot)
    }

    /// The first pre-image of each byte written in `point_seq+1..=last_seq`, from the undo
    /// journal, into the snapshot's log; answers the maps of what it covers.
    fn copy_undo(
        &self,
        aba: &Arc<Aba>,
        snapshot: &Snapshot,
        point_seq: u64,
        last_seq: u64,
    ) -> Result<BTreeMap<u32, ExtentMap>, SnapshotError> {
        let mut base: BTreeMap<u32, ExtentMap> = BTreeMap::new();
        if point_seq == last_seq {
            return Ok(base);
        }
        let group_id = aba
            .group_id()
            .ok_or_else(|| SnapshotError::Point("this replica has received nothing yet".into()))?;
        let pruned = |first_seq: u64| {
            SnapshotError::Point(format!(
                "seq {point_seq} is outside the window of this replica: the undo journal starts at seq {first_seq}"
            ))
        };
        let reader = redoubt_journal::read_directory(
            StdFs,
            &aba.undo_dir(),
            group_id,
            point_seq + 1,
            last_seq,
        )
        .map_err(|source| match source {
            redoubt_journal::JournalError::SequencePruned { first_seq, .. } => pruned(first_seq),
            source => SnapshotError::Journal {
                action: "read the undo journal",
                source,
            },
        })?;
        let mut expected = point_seq + 1;
        for record in reader {
            let record = record.map_err(|source| SnapshotError::Journal {
                action: "read the undo journal",
                source,
            })?;
            let header = record.header;
            if header.seq != expected {
                return Err(pruned(header.seq));
            }
            expected += 1;
            if header.kind == RecordKind::Marker && record.payload == UNDO_BARRIER_MARKER.as_bytes()
            {
                return Err(SnapshotError::Point(format!(
                    "seq {point_seq} is behind an undo barrier at seq {} (a discard too large to undo): the oldest point a snapshot can have is seq {}",
                    header.seq, header.seq
                )));
            }
            if header.kind != RecordKind::Undo || snapshot.volume(header.lv_id).is_none() {
                continue;
            }
            let map = base.entry(header.lv_id).or_default();
            let start = header.offset_bytes;
            let end = start + record.payload.len() as u64;
            for (gap_start, gap_end) in map.gaps(start, end) {
                let mut position = gap_start;
                while position < gap_end {
                    let step = (gap_end - position).min(ENTRY_DATA_BYTES_MAX);
                    self.usage.reserve(PreimageLog::entry_bytes(step))?;
                    let data = &record.payload
                        [(position - start) as usize..(position - start + step) as usize];
                    let data_offset = snapshot
                        .write_view()
                        .log
                        .append(header.lv_id, position, header.seq, data)
                        .map_err(SnapshotError::io("append a pre-image"))?;
                    map.insert_gap(position, position + step, data_offset);
                    position += step;
                }
            }
        }
        if expected != last_seq + 1 {
            return Err(SnapshotError::Point(format!(
                "the undo journal ends at seq {} before seq {last_seq}",
                expected - 1
            )));
        }
        Ok(base)
    }

    /// Keeps [`PRE_RESYNC_SNAPSHOT_NAME`] from the begin of a super transaction to its end
    /// (see the module's documentation). Runs on the apply thread; never fails apply: what
    /// could not be done is logged and kept for [`SnapshotSet::pre_resync_note`]. Answers
    /// whether the set of snapshots changed.
    pub fn keep_pre_resync_snapshot(&self, event: crate::resync::ResyncEvent) -> bool {
        use crate::resync::ResyncEvent;
        let note = |text: String| *lock(&self.pre_resync_note) = Some(text);
        match event {
            ResyncEvent::Began {
                begin_seq,
                consistent_before,
            } => {
                let point_seq = begin_seq.saturating_sub(1);
                if !consistent_before || point_seq == 0 {
                    tracing::info!(group = %self.group, begin_seq, "super transaction on a replica with no consistent image before it (an initial sync): no pre-resync snapshot");
                    note(format!("super transaction from seq {begin_seq}: no pre-resync snapshot, the replica held no consistent image before it"));
                    return false;
                }
                if self.usage.capacity_bytes == 0 {
                    tracing::warn!(group = %self.group, begin_seq, "no snapshot container: the replica is not usable until the super transaction ends");
                    note(format!("super transaction from seq {begin_seq}: no pre-resync snapshot, the group has no snapshot container"));
                    return false;
                }
                let mut changed = false;
                if let Some(existing) = self.get(PRE_RESYNC_SNAPSHOT_NAME) {
                    if existing.point_seq() == point_seq && existing.invalid().is_none() {
                        // A restart replayed the begin marker: the snapshot is already there.
                        return false;
                    }
                    if let Err(error) = self.delete(PRE_RESYNC_SNAPSHOT_NAME) {
                        tracing::warn!(group = %self.group, %error, "could not replace a stale pre-resync snapshot");
                    }
                    changed = true;
                }
                match self.create(PRE_RESYNC_SNAPSHOT_NAME, &Point::Seq(point_seq), false) {
                    Ok(_) => {
                        tracing::info!(group = %self.group, point_seq, "pre-resync snapshot kept until the super transaction ends");
                        note(format!(
                            "super transaction from seq {begin_seq}: snapshot {PRE_RESYNC_SNAPSHOT_NAME} keeps seq {point_seq}"
                        ));
                        true
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.group, point_seq, %error, "could not keep a pre-resync snapshot");
                        note(format!(
                            "super transaction from seq {begin_seq}: no pre-resync snapshot: {error}"
                        ));
                        changed
                    }
                }
            }
            ResyncEvent::Ended { end_seq, begin_seq } => {
                if self.get(PRE_RESYNC_SNAPSHOT_NAME).is_none() {
                    note(format!(
                        "super transaction from seq {begin_seq} ended at seq {end_seq}: the replica is consistent"
                    ));
                    return false;
                }
                match self.delete(PRE_RESYNC_SNAPSHOT_NAME) {
                    Ok(()) => {
                        tracing::info!(group = %self.group, end_seq, "super transaction complete: pre-resync snapshot deleted");
                        note(format!(
                            "super transaction ended at seq {end_seq}: the replica is consistent; snapshot {PRE_RESYNC_SNAPSHOT_NAME} deleted"
                        ));
                        true
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.group, %error, "could not delete the pre-resync snapshot");
                        false
                    }
                }
            }
        }
    }

    /// What became of the last pre-resync snapshot (`None`: no super transaction seen).
    pub fn pre_resync_note(&self) -> Option<String> {
        lock(&self.pre_resync_note).clone()
    }

    /// Deletes a snapshot: its pre-images and its overlay (a writable snapshot's writes) go.
    pub fn delete(&self, name: &str) -> Result<(), SnapshotError> {
        let snapshot = {
            let mut registry = lock(&self.registry);
            let ready = registry
                .snapshots
                .get(name)
                .is_some_and(|snapshot| snapshot.ready.load(Ordering::Acquire));
            if !ready {
                return Err(SnapshotError::NotFound(name.to_string()));
            }
            registry
                .snapshots
                .remove(name)
                .ok_or_else(|| SnapshotError::NotFound(name.to_string()))?
        };
        snapshot.deleted.store(true, Ordering::Release);
        self.usage.release(snapshot.usage_bytes());
        redoubt_durable::remove_dir_all(&snapshot.dir)
            .map_err(SnapshotError::io("remove the snapshot's files"))?;
        tracing::info!(group = %self.group, snapshot = %name, "snapshot deleted");
        Ok(())
    }
}

/// The seq of the oldest undo record kept, from the undo journal's segment names.
fn oldest_undo_seq(undo_dir: &Path) -> Result<Option<u64>, SnapshotError> {
    let names = match std::fs::read_dir(undo_dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect::<Vec<_>>(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SnapshotError::Io {
                action: "list the undo journal",
                source: error,
            })
        }
    };
    Ok(names
        .iter()
        .filter_map(|name| redoubt_journal::parse_segment_file_name(name))
        .map(|(first_seq, _)| first_seq)
        .min())
}

/// Reopens a snapshot: the log's entries give the map back (oldest seq first, gaps only).
fn load_snapshot(
    dir: &Path,
    meta: Meta,
    usage: Arc<Usage>,
    replica: Replica,
) -> Result<Snapshot, SnapshotError> {
    let (log, mut entries) = PreimageLog::open(&dir.join(PREIMAGES_FILE_NAME))
        .map_err(SnapshotError::io("open the pre-image log"))?;
    entries.sort_by_key(|entry| entry.seq);
    let mut maps: BTreeMap<u32, ExtentMap> = BTreeMap::new();
    for entry in entries {
        let map = maps.entry(entry.lv_id).or_default();
        let start = entry.offset_bytes;
        for (gap_start, gap_end) in map.gaps(start, start + entry.length_bytes) {
            map.insert_gap(gap_start, gap_end, entry.data_offset + (gap_start - start));
        }
    }
    let overlay = if meta.writable {
        Some(Mutex::new(
            Overlay::open(dir).map_err(SnapshotError::io("open the overlay"))?,
        ))
    } else {
        None
    };
    let used = log.size_bytes()
        + overlay
            .as_ref()
            .map_or(0, |overlay| lock(overlay).size_bytes());
    usage.used_bytes.fetch_add(used, Ordering::AcqRel);
    Ok(Snapshot {
        name: meta.name.clone(),
        dir: dir.to_path_buf(),
        point_seq: meta.point_seq,
        point_time_unix_ns: meta.point_time_unix_ns,
        writable: meta.writable,
        created_unix_ms: meta.created_unix_ms,
        volumes: meta.volumes.clone(),
        view: RwLock::new(View {
            log,
            maps,
            invalid: meta.invalid.clone(),
        }),
        overlay,
        usage,
        replica,
        ready: std::sync::atomic::AtomicBool::new(true),
        deleted: std::sync::atomic::AtomicBool::new(false),
    })
}

/// One LV of a snapshot as an NBD export backend.
pub struct SnapshotExport {
    pub snapshot: Arc<Snapshot>,
    pub lv_id: u32,
}

impl redoubt_datatap::ExportBackend for SnapshotExport {
    fn size_bytes(&self) -> u64 {
        self.snapshot
            .volume(self.lv_id)
            .map_or(0, |volume| volume.size_bytes)
    }

    fn read_only(&self) -> bool {
        !self.snapshot.writable()
    }

    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> io::Result<()> {
        self.snapshot
            .read_at(self.lv_id, buffer, offset_bytes)
            .map_err(|error| error.to_io_error())
    }

    fn write_at(&self, data: &[u8], offset_bytes: u64) -> io::Result<()> {
        self.snapshot
            .write_at(self.lv_id, data, offset_bytes)
            .map_err(|error| error.to_io_error())
    }

    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        self.snapshot
            .write_zeroes(self.lv_id, offset_bytes, length_bytes)
            .map_err(|error| error.to_io_error())
    }

    fn flush(&self) -> io::Result<()> {
        self.snapshot.flush().map_err(|error| error.to_io_error())
    }
}
