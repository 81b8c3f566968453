//! Snapshots on a recovery server (`docs/snapshots.md`): the group's snapshot set, its NBD
//! exports (`<snapshot>.<lv>` on loopback), and the agent routes.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/groups/{g}/snapshots` | `{"at","writable"?,"name"?}` | `{"name","server","writable","point":{"seq","time"},"exports":[{"volume","export"}],"usage_bytes","snapshot_usage_pct"}` |
//! | `GET /v1/groups/{g}/snapshots` | | `{"server","snapshots":[…as above, "invalid"],"usage_bytes","capacity_bytes","snapshot_usage_pct"}` |
//! | `DELETE /v1/groups/{g}/snapshots/{name}` | | `{"deleted": name}` |

use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use redoubt_datatap::{serve_connection, BackendExport, ExportBackend, Exports};
use redoubt_points::{format_time, Point};
use redoubt_replication::aba::ApplyObserver;
use redoubt_replication::snapshot::{
    Snapshot, SnapshotError, SnapshotExport, SnapshotSet, PRE_RESYNC_SNAPSHOT_NAME,
};
use redoubt_replication::Aba;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::datapath::NBD_CONNECTIONS_MAX;
use crate::http::error;
use crate::Agent;

/// Where snapshot exports listen: loopback, a port of the system's choosing per group.
pub const SNAPSHOT_NBD_LISTEN: &str = "127.0.0.1:0";

/// The snapshots of one group on this recovery server, and their NBD exports.
pub struct GroupSnapshots {
    pub set: Arc<SnapshotSet>,
    server: String,
    exports: Arc<RwLock<Arc<Exports>>>,
    nbd: Mutex<Option<Nbd>>,
}

struct Nbd {
    /// `nbd://127.0.0.1:PORT`
    uri_base: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GroupSnapshots {
    /// Loads the group's snapshots (before the ABA opens: it is the ABA's observer).
    pub fn open(
        server: &str,
        group: &str,
        snapshot_container_dir: &std::path::Path,
        capacity_bytes: u64,
    ) -> Result<Arc<GroupSnapshots>, String> {
        let set = SnapshotSet::open(group, snapshot_container_dir, capacity_bytes)
            .map_err(|error| format!("load the snapshots of group {group}: {error}"))?;
        Ok(Arc::new(GroupSnapshots {
            set,
            server: server.to_string(),
            exports: Arc::new(RwLock::new(Arc::new(Exports::default()))),
            nbd: Mutex::new(None),
        }))
    }

    /// The ABA's observer: the set's, plus re-publishing the exports when the set creates
    /// or deletes the pre-resync snapshot on its own.
    pub fn observer(self: &Arc<Self>) -> Arc<dyn ApplyObserver> {
        self.clone()
    }

    /// Attaches the ABA and starts serving the snapshots' exports.
    pub async fn attach(&self, aba: Arc<Aba>) -> Result<(), String> {
        self.set.attach(aba);
        let listener = tokio::net::TcpListener::bind(SNAPSHOT_NBD_LISTEN)
            .await
            .map_err(|error| {
                format!(
                    "listen for snapshot NBD clients of group {} on {SNAPSHOT_NBD_LISTEN}: {error}",
                    self.set.group()
                )
            })?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("snapshot NBD listener address: {error}"))?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, self.exports.clone(), stopped));
        *lock(&self.nbd) = Some(Nbd {
            uri_base: format!("nbd://{address}"),
            stop,
            task,
        });
        self.refresh_exports();
        Ok(())
    }

    /// Stops the exports (their connections end).
    pub async fn stop(&self) {
        let nbd = lock(&self.nbd).take();
        if let Some(nbd) = nbd {
            let _ = nbd.stop.send(true);
            let _ = nbd.task.await;
        }
    }

    /// Creates a snapshot and exports it (blocking: run it off the async threads). For the
    /// routes below and for test failover (writable snapshots of every LV at one point).
    pub fn create(
        &self,
        name: &str,
        point: &Point,
        writable: bool,
    ) -> Result<Arc<Snapshot>, SnapshotError> {
        let snapshot = self.set.create(name, point, writable)?;
        self.refresh_exports();
        Ok(snapshot)
    }

    /// Stops exporting a snapshot and deletes it (blocking).
    pub fn delete(&self, name: &str) -> Result<(), SnapshotError> {
        self.set.delete(name)?;
        self.refresh_exports();
        Ok(())
    }

    /// Publishes the current snapshots as exports (new connections see them).
    pub fn refresh_exports(&self) {
        let mut list = Vec::new();
        for snapshot in self.set.list() {
            for volume in snapshot.volumes() {
                list.push(BackendExport {
                    name: export_name(&snapshot, &volume.name),
                    description: format!(
                        "redoubt snapshot {} (seq {}) of LV {} of group {}{}",
                        snapshot.name(),
                        snapshot.point_seq(),
                        volume.name,
                        self.set.group(),
                        if snapshot.writable() {
                            ", writable"
                        } else {
                            ""
                        }
                    ),
                    backend: Arc::new(SnapshotExport {
                        snapshot: snapshot.clone(),
                        lv_id: volume.lv_id,
                    }) as Arc<dyn ExportBackend>,
                });
            }
        }
        *self
            .exports
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Arc::new(Exports::with_backends(list));
    }

    fn uri(&self, export: &str) -> String {
        lock(&self.nbd)
            .as_ref()
            .map_or_else(String::new, |nbd| format!("{}/{export}", nbd.uri_base))
    }

    /// The JSON of one snapshot (the `snapshot create --format json` object).
    pub fn snapshot_json(&self, snapshot: &Snapshot) -> Value {
        let exports: Vec<Value> = snapshot
            .volumes()
            .iter()
            .map(|volume| {
                json!({
                    "volume": volume.name,
                    "export": self.uri(&export_name(snapshot, &volume.name)),
                })
            })
            .collect();
        json!({
            "name": snapshot.name(),
            "server": self.server,
            "writable": snapshot.writable(),
            "point": {
                "seq": snapshot.point_seq(),
                "time": snapshot.point_time_unix_ns().map(format_time),
            },
            "exports": exports,
            "usage_bytes": snapshot.usage_bytes(),
            "snapshot_usage_pct": self.set.usage_pct(),
            "invalid": snapshot.invalid(),
        })
    }

    /// Snapshot fields of the group's entry in `GET /v1/status`.
    pub fn status(&self, fields: &mut serde_json::Map<String, Value>) {
        fields.insert("snapshot_usage_pct".into(), json!(self.set.usage_pct()));
        fields.insert("snapshot_usage_bytes".into(), json!(self.set.usage_bytes()));
        fields.insert("snapshots".into(), json!(self.set.list().len()));
        if let Some(note) = self.set.pre_resync_note() {
            fields.insert("pre_resync".into(), json!(note));
        }
    }
}

impl ApplyObserver for GroupSnapshots {
    fn before_apply(
        &self,
        run: &[redoubt_journal::OwnedRecord],
        replica: &std::collections::BTreeMap<u32, Arc<redoubt_volume::Volume>>,
    ) {
        self.set.before_apply(run, replica);
    }

    fn resync_changed(&self, event: redoubt_replication::resync::ResyncEvent) {
        if self.set.keep_pre_resync_snapshot(event) {
            self.refresh_exports();
        }
    }
}

/// `<snapshot>.<lv>`: both are names of the config's rule, so the result is one too.
pub fn export_name(snapshot: &Snapshot, volume: &str) -> String {
    format!("{}.{volume}", snapshot.name())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The accept loop of a group's snapshot exports; each connection sees the exports as they
/// are when it connects. Stopping ends the connections too.
async fn serve(
    listener: tokio::net::TcpListener,
    exports: Arc<RwLock<Arc<Exports>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                if connections.len() >= NBD_CONNECTIONS_MAX {
                    tracing::warn!("too many snapshot NBD connections; refusing one");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let current = exports
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                connections.spawn(async move {
                    if let Err(error) = serve_connection(stream, current).await {
                        tracing::info!(%error, "snapshot NBD connection ended");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "snapshot NBD accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    connections.shutdown().await;
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/groups/{group}/snapshots", get(list).post(create))
        .route("/v1/groups/{group}/snapshots/{name}", delete(remove))
}

fn group_snapshots(
    agent: &Agent,
    group: &str,
) -> Result<Arc<GroupSnapshots>, (StatusCode, String)> {
    let inner = agent.lock();
    let Some(path) = inner.paths.get(group) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "snapshots on {}: group {group} has no data path loaded here",
                agent.name
            ),
        ));
    };
    path.snapshots().ok_or_else(|| {
        (
            StatusCode::CONFLICT,
            format!(
                "snapshots on {}: this server is production of group {group}; snapshots are taken on a recovery server",
                agent.name
            ),
        )
    })
}

fn snapshot_error(agent: &Agent, group: &str, error: SnapshotError) -> Response {
    let status = match &error {
        SnapshotError::InvalidName(_)
        | SnapshotError::Point(_)
        | SnapshotError::OutOfRange { .. } => StatusCode::BAD_REQUEST,
        SnapshotError::Exists(_) | SnapshotError::TooMany | SnapshotError::ReadOnly(_) => {
            StatusCode::CONFLICT
        }
        SnapshotError::NotFound(_) => StatusCode::NOT_FOUND,
        SnapshotError::ContainerFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        SnapshotError::NotAttached => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    crate::http::error(
        status,
        format!("snapshot of group {group} on {}: {error}", agent.name),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    at: String,
    #[serde(default)]
    writable: bool,
    name: Option<String>,
    /// The console sends the server it chose; the agent is that server.
    #[serde(default)]
    #[allow(dead_code)]
    server: Option<String>,
}

async fn create(
    State(agent): State<Arc<Agent>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "snapshot request on {}: invalid JSON body: {parse}",
                    agent.name
                ),
            )
        }
    };
    let point = match Point::parse(&request.at) {
        Ok(point) => point,
        Err(parse) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("snapshot of group {group}: --at {:?}: {parse}", request.at),
            )
        }
    };
    let snapshots = match group_snapshots(&agent, &group) {
        Ok(snapshots) => snapshots,
        Err((status, message)) => return error(status, message),
    };
    if request.name.as_deref() == Some(PRE_RESYNC_SNAPSHOT_NAME) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "snapshot of group {group}: the name {PRE_RESYNC_SNAPSHOT_NAME} is reserved for the snapshot a resync target keeps of its state before a super transaction; choose another name"
            ),
        );
    }
    let creator = snapshots.clone();
    let created = tokio::task::spawn_blocking(move || {
        let name = match request.name {
            Some(name) => name,
            None => default_name(&creator.set, &point)?,
        };
        creator.create(&name, &point, request.writable)
    })
    .await;
    match created {
        Ok(Ok(snapshot)) => Json(snapshots.snapshot_json(&snapshot)).into_response(),
        Ok(Err(failure)) => snapshot_error(&agent, &group, failure),
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("snapshot of group {group}: the task ended abnormally: {join}"),
        ),
    }
}

/// `snap-<seq>` (`-2`, `-3`, … when taken).
fn default_name(set: &SnapshotSet, point: &Point) -> Result<String, SnapshotError> {
    let seq = set.resolve(point)?.seq;
    let base = format!("snap-{seq}");
    for attempt in 1..=redoubt_replication::snapshot::SNAPSHOTS_PER_GROUP_MAX + 1 {
        let name = if attempt == 1 {
            base.clone()
        } else {
            format!("{base}-{attempt}")
        };
        if set.get(&name).is_none() {
            return Ok(name);
        }
    }
    Err(SnapshotError::TooMany)
}

async fn list(State(agent): State<Arc<Agent>>, Path(group): Path<String>) -> Response {
    let snapshots = match group_snapshots(&agent, &group) {
        Ok(snapshots) => snapshots,
        Err((status, message)) => return error(status, message),
    };
    let list: Vec<Value> = snapshots
        .set
        .list()
        .iter()
        .map(|snapshot| snapshots.snapshot_json(snapshot))
        .collect();
    Json(json!({
        "server": agent.name,
        "snapshots": list,
        "usage_bytes": snapshots.set.usage_bytes(),
        "capacity_bytes": snapshots.set.capacity_bytes(),
        "snapshot_usage_pct": snapshots.set.usage_pct(),
    }))
    .into_response()
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    Path((group, name)): Path<(String, String)>,
) -> Response {
    let snapshots = match group_snapshots(&agent, &group) {
        Ok(snapshots) => snapshots,
        Err((status, message)) => return error(status, message),
    };
    let deleter = snapshots.clone();
    let target = name.clone();
    let deleted = tokio::task::spawn_blocking(move || deleter.delete(&target)).await;
    match deleted {
        Ok(Ok(())) => Json(json!({"deleted": name})).into_response(),
        Ok(Err(failure)) => snapshot_error(&agent, &group, failure),
        Err(join) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("delete snapshot {name}: the task ended abnormally: {join}"),
        ),
    }
}
