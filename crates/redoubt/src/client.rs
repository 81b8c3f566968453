//! The CLI's client of the console API. Maps HTTP outcomes to the exit codes of
//! `shared/spec/cli.md`: unreachable → 4, 409 → 3 (refused), 400 → 2 (invalid), other → 1.
//!
//! `https://` consoles: the console's certificate must chain to the cluster CA given by
//! `--ca-file` / `REDOUBT_CA_FILE` (only that CA; no system roots). A certificate that does
//! not is unreachable (4), and the token is never sent: it travels inside the TLS session
//! only, which does not exist when the check fails.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::exit::{ExitCodeKind, Failure};

/// A request to the console gives up after this long.
pub const CONSOLE_REQUEST_TIMEOUT_MS: u64 = 30_000;

pub struct ConsoleClient {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The cluster CA trusted for `https://` (None: nothing is trusted).
    ca_file: Option<PathBuf>,
}

/// `--ca-file` of this invocation (main sets it once; it wins over REDOUBT_CA_FILE).
static CA_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Records `--ca-file` for every console client of this process.
pub fn use_ca_file(path: Option<PathBuf>) {
    if let Some(path) = path {
        let _ = CA_FILE.set(path);
    }
}

/// `--ca-file`, else `REDOUBT_CA_FILE` (empty: none).
fn ca_file() -> Option<PathBuf> {
    CA_FILE.get().cloned().or_else(|| {
        std::env::var_os("REDOUBT_CA_FILE")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    })
}

/// `--console`, else `REDOUBT_CONSOLE`; an empty value names no console.
fn console_url(console: Option<String>) -> Option<String> {
    console
        .or_else(|| std::env::var("REDOUBT_CONSOLE").ok())
        .filter(|url| !url.is_empty())
}

impl ConsoleClient {
    /// Whether the user named a console, as [`ConsoleClient::from_options`] looks for it.
    pub fn named(console: Option<&str>) -> bool {
        console_url(console.map(str::to_string)).is_some()
    }

    /// From `--console`/`REDOUBT_CONSOLE` and `--token-file`/`REDOUBT_TOKEN_FILE`.
    pub fn from_options(
        console: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Result<ConsoleClient, Failure> {
        let base = console_url(console).ok_or_else(|| {
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

    /// With the CA of `--ca-file` / `REDOUBT_CA_FILE`.
    pub fn new(base: &str, token_file: &Path) -> Result<ConsoleClient, Failure> {
        Self::with_ca_file(base, token_file, ca_file())
    }

    /// Trusting only the CA in `ca_file` for `https://` (None: nothing is trusted).
    pub fn with_ca_file(
        base: &str,
        token_file: &Path,
        ca_file: Option<PathBuf>,
    ) -> Result<ConsoleClient, Failure> {
        let token = std::fs::read_to_string(token_file).map_err(|error| {
            Failure::new(
                ExitCodeKind::Invalid,
                format!("read the console token {}: {error}", token_file.display()),
            )
        })?;
        let base = base.trim_end_matches('/').to_string();
        // reqwest's rustls takes the process-wide provider (the workspace's one, aws-lc-rs).
        redoubt_tls::install_provider();
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_millis(CONSOLE_REQUEST_TIMEOUT_MS));
        if let Some(path) = &ca_file {
            let config = redoubt_tls::ca_client_config(path).map_err(|error| {
                Failure::new(
                    ExitCodeKind::Invalid,
                    format!("load the cluster CA (--ca-file or REDOUBT_CA_FILE): {error}"),
                )
            })?;
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder
            .build()
            .map_err(|error| Failure::new(ExitCodeKind::Failed, format!("HTTP client: {error}")))?;
        Ok(ConsoleClient {
            base,
            token: token.trim().to_string(),
            http,
            ca_file,
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
            let message = match certificate_problem(&error) {
                Some(problem) => {
                    describe_certificate_problem(&self.base, self.ca_file.as_deref(), &problem)
                }
                None => format!(
                    "cannot reach the console at {}: {}",
                    self.base,
                    error_chain(&error)
                ),
            };
            Failure::new(ExitCodeKind::Unreachable, message)
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
        // The console's message says what and where; the API path means nothing to a person.
        tracing::debug!(%path, %status, "the console refused the request");
        Err(Failure::new(code, message))
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

/// `error` and its sources, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// What was wrong with the console's certificate, when that is why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not signed by a trusted CA.
    UnknownIssuer,
    /// Signed by the CA but not for the URL's host.
    WrongName,
    /// Another certificate error (expired, bad usage, …).
    Other(String),
}

fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<CertificateProblem> {
    use redoubt_tls::rustls;
    let classify = |error: &rustls::Error| match error {
        // Another CA of the same name (a second `ca init`) fails on the signature.
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
            | rustls::CertificateError::BadSignature
            | rustls::CertificateError::UnsupportedSignatureAlgorithmContext { .. },
        ) => Some(CertificateProblem::UnknownIssuer),
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => Some(CertificateProblem::WrongName),
        rustls::Error::InvalidCertificate(other) => {
            Some(CertificateProblem::Other(format!("{other:?}")))
        }
        _ => None,
    };
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    // Bounded: error chains are short; a cycle would otherwise never end.
    for _ in 0..ERROR_CHAIN_DEPTH_MAX {
        let Some(error) = current else {
            break;
        };
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return classify(tls);
        }
        // io::Error hides the error it wraps from source(): step into it instead.
        current = match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// Most errors of a chain looked at for a certificate problem.
const ERROR_CHAIN_DEPTH_MAX: usize = 16;

/// The message of a failed certificate check: what URL, what is wrong, how to fix it.
pub fn describe_certificate_problem(
    base: &str,
    ca_file: Option<&Path>,
    problem: &CertificateProblem,
) -> String {
    let fix_ca = "pass the cluster CA that issued the console's certificate with --ca-file FILE \
                  or REDOUBT_CA_FILE=FILE (a lab's is DIR/tls/ca.pem; `set -a; . DIR/lab.env` sets it)";
    let mut text = match (problem, ca_file) {
        (CertificateProblem::UnknownIssuer, Some(ca)) => format!(
            "the console at {base} presented a certificate that is not signed by the CA in {}; {fix_ca}",
            ca.display()
        ),
        (CertificateProblem::UnknownIssuer, None) => format!(
            "the console at {base} serves HTTPS with a certificate this CLI cannot check: no cluster \
             CA given; {fix_ca}"
        ),
        (CertificateProblem::WrongName, _) => format!(
            "the console at {base} presented a certificate that is not valid for this host name or \
             address; use a URL with a name the certificate carries, or issue the console's \
             certificate with it (`redoubt ca issue console --san HOST`)"
        ),
        (CertificateProblem::Other(what), _) => format!(
            "the console at {base} presented an unusable certificate ({what}); check the \
             certificate in the console's --tls-dir"
        ),
    };
    text.push_str(". Nothing was sent (the token neither).");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_say_what_url_what_file_and_how_to_fix() {
        let text = describe_certificate_problem(
            "https://127.0.0.1:7400",
            Some(Path::new("/tmp/other/ca.pem")),
            &CertificateProblem::UnknownIssuer,
        );
        assert!(text.contains("https://127.0.0.1:7400"), "{text}");
        assert!(
            text.contains("not signed by the CA in /tmp/other/ca.pem"),
            "{text}"
        );
        assert!(text.contains("--ca-file"), "{text}");
        let text =
            describe_certificate_problem("https://h:1", None, &CertificateProblem::UnknownIssuer);
        assert!(text.contains("no cluster CA given"), "{text}");
        let text =
            describe_certificate_problem("https://h:1", None, &CertificateProblem::WrongName);
        assert!(text.contains("--san"), "{text}");
    }
}
