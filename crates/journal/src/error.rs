//! The journal's error type. Callers match on `JournalFull` (fall back to the dirty bitmap),
//! `Poisoned` (reopen), and the sequence errors (protocol bugs or lost data); the rest carry
//! the path and byte position an operator needs.

use std::io;
use std::path::PathBuf;

use crate::record::{DecodeError, InvalidRecord};
use crate::segment::{GroupId, SegmentHeaderError};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O call failed; `action` says what we were doing, e.g. "sync journal segment".
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid journal config: {reason}")]
    Config { reason: String },
    #[error("invalid record")]
    InvalidRecord(#[from] InvalidRecord),
    /// Appending would exceed the container cap. Nothing was written; the caller should
    /// track the write in a dirty bitmap instead, and prune to make room.
    #[error(
        "journal full: {used_bytes} of {capacity_bytes} bytes used, record needs {record_bytes}"
    )]
    JournalFull {
        capacity_bytes: u64,
        used_bytes: u64,
        record_bytes: u64,
    },
    /// An earlier write or sync failed, so what is on disk is unknown (a failed fsync may have
    /// dropped dirty pages). The journal refuses all work until it is reopened and recovered.
    #[error("journal is poisoned by an earlier I/O failure; reopen it to recover")]
    Poisoned,
    #[error("read segment header of {}", path.display())]
    SegmentHeader {
        path: PathBuf,
        #[source]
        source: SegmentHeaderError,
    },
    #[error("segment {} belongs to group {found}, expected group {expected}", path.display())]
    GroupMismatch {
        path: PathBuf,
        expected: GroupId,
        found: GroupId,
    },
    #[error("segment {} header says first seq {header_seq}, its name says {name_seq}", path.display())]
    SegmentNameMismatch {
        path: PathBuf,
        name_seq: u64,
        header_seq: u64,
    },
    #[error("two open segments: {} and {}", first.display(), second.display())]
    MultiplePartial { first: PathBuf, second: PathBuf },
    #[error(
        "sequence gap: {} ends at seq {previous_last_seq} but {} starts at seq {next_first_seq}",
        previous.display(),
        next.display()
    )]
    SequenceGap {
        previous: PathBuf,
        previous_last_seq: u64,
        next: PathBuf,
        next_first_seq: u64,
    },
    #[error(
        "sequence overlap: {} ends at seq {previous_last_seq} but {} starts at seq {next_first_seq}",
        previous.display(),
        next.display()
    )]
    SequenceOverlap {
        previous: PathBuf,
        previous_last_seq: u64,
        next: PathBuf,
        next_first_seq: u64,
    },
    #[error("record at byte {offset_bytes} of {} has seq {found}, expected {expected}", path.display())]
    RecordSequence {
        path: PathBuf,
        offset_bytes: u64,
        expected: u64,
        found: u64,
    },
    #[error("corrupt record at byte {offset_bytes} of {}", path.display())]
    CorruptRecord {
        path: PathBuf,
        offset_bytes: u64,
        #[source]
        source: DecodeError,
    },
    #[error("sealed segment {} ends in an incomplete record at byte {offset_bytes}", path.display())]
    TruncatedSealed { path: PathBuf, offset_bytes: u64 },
    #[error("cannot keep the records through seq {seq} of the journal in {}: its first record is seq {first_seq}", dir.display())]
    TruncateBeforeFirst {
        dir: PathBuf,
        seq: u64,
        first_seq: u64,
    },
    /// `append_replicated` got a record that does not continue this journal's sequence.
    #[error("replicated record has seq {found}, expected {expected}")]
    SequenceMismatch { expected: u64, found: u64 },
    #[error("seq {requested} was pruned; the oldest available seq is {first_seq}")]
    SequencePruned { requested: u64, first_seq: u64 },
    #[error("seq {requested} is beyond the durable seq {durable_seq}")]
    SequenceNotDurable { requested: u64, durable_seq: u64 },
    #[error("records {seq_next}..={seq_last} are missing from the journal")]
    RecordsMissing { seq_next: u64, seq_last: u64 },
}

impl JournalError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| JournalError::Io {
            action,
            path,
            source,
        }
    }
}
