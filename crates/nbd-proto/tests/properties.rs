//! Property tests: decoders are total on arbitrary bytes, truncation is never an error, and
//! encode → decode is the identity for every valid message.

use proptest::prelude::*;
use redoubt_nbd_proto::client::{self, Reply};
use redoubt_nbd_proto::limits::{NAME_LENGTH_BYTES_MAX, REQUEST_PAYLOAD_BYTES_MAX};
use redoubt_nbd_proto::{
    decode_client_flags, decode_option, decode_request, decode_request_header, encode_simple_reply,
    encode_structured_reply, validate, ClientFlags, Command, CommandFlags, ExportQuery,
    InfoRequest, NbdErrno, OptionRequest, ProtocolError, ReplyChunk, RequestHeader,
    REQUEST_HEADER_BYTES,
};

/// A decoder's answer with the message dropped: consumed bytes, need-more, or fatal.
type Consumed = Result<Option<usize>, ProtocolError>;

/// Runs `check_contract` on a decoder whose message may borrow from its input.
macro_rules! check {
    ($input:expr, $decode:expr) => {
        check_contract($input, |bytes: &[u8]| {
            $decode(bytes).map(|decoded| decoded.map(|(_, consumed)| consumed))
        })
    };
}

/// Checks the decoder contract on `input`: consumption is in bounds and non-zero, and every
/// strict prefix of a complete message decodes as "need more bytes".
fn check_contract(input: &[u8], decode: impl Fn(&[u8]) -> Consumed) {
    let outcome = decode(input);
    assert_eq!(decode(input), outcome, "decoding is deterministic");
    if let Ok(Some(consumed)) = outcome {
        assert!(consumed > 0, "progress");
        assert!(
            consumed <= input.len(),
            "consumed {consumed} of {}",
            input.len()
        );
        for length in 0..consumed {
            let prefix = decode(&input[..length]);
            assert!(matches!(prefix, Ok(None)), "prefix {length}: {prefix:?}");
        }
    }
    if outcome == Ok(None) {
        // Less input can never be more decodable.
        assert_eq!(decode(&input[..input.len() / 2]), Ok(None));
    }
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Any chars but NUL, capped in bytes by filtering (multi-byte chars may exceed the count).
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..64)
        .prop_map(|chars| chars.into_iter().collect::<String>())
        .prop_filter("fits the name limit", |name| {
            name.len() <= NAME_LENGTH_BYTES_MAX as usize
        })
}

fn info_request_strategy() -> impl Strategy<Value = InfoRequest> {
    any::<u16>().prop_map(InfoRequest::from_code)
}

fn query_strategy() -> impl Strategy<Value = ExportQuery> {
    let info_requests = proptest::collection::vec(info_request_strategy(), 0..8);
    (name_strategy(), info_requests).prop_map(|(name, info_requests)| ExportQuery {
        name,
        info_requests,
    })
}

fn option_request_strategy() -> impl Strategy<Value = OptionRequest> {
    prop_oneof![
        name_strategy().prop_map(|name| OptionRequest::ExportName { name }),
        Just(OptionRequest::Abort),
        Just(OptionRequest::List),
        Just(OptionRequest::StartTls),
        Just(OptionRequest::StructuredReply),
        query_strategy().prop_map(OptionRequest::Info),
        query_strategy().prop_map(OptionRequest::Go),
        (11u32..).prop_map(|option| OptionRequest::Unsupported { option }),
    ]
}

fn request_strategy() -> impl Strategy<Value = (RequestHeader, Vec<u8>)> {
    let command = prop_oneof![
        Just(Command::Read),
        Just(Command::Write),
        Just(Command::Disc),
        Just(Command::Flush),
        Just(Command::Trim),
        Just(Command::WriteZeroes),
        any::<u16>().prop_map(Command::from_code),
    ];
    (
        command,
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<Vec<u8>>(),
    )
        .prop_map(
            |(command, flags, handle, offset_bytes, length_bytes, payload)| {
                let length_bytes = if command == Command::Write {
                    u32::try_from(payload.len()).unwrap()
                } else {
                    length_bytes
                };
                let header = RequestHeader {
                    flags: CommandFlags::from_bits_retain(flags),
                    command,
                    handle,
                    offset_bytes,
                    length_bytes,
                };
                let payload = if command == Command::Write {
                    payload
                } else {
                    Vec::new()
                };
                (header, payload)
            },
        )
}

proptest! {
    #[test]
    fn server_decoders_never_panic_on_arbitrary_bytes(input in any::<Vec<u8>>()) {
        check!(&input, decode_client_flags);
        check!(&input, decode_option);
        check!(&input, decode_request_header);
        check!(&input, decode_request);
    }

    #[test]
    fn client_decoders_never_panic_on_arbitrary_bytes(input in any::<Vec<u8>>()) {
        check!(&input, client::decode_server_greeting);
        check!(&input, client::decode_option_reply);
        check!(&input, client::decode_reply);
        check!(&input, |bytes| client::decode_export_name_reply(bytes, ClientFlags::empty()));
        if let Ok(Some((reply, _))) = client::decode_option_reply(&input) {
            let _ = reply.info();
            let _ = reply.server();
        }
    }

    /// Valid magic followed by noise reaches the deeper parsing paths far more often.
    #[test]
    fn decoders_survive_valid_magic_then_noise(
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        length in 0u32..64,
        option in 0u32..12,
    ) {
        let mut option_bytes = Vec::new();
        client::encode_option(&mut option_bytes, option, &noise);
        check!(&option_bytes, decode_option);
        // Lie about the length: the decoder must wait or parse, never overrun.
        option_bytes[12..16].copy_from_slice(&length.to_be_bytes());
        check!(&option_bytes, decode_option);

        let mut request_bytes = 0x2560_9513u32.to_be_bytes().to_vec();
        request_bytes.extend_from_slice(&noise);
        check!(&request_bytes, decode_request);
    }

    #[test]
    fn option_requests_round_trip(request in option_request_strategy()) {
        let mut bytes = Vec::new();
        client::encode_option_request(&mut bytes, &request);
        let (decoded, consumed) = decode_option(&bytes).unwrap().unwrap();
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn requests_round_trip_and_stream(requests in proptest::collection::vec(request_strategy(), 1..6)) {
        let mut stream = Vec::new();
        for (header, payload) in &requests {
            client::encode_request(&mut stream, header, payload);
        }
        let mut position = 0;
        for (header, payload) in &requests {
            let (request, consumed) = decode_request(&stream[position..]).unwrap().unwrap();
            prop_assert_eq!(&request.header, header);
            prop_assert_eq!(request.payload, &payload[..]);
            let (header_only, header_bytes) =
                decode_request_header(&stream[position..]).unwrap().unwrap();
            prop_assert_eq!(&header_only, header);
            prop_assert_eq!(header_bytes, REQUEST_HEADER_BYTES);
            prop_assert_eq!(consumed, REQUEST_HEADER_BYTES + payload.len());
            position += consumed;
        }
        prop_assert_eq!(position, stream.len());
    }

    #[test]
    fn accepted_requests_lie_inside_the_export(
        (header, _) in request_strategy(),
        export_size_bytes in any::<u64>(),
        read_only in any::<bool>(),
    ) {
        if validate(&header, export_size_bytes, read_only).is_ok() {
            match header.command {
                Command::Disc => {}
                Command::Flush => {
                    prop_assert_eq!((header.offset_bytes, header.length_bytes), (0, 0));
                }
                Command::Unknown(_) => prop_assert!(false, "unknown commands are never valid"),
                command => {
                    prop_assert!(header.length_bytes > 0);
                    let end = header.offset_bytes.checked_add(u64::from(header.length_bytes));
                    prop_assert!(end.is_some_and(|end| end <= export_size_bytes));
                    prop_assert!(!(read_only && command.is_mutation()));
                    if matches!(command, Command::Read | Command::Write) {
                        prop_assert!(header.length_bytes <= REQUEST_PAYLOAD_BYTES_MAX);
                    }
                }
            }
            prop_assert!(header.flags.unknown().is_empty());
        }
    }

    #[test]
    fn replies_round_trip(handle in any::<u64>(), errno_index in 0usize..9, offset in any::<u64>(),
                          data in proptest::collection::vec(any::<u8>(), 1..64)) {
        let error = NbdErrno::ALL.get(errno_index).copied();
        let mut bytes = Vec::new();
        encode_simple_reply(&mut bytes, handle, error);
        let (reply, _) = client::decode_reply(&bytes).unwrap().unwrap();
        prop_assert_eq!(reply, Reply::Simple { handle, error: error.map_or(0, NbdErrno::code) });

        bytes.clear();
        let chunk = ReplyChunk::OffsetData { offset_bytes: offset, data: &data };
        encode_structured_reply(&mut bytes, handle, true, &chunk);
        let (reply, consumed) = client::decode_reply(&bytes).unwrap().unwrap();
        prop_assert_eq!(consumed, bytes.len());
        let Reply::Structured { handle: decoded_handle, payload, .. } = reply else {
            panic!("expected a structured reply");
        };
        prop_assert_eq!(decoded_handle, handle);
        prop_assert_eq!(&payload[..8], &offset.to_be_bytes()[..]);
        prop_assert_eq!(&payload[8..], &data[..]);
    }
}
