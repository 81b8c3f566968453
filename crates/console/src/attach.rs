//! Block devices for applications (`redoubt attach` / `detach`): the console finds the server
//! that serves the LV (the group's production server; for a snapshot, the recovery server that
//! holds it, and the snapshot's export of the LV) and forwards to its agent, which owns the
//! attachment (`docs/agent-api.md`, "Attachments").
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/groups/{group}/attachments` | `{"volume","snapshot"?,"server"?}` | the agent's attachment plus `"server"`; 409 attached already (exit 3) |
//! | `DELETE /v1/groups/{group}/attachments/{volume}?snapshot=S&server=S` | | `{"detached": attachment, "server"}`; 409 in use |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::AgentError;
use crate::runner::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/groups/{group}/attachments", post(attach))
        .route("/v1/groups/{group}/attachments/{volume}", delete(detach))
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn boxed(status: StatusCode, message: impl Into<String>) -> Box<Response> {
    Box::new(answer(status, message))
}

fn agent_error(server: &str, error: AgentError) -> Response {
    match error {
        AgentError::Refused {
            status, message, ..
        } => answer(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("{server}: {message}"),
        ),
        other => answer(StatusCode::BAD_GATEWAY, format!("{server}: {other}")),
    }
}

/// The group's servers from the configuration in effect: (production, recovery servers) and
/// an address book.
struct Members {
    production: String,
    recovery: Vec<String>,
    volumes: Vec<String>,
    addresses: Vec<(String, String)>,
}

impl Members {
    fn address(&self, server: &str) -> Option<&str> {
        self.addresses
            .iter()
            .find(|(name, _)| name == server)
            .map(|(_, address)| address.as_str())
    }
}

fn members(shared: &Shared, group: &str) -> Result<Members, Box<Response>> {
    let current = shared
        .store
        .current()
        .map_err(|error| boxed(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .ok_or_else(|| boxed(StatusCode::NOT_FOUND, "no configuration was applied yet"))?;
    let config = redoubt_config::parse("current.toml", &current.toml).map_err(|_| {
        boxed(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored configuration version {} no longer parses",
                current.version
            ),
        )
    })?;
    let entry = config.group(group).ok_or_else(|| {
        boxed(
            StatusCode::NOT_FOUND,
            format!(
                "no group {group} in configuration version {}",
                current.version
            ),
        )
    })?;
    Ok(Members {
        production: entry.production.clone(),
        recovery: entry.recovery.clone(),
        volumes: entry.volumes.iter().map(|v| v.name.clone()).collect(),
        addresses: config
            .servers
            .iter()
            .map(|server| (server.name.clone(), server.address.clone()))
            .collect(),
    })
}

/// After a failover the LVs are served by the acting production and the snapshots live on
/// its recovery servers: the failover context, when there is one, says who they are.
async fn acting(shared: &Shared, group: &str, mut members: Members) -> Members {
    let Ok(servers) = crate::verify::members(shared, group) else {
        return members;
    };
    let Some(context) = crate::failover::current_context(shared, group, &servers).await else {
        return members;
    };
    if let Some(acting) = context["acting_production"].as_str() {
        members.production = acting.to_string();
    }
    if let Ok(targets) = serde_json::from_value::<Vec<String>>(context["targets"].clone()) {
        members.recovery = targets;
    }
    members
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    volume: String,
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

/// Which server serves the LV (or its snapshot), and the snapshot's export of it with whether
/// the snapshot is writable.
async fn locate(
    shared: &Shared,
    group: &str,
    members: &Members,
    volume: &str,
    snapshot: Option<&str>,
    server: Option<&str>,
) -> Result<(String, Option<(String, bool)>), Box<Response>> {
    if !members.volumes.iter().any(|name| name == volume) {
        return Err(boxed(
            StatusCode::NOT_FOUND,
            format!("group {group} has no LV {volume}"),
        ));
    }
    let Some(snapshot) = snapshot else {
        let server = server.unwrap_or(&members.production);
        if server != members.production {
            return Err(boxed(
                StatusCode::CONFLICT,
                format!(
                    "attach {group}/{volume} on {server}: only the production server ({}) serves the LV; attach a snapshot on a recovery server",
                    members.production
                ),
            ));
        }
        return Ok((server.to_string(), None));
    };
    let candidates: Vec<&String> = members
        .recovery
        .iter()
        .filter(|name| server.is_none_or(|server| server == name.as_str()))
        .collect();
    let mut errors = Vec::new();
    for candidate in candidates {
        let Some(address) = members.address(candidate) else {
            continue;
        };
        let path = format!("/v1/groups/{group}/snapshots");
        match shared
            .agent
            .call(candidate, address, "GET", &path, None)
            .await
        {
            Ok(list) => {
                let found = list["snapshots"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|entry| entry["name"] == snapshot);
                if let Some(found) = found {
                    let writable = found["writable"] == true;
                    let export = found["exports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|export| export["volume"] == volume)
                        .and_then(|export| export["export"].as_str())
                        .map(|export| (export.to_string(), writable));
                    return Ok((candidate.clone(), export));
                }
            }
            Err(error) => errors.push(format!("{candidate}: {error}")),
        }
    }
    // A detach of a snapshot that is gone still knows its server.
    if let Some(server) = server {
        return Ok((server.to_string(), None));
    }
    let mut message = format!("group {group} has no snapshot {snapshot} on its recovery servers");
    if !errors.is_empty() {
        message.push_str(&format!(" (not asked: {})", errors.join("; ")));
    }
    Err(boxed(StatusCode::NOT_FOUND, message))
}

async fn attach(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let body: AttachBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {error}"),
            )
        }
    };
    let members = match members(&shared, &group) {
        Ok(members) => acting(&shared, &group, members).await,
        Err(response) => return *response,
    };
    let (server, export) = match locate(
        &shared,
        &group,
        &members,
        &body.volume,
        body.snapshot.as_deref(),
        body.server.as_deref(),
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let mut forward = json!({"volume": body.volume});
    if let Some(snapshot) = &body.snapshot {
        let Some(export) = export else {
            return answer(
                StatusCode::NOT_FOUND,
                format!(
                    "snapshot {snapshot} on {server} has no export of {}",
                    body.volume
                ),
            );
        };
        // A writable snapshot (a test failover's) is attached writable.
        let (export, writable) = export;
        forward["snapshot"] = json!(snapshot);
        forward["export"] = json!(export);
        forward["read_only"] = json!(!writable);
    }
    let address = members.address(&server).unwrap_or_default().to_string();
    let path = format!("/v1/groups/{group}/attachments");
    match shared
        .agent
        .call(&server, &address, "POST", &path, Some(&forward))
        .await
    {
        Ok(mut attachment) => {
            attachment["server"] = json!(server);
            Json(attachment).into_response()
        }
        Err(error) => agent_error(&server, error),
    }
}

#[derive(Deserialize)]
struct DetachQuery {
    snapshot: Option<String>,
    server: Option<String>,
}

async fn detach(
    State(shared): State<Arc<Shared>>,
    Path((group, volume)): Path<(String, String)>,
    Query(query): Query<DetachQuery>,
) -> Response {
    for name in [
        Some(&volume),
        query.snapshot.as_ref(),
        query.server.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !redoubt_config::is_valid_name(name) {
            return answer(StatusCode::BAD_REQUEST, format!("invalid name {name:?}"));
        }
    }
    let members = match members(&shared, &group) {
        Ok(members) => acting(&shared, &group, members).await,
        Err(response) => return *response,
    };
    let (server, _) = match locate(
        &shared,
        &group,
        &members,
        &volume,
        query.snapshot.as_deref(),
        query.server.as_deref(),
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let address = members.address(&server).unwrap_or_default().to_string();
    let mut path = format!("/v1/groups/{group}/attachments/{volume}");
    if let Some(snapshot) = &query.snapshot {
        path.push_str(&format!("?snapshot={snapshot}"));
    }
    match shared
        .agent
        .call(&server, &address, "DELETE", &path, None)
        .await
    {
        Ok(mut detached) => {
            detached["server"] = json!(server);
            Json::<Value>(detached).into_response()
        }
        Err(error) => agent_error(&server, error),
    }
}
