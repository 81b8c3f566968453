//! The storage the journal runs on: a tiny file-system trait with a real [`StdFs`] and a
//! simulated [`SimFs`](crate::sim::SimFs) that can lose unsynced data on a power cut.
//!
//! The trait is deliberately small: everything the journal needs and nothing else, so the
//! simulation can model every operation's durability precisely.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A directory-oriented file system. Directory entries (create, rename, remove) become
/// durable only after [`JournalFs::sync_dir`]; file contents only after
/// [`SegmentFile::sync_data`].
pub trait JournalFs: Clone + Send + Sync + 'static {
    type File: SegmentFile;

    /// Create `dir` and its parents. Treated as durable on return.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) of the regular files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Create a new empty file; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Self::File>;
    /// Open an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Atomically rename `source` to `target` (same directory).
    fn rename(&self, source: &Path, target: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make the directory entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file with positional I/O.
pub trait SegmentFile: Send + 'static {
    /// Current length in bytes.
    fn len_bytes(&self) -> io::Result<u64>;
    /// Read up to `buf.len()` bytes at `offset`; returns how many were read (0 at end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Write all of `data` at `offset`, extending the file if needed. Not durable yet.
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make the file's data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// A second handle on the same open file (`dup`), so another thread can sync it while
    /// this one goes on writing.
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Truncate or extend to `len` bytes. Not durable until `sync_data`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// A hint: start writing `len` bytes at `offset` back to the disk, without waiting. It
    /// makes nothing durable (only `sync_data` does) and fails silently: a real I/O error
    /// shows at the next `sync_data`.
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}

    /// Read exactly `buf.len()` bytes at `offset`, or report how many were available.
    fn read_exact_or_eof(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0usize;
        while filled < buf.len() {
            let read = self.read_at(offset + filled as u64, &mut buf[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        assert!(filled <= buf.len());
        Ok(filled)
    }
}

/// The real file system via `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

/// A real file.
#[derive(Debug)]
pub struct StdFile {
    file: File,
}

impl JournalFs for StdFs {
    type File = StdFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<StdFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(StdFile { file })
    }

    fn open(&self, path: &Path) -> io::Result<StdFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(StdFile { file })
    }

    fn rename(&self, source: &Path, target: &Path) -> io::Result<()> {
        std::fs::rename(source, target)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SegmentFile for StdFile {
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn try_clone(&self) -> io::Result<StdFile> {
        Ok(StdFile {
            file: self.file.try_clone()?,
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range(2) on a descriptor this struct owns for its whole lifetime;
        // it reads no user memory. A hint: its result does not matter (see the trait).
        let _ = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
}

/// Join a directory and a file name.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
