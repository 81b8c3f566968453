//! Block devices for applications (`redoubt attach` / `detach`): the agent owns the
//! attachments of its server (`redoubt-host`), so they are found again after a restart.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/attachments` | | `{"attachments": [attachment…]}` |
//! | `POST /v1/groups/{group}/attachments` | `{"volume", "snapshot"?}` | 200 attachment; 409 attached already / not production / not loaded; 404 unknown LV |
//! | `DELETE /v1/groups/{group}/attachments/{volume}[?snapshot=S]` | | 200 `{"detached": attachment}`; 404 not attached; 409 in use |
//!
//! An attachment is `{"group","volume","snapshot"?,"device","link","backend","read_only",
//! "export","state": "attached"|"broken","error"?}`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use redoubt_host::{AttachRequest, AttachState, Attachment, Host, HostError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error;
use crate::{Agent, AgentError};

/// The attachments of this server, shared with blocking tasks. Attaching takes seconds, so
/// status reads use the list published after each change instead of waiting for the host.
pub type SharedHost = Arc<HostCell>;

pub struct HostCell {
    host: Mutex<Host>,
    published: Mutex<Vec<(Attachment, AttachState)>>,
}

/// The host, locked; the published list is refreshed when the guard goes.
pub struct HostGuard<'a> {
    cell: &'a HostCell,
    host: Option<MutexGuard<'a, Host>>,
}

impl std::ops::Deref for HostGuard<'_> {
    type Target = Host;
    fn deref(&self) -> &Host {
        self.host
            .as_deref()
            .unwrap_or_else(|| unreachable!("guard holds the host until drop"))
    }
}

impl std::ops::DerefMut for HostGuard<'_> {
    fn deref_mut(&mut self) -> &mut Host {
        self.host
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("guard holds the host until drop"))
    }
}

impl Drop for HostGuard<'_> {
    fn drop(&mut self) {
        if let Some(host) = self.host.take() {
            let list = host.list();
            drop(host);
            *self
                .cell
                .published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = list;
        }
    }
}

pub fn open(state_dir: &Path) -> Result<SharedHost, AgentError> {
    let host = Host::open(state_dir, Path::new(redoubt_host::LINKS_ROOT_DEFAULT))
        .map_err(|error| AgentError::State(error.to_string()))?;
    let published = Mutex::new(host.list());
    Ok(Arc::new(HostCell {
        host: Mutex::new(host),
        published,
    }))
}

fn lock(cell: &HostCell) -> HostGuard<'_> {
    HostGuard {
        cell,
        host: Some(
            cell.host
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        ),
    }
}

fn published(cell: &HostCell) -> Vec<(Attachment, AttachState)> {
    cell.published
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/attachments", get(list))
        .route("/v1/groups/{group}/attachments", post(attach))
        .route("/v1/groups/{group}/attachments/{volume}", delete(detach))
}

/// The NBD URI the production data path serves `volume` of `group` at, or why there is none.
fn production_export(agent: &Agent, group: &str, volume: &str) -> Result<String, Box<Response>> {
    let inner = agent.lock();
    let Some(path) = inner.paths.get(group) else {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "attach {group}/{volume} on {}: the data path of group {group} is not loaded on this server",
                agent.name
            ),
        )));
    };
    let mut fields = serde_json::Map::new();
    path.status(&mut fields);
    let exports = fields.get("exports").and_then(Value::as_array);
    let Some(exports) = exports else {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "attach {group}/{volume} on {}: this server is not the production server of group {group} (attach a snapshot on a recovery server)",
                agent.name
            ),
        )));
    };
    exports
        .iter()
        .find(|export| export["volume"] == volume)
        .and_then(|export| export["export"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                format!(
                    "attach {group}/{volume} on {}: group {group} has no LV {volume}",
                    agent.name
                ),
            ))
        })
}

/// The export an attachment reads now, `None` when it is not served.
fn current_export(agent: &Agent, attachment: &Attachment) -> Option<String> {
    match &attachment.snapshot {
        None => production_export(agent, &attachment.group, &attachment.volume).ok(),
        Some(_) => snapshot_export(agent, attachment),
    }
}

/// Snapshots are exported by the recovery data path; their attachment keeps the URI it was
/// made with, served as long as the group's data path is loaded.
fn snapshot_export(agent: &Agent, attachment: &Attachment) -> Option<String> {
    agent
        .lock()
        .paths
        .contains_key(&attachment.group)
        .then(|| attachment.export.clone())
}

fn host_error(status_for_failure: StatusCode, failure: HostError) -> Response {
    let status = match &failure {
        HostError::InvalidName { .. } => StatusCode::BAD_REQUEST,
        HostError::NotAttached(_) => StatusCode::NOT_FOUND,
        error if error.is_refusal() => StatusCode::CONFLICT,
        _ => status_for_failure,
    };
    error(status, failure.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    volume: String,
    #[serde(default)]
    snapshot: Option<String>,
    /// A snapshot's NBD export (from the snapshot's `exports`); required with `snapshot`.
    #[serde(default)]
    export: Option<String>,
    /// A snapshot is attached read-only unless this says otherwise (a writable snapshot).
    #[serde(default)]
    read_only: Option<bool>,
}

async fn attach(
    State(agent): State<Arc<Agent>>,
    UrlPath(group): UrlPath<String>,
    body: Bytes,
) -> Response {
    let body: AttachBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("attach on {}: invalid JSON body: {parse}", agent.name),
            )
        }
    };
    let (export, read_only) = match (&body.snapshot, body.export.clone()) {
        (None, None) => match production_export(&agent, &group, &body.volume) {
            Ok(export) if export.starts_with("nbds") => {
                // nbdfuse's nbdkit and the kernel client would have to present a client
                // certificate and accept the agent's for a loopback address: not done yet.
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "attach {group}/{}: its export {export} requires NBD TLS (nbd_tls = true on {}), which the local block device does not speak; set nbd_tls = false for this server (its exports listen on loopback or a unix socket) to attach",
                        body.volume, agent.name
                    ),
                );
            }
            Ok(export) => (export, false),
            Err(response) => return *response,
        },
        (Some(_), Some(export)) => {
            if !(export.starts_with("nbd://") || export.starts_with("nbd+unix:///")) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "attach on {}: export {export:?} is not an NBD URI",
                        agent.name
                    ),
                );
            }
            (export, body.read_only.unwrap_or(true))
        }
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "attach: \"export\" is only for a snapshot (give \"snapshot\" too)",
            )
        }
        (Some(snapshot), None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "attach snapshot {snapshot}: give its \"export\" for {}",
                    body.volume
                ),
            )
        }
    };
    let request = AttachRequest {
        group,
        volume: body.volume,
        snapshot: body.snapshot,
        export,
        read_only,
    };
    let host = agent.host.clone();
    let outcome = tokio::task::spawn_blocking(move || lock(&host).attach(&request)).await;
    match outcome {
        Ok(Ok(attachment)) => {
            tracing::info!(key = %attachment.key(), device = %attachment.device, "attached");
            Json(attachment.to_json(&AttachState::Attached)).into_response()
        }
        Ok(Err(failure)) => host_error(StatusCode::INTERNAL_SERVER_ERROR, failure),
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("attach task ended abnormally: {join}"),
        ),
    }
}

#[derive(Deserialize)]
struct DetachQuery {
    snapshot: Option<String>,
}

async fn detach(
    State(agent): State<Arc<Agent>>,
    UrlPath((group, volume)): UrlPath<(String, String)>,
    Query(query): Query<DetachQuery>,
) -> Response {
    let key = redoubt_host::key(&group, &volume, query.snapshot.as_deref());
    let host = agent.host.clone();
    match tokio::task::spawn_blocking(move || lock(&host).detach(&key)).await {
        Ok(Ok(attachment)) => {
            tracing::info!(key = %attachment.key(), device = %attachment.device, "detached");
            Json(json!({"detached": attachment.to_json(&AttachState::Attached)})).into_response()
        }
        Ok(Err(failure)) => host_error(StatusCode::INTERNAL_SERVER_ERROR, failure),
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("detach task ended abnormally: {join}"),
        ),
    }
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(json!({"attachments": attachments_json(&agent, None)}))
}

/// The attachments (of one group, or all) as the API shows them.
pub fn attachments_json(agent: &Agent, group: Option<&str>) -> Vec<Value> {
    published(&agent.host)
        .into_iter()
        .filter(|(attachment, _)| group.is_none_or(|group| attachment.group == group))
        .map(|(attachment, state)| attachment.to_json(&state))
        .collect()
}

/// After the data paths resumed: keep, re-attach or report every recorded attachment.
pub async fn restore(agent: &Arc<Agent>) {
    let runner = agent.clone();
    let report = tokio::task::spawn_blocking(move || {
        let recorded = published(&runner.host);
        let exports: Vec<(String, Option<String>)> = recorded
            .into_iter()
            .map(|(attachment, _)| (attachment.key(), current_export(&runner, &attachment)))
            .collect();
        lock(&runner.host).restore(|attachment| {
            exports
                .iter()
                .find(|(key, _)| *key == attachment.key())
                .and_then(|(_, export)| export.clone())
        })
    })
    .await;
    match report {
        Ok(lines) => {
            for line in lines {
                tracing::info!("attachment {line}");
            }
        }
        Err(join) => tracing::error!(%join, "restoring the attachments ended abnormally"),
    }
}

/// Detaches the attachments of `group` (of the LVs `volumes` names, or all of them: snapshots
/// included), for step 17 and before a deleted group's data path stops. A device in use fails
/// the step with what holds it; nothing else is changed then.
pub async fn detach_group(
    agent: &Arc<Agent>,
    group: &str,
    volumes: Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    let host = agent.host.clone();
    let group = group.to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut host = lock(&host);
        let doomed: Vec<Attachment> = host
            .list()
            .into_iter()
            .map(|(attachment, _)| attachment)
            .filter(|attachment| {
                attachment.group == group
                    && volumes
                        .as_ref()
                        .is_none_or(|volumes| volumes.contains(&attachment.volume))
            })
            .collect();
        let mut detached = Vec::new();
        for attachment in doomed {
            host.detach(&attachment.key())
                .map_err(|error| format!("detach {}: {error}", attachment.key()))?;
            detached.push(format!(
                "{} ({})",
                attachment.link.display(),
                attachment.device
            ));
        }
        Ok(detached)
    })
    .await;
    outcome.unwrap_or_else(|join| Err(format!("detach task ended abnormally: {join}")))
}
