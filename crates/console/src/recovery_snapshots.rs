//! Snapshots through the console (`docs/recovery-api.md`, `docs/snapshots.md`): the console
//! checks the request, picks the recovery server and forwards to its agent; an agent's 4xx
//! answer comes back with its status and message.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/groups/{g}/snapshots` | `{"server","at","writable"?,"name"?}` | the agent's snapshot object |
//! | `GET /v1/groups/{g}/snapshots` | | `{"snapshots":[…],"servers":[{"server","usage_bytes","capacity_bytes","snapshot_usage_pct","error"?}]}` |
//! | `DELETE /v1/groups/{g}/snapshots/{name}?server=S` | | `{"deleted": name}` |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::AgentError;
use crate::runner::Shared;
use crate::verify::{members, Member};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/groups/{group}/snapshots", get(list).post(create))
        .route("/v1/groups/{group}/snapshots/{name}", delete(remove))
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The agent's own refusal (4xx) keeps its status; anything else is a bad gateway.
fn agent_failure(server: &str, error: AgentError) -> Response {
    match error {
        AgentError::Refused {
            status, message, ..
        } if (400..500).contains(&status) => answer(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("{server}: {message}"),
        ),
        AgentError::Refused {
            status: 507,
            message,
            ..
        } => answer(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("{server}: {message}"),
        ),
        error => answer(StatusCode::BAD_GATEWAY, format!("{server}: {error}")),
    }
}

fn valid_name(name: &str) -> bool {
    redoubt_config::is_valid_name(name)
}

/// The recovery server `server` of `group` (a `Response` error: handlers return it as it is).
#[allow(clippy::result_large_err)]
fn recovery_server(members: &[Member], server: &str, group: &str) -> Result<Member, Response> {
    let Some(found) = members.iter().find(|member| member.name == server) else {
        let recovery: Vec<&str> = members
            .iter()
            .filter(|member| member.role != "production")
            .map(|member| member.name.as_str())
            .collect();
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!(
                "server {server} is not a recovery server of group {group} (its recovery servers: {})",
                recovery.join(", ")
            ),
        ));
    };
    if found.role == "production" {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!("{server} is production of group {group}: snapshots are taken of a replica, on a recovery server"),
        ));
    }
    Ok(found.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    server: String,
    at: String,
    #[serde(default)]
    writable: bool,
    name: Option<String>,
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: CreateBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("snapshot request: invalid JSON body: {error}"),
            )
        }
    };
    if let Err(error) = redoubt_points::Point::parse(&request.at) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("snapshot of group {group}: at {:?}: {error}", request.at),
        );
    }
    if let Some(name) = request.name.as_deref().filter(|name| !valid_name(name)) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("invalid snapshot name {name:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
        );
    }
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let server = match recovery_server(&members, &request.server, &group) {
        Ok(server) => server,
        Err(response) => return response,
    };
    let mut forwarded = json!({"at": request.at, "writable": request.writable});
    if let Some(name) = &request.name {
        forwarded["name"] = json!(name);
    }
    match shared
        .agent
        .call(
            &server.name,
            &server.address,
            "POST",
            &format!("/v1/groups/{group}/snapshots"),
            Some(&forwarded),
        )
        .await
    {
        Ok(created) => Json(created).into_response(),
        Err(error) => agent_failure(&server.name, error),
    }
}

async fn list(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> Response {
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let mut snapshots = Vec::new();
    let mut servers = Vec::new();
    for member in members.iter().filter(|member| member.role != "production") {
        let path = format!("/v1/groups/{group}/snapshots");
        match shared
            .agent
            .call(&member.name, &member.address, "GET", &path, None)
            .await
        {
            Ok(answer) => {
                if let Some(list) = answer.get("snapshots").and_then(Value::as_array) {
                    snapshots.extend(list.iter().cloned());
                }
                servers.push(json!({
                    "server": member.name,
                    "usage_bytes": answer.get("usage_bytes"),
                    "capacity_bytes": answer.get("capacity_bytes"),
                    "snapshot_usage_pct": answer.get("snapshot_usage_pct"),
                }));
            }
            Err(error) => servers.push(json!({"server": member.name, "error": error.to_string()})),
        }
    }
    Json(json!({"group": group, "snapshots": snapshots, "servers": servers})).into_response()
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path((group, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if !valid_name(&name) {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("invalid snapshot name {name:?}"),
        );
    }
    let Some(server) = query.get("server") else {
        return answer(
            StatusCode::BAD_REQUEST,
            "delete a snapshot: ?server=S names the recovery server that holds it",
        );
    };
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let server = match recovery_server(&members, server, &group) {
        Ok(server) => server,
        Err(response) => return response,
    };
    match shared
        .agent
        .call(
            &server.name,
            &server.address,
            "DELETE",
            &format!("/v1/groups/{group}/snapshots/{name}"),
            None,
        )
        .await
    {
        Ok(deleted) => Json(deleted).into_response(),
        Err(error) => agent_failure(&server.name, error),
    }
}
