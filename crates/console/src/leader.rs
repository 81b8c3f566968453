//! Several console instances on one etcd store (`redoubt console --store etcd://…`,
//! `docs/ha.md`): one leader, elected with an etcd lease on `/redoubt/console/leader` (the
//! same lock as the production fence, `redoubt-fence`), drives the initializations; the
//! others are followers.
//!
//! - **Leader:** resumes every `running` initialization from its stored row states when it
//!   takes over (rows that were `running` run again: agent steps are idempotent). When its
//!   lease is lost it stops its executors at once, and the store refuses its late writes
//!   (every write compares the leader key's lease).
//! - **Follower:** serves the reads from the store (`GET /v1/config`, `/v1/config/history`,
//!   `/v1/init/{group}`, `/v1/status`, `POST /v1/config/plan`) and **proxies** everything else
//!   (applies, retries, event streams, operations) to the leader's advertised URL, with the
//!   caller's token; 503 while no leader is known. Every instance serves with the token stored
//!   in etcd (the first instance's), copied to its `state_dir/token`.
//!
//! Timing: lease TTL 6 s, renewed every second; a leader acts at most 3 s past its last
//! answered renewal; a killed leader is replaced within TTL + one renewal (≈ 7 s).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use redoubt_fence::{FenceError, FenceTiming, LeaseLock, Validity};
use serde_json::json;
use tokio::sync::watch;

use crate::agent::AgentClient;
use crate::runner::Shared;
use crate::store::{Store, StoreError};
use crate::store_etcd::{EtcdStore, LEADER_KEY};
use crate::{Console, ConsoleError};

/// The leader lease: TTL 6 s, renewed every second, acted on at most 3 s past a renewal.
pub const LEADER_TIMING: FenceTiming = FenceTiming {
    lease_ttl_ms: 6_000,
    renew_interval_ms: 1_000,
    safety_margin_ms: 3_000,
};
/// Header a follower adds to what it forwards: a leader never forwards such a request again.
pub const FORWARDED_HEADER: &str = "x-redoubt-forwarded-by";
/// Connecting to the leader gives up after this long.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 3_000;

/// What this instance is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The only instance (embedded redb store): always drives.
    Solo,
    Leader,
    /// `leader_url`: where writes go (unknown during an election).
    Follower {
        leader_url: Option<String>,
    },
}

/// This instance's role, shared by the API and the executors.
pub struct Leadership {
    role: watch::Sender<Role>,
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Trust for `https://` leader URLs (the cluster CA), set before the first forward.
    tls: OnceLock<redoubt_tls::rustls::ClientConfig>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::solo()
    }
}

impl Leadership {
    pub fn solo() -> Self {
        Leadership {
            role: watch::Sender::new(Role::Solo),
            client: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn set(&self, role: Role) {
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    /// Whether this instance drives initializations.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Solo | Role::Leader)
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Forwards to `https://` leaders trusting `config`'s roots (the cluster CA).
    pub fn use_tls(&self, config: redoubt_tls::rustls::ClientConfig) {
        let _ = self.tls.set(config);
    }

    fn tls(&self) -> Option<redoubt_tls::rustls::ClientConfig> {
        self.tls.get().cloned()
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                redoubt_tls::install_provider();
                let builder = reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS))
                    .redirect(reqwest::redirect::Policy::none());
                let builder = match self.tls() {
                    Some(config) => builder.use_preconfigured_tls(config),
                    None => builder,
                };
                builder
                    .build()
                    .map_err(|error| format!("build the forwarding client: {error}"))
            })
            .clone()
    }
}

/// Moves a bound console onto the etcd store at `store_url` (`etcd://host:port,…`): same
/// listener and agent client, the state and the token from etcd, and an election that makes
/// it the leader or a follower; `advertise` is the URL followers forward to (default
/// `http://<bound address>`).
pub async fn into_etcd(
    console: Console,
    store_url: &str,
    advertise: Option<String>,
    timing: FenceTiming,
) -> Result<Console, ConsoleError> {
    let Console {
        listener,
        shared,
        token_path,
        https,
        limits,
    } = console;
    let candidate = shared.token.clone();
    let agent: Arc<dyn AgentClient> = Arc::clone(&shared.agent);
    drop(shared);
    let url = store_url.to_string();
    let store = tokio::task::spawn_blocking(move || EtcdStore::connect(&url))
        .await
        .map_err(|error| StoreError::Backend {
            context: "connect to the etcd store",
            message: error.to_string(),
        })??;
    let store = Arc::new(store);
    let token = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.shared_token(&candidate))
            .await
            .map_err(|error| StoreError::Backend {
                context: "share the API token",
                message: error.to_string(),
            })??
    };
    write_token(&token_path, &token).map_err(|source| ConsoleError::Token {
        path: token_path.clone(),
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen {
            listen: "(bound socket)".into(),
            source,
        })?;
    let scheme = if https.is_some() { "https" } else { "http" };
    let advertise = advertise.unwrap_or_else(|| format!("{scheme}://{bound}"));
    let endpoints =
        redoubt_fence::parse_endpoints(store_url).map_err(|error| StoreError::Backend {
            context: "parse the etcd endpoints",
            message: error.to_string(),
        })?;
    let lock = LeaseLock::connect(&endpoints, timing)
        .await
        .map_err(|error| StoreError::Backend {
            context: "connect the leader election to etcd",
            message: error.to_string(),
        })?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let shared = Arc::new(Shared::new(dyn_store, agent, token));
    if let Some(state_dir) = token_path.parent() {
        // The read-only token and rotation (`auth.rs`); rotation stays local to this instance.
        shared
            .auth
            .attach(state_dir)
            .map_err(|error| ConsoleError::Token {
                path: state_dir.join(crate::auth::READ_ONLY_TOKEN_FILE),
                source: std::io::Error::other(error.to_string()),
            })?;
    }
    if let Some(tls) = &https {
        shared.leadership.use_tls(tls.client_config());
    }
    shared.leadership.set(Role::Follower { leader_url: None });
    let election = Arc::clone(&shared);
    shared.spawn_task(async move { run_election(election, lock, store, advertise).await });
    Ok(Console {
        listener,
        shared,
        token_path,
        https,
        limits,
    })
}

fn write_token(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|text| text.trim() == token) {
        return Ok(());
    }
    redoubt_durable::replace_private(path, format!("{token}\n").as_bytes())
}

/// Campaigns for the leader key forever; leads while the lease holds.
async fn run_election(
    shared: Arc<Shared>,
    lock: LeaseLock,
    store: Arc<EtcdStore>,
    advertise: String,
) {
    let retry = Duration::from_millis(lock.timing().renew_interval_ms);
    loop {
        let lease = match lock.acquire(LEADER_KEY, &advertise).await {
            Ok(lease) => lease,
            Err(FenceError::HeldBy { holder, .. }) => {
                shared.leadership.set(Role::Follower {
                    leader_url: Some(holder),
                });
                tokio::time::sleep(retry).await;
                continue;
            }
            Err(error) => {
                tracing::warn!("campaign for the console leadership: {error}");
                shared.leadership.set(Role::Follower { leader_url: None });
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let mut validity = lease.validity();
        let initial = *validity.borrow_and_update();
        let Validity::Held { lease_id, .. } = initial else {
            continue;
        };
        store.set_leader_lease(Some(lease_id));
        shared.leadership.set(Role::Leader);
        tracing::info!(url = %advertise, "this console is the leader");
        let resume = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || resume.resume_all()).await {
            Ok(Ok(resumed)) => tracing::info!(resumed, "leader resumed running initializations"),
            Ok(Err(error)) => tracing::error!("resume initializations: {error}"),
            Err(error) => tracing::error!("resume initializations: {error}"),
        }
        let mut current = initial;
        while let Validity::Held { until, lease_id } = current {
            store.set_leader_lease(Some(lease_id));
            tokio::select! {
                changed = validity.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = *validity.borrow_and_update();
                }
                _ = tokio::time::sleep_until(until.into()) => {
                    current = *validity.borrow_and_update();
                    if !current.is_valid_at(std::time::Instant::now()) {
                        break;
                    }
                }
            }
        }
        tracing::error!("lost the console leadership: stopping the initialization executors");
        shared.leadership.set(Role::Follower { leader_url: None });
        shared.stop_runners();
        drop(lease);
    }
}

/// Whether a follower answers `method path` itself (a read of the store).
pub fn served_by_follower(method: &Method, path: &str) -> bool {
    if *method == Method::POST {
        return path == "/v1/config/plan";
    }
    if *method != Method::GET && *method != Method::HEAD {
        return false;
    }
    matches!(path, "/v1/config" | "/v1/config/history" | "/v1/status")
        || (path.starts_with("/v1/init/") && !path.ends_with("/events"))
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Middleware: a follower forwards what it does not serve to the leader.
pub async fn forward_to_leader(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let leader_url = match shared.leadership.role() {
        Role::Solo | Role::Leader => return next.run(request).await,
        Role::Follower { leader_url } => leader_url,
    };
    if served_by_follower(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    if request.headers().contains_key(FORWARDED_HEADER) {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "forwarded to a console that is not the leader (election in progress); retry".into(),
        );
    }
    let Some(leader_url) = leader_url else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no console is the leader right now (election in progress); retry".into(),
        );
    };
    let client = match shared.leadership.client() {
        Ok(client) => client,
        Err(message) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, crate::api::REQUEST_BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(error) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("read the request body: {error}"),
            )
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/");
    let target = format!("{}{path}", leader_url.trim_end_matches('/'));
    let mut forwarded = client
        .request(parts.method.clone(), &target)
        .header(FORWARDED_HEADER, HeaderValue::from_static("follower"))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            forwarded = forwarded.header(name, value.clone());
        }
    }
    let answer = match forwarded.send().await {
        Ok(answer) => answer,
        Err(error) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                format!("forward to the leader console {leader_url}: {error}"),
            )
        }
    };
    let mut response = Response::builder().status(answer.status());
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name, value.clone());
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|error| {
            error_response(
                StatusCode::BAD_GATEWAY,
                format!("relay the leader's answer: {error}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_serve_reads_and_forward_the_rest() {
        assert!(served_by_follower(&Method::GET, "/v1/status"));
        assert!(served_by_follower(&Method::GET, "/v1/init/erp"));
        assert!(served_by_follower(&Method::POST, "/v1/config/plan"));
        assert!(!served_by_follower(&Method::POST, "/v1/config"));
        assert!(!served_by_follower(&Method::GET, "/v1/init/erp/events"));
        assert!(!served_by_follower(&Method::POST, "/v1/init/erp/retry"));
        assert!(!served_by_follower(&Method::DELETE, "/v1/config"));
    }

    #[test]
    fn leadership_roles() {
        let leadership = Leadership::solo();
        assert!(leadership.is_leader());
        leadership.set(Role::Follower { leader_url: None });
        assert!(!leadership.is_leader());
        leadership.set(Role::Leader);
        assert!(leadership.is_leader());
    }
}
