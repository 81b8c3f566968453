//! Request data in a buffer aligned for O_DIRECT, so aligned requests reach the LV without a
//! bounce copy.

use redoubt_volume::AlignedBuf;

pub struct Payload {
    buffer: AlignedBuf,
    length_bytes: usize,
}

impl Payload {
    pub fn zeroed(length_bytes: usize) -> Payload {
        let buffer = AlignedBuf::zeroed(length_bytes);
        assert!(buffer.len() >= length_bytes);
        Payload {
            buffer,
            length_bytes,
        }
    }

    pub fn from_slice(data: &[u8]) -> Payload {
        let mut payload = Payload::zeroed(data.len());
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
        &self.buffer[..self.length_bytes]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.length_bytes]
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.length_bytes)
    }
}
