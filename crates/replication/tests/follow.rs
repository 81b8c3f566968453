//! A replica that follows a new production after a failover or failback keeps its restore
//! history when its undo covers the history both share (#23 item 4), and says why when not.

use std::path::Path;

use redoubt_journal::{Entry, GroupId, Journal, JournalConfig, StdFs};
use redoubt_points::Marker;
use redoubt_replication::aba::{start_following, FollowerHistory};
use redoubt_replication::recovery::{load_markers, save_markers};

const GROUP_ID: [u8; 16] = [7; 16];

fn undo_config() -> JournalConfig {
    JournalConfig::new(GroupId(GROUP_ID), 64 << 20)
}

/// A replica that applied seqs 1..=10: an undo record for each, markers at 3 and 8.
fn replica_through_ten(group_dir: &Path) {
    let mut undo = Journal::open(StdFs, group_dir.join("undo"), undo_config()).unwrap();
    for seq in 1..=10u64 {
        let old = vec![seq as u8; 512];
        assert_eq!(
            undo.append(&Entry::undo(1, seq * 512, &old, seq)).unwrap(),
            seq
        );
    }
    undo.sync().unwrap();
    let hex: String = GROUP_ID.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        group_dir.join("aba.json"),
        format!(r#"{{"group_id": "{hex}", "checkpoint_seq": 10}}"#),
    )
    .unwrap();
    let marker = |name: &str, seq| Marker {
        name: name.into(),
        seq,
        time_unix_ns: seq,
    };
    save_markers(group_dir, &[marker("early", 3), marker("late", 8)]).unwrap();
}

#[test]
fn a_synced_replica_ahead_of_the_point_keeps_its_history_up_to_it() {
    let root = tempfile::tempdir().unwrap();
    let group_dir = root.path();
    replica_through_ten(group_dir);
    // Rolled back to the new production's point, seq 6: what it applied after is another
    // history, and so is the marker at 8.
    let history = start_following(group_dir, GROUP_ID, 6, true, 1).unwrap();
    assert_eq!(history, FollowerHistory::Kept);
    let undo = Journal::open(StdFs, group_dir.join("undo"), undo_config()).unwrap();
    assert_eq!((undo.first_seq(), undo.durable_seq()), (Some(1), 6));
    let names: Vec<String> = load_markers(group_dir)
        .unwrap()
        .into_iter()
        .map(|marker| marker.name)
        .collect();
    assert_eq!(names, ["early"]);
}

#[test]
fn a_replica_whose_volumes_left_the_history_starts_afresh_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let group_dir = root.path();
    replica_through_ten(group_dir);
    let history = start_following(group_dir, GROUP_ID, 10, false, 1).unwrap();
    let FollowerHistory::Reset(reset) = history else {
        panic!("an old production that wrote after the point keeps nothing: {history:?}");
    };
    assert_eq!(reset.seq, 10);
    assert!(reset.reason.contains("did not equal"), "{}", reset.reason);
    assert!(!group_dir.join("undo").exists());
    assert!(
        load_markers(group_dir).unwrap().is_empty(),
        "no marker is restorable here"
    );
}

#[test]
fn an_undo_journal_that_stops_before_the_point_is_not_kept() {
    let root = tempfile::tempdir().unwrap();
    let group_dir = root.path();
    // Promoted at 10, production until 20, now following again from 20.
    replica_through_ten(group_dir);
    let history = start_following(group_dir, GROUP_ID, 20, true, 1).unwrap();
    let FollowerHistory::Reset(reset) = history else {
        panic!("a gap of ten seqs without undo: {history:?}");
    };
    assert!(reset.reason.contains("no undo"), "{}", reset.reason);
    assert!(!group_dir.join("undo").exists());
}
