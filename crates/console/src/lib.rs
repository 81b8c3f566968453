//! The Redoubt console: the management service. It keeps the configuration versions, runs
//! each changed group's *configuration initialization* (`shared/spec/config-initialization.md`)
//! by calling the agents (`docs/agent-api.md`), and serves the HTTP API the CLI uses.
//!
//! ```text
//! CLI ──HTTP+token──▶ api (axum) ──▶ Store (redb: versions, init records)
//!                          │                ▲
//!                          └─▶ runner ──────┘ (row states persisted at start and end)
//!                                 └─▶ AgentClient ──HTTP──▶ agents (POST /v1/step)
//! ```
//!
//! **Invariants:** everything an initialization needs (version, plan, rows with their agents)
//! is written in the same transaction that saves the version, before anything runs; a row's
//! state is persisted when it starts and when it ends; on start, every `running`
//! initialization resumes and re-runs the rows that were `running` (agent steps are
//! idempotent); rows that are `done` never run again.
//!
//! The decision of what runs next is the pure [`record::next`].

pub mod agent;
pub mod api;
mod attach;
pub mod audit;
pub mod auth;
pub mod failover;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod operations;
pub mod record;
pub mod recovery;
pub mod recovery_snapshots;
pub mod runner;
pub mod status;
pub mod store;
pub mod store_etcd;
pub mod tls;
pub mod verify;
pub mod web;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use agent::{AgentClient, AgentError, HttpAgentClient, StepRequest, StepResponse};
pub use store::{RedbStore, Store, StoreError};

/// Name of the redb file in the state directory.
pub const DATABASE_FILE: &str = "console.redb";
/// Name of the API token file in the state directory (mode 0600).
pub const TOKEN_FILE: &str = "token";
/// Random bytes in an API token (hex-encoded in the file).
pub const TOKEN_BYTES: usize = 32;

#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// `host:port` to listen on (port 0: any free port; see [`Console::local_addr`]).
    pub listen: String,
    /// Holds `console.redb` and `token`.
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read or create API token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API token file {path} is empty or not hex")]
    BadToken { path: PathBuf },
    #[error("listen on {listen}: {source}")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
    #[error("serve HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("set up the agent client: {0}")]
    Agent(#[from] AgentError),
}

/// Reads the API token from `state_dir/token`, creating it (32 random bytes, hex, mode 0600)
/// if it does not exist.
pub fn load_or_create_token(state_dir: &Path) -> Result<String, ConsoleError> {
    let path = state_dir.join(TOKEN_FILE);
    let io_error = |source| ConsoleError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; TOKEN_BYTES];
            rand::rng().fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            file.write_all(format!("{token}\n").as_bytes())
                .map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            Ok(token)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(io_error)?;
            let token = text.trim().to_string();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConsoleError::BadToken { path });
            }
            Ok(token)
        }
        Err(error) => Err(io_error(error)),
    }
}

/// A console bound to its port, its store open, not serving yet.
pub struct Console {
    listener: TcpListener,
    shared: Arc<runner::Shared>,
    token_path: PathBuf,
    /// Serve the API over HTTPS with this identity's certificate ([`Console::with_https`]).
    https: Option<Arc<redoubt_tls::TlsContext>>,
    /// Caps and idle timeout of the API's connections (`limits.rs`).
    limits: limits::ConnectionLimits,
}

impl Console {
    /// Opens the state directory (store, token) and binds the listener; talks HTTP to agents.
    pub async fn bind(config: ConsoleConfig) -> Result<Console, ConsoleError> {
        let agent: Arc<dyn AgentClient> = Arc::new(HttpAgentClient::new()?);
        Self::bind_with_agent(config, agent).await
    }

    /// [`Console::bind`] with another way to reach agents (tests, simulations).
    pub async fn bind_with_agent(
        config: ConsoleConfig,
        agent: Arc<dyn AgentClient>,
    ) -> Result<Console, ConsoleError> {
        // HTTP clients in this process (reqwest's rustls) take the workspace's one provider.
        redoubt_tls::install_provider();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|source| ConsoleError::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        let token = load_or_create_token(&config.state_dir)?;
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&config.state_dir.join(DATABASE_FILE))?);
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ConsoleError::Listen {
                    listen: config.listen.clone(),
                    source,
                })?;
        let shared = Arc::new(runner::Shared::new(store, agent, token));
        // The read-only token (created here the first time) and rotation (`auth.rs`).
        shared
            .auth
            .attach(&config.state_dir)
            .map_err(|error| ConsoleError::Token {
                path: config.state_dir.join(auth::READ_ONLY_TOKEN_FILE),
                source: std::io::Error::other(error.to_string()),
            })?;
        Ok(Console {
            listener,
            shared,
            token_path: config.state_dir.join(TOKEN_FILE),
            https: None,
            limits: limits::ConnectionLimits::default(),
        })
    }

    /// Serves the API and the web console over HTTPS with `tls`'s certificate (the console's
    /// identity; no client certificate asked for), and forwards to a leader console over
    /// HTTPS trusting `tls`'s CA. Call before [`leader::into_etcd`].
    pub fn with_https(mut self, tls: Arc<redoubt_tls::TlsContext>) -> Console {
        self.shared.leadership.use_tls(tls.client_config());
        self.https = Some(tls);
        self
    }

    /// Other bounds on the API's connections than `limits::ConnectionLimits::default()`.
    pub fn with_connection_limits(mut self, limits: limits::ConnectionLimits) -> Console {
        self.limits = limits;
        self
    }

    /// Whether the API is served over HTTPS.
    pub fn is_https(&self) -> bool {
        self.https.is_some()
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ConsoleError> {
        self.listener
            .local_addr()
            .map_err(|source| ConsoleError::Listen {
                listen: "(bound socket)".into(),
                source,
            })
    }

    /// `http://host:port` (`https://` with [`Console::with_https`]) of the bound listener.
    pub fn url(&self) -> Result<String, ConsoleError> {
        let scheme = if self.is_https() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    pub fn token_path(&self) -> &Path {
        &self.token_path
    }

    /// Resumes the initializations that were running, then serves until `shutdown` turns true.
    /// On return the executors are stopped; rows in flight run again at the next start.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ConsoleError> {
        let resumed = self.shared.resume_all()?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed running initializations");
        }
        let web = web::Web::new(Arc::clone(&self.shared), self.https.is_some());
        web.start_sampler();
        let app = web::wrap(api::router(Arc::clone(&self.shared)), web);
        let shared = Arc::clone(&self.shared);
        let stopped = async move {
            // Also stop when the sender is gone.
            let _ = shutdown.wait_for(|stop| *stop).await;
            // Event streams end, so that graceful shutdown does not wait for them.
            shared.close();
        };
        let result = match &self.https {
            Some(tls) => {
                let listener =
                    tls::HttpsListener::new(self.listener, tls).map_err(ConsoleError::Serve)?;
                axum::serve(limits::Limited::new(listener, self.limits), app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            None => {
                axum::serve(limits::Limited::new(self.listener, self.limits), app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        }
        .map_err(ConsoleError::Serve);
        self.shared.stop_tasks().await;
        result
    }
}

/// Binds and serves until `shutdown` turns true.
pub async fn run(
    config: ConsoleConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConsoleError> {
    Console::bind(config).await?.serve(shutdown).await
}
