//! Sans-IO codec for the server side of the NBD protocol (fixed newstyle only).
//!
//! This crate turns bytes into NBD messages and messages into bytes. It never reads a socket,
//! never spawns a task, and knows nothing about volumes or the journal: the datatap owns the
//! connection and drives this crate from its read loop.
//!
//! # Connection state machine
//!
//! ```text
//!   server: encode_server_greeting ──► client flags ──► option haggling ──► transmission
//!                                      decode_client_flags   decode_option      decode_request(_header)
//!                                                            encode_option_reply validate
//!                                                                               encode_simple_reply
//!                                                                               encode_structured_reply
//! ```
//!
//! 1. **Greeting.** Send [`encode_server_greeting`] (`NBDMAGIC`, `IHAVEOPT`,
//!    `FIXED_NEWSTYLE | NO_ZEROES`).
//! 2. **Client flags.** [`decode_client_flags`]; unknown bits are a [`ProtocolError`]
//!    (the spec says the server MUST drop the connection). Keep the flags: `NO_ZEROES` changes
//!    the `NBD_OPT_EXPORT_NAME` reply.
//! 3. **Options.** Loop on [`decode_option`] and answer each [`OptionRequest`]:
//!    * `ExportName` → [`encode_export_name_reply`] and enter transmission, or disconnect
//!      (this option has no error reply).
//!    * `Go` / `Info` → [`OptionReply::Info`] (`Info::Export` is mandatory; add `BlockSize`
//!      when requested) then [`OptionReply::Ack`], or an [`OptionReply::Error`]
//!      (`OptionError::Unknown` for a missing export). An ACKed `Go` enters transmission.
//!    * `List` → one [`OptionReply::Server`] per export, then ACK.
//!    * `StructuredReply` → ACK, and use structured replies for reads from then on.
//!    * `Abort` → ACK, then close. `StartTls` → `OptionError::Policy` for a NOTLS server; a
//!      server that requires TLS asks [`tls_gate`] first (ACK, then the caller runs the TLS
//!      handshake and haggles on over TLS; before TLS everything else gets `TlsReqd`).
//!    * `Unsupported` → `OptionError::Unsup`; `Malformed` → `OptionError::Invalid`.
//! 4. **Transmission.** Loop on [`decode_request_header`] (then read the write payload into
//!    your own buffer) or [`decode_request`] (payload borrowed from the input). Run
//!    [`validate`] and [`validate_negotiated`]; on `Err(errno)` reply with that error and keep
//!    serving. `Command::Disc` gets no reply. Reply with [`encode_simple_reply`] or, when
//!    structured replies were negotiated, [`encode_structured_reply`] /
//!    [`encode_offset_data_header`].
//!
//! # Decoder contract
//!
//! Every decoder takes the bytes buffered so far and returns
//! * `Ok(Some((message, consumed_bytes)))` — drop `consumed_bytes` from the front of the buffer;
//! * `Ok(None)` — incomplete; read more and call again with the longer buffer;
//! * `Err(ProtocolError)` — the stream is unusable; hard-disconnect.
//!
//! Decoders never panic on any input (property-tested and fuzzed), and every length field is
//! checked against a limit from the header alone, before the caller is asked to buffer more.
//! Encoders append to a `Vec<u8>` and panic only on caller bugs (documented per function).
//!
//! # Example: one GO and one READ, as the server sees them
//!
//! ```
//! use redoubt_nbd_proto::{self as nbd, client, Info, InfoRequest, OptionReply, OptionRequest};
//!
//! // Bytes a client would send (built with the client half of this crate).
//! let mut inbound = Vec::new();
//! client::encode_client_flags(&mut inbound, nbd::ClientFlags::KNOWN);
//! client::encode_go(&mut inbound, "lv0", &[InfoRequest::BlockSize]);
//!
//! let mut outbound = Vec::new();
//! nbd::encode_server_greeting(&mut outbound);
//! let (client_flags, consumed) = nbd::decode_client_flags(&inbound)?.expect("complete");
//! inbound.drain(..consumed);
//! assert!(client_flags.contains(nbd::ClientFlags::NO_ZEROES));
//!
//! let (option, consumed) = nbd::decode_option(&inbound)?.expect("complete");
//! inbound.drain(..consumed);
//! let OptionRequest::Go(query) = &option else { panic!("expected GO") };
//! assert_eq!(query.name, "lv0");
//! let export_size_bytes = 1 << 30;
//! let flags = nbd::TransmissionFlags::HAS_FLAGS | nbd::TransmissionFlags::SEND_FLUSH;
//! let export = Info::Export { size_bytes: export_size_bytes, transmission_flags: flags };
//! nbd::encode_option_reply(&mut outbound, option.option(), &OptionReply::Info(export));
//! if query.requests(InfoRequest::BlockSize) {
//!     let block_size = Info::BlockSize(nbd::BlockSize::REDOUBT);
//!     nbd::encode_option_reply(&mut outbound, option.option(), &OptionReply::Info(block_size));
//! }
//! nbd::encode_option_reply(&mut outbound, option.option(), &OptionReply::Ack);
//!
//! // Transmission: a read past the end is answered with EINVAL and the loop goes on.
//! let read = nbd::RequestHeader {
//!     flags: nbd::CommandFlags::empty(),
//!     command: nbd::Command::Read,
//!     handle: 7,
//!     offset_bytes: export_size_bytes,
//!     length_bytes: 4096,
//! };
//! client::encode_request(&mut inbound, &read, &[]);
//! let (request, consumed) = nbd::decode_request(&inbound)?.expect("complete");
//! assert_eq!(consumed, nbd::REQUEST_HEADER_BYTES);
//! let verdict = nbd::validate(&request.header, export_size_bytes, false)
//!     .and_then(|()| nbd::validate_negotiated(&request.header, flags));
//! assert_eq!(verdict, Err(nbd::NbdErrno::EINVAL));
//! nbd::encode_simple_reply(&mut outbound, request.header.handle, verdict.err());
//! # Ok::<(), nbd::ProtocolError>(())
//! ```
//!
//! # Limits
//!
//! See [`limits`]: export names ≤ 4096 bytes (the spec's string limit), option data
//! ≤ 8 KiB, write payloads ≤ 32 MiB. The [`client`] module mirrors the server side for tests.

#![deny(missing_docs)]

pub mod client;
mod error;
mod flags;
mod handshake;
mod transmission;
mod validate;
mod wire;

pub use error::ProtocolError;
pub use flags::{ClientFlags, CommandFlags, HandshakeFlags, ReplyFlags, TransmissionFlags};
pub use handshake::{
    decode_client_flags, decode_option, encode_export_name_reply, encode_option_reply,
    encode_server_greeting, info_type, option_code, reply_type, BlockSize, ExportQuery, Info,
    InfoRequest, MalformedOption, OptionError, OptionReply, OptionRequest, CLIENT_FLAGS_BYTES,
    EXPORT_NAME_REPLY_BYTES_MIN, EXPORT_NAME_REPLY_ZEROES_BYTES, IHAVEOPT_MAGIC, NBD_MAGIC,
    OPTION_HEADER_BYTES, OPTION_REPLY_HEADER_BYTES, OPTION_REPLY_MAGIC, SERVER_GREETING_BYTES,
    SERVER_HANDSHAKE_FLAGS,
};
pub use handshake::{tls_gate, TlsGate, TlsMode};
pub use transmission::{
    chunk_type, command_code, decode_request, decode_request_header, encode_offset_data_header,
    encode_simple_reply, encode_structured_reply, Command, NbdErrno, ReplyChunk, Request,
    RequestHeader, REQUEST_HEADER_BYTES, REQUEST_MAGIC, SIMPLE_REPLY_HEADER_BYTES,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_HEADER_BYTES, STRUCTURED_REPLY_MAGIC,
};
pub use validate::{validate, validate_block_size, validate_negotiated};

/// Every bound this crate enforces. Each exists so a hostile or broken peer cannot make the
/// server buffer an unbounded amount.
pub mod limits {
    /// NBD strings (names, messages) MUST be no longer than 4096 bytes (proto.md "Conventions").
    pub const STRING_LENGTH_BYTES_MAX: usize = 4096;

    /// Export name limit: the spec's string limit, as the `u32` the wire uses.
    pub const NAME_LENGTH_BYTES_MAX: u32 = 4096;

    /// Largest option data we accept. The largest legal option we parse is `NBD_OPT_GO`:
    /// 4 (name length) + 4096 (name) + 2 (count) + 2 × count. 8 KiB leaves room for ~2000
    /// information requests (the spec defines 4) while keeping per-connection buffering small.
    pub const OPTION_LENGTH_BYTES_MAX: u32 = 8 * 1024;

    /// Largest write payload (and read length) we serve: 32 MiB.
    ///
    /// The spec says any length below 2^25 (32 MiB) SHOULD NOT be considered a denial of
    /// service and that interoperable clients cap READ/WRITE at 2^25, so this is the smallest
    /// limit that never refuses a well-behaved client. It is also the maximum block size we
    /// advertise in `NBD_INFO_BLOCK_SIZE` ([`crate::BlockSize::REDOUBT`]).
    pub const REQUEST_PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;

    /// Client side: largest option reply payload accepted (a `NBD_REP_SERVER` carries a name
    /// and a description of up to 4096 bytes each).
    pub const OPTION_REPLY_LENGTH_BYTES_MAX: u32 = 16 * 1024;

    /// Client side: largest structured reply chunk payload (a full-size `OFFSET_DATA`).
    pub const REPLY_CHUNK_LENGTH_BYTES_MAX: u32 = REQUEST_PAYLOAD_BYTES_MAX + 8;

    const _: () = assert!(NAME_LENGTH_BYTES_MAX as usize == STRING_LENGTH_BYTES_MAX);
    const _: () = assert!(OPTION_LENGTH_BYTES_MAX >= 4 + NAME_LENGTH_BYTES_MAX + 2 + 2 * 4);
    const _: () = assert!(REQUEST_PAYLOAD_BYTES_MAX == 1 << 25);
    const _: () = assert!(OPTION_REPLY_LENGTH_BYTES_MAX >= 4 + 2 * NAME_LENGTH_BYTES_MAX);
}
