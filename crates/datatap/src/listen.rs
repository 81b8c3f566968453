//! Accept loops for TCP and unix-socket listeners.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::server::{serve_connection, Exports};

/// Connections served at once by one listener; more wait in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    Unix(PathBuf),
}

pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// The NBD URI of an export on this listener, as qemu-io, nbdinfo and fio accept it.
    pub fn uri(&self, export: &str) -> String {
        match self {
            Bound::Tcp(listener) => match listener.local_addr() {
                Ok(address) => format!("nbd://{address}/{export}"),
                Err(_) => format!("nbd:///{export}"),
            },
            Bound::Unix(_, path) => format!("nbd+unix:///{export}?socket={}", path.display()),
        }
    }

    /// [`Bound::uri`] with the `nbds` scheme of libnbd when the export requires TLS
    /// (`nbds://`, `nbds+unix://`; qemu takes `tls-creds` instead).
    pub fn uri_with_tls(&self, export: &str, tls: bool) -> String {
        let uri = self.uri(export);
        match uri.strip_prefix("nbd") {
            Some(rest) if tls => format!("nbds{rest}"),
            _ => uri,
        }
    }
}

/// How long a TCP bind waits for its port to come free. A process restarted after `kill -9`
/// (or by systemd) can find its port still held for a moment: by the old process's threads
/// that are still exiting, or by a client's outgoing connection that took it as its source
/// port. Giving up at once would leave the data path down until someone restarts it.
pub const BIND_ADDRESS_IN_USE_WAIT_MS: u64 = 30_000;
const BIND_RETRY_INTERVAL_MS: u64 = 100;

/// Binds a TCP listener; while the address is in use, tries again for up to `wait_ms`.
pub async fn bind_tcp_waiting(address: &str, wait_ms: u64) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut warned = false;
    loop {
        match TcpListener::bind(address).await {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%address, wait_ms, "address in use; waiting for it to come free");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(BIND_RETRY_INTERVAL_MS)).await;
            }
            result => return result,
        }
    }
}

pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
    match listen {
        Listen::Tcp(address) => Ok(Bound::Tcp(
            bind_tcp_waiting(address, BIND_ADDRESS_IN_USE_WAIT_MS).await?,
        )),
        Listen::Unix(path) => {
            // A socket file left by a previous run would make bind fail; only a socket is removed.
            if let Ok(metadata) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if metadata.file_type().is_socket() {
                    // durable: a stale socket, not state.
                    std::fs::remove_file(path)?;
                }
            }
            Ok(Bound::Unix(UnixListener::bind(path)?, path.clone()))
        }
    }
}

/// Accepts and serves connections until `shutdown` turns true.
pub async fn serve(
    bound: Bound,
    exports: Arc<Exports>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let exports = exports.clone();
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            accepted = accept(&bound) => match accepted {
                Ok(Accepted::Tcp(stream)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        if let Err(error) = serve_connection(stream, exports).await {
                            tracing::info!(%error, "NBD connection ended");
                        }
                        drop(slot);
                    });
                }
                Ok(Accepted::Unix(stream)) => {
                    tokio::spawn(async move {
                        if let Err(error) = serve_connection(stream, exports).await {
                            tracing::info!(%error, "NBD connection ended");
                        }
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: log and keep serving others.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
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
