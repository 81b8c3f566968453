//! Journal behaviour on the simulated file system: rollover, reopen, readers, pruning,
//! capacity, corruption and sequence-continuity errors.

use std::path::{Path, PathBuf};

use redoubt_journal::{
    encode, segment_file_name, Entry, GroupId, Journal, JournalConfig, JournalError, JournalFs,
    OwnedRecord, PowerCut, RecordHeader, RecordKind, SegmentFile, SegmentHeader, SimFs,
    RECORD_HEADER_SIZE_BYTES, SEGMENT_HEADER_SIZE_BYTES,
};

const GROUP: GroupId = GroupId([0x42; 16]);

fn dir() -> PathBuf {
    PathBuf::from("/lfc/rg1")
}

fn small_config() -> JournalConfig {
    JournalConfig {
        segment_size_bytes: 4096,
        write_buffer_bytes: 512,
        ..JournalConfig::new(GROUP, 1 << 30)
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let length = 1 + (seq * 37 % 300) as usize;
    (0..length).map(|i| (seq as usize + i) as u8).collect()
}

fn append_writes(journal: &mut Journal<SimFs>, count: u64) {
    for _ in 0..count {
        let seq_next = journal.appended_seq() + 1;
        let data = payload(seq_next);
        let seq = journal
            .append(&Entry::write(3, seq_next * 512, &data, seq_next))
            .unwrap();
        assert_eq!(seq, seq_next);
    }
}

fn read_all(journal: &Journal<SimFs>, seq_from: u64) -> Vec<OwnedRecord> {
    journal
        .read_from(seq_from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn assert_records(records: &[OwnedRecord], first_seq: u64, last_seq: u64) {
    assert_eq!(records.len() as u64, last_seq + 1 - first_seq);
    for (record, seq) in records.iter().zip(first_seq..) {
        assert_eq!(record.header.seq, seq);
        assert_eq!(record.header.kind, RecordKind::Write);
        assert_eq!(record.header.offset_bytes, seq * 512);
        assert_eq!(record.payload, payload(seq), "payload of seq {seq}");
    }
}

#[test]
fn rollover_then_reopen_resumes_sequence() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    assert_eq!(journal.first_seq(), None);
    assert_eq!(journal.last_seq(), None);
    append_writes(&mut journal, 200);
    assert_eq!(journal.sync().unwrap(), 200);
    let sealed = journal.sealed_segments().count();
    assert!(
        sealed >= 5,
        "200 records of ~150 bytes roll 4 KiB segments: {sealed}"
    );
    for segment in journal.sealed_segments() {
        assert!(segment.size_bytes <= 4096);
    }
    let size_bytes = journal.size_bytes();
    drop(journal);

    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    assert_eq!(journal.sealed_segments().count(), sealed);
    assert_eq!(journal.size_bytes(), size_bytes);
    assert_eq!(
        (journal.first_seq(), journal.last_seq()),
        (Some(1), Some(200))
    );
    assert_eq!(journal.durable_seq(), 200);
    assert_records(&read_all(&journal, 1), 1, 200);
    assert_records(&read_all(&journal, 137), 137, 200);
    append_writes(&mut journal, 1);
    assert_eq!(journal.appended_seq(), 201);

    let names = fs.list(&dir()).unwrap();
    let partials: Vec<_> = names
        .iter()
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert_eq!(partials.len(), 1, "exactly one open segment: {names:?}");
}

#[test]
fn watermarks_and_reader_bound() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs, dir(), small_config()).unwrap();
    append_writes(&mut journal, 3);
    assert_eq!(journal.appended_seq(), 3);
    assert!(journal.written_seq() <= journal.appended_seq());
    assert_eq!(journal.durable_seq(), 0);
    assert_eq!(
        read_all(&journal, 1).len(),
        0,
        "a reader at the durable tail yields nothing"
    );
    assert!(matches!(
        journal.read_from(2),
        Err(JournalError::SequenceNotDurable {
            requested: 2,
            durable_seq: 0
        })
    ));
    assert_eq!(journal.sync().unwrap(), 3);
    append_writes(&mut journal, 2);
    // The reader stops at the durable seq at its creation: unsynced records are not shipped.
    assert_records(&read_all(&journal, 1), 1, 3);
    assert_eq!(read_all(&journal, 4).len(), 0);
    assert_eq!(journal.sync().unwrap(), 5);
    assert_eq!(
        journal.sync().unwrap(),
        5,
        "sync with nothing pending is idempotent"
    );
    assert_records(&read_all(&journal, 4), 4, 5);
}

#[test]
fn reader_survives_the_open_segment_being_sealed() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs, dir(), small_config()).unwrap();
    append_writes(&mut journal, 4);
    journal.sync().unwrap();
    let reader = journal.read_from(1).unwrap();
    let sealed = journal.seal().unwrap().unwrap();
    assert_eq!((sealed.first_seq, sealed.last_seq), (1, 4));
    assert_eq!(
        journal.seal().unwrap(),
        None,
        "sealing an empty open segment is a no-op"
    );
    let records = reader.collect::<Result<Vec<_>, _>>().unwrap();
    assert_records(&records, 1, 4);
}

#[test]
fn prune_deletes_whole_sealed_segments_only() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 200);
    journal.sync().unwrap();
    let segments: Vec<_> = journal.sealed_segments().collect();
    let size_before = journal.size_bytes();
    let prune_seq = segments[2].last_seq + 1; // Inside segment 3: it must stay.
    let report = journal.prune_through(prune_seq).unwrap();
    assert_eq!(report.segments_removed, 3);
    let removed: u64 = segments[..3].iter().map(|s| s.size_bytes).sum();
    assert_eq!(report.bytes_removed, removed);
    assert_eq!(journal.size_bytes(), size_before - removed);
    assert_eq!(journal.first_seq(), Some(segments[3].first_seq));
    assert!(matches!(
        journal.read_from(1),
        Err(JournalError::SequencePruned { requested: 1, first_seq }) if first_seq == segments[3].first_seq
    ));
    assert_eq!(
        journal.prune_through(u64::MAX).unwrap().segments_removed,
        segments.len() as u64 - 3
    );
    assert_eq!(journal.sealed_segments().count(), 0);
    assert!(
        journal.first_seq().is_some(),
        "the open segment is never pruned"
    );
    drop(journal);

    fs.power_cut(PowerCut::DropUnsynced);
    let journal = Journal::open(fs, dir(), small_config()).unwrap();
    assert_eq!(journal.sealed_segments().count(), 0, "prune was durable");
    assert_eq!(journal.last_seq(), Some(200));
    let first = journal.first_seq().unwrap();
    assert_records(&read_all(&journal, first), first, 200);
}

#[test]
fn journal_full_is_typed_and_changes_nothing() {
    let fs = SimFs::new();
    let config = JournalConfig {
        capacity_bytes: 8192,
        ..small_config()
    };
    let mut journal = Journal::open(fs, dir(), config).unwrap();
    let data = [7u8; 1000];
    let mut full = None;
    for index in 0..100u64 {
        match journal.append(&Entry::write(1, index * 1000, &data, 0)) {
            Ok(_) => assert!(journal.size_bytes() <= 8192),
            Err(error) => {
                full = Some(error);
                break;
            }
        }
    }
    let appended = journal.appended_seq();
    assert!(
        matches!(full, Some(JournalError::JournalFull { capacity_bytes: 8192, record_bytes, .. })
            if record_bytes == 1000 + RECORD_HEADER_SIZE_BYTES as u64),
        "{full:?}"
    );
    assert!(matches!(
        journal.append(&Entry::write(1, 0, &data, 0)),
        Err(JournalError::JournalFull { .. })
    ));
    assert_eq!(
        journal.appended_seq(),
        appended,
        "a refused append takes no seq"
    );
    journal.sync().unwrap();
    assert!(
        journal
            .prune_through(journal.durable_seq())
            .unwrap()
            .segments_removed
            > 0
    );
    assert_eq!(
        journal.append(&Entry::write(1, 0, &data, 0)).unwrap(),
        appended + 1
    );
}

#[test]
fn invalid_entries_are_refused_without_taking_a_seq() {
    let mut journal = Journal::open(SimFs::new(), dir(), small_config()).unwrap();
    let error = journal.append(&Entry::trim(1, 0, 0, 0)).unwrap_err();
    assert!(matches!(error, JournalError::InvalidRecord(_)), "{error:?}");
    assert_eq!(journal.append(&Entry::marker("consistent", 5)).unwrap(), 1);
    assert_eq!(
        journal.append(&Entry::write_zeroes(1, 0, 4096, 6)).unwrap(),
        2
    );
    assert_eq!(journal.append(&Entry::undo(1, 0, b"old", 7)).unwrap(), 3);
    journal.sync().unwrap();
    let kinds: Vec<_> = read_all(&journal, 1)
        .iter()
        .map(|r| r.header.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Marker,
            RecordKind::WriteZeroes,
            RecordKind::Undo
        ]
    );
}

#[test]
fn replicated_copy_starts_anywhere_and_rejects_gaps() {
    let config = JournalConfig {
        seq_first_new: 1000,
        ..small_config()
    };
    let mut copy = Journal::open(SimFs::new(), dir(), config).unwrap();
    assert_eq!(copy.appended_seq(), 999);
    let header = RecordHeader {
        kind: RecordKind::Write,
        lv_id: 2,
        offset_bytes: 0,
        length_bytes: 2,
        seq: 1001,
        timestamp_ns: 9,
    };
    let record = redoubt_journal::Record {
        header,
        payload: b"ab",
    };
    assert!(matches!(
        copy.append_replicated(&record),
        Err(JournalError::SequenceMismatch {
            expected: 1000,
            found: 1001
        })
    ));
    let record = redoubt_journal::Record {
        header: RecordHeader {
            seq: 1000,
            ..header
        },
        payload: b"ab",
    };
    assert_eq!(copy.append_replicated(&record).unwrap(), 1000);
    copy.sync().unwrap();
    let records = read_all(&copy, 1000);
    assert_eq!(records, vec![record.to_owned_record()]);
}

#[test]
fn reopen_with_another_group_is_refused() {
    let fs = SimFs::new();
    drop(Journal::open(fs.clone(), dir(), small_config()).unwrap());
    let other = JournalConfig {
        group_id: GroupId([1; 16]),
        ..small_config()
    };
    let error = Journal::open(fs, dir(), other).unwrap_err();
    assert!(
        matches!(error, JournalError::GroupMismatch { .. }),
        "{error:?}"
    );
}

/// Builds a journal with several sealed segments and returns their paths in order.
fn sealed_journal(fs: &SimFs) -> Vec<PathBuf> {
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 120);
    journal.sync().unwrap();
    let paths = journal
        .sealed_segments()
        .map(|segment| dir().join(segment_file_name(segment.first_seq, false)))
        .collect::<Vec<_>>();
    assert!(paths.len() >= 3);
    paths
}

#[test]
fn missing_middle_segment_is_a_gap_naming_both_sides() {
    let fs = SimFs::new();
    let paths = sealed_journal(&fs);
    fs.remove(&paths[1]).unwrap();
    let error = Journal::open(fs, dir(), small_config()).unwrap_err();
    match &error {
        JournalError::SequenceGap {
            previous,
            next,
            previous_last_seq,
            next_first_seq,
        } => {
            assert_eq!(previous, &paths[0]);
            assert_eq!(next, &paths[2]);
            assert!(next_first_seq > &(previous_last_seq + 1));
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("gap") && message.contains(".seg"),
        "{message}"
    );
}

#[test]
fn overlapping_segment_is_an_error() {
    let fs = SimFs::new();
    let paths = sealed_journal(&fs);
    // A stray segment starting at seq 2 overlaps the first segment (seq 1..).
    let stray = dir().join(segment_file_name(2, false));
    let mut file = fs.create_new(&stray).unwrap();
    let mut bytes = SegmentHeader {
        group_id: GROUP,
        first_seq: 2,
    }
    .encode()
    .to_vec();
    let header = RecordHeader {
        kind: RecordKind::Write,
        lv_id: 3,
        offset_bytes: 0,
        length_bytes: 1,
        seq: 2,
        timestamp_ns: 0,
    };
    encode(&header, b"x", &mut bytes);
    file.write_all_at(0, &bytes).unwrap();
    let error = Journal::open(fs, dir(), small_config()).unwrap_err();
    assert!(
        matches!(&error, JournalError::SequenceOverlap { previous, next_first_seq: 2, .. } if previous == &paths[0]),
        "{error:?}"
    );
}

#[test]
fn corrupt_sealed_segment_is_an_error_not_a_truncation() {
    let fs = SimFs::new();
    let paths = sealed_journal(&fs);
    let mut bytes = fs.file_bytes(&paths[1]).unwrap();
    let flip_at = SEGMENT_HEADER_SIZE_BYTES + RECORD_HEADER_SIZE_BYTES + 3;
    bytes[flip_at] ^= 0x01;
    fs.set_file_bytes(&paths[1], bytes).unwrap();
    let error = Journal::open(fs.clone(), dir(), small_config()).unwrap_err();
    assert!(
        matches!(&error, JournalError::CorruptRecord { path, offset_bytes, .. }
            if path == &paths[1] && *offset_bytes == SEGMENT_HEADER_SIZE_BYTES as u64),
        "{error:?}"
    );
    let mut bytes = fs.file_bytes(&paths[1]).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs.set_file_bytes(&paths[1], bytes).unwrap();
    assert!(Journal::open(fs, dir(), small_config()).is_err());
}

/// Flip each byte of the open segment in turn: recovery either refuses (header damage with
/// records behind it) or keeps an intact prefix that ends before the damaged record.
#[test]
fn flipped_byte_in_open_segment_yields_error_or_clean_prefix() {
    let base = SimFs::new();
    let mut journal = Journal::open(base.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 6);
    journal.sync().unwrap();
    let partial = dir().join(segment_file_name(1, true));
    drop(journal);
    let original = base.file_bytes(&partial).unwrap();
    for index in 0..original.len() {
        let fs = SimFs::new();
        fs.create_dir_all(&dir()).unwrap();
        fs.create_new(&partial).unwrap();
        let mut bytes = original.clone();
        bytes[index] ^= 0x80;
        fs.set_file_bytes(&partial, bytes).unwrap();
        fs.sync_dir(&dir()).unwrap();
        match Journal::open(fs.clone(), dir(), small_config()) {
            Err(error) => assert!(index < SEGMENT_HEADER_SIZE_BYTES, "byte {index}: {error:?}"),
            Ok(journal) => {
                assert!(
                    index >= SEGMENT_HEADER_SIZE_BYTES,
                    "byte {index} accepted a bad header"
                );
                let last = journal.appended_seq();
                assert!(last < 6, "byte {index}: damage must cut the log");
                assert_records(&read_all_from_start(&journal), 1, last);
                let kept_bytes = fs.file_bytes(&partial).unwrap().len();
                assert!(
                    kept_bytes <= index,
                    "byte {index}: truncated before the damage"
                );
            }
        }
    }
}

fn read_all_from_start(journal: &Journal<SimFs>) -> Vec<OwnedRecord> {
    match journal.first_seq() {
        Some(first) => read_all(journal, first),
        None => Vec::new(),
    }
}

#[test]
fn failed_sync_poisons_until_reopen() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 2);
    journal.sync().unwrap();
    append_writes(&mut journal, 2);
    fs.set_sync_fails(true);
    assert!(matches!(
        journal.sync(),
        Err(JournalError::Io {
            action: "sync journal segment",
            ..
        })
    ));
    assert!(matches!(journal.sync(), Err(JournalError::Poisoned)));
    assert!(matches!(
        journal.append(&Entry::marker("m", 0)),
        Err(JournalError::Poisoned)
    ));
    assert_eq!(journal.durable_seq(), 2);
    drop(journal);
    fs.set_sync_fails(false);
    let journal = Journal::open(fs, dir(), small_config()).unwrap();
    assert!(journal.durable_seq() >= 2);
    assert_records(&read_all(&journal, 1), 1, journal.durable_seq());
}

#[test]
fn torn_header_of_fresh_open_segment_is_reinitialised() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 3);
    let sealed = journal.seal().unwrap().unwrap();
    drop(journal);
    let partial = dir().join(segment_file_name(sealed.last_seq + 1, true));
    let mut bytes = fs.file_bytes(&partial).unwrap();
    bytes.truncate(20);
    fs.set_file_bytes(&partial, bytes).unwrap();
    fs.sync_dir(&dir()).unwrap();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    assert_eq!(journal.appended_seq(), 3);
    assert_eq!(
        fs.file_bytes(&partial).unwrap().len(),
        SEGMENT_HEADER_SIZE_BYTES
    );
    append_writes(&mut journal, 1);
    journal.sync().unwrap();
    assert_records(&read_all(&journal, 1), 1, 4);
}

#[test]
fn config_limits_are_enforced() {
    let cases = [
        JournalConfig {
            segment_size_bytes: 1024,
            ..small_config()
        },
        JournalConfig {
            segment_size_bytes: 2 << 30,
            ..small_config()
        },
        JournalConfig {
            capacity_bytes: 100,
            ..small_config()
        },
        JournalConfig {
            seq_first_new: 0,
            ..small_config()
        },
        JournalConfig {
            write_buffer_bytes: u64::MAX,
            ..small_config()
        },
    ];
    for config in cases {
        let error = Journal::open(SimFs::new(), Path::new("/j"), config.clone()).unwrap_err();
        assert!(
            matches!(error, JournalError::Config { .. }),
            "{config:?}: {error:?}"
        );
    }
}

#[test]
fn newer_record_version_in_open_segment_is_refused_not_truncated() {
    let fs = SimFs::new();
    let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
    append_writes(&mut journal, 2);
    journal.sync().unwrap();
    drop(journal);
    let partial = dir().join(segment_file_name(1, true));
    let mut bytes = fs.file_bytes(&partial).unwrap();
    let header = RecordHeader {
        kind: RecordKind::Write,
        lv_id: 3,
        offset_bytes: 0,
        length_bytes: 1,
        seq: 3,
        timestamp_ns: 0,
    };
    let start = bytes.len();
    encode(&header, b"n", &mut bytes);
    // Rewrite as a (future) version 2 record with a correct header checksum.
    bytes[start + 4..start + 6].copy_from_slice(&2u16.to_le_bytes());
    bytes[start + 60..start + 64].fill(0);
    let crc = crc32c::crc32c(&bytes[start..start + RECORD_HEADER_SIZE_BYTES]);
    bytes[start + 60..start + 64].copy_from_slice(&crc.to_le_bytes());
    fs.set_file_bytes(&partial, bytes.clone()).unwrap();
    let error = Journal::open(fs.clone(), dir(), small_config()).unwrap_err();
    assert!(
        matches!(&error, JournalError::CorruptRecord { offset_bytes, .. } if *offset_bytes == start as u64),
        "{error:?}"
    );
    assert_eq!(fs.file_bytes(&partial).unwrap(), bytes, "nothing truncated");
}

fn spare_count(fs: &SimFs) -> usize {
    fs.list(&dir())
        .unwrap()
        .iter()
        .filter(|name| name.ends_with(".spare"))
        .count()
}

/// Records of one size, so a recycled segment's old records start exactly where the new
/// ones end: the case where stale bytes parse as whole, checksummed records.
fn append_uniform(journal: &mut Journal<SimFs>, count: u64) {
    for _ in 0..count {
        let seq = journal.appended_seq() + 1;
        journal
            .append(&Entry::write(3, seq * 512, &[seq as u8; 200], seq))
            .unwrap();
    }
}

#[test]
fn pruned_segments_are_recycled_and_recovery_stops_at_their_stale_records() {
    for (round, cut) in [
        PowerCut::DropUnsynced,
        PowerCut::TearUnsynced { seed: 7 },
        PowerCut::TearUnsynced { seed: 8 },
    ]
    .into_iter()
    .enumerate()
    {
        let fs = SimFs::new();
        let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
        append_uniform(&mut journal, 200);
        journal.sync().unwrap();
        let report = journal.prune_through(journal.durable_seq()).unwrap();
        assert!(report.segments_removed > 2);
        assert_eq!(
            spare_count(&fs),
            2,
            "the configured number of spares is kept"
        );
        // The next rollover writes over a spare, whose old records are still in it.
        append_uniform(&mut journal, 20 + round as u64 * 3);
        assert!(spare_count(&fs) < 2, "a rollover took a spare");
        let synced = journal.sync().unwrap();
        append_uniform(&mut journal, 2);
        drop(journal);

        fs.power_cut(cut);
        let journal = Journal::open(fs.clone(), dir(), small_config())
            .unwrap_or_else(|error| panic!("round {round}: recovery failed: {error}"));
        let last = journal.last_seq().unwrap();
        assert!(last >= synced, "round {round}: synced records lost");
        assert!(
            last <= synced + 2,
            "round {round}: stale records taken for new ones"
        );
        let first = journal.first_seq().unwrap();
        let records = read_all(&journal, first);
        assert_eq!(records.len() as u64, last + 1 - first);
        for (record, seq) in records.iter().zip(first..) {
            assert_eq!(record.header.seq, seq);
            assert_eq!(record.payload, vec![seq as u8; 200], "payload of seq {seq}");
        }
    }
}

#[test]
fn spares_give_their_space_back_before_the_journal_is_full() {
    let fs = SimFs::new();
    let config = JournalConfig {
        capacity_bytes: 16 << 10,
        ..small_config()
    };
    let mut journal = Journal::open(fs.clone(), dir(), config).unwrap();
    append_writes(&mut journal, 60);
    journal.sync().unwrap();
    journal.prune_through(journal.durable_seq()).unwrap();
    assert!(spare_count(&fs) > 0);
    // Records fill what the spares held: they are removed rather than refuse a record.
    let mut appended = 0;
    while journal.size_bytes() + 1024 < 16 << 10 {
        append_writes(&mut journal, 1);
        appended += 1;
    }
    assert!(appended > 0);
    journal.sync().unwrap();
    let first = journal.first_seq().unwrap();
    assert_records(
        &read_all(&journal, first),
        first,
        journal.last_seq().unwrap(),
    );
}

/// A follower keeps the undo of the history it shares with a new production: the records
/// after the failover point go, wherever the point falls (a sealed segment, the open one,
/// a segment boundary, before everything), and the journal goes on from the point + 1.
#[test]
fn truncate_after_keeps_exactly_a_prefix_and_continues_from_it() {
    let open_with_records = |fs: &SimFs| {
        let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
        append_writes(&mut journal, 200);
        journal.sync().unwrap();
        journal
    };
    let boundaries: Vec<u64> = {
        let journal = open_with_records(&SimFs::new());
        journal.sealed_segments().map(|s| s.last_seq).collect()
    };
    let open_first = boundaries.last().unwrap() + 1;
    for keep in [
        150,
        boundaries[1],
        boundaries[1] + 1,
        open_first + 1,
        199,
        200,
        1,
        0,
    ] {
        let fs = SimFs::new();
        let journal = open_with_records(&fs);
        journal.truncate_after(keep).unwrap();
        // A power cut right after: everything it did is durable.
        fs.power_cut(PowerCut::DropUnsynced);
        let mut journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
        assert_eq!(journal.durable_seq(), keep, "kept through {keep}");
        if keep > 0 {
            assert_records(&read_all(&journal, 1), 1, keep);
        } else {
            assert_eq!(journal.first_seq(), None, "nothing kept");
        }
        append_writes(&mut journal, 3);
        journal.sync().unwrap();
        drop(journal);
        let journal = Journal::open(fs.clone(), dir(), small_config()).unwrap();
        assert_records(&read_all(&journal, keep.max(1)), keep.max(1), keep + 3);
    }
    // Not before the first record: that history is gone already.
    let fs = SimFs::new();
    let mut journal = open_with_records(&fs);
    journal.prune_through(boundaries[1]).unwrap();
    let first = journal.first_seq().unwrap();
    assert!(matches!(
        journal.truncate_after(first - 2),
        Err(JournalError::TruncateBeforeFirst { .. })
    ));
}
