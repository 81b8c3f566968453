//! How the console talks to agents (`docs/agent-api.md`): the [`AgentClient`] seam, with the
//! HTTP implementation here and fakes in tests.

use std::future::Future;
use std::pin::Pin;
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

/// Plain HTTP/1.1 to `http://{address}` (mutual TLS comes with the security issue).
pub struct HttpAgentClient {
    client: reqwest::Client,
}

impl HttpAgentClient {
    pub fn new() -> Result<Self, AgentError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .build()
            .map_err(|error| AgentError::Unreachable {
                address: String::new(),
                message: format!("build HTTP client: {error}"),
            })?;
        Ok(Self { client })
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    address: &str,
    response: reqwest::Response,
) -> Result<T, AgentError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| AgentError::Unreachable {
            address: address.to_string(),
            message: format!("read answer: {error}"),
        })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|body| body.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(AgentError::Refused {
            address: address.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&bytes).map_err(|error| AgentError::Protocol {
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

impl AgentClient for HttpAgentClient {
    fn call<'a>(
        &'a self,
        server: &'a str,
        address: &'a str,
        method: &'a str,
        path: &'a str,
        body: Option<&'a serde_json::Value>,
    ) -> AgentFuture<'a, serde_json::Value> {
        let _ = server;
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|error| {
                AgentError::Protocol {
                    address: address.to_string(),
                    message: format!("bad method {method}: {error}"),
                }
            })?;
            let mut request = self
                .client
                .request(method, format!("http://{address}{path}"))
                .timeout(Duration::from_millis(CALL_TIMEOUT_MS));
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(unreachable(address))?;
            read_json(address, response).await
        })
    }

    fn step<'a>(
        &'a self,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse> {
        Box::pin(async move {
            let response = self
                .client
                .post(format!("http://{address}/v1/step"))
                .timeout(Duration::from_millis(STEP_TIMEOUT_MS))
                .json(request)
                .send()
                .await
                .map_err(unreachable(address))?;
            read_json(address, response).await
        })
    }

    fn status<'a>(&'a self, address: &'a str) -> AgentFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let response = self
                .client
                .get(format!("http://{address}/v1/status"))
                .timeout(Duration::from_millis(STATUS_TIMEOUT_MS))
                .send()
                .await
                .map_err(unreachable(address))?;
            read_json(address, response).await
        })
    }
}
