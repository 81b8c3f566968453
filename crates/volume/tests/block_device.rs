//! Block-device sources need a real device, so this test is opt-in: attach a scratch loop
//! device (`losetup -f --show scratch.img`) and run
//! `REDOUBT_TEST_BLOCK_DEVICE=/dev/loopN cargo test -p redoubt-volume -- --ignored`.
//! The device's contents are overwritten.

use redoubt_volume::{Backing, IoMode, Volume, VolumeError};

#[test]
#[ignore = "needs a scratch block device in REDOUBT_TEST_BLOCK_DEVICE"]
fn block_device_source_is_sized_by_ioctl() {
    let path = std::path::PathBuf::from(std::env::var("REDOUBT_TEST_BLOCK_DEVICE").unwrap());
    let volume = Volume::open_source(&path, 4096, IoMode::Auto).unwrap();
    assert_eq!(volume.backing(), &Backing::SourceBlockDevice);
    // Learn the device size from the "too small" error of an absurd configured size.
    let error = Volume::open_source(&path, u64::MAX - 4095, IoMode::Auto).unwrap_err();
    let VolumeError::SourceTooSmall { source_bytes, .. } = error else {
        panic!("expected SourceTooSmall, got {error}");
    };
    assert!(source_bytes >= 4096);
    assert_eq!(source_bytes % 512, 0);

    let volume = Volume::open_source(&path, source_bytes, IoMode::Auto).unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    volume.write_at(&data, 777).unwrap();
    volume.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    volume.read_at(&mut back, 777).unwrap();
    assert_eq!(back, data);
    volume.write_zeroes(1000, 5000).unwrap();
    volume.read_at(&mut back, 777).unwrap();
    assert!(back[223..5223].iter().all(|&b| b == 0));
    assert_eq!(back[..223], data[..223]);
    assert_eq!(back[5223..], data[5223..]);
}
