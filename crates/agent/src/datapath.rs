//! The data path of one group on this server: on production the datatap (engine, NBD
//! exports) and one send process (LCA) per recovery server; on a recovery server the apply
//! process (ABA). Started by steps 14, 15, 16 and on agent start, stopped by the deleting
//! steps, 17 and agent shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redoubt_config::{Compression, Config, Mode, NbdListen, Role};
use redoubt_datatap::{
    bind as nbd_bind, serve_connection as nbd_serve_connection, Bound, Engine, EngineConfig,
    Export, Exports, Listen, Op,
};
use redoubt_replication::{lca, Aba, AbaConfig, LcaConfig, TargetStatus, Targets};
use redoubt_volume::{ContainerCapacities, GroupStore, VolumeSpec};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long stopping waits for a commit or apply thread to exit once its last handle is gone.
pub const THREAD_STOP_TIMEOUT_MS: u64 = 30_000;
/// NBD connections served at once by one group's export listener.
pub const NBD_CONNECTIONS_MAX: usize = 256;
/// zstd level of the send process when the group asks for compression.
pub const ZSTD_LEVEL: i32 = 1;

/// Everything the data path of one group on one server is started from: two equal specs
/// mean the running data path already matches the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSpec {
    pub group: String,
    pub server: String,
    pub role: Role,
    /// The server acting as the group's production (this one, when `role` is production):
    /// a recovery data path takes records from its send process only.
    pub production: String,
    pub data_dir: PathBuf,
    pub volumes: Vec<VolumeSpec>,
    pub capacities: ContainerCapacities,
    pub nbd_listen: Option<NbdListen>,
    /// The exports require NBD STARTTLS with the agent's TLS identity (`nbd_tls = true`).
    pub nbd_tls: bool,
    pub mode: Mode,
    /// (recovery server name, its agent address), recovery 1 first.
    pub targets: Vec<(String, String)>,
    pub compression: Compression,
    pub throttle_bytes_per_second: u64,
    pub retention_seconds: u64,
}

impl PathSpec {
    /// The spec of `server` in `group`, or `None` when the server has no role in it.
    pub fn from_config(
        config: &Config,
        group: &str,
        server: &str,
    ) -> Result<Option<PathSpec>, String> {
        let Some(group) = config.group(group) else {
            return Ok(None);
        };
        let Some(role) = group.role_of(server) else {
            return Ok(None);
        };
        let this = config
            .server(server)
            .ok_or_else(|| format!("server {server} is not defined in the configuration"))?;
        let volumes = group
            .volumes
            .iter()
            .map(|volume| VolumeSpec {
                name: volume.name.clone(),
                size_bytes: volume.size_bytes,
                // A replica is always a container LV, never a production source.
                source: if role == Role::Production {
                    volume.source.clone()
                } else {
                    None
                },
            })
            .collect();
        let mut targets = Vec::new();
        if role == Role::Production {
            for name in &group.recovery {
                let target = config
                    .server(name)
                    .ok_or_else(|| format!("recovery server {name} is not defined"))?;
                targets.push((name.clone(), target.address.clone()));
            }
        }
        let spec = PathSpec {
            group: group.name.clone(),
            server: server.to_string(),
            role,
            production: group.production.clone(),
            data_dir: this.data_dir.clone(),
            volumes,
            capacities: ContainerCapacities {
                replication_bytes: group.containers.replication_bytes,
                log_record_file_bytes: group.containers.log_record_file_bytes,
                snapshot_bytes: group.containers.snapshot_bytes,
            },
            nbd_listen: if role == Role::Production {
                this.nbd_listen.clone()
            } else {
                None
            },
            nbd_tls: this.nbd_tls,
            retention_seconds: group.retention_seconds,
            mode: group.mode,
            targets,
            compression: group.compression,
            throttle_bytes_per_second: group.throttle_bytes_per_second,
        };
        // A failover context on this server says which role it acts in now.
        match crate::failover::load(&spec.data_dir, &spec.group)? {
            Some(context) => crate::failover::adjust(spec, config, &context),
            None => Ok(Some(spec)),
        }
    }

    /// Whether `other` can keep this spec's engine and only needs new send processes.
    pub fn same_engine(&self, other: &PathSpec) -> bool {
        self.role == other.role
            && self.data_dir == other.data_dir
            && self.volumes == other.volumes
            && self.capacities == other.capacities
            && self.nbd_listen == other.nbd_listen
            && self.nbd_tls == other.nbd_tls
            && self.mode == other.mode
            && self.production == other.production
            && self.targets.is_empty() == other.targets.is_empty()
    }
}

/// A running data path.
pub struct DataPath {
    pub spec: PathSpec,
    pub version: u64,
    running: Running,
}

enum Running {
    Production(Box<Production>),
    Recovery(Recovery),
}

struct Production {
    engine: Engine,
    commit_thread: Option<std::thread::JoinHandle<()>>,
    nbd: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    /// (volume, NBD URI)
    exports: Vec<(String, String)>,
    lcas: Lcas,
    /// The production fence; the engine's write gate is open only while it holds.
    fence: crate::fencing::Held,
}

struct Lcas {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    targets: Arc<Targets>,
    names: Vec<String>,
}

/// The replication connections of one ABA; `None` once stopping began, so no new one starts.
pub type AbaConnections = Arc<Mutex<Option<JoinSet<()>>>>;

struct Recovery {
    aba: Arc<Aba>,
    /// The group's snapshots and their exports (`snapshot_routes.rs`).
    snapshots: Arc<crate::snapshot_routes::GroupSnapshots>,
    apply_thread: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    connections: AbaConnections,
}

impl DataPath {
    /// Starts the data path `spec` describes, with `version` as the replication protocol's
    /// configuration version.
    pub async fn start(spec: PathSpec, version: u64) -> Result<DataPath, String> {
        let running = match spec.role {
            Role::Production => Running::Production(Box::new(start_production(&spec).await?)),
            Role::Recovery1 | Role::Recovery2 => Running::Recovery(start_recovery(&spec).await?),
        };
        Ok(DataPath {
            spec,
            version,
            running,
        })
    }

    /// The datatap engine when this is a production data path.
    pub fn engine(&self) -> Option<Engine> {
        match &self.running {
            Running::Production(production) => Some(production.engine.clone()),
            Running::Recovery(_) => None,
        }
    }

    /// The group's snapshots when this is a recovery data path.
    pub fn snapshots(&self) -> Option<Arc<crate::snapshot_routes::GroupSnapshots>> {
        match &self.running {
            Running::Recovery(recovery) => Some(recovery.snapshots.clone()),
            Running::Production(_) => None,
        }
    }

    /// The send processes' target statuses (name, status) when this is production.
    pub fn target_statuses(&self) -> Vec<(String, Arc<TargetStatus>)> {
        match &self.running {
            Running::Production(production) => production
                .lcas
                .names
                .iter()
                .cloned()
                .zip(production.lcas.targets.statuses.iter().cloned())
                .collect(),
            Running::Recovery(_) => Vec::new(),
        }
    }

    /// The ABA to hand replication connections to, with its connection set.
    pub fn aba(&self) -> Option<(Arc<Aba>, AbaConnections, watch::Receiver<bool>)> {
        match &self.running {
            Running::Recovery(recovery) => Some((
                recovery.aba.clone(),
                recovery.connections.clone(),
                recovery.stop.subscribe(),
            )),
            Running::Production(_) => None,
        }
    }

    /// Why the data path stopped working on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        match &self.running {
            Running::Production(production) => production.engine.failure(),
            Running::Recovery(recovery) => match &recovery.apply_thread {
                Some(thread) if thread.is_finished() => {
                    Some("the apply thread has stopped (see the agent's log)".into())
                }
                _ => None,
            },
        }
    }

    /// Restarts only the send processes, with `spec`'s targets and tunables. The caller
    /// checked [`PathSpec::same_engine`].
    pub async fn restart_lcas(&mut self, spec: PathSpec, version: u64) {
        if let Running::Production(production) = &mut self.running {
            let lcas = start_lcas(&spec, &production.engine);
            let old = std::mem::replace(&mut production.lcas, lcas);
            stop_lcas(old).await;
        }
        self.spec = spec;
        self.version = version;
    }

    /// Stops everything: send processes, exports, a final checkpoint, the threads.
    pub async fn stop(self) -> Result<(), String> {
        let group = self.spec.group.clone();
        match self.running {
            Running::Production(production) => {
                let Production {
                    engine,
                    commit_thread,
                    nbd,
                    lcas,
                    fence,
                    ..
                } = *production;
                stop_lcas(lcas).await;
                if let Some((stop, task)) = nbd {
                    let _ = stop.send(true);
                    let _ = task.await;
                }
                fence.release().await;
                let checkpoint = engine.submit(Op::Checkpoint).await;
                drop(engine);
                let joined =
                    join_thread(commit_thread, &format!("commit thread of group {group}")).await;
                checkpoint
                    .map_err(|error| format!("final checkpoint of group {group}: {error}"))?;
                joined
            }
            Running::Recovery(recovery) => {
                recovery.snapshots.stop().await;
                let _ = recovery.stop.send(true);
                let connections = recovery
                    .connections
                    .lock()
                    .ok()
                    .and_then(|mut set| set.take());
                if let Some(mut connections) = connections {
                    connections.shutdown().await;
                }
                drop(recovery.aba);
                join_thread(
                    recovery.apply_thread,
                    &format!("apply thread of group {group}"),
                )
                .await
            }
        }
    }

    /// The group's entry of `GET /v1/status` (without name and role).
    pub fn status(&self, fields: &mut serde_json::Map<String, Value>) {
        match &self.running {
            Running::Production(production) => {
                let watermarks = production.engine.watermarks();
                let exports: Vec<Value> = production
                    .exports
                    .iter()
                    .map(|(volume, export)| json!({"volume": volume, "export": export}))
                    .collect();
                fields.insert("exports".into(), Value::Array(exports));
                fields.insert(
                    "journal_seq".into(),
                    json!(watermarks.durable_seq.load(Ordering::Acquire)),
                );
                fields.insert(
                    "applied_seq".into(),
                    json!(watermarks.applied_seq.load(Ordering::Acquire)),
                );
                fields.insert(
                    "needs_resync".into(),
                    json!(watermarks.needs_resync.load(Ordering::Acquire)),
                );
                fields.insert(
                    "sync_degraded".into(),
                    json!(watermarks.sync_degraded.load(Ordering::Acquire)),
                );
                // The source backlog: how full the log record file container is.
                fields.insert(
                    "journal_usage_pct".into(),
                    json!(percent(
                        watermarks.journal_bytes.load(Ordering::Relaxed),
                        self.spec.capacities.log_record_file_bytes
                    )),
                );
                // Of the running super transaction (full, overflow or checksum resync).
                let total_bytes = watermarks.resync_total_bytes.load(Ordering::Acquire);
                let remaining = watermarks.resync_remaining_bytes.load(Ordering::Acquire);
                fields.insert("resync_remaining_bytes".into(), json!(remaining));
                let super_transaction_pct = if total_bytes == 0 {
                    100.0
                } else {
                    100.0 - (remaining.min(total_bytes) as f64 * 100.0 / total_bytes as f64)
                };
                let resync_targets = watermarks
                    .resync_targets
                    .lock()
                    .map(|targets| targets.clone())
                    .unwrap_or_default();
                let targets: Vec<Value> = production
                    .lcas
                    .names
                    .iter()
                    .zip(production.lcas.targets.statuses.iter())
                    .map(|(name, status)| {
                        // A server the super transaction is not for holds the data already.
                        let pct = if resync_targets.includes(name) {
                            super_transaction_pct
                        } else {
                            100.0
                        };
                        target_json(name, status, pct)
                    })
                    .collect();
                fields.insert("targets".into(), Value::Array(targets));
            }
            Running::Recovery(recovery) => {
                recovery.snapshots.status(fields);
                let status = recovery.aba.status();
                fields.insert(
                    "connected".into(),
                    json!(status.connected.load(Ordering::Acquire)),
                );
                for (key, value) in [
                    ("received_seq", &status.received_seq),
                    ("durable_seq", &status.durable_seq),
                    ("applied_seq", &status.applied_seq),
                    ("undo_first_seq", &status.undo_first_seq),
                    ("resync_begin_seq", &status.resync_begin_seq),
                ] {
                    fields.insert(key.into(), json!(value.load(Ordering::Acquire)));
                }
                // False during a super transaction, and before the first one ended on a
                // replica that did not receive everything from seq 1.
                fields.insert(
                    "replica_consistent".into(),
                    json!(status.replica_synced.load(Ordering::Acquire)),
                );
                // A rollback paused apply: records are stored, not applied, until resume.
                fields.insert(
                    "apply_paused".into(),
                    json!(status.paused.load(Ordering::Acquire)),
                );
                // The target backlog: how full its journal copy is.
                fields.insert(
                    "journal_usage_pct".into(),
                    json!(percent(
                        status.journal_bytes.load(Ordering::Relaxed),
                        self.spec.capacities.log_record_file_bytes
                    )),
                );
            }
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part.min(whole) as f64 * 100.0 / whole as f64
    }
}

fn target_json(name: &str, status: &TargetStatus, super_transaction_pct: f64) -> Value {
    let last_error = status
        .last_error
        .lock()
        .ok()
        .and_then(|error| error.clone());
    json!({
        "server": name,
        "connected": status.connected.load(Ordering::Acquire),
        "durable_seq": status.durable_seq.load(Ordering::Acquire),
        "applied_seq": status.applied_seq.load(Ordering::Acquire),
        "sent_seq": status.sent_seq.load(Ordering::Acquire),
        "sent_bytes": status.sent_bytes.load(Ordering::Acquire),
        "needs_resync": status.needs_resync.load(Ordering::Acquire),
        "last_error": last_error,
        // 30: data path loaded and the target's apply process reachable; 60: loaded, target
        // not connected (the product's status codes).
        "status_code": if status.connected.load(Ordering::Acquire) { 30 } else { 60 },
        "backlog_bytes": status.backlog_bytes(),
        "lag_seconds": status.lag_seconds(),
        "speed_mb_s": status.speed_mb_s(),
        "super_transaction_pct": super_transaction_pct,
    })
}

async fn join_thread(
    thread: Option<std::thread::JoinHandle<()>>,
    what: &str,
) -> Result<(), String> {
    let Some(thread) = thread else {
        return Ok(());
    };
    let joined = tokio::task::spawn_blocking(move || thread.join());
    match tokio::time::timeout(Duration::from_millis(THREAD_STOP_TIMEOUT_MS), joined).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(_))) => Err(format!("the {what} panicked")),
        Ok(Err(error)) => Err(format!("join the {what}: {error}")),
        Err(_) => Err(format!(
            "the {what} did not stop within {THREAD_STOP_TIMEOUT_MS} ms"
        )),
    }
}

async fn start_production(spec: &PathSpec) -> Result<Production, String> {
    let group = spec.group.clone();
    let mut fence = crate::fencing::Held::acquire(&spec.group, &spec.server).await?;
    let opened = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            let mut store =
                GroupStore::open_or_create(&spec.data_dir, &spec.group, spec.capacities).map_err(
                    |error| format!("open the containers of group {}: {error}", spec.group),
                )?;
            let mut config = EngineConfig::new(&spec.group, spec.capacities.log_record_file_bytes);
            config.sync_replication = spec.mode == Mode::Sync && !spec.targets.is_empty();
            Engine::open(&mut store, &spec.volumes, config)
                .map_err(|error| format!("open the datatap of group {}: {error}", spec.group))
        })
        .await
        .map_err(|error| format!("open the datatap of group {group}: {error}"))??
    };
    let (engine, volumes, commit_thread) = opened;
    fence.arm(engine.watermarks().clone());
    let mut exports = Vec::new();
    let mut nbd = None;
    if let Some(listen) = &spec.nbd_listen {
        // `nbd_tls = true` needs the agent's identity (`--tls-dir`): refuse to serve the
        // exports in plaintext instead.
        let nbd_tls = match (spec.nbd_tls, redoubt_tls::registry::lookup(&spec.server)) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls),
            (true, None) => {
                drop(volumes);
                drop(engine);
                let _ = join_thread(
                    Some(commit_thread),
                    &format!("commit thread of group {group}"),
                )
                .await;
                return Err(format!(
                    "serve the NBD exports of group {group} with TLS: server {} has nbd_tls = true but its agent has no TLS identity (start it with --tls-dir holding {}.pem and {}.key of the cluster CA)",
                    spec.server, spec.server, spec.server
                ));
            }
        };
        let listen = match listen {
            NbdListen::Tcp(address) => Listen::Tcp(address.clone()),
            NbdListen::Unix(path) => Listen::Unix(path.clone()),
        };
        let bound = match nbd_bind(&listen).await {
            Ok(bound) => bound,
            Err(error) => {
                drop(volumes);
                drop(engine);
                let _ = join_thread(
                    Some(commit_thread),
                    &format!("commit thread of group {group}"),
                )
                .await;
                return Err(format!(
                    "listen for NBD clients of group {group} on {}: {error}",
                    spec.nbd_listen
                        .as_ref()
                        .map(|l| l.to_string())
                        .unwrap_or_default()
                ));
            }
        };
        let mut list = Vec::new();
        for opened in volumes {
            exports.push((
                opened.name.clone(),
                bound.uri_with_tls(&opened.name, nbd_tls.is_some()),
            ));
            list.push(Export {
                description: format!("redoubt LV {} of group {group}", opened.name),
                name: opened.name,
                lv_id: opened.lv_id,
                volume: opened.volume,
                engine: engine.clone(),
                read_only: false,
            });
        }
        let (stop, stopped) = watch::channel(false);
        let mut served = Exports::new(list);
        if let Some(tls) = nbd_tls {
            served = served.with_tls(tls);
        }
        let task = tokio::spawn(serve_nbd(bound, Arc::new(served), stopped));
        nbd = Some((stop, task));
    }
    let lcas = start_lcas(spec, &engine);
    Ok(Production {
        engine,
        commit_thread: Some(commit_thread),
        nbd,
        exports,
        lcas,
        fence,
    })
}

fn start_lcas(spec: &PathSpec, engine: &Engine) -> Lcas {
    let (stop, stopped) = watch::channel(false);
    let targets = Arc::new(Targets {
        statuses: spec
            .targets
            .iter()
            .map(|_| Arc::new(TargetStatus::default()))
            .collect(),
    });
    // Until the (new) targets acknowledge, nothing counts as shipped: the journal keeps it.
    let shipped = if spec.targets.is_empty() { u64::MAX } else { 0 };
    engine
        .watermarks()
        .shipped_seq
        .store(shipped, Ordering::Release);
    let mut tasks = Vec::new();
    for ((name, address), status) in spec.targets.iter().zip(targets.statuses.iter()) {
        let config = LcaConfig {
            group: spec.group.clone(),
            sender_name: spec.server.clone(),
            target_name: name.clone(),
            target_address: address.clone(),
            // Both sides run the configuration the initialization gave them, and a change that
            // matters to replication restarts the processes it concerns; a version check in the
            // handshake would stop replication between steps 14 and 15 of every change.
            config_version: 0,
            journal: engine.journal().clone(),
            compression_level: match spec.compression {
                Compression::Zstd => Some(ZSTD_LEVEL),
                Compression::None => None,
            },
            throttle_bytes_per_second: spec.throttle_bytes_per_second,
            batch_bytes: lca::BATCH_BYTES_DEFAULT,
        };
        tasks.push(tokio::spawn(lca::run(
            config,
            engine.watermarks().clone(),
            status.clone(),
            targets.clone(),
            stopped.clone(),
        )));
    }
    Lcas {
        stop,
        tasks,
        targets,
        names: spec.targets.iter().map(|(name, _)| name.clone()).collect(),
    }
}

async fn stop_lcas(lcas: Lcas) {
    let _ = lcas.stop.send(true);
    for task in lcas.tasks {
        let _ = task.await;
    }
}

async fn start_recovery(spec: &PathSpec) -> Result<Recovery, String> {
    let config = AbaConfig {
        server_name: spec.server.clone(),
        group: spec.group.clone(),
        data_dir: spec.data_dir.clone(),
        volumes: spec.volumes.clone(),
        capacities: spec.capacities,
        // Both sides run the configuration the initialization gave them, and a change that
        // matters to replication restarts the processes it concerns; a version check in the
        // handshake would stop replication between steps 14 and 15 of every change.
        config_version: 0,
        retention_seconds: spec.retention_seconds,
        production: Some(spec.production.clone()),
    };
    let group = spec.group.clone();
    let snapshots = crate::snapshot_routes::GroupSnapshots::open(
        &spec.server,
        &spec.group,
        &redoubt_volume::GroupLayout::new(&spec.data_dir, &spec.group)
            .map_err(|error| format!("snapshots of group {group}: {error}"))?
            .snapshot_dir(),
        spec.capacities.snapshot_bytes,
    )?;
    let observer = snapshots.observer();
    let (aba, apply_thread) =
        tokio::task::spawn_blocking(move || Aba::open_observed(config, Some(observer)))
            .await
            .map_err(|error| format!("open the apply process of group {group}: {error}"))?
            .map_err(|error| format!("open the apply process of group {group}: {error}"))?;
    if let Err(error) = snapshots.attach(aba.clone()).await {
        // Replication matters more than the snapshot exports: log, keep applying.
        tracing::error!(%group, %error, "snapshot exports not served");
    }
    let (stop, _) = watch::channel(false);
    Ok(Recovery {
        snapshots,
        aba,
        apply_thread: Some(apply_thread),
        stop,
        connections: Arc::new(Mutex::new(Some(JoinSet::new()))),
    })
}

/// The NBD accept loop of one group. Unlike `redoubt_datatap::serve`, stopping it also ends
/// its connections, so the engine's last handles go and its commit thread can exit.
async fn serve_nbd(bound: Bound, exports: Arc<Exports>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = accept(&bound) => accepted,
        };
        match accepted {
            Ok(stream) => {
                if connections.len() >= NBD_CONNECTIONS_MAX {
                    tracing::warn!("too many NBD connections; refusing one");
                    continue;
                }
                let exports = exports.clone();
                connections.spawn(async move {
                    let result = match stream {
                        Accepted::Tcp(stream) => {
                            let _ = stream.set_nodelay(true);
                            nbd_serve_connection(stream, exports).await
                        }
                        Accepted::Unix(stream) => nbd_serve_connection(stream, exports).await,
                    };
                    if let Err(error) = result {
                        tracing::info!(%error, "NBD connection ended");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: log, breathe, keep serving.
                tracing::warn!(%error, "NBD accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    connections.shutdown().await;
    if let Bound::Unix(_, path) = &bound {
        // durable: a socket, not state; a stale one is replaced at the next bind.
        let _ = std::fs::remove_file(path);
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> std::io::Result<Accepted> {
    match bound {
        Bound::Tcp(listener) => listener
            .accept()
            .await
            .map(|(stream, _)| Accepted::Tcp(stream)),
        Bound::Unix(listener, _) => listener
            .accept()
            .await
            .map(|(stream, _)| Accepted::Unix(stream)),
    }
}
