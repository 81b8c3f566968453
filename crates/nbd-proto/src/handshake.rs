//! Fixed-newstyle handshake: greeting, client flags, option haggling and option replies.
//!
//! ```text
//! S: NBDMAGIC IHAVEOPT handshake-flags           encode_server_greeting
//! C: client-flags                                 decode_client_flags
//! C: IHAVEOPT option length data   (repeat)       decode_option
//! S: reply-magic option type length data          encode_option_reply / encode_export_name_reply
//! ```

use crate::error::ProtocolError;
use crate::flags::{ClientFlags, HandshakeFlags, TransmissionFlags};
use crate::limits::{NAME_LENGTH_BYTES_MAX, OPTION_LENGTH_BYTES_MAX, STRING_LENGTH_BYTES_MAX};
use crate::wire::{self, put_u16, put_u32, put_u64, Cursor, StringError};

/// ASCII `NBDMAGIC`, first word of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// ASCII `IHAVEOPT`, second word of the greeting and first word of every option.
pub const IHAVEOPT_MAGIC: u64 = 0x4948_4156_454f_5054;
/// First word of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// `NBDMAGIC` (8) + `IHAVEOPT` (8) + handshake flags (2).
pub const SERVER_GREETING_BYTES: usize = 18;
/// Client flags field.
pub const CLIENT_FLAGS_BYTES: usize = 4;
/// `IHAVEOPT` (8) + option (4) + length (4).
pub const OPTION_HEADER_BYTES: usize = 16;
/// Magic (8) + option (4) + reply type (4) + length (4).
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;
/// Reserved zeroes after the `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_REPLY_ZEROES_BYTES: usize = 124;
/// Size (8) + transmission flags (2).
pub const EXPORT_NAME_REPLY_BYTES_MIN: usize = 10;

/// The handshake flags this server always advertises.
pub const SERVER_HANDSHAKE_FLAGS: HandshakeFlags =
    HandshakeFlags::FIXED_NEWSTYLE.union(HandshakeFlags::NO_ZEROES);

/// Option codes (`NBD_OPT_*`).
pub mod option_code {
    /// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission; cannot fail gracefully.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`: soft disconnect.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`: list exports.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`: describe an export without entering transmission.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT` (unsupported; decodes as `Unsupported`).
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT` (unsupported; decodes as `Unsupported`).
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (`NBD_REP_*`). Error types have bit 31 set.
pub mod reply_type {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// Bit shared by every error reply type.
    pub const ERROR_BIT: u32 = 1 << 31;
}

/// Information types (`NBD_INFO_*`) used in `NBD_OPT_INFO`/`NBD_OPT_GO` and `NBD_REP_INFO`.
pub mod info_type {
    /// `NBD_INFO_EXPORT`: size and transmission flags. Mandatory before a successful ACK.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`: canonical export name.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`: human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum / preferred / maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Encodes the server greeting (`NBDMAGIC`, `IHAVEOPT`, `FIXED_NEWSTYLE | NO_ZEROES`).
pub fn encode_server_greeting(out: &mut Vec<u8>) {
    let length_before = out.len();
    put_u64(out, NBD_MAGIC);
    put_u64(out, IHAVEOPT_MAGIC);
    put_u16(out, SERVER_HANDSHAKE_FLAGS.bits());
    debug_assert_eq!(out.len() - length_before, SERVER_GREETING_BYTES);
}

/// Decodes the client flags that answer the greeting.
///
/// Rejects any bit outside `FIXED_NEWSTYLE | NO_ZEROES`: the spec says the server MUST drop the
/// connection on an unknown flag. Both known flags are accepted because we advertise both.
pub fn decode_client_flags(input: &[u8]) -> Result<Option<(ClientFlags, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let Some(bits) = cursor.u32() else {
        return Ok(None);
    };
    let flags = ClientFlags::from_bits_retain(bits);
    let unknown = flags.unknown();
    if !unknown.is_empty() {
        return Err(ProtocolError::UnknownClientFlags {
            flags: bits,
            unknown: unknown.bits(),
        });
    }
    debug_assert_eq!(cursor.position(), CLIENT_FLAGS_BYTES);
    Ok(Some((flags, CLIENT_FLAGS_BYTES)))
}

/// One piece of information a client asks for in `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InfoRequest {
    /// `NBD_INFO_EXPORT` (always sent anyway).
    Export,
    /// `NBD_INFO_NAME`.
    Name,
    /// `NBD_INFO_DESCRIPTION`.
    Description,
    /// `NBD_INFO_BLOCK_SIZE`: the client promises to honour the block sizes we send back.
    BlockSize,
    /// A type we do not know; the spec says the server MUST ignore it.
    Unknown(u16),
}

impl InfoRequest {
    /// Maps a wire code to a request.
    pub fn from_code(code: u16) -> Self {
        match code {
            info_type::EXPORT => InfoRequest::Export,
            info_type::NAME => InfoRequest::Name,
            info_type::DESCRIPTION => InfoRequest::Description,
            info_type::BLOCK_SIZE => InfoRequest::BlockSize,
            other => InfoRequest::Unknown(other),
        }
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            InfoRequest::Export => info_type::EXPORT,
            InfoRequest::Name => info_type::NAME,
            InfoRequest::Description => info_type::DESCRIPTION,
            InfoRequest::BlockSize => info_type::BLOCK_SIZE,
            InfoRequest::Unknown(code) => code,
        }
    }
}

/// The body shared by `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    /// Export name; empty means the default export.
    pub name: String,
    /// Information requested, in wire order (duplicates kept; the client MUST NOT send any).
    pub info_requests: Vec<InfoRequest>,
}

impl ExportQuery {
    /// True if the client asked for `NBD_INFO_BLOCK_SIZE` (and so promised to honour it).
    pub fn requests(&self, info: InfoRequest) -> bool {
        self.info_requests.contains(&info)
    }
}

/// Why a known option's body was rejected; the server answers `NBD_REP_ERR_INVALID`
/// (or, for `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error, disconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedOption {
    /// The option takes no data but some was sent.
    #[error("option takes no data")]
    UnexpectedData,
    /// Shorter than the fixed part of its format.
    #[error("option data is too short")]
    TooShort,
    /// Export name above `NAME_LENGTH_BYTES_MAX`.
    #[error("export name is longer than 4096 bytes")]
    NameTooLong,
    /// The name length field points past the option data.
    #[error("export name length does not fit the option data")]
    NameLengthMismatch,
    /// Export name is not UTF-8.
    #[error("export name is not valid UTF-8")]
    NameNotUtf8,
    /// Export name contains NUL.
    #[error("export name contains NUL")]
    NameContainsNul,
    /// The information request count does not match the bytes that follow.
    #[error("information request count does not match the option length")]
    InfoRequestCountMismatch,
}

impl From<StringError> for MalformedOption {
    fn from(error: StringError) -> Self {
        match error {
            StringError::NotUtf8 => MalformedOption::NameNotUtf8,
            StringError::ContainsNul => MalformedOption::NameContainsNul,
        }
    }
}

/// A decoded client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionRequest {
    /// `NBD_OPT_EXPORT_NAME`: reply with [`encode_export_name_reply`] and enter transmission,
    /// or disconnect (no error reply exists for this option).
    ExportName {
        /// Export name; empty means the default export.
        name: String,
    },
    /// `NBD_OPT_ABORT`: reply ACK, then close. Any data is ignored, as the spec asks.
    Abort,
    /// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, then ACK.
    List,
    /// `NBD_OPT_STARTTLS`: a NOTLS server replies `NBD_REP_ERR_POLICY` or `NBD_REP_ERR_UNSUP`.
    StartTls,
    /// `NBD_OPT_INFO`: `NBD_REP_INFO`s then ACK, or an error; stay in option haggling.
    Info(ExportQuery),
    /// `NBD_OPT_GO`: like `Info`, but an ACK enters transmission.
    Go(ExportQuery),
    /// `NBD_OPT_STRUCTURED_REPLY`: ACK to enable structured replies.
    StructuredReply,
    /// An option we do not implement: reply `NBD_REP_ERR_UNSUP` and keep haggling.
    Unsupported {
        /// The option code to echo in the reply.
        option: u32,
    },
    /// A known option with a bad body: reply `NBD_REP_ERR_INVALID` and keep haggling.
    Malformed {
        /// The option code to echo in the reply.
        option: u32,
        /// What was wrong, suitable as the error message.
        reason: MalformedOption,
    },
}

impl OptionRequest {
    /// The option code to echo in every reply to this option.
    pub fn option(&self) -> u32 {
        match self {
            OptionRequest::ExportName { .. } => option_code::EXPORT_NAME,
            OptionRequest::Abort => option_code::ABORT,
            OptionRequest::List => option_code::LIST,
            OptionRequest::StartTls => option_code::STARTTLS,
            OptionRequest::Info(_) => option_code::INFO,
            OptionRequest::Go(_) => option_code::GO,
            OptionRequest::StructuredReply => option_code::STRUCTURED_REPLY,
            OptionRequest::Unsupported { option } => *option,
            OptionRequest::Malformed { option, .. } => *option,
        }
    }
}

/// Decodes one option (header and data).
///
/// Returns `Ok(None)` until the whole option is buffered; the caller never needs more than
/// `OPTION_HEADER_BYTES + OPTION_LENGTH_BYTES_MAX` bytes. Fatal: bad `IHAVEOPT` magic, declared
/// length above `OPTION_LENGTH_BYTES_MAX` (checked from the header alone, before waiting for
/// the data, so a hostile length never makes the caller buffer).
pub fn decode_option(input: &[u8]) -> Result<Option<(OptionRequest, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let Some(magic) = cursor.u64() else {
        return Ok(None);
    };
    if magic != IHAVEOPT_MAGIC {
        return Err(ProtocolError::BadOptionMagic { magic });
    }
    let (Some(option), Some(length_bytes)) = (cursor.u32(), cursor.u32()) else {
        return Ok(None);
    };
    if length_bytes > OPTION_LENGTH_BYTES_MAX {
        return Err(ProtocolError::OptionTooLong {
            option,
            length_bytes,
            length_bytes_max: OPTION_LENGTH_BYTES_MAX,
        });
    }
    let Some(data) = cursor.take(length_bytes as usize) else {
        return Ok(None);
    };
    let consumed = cursor.position();
    assert_eq!(consumed, OPTION_HEADER_BYTES + data.len());
    Ok(Some((parse_option(option, data), consumed)))
}

fn parse_option(option: u32, data: &[u8]) -> OptionRequest {
    debug_assert!(data.len() <= OPTION_LENGTH_BYTES_MAX as usize);
    let malformed = |reason| OptionRequest::Malformed { option, reason };
    let no_data = |request: OptionRequest| {
        if data.is_empty() {
            request
        } else {
            malformed(MalformedOption::UnexpectedData)
        }
    };
    match option {
        option_code::EXPORT_NAME => match parse_name(data) {
            Ok(name) => OptionRequest::ExportName {
                name: name.to_owned(),
            },
            Err(reason) => malformed(reason),
        },
        option_code::ABORT => OptionRequest::Abort,
        option_code::LIST => no_data(OptionRequest::List),
        option_code::STARTTLS => no_data(OptionRequest::StartTls),
        option_code::STRUCTURED_REPLY => no_data(OptionRequest::StructuredReply),
        option_code::INFO => match parse_export_query(data) {
            Ok(query) => OptionRequest::Info(query),
            Err(reason) => malformed(reason),
        },
        option_code::GO => match parse_export_query(data) {
            Ok(query) => OptionRequest::Go(query),
            Err(reason) => malformed(reason),
        },
        _ => OptionRequest::Unsupported { option },
    }
}

fn parse_name(bytes: &[u8]) -> Result<&str, MalformedOption> {
    if bytes.len() > NAME_LENGTH_BYTES_MAX as usize {
        return Err(MalformedOption::NameTooLong);
    }
    Ok(wire::parse_string(bytes)?)
}

/// `u32 name length, name, u16 count, count × u16 info type` — lengths must add up exactly.
fn parse_export_query(data: &[u8]) -> Result<ExportQuery, MalformedOption> {
    let mut cursor = Cursor::new(data);
    let name_length_bytes = cursor.u32().ok_or(MalformedOption::TooShort)?;
    if name_length_bytes > NAME_LENGTH_BYTES_MAX {
        return Err(MalformedOption::NameTooLong);
    }
    // The spec bounds the name by "option data length - 6" (the two length fields).
    let name = cursor
        .take(name_length_bytes as usize)
        .ok_or(MalformedOption::NameLengthMismatch)?;
    let name = parse_name(name)?;
    let count = cursor.u16().ok_or(MalformedOption::NameLengthMismatch)?;
    if cursor.remaining() != usize::from(count) * 2 {
        return Err(MalformedOption::InfoRequestCountMismatch);
    }
    let mut info_requests = Vec::with_capacity(usize::from(count));
    while let Some(code) = cursor.u16() {
        info_requests.push(InfoRequest::from_code(code));
    }
    assert_eq!(info_requests.len(), usize::from(count));
    assert_eq!(cursor.remaining(), 0);
    Ok(ExportQuery {
        name: name.to_owned(),
        info_requests,
    })
}

/// Option error reply types (`NBD_REP_ERR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionError {
    /// `NBD_REP_ERR_UNSUP`: option unknown to this server.
    Unsup,
    /// `NBD_REP_ERR_POLICY`: known and valid, but forbidden by policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: unsupported on this platform.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD`: TLS required first.
    TlsReqd,
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    Unknown,
    /// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request `NBD_INFO_BLOCK_SIZE`.
    BlockSizeReqd,
    /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
    TooBig,
}

impl OptionError {
    /// The reply type on the wire (bit 31 set).
    pub fn code(self) -> u32 {
        let low = match self {
            OptionError::Unsup => 1,
            OptionError::Policy => 2,
            OptionError::Invalid => 3,
            OptionError::Platform => 4,
            OptionError::TlsReqd => 5,
            OptionError::Unknown => 6,
            OptionError::Shutdown => 7,
            OptionError::BlockSizeReqd => 8,
            OptionError::TooBig => 9,
        };
        reply_type::ERROR_BIT | low
    }
}

/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest addressable length and alignment.
    pub minimum_bytes: u32,
    /// Smallest length with efficient I/O.
    pub preferred_bytes: u32,
    /// Largest length the server handles in one request.
    pub maximum_bytes: u32,
}

impl BlockSize {
    /// What Redoubt advertises: 512-byte sectors, 4 KiB pages, and the 32 MiB payload limit.
    pub const REDOUBT: BlockSize = BlockSize {
        minimum_bytes: 512,
        preferred_bytes: 4096,
        maximum_bytes: crate::limits::REQUEST_PAYLOAD_BYTES_MAX,
    };

    /// The constraints the spec places on advertised values ("Block size constraints").
    pub fn is_valid(self) -> bool {
        let minimum_ok = self.minimum_bytes.is_power_of_two() && self.minimum_bytes <= 1 << 16;
        let preferred_ok = self.preferred_bytes.is_power_of_two()
            && self.preferred_bytes >= self.minimum_bytes.max(512);
        let maximum_ok = (self.maximum_bytes == u32::MAX
            || (self.minimum_bytes != 0 && self.maximum_bytes.is_multiple_of(self.minimum_bytes)))
            && self.maximum_bytes >= self.preferred_bytes;
        minimum_ok && preferred_ok && maximum_ok
    }
}

const _: () = assert!(BlockSize::REDOUBT.minimum_bytes.is_power_of_two());
const _: () = assert!(BlockSize::REDOUBT
    .maximum_bytes
    .is_multiple_of(BlockSize::REDOUBT.minimum_bytes));

/// One item of export information (`NBD_REP_INFO` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info<'a> {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// Export size.
        size_bytes: u64,
        /// Transmission flags; must contain `HAS_FLAGS`.
        transmission_flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`.
    Name(&'a str),
    /// `NBD_INFO_DESCRIPTION`.
    Description(&'a str),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
}

/// A fixed-newstyle option reply (everything except the `NBD_OPT_EXPORT_NAME` reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionReply<'a> {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER` for `NBD_OPT_LIST`; `description` may be empty.
    Server {
        /// Export name (≤ `NAME_LENGTH_BYTES_MAX`; asserted).
        name: &'a str,
        /// Human-readable details; truncated to the string limit.
        description: &'a str,
    },
    /// `NBD_REP_INFO`.
    Info(Info<'a>),
    /// An error reply with an optional human-readable message (truncated to the string limit).
    Error {
        /// Which error.
        error: OptionError,
        /// Message for the user; may be empty.
        message: &'a str,
    },
}

/// Encodes one option reply for `option` (the code echoed from the client's request).
///
/// Panics on caller bugs only: a name above `NAME_LENGTH_BYTES_MAX`, an `Info::Export` without
/// `HAS_FLAGS`, or an invalid `BlockSize`. Names from the client were bounded by the decoder;
/// names from configuration must be validated there. Free-form messages are truncated instead.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: &OptionReply<'_>) {
    let length_before = out.len();
    put_u64(out, OPTION_REPLY_MAGIC);
    put_u32(out, option);
    let reply_type = match reply {
        OptionReply::Ack => reply_type::ACK,
        OptionReply::Server { .. } => reply_type::SERVER,
        OptionReply::Info(_) => reply_type::INFO,
        OptionReply::Error { error, .. } => error.code(),
    };
    put_u32(out, reply_type);
    put_u32(out, 0); // Length placeholder, patched below once the payload is known.
    let payload_start = out.len();
    match reply {
        OptionReply::Ack => {}
        OptionReply::Server { name, description } => {
            assert!(
                name.len() <= NAME_LENGTH_BYTES_MAX as usize,
                "export name too long"
            );
            put_u32(out, wire::length_u32(name.len()));
            out.extend_from_slice(name.as_bytes());
            let description = wire::truncate_message(description, STRING_LENGTH_BYTES_MAX);
            out.extend_from_slice(description.as_bytes());
        }
        OptionReply::Info(info) => encode_info(out, info),
        OptionReply::Error { message, .. } => {
            let message = wire::truncate_message(message, STRING_LENGTH_BYTES_MAX);
            out.extend_from_slice(message.as_bytes());
        }
    }
    let payload_length = wire::length_u32(out.len() - payload_start);
    out[payload_start - 4..payload_start].copy_from_slice(&payload_length.to_be_bytes());
    assert_eq!(
        out.len() - length_before,
        OPTION_REPLY_HEADER_BYTES + payload_length as usize
    );
}

fn encode_info(out: &mut Vec<u8>, info: &Info<'_>) {
    match info {
        Info::Export {
            size_bytes,
            transmission_flags,
        } => {
            assert!(transmission_flags.contains(TransmissionFlags::HAS_FLAGS));
            put_u16(out, info_type::EXPORT);
            put_u64(out, *size_bytes);
            put_u16(out, transmission_flags.bits());
        }
        Info::Name(name) => {
            assert!(
                name.len() <= NAME_LENGTH_BYTES_MAX as usize,
                "export name too long"
            );
            put_u16(out, info_type::NAME);
            out.extend_from_slice(name.as_bytes());
        }
        Info::Description(description) => {
            put_u16(out, info_type::DESCRIPTION);
            let description = wire::truncate_message(description, STRING_LENGTH_BYTES_MAX);
            out.extend_from_slice(description.as_bytes());
        }
        Info::BlockSize(block_size) => {
            assert!(
                block_size.is_valid(),
                "invalid block size constraints {block_size:?}"
            );
            put_u16(out, info_type::BLOCK_SIZE);
            put_u32(out, block_size.minimum_bytes);
            put_u32(out, block_size.preferred_bytes);
            put_u32(out, block_size.maximum_bytes);
        }
    }
}

/// Encodes the reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(
    out: &mut Vec<u8>,
    size_bytes: u64,
    transmission_flags: TransmissionFlags,
    client_flags: ClientFlags,
) {
    assert!(transmission_flags.contains(TransmissionFlags::HAS_FLAGS));
    let length_before = out.len();
    put_u64(out, size_bytes);
    put_u16(out, transmission_flags.bits());
    if !client_flags.contains(ClientFlags::NO_ZEROES) {
        out.resize(out.len() + EXPORT_NAME_REPLY_ZEROES_BYTES, 0);
    }
    debug_assert!(out.len() - length_before >= EXPORT_NAME_REPLY_BYTES_MIN);
}

/// Where a server stands on TLS for this connection (the spec's NOTLS and FORCEDTLS modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS offered: `NBD_OPT_STARTTLS` is refused by policy; everything else is served.
    NoTls,
    /// TLS required and not yet on: only `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` are served.
    ForcedBeforeTls,
    /// TLS required and on: every option is served; a second `NBD_OPT_STARTTLS` is invalid.
    ForcedOverTls,
}

/// What a server does with one option under its [`TlsMode`] (pure; the caller does the I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsGate {
    /// Serve the option as usual.
    Serve,
    /// Reply ACK, then run the TLS handshake (no byte may be buffered after the option:
    /// plaintext sent ahead of the handshake would be injected into the TLS session).
    StartTls,
    /// Reply with this error and keep haggling.
    Refuse(OptionError),
    /// `NBD_OPT_EXPORT_NAME` before TLS: it has no error reply, so close the connection.
    Close,
}

/// The FORCEDTLS rules of the NBD protocol (doc/proto.md, "TLS support"): before TLS, every
/// option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`
/// (`NBD_OPT_EXPORT_NAME`, which cannot be answered with an error, closes the connection);
/// once TLS is on, `NBD_OPT_STARTTLS` gets `NBD_REP_ERR_INVALID`. A NOTLS server answers
/// `NBD_OPT_STARTTLS` with `NBD_REP_ERR_POLICY`.
pub fn tls_gate(mode: TlsMode, option: &OptionRequest) -> TlsGate {
    match (mode, option) {
        (TlsMode::NoTls, OptionRequest::StartTls) => TlsGate::Refuse(OptionError::Policy),
        (TlsMode::NoTls, _) => TlsGate::Serve,
        (TlsMode::ForcedBeforeTls, OptionRequest::StartTls) => TlsGate::StartTls,
        (TlsMode::ForcedBeforeTls, OptionRequest::Abort) => TlsGate::Serve,
        (TlsMode::ForcedBeforeTls, OptionRequest::ExportName { .. }) => TlsGate::Close,
        (TlsMode::ForcedBeforeTls, _) => TlsGate::Refuse(OptionError::TlsReqd),
        (TlsMode::ForcedOverTls, OptionRequest::StartTls) => TlsGate::Refuse(OptionError::Invalid),
        (TlsMode::ForcedOverTls, _) => TlsGate::Serve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, IHAVEOPT_MAGIC);
        put_u32(&mut out, option);
        put_u32(&mut out, wire::length_u32(data.len()));
        out.extend_from_slice(data);
        out
    }

    fn query_bytes(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut data = Vec::new();
        put_u32(&mut data, wire::length_u32(name.len()));
        data.extend_from_slice(name);
        put_u16(&mut data, u16::try_from(infos.len()).unwrap());
        for info in infos {
            put_u16(&mut data, *info);
        }
        data
    }

    fn decode_one(bytes: &[u8]) -> OptionRequest {
        let (request, consumed) = decode_option(bytes).unwrap().unwrap();
        assert_eq!(consumed, bytes.len());
        request
    }

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_flags() {
        let mut out = Vec::new();
        encode_server_greeting(&mut out);
        assert_eq!(out.len(), SERVER_GREETING_BYTES);
        assert_eq!(&out[..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        assert_eq!(&out[16..], &[0x00, 0x03]);
    }

    #[test]
    fn client_flags_accept_known_and_reject_unknown() {
        assert_eq!(decode_client_flags(&[0, 0, 0]), Ok(None));
        let (flags, consumed) = decode_client_flags(&[0, 0, 0, 3, 0xaa]).unwrap().unwrap();
        assert_eq!(consumed, 4);
        assert!(flags.contains(ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES));
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 5]),
            Err(ProtocolError::UnknownClientFlags {
                flags: 5,
                unknown: 4
            })
        );
    }

    #[test]
    fn option_truncated_at_every_length_needs_more_bytes() {
        let bytes = option_bytes(option_code::GO, &query_bytes(b"disk0", &[3]));
        for length in 0..bytes.len() {
            assert_eq!(decode_option(&bytes[..length]), Ok(None), "prefix {length}");
        }
        assert!(matches!(decode_one(&bytes), OptionRequest::Go(_)));
    }

    #[test]
    fn option_with_bad_magic_is_fatal() {
        let mut bytes = option_bytes(option_code::LIST, &[]);
        bytes[0] ^= 0xff;
        assert!(matches!(
            decode_option(&bytes),
            Err(ProtocolError::BadOptionMagic { .. })
        ));
    }

    #[test]
    fn oversized_option_is_fatal_from_the_header_alone() {
        let mut header = Vec::new();
        put_u64(&mut header, IHAVEOPT_MAGIC);
        put_u32(&mut header, option_code::GO);
        put_u32(&mut header, OPTION_LENGTH_BYTES_MAX + 1);
        assert_eq!(
            decode_option(&header),
            Err(ProtocolError::OptionTooLong {
                option: option_code::GO,
                length_bytes: OPTION_LENGTH_BYTES_MAX + 1,
                length_bytes_max: OPTION_LENGTH_BYTES_MAX,
            })
        );
        // Exactly at the limit is fine (and waits for the data).
        let mut header = Vec::new();
        put_u64(&mut header, IHAVEOPT_MAGIC);
        put_u32(&mut header, 999);
        put_u32(&mut header, OPTION_LENGTH_BYTES_MAX);
        assert_eq!(decode_option(&header), Ok(None));
    }

    #[test]
    fn export_name_abort_list_and_structured_reply_decode() {
        assert_eq!(
            decode_one(&option_bytes(option_code::EXPORT_NAME, b"lv1")),
            OptionRequest::ExportName { name: "lv1".into() }
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::EXPORT_NAME, b"")),
            OptionRequest::ExportName {
                name: String::new()
            }
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::ABORT, b"junk")),
            OptionRequest::Abort
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::LIST, b"")),
            OptionRequest::List
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::STRUCTURED_REPLY, b"")),
            OptionRequest::StructuredReply
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::STARTTLS, b"")),
            OptionRequest::StartTls
        );
    }

    #[test]
    fn options_that_take_no_data_reject_data() {
        for option in [
            option_code::LIST,
            option_code::STRUCTURED_REPLY,
            option_code::STARTTLS,
        ] {
            assert_eq!(
                decode_one(&option_bytes(option, b"x")),
                OptionRequest::Malformed {
                    option,
                    reason: MalformedOption::UnexpectedData
                }
            );
        }
    }

    #[test]
    fn unknown_options_are_unsupported_not_fatal() {
        for option in [0, 4, option_code::SET_META_CONTEXT, 0xdead_beef] {
            let request = decode_one(&option_bytes(option, b"payload"));
            assert_eq!(request, OptionRequest::Unsupported { option });
            assert_eq!(request.option(), option);
        }
    }

    #[test]
    fn info_and_go_parse_name_and_requests() {
        let data = query_bytes(b"volume-a", &[info_type::BLOCK_SIZE, info_type::NAME, 77]);
        let expected = ExportQuery {
            name: "volume-a".into(),
            info_requests: vec![
                InfoRequest::BlockSize,
                InfoRequest::Name,
                InfoRequest::Unknown(77),
            ],
        };
        assert!(expected.requests(InfoRequest::BlockSize));
        assert!(!expected.requests(InfoRequest::Description));
        assert_eq!(
            decode_one(&option_bytes(option_code::INFO, &data)),
            OptionRequest::Info(expected.clone())
        );
        assert_eq!(
            decode_one(&option_bytes(option_code::GO, &data)),
            OptionRequest::Go(expected)
        );
        let empty = query_bytes(b"", &[]);
        assert_eq!(
            decode_one(&option_bytes(option_code::GO, &empty)),
            OptionRequest::Go(ExportQuery {
                name: String::new(),
                info_requests: vec![]
            })
        );
    }

    #[test]
    fn go_length_mismatches_are_malformed() {
        let go = |data: &[u8]| decode_one(&option_bytes(option_code::GO, data));
        let reason = |request: OptionRequest| match request {
            OptionRequest::Malformed { option, reason } => {
                assert_eq!(option, option_code::GO);
                reason
            }
            other => panic!("expected malformed, got {other:?}"),
        };
        assert_eq!(reason(go(&[0, 0, 0])), MalformedOption::TooShort);
        // Name length 10 but only 3 bytes follow.
        assert_eq!(
            reason(go(&[0, 0, 0, 10, b'a', b'b', b'c'])),
            MalformedOption::NameLengthMismatch
        );
        // Name fits but the info count field is missing.
        assert_eq!(
            reason(go(&[0, 0, 0, 1, b'a'])),
            MalformedOption::NameLengthMismatch
        );
        // Count says 2 requests, only one follows.
        let mut data = query_bytes(b"a", &[1]);
        data[6] = 2;
        assert_eq!(reason(go(&data)), MalformedOption::InfoRequestCountMismatch);
        // Trailing garbage after the requests.
        let mut data = query_bytes(b"a", &[1]);
        data.push(0);
        assert_eq!(reason(go(&data)), MalformedOption::InfoRequestCountMismatch);
        // Names: too long, NUL, not UTF-8.
        let long = vec![b'n'; NAME_LENGTH_BYTES_MAX as usize + 1];
        assert_eq!(
            reason(go(&query_bytes(&long, &[]))),
            MalformedOption::NameTooLong
        );
        assert_eq!(
            reason(go(&query_bytes(b"a\0", &[]))),
            MalformedOption::NameContainsNul
        );
        assert_eq!(
            reason(go(&query_bytes(&[0xc3], &[]))),
            MalformedOption::NameNotUtf8
        );
        // The longest legal name is accepted.
        let longest = vec![b'n'; NAME_LENGTH_BYTES_MAX as usize];
        assert!(matches!(
            go(&query_bytes(&longest, &[])),
            OptionRequest::Go(_)
        ));
    }

    #[test]
    fn export_name_rejects_bad_names() {
        let long = vec![b'n'; NAME_LENGTH_BYTES_MAX as usize + 1];
        assert_eq!(
            decode_one(&option_bytes(option_code::EXPORT_NAME, &long)),
            OptionRequest::Malformed {
                option: option_code::EXPORT_NAME,
                reason: MalformedOption::NameTooLong
            }
        );
    }

    #[test]
    fn ack_and_error_replies_have_the_documented_layout() {
        let mut out = Vec::new();
        encode_option_reply(&mut out, option_code::STRUCTURED_REPLY, &OptionReply::Ack);
        let mut expected = Vec::new();
        put_u64(&mut expected, OPTION_REPLY_MAGIC);
        put_u32(&mut expected, 8);
        put_u32(&mut expected, 1);
        put_u32(&mut expected, 0);
        assert_eq!(out, expected);

        out.clear();
        let reply = OptionReply::Error {
            error: OptionError::Unsup,
            message: "no",
        };
        encode_option_reply(&mut out, 42, &reply);
        assert_eq!(&out[8..12], &42u32.to_be_bytes());
        assert_eq!(&out[12..16], &0x8000_0001u32.to_be_bytes());
        assert_eq!(&out[16..20], &2u32.to_be_bytes());
        assert_eq!(&out[20..], b"no");
    }

    #[test]
    fn error_codes_match_the_spec() {
        assert_eq!(OptionError::Unsup.code(), 0x8000_0001);
        assert_eq!(OptionError::Policy.code(), 0x8000_0002);
        assert_eq!(OptionError::Invalid.code(), 0x8000_0003);
        assert_eq!(OptionError::Unknown.code(), 0x8000_0006);
        assert_eq!(OptionError::Shutdown.code(), 0x8000_0007);
        assert_eq!(OptionError::TooBig.code(), 0x8000_0009);
    }

    #[test]
    fn long_error_messages_are_truncated() {
        let message = "x".repeat(STRING_LENGTH_BYTES_MAX + 100);
        let mut out = Vec::new();
        let reply = OptionReply::Error {
            error: OptionError::Invalid,
            message: &message,
        };
        encode_option_reply(&mut out, 7, &reply);
        assert_eq!(
            out.len(),
            OPTION_REPLY_HEADER_BYTES + STRING_LENGTH_BYTES_MAX
        );
    }

    #[test]
    fn info_replies_have_the_documented_lengths() {
        let cases: [(Info<'_>, usize); 4] = [
            (
                Info::Export {
                    size_bytes: 1 << 30,
                    transmission_flags: TransmissionFlags::HAS_FLAGS,
                },
                12,
            ),
            (Info::Name("lv"), 4),
            (Info::Description("data"), 6),
            (Info::BlockSize(BlockSize::REDOUBT), 14),
        ];
        for (info, length) in cases {
            let mut out = Vec::new();
            encode_option_reply(&mut out, option_code::GO, &OptionReply::Info(info));
            assert_eq!(&out[12..16], &reply_type::INFO.to_be_bytes());
            assert_eq!(
                &out[16..20],
                &wire::length_u32(length).to_be_bytes(),
                "{info:?}"
            );
            assert_eq!(out.len(), OPTION_REPLY_HEADER_BYTES + length);
        }
    }

    #[test]
    fn server_reply_carries_name_length_then_name_then_description() {
        let mut out = Vec::new();
        let reply = OptionReply::Server {
            name: "lv0",
            description: "boot",
        };
        encode_option_reply(&mut out, option_code::LIST, &reply);
        assert_eq!(&out[16..20], &11u32.to_be_bytes());
        assert_eq!(&out[20..24], &3u32.to_be_bytes());
        assert_eq!(&out[24..], b"lv0boot");
    }

    #[test]
    fn block_size_validity_follows_the_spec() {
        assert!(BlockSize::REDOUBT.is_valid());
        let valid = |minimum_bytes, preferred_bytes, maximum_bytes| {
            BlockSize {
                minimum_bytes,
                preferred_bytes,
                maximum_bytes,
            }
            .is_valid()
        };
        assert!(valid(1, 4096, u32::MAX));
        assert!(!valid(3, 4096, 4096), "minimum must be a power of two");
        assert!(!valid(1 << 17, 1 << 17, 1 << 17), "minimum at most 64 KiB");
        assert!(!valid(512, 256, 4096), "preferred at least 512");
        assert!(!valid(4096, 4096, 6144), "maximum a multiple of minimum");
        assert!(!valid(512, 8192, 4096), "maximum at least preferred");
    }

    #[test]
    fn export_name_reply_zeroes_depend_on_client_flags() {
        let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
        let mut out = Vec::new();
        encode_export_name_reply(&mut out, 4096, flags, ClientFlags::FIXED_NEWSTYLE);
        assert_eq!(out.len(), 10 + EXPORT_NAME_REPLY_ZEROES_BYTES);
        assert!(out[10..].iter().all(|byte| *byte == 0));
        assert_eq!(&out[..8], &4096u64.to_be_bytes());
        assert_eq!(&out[8..10], &0x0005u16.to_be_bytes());
        out.clear();
        encode_export_name_reply(&mut out, 4096, flags, ClientFlags::NO_ZEROES);
        assert_eq!(out.len(), EXPORT_NAME_REPLY_BYTES_MIN);
    }

    #[test]
    fn forced_tls_serves_only_starttls_and_abort_before_tls() {
        let list = OptionRequest::List;
        let export_name = OptionRequest::ExportName { name: "lv0".into() };
        let go = OptionRequest::Go(ExportQuery {
            name: "lv0".into(),
            info_requests: Vec::new(),
        });
        let before = TlsMode::ForcedBeforeTls;
        assert_eq!(
            tls_gate(before, &OptionRequest::StartTls),
            TlsGate::StartTls
        );
        assert_eq!(tls_gate(before, &OptionRequest::Abort), TlsGate::Serve);
        assert_eq!(tls_gate(before, &export_name), TlsGate::Close);
        for option in [&list, &go, &OptionRequest::StructuredReply] {
            assert_eq!(
                tls_gate(before, option),
                TlsGate::Refuse(OptionError::TlsReqd)
            );
        }
        let over = TlsMode::ForcedOverTls;
        assert_eq!(
            tls_gate(over, &OptionRequest::StartTls),
            TlsGate::Refuse(OptionError::Invalid)
        );
        for option in [&list, &go, &export_name, &OptionRequest::Abort] {
            assert_eq!(tls_gate(over, option), TlsGate::Serve);
        }
        assert_eq!(
            tls_gate(TlsMode::NoTls, &OptionRequest::StartTls),
            TlsGate::Refuse(OptionError::Policy)
        );
        assert_eq!(tls_gate(TlsMode::NoTls, &go), TlsGate::Serve);
    }
}
