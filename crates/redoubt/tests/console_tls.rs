//! The console's API over HTTPS, against a live lab (`redoubt lab up` serves it with the lab
//! CA's `console` certificate): plain HTTP gets no API answer, the CLI with the lab's CA works,
//! the CLI without a CA or with another CA fails with exit 4 and says why, and such a failed
//! attempt never reaches the API (no audit entry, the token it would have rotated unchanged,
//! the console logged a refused handshake). And two HTTPS consoles on etcd: the leader
//! advertises `https://`, a follower forwards a write to it over HTTPS.

mod common;
mod ha;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::lab::{binary, Lab};
use serde_json::Value;

/// Reading the console's answer to plain HTTP gives up after this long.
const PLAIN_HTTP_TIMEOUT_MS: u64 = 10_000;

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// `redoubt ARGS` with the lab's environment, `REDOUBT_CA_FILE` replaced by `ca_file`.
fn redoubt_with_ca(lab: &Lab, ca_file: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .envs(lab.env())
        .env("REDOUBT_CA_FILE", ca_file)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn audit_entries(lab: &Lab) -> Vec<Value> {
    let listed = lab.ok(&["audit", "--format", "json"]);
    serde_json::from_str(&listed).unwrap()
}

/// One plain-HTTP request (with the real token) to the console's port; the raw answer.
fn plain_http(address: &str, token: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    let timeout = Some(Duration::from_millis(PLAIN_HTTP_TIMEOUT_MS));
    stream.set_read_timeout(timeout).unwrap();
    stream.set_write_timeout(timeout).unwrap();
    write!(
        stream,
        "GET /v1/status HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    // The console closes after its answer; a reset after it still leaves what was read.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn lab_console_is_https_only_and_the_cli_trusts_only_the_cluster_ca() {
    let lab = Lab::up();
    let env = lab.env();
    let get = |key: &str| {
        env.iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("lab.env has no {key}: {env:?}"))
    };
    let console = get("REDOUBT_CONSOLE");
    let ca_file = get("REDOUBT_CA_FILE");
    let address = console
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("the lab's console is HTTPS: {console}"))
        .to_string();
    assert_eq!(
        std::path::Path::new(&ca_file),
        lab.path().join("tls/ca.pem")
    );
    let console_log = || std::fs::read_to_string(lab.path().join("logs/console.log")).unwrap();
    assert!(
        console_log().contains(&format!("ready {console}")),
        "the console's ready line names its https URL:\n{}",
        console_log()
    );

    // With the lab's environment (its CA) the CLI works, over https://127.0.0.1 and localhost.
    let status: Value = serde_json::from_str(&lab.ok(&["status", "--format", "json"])).unwrap();
    assert!(status.to_string().contains("erp"), "{status}");
    let port = address.rsplit(':').next().unwrap();
    let by_name = Command::new(binary())
        .args(["status", "--format", "json"])
        .envs(lab.env())
        .env("REDOUBT_CONSOLE", format!("https://localhost:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(by_name.status.success(), "{}", text(&by_name));

    // Plain HTTP, even with the right token, gets no API answer: a 400 that says to use HTTPS.
    let token = std::fs::read_to_string(lab.path().join("console/token")).unwrap();

    // The web console's session cookie over HTTPS is Secure (never sent over plain HTTP).
    let login = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", &ca_file])
        .args(["--data-urlencode", &format!("token={}", token.trim())])
        .arg(format!("{console}/ui/login"))
        .output()
        .expect("curl (scripts/deps.sh installs it)");
    let headers = String::from_utf8_lossy(&login.stdout).to_string();
    let cookie = headers
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("a session cookie: {headers}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let answer = plain_http(&address, token.trim());
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains(&format!("serves HTTPS only: use https://{address}")),
        "{answer}"
    );
    assert!(
        !answer.contains("\"groups\""),
        "no status over HTTP: {answer}"
    );
    let over_http = Command::new(binary())
        .args(["status"])
        .envs(lab.env())
        .env("REDOUBT_CONSOLE", format!("http://{address}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(over_http.status.code(), Some(2), "{}", text(&over_http));
    assert!(
        text(&over_http).contains("serves HTTPS only"),
        "{}",
        text(&over_http)
    );

    // Without a CA, or with the CA of another `ca init`, the certificate check fails: exit 4,
    // a message naming the URL, the CA file and the fix; the request never reaches the API.
    let audited = audit_entries(&lab);
    let read_only_token = lab.path().join("console/token.readonly");
    let read_only_before = std::fs::read_to_string(&read_only_token).unwrap();
    let refusals_before = console_log().matches("API: connection refused").count();

    let no_ca = redoubt_with_ca(&lab, "", &["token", "rotate", "--role", "read-only"]);
    assert_eq!(no_ca.status.code(), Some(4), "{}", text(&no_ca));
    let message = text(&no_ca);
    assert!(message.contains(&console), "{message}");
    assert!(message.contains("no cluster CA given"), "{message}");
    assert!(message.contains("--ca-file"), "{message}");

    let other = tempfile::tempdir().unwrap();
    let made = Command::new(binary())
        .args(["ca", "init", "--dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let other_ca = other.path().join("ca.pem").display().to_string();
    let wrong_ca = redoubt_with_ca(&lab, &other_ca, &["token", "rotate", "--role", "read-only"]);
    assert_eq!(wrong_ca.status.code(), Some(4), "{}", text(&wrong_ca));
    let message = text(&wrong_ca);
    assert!(message.contains(&console), "{message}");
    assert!(
        message.contains(&format!("not signed by the CA in {other_ca}")),
        "{message}"
    );
    assert!(message.contains("REDOUBT_CA_FILE"), "{message}");

    // Nothing reached the API: no new audit entry, the token not rotated; the console logged
    // both refused handshakes.
    assert_eq!(
        audit_entries(&lab),
        audited,
        "a request that failed the certificate check left no audit entry"
    );
    assert_eq!(
        std::fs::read_to_string(&read_only_token).unwrap(),
        read_only_before
    );
    let log = console_log();
    assert!(
        log.matches("API: connection refused").count() >= refusals_before + 2,
        "the console logged the refused handshakes:\n{log}"
    );
    assert!(log.contains("TLS handshake failed"), "{log}");

    // A CA file that is not a certificate is bad input: exit 2, nothing sent.
    let not_pem = other.path().join("ca.key").display().to_string();
    let bad = redoubt_with_ca(&lab, &not_pem, &["status"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains(&not_pem), "{}", text(&bad));

    // The same rotation with the lab's CA does reach the console (and is audited).
    let rotated = lab.ok(&["token", "rotate", "--role", "read-only"]);
    assert!(rotated.contains("token.readonly"), "{rotated}");
    assert_ne!(
        std::fs::read_to_string(&read_only_token).unwrap(),
        read_only_before
    );
    let after = audit_entries(&lab);
    assert_eq!(after.len(), audited.len() + 1, "{after:#?}");
}

/// Two consoles with `--tls-dir` on one etcd: the leader advertises its `https://` URL, and a
/// write sent to the follower is forwarded to the leader over HTTPS (trusting the cluster CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_consoles_on_etcd_forward_writes_to_the_leader_over_https() {
    let cluster = redoubt_fence::testing::EtcdCluster::start(1)
        .await
        .expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    redoubt_tls::ca::init(&tls).unwrap();
    redoubt_tls::ca::issue_with_names(&tls, "console", &["127.0.0.1".to_string()]).unwrap();
    let ca_file = tls.join("ca.pem");
    let url = cluster.url();
    let mut consoles = Vec::new();
    for name in ["console-1", "console-2"] {
        let port = ha::free_port();
        let args: Vec<String> = [
            "console",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            &dir.path().join(name).display().to_string(),
            "--store",
            &url,
            "--tls-dir",
            &tls.display().to_string(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut daemon = ha::Daemon::spawn(dir.path(), name, port, &args);
        daemon.wait_ready().await;
        consoles.push(daemon);
    }
    let https_url = |daemon: &ha::Daemon| format!("https://127.0.0.1:{}", daemon.port);
    let store_url = url.clone();
    let store = tokio::task::spawn_blocking(move || {
        redoubt_console::store_etcd::EtcdStore::connect(&store_url).expect("store")
    })
    .await
    .unwrap();
    let store = std::sync::Arc::new(store);
    let urls: Vec<String> = consoles.iter().map(https_url).collect();
    ha::wait_for(
        "a leader advertising https://",
        Duration::from_secs(20),
        || {
            store
                .leader_url()
                .ok()
                .flatten()
                .is_some_and(|leader| urls.contains(&leader))
        },
    )
    .await;
    let leader = store.leader_url().unwrap().unwrap();
    let follower = urls.iter().find(|url| **url != leader).unwrap().clone();
    let token_file = dir.path().join("console-2").join("token");
    ha::wait_for("the shared token", Duration::from_secs(10), || {
        let token = |name: &str| {
            std::fs::read_to_string(dir.path().join(name).join("token")).unwrap_or_default()
        };
        !token("console-1").trim().is_empty() && token("console-1") == token("console-2")
    })
    .await;

    // A write through the follower: forwarded to the leader over HTTPS (retried while the
    // follower has not learnt the leader yet: 503, exit 1).
    let rotate = || {
        Command::new(binary())
            .args([
                "token",
                "rotate",
                "--role",
                "read-only",
                "--console",
                &follower,
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--ca-file")
            .arg(&ca_file)
            .env_remove("REDOUBT_CONSOLE")
            .env_remove("REDOUBT_TOKEN_FILE")
            .env_remove("REDOUBT_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let rotated = loop {
        let output = rotate();
        if output.status.success() || std::time::Instant::now() > deadline {
            break output;
        }
        assert!(
            text(&output).contains("election in progress"),
            "only 'no leader yet' may be retried: {}",
            text(&output)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        rotated.status.success(),
        "the follower forwarded the write to the HTTPS leader: {}",
        text(&rotated)
    );
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains("New read-only token"),
        "{}",
        text(&rotated)
    );
}
