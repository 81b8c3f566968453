//! A process's TLS identity: the CA it trusts, its own certificate and key, the acceptor and
//! connector built from them, and the count of peers it refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::{is_valid_name, provider, TlsError, CA_CERT_FILE};

/// A TLS handshake must complete within this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a peer proved in the handshake: a certificate chaining to the cluster CA.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    cert: CertificateDer<'static>,
}

impl PeerIdentity {
    /// Whether the peer's certificate names `name` (its subject alternative name).
    pub fn is(&self, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.cert)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
    }

    /// The first of `names` the certificate holds.
    pub fn which<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        names.into_iter().find(|name| self.is(name))
    }
}

/// One identity: `name`'s certificate and key, the cluster CA, and the configurations.
pub struct TlsContext {
    name: String,
    server: Arc<ServerConfig>,
    /// The same certificate, no client certificate asked for (the console's API port).
    api_server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    refusals: AtomicU64,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("name", &self.name)
            .field("refusals", &self.refusals())
            .finish_non_exhaustive()
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn config_error(error: impl std::fmt::Display) -> TlsError {
    TlsError::Config(error.to_string())
}

impl TlsContext {
    /// Loads `dir/ca.pem`, `dir/NAME.pem` and `dir/NAME.key`. The key must not be readable
    /// by group or others.
    pub fn load(dir: &Path, name: &str) -> Result<TlsContext, TlsError> {
        // "ca" would load the CA itself as an identity.
        if !is_valid_name(name) || name == "ca" {
            return Err(TlsError::InvalidName(name.to_string()));
        }
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        for (path, why) in [
            (&ca_path, "the cluster CA certificate (`redoubt ca init`)"),
            (
                &cert_path,
                "this process's certificate (`redoubt ca issue NAME`)",
            ),
            (&key_path, "this process's key (`redoubt ca issue NAME`)"),
        ] {
            if !path.exists() {
                return Err(TlsError::Missing {
                    path: path.clone(),
                    why,
                });
            }
        }
        let mode = std::fs::metadata(&key_path)
            .map_err(io_error("inspect", &key_path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: key_path,
                mode,
            });
        }
        let bad = |path: &Path, what| TlsError::BadPem {
            path: path.to_path_buf(),
            what,
        };
        let mut roots = RootCertStore::empty();
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
            .map_err(|_| bad(&ca_path, "certificate"))?
            .collect::<Result<_, _>>()
            .map_err(|_| bad(&ca_path, "certificate"))?;
        for cert in ca_certs {
            roots
                .add(cert)
                .map_err(|_| bad(&ca_path, "CA certificate"))?;
        }
        if roots.is_empty() {
            return Err(bad(&ca_path, "certificate"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|_| bad(&cert_path, "certificate"))?
            .collect::<Result<_, _>>()
            .map_err(|_| bad(&cert_path, "certificate"))?;
        if chain.is_empty() {
            return Err(bad(&cert_path, "certificate"));
        }
        let key =
            PrivateKeyDer::from_pem_file(&key_path).map_err(|_| bad(&key_path, "private key"))?;
        Self::from_parts(name, roots, chain, key)
    }

    fn from_parts(
        name: &str,
        roots: RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsContext, TlsError> {
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(config_error)?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        let mut api_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        api_server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        Ok(TlsContext {
            name: name.to_string(),
            server: Arc::new(server),
            api_server: Arc::new(api_server),
            client: Arc::new(client),
            refusals: AtomicU64::new(0),
        })
    }

    /// The name this identity's certificate carries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Peers refused so far (failed handshakes and names not allowed).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Logs (once, here) and counts a refused peer.
    pub fn refuse(&self, peer: &str, reason: &str) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %reason, "TLS peer refused");
    }

    /// The server configuration of an HTTPS port where clients authenticate otherwise (the
    /// console's API: browsers and the CLI send a token): this certificate, no client
    /// certificate asked for, HTTP/1.1.
    pub fn api_server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.api_server)
    }

    /// The client configuration (for HTTP clients that take a ready one).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.client)
    }

    /// Accepts a TLS connection from a peer with a certificate of the cluster CA. A failed
    /// handshake (no certificate, another CA, timeout) is refused: logged, counted, `None`.
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: &str,
    ) -> Option<(server::TlsStream<S>, PeerIdentity)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.server.clone());
        let handshake = tokio::time::timeout(
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            acceptor.accept(stream),
        )
        .await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            // Closed before saying anything (a port probe): nothing to refuse.
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(%peer, "connection closed before the TLS handshake");
                return None;
            }
            Ok(Err(error)) => {
                self.refuse(peer, &format!("handshake failed: {error}"));
                return None;
            }
            Err(_) => {
                self.refuse(peer, "handshake timed out");
                return None;
            }
        };
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.clone().into_owned());
        match cert {
            Some(cert) => Some((stream, PeerIdentity { cert })),
            None => {
                self.refuse(peer, "no client certificate");
                None
            }
        }
    }

    /// Opens TLS to the server `peer_name`: its certificate must chain to the cluster CA and
    /// carry exactly that name.
    pub async fn connect<S>(
        &self,
        stream: S,
        peer_name: &str,
    ) -> Result<client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake_error = |message: String| TlsError::Handshake {
            peer: peer_name.to_string(),
            message,
        };
        let server_name = ServerName::try_from(peer_name.to_string())
            .map_err(|_| TlsError::InvalidName(peer_name.to_string()))?;
        let connector = TlsConnector::from(self.client.clone());
        match tokio::time::timeout(
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            connector.connect(server_name, stream),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) if answered_in_plain_text(&error) => Err(TlsError::PlainTextPeer {
                peer: peer_name.to_string(),
            }),
            Ok(Err(error)) => Err(handshake_error(error.to_string())),
            Err(_) => Err(handshake_error("handshake timed out".into())),
        }
    }
}

/// Whether a failed client handshake read something that is no TLS record at all: the peer
/// speaks plain text (an agent started without a TLS identity answers HTTP).
fn answered_in_plain_text(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| {
            matches!(
                error,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        })
}

/// Whether the certificate in `path` (PEM, its first certificate) is valid for `name` (a DNS
/// name or an IP address among its subject alternative names).
pub fn certificate_is_for(path: &Path, name: &str) -> Result<bool, TlsError> {
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|_| TlsError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
        })?
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
        })?;
    Ok(PeerIdentity { cert }.is(name))
}

/// A client configuration that trusts only the CA certificates in `ca_path` (PEM) and presents
/// no certificate: what the CLI uses for `https://` console URLs.
pub fn ca_client_config(ca_path: &Path) -> Result<ClientConfig, TlsError> {
    let bad = || TlsError::BadPem {
        path: ca_path.to_path_buf(),
        what: "CA certificate",
    };
    if !ca_path.exists() {
        return Err(TlsError::Missing {
            path: ca_path.to_path_buf(),
            why: "the cluster CA certificate (ca.pem of `redoubt ca init`)",
        });
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_path)
        .map_err(|_| bad())?
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|_| bad())?;
    }
    if roots.is_empty() {
        return Err(bad());
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
