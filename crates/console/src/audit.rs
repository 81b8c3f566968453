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

/// Anonymous refusals written one by one per minute; the others of that minute are counted
/// into one summary entry, so that nobody without a token can push the real entries out of
/// the log (at most `AUDIT_ENTRIES_MAX` are kept): a flood adds at most this many + 1
/// entries a minute.
pub const ANONYMOUS_ENTRIES_PER_MINUTE_MAX: u64 = 20;
const MINUTE_MS: u64 = 60_000;

/// The count of anonymous refusals of the current minute (pure; the middleware holds it).
#[derive(Debug, Default)]
pub struct AnonymousRefusals {
    minute: u64,
    recorded: u64,
    suppressed: u64,
}

/// Anonymous refusals of one minute that were counted, not written one by one.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub minute_start_unix_ms: u64,
    pub count: u64,
}

impl AnonymousRefusals {
    /// An anonymous request was refused at `now_ms`: whether to write its own entry, and
    /// the summary of an earlier minute to write first.
    pub fn on_refusal(&mut self, now_ms: u64) -> (bool, Option<Suppressed>) {
        let summary = self.due(now_ms);
        if self.recorded < ANONYMOUS_ENTRIES_PER_MINUTE_MAX {
            self.recorded += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            (false, summary)
        }
    }

    /// The summary of a minute that has passed, if refusals were counted in it.
    pub fn due(&mut self, now_ms: u64) -> Option<Suppressed> {
        let minute = now_ms / MINUTE_MS;
        if minute == self.minute {
            return None;
        }
        let summary = (self.suppressed > 0).then(|| Suppressed {
            minute_start_unix_ms: self.minute * MINUTE_MS,
            count: self.suppressed,
        });
        *self = AnonymousRefusals {
            minute,
            recorded: 0,
            suppressed: 0,
        };
        summary
    }

    /// The count of the minute under way (for a reader of the log before it ends).
    pub fn pending(&self) -> u64 {
        self.suppressed
    }
}

fn write_suppressed(shared: &Shared, suppressed: Suppressed) {
    record(
        shared,
        AuditEntry {
            id: 0,
            unix_ms: suppressed.minute_start_unix_ms + MINUTE_MS,
            who: "anonymous".into(),
            method: "*".into(),
            path: "*".into(),
            group: None,
            summary: Some(format!(
                "{} more requests without a valid token were refused in the minute from unix ms {} (only the first {ANONYMOUS_ENTRIES_PER_MINUTE_MAX} of a minute are written one by one)",
                suppressed.count, suppressed.minute_start_unix_ms
            )),
            status: StatusCode::UNAUTHORIZED.as_u16(),
            outcome: "refused".into(),
        },
    );
}

/// Writes the summary of a minute of anonymous refusals that has passed.
pub fn flush_anonymous(shared: &Shared, now_ms: u64) {
    let due = shared
        .anonymous_refusals
        .lock()
        .ok()
        .and_then(|mut refusals| refusals.due(now_ms));
    if let Some(suppressed) = due {
        write_suppressed(shared, suppressed);
    }
}

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
    let now_ms = now_unix_ms();
    if who == "anonymous" {
        let (write, due) = match shared.anonymous_refusals.lock() {
            Ok(mut refusals) => refusals.on_refusal(now_ms),
            Err(_) => (true, None),
        };
        if let Some(suppressed) = due {
            write_suppressed(shared, suppressed);
        }
        if !write {
            return;
        }
    } else {
        flush_anonymous(shared, now_ms);
    }
    let summary = response
        .extensions()
        .get::<AuditNote>()
        .map(|note| note.0.clone());
    record(
        shared,
        AuditEntry {
            id: 0,
            unix_ms: now_ms,
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
    // A reader sees the summary of a flood as soon as its minute is over.
    flush_anonymous(&shared, now_unix_ms());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_refusals_beyond_the_minute_share_are_counted_not_written() {
        let mut refusals = AnonymousRefusals::default();
        let start = 10 * MINUTE_MS;
        let mut written = 0;
        for index in 0..2_000 {
            let (write, due) = refusals.on_refusal(start + index);
            assert_eq!(due, None, "nothing due within the minute");
            written += u64::from(write);
        }
        assert_eq!(written, ANONYMOUS_ENTRIES_PER_MINUTE_MAX);
        assert_eq!(refusals.pending(), 2_000 - ANONYMOUS_ENTRIES_PER_MINUTE_MAX);
        assert_eq!(refusals.due(start + 59_999), None);
        // The next minute: the summary is due once, and counting starts again.
        let (write, due) = refusals.on_refusal(start + MINUTE_MS);
        assert!(write);
        assert_eq!(
            due,
            Some(Suppressed {
                minute_start_unix_ms: start,
                count: 2_000 - ANONYMOUS_ENTRIES_PER_MINUTE_MAX
            })
        );
        assert_eq!(
            refusals.due(start + 5 * MINUTE_MS),
            None,
            "nothing was counted"
        );
    }
}
