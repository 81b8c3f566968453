//! The two files a snapshot keeps in the snapshot container.
//!
//! **Pre-image log** (`preimages.log`): append-only entries, each a 40-byte header and the
//! data. Little-endian header: magic `RSPI` (u32), version (u16), reserved (u16), lv_id
//! (u32), length_bytes (u32), offset_bytes (u64), seq (u64: the pre-image is the LV's data
//! just before this seq), crc32c (u32, over header bytes 0..36 and the data), reserved (u32).
//! On open the entries are scanned; a torn or damaged tail is cut off (the apply thread
//! syncs the log before it overwrites the replica, so a lost tail was never needed).
//!
//! **Overlay** of a writable snapshot: `overlay.dat` holds 4 KiB slots, `overlay.map` is an
//! append-only list of 24-byte entries (lv_id u32, block u64, slot u64, crc32c u32 over the
//! first 20 bytes) saying which slot holds which LV block. Both are synced on FLUSH.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"RSPI");
const ENTRY_VERSION: u16 = 1;
pub const ENTRY_HEADER_BYTES: u64 = 40;
/// Largest data of one pre-image entry; longer ranges are split.
pub const ENTRY_DATA_BYTES_MAX: u64 = 4 << 20;
/// Bytes of one overlay slot: the overlay's block size.
pub const OVERLAY_BLOCK_BYTES: u64 = 4096;
const MAP_ENTRY_BYTES: u64 = 24;

/// One entry found when a pre-image log is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub lv_id: u32,
    pub offset_bytes: u64,
    pub length_bytes: u64,
    pub seq: u64,
    /// Where the entry's data starts in the file.
    pub data_offset: u64,
}

fn io_context<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |error| {
        io::Error::new(
            error.kind(),
            format!("{action} {}: {error}", path.display()),
        )
    }
}

fn encode_header(lv_id: u32, offset_bytes: u64, seq: u64, data: &[u8]) -> [u8; 40] {
    let mut header = [0u8; ENTRY_HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&ENTRY_VERSION.to_le_bytes());
    header[8..12].copy_from_slice(&lv_id.to_le_bytes());
    header[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&offset_bytes.to_le_bytes());
    header[24..32].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..32]), data);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The append-only pre-image log of one snapshot.
pub struct PreimageLog {
    file: File,
    path: PathBuf,
    end_bytes: u64,
}

impl PreimageLog {
    pub fn create(path: &Path) -> io::Result<PreimageLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_context("create pre-image log", path))?;
        Ok(PreimageLog {
            file,
            path: path.to_path_buf(),
            end_bytes: 0,
        })
    }

    /// Opens a log and lists its entries, cutting off a torn or damaged tail.
    pub fn open(path: &Path) -> io::Result<(PreimageLog, Vec<EntryInfo>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_context("open pre-image log", path))?;
        let length = file
            .metadata()
            .map_err(io_context("stat pre-image log", path))?
            .len();
        let mut entries = Vec::new();
        let mut position = 0u64;
        let mut header = [0u8; ENTRY_HEADER_BYTES as usize];
        let mut data = Vec::new();
        while position + ENTRY_HEADER_BYTES <= length {
            file.read_exact_at(&mut header, position)
                .map_err(io_context("read pre-image log", path))?;
            let length_bytes = u64::from(le_u32(&header, 12));
            if le_u32(&header, 0) != ENTRY_MAGIC
                || length_bytes > ENTRY_DATA_BYTES_MAX
                || position + ENTRY_HEADER_BYTES + length_bytes > length
            {
                break;
            }
            data.resize(length_bytes as usize, 0);
            file.read_exact_at(&mut data, position + ENTRY_HEADER_BYTES)
                .map_err(io_context("read pre-image log", path))?;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..32]), &data);
            if crc != le_u32(&header, 32) {
                break;
            }
            entries.push(EntryInfo {
                lv_id: le_u32(&header, 8),
                offset_bytes: le_u64(&header, 16),
                length_bytes,
                seq: le_u64(&header, 24),
                data_offset: position + ENTRY_HEADER_BYTES,
            });
            position += ENTRY_HEADER_BYTES + length_bytes;
        }
        if position < length {
            tracing::warn!(path = %path.display(), kept_bytes = position, length, "cut the torn tail of a pre-image log");
            file.set_len(position)
                .map_err(io_context("truncate pre-image log", path))?;
            file.sync_all()
                .map_err(io_context("sync pre-image log", path))?;
        }
        Ok((
            PreimageLog {
                file,
                path: path.to_path_buf(),
                end_bytes: position,
            },
            entries,
        ))
    }

    /// Appends one entry (not synced); answers where its data lies.
    pub fn append(
        &mut self,
        lv_id: u32,
        offset_bytes: u64,
        seq: u64,
        data: &[u8],
    ) -> io::Result<u64> {
        assert!(!data.is_empty() && data.len() as u64 <= ENTRY_DATA_BYTES_MAX);
        let header = encode_header(lv_id, offset_bytes, seq, data);
        let mut entry = Vec::with_capacity(header.len() + data.len());
        entry.extend_from_slice(&header);
        entry.extend_from_slice(data);
        self.file
            .write_all_at(&entry, self.end_bytes)
            .map_err(io_context("append to pre-image log", &self.path))?;
        let data_offset = self.end_bytes + ENTRY_HEADER_BYTES;
        self.end_bytes += entry.len() as u64;
        Ok(data_offset)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(io_context("sync pre-image log", &self.path))
    }

    pub fn read_at(&self, buffer: &mut [u8], data_offset: u64) -> io::Result<()> {
        assert!(data_offset + buffer.len() as u64 <= self.end_bytes);
        self.file
            .read_exact_at(buffer, data_offset)
            .map_err(io_context("read pre-image log", &self.path))
    }

    pub fn size_bytes(&self) -> u64 {
        self.end_bytes
    }

    /// Bytes one entry of `data_bytes` takes in the file.
    pub fn entry_bytes(data_bytes: u64) -> u64 {
        ENTRY_HEADER_BYTES + data_bytes
    }
}

/// The copy-on-write overlay of a writable snapshot.
pub struct Overlay {
    data: File,
    map: File,
    data_path: PathBuf,
    map_path: PathBuf,
    slots: HashMap<(u32, u64), u64>,
    map_end_bytes: u64,
}

impl Overlay {
    /// Opens (or creates) the overlay files in `dir`, rebuilding the block map.
    pub fn open(dir: &Path) -> io::Result<Overlay> {
        let data_path = dir.join("overlay.dat");
        let map_path = dir.join("overlay.map");
        let options = || {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true);
            options
        };
        let data = options()
            .open(&data_path)
            .map_err(io_context("open overlay", &data_path))?;
        let map = options()
            .open(&map_path)
            .map_err(io_context("open overlay map", &map_path))?;
        let length = map
            .metadata()
            .map_err(io_context("stat overlay map", &map_path))?
            .len();
        let mut bytes = vec![0u8; length as usize];
        map.read_exact_at(&mut bytes, 0)
            .map_err(io_context("read overlay map", &map_path))?;
        let mut slots = HashMap::new();
        let mut position = 0usize;
        while position + MAP_ENTRY_BYTES as usize <= bytes.len() {
            let entry = &bytes[position..position + MAP_ENTRY_BYTES as usize];
            if crc32c::crc32c(&entry[0..20]) != le_u32(entry, 20) {
                break;
            }
            slots.insert((le_u32(entry, 0), le_u64(entry, 4)), le_u64(entry, 12));
            position += MAP_ENTRY_BYTES as usize;
        }
        if position < bytes.len() {
            map.set_len(position as u64)
                .map_err(io_context("truncate overlay map", &map_path))?;
        }
        Ok(Overlay {
            data,
            map,
            data_path,
            map_path,
            slots,
            map_end_bytes: position as u64,
        })
    }

    pub fn slot(&self, lv_id: u32, block: u64) -> Option<u64> {
        self.slots.get(&(lv_id, block)).copied()
    }

    pub fn read_slot(&self, buffer: &mut [u8], slot: u64, in_block: u64) -> io::Result<()> {
        assert!(in_block + buffer.len() as u64 <= OVERLAY_BLOCK_BYTES);
        let offset = slot * OVERLAY_BLOCK_BYTES + in_block;
        // A slot whose data never reached the disk reads short: it is zeroes.
        let mut done = 0;
        while done < buffer.len() {
            let count = self
                .data
                .read_at(&mut buffer[done..], offset + done as u64)
                .map_err(io_context("read overlay", &self.data_path))?;
            if count == 0 {
                buffer[done..].fill(0);
                break;
            }
            done += count;
        }
        Ok(())
    }

    pub fn write_slot(&self, data: &[u8], slot: u64, in_block: u64) -> io::Result<()> {
        assert!(in_block + data.len() as u64 <= OVERLAY_BLOCK_BYTES);
        self.data
            .write_all_at(data, slot * OVERLAY_BLOCK_BYTES + in_block)
            .map_err(io_context("write overlay", &self.data_path))
    }

    /// Gives `(lv_id, block)` a new slot holding `block_data` (a whole block).
    pub fn add_block(&mut self, lv_id: u32, block: u64, block_data: &[u8]) -> io::Result<u64> {
        assert_eq!(block_data.len() as u64, OVERLAY_BLOCK_BYTES);
        assert!(self.slot(lv_id, block).is_none(), "a block has one slot");
        let slot = self.slots.len() as u64;
        self.write_slot(block_data, slot, 0)?;
        let mut entry = [0u8; MAP_ENTRY_BYTES as usize];
        entry[0..4].copy_from_slice(&lv_id.to_le_bytes());
        entry[4..12].copy_from_slice(&block.to_le_bytes());
        entry[12..20].copy_from_slice(&slot.to_le_bytes());
        let crc = crc32c::crc32c(&entry[0..20]);
        entry[20..24].copy_from_slice(&crc.to_le_bytes());
        self.map
            .write_all_at(&entry, self.map_end_bytes)
            .map_err(io_context("append to overlay map", &self.map_path))?;
        self.map_end_bytes += MAP_ENTRY_BYTES;
        self.slots.insert((lv_id, block), slot);
        Ok(slot)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.data
            .sync_data()
            .map_err(io_context("sync overlay", &self.data_path))?;
        self.map
            .sync_data()
            .map_err(io_context("sync overlay map", &self.map_path))
    }

    /// Bytes the overlay takes: its slots and its map.
    pub fn size_bytes(&self) -> u64 {
        self.slots.len() as u64 * OVERLAY_BLOCK_BYTES + self.map_end_bytes
    }

    /// Bytes one more block takes.
    pub fn block_cost_bytes() -> u64 {
        OVERLAY_BLOCK_BYTES + MAP_ENTRY_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_pre_image_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("preimages.log");
        let mut log = PreimageLog::create(&path).unwrap();
        let first = log.append(7, 4096, 10, &[1u8; 4096]).unwrap();
        let second = log.append(7, 0, 11, &[2u8; 512]).unwrap();
        log.sync().unwrap();
        drop(log);
        let full = std::fs::metadata(&path).unwrap().len();
        // Tear the second entry's data.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 100).unwrap();
        let (log, entries) = PreimageLog::open(&path).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].data_offset, first);
        assert_eq!((entries[0].lv_id, entries[0].seq), (7, 10));
        assert_eq!(log.size_bytes(), second - ENTRY_HEADER_BYTES);
        let mut data = vec![0u8; 4096];
        log.read_at(&mut data, first).unwrap();
        assert!(data.iter().all(|byte| *byte == 1));
    }

    #[test]
    fn a_damaged_entry_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("preimages.log");
        let mut log = PreimageLog::create(&path).unwrap();
        log.append(1, 0, 1, &[1u8; 100]).unwrap();
        let second = log.append(1, 100, 2, &[2u8; 100]).unwrap();
        log.append(1, 200, 3, &[3u8; 100]).unwrap();
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[9u8], second + 5).unwrap();
        let (_, entries) = PreimageLog::open(&path).unwrap();
        assert_eq!(
            entries.len(),
            1,
            "the damaged entry and what follows it are cut"
        );
    }

    #[test]
    fn the_overlay_map_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut overlay = Overlay::open(dir.path()).unwrap();
        overlay.add_block(3, 17, &[5u8; 4096]).unwrap();
        overlay.add_block(3, 2, &[6u8; 4096]).unwrap();
        overlay.write_slot(&[7u8; 512], 0, 512).unwrap();
        overlay.sync().unwrap();
        drop(overlay);
        let overlay = Overlay::open(dir.path()).unwrap();
        assert_eq!(overlay.slot(3, 17), Some(0));
        assert_eq!(overlay.slot(3, 2), Some(1));
        assert_eq!(overlay.slot(4, 17), None);
        let mut block = vec![0u8; 4096];
        overlay.read_slot(&mut block, 0, 0).unwrap();
        assert!(block[..512].iter().all(|byte| *byte == 5));
        assert!(block[512..1024].iter().all(|byte| *byte == 7));
        assert_eq!(overlay.size_bytes(), 2 * 4096 + 48);
    }
}
