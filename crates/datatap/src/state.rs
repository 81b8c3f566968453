//! The datatap's small persistent state per group: the group's journal identity, the stable
//! ids of its LVs, and the checkpoint up to which the LVs are known durable.
//!
//! Written atomically (temporary file, fsync, rename, fsync directory), so a crash leaves
//! either the old or the new state, never a torn one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redoubt_journal::{JournalFs, ResyncTargets, SegmentFile};

use serde::{Deserialize, Serialize};

use crate::error::DatatapError;

pub const STATE_FILE_NAME: &str = "datatap.json";
const STATE_TEMPORARY_FILE_NAME: &str = ".datatap.json.tmp";
/// A state file larger than this is not ours.
const STATE_FILE_BYTES_MAX: u64 = 4 << 20;
const STATE_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub format_version: u32,
    /// Hex of the 16-byte journal group id; chosen once at creation.
    pub group_id: String,
    /// LV name → journal lv_id, as `lv_id_for_name` derives it.
    pub lv_ids: BTreeMap<String, u32>,
    /// Every journal record with seq ≤ this is durable in the LVs themselves; recovery replays
    /// only the records after it.
    pub checkpoint_seq: u64,
    /// Set when writes went to the LVs without the journal (journal overflow): replicas need
    /// a resync before they can be trusted again.
    pub needs_resync: bool,
    /// The dirty-region bitmap of a journal overflow: lv_id → indexes of regions of
    /// [`DIRTY_REGION_BYTES`] written without the journal and not yet resynced.
    #[serde(default)]
    pub dirty_regions: BTreeMap<u32, BTreeSet<u64>>,
    /// The seq of the `resync:begin` marker of the super transaction under way, if one is:
    /// its `resync:end` is journaled once the last dirty region is, and only then is this
    /// cleared (so a restart never begins a second one or forgets to end it).
    #[serde(default)]
    pub resync_begin_seq: Option<u64>,
    /// The recovery servers the pending super transaction is for; absent: every one (as in
    /// state files written before targets existed).
    #[serde(default)]
    pub resync_targets: Option<BTreeSet<String>>,
    /// The servers the last journaled `resync:begin` named (absent: every one); a wider
    /// request while it runs journals a new begin that names the others too.
    #[serde(default)]
    pub resync_begun_for: Option<BTreeSet<String>>,
}

/// [`ResyncTargets`] from its state-file form (`None`: every server).
pub fn targets_from(field: &Option<BTreeSet<String>>) -> ResyncTargets {
    match field {
        Some(servers) => ResyncTargets::Only(servers.clone()),
        None => ResyncTargets::Every,
    }
}

/// The state-file form of [`ResyncTargets`]: `None` is every server.
pub fn targets_field(targets: &ResyncTargets) -> Option<BTreeSet<String>> {
    match targets {
        ResyncTargets::Every => None,
        ResyncTargets::Only(servers) => Some(servers.clone()),
    }
}

/// Granularity of the dirty-region bitmap.
pub const DIRTY_REGION_BYTES: u64 = 1 << 20;

impl GroupState {
    pub fn new(group_id: [u8; 16]) -> GroupState {
        GroupState {
            format_version: STATE_FORMAT_VERSION,
            group_id: group_id.iter().map(|byte| format!("{byte:02x}")).collect(),
            lv_ids: BTreeMap::new(),
            checkpoint_seq: 0,
            needs_resync: false,
            dirty_regions: BTreeMap::new(),
            resync_begin_seq: None,
            resync_targets: None,
            resync_begun_for: None,
        }
    }

    /// Whom the pending super transaction is for.
    pub fn resync_targets(&self) -> ResyncTargets {
        targets_from(&self.resync_targets)
    }

    /// Whom the journaled `resync:begin` of the running super transaction named.
    pub fn resync_begun_for(&self) -> ResyncTargets {
        targets_from(&self.resync_begun_for)
    }

    pub fn group_id_bytes(&self) -> Option<[u8; 16]> {
        if self.group_id.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(self.group_id.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(bytes)
    }

    /// The lv_id of `name` ([`redoubt_journal::lv_id_for_name`]), recorded in the state.
    /// Refuses a name whose id another LV of the group already has.
    pub fn lv_id(&mut self, name: &str) -> Result<u32, String> {
        let id = redoubt_journal::lv_id_for_name(name);
        if let Some((other, _)) = self
            .lv_ids
            .iter()
            .find(|(other, other_id)| **other_id == id && other.as_str() != name)
        {
            return Err(format!(
                "volumes {other:?} and {name:?} map to the same lv_id {id:#010x}; rename one of them"
            ));
        }
        self.lv_ids.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn load<F: JournalFs>(fs: &F, dir: &Path) -> Result<Option<GroupState>, DatatapError> {
        let path = dir.join(STATE_FILE_NAME);
        let file = match fs.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DatatapError::io("open datatap state", &path, source)),
        };
        let length = file
            .len_bytes()
            .map_err(|source| DatatapError::io("stat datatap state", &path, source))?;
        if length > STATE_FILE_BYTES_MAX {
            return Err(DatatapError::State {
                path,
                reason: format!(
                    "{length} bytes is larger than the {STATE_FILE_BYTES_MAX}-byte limit"
                ),
            });
        }
        let mut text = vec![0u8; length as usize];
        let read = file
            .read_exact_or_eof(0, &mut text)
            .map_err(|source| DatatapError::io("read datatap state", &path, source))?;
        text.truncate(read);
        let state: GroupState =
            serde_json::from_slice(&text).map_err(|error| DatatapError::State {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        if state.format_version != STATE_FORMAT_VERSION || state.group_id_bytes().is_none() {
            return Err(DatatapError::State {
                path,
                reason: format!(
                    "unsupported format version {} or bad group id",
                    state.format_version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Replaces the state file atomically: temporary file, fdatasync, rename, directory sync.
    pub fn save<F: JournalFs>(&self, fs: &F, dir: &Path) -> Result<(), DatatapError> {
        let temporary = dir.join(STATE_TEMPORARY_FILE_NAME);
        let path = dir.join(STATE_FILE_NAME);
        let text = serde_json::to_vec_pretty(self).map_err(|error| DatatapError::State {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        match fs.remove(&temporary) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatatapError::io(
                    "remove old temporary state",
                    &temporary,
                    source,
                ))
            }
        }
        let mut file = fs
            .create_new(&temporary)
            .map_err(|source| DatatapError::io("create datatap state", &temporary, source))?;
        file.write_all_at(0, &text)
            .and_then(|()| file.sync_data())
            .map_err(|source| DatatapError::io("write datatap state", &temporary, source))?;
        drop(file);
        fs.rename(&temporary, &path)
            .map_err(|source| DatatapError::io("rename datatap state", &path, source))?;
        fs.sync_dir(dir)
            .map_err(|source| DatatapError::io("sync directory", dir, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use redoubt_journal::StdFs;

    #[test]
    fn round_trip_and_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(GroupState::load(&StdFs, dir.path()).unwrap(), None);
        let mut state = GroupState::new([7; 16]);
        let a = state.lv_id("a").unwrap();
        assert_eq!(a, redoubt_journal::lv_id_for_name("a"));
        assert_ne!(state.lv_id("b").unwrap(), a);
        assert_eq!(state.lv_id("a").unwrap(), a);
        state.checkpoint_seq = 42;
        state.save(&StdFs, dir.path()).unwrap();
        let loaded = GroupState::load(&StdFs, dir.path()).unwrap().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.group_id_bytes(), Some([7; 16]));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE_NAME), b"{not json").unwrap();
        let error = GroupState::load(&StdFs, dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("datatap.json"), "{error}");
    }
}
