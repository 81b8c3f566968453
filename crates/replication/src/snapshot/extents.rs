//! A map of non-overlapping byte ranges of one LV to places in a data file. Pure: no I/O.
//!
//! Snapshots keep, for every byte of an LV written after their point, where its pre-image
//! (the data as of the point) lies in the snapshot's pre-image log. Only gaps are ever
//! filled: the first pre-image a byte gets is the one of the oldest write after the point,
//! which is exactly the byte's value at the point.

use std::collections::BTreeMap;

/// One stretch of a lookup: `file_offset` is where bytes `start..end` are kept, or `None`
/// when the map does not cover them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub file_offset: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    end: u64,
    file_offset: u64,
}

/// Non-overlapping extents, keyed by their start.
#[derive(Clone, Debug, Default)]
pub struct ExtentMap {
    extents: BTreeMap<u64, Extent>,
    covered_bytes: u64,
}

impl ExtentMap {
    pub fn new() -> ExtentMap {
        ExtentMap::default()
    }

    /// Bytes the map covers.
    pub fn covered_bytes(&self) -> u64 {
        self.covered_bytes
    }

    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// `start..end` cut at extent boundaries, in order, covering it exactly.
    pub fn lookup(&self, start: u64, end: u64) -> Vec<Piece> {
        assert!(start <= end, "a range ends after it starts");
        let mut pieces = Vec::new();
        if start == end {
            return pieces;
        }
        let mut position = start;
        // The extent that may start before `start` and reach into the range.
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .filter(|(_, extent)| extent.end > start)
            .map(|(key, extent)| (*key, *extent));
        let following = self.extents.range(start.saturating_add(1)..end);
        for (extent_start, extent) in first.into_iter().chain(following.map(|(k, e)| (*k, *e))) {
            if extent_start > position {
                pieces.push(Piece {
                    start: position,
                    end: extent_start,
                    file_offset: None,
                });
                position = extent_start;
            }
            let piece_end = extent.end.min(end);
            if piece_end > position {
                pieces.push(Piece {
                    start: position,
                    end: piece_end,
                    file_offset: Some(extent.file_offset + (position - extent_start)),
                });
                position = piece_end;
            }
        }
        if position < end {
            pieces.push(Piece {
                start: position,
                end,
                file_offset: None,
            });
        }
        debug_assert!(pieces.windows(2).all(|pair| pair[0].end == pair[1].start));
        pieces
    }

    /// The parts of `start..end` the map does not cover, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.lookup(start, end)
            .into_iter()
            .filter(|piece| piece.file_offset.is_none())
            .map(|piece| (piece.start, piece.end))
            .collect()
    }

    /// Covers `start..end`, which must be a gap, with bytes at `file_offset`. Merges with a
    /// neighbour that continues it in the file too, so sequential pre-images stay one extent.
    pub fn insert_gap(&mut self, start: u64, end: u64, file_offset: u64) {
        assert!(start < end, "an extent holds at least one byte");
        assert!(
            self.gaps(start, end) == vec![(start, end)],
            "only gaps are filled: {start}..{end} is already partly covered"
        );
        self.covered_bytes += end - start;
        let mut new_start = start;
        let mut new_extent = Extent { end, file_offset };
        if let Some((previous_start, previous)) = self
            .extents
            .range(..start)
            .next_back()
            .map(|(key, extent)| (*key, *extent))
        {
            if previous.end == start
                && previous.file_offset + (start - previous_start) == file_offset
            {
                new_start = previous_start;
                new_extent.file_offset = previous.file_offset;
            }
        }
        if let Some(next) = self.extents.get(&end).copied() {
            if next.file_offset == file_offset + (end - start) {
                self.extents.remove(&end);
                new_extent.end = next.end;
            }
        }
        self.extents.insert(new_start, new_extent);
    }

    /// Every extent as (start, end, file offset), in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.extents
            .iter()
            .map(|(start, extent)| (*start, extent.end, extent.file_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-per-byte model: which file offset each byte maps to.
    fn model_lookup(model: &[Option<u64>], start: u64, end: u64) -> Vec<Option<u64>> {
        (start..end).map(|byte| model[byte as usize]).collect()
    }

    fn flatten(pieces: &[Piece]) -> Vec<Option<u64>> {
        pieces
            .iter()
            .flat_map(|piece| {
                (piece.start..piece.end)
                    .map(move |byte| piece.file_offset.map(|offset| offset + byte - piece.start))
            })
            .collect()
    }

    #[test]
    fn gap_filling_matches_a_byte_model_over_random_inserts() {
        const SIZE: u64 = 512;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50 {
            let mut map = ExtentMap::new();
            let mut model = vec![None; SIZE as usize];
            let mut file_end = 0u64;
            for _ in 0..40 {
                let start = next() % SIZE;
                let end = (start + 1 + next() % 64).min(SIZE);
                for (gap_start, gap_end) in map.gaps(start, end) {
                    map.insert_gap(gap_start, gap_end, file_end);
                    for byte in gap_start..gap_end {
                        model[byte as usize] = Some(file_end + byte - gap_start);
                    }
                    file_end += gap_end - gap_start;
                }
                let probe_start = next() % SIZE;
                let probe_end = (probe_start + next() % 100).min(SIZE);
                assert_eq!(
                    flatten(&map.lookup(probe_start, probe_end)),
                    model_lookup(&model, probe_start, probe_end)
                );
            }
            let covered = model.iter().filter(|byte| byte.is_some()).count() as u64;
            assert_eq!(map.covered_bytes(), covered);
            assert_eq!(flatten(&map.lookup(0, SIZE)), model);
        }
    }

    #[test]
    fn adjacent_inserts_continuing_in_the_file_merge() {
        let mut map = ExtentMap::new();
        map.insert_gap(0, 4096, 0);
        map.insert_gap(4096, 8192, 4096);
        map.insert_gap(16384, 20480, 100);
        assert_eq!(map.extent_count(), 2);
        assert_eq!(map.gaps(0, 20480), vec![(8192, 16384)]);
    }

    #[test]
    #[should_panic(expected = "only gaps are filled")]
    fn filling_a_covered_range_is_a_bug() {
        let mut map = ExtentMap::new();
        map.insert_gap(0, 100, 0);
        map.insert_gap(50, 150, 100);
    }
}
