//! Agents in-process on 127.0.0.1:0, driven over HTTP like the console drives them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redoubt_agent::{client, AgentConfig, AgentError};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bound on every polling loop of these tests.
pub const WAIT_MS_MAX: u64 = 60_000;

pub struct RunningAgent {
    pub name: String,
    pub address: String,
    pub state_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    pub async fn start(name: &str, listen: &str, state_dir: &Path) -> RunningAgent {
        let bound = redoubt_agent::bind(AgentConfig {
            name: name.to_string(),
            listen: listen.to_string(),
            state_dir: state_dir.to_path_buf(),
            tls: None,
        })
        .await
        .expect("bind the agent");
        let address = bound.local_addr().expect("bound address").to_string();
        let (shutdown, stopped) = watch::channel(false);
        let task = tokio::spawn(bound.serve(stopped));
        RunningAgent {
            name: name.to_string(),
            address,
            state_dir: state_dir.to_path_buf(),
            shutdown,
            task,
        }
    }

    /// Shuts the agent down and returns its result.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.send(true).expect("agent still running");
        self.task.await.expect("agent task")
    }

    /// Stops the agent and starts it again on the same address and state directory.
    pub async fn restart(self) -> RunningAgent {
        let (name, address, state_dir) = (
            self.name.clone(),
            self.address.clone(),
            self.state_dir.clone(),
        );
        self.stop().await.expect("clean shutdown");
        RunningAgent::start(&name, &address, &state_dir).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) =
            client::request(&self.address, "GET", path, None, Duration::from_secs(10))
                .await
                .expect("HTTP GET");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let text = body.to_string();
        let (status, body) = client::request(
            &self.address,
            "POST",
            path,
            Some(&text),
            Duration::from_secs(60),
        )
        .await
        .expect("HTTP POST");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// Runs one step row on this agent.
    pub async fn step(
        &self,
        step: u8,
        row: Value,
        version: u64,
        config: &str,
        previous: Option<&str>,
    ) -> (u16, Value) {
        let request = json!({
            "group": "erp",
            "step": step,
            "row": row,
            "config_version": version,
            "config_toml": config,
            "previous_config_toml": previous,
            "destroy": false,
        });
        self.post("/v1/step", &request).await
    }

    /// Runs one step row for this server and insists it succeeds.
    pub async fn step_ok(&self, step: u8, role: &str, version: u64, config: &str) -> String {
        let row = if role.is_empty() {
            Value::Null
        } else {
            json!({"server": self.name, "role": role})
        };
        let (status, body) = self.step(step, row, version, config, None).await;
        assert_eq!(status, 200, "step {step} on {}: {body}", self.name);
        assert_eq!(body["outcome"], "done", "{body}");
        body["message"].as_str().unwrap_or_default().to_string()
    }

    /// Runs one step row of `group` for this server and insists it succeeds.
    pub async fn group_step_ok(
        &self,
        group: &str,
        step: u8,
        role: &str,
        version: u64,
        config: &str,
    ) -> String {
        let request = json!({
            "group": group,
            "step": step,
            "row": {"server": self.name, "role": role},
            "config_version": version,
            "config_toml": config,
            "previous_config_toml": null,
            "destroy": false,
        });
        let (status, body) = self.post("/v1/step", &request).await;
        assert_eq!(
            status, 200,
            "step {step} of {group} on {}: {body}",
            self.name
        );
        body["message"].as_str().unwrap_or_default().to_string()
    }

    /// The status entry of group erp.
    pub async fn group_status(&self) -> Value {
        let (status, body) = self.get("/v1/status").await;
        assert_eq!(status, 200, "{body}");
        body["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == "erp"))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

pub struct Servers<'a> {
    pub prod_address: &'a str,
    pub prod_dir: &'a Path,
    pub nbd_port: u16,
    pub dr_address: &'a str,
    pub dr_dir: &'a Path,
}

/// A two-server configuration with group erp of one LV `lv0` of `lv_size`.
pub fn config(servers: &Servers, replication: &str, lv_size: &str) -> String {
    format!(
        r#"[[server]]
name = "prod-a"
address = "{}"
data_dir = "{}"
nbd_listen = "127.0.0.1:{}"

[[server]]
name = "dr-b"
address = "{}"
data_dir = "{}"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "1h"
throttle = "0"
compression = "zstd"

[group.containers]
replication = "{replication}"
log_record_file = "16MiB"
snapshot = "1MiB"

[[group.volume]]
name = "lv0"
size = "{lv_size}"
"#,
        servers.prod_address,
        servers.prod_dir.display(),
        servers.nbd_port,
        servers.dr_address,
        servers.dr_dir.display(),
    )
}

/// Polls `condition` until it holds or [`WAIT_MS_MAX`] passes.
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
