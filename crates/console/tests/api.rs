//! End-to-end tests of the console's HTTP API with a fake agent that records every step call
//! and can fail or hang chosen rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redoubt_console::agent::{AgentFuture, StepRequest, StepResponse};
use redoubt_console::{AgentClient, AgentError, Console, ConsoleConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

const TWO: &str = r#"
[[server]]
name = "prod-a"
address = "prod-a.test:7411"
data_dir = "/var/lib/redoubt/prod-a"
nbd_listen = "127.0.0.1:10809"

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
compression = "zstd"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"
"#;

fn with_new_volume() -> String {
    format!("{TWO}\n[[group.volume]]\nname = \"lv_new\"\nsize = \"64MiB\"\n")
}

/// One step call as the fake agent saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    address: String,
    step: u8,
    /// The row as JSON text (`null` for a "one" step).
    row: String,
    version: u64,
}

enum Behavior {
    Succeed,
    Fail(String),
    Hang,
}

type Rule = Box<dyn Fn(&Call) -> Behavior + Send + Sync>;

struct FakeAgent {
    started: Mutex<Vec<Call>>,
    requests: Mutex<Vec<StepRequest>>,
    rule: Mutex<Rule>,
}

impl FakeAgent {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(Box::new(|_| Behavior::Succeed)),
        })
    }

    fn set_rule(&self, rule: impl Fn(&Call) -> Behavior + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Box::new(rule);
    }

    fn calls(&self) -> Vec<Call> {
        self.started.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<StepRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl AgentClient for FakeAgent {
    fn step<'a>(
        &'a self,
        address: &'a str,
        request: &'a StepRequest,
    ) -> AgentFuture<'a, StepResponse> {
        Box::pin(async move {
            let call = Call {
                address: address.to_string(),
                step: request.step,
                row: serde_json::to_value(&request.row).unwrap().to_string(),
                version: request.config_version,
            };
            self.started.lock().unwrap().push(call.clone());
            self.requests.lock().unwrap().push(request.clone());
            let behavior = (self.rule.lock().unwrap())(&call);
            match behavior {
                Behavior::Succeed => Ok(StepResponse {
                    outcome: "done".into(),
                    message: Some("ok".into()),
                }),
                Behavior::Fail(message) => Err(AgentError::Refused {
                    address: address.to_string(),
                    status: 500,
                    message,
                }),
                Behavior::Hang => std::future::pending().await,
            }
        })
    }

    fn status<'a>(&'a self, address: &'a str) -> AgentFuture<'a, Value> {
        Box::pin(async move {
            if address.starts_with("prod-a") {
                Ok(json!({"server": "prod-a", "config_version": 1, "groups": [{
                    "name": "erp", "role": "production", "data_path": "loaded",
                    "exports": [{"volume": "lv_data01", "export": "nbd://127.0.0.1:10809/lv_data01"}],
                    "journal_seq": 7, "applied_seq": 7, "targets": []}]}))
            } else {
                Err(AgentError::Unreachable {
                    address: address.to_string(),
                    message: "connection refused".into(),
                })
            }
        })
    }
}

struct Running {
    url: String,
    token: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

async fn start(state_dir: &Path, agent: Arc<FakeAgent>) -> Running {
    let console = Console::bind_with_agent(
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            state_dir: state_dir.to_path_buf(),
        },
        agent,
    )
    .await
    .unwrap();
    let url = console.url().unwrap();
    let token = std::fs::read_to_string(console.token_path())
        .unwrap()
        .trim()
        .to_string();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move {
        console.serve(shutdown).await.unwrap();
    });
    Running {
        url,
        token,
        stop,
        task,
        http: reqwest::Client::new(),
    }
}

impl Running {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn apply(&self, toml: &str) -> (u16, Value) {
        self.post("/v1/config", json!({"toml": toml, "destroy": false}))
            .await
    }

    async fn wait_state(&self, group: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, init) = self.get(&format!("/v1/init/{group}")).await;
            if init["state"] == state {
                return init;
            }
            assert!(
                Instant::now() < deadline,
                "initialization of {group} never became {state}: {init:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads SSE events until the stream ends or a final event arrives.
    async fn events(&self, group: &str) -> Vec<Value> {
        let mut response = self
            .http
            .get(format!("{}/v1/init/{group}/events", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut buffer = String::new();
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, response.chunk())
                .await
                .expect("SSE stream stalled")
                .unwrap();
            let Some(chunk) = chunk else { return events };
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        let event: Value = serde_json::from_str(data.trim()).unwrap();
                        let last = event.get("step").is_none();
                        events.push(event);
                        if last {
                            return events;
                        }
                    }
                }
            }
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// The calls the plan of `new` (against `old`) must make, per step, as sorted lists.
fn expected_calls(old: Option<&str>, new: &str, version: u64) -> BTreeMap<u8, Vec<Call>> {
    let old = old.map(|text| redoubt_config::parse("old.toml", text).unwrap());
    let new = redoubt_config::parse("new.toml", new).unwrap();
    let plans = redoubt_plan::plan(old.as_ref(), &new, Default::default()).unwrap();
    let plans = serde_json::to_value(redoubt_plan::report::to_json(&plans)).unwrap();
    let address = |server: &str| new.server(server).unwrap().address.clone();
    let mut expected = BTreeMap::new();
    for step in plans[0]["steps"].as_array().unwrap() {
        let number = step["number"].as_u64().unwrap() as u8;
        if number == 1 {
            continue;
        }
        let rows = step["rows"].as_array().unwrap();
        let mut calls: Vec<Call> = if rows.is_empty() {
            assert!([12, 14].contains(&number), "one-step {number} in this test");
            vec![Call {
                address: address("prod-a"),
                step: number,
                row: "null".into(),
                version,
            }]
        } else {
            rows.iter()
                .map(|row| Call {
                    address: match row.get("server") {
                        Some(server) => address(server.as_str().unwrap()),
                        None => address("prod-a"),
                    },
                    step: number,
                    row: serde_json::to_string(row).unwrap(),
                    version,
                })
                .collect()
        };
        calls.sort();
        expected.insert(number, calls);
    }
    expected
}

fn by_step(calls: &[Call]) -> BTreeMap<u8, Vec<Call>> {
    let mut out: BTreeMap<u8, Vec<Call>> = BTreeMap::new();
    for call in calls {
        out.entry(call.step).or_default().push(call.clone());
    }
    for calls in out.values_mut() {
        calls.sort();
    }
    out
}

fn assert_catalog_order(calls: &[Call]) {
    for pair in calls.windows(2) {
        assert!(
            pair[0].step <= pair[1].step,
            "step {} called after step {}: {calls:#?}",
            pair[1].step,
            pair[0].step
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_runs_exactly_the_plan_in_catalog_order() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::new();
    let console = start(dir.path(), Arc::clone(&agent)).await;

    let (status, dry) = console.post("/v1/config/plan", json!({"toml": TWO})).await;
    assert_eq!(status, 200);
    assert_eq!(dry["base_version"], 0);
    assert_eq!(dry["plans"][0]["group"], "erp");
    assert_eq!(console.get("/v1/config/history").await.1, json!([]));

    let (status, applied) = console.apply(TWO).await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["version"], 1);
    assert_eq!(
        applied["plans"], dry["plans"],
        "apply runs what plan showed"
    );

    let init = console.wait_state("erp", "done").await;
    assert_eq!(init["version"], 1);
    for step in init["steps"].as_array().unwrap() {
        for row in step["rows"].as_array().unwrap() {
            assert_eq!(row["state"], "done", "{step}");
        }
    }

    let calls = agent.calls();
    assert_catalog_order(&calls);
    assert_eq!(by_step(&calls), expected_calls(None, TWO, 1));
    for request in agent.requests() {
        assert_eq!(request.group, "erp");
        assert_eq!(request.config_toml, TWO);
        assert_eq!(request.previous_config_toml, None);
        assert!(!request.destroy);
    }

    // A late SSE client sees every row, then the end.
    let events = console.events("erp").await;
    let rows: usize = init["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["rows"].as_array().unwrap().len())
        .sum();
    assert_eq!(events.len(), rows + 1, "{events:#?}");
    assert!(events[..rows].iter().all(|event| event["state"] == "done"));
    assert_eq!(events[rows]["state"], "done");

    // The same configuration again: nothing to do, nothing saved.
    let (status, again) = console.apply(TWO).await;
    assert_eq!(status, 200);
    assert_eq!(again, json!({"version": 1, "plans": []}));
    let (_, history) = console.get("/v1/config/history").await;
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["version"], 1);
    assert_eq!(history[0]["groups"], json!(["erp"]));
    let (_, shown) = console.get("/v1/config").await;
    assert_eq!(shown, json!({"version": 1, "toml": TWO}));

    // A server no group uses yet: no plan, but a change: saved as version 2, nothing runs.
    let with_spare = format!(
        "{TWO}\n[[server]]\nname = \"spare\"\naddress = \"spare.test:7413\"\ndata_dir = \"/var/lib/redoubt/spare\"\n"
    );
    let calls_before = agent.calls().len();
    let (status, dry) = console
        .post("/v1/config/plan", json!({"toml": with_spare}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(dry["plans"], json!([]));
    assert_eq!(dry["changed"], true, "{dry}");
    let (status, saved) = console.apply(&with_spare).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved, json!({"version": 2, "plans": []}));
    assert_eq!(
        console.get("/v1/config").await.1["toml"],
        with_spare.as_str()
    );
    assert_eq!(
        agent.calls().len(),
        calls_before,
        "nothing ran on any server"
    );
    let (_, dry) = console
        .post("/v1/config/plan", json!({"toml": with_spare}))
        .await;
    assert_eq!(dry["changed"], false, "{dry}");
    let (status, _) = console.apply(TWO).await;
    assert_eq!(status, 200);
    let (_, history) = console.get("/v1/config/history").await;
    assert_eq!(history.as_array().unwrap().len(), 3);

    // Status folds the agents' answers; an unreachable agent is not an error.
    let (status, overview) = console.get("/v1/status").await;
    assert_eq!(status, 200);
    let group = &overview["groups"][0];
    assert_eq!(group["name"], "erp");
    assert_eq!(group["direction"], "prod-a -> dr-b");
    assert_eq!(group["initialization"]["state"], "idle");
    assert_eq!(
        group["volumes"][0]["export"],
        "nbd://127.0.0.1:10809/lv_data01"
    );
    assert_eq!(group["targets"][0]["reachable"], false);

    // Invalid input: every diagnostic, with its position.
    let (status, invalid) = console
        .apply("[[server]]\nname = \"Bad Name\"\naddress = 5\n")
        .await;
    assert_eq!(status, 400);
    let diagnostics = invalid["diagnostics"].as_array().unwrap();
    assert!(diagnostics.len() >= 2, "{invalid:#}");
    assert!(diagnostics.iter().all(|d| d["line"].as_u64().unwrap() >= 1
        && d["field"].is_string()
        && d["reason"].is_string()));

    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let console = start(dir.path(), FakeAgent::new()).await;
    let token_path = dir.path().join("token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(console.token.len(), 64);
    assert!(console.token.bytes().all(|b| b.is_ascii_hexdigit()));

    for (method, path) in [
        ("GET", "/v1/config"),
        ("POST", "/v1/config"),
        ("GET", "/v1/init/erp"),
        ("GET", "/v1/status"),
    ] {
        let url = format!("{}{path}", console.url);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let bare = console
            .http
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status().as_u16(), 401, "{path} without a token");
        let wrong = console
            .http
            .request(method, &url)
            .bearer_auth("0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path} with a wrong token");
    }
    // The right token works, and the token stays the same across restarts.
    let (status, init) = console.get("/v1/init/erp").await;
    assert_eq!(status, 200);
    assert_eq!(init["state"], "idle");
    let token = console.token.clone();
    console.stop().await;
    let again = start(dir.path(), FakeAgent::new()).await;
    assert_eq!(again.token, token);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_row_blocks_later_steps_until_retry() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::new();
    agent.set_rule(|call| {
        if call.step == 11 && call.address.starts_with("dr-b") {
            Behavior::Fail("container full on dr-b".into())
        } else {
            Behavior::Succeed
        }
    });
    let console = start(dir.path(), Arc::clone(&agent)).await;
    let (status, _) = console.apply(TWO).await;
    assert_eq!(status, 200);

    let init = console.wait_state("erp", "failed").await;
    let step11 = init["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["number"] == 11)
        .unwrap();
    let failed: Vec<&Value> = step11["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["server"], "dr-b");
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("container full on dr-b"));
    assert!(
        agent.calls().iter().all(|call| call.step <= 11),
        "later steps wait: {:#?}",
        agent.calls()
    );
    let (_, overview) = console.get("/v1/status").await;
    assert_eq!(overview["groups"][0]["initialization"]["state"], "failed");
    assert_eq!(overview["groups"][0]["initialization"]["step"], 11);

    // A new change to the group is refused while it is failed.
    let (status, refused) = console.apply(&with_new_volume()).await;
    assert_eq!(status, 409);
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("redoubt config retry erp"));
    assert_eq!(console.get("/v1/config").await.1["version"], 1);

    // Retry after the cause is gone: only the failed row runs again, then the rest.
    agent.set_rule(|_| Behavior::Succeed);
    let before = agent.calls().len();
    let (status, retried) = console.post("/v1/init/erp/retry", json!({})).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["retried_rows"], 1);
    let events = console.events("erp").await;
    assert_eq!(events.last().unwrap()["state"], "done", "{events:#?}");
    console.wait_state("erp", "done").await;
    let after = agent.calls()[before..].to_vec();
    assert_eq!(after[0].step, 11);
    assert!(after[0].address.starts_with("dr-b"));
    assert_eq!(after.iter().filter(|call| call.step == 11).count(), 1);
    assert_catalog_order(&after);
    let all = agent.calls();
    let expected = expected_calls(None, TWO, 1);
    let mut expected_all = expected.clone();
    expected_all.get_mut(&11).unwrap().push(after[0].clone());
    expected_all.get_mut(&11).unwrap().sort();
    assert_eq!(by_step(&all), expected_all);

    let (status, nothing) = console.post("/v1/init/erp/retry", json!({})).await;
    assert_eq!(status, 409, "{nothing}");

    // A next change plans against version 1 and sends it as the previous configuration.
    let next = with_new_volume();
    let before = agent.calls().len();
    let (status, applied) = console.apply(&next).await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["version"], 2);
    console.wait_state("erp", "done").await;
    let calls = agent.calls()[before..].to_vec();
    assert_catalog_order(&calls);
    assert_eq!(by_step(&calls), expected_calls(Some(TWO), &next, 2));
    assert!(calls
        .iter()
        .any(|call| call.step == 13 && call.row.contains("lv_new")));
    let requests = agent.requests();
    let last = requests.last().unwrap();
    assert_eq!(last.previous_config_toml.as_deref(), Some(TWO));
    assert_eq!(last.config_toml, next);

    console.stop().await;
}

/// Kills the console (drops its runtime) while step 16 is in flight, then starts a new one on
/// the same state directory: it resumes, re-runs only what was running, and finishes.
#[test]
fn a_restarted_console_resumes_without_rerunning_done_rows() {
    let dir = tempfile::tempdir().unwrap();
    let first_agent = FakeAgent::new();
    first_agent.set_rule(|call| {
        if call.step == 16 {
            Behavior::Hang
        } else {
            Behavior::Succeed
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let expected = expected_calls(None, TWO, 1);
    let rows_of_16 = expected[&16].len();
    runtime.block_on(async {
        let console = start(dir.path(), Arc::clone(&first_agent)).await;
        let (status, _) = console.apply(TWO).await;
        assert_eq!(status, 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        while first_agent.calls().iter().filter(|c| c.step == 16).count() < rows_of_16 {
            assert!(Instant::now() < deadline, "step 16 never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let init = console.wait_state("erp", "running").await;
        assert_eq!(init["step"], 16);

        // A second change while it runs is refused with the step it is at.
        let (status, refused) = console.apply(&with_new_volume()).await;
        assert_eq!(status, 409);
        assert_eq!(
            refused["error"],
            "initialization of group erp is running (step 16); wait or `redoubt config watch erp`"
        );

        // A client attaching now sees what already happened: steps 2..12 done, 16 running.
        let mut response = console
            .http
            .get(format!("{}/v1/init/erp/events", console.url))
            .bearer_auth(&console.token)
            .send()
            .await
            .unwrap();
        let mut text = String::new();
        while text.matches("\"state\":\"running\"").count() < rows_of_16 {
            let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
                .await
                .expect("SSE stream stalled")
                .unwrap()
                .expect("stream open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.contains("\"step\":2,"), "{text}");
        assert!(text.contains("\"step\":12,"), "{text}");
        // Crash: leave the console as it is.
        std::mem::forget(console.stop);
    });
    let done_before: Vec<Call> = first_agent
        .calls()
        .into_iter()
        .filter(|call| call.step < 16)
        .collect();
    assert!(!done_before.is_empty());
    drop(runtime);

    let second_agent = FakeAgent::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let console = start(dir.path(), Arc::clone(&second_agent)).await;
        let init = console.wait_state("erp", "done").await;
        let calls = second_agent.calls();
        assert_catalog_order(&calls);
        for call in &done_before {
            assert!(!calls.contains(call), "done row called again: {call:?}");
        }
        let mut expected_after = BTreeMap::new();
        expected_after.insert(16, expected[&16].clone());
        expected_after.insert(20, expected[&20].clone());
        assert_eq!(by_step(&calls), expected_after);
        let step16 = init["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|step| step["number"] == 16)
            .unwrap();
        for row in step16["rows"].as_array().unwrap() {
            assert_eq!(row["attempts"], 2, "started before the crash and after");
        }
        console.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_event_streams_and_keeps_running_rows_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::new();
    agent.set_rule(|call| {
        if call.step == 11 {
            Behavior::Hang
        } else {
            Behavior::Succeed
        }
    });
    let console = start(dir.path(), Arc::clone(&agent)).await;
    assert_eq!(console.apply(TWO).await.0, 200);
    let init = console.wait_state("erp", "running").await;
    assert_eq!(init["version"], 1);
    let mut response = console
        .http
        .get(format!("{}/v1/init/erp/events", console.url))
        .bearer_auth(&console.token)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), response.chunk())
        .await
        .expect("snapshot arrives")
        .unwrap()
        .expect("stream open");
    assert!(std::str::from_utf8(&first)
        .unwrap()
        .contains("\"group\":\"erp\""));
    tokio::time::timeout(Duration::from_secs(20), console.stop())
        .await
        .expect("shutdown does not wait for the event stream");
    // The stream ended with the console.
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "event stream still open after shutdown");

    // The next start resumes and finishes.
    let console = start(dir.path(), FakeAgent::new()).await;
    let init = console.wait_state("erp", "done").await;
    assert_eq!(init["version"], 1);
    console.stop().await;
}
