//! One port, two protocols: the first 4 bytes of a connection decide.
//!
//! With a TLS identity (`AgentConfig::tls`) the agent first completes mutual TLS (a client
//! certificate of the cluster CA is required; a failed handshake is refused, logged and
//! counted), then reads the first 4 bytes inside the TLS stream and hands them back to the
//! chosen protocol. Who may do what:
//! - replication: a peer whose certificate names a server of the group its Hello names;
//! - HTTP: the console (certificate `console`) for everything; another server of the
//!   configuration for reads only (GET, HEAD: peer health and status checks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use redoubt_replication::conn::{BoxStream, Prefixed};
use redoubt_tls::{PeerIdentity, TlsContext, CONSOLE_NAME};
use redoubt_wire::{decode_frame, Frame, FRAME_HEADER_SIZE_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::Agent;

/// The replication frame magic as it appears on the wire.
pub const REPLICATION_MAGIC: &[u8; 4] = b"RDWF";
/// The largest Hello frame is 32 + 812 bytes; we peek at most this much.
pub const HELLO_PEEK_BYTES_MAX: usize = 1024;
/// A client must send its first bytes (and a replication peer its whole Hello) within this.
pub const FIRST_BYTES_TIMEOUT_MS: u64 = 10_000;
/// Pause between two peeks while waiting for more bytes to arrive.
const PEEK_RETRY_MS: u64 = 2;

pub async fn connection(agent: Arc<Agent>, router: axum::Router, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    match agent.tls.clone() {
        Some(tls) => secured(agent, router, stream, tls).await,
        None => plaintext(agent, router, stream).await,
    }
}

async fn plaintext(agent: Arc<Agent>, router: axum::Router, stream: TcpStream) {
    let deadline = Instant::now() + Duration::from_millis(FIRST_BYTES_TIMEOUT_MS);
    let mut head = [0u8; 4];
    match peek_until(&stream, &mut head, deadline, |bytes| bytes.len() >= 4).await {
        Ok(count) if count >= 4 => {}
        Ok(_) => return, // closed before saying anything
        Err(error) => {
            tracing::debug!(%error, "connection ended before its first bytes");
            return;
        }
    }
    if &head == REPLICATION_MAGIC {
        let group = match single_replication_group(&agent) {
            Some(group) => Some(group),
            None => hello_group(&stream, deadline).await,
        };
        let Some(group) = group else {
            tracing::info!(peer = ?stream.peer_addr().ok(), "replication connection for no loaded group; closing");
            return;
        };
        replication(agent, group, None, Box::new(stream));
    } else {
        serve_http(router, stream).await;
    }
}

async fn serve_http<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    router: axum::Router,
    stream: S,
) {
    let service = TowerToHyperService::new(router);
    let served = Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP connection ended");
    }
}

async fn secured(agent: Arc<Agent>, router: axum::Router, stream: TcpStream, tls: Arc<TlsContext>) {
    let peer = stream.peer_addr().map_or_else(
        |_| "unknown peer".to_string(),
        |address| address.to_string(),
    );
    let Some((mut stream, identity)) = tls.accept(stream, &peer).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(FIRST_BYTES_TIMEOUT_MS);
    let mut head = Vec::with_capacity(HELLO_PEEK_BYTES_MAX);
    if read_until(&mut stream, &mut head, deadline, |bytes| bytes.len() >= 4)
        .await
        .is_err()
        || head.len() < 4
    {
        return;
    }
    if head.starts_with(REPLICATION_MAGIC) {
        let group = match single_replication_group(&agent) {
            Some(group) => Some(group),
            None => {
                let complete = |bytes: &[u8]| hello_complete(bytes);
                if read_until(&mut stream, &mut head, deadline, complete)
                    .await
                    .is_err()
                {
                    return;
                }
                group_of_hello(&head)
            }
        };
        let Some(group) = group else {
            tracing::info!(%peer, "replication connection for no loaded group; closing");
            return;
        };
        let members = group_members(&agent, &group);
        let Some(name) = identity.which(members.iter().map(String::as_str)) else {
            tls.refuse(
                &peer,
                &format!("its certificate names no server of group {group}"),
            );
            return;
        };
        tracing::debug!(%peer, server = name, %group, "replication connection authenticated");
        let peer = Some(name.to_string());
        replication(agent, group, peer, Box::new(Prefixed::new(head, stream)));
    } else {
        match http_access(&agent, &identity) {
            Access::Full => serve_http(router, Prefixed::new(head, stream)).await,
            Access::ReadOnly => {
                let router = router.layer(axum::middleware::from_fn(reads_only));
                serve_http(router, Prefixed::new(head, stream)).await;
            }
            Access::None => tls.refuse(
                &peer,
                "its certificate names neither the console nor a server of the configuration",
            ),
        }
    }
}

enum Access {
    Full,
    ReadOnly,
    None,
}

fn http_access(agent: &Agent, identity: &PeerIdentity) -> Access {
    if identity.is(CONSOLE_NAME) {
        return Access::Full;
    }
    let inner = agent.lock();
    let servers = inner
        .config
        .as_ref()
        .map(|stored| {
            stored
                .config
                .servers
                .iter()
                .map(|server| server.name.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if identity.which(servers.iter().map(String::as_str)).is_some() {
        Access::ReadOnly
    } else {
        Access::None
    }
}

/// Another server may read (health, status), never change anything.
async fn reads_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        next.run(request).await
    } else {
        crate::http::error(
            axum::http::StatusCode::FORBIDDEN,
            "only the console may change this agent; other servers may only read",
        )
    }
}

/// The servers of `group` in the agent's configuration.
fn group_members(agent: &Agent, group: &str) -> Vec<String> {
    let inner = agent.lock();
    inner
        .config
        .as_ref()
        .and_then(|stored| stored.config.group(group))
        .map(|group| {
            group
                .members()
                .into_iter()
                .map(|(name, _)| name.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads into `buffer` (appending) until `enough` holds, the peer closes, the buffer holds
/// [`HELLO_PEEK_BYTES_MAX`] bytes or the deadline passes.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    enough: impl Fn(&[u8]) -> bool,
) -> std::io::Result<()> {
    let mut chunk = [0u8; HELLO_PEEK_BYTES_MAX];
    while !enough(buffer) && buffer.len() < HELLO_PEEK_BYTES_MAX {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let room = HELLO_PEEK_BYTES_MAX - buffer.len();
        let count = tokio::time::timeout(remaining, stream.read(&mut chunk[..room]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
        if count == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..count]);
    }
    Ok(())
}

/// Peeks into `buffer` until `enough` holds for the peeked bytes, the peer closes, the
/// buffer is full or the deadline passes. Returns the bytes peeked.
async fn peek_until(
    stream: &TcpStream,
    buffer: &mut [u8],
    deadline: Instant,
    enough: impl Fn(&[u8]) -> bool,
) -> std::io::Result<usize> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let count = tokio::time::timeout(remaining, stream.peek(buffer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peek timed out"))??;
        if count == 0 || count == buffer.len() || enough(&buffer[..count]) {
            return Ok(count);
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the first frame did not arrive in time",
            ));
        }
        // peek returns at once while bytes are buffered: wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(PEEK_RETRY_MS)).await;
    }
}

/// The group when exactly one apply process is loaded (no need to read the Hello).
fn single_replication_group(agent: &Agent) -> Option<String> {
    let inner = agent.lock();
    let mut candidates = inner
        .paths
        .iter()
        .filter(|(_, path)| path.aba().is_some())
        .map(|(group, _)| group.clone());
    match (candidates.next(), candidates.next()) {
        (Some(group), None) => Some(group),
        _ => None,
    }
}

/// `peer`: the server name the peer's certificate proved (TLS), checked against the Hello.
fn replication(agent: Arc<Agent>, group: String, peer: Option<String>, stream: BoxStream) {
    let handle = agent.lock().paths.get(&group).and_then(|path| path.aba());
    let Some((aba, connections, shutdown)) = handle else {
        tracing::info!(%group, "replication connection for a group whose apply process is not loaded; closing");
        return;
    };
    let Ok(mut connections) = connections.lock() else {
        return;
    };
    // `None`: the ABA is stopping; the LCA reconnects later.
    if let Some(set) = connections.as_mut() {
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            if let Err(error) = aba.serve_stream(stream, peer, shutdown).await {
                tracing::info!(%group, %error, "replication connection ended");
            }
        });
    }
}

fn hello_complete(bytes: &[u8]) -> bool {
    bytes.len() >= FRAME_HEADER_SIZE_BYTES && !matches!(decode_frame(bytes), Ok(None))
}

fn group_of_hello(bytes: &[u8]) -> Option<String> {
    match decode_frame(bytes) {
        Ok(Some((_, Frame::Hello(hello), _))) => Some(hello.group_name),
        Ok(_) => None,
        Err(error) => {
            tracing::info!(%error, "undecodable replication Hello");
            None
        }
    }
}

/// The group named by the Hello at the start of the stream, read without consuming it.
async fn hello_group(stream: &TcpStream, deadline: Instant) -> Option<String> {
    let mut buffer = vec![0u8; HELLO_PEEK_BYTES_MAX];
    let count = peek_until(stream, &mut buffer, deadline, hello_complete)
        .await
        .ok()?;
    group_of_hello(&buffer[..count])
}
