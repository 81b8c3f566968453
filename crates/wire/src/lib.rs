//! `redoubt-wire`: the sans-IO replication protocol between the LCA (send process, on
//! production) and the ABA (apply process, on a recovery server).
//!
//! No sockets and no async: decoders take `&[u8]` and return `Ok(Some((frame, consumed)))`,
//! `Ok(None)` (a strict prefix of a possibly valid frame: read more) or `Err(WireError)`
//! (close the connection); encoders append to a `Vec<u8>`. One TCP (later TLS) connection per
//! target; each direction is a sequence of frames.
//!
//! ```text
//!   LCA                                              ABA
//!   Hello ─────────────────────────────────────────▶ check group, target, config, position
//!        ◀──────────────────────────────── Welcome { version, resume_after_seq, ... }
//!        ◀──────────────────────────────── or Refuse { code, message }, then close
//!   Records { first_seq = resume_after_seq + 1 } ──▶ store durably, apply in order
//!   Records { first_seq = previous last + 1 } ─────▶
//!        ◀──────────────────────────────── Ack { durable_seq, applied_seq, backlog }
//!   Heartbeat ◀──────────────────────────────────▶ Heartbeat
//!   Goodbye { reason } ──────────────────────────▶ (either side), then close
//! ```
//!
//! All integers are little-endian. Checksums are CRC32C (Castagnoli).
//!
//! # Frame header (32 bytes)
//!
//! | offset | size | field | value |
//! |---:|---:|---|---|
//! | 0 | 4 | magic | `RDWF` (ASCII) |
//! | 4 | 2 | version | protocol version; handshake frames always 1 ([`PROTOCOL_VERSION_MIN`]) |
//! | 6 | 1 | frame_type | 1 Hello, 2 Welcome, 3 Refuse, 4 Records, 5 Ack, 6 Heartbeat, 7 Goodbye |
//! | 7 | 1 | flags | bit 0 = compressed (Records only); other bits 0 |
//! | 8 | 8 | frame_seq | per connection and direction: 1, 2, 3, ... |
//! | 16 | 4 | payload_length | checked against the type's limits before buffering |
//! | 20 | 4 | payload_crc32c | CRC32C of the payload |
//! | 24 | 4 | reserved | 0 |
//! | 28 | 4 | header_crc32c | CRC32C of bytes 0..32 with this field zeroed |
//!
//! Decoding order: magic (as soon as 4 bytes are there), header CRC (before trusting any
//! field, so a flipped length is corruption, not "need more bytes"), version, type, flags,
//! reserved, payload length against the type's range, then wait for the payload, payload
//! CRC, payload fields. Because the header and payload are each checksummed, a frame with any
//! byte changed is an error, never a different valid frame.
//!
//! # Payloads
//!
//! Names (`name`) are a u8 length 1..=255 ([`NAME_BYTES_MAX`]) then UTF-8. Messages are a
//! u16 length 0..=1024 ([`MESSAGE_BYTES_MAX`]) then UTF-8. Fixed-size payloads must have
//! exactly their size; any payload with trailing bytes is an error.
//!
//! **Hello** (1, LCA → ABA), 50..=812 bytes
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | version_min (>= 1) |
//! | 2 | 2 | version_max (>= version_min) |
//! | 4 | 16 | group_id |
//! | 20 | 8 | config_version |
//! | 28 | 8 | journal_first_seq (>= 1) |
//! | 36 | 8 | journal_last_seq (>= first - 1; empty journal when first == last + 1) |
//! | 44 | 1+n | group_name |
//! | .. | 1+n | sender_name (the production server) |
//! | .. | 1+n | target_name (the recovery server addressed) |
//!
//! **Welcome** (2, ABA → LCA), 24 bytes
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | version (chosen, used by every later frame) |
//! | 2 | 2 | reserved, 0 |
//! | 4 | 4 | flags: bit 0 needs_full_resync; other bits 0 |
//! | 8 | 8 | resume_after_seq: the last seq the ABA holds durably (0 = none) |
//! | 16 | 8 | config_version |
//!
//! The LCA sends from `resume_after_seq + 1`: never from zero, never skipping.
//!
//! **Refuse** (3, ABA → LCA), 4..=1028 bytes: code u16 ([`RefuseCode`]: 1 version
//! unsupported, 2 wrong group, 3 wrong target, 4 config version mismatch, 5 resume position
//! not available (resync), 6 replica ahead (resync), 7 busy), then a message.
//!
//! **Records** (4, LCA → ABA), 17..=16 + 64 MiB bytes
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | first_seq (>= 1) |
//! | 8 | 4 | record_count (>= 1, record_count * 64 <= records_bytes) |
//! | 12 | 4 | records_bytes: uncompressed size, <= [`BATCH_BYTES_MAX`] (64 MiB) |
//! | 16 | .. | body: the records as the journal encodes them, or (flag bit 0) one zstd frame |
//!
//! Uncompressed, the body is exactly `records_bytes`. Compressed, the body decompresses into
//! a buffer of exactly `records_bytes` (allocated only after the prefix checks): output past
//! it fails, a shorter output fails (zip-bomb safe). Then every record must decode with the
//! journal codec (CRCs and validity), seqs must be `first_seq, first_seq + 1, ...`, and the
//! count must match, with no bytes left over.
//!
//! **Ack** (5, ABA → LCA), 24 bytes: durable_seq u64 (stored durably in the ABA's journal
//! copy; sync mode waits on it), applied_seq u64 (<= durable_seq), backlog_bytes u64.
//!
//! **Heartbeat** (6, both ways), 16 bytes: now_ns u64, durable_seq u64.
//!
//! **Goodbye** (7, both ways), 4..=1028 bytes: reason u16 ([`GoodbyeReason`]: 1 shutdown,
//! 2 configuration change, 3 role change, 4 protocol error), then a message.
//!
//! # Sequencing, versions, truncation
//!
//! [`FrameSequencer`] numbers outgoing frames; [`FrameReceiver`] accepts only the exact next
//! `frame_seq`, so a replayed, reordered, dropped or injected frame is an error (TLS protects
//! across connections). Before the handshake completes every frame carries version 1;
//! afterwards non-handshake frames must carry the negotiated version. A frame cut short is
//! `Ok(None)` until the peer closes; then [`FrameReceiver::at_eof`] / [`finish`] turn
//! leftover bytes into [`WireError::TruncatedFrame`]. After any error the receiver stays
//! poisoned.
//!
//! # Compatibility
//!
//! Never reuse a frame type, flag, refuse code or goodbye reason value. A payload layout
//! change bumps [`PROTOCOL_VERSION_CURRENT`]; the handshake frames' layout is frozen.
//!
//! # Sessions
//!
//! [`SenderSession`] and [`ReceiverSession`] are the I/O-free state machines of each side:
//! handshake checks, where to resume, exact continuation of batches, the in-flight byte cap
//! and acknowledged positions.

mod error;
mod frame;
mod records;
mod session;
mod stream;

pub use error::WireError;
pub use frame::{
    decode_frame, decode_frame_header, encode_frame, Ack, Frame, FrameHeader, FrameType, Goodbye,
    GoodbyeReason, Heartbeat, Hello, JournalPosition, Refuse, RefuseCode, Welcome, BATCH_BYTES_MAX,
    FLAG_COMPRESSED, FRAME_HEADER_SIZE_BYTES, FRAME_MAGIC, FRAME_PAYLOAD_BYTES_MAX,
    MESSAGE_BYTES_MAX, NAME_BYTES_MAX, PROTOCOL_VERSION_CURRENT, PROTOCOL_VERSION_MIN,
    WELCOME_FLAG_NEEDS_FULL_RESYNC,
};
pub use records::{
    BatchCompressor, BatchPush, RecordsBatch, RecordsBatchBuilder, COMPRESSION_SAMPLE_BYTES,
    RECORDS_PREFIX_BYTES,
};
pub use session::{
    Backlog, HelloReply, ReceiverConfig, ReceiverSession, SenderConfig, SenderSession, Start,
    IN_FLIGHT_BYTES_MAX_DEFAULT,
};
pub use stream::{finish, FrameReceiver, FrameSequencer, FRAME_SEQ_FIRST};
