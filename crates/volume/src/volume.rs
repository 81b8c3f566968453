//! An open LV: positional, bounds-checked I/O usable from many threads at once.
//!
//! # Direct I/O and unaligned requests
//!
//! With [`IoMode::Auto`] the backing is opened with `O_DIRECT` (bypassing the page cache, so
//! memory use stays flat and the replica is not double-cached). If the open fails with
//! `EINVAL`, or a probe read of the first block fails with `EINVAL`, the volume falls back to
//! buffered I/O; [`Volume::is_direct`] says which mode won.
//!
//! O_DIRECT needs offsets, lengths and buffer addresses aligned to
//! [`DIRECT_IO_ALIGNMENT_BYTES`]. Aligned requests go straight to the device. Unaligned ones
//! go through a bounce [`AlignedBuf`] of at most [`BOUNCE_SIZE_BYTES_MAX`] per step, and the
//! partially covered edge blocks of a write are read, patched and written back
//! (read-modify-write). We chose this over routing unaligned requests through a second,
//! buffered descriptor because mixing buffered and direct I/O on one file relies on page-cache
//! invalidation that the kernel only does best effort ("Page cache invalidation failure on
//! direct I/O"), whereas read-modify-write keeps one coherent path.
//!
//! Read-modify-write of an edge block holds a striped lock for that block, so two unaligned
//! writes to *different bytes* of the same block (say two 512-byte sectors) never undo each
//! other. Writes whose byte ranges *overlap* have no defined order, as on any block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::aligned::{is_aligned, AlignedBuf, DIRECT_IO_ALIGNMENT_BYTES};
use crate::error::{Result, VolumeError};
use crate::sys::{self, FallocateMode};

/// Largest bounce buffer one unaligned request (or one zero-fill fallback) allocates at a time.
/// Bigger requests are handled in steps, which keeps memory bounded under hostile sizes.
pub const BOUNCE_SIZE_BYTES_MAX: usize = 1 << 20;

/// Number of striped locks guarding read-modify-write of edge blocks. A power of two well
/// above the number of concurrent writers keeps false sharing between stripes rare.
const EDGE_LOCK_STRIPE_COUNT: usize = 64;

const ALIGNMENT_BYTES: u64 = DIRECT_IO_ALIGNMENT_BYTES as u64;

const _: () = assert!(BOUNCE_SIZE_BYTES_MAX.is_multiple_of(DIRECT_IO_ALIGNMENT_BYTES));
const _: () = assert!(BOUNCE_SIZE_BYTES_MAX >= 2 * DIRECT_IO_ALIGNMENT_BYTES);
const _: () = assert!(EDGE_LOCK_STRIPE_COUNT.is_power_of_two());

/// How to open the backing of a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT` if the backing supports it, buffered otherwise.
    #[default]
    Auto,
    /// Always buffered (page cache). Used where O_DIRECT is unwanted, and by tests to cover
    /// both paths on one filesystem.
    Buffered,
    /// Buffered, except that aligned writes of at least [`HYBRID_DIRECT_WRITE_BYTES_MIN`] go
    /// through a second, `O_DIRECT` descriptor where the backing supports it: large writes skip
    /// the page-cache copy, small ones keep its low latency. The kernel keeps the two coherent
    /// (a direct write writes back and invalidates the cached pages it overlaps).
    Hybrid,
}

/// Smallest aligned write that [`IoMode::Hybrid`] sends around the page cache.
pub const HYBRID_DIRECT_WRITE_BYTES_MIN: usize = 256 * 1024;

/// What an LV is stored on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A file Redoubt created inside a container. `preallocated` records whether its blocks
    /// were allocated up front, which keeps trim and zeroing from giving them back.
    ContainerFile { preallocated: bool },
    /// An existing regular file named as `source` on production. Never deleted or truncated.
    SourceFile,
    /// An existing block device named as `source` on production. Never deleted or truncated.
    SourceBlockDevice,
}

impl Backing {
    /// True for production data Redoubt did not create.
    pub fn is_source(&self) -> bool {
        !matches!(self, Backing::ContainerFile { .. })
    }
}

/// What a [`Volume::trim`] achieved. Trim is advisory, so "could not" is not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimOutcome {
    /// The range was deallocated; it now reads as zeroes.
    Discarded,
    /// The backing cannot discard, or is preallocated and must keep its blocks; nothing changed.
    Skipped,
}

/// An open LV. All I/O methods take `&self` and use positional I/O, so one `Volume` can be
/// shared between threads (it is `Send + Sync`).
///
/// Durability: a write returning `Ok` is not durable, even with O_DIRECT. Direct I/O skips the
/// page cache, but not the device's volatile write cache, and file metadata (allocation of a
/// sparse block) is only persisted by a flush. Call [`Volume::sync`] (fdatasync) before
/// acknowledging a FLUSH.
#[derive(Debug)]
pub struct Volume {
    path: PathBuf,
    file: File,
    direct: bool,
    /// [`IoMode::Hybrid`]: the O_DIRECT descriptor for large aligned writes.
    direct_writes: Option<File>,
    size_bytes: u64,
    backing: Backing,
    edge_locks: Box<[Mutex<()>]>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Volume>();
};

impl Volume {
    /// Opens an LV file created in a container, checking its length against the manifest.
    pub(crate) fn open_container_file(
        path: &Path,
        size_bytes: u64,
        preallocated: bool,
        io_mode: IoMode,
    ) -> Result<Volume> {
        assert_eq!(size_bytes % ALIGNMENT_BYTES, 0);
        let (file, direct) = open_backing(path, io_mode, size_bytes)?;
        let metadata = file
            .metadata()
            .map_err(|e| VolumeError::io("stat LV file", path, e))?;
        if metadata.len() != size_bytes {
            return Err(VolumeError::LvSizeMismatch {
                path: path.to_path_buf(),
                expected_bytes: size_bytes,
                actual_bytes: metadata.len(),
            });
        }
        let mut volume = Volume::new(
            path,
            file,
            direct,
            size_bytes,
            Backing::ContainerFile { preallocated },
        );
        volume.direct_writes = open_hybrid_direct(path, io_mode, size_bytes)?;
        Ok(volume)
    }

    /// Opens an existing production block device or regular file as an LV of
    /// `configured_size_bytes`. The volume exposes exactly the configured size (the size of
    /// its replicas), even if the source is larger; a smaller source is refused.
    pub fn open_source(path: &Path, configured_size_bytes: u64, io_mode: IoMode) -> Result<Volume> {
        let metadata =
            std::fs::metadata(path).map_err(|e| VolumeError::io("stat source", path, e))?;
        let file_type = metadata.file_type();
        let backing = if file_type.is_block_device() {
            Backing::SourceBlockDevice
        } else if file_type.is_file() {
            Backing::SourceFile
        } else {
            return Err(VolumeError::SourceNotSupported {
                path: path.to_path_buf(),
            });
        };
        let (file, direct) = open_backing(path, io_mode, configured_size_bytes)?;
        let source_bytes = source_size_bytes(&file, path)?;
        if source_bytes < configured_size_bytes {
            return Err(VolumeError::SourceTooSmall {
                path: path.to_path_buf(),
                source_bytes,
                configured_bytes: configured_size_bytes,
            });
        }
        let mut volume = Volume::new(path, file, direct, configured_size_bytes, backing);
        volume.direct_writes = open_hybrid_direct(path, io_mode, configured_size_bytes)?;
        Ok(volume)
    }

    fn new(path: &Path, file: File, direct: bool, size_bytes: u64, backing: Backing) -> Volume {
        // O_DIRECT rounds edge blocks outwards; with an unaligned size that would touch bytes
        // past the end of the LV, so open_backing never picks direct for such sizes.
        assert!(!direct || size_bytes.is_multiple_of(ALIGNMENT_BYTES));
        let edge_locks = (0..EDGE_LOCK_STRIPE_COUNT)
            .map(|_| Mutex::new(()))
            .collect();
        Volume {
            path: path.to_path_buf(),
            file,
            direct,
            direct_writes: None,
            size_bytes,
            backing,
            edge_locks,
        }
    }

    /// Size of the LV in bytes. Fixed for the life of this handle.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Path of the backing file or device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the LV is stored on.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// True if the backing was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Fills `buffer` from `offset`. Fails without reading if the range is out of bounds.
    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buffer.len() as u64)?;
        if buffer.is_empty() {
            return Ok(());
        }
        if !self.direct || is_aligned(offset, buffer) {
            return self
                .file
                .read_exact_at(buffer, offset)
                .map_err(|e| self.io_error("read LV", e));
        }
        self.read_bounced(buffer, offset)
    }

    /// Writes all of `buffer` at `offset`. Fails without writing if the range is out of
    /// bounds, so a rejected request never leaves a partial write.
    pub fn write_at(&self, buffer: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buffer.len() as u64)?;
        if buffer.is_empty() {
            return Ok(());
        }
        if let Some(direct) = &self.direct_writes {
            if buffer.len() >= HYBRID_DIRECT_WRITE_BYTES_MIN && is_aligned(offset, buffer) {
                return direct
                    .write_all_at(buffer, offset)
                    .map_err(|e| self.io_error("write LV (direct)", e));
            }
        }
        if !self.direct || is_aligned(offset, buffer) {
            return self
                .file
                .write_all_at(buffer, offset)
                .map_err(|e| self.io_error("write LV", e));
        }
        self.write_bounced(buffer, offset)
    }

    /// Makes `[offset, offset + length_bytes)` read as zeroes, cheaply where the backing can:
    /// fallocate ZERO_RANGE or PUNCH_HOLE (KEEP_SIZE, so the size never changes), else by
    /// writing zeroes. Preallocated LVs prefer ZERO_RANGE so they keep their blocks.
    pub fn write_zeroes(&self, offset: u64, length_bytes: u64) -> Result<()> {
        self.check_range(offset, length_bytes)?;
        if length_bytes == 0 {
            return Ok(());
        }
        let modes = match self.backing {
            Backing::ContainerFile { preallocated: true } => {
                [FallocateMode::ZeroRange, FallocateMode::PunchHole]
            }
            _ => [FallocateMode::PunchHole, FallocateMode::ZeroRange],
        };
        for mode in modes {
            match sys::fallocate(&self.file, mode, offset, length_bytes) {
                Ok(()) => return Ok(()),
                Err(error) if sys::is_unsupported(&error) => continue,
                Err(error) => return Err(self.io_error("zero LV range", error)),
            }
        }
        self.write_zeroes_by_writing(offset, length_bytes)
    }

    fn write_zeroes_by_writing(&self, offset: u64, length_bytes: u64) -> Result<()> {
        let zeroes = AlignedBuf::zeroed(BOUNCE_SIZE_BYTES_MAX);
        let end = offset + length_bytes; // check_range proved this does not overflow.
        let mut position = offset;
        while position < end {
            let step_bytes = (end - position).min(BOUNCE_SIZE_BYTES_MAX as u64);
            self.write_at(&zeroes[..step_bytes as usize], position)?;
            position += step_bytes;
        }
        assert_eq!(position, end);
        Ok(())
    }

    /// Gives the blocks of a range back to the backing (punch hole). Best effort: contents of
    /// the range are unspecified afterwards unless the outcome is [`TrimOutcome::Discarded`].
    /// Preallocated LVs skip trim, because punching would break their no-ENOSPC guarantee.
    pub fn trim(&self, offset: u64, length_bytes: u64) -> Result<TrimOutcome> {
        self.check_range(offset, length_bytes)?;
        if length_bytes == 0 || self.backing == (Backing::ContainerFile { preallocated: true }) {
            return Ok(TrimOutcome::Skipped);
        }
        match sys::fallocate(&self.file, FallocateMode::PunchHole, offset, length_bytes) {
            Ok(()) => Ok(TrimOutcome::Discarded),
            Err(error) if sys::is_unsupported(&error) => Ok(TrimOutcome::Skipped),
            Err(error) => Err(self.io_error("trim LV range", error)),
        }
    }

    /// fdatasync: makes every completed write durable, including with O_DIRECT (see the type
    /// docs for why direct I/O alone is not enough).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("sync LV", e))
    }

    fn check_range(&self, offset: u64, length_bytes: u64) -> Result<()> {
        match offset.checked_add(length_bytes) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfBounds {
                path: self.path.clone(),
                offset,
                length_bytes,
                size_bytes: self.size_bytes,
            }),
        }
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> VolumeError {
        VolumeError::io(action, &self.path, source)
    }

    /// The aligned window, at most one bounce buffer long, that starts at the block holding
    /// `position` and ends no later than the block holding the last byte before `end`.
    fn window(position: u64, end: u64) -> (u64, u64) {
        let window_start = position - position % ALIGNMENT_BYTES;
        let end_rounded = end.div_ceil(ALIGNMENT_BYTES) * ALIGNMENT_BYTES;
        let window_end = end_rounded.min(window_start + BOUNCE_SIZE_BYTES_MAX as u64);
        assert!(window_start <= position && position < window_end);
        (window_start, window_end)
    }

    /// The bounce buffer a request needs: its aligned span, capped. Sized per request because
    /// a large allocation per small request is an mmap/munmap pair, which serializes every
    /// thread of the process on the address-space lock.
    fn bounce_size_bytes(offset: u64, end: u64) -> usize {
        let span =
            end.div_ceil(ALIGNMENT_BYTES) * ALIGNMENT_BYTES - (offset - offset % ALIGNMENT_BYTES);
        (span as usize).min(BOUNCE_SIZE_BYTES_MAX)
    }

    fn read_bounced(&self, buffer: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buffer.len() as u64;
        let mut bounce = AlignedBuf::zeroed(Self::bounce_size_bytes(offset, end));
        let mut position = offset;
        while position < end {
            let (window_start, window_end) = Self::window(position, end);
            let window = &mut bounce[..(window_end - window_start) as usize];
            self.file
                .read_exact_at(window, window_start)
                .map_err(|e| self.io_error("read LV", e))?;
            let copy_end = end.min(window_end);
            let source =
                &window[(position - window_start) as usize..(copy_end - window_start) as usize];
            buffer[(position - offset) as usize..(copy_end - offset) as usize]
                .copy_from_slice(source);
            position = copy_end;
        }
        Ok(())
    }

    fn write_bounced(&self, buffer: &[u8], offset: u64) -> Result<()> {
        let end = offset + buffer.len() as u64;
        let mut bounce = AlignedBuf::zeroed(Self::bounce_size_bytes(offset, end));
        let mut position = offset;
        while position < end {
            let (window_start, window_end) = Self::window(position, end);
            let copy_end = end.min(window_end);
            let head_partial = position > window_start;
            let tail_partial = copy_end < window_end;
            let window_length = (window_end - window_start) as usize;
            let window = &mut bounce[..window_length];
            let block = DIRECT_IO_ALIGNMENT_BYTES;
            // Hold the edge locks from the read of the old block to the write of the new one.
            let _guards = self.lock_edges(
                head_partial.then_some(window_start),
                tail_partial.then_some(window_end - ALIGNMENT_BYTES),
            );
            if head_partial {
                self.file
                    .read_exact_at(&mut window[..block], window_start)
                    .map_err(|e| self.io_error("read LV edge block", e))?;
            }
            if tail_partial && (window_length > block || !head_partial) {
                self.file
                    .read_exact_at(
                        &mut window[window_length - block..],
                        window_end - ALIGNMENT_BYTES,
                    )
                    .map_err(|e| self.io_error("read LV edge block", e))?;
            }
            let source = &buffer[(position - offset) as usize..(copy_end - offset) as usize];
            window[(position - window_start) as usize..(copy_end - window_start) as usize]
                .copy_from_slice(source);
            self.file
                .write_all_at(window, window_start)
                .map_err(|e| self.io_error("write LV", e))?;
            position = copy_end;
        }
        assert_eq!(position, end);
        Ok(())
    }

    /// Locks the stripes of up to two edge blocks, in stripe order so two writers can never
    /// wait on each other.
    fn lock_edges(&self, head: Option<u64>, tail: Option<u64>) -> Vec<MutexGuard<'_, ()>> {
        let stripe =
            |block_offset: u64| (block_offset / ALIGNMENT_BYTES) as usize % EDGE_LOCK_STRIPE_COUNT;
        let mut stripes: Vec<usize> = head.into_iter().chain(tail).map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        assert!(stripes.len() <= 2);
        stripes
            .into_iter()
            // A poisoned stripe only means another writer panicked; the lock guards no data.
            .map(|index| {
                self.edge_locks[index]
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
            })
            .collect()
    }
}

/// Opens `path` read-write, with O_DIRECT when asked for and supported.
fn open_backing(path: &Path, io_mode: IoMode, size_bytes: u64) -> Result<(File, bool)> {
    let open = |flags: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(path)
    };
    let want_direct = io_mode == IoMode::Auto && size_bytes.is_multiple_of(ALIGNMENT_BYTES);
    if want_direct {
        match open(libc::O_DIRECT) {
            Ok(file) => {
                if probe_direct(&file, size_bytes)
                    .map_err(|e| VolumeError::io("probe direct I/O on", path, e))?
                {
                    return Ok((file, true));
                }
            }
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
            Err(error) => return Err(VolumeError::io("open LV backing", path, error)),
        }
    }
    let file = open(0).map_err(|e| VolumeError::io("open LV backing", path, e))?;
    Ok((file, false))
}

/// The second descriptor of [`IoMode::Hybrid`], if the backing takes O_DIRECT.
fn open_hybrid_direct(path: &Path, io_mode: IoMode, size_bytes: u64) -> Result<Option<File>> {
    if io_mode != IoMode::Hybrid {
        return Ok(None);
    }
    match open_backing(path, IoMode::Auto, size_bytes)? {
        (file, true) => Ok(Some(file)),
        (_, false) => Ok(None),
    }
}

/// Some filesystems accept O_DIRECT at open and refuse it at the first read; one aligned read
/// of the first block tells them apart.
fn probe_direct(file: &File, size_bytes: u64) -> io::Result<bool> {
    if size_bytes < ALIGNMENT_BYTES {
        return Ok(true);
    }
    let mut block = AlignedBuf::zeroed(DIRECT_IO_ALIGNMENT_BYTES);
    match file.read_exact_at(&mut block, 0) {
        Ok(()) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(error) => Err(error),
    }
}

fn source_size_bytes(file: &File, path: &Path) -> Result<u64> {
    let metadata = file
        .metadata()
        .map_err(|e| VolumeError::io("stat source", path, e))?;
    if metadata.file_type().is_block_device() {
        return sys::block_device_size_bytes(file)
            .map_err(|e| VolumeError::io("get size of block device", path, e));
    }
    Ok(metadata.len())
}
