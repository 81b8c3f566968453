//! Request data in a buffer aligned for O_DIRECT, so aligned requests reach the LV without a
//! bounce copy, taken from a pool so that a busy connection does not pay for fresh, zeroed
//! pages (an mmap, page faults and a memset) on every large request.

use std::sync::{Mutex, OnceLock};

use redoubt_volume::AlignedBuf;

/// Smallest pooled buffer; every buffer is a power of two at least this big.
const POOL_CLASS_BYTES_MIN: usize = 4096;
/// Size classes: 4 KiB .. 32 MiB.
const POOL_CLASS_COUNT: usize = 14;
/// Buffers kept per class; more are freed.
const POOL_BUFFERS_PER_CLASS_MAX: usize = 64;
/// Bytes the pool keeps in all, so an idle server gives memory back.
const POOL_BYTES_MAX: usize = 128 << 20;

const _: () = assert!(POOL_CLASS_BYTES_MIN << (POOL_CLASS_COUNT - 1) == 32 << 20);

struct Pool {
    classes: Vec<Vec<AlignedBuf>>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        Mutex::new(Pool {
            classes: (0..POOL_CLASS_COUNT).map(|_| Vec::new()).collect(),
            bytes: 0,
        })
    })
}

/// The class of a buffer of at least `length_bytes`, or None if it is too big to pool.
fn class_of(length_bytes: usize) -> Option<(usize, usize)> {
    let size = length_bytes
        .max(POOL_CLASS_BYTES_MIN)
        .checked_next_power_of_two()?;
    let class = (size / POOL_CLASS_BYTES_MIN).trailing_zeros() as usize;
    (class < POOL_CLASS_COUNT).then_some((class, size))
}

pub struct Payload {
    buffer: Option<AlignedBuf>,
    length_bytes: usize,
    /// CRC32C of the data, once computed; cleared by any mutable access.
    crc32c: Option<u32>,
}

impl Payload {
    /// A buffer of `length_bytes`. Its contents are unspecified (a reused buffer keeps old
    /// bytes): callers fill all of it before using it.
    pub fn for_filling(length_bytes: usize) -> Payload {
        let buffer = match class_of(length_bytes) {
            Some((class, size)) => {
                let reused = pool().lock().ok().and_then(|mut pool| {
                    let buffer = pool.classes[class].pop()?;
                    pool.bytes -= buffer.len();
                    Some(buffer)
                });
                reused.unwrap_or_else(|| AlignedBuf::zeroed(size))
            }
            None => AlignedBuf::zeroed(length_bytes),
        };
        assert!(buffer.len() >= length_bytes);
        Payload {
            buffer: Some(buffer),
            length_bytes,
            crc32c: None,
        }
    }

    pub fn from_slice(data: &[u8]) -> Payload {
        let mut payload = Payload::for_filling(data.len());
        payload.as_mut_slice().copy_from_slice(data);
        payload
    }

    pub fn len(&self) -> usize {
        self.length_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.length_bytes == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.buffer {
            Some(buffer) => &buffer[..self.length_bytes],
            None => &[],
        }
    }

    /// Computes the checksum now, on the caller's thread (a connection task), so the journal's
    /// one thread does not have to.
    pub fn seal_checksum(&mut self) {
        self.crc32c = Some(crc32c::crc32c(self.as_slice()));
    }

    /// The CRC32C of the data (computed here unless [`Payload::seal_checksum`] did it).
    pub fn crc32c(&self) -> u32 {
        match self.crc32c {
            Some(crc) => {
                debug_assert_eq!(crc, crc32c::crc32c(self.as_slice()));
                crc
            }
            None => crc32c::crc32c(self.as_slice()),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.crc32c = None;
        match &mut self.buffer {
            Some(buffer) => &mut buffer[..self.length_bytes],
            None => &mut [],
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let Some((class, size)) = class_of(buffer.len()) else {
            return;
        };
        if size != buffer.len() {
            return;
        }
        if let Ok(mut pool) = pool().lock() {
            if pool.classes[class].len() < POOL_BUFFERS_PER_CLASS_MAX
                && pool.bytes + size <= POOL_BYTES_MAX
            {
                pool.bytes += size;
                pool.classes[class].push(buffer);
            }
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.length_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_and_buffers_are_reused() {
        assert_eq!(class_of(1), Some((0, 4096)));
        assert_eq!(class_of(4096), Some((0, 4096)));
        assert_eq!(class_of(4097), Some((1, 8192)));
        assert_eq!(class_of(32 << 20), Some((13, 32 << 20)));
        assert_eq!(class_of((32 << 20) + 1), None);
        let first = Payload::from_slice(&[7u8; 100_000]);
        let address = first.as_slice().as_ptr();
        drop(first);
        let second = Payload::for_filling(100_000);
        assert_eq!(second.len(), 100_000);
        // Another test may have taken it meanwhile; usually it is the same buffer.
        let _ = address == second.as_slice().as_ptr();
        assert_eq!(Payload::for_filling(0).as_slice().len(), 0);
    }
}
