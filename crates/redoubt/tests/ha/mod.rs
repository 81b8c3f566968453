//! Helpers of the HA and scale tests: `redoubt` daemons as processes on loopback (killed and
//! reaped on drop), configurations of many groups with tiny LVs, and a console API client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("free port")
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut condition: F) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redoubt` daemon (agent or console), SIGKILLed and reaped on drop.
pub struct Daemon {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(dir: &Path, name: &str, port: u16, args: &[String]) -> Daemon {
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let log = dir.join("logs").join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn redoubt");
        Daemon {
            name: name.to_string(),
            port,
            log,
            child: Some(child),
        }
    }

    pub async fn wait_ready(&mut self) {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited ({status}): {}",
                        self.name,
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            assert!(Instant::now() < deadline, "{} never listened", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn agent(dir: &Path, name: &str, fence: Option<&str>) -> Daemon {
    let port = free_port();
    let mut args = vec![
        "agent".to_string(),
        "--name".into(),
        name.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--state-dir".into(),
        dir.join("agents").join(name).display().to_string(),
    ];
    if let Some(fence) = fence {
        args.extend(["--fence".to_string(), fence.to_string()]);
    }
    let mut daemon = Daemon::spawn(dir, name, port, &args);
    daemon.wait_ready().await;
    daemon
}

pub async fn console(dir: &Path, name: &str, store: Option<&str>) -> Daemon {
    let port = free_port();
    let mut args = vec![
        "console".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--state-dir".into(),
        dir.join(name).display().to_string(),
    ];
    if let Some(store) = store {
        args.extend(["--store".to_string(), store.to_string()]);
    }
    let mut daemon = Daemon::spawn(dir, name, port, &args);
    daemon.wait_ready().await;
    daemon
}

/// A server of a generated configuration.
pub struct Server {
    pub name: String,
    pub address: String,
    pub nbd_port: Option<u16>,
}

/// `groups` groups, group `i` with production `servers[i % n]` and recovery
/// `servers[(i + 1) % n]`, each with `lvs` LVs of 1 MiB and the smallest containers.
pub fn config(dir: &Path, servers: &[Server], groups: usize, lvs: usize) -> String {
    let mut text = String::new();
    for server in servers {
        text.push_str(&format!(
            "[[server]]\nname = \"{}\"\naddress = \"{}\"\ndata_dir = \"{}\"\n",
            server.name,
            server.address,
            dir.join("data").join(&server.name).display()
        ));
        if let Some(port) = server.nbd_port {
            text.push_str(&format!("nbd_listen = \"127.0.0.1:{port}\"\n"));
        }
        text.push('\n');
    }
    for index in 0..groups {
        let production = &servers[index % servers.len()].name;
        let recovery = &servers[(index + 1) % servers.len()].name;
        text.push_str(&format!(
            "[[group]]\nname = \"g{index:03}\"\nproduction = \"{production}\"\nrecovery = [\"{recovery}\"]\nmode = \"async\"\nretention = \"1h\"\nthrottle = \"0\"\ncompression = \"zstd\"\n\n[group.containers]\nreplication = \"{}MiB\"\nlog_record_file = \"16MiB\"\nsnapshot = \"1MiB\"\n\n",
            lvs + 1
        ));
        for lv in 0..lvs {
            text.push_str(&format!(
                "[[group.volume]]\nname = \"lv{lv:04}\"\nsize = \"1MiB\"\n\n"
            ));
        }
    }
    text
}

/// The console API with the operator token.
pub struct Api {
    client: reqwest::Client,
    pub url: String,
    token: String,
}

impl Api {
    pub fn new(url: &str, token_file: &Path) -> Api {
        let token = std::fs::read_to_string(token_file)
            .expect("token file")
            .trim()
            .to_string();
        // reqwest's rustls takes the process-wide provider (the workspace's one).
        redoubt_tls::install_provider();
        Api {
            client: reqwest::Client::new(),
            url: url.to_string(),
            token,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let answer = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let answer = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/init/{group}`'s state, or "error".
    pub async fn init_state(&self, group: &str) -> String {
        let (status, body) = self.get(&format!("/v1/init/{group}")).await;
        if status != 200 {
            return "error".into();
        }
        body["state"].as_str().unwrap_or("error").to_string()
    }
}
