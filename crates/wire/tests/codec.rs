//! Codec tests: round trips, corruption, limits, compression, sequencing, truncation.

use proptest::prelude::*;
use redoubt_journal::{
    encode as encode_record, GroupId, OwnedRecord, RecordHeader, RecordKind,
    RECORD_PAYLOAD_BYTES_MAX,
};
use redoubt_wire::*;

fn write_record(seq: u64, len: usize, fill: u8) -> OwnedRecord {
    OwnedRecord {
        header: RecordHeader {
            kind: RecordKind::Write,
            lv_id: 3,
            offset_bytes: seq * 4096,
            length_bytes: len as u32,
            seq,
            timestamp_ns: 1_700_000_000_000_000_000 + seq,
        },
        payload: vec![fill; len],
    }
}

fn batch(first_seq: u64, count: u64, len: usize, level: Option<i32>) -> RecordsBatch {
    let mut builder = RecordsBatchBuilder::new(BATCH_BYTES_MAX);
    for seq in first_seq..first_seq + count {
        let pushed = builder
            .push_owned(&write_record(seq, len, seq as u8))
            .unwrap();
        assert_eq!(pushed, BatchPush::Added);
    }
    builder.finish(level).unwrap()
}

fn hello() -> Hello {
    Hello {
        version_min: 1,
        version_max: 1,
        group_id: GroupId([0xAB; 16]),
        config_version: 7,
        journal: JournalPosition {
            first_seq: 10,
            last_seq: 99,
        },
        group_name: "payroll".into(),
        sender_name: "prod-a".into(),
        target_name: "dr-1".into(),
    }
}

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(hello()),
        Frame::Welcome(Welcome {
            version: 1,
            resume_after_seq: 41,
            config_version: 7,
            flags: WELCOME_FLAG_NEEDS_FULL_RESYNC,
        }),
        Frame::Refuse(Refuse {
            code: RefuseCode::ResumeNotAvailable,
            message: "need seq 5, journal starts at 10".into(),
        }),
        Frame::Records(batch(5, 3, 100, None)),
        Frame::Records(batch(5, 40, 4096, Some(3))),
        Frame::Ack(Ack {
            durable_seq: 44,
            applied_seq: 40,
            backlog_bytes: 1 << 20,
        }),
        Frame::Heartbeat(Heartbeat {
            now_ns: 123_456_789,
            durable_seq: 44,
        }),
        Frame::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: String::new(),
        }),
    ]
}

fn encoded(frame: &Frame, seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, PROTOCOL_VERSION_CURRENT, seq, &mut out).unwrap();
    out
}

/// Rewrite a field of an encoded frame and fix both checksums, to reach the payload checks.
fn reseal(bytes: &mut [u8]) {
    let payload_crc = crc32c::crc32c(&bytes[FRAME_HEADER_SIZE_BYTES..]);
    bytes[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    bytes[28..32].copy_from_slice(&[0; 4]);
    let header_crc = crc32c::crc32c(&bytes[..FRAME_HEADER_SIZE_BYTES]);
    bytes[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

#[test]
fn every_frame_round_trips() {
    for (index, frame) in sample_frames().iter().enumerate() {
        let seq = index as u64 + 1;
        let bytes = encoded(frame, seq);
        let (header, decoded, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(&decoded, frame);
        assert_eq!(header.frame_seq, seq);
        assert_eq!(header.frame_type, frame.frame_type());
        assert_eq!(header.payload_length as usize, bytes.len() - 32);
    }
}

#[test]
fn compressed_batch_is_smaller_and_round_trips() {
    let plain = batch(100, 50, 4096, None);
    let packed = batch(100, 50, 4096, Some(3));
    assert!(!plain.is_compressed());
    assert!(packed.is_compressed());
    let plain_bytes = encoded(&Frame::Records(plain.clone()), 1);
    let packed_bytes = encoded(&Frame::Records(packed), 1);
    assert!(packed_bytes.len() * 10 < plain_bytes.len());
    assert_eq!(packed_bytes[7], FLAG_COMPRESSED);
    let (_, frame, _) = decode_frame(&packed_bytes).unwrap().unwrap();
    let Frame::Records(decoded) = frame else {
        panic!("not a records frame")
    };
    assert_eq!(decoded, plain);
    assert_eq!(decoded.first_seq(), 100);
    assert_eq!(decoded.last_seq(), 149);
    let seqs: Vec<u64> = decoded.iter().map(|record| record.header.seq).collect();
    assert_eq!(seqs, (100..150).collect::<Vec<_>>());
    assert_eq!(decoded.iter().nth(7).unwrap().payload, &[107u8; 4096][..]);
}

#[test]
fn incompressible_batch_is_sent_plain() {
    let mut builder = RecordsBatchBuilder::new(BATCH_BYTES_MAX);
    let mut state = 0x1234_5678_u32;
    let noise: Vec<u8> = (0..2048)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let mut record = write_record(1, 2048, 0);
    record.payload = noise;
    assert_eq!(builder.push_owned(&record).unwrap(), BatchPush::Added);
    let built = builder.finish(Some(19)).unwrap();
    assert!(!built.is_compressed());
    assert_eq!(encoded(&Frame::Records(built), 1)[7], 0);
}

/// One compressor for many batches, as the send process keeps it: compressible batches
/// shrink and round-trip; a large batch whose first 64 KiB do not shrink is sent plain even
/// though its tail would (the sample decides, so random data costs no zstd pass).
#[test]
fn a_kept_compressor_judges_large_batches_by_their_start() {
    let mut compressor = BatchCompressor::new(3).unwrap();
    let noise = |length: usize, seed: u32| {
        let mut state = seed;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect::<Vec<u8>>()
    };
    for first_seq in [1u64, 100, 200] {
        let mut builder = RecordsBatchBuilder::new(BATCH_BYTES_MAX);
        for seq in first_seq..first_seq + 50 {
            let pushed = builder
                .push_owned(&write_record(seq, 4096, seq as u8))
                .unwrap();
            assert_eq!(pushed, BatchPush::Added);
        }
        let built = builder.finish_with(Some(&mut compressor)).unwrap();
        assert!(built.is_compressed());
        let round_trip = encoded(&Frame::Records(built.clone()), 1);
        assert!(round_trip.len() < built.len_bytes() as usize / 8);
        assert_eq!(built, batch(first_seq, 50, 4096, None));
    }
    let mut builder = RecordsBatchBuilder::new(BATCH_BYTES_MAX);
    let mut record = write_record(1, 2 * COMPRESSION_SAMPLE_BYTES, 0);
    record.payload = noise(2 * COMPRESSION_SAMPLE_BYTES, 7);
    assert_eq!(builder.push_owned(&record).unwrap(), BatchPush::Added);
    assert_eq!(
        builder.push_owned(&write_record(2, 1 << 20, 0)).unwrap(),
        BatchPush::Added
    );
    let built = builder.finish_with(Some(&mut compressor)).unwrap();
    assert!(!built.is_compressed(), "the incompressible start decides");
}

/// A compressed Records frame declaring `records_bytes` around an arbitrary zstd body.
fn compressed_frame(first_seq: u64, count: u32, records_bytes: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; FRAME_HEADER_SIZE_BYTES];
    bytes.extend_from_slice(&first_seq.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&records_bytes.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes[0..4].copy_from_slice(b"RDWF");
    bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
    bytes[6] = FrameType::Records as u8;
    bytes[7] = FLAG_COMPRESSED;
    bytes[8..16].copy_from_slice(&1u64.to_le_bytes());
    let payload_length = (bytes.len() - FRAME_HEADER_SIZE_BYTES) as u32;
    bytes[16..20].copy_from_slice(&payload_length.to_le_bytes());
    reseal(&mut bytes);
    bytes
}

#[test]
fn zip_bomb_is_rejected() {
    // 64 MiB of zeros compresses to a few KiB; declaring 4 KiB must not inflate it.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 64 << 10);
    let bytes = compressed_frame(1, 1, 4096, &bomb);
    assert!(matches!(
        decode_frame(&bytes),
        Err(WireError::Compression { .. })
    ));
}

#[test]
fn compressed_body_shorter_than_declared_is_rejected() {
    let mut records = Vec::new();
    let record = write_record(1, 100, 1);
    encode_record(&record.header, &record.payload, &mut records);
    let body = zstd::bulk::compress(&records, 3).unwrap();
    let bytes = compressed_frame(1, 1, records.len() as u32 + 64, &body);
    assert_eq!(
        decode_frame(&bytes).unwrap_err(),
        WireError::DecompressedLength {
            declared: records.len() as u32 + 64,
            actual: records.len() as u64
        }
    );
    // And the honest declaration decodes.
    let bytes = compressed_frame(1, 1, records.len() as u32, &body);
    assert!(matches!(
        decode_frame(&bytes),
        Ok(Some((_, Frame::Records(_), _)))
    ));
}

#[test]
fn declared_batch_over_the_cap_is_rejected_before_decompressing() {
    let bytes = compressed_frame(1, 1, BATCH_BYTES_MAX + 1, b"not zstd at all");
    assert_eq!(
        decode_frame(&bytes).unwrap_err(),
        WireError::BatchTooLarge {
            bytes: u64::from(BATCH_BYTES_MAX) + 1,
            bytes_max: BATCH_BYTES_MAX
        }
    );
    let garbage = compressed_frame(1, 1, 4096, b"not zstd at all");
    assert!(matches!(
        decode_frame(&garbage),
        Err(WireError::Compression { .. })
    ));
}

#[test]
fn batch_contents_are_validated() {
    let good = encoded(&Frame::Records(batch(5, 3, 100, None)), 1);
    // Declared first seq 6 but records start at 5.
    let mut wrong_first = good.clone();
    wrong_first[32..40].copy_from_slice(&6u64.to_le_bytes());
    reseal(&mut wrong_first);
    assert_eq!(
        decode_frame(&wrong_first).unwrap_err(),
        WireError::BatchSeq {
            index: 0,
            expected: 6,
            found: 5
        }
    );
    // Declared count 2 but 3 records present; count 4 with 3 present.
    for (declared, found) in [(2u32, 3u32), (4, 3)] {
        let mut wrong_count = good.clone();
        wrong_count[40..44].copy_from_slice(&declared.to_le_bytes());
        reseal(&mut wrong_count);
        assert_eq!(
            decode_frame(&wrong_count).unwrap_err(),
            WireError::BatchCount { declared, found }
        );
    }
    // Shape checks on the prefix alone: no records, more records than bytes, seq 0.
    for (first_seq, count, expected) in [
        (5u64, 0u32, WireError::BatchEmpty),
        (
            5,
            100,
            WireError::Malformed {
                frame_type: FrameType::Records,
                reason: "record_count records cannot fit in records_bytes",
            },
        ),
        (
            0,
            3,
            WireError::Malformed {
                frame_type: FrameType::Records,
                reason: "first_seq is 0 or the seq range overflows",
            },
        ),
        (
            u64::MAX,
            3,
            WireError::Malformed {
                frame_type: FrameType::Records,
                reason: "first_seq is 0 or the seq range overflows",
            },
        ),
    ] {
        let mut shaped = good.clone();
        shaped[32..40].copy_from_slice(&first_seq.to_le_bytes());
        shaped[40..44].copy_from_slice(&count.to_le_bytes());
        reseal(&mut shaped);
        assert_eq!(decode_frame(&shaped).unwrap_err(), expected);
    }
    // A gap: records 1 and 3.
    let mut body = Vec::new();
    for seq in [1, 3] {
        let record = write_record(seq, 10, 0);
        encode_record(&record.header, &record.payload, &mut body);
    }
    let mut gap = good[..32].to_vec();
    gap.extend_from_slice(&1u64.to_le_bytes());
    gap.extend_from_slice(&2u32.to_le_bytes());
    gap.extend_from_slice(&(body.len() as u32).to_le_bytes());
    gap.extend_from_slice(&body);
    let payload_length = (gap.len() - 32) as u32;
    gap[16..20].copy_from_slice(&payload_length.to_le_bytes());
    reseal(&mut gap);
    assert_eq!(
        decode_frame(&gap).unwrap_err(),
        WireError::BatchSeq {
            index: 1,
            expected: 2,
            found: 3
        }
    );
    // records_bytes disagreeing with the body.
    let mut wrong_len = good.clone();
    wrong_len[44..48].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut wrong_len);
    assert!(matches!(
        decode_frame(&wrong_len),
        Err(WireError::Malformed { .. })
    ));
    // A record whose journal CRC is broken (frame CRCs resealed around it).
    let mut bad_record = good.clone();
    let last = bad_record.len() - 1;
    bad_record[last] ^= 1;
    reseal(&mut bad_record);
    assert!(matches!(
        decode_frame(&bad_record),
        Err(WireError::BatchRecord { index: 2, .. })
    ));
}

#[test]
fn builder_respects_budget_and_continuity() {
    let builder = RecordsBatchBuilder::new(3 * (64 + 100));
    assert_eq!(builder.next_seq(), None);
    assert_eq!(builder.finish(None).unwrap_err(), WireError::BatchEmpty);
    let mut builder = RecordsBatchBuilder::new(3 * (64 + 100));
    for seq in 10..13 {
        let record = write_record(seq, 100, 0);
        assert_eq!(builder.push(&record.as_record()).unwrap(), BatchPush::Added);
    }
    assert_eq!(builder.next_seq(), Some(13));
    assert_eq!(
        builder.push_owned(&write_record(13, 100, 0)).unwrap(),
        BatchPush::Full
    );
    assert_eq!(
        builder.push_owned(&write_record(14, 1, 0)).unwrap_err(),
        WireError::BatchSeq {
            index: 3,
            expected: 13,
            found: 14
        }
    );
    let mut invalid = write_record(13, 4, 0);
    invalid.payload.pop();
    assert!(matches!(
        builder.push_owned(&invalid),
        Err(WireError::BatchRecord { index: 3, .. })
    ));
    assert_eq!(builder.record_count(), 3);
    assert_eq!(builder.len_bytes(), 3 * 164);
    // An oversized single record still makes a batch of its own.
    let mut single = RecordsBatchBuilder::new(10);
    let big = write_record(1, RECORD_PAYLOAD_BYTES_MAX as usize, 1);
    assert_eq!(single.push_owned(&big).unwrap(), BatchPush::Added);
    assert_eq!(
        single.push_owned(&write_record(2, 1, 1)).unwrap(),
        BatchPush::Full
    );
    let built = single.finish(None).unwrap();
    assert_eq!(built.record_count(), 1);
}

#[test]
fn limits_are_checked_from_the_header_alone() {
    // A Records header announcing a payload over the cap: rejected with only 32 bytes seen.
    let mut bytes = encoded(&Frame::Records(batch(1, 1, 8, None)), 1);
    bytes[16..20].copy_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    bytes.truncate(32);
    reseal_header_only(&mut bytes);
    assert!(matches!(
        decode_frame(&bytes),
        Err(WireError::PayloadLength {
            frame_type: FrameType::Records,
            ..
        })
    ));
    // An Ack header announcing 25 bytes.
    let mut ack = encoded(
        &Frame::Ack(Ack {
            durable_seq: 1,
            applied_seq: 1,
            backlog_bytes: 0,
        }),
        1,
    );
    ack[16..20].copy_from_slice(&25u32.to_le_bytes());
    ack.truncate(32);
    reseal_header_only(&mut ack);
    assert_eq!(
        decode_frame(&ack).unwrap_err(),
        WireError::PayloadLength {
            frame_type: FrameType::Ack,
            payload_bytes: 25,
            payload_bytes_min: 24,
            payload_bytes_max: 24
        }
    );
}

fn reseal_header_only(bytes: &mut [u8]) {
    bytes[28..32].copy_from_slice(&[0; 4]);
    let header_crc = crc32c::crc32c(&bytes[..FRAME_HEADER_SIZE_BYTES]);
    bytes[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

#[test]
fn invalid_fields_are_refused_by_the_encoder() {
    let long_name = "x".repeat(NAME_BYTES_MAX + 1);
    let cases = [
        Frame::Hello(Hello {
            group_name: long_name,
            ..hello()
        }),
        Frame::Hello(Hello {
            sender_name: String::new(),
            ..hello()
        }),
        Frame::Hello(Hello {
            version_min: 2,
            version_max: 1,
            ..hello()
        }),
        Frame::Hello(Hello {
            journal: JournalPosition {
                first_seq: 10,
                last_seq: 5,
            },
            ..hello()
        }),
        Frame::Ack(Ack {
            durable_seq: 1,
            applied_seq: 2,
            backlog_bytes: 0,
        }),
        Frame::Welcome(Welcome {
            version: 1,
            resume_after_seq: 0,
            config_version: 0,
            flags: 0x8000_0000,
        }),
        Frame::Goodbye(Goodbye {
            reason: GoodbyeReason::ProtocolError,
            message: "m".repeat(MESSAGE_BYTES_MAX + 1),
        }),
    ];
    for frame in cases {
        let mut out = vec![1, 2, 3];
        assert!(
            matches!(
                encode_frame(&frame, 1, 1, &mut out),
                Err(WireError::InvalidField { .. })
            ),
            "{frame:?}"
        );
        assert_eq!(out, [1, 2, 3], "nothing appended on error");
    }
    let mut out = Vec::new();
    assert_eq!(
        encode_frame(&sample_frames()[0], 2, 1, &mut out),
        Err(WireError::UnsupportedVersion { version: 2 })
    );
    // Name at exactly the cap and an empty journal are fine.
    let edge = Frame::Hello(Hello {
        target_name: "é".repeat(127),
        journal: JournalPosition::empty(1),
        ..hello()
    });
    let bytes = encoded(&edge, 1);
    assert_eq!(decode_frame(&bytes).unwrap().unwrap().1, edge);
}

#[test]
fn every_flipped_bit_is_an_error() {
    for frame in sample_frames() {
        let bytes = encoded(&frame, 9);
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= 1 << bit;
                assert!(
                    decode_frame(&corrupt).is_err(),
                    "{:?}: flip bit {bit} of byte {index}",
                    frame.frame_type()
                );
            }
        }
    }
}

#[test]
fn unknown_type_version_flags_and_reserved_are_errors() {
    let base = encoded(&sample_frames()[6], 1);
    let mutate = |index: usize, value: u8| {
        let mut bytes = base.clone();
        bytes[index] = value;
        reseal(&mut bytes);
        decode_frame(&bytes).unwrap_err()
    };
    assert_eq!(
        mutate(6, 99),
        WireError::UnknownFrameType { frame_type: 99 }
    );
    assert_eq!(mutate(4, 2), WireError::UnsupportedVersion { version: 2 });
    assert_eq!(
        mutate(7, FLAG_COMPRESSED),
        WireError::BadFlags {
            frame_type: FrameType::Heartbeat,
            flags: FLAG_COMPRESSED
        }
    );
    assert_eq!(mutate(25, 1), WireError::ReservedNonZero);
    assert_eq!(
        decode_frame(b"HTTP/1.1 200 OK\r\n").unwrap_err(),
        WireError::BadMagic {
            found: u32::from_le_bytes(*b"HTTP")
        }
    );
}

#[test]
fn every_strict_prefix_needs_more_bytes() {
    for frame in sample_frames() {
        let bytes = encoded(&frame, 1);
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "prefix {cut}");
        }
    }
}

#[test]
fn receiver_decodes_a_stream_in_order() {
    let mut sender = FrameSequencer::new();
    let mut stream = Vec::new();
    let frames = sample_frames();
    for (index, frame) in frames.iter().enumerate() {
        assert_eq!(sender.encode(frame, &mut stream).unwrap(), index as u64 + 1);
    }
    let mut receiver = FrameReceiver::new();
    let mut buffer: &[u8] = &stream;
    let mut decoded = Vec::new();
    while let Some((frame, used)) = receiver.decode(buffer).unwrap() {
        decoded.push(frame);
        buffer = &buffer[used..];
    }
    assert_eq!(decoded, frames);
    assert_eq!(receiver.expected_seq(), frames.len() as u64 + 1);
    assert_eq!(receiver.at_eof(buffer), Ok(()));
}

#[test]
fn replayed_reordered_and_dropped_frames_are_rejected() {
    let heartbeat = Frame::Heartbeat(Heartbeat {
        now_ns: 1,
        durable_seq: 0,
    });
    let mut sender = FrameSequencer::new();
    let mut frames = Vec::new();
    for _ in 0..3 {
        let mut out = Vec::new();
        sender.encode(&heartbeat, &mut out).unwrap();
        frames.push(out);
    }
    // Replay: 1, 1.
    let mut receiver = FrameReceiver::new();
    assert!(receiver.decode(&frames[0]).unwrap().is_some());
    assert_eq!(
        receiver.decode(&frames[0]).unwrap_err(),
        WireError::FrameSeq {
            expected: 2,
            found: 1
        }
    );
    // Poisoned afterwards, even for the right frame.
    assert_eq!(
        receiver.decode(&frames[1]).unwrap_err(),
        WireError::Poisoned
    );
    // Drop: 1, 3.
    let mut receiver = FrameReceiver::new();
    assert!(receiver.decode(&frames[0]).unwrap().is_some());
    assert_eq!(
        receiver.decode(&frames[2]).unwrap_err(),
        WireError::FrameSeq {
            expected: 2,
            found: 3
        }
    );
    // Reorder: 2 first.
    let mut receiver = FrameReceiver::new();
    assert_eq!(
        receiver.decode(&frames[1]).unwrap_err(),
        WireError::FrameSeq {
            expected: 1,
            found: 2
        }
    );
}

#[test]
fn negotiated_version_is_enforced_and_handshake_stays_at_one() {
    let mut sender = FrameSequencer::new();
    sender.set_version(PROTOCOL_VERSION_CURRENT);
    let mut out = Vec::new();
    sender.encode(&sample_frames()[1], &mut out).unwrap();
    assert_eq!(u16::from_le_bytes([out[4], out[5]]), PROTOCOL_VERSION_MIN);
    let mut receiver = FrameReceiver::new();
    receiver.set_version(PROTOCOL_VERSION_CURRENT);
    assert!(matches!(
        receiver.decode(&out),
        Ok(Some((Frame::Welcome(_), _)))
    ));
}

#[test]
fn truncated_stream_is_an_error_at_eof() {
    let bytes = encoded(&sample_frames()[3], 1);
    let cut = &bytes[..bytes.len() - 1];
    let mut receiver = FrameReceiver::new();
    assert_eq!(receiver.decode(cut), Ok(None));
    assert_eq!(
        receiver.at_eof(cut),
        Err(WireError::TruncatedFrame {
            buffered_bytes: bytes.len() - 1
        })
    );
    assert_eq!(finish(&[]), Ok(()));
    assert_eq!(
        finish(&bytes[..3]),
        Err(WireError::TruncatedFrame { buffered_bytes: 3 })
    );
}

/// The body of `fuzz/fuzz_targets/wire_frame.rs`, kept here so it runs in every test run.
fn fuzz_body(data: &[u8]) {
    let mut receiver = FrameReceiver::new();
    let mut rest = data;
    loop {
        match receiver.decode(rest) {
            Ok(Some((frame, used))) => {
                assert!(used >= FRAME_HEADER_SIZE_BYTES && used <= rest.len());
                let (header, again, _) = decode_frame(rest).unwrap().unwrap();
                assert_eq!(again, frame);
                let mut reencoded = Vec::new();
                encode_frame(&frame, header.version, header.frame_seq, &mut reencoded).unwrap();
                let (_, back, _) = decode_frame(&reencoded).unwrap().unwrap();
                assert_eq!(back, frame);
                rest = &rest[used..];
            }
            Ok(None) => {
                assert_eq!(receiver.at_eof(rest).is_err(), !rest.is_empty());
                break;
            }
            Err(_) => break,
        }
    }
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let name = "[a-z0-9-]{1,40}";
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            1u64..1000,
            0u64..1000,
            name,
            name,
            name
        )
            .prop_map(
                |(id, config_version, first_seq, extra, group_name, sender_name, target_name)| {
                    Frame::Hello(Hello {
                        version_min: 1,
                        version_max: 1,
                        group_id: GroupId(id),
                        config_version,
                        journal: JournalPosition {
                            first_seq,
                            last_seq: first_seq - 1 + extra,
                        },
                        group_name,
                        sender_name,
                        target_name,
                    })
                }
            ),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(resume, config, resync)| {
            Frame::Welcome(Welcome {
                version: 1,
                resume_after_seq: resume,
                config_version: config,
                flags: u32::from(resync),
            })
        }),
        (1u16..=7, ".{0,60}").prop_map(|(code, message)| Frame::Refuse(Refuse {
            code: RefuseCode::from_u16(code).unwrap(),
            message,
        })),
        (
            1u64..1 << 40,
            1u64..20,
            1usize..300,
            prop::option::of(1i32..5)
        )
            .prop_map(|(first, count, len, level)| Frame::Records(batch(first, count, len, level))),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, backlog)| {
            Frame::Ack(Ack {
                durable_seq: a.max(b),
                applied_seq: a.min(b),
                backlog_bytes: backlog,
            })
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(now_ns, durable_seq)| {
            Frame::Heartbeat(Heartbeat {
                now_ns,
                durable_seq,
            })
        }),
        (1u16..=4, ".{0,60}").prop_map(|(reason, message)| Frame::Goodbye(Goodbye {
            reason: GoodbyeReason::from_u16(reason).unwrap(),
            message,
        })),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzz_body(&bytes);
        prop_assert_eq!(decode_frame(&bytes), decode_frame(&bytes));
    }

    #[test]
    fn decode_never_panics_after_a_valid_header(
        frame in arb_frame(),
        tail in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = encoded(&frame, 1);
        bytes.extend_from_slice(&tail);
        fuzz_body(&bytes);
        let (_, decoded, used) = decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(decoded, frame);
        prop_assert_eq!(used, bytes.len() - tail.len());
    }

    #[test]
    fn one_changed_byte_is_an_error_never_another_frame(
        frame in arb_frame(),
        position in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let mut bytes = encoded(&frame, 5);
        let index = position.index(bytes.len());
        bytes[index] = bytes[index].wrapping_add(delta);
        prop_assert!(decode_frame(&bytes).is_err(), "byte {} changed", index);
    }

    #[test]
    fn streams_split_anywhere_decode_the_same(
        frames in prop::collection::vec(arb_frame(), 1..6),
        split in any::<prop::sample::Index>(),
    ) {
        let mut sequencer = FrameSequencer::new();
        let mut stream = Vec::new();
        for frame in &frames {
            sequencer.encode(frame, &mut stream).unwrap();
        }
        // Feed the stream in two reads, cut at an arbitrary point, as a socket would.
        let cut = split.index(stream.len() + 1);
        let mut receiver = FrameReceiver::new();
        let mut buffer = stream[..cut].to_vec();
        let mut decoded = Vec::new();
        for chunk in [&stream[cut..], &[][..]] {
            while let Some((frame, used)) = receiver.decode(&buffer).unwrap() {
                decoded.push(frame);
                buffer.drain(..used);
            }
            buffer.extend_from_slice(chunk);
        }
        while let Some((frame, used)) = receiver.decode(&buffer).unwrap() {
            decoded.push(frame);
            buffer.drain(..used);
        }
        prop_assert_eq!(receiver.at_eof(&buffer), Ok(()));
        prop_assert_eq!(decoded, frames);
    }
}
