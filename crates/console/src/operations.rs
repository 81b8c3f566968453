//! Long-running work the console does for a request (verify, resync, rollback, failover…):
//! an in-memory registry of operations, bounded to the last [`OPERATIONS_KEPT_MAX`], each
//! with its progress and outcome (`docs/recovery-api.md`, "Operations").
//!
//! `POST …` answers 202 `{"operation":"op-N"}`; `GET /v1/operations/{id}` →
//! `{"id","kind","group","state":"running|done|failed","pct","message","result"?,"error"?}`;
//! `GET /v1/operations` lists them, newest first. Operations do not survive a console restart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

/// Operations kept (running ones are never dropped; the oldest finished go first).
pub const OPERATIONS_KEPT_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationState {
    Running,
    Done,
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Done => "done",
            OperationState::Failed => "failed",
        }
    }
}

struct Progress {
    state: OperationState,
    pct: f64,
    message: String,
    result: Option<Value>,
    error: Option<String>,
}

/// One operation; the task doing the work updates it.
pub struct Operation {
    pub id: String,
    pub kind: String,
    pub group: String,
    progress: Mutex<Progress>,
}

impl Operation {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> OperationState {
        self.lock().state
    }

    /// `pct` is clamped to 0..=100.
    pub fn set_progress(&self, pct: f64, message: impl Into<String>) {
        let mut progress = self.lock();
        progress.pct = if pct.is_finite() {
            pct.clamp(0.0, 100.0)
        } else {
            0.0
        };
        progress.message = message.into();
    }

    pub fn finish(&self, message: impl Into<String>, result: Value) {
        let mut progress = self.lock();
        progress.state = OperationState::Done;
        progress.pct = 100.0;
        progress.message = message.into();
        progress.result = Some(result);
    }

    pub fn fail(&self, error: impl Into<String>) {
        let mut progress = self.lock();
        progress.state = OperationState::Failed;
        progress.error = Some(error.into());
    }

    pub fn json(&self) -> Value {
        let progress = self.lock();
        let mut body = json!({
            "id": self.id,
            "kind": self.kind,
            "group": self.group,
            "state": progress.state.as_str(),
            "pct": progress.pct,
            "message": progress.message,
        });
        if let Some(result) = &progress.result {
            body["result"] = result.clone();
        }
        if let Some(error) = &progress.error {
            body["error"] = json!(error);
        }
        body
    }
}

#[derive(Default)]
struct Registry {
    next: u64,
    operations: VecDeque<Arc<Operation>>,
}

/// The console's operations, newest last.
#[derive(Default)]
pub struct Operations {
    registry: Mutex<Registry>,
}

impl Operations {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new running operation.
    pub fn start(&self, kind: &str, group: &str) -> Arc<Operation> {
        let mut registry = self.lock();
        registry.next += 1;
        let operation = Arc::new(Operation {
            id: format!("op-{}", registry.next),
            kind: kind.to_string(),
            group: group.to_string(),
            progress: Mutex::new(Progress {
                state: OperationState::Running,
                pct: 0.0,
                message: "starting".into(),
                result: None,
                error: None,
            }),
        });
        registry.operations.push_back(operation.clone());
        while registry.operations.len() > OPERATIONS_KEPT_MAX {
            let finished = registry
                .operations
                .iter()
                .position(|operation| operation.state() != OperationState::Running);
            match finished {
                Some(index) => {
                    registry.operations.remove(index);
                }
                None => break,
            }
        }
        operation
    }

    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        self.lock()
            .operations
            .iter()
            .find(|operation| operation.id == id)
            .cloned()
    }

    /// A running operation of `kind` on `group`, if any.
    pub fn running(&self, kind: &str, group: &str) -> Option<Arc<Operation>> {
        self.lock()
            .operations
            .iter()
            .find(|operation| {
                operation.kind == kind
                    && operation.group == group
                    && operation.state() == OperationState::Running
            })
            .cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Value> {
        self.lock()
            .operations
            .iter()
            .rev()
            .map(|operation| operation.json())
            .collect()
    }
}

/// `GET /v1/operations` and `GET /v1/operations/{id}`.
pub fn routes() -> axum::Router<Arc<crate::runner::Shared>> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;

    async fn list(State(shared): State<Arc<crate::runner::Shared>>) -> Json<Value> {
        Json(json!({"operations": shared.operations.list()}))
    }
    async fn one(
        State(shared): State<Arc<crate::runner::Shared>>,
        Path(id): Path<String>,
    ) -> axum::response::Response {
        match shared.operations.get(&id) {
            Some(operation) => Json(operation.json()).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no operation {id} (the console keeps the last {OPERATIONS_KEPT_MAX}, and none across a restart)")})),
            )
                .into_response(),
        }
    }
    axum::Router::new()
        .route("/v1/operations", get(list))
        .route("/v1/operations/{id}", get(one))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_keeps_the_last_operations_and_every_running_one() {
        let operations = Operations::default();
        let first = operations.start("verify", "erp");
        for _ in 0..OPERATIONS_KEPT_MAX + 10 {
            operations.start("verify", "erp").finish("ok", json!({}));
        }
        // The running one survives; finished ones beyond the bound are gone.
        assert!(operations.get(&first.id).is_some());
        assert_eq!(operations.list().len(), OPERATIONS_KEPT_MAX);
        assert_eq!(
            operations.running("verify", "erp").map(|op| op.id.clone()),
            Some(first.id.clone())
        );
        first.set_progress(250.0, "hashing");
        assert_eq!(first.json()["pct"], json!(100.0));
        first.fail("boom");
        assert_eq!(first.json()["state"], json!("failed"));
        assert!(operations.running("verify", "erp").is_none());
    }
}
