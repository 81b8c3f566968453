//! Online verify: region hashes of a group's LVs **as of one sequence point** `S`, computed
//! while writes go on (`docs/verify.md`).
//!
//! ```text
//!  apply thread (engine settle / ABA apply)         background hasher (one thread)
//!  ─────────────────────────────────────────         ───────────────────────────────
//!  for each record seq k:                           wait until applied_seq ≥ S
//!    lock hook                                      for each region r of each LV:
//!    if k > S: hash every region it touches           lock session; if r not hashed:
//!              that is not hashed yet                   read r, hash, mark hashed
//!              (copy-before-write, for hashing)
//!    apply k; applied_seq = k; unlock
//! ```
//!
//! **Why this is the image at `S`.** A region is hashed exactly once, either by the hasher or
//! by the apply thread just before the first record after `S` that writes it. Either way, at
//! that moment every record ≤ `S` is in the LV (the hasher starts only once `applied_seq ≥ S`,
//! and records are applied in seq order) and no record > `S` touching the region is (it would
//! have hashed the region first). So each region's hash is of its content at exactly `S`.
//! The hook lock is held across "check, apply, publish applied_seq", so a session registered
//! between two applies sees the exact applied seq.
//!
//! The same hook runs on production's commit thread (`engine.rs`) and on a recovery server's
//! apply thread (`redoubt_replication::aba`). Writes are never paused: a record waits at most
//! for one region read of `region_size_bytes`.
//!
//! **Hash.** BLAKE3, truncated to 128 bits. Verify must not miss a difference: CRC32C has a
//! 2^-32 chance per region of a collision, is linear (two corruptions can cancel out) and is
//! what the wire and the journal already use, so a bug that corrupts a payload and its CRC
//! together would pass it. BLAKE3 is a cryptographic hash running at several GB/s per core,
//! faster than the disk it reads; 128 bits keep the hash lists small while a collision stays
//! out of reach (2^-128 per region pair).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::block::BlockVolume;

/// (lv_id, offset in bytes, length in bytes) of what a record writes.
pub type LvRange = (u32, u64, u64);

/// Default region size of verify and of the checksum resync (the dirty-region size).
pub const VERIFY_REGION_BYTES_DEFAULT: u64 = crate::state::DIRTY_REGION_BYTES;
/// Smallest region a verify may use.
pub const VERIFY_REGION_BYTES_MIN: u64 = 4096;
/// Largest region a verify may use (one region is read into memory at once).
pub const VERIFY_REGION_BYTES_MAX: u64 = 64 << 20;
/// Most regions of one verify over all LVs of a group (bounds the session's memory:
/// 17 bytes per region, so at most 68 MiB; 4 TiB of LVs at the default 1 MiB).
pub const VERIFY_REGIONS_MAX: u64 = 1 << 22;
/// How long a session waits for the apply thread to reach its seq before it fails.
pub const VERIFY_WAIT_FOR_SEQ_MS_DEFAULT: u64 = 120_000;

/// A region's hash: BLAKE3, first 128 bits.
pub type RegionHash = [u8; 16];

pub fn hash_region(data: &[u8]) -> RegionHash {
    let full = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_bytes()[..16]);
    out
}

pub fn hash_hex(hash: &RegionHash) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "region size {region_size_bytes} bytes is outside {min}..={max} or not a multiple of 4096"
    )]
    RegionSize {
        region_size_bytes: u64,
        min: u64,
        max: u64,
    },
    #[error("the LVs have {regions} regions of {region_size_bytes} bytes, more than the {max} one verify may hash; use larger regions")]
    TooManyRegions {
        regions: u64,
        region_size_bytes: u64,
        max: u64,
    },
    #[error("this server has already applied seq {applied_seq}, past the verify point {seq}")]
    PastSeq { seq: u64, applied_seq: u64 },
    #[error("a verify (at seq {seq}) is already running for this group")]
    Busy { seq: u64 },
    #[error("the verify at seq {seq} failed: {reason}")]
    Failed { seq: u64, reason: String },
}

/// One LV a session hashes.
#[derive(Clone)]
pub struct VerifyVolume {
    pub name: String,
    pub lv_id: u32,
    pub volume: Arc<dyn BlockVolume>,
}

struct LvHashes {
    name: String,
    size_bytes: u64,
    volume: Arc<dyn BlockVolume>,
    hashes: Vec<Option<RegionHash>>,
}

/// The state of one verify at one seq: the hashes so far, progress, outcome.
pub struct VerifySession {
    pub seq: u64,
    pub region_size_bytes: u64,
    pub id: String,
    lvs: Mutex<BTreeMap<u32, LvHashes>>,
    regions_total: u64,
    regions_hashed: AtomicU64,
    /// Regions hashed by the apply thread (copy-before-write), for the docs' claim and tests.
    pub regions_hashed_before_write: AtomicU64,
    /// Bytes the session read from the LVs.
    pub bytes_read: AtomicU64,
    cancelled: AtomicBool,
    done: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// The hashes of one LV at the session's seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvResult {
    pub name: String,
    pub size_bytes: u64,
    pub hashes: Vec<RegionHash>,
}

impl VerifySession {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, LvHashes>> {
        self.lvs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn regions_total(&self) -> u64 {
        self.regions_total
    }

    pub fn regions_hashed(&self) -> u64 {
        self.regions_hashed.load(Ordering::Acquire)
    }

    pub fn pct(&self) -> f64 {
        if self.regions_total == 0 {
            return 100.0;
        }
        self.regions_hashed() as f64 * 100.0 / self.regions_total as f64
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn fail(&self, reason: String) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert(reason);
        drop(failure);
        self.done.store(true, Ordering::Release);
    }

    /// The hashes, once every region is hashed.
    pub fn result(&self) -> Result<Option<Vec<LvResult>>, VerifyError> {
        if let Some(reason) = self.failure() {
            return Err(VerifyError::Failed {
                seq: self.seq,
                reason,
            });
        }
        if !self.is_done() {
            return Ok(None);
        }
        let lvs = self.lock();
        let mut out = Vec::new();
        for lv in lvs.values() {
            let hashes: Option<Vec<RegionHash>> = lv.hashes.iter().copied().collect();
            let Some(hashes) = hashes else {
                return Err(VerifyError::Failed {
                    seq: self.seq,
                    reason: format!("volume {} has regions without a hash", lv.name),
                });
            };
            out.push(LvResult {
                name: lv.name.clone(),
                size_bytes: lv.size_bytes,
                hashes,
            });
        }
        Ok(Some(out))
    }

    /// The LVs' names, sizes and region counts, in lv id order.
    pub fn volumes(&self) -> Vec<(String, u64, u64)> {
        self.lock()
            .values()
            .map(|lv| (lv.name.clone(), lv.size_bytes, lv.hashes.len() as u64))
            .collect()
    }

    /// Up to `count` hashes of volume `name` from region `from`, once the session is done.
    pub fn page(&self, name: &str, from: u64, count: u64) -> Option<Vec<RegionHash>> {
        if !self.is_done() || self.failure().is_some() {
            return None;
        }
        let lvs = self.lock();
        let lv = lvs.values().find(|lv| lv.name == name)?;
        let start = usize::try_from(from).ok()?.min(lv.hashes.len());
        let end = start
            .saturating_add(usize::try_from(count).ok()?)
            .min(lv.hashes.len());
        lv.hashes[start..end].iter().copied().collect()
    }

    /// Hashes region `region` of `lv` if nobody has; the caller holds the session lock.
    fn hash_locked(&self, lv: &mut LvHashes, region: u64) -> io::Result<()> {
        let Some(slot) = lv.hashes.get(region as usize) else {
            return Ok(());
        };
        if slot.is_some() {
            return Ok(());
        }
        let offset = region * self.region_size_bytes;
        let length = self
            .region_size_bytes
            .min(lv.size_bytes.saturating_sub(offset));
        let mut data = vec![0u8; length as usize];
        lv.volume.read_at(&mut data, offset)?;
        let hash = hash_region(&data);
        if let Some(slot) = lv.hashes.get_mut(region as usize) {
            *slot = Some(hash);
        }
        self.regions_hashed.fetch_add(1, Ordering::AcqRel);
        self.bytes_read.fetch_add(length, Ordering::Relaxed);
        Ok(())
    }

    /// Copy-before-write: hashes every region of `[offset, offset + length)` of `lv_id` not
    /// hashed yet, as it is now (before a record after the verify point lands on it).
    fn hash_before_write(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> io::Result<()> {
        let mut lvs = self.lock();
        let Some(lv) = lvs.get_mut(&lv_id) else {
            return Ok(());
        };
        let first = offset_bytes / self.region_size_bytes;
        let last = (offset_bytes + length_bytes.max(1) - 1) / self.region_size_bytes;
        for region in first..=last {
            let before = self.regions_hashed();
            self.hash_locked(lv, region)?;
            if self.regions_hashed() > before {
                self.regions_hashed_before_write
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

struct HookInner {
    applied_seq: u64,
    session: Option<Arc<VerifySession>>,
    sessions_started: u64,
}

/// The seam between an apply thread and verify sessions. One per group per server.
pub struct VerifyHook {
    inner: Mutex<HookInner>,
    applied: Condvar,
    volumes: Vec<VerifyVolume>,
}

impl VerifyHook {
    /// `applied_seq`: the last seq already in the LVs.
    pub fn new(applied_seq: u64, volumes: Vec<VerifyVolume>) -> VerifyHook {
        VerifyHook {
            inner: Mutex::new(HookInner {
                applied_seq,
                session: None,
                sessions_started: 0,
            }),
            applied: Condvar::new(),
            volumes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HookInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn applied_seq(&self) -> u64 {
        self.lock().applied_seq
    }

    /// The LVs this hook hashes.
    pub fn volumes(&self) -> &[VerifyVolume] {
        &self.volumes
    }

    /// The apply thread calls this for every record it writes to an LV (or, with `seq`
    /// `None`, a write that bypasses the journal: always after any verify point), in order.
    /// `range` is (lv_id, offset, length) when the record writes an LV.
    pub fn around_apply<T>(
        &self,
        seq: Option<u64>,
        range: Option<(u32, u64, u64)>,
        apply: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let mut inner = self.lock();
        if let (Some(session), Some((lv_id, offset_bytes, length_bytes))) = (&inner.session, range)
        {
            let after_point = seq.is_none_or(|seq| seq > session.seq);
            if after_point && !session.is_done() {
                if let Err(error) = session.hash_before_write(lv_id, offset_bytes, length_bytes) {
                    // The write goes on; the verify fails, loudly.
                    session.fail(format!("hash a region before a write: {error}"));
                }
            }
        }
        let outcome = apply()?;
        if let Some(seq) = seq {
            if seq > inner.applied_seq {
                inner.applied_seq = seq;
            }
            if inner.session.is_some() {
                self.applied.notify_all();
            }
        }
        Ok(outcome)
    }

    /// [`VerifyHook::around_apply`] for a run of records that do not overlap, written at once
    /// by `apply` (in any order: none changes what another one overwrites): each range is
    /// hashed before the run writes, and the run counts as applied through its last seq.
    pub fn around_apply_run<T>(
        &self,
        records: &[(u64, Option<LvRange>)],
        apply: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let mut inner = self.lock();
        if let Some(session) = &inner.session {
            for (seq, range) in records {
                let Some((lv_id, offset_bytes, length_bytes)) = *range else {
                    continue;
                };
                if *seq > session.seq && !session.is_done() {
                    if let Err(error) = session.hash_before_write(lv_id, offset_bytes, length_bytes)
                    {
                        session.fail(format!("hash a region before a write: {error}"));
                    }
                }
            }
        }
        let outcome = apply()?;
        if let Some(last) = records.iter().map(|(seq, _)| *seq).max() {
            if last > inner.applied_seq {
                inner.applied_seq = last;
            }
            if inner.session.is_some() {
                self.applied.notify_all();
            }
        }
        Ok(outcome)
    }

    /// Records that the apply thread jumped to `seq` without writing (a new replica's first
    /// contact).
    pub fn set_applied(&self, seq: u64) {
        let mut inner = self.lock();
        if seq > inner.applied_seq {
            inner.applied_seq = seq;
        }
        self.applied.notify_all();
    }

    /// The current (or last) session.
    pub fn session(&self) -> Option<Arc<VerifySession>> {
        self.lock().session.clone()
    }

    /// Drops the session (cancelling it if it runs).
    pub fn clear(&self) {
        let mut inner = self.lock();
        if let Some(session) = inner.session.take() {
            session.cancel();
        }
    }

    /// Starts a verify at `seq` (`None`: the seq given by `choose` under the hook lock, which
    /// sees the exact applied seq) and its background hasher thread.
    pub fn start(
        self: &Arc<Self>,
        seq: Option<u64>,
        choose: impl FnOnce(u64) -> u64,
        region_size_bytes: u64,
        wait_for_seq_ms: u64,
    ) -> Result<Arc<VerifySession>, VerifyError> {
        if !(VERIFY_REGION_BYTES_MIN..=VERIFY_REGION_BYTES_MAX).contains(&region_size_bytes)
            || !region_size_bytes.is_multiple_of(4096)
        {
            return Err(VerifyError::RegionSize {
                region_size_bytes,
                min: VERIFY_REGION_BYTES_MIN,
                max: VERIFY_REGION_BYTES_MAX,
            });
        }
        let regions: u64 = self
            .volumes
            .iter()
            .map(|volume| volume.volume.size_bytes().div_ceil(region_size_bytes))
            .sum();
        if regions > VERIFY_REGIONS_MAX {
            return Err(VerifyError::TooManyRegions {
                regions,
                region_size_bytes,
                max: VERIFY_REGIONS_MAX,
            });
        }
        let mut inner = self.lock();
        if let Some(running) = &inner.session {
            if !running.is_done() && !running.cancelled.load(Ordering::Acquire) {
                return Err(VerifyError::Busy { seq: running.seq });
            }
        }
        let seq = seq.unwrap_or_else(|| choose(inner.applied_seq));
        if inner.applied_seq > seq {
            return Err(VerifyError::PastSeq {
                seq,
                applied_seq: inner.applied_seq,
            });
        }
        inner.sessions_started += 1;
        let lvs: BTreeMap<u32, LvHashes> = self
            .volumes
            .iter()
            .map(|volume| {
                let size_bytes = volume.volume.size_bytes();
                (
                    volume.lv_id,
                    LvHashes {
                        name: volume.name.clone(),
                        size_bytes,
                        volume: volume.volume.clone(),
                        hashes: vec![None; size_bytes.div_ceil(region_size_bytes) as usize],
                    },
                )
            })
            .collect();
        let session = Arc::new(VerifySession {
            seq,
            region_size_bytes,
            id: format!("verify-{seq}-{}", inner.sessions_started),
            lvs: Mutex::new(lvs),
            regions_total: regions,
            regions_hashed: AtomicU64::new(0),
            regions_hashed_before_write: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            done: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        inner.session = Some(session.clone());
        drop(inner);
        let hook = self.clone();
        let running = session.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("verify-{seq}"))
            .spawn(move || hook.hash_all(&running, wait_for_seq_ms));
        if let Err(error) = spawned {
            session.fail(format!("spawn the hasher thread: {error}"));
        }
        Ok(session)
    }

    /// The background pass: waits for the apply thread to reach the seq, then hashes every
    /// region nobody hashed yet.
    fn hash_all(&self, session: &VerifySession, wait_for_seq_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(wait_for_seq_ms);
        {
            let mut inner = self.lock();
            while inner.applied_seq < session.seq {
                if session.cancelled.load(Ordering::Acquire) {
                    return session.fail("cancelled".into());
                }
                let now = Instant::now();
                if now >= deadline {
                    let applied = inner.applied_seq;
                    drop(inner);
                    return session.fail(format!(
                        "this server applied only up to seq {applied} within {wait_for_seq_ms} ms, not the verify point {}",
                        session.seq
                    ));
                }
                // Woken by every apply while a session exists; re-checked at least every 100 ms
                // for cancellation.
                let wait = (deadline - now).min(Duration::from_millis(100));
                inner = self
                    .applied
                    .wait_timeout(inner, wait)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
        }
        let lv_regions: Vec<(u32, u64)> = session
            .lock()
            .iter()
            .map(|(lv_id, lv)| (*lv_id, lv.hashes.len() as u64))
            .collect();
        for (lv_id, regions) in lv_regions {
            for region in 0..regions {
                if session.cancelled.load(Ordering::Acquire) {
                    return session.fail("cancelled".into());
                }
                if session.failure().is_some() {
                    return;
                }
                let mut lvs = session.lock();
                let Some(lv) = lvs.get_mut(&lv_id) else {
                    break;
                };
                if let Err(error) = session.hash_locked(lv, region) {
                    drop(lvs);
                    return session.fail(format!(
                        "read region {region} of volume {lv_id:#x}: {error}"
                    ));
                }
            }
        }
        session.done.store(true, Ordering::Release);
    }
}

/// One region that differs between two servers' hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDifference {
    pub volume: String,
    pub region: u64,
    pub offset_bytes: u64,
    pub length_bytes: u64,
}

/// Pure: the regions where `replica` differs from `production` (matched by LV name). An LV
/// missing on the replica differs everywhere; regions past the shorter LV's end differ.
pub fn compare(
    production: &[LvResult],
    replica: &[LvResult],
    region_size_bytes: u64,
) -> Vec<RegionDifference> {
    let mut out = Vec::new();
    for lv in production {
        let other = replica.iter().find(|other| other.name == lv.name);
        for (region, hash) in lv.hashes.iter().enumerate() {
            let same = other
                .and_then(|other| other.hashes.get(region))
                .is_some_and(|theirs| theirs == hash)
                && other.is_some_and(|other| {
                    other.size_bytes == lv.size_bytes
                        || (region as u64 + 1) * region_size_bytes
                            <= other.size_bytes.min(lv.size_bytes)
                });
            if !same {
                let offset_bytes = region as u64 * region_size_bytes;
                out.push(RegionDifference {
                    volume: lv.name.clone(),
                    region: region as u64,
                    offset_bytes,
                    length_bytes: region_size_bytes.min(lv.size_bytes - offset_bytes),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(name: &str, hashes: &[u8]) -> LvResult {
        LvResult {
            name: name.into(),
            size_bytes: hashes.len() as u64 * 4096,
            hashes: hashes.iter().map(|byte| [*byte; 16]).collect(),
        }
    }

    #[test]
    fn compare_names_each_differing_region() {
        let production = [lv("a", &[1, 2, 3]), lv("b", &[4])];
        let replica = [lv("a", &[1, 9, 3]), lv("b", &[4])];
        let differences = compare(&production, &replica, 4096);
        assert_eq!(
            differences,
            vec![RegionDifference {
                volume: "a".into(),
                region: 1,
                offset_bytes: 4096,
                length_bytes: 4096
            }]
        );
        // A missing LV differs everywhere.
        assert_eq!(compare(&production, &replica[..1], 4096).len(), 2);
    }

    #[test]
    fn a_flipped_byte_changes_the_hash() {
        let mut data = vec![7u8; 1 << 20];
        let before = hash_region(&data);
        data[123_456] ^= 1;
        assert_ne!(before, hash_region(&data));
    }
}
