//! Agent routes of restore points, markers and rollback (`docs/recovery-api.md`).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/groups/{g}/marks` | `{"name"}` | `{"name","seq","time"}` (production: a marker record in the journal) |
//! | `GET /v1/groups/{g}/points` | | `{"server","role","first_seq","first_time","last_seq","last_time","applied_seq","paused","consistent_from_seq","unrestorable":[{"begin_seq","end_seq"}],"markers"}` |
//! | `POST /v1/groups/{g}/rollback` | `{"to"}` | `{"server","from_seq","to_seq","undone_records","redone_records","paused": true}` (recovery) |
//! | `GET /v1/groups/{g}/rollback` | | `{"paused","applied_seq","total_records","done_records"}` (progress; never waits for the apply thread) |
//! | `POST /v1/groups/{g}/resume` | `{}` | `{"server","applied_seq"}` (recovery) |

// Handlers return axum's `Response` as their error as is: boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use redoubt_datatap::{Engine, Op};
use redoubt_points::{format_time, Point, Window};
use redoubt_replication::Aba;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error;
use crate::Agent;

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/groups/{group}/marks", post(mark))
        .route("/v1/groups/{group}/points", get(points))
        .route(
            "/v1/groups/{group}/rollback",
            post(rollback).get(rollback_progress),
        )
        .route("/v1/groups/{group}/resume", post(resume))
}

enum Side {
    Production(Engine),
    Recovery(Arc<Aba>),
}

fn side(agent: &Agent, group: &str, what: &str) -> Result<Side, Response> {
    let inner = agent.lock();
    let Some(path) = inner.paths.get(group) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "{what} on {}: group {group} has no data path loaded here",
                agent.name
            ),
        ));
    };
    if let Some(engine) = path.engine() {
        return Ok(Side::Production(engine));
    }
    match path.aba() {
        Some((aba, _, _)) => Ok(Side::Recovery(aba)),
        None => Err(error(
            StatusCode::CONFLICT,
            format!(
                "{what} on {}: group {group} has no running data path",
                agent.name
            ),
        )),
    }
}

fn time_json(unix_ns: Option<u64>) -> Value {
    unix_ns.map_or(Value::Null, |ns| Value::String(format_time(ns)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkRequest {
    name: String,
}

async fn mark(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: MarkRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(reason) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("mark request body: {reason}"),
            )
        }
    };
    if let Err(reason) = redoubt_points::check_marker_name(&request.name) {
        return error(StatusCode::BAD_REQUEST, reason);
    }
    let engine = match side(&agent, &group, "mark") {
        Ok(Side::Production(engine)) => engine,
        Ok(Side::Recovery(_)) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                "mark: {} is a recovery server of group {group}; markers are written on production",
                agent.name
            ),
            )
        }
        Err(response) => return response,
    };
    let time_ns = crate::http::now_unix_ms().saturating_mul(1_000_000);
    match engine
        .submit(Op::Marker {
            name: request.name.clone(),
        })
        .await
    {
        Ok(seq) => Json(json!({
            "name": request.name,
            "seq": seq,
            "time": format_time(time_ns),
            "server": agent.name,
        }))
        .into_response(),
        Err(reason) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mark: the datatap of group {group} refused the marker: {reason}"),
        ),
    }
}

async fn points(State(agent): State<Arc<Agent>>, Path(group): Path<String>) -> Response {
    match side(&agent, &group, "points") {
        Ok(Side::Production(engine)) => {
            let durable = engine.watermarks().durable_seq.load(Ordering::Acquire);
            Json(json!({
                "server": agent.name,
                "role": "production",
                "first_seq": durable,
                "first_time": Value::Null,
                "last_seq": durable,
                "last_time": Value::Null,
                "applied_seq": durable,
                "paused": false,
                "markers": [],
            }))
            .into_response()
        }
        Ok(Side::Recovery(aba)) => match aba.window().await {
            Ok(window) => {
                let resync = aba
                    .status()
                    .resync
                    .lock()
                    .map(|resync| resync.clone())
                    .unwrap_or_default();
                let history_reset = aba
                    .status()
                    .history_reset
                    .lock()
                    .map(|reset| reset.clone())
                    .unwrap_or_default();
                window_json(&agent.name, &window, &resync, history_reset.as_ref()).into_response()
            }
            Err(reason) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("points of group {group} on {}: {reason}", agent.name),
            ),
        },
        Err(response) => response,
    }
}

fn window_json(
    server: &str,
    window: &redoubt_replication::RestoreWindow,
    resync: &redoubt_replication::resync::ResyncState,
    history_reset: Option<&redoubt_replication::aba::HistoryReset>,
) -> Json<Value> {
    // Seqs of the window where the replica was a mix of two points in time: no restore point.
    let unrestorable: Vec<Value> = resync
        .intervals
        .iter()
        .filter(|interval| {
            interval.begin_seq <= window.last_seq
                && interval.end_seq.is_none_or(|end| end > window.first_seq)
        })
        .map(|interval| {
            json!({
                "begin_seq": interval.begin_seq,
                "end_seq": interval.end_seq,
                "why": "super transaction",
            })
        })
        .collect();
    let time_of = |seq: u64| {
        window
            .times
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .map(|index| window.times[index].1)
    };
    Json(json!({
        "server": server,
        "role": "recovery",
        "first_seq": window.first_seq,
        "first_time": time_json(window.times.first().map(|(_, t)| *t)),
        "last_seq": window.last_seq,
        "last_time": time_json(time_of(window.last_seq)),
        "applied_seq": window.applied_seq,
        "paused": window.paused,
        "consistent_from_seq": resync.consistent_from_seq,
        "unrestorable": unrestorable,
        // Why the window starts where it does, when a failover or failback cut it short.
        "history_reset": history_reset.map(|reset| json!({
            "seq": reset.seq,
            "since": format_time(reset.since_unix_ms.saturating_mul(1_000_000)),
            "reason": reset.reason,
        })),
        "markers": window.markers.iter().map(|marker| json!({
            "name": marker.name,
            "seq": marker.seq,
            "time": format_time(marker.time_unix_ns),
            "in_window": marker.seq >= window.first_seq && marker.seq <= window.last_seq,
        })).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    to: String,
}

fn recovery_aba(agent: &Agent, group: &str, what: &str) -> Result<Arc<Aba>, Response> {
    match side(agent, group, what)? {
        Side::Recovery(aba) => Ok(aba),
        Side::Production(_) => Err(error(
            StatusCode::CONFLICT,
            format!(
                "{what}: {} is production of group {group}; only a replica can be rolled back",
                agent.name
            ),
        )),
    }
}

async fn rollback(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: RollbackRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(reason) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("rollback request body: {reason}"),
            )
        }
    };
    let point = match Point::parse(&request.to) {
        Ok(point) => point,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason.to_string()),
    };
    let aba = match recovery_aba(&agent, &group, "rollback") {
        Ok(aba) => aba,
        Err(response) => return response,
    };
    let window = match aba.window().await {
        Ok(window) => window,
        Err(reason) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("rollback: read the restore window: {reason}"),
            )
        }
    };
    let resolved = match (Window {
        first_seq: window.first_seq,
        last_seq: window.last_seq,
        markers: &window.markers,
        times: &window.times,
    })
    .resolve(&point)
    {
        Ok(resolved) => resolved,
        Err(reason) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("rollback of group {group} on {}: {reason}", agent.name),
            )
        }
    };
    match aba.rollback(resolved.seq).await {
        Ok(report) => Json(json!({
            "server": agent.name,
            "point": request.to,
            "from_seq": report.from_seq,
            "to_seq": report.to_seq,
            "time": time_json(resolved.time_unix_ns),
            "undone_records": report.undone_records,
            "redone_records": report.redone_records,
            "paused": true,
        }))
        .into_response(),
        Err(reason) => error(
            StatusCode::CONFLICT,
            format!(
                "rollback of group {group} on {} to seq {}: {reason}",
                agent.name, resolved.seq
            ),
        ),
    }
}

async fn resume(State(agent): State<Arc<Agent>>, Path(group): Path<String>) -> Response {
    let aba = match recovery_aba(&agent, &group, "resume") {
        Ok(aba) => aba,
        Err(response) => return response,
    };
    match aba.resume().await {
        Ok(applied_seq) => Json(json!({
            "server": agent.name,
            "applied_seq": applied_seq,
            "paused": false,
        }))
        .into_response(),
        Err(reason) => error(
            StatusCode::CONFLICT,
            format!("resume of group {group} on {}: {reason}", agent.name),
        ),
    }
}

async fn rollback_progress(State(agent): State<Arc<Agent>>, Path(group): Path<String>) -> Response {
    let aba = match recovery_aba(&agent, &group, "rollback progress") {
        Ok(aba) => aba,
        Err(response) => return response,
    };
    let status = aba.status();
    Json(json!({
        "server": agent.name,
        "paused": status.paused.load(Ordering::Acquire),
        "applied_seq": status.applied_seq.load(Ordering::Acquire),
        "total_records": status.rollback_total_records.load(Ordering::Relaxed),
        "done_records": status.rollback_done_records.load(Ordering::Relaxed),
    }))
    .into_response()
}
