//! `redoubt-journal`: the write-ordered redo (and undo) journal of a replication group.
//!
//! ```text
//!   NBD client ─▶ datatap ──append()──▶ Journal (one per RG, one global seq order)
//!                    │                    │  segments: 0000000000000001.seg
//!                    │   sync() = group   │            0000000000001a2b.seg
//!                    │   commit, acks     │            0000000000003c4d.seg.partial  ◀─ open
//!                    ▼   FLUSH            ▼
//!                  LV data            read_from(seq) ──▶ LCA ──TCP/TLS──▶ ABA ─▶ replica
//!                                     prune_through(shipped_seq)          (own Journal copy via
//!                                                                          append_replicated,
//!                                                                          undo records)
//! ```
//!
//! # Watermarks
//!
//! Like neon's `write_lsn >= flush_lsn`, the writer keeps three sequence watermarks, each the
//! last seq of a prefix:
//!
//! ```text
//!   appended_seq  >=  written_seq  >=  durable_seq  >=  first_seq - 1
//!   (in memory)       (in the OS)      (fdatasync'ed: survives a power cut)
//! ```
//!
//! Readers only see records `<= durable_seq`, so the LCA never ships a record that a power
//! cut could take back (a replica must stay a prefix of production's history).
//!
//! # Group commit
//!
//! The journal is synchronous (`std::fs`) and `Send`; an async server owns it on a dedicated
//! thread (or `spawn_blocking`) and loops: drain all queued writes, `append` each (getting its
//! seq), call `sync` once, then acknowledge every request whose seq `<= durable_seq`.
//!
//! # Architecture invariants
//!
//! - The journal knows nothing about NBD, TCP or TLS; it stores records and hands them back.
//! - Sequence numbers start at 1 (0 means "none"), strictly increase, and never skip, across
//!   segments and restarts. A gap or overlap found on disk is an error, never skipped.
//! - Everything a returned `sync` covered survives a crash; only the unsynced tail may go.
//! - All I/O goes through [`JournalFs`], so [`SimFs`] can cut power between any two calls.
//!
//! The on-disk format is described in `docs/journal-format.md`.

mod error;
mod fs;
mod journal;
mod reader;
mod record;
mod segment;
mod sim;

pub use error::JournalError;
pub use fs::{JournalFs, SegmentFile, StdFile, StdFs};
pub use journal::{
    Entry, Journal, JournalConfig, PreparedPrune, PreparedSync, PruneReport, SealedSegment,
    SEGMENT_SIZE_BYTES_DEFAULT, SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN,
    WRITE_BUFFER_BYTES_DEFAULT, WRITE_BUFFER_BYTES_MAX,
};
pub use reader::{read_directory, JournalReader, ReadPosition};
pub use record::{
    decode, decode_header, encode, encode_header, encoded_size_bytes, lv_id_for_name, DecodeError,
    InvalidRecord, OwnedRecord, Record, RecordHeader, RecordKind, ResyncTargets,
    MARKER_NAME_BYTES_MAX, RECORD_FORMAT_VERSION_CURRENT, RECORD_FORMAT_VERSION_MIN,
    RECORD_HEADER_SIZE_BYTES, RECORD_MAGIC, RECORD_PAYLOAD_BYTES_MAX, RECORD_SIZE_BYTES_MAX,
    RESYNC_BEGIN_MARKER, RESYNC_END_MARKER,
};
pub use segment::{
    parse_segment_file_name, segment_file_name, GroupId, SegmentHeader, SegmentHeaderError,
    PARTIAL_SUFFIX, SEGMENT_FORMAT_VERSION_CURRENT, SEGMENT_FORMAT_VERSION_MIN,
    SEGMENT_HEADER_SIZE_BYTES, SEGMENT_MAGIC, SEGMENT_SUFFIX,
};
pub use sim::{PowerCut, SimFile, SimFs, SimRng};

/// The journal and its reader move to the thread that drives them.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Journal<StdFs>>();
    assert_send::<Journal<SimFs>>();
    assert_send::<JournalReader<StdFs>>();
};
