//! `POST /v1/step`: one row of one initialization step on this server, and the status
//! document. Every step is idempotent: running it again after it succeeded (or after a crash
//! part-way) changes nothing more and succeeds again.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use redoubt_config::{Config, Role};
use redoubt_journal::ResyncTargets;
use redoubt_volume::{
    verify_group, Container, CreateLvOptions, GroupLayout, GroupStore, IoMode, LOCK_FILE_NAME,
    MANIFEST_FILE_NAME, MANIFEST_TEMPORARY_FILE_NAME,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::datapath::{DataPath, PathSpec};
use crate::http::now_unix_ms;
use crate::persist::{self, GroupRecord};
use crate::Agent;

/// The ABA's state file in the group directory (sequence state and checkpoint).
pub const ABA_STATE_FILE_NAME: &str = "aba.json";
/// The failover context of a group (steps 18, 19), in the group directory.
pub const FAILOVER_CONTEXT_FILE_NAME: &str = "failover.json";
/// Verify: a peer agent must answer its health check within this.
pub const PEER_HEALTH_TIMEOUT_MS: u64 = 2_000;
/// Verify: a peer's clock may differ from ours by at most this.
pub const PEER_CLOCK_SKEW_MS_MAX: u64 = 5_000;

#[derive(Debug, Deserialize)]
pub struct StepRequest {
    pub group: String,
    pub step: u8,
    #[serde(default)]
    pub row: Option<RowRef>,
    pub config_version: u64,
    pub config_toml: String,
    #[serde(default)]
    pub previous_config_toml: Option<String>,
    #[serde(default)]
    pub destroy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RowRef {
    Server {
        server: String,
        #[serde(default)]
        role: Option<String>,
    },
    Volume {
        volume: String,
    },
}

#[derive(Debug)]
pub struct StepFailure {
    pub status: StatusCode,
    pub message: String,
}

/// What a step body returns: a success message, or a status and a message (without the
/// "step N on S" prefix, which [`run`] adds).
type Outcome = Result<String, (StatusCode, String)>;

fn failed(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, message.into())
}

fn refused(message: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::CONFLICT, message.into())
}

pub async fn run(agent: &Arc<Agent>, request: StepRequest) -> Result<String, StepFailure> {
    let prefix = format!(
        "step {} of group {} on {}",
        request.step, request.group, agent.name
    );
    let fail = |(status, message): (StatusCode, String)| StepFailure {
        status,
        message: format!("{prefix}: {message}"),
    };
    if !(1..=20).contains(&request.step) {
        return Err(fail((
            StatusCode::BAD_REQUEST,
            "no such step (the catalog has steps 1 to 20)".into(),
        )));
    }
    if !redoubt_config::is_valid_name(&request.group) {
        return Err(fail((StatusCode::BAD_REQUEST, "invalid group name".into())));
    }
    if let Some(RowRef::Server { server, .. }) = &request.row {
        if *server != agent.name {
            return Err(fail((
                StatusCode::BAD_REQUEST,
                format!("the row is for server {server}, this is {}", agent.name),
            )));
        }
    }
    let _one_at_a_time = agent.steps.lock().await;
    let new = persist::parse_config("config_toml", &request.config_toml)
        .map_err(|e| fail((StatusCode::UNPROCESSABLE_ENTITY, e)))?;
    let old = match &request.previous_config_toml {
        Some(text) => Some(
            persist::parse_config("previous_config_toml", text)
                .map_err(|e| fail((StatusCode::UNPROCESSABLE_ENTITY, e)))?,
        ),
        None => None,
    };
    let adopted = adopt_config(agent, &request, &new).map_err(fail)?;
    let context = Context {
        agent,
        request: &request,
        new: &new,
        old: old.as_ref(),
    };
    if let Some(RowRef::Server {
        role: Some(role), ..
    }) = &request.row
    {
        let roles = [context.role_new(), context.role_old()];
        if !roles.iter().flatten().any(|known| known.as_str() == role) {
            return Err(fail((
                StatusCode::BAD_REQUEST,
                format!(
                    "the row says role {role}, but {} is not {role} of group {}",
                    agent.name, request.group
                ),
            )));
        }
    }
    let outcome = match request.step {
        1 => Ok("the configuration is saved by the console".to_string()),
        2 => Ok(adopted),
        3 => context.delete_internal_state().await,
        4 => context.delete_replica_lvs().await,
        5 => context.delete_journal_copy().await,
        6 => context.delete_replicas_and_snapshots().await,
        7 => context.delete_group_directory().await,
        8 => context.delete_snapshots(false),
        9 => context.delete_snapshots(true),
        10 => context.delete_journals_and_snapshots().await,
        11 => context.create_containers().await,
        12 | 13 => context.mark_full_sync().await,
        14 => context.reset_lca().await,
        15 => context.reset_aba().await,
        16 => context.load().await,
        17 => context.unload_removed().await,
        18 | 19 => context.delete_failover_context(),
        _ => context.verify().await,
    };
    outcome.map_err(fail)
}

/// Step 2 stores the configuration; steps 3 to 19 also adopt a newer one, since a plan
/// without step 2 (a group deletion) still changes the version the servers verify against.
/// Step 20 only compares: it never stores.
fn adopt_config(agent: &Agent, request: &StepRequest, new: &Config) -> Outcome {
    let current = agent.lock().config.clone();
    let newer = current
        .as_ref()
        .is_none_or(|current| request.config_version > current.version);
    if request.step == 20 || request.step == 1 || (request.step != 2 && !newer) {
        return Ok(String::new());
    }
    let outcome = persist::store_config(
        &agent.state_dir,
        current.as_ref(),
        request.config_version,
        &request.config_toml,
    )
    .map_err(|e| refused(format!("store the configuration: {e}")))?;
    if outcome == persist::StoredConfigOutcome::AlreadyStored {
        return Ok(format!(
            "configuration version {} was already stored",
            request.config_version
        ));
    }
    agent.lock().config = Some(persist::StoredConfig {
        version: request.config_version,
        text: request.config_toml.clone(),
        config: new.clone(),
    });
    Ok(format!(
        "stored configuration version {} ({} bytes)",
        request.config_version,
        request.config_toml.len()
    ))
}

struct Context<'a> {
    agent: &'a Arc<Agent>,
    request: &'a StepRequest,
    new: &'a Config,
    old: Option<&'a Config>,
}

impl Context<'_> {
    fn group(&self) -> &str {
        &self.request.group
    }

    fn name(&self) -> &str {
        &self.agent.name
    }

    fn role_new(&self) -> Option<Role> {
        self.new.group(self.group())?.role_of(self.name())
    }

    fn role_old(&self) -> Option<Role> {
        self.old?.group(self.group())?.role_of(self.name())
    }

    fn production_anywhere(&self) -> bool {
        self.role_new() == Some(Role::Production) || self.role_old() == Some(Role::Production)
    }

    fn spec_new(&self) -> Result<Option<PathSpec>, (StatusCode, String)> {
        PathSpec::from_config(self.new, self.group(), self.name()).map_err(refused)
    }

    fn spec_required(&self) -> Result<PathSpec, (StatusCode, String)> {
        self.spec_new()?.ok_or_else(|| {
            refused(format!(
                "{} has no role in group {} in configuration version {}",
                self.name(),
                self.group(),
                self.request.config_version
            ))
        })
    }

    /// This server's group directories: the old location first (deleting steps clean up
    /// where the data was), then the new one when it moved.
    fn group_dirs(&self) -> Vec<GroupLayout> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for config in self.old.into_iter().chain(Some(self.new)) {
            if let Some(server) = config.server(self.name()) {
                if !dirs.contains(&server.data_dir) {
                    dirs.push(server.data_dir.clone());
                }
            }
        }
        dirs.iter()
            .filter_map(|dir| GroupLayout::new(dir, self.group()).ok())
            .collect()
    }

    fn refuse_on_production(&self, what: &str) -> Result<(), (StatusCode, String)> {
        if self.production_anywhere() {
            return Err(refused(format!(
                "refuse to {what}: {} is the production server of group {}",
                self.name(),
                self.group()
            )));
        }
        Ok(())
    }

    async fn stop(&self) -> Result<bool, (StatusCode, String)> {
        // Block devices of LVs the change removes go before their exports do.
        self.detach_removed().await?;
        stop_path(self.agent, self.group()).await.map_err(failed)
    }

    /// Detaches the block devices (`redoubt attach`) of the LVs the new configuration removes
    /// from this group (all of them when the group is deleted); a device in use fails the step.
    async fn detach_removed(&self) -> Result<Vec<String>, (StatusCode, String)> {
        let removed = self.new.group(self.group()).map(|group| {
            self.old
                .and_then(|old| old.group(self.group()))
                .map(|old| {
                    old.volumes
                        .iter()
                        .filter(|volume| group.volume(&volume.name).is_none())
                        .map(|volume| volume.name.clone())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        if removed.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        crate::attach::detach_group(self.agent, self.group(), removed)
            .await
            .map_err(refused)
    }

    async fn delete_internal_state(&self) -> Outcome {
        let stopped = self.stop().await?;
        let mut deleted = Vec::new();
        for layout in self.group_dirs() {
            for name in [redoubt_datatap::state::STATE_FILE_NAME, ABA_STATE_FILE_NAME] {
                let path = layout.group_dir().join(name);
                if remove_file_if_exists(&path).map_err(failed)? {
                    deleted.push(path.display().to_string());
                }
            }
        }
        Ok(join_sentences(vec![
            stopped_note(stopped),
            if deleted.is_empty() {
                "no internal state to delete".into()
            } else {
                format!("deleted {}", deleted.join(", "))
            },
        ]))
    }

    async fn delete_replica_lvs(&self) -> Outcome {
        let old_group = self.old.and_then(|old| old.group(self.group()));
        let new_group = self.new.group(self.group());
        let doomed: Vec<&redoubt_config::Volume> = match (old_group, new_group) {
            (Some(old), None) => old.volumes.iter().collect(),
            (Some(old), Some(new)) => old
                .volumes
                .iter()
                .filter(|volume| new.volume(&volume.name).is_none())
                .collect(),
            (None, _) => Vec::new(),
        };
        if doomed.is_empty() {
            return Ok("no LV of this group is to be deleted".into());
        }
        let names: Vec<&str> = doomed.iter().map(|v| v.name.as_str()).collect();
        if self.production_anywhere() && !self.request.destroy {
            return Err(refused(format!(
                "refuse to delete LVs {} of group {}: {} is its production server and destroy was not given",
                names.join(", "),
                self.group(),
                self.name()
            )));
        }
        let stopped = self.stop().await?;
        let was_production = self.role_old() == Some(Role::Production);
        let mut deleted = Vec::new();
        let mut kept = Vec::new();
        for layout in self.group_dirs() {
            let directory = layout.replication_dir();
            if !directory.join(MANIFEST_FILE_NAME).exists() {
                continue;
            }
            let mut container = Container::open(&directory)
                .map_err(|e| failed(format!("open container {}: {e}", directory.display())))?;
            for volume in &doomed {
                if was_production && volume.source.is_some() {
                    kept.push(volume.name.clone());
                    continue;
                }
                if container.lv(&volume.name).is_none() {
                    continue;
                }
                container.delete_lv(&volume.name).map_err(|e| {
                    failed(format!(
                        "delete LV {} in {}: {e}",
                        volume.name,
                        directory.display()
                    ))
                })?;
                deleted.push(directory.join(&volume.name).display().to_string());
            }
        }
        let mut sentences = vec![stopped_note(stopped)];
        sentences.push(if deleted.is_empty() {
            format!("LVs {} were already deleted", names.join(", "))
        } else {
            format!("deleted {}", deleted.join(", "))
        });
        if !kept.is_empty() {
            sentences.push(format!(
                "kept production sources of {} (never deleted)",
                kept.join(", ")
            ));
        }
        Ok(join_sentences(sentences))
    }

    async fn delete_journal_copy(&self) -> Outcome {
        self.refuse_on_production("delete the journal and snapshots")?;
        let stopped = self.stop().await?;
        let mut deleted = 0;
        for layout in self.group_dirs() {
            deleted += clear_directory(&layout.journal_dir()).map_err(failed)?;
            deleted += clear_directory(&layout.snapshot_dir()).map_err(failed)?;
            // The undo journal belongs to the old direction (and to the old journal's group
            // id): a replica of the new direction starts a new one.
            deleted += clear_directory(&layout.group_dir().join("undo")).map_err(failed)?;
        }
        Ok(join_sentences(vec![
            stopped_note(stopped),
            format!("deleted {deleted} journal and snapshot files"),
        ]))
    }

    async fn delete_replicas_and_snapshots(&self) -> Outcome {
        self.refuse_on_production("delete the replica LVs")?;
        let stopped = self.stop().await?;
        let mut deleted = Vec::new();
        for layout in self.group_dirs() {
            let directory = layout.replication_dir();
            if directory.join(MANIFEST_FILE_NAME).exists() {
                let mut container = Container::open(&directory)
                    .map_err(|e| failed(format!("open container {}: {e}", directory.display())))?;
                for lv in container.list() {
                    container.delete_lv(&lv.name).map_err(|e| {
                        failed(format!(
                            "delete LV {} in {}: {e}",
                            lv.name,
                            directory.display()
                        ))
                    })?;
                    deleted.push(lv.name);
                }
            }
            clear_directory(&layout.snapshot_dir()).map_err(failed)?;
            // The replica starts over: its journal copy and apply position go with it.
            clear_directory(&layout.journal_dir()).map_err(failed)?;
            remove_file_if_exists(&layout.group_dir().join(ABA_STATE_FILE_NAME)).map_err(failed)?;
        }
        Ok(join_sentences(vec![
            stopped_note(stopped),
            if deleted.is_empty() {
                "no replica LV left to delete; snapshots and journal copy cleared".into()
            } else {
                format!(
                    "deleted replica LVs {}, the snapshots and the journal copy",
                    deleted.join(", ")
                )
            },
        ]))
    }

    async fn delete_group_directory(&self) -> Outcome {
        if self.role_new() == Some(Role::Production)
            || (self.role_old() == Some(Role::Production) && !self.request.destroy)
        {
            return Err(refused(format!(
                "refuse to delete every container of group {}: {} is its production server",
                self.group(),
                self.name()
            )));
        }
        let stopped = self.stop().await?;
        let mut deleted = Vec::new();
        for layout in self.group_dirs() {
            match redoubt_durable::remove_dir_all(layout.group_dir()) {
                Ok(true) => deleted.push(layout.group_dir().display().to_string()),
                Ok(false) => {}
                Err(error) => {
                    return Err(failed(format!(
                        "delete {}: {error}",
                        layout.group_dir().display()
                    )))
                }
            }
        }
        if self.role_new().is_none() {
            update_state(self.agent, |state| {
                state.groups.remove(self.group());
            })
            .map_err(failed)?;
        }
        Ok(join_sentences(vec![
            stopped_note(stopped),
            if deleted.is_empty() {
                format!("nothing of group {} is left on this server", self.group())
            } else {
                format!("deleted {}", deleted.join(", "))
            },
        ]))
    }

    fn delete_snapshots(&self, container_too: bool) -> Outcome {
        self.refuse_on_production("delete snapshots")?;
        let mut deleted = 0;
        for layout in self.group_dirs() {
            let directory = layout.snapshot_dir();
            if container_too {
                match redoubt_durable::remove_dir_all(&directory) {
                    Ok(true) => deleted += 1,
                    Ok(false) => {}
                    Err(error) => {
                        return Err(failed(format!("delete {}: {error}", directory.display())))
                    }
                }
            } else {
                deleted += clear_directory(&directory).map_err(failed)?;
            }
        }
        Ok(if container_too {
            format!("deleted {deleted} snapshot containers")
        } else {
            format!("deleted {deleted} snapshot files")
        })
    }

    async fn delete_journals_and_snapshots(&self) -> Outcome {
        let stopped = self.stop().await?;
        let mut deleted = 0;
        for layout in self.group_dirs() {
            deleted += clear_directory(&layout.journal_dir()).map_err(failed)?;
            deleted += clear_directory(&layout.snapshot_dir()).map_err(failed)?;
            // The undo journal belongs to the old direction (and to the old journal's group
            // id): a replica of the new direction starts a new one.
            deleted += clear_directory(&layout.group_dir().join("undo")).map_err(failed)?;
        }
        Ok(join_sentences(vec![
            stopped_note(stopped),
            format!("deleted {deleted} journal and snapshot files; LVs kept"),
        ]))
    }

    async fn create_containers(&self) -> Outcome {
        let spec = self.spec_required()?;
        tokio::task::spawn_blocking(move || create_containers(&spec))
            .await
            .map_err(|e| failed(format!("create containers: {e}")))?
            .map_err(failed)
    }

    async fn mark_full_sync(&self) -> Outcome {
        if self.role_new() != Some(Role::Production) {
            return Err(refused(format!(
                "{} is not the production server of group {}",
                self.name(),
                self.group()
            )));
        }
        let group = self
            .new
            .group(self.group())
            .ok_or_else(|| refused(format!("group {} is not configured", self.group())))?;
        let names: Vec<String> = if self.request.step == 12 {
            group.volumes.iter().map(|v| v.name.clone()).collect()
        } else {
            let Some(RowRef::Volume { volume }) = &self.request.row else {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "step 13 needs a row naming the volume".into(),
                ));
            };
            if group.volume(volume).is_none() {
                return Err(refused(format!(
                    "LV {volume} is not in group {}",
                    self.group()
                )));
            }
            vec![volume.clone()]
        };
        let targets = if self.request.step == 12 {
            self.servers_without_the_data()
        } else {
            // A new LV: no recovery server has it yet.
            ResyncTargets::Every
        };
        update_state(self.agent, |state| {
            let record = state.groups.entry(self.group().to_string()).or_default();
            let joined = if record.full_sync_requested.is_empty() {
                targets.clone()
            } else {
                redoubt_datatap::state::targets_from(&record.full_sync_targets).widened(&targets)
            };
            record.full_sync_targets = redoubt_datatap::state::targets_field(&joined);
            record.full_sync_requested.extend(names.iter().cloned());
        })
        .map_err(failed)?;
        let started = self.start_pending_full_sync().await?;
        let for_whom = match &targets {
            ResyncTargets::Every => String::new(),
            ResyncTargets::Only(servers) => format!(
                " for {} (the other recovery servers hold the data already)",
                servers.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        Ok(format!(
            "marked {} LV(s) for a full sync{for_whom}: {}{}",
            names.len(),
            names.join(", "),
            if started {
                "; the super transaction has started"
            } else {
                "; it starts with the data path (step 16)"
            }
        ))
    }

    /// The recovery servers step 12 sends every LV to: those that were not recovery servers
    /// of this group with this production before the change. A new group, or a new
    /// production, needs every one.
    fn servers_without_the_data(&self) -> ResyncTargets {
        let Some(new_group) = self.new.group(self.group()) else {
            return ResyncTargets::Every;
        };
        let Some(old_group) = self.old.and_then(|old| old.group(self.group())) else {
            return ResyncTargets::Every;
        };
        if old_group.production != new_group.production {
            return ResyncTargets::Every;
        }
        let newcomers: BTreeSet<String> = new_group
            .recovery
            .iter()
            .filter(|server| !old_group.recovery.contains(server))
            .cloned()
            .collect();
        if newcomers.is_empty() {
            ResyncTargets::Every
        } else {
            ResyncTargets::Only(newcomers)
        }
    }

    /// Hands the LVs marked by steps 12 and 13 to the running datatap as a super transaction
    /// (all their regions resent in order); they stay marked until the datatap has recorded
    /// them durably, so a crash in between only repeats the request.
    async fn start_pending_full_sync(&self) -> Result<bool, (StatusCode, String)> {
        let (engine, names, targets) = {
            let inner = self.agent.lock();
            let engine = inner.paths.get(self.group()).and_then(|path| path.engine());
            let record = inner.state.groups.get(self.group());
            let names: Vec<String> = record
                .map(|record| record.full_sync_requested.iter().cloned().collect())
                .unwrap_or_default();
            let targets = record.map_or(ResyncTargets::Every, |record| {
                redoubt_datatap::state::targets_from(&record.full_sync_targets)
            });
            (engine, names, targets)
        };
        let Some(engine) = engine else {
            return Ok(false);
        };
        if names.is_empty() {
            return Ok(false);
        }
        let lv_ids: Vec<u32> = names
            .iter()
            .map(|name| redoubt_journal::lv_id_for_name(name))
            .collect();
        engine
            .submit(redoubt_datatap::Op::FullSync { lv_ids, targets })
            .await
            .map_err(|error| failed(format!("start the full sync: {error}")))?;
        update_state(self.agent, |state| {
            if let Some(record) = state.groups.get_mut(self.group()) {
                record.full_sync_requested.clear();
                record.full_sync_targets = None;
            }
        })
        .map_err(failed)?;
        Ok(true)
    }

    async fn reset_lca(&self) -> Outcome {
        let spec = self.spec_required()?;
        if spec.role != Role::Production {
            return Err(refused(format!(
                "{} is not the production server of group {}",
                self.name(),
                self.group()
            )));
        }
        let version = self.request.config_version;
        // The datatap restarts without the LVs the change removes: their devices go first.
        self.detach_removed().await?;
        let running = self.agent.lock().paths.remove(self.group());
        let Some(mut path) = running else {
            return Ok(
                "the data path is not loaded; loading it (step 16) starts the send processes"
                    .into(),
            );
        };
        if path.spec.same_engine(&spec) {
            path.restart_lcas(spec.clone(), version).await;
            self.agent
                .lock()
                .paths
                .insert(self.group().to_string(), path);
            record_loaded(self.agent, self.group(), version).map_err(failed)?;
            return Ok(format!(
                "restarted the send processes to {}",
                target_names(&spec)
            ));
        }
        let stopped = path.stop().await;
        start_path(self.agent, spec.clone(), version)
            .await
            .map_err(failed)?;
        stopped.map_err(|e| failed(format!("stop the old data path: {e}")))?;
        Ok(format!(
            "restarted the datatap and the send processes to {}",
            target_names(&spec)
        ))
    }

    async fn reset_aba(&self) -> Outcome {
        let spec = self.spec_required()?;
        if !spec.role.is_recovery() {
            return Err(refused(format!(
                "{} is not a recovery server of group {}",
                self.name(),
                self.group()
            )));
        }
        let stopped = self.stop().await?;
        start_path(self.agent, spec, self.request.config_version)
            .await
            .map_err(failed)?;
        Ok(if stopped {
            "restarted the apply process".into()
        } else {
            "started the apply process".into()
        })
    }

    async fn load(&self) -> Outcome {
        let spec = self.spec_required()?;
        let what = match spec.role {
            Role::Production => "the datatap and send processes",
            _ => "the apply process",
        };
        let current = self
            .agent
            .lock()
            .paths
            .get(self.group())
            .map(|path| path.spec == spec);
        let loaded = match current {
            Some(true) => format!("{what} already loaded"),
            Some(false) => {
                self.stop().await?;
                start_path(self.agent, spec, self.request.config_version)
                    .await
                    .map_err(failed)?;
                format!("reloaded {what} with the new configuration")
            }
            None => {
                start_path(self.agent, spec, self.request.config_version)
                    .await
                    .map_err(failed)?;
                format!("loaded {what}")
            }
        };
        if self.start_pending_full_sync().await? {
            Ok(format!(
                "{loaded}; started the full sync (super transaction)"
            ))
        } else {
            Ok(loaded)
        }
    }

    async fn unload_removed(&self) -> Outcome {
        let detached = self.detach_removed().await?;
        let detached_note = if detached.is_empty() {
            String::new()
        } else {
            format!("detached {}; ", detached.join(", "))
        };
        self.unload_removed_exports()
            .await
            .map(|message| format!("{detached_note}{message}"))
    }

    async fn unload_removed_exports(&self) -> Outcome {
        let Some(spec) = self.spec_new()? else {
            let stopped = self.stop().await?;
            update_state(self.agent, |state| {
                state.groups.remove(self.group());
            })
            .map_err(failed)?;
            return Ok(if stopped {
                format!(
                    "stopped the data path and exports of group {}",
                    self.group()
                )
            } else {
                format!("nothing of group {} is loaded", self.group())
            });
        };
        let running = self
            .agent
            .lock()
            .paths
            .get(self.group())
            .map(|path| path.spec.volumes.clone());
        let Some(running_volumes) = running else {
            return Ok("the data path is not loaded; no export to remove".into());
        };
        let removed: Vec<String> = running_volumes
            .iter()
            .filter(|v| !spec.volumes.iter().any(|w| w.name == v.name))
            .map(|v| v.name.clone())
            .collect();
        let nbd_changed = self
            .agent
            .lock()
            .paths
            .get(self.group())
            .is_some_and(|path| {
                path.spec.nbd_listen != spec.nbd_listen || path.spec.nbd_tls != spec.nbd_tls
            });
        if removed.is_empty() && !nbd_changed {
            return Ok("no export to remove".into());
        }
        self.stop().await?;
        start_path(self.agent, spec, self.request.config_version)
            .await
            .map_err(failed)?;
        Ok(if removed.is_empty() {
            "moved the exports to the new NBD listener".into()
        } else {
            format!("removed the exports of {}", removed.join(", "))
        })
    }

    fn delete_failover_context(&self) -> Outcome {
        let mut deleted = Vec::new();
        for layout in self.group_dirs() {
            let path = layout.group_dir().join(FAILOVER_CONTEXT_FILE_NAME);
            if remove_file_if_exists(&path).map_err(failed)? {
                deleted.push(path.display().to_string());
            }
        }
        Ok(if deleted.is_empty() {
            "no failover context to delete".into()
        } else {
            format!("deleted {}", deleted.join(", "))
        })
    }

    async fn verify(&self) -> Outcome {
        let version = self.request.config_version;
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        let stored = self.agent.config_version();
        if stored != version {
            problems.push(format!(
                "configuration version {stored} is in effect here, expected version {version}"
            ));
        }
        match self.spec_new()? {
            Some(spec) => {
                let disk = {
                    let spec = spec.clone();
                    tokio::task::spawn_blocking(move || {
                        verify_group(&spec.data_dir, &spec.group, spec.capacities, &spec.volumes)
                    })
                    .await
                    .map_err(|e| failed(format!("verify the containers: {e}")))?
                };
                match disk {
                    Ok(mismatches) if mismatches.is_empty() => checked.push(format!(
                        "3 containers and {} LVs as configured",
                        spec.volumes.len()
                    )),
                    Ok(mismatches) => {
                        // Production keeps the LVs a change removed from the group (no step
                        // deletes production data): they are no longer protected, not wrong.
                        let production = spec.role == Role::Production;
                        let mut kept = 0;
                        for mismatch in &mismatches {
                            if production
                                && matches!(
                                    mismatch,
                                    redoubt_volume::Mismatch::LvNotConfigured { .. }
                                )
                            {
                                kept += 1;
                            } else {
                                problems.push(mismatch.to_string());
                            }
                        }
                        if kept > 0 {
                            checked.push(format!(
                                "{kept} LV(s) no longer in the group kept on production"
                            ));
                        }
                    }
                    Err(error) => problems.push(format!("verify the containers: {error}")),
                }
                let inner = self.agent.lock();
                match inner.paths.get(self.group()) {
                    None => problems.push(format!(
                        "the data path of group {} is not loaded, expected loaded{}",
                        self.group(),
                        inner
                            .failures
                            .get(self.group())
                            .map(|f| format!(" (it failed to start: {f})"))
                            .unwrap_or_default()
                    )),
                    Some(path) if path.spec != spec => problems.push(format!(
                        "the data path of group {} runs an older configuration than version {version}",
                        self.group()
                    )),
                    Some(path) => match path.failure() {
                        Some(failure) => problems.push(format!(
                            "the data path of group {} has failed: {failure}",
                            self.group()
                        )),
                        None => {
                            checked.push("data path loaded".into());
                            // Verify does not wait for a super transaction (a full sync of
                            // large LVs takes long); it says that one runs and how far it is.
                            if let Some(engine) = path.engine() {
                                let watermarks = engine.watermarks();
                                let remaining = watermarks
                                    .resync_remaining_bytes
                                    .load(std::sync::atomic::Ordering::Acquire);
                                let total = engine.volumes_bytes().max(1);
                                if remaining > 0 {
                                    checked.push(format!(
                                        "super transaction running: {:.0}% synced",
                                        100.0 - remaining.min(total) as f64 * 100.0 / total as f64
                                    ));
                                }
                            }
                        }
                    },
                }
            }
            None => {
                if self.agent.lock().paths.contains_key(self.group()) {
                    problems.push(format!(
                        "the data path of group {} is loaded, expected none: this server has no role in it",
                        self.group()
                    ));
                }
                let kept = self.role_old() == Some(Role::Production) && !self.request.destroy;
                for layout in self.group_dirs() {
                    if !kept && layout.group_dir().exists() {
                        problems.push(format!(
                            "{} still exists, expected nothing of group {} on this server",
                            layout.group_dir().display(),
                            self.group()
                        ));
                    }
                }
                checked.push(format!("nothing of group {} loaded", self.group()));
            }
        }
        let peers = self.peers();
        let mut checks = Vec::new();
        for (name, address) in peers {
            checks.push((
                name.clone(),
                address.clone(),
                tokio::spawn(check_peer(address, name)),
            ));
        }
        for (name, address, check) in checks {
            match check.await {
                Ok(Ok(note)) => checked.push(note),
                Ok(Err(problem)) => problems.push(format!("peer {name} at {address}: {problem}")),
                Err(error) => problems.push(format!("peer {name} at {address}: {error}")),
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "verified configuration version {version}: {}",
                checked.join(", ")
            ))
        } else {
            Err(refused(format!(
                "verify found {} problem(s): {}",
                problems.len(),
                problems.join("; ")
            )))
        }
    }

    /// The other servers of the group (new configuration, or the old one if it is deleted)
    /// with their agents' addresses.
    fn peers(&self) -> Vec<(String, String)> {
        let (config, group) = match self.new.group(self.group()) {
            Some(group) => (self.new, group),
            None => match self
                .old
                .and_then(|old| old.group(self.group()).map(|g| (old, g)))
            {
                Some(found) => found,
                None => return Vec::new(),
            },
        };
        group
            .members()
            .into_iter()
            .filter(|(name, _)| *name != self.name())
            .filter_map(|(name, _)| {
                config
                    .server(name)
                    .map(|server| (name.to_string(), server.address.clone()))
            })
            .collect()
    }
}

async fn check_peer(address: String, name: String) -> Result<String, String> {
    let before = now_unix_ms();
    let (status, body) = crate::client::request_to(
        &name,
        &address,
        "GET",
        "/v1/health",
        None,
        Duration::from_millis(PEER_HEALTH_TIMEOUT_MS),
    )
    .await?;
    let after = now_unix_ms();
    if status != 200 {
        return Err(format!("health answered HTTP {status}: {body}"));
    }
    let health: Value =
        serde_json::from_str(&body).map_err(|e| format!("health is not JSON: {e}"))?;
    let their_name = health["server"].as_str().unwrap_or_default();
    if their_name != name {
        return Err(format!(
            "the agent there is {their_name:?}, expected {name}"
        ));
    }
    let theirs = health["time_unix_ms"]
        .as_u64()
        .ok_or("health has no time_unix_ms")?;
    let ours = before + (after.saturating_sub(before)) / 2;
    let skew = theirs.abs_diff(ours);
    if skew > PEER_CLOCK_SKEW_MS_MAX {
        return Err(format!(
            "clock differs from ours by {skew} ms (at most {PEER_CLOCK_SKEW_MS_MAX} ms)"
        ));
    }
    Ok(format!("peer {name} reachable (clock within {skew} ms)"))
}

fn create_containers(spec: &PathSpec) -> Result<String, String> {
    let layout = GroupLayout::new(&spec.data_dir, &spec.group).map_err(|e| e.to_string())?;
    let replication_existed = layout.replication_dir().join(MANIFEST_FILE_NAME).exists();
    let mut store = GroupStore::open_or_create(&spec.data_dir, &spec.group, spec.capacities)
        .map_err(|e| {
            format!(
                "open or create the containers in {}: {e}",
                layout.group_dir().display()
            )
        })?;
    let mut actions = Vec::new();
    if !replication_existed {
        actions.push(format!(
            "created containers in {} (replication {})",
            layout.group_dir().display(),
            format_bytes(spec.capacities.replication_bytes)
        ));
    }
    let wanted = [
        spec.capacities.replication_bytes,
        spec.capacities.log_record_file_bytes,
        spec.capacities.snapshot_bytes,
    ];
    for (index, capacity) in wanted.into_iter().enumerate() {
        let container = match index {
            0 => store.replication_mut(),
            1 => store.journal_mut(),
            _ => store.snapshot_mut(),
        };
        if container.capacity_bytes() != capacity {
            container.resize_capacity(capacity).map_err(|e| {
                format!(
                    "resize container {} to {}: {e}",
                    container.path().display(),
                    format_bytes(capacity)
                )
            })?;
            actions.push(format!(
                "resized {} to {}",
                container.path().display(),
                format_bytes(capacity)
            ));
        }
    }
    let mut created = 0;
    for volume in &spec.volumes {
        if let Some(source) = &volume.source {
            fs::metadata(source).map_err(|e| {
                format!(
                    "production source {} of LV {}: {e}",
                    source.display(),
                    volume.name
                )
            })?;
            continue;
        }
        let directory = store.replication().path().to_path_buf();
        match store.replication().lv(&volume.name) {
            Some(info) if info.size_bytes == volume.size_bytes => {}
            Some(_) => {
                store
                    .replication_mut()
                    .grow_lv(&volume.name, volume.size_bytes)
                    .map_err(|e| {
                        format!(
                            "grow LV {} to {} in {}: {e}",
                            volume.name,
                            format_bytes(volume.size_bytes),
                            directory.display()
                        )
                    })?;
                actions.push(format!(
                    "grew LV {} to {}",
                    volume.name,
                    format_bytes(volume.size_bytes)
                ));
            }
            None => {
                store
                    .replication_mut()
                    .create_lv(
                        &volume.name,
                        volume.size_bytes,
                        CreateLvOptions::default(),
                        IoMode::Buffered,
                    )
                    .map_err(|e| {
                        format!(
                            "create LV {} ({}) in {}: {e}",
                            volume.name,
                            format_bytes(volume.size_bytes),
                            directory.display()
                        )
                    })?;
                created += 1;
            }
        }
    }
    if created > 0 {
        actions.push(format!("created {created} LV(s)"));
    }
    Ok(if actions.is_empty() {
        format!(
            "containers and {} LV(s) already as configured",
            spec.volumes.len()
        )
    } else {
        actions.join(", ")
    })
}

/// `4GiB`, `512MiB`, or plain bytes when not a whole unit.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

fn target_names(spec: &PathSpec) -> String {
    if spec.targets.is_empty() {
        return "no recovery server".into();
    }
    spec.targets
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn stopped_note(stopped: bool) -> String {
    if stopped {
        "stopped the data path".into()
    } else {
        String::new()
    }
}

fn join_sentences(sentences: Vec<String>) -> String {
    sentences
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Durably: a state file that came back after a power cut would undo the step.
fn remove_file_if_exists(path: &Path) -> Result<bool, String> {
    redoubt_durable::remove(path).map_err(|error| format!("delete {}: {error}", path.display()))
}

/// Deletes everything in a container directory except its manifest and lock. Returns how
/// many entries went; a missing directory has nothing to delete.
fn clear_directory(directory: &Path) -> Result<usize, String> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(format!("list {}: {error}", directory.display())),
    };
    let keep = [
        MANIFEST_FILE_NAME,
        MANIFEST_TEMPORARY_FILE_NAME,
        LOCK_FILE_NAME,
    ];
    let mut deleted = 0;
    for entry in entries {
        let entry = entry.map_err(|e| format!("list {}: {e}", directory.display()))?;
        if keep.iter().any(|name| entry.file_name() == *name) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path) // durable: synced after the loop
        } else {
            fs::remove_file(&path) // durable: synced after the loop
        };
        match removed {
            Ok(()) => deleted += 1,
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(format!("delete {}: {error}", path.display())),
        }
    }
    if deleted > 0 {
        // Durably: entries that came back after a power cut would undo the step.
        redoubt_durable::sync_directory(directory)
            .map_err(|error| format!("sync {}: {error}", directory.display()))?;
    }
    Ok(deleted)
}

fn update_state(
    agent: &Agent,
    change: impl FnOnce(&mut persist::AgentState),
) -> Result<(), String> {
    let mut inner = agent.lock();
    let mut state = inner.state.clone();
    change(&mut state);
    persist::save_state(&agent.state_dir, &state).map_err(|e| e.to_string())?;
    inner.state = state;
    Ok(())
}

fn record_loaded(agent: &Agent, group: &str, version: u64) -> Result<(), String> {
    update_state(agent, |state| {
        let record = state.groups.entry(group.to_string()).or_default();
        record.data_path_loaded = true;
        record.data_path_version = version;
    })
}

/// Stops the group's data path if it runs; remembers that it is not loaded.
pub(crate) async fn stop_path(agent: &Agent, group: &str) -> Result<bool, String> {
    let running = agent.lock().paths.remove(group);
    agent.lock().failures.remove(group);
    let was_loaded = agent
        .lock()
        .state
        .groups
        .get(group)
        .is_some_and(|record| record.data_path_loaded);
    if was_loaded {
        update_state(agent, |state| {
            if let Some(record) = state.groups.get_mut(group) {
                record.data_path_loaded = false;
            }
        })?;
    }
    match running {
        Some(path) => path.stop().await.map(|()| true),
        None => Ok(false),
    }
}

pub(crate) async fn start_path(agent: &Agent, spec: PathSpec, version: u64) -> Result<(), String> {
    let group = spec.group.clone();
    let path = DataPath::start(spec, version).await?;
    agent.lock().paths.insert(group.clone(), path);
    agent.lock().failures.remove(&group);
    record_loaded(agent, &group, version)
}

/// The `GET /v1/status` document.
pub fn status_json(agent: &Agent) -> Value {
    let inner = agent.lock();
    let mut names: BTreeSet<String> = BTreeSet::new();
    if let Some(stored) = &inner.config {
        for group in &stored.config.groups {
            if group.role_of(&agent.name).is_some() {
                names.insert(group.name.clone());
            }
        }
    }
    names.extend(inner.paths.keys().cloned());
    names.extend(inner.failures.keys().cloned());
    let mut groups = Vec::new();
    for name in names {
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), json!(name));
        let path = inner.paths.get(&name);
        let role = path.map(|p| p.spec.role).or_else(|| {
            inner
                .config
                .as_ref()
                .and_then(|stored| stored.config.group(&name)?.role_of(&agent.name))
        });
        fields.insert("role".into(), json!(role.map(|r| r.as_str())));
        let record: GroupRecord = inner.state.groups.get(&name).cloned().unwrap_or_default();
        match path {
            Some(path) => {
                fields.insert("data_path".into(), json!("loaded"));
                fields.insert("data_path_version".into(), json!(path.version));
                if let Some(failure) = path.failure() {
                    fields.insert("error".into(), json!(failure));
                }
                path.status(&mut fields);
            }
            None => match inner.failures.get(&name) {
                Some(failure) => {
                    fields.insert("data_path".into(), json!("failed"));
                    fields.insert("error".into(), json!(failure));
                }
                None => {
                    fields.insert("data_path".into(), json!("stopped"));
                }
            },
        }
        fields.insert(
            "full_sync_requested".into(),
            json!(record.full_sync_requested),
        );
        fields.insert(
            "attachments".into(),
            Value::Array(crate::attach::attachments_json(agent, Some(&name))),
        );
        groups.push(Value::Object(fields));
    }
    let config_version = inner.config.as_ref().map_or(0, |c| c.version);
    let data_dir = inner
        .config
        .as_ref()
        .and_then(|stored| stored.config.server(&agent.name))
        .map(|server| server.data_dir.clone());
    drop(inner);
    // The failover context this server holds, so that status can name the acting production
    // (read after the lock is released: it is a file).
    for group in &mut groups {
        let Some(fields) = group.as_object_mut() else {
            continue;
        };
        let name = fields.get("name").and_then(Value::as_str).unwrap_or("");
        let context = match &data_dir {
            Some(data_dir) => match crate::failover::load(data_dir, name) {
                Ok(context) => json!(context),
                Err(reason) => {
                    fields.insert("failover_error".into(), json!(reason));
                    Value::Null
                }
            },
            None => Value::Null,
        };
        fields.insert("failover".into(), context);
    }
    json!({
        "server": agent.name,
        "config_version": config_version,
        "groups": groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_formatted_in_whole_units() {
        assert_eq!(format_bytes(4 << 30), "4GiB");
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(4096), "4KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }

    #[test]
    fn clearing_a_container_keeps_its_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        for name in [MANIFEST_FILE_NAME, LOCK_FILE_NAME, "00000001.seg", "x"] {
            fs::write(dir.path().join(name), b"1").unwrap();
        }
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(clear_directory(dir.path()).unwrap(), 3);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![MANIFEST_FILE_NAME, LOCK_FILE_NAME]);
        assert_eq!(clear_directory(&dir.path().join("missing")).unwrap(), 0);
    }
}
