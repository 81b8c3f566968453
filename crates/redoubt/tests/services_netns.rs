//! The services end to end, across network namespaces (`redoubt_testkit::netns`): a console
//! and four agents (prod-a, dr-b, dr-c, prod-x), each in its own namespace, driven by the CLI
//! from the console's namespace.
//!
//! 1. Every kind of configuration change (new group, LV added/removed/grown, each container
//!    resized, tunables, a recovery server removed and added, roles swapped, the group
//!    deleted) runs exactly the steps and rows `config plan` shows, all done, and leaves the
//!    servers' containers, LVs, exports and status as the new configuration says.
//! 2. A console and an agent killed with SIGKILL while an initialization runs: restarted on
//!    their state directories, the initialization resumes and completes, and replication to
//!    the killed agent's server works afterwards.
//!
//! Needs root (network namespaces); CI runs as root.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redoubt_config::{Config, Group, NbdListen, Role, Server};
use redoubt_testkit::netns::{Netem, Spawned, TestBed};
use serde_json::{json, Map, Value};

/// Namespaces of the bed, in address order: the console is 198.18.0.1.
const SERVERS: [&str; 5] = ["console", "prod-a", "dr-b", "dr-c", "prod-x"];
/// Servers that run an agent.
const AGENTS: [&str; 4] = ["prod-a", "dr-b", "dr-c", "prod-x"];
const CONSOLE_PORT: u16 = 7400;
const AGENT_PORT: u16 = 7411;
const NBD_PORT: u16 = 10809;
const GROUP: &str = "erp";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of one `config apply` / `config watch` (an initialization here takes about a second).
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a short CLI command or a peer tool run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of waiting for replication (connections, applied writes).
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Daemons log at this level to stderr (kept by the bed for failure messages).
const LOG_LEVEL: &str = "REDOUBT_LOG=info";
const POLL: Duration = Duration::from_millis(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn example_path(kind: &str, which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/changes")
        .join(kind)
        .join(format!("{which}.toml"))
}

/// Exit code and output of a command, killed (and the test failed) after `timeout`.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn ok(self, what: &str) -> Ran {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed (exit {:?}):\n{}",
            self.code,
            self.text()
        );
        self
    }
}

fn run_bounded(mut command: Command, timeout: Duration) -> Ran {
    let label = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {label}: {error}"));
    let pipe = |mut reader: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = reader.read_to_end(&mut text);
            String::from_utf8_lossy(&text).to_string()
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let ran = Ran {
        code: status.and_then(|status| status.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "{label} did not finish within {timeout:?}:\n{}",
        ran.text()
    );
    ran
}

/// Polls `probe` until it answers `Some`, or fails with the last `Err` after `timeout`.
fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last: {last}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// The bed, the daemons and where they keep their state.
struct Services {
    bed: TestBed,
    console: Option<Spawned>,
    agents: BTreeMap<String, Spawned>,
    url: String,
    token_file: PathBuf,
    /// Configuration files written by the test, numbered.
    written: usize,
    /// The last initialization failed as a known product bug makes it fail.
    known_bug_hit: bool,
    /// The configuration in effect and the file it was applied from.
    current: Option<(Config, PathBuf)>,
    root: tempfile::TempDir,
}

impl Services {
    fn start() -> Services {
        let bed = TestBed::new(&SERVERS).unwrap_or_else(|error| panic!("test bed: {error}"));
        let mut services = Services {
            bed,
            console: None,
            agents: BTreeMap::new(),
            url: String::new(),
            token_file: PathBuf::new(),
            written: 0,
            current: None,
            known_bug_hit: false,
            root: tempfile::tempdir().unwrap(),
        };
        services.start_console();
        for agent in AGENTS {
            services.start_agent(agent);
        }
        services
    }

    fn start_console(&mut self) {
        let listen = format!("{}:{CONSOLE_PORT}", self.bed.address("console").unwrap());
        let state_dir = self.root.path().join("console");
        let args = [
            LOG_LEVEL.to_string(),
            binary().display().to_string(),
            "console".into(),
            "--listen".into(),
            listen.clone(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        let console = self.bed.spawn("console", "env", &args).unwrap();
        let ready = console.wait_for_line("ready ", READY_TIMEOUT).unwrap();
        self.url = ready.strip_prefix("ready ").unwrap().to_string();
        assert_eq!(self.url, format!("http://{listen}"));
        let token = console.wait_for_line("token ", READY_TIMEOUT).unwrap();
        self.token_file = PathBuf::from(token.strip_prefix("token ").unwrap());
        assert!(self.token_file.starts_with(&state_dir), "{token}");
        self.console = Some(console);
    }

    fn start_agent(&mut self, name: &str) {
        let listen = self.agent_address(name);
        let args = [
            LOG_LEVEL.to_string(),
            binary().display().to_string(),
            "agent".into(),
            "--name".into(),
            name.into(),
            "--listen".into(),
            listen.clone(),
            "--state-dir".into(),
            self.root
                .path()
                .join("agents")
                .join(name)
                .display()
                .to_string(),
        ];
        let agent = self.bed.spawn(name, "env", &args).unwrap();
        let ready = agent.wait_for_line("ready ", READY_TIMEOUT).unwrap();
        assert_eq!(ready, format!("ready {listen}"));
        self.agents.insert(name.to_string(), agent);
    }

    fn kill_console(&mut self) {
        if let Some(mut console) = self.console.take() {
            console.kill9().unwrap();
        }
    }

    fn kill_agent(&mut self, name: &str) {
        if let Some(mut agent) = self.agents.remove(name) {
            agent.kill9().unwrap();
        }
    }

    fn agent_address(&self, name: &str) -> String {
        format!("{}:{AGENT_PORT}", self.bed.address(name).unwrap())
    }

    fn nbd_address(&self, name: &str) -> String {
        format!("{}:{NBD_PORT}", self.bed.address(name).unwrap())
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("data").join(name)
    }

    fn group_dir(&self, name: &str) -> PathBuf {
        self.data_dir(name).join("groups").join(GROUP)
    }

    fn lv_path(&self, server: &str, volume: &str) -> PathBuf {
        self.group_dir(server).join("replication").join(volume)
    }

    /// A configuration moved onto the bed: every agent server present, with its bed address,
    /// a data directory under the test's temporary directory and an NBD listener (so any
    /// server can become production).
    fn on_bed(&self, mut config: Config) -> Config {
        for name in AGENTS {
            if config.server(name).is_none() {
                config.servers.push(Server {
                    name: name.to_string(),
                    address: String::new(),
                    data_dir: PathBuf::new(),
                    nbd_listen: None,
                    nbd_tls: false,
                });
            }
        }
        for server in &mut config.servers {
            server.address = self.agent_address(&server.name);
            server.data_dir = self.data_dir(&server.name);
            server.nbd_listen = Some(NbdListen::Tcp(self.nbd_address(&server.name)));
        }
        config
    }

    fn example(&self, kind: &str, which: &str) -> Config {
        let path = example_path(kind, which);
        let config = redoubt_config::load(&path)
            .unwrap_or_else(|errors| panic!("{}: {errors:?}", path.display()));
        self.on_bed(config)
    }

    fn write_config(&mut self, label: &str, config: &Config) -> PathBuf {
        self.written += 1;
        let dir = self.root.path().join("configs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:02}-{label}.toml", self.written));
        std::fs::write(&path, redoubt_config::render_toml(config)).unwrap();
        path
    }

    /// `redoubt --console URL --token-file PATH ARGS…` in the console's namespace.
    fn cli(&self, args: &[&str], timeout: Duration) -> Ran {
        let mut command = self.bed.command("console", binary()).unwrap();
        command
            .arg("--console")
            .arg(&self.url)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args);
        run_bounded(command, timeout)
    }

    /// A console API document (GET with the bearer token), from the console's namespace.
    fn api(&self, path: &str) -> Result<Value, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|error| format!("read the token: {error}"))?;
        let mut command = self.bed.command("console", "curl").unwrap();
        command.args([
            "-sS",
            "-f",
            "-m",
            "5",
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            &format!("{}{path}", self.url),
        ]);
        let ran = run_bounded(command, COMMAND_TIMEOUT);
        if ran.code != Some(0) {
            return Err(format!("GET {path}: {}", ran.text()));
        }
        serde_json::from_str(&ran.stdout).map_err(|error| format!("GET {path}: {error}"))
    }

    fn init(&self) -> Value {
        self.api(&format!("/v1/init/{GROUP}"))
            .unwrap_or_else(|error| panic!("{error}"))
    }

    fn status(&self) -> Value {
        let ran = self
            .cli(&["status", "--format", "json"], COMMAND_TIMEOUT)
            .ok("status --format json");
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|error| panic!("status is not JSON ({error}):\n{}", ran.stdout))
    }

    /// qemu-io in `server`'s namespace against `uri` with `commands`.
    fn qemu_io(&self, server: &str, uri: &str, commands: &[&str]) -> Ran {
        let mut command = self.bed.command(server, "qemu-io").unwrap();
        command.args(["-f", "raw"]);
        for each in commands {
            command.args(["-c", each]);
        }
        command.arg(uri);
        run_bounded(command, COMMAND_TIMEOUT)
    }

    /// Every daemon's stderr so far, for failure messages.
    fn logs(&self) -> String {
        let mut text = String::new();
        if let Some(console) = &self.console {
            text.push_str(&format!("--- console:\n{}\n", console.stderr()));
        }
        for (name, agent) in &self.agents {
            text.push_str(&format!("--- agent {name}:\n{}\n", agent.stderr()));
        }
        text
    }

    fn export_uri(&self, production: &str, volume: &str) -> String {
        format!("nbd://{}/{volume}", self.nbd_address(production))
    }
}

/// `redoubt config plan [--from OLD] NEW --format json` (offline): the group's plan.
fn plan(previous: Option<&Path>, next: &Path) -> Value {
    let mut command = Command::new(binary());
    command.args(["config", "plan"]);
    if let Some(previous) = previous {
        command.arg("--from").arg(previous);
    }
    command.arg(next).args(["--format", "json"]);
    let ran = run_bounded(command, COMMAND_TIMEOUT).ok("config plan");
    let plans: Value = serde_json::from_str(&ran.stdout).unwrap();
    let plans = plans.as_array().unwrap();
    assert_eq!(plans.len(), 1, "one changed group: {plans:?}");
    assert_eq!(plans[0]["group"], GROUP);
    plans[0].clone()
}

/// Steps as (number, title, rows, deletes); a "one" step's row (`{}` in the record) counts as
/// no row, as in the plan.
fn step_shape(steps: &Value) -> Vec<Value> {
    steps
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            let rows: Vec<Value> = step["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|row| {
                    let mut key = Map::new();
                    for field in ["server", "role", "volume"] {
                        if let Some(value) = row.get(field) {
                            key.insert(field.into(), value.clone());
                        }
                    }
                    (!key.is_empty()).then_some(Value::Object(key))
                })
                .collect();
            json!({"number": step["number"], "title": step["title"], "rows": rows,
                   "deletes": step["deletes"]})
        })
        .collect()
}

fn numbers(steps: &[Value]) -> Vec<u64> {
    steps
        .iter()
        .map(|step| step["number"].as_u64().unwrap())
        .collect()
}

fn container_capacity(group_dir: &Path, container: &str) -> u64 {
    let path = group_dir.join(container).join(".container.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["capacity_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no capacity_bytes: {text}", path.display()))
}

/// What one applied change ran, for the report at the end.
struct Applied {
    label: String,
    steps: Vec<u64>,
    took: Duration,
    /// Recovery servers not checked for writes (known bugs).
    skipped: Vec<String>,
    known_bug: Option<String>,
}

/// One configuration change to apply and check.
struct Change<'a> {
    label: &'a str,
    next: Config,
    /// The steps the rules table gives this change.
    steps: &'a [u64],
    /// Text of the error of a known product bug that may fail rows (reported).
    tolerated: Option<&'a str>,
    /// Recovery servers that a known product bug (reported) keeps from receiving writes
    /// after this change; a write through production's export must reach every other one.
    not_replicating_to: &'a [&'a str],
}

impl Services {
    /// Applies `change.next` over the configuration in effect and checks what ran and what
    /// the servers look like; the new configuration is then the one in effect.
    fn apply_and_check(&mut self, change: Change, log: &mut Vec<Applied>) {
        let Change {
            label,
            next,
            steps: expected_steps,
            tolerated,
            not_replicating_to,
        } = change;
        let started = Instant::now();
        let next_path = self.write_config(label, &next);
        let previous = self.current.take();
        let plan = plan(
            previous.as_ref().map(|(_, path)| path.as_path()),
            &next_path,
        );
        let planned = step_shape(&plan["steps"]);
        assert_eq!(
            numbers(&planned),
            expected_steps,
            "{label}: the plan's steps (the rules table, docs/planner.md)"
        );
        let versions_before = self.history_len();

        let applied = self.cli(
            &["config", "apply", &next_path.display().to_string(), "--yes"],
            INIT_TIMEOUT,
        );
        // A known product bug (reported, see the caller) may fail some rows; nothing else may.
        let known_bug = match tolerated {
            Some(known) if applied.code != Some(0) && applied.text().contains(known) => Some(known),
            _ => None,
        };
        if known_bug.is_none() {
            applied.ok(&format!("{label}: config apply"));
        }

        // (a) What ran is exactly the plan, every row done.
        let init = self.init();
        assert_eq!(
            init["state"],
            if known_bug.is_some() {
                "failed"
            } else {
                "done"
            },
            "{label}: {init}"
        );
        assert_eq!(
            init["version"].as_u64(),
            Some(versions_before as u64 + 1),
            "{label}: the initialization of the new version: {init}"
        );
        for step in init["steps"].as_array().unwrap() {
            for row in step["rows"].as_array().unwrap() {
                let bug = known_bug.is_some_and(|known| {
                    row["state"] == "failed"
                        && row["error"]
                            .as_str()
                            .is_some_and(|error| error.contains(known))
                });
                assert!(
                    row["state"] == "done" || bug,
                    "{label}: step {} row {row}",
                    step["number"]
                );
            }
        }
        let ran = step_shape(&init["steps"]);
        assert_eq!(
            ran, planned,
            "{label}: the steps and rows that ran are the plan's"
        );
        assert_eq!(self.history_len(), versions_before + 1, "{label}");

        // (b) The servers are as configured.
        self.known_bug_hit = known_bug.is_some();
        self.check_servers(label, previous.as_ref().map(|(config, _)| config), &next);
        if let Some(group) = next.group(GROUP) {
            let pattern = u8::try_from(log.len() + 1).unwrap();
            if let Err(error) = self.replicates(group, pattern, not_replicating_to) {
                panic!("{label}: a write through the export does not replicate: {error}");
            }
        }
        log.push(Applied {
            label: label.to_string(),
            steps: numbers(&ran),
            took: started.elapsed(),
            skipped: not_replicating_to.iter().map(|s| s.to_string()).collect(),
            known_bug: known_bug.map(str::to_string),
        });
        self.current = Some((next, next_path));
    }

    /// The configuration in effect (the test's copy); before the first apply, the servers
    /// without any group.
    fn current(&self) -> Config {
        match &self.current {
            Some((config, _)) => config.clone(),
            None => self.on_bed(Config::default()),
        }
    }

    fn history_len(&self) -> usize {
        let ran = self
            .cli(&["config", "history", "--format", "json"], COMMAND_TIMEOUT)
            .ok("config history");
        serde_json::from_str::<Value>(&ran.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    }

    fn check_servers(&self, label: &str, previous: Option<&Config>, next: &Config) {
        let old = previous.and_then(|config| config.group(GROUP));
        let new = next.group(GROUP);
        if let Some(group) = new {
            self.check_group(label, group);
        }
        let Some(old) = old else { return };
        let staying = |server: &str| new.is_some_and(|group| group.role_of(server).is_some());
        // LVs removed from the group: gone from recovery servers, kept on production.
        if let Some(group) = new {
            for volume in &old.volumes {
                if group.volume(&volume.name).is_some() {
                    continue;
                }
                for (server, role) in group.members() {
                    let path = self.lv_path(server, &volume.name);
                    if role == Role::Production {
                        assert_eq!(
                            std::fs::metadata(&path).map(|m| m.len()).ok(),
                            Some(volume.size_bytes),
                            "{label}: a removed LV is kept on production: {}",
                            path.display()
                        );
                    } else {
                        assert!(
                            !path.exists(),
                            "{label}: a removed LV is deleted on recovery server {server}: {}",
                            path.display()
                        );
                    }
                }
                let uri = self.export_uri(&group.production, &volume.name);
                let read = self.qemu_io(&group.production, &uri, &["read 0 4k"]);
                assert!(
                    read.code != Some(0) || !read.text().contains("read 4096/4096"),
                    "{label}: the export of removed LV {} is gone:\n{}",
                    volume.name,
                    read.text()
                );
            }
        }
        // Servers that left the group: nothing of it is left, except production's LVs.
        for (server, role) in old.members() {
            if staying(server) {
                continue;
            }
            if role == Role::Production {
                for volume in &old.volumes {
                    let path = self.lv_path(server, &volume.name);
                    assert_eq!(
                        std::fs::metadata(&path).map(|m| m.len()).ok(),
                        Some(volume.size_bytes),
                        "{label}: production's LV is kept: {}",
                        path.display()
                    );
                }
                let uri = self.export_uri(server, &old.volumes[0].name);
                let read = self.qemu_io(server, &uri, &["read 0 4k"]);
                assert_ne!(
                    read.code,
                    Some(0),
                    "{label}: the export is gone from the former production {server}:\n{}",
                    read.text()
                );
            } else {
                let dir = self.group_dir(server);
                assert!(
                    !dir.exists(),
                    "{label}: nothing of {GROUP} is left on {server}: {} exists",
                    dir.display()
                );
            }
        }
        if new.is_none() {
            let status = self.status();
            assert!(
                status["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|group| group["name"] != GROUP),
                "{label}: the deleted group is not in the status: {status}"
            );
        }
    }

    fn check_group(&self, label: &str, group: &Group) {
        for (server, role) in group.members() {
            let dir = self.group_dir(server);
            for (container, bytes) in [
                ("replication", group.containers.replication_bytes),
                ("journal", group.containers.log_record_file_bytes),
                ("snapshot", group.containers.snapshot_bytes),
            ] {
                if self.known_bug_hit && container == "snapshot" && role == Role::Production {
                    continue;
                }
                assert_eq!(
                    container_capacity(&dir, container),
                    bytes,
                    "{label}: the {container} container on {server}"
                );
            }
            for volume in &group.volumes {
                let path = self.lv_path(server, &volume.name);
                assert_eq!(
                    std::fs::metadata(&path).map(|m| m.len()).ok(),
                    Some(volume.size_bytes),
                    "{label}: LV {} on {server}: {}",
                    volume.name,
                    path.display()
                );
            }
        }
        // Production exports every LV to NBD clients.
        for volume in &group.volumes {
            let uri = self.export_uri(&group.production, &volume.name);
            let read = self
                .qemu_io(&group.production, &uri, &["read 0 4k"])
                .ok(&format!("{label}: qemu-io read {uri}"));
            assert!(
                read.stdout.contains("read 4096/4096 bytes"),
                "{label}: {uri}:\n{}",
                read.text()
            );
        }
        // The status shows the direction and the exports.
        let direction = format!("{} -> {}", group.production, group.recovery.join(", "));
        let status = self.status();
        let entry = status["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["name"] == GROUP)
            .cloned()
            .unwrap_or_else(|| panic!("{label}: no group {GROUP} in the status: {status}"));
        assert_eq!(entry["direction"], direction.as_str(), "{label}: {entry}");
        assert_eq!(entry["production"], group.production.as_str(), "{label}");
        assert_eq!(entry["mode"], group.mode.as_str(), "{label}: {entry}");
        let initialization = if self.known_bug_hit { "failed" } else { "idle" };
        assert_eq!(
            entry["initialization"]["state"], initialization,
            "{label}: {entry}"
        );
        for volume in &group.volumes {
            let export = entry["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == volume.name.as_str())
                .map(|v| v["export"].clone());
            assert_eq!(
                export,
                Some(json!(self.export_uri(&group.production, &volume.name))),
                "{label}: {entry}"
            );
        }
        let targets: Vec<&str> = entry["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|target| target["server"].as_str())
            .collect();
        assert_eq!(targets, group.recovery, "{label}: {entry}");
    }

    /// Writes `pattern` over the first 64 KiB of the group's first LV through production's
    /// export and waits until every recovery server's replica holds it and the status shows
    /// every target connected; `Err` says what is missing after `timeout`.
    fn replicates(&self, group: &Group, pattern: u8, except: &[&str]) -> Result<(), String> {
        const BYTES: usize = 64 << 10;
        let volume = &group.volumes[0].name;
        let uri = self.export_uri(&group.production, volume);
        let write = format!("write -P {pattern} 0 {BYTES}");
        let wrote = self.qemu_io(&group.production, &uri, &[&write, "flush"]);
        if wrote.code != Some(0) || !wrote.stdout.contains("wrote 65536/65536") {
            return Err(format!("qemu-io {write} {uri}:\n{}", wrote.text()));
        }
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let mut missing = Vec::new();
            for server in group
                .recovery
                .iter()
                .filter(|s| !except.contains(&s.as_str()))
            {
                let path = self.lv_path(server, volume);
                let mut bytes = vec![0u8; BYTES];
                let held = std::fs::File::open(&path)
                    .and_then(|file| file.read_exact_at(&mut bytes, 0))
                    .is_ok()
                    && bytes.iter().all(|byte| *byte == pattern);
                if !held {
                    missing.push(format!("{server} does not hold the write"));
                }
            }
            if missing.is_empty() {
                let status = self.status();
                let connected = status["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|entry| entry["name"] == GROUP)
                    .flat_map(|entry| entry["targets"].as_array().unwrap().iter())
                    .filter(|target| !except.iter().any(|server| target["server"] == *server))
                    .all(|target| target["connected"] == true);
                if connected {
                    return Ok(());
                }
                missing.push(format!("not every target is connected: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{}\n{}", missing.join("; "), self.logs()));
            }
            std::thread::sleep(POLL);
        }
    }
}

fn edited(config: &Config, edit: impl FnOnce(&mut Group)) -> Config {
    let mut config = config.clone();
    let group = config
        .groups
        .iter_mut()
        .find(|group| group.name == GROUP)
        .unwrap();
    edit(group);
    config
}

const GIB: u64 = 1 << 30;

fn print_log(log: &[Applied]) {
    for applied in log {
        eprintln!(
            "{:<20} steps {:?} in {:?}; replicates: {}{}",
            applied.label,
            applied.steps,
            applied.took,
            if applied.label == "group-deleted" {
                "-".to_string()
            } else if applied.skipped.is_empty() {
                "yes".to_string()
            } else {
                format!("not to {:?} (KNOWN BUG)", applied.skipped)
            },
            applied
                .known_bug
                .as_ref()
                .map(|bug| format!("; KNOWN BUG: {bug}"))
                .unwrap_or_default()
        );
    }
}

/// The change a rules-table row names, as an example pair or as its edit of the current
/// configuration.
enum Next {
    /// `examples/changes/<kind>/after.toml`; its before.toml must be the configuration in
    /// effect.
    Example,
    Edit(fn(&mut Group)),
    DeleteGroup,
}

struct Row {
    kind: &'static str,
    next: Next,
    steps: &'static [u64],
    tolerated: Option<&'static str>,
    not_replicating_to: &'static [&'static str],
}

const fn example(kind: &'static str, steps: &'static [u64]) -> Row {
    Row {
        kind,
        next: Next::Example,
        steps,
        tolerated: None,
        not_replicating_to: &[],
    }
}

const fn edit(kind: &'static str, change: fn(&mut Group), steps: &'static [u64]) -> Row {
    Row {
        kind,
        next: Next::Edit(change),
        steps,
        tolerated: None,
        not_replicating_to: &[],
    }
}

const NEW_GROUP: &[u64] = &[1, 2, 11, 12, 16, 20];

/// Starts fresh servers and applies `rows` one after another.
fn run_chain(rows: Vec<Row>, log: &mut Vec<Applied>) {
    let mut services = Services::start();
    for row in rows {
        let next = match row.next {
            Next::Example => {
                assert_eq!(
                    services.example(row.kind, "before"),
                    services.current(),
                    "{}/before.toml is the configuration in effect",
                    row.kind
                );
                services.example(row.kind, "after")
            }
            Next::Edit(change) => edited(&services.current(), change),
            Next::DeleteGroup => {
                let mut next = services.current();
                next.groups.retain(|group| group.name != GROUP);
                next
            }
        };
        services.apply_and_check(
            Change {
                label: row.kind,
                next,
                steps: row.steps,
                tolerated: row.tolerated,
                not_replicating_to: row.not_replicating_to,
            },
            log,
        );
    }
}

#[test]
fn every_change_kind_runs_exactly_its_plan_and_leaves_the_servers_as_configured() {
    let started = Instant::now();
    let mut log = Vec::new();
    // The example pairs chain as far as their before.toml is the configuration in effect;
    // then the same edits are applied to the configuration in effect.
    run_chain(
        vec![
            example("new-group", NEW_GROUP),
            example("recovery-removed", &[1, 2, 7, 14, 17, 18, 20]),
            example("recovery-added", &[1, 2, 11, 12, 14, 15, 16, 18, 20]),
            example("tunables", &[1, 2, 14, 15, 20]),
            edit(
                "lv-added",
                |group| {
                    group.volumes.push(redoubt_config::Volume {
                        name: "lv_index".into(),
                        size_bytes: GIB / 2,
                        source: None,
                    })
                },
                &[1, 2, 11, 13, 14, 15, 16, 20],
            ),
            edit(
                "lv-grown",
                |group| group.volumes[0].size_bytes = 2 * GIB,
                &[1, 2, 11, 13, 14, 15, 16, 20],
            ),
            edit(
                "lfc-resized",
                |group| group.containers.log_record_file_bytes = 2 * GIB,
                &[1, 2, 5, 11, 14, 15, 16, 20],
            ),
            edit(
                "replication-resized",
                |group| group.containers.replication_bytes = 8 * GIB,
                &[1, 2, 6, 11, 12, 15, 16, 20],
            ),
            edit(
                "roles-swapped",
                |group| {
                    group.production = "dr-b".into();
                    group.recovery = vec!["prod-a".into(), "dr-c".into()];
                },
                &[1, 2, 3, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20],
            ),
            Row {
                kind: "group-deleted",
                next: Next::DeleteGroup,
                steps: &[1, 3, 4, 7, 17, 18, 20],
                tolerated: None,
                not_replicating_to: &[],
            },
        ],
        &mut log,
    );
    // Two more rows from the example pairs, each from a new group on fresh servers.
    run_chain(
        vec![
            example("new-group", NEW_GROUP),
            example("lv-removed", &[1, 2, 4, 14, 15, 16, 17, 20]),
        ],
        &mut log,
    );
    run_chain(
        vec![
            example("new-group", NEW_GROUP),
            example("snapshot-resized", &[1, 2, 8, 9, 11, 16, 20]),
        ],
        &mut log,
    );
    print_log(&log);
    eprintln!("total {:?}", started.elapsed());
}

#[test]
fn a_killed_console_and_agent_resume_the_initialization() {
    let started = Instant::now();
    let mut services = Services::start();
    let config = services.example("new-group", "after");
    let path = services.write_config("new-group", &config);
    let token = std::fs::read_to_string(&services.token_file).unwrap();

    // Every request of the console to an agent takes 2 x 100 ms longer (SYN and request are
    // delayed), so the initialization is caught while it runs.
    services
        .bed
        .netem(
            "console",
            Netem {
                delay_ms: 100,
                ..Netem::default()
            },
        )
        .unwrap();
    services
        .cli(
            &[
                "config",
                "apply",
                &path.display().to_string(),
                "--yes",
                "--detach",
            ],
            COMMAND_TIMEOUT,
        )
        .ok("config apply --detach");
    let seen = poll("step 11 runs", INIT_TIMEOUT, || {
        let init = services.api(&format!("/v1/init/{GROUP}"))?;
        let step_11_started = init["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|step| step["number"] == 11)
            .flat_map(|step| step["rows"].as_array().into_iter().flatten())
            .any(|row| row["state"] == "running" || row["state"] == "done");
        if step_11_started {
            Ok(init)
        } else {
            Err(init.to_string())
        }
    });
    services.kill_console();
    services.kill_agent("dr-b");
    assert_eq!(
        seen["state"], "running",
        "the console was killed while the initialization ran: {seen}"
    );
    let unfinished = seen["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|step| step["rows"].as_array().unwrap().iter())
        .filter(|row| row["state"] != "done")
        .count();
    assert!(unfinished > 0, "{seen}");
    services.bed.clear_netem("console").unwrap();

    // Both restart on their state directories; the initialization resumes and completes.
    services.start_agent("dr-b");
    services.start_console();
    assert_eq!(
        std::fs::read_to_string(&services.token_file).unwrap(),
        token,
        "the restarted console keeps its token"
    );
    // The re-sent row waits for its first attempt, still running in the agent that stayed
    // up, instead of colliding with it.
    services
        .cli(&["config", "watch", GROUP], INIT_TIMEOUT)
        .ok("config watch after the restart");
    let init = services.init();
    assert_eq!(init["state"], "done", "{init}");
    assert_eq!(init["version"], 1, "{init}");
    let mut attempts = Vec::new();
    for step in init["steps"].as_array().unwrap() {
        for row in step["rows"].as_array().unwrap() {
            assert_eq!(row["state"], "done", "step {} row {row}", step["number"]);
            if row["attempts"].as_u64().unwrap_or(0) > 1 {
                attempts.push(format!("step {} {row}", step["number"]));
            }
        }
    }
    eprintln!(
        "killed with {unfinished} row(s) unfinished; rows run again: {}",
        attempts.join(", ")
    );
    assert_eq!(
        step_shape(&init["steps"]),
        step_shape(&plan(None, &path)["steps"]),
        "the resumed initialization ran exactly the plan"
    );
    services.current = Some((config.clone(), path));
    let group = config.group(GROUP).unwrap();
    services.check_servers("resumed new-group", None, &config);

    // Data written afterwards reaches dr-b (and dr-c) byte for byte.
    let volume = &group.volumes[0].name;
    let uri = services.export_uri(&group.production, volume);
    let (offset, bytes) = (1u64 << 20, 1usize << 20);
    services
        .qemu_io(
            "prod-a",
            &uri,
            &[&format!("write -P 0xa7 {offset} {bytes}"), "flush"],
        )
        .ok("qemu-io write");
    let read = |server: &str| -> Vec<u8> {
        let mut buffer = vec![0u8; bytes];
        std::fs::File::open(services.lv_path(server, volume))
            .and_then(|file| file.read_exact_at(&mut buffer, offset))
            .map(|()| buffer)
            .unwrap_or_default()
    };
    poll(
        "the write reaches dr-b and dr-c",
        REPLICATION_TIMEOUT,
        || {
            let production = read("prod-a");
            if production.len() != bytes || production.iter().any(|byte| *byte != 0xa7) {
                return Err("production's LV does not hold the write yet".into());
            }
            for server in ["dr-b", "dr-c"] {
                if read(server) != production {
                    return Err(format!(
                        "{server}'s replica differs from production\n{}",
                        services.logs()
                    ));
                }
            }
            Ok(())
        },
    );
    eprintln!("total {:?}", started.elapsed());
}
