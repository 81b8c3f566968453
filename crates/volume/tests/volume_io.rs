mod common;

use std::sync::Arc;

use common::{pattern, volume_in, MIB};
use redoubt_volume::{
    AlignedBuf, IoMode, TrimOutcome, Volume, VolumeError, DIRECT_IO_ALIGNMENT_BYTES,
};

const MODES: [IoMode; 2] = [IoMode::Auto, IoMode::Buffered];

/// Reads the whole volume through a plain buffered file handle, independent of `Volume`.
fn raw_contents(volume: &Volume) -> Vec<u8> {
    volume.sync().unwrap();
    std::fs::read(volume.path()).unwrap()
}

#[test]
fn unaligned_round_trips_in_both_modes() {
    let cases: [(u64, usize); 9] = [
        (0, 1),
        (1, 1),
        (4095, 2),
        (4096, 4096),
        (100, 10_000),
        (8191, 4097),
        (512, 512),
        (3, (1 << 20) + 5000), // spans more than one bounce window
        (2 * MIB - 7, 7),      // ends exactly at the end of the volume
    ];
    for mode in MODES {
        let directory = tempfile::tempdir().unwrap();
        let (_container, volume) = volume_in(directory.path(), 2 * MIB, mode);
        let mut model = vec![0u8; 2 * MIB as usize];
        for (index, (offset, length)) in cases.into_iter().enumerate() {
            let data = pattern(length, index as u8);
            volume.write_at(&data, offset).unwrap();
            model[offset as usize..offset as usize + length].copy_from_slice(&data);
            let mut back = vec![0u8; length];
            volume.read_at(&mut back, offset).unwrap();
            assert_eq!(back, data, "{mode:?} offset {offset} length {length}");
        }
        // Neighbouring bytes of every edge block survived the read-modify-write.
        assert!(
            raw_contents(&volume) == model,
            "{mode:?}: volume differs from model"
        );
    }
}

#[test]
fn aligned_buffer_takes_the_direct_path_and_round_trips() {
    for mode in MODES {
        let directory = tempfile::tempdir().unwrap();
        let (_container, volume) = volume_in(directory.path(), MIB, mode);
        let mut buffer = AlignedBuf::zeroed(3 * DIRECT_IO_ALIGNMENT_BYTES);
        let length = buffer.len();
        buffer.copy_from_slice(&pattern(length, 9));
        volume.write_at(&buffer, 8192).unwrap();
        let mut back = AlignedBuf::zeroed(buffer.len());
        volume.read_at(&mut back, 8192).unwrap();
        assert_eq!(&back[..], &buffer[..]);
        // A misaligned slice of an aligned buffer still works (bounced).
        let mut odd = vec![0u8; 3 * DIRECT_IO_ALIGNMENT_BYTES];
        volume.read_at(&mut odd[..], 8192).unwrap();
        assert_eq!(&odd[..], &buffer[..]);
    }
}

#[test]
fn out_of_bounds_is_refused_without_writing() {
    for mode in MODES {
        let directory = tempfile::tempdir().unwrap();
        let (_container, volume) = volume_in(directory.path(), MIB, mode);
        let before = raw_contents(&volume);
        let data = pattern(100, 1);
        for offset in [MIB - 99, MIB, MIB + 1, u64::MAX - 10, u64::MAX] {
            let error = volume.write_at(&data, offset).unwrap_err();
            assert!(
                matches!(error, VolumeError::OutOfBounds { offset: o, length_bytes: 100, size_bytes, .. }
                    if o == offset && size_bytes == MIB),
                "{error}"
            );
            let mut buffer = [0u8; 100];
            assert!(matches!(
                volume.read_at(&mut buffer, offset),
                Err(VolumeError::OutOfBounds { .. })
            ));
        }
        assert!(matches!(
            volume.write_zeroes(MIB - 1, 2),
            Err(VolumeError::OutOfBounds { .. })
        ));
        assert!(matches!(
            volume.write_zeroes(1, u64::MAX),
            Err(VolumeError::OutOfBounds { .. })
        ));
        assert!(matches!(
            volume.trim(0, MIB + 1),
            Err(VolumeError::OutOfBounds { .. })
        ));
        assert_eq!(
            raw_contents(&volume),
            before,
            "a refused request must not write anything"
        );
        assert_eq!(std::fs::metadata(volume.path()).unwrap().len(), MIB);
        // Zero-length at the very end is a valid no-op.
        volume.write_at(&[], MIB).unwrap();
    }
}

#[test]
fn write_zeroes_zeroes_exactly_the_range() {
    for mode in MODES {
        let directory = tempfile::tempdir().unwrap();
        let (_container, volume) = volume_in(directory.path(), MIB, mode);
        let data = pattern(MIB as usize, 5);
        volume.write_at(&data, 0).unwrap();
        let mut model = data.clone();
        for (offset, length) in [(10u64, 5u64), (4096, 8192), (5000, 70_000), (MIB - 3, 3)] {
            volume.write_zeroes(offset, length).unwrap();
            model[offset as usize..(offset + length) as usize].fill(0);
        }
        let mut back = vec![0u8; MIB as usize];
        volume.read_at(&mut back, 0).unwrap();
        assert!(
            back == model,
            "{mode:?}: write_zeroes touched the wrong bytes"
        );
        assert_eq!(
            std::fs::metadata(volume.path()).unwrap().len(),
            MIB,
            "size must not change"
        );
    }
}

#[test]
fn trim_keeps_size_and_reads_zero_when_discarded() {
    let directory = tempfile::tempdir().unwrap();
    let (_container, volume) = volume_in(directory.path(), MIB, IoMode::Auto);
    volume.write_at(&pattern(65536, 3), 0).unwrap();
    let outcome = volume.trim(0, 65536).unwrap();
    if outcome == TrimOutcome::Discarded {
        let mut back = vec![1u8; 65536];
        volume.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }
    assert_eq!(std::fs::metadata(volume.path()).unwrap().len(), MIB);
}

#[test]
fn sub_block_writes_from_many_threads_do_not_undo_each_other() {
    // Eight threads each own a 512-byte sector of the same 4 KiB blocks; with O_DIRECT every
    // write is a read-modify-write of a shared block, so a missing edge lock loses sectors.
    for mode in MODES {
        let directory = tempfile::tempdir().unwrap();
        let (_container, volume) = volume_in(directory.path(), MIB, mode);
        let volume = Arc::new(volume);
        let threads: Vec<_> = (0..8u64)
            .map(|sector| {
                let volume = Arc::clone(&volume);
                std::thread::spawn(move || {
                    for block in 0..64u64 {
                        let data = vec![(sector as u8 + 1) ^ block as u8; 512];
                        volume.write_at(&data, block * 4096 + sector * 512).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut back = vec![0u8; 64 * 4096];
        volume.read_at(&mut back, 0).unwrap();
        for block in 0..64usize {
            for sector in 0..8usize {
                let start = block * 4096 + sector * 512;
                let expected = (sector as u8 + 1) ^ block as u8;
                assert!(
                    back[start..start + 512].iter().all(|&b| b == expected),
                    "{mode:?} block {block} sector {sector}"
                );
            }
        }
    }
}

#[test]
fn source_file_volume_is_sized_by_configuration_and_never_truncated() {
    let directory = tempfile::tempdir().unwrap();
    let source = directory.path().join("prod.img");
    std::fs::write(&source, pattern(3 * 4096 + 100, 7)).unwrap();
    let original = std::fs::read(&source).unwrap();

    let error = Volume::open_source(&source, MIB, IoMode::Auto).unwrap_err();
    assert!(
        matches!(error, VolumeError::SourceTooSmall { source_bytes, configured_bytes, .. }
            if source_bytes == 3 * 4096 + 100 && configured_bytes == MIB),
        "{error}"
    );
    for mode in MODES {
        let volume = Volume::open_source(&source, 2 * 4096, mode).unwrap();
        assert!(volume.backing().is_source());
        assert_eq!(volume.size_bytes(), 2 * 4096);
        let mut head = vec![0u8; 2 * 4096];
        volume.read_at(&mut head, 0).unwrap();
        assert_eq!(head, original[..2 * 4096]);
        assert!(
            volume.write_at(b"x", 2 * 4096).is_err(),
            "bytes past the configured size are off limits"
        );
    }
    // An unaligned configured size forces buffered mode so O_DIRECT never touches the tail.
    let volume = Volume::open_source(&source, 4096 + 10, IoMode::Auto).unwrap();
    assert!(!volume.is_direct());
    volume.write_at(&[0xAB; 10], 4096).unwrap();
    volume.sync().unwrap();
    let after = std::fs::read(&source).unwrap();
    assert_eq!(
        after.len(),
        original.len(),
        "source must never be truncated or extended"
    );
    assert_eq!(&after[4096..4106], &[0xAB; 10]);
    assert_eq!(after[4106..], original[4106..]);
}

#[test]
fn source_must_be_file_or_block_device() {
    let directory = tempfile::tempdir().unwrap();
    let error = Volume::open_source(directory.path(), 4096, IoMode::Auto).unwrap_err();
    assert!(
        matches!(error, VolumeError::SourceNotSupported { .. }),
        "{error}"
    );
    let error =
        Volume::open_source(&directory.path().join("absent"), 4096, IoMode::Auto).unwrap_err();
    assert!(matches!(error, VolumeError::Io { .. }), "{error}");
    assert!(error.to_string().contains("absent"));
}
