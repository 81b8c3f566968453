//! `redoubt-durable`: small state files replaced and removed so that the change survives a
//! power cut.
//!
//! A rename or an unlink changes a directory entry, and the entry is only on disk once the
//! directory itself is fsynced: without that, a state file written "atomically" (temporary
//! file, fsync, rename) can come back as the old file after a power cut, and a removed one can
//! come back at all. Every writer of agent, console and recovery state goes through here, so
//! none of them forgets the directory.
//!
//! **Invariant:** when a function of this crate returns `Ok`, the new content (or the
//! absence) of the file is durable: file data fsynced, then the rename or unlink, then the
//! directory fsynced.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`: a temporary file beside it (same directory, so the rename is
/// atomic), fsynced, renamed over `path`, and the directory fsynced. A crash leaves either the
/// old content or the new, never a mix; a leftover temporary file is overwritten next time.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, 0o666)
}

/// [`replace`] for secrets (tokens): the file is created readable by its owner only (0600),
/// so the secret is never readable by others, not even in the temporary file.
pub fn replace_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, 0o600)
}

fn replace_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let directory = parent(path)?;
    let temporary = temporary_path(path)?;
    // A temporary left by a crash may have other permissions: start from nothing.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    fs::rename(&temporary, path)?;
    sync_directory(&directory)
}

/// Removes `path` durably; `Ok(false)` when there was nothing to remove.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_directory(&parent(path)?)?;
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Removes the directory tree `path` durably (its parent fsynced); `Ok(false)` when there
/// was nothing to remove.
pub fn remove_dir_all(path: &Path) -> io::Result<bool> {
    match fs::remove_dir_all(path) {
        Ok(()) => {
            sync_directory(&parent(path)?)?;
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Renames `from` to `to` durably: both directories fsynced (once when they are the same).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    let target_directory = parent(to)?;
    sync_directory(&target_directory)?;
    let source_directory = parent(from)?;
    if source_directory != target_directory {
        sync_directory(&source_directory)?;
    }
    Ok(())
}

/// Fsyncs a directory, so the entries created, renamed or removed in it are on disk.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

fn parent(path: &Path) -> io::Result<PathBuf> {
    match path.parent() {
        Some(directory) if directory.as_os_str().is_empty() => Ok(PathBuf::from(".")),
        Some(directory) => Ok(directory.to_path_buf()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no directory", path.display()),
        )),
    }
}

/// `.NAME.tmp` beside `NAME`: hidden, and never a name a reader of the directory looks for.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(".tmp");
    Ok(path.with_file_name(temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_the_new_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<OsString> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("state.json")]);
    }

    #[test]
    fn a_private_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        replace_private(&path, b"secret\n").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret\n");
    }

    #[test]
    fn remove_says_whether_there_was_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("context.json");
        assert!(!remove(&path).unwrap());
        replace(&path, b"{}").unwrap();
        assert!(remove(&path).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn rename_moves_across_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        let from = dir.path().join("a/x");
        replace(&from, b"x").unwrap();
        rename(&from, &dir.path().join("b/x")).unwrap();
        assert_eq!(fs::read(dir.path().join("b/x")).unwrap(), b"x");
        assert!(!from.exists());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/state.json");
        assert!(replace(&missing, b"x").is_err());
        assert!(!dir.path().join("missing").exists());
    }
}
