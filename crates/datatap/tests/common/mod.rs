//! An in-memory LV for engine tests, whose reads can take device time.

use std::sync::Mutex;
use std::time::Duration;

use redoubt_datatap::BlockVolume;

pub struct MemoryVolume {
    pub data: Mutex<Vec<u8>>,
    /// Slept before each read (a slow device keeps a verify's hasher busy).
    pub read_latency: Duration,
}

impl MemoryVolume {
    pub fn zeroed(size_bytes: u64, read_latency: Duration) -> MemoryVolume {
        MemoryVolume {
            data: Mutex::new(vec![0u8; size_bytes as usize]),
            read_latency,
        }
    }
}

impl BlockVolume for MemoryVolume {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> std::io::Result<()> {
        if !self.read_latency.is_zero() {
            std::thread::sleep(self.read_latency);
        }
        let data = self.data.lock().unwrap();
        let start = offset_bytes as usize;
        buffer.copy_from_slice(&data[start..start + buffer.len()]);
        Ok(())
    }
    fn write_at(&self, bytes: &[u8], offset_bytes: u64) -> std::io::Result<()> {
        let mut data = self.data.lock().unwrap();
        let start = offset_bytes as usize;
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        let mut data = self.data.lock().unwrap();
        let start = offset_bytes as usize;
        data[start..start + length_bytes as usize].fill(0);
        Ok(())
    }
    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        self.write_zeroes(offset_bytes, length_bytes)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}
