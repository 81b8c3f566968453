//! Bounds on the API's connections (`docs/security.md`): a cap in total and per peer
//! address, and an idle timeout, so that idle or half-sent connections cannot run the console
//! out of file descriptors or keep it from answering.
//!
//! ```text
//! listener (TCP or HTTPS) ──accept──▶ slot free for this peer and in total?
//!     no  ──▶ closed at once (counted, logged at most once a minute)
//!     yes ──▶ Guarded IO: no byte read or written for idle_timeout_ms ──▶ the connection ends
//! ```
//!
//! Event streams (SSE) stay open: they send a keep-alive more often than the idle timeout.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections served at once, from every peer.
pub const CONNECTIONS_MAX: usize = 512;
/// Connections served at once from one peer address: one host cannot take every slot.
pub const CONNECTIONS_PER_PEER_MAX: usize = 64;
/// A connection that sends and receives nothing this long is closed (a half-sent request, an
/// idle keep-alive). Longer than the event streams' keep-alive interval.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// The event streams' keep-alive interval, well inside [`IDLE_TIMEOUT_MS`].
pub const SSE_KEEP_ALIVE_MS: u64 = 10_000;

const _: () = assert!(SSE_KEEP_ALIVE_MS * 2 <= IDLE_TIMEOUT_MS);
const _: () = assert!(CONNECTIONS_PER_PEER_MAX <= CONNECTIONS_MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub connections_max: usize,
    pub connections_per_peer_max: usize,
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            connections_max: CONNECTIONS_MAX,
            connections_per_peer_max: CONNECTIONS_PER_PEER_MAX,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        }
    }
}

/// Who holds how many slots.
#[derive(Debug, Default)]
struct Slots {
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    last_refusal_log_ms: AtomicU64,
}

impl Slots {
    fn take(self: &Arc<Self>, limits: &ConnectionLimits, peer: IpAddr) -> Option<Slot> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = per_peer.values().sum();
        let of_peer = per_peer.get(&peer).copied().unwrap_or(0);
        if total >= limits.connections_max || of_peer >= limits.connections_per_peer_max {
            return None;
        }
        *per_peer.entry(peer).or_insert(0) += 1;
        Some(Slot {
            slots: Arc::clone(self),
            peer,
        })
    }
}

/// One connection's place; given back when the connection ends.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self
            .slots
            .per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// A listener whose connections are counted and time out when idle.
pub struct Limited<L> {
    inner: L,
    limits: ConnectionLimits,
    slots: Arc<Slots>,
}

impl<L> Limited<L> {
    pub fn new(inner: L, limits: ConnectionLimits) -> Limited<L> {
        Limited {
            inner,
            limits,
            slots: Arc::default(),
        }
    }
}

impl<L> axum::serve::Listener for Limited<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    type Io = Guarded<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, peer) = self.inner.accept().await;
            if let Some(slot) = self.slots.take(&self.limits, peer.ip()) {
                return (Guarded::new(io, slot, self.limits.idle_timeout_ms), peer);
            }
            // Closed at once: the descriptor goes back before the next accept.
            drop(io);
            let refused = self.slots.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let now_ms = crate::runner::now_unix_ms();
            let last_ms = self.slots.last_refusal_log_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last_ms) >= 60_000 {
                self.slots
                    .last_refusal_log_ms
                    .store(now_ms, Ordering::Relaxed);
                tracing::warn!(
                    %peer,
                    refused,
                    connections_max = self.limits.connections_max,
                    connections_per_peer_max = self.limits.connections_per_peer_max,
                    "API connection refused: too many open connections (from this peer or in total)"
                );
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection's IO that fails with `TimedOut` once nothing moved for the idle timeout.
pub struct Guarded<Io> {
    io: Io,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _slot: Slot,
}

impl<Io> Guarded<Io> {
    fn new(io: Io, slot: Slot, idle_timeout_ms: u64) -> Guarded<Io> {
        let idle_timeout = Duration::from_millis(idle_timeout_ms);
        Guarded {
            io,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            _slot: slot,
        }
    }

    fn moved(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// After the IO answered `Pending`: whether the idle deadline has passed (it wakes this
    /// task when it does).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the API connection was idle too long",
    )
}

impl<Io: AsyncRead + Unpin> AsyncRead for Guarded<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Guarded<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_peer_and_in_total_and_come_back() {
        let limits = ConnectionLimits {
            connections_max: 3,
            connections_per_peer_max: 2,
            idle_timeout_ms: 1_000,
        };
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = slots.take(&limits, a).unwrap();
        let _second = slots.take(&limits, a).unwrap();
        assert!(slots.take(&limits, a).is_none(), "per peer");
        let _third = slots.take(&limits, b).unwrap();
        assert!(slots.take(&limits, b).is_none(), "in total");
        drop(first);
        assert!(slots.take(&limits, b).is_some(), "a slot came back");
    }
}
