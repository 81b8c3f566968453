//! The seeded workload generator: a pure function from a [`WorkloadConfig`] to a list of
//! writes and flushes. Same config, same workload, on every machine and every build.

use crate::block::{encode_block, BlockIdentity, BLOCK_SIZE_BYTES};
use crate::rng::SplitMix64;

/// Upper bound on LVs per group that the generator and the history accept.
pub const LV_COUNT_MAX: usize = 1024;
/// Upper bound on one LV: 2^24 blocks = 64 GiB. The checker keeps 8 bytes per block.
pub const LV_BLOCK_COUNT_MAX: u64 = 1 << 24;
/// Upper bound on writes in one history; write positions are stored as `u32`.
pub const WRITE_COUNT_MAX: u64 = 1 << 26;
/// Upper bound on one write: 256 blocks = 1 MiB, the usual largest block-layer request.
pub const BLOCKS_PER_WRITE_MAX: u32 = 256;
/// Upper bound on hot regions per LV.
pub const HOT_SPOT_COUNT_MAX: u32 = 64;

const BLOCK_SIZE_BYTES_U64: u64 = BLOCK_SIZE_BYTES as u64;

/// One generated write: `block_count` whole blocks of LV `lv_index` from `offset_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteOp {
    /// 1-based position in the order the workload issued its writes.
    pub write_id: u64,
    pub lv_index: u32,
    /// Always a multiple of [`BLOCK_SIZE_BYTES`].
    pub offset_bytes: u64,
    pub block_count: u32,
}

impl WriteOp {
    /// Index of the first block the write covers.
    pub fn block_first(&self) -> u64 {
        self.offset_bytes / BLOCK_SIZE_BYTES_U64
    }

    pub fn size_bytes(&self) -> u64 {
        u64::from(self.block_count) * BLOCK_SIZE_BYTES_U64
    }

    /// What the block at `block_in_write` of this write says about itself.
    pub fn block_identity(&self, run_id: u64, block_in_write: u32) -> BlockIdentity {
        assert!(block_in_write < self.block_count);
        BlockIdentity {
            run_id,
            write_id: self.write_id,
            lv_index: self.lv_index,
            block_index: self.block_first() + u64::from(block_in_write),
            block_in_write,
            block_count: self.block_count,
        }
    }

    /// The bytes to write at `offset_bytes`: `block_count` self-describing blocks.
    pub fn payload(&self, run_id: u64) -> Vec<u8> {
        assert!(self.offset_bytes.is_multiple_of(BLOCK_SIZE_BYTES_U64));
        assert!(self.block_count > 0);
        let mut payload = Vec::with_capacity(self.block_count as usize * BLOCK_SIZE_BYTES);
        for block_in_write in 0..self.block_count {
            payload.extend_from_slice(&encode_block(&self.block_identity(run_id, block_in_write)));
        }
        assert_eq!(payload.len() as u64, self.size_bytes());
        payload
    }
}

/// One step of a workload, in issue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadEvent {
    Write(WriteOp),
    /// A FLUSH issued after every write before it was acknowledged.
    Flush,
}

/// The shape of a generated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Each a non-zero multiple of [`BLOCK_SIZE_BYTES`].
    pub lv_sizes_bytes: Vec<u64>,
    pub write_count: u64,
    /// Each write covers `1..=blocks_per_write_max` blocks (clamped to the LV size).
    pub blocks_per_write_max: u32,
    /// Share of writes (0..=100) that land in a hot region, so later writes overwrite earlier
    /// ones: overwrites are what make ordering bugs visible in the image.
    pub hot_spot_percent: u8,
    /// Hot regions per LV.
    pub hot_spot_count: u32,
    /// Size of each hot region in blocks (clamped to the LV size).
    pub hot_spot_blocks: u64,
    /// A flush follows each write with probability `1 / flush_every_writes_mean`; 0 = never.
    pub flush_every_writes_mean: u32,
}

impl WorkloadConfig {
    /// A small, overlap-heavy default over the given LVs.
    pub fn new(seed: u64, lv_sizes_bytes: Vec<u64>, write_count: u64) -> Self {
        Self {
            seed,
            lv_sizes_bytes,
            write_count,
            blocks_per_write_max: 8,
            hot_spot_percent: 50,
            hot_spot_count: 4,
            hot_spot_blocks: 16,
            flush_every_writes_mean: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("a workload needs 1..={LV_COUNT_MAX} LVs, got {lv_count}")]
    LvCount { lv_count: usize },
    #[error(
        "lv {lv_index} is {size_bytes} bytes; it must be a non-zero multiple of {BLOCK_SIZE_BYTES} \
         bytes and at most {LV_BLOCK_COUNT_MAX} blocks"
    )]
    LvSize { lv_index: usize, size_bytes: u64 },
    #[error("write_count {write_count} exceeds {WRITE_COUNT_MAX}")]
    WriteCount { write_count: u64 },
    #[error("blocks_per_write_max must be 1..={BLOCKS_PER_WRITE_MAX}, got {blocks}")]
    BlocksPerWrite { blocks: u32 },
    #[error("hot_spot_percent must be 0..=100, got {percent}")]
    HotSpotPercent { percent: u8 },
    #[error(
        "hot_spot_count must be 1..={HOT_SPOT_COUNT_MAX} when hot spots are used, got {count}"
    )]
    HotSpotCount { count: u32 },
}

/// Checks LV sizes; returns the block count of each LV.
pub fn lv_block_counts(lv_sizes_bytes: &[u64]) -> Result<Vec<u64>, WorkloadError> {
    if lv_sizes_bytes.is_empty() || lv_sizes_bytes.len() > LV_COUNT_MAX {
        return Err(WorkloadError::LvCount {
            lv_count: lv_sizes_bytes.len(),
        });
    }
    let mut counts = Vec::with_capacity(lv_sizes_bytes.len());
    for (lv_index, &size_bytes) in lv_sizes_bytes.iter().enumerate() {
        let blocks = size_bytes / BLOCK_SIZE_BYTES_U64;
        let aligned = size_bytes % BLOCK_SIZE_BYTES_U64 == 0;
        if !aligned || blocks == 0 || blocks > LV_BLOCK_COUNT_MAX {
            return Err(WorkloadError::LvSize {
                lv_index,
                size_bytes,
            });
        }
        counts.push(blocks);
    }
    Ok(counts)
}

/// Generates the workload: writes numbered 1..=write_count in issue order, with flushes
/// interleaved. Pure: no I/O, no clock, no global state.
pub fn generate(config: &WorkloadConfig) -> Result<Vec<WorkloadEvent>, WorkloadError> {
    let block_counts = validate(config)?;
    let mut rng = SplitMix64::new(config.seed);
    let hot_spots = place_hot_spots(config, &block_counts, &mut rng);
    let flush_events = if config.flush_every_writes_mean == 0 {
        0
    } else {
        config.write_count / u64::from(config.flush_every_writes_mean) + 1
    };
    let capacity = usize::try_from(config.write_count + flush_events).unwrap_or(0);
    let mut events = Vec::with_capacity(capacity);
    for write_id in 1..=config.write_count {
        let lv_index = rng.below(block_counts.len() as u64) as usize;
        let op = next_write(
            config,
            write_id,
            lv_index,
            &block_counts,
            &hot_spots,
            &mut rng,
        );
        events.push(WorkloadEvent::Write(op));
        let mean = u64::from(config.flush_every_writes_mean);
        if mean > 0 && rng.below(mean) == 0 {
            events.push(WorkloadEvent::Flush);
        }
    }
    Ok(events)
}

/// Just the writes of a workload, in issue order.
pub fn writes(events: &[WorkloadEvent]) -> impl Iterator<Item = WriteOp> + '_ {
    events.iter().filter_map(|event| match event {
        WorkloadEvent::Write(op) => Some(*op),
        WorkloadEvent::Flush => None,
    })
}

fn validate(config: &WorkloadConfig) -> Result<Vec<u64>, WorkloadError> {
    let block_counts = lv_block_counts(&config.lv_sizes_bytes)?;
    if config.write_count > WRITE_COUNT_MAX {
        return Err(WorkloadError::WriteCount {
            write_count: config.write_count,
        });
    }
    let blocks = config.blocks_per_write_max;
    if blocks == 0 || blocks > BLOCKS_PER_WRITE_MAX {
        return Err(WorkloadError::BlocksPerWrite { blocks });
    }
    if config.hot_spot_percent > 100 {
        return Err(WorkloadError::HotSpotPercent {
            percent: config.hot_spot_percent,
        });
    }
    let count = config.hot_spot_count;
    if config.hot_spot_percent > 0 && (count == 0 || count > HOT_SPOT_COUNT_MAX) {
        return Err(WorkloadError::HotSpotCount { count });
    }
    Ok(block_counts)
}

/// Hot region starts per LV, each `hot_spot_blocks` long (clamped to the LV).
fn place_hot_spots(
    config: &WorkloadConfig,
    block_counts: &[u64],
    rng: &mut SplitMix64,
) -> Vec<Vec<u64>> {
    block_counts
        .iter()
        .map(|&lv_blocks| {
            let region_blocks = config.hot_spot_blocks.clamp(1, lv_blocks);
            (0..config.hot_spot_count)
                .map(|_| rng.below(lv_blocks - region_blocks + 1))
                .collect()
        })
        .collect()
}

fn next_write(
    config: &WorkloadConfig,
    write_id: u64,
    lv_index: usize,
    block_counts: &[u64],
    hot_spots: &[Vec<u64>],
    rng: &mut SplitMix64,
) -> WriteOp {
    let lv_blocks = block_counts[lv_index];
    let blocks_max = u64::from(config.blocks_per_write_max).min(lv_blocks);
    let block_count = 1 + rng.below(blocks_max);
    let spots = &hot_spots[lv_index];
    let block_first = if !spots.is_empty() && rng.percent(config.hot_spot_percent) {
        // Start inside the region; the write may run past its end, never past the LV's.
        let region_first = spots[rng.below(spots.len() as u64) as usize];
        let region_blocks = config.hot_spot_blocks.clamp(1, lv_blocks);
        (region_first + rng.below(region_blocks)).min(lv_blocks - block_count)
    } else {
        rng.below(lv_blocks - block_count + 1)
    };
    assert!(block_first + block_count <= lv_blocks);
    WriteOp {
        write_id,
        lv_index: lv_index as u32,
        offset_bytes: block_first * BLOCK_SIZE_BYTES_U64,
        block_count: block_count as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_bounds() {
        let config = WorkloadConfig::new(42, vec![64 * 4096, 4096, 1 << 20], 500);
        let first = generate(&config).unwrap();
        assert_eq!(first, generate(&config).unwrap());
        let ops: Vec<WriteOp> = writes(&first).collect();
        assert_eq!(ops.len(), 500);
        for (position, op) in ops.iter().enumerate() {
            assert_eq!(op.write_id, position as u64 + 1);
            let lv_size = config.lv_sizes_bytes[op.lv_index as usize];
            assert!(op.offset_bytes + op.size_bytes() <= lv_size);
            assert!(op.block_count >= 1 && op.block_count <= 8);
        }
        assert!(first.contains(&WorkloadEvent::Flush));
        let other = generate(&WorkloadConfig::new(43, config.lv_sizes_bytes.clone(), 500));
        assert_ne!(first, other.unwrap());
    }

    #[test]
    fn rejects_bad_configs() {
        let mut config = WorkloadConfig::new(1, vec![4095], 10);
        assert_eq!(
            generate(&config),
            Err(WorkloadError::LvSize {
                lv_index: 0,
                size_bytes: 4095
            })
        );
        config.lv_sizes_bytes = vec![4096];
        config.blocks_per_write_max = 0;
        assert_eq!(
            generate(&config),
            Err(WorkloadError::BlocksPerWrite { blocks: 0 })
        );
    }

    #[test]
    fn payload_is_self_describing() {
        let op = WriteOp {
            write_id: 9,
            lv_index: 1,
            offset_bytes: 3 * 4096,
            block_count: 2,
        };
        let payload = op.payload(77);
        assert_eq!(payload.len(), 8192);
        let mut second = [0u8; 4096];
        second.copy_from_slice(&payload[4096..]);
        match crate::block::decode_block(&second) {
            crate::block::BlockContent::Written(identity) => {
                assert_eq!(identity.block_index, 4);
                assert_eq!(identity.write_id, 9);
                assert_eq!(identity.run_id, 77);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
