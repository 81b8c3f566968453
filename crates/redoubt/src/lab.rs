//! `redoubt lab up|down`: a console and three agents (prod-a, dr-b, dr-c) on loopback, with
//! file-backed containers under DIR, the example group applied, and the URIs printed. Mutual
//! TLS between them, the console's API over HTTPS (certificates of a lab CA in DIR/tls);
//! DIR/lab.env says where the console, its token and the CA are.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::LabCommand;
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

/// Servers of the lab, in role order.
const LAB_SERVERS: [&str; 3] = ["prod-a", "dr-b", "dr-c"];
/// How long `lab up` waits for a daemon to answer.
const LAB_READY_TIMEOUT_MS: u64 = 30_000;
/// What the lab's console certificate is valid for besides `console` (its HTTPS API).
const LAB_CONSOLE_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "::1"];
/// How long `lab down` waits for a daemon to exit after SIGTERM before SIGKILL.
const LAB_STOP_TIMEOUT_MS: u64 = 15_000;
/// How long `lab up` waits for the initial sync (step 12's super transaction) to end.
const LAB_INITIAL_SYNC_TIMEOUT_MS: u64 = 300_000;

fn failed(message: impl Into<String>) -> Failure {
    Failure::new(ExitCodeKind::Failed, message)
}

pub fn run(command: LabCommand) -> Result<(), Failure> {
    match command {
        LabCommand::Up { dir } => up(&absolute(&dir)?),
        LabCommand::Down { dir, purge } => down(&absolute(&dir)?, purge),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(dir).map_err(|error| failed(format!("resolve {}: {error}", dir.display())))
}

/// `N` distinct free loopback ports, chosen by the kernel. Every listener is held until all
/// are chosen: a port closed at once can come back from the next bind, and two servers of the
/// lab would get the same address.
fn free_ports<const N: usize>() -> Result<[u16; N], Failure> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|error| failed(format!("find a free port: {error}")))?;
        *port = listener
            .local_addr()
            .map_err(|error| failed(format!("find a free port: {error}")))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

fn lab_config(dir: &Path, agent_ports: &[u16; 3], nbd_ports: &[u16; 3]) -> String {
    let mut text = String::from("# The lab's configuration, written by `redoubt lab up`.\n\n");
    for ((name, port), nbd_port) in LAB_SERVERS.iter().zip(agent_ports).zip(nbd_ports) {
        text.push_str(&format!(
            "[[server]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n",
            dir.join("data").join(name).display()
        ));
        // Every server can serve the LVs: only the one acting as production does (after a
        // failover, a recovery server).
        text.push_str(&format!("nbd_listen = \"127.0.0.1:{nbd_port}\"\n"));
        text.push('\n');
    }
    text.push_str(
        r#"[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b", "dr-c"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "zstd"

[group.containers]
replication = "1GiB"
log_record_file = "512MiB"
snapshot = "256MiB"

[[group.volume]]
name = "lv_data01"
size = "256MiB"

[[group.volume]]
name = "lv_logs"
size = "64MiB"
"#,
    );
    text
}

fn spawn_daemon(dir: &Path, name: &str, args: &[String]) -> Result<u32, Failure> {
    let binary = std::env::current_exe()
        .map_err(|error| failed(format!("find the redoubt binary: {error}")))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|error| failed(format!("create {}: {error}", logs.display())))?;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|error| failed(format!("create {}: {error}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|error| failed(format!("open {}: {error}", log_path.display())))?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env(
            "REDOUBT_LOG",
            std::env::var("REDOUBT_LOG").unwrap_or_else(|_| "info".into()),
        );
    // SAFETY: setsid(2) only detaches the child from our session, so the daemon outlives the
    // CLI and a Ctrl-C at the terminal; it touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|error| failed(format!("start {name}: {error}")))?;
    let pid = child.id();
    std::fs::write(
        dir.join("pids").join(format!("{name}.pid")),
        pid.to_string(),
    )
    .map_err(|error| failed(format!("record the pid of {name}: {error}")))?;
    Ok(pid)
}

fn wait_until<F: FnMut() -> bool>(what: &str, log: &Path, mut ready: F) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_millis(LAB_READY_TIMEOUT_MS);
    while !ready() {
        if Instant::now() > deadline {
            return Err(failed(format!(
                "{what} did not become ready within {} s; see {}",
                LAB_READY_TIMEOUT_MS / 1000,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The lab's cluster CA and the certificates of the console and the three servers, in
/// DIR/tls: made on the first `lab up`, kept (and completed) after.
fn lab_tls(dir: &Path) -> Result<PathBuf, Failure> {
    let tls_dir = dir.join("tls");
    let tls_failed =
        |error: redoubt_tls::TlsError| failed(format!("set up the lab's TLS: {error}"));
    if !tls_dir.join(redoubt_tls::CA_CERT_FILE).exists() {
        redoubt_tls::ca::init(&tls_dir).map_err(tls_failed)?;
    }
    for name in LAB_SERVERS {
        if !tls_dir.join(format!("{name}.pem")).exists() {
            redoubt_tls::ca::issue(&tls_dir, name).map_err(tls_failed)?;
        }
    }
    // The console's certificate also serves its HTTPS API at https://127.0.0.1:PORT (and
    // https://localhost:PORT): a certificate from an older lab without those names is replaced.
    let console = redoubt_tls::CONSOLE_NAME;
    let cert = tls_dir.join(format!("{console}.pem"));
    let key = tls_dir.join(format!("{console}.key"));
    let covers = |name| redoubt_tls::certificate_is_for(&cert, name).unwrap_or(false);
    if cert.exists() && !(covers("127.0.0.1") && covers("localhost")) {
        for path in [&cert, &key] {
            if let Err(error) = std::fs::remove_file(path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err(failed(format!("replace {}: {error}", path.display())));
                }
            }
        }
    }
    if !cert.exists() {
        let names = LAB_CONSOLE_NAMES.map(String::from);
        redoubt_tls::ca::issue_with_names(&tls_dir, console, &names).map_err(tls_failed)?;
    }
    Ok(tls_dir)
}

fn up(dir: &Path) -> Result<(), Failure> {
    if dir.join("pids").exists()
        && std::fs::read_dir(dir.join("pids"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(Failure::new(
            ExitCodeKind::Refused,
            format!(
                "a lab already runs in {} (`redoubt lab down --dir {}` first)",
                dir.display(),
                dir.display()
            ),
        ));
    }
    for sub in ["pids", "logs", "console"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|error| failed(format!("create {}: {error}", dir.join(sub).display())))?;
    }
    let [console_port, agent_a, agent_b, agent_c, nbd_a, nbd_b, nbd_c] = free_ports::<7>()?;
    let agent_ports = [agent_a, agent_b, agent_c];
    let nbd_ports = [nbd_a, nbd_b, nbd_c];
    let nbd_port = nbd_ports[0];
    let config_path = dir.join("lab.toml");
    std::fs::write(&config_path, lab_config(dir, &agent_ports, &nbd_ports))
        .map_err(|error| failed(format!("write {}: {error}", config_path.display())))?;

    let tls_dir = lab_tls(dir)?;
    println!(
        "Starting the console and three agents under {} (mutual TLS, certificates in {}) …",
        dir.display(),
        tls_dir.display()
    );
    let console_url = format!("https://127.0.0.1:{console_port}");
    let ca_file = tls_dir.join(redoubt_tls::CA_CERT_FILE);
    spawn_daemon(
        dir,
        "console",
        &[
            "console".into(),
            "--listen".into(),
            format!("127.0.0.1:{console_port}"),
            "--state-dir".into(),
            dir.join("console").display().to_string(),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
        ],
    )?;
    for (name, port) in LAB_SERVERS.iter().zip(agent_ports) {
        spawn_daemon(
            dir,
            name,
            &[
                "agent".into(),
                "--name".into(),
                name.to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--state-dir".into(),
                dir.join("agents").join(name).display().to_string(),
                "--tls-dir".into(),
                tls_dir.display().to_string(),
            ],
        )?;
    }
    let token_file = dir.join("console").join("token");
    wait_until("the console", &dir.join("logs/console.log"), || {
        token_file.exists() && std::net::TcpStream::connect(("127.0.0.1", console_port)).is_ok()
    })?;
    for (name, port) in LAB_SERVERS.iter().zip(agent_ports) {
        wait_until(
            &format!("agent {name}"),
            &dir.join(format!("logs/{name}.log")),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )?;
    }
    let env_path = dir.join("lab.env");
    std::fs::write(
        &env_path,
        format!(
            "REDOUBT_CONSOLE={console_url}\nREDOUBT_TOKEN_FILE={}\nREDOUBT_CA_FILE={}\n",
            token_file.display(),
            ca_file.display()
        ),
    )
    .map_err(|error| failed(format!("write {}: {error}", env_path.display())))?;

    println!("Applying {} …\n", config_path.display());
    let client = ConsoleClient::with_ca_file(&console_url, &token_file, Some(ca_file.clone()))?;
    crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::apply(
        &client,
        &config_path,
        true,
        false,
        true,
    ))?;
    wait_for_initial_sync(&client)?;
    println!();
    println!("The lab is up.");
    println!(
        "  console:  {console_url}   (token in {}; HTTPS, CA {})",
        token_file.display(),
        ca_file.display()
    );
    println!("  exports:  nbd://127.0.0.1:{nbd_port}/lv_data01");
    println!("            nbd://127.0.0.1:{nbd_port}/lv_logs");
    println!(
        "  try:      qemu-io -f raw -c 'write -P 0x5a 0 1M' nbd://127.0.0.1:{nbd_port}/lv_data01"
    );
    let redoubt = runnable_name();
    println!(
        "            set -a; . {}; set +a; {redoubt} status",
        env_path.display()
    );
    println!("  stop:     {redoubt} lab down --dir {}", dir.display());
    Ok(())
}

/// How the user can run this very binary from their shell, for the commands `lab up` prints:
/// `redoubt` when that name on `PATH` is this file, else the path of this file (relative to
/// the working directory when it lies under it, as `target/release/redoubt` after
/// `scripts/lab.sh`). A hint that names a command the shell cannot find is no hint.
fn runnable_name() -> String {
    let Ok(this) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "redoubt".to_string();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::canonicalize(dir.join("redoubt")).is_ok_and(|found| found == this))
    });
    if on_path {
        return "redoubt".to_string();
    }
    display_path(&this, std::env::current_dir().ok().as_deref())
}

/// `path` relative to `cwd` when it lies under it, else absolute.
fn display_path(path: &Path, cwd: Option<&Path>) -> String {
    let cwd = cwd.and_then(|dir| std::fs::canonicalize(dir).ok());
    match cwd.as_deref().and_then(|dir| path.strip_prefix(dir).ok()) {
        Some(relative) => relative.display().to_string(),
        None => path.display().to_string(),
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn down(dir: &Path, purge: bool) -> Result<(), Failure> {
    // Nothing is stopped while an application uses a device of the lab: pulling the export
    // from under a mounted file system leaves the host with a hung unmount.
    let in_use = devices_in_use(dir);
    if !in_use.is_empty() {
        return Err(Failure::new(
            ExitCodeKind::Refused,
            format!(
                "the lab in {} has block devices in use, so nothing was stopped:\n{}\nunmount them (or stop their users), then run `lab down` again",
                dir.display(),
                in_use.join("\n")
            ),
        ));
    }
    let stopped = stop_processes(&dir.join("pids"))?;
    // The agents are gone; their attachments' helpers (nbdfuse, nbdkit), loop devices and
    // /dev/redoubt links outlive them by design (an agent restart keeps a mount working), so
    // the lab removes them itself.
    for line in detach_all(dir) {
        println!("{line}");
    }
    println!(
        "Stopped {stopped} process(es) of the lab in {}.",
        dir.display()
    );
    if purge {
        std::fs::remove_dir_all(dir)
            .map_err(|error| failed(format!("remove {}: {error}", dir.display())))?;
        println!("Removed {} and all its data.", dir.display());
    } else {
        println!("Data kept in {} (`--purge` deletes it).", dir.display());
    }
    Ok(())
}

/// The state directory of each lab agent that recorded attachments.
fn attachment_registries(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    LAB_SERVERS
        .iter()
        .map(|server| (*server, dir.join("agents").join(server)))
        .filter(|(_, state)| state.join(redoubt_host::REGISTRY_FILE_NAME).exists())
        .collect()
}

/// One line per attached device of the lab that something holds (a mount, an exclusive open).
fn devices_in_use(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for (server, state) in attachment_registries(dir) {
        let host =
            match redoubt_host::Host::open(&state, Path::new(redoubt_host::LINKS_ROOT_DEFAULT)) {
                Ok(host) => host,
                Err(error) => {
                    lines.push(format!("  {server}: cannot read its attachments: {error}"));
                    continue;
                }
            };
        for (attachment, _) in host.list() {
            let key = attachment.key();
            if !host
                .probe(&key, true)
                .is_some_and(|probe| probe.device_busy)
            {
                continue;
            }
            let mounts = mount_points(&attachment.device);
            let where_ = if mounts.is_empty() {
                "open by a program".to_string()
            } else {
                format!("mounted on {}", mounts.join(", "))
            };
            lines.push(format!(
                "  {key} on {server}: {} ({}) is {where_}",
                attachment.link.display(),
                attachment.device
            ));
        }
    }
    lines
}

/// Where `device` is mounted, from /proc/self/mountinfo (the source after the ` - fstype`).
fn mount_points(device: &str) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounted_at(&mountinfo, device)
}

/// Pure: the mount points of `device` in a mountinfo text.
fn mounted_at(mountinfo: &str, device: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let source = rest.split_whitespace().nth(1)?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (source == device).then(|| mount_point.replace("\\040", " "))
        })
        .collect()
}

/// Detaches every recorded attachment of the lab's agents; one line per attachment.
fn detach_all(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for (server, state) in attachment_registries(dir) {
        let mut host =
            match redoubt_host::Host::open(&state, Path::new(redoubt_host::LINKS_ROOT_DEFAULT)) {
                Ok(host) => host,
                Err(error) => {
                    lines.push(format!(
                        "warning: {server}: cannot read its attachments: {error}"
                    ));
                    continue;
                }
            };
        let keys: Vec<String> = host
            .list()
            .iter()
            .map(|(attachment, _)| attachment.key())
            .collect();
        for key in keys {
            match host.detach(&key) {
                Ok(attachment) => lines.push(format!(
                    "Detached {key} on {server}: removed {} and {}.",
                    attachment.link.display(),
                    attachment.device
                )),
                Err(error) => lines.push(format!("warning: detach {key} on {server}: {error}")),
            }
        }
    }
    lines
}

/// Stops the lab's daemons at once (SIGTERM to all, then one shared deadline, then SIGKILL
/// to what is left); returns how many ran.
fn stop_processes(pids_dir: &Path) -> Result<usize, Failure> {
    let mut running = Vec::new();
    if let Ok(entries) = std::fs::read_dir(pids_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok());
            let name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(pid) = pid.filter(|pid| *pid > 1 && process_alive(*pid)) {
                // SAFETY: plain kill(2) of a daemon this lab started.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                running.push((name, pid));
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    if running.is_empty() {
        return Ok(0);
    }
    let mut names: Vec<&str> = running.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    println!("Stopping {} …", names.join(", "));
    let started = Instant::now();
    let deadline = started + Duration::from_millis(LAB_STOP_TIMEOUT_MS);
    while running.iter().any(|(_, pid)| process_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, pid) in &running {
        if process_alive(*pid) {
            println!(
                "{name} did not stop within {} s: killed",
                LAB_STOP_TIMEOUT_MS / 1000
            );
            // SAFETY: as above.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
    println!("Stopped in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(running.len())
}

/// `lab up` returns once every recovery server holds a consistent replica (the initial sync
/// ended): until then no point of the history can be restored there (`replication::resync`),
/// and a demo that starts with `mark` and `rollback` should not meet that refusal.
fn wait_for_initial_sync(client: &ConsoleClient) -> Result<(), Failure> {
    let runtime = crate::remote_cmd::runtime()?;
    let deadline = Instant::now() + Duration::from_millis(LAB_INITIAL_SYNC_TIMEOUT_MS);
    println!("Waiting for the initial sync of the recovery servers …");
    loop {
        let status = runtime.block_on(client.get("/v1/status"))?;
        let targets: Vec<&serde_json::Value> = status["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["targets"].as_array().into_iter().flatten())
            .collect();
        if !targets.is_empty()
            && targets
                .iter()
                .all(|target| target["replica_consistent"] == true)
        {
            println!("Initial sync complete: every replica is consistent.");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "the initial sync did not end within {} s; `redoubt status --format json` shows each target's super_transaction_pct and replica_consistent",
                LAB_INITIAL_SYNC_TIMEOUT_MS / 1000
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_of_a_device_are_read_from_mountinfo() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
97 22 7:0 / /tmp/lab\\040x/mnt rw,relatime shared:50 - ext4 /dev/loop0 rw
98 22 7:1 / /srv rw,relatime shared:51 - ext4 /dev/loop1 rw
";
        assert_eq!(mounted_at(mountinfo, "/dev/loop0"), ["/tmp/lab x/mnt"]);
        assert!(mounted_at(mountinfo, "/dev/loop7").is_empty());
    }

    #[test]
    fn a_binary_under_the_working_directory_is_named_relative_to_it() {
        let root = tempfile::tempdir().unwrap();
        let binary = root.path().join("target/release/redoubt");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        std::fs::write(&binary, b"").unwrap();
        let binary = std::fs::canonicalize(&binary).unwrap();
        assert_eq!(
            display_path(&binary, Some(root.path())),
            "target/release/redoubt"
        );
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(
            display_path(&binary, Some(elsewhere.path())),
            binary.display().to_string()
        );
    }
}
