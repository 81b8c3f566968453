//! The console's HTTP API (axum, JSON). Every route needs `Authorization: Bearer <token>`
//! (401 `{"error"}` otherwise; the operator token is `state_dir/token`, the read-only one
//! `state_dir/token.readonly`; a read-only token on a mutating route gets 403: `auth.rs`;
//! every non-read request is in the audit log: `audit.rs`, `GET /v1/audit`). Errors are
//! `{"error": "...", ...}` with a 4xx/5xx status.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/config` `{"toml", "destroy"?, "file"?}` | `{"version", "plans"}` (plans: `redoubt_plan::report::to_json`); no change: `{"version": current, "plans": []}`; 400 `{"error", "diagnostics": [{file,line,column,field,reason}]}` or `{"error", "plan_errors": [{group,reason}]}`; 409 `{"error"}` if a changed group's initialization is running or failed |
//! | `POST /v1/config/plan` (same body) | `{"base_version", "plans"}`, nothing saved |
//! | `GET /v1/config` | `{"version", "toml"}`; 404 before the first apply |
//! | `GET /v1/config/history` | `[{"version", "saved_unix_ms", "groups": [changed groups]}]`, oldest first |
//! | `GET /v1/init/{group}` | `{"group", "state": idle/running/failed/done, "version", "step", "steps": [{"number", "title", "deletes", "rows": [{"server","role"} or {"volume"} or {}, "state", "error"?, "targets", "attempts"}]}]}` |
//! | `GET /v1/init/{group}/events` | SSE: one `data: {"group","version","step","row","state","error"}` per row (current state first), then `data: {"group","version","state": done/failed,"error"}` and the stream ends |
//! | `POST /v1/init/{group}/retry` | `{"retried_rows", "init"}`; 409 if nothing failed |
//! | `GET /v1/status` | `{"config_version", "groups": [...cli.md shape...], "servers": [{"name","address","reachable","error"?}]}` |

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;

use redoubt_config::parse::CONFIG_FILE_BYTES_MAX;
use redoubt_config::Config;
use redoubt_plan::{GroupPlan, PlanOptions};

use crate::record::{self, InitRecord, InitState, RecordContext};
use crate::runner::{now_unix_ms, InitEvent, Shared};
use crate::status;
use crate::store::{ConfigVersion, StoreError};

/// Largest request body: a maximal configuration file, JSON-escaped.
pub const REQUEST_BODY_BYTES_MAX: usize = 2 * CONFIG_FILE_BYTES_MAX + 64 * 1024;
/// SSE events queued per client before the stream waits for it.
const SSE_QUEUE_MAX: usize = 256;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/config", post(apply).get(show))
        .route("/v1/config/plan", post(dry_run))
        .route("/v1/config/history", get(history))
        .route("/v1/init/{group}", get(init))
        .route("/v1/init/{group}/events", get(events))
        .route("/v1/init/{group}/retry", post(retry))
        .route("/v1/status", get(status_handler))
        .merge(crate::attach::routes())
        .route("/metrics", get(crate::metrics::handler))
        .merge(crate::verify::routes())
        .merge(crate::recovery::routes())
        .merge(crate::failover::routes())
        .merge(crate::recovery_snapshots::routes())
        .merge(crate::operations::routes())
        .merge(crate::audit::routes())
        .merge(crate::auth::routes())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::leader::forward_to_leader,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::auth::require_role,
        ))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(shared)
}

/// An error answer: a status and `{"error": "...", ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!("console store: {error}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The error message is the audit entry's summary (`audit.rs`).
        let note = self.body["error"].as_str().map(crate::audit::note);
        (self.status, note, Json(self.body)).into_response()
    }
}

#[derive(Debug, Deserialize)]
pub struct ConfigBody {
    pub toml: String,
    #[serde(default)]
    pub destroy: bool,
    /// The name diagnostics give the file (default `config.toml`).
    #[serde(default)]
    pub file: Option<String>,
    /// The caller confirmed a destructive change (a group deleted, data deleted): without
    /// it such a change answers 412 `needs_confirmation` and changes nothing.
    #[serde(default)]
    pub confirm: bool,
}

/// The current configuration, parsed (it was valid when saved).
fn current_config(shared: &Shared) -> Result<Option<(ConfigVersion, Config)>, ApiError> {
    let Some(current) = shared.store.current()? else {
        return Ok(None);
    };
    let config = redoubt_config::parse("current.toml", &current.toml).map_err(|diagnostics| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored configuration version {} no longer parses: {}",
                current.version,
                diagnostics
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        )
    })?;
    Ok(Some((current, config)))
}

/// The current version (if any) with its configuration, the new configuration, the plans.
type Planned = (Option<(ConfigVersion, Config)>, Config, Vec<GroupPlan>);

/// Validates and plans `body` against the current configuration.
fn validate_and_plan(shared: &Shared, body: &ConfigBody) -> Result<Planned, ApiError> {
    let file = body.file.as_deref().unwrap_or("config.toml");
    let new = redoubt_config::parse(file, &body.toml).map_err(|diagnostics| ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "error": format!("the configuration has {} error(s)", diagnostics.len()),
            "diagnostics": diagnostics
                .iter()
                .map(|d| json!({
                    "file": d.file, "line": d.line, "column": d.column,
                    "field": d.field, "reason": d.reason,
                }))
                .collect::<Vec<_>>(),
        }),
    })?;
    let current = current_config(shared)?;
    let options = PlanOptions {
        destroy_production_data: body.destroy,
    };
    let plans = redoubt_plan::plan(current.as_ref().map(|(_, config)| config), &new, options)
        .map_err(|errors| ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                "plan_errors": errors
                    .iter()
                    .map(|e| json!({"group": e.group, "reason": e.reason}))
                    .collect::<Vec<_>>(),
            }),
        })?;
    Ok((current, new, plans))
}

fn plans_json(plans: &[GroupPlan]) -> Value {
    serde_json::to_value(redoubt_plan::report::to_json(plans)).unwrap_or(Value::Null)
}

async fn dry_run(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<ConfigBody>,
) -> Result<Json<Value>, ApiError> {
    let (current, new, plans) = validate_and_plan(&shared, &body)?;
    let changed = current.as_ref().is_none_or(|(_, old)| *old != new);
    Ok(Json(json!({
        "base_version": current.map(|(version, _)| version.version).unwrap_or(0),
        "changed": changed,
        "plans": plans_json(&plans),
    })))
}

/// Why a new change to `record`'s group must wait, if it must.
fn busy_message(record: &InitRecord) -> Option<String> {
    match record.state {
        InitState::Done => None,
        InitState::Running => Some(format!(
            "initialization of group {group} is running (step {step}); wait or `redoubt config watch {group}`",
            group = record.group,
            step = record::current_step(&record.steps).unwrap_or(0),
        )),
        InitState::Failed => {
            let (step, error) = record::first_failure(&record.steps).unwrap_or_default();
            Some(format!(
                "initialization of group {group} failed (step {step}: {error}); `redoubt config retry {group}` first",
                group = record.group,
            ))
        }
    }
}

async fn apply(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<ConfigBody>,
) -> Result<Response, ApiError> {
    let _guard = shared.apply_lock.lock().await;
    let (current, new, plans) = validate_and_plan(&shared, &body)?;
    let current_version = current.as_ref().map(|(version, _)| version.version);
    if plans.is_empty() {
        if current.as_ref().is_some_and(|(_, old)| *old == new) {
            return Ok(
                Json(json!({"version": current_version.unwrap_or(0), "plans": []})).into_response(),
            );
        }
        // A change no group sees (servers only, a server no group uses yet): a new version
        // in effect, nothing to initialize.
        let version = current_version.unwrap_or(0).saturating_add(1);
        let saved = ConfigVersion {
            version,
            toml: body.toml.clone(),
            saved_unix_ms: now_unix_ms(),
            groups: Vec::new(),
        };
        shared.store.save_version(&saved, &[])?;
        tracing::info!(
            version,
            "configuration saved; no group changed, nothing to initialize"
        );
        return Ok((
            crate::audit::note(format!(
                "applied configuration version {version}; no group changed"
            )),
            Json(json!({"version": version, "plans": []})),
        )
            .into_response());
    }
    for plan in &plans {
        if let Some(record) = shared.store.init(&plan.group)? {
            if let Some(message) = busy_message(&record) {
                return Err(ApiError::new(StatusCode::CONFLICT, message));
            }
        }
    }
    let deleted_groups: Vec<String> = current
        .as_ref()
        .map(|(_, old)| {
            old.groups
                .iter()
                .filter(|group| new.group(&group.name).is_none())
                .map(|group| group.name.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(why) = crate::audit::destructive(&plans_json(&plans), &deleted_groups) {
        if !body.confirm {
            return Err(ApiError {
                status: StatusCode::PRECONDITION_FAILED,
                body: json!({
                    "error": format!("{why}: confirm with \"confirm\": true (CLI: answer y or pass --yes)"),
                    "needs_confirmation": true,
                }),
            });
        }
    }
    let version = current_version.unwrap_or(0).saturating_add(1);
    let now = now_unix_ms();
    let old = current.as_ref().map(|(_, config)| config);
    let mut records = Vec::with_capacity(plans.len());
    for plan in &plans {
        let record = record::build_record(
            plan,
            plans_json(std::slice::from_ref(plan))
                .as_array()
                .and_then(|array| array.first().cloned())
                .unwrap_or(Value::Null),
            old,
            &new,
            RecordContext {
                version,
                previous_version: current_version,
                destroy: body.destroy,
                now_unix_ms: now,
            },
        )
        .map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, reason))?;
        records.push(record);
    }
    let saved = ConfigVersion {
        version,
        toml: body.toml.clone(),
        saved_unix_ms: now,
        groups: plans.iter().map(|plan| plan.group.clone()).collect(),
    };
    shared.store.save_version(&saved, &records)?;
    tracing::info!(version, groups = ?saved.groups, "configuration saved; initialization starts");
    for record in records {
        shared.spawn_runner(record.group);
    }
    let summary = format!(
        "applied configuration version {version}; groups {}{}{}",
        saved.groups.join(", "),
        if deleted_groups.is_empty() {
            String::new()
        } else {
            format!("; deleted groups {}", deleted_groups.join(", "))
        },
        if body.destroy { "; --destroy" } else { "" },
    );
    Ok((
        crate::audit::note(summary),
        Json(json!({"version": version, "plans": plans_json(&plans)})),
    )
        .into_response())
}

async fn show(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    match shared.store.current()? {
        Some(current) => Ok(Json(
            json!({"version": current.version, "toml": current.toml}),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no configuration has been applied yet",
        )),
    }
}

async fn history(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let versions = shared.store.history()?;
    Ok(Json(Value::Array(
        versions
            .iter()
            .map(|v| json!({"version": v.version, "saved_unix_ms": v.saved_unix_ms, "groups": v.groups}))
            .collect(),
    )))
}

/// The `GET /v1/init/{group}` document of a record.
pub fn init_json(record: &InitRecord) -> Value {
    json!({
        "group": record.group,
        "state": record.state.as_str(),
        "version": record.version,
        "previous_version": record.previous_version,
        "step": record::current_step(&record.steps),
        "started_unix_ms": record.started_unix_ms,
        "finished_unix_ms": record.finished_unix_ms,
        "steps": record.steps.iter().map(|step| json!({
            "number": step.number,
            "title": step.title,
            "deletes": step.deletes.iter().map(|d| json!({
                "server": d.server, "data": d.data, "description": d.description,
            })).collect::<Vec<_>>(),
            "rows": step.rows.iter().map(|row| {
                let mut out = match &row.row {
                    Some(key) => serde_json::to_value(key).unwrap_or(Value::Null),
                    None => json!({}),
                };
                if let Value::Object(map) = &mut out {
                    map.insert("state".into(), json!(row.state.as_str()));
                    map.insert("targets".into(), json!(row.targets.iter().map(|t| &t.server).collect::<Vec<_>>()));
                    map.insert("attempts".into(), json!(row.attempts));
                    if let Some(error) = &row.error {
                        map.insert("error".into(), json!(error));
                    }
                    if let Some(finished) = row.finished_unix_ms {
                        map.insert("finished_unix_ms".into(), json!(finished));
                    }
                }
                out
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

async fn init(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match shared.store.init(&group)? {
        Some(record) => Ok(Json(init_json(&record))),
        None => Ok(Json(
            json!({"group": group, "state": "idle", "version": null, "step": null, "steps": []}),
        )),
    }
}

fn sse_event(event: &InitEvent) -> Event {
    Event::default().data(serde_json::to_string(event).unwrap_or_default())
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    // Subscribe before reading the record: nothing between the two is lost (at worst an
    // event is seen twice, which changes nothing for a client that keeps the latest state).
    let mut live = shared.subscribe(&group);
    let mut closing = shared.closing();
    let record = shared.store.init(&group)?;
    let (sender, receiver) = tokio::sync::mpsc::channel(SSE_QUEUE_MAX);
    let stream_shared = Arc::clone(&shared);
    shared.spawn_task(async move {
        let shared = stream_shared;
        let Some(record) = record else {
            let idle = json!({"group": group, "state": "idle"});
            let _ = sender
                .send(Ok(Event::default().data(idle.to_string())))
                .await;
            return;
        };
        let version = record.version;
        let snapshot = Shared::snapshot_events(&record);
        let ended = record.state != InitState::Running;
        for event in &snapshot {
            if sender.send(Ok(sse_event(event))).await.is_err() {
                return;
            }
        }
        if ended {
            return;
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = closing.wait_for(|closed| *closed) => return,
            };
            match received {
                Ok(event) => {
                    if sender.send(Ok(sse_event(&event))).await.is_err() {
                        return;
                    }
                    if let InitEvent::Final { version: v, .. } = event {
                        if v >= version {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow: send the whole state again from the record.
                    let Ok(Some(record)) = shared.store.init(&group) else {
                        return;
                    };
                    for event in Shared::snapshot_events(&record) {
                        if sender.send(Ok(sse_event(&event))).await.is_err() {
                            return;
                        }
                    }
                    if record.state != InitState::Running {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream: ReceiverStream<Result<Event, Infallible>> = ReceiverStream::new(receiver);
    Ok(Sse::new(stream)
        // More often than the connection idle timeout (`limits.rs`).
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_millis(
            crate::limits::SSE_KEEP_ALIVE_MS,
        )))
        .into_response())
}

async fn retry(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _guard = shared.apply_lock.lock().await;
    let Some(mut record) = shared.store.init(&group)? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("group {group} has no initialization to retry"),
        ));
    };
    if record.state != InitState::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "initialization of group {group} is {}: nothing failed to retry",
                record.state.as_str()
            ),
        ));
    }
    let reset = record::reset_failed(&mut record);
    if reset == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("initialization of group {group} has no failed row"),
        ));
    }
    shared.store.put_init(&record)?;
    shared.spawn_runner(group);
    Ok(Json(
        json!({"retried_rows": reset, "init": init_json(&record)}),
    ))
}

async fn status_handler(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let Some((current, config)) = current_config(&shared)? else {
        return Ok(Json(json!({"groups": [], "servers": []})));
    };
    let inits = shared.store.inits()?;
    let agents = status::collect(&shared.agent, &config).await;
    Ok(Json(status::build(
        &config,
        current.version,
        &inits,
        &agents,
    )))
}
