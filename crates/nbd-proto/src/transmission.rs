//! Transmission phase: requests in, simple and structured replies out.
//!
//! Two ways to read a request, pick per connection:
//!
//! * [`decode_request_header`] returns the 28-byte header alone. For `NBD_CMD_WRITE` the caller
//!   then reads exactly [`RequestHeader::payload_length_bytes`] bytes into a buffer of its own
//!   (e.g. a pooled, aligned buffer that goes straight to the journal) — no copy here.
//! * [`decode_request`] waits until header *and* payload are buffered and returns the payload
//!   as a slice of the input.
//!
//! Both reject a write payload above `REQUEST_PAYLOAD_BYTES_MAX` from the header alone.

use crate::error::ProtocolError;
use crate::flags::{CommandFlags, ReplyFlags};
use crate::limits::{REQUEST_PAYLOAD_BYTES_MAX, STRING_LENGTH_BYTES_MAX};
use crate::wire::{self, put_u16, put_u32, put_u64, Cursor};

/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Magic (4) + flags (2) + type (2) + handle (8) + offset (8) + length (4).
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Magic (4) + error (4) + handle (8).
pub const SIMPLE_REPLY_HEADER_BYTES: usize = 16;
/// Magic (4) + flags (2) + type (2) + handle (8) + length (4).
pub const STRUCTURED_REPLY_HEADER_BYTES: usize = 20;

/// Command types (`NBD_CMD_*`).
pub mod command_code {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_CACHE` (decoded as `Unknown`).
    pub const CACHE: u16 = 5;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
    /// `NBD_CMD_BLOCK_STATUS` (decoded as `Unknown`).
    pub const BLOCK_STATUS: u16 = 7;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
pub mod chunk_type {
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`: the only command followed by a payload.
    Write,
    /// `NBD_CMD_DISC`: no reply; finish in-flight requests and close.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// Any other type: reply `EINVAL` and keep serving (spec: SHOULD return EINVAL).
    Unknown(u16),
}

impl Command {
    /// Maps a wire type to a command.
    pub fn from_code(code: u16) -> Self {
        match code {
            command_code::READ => Command::Read,
            command_code::WRITE => Command::Write,
            command_code::DISC => Command::Disc,
            command_code::FLUSH => Command::Flush,
            command_code::TRIM => Command::Trim,
            command_code::WRITE_ZEROES => Command::WriteZeroes,
            other => Command::Unknown(other),
        }
    }

    /// The wire type.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => command_code::READ,
            Command::Write => command_code::WRITE,
            Command::Disc => command_code::DISC,
            Command::Flush => command_code::FLUSH,
            Command::Trim => command_code::TRIM,
            Command::WriteZeroes => command_code::WRITE_ZEROES,
            Command::Unknown(code) => code,
        }
    }

    /// True for commands that change export contents (refused on read-only exports).
    pub fn is_mutation(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Command flags as sent (unknown bits kept; see `validate`).
    pub flags: CommandFlags,
    /// The command.
    pub command: Command,
    /// Opaque cookie echoed in every reply.
    pub handle: u64,
    /// Byte offset into the export.
    pub offset_bytes: u64,
    /// Byte length of the operation.
    pub length_bytes: u32,
}

impl RequestHeader {
    /// Bytes of payload that follow this header on the stream: `length_bytes` for a write,
    /// zero for everything else (including unknown commands).
    pub fn payload_length_bytes(&self) -> usize {
        match self.command {
            Command::Write => self.length_bytes as usize,
            _ => 0,
        }
    }
}

/// A request with its payload (empty unless `Write`), borrowed from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header.
    pub header: RequestHeader,
    /// The write payload; `payload.len() == header.payload_length_bytes()`.
    pub payload: &'a [u8],
}

/// Decodes a request header, leaving any write payload in `input` for the caller.
///
/// `Ok(Some((header, REQUEST_HEADER_BYTES)))` once 28 bytes are available. Fatal: bad magic,
/// write payload above `REQUEST_PAYLOAD_BYTES_MAX`. Unknown commands and flags are not errors.
pub fn decode_request_header(
    input: &[u8],
) -> Result<Option<(RequestHeader, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let Some(magic) = cursor.u32() else {
        return Ok(None);
    };
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadRequestMagic { magic });
    }
    let (Some(flags), Some(command), Some(handle), Some(offset_bytes), Some(length_bytes)) = (
        cursor.u16(),
        cursor.u16(),
        cursor.u64(),
        cursor.u64(),
        cursor.u32(),
    ) else {
        return Ok(None);
    };
    let header = RequestHeader {
        flags: CommandFlags::from_bits_retain(flags),
        command: Command::from_code(command),
        handle,
        offset_bytes,
        length_bytes,
    };
    if header.command == Command::Write && length_bytes > REQUEST_PAYLOAD_BYTES_MAX {
        return Err(ProtocolError::WritePayloadTooLarge {
            length_bytes,
            length_bytes_max: REQUEST_PAYLOAD_BYTES_MAX,
        });
    }
    assert_eq!(cursor.position(), REQUEST_HEADER_BYTES);
    assert!(header.payload_length_bytes() <= REQUEST_PAYLOAD_BYTES_MAX as usize);
    Ok(Some((header, REQUEST_HEADER_BYTES)))
}

/// Decodes a request together with its write payload.
///
/// `Ok(None)` until header and payload are both buffered; the caller never needs more than
/// `REQUEST_HEADER_BYTES + REQUEST_PAYLOAD_BYTES_MAX` bytes.
pub fn decode_request(input: &[u8]) -> Result<Option<(Request<'_>, usize)>, ProtocolError> {
    let Some((header, header_bytes)) = decode_request_header(input)? else {
        return Ok(None);
    };
    let mut cursor = Cursor::new(input);
    let _ = cursor.take(header_bytes);
    let Some(payload) = cursor.take(header.payload_length_bytes()) else {
        return Ok(None);
    };
    let consumed = cursor.position();
    assert_eq!(consumed, REQUEST_HEADER_BYTES + payload.len());
    Ok(Some((Request { header, payload }, consumed)))
}

/// An NBD error value, as carried in replies. The constructor is private so a value is always
/// one the spec defines (and never zero, which would mean success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NbdErrno(u32);

impl NbdErrno {
    /// `NBD_EPERM` (1): write or trim on a read-only export.
    pub const EPERM: NbdErrno = NbdErrno(1);
    /// `NBD_EIO` (5).
    pub const EIO: NbdErrno = NbdErrno(5);
    /// `NBD_ENOMEM` (12): the spec asks servers to avoid it.
    pub const ENOMEM: NbdErrno = NbdErrno(12);
    /// `NBD_EINVAL` (22): bad request, unknown command or flag, read/trim beyond the end.
    pub const EINVAL: NbdErrno = NbdErrno(22);
    /// `NBD_ENOSPC` (28): write beyond the end, or out of space.
    pub const ENOSPC: NbdErrno = NbdErrno(28);
    /// `NBD_EOVERFLOW` (75): only for `NBD_CMD_FLAG_DF` reads that cannot be one chunk.
    pub const EOVERFLOW: NbdErrno = NbdErrno(75);
    /// `NBD_ENOTSUP` (95): only for `NBD_CMD_FLAG_FAST_ZERO` that would not be fast.
    pub const ENOTSUP: NbdErrno = NbdErrno(95);
    /// `NBD_ESHUTDOWN` (108): server shutting down; the client must disconnect.
    pub const ESHUTDOWN: NbdErrno = NbdErrno(108);

    /// Every value the spec defines.
    pub const ALL: [NbdErrno; 8] = [
        NbdErrno::EPERM,
        NbdErrno::EIO,
        NbdErrno::ENOMEM,
        NbdErrno::EINVAL,
        NbdErrno::ENOSPC,
        NbdErrno::EOVERFLOW,
        NbdErrno::ENOTSUP,
        NbdErrno::ESHUTDOWN,
    ];

    /// The wire value.
    pub fn code(self) -> u32 {
        debug_assert_ne!(self.0, 0);
        self.0
    }

    /// The error for a wire value, if the spec defines it (zero means success, so `None`).
    pub fn from_code(code: u32) -> Option<Self> {
        NbdErrno::ALL.into_iter().find(|errno| errno.0 == code)
    }

    /// Maps a local I/O error to the NBD value a client should see.
    ///
    /// Uses Linux errno numbers; the spec asks that `EDQUOT` and `EFBIG` become `ENOSPC`, and we
    /// send `EIO` for anything without a closer NBD meaning so clients never see an undefined
    /// value.
    pub fn from_io_error(error: &std::io::Error) -> Self {
        const LINUX_EPERM: i32 = 1;
        const LINUX_ENOMEM: i32 = 12;
        const LINUX_EACCES: i32 = 13;
        const LINUX_EINVAL: i32 = 22;
        const LINUX_EFBIG: i32 = 27;
        const LINUX_ENOSPC: i32 = 28;
        const LINUX_EROFS: i32 = 30;
        const LINUX_EDQUOT: i32 = 122;
        match error.raw_os_error() {
            Some(LINUX_EPERM | LINUX_EACCES | LINUX_EROFS) => NbdErrno::EPERM,
            Some(LINUX_ENOMEM) => NbdErrno::ENOMEM,
            Some(LINUX_EINVAL) => NbdErrno::EINVAL,
            Some(LINUX_EFBIG | LINUX_ENOSPC | LINUX_EDQUOT) => NbdErrno::ENOSPC,
            Some(_) => NbdErrno::EIO,
            None => match error.kind() {
                std::io::ErrorKind::PermissionDenied => NbdErrno::EPERM,
                std::io::ErrorKind::InvalidInput => NbdErrno::EINVAL,
                std::io::ErrorKind::OutOfMemory => NbdErrno::ENOMEM,
                _ => NbdErrno::EIO,
            },
        }
    }
}

impl std::fmt::Display for NbdErrno {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            NbdErrno::EPERM => "EPERM",
            NbdErrno::EIO => "EIO",
            NbdErrno::ENOMEM => "ENOMEM",
            NbdErrno::EINVAL => "EINVAL",
            NbdErrno::ENOSPC => "ENOSPC",
            NbdErrno::EOVERFLOW => "EOVERFLOW",
            NbdErrno::ENOTSUP => "ENOTSUP",
            NbdErrno::ESHUTDOWN => "ESHUTDOWN",
            _ => "E?",
        };
        write!(formatter, "{name} ({})", self.0)
    }
}

/// Encodes a simple reply header. For a successful `NBD_CMD_READ` the caller sends exactly
/// `length_bytes` bytes of data right after it; after an error, no data may follow.
pub fn encode_simple_reply(out: &mut Vec<u8>, handle: u64, error: Option<NbdErrno>) {
    let length_before = out.len();
    put_u32(out, SIMPLE_REPLY_MAGIC);
    put_u32(out, error.map_or(0, NbdErrno::code));
    put_u64(out, handle);
    debug_assert_eq!(out.len() - length_before, SIMPLE_REPLY_HEADER_BYTES);
}

/// A structured reply chunk to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyChunk<'a> {
    /// `NBD_REPLY_TYPE_NONE`: success terminator; always sent with `DONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: `data` read at absolute `offset_bytes` (at least 1 byte).
    OffsetData {
        /// Absolute export offset of `data`.
        offset_bytes: u64,
        /// The bytes read.
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_ERROR`: the whole request failed.
    Error {
        /// The error.
        error: NbdErrno,
        /// Message for a human; truncated to `STRING_LENGTH_BYTES_MAX`.
        message: &'a str,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`: failure at `offset_bytes`.
    ErrorOffset {
        /// The error.
        error: NbdErrno,
        /// Message for a human; truncated to `STRING_LENGTH_BYTES_MAX`.
        message: &'a str,
        /// Absolute export offset of the failure, within the request.
        offset_bytes: u64,
    },
}

/// Encodes one structured reply chunk. `done` sets `NBD_REPLY_FLAG_DONE` (last chunk).
///
/// Panics on caller bugs: a `None` chunk without `done`, empty `OffsetData`, or data too large
/// for the 32-bit length field.
pub fn encode_structured_reply(out: &mut Vec<u8>, handle: u64, done: bool, chunk: &ReplyChunk<'_>) {
    match *chunk {
        ReplyChunk::None => {
            assert!(done, "NBD_REPLY_TYPE_NONE must carry NBD_REPLY_FLAG_DONE");
            put_structured_header(out, handle, done, chunk_type::NONE, 0);
        }
        ReplyChunk::OffsetData { offset_bytes, data } => {
            encode_offset_data_header(
                out,
                handle,
                done,
                offset_bytes,
                wire::length_u32(data.len()),
            );
            out.extend_from_slice(data);
        }
        ReplyChunk::Error { error, message } => {
            let message = wire::truncate_message(message, STRING_LENGTH_BYTES_MAX);
            let length = wire::length_u32(6 + message.len());
            put_structured_header(out, handle, done, chunk_type::ERROR, length);
            put_error_body(out, error, message);
        }
        ReplyChunk::ErrorOffset {
            error,
            message,
            offset_bytes,
        } => {
            let message = wire::truncate_message(message, STRING_LENGTH_BYTES_MAX);
            let length = wire::length_u32(14 + message.len());
            put_structured_header(out, handle, done, chunk_type::ERROR_OFFSET, length);
            put_error_body(out, error, message);
            put_u64(out, offset_bytes);
        }
    }
}

/// Encodes only the header (and the 8-byte offset) of an `OFFSET_DATA` chunk, so the caller
/// can send `data_length_bytes` bytes of data from its own buffer without copying them here.
pub fn encode_offset_data_header(
    out: &mut Vec<u8>,
    handle: u64,
    done: bool,
    offset_bytes: u64,
    data_length_bytes: u32,
) {
    assert!(
        data_length_bytes > 0,
        "OFFSET_DATA must describe at least one byte"
    );
    let length = data_length_bytes
        .checked_add(8)
        .unwrap_or_else(|| panic!("OFFSET_DATA of {data_length_bytes} bytes overflows length"));
    put_structured_header(out, handle, done, chunk_type::OFFSET_DATA, length);
    put_u64(out, offset_bytes);
}

fn put_structured_header(out: &mut Vec<u8>, handle: u64, done: bool, kind: u16, length: u32) {
    let flags = if done {
        ReplyFlags::DONE
    } else {
        ReplyFlags::empty()
    };
    let length_before = out.len();
    put_u32(out, STRUCTURED_REPLY_MAGIC);
    put_u16(out, flags.bits());
    put_u16(out, kind);
    put_u64(out, handle);
    put_u32(out, length);
    debug_assert_eq!(out.len() - length_before, STRUCTURED_REPLY_HEADER_BYTES);
}

fn put_error_body(out: &mut Vec<u8>, error: NbdErrno, message: &str) {
    assert!(message.len() <= STRING_LENGTH_BYTES_MAX);
    put_u32(out, error.code());
    let message_length = u16::try_from(message.len()).unwrap_or(u16::MAX);
    put_u16(out, message_length);
    out.extend_from_slice(message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_bytes(flags: u16, command: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, REQUEST_MAGIC);
        put_u16(&mut out, flags);
        put_u16(&mut out, command);
        put_u64(&mut out, handle);
        put_u64(&mut out, offset);
        put_u32(&mut out, length);
        out
    }

    #[test]
    fn read_header_decodes_every_field() {
        let bytes = request_bytes(0x0004, command_code::READ, 0xfeed, 4096, 512);
        let (header, consumed) = decode_request_header(&bytes).unwrap().unwrap();
        assert_eq!(consumed, REQUEST_HEADER_BYTES);
        assert_eq!(
            header,
            RequestHeader {
                flags: CommandFlags::DF,
                command: Command::Read,
                handle: 0xfeed,
                offset_bytes: 4096,
                length_bytes: 512,
            }
        );
        assert_eq!(header.payload_length_bytes(), 0);
    }

    #[test]
    fn truncated_header_needs_more_bytes() {
        let bytes = request_bytes(0, command_code::FLUSH, 1, 0, 0);
        for length in 0..bytes.len() {
            assert_eq!(
                decode_request_header(&bytes[..length]),
                Ok(None),
                "prefix {length}"
            );
            assert_eq!(
                decode_request(&bytes[..length]),
                Ok(None),
                "prefix {length}"
            );
        }
    }

    #[test]
    fn write_waits_for_its_payload_in_decode_request_only() {
        let mut bytes = request_bytes(1, command_code::WRITE, 7, 0, 4);
        let (header, consumed) = decode_request_header(&bytes).unwrap().unwrap();
        assert_eq!(
            (header.payload_length_bytes(), consumed),
            (4, REQUEST_HEADER_BYTES)
        );
        bytes.extend_from_slice(b"abc");
        assert_eq!(decode_request(&bytes), Ok(None));
        bytes.extend_from_slice(b"d-next-request");
        let (request, consumed) = decode_request(&bytes).unwrap().unwrap();
        assert_eq!(request.payload, b"abcd");
        assert_eq!(consumed, REQUEST_HEADER_BYTES + 4);
        assert!(request.header.flags.contains(CommandFlags::FUA));
    }

    #[test]
    fn bad_request_magic_is_fatal() {
        let mut bytes = request_bytes(0, 0, 0, 0, 0);
        bytes[3] ^= 1;
        assert_eq!(
            decode_request_header(&bytes),
            Err(ProtocolError::BadRequestMagic {
                magic: REQUEST_MAGIC ^ 1
            })
        );
        // The magic is checked as soon as it is complete, before the rest arrives.
        assert!(decode_request(&bytes[..4]).is_err());
    }

    #[test]
    fn oversized_write_is_fatal_but_oversized_read_and_trim_are_not() {
        let limit = REQUEST_PAYLOAD_BYTES_MAX;
        let write = request_bytes(0, command_code::WRITE, 0, 0, limit + 1);
        assert_eq!(
            decode_request_header(&write),
            Err(ProtocolError::WritePayloadTooLarge {
                length_bytes: limit + 1,
                length_bytes_max: limit
            })
        );
        let at_limit = request_bytes(0, command_code::WRITE, 0, 0, limit);
        assert!(decode_request_header(&at_limit).unwrap().is_some());
        assert_eq!(
            decode_request(&at_limit),
            Ok(None),
            "waits for 32 MiB of payload"
        );
        for command in [
            command_code::READ,
            command_code::TRIM,
            command_code::WRITE_ZEROES,
        ] {
            let bytes = request_bytes(0, command, 0, 0, u32::MAX);
            let (request, consumed) = decode_request(&bytes).unwrap().unwrap();
            assert_eq!(consumed, REQUEST_HEADER_BYTES);
            assert!(request.payload.is_empty());
        }
    }

    #[test]
    fn unknown_commands_decode_without_payload() {
        for code in [command_code::CACHE, command_code::BLOCK_STATUS, 0x7777] {
            let bytes = request_bytes(0, code, 9, 0, 100);
            let (request, consumed) = decode_request(&bytes).unwrap().unwrap();
            assert_eq!(request.header.command, Command::Unknown(code));
            assert_eq!(request.header.command.code(), code);
            assert_eq!(consumed, REQUEST_HEADER_BYTES);
        }
    }

    #[test]
    fn command_codes_round_trip() {
        for code in 0..=16u16 {
            assert_eq!(Command::from_code(code).code(), code);
        }
        assert_eq!(Command::from_code(6), Command::WriteZeroes);
        assert!(Command::Trim.is_mutation());
        assert!(!Command::Flush.is_mutation());
    }

    #[test]
    fn errno_values_match_the_spec() {
        let codes: Vec<u32> = NbdErrno::ALL.iter().map(|errno| errno.code()).collect();
        assert_eq!(codes, [1, 5, 12, 22, 28, 75, 95, 108]);
        assert_eq!(NbdErrno::from_code(0), None);
        assert_eq!(NbdErrno::from_code(3), None);
        assert_eq!(NbdErrno::from_code(28), Some(NbdErrno::ENOSPC));
        assert_eq!(NbdErrno::EINVAL.to_string(), "EINVAL (22)");
    }

    #[test]
    fn io_errors_map_to_nbd_values() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            NbdErrno::from_io_error(&os(122)),
            NbdErrno::ENOSPC,
            "EDQUOT"
        );
        assert_eq!(NbdErrno::from_io_error(&os(27)), NbdErrno::ENOSPC, "EFBIG");
        assert_eq!(NbdErrno::from_io_error(&os(30)), NbdErrno::EPERM, "EROFS");
        assert_eq!(NbdErrno::from_io_error(&os(5)), NbdErrno::EIO);
        assert_eq!(
            NbdErrno::from_io_error(&os(11)),
            NbdErrno::EIO,
            "EAGAIN has no NBD value"
        );
        let custom = std::io::Error::new(std::io::ErrorKind::InvalidInput, "x");
        assert_eq!(NbdErrno::from_io_error(&custom), NbdErrno::EINVAL);
    }

    #[test]
    fn simple_reply_layout() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, 0x0102_0304_0506_0708, Some(NbdErrno::ENOSPC));
        assert_eq!(out.len(), SIMPLE_REPLY_HEADER_BYTES);
        assert_eq!(&out[..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&out[4..8], &28u32.to_be_bytes());
        assert_eq!(&out[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        out.clear();
        encode_simple_reply(&mut out, 1, None);
        assert_eq!(&out[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn structured_chunks_layout() {
        let mut out = Vec::new();
        encode_structured_reply(&mut out, 5, true, &ReplyChunk::None);
        assert_eq!(&out[..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&out[4..6], &1u16.to_be_bytes(), "DONE");
        assert_eq!(&out[6..8], &0u16.to_be_bytes());
        assert_eq!(&out[16..20], &0u32.to_be_bytes());
        assert_eq!(out.len(), STRUCTURED_REPLY_HEADER_BYTES);

        out.clear();
        let chunk = ReplyChunk::OffsetData {
            offset_bytes: 512,
            data: b"hello",
        };
        encode_structured_reply(&mut out, 5, false, &chunk);
        assert_eq!(&out[4..6], &0u16.to_be_bytes());
        assert_eq!(&out[6..8], &1u16.to_be_bytes());
        assert_eq!(&out[16..20], &13u32.to_be_bytes());
        assert_eq!(&out[20..28], &512u64.to_be_bytes());
        assert_eq!(&out[28..], b"hello");

        out.clear();
        let chunk = ReplyChunk::Error {
            error: NbdErrno::EIO,
            message: "disk",
        };
        encode_structured_reply(&mut out, 5, true, &chunk);
        assert_eq!(&out[6..8], &0x8001u16.to_be_bytes());
        assert_eq!(&out[16..20], &10u32.to_be_bytes());
        assert_eq!(&out[20..24], &5u32.to_be_bytes());
        assert_eq!(&out[24..26], &4u16.to_be_bytes());
        assert_eq!(&out[26..], b"disk");

        out.clear();
        let chunk = ReplyChunk::ErrorOffset {
            error: NbdErrno::EIO,
            message: "",
            offset_bytes: 1024,
        };
        encode_structured_reply(&mut out, 5, true, &chunk);
        assert_eq!(&out[6..8], &0x8002u16.to_be_bytes());
        assert_eq!(&out[16..20], &14u32.to_be_bytes());
        assert_eq!(&out[26..34], &1024u64.to_be_bytes());
    }

    #[test]
    #[should_panic(expected = "NBD_REPLY_FLAG_DONE")]
    fn none_chunk_without_done_is_a_caller_bug() {
        encode_structured_reply(&mut Vec::new(), 1, false, &ReplyChunk::None);
    }

    #[test]
    fn error_chunk_message_is_truncated() {
        let message = "m".repeat(STRING_LENGTH_BYTES_MAX * 2);
        let mut out = Vec::new();
        let chunk = ReplyChunk::Error {
            error: NbdErrno::EIO,
            message: &message,
        };
        encode_structured_reply(&mut out, 1, true, &chunk);
        assert_eq!(
            out.len(),
            STRUCTURED_REPLY_HEADER_BYTES + 6 + STRING_LENGTH_BYTES_MAX
        );
    }
}
