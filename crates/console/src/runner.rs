//! The initialization executor: one task per running group, driven by [`record::next`], that
//! persists each row's state when it starts and when it ends and publishes every change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::{AbortHandle, JoinSet};

use crate::agent::{AgentClient, StepRequest};
use crate::record::{self, InitRecord, InitState, Next, RowKey, RowRef, RowState, Target};
use crate::store::{Store, StoreError};

/// Events buffered per group for slow SSE clients; a client that lags re-reads the record.
pub const EVENTS_BUFFERED_MAX: usize = 1024;

/// One event of `GET /v1/init/{group}/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum InitEvent {
    Row {
        group: String,
        version: u64,
        step: u8,
        row: Option<RowKey>,
        state: RowState,
        error: Option<String>,
    },
    Final {
        group: String,
        version: u64,
        state: InitState,
        error: Option<String>,
    },
}

/// Everything the API handlers and the runners share.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub agent: Arc<dyn AgentClient>,
    pub token: String,
    /// The API tokens and roles (`auth.rs`); starts with `token` as the operator token.
    pub auth: crate::auth::Tokens,
    /// Serializes the check-then-start of `apply` and `retry`.
    pub apply_lock: tokio::sync::Mutex<()>,
    events: Mutex<HashMap<String, broadcast::Sender<InitEvent>>>,
    runners: Mutex<HashMap<String, AbortHandle>>,
    /// Every task the console spawned (executors, event streams), stopped and awaited at
    /// shutdown so that the store is released when `serve` returns.
    tasks: Mutex<JoinSet<()>>,
    /// Turns true when the console shuts down: long-lived responses (SSE) end then.
    closing: tokio::sync::watch::Sender<bool>,
    /// Whether this instance drives initializations (`leader.rs`; always, without etcd).
    pub leadership: crate::leader::Leadership,
    /// Long-running operations (verify, resync, …) and their progress.
    pub operations: crate::operations::Operations,
    /// Anonymous refusals of the current minute, beyond what the audit log takes one by one.
    pub anonymous_refusals: Mutex<crate::audit::AnonymousRefusals>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Shared {
    pub fn new(store: Arc<dyn Store>, agent: Arc<dyn AgentClient>, token: String) -> Self {
        Self {
            store,
            agent,
            auth: crate::auth::Tokens::new(token.clone()),
            token,
            apply_lock: tokio::sync::Mutex::new(()),
            events: Mutex::new(HashMap::new()),
            runners: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            closing: tokio::sync::watch::Sender::new(false),
            leadership: crate::leader::Leadership::solo(),
            operations: crate::operations::Operations::default(),
            anonymous_refusals: Mutex::new(crate::audit::AnonymousRefusals::default()),
        }
    }

    fn sender(&self, group: &str) -> broadcast::Sender<InitEvent> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .entry(group.to_string())
            .or_insert_with(|| broadcast::channel(EVENTS_BUFFERED_MAX).0)
            .clone()
    }

    /// Tells long-lived responses to end (console shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the console shuts down.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn subscribe(&self, group: &str) -> broadcast::Receiver<InitEvent> {
        self.sender(group).subscribe()
    }

    fn publish(&self, event: InitEvent) {
        let group = match &event {
            InitEvent::Row { group, .. } | InitEvent::Final { group, .. } => group.clone(),
        };
        // No subscriber is fine: the record is the truth, events are a courtesy.
        let _ = self.sender(&group).send(event);
    }

    /// Spawns a console task that shutdown stops and awaits.
    pub fn spawn_task<F>(&self, task: F) -> AbortHandle
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap the tasks that ended.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task)
    }

    /// Starts (or restarts) the runner of a group whose record is `running` in the store.
    pub fn spawn_runner(self: &Arc<Self>, group: String) {
        let shared = Arc::clone(self);
        let key = group.clone();
        let handle = self.spawn_task(async move {
            if let Err(error) = shared.run_group(&group).await {
                tracing::error!(group = %group, "initialization executor stopped: {error}");
            }
        });
        let mut runners = self.runners.lock().unwrap_or_else(PoisonError::into_inner);
        runners.retain(|_, handle| !handle.is_finished());
        if let Some(previous) = runners.insert(key, handle) {
            previous.abort();
        }
    }

    /// Stops every task (console shutdown) and waits until they are gone. Rows in flight stay
    /// `running` in the store and run again when the console starts next.
    pub async fn stop_tasks(&self) {
        self.close();
        let mut tasks = {
            let mut guard = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *guard)
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        self.runners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Stops every executor (this instance lost the leadership): their rows stay `running`
    /// in the store for the next leader.
    pub fn stop_runners(&self) {
        let mut runners = self.runners.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, handle) in runners.drain() {
            handle.abort();
        }
    }

    /// Resumes every initialization the store holds as `running` (on the leader only), except
    /// those whose executor runs already.
    pub fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        if !self.leadership.is_leader() {
            return Ok(0);
        }
        let live: std::collections::HashSet<String> = self
            .runners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, handle)| !handle.is_finished())
            .map(|(group, _)| group.clone())
            .collect();
        let mut resumed = 0;
        for record in self.store.inits()? {
            if record.state == InitState::Running && !live.contains(&record.group) {
                tracing::info!(group = %record.group, version = record.version, "resuming initialization");
                self.spawn_runner(record.group);
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    fn row_event(record: &InitRecord, at: RowRef) -> Option<InitEvent> {
        let step = record.steps.get(at.step)?;
        let row = step.rows.get(at.row)?;
        Some(InitEvent::Row {
            group: record.group.clone(),
            version: record.version,
            step: step.number,
            row: row.row.clone(),
            state: row.state,
            error: row.error.clone(),
        })
    }

    /// Every event that describes `record` as it is: one per row, then the final one if the
    /// initialization ended (what a late SSE client gets first).
    pub fn snapshot_events(record: &InitRecord) -> Vec<InitEvent> {
        let mut events = Vec::new();
        for (step_index, step) in record.steps.iter().enumerate() {
            for row_index in 0..step.rows.len() {
                events.extend(Self::row_event(
                    record,
                    RowRef {
                        step: step_index,
                        row: row_index,
                    },
                ));
            }
        }
        if record.state != InitState::Running {
            events.push(Self::final_event(record));
        }
        events
    }

    fn final_event(record: &InitRecord) -> InitEvent {
        InitEvent::Final {
            group: record.group.clone(),
            version: record.version,
            state: record.state,
            error: record::first_failure(&record.steps)
                .map(|(step, error)| format!("step {step}: {error}")),
        }
    }

    fn finish(&self, record: &mut InitRecord, state: InitState) -> Result<(), StoreError> {
        record.state = state;
        record.finished_unix_ms = Some(now_unix_ms());
        store_call(|| self.store.put_init(record))?;
        tracing::info!(group = %record.group, state = state.as_str(), "initialization ended");
        self.publish(Self::final_event(record));
        Ok(())
    }

    async fn run_group(&self, group: &str) -> Result<(), StoreError> {
        let Some(mut record) = self.store.init(group)? else {
            return Ok(());
        };
        if record.state != InitState::Running {
            return Ok(());
        }
        record::prepare_resume(&mut record);
        let config_toml = self
            .store
            .version(record.version)?
            .map(|version| version.toml)
            .ok_or(StoreError::Corrupt {
                context: "read the configuration of an initialization",
                message: format!("version {} is missing", record.version),
            })?;
        let previous_config_toml = match record.previous_version {
            Some(previous) => self.store.version(previous)?.map(|version| version.toml),
            None => None,
        };
        loop {
            match record::next(&record.steps) {
                Next::Done => return self.finish(&mut record, InitState::Done),
                Next::Failed { .. } => return self.finish(&mut record, InitState::Failed),
                // Cannot happen here: a step's rows are all awaited below before deciding again.
                Next::Wait => return Ok(()),
                Next::Run(rows) => {
                    let now = now_unix_ms();
                    for at in &rows {
                        if let Some(row) = record
                            .steps
                            .get_mut(at.step)
                            .and_then(|step| step.rows.get_mut(at.row))
                        {
                            row.state = RowState::Running;
                            row.error = None;
                            row.started_unix_ms = Some(now);
                            row.finished_unix_ms = None;
                            row.attempts = row.attempts.saturating_add(1);
                        }
                    }
                    store_call(|| self.store.put_init(&record))?;
                    for at in &rows {
                        if let Some(event) = Self::row_event(&record, *at) {
                            self.publish(event);
                        }
                    }
                    let mut calls = JoinSet::new();
                    for at in rows {
                        let Some(step) = record.steps.get(at.step) else {
                            continue;
                        };
                        let Some(row) = step.rows.get(at.row) else {
                            continue;
                        };
                        let request = StepRequest {
                            group: record.group.clone(),
                            step: step.number,
                            row: row.row.clone(),
                            config_version: record.version,
                            config_toml: config_toml.clone(),
                            previous_config_toml: previous_config_toml.clone(),
                            destroy: record.destroy,
                        };
                        let agent = Arc::clone(&self.agent);
                        let targets = row.targets.clone();
                        calls.spawn(async move { (at, run_row(agent, targets, request).await) });
                    }
                    while let Some(joined) = calls.join_next().await {
                        let (at, outcome) = match joined {
                            Ok(result) => result,
                            Err(error) => {
                                tracing::error!(group, "step row task ended abnormally: {error}");
                                continue;
                            }
                        };
                        if let Some(row) = record
                            .steps
                            .get_mut(at.step)
                            .and_then(|step| step.rows.get_mut(at.row))
                        {
                            row.finished_unix_ms = Some(now_unix_ms());
                            match outcome {
                                Ok(()) => row.state = RowState::Done,
                                Err(error) => {
                                    tracing::warn!(group, "initialization row failed: {error}");
                                    row.state = RowState::Failed;
                                    row.error = Some(error);
                                }
                            }
                        }
                        store_call(|| self.store.put_init(&record))?;
                        if let Some(event) = Self::row_event(&record, at) {
                            self.publish(event);
                        }
                    }
                    // A row task that panicked is still `running`: mark it failed so the
                    // initialization does not wait for it forever.
                    let mut repaired = false;
                    for row in record
                        .steps
                        .iter_mut()
                        .flat_map(|step| step.rows.iter_mut())
                    {
                        if row.state == RowState::Running {
                            row.state = RowState::Failed;
                            row.error = Some("the console's step task ended abnormally".into());
                            repaired = true;
                        }
                    }
                    if repaired {
                        store_call(|| self.store.put_init(&record))?;
                    }
                }
            }
        }
    }
}

/// Runs a blocking store call (a redb commit with its fsync, an etcd round trip) from an
/// executor without stalling the runtime's other tasks: on a multi-threaded runtime the
/// worker hands its other tasks (status, API requests) to another thread meanwhile.
fn store_call<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

/// Runs one row: its request to each of its agents in turn; the first failure fails the row.
async fn run_row(
    agent: Arc<dyn AgentClient>,
    targets: Vec<Target>,
    request: StepRequest,
) -> Result<(), String> {
    for target in &targets {
        match agent
            .step_to(&target.server, &target.address, &request)
            .await
        {
            Ok(response) if response.outcome == "done" => {}
            Ok(response) => {
                return Err(format!(
                    "{}: outcome {}: {}",
                    target.server,
                    response.outcome,
                    response.message.unwrap_or_default()
                ))
            }
            Err(error) => return Err(format!("{}: {error}", target.server)),
        }
    }
    Ok(())
}
