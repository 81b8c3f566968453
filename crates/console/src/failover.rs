//! Failover, commit/abort and failback across a group's servers (`docs/failover.md`).
//!
//! ```text
//!  failover (planned: production reachable, no --at)
//!     production: drain (write gate closed, every target holds seq S)
//!     chosen recovery server: promote at S ── serves the LVs, journals from S+1
//!     old production and the other recovery server: follow the new production after S
//!  failover (unplanned: production gone, or --at POINT)
//!     chosen recovery server: promote at the point (latest: all it holds)
//!     the other recovery server: follow (rolls back first if it was ahead)
//!     old production: fenced if reachable; it rejoins through failback
//!  failback
//!     old production: fence; list regions its journal wrote after the point
//!     acting production: add it as a target, resend those regions and its own since the
//!       point (super transaction) ── only the delta crosses the network
//!     old production: follow after the resync start; wait until it caught up
//!     then a planned switch back, and the failover context is deleted everywhere
//! ```

// Handlers return axum's `Response` as their error as is: boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::operations::Operation;
use crate::recovery::{answer, call, needs_confirmation};
use crate::runner::{now_unix_ms, Shared};
use crate::verify::{members, parse_body, Member};

/// Longest a failback waits for the old production to catch up after the delta resync.
pub const FAILBACK_CATCH_UP_MS_MAX: u64 = 3_600_000;
const POLL_MS: u64 = 100;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/groups/{group}/failover", post(failover).get(context))
        .route("/v1/groups/{group}/failover/commit", post(commit))
        .route("/v1/groups/{group}/failover/abort", post(abort))
        .route("/v1/groups/{group}/failback", post(failback))
}

/// The failover context the group's servers hold (the newest by `since_unix_ms`).
pub(crate) async fn current_context(
    shared: &Shared,
    group: &str,
    members: &[Member],
) -> Option<Value> {
    let mut newest: Option<Value> = None;
    for member in members {
        if let Ok(answer) = call(
            shared,
            member,
            "GET",
            &format!("/v1/groups/{group}/failover/context"),
            None,
        )
        .await
        {
            let context = answer["context"].clone();
            if context.is_object()
                && newest
                    .as_ref()
                    .is_none_or(|n| n["since_unix_ms"].as_u64() < context["since_unix_ms"].as_u64())
            {
                newest = Some(context);
            }
        }
    }
    newest
}

async fn context(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> Response {
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let context = current_context(&shared, &group, &members).await;
    Json(json!({"group": group, "context": context})).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    server: Option<String>,
    at: Option<String>,
    #[serde(default)]
    test: bool,
    #[serde(default)]
    confirm: bool,
}

fn busy(shared: &Shared, group: &str) -> Option<Response> {
    for kind in ["failover", "failback", "rollback"] {
        if let Some(running) = shared.operations.running(kind, group) {
            return Some(answer(
                StatusCode::CONFLICT,
                format!("a {kind} of group {group} is running ({})", running.id),
            ));
        }
    }
    None
}

fn spawn_operation<F>(shared: &Arc<Shared>, kind: &str, group: &str, work: F) -> Response
where
    F: std::future::Future<Output = Result<(String, Value), String>> + Send + 'static,
{
    let operation = shared.operations.start(kind, group);
    let id = operation.id.clone();
    tokio::spawn(async move {
        match work.await {
            Ok((message, result)) => operation.finish(message, result),
            Err(reason) => operation.fail(reason),
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response()
}

async fn failover(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: FailoverBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if let Some(at) = &request.at {
        if let Err(reason) = redoubt_points::Point::parse(at) {
            return answer(StatusCode::BAD_REQUEST, reason.to_string());
        }
    }
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let target = match &request.server {
        Some(server) => match members.iter().find(|m| &m.name == server) {
            Some(member) if member.role != "production" => member.clone(),
            Some(_) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!("{server} is production of group {group}: pick a recovery server"),
                )
            }
            None => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!("server {server} has no role in group {group}"),
                )
            }
        },
        None => match members.get(1) {
            Some(member) => member.clone(),
            None => return answer(StatusCode::CONFLICT, "the group has no recovery server"),
        },
    };
    if request.test {
        // A test failover: the point as writable snapshots on the chosen server, exported
        // over NBD; production, replication and the replica are untouched. Deleting the
        // snapshot (`redoubt snapshot delete`) ends the test and drops its writes.
        let name = format!("test-failover-{}", now_unix_ms());
        let at = request.at.clone().unwrap_or_else(|| "latest".to_string());
        return match call(
            &shared,
            &target,
            "POST",
            &format!("/v1/groups/{group}/snapshots"),
            Some(json!({"at": at, "writable": true, "name": name, "server": target.name})),
        )
        .await
        {
            Ok(snapshot) => Json(json!({"test": true, "snapshot": snapshot})).into_response(),
            Err(reason) => answer(StatusCode::CONFLICT, format!("test failover: {reason}")),
        };
    }
    if !request.confirm {
        return needs_confirmation(format!(
            "failing group {group} over to {} (it becomes production)",
            target.name
        ));
    }
    if let Some(response) = busy(&shared, &group) {
        return response;
    }
    if current_context(&shared, &group, &members).await.is_some() {
        return answer(
            StatusCode::CONFLICT,
            format!(
                "group {group} is already failed over: fail back first (redoubt failback {group})"
            ),
        );
    }
    let work_shared = Arc::clone(&shared);
    let operation_group = group.clone();
    spawn_operation(&shared, "failover", &group, async move {
        run_failover(
            &work_shared,
            &operation_group,
            &members,
            &target,
            request.at,
        )
        .await
    })
}

async fn run_failover(
    shared: &Arc<Shared>,
    group: &str,
    members: &[Member],
    target: &Member,
    at: Option<String>,
) -> Result<(String, Value), String> {
    let production = &members[0];
    let others: Vec<&Member> = members[1..]
        .iter()
        .filter(|m| m.name != target.name)
        .collect();
    let path = |route: &str| format!("/v1/groups/{group}/failover/{route}");
    // The point: a planned failover drains production; an unplanned one (production
    // unreachable, or a point asked for) resolves the point on the promoted server.
    let mut to_seq = None;
    let planned = if at.is_none() {
        match call(shared, production, "POST", &path("drain"), Some(json!({}))).await {
            Ok(drained) => {
                to_seq = drained["seq"].as_u64();
                true
            }
            Err(reason) => {
                tracing::warn!(%group, %reason, "production cannot be drained: unplanned failover");
                false
            }
        }
    } else {
        false
    };
    if let Some(at) = &at {
        let window = call(
            shared,
            target,
            "GET",
            &format!("/v1/groups/{group}/points"),
            None,
        )
        .await?;
        let markers: Vec<redoubt_points::Marker> =
            serde_json::from_value(window["markers"].clone()).unwrap_or_default();
        // Markers come back with their time as text; resolve by name and seq only.
        let point = redoubt_points::Point::parse(at).map_err(|e| e.to_string())?;
        to_seq = Some(match point {
            redoubt_points::Point::Seq(seq) => seq,
            redoubt_points::Point::Latest => window["last_seq"].as_u64().unwrap_or(0),
            redoubt_points::Point::Mark(name) => markers
                .iter()
                .filter(|m| m.name == name)
                .map(|m| m.seq)
                .max()
                .ok_or_else(|| format!("no marker {name} on {}", target.name))?,
            redoubt_points::Point::Time { .. } => {
                return Err(
                    "failover --at takes latest, seq:N or mark:NAME; roll back by time first"
                        .into(),
                )
            }
        });
        // An unplanned failover to a point: the old production stops taking writes if it
        // can still be reached, and rejoins through failback.
        let _ = call(
            shared,
            production,
            "POST",
            &path("fence"),
            Some(json!({"after_seq": 0})),
        )
        .await;
    }
    let mut targets: Vec<String> = others.iter().map(|m| m.name.clone()).collect();
    if planned {
        targets.push(production.name.clone());
    }
    let mut context = json!({
        "group": group,
        "acting_production": target.name,
        "old_production": production.name,
        "targets": targets,
        "point_seq": to_seq.unwrap_or(0),
        "state": "before_commit",
        "kind": if planned { "planned" } else { "unplanned" },
        "since_unix_ms": now_unix_ms(),
    });
    let promoted = call(
        shared,
        target,
        "POST",
        &path("promote"),
        Some(json!({"context": context, "to_seq": to_seq})),
    )
    .await?;
    let point_seq = promoted["point_seq"].as_u64().unwrap_or(0);
    context["point_seq"] = json!(point_seq);
    let mut followers = Vec::new();
    let mut left_out = Vec::new();
    for member in others.iter().copied().chain(planned.then_some(production)) {
        match call(
            shared,
            member,
            "POST",
            &path("follow"),
            Some(json!({"context": context, "checkpoint_seq": point_seq})),
        )
        .await
        {
            Ok(_) => followers.push(member.name.clone()),
            Err(reason) => left_out.push(reason),
        }
    }
    let message = format!(
        "{} is production of group {group} as of seq {point_seq} ({}); followers: {}{}; commit or abort",
        target.name,
        if planned { "planned, nothing lost" } else { "unplanned" },
        if followers.is_empty() { "none".to_string() } else { followers.join(", ") },
        if left_out.is_empty() { String::new() } else { format!("; not following yet: {}", left_out.join("; ")) },
    );
    Ok((
        message,
        json!({"context": context, "followers": followers, "not_following": left_out}),
    ))
}

async fn set_context_everywhere(
    shared: &Shared,
    group: &str,
    members: &[Member],
    context: &Value,
) -> Vec<String> {
    let mut unreachable = Vec::new();
    for member in members {
        if let Err(reason) = call(
            shared,
            member,
            "POST",
            &format!("/v1/groups/{group}/failover/context"),
            Some(json!({"context": context})),
        )
        .await
        {
            unreachable.push(reason);
        }
    }
    unreachable
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    #[serde(default)]
    confirm: bool,
}

async fn commit(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: ConfirmBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let Some(mut context) = current_context(&shared, &group, &members).await else {
        return answer(
            StatusCode::CONFLICT,
            format!("group {group} is not failed over"),
        );
    };
    if !request.confirm {
        return needs_confirmation(format!(
            "committing the failover of group {group} to {}",
            context["acting_production"]
        ));
    }
    context["state"] = json!("committed");
    let unreachable = set_context_everywhere(&shared, &group, &members, &context).await;
    Json(json!({"context": context, "unreachable": unreachable})).into_response()
}

async fn abort(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    // Aborting a failover is a failback that keeps what the promoted server wrote.
    failback(State(shared), Path(group), body).await
}

async fn failback(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: ConfirmBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let Some(context) = current_context(&shared, &group, &members).await else {
        return answer(
            StatusCode::CONFLICT,
            format!("group {group} is not failed over"),
        );
    };
    if !request.confirm {
        return needs_confirmation(format!(
            "failing group {group} back to {} (delta resync, then a planned switch)",
            context["old_production"]
        ));
    }
    if let Some(response) = busy(&shared, &group) {
        return response;
    }
    let work_shared = Arc::clone(&shared);
    let operation_group = group.clone();
    let operation = shared.operations.start("failback", &group);
    let id = operation.id.clone();
    tokio::spawn(async move {
        match run_failback(
            &work_shared,
            &operation,
            &operation_group,
            &members,
            context,
        )
        .await
        {
            Ok((message, result)) => operation.finish(message, result),
            Err(reason) => operation.fail(reason),
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response()
}

async fn run_failback(
    shared: &Arc<Shared>,
    operation: &Arc<Operation>,
    group: &str,
    members: &[Member],
    mut context: Value,
) -> Result<(String, Value), String> {
    let path = |route: &str| format!("/v1/groups/{group}/failover/{route}");
    let find = |name: &Value| -> Result<Member, String> {
        members
            .iter()
            .find(|m| Some(m.name.as_str()) == name.as_str())
            .cloned()
            .ok_or_else(|| format!("{name} is not a server of group {group}"))
    };
    let acting = find(&context["acting_production"])?;
    let old = find(&context["old_production"])?;
    let point_seq = context["point_seq"].as_u64().unwrap_or(0);
    let mut targets: Vec<String> =
        serde_json::from_value(context["targets"].clone()).unwrap_or_default();
    let mut delta = json!(null);
    if !targets.contains(&old.name) {
        // 1. The old production stops and says what it wrote after the point.
        operation.set_progress(
            5.0,
            format!("fencing {} and listing what it wrote", old.name),
        );
        let fenced = call(
            shared,
            &old,
            "POST",
            &path("fence"),
            Some(json!({"after_seq": point_seq})),
        )
        .await?;
        // 2. The acting production resends those regions and its own since the point.
        targets.push(old.name.clone());
        context["targets"] = json!(targets);
        context["state"] = json!("failing_back");
        operation.set_progress(15.0, "delta resync".to_string());
        let resync = call(
            shared,
            &acting,
            "POST",
            &path("resync"),
            Some(json!({
                "context": context,
                "regions": fenced["regions"],
                "all": fenced["complete"].as_bool() == Some(false),
                "point_seq": point_seq,
            })),
        )
        .await?;
        let checkpoint_seq = resync["checkpoint_seq"].as_u64().unwrap_or(0);
        delta = resync.clone();
        // 3. The old production follows from there.
        call(
            shared,
            &old,
            "POST",
            &path("follow"),
            Some(json!({"context": context, "checkpoint_seq": checkpoint_seq})),
        )
        .await?;
        set_context_everywhere(shared, group, members, &context).await;
    }
    // 4. Wait until the old production holds everything (the delta included).
    let deadline = Instant::now() + Duration::from_millis(FAILBACK_CATCH_UP_MS_MAX);
    loop {
        let status = call(shared, &acting, "GET", "/v1/status", None).await?;
        let entry = status["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == group))
            .cloned()
            .unwrap_or(Value::Null);
        let journal_seq = entry["journal_seq"].as_u64().unwrap_or(u64::MAX);
        let resyncing = entry["needs_resync"].as_bool().unwrap_or(true);
        let progress = call(
            shared,
            &old,
            "GET",
            &format!("/v1/groups/{group}/rollback"),
            None,
        )
        .await;
        let applied = progress
            .as_ref()
            .ok()
            .and_then(|p| p["applied_seq"].as_u64())
            .unwrap_or(0);
        if !resyncing && applied >= journal_seq {
            // What crossed the network to the old production (after compression).
            if let Some(target) = entry["targets"]
                .as_array()
                .and_then(|targets| targets.iter().find(|t| t["server"] == old.name.as_str()))
            {
                delta["sent_bytes"] = target["sent_bytes"].clone();
            }
            break;
        }
        operation.set_progress(
            50.0,
            format!(
                "{} at seq {applied} of {journal_seq}{}",
                old.name,
                if resyncing {
                    ", delta resync running"
                } else {
                    ""
                }
            ),
        );
        if Instant::now() > deadline {
            return Err(format!("{} did not catch up in time", old.name));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    // 5. A planned switch back.
    operation.set_progress(80.0, format!("switching back to {}", old.name));
    let drained = call(shared, &acting, "POST", &path("drain"), Some(json!({}))).await?;
    let seq = drained["seq"].as_u64().unwrap_or(0);
    let back: Vec<String> = members[1..].iter().map(|m| m.name.clone()).collect();
    let back_context = json!({
        "group": group,
        "acting_production": old.name,
        "old_production": old.name,
        "targets": back,
        "point_seq": seq,
        "state": "committed",
        "kind": "planned",
        "since_unix_ms": now_unix_ms(),
    });
    call(
        shared,
        &old,
        "POST",
        &path("promote"),
        Some(json!({"context": back_context, "to_seq": seq})),
    )
    .await?;
    for member in &members[1..] {
        call(
            shared,
            member,
            "POST",
            &path("follow"),
            Some(json!({"context": back_context, "checkpoint_seq": seq})),
        )
        .await?;
    }
    // 6. The configured roles hold again: no failover context anywhere.
    let unreachable = set_context_everywhere(shared, group, members, &Value::Null).await;
    let message = format!(
        "{} is production of group {group} again as of seq {seq}{}",
        old.name,
        match delta["regions"].as_u64() {
            Some(regions) => format!(
                "; delta resync sent {} of {} bytes ({regions} regions)",
                delta["bytes"], delta["volumes_bytes"]
            ),
            None => String::new(),
        }
    );
    Ok((
        message,
        json!({"seq": seq, "delta": delta, "unreachable": unreachable}),
    ))
}
