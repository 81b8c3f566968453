//! The oracle: production's write history in acknowledgement order, and what every block
//! held as of any sequence number.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::block::BLOCK_SIZE_BYTES;
use crate::workload::{
    lv_block_counts, WorkloadError, WorkloadEvent, WriteOp, BLOCKS_PER_WRITE_MAX, WRITE_COUNT_MAX,
};

const BLOCK_SIZE_BYTES_U64: u64 = BLOCK_SIZE_BYTES as u64;

/// A write as production acknowledged it, with the journal's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedWrite {
    pub op: WriteOp,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Lv(#[from] WorkloadError),
    #[error("write ids start at 1; 0 means \"never written\"")]
    WriteIdZero,
    /// Seq 0 means "before any write"; `u64::MAX` is the checker's "no upper bound".
    #[error("write {write_id}: seq {seq} is reserved (0 and u64::MAX)")]
    SeqReserved { write_id: u64, seq: u64 },
    #[error("write {write_id}: seq {seq} is not above the previous seq {seq_previous}")]
    SeqNotIncreasing {
        write_id: u64,
        seq: u64,
        seq_previous: u64,
    },
    #[error("write {write_id} is recorded twice")]
    DuplicateWriteId { write_id: u64 },
    #[error("write {write_id} targets lv {lv_index}, but the history has {lv_count} LVs")]
    LvIndex {
        write_id: u64,
        lv_index: u32,
        lv_count: usize,
    },
    #[error(
        "write {write_id} ({block_count} blocks at byte {offset_bytes}) is not 1..={BLOCKS_PER_WRITE_MAX} \
         whole blocks inside lv {lv_index} of {lv_size_bytes} bytes"
    )]
    Geometry {
        write_id: u64,
        lv_index: u32,
        offset_bytes: u64,
        block_count: u32,
        lv_size_bytes: u64,
    },
    #[error(
        "flush point {seq} must lie between the previous flush point {seq_previous} and the \
         last acknowledged seq {seq_last}"
    )]
    FlushPoint {
        seq: u64,
        seq_previous: u64,
        seq_last: u64,
    },
    #[error("the history is full ({WRITE_COUNT_MAX} writes)")]
    TooManyWrites,
}

/// Per block, the positions (into `History::writes`) of every write that covered it, in seq
/// order. Stored flat (CSR) so building is two passes and lookups are a slice.
#[derive(Debug, Clone)]
pub(crate) struct BlockIndex {
    /// Global number of block 0 of each LV; one extra entry for the end.
    lv_block_base: Vec<usize>,
    /// `entries[entry_start[g]..entry_start[g + 1]]` are the writers of global block `g`.
    entry_start: Vec<usize>,
    entries: Vec<u32>,
}

impl BlockIndex {
    fn build(lv_block_counts: &[u64], writes: &[RecordedWrite]) -> Self {
        let mut lv_block_base = Vec::with_capacity(lv_block_counts.len() + 1);
        let mut total = 0usize;
        for &blocks in lv_block_counts {
            lv_block_base.push(total);
            total += blocks as usize;
        }
        lv_block_base.push(total);

        let mut entry_start = vec![0usize; total + 1];
        for write in writes {
            let first = lv_block_base[write.op.lv_index as usize] + write.op.block_first() as usize;
            for global in first..first + write.op.block_count as usize {
                entry_start[global + 1] += 1;
            }
        }
        for global in 0..total {
            entry_start[global + 1] += entry_start[global];
        }
        let mut cursor = entry_start.clone();
        let mut entries = vec![0u32; entry_start[total]];
        for (position, write) in writes.iter().enumerate() {
            let first = lv_block_base[write.op.lv_index as usize] + write.op.block_first() as usize;
            for global in first..first + write.op.block_count as usize {
                entries[cursor[global]] = position as u32;
                cursor[global] += 1;
            }
        }
        debug_assert!((0..total).all(|global| cursor[global] == entry_start[global + 1]));
        Self {
            lv_block_base,
            entry_start,
            entries,
        }
    }

    /// Positions of the writes that covered this block, ascending (so seq-ascending too).
    pub(crate) fn writers(&self, lv_index: u32, block_index: u64) -> &[u32] {
        let global = self.lv_block_base[lv_index as usize] + block_index as usize;
        assert!(global < self.lv_block_base[lv_index as usize + 1]);
        &self.entries[self.entry_start[global]..self.entry_start[global + 1]]
    }
}

/// Production's history of one run: acknowledged writes in seq order, and flush points.
#[derive(Debug, Clone)]
pub struct History {
    run_id: u64,
    lv_block_counts: Vec<u64>,
    writes: Vec<RecordedWrite>,
    position_by_write_id: HashMap<u64, u32>,
    flush_points: Vec<u64>,
    /// Built on first use by a checker and dropped by every mutation.
    index: OnceLock<BlockIndex>,
}

impl History {
    /// An empty history over LVs of the given sizes (non-zero multiples of 4096 bytes).
    pub fn new(run_id: u64, lv_sizes_bytes: &[u64]) -> Result<Self, HistoryError> {
        Ok(Self {
            run_id,
            lv_block_counts: lv_block_counts(lv_sizes_bytes)?,
            writes: Vec::new(),
            position_by_write_id: HashMap::new(),
            flush_points: Vec::new(),
            index: OnceLock::new(),
        })
    }

    /// A history where production acknowledged the workload's writes in issue order
    /// (seq = write id), with every flush completed.
    pub fn from_workload(
        run_id: u64,
        lv_sizes_bytes: &[u64],
        events: &[WorkloadEvent],
    ) -> Result<Self, HistoryError> {
        let mut history = Self::new(run_id, lv_sizes_bytes)?;
        for event in events {
            match event {
                WorkloadEvent::Write(op) => history.record_write_ack_order(*op)?,
                WorkloadEvent::Flush => {
                    history.record_flush();
                }
            }
        }
        Ok(history)
    }

    /// Records that production acknowledged `op` and the journal gave it `seq`. Seqs must
    /// strictly increase; gaps are fine (they stand for writes outside this workload).
    pub fn record_write(&mut self, op: WriteOp, seq: u64) -> Result<(), HistoryError> {
        self.validate(&op, seq)?;
        let position = u32::try_from(self.writes.len()).map_err(|_| HistoryError::TooManyWrites)?;
        self.position_by_write_id.insert(op.write_id, position);
        self.writes.push(RecordedWrite { op, seq });
        self.index = OnceLock::new();
        Ok(())
    }

    /// Records `op` when only the acknowledgement order is known: seq = write id.
    pub fn record_write_ack_order(&mut self, op: WriteOp) -> Result<(), HistoryError> {
        self.record_write(op, op.write_id)
    }

    /// Records a completed FLUSH: every write recorded so far must survive. Returns the
    /// flush point (the highest seq acknowledged before it; 0 if none).
    pub fn record_flush(&mut self) -> u64 {
        let point = self.seq_last();
        debug_assert!(self.flush_points.last().is_none_or(|&last| last <= point));
        self.flush_points.push(point);
        point
    }

    /// Records a completed FLUSH whose flush point the caller knows (with concurrent
    /// requests, writes acknowledged after the FLUSH was issued are not covered by it).
    pub fn record_flush_at(&mut self, seq: u64) -> Result<(), HistoryError> {
        let seq_previous = self.flush_seq_last();
        let seq_last = self.seq_last();
        if seq < seq_previous || seq > seq_last {
            return Err(HistoryError::FlushPoint {
                seq,
                seq_previous,
                seq_last,
            });
        }
        self.flush_points.push(seq);
        Ok(())
    }

    fn validate(&self, op: &WriteOp, seq: u64) -> Result<(), HistoryError> {
        let write_id = op.write_id;
        if write_id == 0 {
            return Err(HistoryError::WriteIdZero);
        }
        if seq == 0 || seq == u64::MAX {
            return Err(HistoryError::SeqReserved { write_id, seq });
        }
        if self.writes.len() as u64 >= WRITE_COUNT_MAX {
            return Err(HistoryError::TooManyWrites);
        }
        let seq_previous = self.seq_last();
        if seq <= seq_previous {
            return Err(HistoryError::SeqNotIncreasing {
                write_id,
                seq,
                seq_previous,
            });
        }
        if self.position_by_write_id.contains_key(&write_id) {
            return Err(HistoryError::DuplicateWriteId { write_id });
        }
        let lv_count = self.lv_block_counts.len();
        let Some(&lv_blocks) = self.lv_block_counts.get(op.lv_index as usize) else {
            return Err(HistoryError::LvIndex {
                write_id,
                lv_index: op.lv_index,
                lv_count,
            });
        };
        let aligned = op.offset_bytes.is_multiple_of(BLOCK_SIZE_BYTES_U64);
        let count_valid = op.block_count >= 1 && op.block_count <= BLOCKS_PER_WRITE_MAX;
        let inside = op.block_first() + u64::from(op.block_count) <= lv_blocks;
        if !aligned || !count_valid || !inside {
            return Err(HistoryError::Geometry {
                write_id,
                lv_index: op.lv_index,
                offset_bytes: op.offset_bytes,
                block_count: op.block_count,
                lv_size_bytes: lv_blocks * BLOCK_SIZE_BYTES_U64,
            });
        }
        Ok(())
    }

    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    pub fn lv_block_counts(&self) -> &[u64] {
        &self.lv_block_counts
    }

    /// Acknowledged writes in seq order.
    pub fn writes(&self) -> &[RecordedWrite] {
        &self.writes
    }

    /// The flush points, in order: after the n-th completed FLUSH, every write with
    /// `seq <= flush_points()[n]` must survive.
    pub fn flush_points(&self) -> &[u64] {
        &self.flush_points
    }

    /// The last flush point, or 0 before any completed FLUSH.
    pub fn flush_seq_last(&self) -> u64 {
        self.flush_points.last().copied().unwrap_or(0)
    }

    /// The seq of the last acknowledged write, or 0.
    pub fn seq_last(&self) -> u64 {
        self.writes.last().map_or(0, |write| write.seq)
    }

    /// The recorded write with this id, if production acknowledged it.
    pub fn write(&self, write_id: u64) -> Option<&RecordedWrite> {
        let position = *self.position_by_write_id.get(&write_id)?;
        self.writes.get(position as usize)
    }

    pub(crate) fn position_of(&self, write_id: u64) -> Option<u32> {
        self.position_by_write_id.get(&write_id).copied()
    }

    /// The largest recorded seq `<= seq`, or 0: the canonical name of the state at `seq`
    /// (the image does not change between two recorded seqs).
    pub fn seq_floor(&self, seq: u64) -> u64 {
        let count = self.writes.partition_point(|write| write.seq <= seq);
        if count == 0 {
            0
        } else {
            self.writes[count - 1].seq
        }
    }

    pub(crate) fn index(&self) -> &BlockIndex {
        self.index
            .get_or_init(|| BlockIndex::build(&self.lv_block_counts, &self.writes))
    }

    /// What production held as of `seq`: for every block, the id of the last write with
    /// `seq <= seq` that covered it. O(blocks + blocks written up to `seq`).
    pub fn image_at(&self, seq: u64) -> ExpectedImage {
        let mut write_ids: Vec<Vec<u64>> = self
            .lv_block_counts
            .iter()
            .map(|&blocks| vec![0u64; blocks as usize])
            .collect();
        for write in self.writes.iter().take_while(|write| write.seq <= seq) {
            let lv = &mut write_ids[write.op.lv_index as usize];
            let first = write.op.block_first() as usize;
            lv[first..first + write.op.block_count as usize].fill(write.op.write_id);
        }
        ExpectedImage {
            seq: self.seq_floor(seq),
            write_ids,
        }
    }
}

/// Production's image as of one seq, as write ids per block (0 = never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedImage {
    /// The canonical seq (largest recorded seq `<=` the one asked for, or 0).
    pub seq: u64,
    write_ids: Vec<Vec<u64>>,
}

impl ExpectedImage {
    /// The write that block holds, or `None` when it was never written.
    pub fn write_id(&self, lv_index: u32, block_index: u64) -> Option<u64> {
        let id = *self
            .write_ids
            .get(lv_index as usize)?
            .get(block_index as usize)?;
        (id != 0).then_some(id)
    }

    /// Write ids of every block of one LV (0 = never written).
    pub fn lv(&self, lv_index: u32) -> &[u64] {
        &self.write_ids[lv_index as usize]
    }

    pub fn lv_count(&self) -> usize {
        self.write_ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(write_id: u64, lv_index: u32, block_first: u64, block_count: u32) -> WriteOp {
        WriteOp {
            write_id,
            lv_index,
            offset_bytes: block_first * 4096,
            block_count,
        }
    }

    #[test]
    fn image_at_tracks_last_writer() {
        let mut history = History::new(5, &[8 * 4096, 4 * 4096]).unwrap();
        history.record_write(op(1, 0, 0, 4), 10).unwrap();
        history.record_write(op(2, 0, 2, 4), 20).unwrap();
        assert_eq!(history.record_flush(), 20);
        history.record_write(op(3, 1, 1, 1), 30).unwrap();

        let before = history.image_at(9);
        assert_eq!(before.seq, 0);
        assert_eq!(before.write_id(0, 0), None);
        let middle = history.image_at(25);
        assert_eq!(middle.seq, 20);
        assert_eq!(middle.lv(0), &[1, 1, 2, 2, 2, 2, 0, 0]);
        assert_eq!(middle.write_id(1, 1), None);
        assert_eq!(history.image_at(u64::MAX).write_id(1, 1), Some(3));
        assert_eq!(history.index().writers(0, 2), &[0, 1]);
        assert_eq!(history.index().writers(1, 0), &[] as &[u32]);
    }

    #[test]
    fn rejects_bad_records() {
        let mut history = History::new(5, &[8 * 4096]).unwrap();
        history.record_write(op(1, 0, 0, 1), 10).unwrap();
        assert!(matches!(
            history.record_write(op(2, 0, 0, 1), 10),
            Err(HistoryError::SeqNotIncreasing { .. })
        ));
        assert_eq!(
            history.record_write(op(1, 0, 0, 1), 11),
            Err(HistoryError::DuplicateWriteId { write_id: 1 })
        );
        assert!(matches!(
            history.record_write(op(3, 0, 7, 2), 12),
            Err(HistoryError::Geometry { .. })
        ));
        assert!(matches!(
            history.record_write(op(3, 1, 0, 1), 12),
            Err(HistoryError::LvIndex { .. })
        ));
        assert_eq!(history.writes().len(), 1);
        assert!(history.record_flush_at(11).is_err());
        history.record_flush_at(10).unwrap();
        assert_eq!(history.flush_seq_last(), 10);
        assert!(history.record_flush_at(9).is_err());
    }
}
