//! `redoubt-agent`: the daemon on every Redoubt server (`docs/agent-api.md`).
//!
//! ```text
//!            one TCP port (the server's `address`)
//!  console ──HTTP──▶ ┐                 ┌─▶ axum: /v1/health, /v1/step, /v1/status
//!  LCA ────RDWF───▶  ├─ peek 4 bytes ──┤
//!                    ┘                 └─▶ the ABA of the group the Hello names
//!
//!  steps ─▶ volume store (containers, LVs) ─▶ data paths (datatap + LCAs | ABA)
//!        └▶ state_dir: config-<v>.toml, current, agent-state.json
//! ```
//!
//! The CLI calls [`bind`] (and prints the bound address), then [`BoundAgent::serve`]; or
//! [`run`] for both. Steps run one at a time; status reads never wait for a step.

mod attach;
pub mod client;
mod datapath;
pub mod failover;
pub mod fencing;
mod http;
pub mod metrics;
pub mod persist;
mod recovery_routes;
mod route;
mod snapshot_routes;
mod steps;
mod verify_routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::datapath::{DataPath, PathSpec};
use crate::persist::{AgentState, StoredConfig};

/// Connections (HTTP and replication) served at once; more wait in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 1024;

/// How the CLI starts an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This server's name in the configuration.
    pub name: String,
    /// `host:port` to listen on: the server's `address`.
    pub listen: String,
    /// Where the agent keeps its copies of the configuration and its state.
    pub state_dir: PathBuf,
    /// This server's TLS identity: with one, every connection to the agent's port and every
    /// replication connection it opens is mutual TLS (`docs/security.md`); without, plaintext.
    pub tls: Option<Arc<redoubt_tls::TlsContext>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid server name {0:?}: 1 to 63 of a-z, 0-9, '.', '_', '-'")]
    InvalidName(String),
    #[error("listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent state: {0}")]
    State(String),
    #[error("stop the data paths: {0}")]
    Stop(String),
}

/// The agent's shared state.
pub(crate) struct Agent {
    pub name: String,
    pub state_dir: PathBuf,
    /// Steps run one at a time (each may take the groups' containers' locks).
    pub steps: tokio::sync::Mutex<()>,
    /// The TLS identity (`AgentConfig::tls`).
    pub tls: Option<Arc<redoubt_tls::TlsContext>>,
    /// Block devices made of this server's exports (`redoubt attach`).
    pub host: attach::SharedHost,
    /// Step durations and outcomes for `GET /metrics`.
    pub metrics: metrics::AgentMetrics,
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub config: Option<StoredConfig>,
    pub state: AgentState,
    pub paths: BTreeMap<String, DataPath>,
    /// Why a group's data path failed to start on agent start, for status.
    pub failures: BTreeMap<String, String>,
}

impl Agent {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config_version(&self) -> u64 {
        self.lock().config.as_ref().map_or(0, |c| c.version)
    }

    /// Starts again every data path that was loaded before the agent stopped.
    async fn restore(&self) {
        let (config, records) = {
            let inner = self.lock();
            (inner.config.clone(), inner.state.groups.clone())
        };
        for (group, record) in records {
            if !record.data_path_loaded {
                continue;
            }
            let spec = config
                .as_ref()
                .map(|stored| PathSpec::from_config(&stored.config, &group, &self.name));
            let spec = match spec {
                Some(Ok(Some(spec))) if spec.role == redoubt_config::Role::Production => {
                    let superseded = match config.as_ref() {
                        Some(stored) => {
                            failover::superseded(&self.name, &stored.config, &group).await
                        }
                        None => None,
                    };
                    if let Some(reason) = superseded {
                        tracing::error!(%group, %reason, "data path not resumed");
                        self.lock().failures.insert(group.clone(), reason);
                        continue;
                    }
                    spec
                }
                Some(Ok(Some(spec))) => spec,
                Some(Err(error)) => {
                    self.lock().failures.insert(group.clone(), error);
                    continue;
                }
                _ => {
                    tracing::warn!(%group, "data path was loaded but the configuration no longer gives this server a role in the group");
                    continue;
                }
            };
            match DataPath::start(spec, record.data_path_version).await {
                Ok(path) => {
                    tracing::info!(%group, "data path resumed");
                    self.lock().paths.insert(group, path);
                }
                Err(error) => {
                    tracing::error!(%group, %error, "data path did not resume");
                    self.lock().failures.insert(group, error);
                }
            }
        }
    }

    /// Stops every data path (final checkpoints).
    async fn stop_all(&self) -> Result<(), String> {
        let paths = std::mem::take(&mut self.lock().paths);
        let mut errors = Vec::new();
        for (group, path) in paths {
            if let Err(error) = path.stop().await {
                errors.push(format!("group {group}: {error}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// An agent bound to its port, its state loaded and its data paths resumed; not serving yet.
pub struct BoundAgent {
    agent: Arc<Agent>,
    listener: TcpListener,
}

/// Loads the state, binds the listener and resumes the data paths that were loaded.
pub async fn bind(config: AgentConfig) -> Result<BoundAgent, AgentError> {
    if !redoubt_config::is_valid_name(&config.name) {
        return Err(AgentError::InvalidName(config.name));
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::Io {
        action: "create state directory",
        path: config.state_dir.clone(),
        source,
    })?;
    let stored = persist::load_current(&config.state_dir)?;
    let nbd_tls = stored
        .as_ref()
        .and_then(|stored| stored.config.server(&config.name));
    if nbd_tls.is_some_and(|server| server.nbd_tls) && config.tls.is_none() {
        return Err(AgentError::State(format!(
            "server {} has nbd_tls = true in the applied configuration but this agent has no TLS identity: start it with --tls-dir (holding ca.pem, {}.pem and {}.key)",
            config.name, config.name, config.name
        )));
    }
    let state = persist::load_state(&config.state_dir)?;
    let host = attach::open(&config.state_dir)?;
    if let Some(tls) = &config.tls {
        // The send processes this agent starts find it by the server's name.
        redoubt_tls::registry::register(tls.clone());
    }
    let listener = redoubt_datatap::bind_tcp_waiting(
        &config.listen,
        redoubt_datatap::BIND_ADDRESS_IN_USE_WAIT_MS,
    )
    .await
    .map_err(|source| AgentError::Listen {
        address: config.listen.clone(),
        source,
    })?;
    let agent = Arc::new(Agent {
        name: config.name,
        state_dir: config.state_dir,
        steps: tokio::sync::Mutex::new(()),
        tls: config.tls.clone(),
        host,
        metrics: metrics::AgentMetrics::new(),
        inner: Mutex::new(Inner {
            config: stored,
            state,
            ..Inner::default()
        }),
    });
    agent.restore().await;
    attach::restore(&agent).await;
    Ok(BoundAgent { agent, listener })
}

impl BoundAgent {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true (or its sender goes), then stops every data path.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let BoundAgent { agent, listener } = self;
        let router = http::router(agent.clone());
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            if *shutdown.borrow() {
                break;
            }
            let accepted = tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= CONNECTIONS_MAX {
                        tracing::warn!(%peer, "too many connections; refusing one");
                        continue;
                    }
                    connections.spawn(route::connection(agent.clone(), router.clone(), stream));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        // A step in progress finishes first; none starts after.
        let _steps = agent.steps.lock().await;
        let stopped = agent.stop_all().await;
        connections.shutdown().await;
        if let Some(tls) = &agent.tls {
            redoubt_tls::registry::unregister(tls);
        }
        stopped.map_err(AgentError::Stop)
    }
}

/// [`bind`] then [`BoundAgent::serve`].
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    bind(config).await?.serve(shutdown).await
}
