//! Frame header and the control frames; the frame-level `encode_frame` / `decode_frame`.

use redoubt_journal::GroupId;

use crate::error::WireError;
use crate::records::{RecordsBatch, RECORDS_PREFIX_BYTES};

/// "RDWF" little-endian: starts every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RDWF");
/// The oldest protocol version this build speaks. Handshake frames always carry it.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION_CURRENT: u16 = 1;
/// Size of the fixed frame header.
pub const FRAME_HEADER_SIZE_BYTES: usize = 32;
/// Largest uncompressed record bytes of one `Records` batch (and largest compressed body).
pub const BATCH_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Largest frame payload of any type (a `Records` frame at the batch cap).
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = RECORDS_PREFIX_BYTES as u32 + BATCH_BYTES_MAX;
/// Largest group or server name, bytes of UTF-8 (names are 1..=this).
pub const NAME_BYTES_MAX: usize = 255;
/// Largest human-readable message in `Refuse` and `Goodbye`, bytes of UTF-8.
pub const MESSAGE_BYTES_MAX: usize = 1024;
/// Header flag: the `Records` body is one zstd frame. Not allowed on any other type.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// `Welcome` flag: the recovery server needs a full resync (super transaction).
pub const WELCOME_FLAG_NEEDS_FULL_RESYNC: u32 = 0x0000_0001;

const OFFSET_MAGIC: usize = 0;
const OFFSET_VERSION: usize = 4;
const OFFSET_TYPE: usize = 6;
const OFFSET_FLAGS: usize = 7;
const OFFSET_FRAME_SEQ: usize = 8;
const OFFSET_PAYLOAD_LENGTH: usize = 16;
const OFFSET_PAYLOAD_CRC: usize = 20;
const OFFSET_RESERVED: usize = 24;
const OFFSET_HEADER_CRC: usize = 28;
const _: () = assert!(OFFSET_HEADER_CRC + 4 == FRAME_HEADER_SIZE_BYTES);
const _: () = assert!(OFFSET_RESERVED + 4 == OFFSET_HEADER_CRC);

const HELLO_FIXED_BYTES: usize = 44;
const HELLO_BYTES_MAX: usize = HELLO_FIXED_BYTES + 3 * (1 + NAME_BYTES_MAX);
const WELCOME_BYTES: usize = 24;
const MESSAGE_FRAME_BYTES_MAX: usize = 4 + MESSAGE_BYTES_MAX;
const ACK_BYTES: usize = 24;
const HEARTBEAT_BYTES: usize = 16;

/// The frame type byte. Values are on the wire; never reuse a retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Welcome = 2,
    Refuse = 3,
    Records = 4,
    Ack = 5,
    Heartbeat = 6,
    Goodbye = 7,
}

impl FrameType {
    pub fn from_u8(value: u8) -> Option<FrameType> {
        Some(match value {
            1 => FrameType::Hello,
            2 => FrameType::Welcome,
            3 => FrameType::Refuse,
            4 => FrameType::Records,
            5 => FrameType::Ack,
            6 => FrameType::Heartbeat,
            7 => FrameType::Goodbye,
            _ => return None,
        })
    }

    /// Allowed payload sizes, known from the header alone (checked before buffering).
    pub fn payload_bytes_range(self) -> (u32, u32) {
        let (min, max) = match self {
            FrameType::Hello => (HELLO_FIXED_BYTES + 3 * 2, HELLO_BYTES_MAX),
            FrameType::Welcome => (WELCOME_BYTES, WELCOME_BYTES),
            FrameType::Refuse | FrameType::Goodbye => (4, MESSAGE_FRAME_BYTES_MAX),
            FrameType::Records => (RECORDS_PREFIX_BYTES + 1, FRAME_PAYLOAD_BYTES_MAX as usize),
            FrameType::Ack => (ACK_BYTES, ACK_BYTES),
            FrameType::Heartbeat => (HEARTBEAT_BYTES, HEARTBEAT_BYTES),
        };
        // All bounds are small constants (<= FRAME_PAYLOAD_BYTES_MAX), so they fit a u32.
        (min as u32, max as u32)
    }

    /// Hello, Welcome and Refuse: their layout is frozen and they always carry
    /// [`PROTOCOL_VERSION_MIN`], so peers of any version can read them.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            FrameType::Hello | FrameType::Welcome | FrameType::Refuse
        )
    }

    fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Records => FLAG_COMPRESSED,
            _ => 0,
        }
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub frame_type: FrameType,
    pub flags: u8,
    /// Per connection and direction: 1, 2, 3, ... (see [`crate::FrameReceiver`]).
    pub frame_seq: u64,
    pub payload_length: u32,
    pub payload_crc32c: u32,
}

/// A journal position: the records `first_seq..=last_seq` are available.
/// Empty when `first_seq == last_seq + 1` (a fresh journal starts at `first_seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPosition {
    pub first_seq: u64,
    pub last_seq: u64,
}

impl JournalPosition {
    /// An empty journal whose next record will get `next_seq`.
    pub fn empty(next_seq: u64) -> JournalPosition {
        JournalPosition {
            first_seq: next_seq,
            last_seq: next_seq.saturating_sub(1),
        }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        if self.first_seq == 0 {
            return Err(invalid("journal_first_seq", "seq 0 means no record"));
        }
        if self.last_seq == u64::MAX || self.first_seq > self.last_seq + 1 {
            return Err(invalid(
                "journal_last_seq",
                "must be >= first_seq - 1 and < u64::MAX",
            ));
        }
        Ok(())
    }

    /// Whether the next record after `resume_after_seq` can be read from this journal:
    /// `first_seq <= resume_after_seq + 1 <= last_seq + 1`.
    pub fn can_resume_after(&self, resume_after_seq: u64) -> bool {
        resume_after_seq
            .checked_add(1)
            .is_some_and(|next| self.first_seq <= next && next <= self.last_seq.saturating_add(1))
    }
}

/// LCA → ABA, first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    pub group_id: GroupId,
    pub config_version: u64,
    pub journal: JournalPosition,
    pub group_name: String,
    pub sender_name: String,
    pub target_name: String,
}

/// ABA → LCA: the handshake succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides use from the next frame on.
    pub version: u16,
    /// Last seq the ABA holds durably (0 = none); the LCA sends from `resume_after_seq + 1`.
    pub resume_after_seq: u64,
    pub config_version: u64,
    /// `WELCOME_FLAG_*` bits.
    pub flags: u32,
}

impl Welcome {
    pub fn needs_full_resync(&self) -> bool {
        self.flags & WELCOME_FLAG_NEEDS_FULL_RESYNC != 0
    }
}

/// Why an ABA refuses a Hello. Values are on the wire; never reuse a retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RefuseCode {
    /// No common protocol version.
    VersionUnsupported = 1,
    /// Group id or group name is not the one this ABA serves.
    WrongGroup = 2,
    /// The Hello is addressed to another server.
    WrongTarget = 3,
    /// The two servers run different configuration versions: run configuration initialization.
    ConfigVersionMismatch = 4,
    /// The record after the ABA's durable seq is no longer in the sender's journal: resync.
    ResumeNotAvailable = 5,
    /// The ABA holds records the sender's journal never had: histories diverged, resync.
    ReplicaAhead = 6,
    /// Another LCA connection for this group is active.
    Busy = 7,
    /// The sender is not the server this replica follows (an old production after a
    /// failover, or a Hello naming another sender than its certificate): `redoubt failback`.
    NotProduction = 8,
}

impl RefuseCode {
    pub fn from_u16(value: u16) -> Option<RefuseCode> {
        Some(match value {
            1 => RefuseCode::VersionUnsupported,
            2 => RefuseCode::WrongGroup,
            3 => RefuseCode::WrongTarget,
            4 => RefuseCode::ConfigVersionMismatch,
            5 => RefuseCode::ResumeNotAvailable,
            6 => RefuseCode::ReplicaAhead,
            7 => RefuseCode::Busy,
            8 => RefuseCode::NotProduction,
            _ => return None,
        })
    }

    /// Whether only a resync (super transaction) can get the group replicating again.
    pub fn needs_resync(self) -> bool {
        matches!(
            self,
            RefuseCode::ResumeNotAvailable | RefuseCode::ReplicaAhead
        )
    }
}

/// ABA → LCA: the handshake failed; the ABA closes the connection after sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    pub code: RefuseCode,
    pub message: String,
}

impl std::fmt::Display for Refuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// ABA → LCA: progress of the recovery server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Last seq stored durably in the ABA's journal copy (sync mode waits on this).
    pub durable_seq: u64,
    /// Last seq applied to the replica; never above `durable_seq`.
    pub applied_seq: u64,
    /// Bytes received but not yet applied (the target backlog).
    pub backlog_bytes: u64,
}

/// Both ways: liveness, and the sender's view of its durable seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub now_ns: u64,
    pub durable_seq: u64,
}

/// Why a side ends the connection. Values are on the wire; never reuse a retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum GoodbyeReason {
    Shutdown = 1,
    ConfigurationChange = 2,
    RoleChange = 3,
    ProtocolError = 4,
}

impl GoodbyeReason {
    pub fn from_u16(value: u16) -> Option<GoodbyeReason> {
        Some(match value {
            1 => GoodbyeReason::Shutdown,
            2 => GoodbyeReason::ConfigurationChange,
            3 => GoodbyeReason::RoleChange,
            4 => GoodbyeReason::ProtocolError,
            _ => return None,
        })
    }
}

/// Both ways: the sender closes the connection after this frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    pub reason: GoodbyeReason,
    pub message: String,
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Refuse(Refuse),
    Records(RecordsBatch),
    Ack(Ack),
    Heartbeat(Heartbeat),
    Goodbye(Goodbye),
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Refuse(_) => FrameType::Refuse,
            Frame::Records(_) => FrameType::Records,
            Frame::Ack(_) => FrameType::Ack,
            Frame::Heartbeat(_) => FrameType::Heartbeat,
            Frame::Goodbye(_) => FrameType::Goodbye,
        }
    }
}

pub(crate) fn invalid(field: &'static str, reason: &'static str) -> WireError {
    WireError::InvalidField { field, reason }
}

/// Append one frame to `out`. On error nothing is appended.
pub fn encode_frame(
    frame: &Frame,
    version: u16,
    frame_seq: u64,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_CURRENT).contains(&version) {
        return Err(WireError::UnsupportedVersion { version });
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_SIZE_BYTES]);
    let flags = match encode_payload(frame, out) {
        Ok(flags) => flags,
        Err(error) => {
            out.truncate(start);
            return Err(error);
        }
    };
    let payload = &out[start + FRAME_HEADER_SIZE_BYTES..];
    let frame_type = frame.frame_type();
    let (min, max) = frame_type.payload_bytes_range();
    let payload_length = match u32::try_from(payload.len()) {
        Ok(length) if (min..=max).contains(&length) => length,
        _ => {
            let payload_bytes = payload.len() as u64;
            out.truncate(start);
            return Err(WireError::PayloadLength {
                frame_type,
                payload_bytes,
                payload_bytes_min: min,
                payload_bytes_max: max,
            });
        }
    };
    let payload_crc = crc32c::crc32c(payload);
    let mut header = [0u8; FRAME_HEADER_SIZE_BYTES];
    put_u32(&mut header, OFFSET_MAGIC, FRAME_MAGIC);
    put_u16(&mut header, OFFSET_VERSION, version);
    header[OFFSET_TYPE] = frame_type as u8;
    header[OFFSET_FLAGS] = flags;
    put_u64(&mut header, OFFSET_FRAME_SEQ, frame_seq);
    put_u32(&mut header, OFFSET_PAYLOAD_LENGTH, payload_length);
    put_u32(&mut header, OFFSET_PAYLOAD_CRC, payload_crc);
    let header_crc = crc32c::crc32c(&header);
    put_u32(&mut header, OFFSET_HEADER_CRC, header_crc);
    out[start..start + FRAME_HEADER_SIZE_BYTES].copy_from_slice(&header);
    Ok(())
}

/// Returns the header flags.
fn encode_payload(frame: &Frame, out: &mut Vec<u8>) -> Result<u8, WireError> {
    match frame {
        Frame::Hello(hello) => {
            validate_versions(hello.version_min, hello.version_max)?;
            hello.journal.validate()?;
            out.extend_from_slice(&hello.version_min.to_le_bytes());
            out.extend_from_slice(&hello.version_max.to_le_bytes());
            out.extend_from_slice(&hello.group_id.0);
            out.extend_from_slice(&hello.config_version.to_le_bytes());
            out.extend_from_slice(&hello.journal.first_seq.to_le_bytes());
            out.extend_from_slice(&hello.journal.last_seq.to_le_bytes());
            put_name(out, "group_name", &hello.group_name)?;
            put_name(out, "sender_name", &hello.sender_name)?;
            put_name(out, "target_name", &hello.target_name)?;
        }
        Frame::Welcome(welcome) => {
            validate_welcome(welcome)?;
            out.extend_from_slice(&welcome.version.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&welcome.flags.to_le_bytes());
            out.extend_from_slice(&welcome.resume_after_seq.to_le_bytes());
            out.extend_from_slice(&welcome.config_version.to_le_bytes());
        }
        Frame::Refuse(refuse) => {
            out.extend_from_slice(&(refuse.code as u16).to_le_bytes());
            put_message(out, &refuse.message)?;
        }
        Frame::Records(batch) => return batch.encode_body(out),
        Frame::Ack(ack) => {
            validate_ack(ack)?;
            out.extend_from_slice(&ack.durable_seq.to_le_bytes());
            out.extend_from_slice(&ack.applied_seq.to_le_bytes());
            out.extend_from_slice(&ack.backlog_bytes.to_le_bytes());
        }
        Frame::Heartbeat(heartbeat) => {
            out.extend_from_slice(&heartbeat.now_ns.to_le_bytes());
            out.extend_from_slice(&heartbeat.durable_seq.to_le_bytes());
        }
        Frame::Goodbye(goodbye) => {
            out.extend_from_slice(&(goodbye.reason as u16).to_le_bytes());
            put_message(out, &goodbye.message)?;
        }
    }
    Ok(0)
}

fn validate_versions(min: u16, max: u16) -> Result<(), WireError> {
    if min == 0 || min > max {
        return Err(invalid("version_min", "must be >= 1 and <= version_max"));
    }
    Ok(())
}

fn validate_welcome(welcome: &Welcome) -> Result<(), WireError> {
    if welcome.version == 0 {
        return Err(invalid("version", "must be >= 1"));
    }
    if welcome.flags & !WELCOME_FLAG_NEEDS_FULL_RESYNC != 0 {
        return Err(invalid("welcome_flags", "unknown flag bits"));
    }
    Ok(())
}

fn validate_ack(ack: &Ack) -> Result<(), WireError> {
    if ack.applied_seq > ack.durable_seq {
        return Err(invalid("applied_seq", "must not exceed durable_seq"));
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, field: &'static str, name: &str) -> Result<(), WireError> {
    match u8::try_from(name.len()) {
        Ok(length) if length > 0 => {
            out.push(length);
            out.extend_from_slice(name.as_bytes());
            Ok(())
        }
        _ => Err(invalid(field, "names are 1..=255 bytes of UTF-8")),
    }
}

fn put_message(out: &mut Vec<u8>, message: &str) -> Result<(), WireError> {
    match u16::try_from(message.len()) {
        Ok(length) if message.len() <= MESSAGE_BYTES_MAX => {
            out.extend_from_slice(&length.to_le_bytes());
            out.extend_from_slice(message.as_bytes());
            Ok(())
        }
        _ => Err(invalid(
            "message",
            "messages are at most 1024 bytes of UTF-8",
        )),
    }
}

/// Decode and check the fixed header, including the payload length against the type's
/// limits. `Ok(None)`: fewer than [`FRAME_HEADER_SIZE_BYTES`] bytes and no contradiction yet.
pub fn decode_frame_header(bytes: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    if let Some(magic) = bytes.get(..4) {
        let found = get_u32(magic, 0);
        if found != FRAME_MAGIC {
            return Err(WireError::BadMagic { found });
        }
    }
    let Some(raw) = bytes.get(..FRAME_HEADER_SIZE_BYTES) else {
        return Ok(None);
    };
    let mut zeroed = [0u8; FRAME_HEADER_SIZE_BYTES];
    zeroed.copy_from_slice(raw);
    put_u32(&mut zeroed, OFFSET_HEADER_CRC, 0);
    let stored = get_u32(raw, OFFSET_HEADER_CRC);
    let computed = crc32c::crc32c(&zeroed);
    // Before trusting any field: a flipped length is corruption, not "need more bytes".
    if stored != computed {
        return Err(WireError::HeaderChecksum { stored, computed });
    }
    let version = get_u16(raw, OFFSET_VERSION);
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_CURRENT).contains(&version) {
        return Err(WireError::UnsupportedVersion { version });
    }
    let type_byte = raw[OFFSET_TYPE];
    let frame_type = FrameType::from_u8(type_byte).ok_or(WireError::UnknownFrameType {
        frame_type: type_byte,
    })?;
    let flags = raw[OFFSET_FLAGS];
    if flags & !frame_type.allowed_flags() != 0 {
        return Err(WireError::BadFlags { frame_type, flags });
    }
    if get_u32(raw, OFFSET_RESERVED) != 0 {
        return Err(WireError::ReservedNonZero);
    }
    let payload_length = get_u32(raw, OFFSET_PAYLOAD_LENGTH);
    let (min, max) = frame_type.payload_bytes_range();
    if !(min..=max).contains(&payload_length) {
        return Err(WireError::PayloadLength {
            frame_type,
            payload_bytes: u64::from(payload_length),
            payload_bytes_min: min,
            payload_bytes_max: max,
        });
    }
    Ok(Some(FrameHeader {
        version,
        frame_type,
        flags,
        frame_seq: get_u64(raw, OFFSET_FRAME_SEQ),
        payload_length,
        payload_crc32c: get_u32(raw, OFFSET_PAYLOAD_CRC),
    }))
}

/// Decode one frame from the start of `bytes`.
///
/// - `Ok(Some((header, frame, consumed)))`: a complete, checksummed, valid frame.
/// - `Ok(None)`: `bytes` is a strict prefix of a frame that may still be valid.
/// - `Err(_)`: corrupt, hostile or unsupported; more bytes would not help.
///
/// This checks one frame in isolation; [`crate::FrameReceiver`] adds the frame sequence and
/// version checks of a connection.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(FrameHeader, Frame, usize)>, WireError> {
    let Some(header) = decode_frame_header(bytes)? else {
        return Ok(None);
    };
    let consumed = FRAME_HEADER_SIZE_BYTES + header.payload_length as usize;
    let Some(payload) = bytes.get(FRAME_HEADER_SIZE_BYTES..consumed) else {
        return Ok(None);
    };
    let computed = crc32c::crc32c(payload);
    if computed != header.payload_crc32c {
        return Err(WireError::PayloadChecksum {
            stored: header.payload_crc32c,
            computed,
        });
    }
    let frame = decode_payload(&header, payload)?;
    Ok(Some((header, frame, consumed)))
}

fn decode_payload(header: &FrameHeader, payload: &[u8]) -> Result<Frame, WireError> {
    let frame_type = header.frame_type;
    let mut reader = Reader {
        bytes: payload,
        frame_type,
    };
    let frame = match frame_type {
        FrameType::Hello => {
            let version_min = reader.u16()?;
            let version_max = reader.u16()?;
            validate_versions(version_min, version_max)?;
            let group_id = GroupId(reader.array::<16>()?);
            let config_version = reader.u64()?;
            let journal = JournalPosition {
                first_seq: reader.u64()?,
                last_seq: reader.u64()?,
            };
            journal.validate()?;
            Frame::Hello(Hello {
                version_min,
                version_max,
                group_id,
                config_version,
                journal,
                group_name: reader.name("group_name")?,
                sender_name: reader.name("sender_name")?,
                target_name: reader.name("target_name")?,
            })
        }
        FrameType::Welcome => {
            let version = reader.u16()?;
            if reader.u16()? != 0 {
                return Err(WireError::ReservedNonZero);
            }
            let flags = reader.u32()?;
            let welcome = Welcome {
                version,
                flags,
                resume_after_seq: reader.u64()?,
                config_version: reader.u64()?,
            };
            validate_welcome(&welcome)?;
            Frame::Welcome(welcome)
        }
        FrameType::Refuse => {
            let raw = reader.u16()?;
            let code = RefuseCode::from_u16(raw).ok_or(WireError::Malformed {
                frame_type,
                reason: "unknown refuse code",
            })?;
            Frame::Refuse(Refuse {
                code,
                message: reader.message()?,
            })
        }
        FrameType::Records => {
            let batch = RecordsBatch::decode_body(header.flags, payload)?;
            reader.bytes = &[];
            Frame::Records(batch)
        }
        FrameType::Ack => {
            let ack = Ack {
                durable_seq: reader.u64()?,
                applied_seq: reader.u64()?,
                backlog_bytes: reader.u64()?,
            };
            validate_ack(&ack)?;
            Frame::Ack(ack)
        }
        FrameType::Heartbeat => Frame::Heartbeat(Heartbeat {
            now_ns: reader.u64()?,
            durable_seq: reader.u64()?,
        }),
        FrameType::Goodbye => {
            let raw = reader.u16()?;
            let reason = GoodbyeReason::from_u16(raw).ok_or(WireError::Malformed {
                frame_type,
                reason: "unknown goodbye reason",
            })?;
            Frame::Goodbye(Goodbye {
                reason,
                message: reader.message()?,
            })
        }
    };
    if !reader.bytes.is_empty() {
        return Err(WireError::Malformed {
            frame_type,
            reason: "trailing bytes after the payload",
        });
    }
    Ok(frame)
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    frame_type: FrameType,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError::Malformed {
                frame_type: self.frame_type,
                reason: "payload ends inside a field",
            });
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut raw = [0u8; N];
        raw.copy_from_slice(self.take(N)?);
        Ok(raw)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    fn utf8(&mut self, field: &'static str, length: usize) -> Result<String, WireError> {
        let raw = self.take(length)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| invalid(field, "not UTF-8"))
    }

    fn name(&mut self, field: &'static str) -> Result<String, WireError> {
        let [length] = self.array::<1>()?;
        if length == 0 {
            return Err(invalid(field, "names are 1..=255 bytes of UTF-8"));
        }
        self.utf8(field, usize::from(length))
    }

    fn message(&mut self) -> Result<String, WireError> {
        let length = usize::from(self.u16()?);
        if length > MESSAGE_BYTES_MAX {
            return Err(invalid(
                "message",
                "messages are at most 1024 bytes of UTF-8",
            ));
        }
        self.utf8("message", length)
    }
}

pub(crate) fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

// Callers pass slices already checked to hold the field; a violation is a programmer error.
pub(crate) fn get_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(raw)
}

pub(crate) fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}
