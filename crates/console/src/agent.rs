//! How the console talks to agents (`docs/agent-api.md`): the [`AgentClient`] seam, with the
//! HTTP implementation here and fakes in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::RowKey;

/// Longest a single step row may take on an agent (creating and syncing containers is slow).
pub const STEP_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Longest the console waits for an agent's status when aggregating `GET /v1/status`.
pub const STATUS_TIMEOUT_MS: u64 = 3_000;
/// Longest the console waits to open a TCP connection to an agent.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The body of `POST /v1/step`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    pub group: String,
    pub step: u8,
    pub row: Option<RowKey>,
    pub config_version: u64,
    pub config_toml: String,
    pub previous_config_toml: Option<String>,
    pub destroy: bool,
}

/// A 2xx answer of `POST /v1/step`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResponse {
    pub outcome: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the agent at {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error("the agent at {address} answered {status}: {message}")]
    Refused {
        address: String,
        status: u16,
        message: String,
    },
    #[error("the agent at {address} answered something unreadable: {message}")]
    Protocol { address: String, message: String },
}

pub type AgentFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AgentError>> + Send + 'a>>;

/// The console's view of an agent. `address` is the server's `host:port` from the
/// configuration.
pub trait AgentClient: Send + Sync + 'static {
    fn step<'a>(
        &'a self,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse>;
    /// The agent's `GET /v1/status` document, as it is.
    fn status<'a>(&'a self, address: &'a str) -> AgentFuture<'a, serde_json::Value>;
    /// [`AgentClient::step`] to the agent of server `server` at `address`: with mutual TLS,
    /// the agent's certificate must name `server`.
    fn step_to<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse> {
        let _ = server;
        self.step(address, request)
    }
    /// [`AgentClient::status`] of the agent of server `server` at `address`.
    fn status_of<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
    ) -> AgentFuture<'a, serde_json::Value> {
        let _ = server;
        self.status(address)
    }
    /// Any JSON route of the agent of `server` (`method` GET, POST or DELETE; `path` from
    /// `/v1/`): the answer's body, or the agent's error (verify, resync, recovery routes).
    fn call<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
        method: &'a str,
        path: &'a str,
        body: Option<&'a serde_json::Value>,
    ) -> AgentFuture<'a, serde_json::Value> {
        let _ = (server, method, path, body);
        Box::pin(async move {
            Err(AgentError::Protocol {
                address: address.to_string(),
                message: "this agent client has no generic calls".into(),
            })
        })
    }
}

/// Longest a generic agent call ([`AgentClient::call`]) may take.
pub const CALL_TIMEOUT_MS: u64 = 60_000;

/// HTTP/1.1 to agents: plain `http://{address}` (reqwest), or with a TLS identity, mutual
/// TLS to `address` where the agent's certificate must name the configured server
/// (`docs/security.md`): one connection per request (hyper over tokio-rustls).
pub struct HttpAgentClient {
    client: reqwest::Client,
    tls: Option<Arc<redoubt_tls::TlsContext>>,
}

/// Largest answer read from an agent over TLS.
pub const TLS_RESPONSE_BYTES_MAX: usize = 64 << 20;

impl HttpAgentClient {
    /// Plain HTTP.
    pub fn new() -> Result<Self, AgentError> {
        Self::with_tls(None)
    }

    /// Mutual TLS with `tls` (the console's identity), or plain HTTP without one.
    pub fn with_tls(tls: Option<Arc<redoubt_tls::TlsContext>>) -> Result<Self, AgentError> {
        // reqwest's rustls takes the process-wide provider (the workspace's one, aws-lc-rs).
        redoubt_tls::install_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .build()
            .map_err(|error| AgentError::Unreachable {
                address: String::new(),
                message: format!("build HTTP client: {error}"),
            })?;
        Ok(Self { client, tls })
    }

    async fn request_json<T: for<'de> Deserialize<'de>>(
        &self,
        server: Option<&str>,
        address: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout_ms: u64,
    ) -> Result<T, AgentError> {
        let timeout = Duration::from_millis(timeout_ms);
        let Some(tls) = &self.tls else {
            let mut request = self
                .client
                .request(method, format!("http://{address}{path}"))
                .timeout(timeout);
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let response = request.send().await.map_err(unreachable(address))?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map_err(unreachable(address))?;
            return decode_answer(address, status, &bytes);
        };
        let Some(server) = server else {
            return Err(AgentError::Protocol {
                address: address.to_string(),
                message: "mutual TLS needs the server's name".into(),
            });
        };
        let exchange = tls_exchange(tls, server, address, method, path, body);
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AgentError::Unreachable {
                address: address.to_string(),
                message: format!("no answer within {timeout_ms} ms"),
            })??;
        decode_answer(address, status, &bytes)
    }
}

/// One request over a new mutual-TLS connection to the agent of `server` at `address`.
async fn tls_exchange(
    tls: &redoubt_tls::TlsContext,
    server: &str,
    address: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Vec<u8>), AgentError> {
    use http_body_util::BodyExt;
    let unreachable = |message: String| AgentError::Unreachable {
        address: address.to_string(),
        message,
    };
    let tcp = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| unreachable("connect timed out".into()))?
    .map_err(|error| unreachable(format!("connect: {error}")))?;
    let _ = tcp.set_nodelay(true);
    let stream = tls
        .connect(tcp, server)
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(format!("HTTP handshake: {error}")))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method.as_str())
        .uri(path)
        .header(hyper::header::HOST, server)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(axum::body::Bytes::from(
            body.unwrap_or_default(),
        )))
        .map_err(|error| unreachable(format!("build request: {error}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| unreachable(format!("send request: {error}")))?;
    let status = response.status().as_u16();
    let limited = http_body_util::Limited::new(response.into_body(), TLS_RESPONSE_BYTES_MAX);
    let bytes = limited
        .collect()
        .await
        .map_err(|error| unreachable(format!("read answer: {error}")))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, bytes))
}

fn decode_answer<T: for<'de> Deserialize<'de>>(
    address: &str,
    status: u16,
    bytes: &[u8],
) -> Result<T, AgentError> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|body| body.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
        return Err(AgentError::Refused {
            address: address.to_string(),
            status,
            message,
        });
    }
    serde_json::from_slice(bytes).map_err(|error| AgentError::Protocol {
        address: address.to_string(),
        message: error.to_string(),
    })
}

fn unreachable(address: &str) -> impl FnOnce(reqwest::Error) -> AgentError + '_ {
    move |error| AgentError::Unreachable {
        address: address.to_string(),
        message: error.to_string(),
    }
}

impl HttpAgentClient {
    async fn post_step(
        &self,
        server: Option<&str>,
        address: &str,
        request: &StepRequest,
    ) -> Result<StepResponse, AgentError> {
        let body = serde_json::to_vec(request).map_err(|error| AgentError::Protocol {
            address: address.to_string(),
            message: format!("encode the step request: {error}"),
        })?;
        self.request_json(
            server,
            address,
            reqwest::Method::POST,
            "/v1/step",
            Some(body),
            STEP_TIMEOUT_MS,
        )
        .await
    }

    async fn get_status(
        &self,
        server: Option<&str>,
        address: &str,
    ) -> Result<serde_json::Value, AgentError> {
        self.request_json(
            server,
            address,
            reqwest::Method::GET,
            "/v1/status",
            None,
            STATUS_TIMEOUT_MS,
        )
        .await
    }
}

impl AgentClient for HttpAgentClient {
    fn step<'a>(
        &'a self,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse> {
        Box::pin(self.post_step(None, address, request))
    }

    fn status<'a>(&'a self, address: &'a str) -> AgentFuture<'a, serde_json::Value> {
        Box::pin(self.get_status(None, address))
    }

    fn step_to<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse> {
        Box::pin(self.post_step(Some(server), address, request))
    }

    fn status_of<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
    ) -> AgentFuture<'a, serde_json::Value> {
        Box::pin(self.get_status(Some(server), address))
    }

    fn call<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
        method: &'a str,
        path: &'a str,
        body: Option<&'a serde_json::Value>,
    ) -> AgentFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|error| {
                AgentError::Protocol {
                    address: address.to_string(),
                    message: format!("bad method {method}: {error}"),
                }
            })?;
            let body =
                body.map(serde_json::to_vec)
                    .transpose()
                    .map_err(|error| AgentError::Protocol {
                        address: address.to_string(),
                        message: format!("encode the request: {error}"),
                    })?;
            self.request_json(Some(server), address, method, path, body, CALL_TIMEOUT_MS)
                .await
        })
    }
}
