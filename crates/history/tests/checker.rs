//! The checker against correct replicas and against replicas with deliberate apply bugs.
//! Every bug test asserts the message names the offending block, so a person can act on it.

use proptest::prelude::*;
use redoubt_history::{
    check_at_least, check_exact, check_prefix, encode_block, generate, writes, BlockIdentity,
    BlockLocation, FileImages, History, MemoryImages, SplitMix64, Violation, WorkloadConfig,
    WorkloadEvent, WriteOp,
};

const RUN_ID: u64 = 0x0123_4567_89AB_CDEF;

/// A generated workload as production acknowledged it: some adjacent, non-overlapping writes
/// acknowledged out of issue order (as concurrent requests are), seqs with gaps.
struct Scenario {
    lv_sizes_bytes: Vec<u64>,
    history: History,
}

fn overlap(left: &WriteOp, right: &WriteOp) -> bool {
    let left_end = left.block_first() + u64::from(left.block_count);
    let right_end = right.block_first() + u64::from(right.block_count);
    left.lv_index == right.lv_index
        && left.block_first() < right_end
        && right.block_first() < left_end
}

fn scenario(seed: u64, write_count: u64) -> Scenario {
    let lv_sizes_bytes = vec![48 * 4096, 8 * 4096, 96 * 4096];
    let mut config = WorkloadConfig::new(seed, lv_sizes_bytes.clone(), write_count);
    config.hot_spot_blocks = 6;
    let mut events = generate(&config).unwrap();
    let mut rng = SplitMix64::new(seed ^ 0xACED);
    for position in 1..events.len() {
        if let (WorkloadEvent::Write(left), WorkloadEvent::Write(right)) =
            (events[position - 1], events[position])
        {
            if !overlap(&left, &right) && rng.percent(30) {
                events.swap(position - 1, position);
            }
        }
    }
    let mut history = History::new(RUN_ID, &lv_sizes_bytes).unwrap();
    let mut seq = 0;
    for event in &events {
        match event {
            WorkloadEvent::Write(op) => {
                seq += 1 + rng.below(3);
                history.record_write(*op, seq).unwrap();
            }
            WorkloadEvent::Flush => {
                history.record_flush();
            }
        }
    }
    Scenario {
        lv_sizes_bytes,
        history,
    }
}

impl Scenario {
    fn ops(&self) -> Vec<WriteOp> {
        self.history.writes().iter().map(|write| write.op).collect()
    }

    fn seq(&self, position: usize) -> u64 {
        self.history.writes()[position].seq
    }

    fn replica(&self, ops: impl IntoIterator<Item = WriteOp>) -> MemoryImages {
        let mut images = MemoryImages::zeroed(&self.lv_sizes_bytes);
        for op in ops {
            images.apply(&op, RUN_ID);
        }
        images
    }

    /// Blocks that write `position` holds as of the seq of write `through` (inclusive).
    fn blocks_held(&self, position: usize, through: usize) -> Vec<BlockLocation> {
        let image = self.history.image_at(self.seq(through));
        let op = self.history.writes()[position].op;
        (0..u64::from(op.block_count))
            .map(|offset| BlockLocation {
                lv_index: op.lv_index,
                block_index: op.block_first() + offset,
            })
            .filter(|at| image.write_id(at.lv_index, at.block_index) == Some(op.write_id))
            .collect()
    }
}

fn names_one_of(message: &str, locations: &[BlockLocation]) -> bool {
    locations
        .iter()
        .any(|location| message.contains(&location.to_string()))
}

/// A correct replica applied writes `0..=applied` in seq order.
fn assert_correct_replica_passes(seed: u64, write_count: u64, applied_pick: u64) {
    let scenario = scenario(seed, write_count);
    let ops = scenario.ops();
    let applied = (applied_pick % ops.len() as u64) as usize;
    let seq = scenario.seq(applied);
    let mut replica = scenario.replica(ops[..=applied].iter().copied());

    let proof = check_prefix(&scenario.history, &mut replica).unwrap();
    assert!(
        proof.seq_min <= seq && seq <= proof.seq_max,
        "{proof:?} vs {seq}"
    );
    assert!(proof.block_written_count > 0);
    assert_eq!(proof.block_count, 48 + 8 + 96);
    // The proof's whole range names one image, the one production had.
    assert_eq!(
        scenario.history.image_at(proof.seq_min).lv(0),
        scenario.history.image_at(proof.seq_max).lv(0)
    );
    let exact = check_exact(&scenario.history, seq, &mut replica).unwrap();
    assert_eq!(exact.seq_min, seq);
    check_at_least(&scenario.history, seq, &mut replica).unwrap();
    let flush_before = scenario
        .history
        .flush_points()
        .iter()
        .copied()
        .filter(|&point| point <= seq)
        .max()
        .unwrap_or(0);
    check_at_least(&scenario.history, flush_before, &mut replica).unwrap();
}

#[test]
fn correct_replicas_pass_for_many_seeds() {
    let mut rng = SplitMix64::new(99);
    for seed in 0..30 {
        assert_correct_replica_passes(seed, 200, rng.next_u64());
    }
}

#[test]
fn empty_replica_is_the_state_before_any_write() {
    let scenario = scenario(3, 50);
    let mut replica = scenario.replica([]);
    let proof = check_prefix(&scenario.history, &mut replica).unwrap();
    assert_eq!(proof.seq_min, 0);
    assert!(proof.seq_max < scenario.seq(0));
    assert_eq!(proof.block_written_count, 0);
    check_exact(&scenario.history, 0, &mut replica).unwrap();
}

/// Applies one overlapping pair in swapped order; returns whether a detectable pair existed.
fn assert_swap_detected(seed: u64) -> bool {
    let scenario = scenario(seed, 150);
    let mut ops = scenario.ops();
    let last = ops.len() - 1;
    // A pair where the later write still holds a shared block at the end: applying the
    // earlier one last leaves that block stale while newer writes are visible.
    let pair = (0..last).find_map(|later| {
        let shared: Vec<BlockLocation> = scenario
            .blocks_held(later, last)
            .into_iter()
            .filter(|at| {
                scenario.history.writes()[..later]
                    .iter()
                    .any(|write| covers(&write.op, at))
            })
            .collect();
        let earlier = (0..later)
            .rev()
            .find(|&earlier| overlap(&ops[earlier], &ops[later]))?;
        (!shared.is_empty() && shared.iter().any(|at| covers(&ops[earlier], at)))
            .then_some((earlier, later))
    });
    let Some((earlier, later)) = pair else {
        return false;
    };
    let earlier_id = ops[earlier].write_id;
    ops.swap(earlier, later);
    let mut replica = scenario.replica(ops);
    let error = check_prefix(&scenario.history, &mut replica).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Violation::MixedPointsInTime { .. }),
        "{message}"
    );
    assert!(
        message.contains("the image mixes two points in time"),
        "{message}"
    );
    // Applied last, the earlier write is stale on every block it shares with any write that
    // should have replaced it (the later one, or one in between); the checker may name any.
    let stale: Vec<BlockLocation> = (earlier + 1..=last)
        .flat_map(|write| scenario.blocks_held(write, last))
        .filter(|at| covers(&scenario.ops()[earlier], at))
        .collect();
    assert!(
        message.contains(&format!("still holds write {earlier_id} (seq ")),
        "{message}"
    );
    assert!(names_one_of(&message, &stale), "{message} / {stale:?}");
    true
}

fn covers(op: &WriteOp, at: &BlockLocation) -> bool {
    op.lv_index == at.lv_index
        && op.block_first() <= at.block_index
        && at.block_index < op.block_first() + u64::from(op.block_count)
}

#[test]
fn swapped_overlapping_writes_are_caught() {
    let detected = (0..20).filter(|&seed| assert_swap_detected(seed)).count();
    assert!(
        detected >= 18,
        "only {detected} seeds had an overlapping pair"
    );
}

/// Skips one record that still holds a block at `applied`; returns false if none exists.
fn assert_skip_detected(seed: u64, applied_pick: u64) -> bool {
    let scenario = scenario(seed, 150);
    let ops = scenario.ops();
    let applied = 1 + (applied_pick % (ops.len() as u64 - 1)) as usize;
    let Some(skipped) = (0..applied).find(|&p| !scenario.blocks_held(p, applied).is_empty()) else {
        return false;
    };
    let skipped_id = ops[skipped].write_id;
    let mut replica = scenario.replica(
        (0..=applied)
            .filter(|&position| position != skipped)
            .map(|position| ops[position]),
    );
    let error = check_prefix(&scenario.history, &mut replica).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Violation::MixedPointsInTime { .. }),
        "{message}"
    );
    let names_skip = message.contains(&format!("by write {skipped_id}:"))
        || message.contains(&format!("by write {skipped_id},"))
        || message.contains(&format!("although write {skipped_id} wrote it"));
    assert!(names_skip, "{message}");
    assert!(
        names_one_of(&message, &scenario.blocks_held(skipped, applied)),
        "{message}"
    );
    true
}

#[test]
fn skipped_record_is_caught() {
    let mut rng = SplitMix64::new(5);
    let detected = (0..20)
        .filter(|&seed| assert_skip_detected(seed, rng.next_u64()))
        .count();
    assert!(detected >= 18);
}

#[test]
fn torn_half_block_is_caught() {
    let scenario = scenario(11, 150);
    let ops = scenario.ops();
    let last = ops.len() - 1;
    let mut replica = scenario.replica(ops.iter().copied());
    let held = scenario.blocks_held(last, last);
    let at = held[0];
    // The device persisted the first half of the new block only; the old half stays.
    let before = scenario.replica(ops[..last].iter().copied());
    let half_start = (at.offset_bytes() + 2048) as usize;
    let old_half = before.lv(at.lv_index)[half_start..half_start + 2048].to_vec();
    replica.write_at(at.lv_index, at.offset_bytes() + 2048, &old_half);

    let error = check_prefix(&scenario.history, &mut replica).unwrap_err();
    assert_eq!(error.location(), at);
    let message = error.to_string();
    let block_in_write = at.block_index - ops[last].block_first();
    assert_eq!(
        message,
        format!(
            "{at} is torn: its first 2048 bytes are block {block_in_write} of write {} but the \
             rest is not (a partial write, or pieces of two writes in one block)",
            ops[last].write_id
        )
    );
    assert!(check_exact(&scenario.history, scenario.seq(last), &mut replica).is_err());
}

#[test]
fn stale_data_from_a_previous_run_is_caught() {
    let scenario = scenario(21, 100);
    let ops = scenario.ops();
    // The previous run wrote the same workload with its own run id; this run's replica was
    // not resynced, so blocks this run has not written yet still hold the old run's data.
    let mut replica = MemoryImages::zeroed(&scenario.lv_sizes_bytes);
    for op in &ops {
        replica.apply(op, RUN_ID ^ 1);
    }
    for op in &ops[..10] {
        replica.apply(op, RUN_ID);
    }
    let error = check_prefix(&scenario.history, &mut replica).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Violation::StaleRun { .. }), "{message}");
    let location = error.location();
    assert!(message.starts_with(&location.to_string()), "{message}");
    assert!(message.contains("of another run"), "{message}");
    assert!(
        message.contains(&format!("{:#018x}", RUN_ID ^ 1)),
        "{message}"
    );
}

fn op(write_id: u64, lv_index: u32, block_first: u64) -> WriteOp {
    WriteOp {
        write_id,
        lv_index,
        offset_bytes: block_first * 4096,
        block_count: 1,
    }
}

/// The exact scenario from the brief: two LVs, one block each side of an overwrite.
fn two_lv_history() -> History {
    let mut history = History::new(RUN_ID, &[8 * 4096, 64 * 4096]).unwrap();
    history.record_write(op(790, 0, 3), 790).unwrap();
    history.record_write(op(801, 0, 3), 801).unwrap();
    history.record_write(op(812, 1, 37), 812).unwrap();
    history
}

fn block_of(write_id: u64, lv_index: u32, block_index: u64) -> [u8; 4096] {
    encode_block(&BlockIdentity {
        run_id: RUN_ID,
        write_id,
        lv_index,
        block_index,
        block_in_write: 0,
        block_count: 1,
    })
}

#[test]
fn mixed_message_names_both_blocks() {
    let history = two_lv_history();
    let mut replica = MemoryImages::zeroed(&[8 * 4096, 64 * 4096]);
    replica.write_at(0, 3 * 4096, &block_of(790, 0, 3));
    replica.write_at(1, 37 * 4096, &block_of(812, 1, 37));
    let error = check_prefix(&history, &mut replica).unwrap_err();
    assert_eq!(
        error.to_string(),
        "lv 1 block 37 (byte offset 151552) holds write 812 (seq 812) but lv 0 block 3 (byte \
         offset 12288) still holds write 790 (seq 790), overwritten at seq 801 by write 801: the \
         image mixes two points in time"
    );

    // The same mix found in the other order: the stale block comes second.
    let mut history = History::new(RUN_ID, &[64 * 4096, 8 * 4096]).unwrap();
    history.record_write(op(1, 1, 3), 10).unwrap();
    history.record_write(op(2, 1, 3), 20).unwrap();
    history.record_write(op(3, 0, 37), 30).unwrap();
    let mut replica = MemoryImages::zeroed(&[64 * 4096, 8 * 4096]);
    replica.write_at(0, 37 * 4096, &block_of(3, 0, 37));
    let error = check_prefix(&history, &mut replica).unwrap_err();
    assert_eq!(
        error.location(),
        BlockLocation {
            lv_index: 1,
            block_index: 3
        }
    );
    assert_eq!(
        error.to_string(),
        "lv 1 block 3 (byte offset 12288) is still zero, although write 1 wrote it at seq 10, \
         but lv 0 block 37 (byte offset 151552) holds write 3 (seq 30): the image mixes two \
         points in time"
    );
}

#[test]
fn rollback_check_names_first_differing_block() {
    let history = two_lv_history();
    let mut replica = MemoryImages::zeroed(&[8 * 4096, 64 * 4096]);
    replica.write_at(0, 3 * 4096, &block_of(801, 0, 3));
    // A valid prefix (seq 801..811), but not the seq 800 the rollback asked for.
    let proof = check_prefix(&history, &mut replica).unwrap();
    assert_eq!((proof.seq_min, proof.seq_max), (801, 801));
    let error = check_exact(&history, 800, &mut replica).unwrap_err();
    assert_eq!(
        error.to_string(),
        "lv 0 block 3 (byte offset 12288) holds write 801 (seq 801), but production as of seq 790 \
         held write 790 (seq 790)"
    );
    let proof = check_exact(&history, 805, &mut replica).unwrap();
    assert_eq!(proof.seq_min, 801);
}

#[test]
fn lost_acknowledged_write_is_caught() {
    let mut history = two_lv_history();
    assert_eq!(history.record_flush(), 812);
    let mut replica = MemoryImages::zeroed(&[8 * 4096, 64 * 4096]);
    replica.write_at(0, 3 * 4096, &block_of(801, 0, 3));
    check_prefix(&history, &mut replica).unwrap();
    let error = check_at_least(&history, history.flush_seq_last(), &mut replica).unwrap_err();
    assert_eq!(
        error.to_string(),
        "lv 1 block 37 (byte offset 151552) is still zero, although write 812 wrote it at seq \
         812, but every write up to seq 812 was acknowledged before a completed flush and must \
         read back: an acknowledged write was lost"
    );
    assert!(check_at_least(&history, 801, &mut replica).is_ok());
}

#[test]
fn misplaced_unknown_and_foreign_blocks_are_caught() {
    let history = two_lv_history();
    let sizes = [8 * 4096, 64 * 4096];

    let mut replica = MemoryImages::zeroed(&sizes);
    replica.write_at(1, 36 * 4096, &block_of(812, 1, 37));
    let message = check_prefix(&history, &mut replica)
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("lv 1 block 36 (byte offset 147456) holds block 0 of write 812"));
    assert!(message.ends_with("which belongs at lv 1 block 37: a misdirected write"));

    let mut replica = MemoryImages::zeroed(&sizes);
    replica.write_at(0, 5 * 4096, &block_of(900, 0, 5));
    let message = check_prefix(&history, &mut replica)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "lv 0 block 5 (byte offset 20480) holds write 900, which production never acknowledged"
    );

    let mut replica = MemoryImages::zeroed(&sizes);
    replica.write_at(0, 7 * 4096 + 100, b"ext4");
    let error = check_prefix(&history, &mut replica).unwrap_err();
    assert!(matches!(error, Violation::Foreign { .. }));
    assert!(error
        .to_string()
        .starts_with("lv 0 block 7 (byte offset 28672) holds foreign data"));

    // The block names write 812, but as a 2-block write: not what production wrote.
    let mut replica = MemoryImages::zeroed(&sizes);
    let wrong_shape = encode_block(&BlockIdentity {
        run_id: RUN_ID,
        write_id: 812,
        lv_index: 1,
        block_index: 37,
        block_in_write: 1,
        block_count: 2,
    });
    replica.write_at(1, 37 * 4096, &wrong_shape);
    let message = check_prefix(&history, &mut replica)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("production's write 812 covered lv 1 blocks 37..38"),
        "{message}"
    );
}

#[test]
fn short_image_is_a_read_failure() {
    let history = two_lv_history();
    let mut replica = MemoryImages::from_lvs(vec![vec![0; 8 * 4096], vec![0; 4096]]);
    let error = check_prefix(&history, &mut replica).unwrap_err();
    assert!(matches!(error, Violation::ReadFailed { .. }));
    assert_eq!(error.to_string(), "read lv 1 block 1 (byte offset 4096)");
}

#[test]
fn file_images_are_checked_like_memory() {
    let scenario = scenario(8, 120);
    let ops = scenario.ops();
    let replica = scenario.replica(ops[..60].iter().copied());
    let directory = tempfile::tempdir().unwrap();
    let files = (0..3u32)
        .map(|lv_index| {
            let path = directory.path().join(format!("lv{lv_index}.img"));
            std::fs::write(&path, replica.lv(lv_index)).unwrap();
            std::fs::File::open(path).unwrap()
        })
        .collect();
    let mut images = FileImages::new(files);
    let proof = check_exact(&scenario.history, scenario.seq(59), &mut images).unwrap();
    assert_eq!(proof.seq_min, scenario.seq(59));
    assert!(check_exact(&scenario.history, scenario.seq(59) - 1, &mut images).is_err());
}

#[test]
fn ack_order_history_from_workload() {
    let sizes = vec![32 * 4096, 32 * 4096];
    let events = generate(&WorkloadConfig::new(4, sizes.clone(), 100)).unwrap();
    let history = History::from_workload(RUN_ID, &sizes, &events).unwrap();
    let flushes = events
        .iter()
        .filter(|e| **e == WorkloadEvent::Flush)
        .count();
    assert_eq!(history.flush_points().len(), flushes);
    let mut replica = MemoryImages::zeroed(&sizes);
    for op in writes(&events) {
        replica.apply(&op, RUN_ID);
    }
    let proof = check_at_least(&history, history.flush_seq_last(), &mut replica).unwrap();
    assert_eq!(proof.seq_max, 100);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn prop_correct_replica_passes(seed in any::<u64>(), applied in any::<u64>()) {
        assert_correct_replica_passes(seed, 120, applied);
    }

    #[test]
    fn prop_skip_is_caught(seed in any::<u64>(), applied in any::<u64>()) {
        // Every seed with 150 writes over 152 blocks has a write still visible.
        prop_assert!(assert_skip_detected(seed, applied));
    }

    #[test]
    fn prop_swap_is_caught_when_visible(seed in any::<u64>()) {
        // Not every seed has a visible overlapping pair; those that do must be caught.
        let _ = assert_swap_detected(seed);
    }
}

/// The sizes the checker is designed for: a 256 MiB LV (65536 blocks) and 100k writes, in the
/// release build the test suite runs; a debug build checks a sixteenth of that.
#[test]
fn scale_256_mib_and_100k_writes() {
    let scale: u64 = if cfg!(debug_assertions) { 16 } else { 1 };
    let lv_sizes_bytes = vec![(256 << 20) / scale, (16 << 20) / scale];
    let mut config = WorkloadConfig::new(1, lv_sizes_bytes.clone(), 100_000 / scale);
    config.hot_spot_blocks = 1024;
    let events = generate(&config).unwrap();
    let history = History::from_workload(RUN_ID, &lv_sizes_bytes, &events).unwrap();
    let mut replica = MemoryImages::zeroed(&lv_sizes_bytes);
    let applied = (70_000 / scale) as usize;
    for op in writes(&events).take(applied) {
        replica.apply(&op, RUN_ID);
    }
    let started = std::time::Instant::now();
    let proof = check_prefix(&history, &mut replica).unwrap();
    eprintln!("check_prefix: {:?}", started.elapsed());
    assert!(proof.seq_min <= applied as u64 && applied as u64 <= proof.seq_max);
    let started = std::time::Instant::now();
    check_exact(&history, applied as u64, &mut replica).unwrap();
    eprintln!("check_exact: {:?}", started.elapsed());
}

/// Regression guard: a seed where the checker names a stale block that an intermediate write
/// (not the swapped one) should have replaced.
#[test]
fn swap_regression_seed_12386369595102134963() {
    assert!(assert_swap_detected(12386369595102134963));
}
