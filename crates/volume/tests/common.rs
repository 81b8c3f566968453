//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redoubt_volume::{Container, ContainerKind, CreateLvOptions, IoMode, Volume};

pub const MIB: u64 = 1 << 20;

/// True when the filesystem under `directory` accepts O_DIRECT, so tests can insist that
/// `IoMode::Auto` really took the direct path there.
pub fn direct_supported(directory: &Path) -> bool {
    let path = directory.join("probe-direct");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let _ = std::fs::remove_file(&path);
    file.is_ok()
}

/// Creates a container with one LV of `size_bytes` opened in `io_mode`.
pub fn volume_in(directory: &Path, size_bytes: u64, io_mode: IoMode) -> (Container, Volume) {
    let mut container = Container::create(
        &directory.join("replication"),
        ContainerKind::Replication,
        64 * MIB,
    )
    .unwrap();
    let volume = container
        .create_lv("lv0", size_bytes, CreateLvOptions::default(), io_mode)
        .unwrap();
    if io_mode == IoMode::Buffered {
        assert!(!volume.is_direct());
    } else if direct_supported(directory) {
        assert!(
            volume.is_direct(),
            "Auto must pick O_DIRECT where the filesystem supports it"
        );
    }
    (container, volume)
}

/// Deterministic, position-dependent bytes so misplaced data is caught.
pub fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}
