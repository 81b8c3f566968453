//! The journal on the real file system: reopen after drop, a torn tail written behind the
//! journal's back, and the directory layout on disk.

use std::io::Write;

use redoubt_journal::{
    segment_file_name, Entry, GroupId, Journal, JournalConfig, StdFs, SEGMENT_HEADER_SIZE_BYTES,
};

fn config() -> JournalConfig {
    JournalConfig {
        segment_size_bytes: 8192,
        ..JournalConfig::new(GroupId([3; 16]), 1 << 30)
    }
}

#[test]
fn reopen_on_real_files_truncates_a_torn_tail() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("rg");
    let mut journal = Journal::open(StdFs, &dir, config()).unwrap();
    for seq in 1..=100u64 {
        let data = vec![seq as u8; 100 + seq as usize];
        assert_eq!(
            journal
                .append(&Entry::write(1, seq * 4096, &data, seq))
                .unwrap(),
            seq
        );
    }
    assert_eq!(journal.sync().unwrap(), 100);
    let open_first_seq = journal.open_segment_first_seq();
    let sealed = journal.sealed_segments().len();
    assert!(sealed > 0);
    drop(journal);

    // A crash mid-write leaves half a record header plus junk at the end of the open segment.
    let partial = dir.join(segment_file_name(open_first_seq, true));
    let length_synced = std::fs::metadata(&partial).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .unwrap();
    file.write_all(b"RDJR\x01\x00\x01junk").unwrap();
    drop(file);

    let mut journal = Journal::open(StdFs, &dir, config()).unwrap();
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), length_synced);
    assert!(length_synced >= SEGMENT_HEADER_SIZE_BYTES as u64);
    assert_eq!(journal.appended_seq(), 100);
    assert_eq!(journal.sealed_segments().len(), sealed);
    let records = journal
        .read_from(1)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(records.len(), 100);
    for (record, seq) in records.iter().zip(1u64..) {
        assert_eq!(record.header.seq, seq);
        assert_eq!(record.payload, vec![seq as u8; 100 + seq as usize]);
    }
    assert_eq!(
        journal.append(&Entry::marker("after-restart", 0)).unwrap(),
        101
    );
    journal.sync().unwrap();

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names.first().map(String::as_str),
        Some("0000000000000001.seg")
    );
    assert_eq!(
        names
            .iter()
            .filter(|name| name.ends_with(".seg.partial"))
            .count(),
        1
    );
    assert_eq!(names.len(), sealed + 1);
}

/// The send process's tail reads: each read resumes where the previous stopped, across a seal
/// of the open segment, and yields what a read from the segment's start yields; a position
/// that does not fit the read is ignored.
#[test]
fn a_reader_resumes_where_the_last_read_stopped() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("rg");
    let config = JournalConfig {
        segment_size_bytes: 64 << 10,
        ..JournalConfig::new(GroupId([3; 16]), 1 << 30)
    };
    let mut journal = Journal::open(StdFs, &dir, config).unwrap();
    let payload = |seq: u64| vec![seq as u8; 1000 + (seq as usize % 7) * 100];
    let read = |from: u64, to: u64, resume: Option<redoubt_journal::ReadPosition>| {
        let mut reader =
            redoubt_journal::read_directory(StdFs, &dir, GroupId([3; 16]), from, to).unwrap();
        if let Some(resume) = resume {
            reader = reader.resume_at(resume);
        }
        let mut seqs = Vec::new();
        for record in reader.by_ref() {
            let record = record.unwrap();
            assert_eq!(record.payload, payload(record.header.seq));
            seqs.push(record.header.seq);
        }
        (seqs, reader.position())
    };
    let mut position = None;
    let mut next = 1u64;
    for seq in 1..=300u64 {
        journal
            .append(&Entry::write(1, seq * 4096, &payload(seq), seq))
            .unwrap();
        if seq % 10 == 0 {
            let durable = journal.sync().unwrap();
            let (seqs, after) = read(next, durable, position);
            assert_eq!(seqs, (next..=durable).collect::<Vec<_>>());
            next = durable + 1;
            position = after;
        }
    }
    assert!(
        journal.sealed_segments().len() > 2,
        "the reads crossed seals"
    );

    // A position from further on, or of another segment, is not used: the read is whole.
    let (_, far) = read(200, 250, None);
    let far = far.unwrap();
    let (seqs, _) = read(100, 120, Some(far));
    assert_eq!(seqs, (100..=120).collect::<Vec<_>>());
    let (_, early) = read(1, 5, None);
    let (seqs, _) = read(290, 300, early);
    assert_eq!(seqs, (290..=300).collect::<Vec<_>>());
}
