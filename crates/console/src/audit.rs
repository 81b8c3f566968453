//! The audit log: who did what, when, with what outcome (`docs/security.md`).
//!
//! Every API request that is not a read gets one entry, written by the authentication
//! middleware (`crate::auth::require_role`) after the handler answered, refused requests
//! included, so routes added later are covered without doing anything. A handler may add a
//! one-line summary with [`note`] (an error answer's message becomes the summary by
//! itself). Entries live in the console's store (`Store::append_audit`), the oldest dropped
//! beyond [`AUDIT_ENTRIES_MAX`]. No token, no request body, no secret is ever recorded.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::runner::{now_unix_ms, Shared};

/// Entries kept; older ones are dropped when a new one is written.
pub const AUDIT_ENTRIES_MAX: u64 = 100_000;
/// Longest path or summary kept in an entry, in bytes.
pub const AUDIT_TEXT_BYTES_MAX: usize = 1024;
/// Most entries one `GET /v1/audit` returns.
pub const AUDIT_PAGE_ENTRIES_MAX: usize = 1000;

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing; assigned by the store.
    pub id: u64,
    pub unix_ms: u64,
    /// The role of the token (`operator`, `read-only`), or `anonymous` without a valid one.
    pub who: String,
    pub method: String,
    pub path: String,
    /// The group the request concerns, when its path names one.
    pub group: Option<String>,
    /// What the handler said it did, or the error it answered.
    pub summary: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok`, `refused` (401, 403, 409, 412, other 4xx) or `failed` (5xx).
    pub outcome: String,
}

/// A handler's summary of what it did, carried in the response's extensions.
#[derive(Clone, Debug)]
pub struct AuditNote(pub String);

/// The response part a handler adds to give its audit entry a summary.
pub fn note(summary: impl Into<String>) -> Extension<AuditNote> {
    Extension(AuditNote(summary.into()))
}

fn bounded(mut text: String) -> String {
    if text.len() > AUDIT_TEXT_BYTES_MAX {
        let mut end = AUDIT_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The group a path names: the segment after `init`, `groups` or `group`.
pub fn group_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments
        .windows(2)
        .find(|pair| matches!(pair[0], "init" | "groups" | "group"))
        .map(|pair| bounded(pair[1].to_string()))
}

fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "failed"
    } else if status.is_client_error() {
        "refused"
    } else {
        "ok"
    }
}

/// Writes one entry. The audit never fails a request: a store error is logged.
pub fn record(shared: &Shared, mut entry: AuditEntry) {
    entry.path = bounded(entry.path);
    entry.summary = entry.summary.map(bounded);
    if let Err(error) = shared.store.append_audit(&entry) {
        tracing::error!(%error, method = %entry.method, path = %entry.path, "write audit entry");
    }
}

/// The entry of a request `who` made and the `response` it got.
pub fn record_response(
    shared: &Shared,
    who: &str,
    method: &Method,
    path: &str,
    response: &Response,
) {
    let status = response.status();
    let summary = response
        .extensions()
        .get::<AuditNote>()
        .map(|note| note.0.clone());
    record(
        shared,
        AuditEntry {
            id: 0,
            unix_ms: now_unix_ms(),
            who: who.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            group: group_of(path),
            summary,
            status: status.as_u16(),
            outcome: outcome(status).to_string(),
        },
    );
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/audit?after=ID&limit=N`: entries after `after`, oldest first.
async fn list(State(shared): State<Arc<Shared>>, Query(query): Query<ListQuery>) -> Response {
    let limit = query
        .limit
        .unwrap_or(AUDIT_PAGE_ENTRIES_MAX)
        .clamp(1, AUDIT_PAGE_ENTRIES_MAX);
    match shared.store.audit_entries(query.after, limit) {
        Ok(entries) => {
            let next_after = entries.last().map_or(query.after, |entry| entry.id);
            Json(json!({"entries": entries, "next_after": next_after})).into_response()
        }
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}

/// `GET /v1/audit`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v1/audit", get(list))
}

/// Whether applying `plans` (the plan JSON of `redoubt_plan::report::to_json`) needs the
/// caller's explicit confirmation: a group is deleted, or a step deletes data.
pub fn destructive(plans: &serde_json::Value, deleted_groups: &[String]) -> Option<String> {
    if !deleted_groups.is_empty() {
        return Some(format!(
            "this configuration deletes group(s) {}",
            deleted_groups.join(", ")
        ));
    }
    let deletes_data = plans
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|plan| plan["steps"].as_array().cloned().unwrap_or_default())
        .any(|step| {
            step["deletes"]
                .as_array()
                .is_some_and(|deletes| deletes.iter().any(|d| d["data"] == true))
        });
    deletes_data.then(|| "this initialization deletes data".to_string())
}
