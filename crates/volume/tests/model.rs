//! Random read/write/zero/trim sequences against an in-memory model, in both I/O modes.

mod common;

use common::volume_in;
use proptest::prelude::*;
use redoubt_volume::{IoMode, TrimOutcome, VolumeError};

const VOLUME_SIZE_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        length: usize,
        seed: u8,
    },
    Read {
        offset: u64,
        length: usize,
    },
    Zero {
        offset: u64,
        length: u64,
    },
    Trim {
        offset: u64,
        length: u64,
    },
    Sync,
}

fn offset() -> impl Strategy<Value = u64> {
    // Bias towards block edges, where the read-modify-write logic lives, and past the end.
    prop_oneof![
        0..VOLUME_SIZE_BYTES + 100,
        (0..17u64, -3i64..4).prop_map(|(block, delta)| (block * 4096).saturating_add_signed(delta)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), 0..12_000usize, any::<u8>()).prop_map(|(offset, length, seed)| Op::Write { offset, length, seed }),
        3 => (offset(), 0..12_000usize).prop_map(|(offset, length)| Op::Read { offset, length }),
        1 => (offset(), 0..20_000u64).prop_map(|(offset, length)| Op::Zero { offset, length }),
        1 => (offset(), 0..20_000u64).prop_map(|(offset, length)| Op::Trim { offset, length }),
        1 => Just(Op::Sync),
    ]
}

fn in_bounds(offset: u64, length: u64) -> bool {
    offset
        .checked_add(length)
        .is_some_and(|end| end <= VOLUME_SIZE_BYTES)
}

fn run(ops: &[Op], mode: IoMode) -> Result<(), TestCaseError> {
    let directory = tempfile::tempdir().unwrap();
    let (_container, volume) = volume_in(directory.path(), VOLUME_SIZE_BYTES, mode);
    let mut model = vec![0u8; VOLUME_SIZE_BYTES as usize];
    for op in ops {
        match *op {
            Op::Write {
                offset,
                length,
                seed,
            } => {
                let data: Vec<u8> = (0..length)
                    .map(|i| seed.wrapping_add(i as u8) | 1)
                    .collect();
                let result = volume.write_at(&data, offset);
                if in_bounds(offset, length as u64) {
                    prop_assert!(result.is_ok(), "{result:?}");
                    model[offset as usize..offset as usize + length].copy_from_slice(&data);
                } else {
                    let out_of_bounds = matches!(result, Err(VolumeError::OutOfBounds { .. }));
                    prop_assert!(out_of_bounds);
                }
            }
            Op::Read { offset, length } => {
                let mut buffer = vec![0xEE; length];
                let result = volume.read_at(&mut buffer, offset);
                if in_bounds(offset, length as u64) {
                    prop_assert!(result.is_ok(), "{result:?}");
                    prop_assert_eq!(
                        &buffer[..],
                        &model[offset as usize..offset as usize + length]
                    );
                } else {
                    prop_assert!(result.is_err());
                }
            }
            Op::Zero { offset, length } => {
                let result = volume.write_zeroes(offset, length);
                prop_assert_eq!(result.is_ok(), in_bounds(offset, length));
                if result.is_ok() {
                    model[offset as usize..(offset + length) as usize].fill(0);
                }
            }
            Op::Trim { offset, length } => match volume.trim(offset, length) {
                // A discarded range reads as zeroes; a skipped one is unchanged.
                Ok(TrimOutcome::Discarded) => {
                    model[offset as usize..(offset + length) as usize].fill(0)
                }
                Ok(TrimOutcome::Skipped) => {}
                Err(_) => prop_assert!(!in_bounds(offset, length)),
            },
            Op::Sync => prop_assert!(volume.sync().is_ok()),
        }
    }
    let mut whole = vec![0u8; VOLUME_SIZE_BYTES as usize];
    volume.read_at(&mut whole, 0).unwrap();
    prop_assert!(whole == model, "final contents differ from the model");
    prop_assert_eq!(
        std::fs::metadata(volume.path()).unwrap().len(),
        VOLUME_SIZE_BYTES
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn direct_volume_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, IoMode::Auto)?;
    }

    #[test]
    fn buffered_volume_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, IoMode::Buffered)?;
    }
}
