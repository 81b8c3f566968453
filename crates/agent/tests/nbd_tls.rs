//! `nbd_tls = true` on a `[[server]]`: the agent serves the group's exports with NBD
//! STARTTLS using its own identity (qemu-io writes and reads back over TLS, a plaintext
//! client gets nothing, a client certificate of another CA is refused and counted in
//! `tls_refusals`); an agent without a TLS identity refuses to open them, and refuses to
//! start with such a configuration applied.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{config, free_port, wait_for, RunningAgent, Servers};
use redoubt_agent::{client, AgentConfig};
use redoubt_testkit::{run, run_ok, NbdClient};
use redoubt_tls::{ca, registry, TlsContext};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

fn tls_config(prod_dir: &Path, dr_dir: &Path, prod_address: &str, nbd_port: u16) -> String {
    let dr_address = format!("127.0.0.1:{}", free_port());
    let text = config(
        &Servers {
            prod_address,
            prod_dir,
            nbd_port,
            dr_address: &dr_address,
            dr_dir,
        },
        "4MiB",
        "1MiB",
    );
    let listen = format!("nbd_listen = \"127.0.0.1:{nbd_port}\"\n");
    assert!(text.contains(&listen), "{text}");
    text.replacen(&listen, &format!("{listen}nbd_tls = true\n"), 1)
}

async fn step(address: &str, server: Option<&str>, step: u8, config: &str) -> (u16, Value) {
    let request = json!({
        "group": "erp", "step": step, "row": {"server": "prod-a", "role": "production"},
        "config_version": 1, "config_toml": config, "previous_config_toml": null,
        "destroy": false,
    })
    .to_string();
    let timeout = Duration::from_secs(60);
    let (status, body) = match server {
        Some(name) => {
            client::request_to(name, address, "POST", "/v1/step", Some(&request), timeout).await
        }
        None => client::request(address, "POST", "/v1/step", Some(&request), timeout).await,
    }
    .expect("HTTP");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// A STARTTLS by hand, then a TLS handshake with `identity`; returns whether the server
/// answered anything over TLS (it must not, for a refused certificate).
/// `IHAVEOPT`, the option request magic.
const IHAVEOPT_MAGIC: u64 = 0x4948_4156_454F_5054;
/// `NBD_OPT_STARTTLS`.
const OPT_STARTTLS: u32 = 5;

async fn starttls_with(address: &str, identity: &TlsContext) -> bool {
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let mut greeting = [0u8; 18];
    tcp.read_exact(&mut greeting).await.expect("greeting");
    let mut hello = 1u32.to_be_bytes().to_vec(); // NBD_FLAG_C_FIXED_NEWSTYLE
    hello.extend_from_slice(&IHAVEOPT_MAGIC.to_be_bytes());
    hello.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
    hello.extend_from_slice(&0u32.to_be_bytes());
    tcp.write_all(&hello).await.expect("STARTTLS");
    let mut reply = [0u8; 20];
    tcp.read_exact(&mut reply).await.expect("STARTTLS reply");
    assert_eq!(&reply[12..16], &1u32.to_be_bytes(), "NBD_REP_ACK");
    let Ok(mut stream) = identity.connect(tcp, "prod-a").await else {
        return false;
    };
    // TLS 1.3: the server checks the client certificate after the client's Finished.
    let _ = stream.write_all(&IHAVEOPT_MAGIC.to_be_bytes()).await;
    let mut answer = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await,
        Ok(Ok(count)) if count > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_tls_exports_serve_only_cluster_clients_over_tls() {
    let root = tempfile::tempdir().expect("tempdir");
    let tls_dir = root.path().join("tls");
    let foreign_dir = root.path().join("foreign");
    ca::init(&tls_dir).expect("CA");
    ca::init(&foreign_dir).expect("foreign CA");
    for name in ["prod-a", "console", "client1"] {
        ca::issue(&tls_dir, name).expect("certificate");
        ca::issue(&foreign_dir, name).expect("foreign certificate");
    }
    let client_dir = root.path().join("client");
    std::fs::create_dir(&client_dir).expect("client dir");
    for (from, to) in [
        ("ca.pem", "ca-cert.pem"),
        ("client1.pem", "client-cert.pem"),
        ("client1.key", "client-key.pem"),
    ] {
        std::fs::copy(tls_dir.join(from), client_dir.join(to)).expect("copy");
    }
    let prod_dir = root.path().join("prod-a");
    let dr_dir = root.path().join("dr-b");

    // 1. No TLS identity: the exports are not opened in plaintext, and once the
    //    configuration is applied the agent refuses to start without one.
    let plain_state = root.path().join("plain-state");
    let plain = RunningAgent::start("prod-a", "127.0.0.1:0", &plain_state).await;
    let text = tls_config(&prod_dir, &dr_dir, &plain.address, free_port());
    let mut refused = None;
    for number in [2u8, 11, 16] {
        let (status, body) = step(&plain.address, None, number, &text).await;
        if status != 200 || body["outcome"] != "done" {
            refused = Some(body.to_string());
            break;
        }
    }
    let refused = refused.expect("a step must refuse to serve nbd_tls exports without TLS");
    assert!(refused.contains("no TLS identity"), "{refused}");
    plain.stop().await.expect("clean stop");
    let restarted = redoubt_agent::bind(AgentConfig {
        name: "prod-a".into(),
        listen: "127.0.0.1:0".into(),
        state_dir: plain_state.clone(),
        tls: None,
    })
    .await;
    match restarted {
        Ok(_) => panic!("an agent without TLS must not start with nbd_tls = true applied"),
        Err(error) => assert!(error.to_string().contains("nbd_tls"), "{error}"),
    }

    // 2. With the agent's identity: TLS exports.
    registry::register(Arc::new(
        TlsContext::load(&tls_dir, "console").expect("console identity"),
    ));
    let tls = Arc::new(TlsContext::load(&tls_dir, "prod-a").expect("identity"));
    let bound = redoubt_agent::bind(AgentConfig {
        name: "prod-a".into(),
        listen: "127.0.0.1:0".into(),
        state_dir: root.path().join("tls-state"),
        tls: Some(tls.clone()),
    })
    .await
    .expect("bind");
    let address = bound.local_addr().expect("address").to_string();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(bound.serve(stopped));
    let nbd_port = free_port();
    let text = tls_config(&prod_dir, &dr_dir, &address, nbd_port);
    for number in [2u8, 11, 16] {
        let (status, body) = step(&address, Some("prod-a"), number, &text).await;
        assert!(
            status == 200 && body["outcome"] == "done",
            "step {number}: {body}"
        );
    }
    let nbd_address = format!("127.0.0.1:{nbd_port}");
    // The status gives libnbd's TLS scheme for these exports.
    let (status, body) = client::request_to(
        "prod-a",
        &address,
        "GET",
        "/v1/status",
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("status");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("nbds://{nbd_address}/lv0")),
        "the export URI says TLS: {body}"
    );

    // The local block device does not speak TLS: attach says so and does nothing.
    let (status, body) = client::request_to(
        "prod-a",
        &address,
        "POST",
        "/v1/groups/erp/attachments",
        Some(r#"{"volume":"lv0"}"#),
        Duration::from_secs(10),
    )
    .await
    .expect("attach");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("requires NBD TLS"), "{body}");

    let plaintext = nbd_address.clone();
    let plaintext_refused = tokio::task::spawn_blocking(move || {
        NbdClient::connect(&plaintext, "lv0").is_err() && NbdClient::list(&plaintext).is_err()
    })
    .await
    .expect("plaintext client");
    assert!(plaintext_refused, "a plaintext client must get nothing");

    let before = tls.refusals();
    // The foreign client trusts the cluster CA, so only the server's check of its
    // certificate can refuse it.
    let mixed_dir = root.path().join("mixed");
    std::fs::create_dir(&mixed_dir).expect("mixed dir");
    std::fs::copy(tls_dir.join("ca.pem"), mixed_dir.join("ca.pem")).expect("copy");
    for file in ["client1.pem", "client1.key"] {
        std::fs::copy(foreign_dir.join(file), mixed_dir.join(file)).expect("copy");
    }
    let foreign = TlsContext::load(&mixed_dir, "client1").expect("foreign identity");
    assert!(!starttls_with(&nbd_address, &foreign).await);
    wait_for("the foreign certificate to be counted", || {
        let tls = tls.clone();
        async move { tls.refusals() > before }
    })
    .await;

    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        client_dir.display()
    );
    let image = format!(
        "driver=nbd,host=127.0.0.1,port={nbd_port},export=lv0,tls-creds=tls0,tls-hostname=prod-a"
    );
    let output = tokio::task::spawn_blocking(move || {
        let written = run_ok(
            "qemu-io",
            &[
                "--object",
                &object,
                "-c",
                "write -P 0x5a 0 64k",
                "-c",
                "flush",
                "-c",
                "read -P 0x5a 0 64k",
                "--image-opts",
                &image,
            ],
        );
        let plain = run(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "read 0 4k",
                &format!("nbd://127.0.0.1:{nbd_port}/lv0"),
            ],
        );
        (written, plain)
    })
    .await
    .expect("qemu-io");
    assert!(
        !output.0.contains("Pattern verification failed"),
        "{}",
        output.0
    );
    assert!(output.0.contains("read 65536/65536"), "{}", output.0);
    assert!(!output.1.status.success());
    assert!(
        String::from_utf8_lossy(&output.1.stderr).contains("TLS negotiation required"),
        "{:?}",
        output.1
    );

    stop.send(true).expect("agent running");
    task.await.expect("agent task").expect("clean stop");
}
