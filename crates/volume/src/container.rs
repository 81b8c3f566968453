//! A container: a directory with a capacity in bytes from which LV files reserve space.
//!
//! Accounting is by logical size: creating an LV reserves all of it, even though the file is
//! sparse, so the pool can never be overcommitted and an LV never runs out of pool mid-write.
//! The manifest (`.container.json`) is the record of reservations; it is rewritten atomically
//! (temporary file, fsync, rename, fsync directory) and always *before* a file grows and
//! *after* a file is removed, so a crash can only leave space over-reserved, never
//! under-reserved.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aligned::DIRECT_IO_ALIGNMENT_BYTES;
use crate::error::{Result, VolumeError};
use crate::name::validate_lv_name;
use crate::sys::{self, FallocateMode};
use crate::volume::{IoMode, Volume};

/// File name of the manifest inside a container. It starts with a dot, which no LV name can.
pub const MANIFEST_FILE_NAME: &str = ".container.json";
/// Temporary name the manifest is written under before the rename that publishes it.
pub const MANIFEST_TEMPORARY_FILE_NAME: &str = ".container.json.tmp";
/// File holding the `flock` that makes one `Container` handle the only owner.
pub const LOCK_FILE_NAME: &str = ".container.lock";

/// Most LVs one container holds. Far above any real group; bounds manifest size and scans.
pub const LV_COUNT_MAX: usize = 4096;
/// Largest manifest we read. A full manifest of `LV_COUNT_MAX` entries is about 400 KiB.
pub const MANIFEST_SIZE_BYTES_MAX: u64 = 4 << 20;
/// Manifest format written by this version.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Which data of a replication group a container holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    /// Replica LVs, and production LVs that Redoubt creates.
    Replication,
    /// Redo/undo journal segments (LFC). Owned by the journal crate; we keep its capacity.
    LogRecordFile,
    /// Snapshot copy-on-write data.
    Snapshot,
}

/// One LV as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvInfo {
    pub name: String,
    pub size_bytes: u64,
    pub preallocated: bool,
}

/// How to create an LV file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateLvOptions {
    /// Allocate every block up front with fallocate, so even the filesystem under the
    /// container cannot run out of space for this LV later. Off by default: sparse files
    /// make creation instant.
    pub preallocate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LvRecord {
    size_bytes: u64,
    preallocated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    kind: ContainerKind,
    capacity_bytes: u64,
    lvs: BTreeMap<String, LvRecord>,
}

impl Manifest {
    /// Sum of reserved LV sizes; `None` on overflow (only possible in a corrupt manifest).
    fn usage_bytes(&self) -> Option<u64> {
        self.lvs
            .values()
            .try_fold(0u64, |sum, lv| sum.checked_add(lv.size_bytes))
    }

    /// The invariants every manifest satisfies, checked after reading and before writing.
    fn check(&self) -> std::result::Result<(), String> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "unsupported format_version {}",
                self.format_version
            ));
        }
        if self.lvs.len() > LV_COUNT_MAX {
            return Err(format!("{} LVs, more than {LV_COUNT_MAX}", self.lvs.len()));
        }
        for (name, lv) in &self.lvs {
            validate_lv_name(name).map_err(|e| e.to_string())?;
            if lv.size_bytes == 0 || lv.size_bytes % DIRECT_IO_ALIGNMENT_BYTES as u64 != 0 {
                return Err(format!(
                    "LV {name:?} has invalid size {} bytes",
                    lv.size_bytes
                ));
            }
        }
        match self.usage_bytes() {
            Some(usage) if usage <= self.capacity_bytes => Ok(()),
            Some(usage) => Err(format!(
                "LVs reserve {usage} bytes, over capacity {}",
                self.capacity_bytes
            )),
            None => Err("LV sizes overflow u64".to_string()),
        }
    }
}

/// A bounded pool of LV files in one directory. Holding a `Container` means holding its lock:
/// no other handle, in this or another process, can change its reservations meanwhile.
#[derive(Debug)]
pub struct Container {
    path: PathBuf,
    manifest: Manifest,
    _lock: File,
}

impl Container {
    /// Creates the directory (if needed) and a fresh manifest. Fails if a manifest exists.
    pub fn create(path: &Path, kind: ContainerKind, capacity_bytes: u64) -> Result<Container> {
        fs::create_dir_all(path)
            .map_err(|e| VolumeError::io("create container directory", path, e))?;
        if let Some(parent) = path.parent() {
            sys::sync_directory(parent)
                .map_err(|e| VolumeError::io("sync directory", parent, e))?;
        }
        let lock = lock_container(path)?;
        let manifest_path = path.join(MANIFEST_FILE_NAME);
        if manifest_path.exists() {
            return Err(VolumeError::ContainerExists {
                path: manifest_path,
            });
        }
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            kind,
            capacity_bytes,
            lvs: BTreeMap::new(),
        };
        write_manifest(path, &manifest)?;
        Ok(Container {
            path: path.to_path_buf(),
            manifest,
            _lock: lock,
        })
    }

    /// Opens an existing container and checks its manifest.
    pub fn open(path: &Path) -> Result<Container> {
        let manifest_path = path.join(MANIFEST_FILE_NAME);
        if !manifest_path.exists() {
            return Err(VolumeError::ContainerMissing {
                path: manifest_path,
            });
        }
        let lock = lock_container(path)?;
        let manifest = read_manifest(path)?;
        Ok(Container {
            path: path.to_path_buf(),
            manifest,
            _lock: lock,
        })
    }

    /// Opens the container if its manifest exists, else creates it. An existing container
    /// keeps its recorded capacity; changing it is an explicit [`Container::resize_capacity`].
    pub fn open_or_create(
        path: &Path,
        kind: ContainerKind,
        capacity_bytes: u64,
    ) -> Result<Container> {
        if path.join(MANIFEST_FILE_NAME).exists() {
            let container = Container::open(path)?;
            if container.kind() != kind {
                return Err(VolumeError::ManifestCorrupt {
                    path: path.join(MANIFEST_FILE_NAME),
                    reason: format!(
                        "holds a {:?} container, expected {kind:?}",
                        container.kind()
                    ),
                });
            }
            return Ok(container);
        }
        Container::create(path, kind, capacity_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> ContainerKind {
        self.manifest.kind
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.manifest.capacity_bytes
    }

    /// Bytes reserved by LVs (their logical sizes).
    pub fn usage_bytes(&self) -> u64 {
        // The manifest was checked on load and before every write, so the sum fits.
        self.manifest.usage_bytes().unwrap_or(u64::MAX)
    }

    pub fn available_bytes(&self) -> u64 {
        self.capacity_bytes().saturating_sub(self.usage_bytes())
    }

    /// LVs in name order.
    pub fn list(&self) -> Vec<LvInfo> {
        self.manifest
            .lvs
            .iter()
            .map(|(name, lv)| LvInfo {
                name: name.clone(),
                size_bytes: lv.size_bytes,
                preallocated: lv.preallocated,
            })
            .collect()
    }

    /// The LV if the manifest holds it.
    pub fn lv(&self, name: &str) -> Option<LvInfo> {
        self.manifest.lvs.get(name).map(|lv| LvInfo {
            name: name.to_string(),
            size_bytes: lv.size_bytes,
            preallocated: lv.preallocated,
        })
    }

    /// Path of the LV file `name`, after checking the name cannot leave the container.
    pub fn lv_path(&self, name: &str) -> Result<PathBuf> {
        validate_lv_name(name)?;
        let path = self.path.join(name);
        assert_eq!(path.parent(), Some(self.path.as_path()));
        Ok(path)
    }

    /// Reserves `size_bytes` and creates a sparse LV file of that size. On any error the
    /// container is unchanged: no reservation and no file.
    pub fn create_lv(
        &mut self,
        name: &str,
        size_bytes: u64,
        options: CreateLvOptions,
        io_mode: IoMode,
    ) -> Result<Volume> {
        let path = self.lv_path(name)?;
        check_lv_size(size_bytes)?;
        if self.manifest.lvs.contains_key(name) {
            return Err(VolumeError::LvExists {
                container: self.path.clone(),
                name: name.to_string(),
            });
        }
        if self.manifest.lvs.len() >= LV_COUNT_MAX {
            return Err(VolumeError::TooManyLvs {
                container: self.path.clone(),
                lv_count_max: LV_COUNT_MAX,
            });
        }
        self.check_fits(size_bytes)?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(VolumeError::UnexpectedFile { path });
        }

        let mut next = self.manifest.clone();
        let record = LvRecord {
            size_bytes,
            preallocated: options.preallocate,
        };
        next.lvs.insert(name.to_string(), record);
        write_manifest(&self.path, &next)?;
        if let Err(error) = create_lv_file(&path, size_bytes, options.preallocate) {
            // Undo the reservation; if even that fails, the manifest over-reserves, which is
            // the safe direction and `verify` reports the missing file.
            // The manifest is rewritten (and its directory synced) right after.
            let _ = fs::remove_file(&path); // durable: synced by write_manifest
            let _ = write_manifest(&self.path, &self.manifest);
            return Err(error);
        }
        self.manifest = next;
        sys::sync_directory(&self.path)
            .map_err(|e| VolumeError::io("sync container directory", &self.path, e))?;
        Volume::open_container_file(&path, size_bytes, options.preallocate, io_mode)
    }

    /// Opens an LV the manifest holds.
    pub fn open_lv(&self, name: &str, io_mode: IoMode) -> Result<Volume> {
        let path = self.lv_path(name)?;
        let record = self.record(name)?;
        Volume::open_container_file(&path, record.size_bytes, record.preallocated, io_mode)
    }

    /// Grows an LV to `size_bytes`, reserving the difference first. Shrinking is refused.
    /// Open [`Volume`] handles keep their old size until reopened.
    pub fn grow_lv(&mut self, name: &str, size_bytes: u64) -> Result<()> {
        let path = self.lv_path(name)?;
        check_lv_size(size_bytes)?;
        let record = self.record(name)?.clone();
        if size_bytes < record.size_bytes {
            return Err(VolumeError::ShrinkRefused {
                path,
                size_bytes: record.size_bytes,
                requested_bytes: size_bytes,
            });
        }
        if size_bytes > record.size_bytes {
            self.check_fits(size_bytes - record.size_bytes)?;
            let mut next = self.manifest.clone();
            let grown = LvRecord {
                size_bytes,
                preallocated: record.preallocated,
            };
            next.lvs.insert(name.to_string(), grown);
            write_manifest(&self.path, &next)?;
            self.manifest = next;
        }
        // Grow the file up to the recorded size even when the manifest already says so: a
        // crash (or error) between the manifest write and set_len is repaired by retrying.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| VolumeError::io("open LV file", &path, e))?;
        let file_bytes = file
            .metadata()
            .map_err(|e| VolumeError::io("stat LV file", &path, e))?
            .len();
        if file_bytes >= size_bytes {
            return Ok(());
        }
        file.set_len(size_bytes)
            .map_err(|e| VolumeError::io("grow LV file", &path, e))?;
        if record.preallocated {
            let grown_bytes = size_bytes - file_bytes;
            sys::fallocate(&file, FallocateMode::Allocate, file_bytes, grown_bytes)
                .map_err(|e| VolumeError::io("preallocate LV file", &path, e))?;
        }
        file.sync_all()
            .map_err(|e| VolumeError::io("sync LV file", &path, e))
    }

    /// Deletes an LV file and releases its reservation. Only files this container created
    /// (and its manifest records) can be deleted; production `source` volumes never live in
    /// a container, and [`crate::GroupStore::delete_volume`] refuses them outright.
    pub fn delete_lv(&mut self, name: &str) -> Result<()> {
        let path = self.lv_path(name)?;
        self.record(name)?;
        // durable: the container directory is synced right after.
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Already gone (a crash after the unlink): finish by releasing the reservation.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(VolumeError::io("delete LV file", &path, error)),
        }
        sys::sync_directory(&self.path)
            .map_err(|e| VolumeError::io("sync container directory", &self.path, e))?;
        let mut next = self.manifest.clone();
        next.lvs.remove(name);
        write_manifest(&self.path, &next)?;
        self.manifest = next;
        Ok(())
    }

    /// Sets the capacity. Refuses to go below what LVs already reserve.
    pub fn resize_capacity(&mut self, capacity_bytes: u64) -> Result<()> {
        let usage_bytes = self.usage_bytes();
        if capacity_bytes < usage_bytes {
            return Err(VolumeError::CapacityBelowUsage {
                container: self.path.clone(),
                capacity_bytes,
                usage_bytes,
            });
        }
        let mut next = self.manifest.clone();
        next.capacity_bytes = capacity_bytes;
        write_manifest(&self.path, &next)?;
        self.manifest = next;
        Ok(())
    }

    fn record(&self, name: &str) -> Result<&LvRecord> {
        self.manifest
            .lvs
            .get(name)
            .ok_or_else(|| VolumeError::LvNotFound {
                container: self.path.clone(),
                name: name.to_string(),
            })
    }

    fn check_fits(&self, requested_bytes: u64) -> Result<()> {
        let available_bytes = self.available_bytes();
        if requested_bytes > available_bytes {
            return Err(VolumeError::ContainerFull {
                container: self.path.clone(),
                requested_bytes,
                available_bytes,
            });
        }
        Ok(())
    }
}

fn check_lv_size(size_bytes: u64) -> Result<()> {
    let alignment_bytes = DIRECT_IO_ALIGNMENT_BYTES as u64;
    if size_bytes == 0 || !size_bytes.is_multiple_of(alignment_bytes) {
        return Err(VolumeError::SizeUnaligned {
            size_bytes,
            alignment_bytes,
        });
    }
    Ok(())
}

fn create_lv_file(path: &Path, size_bytes: u64, preallocate: bool) -> Result<()> {
    // create_new (O_EXCL) so a file that appeared since our check is never clobbered.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| VolumeError::io("create LV file", path, e))?;
    file.set_len(size_bytes)
        .map_err(|e| VolumeError::io("size LV file", path, e))?;
    if preallocate {
        sys::fallocate(&file, FallocateMode::Allocate, 0, size_bytes)
            .map_err(|e| VolumeError::io("preallocate LV file", path, e))?;
    }
    file.sync_all()
        .map_err(|e| VolumeError::io("sync LV file", path, e))
}

fn lock_container(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| VolumeError::io("open container lock", &lock_path, e))?;
    match sys::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(VolumeError::ContainerLocked {
            path: path.to_path_buf(),
        }),
        Err(error) => Err(VolumeError::io("lock container", &lock_path, error)),
    }
}

/// Reads and checks a manifest without taking the container lock (used by verify too).
fn read_manifest(container_path: &Path) -> Result<Manifest> {
    let path = container_path.join(MANIFEST_FILE_NAME);
    let file =
        File::open(&path).map_err(|e| VolumeError::io("open container manifest", &path, e))?;
    let mut bytes = Vec::new();
    file.take(MANIFEST_SIZE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| VolumeError::io("read container manifest", &path, e))?;
    if bytes.len() as u64 > MANIFEST_SIZE_BYTES_MAX {
        return Err(VolumeError::ManifestCorrupt {
            path,
            reason: format!("larger than {MANIFEST_SIZE_BYTES_MAX} bytes"),
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| VolumeError::ManifestCorrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    manifest
        .check()
        .map_err(|reason| VolumeError::ManifestCorrupt { path, reason })?;
    Ok(manifest)
}

/// Capacity and LVs as a manifest on disk records them, read without locking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestSnapshot {
    pub kind: ContainerKind,
    pub capacity_bytes: u64,
    pub lvs: Vec<LvInfo>,
}

/// Reads the manifest of the container at `path` without taking its lock, for inspection
/// while an agent owns the container.
pub fn read_manifest_snapshot(path: &Path) -> Result<ManifestSnapshot> {
    let manifest = read_manifest(path)?;
    Ok(ManifestSnapshot {
        kind: manifest.kind,
        capacity_bytes: manifest.capacity_bytes,
        lvs: manifest
            .lvs
            .iter()
            .map(|(name, lv)| LvInfo {
                name: name.clone(),
                size_bytes: lv.size_bytes,
                preallocated: lv.preallocated,
            })
            .collect(),
    })
}

fn write_manifest(container_path: &Path, manifest: &Manifest) -> Result<()> {
    // Pair assertion: what we write must pass the same check as what we read.
    if let Err(reason) = manifest.check() {
        panic!("refusing to write an invalid manifest: {reason}");
    }
    let temporary = container_path.join(MANIFEST_TEMPORARY_FILE_NAME);
    let target = container_path.join(MANIFEST_FILE_NAME);
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| VolumeError::ManifestCorrupt {
        path: target.clone(),
        reason: e.to_string(),
    })?;
    assert!(bytes.len() as u64 <= MANIFEST_SIZE_BYTES_MAX);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|e| VolumeError::io("create temporary manifest", &temporary, e))?;
    file.write_all(&bytes)
        .map_err(|e| VolumeError::io("write temporary manifest", &temporary, e))?;
    file.sync_all()
        .map_err(|e| VolumeError::io("sync temporary manifest", &temporary, e))?;
    // durable: the container directory is synced right after.
    fs::rename(&temporary, &target).map_err(|e| VolumeError::io("publish manifest", &target, e))?;
    sys::sync_directory(container_path)
        .map_err(|e| VolumeError::io("sync container directory", container_path, e))
}
