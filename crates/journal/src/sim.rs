//! An in-memory [`JournalFs`] that models durability, for power-cut tests.
//!
//! Each file keeps its current bytes and the bytes as of its last `sync_data`. Directory
//! entries likewise exist twice: the current namespace and the namespace as of the last
//! `sync_dir`. [`SimFs::power_cut`] throws away everything not synced, optionally keeping a
//! random prefix of unsynced appends plus some garbage, as a disk with a volatile write cache
//! may. Handles opened before a power cut fail afterwards, like a process that died.
//!
//! Simplifications: directories themselves are durable on creation; a file whose unsynced
//! change is not a pure append (truncate, overwrite) reverts to its synced bytes exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{JournalFs, SegmentFile};

/// Garbage appended after a torn write is at most this long; a sector's worth is plenty.
const TORN_GARBAGE_BYTES_MAX: u64 = 512;

/// A small deterministic PRNG (SplitMix64) so tests replay exactly from a seed.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (slightly biased for huge `max`; fine for tests).
    pub fn below_or_equal(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }

    /// True with probability `1 / denominator`.
    pub fn one_in(&mut self, denominator: u64) -> bool {
        assert!(denominator > 0);
        self.next_u64().is_multiple_of(denominator)
    }
}

/// What a power cut does to unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Every file reverts to its last synced bytes.
    DropUnsynced,
    /// Each file keeps a random prefix of its unsynced appended bytes, sometimes followed by
    /// random garbage (a torn sector), chosen by a seeded RNG.
    TearUnsynced { seed: u64 },
}

#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimState {
    generation: u64,
    file_id_next: u64,
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, u64>,
    entries_durable: BTreeMap<PathBuf, u64>,
    files: HashMap<u64, FileData>,
    sync_fails: bool,
    /// Mutating operations left before the simulated machine dies; `None` = never.
    crash_countdown: Option<u64>,
}

impl SimState {
    /// Count one mutating operation; fail it and all later ones once the countdown is over,
    /// so a power cut can land between any two I/O calls, not just between journal calls.
    fn mutate(&mut self) -> io::Result<()> {
        match self.crash_countdown.as_mut() {
            None => Ok(()),
            Some(0) => Err(io::Error::other("simulated machine crash")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
        }
    }
}

/// The simulated file system. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

/// A handle to a simulated file.
#[derive(Debug)]
pub struct SimFile {
    state: Arc<Mutex<SimState>>,
    file_id: u64,
    generation: u64,
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panicking test thread must not hide the state from the assertions that follow.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Lose power: revert every file and directory to its durable state.
    pub fn power_cut(&self, mode: PowerCut) {
        let mut state = lock(&self.state);
        let mut rng = match mode {
            PowerCut::DropUnsynced => None,
            PowerCut::TearUnsynced { seed } => Some(SimRng::new(seed)),
        };
        let live: BTreeSet<u64> = state.entries_durable.values().copied().collect();
        state.files.retain(|file_id, _| live.contains(file_id));
        for data in state.files.values_mut() {
            let mut survived = data.synced.clone();
            let appended_only = data.current.starts_with(&data.synced);
            if let (Some(rng), true) = (rng.as_mut(), appended_only) {
                let unsynced = &data.current[data.synced.len()..];
                let kept = rng.below_or_equal(unsynced.len() as u64) as usize;
                survived.extend_from_slice(&unsynced[..kept]);
                if kept < unsynced.len() && rng.one_in(4) {
                    let garbage_bytes = 1 + rng.below_or_equal(TORN_GARBAGE_BYTES_MAX - 1);
                    survived.extend((0..garbage_bytes).map(|_| rng.next_u64() as u8));
                }
            }
            data.current = survived.clone();
            data.synced = survived;
        }
        state.entries = state.entries_durable.clone();
        state.generation += 1;
        state.crash_countdown = None;
    }

    /// Let `operations` more mutating calls succeed, then fail every one until the next
    /// [`SimFs::power_cut`].
    pub fn crash_after(&self, operations: u64) {
        lock(&self.state).crash_countdown = Some(operations);
    }

    /// Make every later `sync_data`/`sync_dir` fail (or succeed again), like a dying disk.
    pub fn set_sync_fails(&self, fails: bool) {
        lock(&self.state).sync_fails = fails;
    }

    /// The current bytes of a file, for test assertions.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let file_id = state.entries.get(path)?;
        state.files.get(file_id).map(|data| data.current.clone())
    }

    /// Overwrite a file's bytes as durable content, e.g. to inject corruption.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut state = lock(&self.state);
        let file_id = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        let data = state.files.entry(file_id).or_default();
        data.current = bytes.clone();
        data.synced = bytes;
        Ok(())
    }
}

impl JournalFs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let names = state
            .entries
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<SimFile> {
        let mut state = lock(&self.state);
        state.mutate()?;
        let parent_exists = path
            .parent()
            .is_some_and(|parent| state.dirs.contains(parent));
        if !parent_exists {
            return Err(not_found(path));
        }
        if state.entries.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let file_id = state.file_id_next;
        state.file_id_next += 1;
        state.files.insert(file_id, FileData::default());
        state.entries.insert(path.to_path_buf(), file_id);
        Ok(SimFile {
            state: Arc::clone(&self.state),
            file_id,
            generation: state.generation,
        })
    }

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        let state = lock(&self.state);
        let file_id = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            state: Arc::clone(&self.state),
            file_id,
            generation: state.generation,
        })
    }

    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let file_id = state
            .entries
            .remove(source)
            .ok_or_else(|| not_found(source))?;
        state.entries.insert(target.to_path_buf(), file_id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.mutate()?;
        state.entries.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.mutate()?;
        if state.sync_fails {
            return Err(io::Error::other("simulated sync failure"));
        }
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.entries_durable.retain(|path, _| !in_dir(path));
        let current: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, file_id)| (path.clone(), *file_id))
            .collect();
        state.entries_durable.extend(current);
        Ok(())
    }
}

impl SimFile {
    fn with_data<T>(
        &self,
        mutating: bool,
        action: impl FnOnce(&mut FileData, bool) -> T,
    ) -> io::Result<T> {
        let mut state = lock(&self.state);
        if state.generation != self.generation {
            return Err(io::Error::other("file handle from before a power cut"));
        }
        if mutating {
            state.mutate()?;
        }
        let sync_fails = state.sync_fails;
        let data = state.files.entry(self.file_id).or_default();
        Ok(action(data, sync_fails))
    }
}

impl SegmentFile for SimFile {
    fn len_bytes(&self) -> io::Result<u64> {
        self.with_data(false, |data, _| data.current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_data(false, |data, _| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.current.len());
            let available = &data.current[start..];
            let count = available.len().min(buf.len());
            buf[..count].copy_from_slice(&available[..count]);
            count
        })
    }

    fn write_all_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        self.with_data(true, |data, _| {
            let end = offset + bytes.len();
            if data.current.len() < end {
                data.current.resize(end, 0);
            }
            data.current[offset..end].copy_from_slice(bytes);
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_data(true, |data, sync_fails| {
            if sync_fails {
                return Err(io::Error::other("simulated sync failure"));
            }
            data.synced = data.current.clone();
            Ok(())
        })?
    }

    fn try_clone(&self) -> io::Result<SimFile> {
        Ok(SimFile {
            state: self.state.clone(),
            file_id: self.file_id,
            generation: self.generation,
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.with_data(true, |data, _| data.current.resize(len, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_cut_reverts_unsynced_bytes_and_entries() {
        let fs = SimFs::new();
        let dir = Path::new("/j");
        fs.create_dir_all(dir).unwrap();
        let synced_path = dir.join("a");
        let mut file = fs.create_new(&synced_path).unwrap();
        file.write_all_at(0, b"durable").unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        file.write_all_at(7, b" lost").unwrap();
        let mut unsynced_entry = fs.create_new(&dir.join("b")).unwrap();
        unsynced_entry.write_all_at(0, b"x").unwrap();
        unsynced_entry.sync_data().unwrap();
        fs.rename(&synced_path, &dir.join("c")).unwrap();

        fs.power_cut(PowerCut::DropUnsynced);

        assert_eq!(fs.list(dir).unwrap(), vec!["a".to_owned()]);
        assert_eq!(fs.file_bytes(&synced_path).unwrap(), b"durable");
        assert!(file.len_bytes().is_err(), "stale handle must fail");
    }

    #[test]
    fn torn_power_cut_keeps_a_prefix_of_unsynced_appends() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let fs = SimFs::new();
            let dir = Path::new("/j");
            fs.create_dir_all(dir).unwrap();
            let path = dir.join("a");
            let mut file = fs.create_new(&path).unwrap();
            fs.sync_dir(dir).unwrap();
            file.write_all_at(0, b"0123").unwrap();
            file.sync_data().unwrap();
            file.write_all_at(4, b"456789").unwrap();
            fs.power_cut(PowerCut::TearUnsynced { seed });
            let bytes = fs.file_bytes(&path).unwrap();
            assert!(
                bytes.starts_with(b"0123"),
                "seed {seed}: synced bytes survive"
            );
            assert!(
                bytes.len() <= 10 + TORN_GARBAGE_BYTES_MAX as usize,
                "seed {seed}"
            );
            if bytes.len() <= 10 && b"0123456789".starts_with(&bytes) {
                outcomes.insert(bytes.len());
            } else {
                outcomes.insert(usize::MAX); // Torn with garbage.
            }
        }
        assert!(outcomes.contains(&4), "some cuts drop all unsynced bytes");
        assert!(outcomes.len() >= 4, "cuts vary with the seed: {outcomes:?}");
    }
}
