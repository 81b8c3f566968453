//! What the datatap needs of an LV, as a trait: the real [`redoubt_volume::Volume`] in
//! production, and [`FsVolume`] over a [`JournalFs`] so that tests can cut the power under the
//! journal and the LVs alike (with `SimFs`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redoubt_journal::{JournalFs, SegmentFile};
use redoubt_volume::{Volume, VolumeError};

/// A fixed-size LV with positional I/O. All methods take `&self`: reads run concurrently with
/// the commit thread's writes.
pub trait BlockVolume: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;
    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> io::Result<()>;
    fn write_at(&self, data: &[u8], offset_bytes: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()>;
    /// Best effort: the range's contents are unspecified afterwards.
    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()>;
    /// fdatasync: every completed write is durable on return.
    fn sync(&self) -> io::Result<()>;
}

fn volume_error(error: VolumeError) -> io::Error {
    match error {
        VolumeError::Io { source, .. } => source,
        VolumeError::OutOfBounds { .. } => {
            io::Error::new(io::ErrorKind::InvalidInput, error.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

impl BlockVolume for Volume {
    fn size_bytes(&self) -> u64 {
        Volume::size_bytes(self)
    }

    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> io::Result<()> {
        Volume::read_at(self, buffer, offset_bytes).map_err(volume_error)
    }

    fn write_at(&self, data: &[u8], offset_bytes: u64) -> io::Result<()> {
        Volume::write_at(self, data, offset_bytes).map_err(volume_error)
    }

    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        Volume::write_zeroes(self, offset_bytes, length_bytes).map_err(volume_error)
    }

    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        Volume::trim(self, offset_bytes, length_bytes)
            .map(|_| ())
            .map_err(volume_error)
    }

    fn sync(&self) -> io::Result<()> {
        Volume::sync(self).map_err(volume_error)
    }
}

/// Most bytes [`FsVolume::write_zeroes`] writes per call to the file.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// An LV stored as one file of a [`JournalFs`]. Bytes past the file's end read as zeroes.
pub struct FsVolume<F: JournalFs> {
    file: Mutex<F::File>,
    size_bytes: u64,
    path: PathBuf,
}

impl<F: JournalFs> FsVolume<F> {
    /// Opens the file at `path`, creating it empty if it does not exist.
    pub fn open(fs: &F, path: &Path, size_bytes: u64) -> io::Result<FsVolume<F>> {
        let file = match fs.open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs.create_dir_all(dir)?;
                }
                // Full size from the start, as the volume store creates LVs: the file is then
                // only ever overwritten in place, never appended to.
                let mut file = fs.create_new(path)?;
                file.set_len(size_bytes)?;
                file.sync_data()?;
                if let Some(dir) = path.parent() {
                    fs.sync_dir(dir)?;
                }
                file
            }
            Err(error) => return Err(error),
        };
        Ok(FsVolume {
            file: Mutex::new(file),
            size_bytes,
            path: path.to_path_buf(),
        })
    }

    fn check(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        match offset_bytes.checked_add(length_bytes) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {length_bytes} bytes at {offset_bytes} is beyond {} bytes",
                    self.path.display(),
                    self.size_bytes
                ),
            )),
        }
    }

    fn file(&self) -> io::Result<std::sync::MutexGuard<'_, F::File>> {
        self.file
            .lock()
            .map_err(|_| io::Error::other("volume lock poisoned"))
    }
}

impl<F: JournalFs> BlockVolume for FsVolume<F> {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> io::Result<()> {
        self.check(offset_bytes, buffer.len() as u64)?;
        let file = self.file()?;
        let read = file.read_exact_or_eof(offset_bytes, buffer)?;
        buffer[read..].fill(0);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset_bytes: u64) -> io::Result<()> {
        self.check(offset_bytes, data.len() as u64)?;
        self.file()?.write_all_at(offset_bytes, data)
    }

    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        self.check(offset_bytes, length_bytes)?;
        let zeroes = vec![0u8; length_bytes.min(ZERO_CHUNK_BYTES) as usize];
        let mut file = self.file()?;
        let mut position = offset_bytes;
        let end = offset_bytes + length_bytes;
        while position < end {
            let step = (end - position).min(ZERO_CHUNK_BYTES);
            file.write_all_at(position, &zeroes[..step as usize])?;
            position += step;
        }
        Ok(())
    }

    fn trim(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()> {
        // Trimmed ranges are unspecified; zeroes are one valid answer.
        self.write_zeroes(offset_bytes, length_bytes)
    }

    fn sync(&self) -> io::Result<()> {
        self.file()?.sync_data()
    }
}
