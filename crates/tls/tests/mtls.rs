//! Mutual TLS between two identities over loopback: who gets in and who is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use redoubt_tls::{ca, TlsContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cluster(dir: &Path, names: &[&str]) {
    ca::init(dir).expect("init the CA");
    for name in names {
        ca::issue(dir, name).expect("issue a certificate");
    }
}

/// Serves one connection with `server`: answers "ok" to a peer named `allowed`.
async fn serve_once(
    server: Arc<TlsContext>,
    allowed: &'static str,
) -> (String, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let task = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        let Some((mut stream, identity)) = server.accept(stream, &peer.to_string()).await else {
            return false;
        };
        if !identity.is(allowed) {
            server.refuse(&peer.to_string(), "not the expected peer");
            return false;
        }
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.expect("read");
        stream.write_all(b"ok").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        true
    });
    (address, task)
}

async fn talk(client: &TlsContext, address: &str, server_name: &str) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .connect(tcp, server_name)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"hello")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

#[tokio::test]
async fn members_of_the_cluster_talk_and_strangers_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    cluster(dir.path(), &["prod-a", "dr-b", "dr-c"]);
    cluster(other.path(), &["prod-a", "dr-b"]);
    let prod = TlsContext::load(dir.path(), "prod-a").expect("load prod-a");
    let dr_b = Arc::new(TlsContext::load(dir.path(), "dr-b").expect("load dr-b"));
    let dr_c = Arc::new(TlsContext::load(dir.path(), "dr-c").expect("load dr-c"));
    let foreign_prod = TlsContext::load(other.path(), "prod-a").expect("load foreign prod-a");
    let foreign_b = Arc::new(TlsContext::load(other.path(), "dr-b").expect("load foreign dr-b"));

    // The real pair.
    let (address, server) = serve_once(dr_b.clone(), "prod-a").await;
    assert_eq!(talk(&prod, &address, "dr-b").await.expect("talk"), b"ok");
    assert!(server.await.expect("server task"));
    assert_eq!(dr_b.refusals(), 0);

    // A client whose certificate comes from another CA: refused in the handshake, counted.
    let (address, server) = serve_once(dr_b.clone(), "prod-a").await;
    assert!(talk(&foreign_prod, &address, "dr-b").await.is_err());
    assert!(!server.await.expect("server task"));
    assert_eq!(dr_b.refusals(), 1);

    // A client without any certificate (plain TCP bytes): refused, counted.
    let (address, server) = serve_once(dr_b.clone(), "prod-a").await;
    let mut tcp = TcpStream::connect(&address).await.expect("connect");
    let _ = tcp.write_all(b"RDWF plaintext hello").await;
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink).await;
    assert!(!server.await.expect("server task"));
    assert_eq!(dr_b.refusals(), 2);

    // A member with a valid certificate but not the name the server expects.
    let (address, server) = serve_once(dr_b.clone(), "prod-a").await;
    let _ = talk(&dr_c, &address, "dr-b").await;
    assert!(!server.await.expect("server task"));
    assert_eq!(dr_b.refusals(), 3);

    // The send process never hands data to an impostor: a server from another CA...
    let (address, server) = serve_once(foreign_b.clone(), "prod-a").await;
    let refused = talk(&prod, &address, "dr-b")
        .await
        .expect_err("impostor server");
    assert!(refused.contains("dr-b"), "{refused}");
    assert!(!server.await.expect("server task"));
    // ...or a real member answering under another name (dr-c where dr-b was configured).
    let (address, server) = serve_once(dr_c.clone(), "prod-a").await;
    assert!(talk(&prod, &address, "dr-b").await.is_err());
    assert!(!server.await.expect("server task"));
}

#[test]
fn keys_are_private_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = ca::init(dir.path()).expect("init");
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&written.key), 0o600);
    let ca_before = std::fs::read(&written.cert).expect("read ca");
    assert!(matches!(
        ca::init(dir.path()),
        Err(redoubt_tls::TlsError::AlreadyExists(_))
    ));
    assert_eq!(std::fs::read(&written.cert).expect("read ca"), ca_before);
    let issued = ca::issue(dir.path(), "dr-b").expect("issue");
    assert_eq!(mode(&issued.key), 0o600);
    assert!(matches!(
        ca::issue(dir.path(), "dr-b"),
        Err(redoubt_tls::TlsError::AlreadyExists(_))
    ));
    // A key readable by others is not loaded.
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(
        TlsContext::load(dir.path(), "dr-b"),
        Err(redoubt_tls::TlsError::KeyPermissions { .. })
    ));
}

#[test]
fn path_like_names_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    ca::init(dir.path()).expect("init");
    let before: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    for name in [
        "../evil", "a/b", "a\0b", "..", "", "/etc/x", "ca", "UPPER", ".hidden",
    ] {
        assert!(
            matches!(
                ca::issue(dir.path(), name),
                Err(redoubt_tls::TlsError::InvalidName(_))
            ),
            "{name:?} accepted"
        );
        assert!(TlsContext::load(dir.path(), name).is_err());
    }
    let after: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert_eq!(before.len(), after.len());
    assert!(!dir
        .path()
        .parent()
        .expect("parent")
        .join("evil.key")
        .exists());
}

#[test]
fn extra_names_are_in_the_certificate_and_bad_ones_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    ca::init(dir.path()).expect("init the CA");
    let extra = ["localhost".to_string(), "127.0.0.1".to_string()];
    let written = ca::issue_with_names(dir.path(), "console", &extra).expect("issue");
    for name in ["console", "localhost", "127.0.0.1"] {
        assert!(
            redoubt_tls::certificate_is_for(&written.cert, name).expect("read"),
            "{name}"
        );
    }
    assert!(!redoubt_tls::certificate_is_for(&written.cert, "127.0.0.2").expect("read"));
    assert!(!redoubt_tls::certificate_is_for(&written.cert, "prod-a").expect("read"));
    // A certificate without extra names covers its name only.
    let plain = ca::issue(dir.path(), "prod-a").expect("issue");
    assert!(!redoubt_tls::certificate_is_for(&plain.cert, "127.0.0.1").expect("read"));

    let refused = ca::issue_with_names(dir.path(), "dr-b", &["not a name".to_string()]);
    assert!(
        matches!(refused, Err(redoubt_tls::TlsError::InvalidExtraName(ref name)) if name == "not a name"),
        "{refused:?}"
    );
    assert!(!dir.path().join("dr-b.pem").exists());
    assert!(!dir.path().join("dr-b.key").exists());
}

#[tokio::test]
async fn a_peer_that_answers_in_plain_text_is_named_as_serving_no_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    cluster(dir.path(), &["console", "db1"]);
    let console = TlsContext::load(dir.path(), "console").expect("load console");
    // An agent started without a TLS identity: it answers HTTP to the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut hello = [0u8; 64];
        let _ = stream.read(&mut hello).await;
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let tcp = TcpStream::connect(&address).await.expect("connect");
    let error = match console.connect(tcp, "db1").await {
        Ok(_) => panic!("a plain-text peer passed the handshake"),
        Err(error) => error,
    };
    assert!(
        matches!(error, redoubt_tls::TlsError::PlainTextPeer { ref peer } if peer == "db1"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("db1 serves no TLS"), "{message}");
    assert!(message.contains("redoubt ca issue db1"), "{message}");
    server.await.expect("server task");
}
