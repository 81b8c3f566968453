//! Mutual TLS between Redoubt processes, end to end with two agents on loopback: replication
//! and the step API work over TLS, and a peer without a valid certificate, with another CA's
//! certificate, or with a cluster certificate naming no server of the group cannot join,
//! cannot send steps and receives no data; every refusal is counted in `tls_refusals`.
//! A production whose configured target answers with a certificate of another CA (an
//! impostor recovery server) ships nothing to it.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, free_port, wait_for, Servers};
use redoubt_agent::{client, AgentConfig};
use redoubt_testkit::NbdClient;
use redoubt_tls::{ca, registry, TlsContext};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const LV_BYTES: usize = 1 << 20;
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

struct Agent {
    name: String,
    address: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), redoubt_agent::AgentError>>,
}

impl Agent {
    async fn start(name: &str, tls_dir: &Path, state_dir: &Path) -> Agent {
        let tls = TlsContext::load(tls_dir, name).expect("load the agent's identity");
        let bound = redoubt_agent::bind(AgentConfig {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            state_dir: state_dir.to_path_buf(),
            tls: Some(Arc::new(tls)),
        })
        .await
        .expect("bind the agent");
        let address = bound.local_addr().expect("address").to_string();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(bound.serve(stopped));
        Agent {
            name: name.into(),
            address,
            stop,
            task,
        }
    }

    /// An HTTP request over mutual TLS with this process's console identity.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let text = body.map(Value::to_string);
        let (status, body) = client::request_to(
            &self.name,
            &self.address,
            method,
            path,
            text.as_deref(),
            HTTP_TIMEOUT,
        )
        .await
        .expect("HTTP over TLS");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    async fn step_ok(&self, step: u8, role: &str, config: &str) {
        let row = if role.is_empty() {
            Value::Null
        } else {
            json!({"server": self.name, "role": role})
        };
        let request = json!({
            "group": "erp", "step": step, "row": row, "config_version": 1,
            "config_toml": config, "previous_config_toml": null, "destroy": false,
        });
        let (status, body) = self.call("POST", "/v1/step", Some(&request)).await;
        assert_eq!(status, 200, "step {step} on {}: {body}", self.name);
    }

    async fn status(&self) -> Value {
        let (status, body) = self.call("GET", "/v1/status", None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn group(&self) -> Value {
        let status = self.status().await;
        status["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == "erp"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn stop(self) {
        self.stop.send(true).expect("agent running");
        self.task.await.expect("agent task").expect("clean stop");
    }
}

/// A cluster CA in `dir` with certificates for `names`.
fn cluster(dir: &Path, names: &[&str]) {
    ca::init(dir).expect("CA");
    for name in names {
        ca::issue(dir, name).expect("certificate");
    }
}

fn write_through_nbd(export: &str, pattern: u8) -> Vec<u8> {
    let mut client = NbdClient::connect(export, "lv0").expect("NBD connect");
    let mut image = vec![0u8; LV_BYTES];
    for offset in [0usize, 65536, LV_BYTES - 4096] {
        let block: Vec<u8> = (0..4096)
            .map(|i| pattern.wrapping_add((i % 251) as u8))
            .collect();
        client
            .write(offset as u64, &block, false)
            .expect("NBD write");
        image[offset..offset + 4096].copy_from_slice(&block);
    }
    client.flush().expect("NBD flush");
    client.disconnect().expect("NBD disconnect");
    image
}

fn export_of(group: &Value) -> String {
    let uri = group["exports"][0]["export"].as_str().expect("an export");
    uri.trim_start_matches("nbd://")
        .trim_end_matches("/lv0")
        .to_string()
}

/// Connects with `identity` (or in plaintext), sends `bytes` and reads what comes back until
/// the agent closes. Returns the bytes the agent sent (none when it refused).
async fn knock(
    address: &str,
    identity: Option<&TlsContext>,
    server: &str,
    bytes: &[u8],
) -> Vec<u8> {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let mut answer = Vec::new();
    match identity {
        None => {
            let mut tcp = tcp;
            let _ = tcp.write_all(bytes).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
        }
        Some(identity) => {
            if let Ok(mut stream) = identity.connect(tcp, server).await {
                let _ = stream.write_all(bytes).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
                        .await;
            }
        }
    }
    answer
}

/// A replication Hello of group erp, as the send process would open with.
fn hello_bytes() -> Vec<u8> {
    let sender = redoubt_wire::SenderSession::new(redoubt_wire::SenderConfig {
        group_id: redoubt_journal::GroupId([7u8; 16]),
        group_name: "erp".into(),
        config_version: 0,
        sender_name: "prod-a".into(),
        target_name: "dr-b".into(),
        in_flight_bytes_max: redoubt_wire::IN_FLIGHT_BYTES_MAX_DEFAULT,
    });
    let hello = sender
        .hello(redoubt_wire::JournalPosition {
            first_seq: 1,
            last_seq: 0,
        })
        .expect("hello");
    let mut bytes = Vec::new();
    redoubt_wire::FrameSequencer::new()
        .encode(&redoubt_wire::Frame::Hello(hello), &mut bytes)
        .expect("encode");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_of_the_cluster_and_the_group_get_in() {
    let root = tempfile::tempdir().expect("tempdir");
    let tls_dir = root.path().join("tls");
    let foreign_dir = root.path().join("foreign");
    cluster(&tls_dir, &["prod-a", "dr-b", "dr-x", "console"]);
    cluster(&foreign_dir, &["prod-a", "dr-b", "console"]);
    // This test process plays the console: its HTTP calls present the console's certificate.
    registry::register(Arc::new(
        TlsContext::load(&tls_dir, "console").expect("console identity"),
    ));

    // 1. A configured recovery server whose certificate comes from another CA: production's
    //    send process refuses it in the handshake and ships nothing.
    let impostor = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let impostor_address = impostor.local_addr().expect("address").to_string();
    let impostor_tls = Arc::new(TlsContext::load(&foreign_dir, "dr-b").expect("impostor"));
    let impostor_bytes = Arc::new(AtomicU64::new(0));
    let impostor_task = {
        let (tls, bytes) = (impostor_tls.clone(), impostor_bytes.clone());
        tokio::spawn(async move {
            while let Ok((stream, peer)) = impostor.accept().await {
                if let Some((mut stream, _)) = tls.accept(stream, &peer.to_string()).await {
                    let mut buffer = vec![0u8; 4096];
                    while let Ok(count) = stream.read(&mut buffer).await {
                        if count == 0 {
                            break;
                        }
                        bytes.fetch_add(count as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let prod = Agent::start("prod-a", &tls_dir, &root.path().join("prod-state")).await;
    let prod_dir = root.path().join("prod-a");
    let dr_dir = root.path().join("dr-b");
    let text = config(
        &Servers {
            prod_address: &prod.address,
            prod_dir: &prod_dir,
            nbd_port: free_port(),
            dr_address: &impostor_address,
            dr_dir: &dr_dir,
        },
        "4MiB",
        "1MiB",
    );
    prod.step_ok(2, "production", &text).await;
    prod.step_ok(11, "production", &text).await;
    prod.step_ok(16, "production", &text).await;
    let group = prod.group().await;
    let export = export_of(&group);
    tokio::task::spawn_blocking(move || write_through_nbd(&export, 3))
        .await
        .expect("writer");
    wait_for("the send process to name its refusal", || async {
        let target = prod.group().await["targets"][0].clone();
        target["connected"] == false
            && target["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("dr-b"))
    })
    .await;
    assert!(
        impostor_tls.refusals() > 0,
        "the impostor saw the handshake fail"
    );
    assert_eq!(
        impostor_bytes.load(Ordering::Relaxed),
        0,
        "the impostor received data"
    );
    impostor_task.abort();
    prod.stop().await;

    // 2. The real pair, over TLS: steps, replication, peer health (step 20).
    let prod = Agent::start("prod-a", &tls_dir, &root.path().join("prod2-state")).await;
    let dr = Agent::start("dr-b", &tls_dir, &root.path().join("dr-state")).await;
    let prod_dir = root.path().join("prod2");
    let text = config(
        &Servers {
            prod_address: &prod.address,
            prod_dir: &prod_dir,
            nbd_port: free_port(),
            dr_address: &dr.address,
            dr_dir: &dr_dir,
        },
        "4MiB",
        "1MiB",
    );
    prod.step_ok(2, "production", &text).await;
    dr.step_ok(2, "recovery1", &text).await;
    dr.step_ok(11, "recovery1", &text).await;
    prod.step_ok(11, "production", &text).await;
    prod.step_ok(12, "", &text).await;
    dr.step_ok(16, "recovery1", &text).await;
    prod.step_ok(16, "production", &text).await;
    dr.step_ok(20, "recovery1", &text).await;
    let export = export_of(&prod.group().await);
    let image = tokio::task::spawn_blocking(move || write_through_nbd(&export, 9))
        .await
        .expect("writer");
    let replica = dr_dir.join("groups/erp/replication/lv0");
    wait_for(
        "the replica to hold production's bytes over TLS",
        || async { std::fs::read(&replica).is_ok_and(|bytes| bytes == image) },
    )
    .await;
    let status = dr.status().await;
    assert_eq!(status["tls"], true);
    assert_eq!(status["tls_refusals"], 0, "{status}");

    // 3. Strangers at dr-b's port: each is refused, counted, and gets no answer.
    let hello = hello_bytes();
    let foreign_prod = TlsContext::load(&foreign_dir, "prod-a").expect("foreign prod-a");
    let foreign_console = TlsContext::load(&foreign_dir, "console").expect("foreign console");
    let outsider = TlsContext::load(&tls_dir, "dr-x").expect("dr-x");
    let prod_identity = TlsContext::load(&tls_dir, "prod-a").expect("prod-a");
    let plain_get = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let cases: [(&str, Option<&TlsContext>, &[u8]); 5] = [
        ("plaintext replication", None, &hello),
        ("plaintext HTTP", None, plain_get),
        ("another CA's production", Some(&foreign_prod), &hello),
        ("another CA's console", Some(&foreign_console), plain_get),
        (
            "a cluster server outside the group",
            Some(&outsider),
            &hello,
        ),
    ];
    for (index, (what, identity, bytes)) in cases.iter().enumerate() {
        let answer = knock(&dr.address, *identity, "dr-b", bytes).await;
        // Nothing but, to a plaintext client, a TLS alert record (content type 21).
        assert!(
            answer.is_empty() || (identity.is_none() && answer[0] == 21 && answer.len() <= 7),
            "{what}: got an answer {:?}",
            String::from_utf8_lossy(&answer)
        );
        let refusals = dr.status().await["tls_refusals"].as_u64();
        assert_eq!(refusals, Some(index as u64 + 1), "{what} was not counted");
    }
    // A server of the configuration may read (peer health) but never run a step.
    let step = json!({"group": "erp", "step": 2, "row": null, "config_version": 9,
                      "config_toml": text, "previous_config_toml": null, "destroy": false})
    .to_string();
    let request = format!(
        "POST /v1/step HTTP/1.1\r\nHost: dr-b\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{step}",
        step.len()
    );
    let answer = knock(
        &dr.address,
        Some(&prod_identity),
        "dr-b",
        request.as_bytes(),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let health = b"GET /v1/health HTTP/1.1\r\nHost: dr-b\r\nConnection: close\r\n\r\n";
    let answer = knock(&dr.address, Some(&prod_identity), "dr-b", health).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(
        dr.status().await["config_version"],
        1,
        "the step did not run"
    );

    // Replication went on through all of it.
    let export = export_of(&prod.group().await);
    let image = tokio::task::spawn_blocking(move || write_through_nbd(&export, 21))
        .await
        .expect("writer");
    let replica = dr_dir.join("groups/erp/replication/lv0");
    wait_for("the replica to keep up", || async {
        std::fs::read(&replica).is_ok_and(|bytes| bytes == image)
    })
    .await;
    prod.stop().await;
    dr.stop().await;
}
