//! The crate's one error type. Every variant means the connection must end: the codec never
//! guesses, skips or resynchronises inside a byte stream.

use redoubt_journal::DecodeError;

use crate::frame::FrameType;

/// Why bytes are not a valid frame, a frame is not acceptable at this point of a connection,
/// or a frame could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u16 },
    #[error("frame carries protocol version {found}, the connection negotiated {expected}")]
    VersionMismatch { expected: u16, found: u16 },
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType { frame_type: u8 },
    #[error("{frame_type:?} frame has unknown or disallowed flags {flags:#04x}")]
    BadFlags { frame_type: FrameType, flags: u8 },
    #[error("reserved bytes are not zero")]
    ReservedNonZero,
    #[error(
        "{frame_type:?} payload of {payload_bytes} bytes is outside the allowed \
         {payload_bytes_min}..={payload_bytes_max} bytes"
    )]
    PayloadLength {
        frame_type: FrameType,
        payload_bytes: u64,
        payload_bytes_min: u32,
        payload_bytes_max: u32,
    },
    #[error("frame payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("{frame_type:?} frame is malformed: {reason}")]
    Malformed {
        frame_type: FrameType,
        reason: &'static str,
    },
    #[error("field {field}: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    #[error("records batch of {bytes} bytes exceeds the cap of {bytes_max} bytes")]
    BatchTooLarge { bytes: u64, bytes_max: u32 },
    #[error("records batch holds no record")]
    BatchEmpty,
    #[error("record {index} of the batch does not decode: {source}")]
    BatchRecord {
        index: u32,
        #[source]
        source: DecodeError,
    },
    #[error("record {index} of the batch ends past the batch's {records_bytes} bytes")]
    BatchRecordTruncated { index: u32, records_bytes: u32 },
    #[error("record {index} of the batch has seq {found}, expected {expected}")]
    BatchSeq {
        index: u32,
        expected: u64,
        found: u64,
    },
    #[error("batch declares {declared} records, holds {found}")]
    BatchCount { declared: u32, found: u32 },
    #[error("zstd: {reason}")]
    Compression { reason: String },
    #[error("compressed batch decompresses to {actual} bytes, declared {declared}")]
    DecompressedLength { declared: u32, actual: u64 },
    #[error("frame seq {found} received, expected {expected} (replayed, reordered or dropped)")]
    FrameSeq { expected: u64, found: u64 },
    #[error("frame sequence number space exhausted")]
    FrameSeqExhausted,
    #[error("connection ended inside a frame: {buffered_bytes} bytes left over")]
    TruncatedFrame { buffered_bytes: usize },
    #[error("an earlier frame was rejected; the connection must be closed")]
    Poisoned,
    #[error("{frame_type:?} frame not expected {state}")]
    UnexpectedFrame {
        frame_type: FrameType,
        state: &'static str,
    },
    #[error("session: {reason} (got {found}, expected {expected})")]
    Session {
        reason: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("peer refused: {0}")]
    Refused(crate::frame::Refuse),
}
