//! Feed arbitrary bytes to the datatap's state file reader (`datatap.json`: checkpoint seq,
//! lv ids, dirty regions), as a restarted datatap reads it from disk. It must never panic;
//! a state it accepts must save and load back to the same value.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use redoubt_datatap::state::{GroupState, STATE_FILE_NAME};
use redoubt_journal::{JournalFs, SegmentFile, SimFs};

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    let dir = Path::new("/group");
    if fs.create_dir_all(dir).is_err() {
        return;
    }
    let Ok(mut file) = fs.create_new(&dir.join(STATE_FILE_NAME)) else {
        return;
    };
    if file.write_all_at(0, data).is_err() || file.sync_data().is_err() {
        return;
    }
    drop(file);
    let Ok(Some(mut state)) = GroupState::load(&fs, dir) else {
        return;
    };
    // An id is always the one derived from the name (a stored id that disagrees is replaced),
    // or a clear error when two names collide.
    let names: Vec<String> = state.lv_ids.keys().cloned().collect();
    for name in &names {
        if let Ok(id) = state.lv_id(name) {
            assert_eq!(id, redoubt_journal::lv_id_for_name(name));
        }
    }
    let _ = state.lv_id("lv_fuzz_new");
    assert!(state.save(&fs, dir).is_ok());
    let again = GroupState::load(&fs, dir).ok().flatten();
    assert_eq!(again.as_ref(), Some(&state));
});
