//! A heap buffer whose start address is aligned for O_DIRECT.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of offsets, lengths and buffer addresses for O_DIRECT. 4096 covers every
/// logical block size in common use (512 and 4096), so one constant serves all backings.
pub const DIRECT_IO_ALIGNMENT_BYTES: usize = 4096;

const _: () = assert!(DIRECT_IO_ALIGNMENT_BYTES.is_power_of_two());
const _: () = assert!(DIRECT_IO_ALIGNMENT_BYTES >= 512);

/// A zero-initialised byte buffer aligned to [`DIRECT_IO_ALIGNMENT_BYTES`], with a length
/// that is a whole number of such blocks.
pub struct AlignedBuf {
    pointer: NonNull<u8>,
    length_bytes: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `length_bytes` zeroed bytes, rounded up to a whole number of aligned blocks
    /// (at least one, so the allocation is never zero-sized).
    pub fn zeroed(length_bytes: usize) -> Self {
        let rounded = length_bytes
            .max(1)
            .checked_next_multiple_of(DIRECT_IO_ALIGNMENT_BYTES)
            .unwrap_or_else(|| alloc::handle_alloc_error(Layout::new::<u8>()));
        let layout = Self::layout(rounded);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let pointer = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        assert_eq!(pointer.as_ptr() as usize % DIRECT_IO_ALIGNMENT_BYTES, 0);
        AlignedBuf {
            pointer,
            length_bytes: rounded,
        }
    }

    fn layout(length_bytes: usize) -> Layout {
        match Layout::from_size_align(length_bytes, DIRECT_IO_ALIGNMENT_BYTES) {
            Ok(layout) => layout,
            // Only reachable with a length near usize::MAX, which no allocator can satisfy.
            Err(_) => alloc::handle_alloc_error(Layout::new::<u8>()),
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the pointer is valid for `length_bytes` initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.length_bytes) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.length_bytes) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { alloc::dealloc(self.pointer.as_ptr(), Self::layout(self.length_bytes)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("length_bytes", &self.length_bytes)
            .finish()
    }
}

/// True when `buffer` may be handed to an O_DIRECT read or write as is.
pub(crate) fn is_aligned(offset: u64, buffer: &[u8]) -> bool {
    let alignment = DIRECT_IO_ALIGNMENT_BYTES as u64;
    offset.is_multiple_of(alignment)
        && (buffer.len() as u64).is_multiple_of(alignment)
        && (buffer.as_ptr() as usize).is_multiple_of(DIRECT_IO_ALIGNMENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_and_aligns() {
        for length in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buffer = AlignedBuf::zeroed(length);
            assert!(buffer.len() >= length.max(1));
            assert_eq!(buffer.len() % DIRECT_IO_ALIGNMENT_BYTES, 0);
            assert_eq!(buffer.as_ptr() as usize % DIRECT_IO_ALIGNMENT_BYTES, 0);
            assert!(buffer.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn alignment_check() {
        let buffer = AlignedBuf::zeroed(8192);
        assert!(is_aligned(4096, &buffer));
        assert!(!is_aligned(1, &buffer));
        assert!(!is_aligned(0, &buffer[1..4097]));
        assert!(!is_aligned(0, &buffer[..100]));
    }
}
