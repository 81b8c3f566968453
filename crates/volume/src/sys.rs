//! Thin, checked wrappers over the Linux calls std does not expose. Every `unsafe` block of
//! the crate lives here.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` in the generic ioctl encoding (x86, arm, riscv).
/// Spelled out because not every libc release exports it for every target.
const BLKGETSIZE64: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;

const _: () = assert!(std::mem::size_of::<u64>() == 8);
const _: () = assert!(BLKGETSIZE64 == 0x8008_1272);

/// Size in bytes of the block device behind `file`.
pub(crate) fn block_device_size_bytes(file: &File) -> io::Result<u64> {
    let mut size_bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes exactly one u64 through the pointer, which is valid and
    // exclusively borrowed for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKGETSIZE64 as _,
            &mut size_bytes as *mut u64,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size_bytes)
}

/// The fallocate modes this crate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FallocateMode {
    /// Allocate blocks for the range (preallocation); file size may grow.
    Allocate,
    /// Deallocate the range; reads return zeroes; file size unchanged.
    PunchHole,
    /// Turn the range into zeroes, keeping it allocated where the filesystem can.
    ZeroRange,
}

pub(crate) fn fallocate(
    file: &File,
    mode: FallocateMode,
    offset: u64,
    length_bytes: u64,
) -> io::Result<()> {
    let flags = match mode {
        FallocateMode::Allocate => 0,
        FallocateMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        FallocateMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    };
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let length = libc::off_t::try_from(length_bytes)
        .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: fallocate takes no pointers; the fd is owned by `file` and open.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), flags, offset, length) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// True when `error` means "this file or filesystem cannot do that", as opposed to a real
/// failure. Such errors select a fallback path instead of failing the operation.
pub(crate) fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTTY)
    )
}

/// Takes an exclusive, non-blocking `flock` on `file`. Returns `Ok(false)` if someone else
/// holds it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes no pointers; the fd is owned by `file` and open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(error)
}

/// fsyncs a directory so that a rename or create inside it survives a crash.
pub(crate) fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}
