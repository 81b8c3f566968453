//! The console's API and web console over HTTPS (`docs/security.md`).
//!
//! With a TLS identity (`redoubt console --tls-dir DIR`: ca.pem, console.pem, console.key)
//! the API port speaks TLS only, with the console's certificate. Clients are not asked for a
//! certificate here: browsers and the CLI authenticate with a token, which TLS now keeps out
//! of sight (agents keep their mutual TLS on their own ports).
//!
//! ```text
//! TcpListener ──accept──▶ one task per connection (at most HANDSHAKES_IN_FLIGHT_MAX):
//!     first byte 0x16 (a TLS handshake) ──▶ handshake (≤ HANDSHAKE_TIMEOUT_MS) ──▶ queue ──▶ axum
//!     a letter (plain HTTP)             ──▶ 400 "this console serves HTTPS only", closed
//!     anything else / nothing           ──▶ closed
//! ```
//!
//! Handshakes run concurrently, so a slow or silent client never holds up the others. A
//! failed handshake (a client that does not trust the certificate, plain bytes) is logged and
//! counted, and no HTTP request is ever read from it: a token is only ever read inside TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redoubt_tls::tokio_rustls::server::TlsStream;
use redoubt_tls::tokio_rustls::TlsAcceptor;
use redoubt_tls::TlsContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// The first byte of every TLS connection (a handshake record).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Handshakes (and plain-HTTP answers) in progress at once; more connections wait.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Established connections waiting for the HTTP server to take them.
pub const ACCEPTED_QUEUE_MAX: usize = 64;
/// A client must send its first byte within this.
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
/// Most bytes of a plain-HTTP request read before it is answered (its head, for Host).
pub const PLAIN_HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Pause after a failed accept (out of file descriptors, …) before the next one.
const ACCEPT_RETRY_MS: u64 = 100;

/// The console's HTTPS listener: the TLS connections of a bound TCP listener, for
/// `axum::serve`. Dropping it stops accepting (and closes the port).
pub struct HttpsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    refusals: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsListener {
    /// Serves TLS with `tls`'s certificate (no client certificate asked for) on `listener`.
    pub fn new(listener: TcpListener, tls: &TlsContext) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls.api_server_config());
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let refusals = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            sender,
            Arc::clone(&refusals),
        ));
        Ok(HttpsListener {
            accepted,
            local,
            refusals,
            task,
        })
    }

    /// Connections refused so far (failed handshakes, plain HTTP).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    refusals: Arc<AtomicU64>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "API: accept a connection");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        let refusals = Arc::clone(&refusals);
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(stream) = handshake(acceptor, stream, peer, &refusals).await {
                // Err: the server stopped; the connection just closes.
                let _ = sender.send((stream, peer)).await;
            }
        });
    }
}

/// What the first byte of a connection says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstByte {
    Tls,
    PlainHttp,
    Other,
}

/// Pure: TLS starts with a handshake record; an HTTP/1 request with a method name.
pub fn classify(first: u8) -> FirstByte {
    match first {
        TLS_HANDSHAKE_RECORD => FirstByte::Tls,
        byte if byte.is_ascii_uppercase() => FirstByte::PlainHttp,
        _ => FirstByte::Other,
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    refusals: &AtomicU64,
) -> Option<TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(
        Duration::from_millis(FIRST_BYTE_TIMEOUT_MS),
        stream.peek(&mut first),
    )
    .await;
    match peeked {
        Ok(Ok(1..)) => {}
        // Closed, reset or silent before its first byte (a port probe): nothing to refuse.
        _ => return None,
    }
    let refuse = |reason: &str| {
        refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %reason, "API: connection refused");
    };
    match classify(first[0]) {
        FirstByte::Tls => {}
        FirstByte::PlainHttp => {
            refuse("plain HTTP on the HTTPS port (answered 400, not served)");
            answer_plain_http(stream).await;
            return None;
        }
        FirstByte::Other => {
            refuse("neither TLS nor HTTP");
            return None;
        }
    }
    match tokio::time::timeout(
        Duration::from_millis(redoubt_tls::HANDSHAKE_TIMEOUT_MS),
        acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            refuse(&format!("TLS handshake failed: {error}"));
            None
        }
        Err(_) => {
            refuse("TLS handshake timed out");
            None
        }
    }
}

/// The `Host` of a plain-HTTP request head, when it has a usable one.
pub fn host_of(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let host = text.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim().to_string())
    })?;
    let usable = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b".-:[]".contains(&byte));
    usable.then_some(host)
}

/// The answer to a plain-HTTP request: 400, what to use instead, connection closed.
pub fn plain_http_answer(host: Option<&str>) -> Vec<u8> {
    let url = match host {
        Some(host) => format!("https://{host}"),
        None => "https://HOST:PORT".to_string(),
    };
    let body = serde_json::json!({
        "error": format!(
            "this console serves HTTPS only: use {url} (and its cluster CA: --ca-file or REDOUBT_CA_FILE); plain HTTP would send the token in clear text"
        )
    })
    .to_string();
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn answer_plain_http(mut stream: TcpStream) {
    // Read the head (so that closing does not reset the answer away), never a body.
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let read_head = async {
        while head.len() < PLAIN_HTTP_HEAD_BYTES_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => head.extend_from_slice(&buffer[..count]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(FIRST_BYTE_TIMEOUT_MS), read_head).await;
    let answer = plain_http_answer(host_of(&head).as_deref());
    let _ = tokio::time::timeout(Duration::from_millis(FIRST_BYTE_TIMEOUT_MS), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_told_apart() {
        assert_eq!(classify(0x16), FirstByte::Tls);
        for method in ["GET", "POST", "DELETE", "HEAD", "PUT"] {
            assert_eq!(classify(method.as_bytes()[0]), FirstByte::PlainHttp);
        }
        assert_eq!(classify(0), FirstByte::Other);
        assert_eq!(classify(b'g'), FirstByte::Other);
    }

    #[test]
    fn the_plain_http_answer_names_the_https_url() {
        let head =
            b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:7400\r\nAuthorization: Bearer x\r\n\r\n";
        assert_eq!(host_of(head).as_deref(), Some("127.0.0.1:7400"));
        let answer = String::from_utf8(plain_http_answer(Some("127.0.0.1:7400"))).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("use https://127.0.0.1:7400 "), "{answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        // A Host that could inject anything is not echoed.
        let evil = b"GET / HTTP/1.1\r\nHost: a\"b<script>\r\n\r\n";
        assert_eq!(host_of(evil), None);
        assert!(String::from_utf8(plain_http_answer(None))
            .unwrap()
            .contains("https://HOST:PORT"));
    }
}
