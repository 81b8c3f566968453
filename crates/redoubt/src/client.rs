//! The CLI's client of the console API. Maps HTTP outcomes to the exit codes of
//! `shared/spec/cli.md`: unreachable → 4, 409 → 3 (refused), 400 → 2 (invalid), other → 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::exit::{ExitCodeKind, Failure};

/// A request to the console gives up after this long.
pub const CONSOLE_REQUEST_TIMEOUT_MS: u64 = 30_000;

pub struct ConsoleClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ConsoleClient {
    /// From `--console`/`REDOUBT_CONSOLE` and `--token-file`/`REDOUBT_TOKEN_FILE`.
    pub fn from_options(
        console: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Result<ConsoleClient, Failure> {
        let base = console
            .or_else(|| std::env::var("REDOUBT_CONSOLE").ok())
            .ok_or_else(|| {
                Failure::new(
                    ExitCodeKind::Invalid,
                    "no console: pass --console URL or set REDOUBT_CONSOLE (`redoubt lab up` writes both into DIR/lab.env)",
                )
            })?;
        let token_file = token_file
            .or_else(|| std::env::var_os("REDOUBT_TOKEN_FILE").map(PathBuf::from))
            .ok_or_else(|| {
                Failure::new(
                    ExitCodeKind::Invalid,
                    "no token: pass --token-file or set REDOUBT_TOKEN_FILE",
                )
            })?;
        ConsoleClient::new(&base, &token_file)
    }

    pub fn new(base: &str, token_file: &Path) -> Result<ConsoleClient, Failure> {
        let token = std::fs::read_to_string(token_file).map_err(|error| {
            Failure::new(
                ExitCodeKind::Invalid,
                format!("read the console token {}: {error}", token_file.display()),
            )
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(CONSOLE_REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|error| Failure::new(ExitCodeKind::Failed, format!("HTTP client: {error}")))?;
        Ok(ConsoleClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            http,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        self.send(request, path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body);
        self.send(request, path).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        let request = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        self.send(request, path).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Result<Value, Failure> {
        let response = request.send().await.map_err(|error| {
            Failure::new(
                ExitCodeKind::Unreachable,
                format!("cannot reach the console at {}: {error}", self.base),
            )
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = describe_error(&body);
        let code = match status.as_u16() {
            400 | 422 => ExitCodeKind::Invalid,
            409 | 412 => ExitCodeKind::Refused,
            401 | 403 => {
                return Err(Failure::new(
                    ExitCodeKind::Failed,
                    format!("the console refused the token ({status}): {message}"),
                ))
            }
            _ => ExitCodeKind::Failed,
        };
        Err(Failure::new(code, format!("{path}: {message}")))
    }
}

/// The error of a console reply, with every diagnostic when it carries them.
fn describe_error(body: &Value) -> String {
    let mut text = body["error"].as_str().unwrap_or("error").to_string();
    if let Some(diagnostics) = body["diagnostics"].as_array() {
        for diagnostic in diagnostics {
            text.push_str(&format!(
                "\n  {}:{}:{}: {}: {}",
                diagnostic["file"].as_str().unwrap_or("config"),
                diagnostic["line"],
                diagnostic["column"],
                diagnostic["field"].as_str().unwrap_or(""),
                diagnostic["reason"].as_str().unwrap_or("")
            ));
        }
    }
    text
}
