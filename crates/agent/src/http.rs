//! The HTTP/1.1 JSON API of `docs/agent-api.md`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::steps::{self, StepRequest};
use crate::Agent;

/// Largest step request body: a configuration file is at most 16 MiB, and two travel.
pub const STEP_BODY_BYTES_MAX: usize = 40 << 20;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/step", post(step))
        .merge(crate::attach::routes())
        .route("/metrics", get(metrics))
        .merge(crate::verify_routes::routes())
        .merge(crate::recovery_routes::routes())
        .merge(crate::failover::routes())
        .merge(crate::snapshot_routes::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(STEP_BODY_BYTES_MAX))
        .with_state(agent)
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

async fn health(State(agent): State<Arc<Agent>>) -> Json<Value> {
    Json(json!({
        "server": agent.name,
        "version": env!("CARGO_PKG_VERSION"),
        "time_unix_ms": now_unix_ms(),
        "config_version": agent.config_version(),
    }))
}

async fn status(State(agent): State<Arc<Agent>>) -> Json<Value> {
    let mut document = steps::status_json(&agent);
    if let Some(object) = document.as_object_mut() {
        // Peers refused by mutual TLS since start (`docs/security.md`).
        object.insert("tls".into(), json!(agent.tls.is_some()));
        object.insert(
            "tls_refusals".into(),
            json!(agent.tls.as_ref().map_or(0, |tls| tls.refusals())),
        );
    }
    Json(document)
}

async fn step(State(agent): State<Arc<Agent>>, body: Bytes) -> Response {
    let request: StepRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("step request on {}: invalid JSON body: {parse}", agent.name),
            )
        }
    };
    // The step runs in its own task: a console that goes away mid-step (a crash, a timeout)
    // must not cancel it halfway, and the one-step-at-a-time lock is held until it is done, so
    // the console's retry waits for it instead of colliding with it.
    let runner = agent.clone();
    let (group, step_number, started) = (
        request.group.clone(),
        request.step,
        std::time::Instant::now(),
    );
    let outcome = match tokio::spawn(async move { steps::run(&runner, request).await }).await {
        Ok(outcome) => outcome,
        Err(error) => Err(steps::StepFailure {
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the step task ended abnormally: {error}"),
        }),
    };
    agent.metrics.record_step(
        &group,
        step_number,
        started.elapsed().as_secs_f64(),
        outcome.is_ok(),
    );
    match outcome {
        Ok(message) => Json(json!({"outcome": "done", "message": message})).into_response(),
        Err(failure) => error(failure.status, failure.message),
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text (`crate::metrics`).
async fn metrics(State(agent): State<Arc<Agent>>, headers: axum::http::HeaderMap) -> Response {
    // The same document as `GET /v1/status` (with what that route adds, e.g. TLS refusals).
    let Json(document) = status(State(agent.clone())).await;
    let text = crate::metrics::render(&document, &agent.metrics);
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = crate::metrics::negotiate(text, accept);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: use GET /v1/health, POST /v1/step, GET /v1/status or GET /metrics",
    )
}
