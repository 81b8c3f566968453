//! Acknowledged writes not yet in their LV, by byte range: what a read must wait for.
//!
//! One entry per write, not per 4 KiB block: a 1 MiB write was 256 hash-map inserts on the
//! commit thread and 256 removals on the applier (about 10% of the CPU of a sequential write
//! in `perf`). Entries are keyed by (LV, first byte); two writes starting at the same byte
//! share an entry that keeps the larger end and the newer seq, which only makes a read wait
//! longer, never shorter: when that newer seq is applied, every older write of the entry is
//! applied too (the applier goes in seq order).

use std::collections::BTreeMap;
use std::ops::Bound;

/// Ranges up to this long are found by one ordered scan from `start - this`; longer ones
/// (zeroing or trimming large areas) are few and looked through one by one.
pub const PENDING_SCAN_BYTES: u64 = 64 << 20;

#[derive(Debug, Default)]
pub struct PendingWrites {
    /// (lv_id, first byte) → (end byte, exclusive; newest seq).
    short: BTreeMap<(u32, u64), (u64, u64)>,
    long: BTreeMap<(u32, u64), (u64, u64)>,
}

impl PendingWrites {
    pub fn is_empty(&self) -> bool {
        self.short.is_empty() && self.long.is_empty()
    }

    /// Remembers write `seq` of `[offset, offset + length)`; an empty range counts as one
    /// byte, so it is still found.
    pub fn insert(&mut self, lv_id: u32, offset_bytes: u64, length_bytes: u64, seq: u64) {
        let end = offset_bytes.saturating_add(length_bytes.max(1));
        let map = if end - offset_bytes > PENDING_SCAN_BYTES {
            &mut self.long
        } else {
            &mut self.short
        };
        let entry = map.entry((lv_id, offset_bytes)).or_insert((end, seq));
        entry.0 = entry.0.max(end);
        entry.1 = entry.1.max(seq);
    }

    /// Write `seq` is in its LV: its entry goes, unless a newer write shares it.
    pub fn remove_applied(&mut self, lv_id: u32, offset_bytes: u64, length_bytes: u64, seq: u64) {
        let end = offset_bytes.saturating_add(length_bytes.max(1));
        // A shared entry may have grown past this write's end and moved to `long`.
        for map in [&mut self.short, &mut self.long] {
            if map
                .get(&(lv_id, offset_bytes))
                .is_some_and(|(entry_end, entry_seq)| *entry_seq == seq && *entry_end >= end)
            {
                map.remove(&(lv_id, offset_bytes));
            }
        }
    }

    /// The newest seq among pending writes that overlap `[offset, offset + length)`.
    pub fn newest_overlapping(
        &self,
        lv_id: u32,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let end = offset_bytes.saturating_add(length_bytes.max(1));
        let overlaps = |(&(entry_lv, start), &(entry_end, _)): (&(u32, u64), &(u64, u64))| {
            entry_lv == lv_id && start < end && entry_end > offset_bytes
        };
        let from = (lv_id, offset_bytes.saturating_sub(PENDING_SCAN_BYTES));
        let short = self
            .short
            .range((Bound::Included(from), Bound::Excluded((lv_id, end))))
            .filter(|entry| overlaps(*entry))
            .map(|(_, (_, seq))| *seq);
        let long = self
            .long
            .iter()
            .filter(|entry| overlaps(*entry))
            .map(|(_, (_, seq))| *seq);
        short.chain(long).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The per-4 KiB-block map this replaced, as the model.
    #[derive(Default)]
    struct Blocks(HashMap<(u32, u64), u64>);

    impl Blocks {
        fn blocks(offset: u64, length: u64) -> std::ops::RangeInclusive<u64> {
            offset / 4096..=(offset + length.max(1) - 1) / 4096
        }
        fn insert(&mut self, lv: u32, offset: u64, length: u64, seq: u64) {
            for block in Self::blocks(offset, length) {
                self.0.insert((lv, block), seq);
            }
        }
        fn remove_applied(&mut self, lv: u32, offset: u64, length: u64, seq: u64) {
            for block in Self::blocks(offset, length) {
                if self.0.get(&(lv, block)) == Some(&seq) {
                    self.0.remove(&(lv, block));
                }
            }
        }
        fn newest(&self, lv: u32, offset: u64, length: u64) -> Option<u64> {
            Self::blocks(offset, length)
                .filter_map(|block| self.0.get(&(lv, block)).copied())
                .max()
        }
    }

    #[test]
    fn a_read_waits_for_every_overlapping_write_and_only_for_those() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _round in 0..60 {
            let mut ranges = PendingWrites::default();
            let mut model = Blocks::default();
            let mut written: Vec<(u32, u64, u64, u64)> = Vec::new();
            let mut applied = 0usize;
            for seq in 1..=60u64 {
                let lv = next(2) as u32;
                // Block-aligned, as NBD clients write; some huge (trim/zero) ranges.
                let offset = next(512) * 4096;
                let length = match next(10) {
                    0 => (PENDING_SCAN_BYTES / 4096 + 1 + next(64)) * 4096,
                    _ => (1 + next(64)) * 4096,
                };
                ranges.insert(lv, offset, length, seq);
                model.insert(lv, offset, length, seq);
                written.push((lv, offset, length, seq));
                // The applier catches up in seq order, now and then.
                if next(3) == 0 {
                    let upto = applied + next((written.len() - applied) as u64 + 1) as usize;
                    for &(lv, offset, length, seq) in &written[applied..upto] {
                        ranges.remove_applied(lv, offset, length, seq);
                        model.remove_applied(lv, offset, length, seq);
                    }
                    applied = upto;
                }
                for _ in 0..8 {
                    let lv = next(2) as u32;
                    let offset = next(700) * 4096;
                    let length = (1 + next(16)) * 4096;
                    let found = ranges.newest_overlapping(lv, offset, length);
                    // The read waits at least for the newest overlapping write, and only
                    // ever for a write that is still pending.
                    if let Some(newest) = model.newest(lv, offset, length) {
                        assert!(
                            found.is_some_and(|seq| seq >= newest),
                            "a pending write was missed"
                        );
                    }
                    if let Some(seq) = found {
                        assert!(written[applied..].iter().any(|w| w.3 == seq));
                    }
                }
            }
            for &(lv, offset, length, seq) in &written[applied..] {
                ranges.remove_applied(lv, offset, length, seq);
            }
            assert!(ranges.is_empty(), "everything applied, nothing pending");
        }
    }
}
