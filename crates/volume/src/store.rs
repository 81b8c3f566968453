//! The containers of one replication group on one server, and "verify configuration".

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::container::{
    read_manifest_snapshot, Container, ContainerKind, CreateLvOptions, LOCK_FILE_NAME,
    MANIFEST_FILE_NAME, MANIFEST_TEMPORARY_FILE_NAME,
};
use crate::error::{Result, VolumeError};
use crate::name::validate_lv_name;
use crate::volume::{IoMode, Volume};

/// Most mismatches one verify reports. A directory full of junk should produce a readable
/// report, not an unbounded one; the last entry says how many were left out.
pub const MISMATCH_COUNT_MAX: usize = 1000;

/// Where a group's containers live: `<data_dir>/groups/<group>/{replication,journal,snapshot}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    group_dir: PathBuf,
}

impl GroupLayout {
    /// The group name follows the LV name rules, so it too stays one path component.
    pub fn new(data_dir: &Path, group: &str) -> Result<GroupLayout> {
        validate_lv_name(group)?;
        Ok(GroupLayout {
            group_dir: data_dir.join("groups").join(group),
        })
    }

    pub fn group_dir(&self) -> &Path {
        &self.group_dir
    }

    pub fn replication_dir(&self) -> PathBuf {
        self.group_dir.join("replication")
    }

    /// The log record file container (journal). The journal crate owns its contents.
    pub fn journal_dir(&self) -> PathBuf {
        self.group_dir.join("journal")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.group_dir.join("snapshot")
    }
}

/// Configured capacities of a group's three containers (`[group.containers]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerCapacities {
    pub replication_bytes: u64,
    pub log_record_file_bytes: u64,
    pub snapshot_bytes: u64,
}

/// One configured LV (`[[group.volume]]`) as this server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    /// Production only: an existing block device or file. `None` means a file Redoubt
    /// creates in the replication container.
    pub source: Option<PathBuf>,
}

/// The three containers of one group on this server, held open (and locked).
#[derive(Debug)]
pub struct GroupStore {
    layout: GroupLayout,
    replication: Container,
    journal: Container,
    snapshot: Container,
}

impl GroupStore {
    /// Opens the group's containers, creating any that do not exist with the configured
    /// capacity. Existing containers keep their recorded capacity; `verify` reports a
    /// difference and [`Container::resize_capacity`] applies it.
    pub fn open_or_create(
        data_dir: &Path,
        group: &str,
        capacities: ContainerCapacities,
    ) -> Result<GroupStore> {
        let layout = GroupLayout::new(data_dir, group)?;
        let replication = Container::open_or_create(
            &layout.replication_dir(),
            ContainerKind::Replication,
            capacities.replication_bytes,
        )?;
        let journal = Container::open_or_create(
            &layout.journal_dir(),
            ContainerKind::LogRecordFile,
            capacities.log_record_file_bytes,
        )?;
        let snapshot = Container::open_or_create(
            &layout.snapshot_dir(),
            ContainerKind::Snapshot,
            capacities.snapshot_bytes,
        )?;
        Ok(GroupStore {
            layout,
            replication,
            journal,
            snapshot,
        })
    }

    pub fn layout(&self) -> &GroupLayout {
        &self.layout
    }

    pub fn replication(&self) -> &Container {
        &self.replication
    }

    pub fn replication_mut(&mut self) -> &mut Container {
        &mut self.replication
    }

    /// The journal container: only its directory and capacity matter here.
    pub fn journal(&self) -> &Container {
        &self.journal
    }

    pub fn journal_mut(&mut self) -> &mut Container {
        &mut self.journal
    }

    pub fn snapshot(&self) -> &Container {
        &self.snapshot
    }

    pub fn snapshot_mut(&mut self) -> &mut Container {
        &mut self.snapshot
    }

    /// Opens the LV `spec` describes, creating it in the replication container if it has no
    /// source and does not exist yet. An existing LV of a different size is an error
    /// (resizing is an explicit [`Container::grow_lv`]).
    pub fn ensure_volume(
        &mut self,
        spec: &VolumeSpec,
        options: CreateLvOptions,
        io_mode: IoMode,
    ) -> Result<Volume> {
        if spec.source.is_some() || self.replication.lv(&spec.name).is_some() {
            return self.open_volume(spec, io_mode);
        }
        self.replication
            .create_lv(&spec.name, spec.size_bytes, options, io_mode)
    }

    /// Opens an existing LV: the source for source-backed specs, else the container file.
    pub fn open_volume(&self, spec: &VolumeSpec, io_mode: IoMode) -> Result<Volume> {
        validate_lv_name(&spec.name)?;
        if let Some(source) = &spec.source {
            return Volume::open_source(source, spec.size_bytes, io_mode);
        }
        let volume = self.replication.open_lv(&spec.name, io_mode)?;
        if volume.size_bytes() != spec.size_bytes {
            return Err(VolumeError::LvSizeMismatch {
                path: volume.path().to_path_buf(),
                expected_bytes: spec.size_bytes,
                actual_bytes: volume.size_bytes(),
            });
        }
        Ok(volume)
    }

    /// Deletes the LV file of `spec` from the replication container.
    ///
    /// Guard: a spec with a `source` is refused before anything is touched. Production data
    /// Redoubt did not create is never deleted (nor truncated) by this crate.
    pub fn delete_volume(&mut self, spec: &VolumeSpec) -> Result<()> {
        if let Some(source) = &spec.source {
            return Err(VolumeError::SourceNotDeletable {
                name: spec.name.clone(),
                source_path: source.clone(),
            });
        }
        self.replication.delete_lv(&spec.name)
    }

    /// [`verify_group`] for this store's layout.
    pub fn verify(
        &self,
        capacities: ContainerCapacities,
        specs: &[VolumeSpec],
    ) -> Result<Vec<Mismatch>> {
        verify_layout(&self.layout, capacities, specs)
    }
}

/// One way the disk differs from the configuration. `Display` gives a sentence naming the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The container's manifest does not exist.
    ContainerMissing { path: PathBuf },
    /// The manifest exists but cannot be read or is invalid.
    ContainerUnreadable { path: PathBuf, reason: String },
    /// The manifest records a different kind of container.
    ContainerKindDiffers {
        path: PathBuf,
        expected: ContainerKind,
        recorded: ContainerKind,
    },
    CapacityDiffers {
        path: PathBuf,
        configured_bytes: u64,
        recorded_bytes: u64,
    },
    /// A configured LV is not recorded in the replication container manifest.
    LvNotInManifest { path: PathBuf },
    /// A configured and recorded LV has no file.
    LvMissing { path: PathBuf },
    /// The LV file's length differs from the configured size.
    LvSizeDiffers {
        path: PathBuf,
        configured_bytes: u64,
        actual_bytes: u64,
    },
    /// The manifest reserves a different size than configured.
    LvRecordedSizeDiffers {
        path: PathBuf,
        configured_bytes: u64,
        recorded_bytes: u64,
    },
    /// The manifest holds an LV the configuration does not name.
    LvNotConfigured { path: PathBuf },
    /// A file in the replication container that no manifest entry accounts for.
    UnexpectedFile { path: PathBuf },
    /// A configured production source cannot be opened or measured.
    SourceUnusable { path: PathBuf, reason: String },
    SourceTooSmall {
        path: PathBuf,
        configured_bytes: u64,
        source_bytes: u64,
    },
    /// More mismatches than [`MISMATCH_COUNT_MAX`]; this many were not listed.
    Truncated { omitted_count: usize },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::ContainerMissing { path } => write!(f, "container manifest {} is missing", path.display()),
            Mismatch::ContainerUnreadable { path, reason } => {
                write!(f, "container manifest {} is unreadable: {reason}", path.display())
            }
            Mismatch::ContainerKindDiffers { path, expected, recorded } => write!(
                f,
                "container {} records kind {recorded:?}, expected {expected:?}",
                path.display()
            ),
            Mismatch::CapacityDiffers { path, configured_bytes, recorded_bytes } => write!(
                f,
                "container {} has capacity {recorded_bytes} bytes, configured {configured_bytes} bytes",
                path.display()
            ),
            Mismatch::LvNotInManifest { path } => {
                write!(f, "LV {} is configured but not recorded in its container", path.display())
            }
            Mismatch::LvMissing { path } => write!(f, "LV file {} is missing", path.display()),
            Mismatch::LvSizeDiffers { path, configured_bytes, actual_bytes } => write!(
                f,
                "LV file {} holds {actual_bytes} bytes, configured {configured_bytes} bytes",
                path.display()
            ),
            Mismatch::LvRecordedSizeDiffers { path, configured_bytes, recorded_bytes } => write!(
                f,
                "LV {} is recorded with {recorded_bytes} bytes, configured {configured_bytes} bytes",
                path.display()
            ),
            Mismatch::LvNotConfigured { path } => {
                write!(f, "LV {} is in its container but not in the configuration", path.display())
            }
            Mismatch::UnexpectedFile { path } => write!(f, "unexpected file {} in container", path.display()),
            Mismatch::SourceUnusable { path, reason } => write!(f, "source {} is unusable: {reason}", path.display()),
            Mismatch::SourceTooSmall { path, configured_bytes, source_bytes } => write!(
                f,
                "source {} holds {source_bytes} bytes, less than the configured {configured_bytes} bytes",
                path.display()
            ),
            Mismatch::Truncated { omitted_count } => write!(f, "{omitted_count} more mismatches not listed"),
        }
    }
}

/// Compares the group's containers under `data_dir` with the configuration, for the "verify
/// configuration" step. Reads manifests without locking, so it works while an agent runs.
/// An empty list means the disk matches. Errors are reserved for failing to look at all.
pub fn verify_group(
    data_dir: &Path,
    group: &str,
    capacities: ContainerCapacities,
    specs: &[VolumeSpec],
) -> Result<Vec<Mismatch>> {
    verify_layout(&GroupLayout::new(data_dir, group)?, capacities, specs)
}

fn verify_layout(
    layout: &GroupLayout,
    capacities: ContainerCapacities,
    specs: &[VolumeSpec],
) -> Result<Vec<Mismatch>> {
    let mut mismatches = Vec::new();
    let containers = [
        (
            layout.journal_dir(),
            ContainerKind::LogRecordFile,
            capacities.log_record_file_bytes,
        ),
        (
            layout.snapshot_dir(),
            ContainerKind::Snapshot,
            capacities.snapshot_bytes,
        ),
    ];
    for (path, kind, capacity_bytes) in containers {
        verify_container(&path, kind, capacity_bytes, &mut mismatches);
    }
    verify_replication(layout, capacities.replication_bytes, specs, &mut mismatches)?;
    for spec in specs {
        if let Some(source) = &spec.source {
            verify_source(source, spec.size_bytes, &mut mismatches);
        }
    }
    if mismatches.len() > MISMATCH_COUNT_MAX {
        let omitted_count = mismatches.len() - MISMATCH_COUNT_MAX;
        mismatches.truncate(MISMATCH_COUNT_MAX);
        mismatches.push(Mismatch::Truncated { omitted_count });
    }
    assert!(mismatches.len() <= MISMATCH_COUNT_MAX + 1);
    Ok(mismatches)
}

/// Checks one container's manifest; returns its recorded LVs when it could be read.
fn verify_container(
    path: &Path,
    kind: ContainerKind,
    capacity_bytes: u64,
    mismatches: &mut Vec<Mismatch>,
) -> Option<Vec<crate::container::LvInfo>> {
    let manifest_path = path.join(MANIFEST_FILE_NAME);
    if !manifest_path.exists() {
        mismatches.push(Mismatch::ContainerMissing {
            path: manifest_path,
        });
        return None;
    }
    let snapshot = match read_manifest_snapshot(path) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let reason = error.to_string();
            mismatches.push(Mismatch::ContainerUnreadable {
                path: manifest_path,
                reason,
            });
            return None;
        }
    };
    if snapshot.kind != kind {
        mismatches.push(Mismatch::ContainerKindDiffers {
            path: path.to_path_buf(),
            expected: kind,
            recorded: snapshot.kind,
        });
    }
    if snapshot.capacity_bytes != capacity_bytes {
        mismatches.push(Mismatch::CapacityDiffers {
            path: path.to_path_buf(),
            configured_bytes: capacity_bytes,
            recorded_bytes: snapshot.capacity_bytes,
        });
    }
    Some(snapshot.lvs)
}

fn verify_replication(
    layout: &GroupLayout,
    capacity_bytes: u64,
    specs: &[VolumeSpec],
    mismatches: &mut Vec<Mismatch>,
) -> Result<()> {
    let directory = layout.replication_dir();
    let Some(recorded) = verify_container(
        &directory,
        ContainerKind::Replication,
        capacity_bytes,
        mismatches,
    ) else {
        return Ok(());
    };
    let configured: Vec<&VolumeSpec> = specs.iter().filter(|spec| spec.source.is_none()).collect();
    for spec in &configured {
        let path = directory.join(&spec.name);
        if validate_lv_name(&spec.name).is_err() {
            mismatches.push(Mismatch::LvNotInManifest { path });
            continue;
        }
        match recorded.iter().find(|lv| lv.name == spec.name) {
            None => mismatches.push(Mismatch::LvNotInManifest { path: path.clone() }),
            Some(lv) if lv.size_bytes != spec.size_bytes => {
                mismatches.push(Mismatch::LvRecordedSizeDiffers {
                    path: path.clone(),
                    configured_bytes: spec.size_bytes,
                    recorded_bytes: lv.size_bytes,
                })
            }
            Some(_) => {}
        }
        match fs::symlink_metadata(&path) {
            Ok(metadata) if !metadata.is_file() => {
                mismatches.push(Mismatch::UnexpectedFile { path })
            }
            Ok(metadata) if metadata.len() != spec.size_bytes => {
                mismatches.push(Mismatch::LvSizeDiffers {
                    path,
                    configured_bytes: spec.size_bytes,
                    actual_bytes: metadata.len(),
                })
            }
            Ok(_) => {}
            Err(_) => mismatches.push(Mismatch::LvMissing { path }),
        }
    }
    for lv in &recorded {
        if !configured.iter().any(|spec| spec.name == lv.name) {
            mismatches.push(Mismatch::LvNotConfigured {
                path: directory.join(&lv.name),
            });
        }
    }
    let known: BTreeSet<&str> = recorded.iter().map(|lv| lv.name.as_str()).collect();
    let entries = fs::read_dir(&directory)
        .map_err(|e| VolumeError::io("list container directory", &directory, e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| VolumeError::io("list container directory", &directory, e))?;
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        let bookkeeping = [
            MANIFEST_FILE_NAME,
            MANIFEST_TEMPORARY_FILE_NAME,
            LOCK_FILE_NAME,
        ];
        if bookkeeping.contains(&name.as_ref()) || known.contains(name.as_ref()) {
            continue;
        }
        mismatches.push(Mismatch::UnexpectedFile { path: entry.path() });
        if mismatches.len() > MISMATCH_COUNT_MAX * 2 {
            break; // Enough to fill the report; do not walk a huge directory to the end.
        }
    }
    Ok(())
}

fn verify_source(source: &Path, configured_bytes: u64, mismatches: &mut Vec<Mismatch>) {
    // Read-only check: open the source read-only so verify can never modify production data.
    let measured = fs::File::open(source).and_then(|file| {
        let metadata = file.metadata()?;
        if std::os::unix::fs::FileTypeExt::is_block_device(&metadata.file_type()) {
            crate::sys::block_device_size_bytes(&file)
        } else if metadata.is_file() {
            Ok(metadata.len())
        } else {
            Err(std::io::Error::other(
                "neither a regular file nor a block device",
            ))
        }
    });
    match measured {
        Ok(source_bytes) if source_bytes < configured_bytes => {
            mismatches.push(Mismatch::SourceTooSmall {
                path: source.to_path_buf(),
                configured_bytes,
                source_bytes,
            })
        }
        Ok(_) => {}
        Err(error) => mismatches.push(Mismatch::SourceUnusable {
            path: source.to_path_buf(),
            reason: error.to_string(),
        }),
    }
}
