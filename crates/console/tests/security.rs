//! Tokens, roles and the audit log of the console's API, end to end over HTTP: no token 401,
//! a read-only token may read and never change (403), rotation retires a token at once,
//! deleting a group needs an explicit confirmation (412) and every change is audited
//! without any secret in the log.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redoubt_console::agent::{AgentFuture, StepRequest, StepResponse};
use redoubt_console::{AgentClient, Console, ConsoleConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

const CONFIG: &str = r#"
[[server]]
name = "prod-a"
address = "prod-a.test:7411"
data_dir = "/var/lib/redoubt/prod-a"

[[server]]
name = "dr-b"
address = "dr-b.test:7412"
data_dir = "/var/lib/redoubt/dr-b"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "none"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"
"#;

/// The same servers without any group: applying it deletes group erp.
const NO_GROUP: &str = r#"
[[server]]
name = "prod-a"
address = "prod-a.test:7411"
data_dir = "/var/lib/redoubt/prod-a"

[[server]]
name = "dr-b"
address = "dr-b.test:7412"
data_dir = "/var/lib/redoubt/dr-b"
"#;

/// Every step succeeds.
struct Agents;

impl AgentClient for Agents {
    fn step<'a>(&'a self, _: &'a str, _: &'a StepRequest) -> AgentFuture<'a, StepResponse> {
        Box::pin(async {
            Ok(StepResponse {
                outcome: "done".into(),
                message: None,
            })
        })
    }

    fn status<'a>(&'a self, _: &'a str) -> AgentFuture<'a, Value> {
        Box::pin(async { Ok(json!({})) })
    }
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn wait_done(&self, group: &str, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, init) = self.get(&format!("/v1/init/{group}"), Some(token)).await;
            if init["state"] == "done" {
                return;
            }
            assert!(Instant::now() < deadline, "init never finished: {init:#}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn read_token(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .expect("read token")
        .trim()
        .to_string()
}

/// A console on loopback with `limits` (the defaults when `None`), serving until `stop`.
struct Running {
    dir: tempfile::TempDir,
    api: Api,
    address: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), redoubt_console::ConsoleError>>,
}

async fn start_console(limits: Option<redoubt_console::limits::ConnectionLimits>) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut console = Console::bind_with_agent(
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            state_dir: dir.path().to_path_buf(),
        },
        Arc::new(Agents),
    )
    .await
    .expect("bind the console");
    if let Some(limits) = limits {
        console = console.with_connection_limits(limits);
    }
    let api = Api {
        url: console.url().expect("url"),
        http: reqwest::Client::new(),
    };
    let address = console.local_addr().expect("address");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(console.serve(stopped));
    Running {
        dir,
        api,
        address,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).expect("stop");
        self.task.await.expect("console task").expect("console");
    }
}

#[tokio::test]
async fn roles_rotation_confirmation_and_audit() {
    let Running {
        dir,
        api,
        stop,
        task,
        ..
    } = start_console(None).await;

    let operator_path = dir.path().join("token");
    let read_only_path = dir.path().join("token.readonly");
    for path in [&operator_path, &read_only_path] {
        let mode = std::fs::metadata(path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let operator = read_token(&operator_path);
    let read_only = read_token(&read_only_path);
    assert_ne!(operator, read_only);

    // No token, a wrong token: 401 on reads and on changes.
    let apply = json!({"toml": CONFIG});
    assert_eq!(api.get("/v1/status", None).await.0, 401);
    assert_eq!(api.get("/v1/config/history", Some("00ff")).await.0, 401);
    assert_eq!(api.post("/v1/config", None, apply.clone()).await.0, 401);
    assert_eq!(
        api.post("/v1/config", Some("abcd"), apply.clone()).await.0,
        401
    );

    // Read-only: reads and the dry-run plan, never a change (403, nothing saved).
    assert_eq!(api.get("/v1/config/history", Some(&read_only)).await.0, 200);
    assert_eq!(
        api.post("/v1/config/plan", Some(&read_only), apply.clone())
            .await
            .0,
        200
    );
    let (status, refused) = api
        .post("/v1/config", Some(&read_only), apply.clone())
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        api.get("/v1/config", Some(&operator)).await.0,
        404,
        "nothing was saved"
    );
    let rotate = json!({"role": "read-only"});
    assert_eq!(
        api.post("/v1/auth/rotate", Some(&read_only), rotate.clone())
            .await
            .0,
        403
    );

    // Path-like names never reach the disk: refused with a diagnostic, nothing saved.
    for bad in ["../erp", "erp/../../etc", r"a\u0000b", "/etc"] {
        let toml = CONFIG.replace("name = \"erp\"", &format!("name = \"{bad}\""));
        let (status, answer) = api
            .post("/v1/config", Some(&operator), json!({"toml": toml}))
            .await;
        assert_eq!(status, 400, "group {bad:?}: {answer}");
        assert!(
            answer["diagnostics"][0]["field"]
                .as_str()
                .is_some_and(|field| field.contains("name")),
            "{answer}"
        );
    }
    assert_eq!(
        api.get("/v1/config", Some(&operator)).await.0,
        404,
        "nothing was saved"
    );
    for path in [
        "/v1/init/..%2F..%2Fetc",
        "/v1/init/%2Fetc%2Fpasswd",
        "/v1/init/a%00b",
    ] {
        let (status, _) = api.get(path, Some(&operator)).await;
        assert_eq!(status, 400, "{path}");
    }

    // The operator applies.
    let (status, applied) = api.post("/v1/config", Some(&operator), apply.clone()).await;
    assert_eq!(status, 200, "{applied}");
    api.wait_done("erp", &operator).await;

    // Deleting the group needs an explicit confirmation: 412 and nothing changes...
    let delete = json!({"toml": NO_GROUP, "destroy": true});
    let (status, answer) = api
        .post("/v1/config", Some(&operator), delete.clone())
        .await;
    assert_eq!(status, 412, "{answer}");
    assert_eq!(answer["needs_confirmation"], true);
    let (_, current) = api.get("/v1/config", Some(&operator)).await;
    assert_eq!(current["version"], 1);
    // ...and goes through with it.
    let mut confirmed = delete.clone();
    confirmed["confirm"] = json!(true);
    let (status, answer) = api.post("/v1/config", Some(&operator), confirmed).await;
    assert_eq!(status, 200, "{answer}");

    // Rotation: the old read-only token stops working at once, the new one (in the file) works.
    let (status, rotated) = api.post("/v1/auth/rotate", Some(&operator), rotate).await;
    assert_eq!(status, 200, "{rotated}");
    let new_read_only = read_token(&read_only_path);
    assert_eq!(rotated["token"], new_read_only.as_str());
    assert_ne!(new_read_only, read_only);
    assert_eq!(api.get("/v1/status", Some(&read_only)).await.0, 401);
    assert_eq!(
        api.get("/v1/config/history", Some(&new_read_only)).await.0,
        200
    );

    // The audit log: every change and every refused change, who, what, outcome; no secret.
    let (status, audit) = api.get("/v1/audit", Some(&new_read_only)).await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().expect("entries").clone();
    let find = |who: &str, path: &str, status: u64| {
        entries
            .iter()
            .find(|e| e["who"] == who && e["path"] == path && e["status"] == status)
            .cloned()
            .unwrap_or_else(|| panic!("no audit entry {who} {path} {status}: {audit:#}"))
    };
    assert_eq!(find("anonymous", "/v1/config", 401)["outcome"], "refused");
    assert_eq!(find("read-only", "/v1/config", 403)["outcome"], "refused");
    let applied = find("operator", "/v1/config", 200);
    assert_eq!(applied["outcome"], "ok");
    assert!(applied["summary"]
        .as_str()
        .is_some_and(|s| s.contains("version 1") && s.contains("erp")));
    let needs = find("operator", "/v1/config", 412);
    assert!(needs["summary"]
        .as_str()
        .is_some_and(|s| s.contains("deletes group")));
    let deleted = entries
        .iter()
        .find(|e| {
            e["status"] == 200
                && e["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("deleted groups erp") && s.contains("--destroy"))
        })
        .unwrap_or_else(|| panic!("no audit entry of the deletion: {audit:#}"));
    assert_eq!(deleted["who"], "operator");
    assert!(find("operator", "/v1/auth/rotate", 200)["summary"]
        .as_str()
        .is_some_and(|s| s.contains("read-only")));
    assert!(
        entries.iter().all(|e| e["method"] != "GET"),
        "reads are not audited"
    );
    let text = audit.to_string();
    for secret in [&operator, &read_only, &new_read_only] {
        assert!(
            !text.contains(secret.as_str()),
            "a token is in the audit log"
        );
    }
    // Paging: after the last id there is nothing.
    let last = audit["next_after"].as_u64().expect("next_after");
    let (_, rest) = api
        .get(&format!("/v1/audit?after={last}"), Some(&operator))
        .await;
    assert_eq!(rest["entries"].as_array().map(Vec::len), Some(0));

    stop.send(true).expect("stop");
    task.await.expect("console task").expect("console");
}

/// Issue #18 finding 6: a caller without a token cannot flush the audit log. 2,000
/// anonymous POSTs (2.4 s) used to write 2,000 entries; now each minute takes at most
/// `ANONYMOUS_ENTRIES_PER_MINUTE_MAX` of them one by one (the rest become one summary entry),
/// and an operator's entry written after the flood is there.
#[tokio::test]
async fn an_anonymous_flood_cannot_push_entries_out_of_the_audit_log() {
    let console = start_console(None).await;
    let api = &console.api;
    let operator = read_token(&console.dir.path().join("token"));
    let flood = 2_000;
    for _ in 0..flood {
        assert_eq!(api.post("/v1/config", None, json!({})).await.0, 401);
    }
    let (status, _) = api
        .post("/v1/config/plan", Some(&operator), json!({"toml": CONFIG}))
        .await;
    assert_eq!(status, 200);
    let (status, audit) = api.get("/v1/audit", Some(&operator)).await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().expect("entries");
    let anonymous = entries.iter().filter(|e| e["who"] == "anonymous").count() as u64;
    // The flood may straddle a minute boundary or two.
    let most = 3 * (redoubt_console::audit::ANONYMOUS_ENTRIES_PER_MINUTE_MAX + 1);
    assert!(
        anonymous <= most,
        "{anonymous} anonymous entries for {flood} refusals (at most {most})"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "operator" && e["path"] == "/v1/config/plan"),
        "the operator's entry is in the log: {audit:#}"
    );
    console.stop().await;
}

/// Connections the console holds on its side: ESTABLISHED sockets whose local port is its
/// port (the kernel's table, so other tests of this process do not count).
fn held_by_console(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// Issue #18 finding 7: idle and half-sent connections cannot exhaust the console. From one
/// peer at most `connections_per_peer_max` are served (the rest are closed at once), another
/// peer is still answered, and a half-sent request is closed after the idle timeout instead
/// of staying open for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_capped_and_closed() {
    use redoubt_console::limits::ConnectionLimits;
    use std::io::{Read, Write};
    let limits = ConnectionLimits {
        connections_max: 40,
        connections_per_peer_max: 10,
        idle_timeout_ms: 1_000,
    };
    let console = start_console(Some(limits)).await;
    let address = console.address;
    let url = console.api.url.clone();
    let operator = read_token(&console.dir.path().join("token"));

    let attackers = 100;
    let hostile: Vec<std::net::TcpStream> = (0..attackers)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            // Half a request head, never finished.
            stream
                .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            stream
        })
        .collect();
    // Another peer (127.0.0.2, loopback too) is answered meanwhile.
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().expect("address")))
        .build()
        .expect("client");
    let answer = other
        .get(format!("{url}/v1/config/history"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("the console answers another peer");
    assert_eq!(answer.status().as_u16(), 200);
    // The other peer's request was accepted after every hostile one: the console holds at
    // most the per-peer cap of them (and the other peer's kept-alive connection).
    let held = held_by_console(address.port());
    assert!(
        held <= limits.connections_per_peer_max + 1,
        "the console holds {held} connections for one peer's {attackers} idle ones"
    );
    // Every hostile connection ends: at once beyond the cap, after the idle timeout within.
    let closed = tokio::task::spawn_blocking(move || {
        hostile
            .into_iter()
            .filter(|stream| {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buffer = [0u8; 256];
                let mut stream = stream;
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) => return true,
                        Ok(_) => continue,
                        Err(error) => {
                            return !matches!(
                                error.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            )
                        }
                    }
                }
            })
            .count()
    })
    .await
    .expect("join");
    assert_eq!(
        closed, attackers,
        "every idle or half-sent connection was closed"
    );
    console.stop().await;
}
