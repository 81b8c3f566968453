//! (old config, new config) → the ordered initialization plan of each changed group.
//!
//! Pure: no I/O, no clock. The rules table of `config-initialization.md` is encoded in
//! [`Builder::apply`], one arm per change kind; deviations from the starting rules are
//! explained beside the arm and in `docs/planner.md`.

use std::collections::BTreeMap;
use std::fmt;

use redoubt_config::diff::{diff, Change, ContainerKind};
use redoubt_config::units::Bytes;
use redoubt_config::{Config, Group, Role};

use crate::catalog::{catalog_step, Rows};

/// Choices the configuration file does not carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Deleting a group also deletes the production LVs that Redoubt created. Off by default:
    /// production data is kept unless the user asks for its destruction explicitly.
    pub destroy_production_data: bool,
}

/// A row of a step: a server with its role, or a volume (step 13).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Server { role: Role, server: String },
    Volume { volume: String },
}

/// Something a step deletes, on one server or (server `None`) wherever the group has it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deletion {
    pub server: Option<String>,
    pub what: Deleted,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deleted {
    /// A replica LV on a recovery server.
    Replica {
        volume: String,
    },
    /// A production LV. Only ever planned for a deleted group with `destroy_production_data`.
    ProductionVolume {
        volume: String,
    },
    Journal,
    Snapshots,
    SnapshotContainer,
    ReplicationContainer,
    AllContainers,
    InternalVolumes,
    DeviceFiles,
    FailoverContext,
}

impl Deleted {
    /// Whether this deletes user data (as opposed to metadata that is rebuilt).
    pub fn is_data(&self) -> bool {
        !matches!(self, Deleted::DeviceFiles | Deleted::FailoverContext)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub number: u8,
    /// The catalog's title with its placeholders filled in from the rows: "Copy configuration
    /// to prod-a, dr-b", "Set new logical volume lv_data02 as requiring replication".
    pub title: String,
    /// The title as the catalog (`config-initialization.md`) words it, with S and X.
    pub catalog_title: &'static str,
    /// Empty for steps that run once for the group.
    pub rows: Vec<Row>,
    pub deletes: Vec<Deletion>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlan {
    pub group: String,
    pub changes: Vec<Change>,
    pub steps: Vec<PlannedStep>,
    /// Things the user should know before confirming (not errors).
    pub warnings: Vec<String>,
}

/// A change the planner refuses, with the reason and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    pub group: String,
    pub reason: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}: {}", self.group, self.reason)
    }
}

/// The plans of every group that changed; an empty list means there is nothing to do.
pub fn plan(
    old: Option<&Config>,
    new: &Config,
    options: PlanOptions,
) -> Result<Vec<GroupPlan>, Vec<PlanError>> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for group_diff in diff(old, new) {
        let old_group = old.and_then(|config| config.group(&group_diff.group));
        let new_group = new.group(&group_diff.group);
        let mut builder = Builder::new(&group_diff.group, old_group, new_group, options);
        for change in &group_diff.changes {
            if let Err(reason) = builder.apply(change) {
                errors.push(PlanError {
                    group: group_diff.group.clone(),
                    reason,
                });
            }
        }
        plans.push(builder.finish(group_diff.changes));
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(errors)
    }
}

/// Steps whose rows delete LVs on their server.
const LV_DELETING_STEPS: [u8; 3] = [4, 6, 7];

#[derive(Default)]
struct StepRows {
    rows: Vec<Row>,
    deletes: Vec<Deletion>,
}

struct Builder<'a> {
    group: &'a str,
    old: Option<&'a Group>,
    new: Option<&'a Group>,
    options: PlanOptions,
    steps: BTreeMap<u8, StepRows>,
    warnings: Vec<String>,
}

/// The catalog writes "S" for the servers a step runs on and "X" for the new volume of step
/// 13; a user reads the names instead.
fn filled_title(catalog_title: &str, rows: &[Row]) -> String {
    let servers: Vec<&str> = rows
        .iter()
        .filter_map(|row| match row {
            Row::Server { server, .. } => Some(server.as_str()),
            Row::Volume { .. } => None,
        })
        .collect();
    let volumes: Vec<&str> = rows
        .iter()
        .filter_map(|row| match row {
            Row::Volume { volume } => Some(volume.as_str()),
            Row::Server { .. } => None,
        })
        .collect();
    let words: Vec<String> = catalog_title
        .split(' ')
        .map(|word| match word {
            "S" if !servers.is_empty() => servers.join(", "),
            "X" if !volumes.is_empty() => volumes.join(", "),
            other => other.to_owned(),
        })
        .collect();
    let title = words.join(" ");
    if volumes.len() > 1 {
        title.replacen("logical volume ", "logical volumes ", 1)
    } else {
        title
    }
}

impl<'a> Builder<'a> {
    fn new(
        group: &'a str,
        old: Option<&'a Group>,
        new: Option<&'a Group>,
        options: PlanOptions,
    ) -> Self {
        Builder {
            group,
            old,
            new,
            options,
            steps: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// The group's members in the new config, or the old one for a deleted group.
    fn current(&self) -> Vec<(&'a str, Role)> {
        self.new
            .or(self.old)
            .map(Group::members)
            .unwrap_or_default()
    }

    /// Every server of the old or the new version, each once, with its current role (the
    /// old role for a server that leaves the group).
    fn all(&self) -> Vec<(&'a str, Role)> {
        let mut members = self.current();
        if let Some(old) = self.old {
            for (name, role) in old.members() {
                if !members.iter().any(|(member, _)| *member == name) {
                    members.push((name, role));
                }
            }
        }
        members
    }

    fn recovery(&self) -> Vec<(&'a str, Role)> {
        self.current()
            .into_iter()
            .filter(|(_, role)| role.is_recovery())
            .collect()
    }

    fn production(&self) -> Vec<(&'a str, Role)> {
        self.current()
            .into_iter()
            .filter(|(_, role)| !role.is_recovery())
            .collect()
    }

    fn role(&self, server: &str) -> Option<Role> {
        self.new
            .and_then(|group| group.role_of(server))
            .or_else(|| self.old.and_then(|group| group.role_of(server)))
    }

    fn once(&mut self, number: u8) {
        debug_assert_eq!(catalog_step(number).map(|s| s.rows), Some(Rows::One));
        self.steps.entry(number).or_default();
    }

    /// Whether the server holds production data of this group: it is production in the old
    /// or in the new version. Steps that delete LVs never get a row there, whatever
    /// combination of changes asked for it, unless the user asked to destroy a deleted group.
    fn holds_production_data(&self, server: &str) -> bool {
        [self.old, self.new]
            .into_iter()
            .flatten()
            .any(|group| group.production == server)
    }

    fn on(&mut self, number: u8, servers: &[(&str, Role)]) {
        let destroying = self.new.is_none() && self.options.destroy_production_data;
        let protected: Vec<bool> = servers
            .iter()
            .map(|(server, _)| {
                LV_DELETING_STEPS.contains(&number)
                    && !destroying
                    && self.holds_production_data(server)
            })
            .collect();
        let entry = self.steps.entry(number).or_default();
        for ((server, role), protected) in servers.iter().zip(protected) {
            if protected {
                continue;
            }
            let row = Row::Server {
                role: *role,
                server: server.to_string(),
            };
            if !entry.rows.contains(&row) {
                entry.rows.push(row);
            }
        }
    }

    fn volume_row(&mut self, number: u8, volume: &str) {
        let entry = self.steps.entry(number).or_default();
        let row = Row::Volume {
            volume: volume.to_string(),
        };
        if !entry.rows.contains(&row) {
            entry.rows.push(row);
        }
    }

    fn delete(&mut self, number: u8, server: Option<&str>, what: Deleted, description: String) {
        let lv_deleting = matches!(
            what,
            Deleted::Replica { .. } | Deleted::ReplicationContainer | Deleted::AllContainers
        );
        if lv_deleting && server.is_some_and(|server| self.holds_production_data(server)) {
            return;
        }
        let entry = self.steps.entry(number).or_default();
        let deletion = Deletion {
            server: server.map(str::to_string),
            what,
            description,
        };
        if !entry.deletes.contains(&deletion) {
            entry.deletes.push(deletion);
        }
    }

    fn delete_on(
        &mut self,
        number: u8,
        servers: &[(&str, Role)],
        what: Deleted,
        describe: impl Fn(&str) -> String,
    ) {
        for (server, _) in servers {
            self.delete(number, Some(server), what.clone(), describe(server));
        }
    }

    /// The common tail of most changes: steps that push the new config and restart the data
    /// path where it changed.
    fn copy_config(&mut self) {
        self.once(1);
        let all = self.current();
        self.on(2, &all);
    }

    fn verify(&mut self) {
        let all = self.all();
        self.on(20, &all);
    }

    fn apply(&mut self, change: &Change) -> Result<(), String> {
        let group = self.group;
        match change {
            Change::GroupAdded => {
                self.copy_config();
                let all = self.current();
                self.on(11, &all);
                self.once(12);
                self.on(16, &all);
                self.verify();
            }
            Change::GroupRemoved => self.group_removed(),
            Change::VolumeAdded { volume, .. } | Change::VolumeGrown { volume, .. } => {
                self.copy_config();
                let all = self.current();
                let recovery = self.recovery();
                self.on(11, &all);
                self.volume_row(13, volume);
                self.once(14);
                self.on(15, &recovery);
                self.on(16, &all);
                self.verify();
            }
            Change::VolumeRemoved { volume } => {
                self.copy_config();
                let all = self.current();
                let recovery = self.recovery();
                // Only the replica side: the production LV stays where it is (safety rule).
                self.on(4, &recovery);
                let size = self
                    .old
                    .and_then(|g| g.volume(volume))
                    .map_or(0, |v| v.size_bytes);
                self.delete_on(
                    4,
                    &recovery,
                    Deleted::Replica {
                        volume: volume.clone(),
                    },
                    |server| format!("deletes replica LV {volume} ({}) on {server}", Bytes(size)),
                );
                self.once(14);
                self.on(15, &recovery);
                self.on(16, &all);
                self.on(17, &all);
                self.delete_on(17, &all, Deleted::DeviceFiles, |server| {
                    format!("removes the export and device files of {volume} on {server}")
                });
                self.verify();
            }
            Change::VolumeShrunk { volume, .. } => {
                return Err(format!(
                    "volume {volume} would shrink: shrinking a protected volume is not supported \
                     (it would cut data off every replica); create a new, smaller volume and copy the data"
                ));
            }
            Change::VolumeSourceChanged { volume, .. } => {
                return Err(format!(
                    "volume {volume} would change its source: that makes a different disk the protected one; \
                     remove the volume in one change and add the new one in another"
                ));
            }
            Change::ContainerResized { container, .. } => self.container_resized(*container),
            Change::ContainersMoved { server, role } => {
                if !role.is_recovery() {
                    return Err(format!(
                        "the data_dir of production server {server} would move: its journal and the volumes \
                         Redoubt created there would be left behind; fail over to a recovery server first"
                    ));
                }
                self.recovery_containers_moved(server, *role);
            }
            Change::RecoveryServerAdded { server } => {
                let role = self.role(server).unwrap_or(Role::Recovery1);
                let target = [(server.as_str(), role)];
                self.copy_config();
                self.on(11, &target);
                self.once(12);
                self.once(14);
                self.on(15, &target);
                let production = self.production();
                self.on(16, &production);
                self.on(16, &target);
                let all = self.all();
                self.on(18, &all);
                self.delete_on(18, &all, Deleted::FailoverContext, |server| {
                    format!("deletes the failover context of {group} on {server}")
                });
                self.verify();
            }
            Change::RecoveryServerRemoved { server } => {
                let role = self.role(server).unwrap_or(Role::Recovery1);
                let target = [(server.as_str(), role)];
                self.copy_config();
                self.on(7, &target);
                self.delete(
                    7,
                    Some(server),
                    Deleted::AllContainers,
                    format!(
                        "deletes every container of {group} on {server}: replicas, journal and snapshots \
                         (the server leaves the group; nothing unsent is needed there)"
                    ),
                );
                self.once(14);
                self.on(17, &target);
                self.delete(
                    17,
                    Some(server),
                    Deleted::DeviceFiles,
                    format!("removes the exports of {group} on {server}"),
                );
                let all = self.all();
                self.on(18, &all);
                self.delete_on(18, &all, Deleted::FailoverContext, |server| {
                    format!("deletes the failover context of {group} on {server}")
                });
                self.verify();
            }
            Change::ProductionChanged { old, new, swapped } => {
                self.production_changed(old, new, *swapped)
            }
            Change::RecoveryOrderChanged
            | Change::TunableChanged { .. }
            | Change::ServerAddressChanged { .. } => {
                self.copy_config();
                self.once(14);
                let recovery = self.recovery();
                self.on(15, &recovery);
                self.verify();
            }
            Change::NbdListenChanged { server } => {
                let role = self.role(server).unwrap_or(Role::Production);
                let target = [(server.as_str(), role)];
                self.copy_config();
                self.on(16, &target);
                self.on(17, &target);
                self.delete(
                    17,
                    Some(server),
                    Deleted::DeviceFiles,
                    format!("removes the old NBD exports of {group} on {server}"),
                );
                self.verify();
            }
        }
        Ok(())
    }

    fn group_removed(&mut self) {
        let group = self.group;
        let Some(old) = self.old else {
            return;
        };
        let recovery = self.recovery();
        let all = self.all();
        self.once(1);
        self.once(3);
        self.delete(
            3,
            None,
            Deleted::InternalVolumes,
            format!(
                "deletes the internal LVs of {group} (sequence state, bitmaps, redo journal on {})",
                old.production
            ),
        );
        self.on(4, &recovery);
        for volume in &old.volumes {
            self.delete_on(
                4,
                &recovery,
                Deleted::Replica {
                    volume: volume.name.clone(),
                },
                |server| {
                    format!(
                        "deletes replica LV {} ({}) on {server}",
                        volume.name,
                        Bytes(volume.size_bytes)
                    )
                },
            );
        }
        if self.options.destroy_production_data {
            let production = self.production();
            self.on(4, &production);
            for volume in old.volumes.iter().filter(|volume| volume.source.is_none()) {
                self.delete(
                    4,
                    Some(&old.production),
                    Deleted::ProductionVolume {
                        volume: volume.name.clone(),
                    },
                    format!(
                        "DESTROYS production LV {} ({}) on {} (requested with --destroy)",
                        volume.name,
                        Bytes(volume.size_bytes),
                        old.production
                    ),
                );
            }
        } else {
            self.warnings.push(format!(
                "production LVs of {group} on {} are kept; pass --destroy to delete them too",
                old.production
            ));
        }
        self.on(7, &recovery);
        self.delete_on(7, &recovery, Deleted::AllContainers, |server| {
            format!("deletes every container of {group} on {server}: journal and snapshots")
        });
        self.on(17, &all);
        self.delete_on(17, &all, Deleted::DeviceFiles, |server| {
            format!("removes the exports of {group} on {server}")
        });
        self.on(18, &all);
        self.delete_on(18, &all, Deleted::FailoverContext, |server| {
            format!("deletes the failover context of {group} on {server}")
        });
        self.verify();
    }

    fn container_resized(&mut self, container: ContainerKind) {
        let group = self.group;
        let all = self.current();
        let recovery = self.recovery();
        self.copy_config();
        match container {
            ContainerKind::LogRecordFile => {
                self.on(5, &recovery);
                self.delete_on(5, &recovery, Deleted::Journal, |server| {
                    format!(
                        "deletes the journal of {group} on {server} (the send process drains it first; \
                         anything it cannot send is covered by a bitmap resync)"
                    )
                });
                self.delete_on(5, &recovery, Deleted::Snapshots, |server| {
                    format!("deletes every snapshot of {group} on {server}")
                });
                self.on(11, &all);
                self.once(14);
                self.on(15, &recovery);
                self.on(16, &all);
            }
            ContainerKind::Snapshot => {
                // Every server has the group's three containers (production's snapshot
                // container is empty but configured), so 11 and 16 run everywhere and verify
                // finds the new capacity on each.
                self.on(8, &recovery);
                self.delete_on(8, &recovery, Deleted::Snapshots, |server| {
                    format!("deletes every snapshot of {group} on {server}")
                });
                self.on(9, &recovery);
                self.delete_on(9, &recovery, Deleted::SnapshotContainer, |server| {
                    format!("deletes the snapshot container of {group} on {server}")
                });
                self.on(11, &all);
                self.on(16, &all);
            }
            ContainerKind::Replication => {
                // The production server's replication container is resized in place by step 11
                // and never emptied: it may hold the production LVs themselves.
                self.on(6, &recovery);
                self.delete_on(6, &recovery, Deleted::ReplicationContainer, |server| {
                    format!("deletes every replica LV of {group} on {server} (rebuilt by the full sync of step 12)")
                });
                self.delete_on(6, &recovery, Deleted::Snapshots, |server| {
                    format!("deletes every snapshot of {group} on {server}")
                });
                self.on(11, &all);
                self.once(12);
                self.on(15, &recovery);
                self.on(16, &all);
            }
        }
        self.verify();
    }

    /// A recovery server's data_dir moved: rather than steps 5, 6, 8 and 9 on it, the
    /// equivalent single step 7 empties the old location, then the new one is built and
    /// synced like a new recovery server.
    fn recovery_containers_moved(&mut self, server: &str, role: Role) {
        let group = self.group;
        let target = [(server, role)];
        self.copy_config();
        self.on(7, &target);
        self.delete(
            7,
            Some(server),
            Deleted::AllContainers,
            format!("deletes every container of {group} at the old data_dir of {server} (rebuilt at the new one)"),
        );
        self.on(11, &target);
        self.once(12);
        self.once(14);
        self.on(15, &target);
        self.on(16, &target);
        self.verify();
    }

    fn production_changed(&mut self, old: &str, new: &str, swapped: bool) {
        let group = self.group;
        let all = self.all();
        let current = self.current();
        let recovery = self.recovery();
        self.copy_config();
        self.once(3);
        self.delete(
            3,
            None,
            Deleted::InternalVolumes,
            format!("deletes the internal LVs of {group} (sequence state, bitmaps)"),
        );
        // Step 10 deletes journals and snapshots, which describe the old direction. It keeps
        // the replica LVs: they may be the only copy if the new production fails during the
        // full sync of step 12, which overwrites them anyway.
        self.once(10);
        self.delete_on(10, &all, Deleted::Journal, |server| {
            format!("deletes the journal of {group} on {server} (unsent data is covered by the full sync of step 12)")
        });
        let old_recovery: Vec<(&str, Role)> = self
            .old
            .map(|g| {
                g.members()
                    .into_iter()
                    .filter(|(_, role)| role.is_recovery())
                    .collect()
            })
            .unwrap_or_default();
        self.delete_on(10, &old_recovery, Deleted::Snapshots, |server| {
            format!("deletes every snapshot of {group} on {server}")
        });
        self.on(11, &current);
        self.once(12);
        self.once(14);
        self.on(15, &recovery);
        self.on(16, &current);
        self.on(17, &all);
        self.delete_on(17, &all, Deleted::DeviceFiles, |server| {
            format!("removes the exports of {group} on {server}")
        });
        self.on(18, &all);
        self.delete_on(18, &all, Deleted::FailoverContext, |server| {
            format!("deletes the failover context of {group} on {server}")
        });
        self.on(19, &current);
        self.delete_on(19, &current, Deleted::FailoverContext, |server| {
            format!("deletes the failover context of {group} on {server}")
        });
        self.verify();
        if !swapped {
            let created: Vec<&str> = self
                .new
                .map(|g| {
                    g.volumes
                        .iter()
                        .filter(|v| v.source.is_none())
                        .map(|v| v.name.as_str())
                        .collect()
                })
                .unwrap_or_default();
            if !created.is_empty() {
                self.warnings.push(format!(
                    "{new} is new to {group}: volumes without `source` ({}) start empty there, and the full sync \
                     of step 12 makes every replica a copy of them; to keep the data of {old}, fail over to a \
                     recovery server instead",
                    created.join(", ")
                ));
            }
        }
    }

    fn finish(mut self, changes: Vec<Change>) -> GroupPlan {
        let mut steps = Vec::new();
        for (number, mut step) in std::mem::take(&mut self.steps) {
            let Some(catalog) = catalog_step(number) else {
                continue;
            };
            // A per-server step whose every row was withheld (production data) does not run.
            if catalog.rows != Rows::One && step.rows.is_empty() {
                continue;
            }
            step.rows.sort();
            // Deletions read in the same order as the rows: production, recovery 1, recovery 2.
            let position = |server: &Option<String>| {
                step.rows
                    .iter()
                    .position(|row| matches!(row, Row::Server { server: s, .. } if Some(s) == server.as_ref()))
                    .unwrap_or(usize::MAX)
            };
            step.deletes.sort_by(|a, b| {
                (position(&a.server), &a.what).cmp(&(position(&b.server), &b.what))
            });
            steps.push(PlannedStep {
                number,
                title: filled_title(catalog.title, &step.rows),
                catalog_title: catalog.title,
                rows: step.rows,
                deletes: step.deletes,
            });
        }
        GroupPlan {
            group: self.group.to_string(),
            changes,
            steps,
            warnings: self.warnings,
        }
    }
}
