//! The volume store of one Redoubt server: bounded containers per replication group, and
//! open LVs with positional, bounds-checked, optionally direct I/O.
//!
//! # On-disk layout
//!
//! ```text
//! <data_dir>/groups/<group>/
//!     replication/               replication container
//!         .container.json        manifest: kind, capacity_bytes, LVs and their sizes
//!         .container.lock        flock held by the one owning Container handle
//!         <lv name>              sparse LV file (replica LVs, production LVs Redoubt creates)
//!     journal/                   log record file container (LFC)
//!         .container.json        kind and capacity only; segments belong to the journal crate
//!     snapshot/                  snapshot container
//!         .container.json
//! ```
//!
//! Production LVs configured with a `source` (an existing block device or file) live where
//! the operator put them, never in a container.
//!
//! # Invariants
//!
//! - **An LV's space is reserved at creation.** A container accounts by logical size: the sum
//!   of its LV sizes never exceeds its capacity, and creating or growing an LV that would
//!   break that is refused with [`VolumeError::ContainerFull`], changing nothing.
//! - **The manifest never under-reserves.** It is written atomically (temporary file, fsync,
//!   rename, fsync directory) before a file is created or grown and after one is removed.
//! - **Names cannot escape.** LV and group names match `[a-z0-9][a-z0-9._-]{0,62}`, so each is
//!   one path component that is not `.`, `..` or hidden (the manifest and lock are hidden).
//! - **Production sources are never deleted or truncated by this crate.** Source-backed
//!   volumes are opened without `O_CREAT`/`O_TRUNC`, are never `set_len`, only ever punched
//!   with `KEEP_SIZE`, and [`GroupStore::delete_volume`] refuses a spec with a source.
//! - **No partial writes from bad requests.** Every I/O is bounds-checked (with overflow
//!   checks) before it touches the backing.
//!
//! **Architecture Invariant:** this crate knows nothing of the journal format, replication
//! or the network; it stores bytes where it is told and keeps the books of space.

mod aligned;
mod container;
mod error;
mod name;
mod store;
mod sys;
mod volume;

pub use aligned::{AlignedBuf, DIRECT_IO_ALIGNMENT_BYTES};
pub use container::{
    read_manifest_snapshot, Container, ContainerKind, CreateLvOptions, LvInfo, ManifestSnapshot,
    LOCK_FILE_NAME, LV_COUNT_MAX, MANIFEST_FILE_NAME, MANIFEST_FORMAT_VERSION,
    MANIFEST_SIZE_BYTES_MAX, MANIFEST_TEMPORARY_FILE_NAME,
};
pub use error::{Result, VolumeError};
pub use name::{validate_lv_name, LV_NAME_LENGTH_BYTES_MAX};
pub use store::{
    verify_group, ContainerCapacities, GroupLayout, GroupStore, Mismatch, VolumeSpec,
    MISMATCH_COUNT_MAX,
};
pub use volume::{
    Backing, IoMode, TrimOutcome, Volume, BOUNCE_SIZE_BYTES_MAX, HYBRID_DIRECT_WRITE_BYTES_MIN,
};
