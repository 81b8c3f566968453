//! One port, two protocols: the first 4 bytes of a connection decide.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use redoubt_wire::{decode_frame, Frame, FRAME_HEADER_SIZE_BYTES};
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
        replication(agent, stream, deadline).await;
    } else {
        let service = TowerToHyperService::new(router);
        let served = Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(error) = served {
            tracing::debug!(%error, "HTTP connection ended");
        }
    }
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

async fn replication(agent: Arc<Agent>, stream: TcpStream, deadline: Instant) {
    let candidates: Vec<String> = {
        let inner = agent.lock();
        inner
            .paths
            .iter()
            .filter(|(_, path)| path.aba().is_some())
            .map(|(group, _)| group.clone())
            .collect()
    };
    let group = if candidates.len() == 1 {
        candidates.into_iter().next()
    } else {
        hello_group(&stream, deadline).await
    };
    let Some(group) = group else {
        tracing::info!(peer = ?stream.peer_addr().ok(), "replication connection for no loaded group; closing");
        return;
    };
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
            if let Err(error) = aba.serve_stream(stream, shutdown).await {
                tracing::info!(%group, %error, "replication connection ended");
            }
        });
    }
}

/// The group named by the Hello at the start of the stream, read without consuming it.
async fn hello_group(stream: &TcpStream, deadline: Instant) -> Option<String> {
    let mut buffer = vec![0u8; HELLO_PEEK_BYTES_MAX];
    let complete = |bytes: &[u8]| {
        bytes.len() >= FRAME_HEADER_SIZE_BYTES && !matches!(decode_frame(bytes), Ok(None))
    };
    let count = peek_until(stream, &mut buffer, deadline, complete)
        .await
        .ok()?;
    match decode_frame(&buffer[..count]) {
        Ok(Some((_, Frame::Hello(hello), _))) => Some(hello.group_name),
        Ok(_) => None,
        Err(error) => {
            tracing::info!(%error, "undecodable replication Hello");
            None
        }
    }
}
