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

/// An in-memory LV whose writes wait while its gate is closed: a slow applier, on demand.
pub struct GatedVolume {
    pub memory: MemoryVolume,
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    /// Writes that have started and are waiting at the closed gate.
    pub waiting: std::sync::atomic::AtomicU64,
}

impl GatedVolume {
    pub fn closed(size_bytes: u64) -> GatedVolume {
        GatedVolume {
            memory: MemoryVolume::zeroed(size_bytes, Duration::ZERO),
            open: Mutex::new(false),
            opened: std::sync::Condvar::new(),
            waiting: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }

    fn pass_gate(&self) {
        let mut open = self.open.lock().unwrap();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl BlockVolume for GatedVolume {
    fn size_bytes(&self) -> u64 {
        self.memory.size_bytes()
    }
    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> std::io::Result<()> {
        self.memory.read_at(buffer, offset_bytes)
    }
    fn write_at(&self, bytes: &[u8], offset_bytes: u64) -> std::io::Result<()> {
        self.pass_gate();
        self.memory.write_at(bytes, offset_bytes)
    }
    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        self.pass_gate();
        self.memory.write_zeroes(offset_bytes, length_bytes)
    }
    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> std::io::Result<()> {
        self.write_zeroes(offset_bytes, length_bytes)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}
