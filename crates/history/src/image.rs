//! Where the checker reads blocks from: files or block devices, or in-memory images.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::block::BLOCK_SIZE_BYTES;
use crate::workload::WriteOp;

/// Reads one 4096-byte block of one LV of an image (a replica, a snapshot, production).
pub trait ImageReader {
    fn read_block(
        &mut self,
        lv_index: u32,
        block_index: u64,
        buf: &mut [u8; BLOCK_SIZE_BYTES],
    ) -> io::Result<()>;
}

/// Opened files or block devices, one per LV, in LV order. Reads with `pread`, so the file
/// position is untouched and a shared handle is safe.
#[derive(Debug)]
pub struct FileImages {
    files: Vec<File>,
}

impl FileImages {
    pub fn new(files: Vec<File>) -> Self {
        Self { files }
    }
}

impl ImageReader for FileImages {
    fn read_block(
        &mut self,
        lv_index: u32,
        block_index: u64,
        buf: &mut [u8; BLOCK_SIZE_BYTES],
    ) -> io::Result<()> {
        let file = self.files.get(lv_index as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file for lv {lv_index}"),
            )
        })?;
        let offset_bytes = block_index
            .checked_mul(BLOCK_SIZE_BYTES as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "block offset overflow"))?;
        file.read_exact_at(buf, offset_bytes)
    }
}

/// LV images held in memory; also a tiny "disk" that tests apply writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryImages {
    lvs: Vec<Vec<u8>>,
}

impl MemoryImages {
    /// All-zero LVs of the given sizes (the state before any write).
    pub fn zeroed(lv_sizes_bytes: &[u64]) -> Self {
        Self {
            lvs: lv_sizes_bytes
                .iter()
                .map(|&size_bytes| vec![0u8; size_bytes as usize])
                .collect(),
        }
    }

    pub fn from_lvs(lvs: Vec<Vec<u8>>) -> Self {
        Self { lvs }
    }

    /// Writes `op`'s payload into its LV, as a replica applying the record would.
    pub fn apply(&mut self, op: &WriteOp, run_id: u64) {
        let payload = op.payload(run_id);
        self.write_at(op.lv_index, op.offset_bytes, &payload);
    }

    /// Overwrites raw bytes: for tests that simulate torn writes and foreign data.
    pub fn write_at(&mut self, lv_index: u32, offset_bytes: u64, bytes: &[u8]) {
        let lv = &mut self.lvs[lv_index as usize];
        let start = offset_bytes as usize;
        assert!(
            start + bytes.len() <= lv.len(),
            "write past the end of lv {lv_index}"
        );
        lv[start..start + bytes.len()].copy_from_slice(bytes);
    }

    pub fn lv(&self, lv_index: u32) -> &[u8] {
        &self.lvs[lv_index as usize]
    }

    pub fn lv_mut(&mut self, lv_index: u32) -> &mut [u8] {
        &mut self.lvs[lv_index as usize]
    }
}

impl ImageReader for MemoryImages {
    fn read_block(
        &mut self,
        lv_index: u32,
        block_index: u64,
        buf: &mut [u8; BLOCK_SIZE_BYTES],
    ) -> io::Result<()> {
        let lv = self.lvs.get(lv_index as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no image for lv {lv_index}"),
            )
        })?;
        let start = usize::try_from(block_index)
            .ok()
            .and_then(|block| block.checked_mul(BLOCK_SIZE_BYTES))
            .filter(|&start| start + BLOCK_SIZE_BYTES <= lv.len())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("lv {lv_index} image ends before block {block_index}"),
                )
            })?;
        buf.copy_from_slice(&lv[start..start + BLOCK_SIZE_BYTES]);
        Ok(())
    }
}

impl<R: ImageReader + ?Sized> ImageReader for &mut R {
    fn read_block(
        &mut self,
        lv_index: u32,
        block_index: u64,
        buf: &mut [u8; BLOCK_SIZE_BYTES],
    ) -> io::Result<()> {
        (**self).read_block(lv_index, block_index, buf)
    }
}
