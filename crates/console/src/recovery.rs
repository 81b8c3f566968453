//! Restore points, markers and rollback, orchestrated by the console
//! (`docs/recovery-api.md`): the console picks the server and forwards to its agent;
//! rollback runs as an operation with progress polled from the replica.

// Handlers return axum's `Response` as their error as is: boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::operations::Operation;
use crate::runner::Shared;
use crate::verify::{members, parse_body, Member};

/// How often a running rollback's progress is read from the replica.
pub const ROLLBACK_POLL_MS: u64 = 250;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/groups/{group}/marks", post(mark))
        .route("/v1/groups/{group}/points", get(points))
        .route("/v1/groups/{group}/rollback", post(rollback))
        .route("/v1/groups/{group}/resume", post(resume))
}

pub(crate) fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The 412 every destructive request without `"confirm": true` gets.
pub(crate) fn needs_confirmation(what: String) -> Response {
    (
        StatusCode::PRECONDITION_FAILED,
        Json(json!({
            "error": format!("{what} needs confirmation: send \"confirm\": true (CLI: --yes)"),
            "needs_confirmation": true,
        })),
    )
        .into_response()
}

/// One call to the agent of `member`; the error names the server.
pub(crate) async fn call(
    shared: &Shared,
    member: &Member,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    shared
        .agent
        .call(&member.name, &member.address, method, path, body.as_ref())
        .await
        .map_err(|error| format!("{}: {error}", member.name))
}

fn member<'a>(members: &'a [Member], server: &str, group: &str) -> Result<&'a Member, Response> {
    members.iter().find(|m| m.name == server).ok_or_else(|| {
        answer(
            StatusCode::BAD_REQUEST,
            format!("server {server} has no role in group {group}"),
        )
    })
}

fn recovery_member<'a>(
    members: &'a [Member],
    server: &str,
    group: &str,
) -> Result<&'a Member, Response> {
    let found = member(members, server, group)?;
    if found.role == "production" {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!("{server} is production of group {group}: only a replica can be rolled back"),
        ));
    }
    Ok(found)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    name: String,
}

async fn mark(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: MarkBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Err(reason) = redoubt_points::check_marker_name(&request.name) {
        return answer(StatusCode::BAD_REQUEST, reason);
    }
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let production = &members[0];
    match call(
        &shared,
        production,
        "POST",
        &format!("/v1/groups/{group}/marks"),
        Some(json!({"name": request.name})),
    )
    .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err(reason) => answer(StatusCode::BAD_GATEWAY, format!("mark: {reason}")),
    }
}

async fn points(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> Response {
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let path = format!("/v1/groups/{group}/points");
    // A group has at most three servers: one after the other is fast enough.
    let mut answers = Vec::with_capacity(members.len());
    for member in &members {
        answers.push(call(&shared, member, "GET", &path, None).await);
    }
    let mut servers = Vec::new();
    let mut markers: BTreeMap<u64, Value> = BTreeMap::new();
    for (member, answer) in members.iter().zip(answers) {
        match answer {
            Ok(mut value) => {
                if let Some(list) = value.get("markers").and_then(Value::as_array) {
                    for marker in list {
                        if let Some(seq) = marker.get("seq").and_then(Value::as_u64) {
                            let entry = markers.entry(seq).or_insert_with(|| {
                                json!({"name": marker["name"], "seq": seq, "time": marker["time"],
                                       "restorable_on": []})
                            });
                            // Where a snapshot, rollback or failover can reach it.
                            if marker.get("in_window").and_then(Value::as_bool) == Some(true) {
                                if let Some(list) = entry["restorable_on"].as_array_mut() {
                                    list.push(json!(member.name));
                                }
                            }
                        }
                    }
                }
                if let Some(object) = value.as_object_mut() {
                    object.remove("markers");
                    // The role it acts in now (a failover changes it); the configured one beside.
                    if !object.get("role").is_some_and(Value::is_string) {
                        object.insert("role".into(), json!(member.role));
                    }
                    object.insert("configured_role".into(), json!(member.role));
                }
                servers.push(value);
            }
            Err(reason) => servers.push(json!({
                "server": member.name,
                "role": member.role,
                "configured_role": member.role,
                "error": reason,
            })),
        }
    }
    Json(json!({
        "group": group,
        "servers": servers,
        "markers": markers.into_values().collect::<Vec<_>>(),
    }))
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    server: String,
    to: String,
    #[serde(default)]
    confirm: bool,
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: RollbackBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Err(reason) = redoubt_points::Point::parse(&request.to) {
        return answer(StatusCode::BAD_REQUEST, reason.to_string());
    }
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let target = match recovery_member(&members, &request.server, &group) {
        Ok(target) => target.clone(),
        Err(response) => return response,
    };
    if !request.confirm {
        return needs_confirmation(format!(
            "rolling back the replica of group {group} on {} to {} (its apply pauses)",
            request.server, request.to
        ));
    }
    if let Some(running) = shared.operations.running("rollback", &group) {
        return answer(
            StatusCode::CONFLICT,
            format!("a rollback of group {group} is running ({})", running.id),
        );
    }
    let operation = shared.operations.start("rollback", &group);
    let id = operation.id.clone();
    tokio::spawn(async move {
        match run_rollback(&shared, &operation, &group, &target, &request.to).await {
            Ok((message, result)) => operation.finish(message, result),
            Err(reason) => operation.fail(reason),
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response()
}

async fn run_rollback(
    shared: &Arc<Shared>,
    operation: &Arc<Operation>,
    group: &str,
    target: &Member,
    to: &str,
) -> Result<(String, Value), String> {
    operation.set_progress(0.0, format!("rolling back {} to {to}", target.name));
    let path = format!("/v1/groups/{group}/rollback");
    let body = json!({"to": to});
    let rollback = call(shared, target, "POST", &path, Some(body));
    tokio::pin!(rollback);
    let progress_path = format!("/v1/groups/{group}/rollback");
    let mut ticker = tokio::time::interval(Duration::from_millis(ROLLBACK_POLL_MS));
    loop {
        tokio::select! {
            outcome = &mut rollback => {
                let result = outcome?;
                let message = format!(
                    "the replica on {server} now holds production's data as of seq {} ({} undone, {} redone); its apply is PAUSED until `redoubt resume {group} -s {server}`",
                    result["to_seq"],
                    result["undone_records"],
                    result["redone_records"],
                    server = target.name,
                );
                return Ok((message, result));
            }
            _ = ticker.tick() => {
                if let Ok(progress) = call(shared, target, "GET", &progress_path, None).await {
                    let total = progress["total_records"].as_u64().unwrap_or(0);
                    let done = progress["done_records"].as_u64().unwrap_or(0);
                    if total > 0 {
                        operation.set_progress(
                            (done as f64 * 100.0 / total as f64).min(99.9),
                            format!("{done} of {total} records"),
                        );
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    server: String,
}

async fn resume(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: ResumeBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let target = match recovery_member(&members, &request.server, &group) {
        Ok(target) => target.clone(),
        Err(response) => return response,
    };
    match call(
        &shared,
        &target,
        "POST",
        &format!("/v1/groups/{group}/resume"),
        Some(json!({})),
    )
    .await
    {
        Ok(result) => Json(result).into_response(),
        Err(reason) => answer(StatusCode::CONFLICT, format!("resume: {reason}")),
    }
}
