//! The console's agent client over mutual TLS: it reaches an agent whose certificate names
//! the configured server, and refuses (without sending the request) one that names another
//! server or comes from another CA.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redoubt_console::{AgentClient, AgentError, HttpAgentClient};
use redoubt_tls::{ca, TlsContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn cluster(dir: &Path, names: &[&str]) {
    ca::init(dir).expect("CA");
    for name in names {
        ca::issue(dir, name).expect("certificate");
    }
}

/// A minimal agent: answers every request that gets through TLS with a status document.
async fn fake_agent(tls: Arc<TlsContext>, requests: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (tls, requests) = (tls.clone(), requests.clone());
            tokio::spawn(async move {
                let Some((mut stream, identity)) = tls.accept(stream, &peer.to_string()).await
                else {
                    return;
                };
                assert!(identity.is("console"));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                requests.fetch_add(1, Ordering::Relaxed);
                let body = br#"{"server":"dr-b","groups":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

#[tokio::test]
async fn the_console_reaches_only_the_configured_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    cluster(dir.path(), &["dr-b", "console"]);
    cluster(other.path(), &["dr-b", "console"]);
    let requests = Arc::new(AtomicU64::new(0));
    let agent_tls = Arc::new(TlsContext::load(dir.path(), "dr-b").expect("agent"));
    let address = fake_agent(agent_tls.clone(), requests.clone()).await;

    let console = HttpAgentClient::with_tls(Some(Arc::new(
        TlsContext::load(dir.path(), "console").expect("console"),
    )))
    .expect("client");
    let status = console
        .status_of("dr-b", &address)
        .await
        .expect("status over mutual TLS");
    assert_eq!(status["server"], "dr-b");
    assert_eq!(requests.load(Ordering::Relaxed), 1);

    // The agent at that address is not the server the configuration names there.
    let error = console
        .status_of("prod-a", &address)
        .await
        .expect_err("a certificate naming another server");
    assert!(matches!(error, AgentError::Unreachable { .. }), "{error}");
    // Without a server name there is nothing to pin: refused before connecting.
    assert!(console.status(&address).await.is_err());
    // A console of another cluster is refused by the agent.
    let stranger = HttpAgentClient::with_tls(Some(Arc::new(
        TlsContext::load(other.path(), "console").expect("foreign console"),
    )))
    .expect("client");
    assert!(stranger.status_of("dr-b", &address).await.is_err());
    assert_eq!(
        requests.load(Ordering::Relaxed),
        1,
        "a refused peer's request was served"
    );
    // Both refusals are counted by the agent (its handshakes end a moment after the client's).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent_tls.refusals() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "refusals: {}",
            agent_tls.refusals()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
