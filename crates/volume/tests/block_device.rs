//! Block-device sources need a real device: the test attaches a loop device to a scratch file
//! of its own (losetup needs root, as CI and the development machines run) and detaches it
//! however the test ends.

use std::process::Command;

use redoubt_volume::{Backing, IoMode, Volume, VolumeError};

/// A loop device over a scratch file, detached on drop.
struct LoopDevice {
    path: std::path::PathBuf,
    _file: tempfile::NamedTempFile,
}

impl LoopDevice {
    fn attach(size_bytes: u64) -> LoopDevice {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size_bytes).unwrap();
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            output.status.success(),
            "losetup failed (root is needed to attach a loop device): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let path = String::from_utf8_lossy(&output.stdout).trim().into();
        LoopDevice { path, _file: file }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("--detach")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn block_device_source_is_sized_by_ioctl() {
    let device = LoopDevice::attach(8 << 20);
    let path = device.path.clone();
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
