//! The client half of the codec: just enough to drive a server in tests and tools.
//!
//! Encoders mirror the server's decoders and decoders mirror its encoders, so a test can run
//! a whole session through bytes: greeting → flags → options → requests → replies.

use crate::error::ProtocolError;
use crate::flags::{ClientFlags, HandshakeFlags, ReplyFlags, TransmissionFlags};
use crate::handshake::{
    info_type, BlockSize, Info, InfoRequest, OptionRequest, EXPORT_NAME_REPLY_BYTES_MIN,
    EXPORT_NAME_REPLY_ZEROES_BYTES, IHAVEOPT_MAGIC, NBD_MAGIC, OPTION_HEADER_BYTES,
    OPTION_REPLY_HEADER_BYTES, OPTION_REPLY_MAGIC, SERVER_GREETING_BYTES,
};
use crate::limits::{
    NAME_LENGTH_BYTES_MAX, OPTION_LENGTH_BYTES_MAX, OPTION_REPLY_LENGTH_BYTES_MAX,
    REPLY_CHUNK_LENGTH_BYTES_MAX,
};
use crate::transmission::{
    RequestHeader, REQUEST_HEADER_BYTES, REQUEST_MAGIC, SIMPLE_REPLY_HEADER_BYTES,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_HEADER_BYTES, STRUCTURED_REPLY_MAGIC,
};
use crate::wire::{self, put_u16, put_u32, put_u64, Cursor};

/// Decodes the server greeting; fatal unless it is fixed newstyle (`NBDMAGIC` + `IHAVEOPT`).
pub fn decode_server_greeting(
    input: &[u8],
) -> Result<Option<(HandshakeFlags, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let (Some(magic), Some(option_magic), Some(flags)) = (cursor.u64(), cursor.u64(), cursor.u16())
    else {
        return Ok(None);
    };
    if magic != NBD_MAGIC || option_magic != IHAVEOPT_MAGIC {
        return Err(ProtocolError::BadGreetingMagic);
    }
    assert_eq!(cursor.position(), SERVER_GREETING_BYTES);
    Ok(Some((
        HandshakeFlags::from_bits_retain(flags),
        SERVER_GREETING_BYTES,
    )))
}

/// Encodes the client flags.
pub fn encode_client_flags(out: &mut Vec<u8>, flags: ClientFlags) {
    put_u32(out, flags.bits());
}

/// Encodes an option with raw data (for unknown or deliberately malformed options in tests).
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    assert!(data.len() <= u32::MAX as usize);
    let length_before = out.len();
    put_u64(out, IHAVEOPT_MAGIC);
    put_u32(out, option);
    put_u32(out, wire::length_u32(data.len()));
    out.extend_from_slice(data);
    debug_assert_eq!(out.len() - length_before, OPTION_HEADER_BYTES + data.len());
}

/// Encodes a well-formed option request.
///
/// `Unsupported` encodes with empty data. `Malformed` has no canonical bytes and is a caller
/// bug here (panics); build those with [`encode_option`].
pub fn encode_option_request(out: &mut Vec<u8>, request: &OptionRequest) {
    let option = request.option();
    let mut data = Vec::new();
    match request {
        OptionRequest::ExportName { name } => {
            assert!(name.len() <= NAME_LENGTH_BYTES_MAX as usize);
            data.extend_from_slice(name.as_bytes());
        }
        OptionRequest::Info(query) | OptionRequest::Go(query) => {
            assert!(query.name.len() <= NAME_LENGTH_BYTES_MAX as usize);
            put_u32(&mut data, wire::length_u32(query.name.len()));
            data.extend_from_slice(query.name.as_bytes());
            let count = u16::try_from(query.info_requests.len());
            put_u16(
                &mut data,
                count.unwrap_or_else(|_| panic!("too many info requests")),
            );
            for info in &query.info_requests {
                put_u16(&mut data, info.code());
            }
        }
        OptionRequest::Abort
        | OptionRequest::List
        | OptionRequest::StartTls
        | OptionRequest::StructuredReply
        | OptionRequest::Unsupported { .. } => {}
        OptionRequest::Malformed { .. } => panic!("a Malformed option has no canonical encoding"),
    }
    assert!(data.len() <= OPTION_LENGTH_BYTES_MAX as usize);
    encode_option(out, option, &data);
}

/// Convenience for the common `NBD_OPT_GO` with a list of information requests.
pub fn encode_go(out: &mut Vec<u8>, name: &str, info_requests: &[InfoRequest]) {
    let query = crate::handshake::ExportQuery {
        name: name.to_owned(),
        info_requests: info_requests.to_vec(),
    };
    encode_option_request(out, &OptionRequest::Go(query));
}

/// An option reply as received, payload borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOptionReply<'a> {
    /// The option this replies to.
    pub option: u32,
    /// `NBD_REP_*`; errors have bit 31 set.
    pub reply_type: u32,
    /// The reply data.
    pub payload: &'a [u8],
}

impl<'a> RawOptionReply<'a> {
    /// True for `NBD_REP_ERR_*`.
    pub fn is_error(&self) -> bool {
        self.reply_type & crate::handshake::reply_type::ERROR_BIT != 0
    }

    /// Parses an `NBD_REP_INFO` payload; `None` if this is not a well-formed INFO reply or
    /// the information type is unknown.
    pub fn info(&self) -> Option<Info<'a>> {
        if self.reply_type != crate::handshake::reply_type::INFO {
            return None;
        }
        let mut cursor = Cursor::new(self.payload);
        let kind = cursor.u16()?;
        let info = match kind {
            info_type::EXPORT => {
                let size_bytes = cursor.u64()?;
                let flags = TransmissionFlags::from_bits_retain(cursor.u16()?);
                Info::Export {
                    size_bytes,
                    transmission_flags: flags,
                }
            }
            info_type::NAME | info_type::DESCRIPTION => {
                let text = cursor.take(cursor.remaining())?;
                let text = wire::parse_string(text).ok()?;
                if kind == info_type::NAME {
                    Info::Name(text)
                } else {
                    Info::Description(text)
                }
            }
            info_type::BLOCK_SIZE => Info::BlockSize(BlockSize {
                minimum_bytes: cursor.u32()?,
                preferred_bytes: cursor.u32()?,
                maximum_bytes: cursor.u32()?,
            }),
            _ => return None,
        };
        (cursor.remaining() == 0).then_some(info)
    }

    /// Parses an `NBD_REP_SERVER` payload into (name, description).
    pub fn server(&self) -> Option<(&'a str, &'a str)> {
        if self.reply_type != crate::handshake::reply_type::SERVER {
            return None;
        }
        let mut cursor = Cursor::new(self.payload);
        let name_length = cursor.u32()?;
        let name = wire::parse_string(cursor.take(name_length as usize)?).ok()?;
        let description = wire::parse_string(cursor.take(cursor.remaining())?).ok()?;
        Some((name, description))
    }
}

/// Decodes one option reply. Fatal: bad magic, payload above `OPTION_REPLY_LENGTH_BYTES_MAX`.
pub fn decode_option_reply(
    input: &[u8],
) -> Result<Option<(RawOptionReply<'_>, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let Some(magic) = cursor.u64() else {
        return Ok(None);
    };
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtocolError::BadOptionReplyMagic { magic });
    }
    let (Some(option), Some(reply_type), Some(length_bytes)) =
        (cursor.u32(), cursor.u32(), cursor.u32())
    else {
        return Ok(None);
    };
    if length_bytes > OPTION_REPLY_LENGTH_BYTES_MAX {
        return Err(ProtocolError::ReplyTooLong {
            length_bytes,
            length_bytes_max: OPTION_REPLY_LENGTH_BYTES_MAX,
        });
    }
    let Some(payload) = cursor.take(length_bytes as usize) else {
        return Ok(None);
    };
    assert_eq!(cursor.position(), OPTION_REPLY_HEADER_BYTES + payload.len());
    Ok(Some((
        RawOptionReply {
            option,
            reply_type,
            payload,
        },
        cursor.position(),
    )))
}

/// The `NBD_OPT_EXPORT_NAME` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size.
    pub size_bytes: u64,
    /// Transmission flags.
    pub transmission_flags: TransmissionFlags,
}

/// Decodes the `NBD_OPT_EXPORT_NAME` reply.
/// Expects the 124 zero bytes unless `client_flags` has `NO_ZEROES`.
pub fn decode_export_name_reply(
    input: &[u8],
    client_flags: ClientFlags,
) -> Result<Option<(ExportNameReply, usize)>, ProtocolError> {
    let zeroes = if client_flags.contains(ClientFlags::NO_ZEROES) {
        0
    } else {
        EXPORT_NAME_REPLY_ZEROES_BYTES
    };
    let mut cursor = Cursor::new(input);
    let (Some(size_bytes), Some(flags), Some(_)) =
        (cursor.u64(), cursor.u16(), cursor.take(zeroes))
    else {
        return Ok(None);
    };
    assert_eq!(cursor.position(), EXPORT_NAME_REPLY_BYTES_MIN + zeroes);
    let transmission_flags = TransmissionFlags::from_bits_retain(flags);
    Ok(Some((
        ExportNameReply {
            size_bytes,
            transmission_flags,
        },
        cursor.position(),
    )))
}

/// Encodes a request header followed by `payload` (which must be empty unless `Write`).
pub fn encode_request(out: &mut Vec<u8>, header: &RequestHeader, payload: &[u8]) {
    assert_eq!(
        payload.len(),
        header.payload_length_bytes(),
        "payload must match the header"
    );
    let length_before = out.len();
    put_u32(out, REQUEST_MAGIC);
    put_u16(out, header.flags.bits());
    put_u16(out, header.command.code());
    put_u64(out, header.handle);
    put_u64(out, header.offset_bytes);
    put_u32(out, header.length_bytes);
    debug_assert_eq!(out.len() - length_before, REQUEST_HEADER_BYTES);
    out.extend_from_slice(payload);
}

/// A transmission reply as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A simple reply header. For a successful read, `length_bytes` of data follow it and are
    /// *not* consumed here: only the client knows which handle was a read.
    Simple {
        /// Handle of the request.
        handle: u64,
        /// Zero for success, otherwise an NBD error value.
        error: u32,
    },
    /// One structured reply chunk with its payload.
    Structured {
        /// Chunk flags (`DONE`).
        flags: ReplyFlags,
        /// `NBD_REPLY_TYPE_*`.
        chunk_type: u16,
        /// Handle of the request.
        handle: u64,
        /// The chunk payload.
        payload: &'a [u8],
    },
}

/// Decodes one reply header (simple) or chunk (structured), dispatching on the magic.
/// Fatal: unknown magic, chunk payload above `REPLY_CHUNK_LENGTH_BYTES_MAX`.
pub fn decode_reply(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
    let mut cursor = Cursor::new(input);
    let Some(magic) = cursor.u32() else {
        return Ok(None);
    };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(handle)) = (cursor.u32(), cursor.u64()) else {
                return Ok(None);
            };
            assert_eq!(cursor.position(), SIMPLE_REPLY_HEADER_BYTES);
            Ok(Some((
                Reply::Simple { handle, error },
                SIMPLE_REPLY_HEADER_BYTES,
            )))
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(chunk_type), Some(handle), Some(length_bytes)) =
                (cursor.u16(), cursor.u16(), cursor.u64(), cursor.u32())
            else {
                return Ok(None);
            };
            if length_bytes > REPLY_CHUNK_LENGTH_BYTES_MAX {
                return Err(ProtocolError::ReplyTooLong {
                    length_bytes,
                    length_bytes_max: REPLY_CHUNK_LENGTH_BYTES_MAX,
                });
            }
            let Some(payload) = cursor.take(length_bytes as usize) else {
                return Ok(None);
            };
            assert_eq!(
                cursor.position(),
                STRUCTURED_REPLY_HEADER_BYTES + payload.len()
            );
            let flags = ReplyFlags::from_bits_retain(flags);
            let reply = Reply::Structured {
                flags,
                chunk_type,
                handle,
                payload,
            };
            Ok(Some((reply, cursor.position())))
        }
        magic => Err(ProtocolError::BadReplyMagic { magic }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::CommandFlags;
    use crate::handshake::{
        decode_client_flags, decode_option, encode_export_name_reply, encode_option_reply,
        encode_server_greeting, option_code, reply_type, ExportQuery, OptionError, OptionReply,
    };
    use crate::transmission::{
        chunk_type, decode_request, encode_simple_reply, encode_structured_reply, Command,
        NbdErrno, ReplyChunk,
    };

    #[test]
    fn a_whole_session_round_trips_through_bytes() {
        // Greeting and flags.
        let mut wire_bytes = Vec::new();
        encode_server_greeting(&mut wire_bytes);
        let (handshake, consumed) = decode_server_greeting(&wire_bytes).unwrap().unwrap();
        assert_eq!(consumed, SERVER_GREETING_BYTES);
        assert!(handshake.contains(HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES));
        wire_bytes.clear();
        encode_client_flags(&mut wire_bytes, ClientFlags::KNOWN);
        assert_eq!(
            decode_client_flags(&wire_bytes).unwrap().unwrap().0,
            ClientFlags::KNOWN
        );

        // GO with a block size request, answered with INFO × 2 and ACK.
        wire_bytes.clear();
        encode_go(&mut wire_bytes, "lv0", &[InfoRequest::BlockSize]);
        let (request, _) = decode_option(&wire_bytes).unwrap().unwrap();
        let OptionRequest::Go(query) = &request else {
            panic!("expected GO, got {request:?}")
        };
        assert!(query.requests(InfoRequest::BlockSize));
        let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
        let mut replies = Vec::new();
        let export = Info::Export {
            size_bytes: 1 << 30,
            transmission_flags: flags,
        };
        encode_option_reply(&mut replies, request.option(), &OptionReply::Info(export));
        let block_size = Info::BlockSize(BlockSize::REDOUBT);
        encode_option_reply(
            &mut replies,
            request.option(),
            &OptionReply::Info(block_size),
        );
        encode_option_reply(&mut replies, request.option(), &OptionReply::Ack);
        let mut decoded = Vec::new();
        let mut position = 0;
        while let Some((reply, consumed)) = decode_option_reply(&replies[position..]).unwrap() {
            assert_eq!(reply.option, option_code::GO);
            decoded.push(reply);
            position += consumed;
        }
        assert_eq!(position, replies.len());
        assert_eq!(decoded[0].info(), Some(export));
        assert_eq!(decoded[1].info(), Some(block_size));
        assert_eq!(decoded[2].reply_type, reply_type::ACK);

        // A write and its reply.
        let header = RequestHeader {
            flags: CommandFlags::FUA,
            command: Command::Write,
            handle: 77,
            offset_bytes: 4096,
            length_bytes: 3,
        };
        wire_bytes.clear();
        encode_request(&mut wire_bytes, &header, b"xyz");
        let (request, consumed) = decode_request(&wire_bytes).unwrap().unwrap();
        assert_eq!(
            (request.header, request.payload, consumed),
            (header, &b"xyz"[..], 31)
        );
        wire_bytes.clear();
        encode_simple_reply(&mut wire_bytes, 77, Some(NbdErrno::ENOSPC));
        let (reply, _) = decode_reply(&wire_bytes).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Simple {
                handle: 77,
                error: 28
            }
        );
    }

    #[test]
    fn server_and_error_replies_parse() {
        let mut bytes = Vec::new();
        let server = OptionReply::Server {
            name: "lv0",
            description: "boot volume",
        };
        encode_option_reply(&mut bytes, option_code::LIST, &server);
        let error = OptionReply::Error {
            error: OptionError::Unknown,
            message: "no such export",
        };
        encode_option_reply(&mut bytes, option_code::GO, &error);
        let (first, consumed) = decode_option_reply(&bytes).unwrap().unwrap();
        assert_eq!(first.server(), Some(("lv0", "boot volume")));
        assert!(!first.is_error());
        let (second, _) = decode_option_reply(&bytes[consumed..]).unwrap().unwrap();
        assert!(second.is_error());
        assert_eq!(second.reply_type, OptionError::Unknown.code());
        assert_eq!(second.payload, b"no such export");
        assert_eq!(second.info(), None);
    }

    #[test]
    fn export_name_reply_round_trips_with_and_without_zeroes() {
        let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY;
        for client_flags in [ClientFlags::FIXED_NEWSTYLE, ClientFlags::KNOWN] {
            let mut bytes = Vec::new();
            encode_export_name_reply(&mut bytes, 123_456, flags, client_flags);
            let (decoded, consumed) = decode_export_name_reply(&bytes, client_flags)
                .unwrap()
                .unwrap();
            assert_eq!(
                decoded,
                ExportNameReply {
                    size_bytes: 123_456,
                    transmission_flags: flags
                }
            );
            assert_eq!(consumed, bytes.len());
            assert_eq!(
                decode_export_name_reply(&bytes[..consumed - 1], client_flags),
                Ok(None)
            );
        }
    }

    #[test]
    fn structured_chunks_decode() {
        let mut bytes = Vec::new();
        let data = ReplyChunk::OffsetData {
            offset_bytes: 8,
            data: b"abc",
        };
        encode_structured_reply(&mut bytes, 3, false, &data);
        encode_structured_reply(&mut bytes, 3, true, &ReplyChunk::None);
        let (first, consumed) = decode_reply(&bytes).unwrap().unwrap();
        let Reply::Structured {
            flags,
            chunk_type: kind,
            handle,
            payload,
        } = first
        else {
            panic!("expected structured, got {first:?}");
        };
        assert_eq!(
            (flags, kind, handle),
            (ReplyFlags::empty(), chunk_type::OFFSET_DATA, 3)
        );
        assert_eq!(payload, &[0, 0, 0, 0, 0, 0, 0, 8, b'a', b'b', b'c']);
        let (second, _) = decode_reply(&bytes[consumed..]).unwrap().unwrap();
        assert!(matches!(
            second,
            Reply::Structured {
                flags: ReplyFlags::DONE,
                ..
            }
        ));
    }

    #[test]
    fn client_decoders_reject_bad_magic_and_oversize() {
        assert_eq!(
            decode_server_greeting(&[0; 18]),
            Err(ProtocolError::BadGreetingMagic)
        );
        assert!(matches!(
            decode_option_reply(&[0; 20]),
            Err(ProtocolError::BadOptionReplyMagic { .. })
        ));
        assert!(matches!(
            decode_reply(&[0; 16]),
            Err(ProtocolError::BadReplyMagic { .. })
        ));
        let mut too_long = Vec::new();
        put_u64(&mut too_long, OPTION_REPLY_MAGIC);
        put_u32(&mut too_long, 1);
        put_u32(&mut too_long, 1);
        put_u32(&mut too_long, OPTION_REPLY_LENGTH_BYTES_MAX + 1);
        assert!(matches!(
            decode_option_reply(&too_long),
            Err(ProtocolError::ReplyTooLong { .. })
        ));
    }

    #[test]
    fn option_requests_round_trip() {
        let requests = [
            OptionRequest::ExportName { name: "x".into() },
            OptionRequest::Abort,
            OptionRequest::List,
            OptionRequest::StartTls,
            OptionRequest::StructuredReply,
            OptionRequest::Info(ExportQuery {
                name: String::new(),
                info_requests: vec![],
            }),
            OptionRequest::Unsupported { option: 1000 },
        ];
        for request in requests {
            let mut bytes = Vec::new();
            encode_option_request(&mut bytes, &request);
            let (decoded, consumed) = decode_option(&bytes).unwrap().unwrap();
            assert_eq!(decoded, request);
            assert_eq!(consumed, bytes.len());
        }
    }
}
