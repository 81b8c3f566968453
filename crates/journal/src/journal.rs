//! The journal of one replication group: a directory of segments, one writer, recovery on
//! open, readers, pruning and the capacity cap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::JournalError;
use crate::fs::{join, JournalFs, SegmentFile, StdFs};
use crate::reader::{check_segment_header, read_record_at, JournalReader, RecordAt, SegmentRef};
use crate::record::{
    encode_header, encoded_size_bytes, DecodeError, Record, RecordHeader, RecordKind,
};
use crate::segment::{
    parse_segment_file_name, segment_file_name, GroupId, SegmentHeader, SegmentHeaderError,
    SEGMENT_HEADER_SIZE_BYTES,
};

/// Default segment size: big enough that seal fsyncs are rare, small enough to ship and
/// prune at a fine grain.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest configurable segment size (tests use it to force many rollovers).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4 * 1024;
/// Largest configurable segment size; bounds recovery and shipping work per segment.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Payloads at least this big are written from the caller's buffer, skipping a copy.
pub const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 * 1024;
/// Default bytes buffered in memory before a `write` to the segment file.
pub const WRITE_BUFFER_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Written bytes after which the journal asks the kernel to start writing them back, without
/// waiting: the next fdatasync then finds most of them on disk already instead of writing
/// everything since the last one while the group's commit thread waits.
pub const WRITEBACK_HINT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest write buffer; the buffer is lost on a crash anyway, so bigger buys nothing.
pub const WRITE_BUFFER_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Pruned segments kept as spares by default, to become the next open segments. Writing over
/// a file's allocated blocks needs no block allocation, and keeping it needs no block freeing:
/// on ext4 (with `discard`, which issues a TRIM per freed extent) removing a 64 MiB segment
/// took 75–208 ms and each first write into new blocks made the next fdatasync commit
/// metadata. PostgreSQL recycles its WAL segments for the same reason.
pub const SPARE_SEGMENTS_DEFAULT: u64 = 2;
/// Most spares a journal keeps.
pub const SPARE_SEGMENTS_MAX: u64 = 16;
/// File-name suffix of a spare segment. Not a segment name: readers and recovery skip it.
pub const SPARE_SUFFIX: &str = ".spare";

const _: () = assert!(SEGMENT_SIZE_BYTES_MIN <= SEGMENT_SIZE_BYTES_DEFAULT);
const _: () = assert!(SPARE_SEGMENTS_DEFAULT <= SPARE_SEGMENTS_MAX);
const _: () = assert!(SEGMENT_SIZE_BYTES_DEFAULT <= SEGMENT_SIZE_BYTES_MAX);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN > SEGMENT_HEADER_SIZE_BYTES as u64);

/// Options of a journal. Built with [`JournalConfig::new`], checked by `validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    pub group_id: GroupId,
    /// A segment is sealed before a record would push it past this size. A single record
    /// larger than this still gets a segment of its own.
    pub segment_size_bytes: u64,
    /// The container cap: total bytes of all segments (including buffered bytes).
    pub capacity_bytes: u64,
    /// Appends are buffered in memory up to this many bytes before a `write` call.
    pub write_buffer_bytes: u64,
    /// Sequence number of the first record when the journal directory is empty. The ABA's
    /// copy starts wherever production's journal is when shipping begins.
    pub seq_first_new: u64,
    /// Pruned segments kept to be written over as new ones (see [`SPARE_SEGMENTS_DEFAULT`]);
    /// they count against `capacity_bytes` and are given up first when space runs out.
    pub spare_segments: u64,
}

impl JournalConfig {
    /// Defaults for everything except the group and the container cap, which have no
    /// sensible default.
    pub fn new(group_id: GroupId, capacity_bytes: u64) -> JournalConfig {
        JournalConfig {
            group_id,
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            capacity_bytes,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
            seq_first_new: 1,
            spare_segments: SPARE_SEGMENTS_DEFAULT,
        }
    }

    pub fn validate(&self) -> Result<(), JournalError> {
        let reason = if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX)
            .contains(&self.segment_size_bytes)
        {
            format!(
                "segment_size_bytes {} not in {SEGMENT_SIZE_BYTES_MIN}..={SEGMENT_SIZE_BYTES_MAX}",
                self.segment_size_bytes
            )
        } else if self.capacity_bytes < self.segment_size_bytes {
            format!(
                "capacity_bytes {} is below segment_size_bytes {}",
                self.capacity_bytes, self.segment_size_bytes
            )
        } else if self.write_buffer_bytes > WRITE_BUFFER_BYTES_MAX {
            format!(
                "write_buffer_bytes {} exceeds {WRITE_BUFFER_BYTES_MAX}",
                self.write_buffer_bytes
            )
        } else if self.seq_first_new == 0 {
            "seq_first_new must be at least 1 (seq 0 means \"no record\")".to_owned()
        } else if self.spare_segments > SPARE_SEGMENTS_MAX {
            format!(
                "spare_segments {} exceeds {SPARE_SEGMENTS_MAX}",
                self.spare_segments
            )
        } else {
            return Ok(());
        };
        Err(JournalError::Config { reason })
    }
}

/// What the caller appends: everything of a record except its seq, which the journal assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub kind: RecordKind,
    pub lv_id: u32,
    pub offset_bytes: u64,
    pub length_bytes: u32,
    pub timestamp_ns: u64,
    pub payload: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn write(lv_id: u32, offset_bytes: u64, data: &'a [u8], timestamp_ns: u64) -> Entry<'a> {
        let length_bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Entry {
            kind: RecordKind::Write,
            lv_id,
            offset_bytes,
            length_bytes,
            timestamp_ns,
            payload: data,
        }
    }

    pub fn write_zeroes(
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u32,
        timestamp_ns: u64,
    ) -> Entry<'a> {
        Entry {
            kind: RecordKind::WriteZeroes,
            lv_id,
            offset_bytes,
            length_bytes,
            timestamp_ns,
            payload: &[],
        }
    }

    pub fn trim(lv_id: u32, offset_bytes: u64, length_bytes: u32, timestamp_ns: u64) -> Entry<'a> {
        Entry {
            kind: RecordKind::Trim,
            lv_id,
            offset_bytes,
            length_bytes,
            timestamp_ns,
            payload: &[],
        }
    }

    pub fn marker(name: &'a str, timestamp_ns: u64) -> Entry<'a> {
        Entry {
            kind: RecordKind::Marker,
            lv_id: 0,
            offset_bytes: 0,
            length_bytes: 0,
            timestamp_ns,
            payload: name.as_bytes(),
        }
    }

    pub fn undo(lv_id: u32, offset_bytes: u64, old_data: &'a [u8], timestamp_ns: u64) -> Entry<'a> {
        Entry {
            kind: RecordKind::Undo,
            ..Entry::write(lv_id, offset_bytes, old_data, timestamp_ns)
        }
    }

    fn header(&self, seq: u64) -> RecordHeader {
        RecordHeader {
            kind: self.kind,
            lv_id: self.lv_id,
            offset_bytes: self.offset_bytes,
            length_bytes: self.length_bytes,
            seq,
            timestamp_ns: self.timestamp_ns,
        }
    }
}

/// The fdatasync of a group commit, prepared by [`Journal::prepare_sync`] and run on any
/// thread; its outcome goes back through [`Journal::complete_sync`].
pub struct PreparedSync<F: JournalFs> {
    fs: F,
    dir: PathBuf,
    path: PathBuf,
    file: F::File,
    /// A segment was created since the last directory fsync.
    sync_dir: bool,
    seq: u64,
}

impl<F: JournalFs> PreparedSync<F> {
    /// The last seq this sync makes durable.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// fdatasync (and the directory fsync, if a segment was created); returns the seq now
    /// durable.
    pub fn run(mut self) -> Result<u64, JournalError> {
        self.file
            .sync_data()
            .map_err(JournalError::io("sync journal segment", &self.path))?;
        if self.sync_dir {
            self.fs
                .sync_dir(&self.dir)
                .map_err(JournalError::io("sync journal directory", &self.dir))?;
        }
        Ok(self.seq)
    }
}

/// Whole sealed segments already out of the journal, to remove from the disk
/// ([`Journal::prepare_prune`]).
pub struct PreparedPrune<F: JournalFs> {
    fs: F,
    dir: PathBuf,
    spares: Arc<Mutex<Vec<Spare>>>,
    /// Oldest first.
    segments: Vec<PrunedSegment>,
}

struct PrunedSegment {
    path: PathBuf,
    /// Where the file goes to be written over later; `None`: removed.
    spare_path: Option<PathBuf>,
    size_bytes: u64,
}

impl<F: JournalFs> PreparedPrune<F> {
    /// Takes the segments out of the journal's namespace, oldest first, with a directory
    /// fsync after each, so a crash midway never leaves a hole in the middle of the journal:
    /// renamed to spares (up to the configured number) or removed.
    pub fn run(self) -> Result<PruneReport, JournalError> {
        let mut report = PruneReport::default();
        for segment in &self.segments {
            match &segment.spare_path {
                Some(spare_path) => {
                    self.fs
                        .rename(&segment.path, spare_path)
                        .map_err(JournalError::io(
                            "keep journal segment as a spare",
                            &segment.path,
                        ))?
                }
                None => self
                    .fs
                    .remove(&segment.path)
                    .map_err(JournalError::io("remove journal segment", &segment.path))?,
            }
            self.fs
                .sync_dir(&self.dir)
                .map_err(JournalError::io("sync journal directory", &self.dir))?;
            if let Some(spare_path) = &segment.spare_path {
                lock_spares(&self.spares).push(Spare {
                    path: spare_path.clone(),
                    size_bytes: segment.size_bytes,
                });
            }
            report.segments_removed += 1;
            report.bytes_removed += segment.size_bytes;
        }
        Ok(report)
    }
}

/// A sealed segment: immutable, fully durable, `first_seq..=last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegment {
    pub first_seq: u64,
    pub last_seq: u64,
    pub size_bytes: u64,
}

/// What [`Journal::prune_through`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneReport {
    pub segments_removed: u64,
    pub bytes_removed: u64,
}

/// A pruned segment file kept to become a new segment.
#[derive(Debug, Clone)]
struct Spare {
    path: PathBuf,
    size_bytes: u64,
}

fn lock_spares(spares: &Mutex<Vec<Spare>>) -> MutexGuard<'_, Vec<Spare>> {
    // The list is valid after any panic elsewhere: each change is one push or pop.
    spares
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct OpenSegment<File> {
    /// A recycled file: bytes of its earlier life follow the records, until the seal
    /// truncates them.
    stale_tail: bool,
    first_seq: u64,
    path: PathBuf,
    file: File,
    /// Bytes handed to the file with `write` (header included); the buffer comes after.
    written_bytes: u64,
    /// Where the written bytes not yet handed to writeback start (see
    /// [`WRITEBACK_HINT_BYTES`]).
    writeback_from_bytes: u64,
}

/// The redo (or undo) journal of one replication group, opened for appending.
///
/// Watermarks, all "last seq of the prefix that is ...", with `first - 1` meaning none:
/// `appended_seq >= written_seq >= durable_seq`. Only `durable_seq` survives a crash;
/// readers see records up to `durable_seq` only, so nothing that could be lost is shipped.
pub struct Journal<F: JournalFs = StdFs> {
    fs: F,
    dir: PathBuf,
    config: JournalConfig,
    sealed: VecDeque<SealedSegment>,
    /// Sum of the sealed segments' sizes, kept so the capacity check on each append is O(1).
    sealed_bytes: u64,
    /// Pruned segment files waiting to be written over, oldest first; a prune running on
    /// another thread adds to them.
    spares: Arc<Mutex<Vec<Spare>>>,
    open: OpenSegment<F::File>,
    buffer: Vec<u8>,
    appended_seq: u64,
    written_seq: u64,
    durable_seq: u64,
    /// A segment was created since the last directory fsync; its name is not durable yet.
    dir_sync_pending: bool,
    poisoned: bool,
}

impl<F: JournalFs> std::fmt::Debug for Journal<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("sealed_segments", &self.sealed.len())
            .field("open_first_seq", &self.open.first_seq)
            .field("appended_seq", &self.appended_seq)
            .field("written_seq", &self.written_seq)
            .field("durable_seq", &self.durable_seq)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<F: JournalFs> Journal<F> {
    /// Open (creating if empty) the journal in `dir` and recover it: validate every sealed
    /// segment and their sequence continuity, truncate a torn tail of the open segment, and
    /// make the recovered state durable before returning.
    pub fn open(
        fs: F,
        dir: impl Into<PathBuf>,
        config: JournalConfig,
    ) -> Result<Journal<F>, JournalError> {
        config.validate()?;
        let dir = dir.into();
        fs.create_dir_all(&dir)
            .map_err(JournalError::io("create journal directory", &dir))?;
        let names = fs
            .list(&dir)
            .map_err(JournalError::io("list journal directory", &dir))?;
        let mut sealed_firsts = Vec::new();
        let mut partial_firsts = Vec::new();
        let mut spares = Vec::new();
        for name in &names {
            match parse_segment_file_name(name) {
                Some((first_seq, true)) => partial_firsts.push(first_seq),
                Some((first_seq, false)) => sealed_firsts.push(first_seq),
                None if name.ends_with(SPARE_SUFFIX) => spares.push(join(&dir, name)),
                None => {}
            }
        }
        spares.sort_unstable();
        let spares = keep_spares(&fs, &dir, spares, config.spare_segments)?;
        sealed_firsts.sort_unstable();
        partial_firsts.sort_unstable();
        if let [first, second, ..] = partial_firsts[..] {
            return Err(JournalError::MultiplePartial {
                first: join(&dir, &segment_file_name(first, true)),
                second: join(&dir, &segment_file_name(second, true)),
            });
        }
        let mut sealed: VecDeque<SealedSegment> = VecDeque::new();
        for first_seq in sealed_firsts {
            let segment = scan_sealed(&fs, &dir, config.group_id, first_seq)?;
            if let Some(previous) = sealed.back() {
                check_continuity(&dir, previous, first_seq, false)?;
            }
            sealed.push_back(segment);
        }
        let (open, last_seq) = match (partial_firsts.first(), sealed.back()) {
            (Some(&first_seq), previous) => {
                if let Some(previous) = previous {
                    check_continuity(&dir, previous, first_seq, true)?;
                }
                recover_partial(&fs, &dir, config.group_id, first_seq)?
            }
            (None, previous) => {
                let first_seq = previous.map_or(config.seq_first_new, |s| s.last_seq + 1);
                (
                    create_partial(&fs, &dir, config.group_id, first_seq)?,
                    first_seq - 1,
                )
            }
        };
        // Records read back may sit only in the page cache (the process died, the machine
        // did not); make them durable before counting them as durable.
        let mut journal = Journal {
            fs,
            dir,
            config,
            sealed_bytes: sealed.iter().map(|segment| segment.size_bytes).sum(),
            sealed,
            spares: Arc::new(Mutex::new(spares)),
            open,
            buffer: Vec::new(),
            appended_seq: last_seq,
            written_seq: last_seq,
            durable_seq: last_seq,
            dir_sync_pending: true,
            poisoned: false,
        };
        journal.sync_everything()?;
        journal.assert_invariants();
        Ok(journal)
    }

    /// Append a record, assigning the next sequence number. Buffered: not durable until
    /// [`Journal::sync`] returns a seq at or beyond the returned one.
    pub fn append(&mut self, entry: &Entry<'_>) -> Result<u64, JournalError> {
        assert!(self.appended_seq < u64::MAX, "sequence numbers exhausted");
        let header = entry.header(self.appended_seq + 1);
        self.append_header(&header, entry.payload)
    }

    /// [`Journal::append`] for a caller that already computed the payload's CRC32C where the
    /// data arrived, so the journal's single thread does not spend its time checksumming.
    pub fn append_with_crc(
        &mut self,
        entry: &Entry<'_>,
        payload_crc32c: u32,
    ) -> Result<u64, JournalError> {
        assert!(self.appended_seq < u64::MAX, "sequence numbers exhausted");
        let header = entry.header(self.appended_seq + 1);
        self.append_checked(&header, entry.payload, payload_crc32c)
    }

    /// Append a record that already has a seq (the ABA storing production's records). The
    /// seq must continue this journal exactly; anything else is a protocol error.
    pub fn append_replicated(&mut self, record: &Record<'_>) -> Result<u64, JournalError> {
        let expected = self.appended_seq.saturating_add(1);
        if record.header.seq != expected {
            return Err(JournalError::SequenceMismatch {
                expected,
                found: record.header.seq,
            });
        }
        self.append_header(&record.header, record.payload)
    }

    fn append_header(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
    ) -> Result<u64, JournalError> {
        self.append_checked(header, payload, crc32c::crc32c(payload))
    }

    fn append_checked(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        payload_crc32c: u32,
    ) -> Result<u64, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        header.validate(payload)?;
        assert_eq!(header.seq, self.appended_seq + 1);
        let record_bytes = encoded_size_bytes(payload.len());
        let open_bytes = self.open.written_bytes + self.buffer.len() as u64;
        let open_has_records = self.appended_seq >= self.open.first_seq;
        let rollover =
            open_has_records && open_bytes + record_bytes > self.config.segment_size_bytes;
        let needed_bytes = record_bytes
            + if rollover {
                SEGMENT_HEADER_SIZE_BYTES as u64
            } else {
                0
            };
        if self.footprint_bytes() + needed_bytes > self.config.capacity_bytes {
            // Space for records comes before spares.
            self.remove_spares()?;
        }
        let used_bytes = self.size_bytes();
        if used_bytes + needed_bytes > self.config.capacity_bytes {
            return Err(JournalError::JournalFull {
                capacity_bytes: self.config.capacity_bytes,
                used_bytes,
                record_bytes,
            });
        }
        self.poisoned = true;
        if rollover {
            self.seal_open()?;
        }
        self.buffer
            .extend_from_slice(&encode_header(header, payload, payload_crc32c));
        if payload.len() >= DIRECT_PAYLOAD_BYTES_MIN {
            // A large payload goes from the caller's buffer to the file, not through ours.
            self.write_buffer_bytes()?;
            self.open
                .file
                .write_all_at(self.open.written_bytes, payload)
                .map_err(JournalError::io("write journal segment", &self.open.path))?;
            self.open.written_bytes += payload.len() as u64;
            self.appended_seq = header.seq;
            self.written_seq = header.seq;
        } else {
            self.buffer.extend_from_slice(payload);
            self.appended_seq = header.seq;
            if self.buffer.len() as u64 >= self.config.write_buffer_bytes {
                self.write_buffer()?;
            }
        }
        self.poisoned = false;
        self.assert_invariants();
        Ok(header.seq)
    }

    /// Make every appended record durable (write + fdatasync, plus a directory fsync if a
    /// segment was created) and return the durable seq. One call covers all appends before
    /// it: that is the group commit. Cheap when nothing is pending.
    pub fn sync(&mut self) -> Result<u64, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if self.durable_seq == self.appended_seq && !self.dir_sync_pending {
            return Ok(self.durable_seq);
        }
        self.sync_everything()?;
        self.assert_invariants();
        Ok(self.durable_seq)
    }

    /// The group commit split in two, so the fdatasync can run on another thread while this
    /// one goes on appending: hands every appended record to the OS and returns what makes
    /// them durable, or `None` when they already are. Until [`Journal::complete_sync`] takes
    /// the outcome, `durable_seq` does not move (readers see nothing new).
    pub fn prepare_sync(&mut self) -> Result<Option<PreparedSync<F>>, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        self.poisoned = true;
        self.write_buffer()?;
        let prepared = if self.durable_seq == self.written_seq && !self.dir_sync_pending {
            None
        } else {
            let file = self.open.file.try_clone().map_err(JournalError::io(
                "open journal segment again",
                &self.open.path,
            ))?;
            let sync_dir = std::mem::take(&mut self.dir_sync_pending);
            Some(PreparedSync {
                fs: self.fs.clone(),
                dir: self.dir.clone(),
                path: self.open.path.clone(),
                file,
                sync_dir,
                seq: self.written_seq,
            })
        };
        self.poisoned = false;
        self.assert_invariants();
        Ok(prepared)
    }

    /// Takes the outcome of a [`PreparedSync`] and returns the durable seq. A failed sync
    /// poisons the journal: the kernel may have dropped the pages it could not write.
    pub fn complete_sync(
        &mut self,
        outcome: Result<u64, JournalError>,
    ) -> Result<u64, JournalError> {
        match outcome {
            Ok(seq) => {
                assert!(
                    seq <= self.written_seq,
                    "a sync covers only records handed to the OS before it"
                );
                self.durable_seq = self.durable_seq.max(seq);
                self.assert_invariants();
                Ok(self.durable_seq)
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    /// Hand every appended record to the OS (`write`, no fsync) and return the written seq.
    /// A process crash then loses none of them; a power cut still may, until [`Journal::sync`].
    pub fn write_out(&mut self) -> Result<u64, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        self.poisoned = true;
        self.write_buffer()?;
        self.poisoned = false;
        self.assert_invariants();
        Ok(self.written_seq)
    }

    /// Seal the open segment now if it holds any record, e.g. after an idle period so the
    /// LCA can ship it. Returns the sealed segment.
    pub fn seal(&mut self) -> Result<Option<SealedSegment>, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        if self.appended_seq < self.open.first_seq {
            return Ok(None);
        }
        self.poisoned = true;
        self.seal_open()?;
        self.poisoned = false;
        self.assert_invariants();
        Ok(self.sealed.back().copied())
    }

    /// Delete whole sealed segments whose records are all `<= seq`. The caller decides what
    /// is safe (e.g. shipped to every recovery server). The open segment is never deleted.
    pub fn prune_through(&mut self, seq: u64) -> Result<PruneReport, JournalError> {
        match self.prepare_prune(seq)? {
            Some(prune) => {
                let outcome = prune.run();
                if outcome.is_err() {
                    self.poisoned = true;
                }
                outcome
            }
            None => Ok(PruneReport::default()),
        }
    }

    /// [`Journal::prune_through`] split in two, so the removals (tens of milliseconds for a
    /// large file on ext4) can run on another thread: the segments leave the journal now, and
    /// the returned prune removes their files, oldest first. A crash before it ran leaves
    /// them on disk, where the next open finds them whole and in sequence.
    pub fn prepare_prune(&mut self, seq: u64) -> Result<Option<PreparedPrune<F>>, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        let mut segments = Vec::new();
        let mut spare_room = self
            .config
            .spare_segments
            .saturating_sub(lock_spares(&self.spares).len() as u64);
        while let Some(&oldest) = self.sealed.front() {
            if oldest.last_seq > seq {
                break;
            }
            // Only about full segments are worth keeping (idle seals leave small ones).
            let recycle = spare_room > 0 && oldest.size_bytes >= self.config.segment_size_bytes / 2;
            if recycle {
                spare_room -= 1;
            }
            segments.push(PrunedSegment {
                path: join(&self.dir, &segment_file_name(oldest.first_seq, false)),
                spare_path: recycle.then(|| {
                    join(
                        &self.dir,
                        &format!("{:016x}{SPARE_SUFFIX}", oldest.first_seq),
                    )
                }),
                size_bytes: oldest.size_bytes,
            });
            self.sealed.pop_front();
            self.sealed_bytes -= oldest.size_bytes;
        }
        self.assert_invariants();
        if segments.is_empty() {
            return Ok(None);
        }
        Ok(Some(PreparedPrune {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            spares: self.spares.clone(),
            segments,
        }))
    }

    /// Iterate durable records from `seq_from` on (up to the durable seq at this call).
    pub fn read_from(&self, seq_from: u64) -> Result<JournalReader<F>, JournalError> {
        let first_seq = self
            .sealed
            .front()
            .map_or(self.open.first_seq, |s| s.first_seq);
        if seq_from < first_seq {
            return Err(JournalError::SequencePruned {
                requested: seq_from,
                first_seq,
            });
        }
        if seq_from > self.durable_seq + 1 {
            return Err(JournalError::SequenceNotDurable {
                requested: seq_from,
                durable_seq: self.durable_seq,
            });
        }
        let mut segments: Vec<SegmentRef> = self
            .sealed
            .iter()
            .filter(|segment| segment.last_seq >= seq_from)
            .map(|segment| SegmentRef {
                first_seq: segment.first_seq,
                partial: false,
            })
            .collect();
        if self.durable_seq >= self.open.first_seq {
            segments.push(SegmentRef {
                first_seq: self.open.first_seq,
                partial: true,
            });
        }
        Ok(JournalReader::new(
            self.fs.clone(),
            self.dir.clone(),
            self.config.group_id,
            segments,
            seq_from,
            self.durable_seq,
        ))
    }

    /// Last seq handed out by `append`.
    pub fn appended_seq(&self) -> u64 {
        self.appended_seq
    }

    /// Last seq passed to the OS with `write` (survives a process crash, not a power cut).
    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// Last seq that is fdatasync'ed (survives a power cut).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Oldest seq still in the journal, if any record is.
    pub fn first_seq(&self) -> Option<u64> {
        let first_seq = self
            .sealed
            .front()
            .map_or(self.open.first_seq, |s| s.first_seq);
        (first_seq <= self.appended_seq).then_some(first_seq)
    }

    /// Newest appended seq, if any record is in the journal.
    pub fn last_seq(&self) -> Option<u64> {
        self.first_seq().map(|_| self.appended_seq)
    }

    /// Bytes the journal occupies, counting buffered bytes: the backlog/usage figure.
    pub fn size_bytes(&self) -> u64 {
        self.sealed_bytes + self.open.written_bytes + self.buffer.len() as u64
    }

    /// What the journal holds on disk: its segments, the stale tail of a recycled open
    /// segment (at most one segment), and its spares.
    fn footprint_bytes(&self) -> u64 {
        let spare_bytes: u64 = lock_spares(&self.spares)
            .iter()
            .map(|spare| spare.size_bytes)
            .sum();
        let stale_bytes = if self.open.stale_tail {
            self.config
                .segment_size_bytes
                .saturating_sub(self.open.written_bytes)
        } else {
            0
        };
        self.size_bytes() + spare_bytes + stale_bytes
    }

    /// Gives the spares' space back (the journal is close to full).
    fn remove_spares(&mut self) -> Result<(), JournalError> {
        let spares = std::mem::take(&mut *lock_spares(&self.spares));
        for spare in &spares {
            self.fs.remove(&spare.path).map_err(JournalError::io(
                "remove spare journal segment",
                &spare.path,
            ))?;
        }
        Ok(())
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.config.capacity_bytes
    }

    /// Sealed segments, oldest first: what the LCA can ship.
    pub fn sealed_segments(&self) -> impl ExactSizeIterator<Item = SealedSegment> + '_ {
        self.sealed.iter().copied()
    }

    /// First seq of the open (`.partial`) segment.
    pub fn open_segment_first_seq(&self) -> u64 {
        self.open.first_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    fn write_buffer(&mut self) -> Result<(), JournalError> {
        if self.buffer.is_empty() {
            assert_eq!(self.written_seq, self.appended_seq);
            return Ok(());
        }
        self.write_buffer_bytes()?;
        self.written_seq = self.appended_seq;
        Ok(())
    }

    /// Writes the buffered bytes out without moving `written_seq`: the buffer may end in the
    /// header of a record whose payload is written next.
    fn write_buffer_bytes(&mut self) -> Result<(), JournalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.open
            .file
            .write_all_at(self.open.written_bytes, &self.buffer)
            .map_err(JournalError::io("write journal segment", &self.open.path))?;
        self.open.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        let unhinted_bytes = self.open.written_bytes - self.open.writeback_from_bytes;
        if unhinted_bytes >= WRITEBACK_HINT_BYTES {
            self.open
                .file
                .start_writeback(self.open.writeback_from_bytes, unhinted_bytes);
            self.open.writeback_from_bytes = self.open.written_bytes;
        }
        Ok(())
    }

    /// Drops every record after `seq`: a replica that follows a new production after a
    /// failover keeps the undo of the history both share, not of what it applied beyond the
    /// point. Consumes the journal; open it again afterwards. Crash-safe step by step:
    /// segments go newest first, then the segment holding `seq` becomes the open one and is
    /// cut after `seq`'s record, so every state in between is a journal that opens and holds
    /// a prefix of the records. `seq` may be one before the first record (nothing is kept;
    /// the journal continues at `seq + 1`), not earlier.
    pub fn truncate_after(mut self, seq: u64) -> Result<(), JournalError> {
        self.sync_everything()?;
        if seq >= self.appended_seq {
            return Ok(());
        }
        let first_seq = self.first_seq().unwrap_or(self.open.first_seq);
        if seq + 1 < first_seq {
            return Err(JournalError::TruncateBeforeFirst {
                dir: self.dir.clone(),
                seq,
                first_seq,
            });
        }
        let (fs, dir, group_id) = (self.fs.clone(), self.dir.clone(), self.config.group_id);
        if self.open.first_seq <= seq {
            let end_bytes = record_end_bytes(&self.open.file, &self.open.path, seq)?;
            let path = self.open.path.clone();
            self.open
                .file
                .set_len(end_bytes)
                .map_err(JournalError::io("truncate journal segment", &path))?;
            self.open
                .file
                .sync_data()
                .map_err(JournalError::io("sync journal segment", &path))?;
            return Ok(());
        }
        let open_path = self.open.path.clone();
        drop(self.open);
        fs.remove(&open_path)
            .map_err(JournalError::io("remove journal segment", &open_path))?;
        fs.sync_dir(&dir)
            .map_err(JournalError::io("sync journal directory", &dir))?;
        while let Some(last) = self.sealed.back().copied() {
            if last.first_seq <= seq {
                break;
            }
            let path = join(&dir, &segment_file_name(last.first_seq, false));
            fs.remove(&path)
                .map_err(JournalError::io("remove journal segment", &path))?;
            fs.sync_dir(&dir)
                .map_err(JournalError::io("sync journal directory", &dir))?;
            self.sealed.pop_back();
        }
        match self.sealed.back().copied() {
            Some(last) if last.last_seq > seq => {
                let sealed_path = join(&dir, &segment_file_name(last.first_seq, false));
                let partial_path = join(&dir, &segment_file_name(last.first_seq, true));
                fs.rename(&sealed_path, &partial_path)
                    .map_err(JournalError::io("reopen journal segment", &sealed_path))?;
                fs.sync_dir(&dir)
                    .map_err(JournalError::io("sync journal directory", &dir))?;
                let mut file = fs
                    .open(&partial_path)
                    .map_err(JournalError::io("open journal segment", &partial_path))?;
                let end_bytes = record_end_bytes(&file, &partial_path, seq)?;
                file.set_len(end_bytes)
                    .map_err(JournalError::io("truncate journal segment", &partial_path))?;
                file.sync_data()
                    .map_err(JournalError::io("sync journal segment", &partial_path))?;
            }
            Some(_) => {}
            None => {
                // Nothing kept: the journal goes on at seq + 1, not at its configured start.
                let mut open = create_partial(&fs, &dir, group_id, seq + 1)?;
                open.file
                    .sync_data()
                    .map_err(JournalError::io("sync journal segment", &open.path))?;
                fs.sync_dir(&dir)
                    .map_err(JournalError::io("sync journal directory", &dir))?;
            }
        }
        Ok(())
    }

    /// Write, fdatasync, and fsync the directory if needed. Poisons the journal on failure:
    /// after a failed fsync the kernel may have dropped the dirty pages, so retrying the
    /// fsync could "succeed" without the data (the PostgreSQL fsync-gate lesson).
    fn sync_everything(&mut self) -> Result<(), JournalError> {
        self.poisoned = true;
        self.write_buffer()?;
        self.open
            .file
            .sync_data()
            .map_err(JournalError::io("sync journal segment", &self.open.path))?;
        if self.dir_sync_pending {
            self.fs
                .sync_dir(&self.dir)
                .map_err(JournalError::io("sync journal directory", &self.dir))?;
            self.dir_sync_pending = false;
        }
        self.durable_seq = self.written_seq;
        self.poisoned = false;
        Ok(())
    }

    /// Seal the open segment and start a new one. The caller set `poisoned` and clears it.
    fn seal_open(&mut self) -> Result<(), JournalError> {
        assert!(self.poisoned);
        assert!(
            self.appended_seq >= self.open.first_seq,
            "seal an empty segment"
        );
        self.write_buffer()?;
        if self.open.stale_tail {
            // A sealed segment ends with its last record: recovery reads it to the end.
            self.open
                .file
                .set_len(self.open.written_bytes)
                .map_err(JournalError::io(
                    "truncate journal segment",
                    &self.open.path,
                ))?;
        }
        self.open
            .file
            .sync_data()
            .map_err(JournalError::io("sync journal segment", &self.open.path))?;
        let sealed_path = join(&self.dir, &segment_file_name(self.open.first_seq, false));
        self.fs
            .rename(&self.open.path, &sealed_path)
            .map_err(JournalError::io("rename journal segment", &self.open.path))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(JournalError::io("sync journal directory", &self.dir))?;
        self.dir_sync_pending = false;
        self.durable_seq = self.appended_seq;
        self.sealed.push_back(SealedSegment {
            first_seq: self.open.first_seq,
            last_seq: self.appended_seq,
            size_bytes: self.open.written_bytes,
        });
        self.sealed_bytes += self.open.written_bytes;
        let spare = {
            let mut spares = lock_spares(&self.spares);
            (!spares.is_empty()).then(|| spares.remove(0))
        };
        self.open = match spare {
            Some(spare) => recycle_spare(
                &self.fs,
                &self.dir,
                &spare.path,
                self.config.group_id,
                self.appended_seq + 1,
            )?,
            None => create_partial(
                &self.fs,
                &self.dir,
                self.config.group_id,
                self.appended_seq + 1,
            )?,
        };
        self.dir_sync_pending = true;
        Ok(())
    }

    fn assert_invariants(&self) {
        assert!(self.appended_seq >= self.written_seq);
        assert!(self.written_seq >= self.durable_seq);
        assert!(self.open.first_seq <= self.appended_seq + 1);
        assert!(self.open.written_bytes >= SEGMENT_HEADER_SIZE_BYTES as u64);
        assert_eq!(
            self.buffer.is_empty(),
            self.appended_seq == self.written_seq
        );
        if let Some(last) = self.sealed.back() {
            assert_eq!(last.last_seq + 1, self.open.first_seq);
        }
        debug_assert!(self
            .sealed
            .iter()
            .zip(self.sealed.iter().skip(1))
            .all(|(a, b)| a.last_seq + 1 == b.first_seq));
        debug_assert_eq!(
            self.sealed_bytes,
            self.sealed.iter().map(|s| s.size_bytes).sum::<u64>()
        );
    }
}

/// A gap or overlap between two neighbouring segments is a hard error naming both: silently
/// skipping it would ship a history with a hole, breaking the prefix guarantee.
fn check_continuity(
    dir: &Path,
    previous: &SealedSegment,
    next_first_seq: u64,
    next_partial: bool,
) -> Result<(), JournalError> {
    let expected = previous.last_seq + 1;
    if next_first_seq == expected {
        return Ok(());
    }
    let previous_path = join(dir, &segment_file_name(previous.first_seq, false));
    let next_path = join(dir, &segment_file_name(next_first_seq, next_partial));
    if next_first_seq > expected {
        Err(JournalError::SequenceGap {
            previous: previous_path,
            previous_last_seq: previous.last_seq,
            next: next_path,
            next_first_seq,
        })
    } else {
        Err(JournalError::SequenceOverlap {
            previous: previous_path,
            previous_last_seq: previous.last_seq,
            next: next_path,
            next_first_seq,
        })
    }
}

/// Validate every record of a sealed segment. Sealed segments were fsynced before their
/// rename, so any defect is corruption, never a torn tail: report it, never truncate.
fn scan_sealed<F: JournalFs>(
    fs: &F,
    dir: &Path,
    group_id: GroupId,
    first_seq: u64,
) -> Result<SealedSegment, JournalError> {
    let path = join(dir, &segment_file_name(first_seq, false));
    let file = fs
        .open(&path)
        .map_err(JournalError::io("open journal segment", &path))?;
    check_segment_header(&file, &path, group_id, first_seq)?;
    let size_bytes = file
        .len_bytes()
        .map_err(JournalError::io("stat journal segment", &path))?;
    let mut scratch = Vec::new();
    let mut offset_bytes = SEGMENT_HEADER_SIZE_BYTES as u64;
    let mut seq_expected = first_seq;
    loop {
        let at = read_record_at(&file, offset_bytes, size_bytes, &mut scratch)
            .map_err(JournalError::io("read journal segment", &path))?;
        match at {
            RecordAt::End => break,
            RecordAt::Incomplete => {
                return Err(JournalError::TruncatedSealed { path, offset_bytes })
            }
            RecordAt::Corrupt(source) => {
                return Err(JournalError::CorruptRecord {
                    path,
                    offset_bytes,
                    source,
                })
            }
            RecordAt::Record { header, size_bytes } => {
                if header.seq != seq_expected {
                    let found = header.seq;
                    return Err(JournalError::RecordSequence {
                        path,
                        offset_bytes,
                        expected: seq_expected,
                        found,
                    });
                }
                seq_expected += 1;
                offset_bytes += size_bytes;
            }
        }
    }
    assert_eq!(offset_bytes, size_bytes);
    Ok(SealedSegment {
        first_seq,
        last_seq: seq_expected - 1,
        size_bytes,
    })
}

/// Recover the open segment: keep the longest valid prefix of records, truncate the rest.
///
/// Only unsynced bytes can be torn, and a sync covers every byte before it, so the first
/// incomplete or failing record marks the end of what was ever durable.
fn recover_partial<F: JournalFs>(
    fs: &F,
    dir: &Path,
    group_id: GroupId,
    first_seq: u64,
) -> Result<(OpenSegment<F::File>, u64), JournalError> {
    let path = join(dir, &segment_file_name(first_seq, true));
    let mut file = fs
        .open(&path)
        .map_err(JournalError::io("open journal segment", &path))?;
    let size_bytes = file
        .len_bytes()
        .map_err(JournalError::io("stat journal segment", &path))?;
    let mut header_bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    let filled = file
        .read_exact_or_eof(0, &mut header_bytes)
        .map_err(JournalError::io("read journal segment header", &path))?;
    if let Err(source) = SegmentHeader::decode(&header_bytes[..filled]) {
        if matches!(source, SegmentHeaderError::UnsupportedVersion { .. }) {
            return Err(JournalError::SegmentHeader { path, source });
        }
        // The header is the first thing written to the file and is synced by the first sync
        // that covers any record of it. A bad header with no valid record after it means no
        // sync ever completed on this file: start it afresh. A bad header in front of a valid
        // record is corruption of durable data and must not be papered over.
        let mut scratch = Vec::new();
        let first_record = if size_bytes >= SEGMENT_HEADER_SIZE_BYTES as u64 {
            read_record_at(
                &file,
                SEGMENT_HEADER_SIZE_BYTES as u64,
                size_bytes,
                &mut scratch,
            )
            .map_err(JournalError::io("read journal segment", &path))?
        } else {
            RecordAt::End
        };
        if matches!(first_record, RecordAt::Record { .. }) {
            return Err(JournalError::SegmentHeader { path, source });
        }
        file.set_len(0)
            .map_err(JournalError::io("truncate journal segment", &path))?;
        write_segment_header(&mut file, &path, group_id, first_seq)?;
        let written_bytes = SEGMENT_HEADER_SIZE_BYTES as u64;
        let open = OpenSegment {
            stale_tail: false,
            first_seq,
            path,
            file,
            writeback_from_bytes: written_bytes,
            written_bytes,
        };
        return Ok((open, first_seq - 1));
    }
    check_segment_header(&file, &path, group_id, first_seq)?;
    let mut scratch = Vec::new();
    let mut offset_bytes = SEGMENT_HEADER_SIZE_BYTES as u64;
    let mut seq_expected = first_seq;
    loop {
        let at = read_record_at(&file, offset_bytes, size_bytes, &mut scratch)
            .map_err(JournalError::io("read journal segment", &path))?;
        let (header, record_bytes) = match at {
            RecordAt::Record { header, size_bytes } => (header, size_bytes),
            RecordAt::End | RecordAt::Incomplete => break,
            // A checksummed header of a newer version is data this build cannot read, not a
            // torn write: truncating it would destroy records a newer build wrote.
            RecordAt::Corrupt(source @ DecodeError::UnsupportedVersion { .. }) => {
                return Err(JournalError::CorruptRecord {
                    path,
                    offset_bytes,
                    source,
                });
            }
            RecordAt::Corrupt(_) => break,
        };
        if header.seq < first_seq {
            // A record older than the segment itself: bytes of the file's earlier life as a
            // segment (it was recycled), past the end of this one's records.
            break;
        }
        if header.seq != seq_expected {
            // A checksummed record with the wrong seq is not a torn write: it is a bug or
            // tampering, and truncating would destroy evidence.
            let found = header.seq;
            return Err(JournalError::RecordSequence {
                path,
                offset_bytes,
                expected: seq_expected,
                found,
            });
        }
        seq_expected += 1;
        offset_bytes += record_bytes;
    }
    if offset_bytes < size_bytes {
        file.set_len(offset_bytes)
            .map_err(JournalError::io("truncate journal segment", &path))?;
        file.sync_data()
            .map_err(JournalError::io("sync journal segment", &path))?;
    }
    let open = OpenSegment {
        stale_tail: false,
        first_seq,
        path,
        file,
        writeback_from_bytes: offset_bytes,
        written_bytes: offset_bytes,
    };
    Ok((open, seq_expected - 1))
}

/// The byte offset just after record `seq` in a segment file.
fn record_end_bytes<File: SegmentFile>(
    file: &File,
    path: &Path,
    seq: u64,
) -> Result<u64, JournalError> {
    let size_bytes = file
        .len_bytes()
        .map_err(JournalError::io("stat journal segment", path))?;
    let mut scratch = Vec::new();
    let mut offset_bytes = SEGMENT_HEADER_SIZE_BYTES as u64;
    loop {
        let at = read_record_at(file, offset_bytes, size_bytes, &mut scratch)
            .map_err(JournalError::io("read journal segment", path))?;
        match at {
            RecordAt::Record { header, size_bytes } => {
                offset_bytes += size_bytes;
                if header.seq == seq {
                    return Ok(offset_bytes);
                }
            }
            RecordAt::End | RecordAt::Incomplete | RecordAt::Corrupt(_) => {
                return Err(JournalError::TruncatedSealed {
                    path: path.to_path_buf(),
                    offset_bytes,
                })
            }
        }
    }
}

fn create_partial<F: JournalFs>(
    fs: &F,
    dir: &Path,
    group_id: GroupId,
    first_seq: u64,
) -> Result<OpenSegment<F::File>, JournalError> {
    let path = join(dir, &segment_file_name(first_seq, true));
    let mut file = fs
        .create_new(&path)
        .map_err(JournalError::io("create journal segment", &path))?;
    write_segment_header(&mut file, &path, group_id, first_seq)?;
    Ok(OpenSegment {
        stale_tail: false,
        first_seq,
        path,
        file,
        writeback_from_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
        written_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
    })
}

/// A spare becomes the open segment `first_seq`: its new header is durable before the file
/// takes the segment's name, so recovery never meets a partial segment whose header belongs
/// to its earlier life. Stale records after the header are older than `first_seq`, which
/// recovery recognises as the end of the segment.
fn recycle_spare<F: JournalFs>(
    fs: &F,
    dir: &Path,
    spare_path: &Path,
    group_id: GroupId,
    first_seq: u64,
) -> Result<OpenSegment<F::File>, JournalError> {
    let mut file = fs
        .open(spare_path)
        .map_err(JournalError::io("open spare journal segment", spare_path))?;
    write_segment_header(&mut file, spare_path, group_id, first_seq)?;
    file.sync_data()
        .map_err(JournalError::io("sync spare journal segment", spare_path))?;
    let path = join(dir, &segment_file_name(first_seq, true));
    fs.rename(spare_path, &path).map_err(JournalError::io(
        "recycle spare journal segment",
        spare_path,
    ))?;
    Ok(OpenSegment {
        stale_tail: true,
        first_seq,
        path,
        file,
        writeback_from_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
        written_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
    })
}

/// The spares found on open: up to `keep` of them (the newest), the rest removed.
fn keep_spares<F: JournalFs>(
    fs: &F,
    dir: &Path,
    mut paths: Vec<PathBuf>,
    keep: u64,
) -> Result<Vec<Spare>, JournalError> {
    let surplus = paths
        .len()
        .saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    for path in paths.drain(..surplus) {
        fs.remove(&path)
            .map_err(JournalError::io("remove spare journal segment", &path))?;
    }
    if surplus > 0 {
        fs.sync_dir(dir)
            .map_err(JournalError::io("sync journal directory", dir))?;
    }
    paths
        .into_iter()
        .map(|path| {
            let size_bytes = fs
                .open(&path)
                .and_then(|file| file.len_bytes())
                .map_err(JournalError::io("stat spare journal segment", &path))?;
            Ok(Spare { path, size_bytes })
        })
        .collect()
}

fn write_segment_header<File: SegmentFile>(
    file: &mut File,
    path: &Path,
    group_id: GroupId,
    first_seq: u64,
) -> Result<(), JournalError> {
    let header = SegmentHeader {
        group_id,
        first_seq,
    }
    .encode();
    file.write_all_at(0, &header)
        .map_err(JournalError::io("write journal segment header", path))?;
    Ok(())
}
