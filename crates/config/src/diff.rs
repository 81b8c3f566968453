//! Semantic diff of two configurations: what changed, in the terms the planner reasons about.
//!
//! A server-level change (address, data_dir, nbd_listen) is reported once per group that uses
//! the server, because each group's initialization must react to it.

use std::fmt;
use std::path::PathBuf;

use crate::model::{Config, Group, Role, Server};
use crate::units::{Bytes, Seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerKind {
    Replication,
    LogRecordFile,
    Snapshot,
}

impl fmt::Display for ContainerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerKind::Replication => "replication container",
            ContainerKind::LogRecordFile => "log record file container",
            ContainerKind::Snapshot => "snapshot container",
        })
    }
}

/// One semantic change to one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    GroupAdded,
    GroupRemoved,
    VolumeAdded {
        volume: String,
        size_bytes: u64,
    },
    VolumeRemoved {
        volume: String,
    },
    VolumeGrown {
        volume: String,
        old_size_bytes: u64,
        new_size_bytes: u64,
    },
    /// Not supported: the planner refuses it (a replica cannot be shrunk safely under apply).
    VolumeShrunk {
        volume: String,
        old_size_bytes: u64,
        new_size_bytes: u64,
    },
    /// Not supported: the planner refuses it (production data would silently change identity).
    VolumeSourceChanged {
        volume: String,
        old: Option<PathBuf>,
        new: Option<PathBuf>,
    },
    ContainerResized {
        container: ContainerKind,
        old_bytes: u64,
        new_bytes: u64,
    },
    /// The server's data_dir changed, so every container of the group on it moves.
    ContainersMoved {
        server: String,
        role: Role,
    },
    RecoveryServerAdded {
        server: String,
    },
    RecoveryServerRemoved {
        server: String,
    },
    /// Same recovery servers, recovery 1 and recovery 2 exchanged.
    RecoveryOrderChanged,
    /// A new production server; `swapped` when it was a recovery server of the group before.
    ProductionChanged {
        old: String,
        new: String,
        swapped: bool,
    },
    TunableChanged {
        field: &'static str,
        old: String,
        new: String,
    },
    ServerAddressChanged {
        server: String,
        old: String,
        new: String,
    },
    NbdListenChanged {
        server: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::GroupAdded => write!(f, "new group"),
            Change::GroupRemoved => write!(f, "group deleted"),
            Change::VolumeAdded { volume, size_bytes } => {
                write!(f, "volume {volume} added ({})", Bytes(*size_bytes))
            }
            Change::VolumeRemoved { volume } => write!(f, "volume {volume} removed"),
            Change::VolumeGrown {
                volume,
                old_size_bytes,
                new_size_bytes,
            } => write!(
                f,
                "volume {volume} grown from {} to {}",
                Bytes(*old_size_bytes),
                Bytes(*new_size_bytes)
            ),
            Change::VolumeShrunk {
                volume,
                old_size_bytes,
                new_size_bytes,
            } => write!(
                f,
                "volume {volume} shrunk from {} to {}",
                Bytes(*old_size_bytes),
                Bytes(*new_size_bytes)
            ),
            Change::VolumeSourceChanged { volume, old, new } => write!(
                f,
                "volume {volume} source changed from {} to {}",
                show_source(old),
                show_source(new)
            ),
            Change::ContainerResized {
                container,
                old_bytes,
                new_bytes,
            } => write!(
                f,
                "{container} resized from {} to {}",
                Bytes(*old_bytes),
                Bytes(*new_bytes)
            ),
            Change::ContainersMoved { server, role } => {
                write!(f, "containers moved on {server} ({role}): data_dir changed")
            }
            Change::RecoveryServerAdded { server } => write!(f, "recovery server {server} added"),
            Change::RecoveryServerRemoved { server } => {
                write!(f, "recovery server {server} removed")
            }
            Change::RecoveryOrderChanged => write!(f, "recovery 1 and recovery 2 exchanged"),
            Change::ProductionChanged {
                old,
                new,
                swapped: true,
            } => {
                write!(f, "roles swapped: production {old} -> {new}")
            }
            Change::ProductionChanged {
                old,
                new,
                swapped: false,
            } => {
                write!(f, "production server replaced: {old} -> {new}")
            }
            Change::TunableChanged { field, old, new } => write!(f, "{field}: {old} -> {new}"),
            Change::ServerAddressChanged { server, old, new } => {
                write!(f, "server {server} address: {old} -> {new}")
            }
            Change::NbdListenChanged { server } => {
                write!(f, "server {server} nbd_listen or nbd_tls changed")
            }
        }
    }
}

fn show_source(source: &Option<PathBuf>) -> String {
    source
        .as_ref()
        .map_or("(created by Redoubt)".to_string(), |path| {
            path.display().to_string()
        })
}

/// The changes of one group, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDiff {
    pub group: String,
    pub changes: Vec<Change>,
}

/// Every group that changed between `old` (None: nothing configured yet) and `new`, in the
/// order the groups appear (new config first, then groups only the old config had).
pub fn diff(old: Option<&Config>, new: &Config) -> Vec<GroupDiff> {
    let empty = Config::default();
    let old = old.unwrap_or(&empty);
    let mut diffs = Vec::new();
    for new_group in &new.groups {
        let changes = match old.group(&new_group.name) {
            None => vec![Change::GroupAdded],
            Some(old_group) => group_changes(old, old_group, new, new_group),
        };
        if !changes.is_empty() {
            diffs.push(GroupDiff {
                group: new_group.name.clone(),
                changes,
            });
        }
    }
    for old_group in &old.groups {
        if new.group(&old_group.name).is_none() {
            diffs.push(GroupDiff {
                group: old_group.name.clone(),
                changes: vec![Change::GroupRemoved],
            });
        }
    }
    diffs
}

fn group_changes(
    old_config: &Config,
    old: &Group,
    new_config: &Config,
    new: &Group,
) -> Vec<Change> {
    let mut changes = Vec::new();
    volume_changes(old, new, &mut changes);
    let containers = [
        (
            ContainerKind::Replication,
            old.containers.replication_bytes,
            new.containers.replication_bytes,
        ),
        (
            ContainerKind::LogRecordFile,
            old.containers.log_record_file_bytes,
            new.containers.log_record_file_bytes,
        ),
        (
            ContainerKind::Snapshot,
            old.containers.snapshot_bytes,
            new.containers.snapshot_bytes,
        ),
    ];
    for (container, old_bytes, new_bytes) in containers {
        if old_bytes != new_bytes {
            changes.push(Change::ContainerResized {
                container,
                old_bytes,
                new_bytes,
            });
        }
    }
    membership_changes(old, new, &mut changes);
    tunable_changes(old, new, &mut changes);
    // Server-level changes matter to this group only for servers it has in both versions.
    for (name, role) in new.members() {
        if old.role_of(name).is_none() {
            continue;
        }
        let (Some(old_server), Some(new_server)) =
            (old_config.server(name), new_config.server(name))
        else {
            continue;
        };
        server_changes(old_server, new_server, role, &mut changes);
    }
    changes
}

fn volume_changes(old: &Group, new: &Group, changes: &mut Vec<Change>) {
    for volume in &new.volumes {
        match old.volume(&volume.name) {
            None => changes.push(Change::VolumeAdded {
                volume: volume.name.clone(),
                size_bytes: volume.size_bytes,
            }),
            Some(previous) => {
                if volume.size_bytes > previous.size_bytes {
                    changes.push(Change::VolumeGrown {
                        volume: volume.name.clone(),
                        old_size_bytes: previous.size_bytes,
                        new_size_bytes: volume.size_bytes,
                    });
                } else if volume.size_bytes < previous.size_bytes {
                    changes.push(Change::VolumeShrunk {
                        volume: volume.name.clone(),
                        old_size_bytes: previous.size_bytes,
                        new_size_bytes: volume.size_bytes,
                    });
                }
                if volume.source != previous.source {
                    changes.push(Change::VolumeSourceChanged {
                        volume: volume.name.clone(),
                        old: previous.source.clone(),
                        new: volume.source.clone(),
                    });
                }
            }
        }
    }
    for volume in &old.volumes {
        if new.volume(&volume.name).is_none() {
            changes.push(Change::VolumeRemoved {
                volume: volume.name.clone(),
            });
        }
    }
}

fn membership_changes(old: &Group, new: &Group, changes: &mut Vec<Change>) {
    if old.production != new.production {
        changes.push(Change::ProductionChanged {
            old: old.production.clone(),
            new: new.production.clone(),
            swapped: old.recovery.contains(&new.production),
        });
    }
    for server in &new.recovery {
        if old.role_of(server).is_none() {
            changes.push(Change::RecoveryServerAdded {
                server: server.clone(),
            });
        }
    }
    // An old production that leaves the group is covered by ProductionChanged: it is never
    // treated as a removed recovery server, whose containers would be deleted.
    for (server, role) in old.members() {
        if role.is_recovery() && new.role_of(server).is_none() {
            changes.push(Change::RecoveryServerRemoved {
                server: server.to_string(),
            });
        }
    }
    if old.production == new.production
        && old.recovery.len() == 2
        && new.recovery.len() == 2
        && old.recovery[0] == new.recovery[1]
        && old.recovery[1] == new.recovery[0]
    {
        changes.push(Change::RecoveryOrderChanged);
    }
}

fn tunable_changes(old: &Group, new: &Group, changes: &mut Vec<Change>) {
    if old.mode != new.mode {
        changes.push(Change::TunableChanged {
            field: "mode",
            old: old.mode.as_str().into(),
            new: new.mode.as_str().into(),
        });
    }
    if old.retention_seconds != new.retention_seconds {
        changes.push(Change::TunableChanged {
            field: "retention",
            old: Seconds(old.retention_seconds).to_string(),
            new: Seconds(new.retention_seconds).to_string(),
        });
    }
    if old.throttle_bytes_per_second != new.throttle_bytes_per_second {
        changes.push(Change::TunableChanged {
            field: "throttle",
            old: rate(old.throttle_bytes_per_second),
            new: rate(new.throttle_bytes_per_second),
        });
    }
    if old.compression != new.compression {
        changes.push(Change::TunableChanged {
            field: "compression",
            old: old.compression.as_str().into(),
            new: new.compression.as_str().into(),
        });
    }
}

fn rate(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        "0 (unlimited)".into()
    } else {
        format!("{}/s", Bytes(bytes_per_second))
    }
}

fn server_changes(old: &Server, new: &Server, role: Role, changes: &mut Vec<Change>) {
    if old.address != new.address {
        changes.push(Change::ServerAddressChanged {
            server: new.name.clone(),
            old: old.address.clone(),
            new: new.address.clone(),
        });
    }
    if old.data_dir != new.data_dir {
        changes.push(Change::ContainersMoved {
            server: new.name.clone(),
            role,
        });
    }
    // Turning NBD TLS on or off restarts the exports like a new listen address.
    if (old.nbd_listen != new.nbd_listen || old.nbd_tls != new.nbd_tls) && role == Role::Production
    {
        changes.push(Change::NbdListenChanged {
            server: new.name.clone(),
        });
    }
}
