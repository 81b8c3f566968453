//! Agent routes of online verify and checksum resync (`docs/agent-api.md`, `docs/verify.md`).
//!
//! | route | body / query | answer |
//! |---|---|---|
//! | `POST /v1/groups/{g}/verify/hashes` | `{"seq"?, "region_size_bytes"?, "wait_for_seq_ms"?}` | 202 `{"id","seq","regions_total"}` |
//! | `GET /v1/groups/{g}/verify/hashes` | `?volume=V&from=N&count=M` | progress, and a page of hashes once done |
//! | `DELETE /v1/groups/{g}/verify/hashes` | | `{"cleared": true}` |
//! | `POST /v1/groups/{g}/resync/regions` | `{"regions":[{"volume","region"}],"targets":[server]}` (`[]`: every recovery server) | `{"marked","seq"}` (production only) |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use redoubt_datatap::verify::{
    hash_hex, VerifyError, VerifyHook, VerifySession, VERIFY_REGIONS_MAX,
    VERIFY_REGION_BYTES_DEFAULT, VERIFY_WAIT_FOR_SEQ_MS_DEFAULT,
};
use redoubt_datatap::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error;
use crate::Agent;

/// Most hashes in one page of `GET …/verify/hashes` (32 hex characters each: 2 MiB of JSON).
pub const HASHES_PER_PAGE_MAX: u64 = 65_536;
/// Longest a session may wait for this server to apply the verify point.
pub const WAIT_FOR_SEQ_MS_MAX: u64 = 3_600_000;

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route(
            "/v1/groups/{group}/verify/hashes",
            post(start).get(progress).delete(clear),
        )
        .route("/v1/groups/{group}/resync/regions", post(resync_regions))
}

enum Side {
    Production(Engine),
    Recovery(Arc<VerifyHook>),
}

fn side(agent: &Agent, group: &str) -> Result<Side, Box<Response>> {
    let inner = agent.lock();
    let Some(path) = inner.paths.get(group) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!(
                "verify on {}: group {group} has no data path loaded here",
                agent.name
            ),
        )));
    };
    if let Some(engine) = path.engine() {
        return Ok(Side::Production(engine));
    }
    match path.aba() {
        // A rolled-back replica is paused at an older seq and its rollback writes do not go
        // through the apply thread: it cannot be hashed as of production's point.
        Some((aba, _, _)) if aba.status().paused.load(Ordering::Acquire) => Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "verify on {}: the apply of group {group} is paused by a rollback; resume it first",
                agent.name
            ),
        ))),
        Some((aba, _, _)) => Ok(Side::Recovery(aba.verify_hook().clone())),
        None => Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "verify on {}: group {group} has no running data path",
                agent.name
            ),
        ))),
    }
}

fn hook_of(side: &Side) -> Arc<VerifyHook> {
    match side {
        Side::Production(engine) => engine.verify_hook().clone(),
        Side::Recovery(hook) => hook.clone(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    seq: Option<u64>,
    region_size_bytes: Option<u64>,
    wait_for_seq_ms: Option<u64>,
}

fn verify_error(agent: &Agent, group: &str, failure: VerifyError) -> Response {
    let status = match failure {
        VerifyError::RegionSize { .. } | VerifyError::TooManyRegions { .. } => {
            StatusCode::BAD_REQUEST
        }
        VerifyError::PastSeq { .. } | VerifyError::Busy { .. } => StatusCode::CONFLICT,
        VerifyError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body =
        json!({"error": format!("verify of group {group} on {}: {failure}", agent.name)});
    if let VerifyError::PastSeq { applied_seq, .. } = failure {
        body["applied_seq"] = json!(applied_seq);
    }
    (status, Json(body)).into_response()
}

async fn start(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: StartBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "verify request on {}: invalid JSON body: {parse}",
                    agent.name
                ),
            )
        }
    };
    let side = match side(&agent, &group) {
        Ok(side) => side,
        Err(response) => return *response,
    };
    let wait_for_seq_ms = request
        .wait_for_seq_ms
        .unwrap_or(VERIFY_WAIT_FOR_SEQ_MS_DEFAULT);
    if wait_for_seq_ms > WAIT_FOR_SEQ_MS_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!("verify request on {}: wait_for_seq_ms {wait_for_seq_ms} is over {WAIT_FOR_SEQ_MS_MAX}", agent.name),
        );
    }
    let region_size_bytes = request
        .region_size_bytes
        .unwrap_or(VERIFY_REGION_BYTES_DEFAULT);
    let started = match &side {
        // Production picks the point: its journal's durable seq (every record a replica can
        // hold is at most that), or the seq asked for.
        Side::Production(engine) => {
            let durable = engine.watermarks().durable_seq.load(Ordering::Acquire);
            engine.verify_hook().start(
                request.seq,
                |applied| applied.max(durable),
                region_size_bytes,
                wait_for_seq_ms,
            )
        }
        Side::Recovery(hook) => {
            let Some(seq) = request.seq else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("verify request on {}: a recovery server needs the \"seq\" production chose", agent.name),
                );
            };
            hook.start(
                Some(seq),
                |applied| applied,
                region_size_bytes,
                wait_for_seq_ms,
            )
        }
    };
    match started {
        Ok(session) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": session.id,
                "seq": session.seq,
                "region_size_bytes": session.region_size_bytes,
                "regions_total": session.regions_total(),
            })),
        )
            .into_response(),
        Err(failure) => verify_error(&agent, &group, failure),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    volume: Option<String>,
    from: Option<u64>,
    count: Option<u64>,
}

fn session_json(session: &VerifySession, applied_seq: u64) -> Value {
    let failure = session.failure();
    let state = match (&failure, session.is_done()) {
        (Some(_), _) => "failed",
        (None, true) => "done",
        (None, false) => "running",
    };
    let volumes: Vec<Value> = session
        .volumes()
        .into_iter()
        .map(|(name, size_bytes, regions)| {
            json!({"volume": name, "size_bytes": size_bytes, "regions": regions})
        })
        .collect();
    let mut body = json!({
        "id": session.id,
        "seq": session.seq,
        "applied_seq": applied_seq,
        "state": state,
        "pct": session.pct(),
        "region_size_bytes": session.region_size_bytes,
        "regions_total": session.regions_total(),
        "regions_hashed": session.regions_hashed(),
        "regions_hashed_before_write": session.regions_hashed_before_write.load(Ordering::Relaxed),
        "bytes_read": session.bytes_read.load(Ordering::Relaxed),
        "volumes": volumes,
    });
    if let Some(failure) = failure {
        body["error"] = json!(failure);
    }
    body
}

async fn progress(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let side = match side(&agent, &group) {
        Ok(side) => side,
        Err(response) => return *response,
    };
    let hook = hook_of(&side);
    let Some(session) = hook.session() else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "verify of group {group} on {}: no verify was started",
                agent.name
            ),
        );
    };
    let mut body = session_json(&session, hook.applied_seq());
    if let Some(volume) = query.volume {
        let from = query.from.unwrap_or(0);
        let count = query
            .count
            .unwrap_or(HASHES_PER_PAGE_MAX)
            .min(HASHES_PER_PAGE_MAX);
        match session.page(&volume, from, count) {
            Some(hashes) => {
                let hashes: Vec<String> = hashes.iter().map(hash_hex).collect();
                body["page"] = json!({"volume": volume, "from": from, "hashes": hashes});
            }
            None if session.is_done() && session.failure().is_none() => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "verify of group {group} on {}: no volume {volume}",
                        agent.name
                    ),
                )
            }
            None => {}
        }
    }
    Json(body).into_response()
}

async fn clear(State(agent): State<Arc<Agent>>, Path(group): Path<String>) -> Response {
    match side(&agent, &group) {
        Ok(side) => {
            hook_of(&side).clear();
            Json(json!({"cleared": true})).into_response()
        }
        Err(response) => *response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionRef {
    volume: String,
    region: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncBody {
    regions: Vec<RegionRef>,
    /// The recovery servers whose replicas differ: the others stay consistent while the
    /// regions are resent.
    targets: Vec<String>,
}

/// Checksum resync on production: the named regions (of `DIRTY_REGION_BYTES`) go to the
/// resync bitmap and the super transaction sends them again, in order with new writes.
async fn resync_regions(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: ResyncBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "resync request on {}: invalid JSON body: {parse}",
                    agent.name
                ),
            )
        }
    };
    if request.regions.len() as u64 > VERIFY_REGIONS_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "resync request on {}: {} regions, more than {VERIFY_REGIONS_MAX}",
                agent.name,
                request.regions.len()
            ),
        );
    }
    let engine = match side(&agent, &group) {
        Ok(Side::Production(engine)) => engine,
        Ok(Side::Recovery(_)) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "resync request on {}: this server is not group {group}'s production",
                    agent.name
                ),
            )
        }
        Err(response) => return *response,
    };
    // Names to lv ids, and each region within its LV: a bad name or region changes nothing.
    let volumes: Vec<(String, u32, u64)> = engine
        .verify_hook()
        .volumes()
        .iter()
        .map(|volume| {
            (
                volume.name.clone(),
                volume.lv_id,
                volume.volume.size_bytes(),
            )
        })
        .collect();
    let mut regions = Vec::with_capacity(request.regions.len());
    for reference in &request.regions {
        let Some((_, lv_id, size_bytes)) = volumes
            .iter()
            .find(|(name, _, _)| *name == reference.volume)
        else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "resync request on {}: group {group} has no volume {}",
                    agent.name, reference.volume
                ),
            );
        };
        let count = size_bytes.div_ceil(redoubt_datatap::state::DIRTY_REGION_BYTES);
        if reference.region >= count {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "resync request on {}: volume {} has {count} regions, no region {}",
                    agent.name, reference.volume, reference.region
                ),
            );
        }
        regions.push((*lv_id, reference.region));
    }
    let marked = regions.len();
    let targets = if request.targets.is_empty() {
        redoubt_journal::ResyncTargets::Every
    } else {
        redoubt_journal::ResyncTargets::Only(request.targets.iter().cloned().collect())
    };
    match engine
        .submit(redoubt_datatap::Op::ResyncRegions { regions, targets })
        .await
    {
        Ok(seq) => Json(json!({"marked": marked, "seq": seq})).into_response(),
        Err(failure) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("resync of group {group} on {}: {failure}", agent.name),
        ),
    }
}
