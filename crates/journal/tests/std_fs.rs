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
