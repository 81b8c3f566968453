//! `redoubt-tls`: the cluster CA, the certificates of servers and the console, and mutual TLS
//! between Redoubt processes (`docs/security.md`).
//!
//! ```text
//!  redoubt ca init  ──▶ DIR/ca.pem, DIR/ca.key (0600)
//!  redoubt ca issue NAME ──▶ DIR/NAME.pem, DIR/NAME.key (0600), SAN = DNS:NAME
//!
//!  TlsContext::load(dir, name) ──▶ acceptor (client certificate required, from the CA)
//!                               └─▶ connect(stream, peer) (server certificate pinned to `peer`)
//! ```
//!
//! One crypto provider for the whole workspace: aws-lc-rs, installed once by
//! [`install_provider`] and passed explicitly to every configuration built here.
//!
//! **Invariant:** knows nothing of replication, HTTP or NBD; it turns byte streams into
//! authenticated byte streams and says who the peer is.

pub mod ca;
mod context;
pub mod registry;

/// The TLS crates this one is built on (one version, one provider for the workspace).
pub use {rustls, tokio_rustls};

pub use context::{
    ca_client_config, certificate_is_for, PeerIdentity, TlsContext, HANDSHAKE_TIMEOUT_MS,
};

use std::path::PathBuf;
use std::sync::Arc;

/// The name in the console's certificate. Agents accept mutating HTTP requests only from it.
pub const CONSOLE_NAME: &str = "console";
/// The CA certificate in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key in the directory where `redoubt ca init` ran (never copied to servers).
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
    #[error("{} is missing: {why}", path.display())]
    Missing { path: PathBuf, why: &'static str },
    #[error("invalid extra certificate name {0:?}: a DNS name or an IP address")]
    InvalidExtraName(String),
    #[error(
        "invalid name {0:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("{} is readable by group or others (mode {mode:o}); run chmod 600 on it", path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{} holds no usable {what}", path.display())]
    BadPem { path: PathBuf, what: &'static str },
    #[error("generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("build the TLS configuration: {0}")]
    Config(String),
    #[error("TLS handshake with {peer}: {message}")]
    Handshake { peer: String, message: String },
    #[error("TLS handshake with {peer}: it answered in plain text: {peer} serves no TLS (give its agent a certificate of the cluster CA: `redoubt ca issue {peer}` into its state directory's tls/, then restart it)")]
    PlainTextPeer { peer: String },
}

/// The provider every configuration of this crate uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide rustls provider (for libraries, like reqwest, that
/// build configurations without one). Idempotent.
pub fn install_provider() {
    // Err means a provider is already installed: ours, by an earlier call.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Names of servers and of the console: the configuration's rule, so a name is also a file
/// name that cannot leave its directory and a DNS name a certificate can carry.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
        })
        && !name.contains("..")
}
