//! Failover and failback on one server (`docs/recovery-api.md`, `docs/failover.md`).
//!
//! The console orchestrates; each route here does one server's part, idempotently enough to
//! be retried. The **failover context** (`failover.json` in the group directory, the same
//! document on every server of the group) says which server acts as production and which
//! servers follow it; [`adjust`] turns the configured roles into the acting ones, so a
//! restarted agent comes back in the acting role. Steps 18/19 delete the context when a
//! configuration change makes the roles explicit.
//!
//! Sequence numbers continue across a failover: the promoted server's datatap journals from
//! `point + 1` under the group's journal id, so markers, restore points and followers'
//! resume positions keep their meaning.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST …/failover/drain` | `{"timeout_ms"?}` | production closes its write gate and waits until every target holds everything: `{"seq"}` |
//! | `POST …/failover/promote` | `{"context","to_seq"?}` | a recovery server applies (or rolls back) to the point and becomes production: `{"point_seq","group_id"}` |
//! | `POST …/failover/fence` | `{"after_seq"}` | an (old) production stops its data path; the regions its journal wrote after `after_seq`: `{"regions","complete"}` |
//! | `POST …/failover/resync` | `{"context","regions","point_seq"}` | the acting production adds the context's targets and resends those regions and its own since the point: `{"checkpoint_seq","regions"}` |
//! | `POST …/failover/follow` | `{"context","checkpoint_seq","group_id"?}` | this server becomes a recovery server of the acting production, resuming after `checkpoint_seq` |
//! | `POST …/failover/context` | `{"context"}` (null: delete) | writes the context only (commit) |
//! | `GET …/failover/context` | | `{"server","context"}` (null when none) |

// Handlers return axum's `Response` as their error as is: boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use redoubt_config::{Config, Role};
use redoubt_datatap::Op;
use redoubt_journal::{GroupId, RecordKind, StdFs};
use redoubt_volume::{GroupLayout, VolumeSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::datapath::PathSpec;
use crate::http::error;
use crate::steps::FAILOVER_CONTEXT_FILE_NAME;
use crate::Agent;

/// Region size of delta resyncs: the datatap's dirty-region size.
pub const DELTA_REGION_BYTES: u64 = redoubt_datatap::state::DIRTY_REGION_BYTES;
/// Longest a drain waits for the targets to hold everything.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Longest a promotion waits for the replica to apply what it holds durably.
pub const APPLY_WAIT_MS_MAX: u64 = 120_000;
/// Most regions one delta resync carries (64 TiB of 1 MiB regions).
pub const DELTA_REGIONS_MAX: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverContext {
    pub group: String,
    /// The server acting as production now.
    pub acting_production: String,
    /// The configured production (the one failback returns to).
    pub old_production: String,
    /// Recovery servers of the acting production, recovery 1 first.
    pub targets: Vec<String>,
    /// The seq the acting production's history continues from.
    pub point_seq: u64,
    /// before_commit | committed | failing_back
    pub state: String,
    /// planned | unplanned
    pub kind: String,
    pub since_unix_ms: u64,
}

fn context_path(data_dir: &Path, group: &str) -> Result<PathBuf, String> {
    let layout = GroupLayout::new(data_dir, group).map_err(|e| e.to_string())?;
    Ok(layout.group_dir().join(FAILOVER_CONTEXT_FILE_NAME))
}

pub fn load(data_dir: &Path, group: &str) -> Result<Option<FailoverContext>, String> {
    let path = context_path(data_dir, group)?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("parse failover context {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read failover context {}: {e}", path.display())),
    }
}

pub fn save(data_dir: &Path, group: &str, context: Option<&FailoverContext>) -> Result<(), String> {
    let path = context_path(data_dir, group)?;
    let Some(context) = context else {
        // Durably gone: a context that came back after a power cut would keep a healthy
        // production down.
        return redoubt_durable::remove(&path)
            .map(|_| ())
            .map_err(|e| format!("delete failover context {}: {e}", path.display()));
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(context).map_err(|e| e.to_string())?;
    redoubt_durable::replace(&path, &text)
        .map_err(|e| format!("write failover context {}: {e}", path.display()))
}

/// The acting spec of `server` under a failover context: the acting production serves the
/// LVs (its own replicas, or the configured sources on the configured production) and
/// ships to the context's targets; a target is a recovery server; any other server of the
/// group (an old production before failback) runs no data path.
pub fn adjust(
    spec: PathSpec,
    config: &Config,
    context: &FailoverContext,
) -> Result<Option<PathSpec>, String> {
    let Some(group) = config.group(&spec.group) else {
        return Ok(Some(spec));
    };
    let this = config
        .server(&spec.server)
        .ok_or_else(|| format!("server {} is not defined", spec.server))?;
    let configured_production = group.role_of(&spec.server) == Some(Role::Production);
    let volumes: Vec<VolumeSpec> = group
        .volumes
        .iter()
        .map(|volume| VolumeSpec {
            name: volume.name.clone(),
            size_bytes: volume.size_bytes,
            // The configured production keeps its data where it is, whatever it acts as.
            source: if configured_production {
                volume.source.clone()
            } else {
                None
            },
        })
        .collect();
    if context.acting_production == spec.server {
        let mut targets = Vec::new();
        for name in &context.targets {
            let target = config
                .server(name)
                .ok_or_else(|| format!("failover target {name} is not defined"))?;
            targets.push((name.clone(), target.address.clone()));
        }
        return Ok(Some(PathSpec {
            role: Role::Production,
            production: spec.server.clone(),
            volumes,
            nbd_listen: this.nbd_listen.clone(),
            nbd_tls: this.nbd_tls,
            targets,
            ..spec
        }));
    }
    if context.targets.contains(&spec.server) {
        return Ok(Some(PathSpec {
            role: Role::Recovery1,
            production: context.acting_production.clone(),
            volumes,
            nbd_listen: None,
            targets: Vec::new(),
            ..spec
        }));
    }
    Ok(None)
}

/// How long a restarting production waits for each peer's failover context.
pub const SUPERSEDED_CHECK_TIMEOUT_MS: u64 = 2_000;

/// Before a restarted agent resumes the datatap of a group it is production of: whether a
/// failover made another server production meanwhile (it was unreachable then, so it holds
/// no context itself). Asks every other server of the group for its failover context, at
/// once; an answer naming another acting production keeps this datatap down until failback,
/// so two servers never take writes for one group. Peers that do not answer say nothing
/// (without an etcd fence, a restart while every peer is unreachable resumes: `docs/ha.md`).
pub(crate) async fn superseded(server: &str, config: &Config, group: &str) -> Option<String> {
    let entry = config.group(group)?;
    let mut asks = tokio::task::JoinSet::new();
    for peer in std::iter::once(&entry.production).chain(entry.recovery.iter()) {
        if peer == server {
            continue;
        }
        let Some(address) = config.server(peer).map(|found| found.address.clone()) else {
            continue;
        };
        let peer = peer.clone();
        let path = format!("/v1/groups/{group}/failover/context");
        asks.spawn(async move {
            let answer = crate::client::request_to(
                &peer,
                &address,
                "GET",
                &path,
                None,
                Duration::from_millis(SUPERSEDED_CHECK_TIMEOUT_MS),
            )
            .await;
            (peer, answer)
        });
    }
    while let Some(joined) = asks.join_next().await {
        let Ok((peer, Ok((200, body)))) = joined else {
            continue;
        };
        let context = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|answer| {
                serde_json::from_value::<FailoverContext>(answer.get("context")?.clone()).ok()
            });
        if let Some(context) = context.filter(|context| context.acting_production != server) {
            return Some(format!(
                "{peer} says {} acts as production of group {group} since a failover at seq {} ({}): {server} keeps its datatap down until `redoubt failback {group}`",
                context.acting_production, context.point_seq, context.kind
            ));
        }
    }
    None
}

pub(crate) fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/groups/{group}/failover/drain", post(drain))
        .route("/v1/groups/{group}/failover/promote", post(promote))
        .route("/v1/groups/{group}/failover/fence", post(fence))
        .route("/v1/groups/{group}/failover/resync", post(resync))
        .route("/v1/groups/{group}/failover/follow", post(follow))
        .route(
            "/v1/groups/{group}/failover/context",
            post(set_context).get(get_context),
        )
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{what} request body: {e}")))
}

fn conflict(message: impl Into<String>) -> Response {
    error(StatusCode::CONFLICT, message)
}

fn failed(message: impl Into<String>) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// This server's data directory and the stored configuration's spec for `group`.
fn configured(agent: &Agent, group: &str) -> Result<(Config, PathBuf), Response> {
    let inner = agent.lock();
    let Some(stored) = inner.config.as_ref() else {
        return Err(conflict(format!(
            "{} has no configuration yet (initialize the group first)",
            agent.name
        )));
    };
    let config = stored.config.clone();
    drop(inner);
    let Some(entry) = config.group(group) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no group {group} in the configuration of {}", agent.name),
        ));
    };
    if entry.role_of(&agent.name).is_none() {
        return Err(conflict(format!(
            "{} has no role in group {group}",
            agent.name
        )));
    }
    let data_dir = config
        .server(&agent.name)
        .map(|server| server.data_dir.clone())
        .ok_or_else(|| failed(format!("{} is not in its own configuration", agent.name)))?;
    Ok((config, data_dir))
}

/// The request body, the stored configuration and this server's data directory.
fn prelude<T: for<'de> Deserialize<'de>>(
    agent: &Agent,
    group: &str,
    body: &[u8],
    what: &str,
) -> Result<(T, Config, PathBuf), Response> {
    let request = parse(body, what)?;
    let (config, data_dir) = configured(agent, group)?;
    Ok((request, config, data_dir))
}

fn check_context(
    agent: &Agent,
    group: &str,
    context: &FailoverContext,
    config: &Config,
) -> Result<(), Response> {
    if context.group != group {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("the context is for group {}, not {group}", context.group),
        ));
    }
    let entry = config
        .group(group)
        .ok_or_else(|| conflict(format!("no group {group}")))?;
    for name in context.targets.iter().chain([&context.acting_production]) {
        if entry.role_of(name).is_none() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{name} has no role in group {group}"),
            ));
        }
    }
    if context.targets.contains(&context.acting_production) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the acting production cannot be its own target",
        ));
    }
    let _ = agent;
    Ok(())
}

async fn restart(agent: &Agent, group: &str, config: &Config) -> Result<Option<String>, String> {
    crate::steps::stop_path(agent, group).await?;
    let spec = PathSpec::from_config(config, group, &agent.name)?;
    match spec {
        Some(spec) => {
            let role = format!("{:?}", spec.role);
            crate::steps::start_path(agent, spec, agent.config_version()).await?;
            Ok(Some(role))
        }
        None => Ok(None),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    timeout_ms: Option<u64>,
}

async fn drain(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: DrainRequest = if body.is_empty() {
        DrainRequest::default()
    } else {
        match parse(&body, "drain") {
            Ok(request) => request,
            Err(response) => return response,
        }
    };
    let (engine, targets) = {
        let inner = agent.lock();
        let Some(path) = inner.paths.get(&group) else {
            return conflict(format!(
                "drain: group {group} has no data path on {}",
                agent.name
            ));
        };
        let Some(engine) = path.engine() else {
            return conflict(format!(
                "drain: {} is not production of group {group}",
                agent.name
            ));
        };
        (engine, path.target_statuses())
    };
    // No write is accepted from here on: what the targets hold is all there is.
    engine.watermarks().write_gate.close();
    if let Err(reason) = engine.submit(Op::Flush).await {
        return failed(format!("drain: flush the journal: {reason}"));
    }
    let seq = engine.watermarks().durable_seq.load(Ordering::Acquire);
    let deadline = Instant::now()
        + Duration::from_millis(request.timeout_ms.unwrap_or(DRAIN_TIMEOUT_MS_DEFAULT));
    loop {
        let behind: Vec<String> = targets
            .iter()
            .filter(|(_, status)| status.durable_seq.load(Ordering::Acquire) < seq)
            .map(|(name, status)| {
                format!("{name} at {}", status.durable_seq.load(Ordering::Acquire))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            engine.watermarks().write_gate.unfence();
            return conflict(format!(
                "drain of group {group}: targets did not reach seq {seq} in time ({}); writes are accepted again",
                behind.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Json(json!({"server": agent.name, "seq": seq})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    context: FailoverContext,
    to_seq: Option<u64>,
}

async fn promote(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let (request, config, data_dir): (PromoteRequest, _, _) =
        match prelude(&agent, &group, &body, "promote") {
            Ok(found) => found,
            Err(response) => return response,
        };
    if let Err(response) = check_context(&agent, &group, &request.context, &config) {
        return response;
    }
    if request.context.acting_production != agent.name {
        return error(
            StatusCode::BAD_REQUEST,
            "promote: the context names another server as production",
        );
    }
    let aba = {
        let inner = agent.lock();
        inner
            .paths
            .get(&group)
            .and_then(|path| path.aba())
            .map(|(aba, _, _)| aba)
    };
    let point_seq = match aba {
        Some(aba) => {
            // Everything held durably is applied first (unless an earlier point is asked).
            let status = aba.status().clone();
            let deadline = Instant::now() + Duration::from_millis(APPLY_WAIT_MS_MAX);
            if !status.paused.load(Ordering::Acquire) {
                while status.applied_seq.load(Ordering::Acquire)
                    < status.durable_seq.load(Ordering::Acquire)
                    && request
                        .to_seq
                        .is_none_or(|to| status.applied_seq.load(Ordering::Acquire) < to)
                {
                    if Instant::now() > deadline {
                        return conflict(
                            "promote: the replica did not apply what it holds in time",
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let applied = status.applied_seq.load(Ordering::Acquire);
            // Never promote a mix of two points in time: a replica in the middle of a super
            // transaction goes back to the seq before it (its pre-resync image) when no point
            // was asked; an asked point must be consistent.
            let asked = request.to_seq.unwrap_or(applied);
            let to_seq = match status.inconsistent_reason(asked) {
                None => request.to_seq,
                Some(reason) => {
                    let open = status.resync_begin_seq.load(Ordering::Acquire);
                    let before = open.saturating_sub(1);
                    if request.to_seq.is_none()
                        && open > 0
                        && status.inconsistent_reason(before).is_none()
                    {
                        tracing::warn!(%group, applied, point_seq = before, "promoting at the seq before the super transaction under way on this replica");
                        Some(before)
                    } else {
                        return conflict(format!(
                            "promote {} at seq {asked}: {reason}",
                            agent.name
                        ));
                    }
                }
            };
            match to_seq {
                Some(to) if to != applied || status.paused.load(Ordering::Acquire) => {
                    if let Err(reason) = aba.rollback(to).await {
                        return conflict(format!("promote at seq {to}: {reason}"));
                    }
                    to
                }
                _ => applied,
            }
        }
        None => {
            // Already promoted (a retry): the datatap state says where it started.
            match load(&data_dir, &group) {
                Ok(Some(context)) if context.acting_production == agent.name => context.point_seq,
                _ => {
                    return conflict(format!(
                        "promote: {} runs no apply process for group {group}",
                        agent.name
                    ))
                }
            }
        }
    };
    let layout = match GroupLayout::new(&data_dir, &group) {
        Ok(layout) => layout,
        Err(reason) => return failed(reason.to_string()),
    };
    if let Err(reason) = crate::steps::stop_path(&agent, &group).await {
        return failed(format!("promote: stop the apply process: {reason}"));
    }
    let group_dir = layout.group_dir().to_path_buf();
    if !group_dir
        .join(redoubt_datatap::state::STATE_FILE_NAME)
        .exists()
        || load(&data_dir, &group)
            .ok()
            .flatten()
            .is_none_or(|c| c.acting_production != agent.name)
    {
        let Some(group_id) = redoubt_replication::aba::read_group_id(&group_dir) else {
            return conflict(
                "promote: this replica never received anything from production (no journal id)",
            );
        };
        // The records after the point are what a failover to this point leaves behind. The
        // undo journal, markers and replica state stay as they are: if this server follows
        // again without having written (an abort), its restore window before the point is
        // still good (`redoubt_replication::aba::start_following` decides).
        if let Err(reason) = remove_dir_if_exists(&layout.journal_dir()) {
            return failed(format!("promote: {reason}"));
        }
        let _ = redoubt_durable::remove(
            &group_dir.join(redoubt_replication::rollback::ROLLFORWARD_FILE_NAME),
        );
        let mut state = redoubt_datatap::state::GroupState::new(group_id);
        state.checkpoint_seq = point_seq;
        if let Err(reason) = state.save(&StdFs, &group_dir) {
            return failed(format!("promote: write the datatap state: {reason}"));
        }
    }
    let mut context = request.context.clone();
    context.point_seq = point_seq;
    if let Err(reason) = save(&data_dir, &group, Some(&context)) {
        return failed(reason);
    }
    match restart(&agent, &group, &config).await {
        Ok(_) => Json(json!({"server": agent.name, "point_seq": point_seq})).into_response(),
        Err(reason) => failed(format!("promote: start the datatap: {reason}")),
    }
}

/// Durably: a journal copy that came back after a power cut would resume the wrong history.
fn remove_dir_if_exists(dir: &Path) -> Result<(), String> {
    redoubt_durable::remove_dir_all(dir)
        .map(|_| ())
        .map_err(|e| format!("remove {}: {e}", dir.display()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceRequest {
    after_seq: u64,
}

/// Regions (volume name, region index) the datatap journal in `group_dir` wrote after
/// `after_seq`, and whether the journal still holds every record after it.
fn journal_regions(
    group_dir: &Path,
    journal_dir: &Path,
    volumes: &[VolumeSpec],
    after_seq: u64,
) -> Result<(BTreeSet<(String, u64)>, bool), String> {
    let state =
        redoubt_datatap::state::GroupState::load(&StdFs, group_dir).map_err(|e| e.to_string())?;
    let Some(group_id) = state.as_ref().and_then(|state| state.group_id_bytes()) else {
        return Ok((BTreeSet::new(), true));
    };
    let names: std::collections::BTreeMap<u32, &VolumeSpec> = volumes
        .iter()
        .map(|volume| (redoubt_journal::lv_id_for_name(&volume.name), volume))
        .collect();
    let mut regions = BTreeSet::new();
    let reader = redoubt_journal::read_directory(
        StdFs,
        journal_dir,
        GroupId(group_id),
        after_seq + 1,
        u64::MAX,
    );
    let reader = match reader {
        Ok(reader) => reader,
        Err(redoubt_journal::JournalError::SequencePruned { .. }) => return Ok((regions, false)),
        Err(e) => return Err(e.to_string()),
    };
    for record in reader {
        let Ok(record) = record else {
            // A torn tail ends what the journal can tell.
            break;
        };
        let header = record.header;
        if !matches!(
            header.kind,
            RecordKind::Write | RecordKind::WriteZeroes | RecordKind::Trim
        ) {
            continue;
        }
        let Some(volume) = names.get(&header.lv_id) else {
            continue;
        };
        let end = header.offset_bytes + u64::from(header.length_bytes);
        for region in
            header.offset_bytes / DELTA_REGION_BYTES..=(end.max(1) - 1) / DELTA_REGION_BYTES
        {
            regions.insert((volume.name.clone(), region));
        }
        if regions.len() > DELTA_REGIONS_MAX {
            return Ok((BTreeSet::new(), false));
        }
    }
    Ok((regions, true))
}

fn regions_json(regions: &BTreeSet<(String, u64)>) -> Vec<Value> {
    regions
        .iter()
        .map(|(volume, region)| json!({"volume": volume, "region": region}))
        .collect()
}

async fn fence(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let (request, config, data_dir): (FenceRequest, _, _) =
        match prelude(&agent, &group, &body, "fence") {
            Ok(found) => found,
            Err(response) => return response,
        };
    let engine = agent
        .lock()
        .paths
        .get(&group)
        .and_then(|path| path.engine());
    if let Some(engine) = engine {
        engine.watermarks().write_gate.close();
        // The commit thread stops only once every handle to its engine is gone.
        drop(engine);
    }
    if let Err(reason) = crate::steps::stop_path(&agent, &group).await {
        return failed(format!("fence: stop the data path: {reason}"));
    }
    let layout = match GroupLayout::new(&data_dir, &group) {
        Ok(layout) => layout,
        Err(reason) => return failed(reason.to_string()),
    };
    let volumes: Vec<VolumeSpec> = config
        .group(&group)
        .map(|entry| {
            entry
                .volumes
                .iter()
                .map(|volume| VolumeSpec {
                    name: volume.name.clone(),
                    size_bytes: volume.size_bytes,
                    source: None,
                })
                .collect()
        })
        .unwrap_or_default();
    match journal_regions(
        layout.group_dir(),
        &layout.journal_dir(),
        &volumes,
        request.after_seq,
    ) {
        Ok((regions, complete)) => Json(json!({
            "server": agent.name,
            "regions": regions_json(&regions),
            "complete": complete,
        }))
        .into_response(),
        Err(reason) => failed(format!("fence: read the journal: {reason}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionRef {
    volume: String,
    region: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncRequest {
    context: FailoverContext,
    regions: Vec<RegionRef>,
    /// The peer's journal could not list every region: resend everything.
    #[serde(default)]
    all: bool,
    point_seq: u64,
}

async fn resync(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let (request, config, data_dir): (ResyncRequest, _, _) =
        match prelude(&agent, &group, &body, "resync") {
            Ok(found) => found,
            Err(response) => return response,
        };
    if let Err(response) = check_context(&agent, &group, &request.context, &config) {
        return response;
    }
    let layout = match GroupLayout::new(&data_dir, &group) {
        Ok(layout) => layout,
        Err(reason) => return failed(reason.to_string()),
    };
    let Some(entry) = config.group(&group) else {
        return conflict(format!("no group {group}"));
    };
    let volumes: Vec<VolumeSpec> = entry
        .volumes
        .iter()
        .map(|volume| VolumeSpec {
            name: volume.name.clone(),
            size_bytes: volume.size_bytes,
            source: None,
        })
        .collect();
    // The regions this server wrote since the point, from its own journal.
    let (mut regions, complete) = match journal_regions(
        layout.group_dir(),
        &layout.journal_dir(),
        &volumes,
        request.point_seq,
    ) {
        Ok(found) => found,
        Err(reason) => return failed(format!("resync: read the journal: {reason}")),
    };
    let everything = request.all || !complete;
    for region in &request.regions {
        if entry.volume(&region.volume).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("resync: no volume {} in group {group}", region.volume),
            );
        }
        regions.insert((region.volume.clone(), region.region));
    }
    if everything {
        regions.clear();
        for volume in &volumes {
            for region in 0..volume.size_bytes.div_ceil(DELTA_REGION_BYTES) {
                regions.insert((volume.name.clone(), region));
            }
        }
    }
    // The new targets first, so the journal keeps everything from here for them.
    if let Err(reason) = save(&data_dir, &group, Some(&request.context)) {
        return failed(reason);
    }
    let engine = {
        let mut inner = agent.lock();
        let Some(path) = inner.paths.get_mut(&group) else {
            return conflict(format!(
                "resync: group {group} has no data path on {}",
                agent.name
            ));
        };
        match path.engine() {
            Some(engine) => engine,
            None => return conflict(format!("resync: {} is not acting production", agent.name)),
        }
    };
    let spec = match PathSpec::from_config(&config, &group, &agent.name) {
        Ok(Some(spec)) => spec,
        Ok(None) => return conflict("resync: this server has no acting role"),
        Err(reason) => return failed(reason),
    };
    let version = agent.config_version();
    let path = agent.lock().paths.remove(&group);
    let Some(mut path) = path else {
        return conflict("resync: the data path went away");
    };
    path.restart_lcas(spec, version).await;
    agent.lock().paths.insert(group.clone(), path);
    let checkpoint_seq = engine.watermarks().durable_seq.load(Ordering::Acquire);
    let lv_regions: Vec<(u32, u64)> = regions
        .iter()
        .map(|(volume, region)| (redoubt_journal::lv_id_for_name(volume), *region))
        .collect();
    let count = lv_regions.len();
    if count > 0 {
        if let Err(reason) = engine
            .submit(Op::ResyncRegions {
                regions: lv_regions,
                // Only the returning server lacks them: whoever followed this production
                // holds them already and stays consistent (and restorable) through it.
                targets: redoubt_journal::ResyncTargets::Only(
                    [request.context.old_production.clone()].into(),
                ),
            })
            .await
        {
            return failed(format!("resync: start the super transaction: {reason}"));
        }
    }
    let total_bytes: u64 = volumes.iter().map(|volume| volume.size_bytes).sum();
    Json(json!({
        "server": agent.name,
        "checkpoint_seq": checkpoint_seq,
        "regions": count,
        "bytes": count as u64 * DELTA_REGION_BYTES,
        "volumes_bytes": total_bytes,
        "everything": everything,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowRequest {
    context: Option<FailoverContext>,
    checkpoint_seq: u64,
}

async fn follow(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let (request, config, data_dir): (FollowRequest, _, _) =
        match prelude(&agent, &group, &body, "follow") {
            Ok(found) => found,
            Err(response) => return response,
        };
    if let Some(context) = &request.context {
        if let Err(response) = check_context(&agent, &group, context, &config) {
            return response;
        }
    }
    let layout = match GroupLayout::new(&data_dir, &group) {
        Ok(layout) => layout,
        Err(reason) => return failed(reason.to_string()),
    };
    let group_dir = layout.group_dir().to_path_buf();
    let aba = {
        let inner = agent.lock();
        inner
            .paths
            .get(&group)
            .and_then(|path| path.aba())
            .map(|(aba, _, _)| aba)
    };
    // A replica ahead of the point goes back to it first (its undo journal knows how).
    if let Some(aba) = &aba {
        let status = aba.status();
        let applied = status.applied_seq.load(Ordering::Acquire);
        if applied > request.checkpoint_seq || status.paused.load(Ordering::Acquire) {
            if let Err(reason) = aba.rollback(request.checkpoint_seq).await {
                return conflict(format!(
                    "follow: roll back to seq {}: {reason}",
                    request.checkpoint_seq
                ));
            }
        } else if applied < request.checkpoint_seq {
            let deadline = Instant::now() + Duration::from_millis(APPLY_WAIT_MS_MAX);
            while status.applied_seq.load(Ordering::Acquire) < request.checkpoint_seq {
                if Instant::now() > deadline
                    || status.durable_seq.load(Ordering::Acquire) < request.checkpoint_seq
                {
                    return conflict(format!(
                        "follow: this replica holds seq {} only, not {}",
                        status.durable_seq.load(Ordering::Acquire),
                        request.checkpoint_seq
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Whether this server's LVs equal production as of the checkpoint, so that a later
    // super transaction keeps a snapshot of its state before (`replication::resync`): a
    // replica knows; an old production does when its journal ends exactly there (a planned
    // switch), not when it wrote after the point (a failback resends those regions).
    let replica_synced = match &aba {
        Some(aba) => aba.status().replica_synced.load(Ordering::Acquire),
        None => {
            let engine = agent
                .lock()
                .paths
                .get(&group)
                .and_then(|path| path.engine());
            engine.is_some_and(|engine| {
                engine.watermarks().durable_seq.load(Ordering::Acquire) == request.checkpoint_seq
            })
        }
    };
    // The apply thread stops only once every handle to its ABA is gone.
    drop(aba);
    let group_id = redoubt_replication::aba::read_group_id(&group_dir).or_else(|| {
        redoubt_datatap::state::GroupState::load(&StdFs, &group_dir)
            .ok()
            .flatten()
            .and_then(|state| state.group_id_bytes())
    });
    let Some(group_id) = group_id else {
        return conflict("follow: this server knows no journal id for the group");
    };
    if let Err(reason) = crate::steps::stop_path(&agent, &group).await {
        return failed(format!("follow: stop the data path: {reason}"));
    }
    // What was journaled here after the point is either applied (a replica) or covered by
    // the delta resync (an old production): the journal copy starts clean after the point.
    if let Err(reason) = remove_dir_if_exists(&layout.journal_dir()) {
        return failed(format!("follow: {reason}"));
    }
    for file in [
        redoubt_replication::rollback::ROLLFORWARD_FILE_NAME,
        redoubt_datatap::state::STATE_FILE_NAME,
    ] {
        let _ = redoubt_durable::remove(&group_dir.join(file));
    }
    // The restore window survives the switch when the undo journal covers the shared history.
    let history = match redoubt_replication::aba::start_following(
        &group_dir,
        group_id,
        request.checkpoint_seq,
        replica_synced,
        crate::http::now_unix_ms(),
    ) {
        Ok(history) => history,
        Err(reason) => return failed(format!("follow: {reason}")),
    };
    let history_json = match &history {
        redoubt_replication::aba::FollowerHistory::Kept => json!({"kept": true}),
        redoubt_replication::aba::FollowerHistory::Reset(reset) => {
            tracing::warn!(group = %group, seq = reset.seq, reason = %reset.reason, "the restore window starts afresh");
            json!({"kept": false, "from_seq": reset.seq, "reason": reset.reason})
        }
    };
    if let Err(reason) = save(&data_dir, &group, request.context.as_ref()) {
        return failed(reason);
    }
    match restart(&agent, &group, &config).await {
        Ok(role) => Json(json!({
            "server": agent.name,
            "checkpoint_seq": request.checkpoint_seq,
            "role": role,
            "history": history_json,
        }))
        .into_response(),
        Err(reason) => failed(format!("follow: start the apply process: {reason}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextRequest {
    context: Option<FailoverContext>,
}

async fn set_context(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let (request, config, data_dir): (ContextRequest, _, _) =
        match prelude(&agent, &group, &body, "context") {
            Ok(found) => found,
            Err(response) => return response,
        };
    if let Some(context) = &request.context {
        if let Err(response) = check_context(&agent, &group, context, &config) {
            return response;
        }
    }
    match save(&data_dir, &group, request.context.as_ref()) {
        Ok(()) => Json(json!({"server": agent.name, "context": request.context})).into_response(),
        Err(reason) => failed(reason),
    }
}

async fn get_context(State(agent): State<Arc<Agent>>, UrlPath(group): UrlPath<String>) -> Response {
    let (_, data_dir) = match configured(&agent, &group) {
        Ok(found) => found,
        Err(response) => return response,
    };
    match load(&data_dir, &group) {
        Ok(context) => Json(json!({"server": agent.name, "context": context})).into_response(),
        Err(reason) => failed(reason),
    }
}
