//! The one error type of this crate. Callers distinguish cases (a full container is an
//! operator problem, an I/O error is a disk problem), so every case is its own variant.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// An operating-system call failed; `action` says what we were doing.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An LV name is not `[a-z0-9][a-z0-9._-]{0,62}` or would escape its container.
    #[error("invalid LV name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// Reserving `requested_bytes` would overcommit the container; nothing was changed.
    #[error(
        "container {} is full: requested {requested_bytes} bytes, {available_bytes} bytes available",
        container.display()
    )]
    ContainerFull {
        container: PathBuf,
        requested_bytes: u64,
        available_bytes: u64,
    },

    /// Shrinking a container below the space its LVs already reserve is refused.
    #[error(
        "refuse to set capacity of container {} to {capacity_bytes} bytes: LVs reserve {usage_bytes} bytes",
        container.display()
    )]
    CapacityBelowUsage {
        container: PathBuf,
        capacity_bytes: u64,
        usage_bytes: u64,
    },

    /// The container manifest already holds an LV of that name.
    #[error("LV {name:?} already exists in container {}", container.display())]
    LvExists { container: PathBuf, name: String },

    /// The container manifest holds no LV of that name.
    #[error("LV {name:?} not found in container {}", container.display())]
    LvNotFound { container: PathBuf, name: String },

    /// A file is in the way of an LV the manifest does not know; we never clobber it.
    #[error("refuse to create LV over unexpected existing file {}", path.display())]
    UnexpectedFile { path: PathBuf },

    /// LVs never shrink: shrinking would silently drop replicated data.
    #[error("refuse to shrink LV {} from {size_bytes} to {requested_bytes} bytes", path.display())]
    ShrinkRefused {
        path: PathBuf,
        size_bytes: u64,
        requested_bytes: u64,
    },

    /// LV sizes must be whole direct-I/O blocks so O_DIRECT never touches bytes past the end.
    #[error("LV size {size_bytes} bytes is not a positive multiple of {alignment_bytes} bytes")]
    SizeUnaligned {
        size_bytes: u64,
        alignment_bytes: u64,
    },

    /// An I/O request reaches past the end of the volume (or overflows u64).
    #[error(
        "I/O at offset {offset} length {length_bytes} is out of bounds of {} ({size_bytes} bytes)",
        path.display()
    )]
    OutOfBounds {
        path: PathBuf,
        offset: u64,
        length_bytes: u64,
        size_bytes: u64,
    },

    /// A production `source` is smaller than the LV size the configuration asks for.
    #[error(
        "source {} holds {source_bytes} bytes, less than the configured LV size {configured_bytes} bytes",
        path.display()
    )]
    SourceTooSmall {
        path: PathBuf,
        source_bytes: u64,
        configured_bytes: u64,
    },

    /// A production `source` is neither a regular file nor a block device.
    #[error("source {} is neither a regular file nor a block device", path.display())]
    SourceNotSupported { path: PathBuf },

    /// Production data behind a `source` is never deleted or truncated by Redoubt.
    #[error("refuse to delete LV {name:?}: it is backed by production source {}", source_path.display())]
    SourceNotDeletable { name: String, source_path: PathBuf },

    /// An LV file on disk does not have the size its manifest records.
    #[error("LV file {} holds {actual_bytes} bytes, manifest records {expected_bytes} bytes", path.display())]
    LvSizeMismatch {
        path: PathBuf,
        expected_bytes: u64,
        actual_bytes: u64,
    },

    /// The container manifest cannot be parsed or breaks an invariant.
    #[error("corrupt container manifest {}: {reason}", path.display())]
    ManifestCorrupt { path: PathBuf, reason: String },

    /// A container was expected on disk and is not there.
    #[error("container manifest {} does not exist", path.display())]
    ContainerMissing { path: PathBuf },

    /// A container manifest is already there; creating it again would drop its LVs.
    #[error("container manifest {} already exists", path.display())]
    ContainerExists { path: PathBuf },

    /// Another process (or handle) holds the container; two owners would double-book space.
    #[error("container {} is locked by another owner", path.display())]
    ContainerLocked { path: PathBuf },

    /// The container already holds the most LVs we allow.
    #[error("container {} already holds {lv_count_max} LVs", container.display())]
    TooManyLvs {
        container: PathBuf,
        lv_count_max: usize,
    },
}

impl VolumeError {
    /// Wraps an `io::Error` with what we were doing and on which path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        VolumeError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
