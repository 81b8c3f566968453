//! A multi-server test bed: one Linux network namespace per "server", all joined to one
//! Ethernet segment, with faults injected on a server's link.
//!
//! Topology: every server namespace `rdt-<pid>-<counter>-<name>` has `lo` up and one TAP
//! interface `eth0` addressed `198.18.0.<i+1>/24` (servers in the order given). The other end
//! of every TAP is a file descriptor held by a switch thread of the test process, which
//! forwards frames between the servers (a learning switch) and applies each server's
//! [`Netem`] impairment to the frames that server sends (the egress of its `eth0`, where
//! `tc qdisc … root netem` would act). The impairments are done in userspace because the
//! kernels this runs on are built without `sch_netem` (`CONFIG_NET_SCH_NETEM` unset); the
//! switch gives the same knobs (delay, jitter, loss, reorder, rate) on any kernel.
//!
//! Teardown (on drop, also when a test panics): every process spawned through the bed is
//! killed with SIGKILL and reaped, every other process still inside a server namespace is
//! killed, the switch stops (closing the TAPs deletes them) and the namespaces are deleted.
//! [`cleanup_stale`] removes namespaces left by runs whose process died without dropping.
//!
//! Addresses are only ever 198.18.0.0/24 (RFC 2544 benchmarking space) inside namespaces this
//! module creates; nothing is configured in the caller's namespace.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Prefix of every namespace this module (and `scripts/testbed.sh`) creates.
pub const NAMESPACE_PREFIX: &str = "rdt-";
/// The name of the server's interface inside its namespace.
pub const INTERFACE: &str = "eth0";
/// Servers per bed: the host part of 198.18.0.0/24 minus the broadcast address.
pub const SERVERS_MAX: usize = 254;
/// Frames held by the switch for one server's link (netem's default `limit` is 1000).
pub const QUEUE_FRAMES_MAX: usize = 4096;
/// Longest server name: the namespace name stays short and readable.
pub const NAME_BYTES_MAX: usize = 32;
/// Bound of every teardown wait for processes to disappear.
pub const TEARDOWN_WAIT_MS: u64 = 5_000;
/// Stderr kept per spawned process for error messages.
pub const STDERR_BYTES_MAX: usize = 64 * 1024;
/// Frames read from one TAP per switch iteration, so one busy link cannot starve the others.
const FRAMES_PER_WAKE_MAX: usize = 64;
/// Read buffer: TAPs are created without offloads, so frames are at most MTU + header.
const FRAME_BYTES_MAX: usize = 65_536;
/// Longest wait of the switch thread when nothing is queued (it wakes on frames anyway).
const IDLE_POLL_MS: i32 = 1_000;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The impairment of one server's link, in the terms of `tc … netem`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Netem {
    /// Added to every frame the server sends.
    pub delay_ms: u32,
    /// Uniform ± variation of the delay.
    pub jitter_ms: u32,
    /// Frames dropped, 0.0 ..= 100.0.
    pub loss_percent: f64,
    /// Frames sent at once instead of after the delay (so they overtake), 0.0 ..= 100.0.
    pub reorder_percent: f64,
    /// Link rate; 0 means unlimited.
    pub rate_kbit: u64,
}

impl Netem {
    fn validate(&self) -> io::Result<()> {
        for (what, value) in [
            ("loss_percent", self.loss_percent),
            ("reorder_percent", self.reorder_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("netem {what} must be within 0..=100, not {value}"),
                ));
            }
        }
        Ok(())
    }
}

struct Server {
    name: String,
    namespace: String,
    address: Ipv4Addr,
}

type ChildSlot = Arc<Mutex<Option<Child>>>;

/// N servers in network namespaces on one switched segment. See the module documentation.
pub struct TestBed {
    servers: Vec<Server>,
    switch: Option<Switch>,
    children: Vec<ChildSlot>,
}

impl TestBed {
    /// Creates one namespace per name (names: `[a-z0-9][a-z0-9-]*`, at most
    /// [`NAME_BYTES_MAX`] bytes, unique). Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
    pub fn new(names: &[&str]) -> io::Result<TestBed> {
        require_root()?;
        validate_names(names)?;
        let run = format!(
            "{NAMESPACE_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Built up step by step: an error drops `bed`, which removes what exists so far.
        let mut bed = TestBed {
            servers: Vec::new(),
            switch: None,
            children: Vec::new(),
        };
        let mut taps = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let namespace = format!("{run}-{name}");
            ip(&["netns", "add", &namespace])?;
            let host = u8::try_from(index + 1).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "too many servers for a /24")
            })?;
            bed.servers.push(Server {
                name: name.to_string(),
                namespace: namespace.clone(),
                address: Ipv4Addr::new(198, 18, 0, host),
            });
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            let (fd, tap) = open_tap()?;
            taps.push(fd);
            ip(&["link", "set", "dev", &tap, "netns", &namespace])?;
            ip(&[
                "-n", &namespace, "link", "set", "dev", &tap, "name", INTERFACE,
            ])?;
            let cidr = format!("198.18.0.{host}/24");
            ip(&["-n", &namespace, "addr", "add", &cidr, "dev", INTERFACE])?;
            ip(&["-n", &namespace, "link", "set", "dev", INTERFACE, "up"])?;
        }
        bed.switch = Some(Switch::start(taps)?);
        Ok(bed)
    }

    fn server(&self, name: &str) -> io::Result<(usize, &Server)> {
        self.servers
            .iter()
            .enumerate()
            .find(|(_, server)| server.name == name)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no server {name:?} in this test bed"),
                )
            })
    }

    /// The server's address, 198.18.0.<i+1>.
    pub fn address(&self, name: &str) -> io::Result<Ipv4Addr> {
        Ok(self.server(name)?.1.address)
    }

    /// The server's namespace name (for `ip netns exec`, `ip -n`).
    pub fn namespace(&self, name: &str) -> io::Result<String> {
        Ok(self.server(name)?.1.namespace.clone())
    }

    /// Every namespace of this bed.
    pub fn namespaces(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.namespace.clone()).collect()
    }

    /// `ip netns exec NS program`: add arguments, then run it as usual.
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> io::Result<Command> {
        let (_, server) = self.server(name)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &server.namespace])
            .arg(program);
        Ok(command)
    }

    /// Starts `program args…` inside the server's namespace with stdout and stderr piped
    /// (read them through the handle). The handle kills (SIGKILL) and reaps it on drop; so
    /// does the bed's drop if the handle lives longer.
    pub fn spawn<S: AsRef<OsStr>>(
        &mut self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> io::Result<Spawned> {
        let mut command = self.command(name, &program)?;
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("{} (in {name})", program.as_ref().to_string_lossy());
        let mut child = command
            .spawn()
            .map_err(|error| io::Error::new(error.kind(), format!("spawn {label}: {error}")))?;
        let pid = child.id();
        let (sender, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                    if let Ok(mut text) = stderr.lock() {
                        if text.len() < STDERR_BYTES_MAX {
                            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                        }
                    }
                }
            });
        }
        let slot = Arc::new(Mutex::new(Some(child)));
        self.children.push(Arc::clone(&slot));
        Ok(Spawned {
            pid,
            label,
            child: slot,
            lines,
            stderr,
        })
    }

    /// SIGKILL and reap: no shutdown path of the process runs.
    pub fn kill9(&self, child: &mut Spawned) -> io::Result<()> {
        child.kill9()
    }

    /// Takes the server's interface down (frames neither leave nor arrive).
    pub fn link_down(&self, name: &str) -> io::Result<()> {
        let (_, server) = self.server(name)?;
        ip(&[
            "-n",
            &server.namespace,
            "link",
            "set",
            "dev",
            INTERFACE,
            "down",
        ])
    }

    /// Brings the server's interface back up (its address stays configured).
    pub fn link_up(&self, name: &str) -> io::Result<()> {
        let (_, server) = self.server(name)?;
        ip(&[
            "-n",
            &server.namespace,
            "link",
            "set",
            "dev",
            INTERFACE,
            "up",
        ])
    }

    /// Replaces the impairment of the frames the server sends.
    pub fn netem(&self, name: &str, netem: Netem) -> io::Result<()> {
        netem.validate()?;
        let (index, _) = self.server(name)?;
        self.switch()?.set(index, netem)
    }

    /// Removes the server's impairment.
    pub fn clear_netem(&self, name: &str) -> io::Result<()> {
        self.netem(name, Netem::default())
    }

    /// Runs `f` on a thread that has joined the server's network namespace and returns its
    /// result: sockets `f` opens live there (e.g. a `TcpStream::connect_timeout` to a peer).
    pub fn run_in<T, F>(&self, name: &str, f: F) -> io::Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let (_, server) = self.server(name)?;
        let path = format!("/run/netns/{}", server.namespace);
        let handle = File::open(&path)
            .map_err(|error| io::Error::new(error.kind(), format!("open {path}: {error}")))?;
        std::thread::scope(|scope| {
            let joined = scope
                .spawn(move || {
                    // SAFETY: setns(2) on a valid namespace fd; it changes only this thread,
                    // which ends when `f` returns.
                    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        let error = io::Error::last_os_error();
                        return Err(io::Error::new(
                            error.kind(),
                            format!("setns {path}: {error}"),
                        ));
                    }
                    Ok(f())
                })
                .join();
            match joined {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn switch(&self) -> io::Result<&Switch> {
        self.switch
            .as_ref()
            .ok_or_else(|| io::Error::other("test bed switch is not running"))
    }

    fn teardown(&mut self) {
        for slot in self.children.drain(..) {
            if let Ok(mut guard) = slot.lock() {
                if let Some(mut child) = guard.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for server in &self.servers {
            if let Err(error) = kill_namespace_processes(&server.namespace) {
                eprintln!("testbed teardown: {error}");
            }
        }
        if let Some(switch) = self.switch.take() {
            switch.stop();
        }
        for server in self.servers.drain(..) {
            if let Err(error) = ip(&["netns", "delete", &server.namespace]) {
                eprintln!("testbed teardown: {error}");
            }
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A process started inside a server namespace; SIGKILLed and reaped on drop.
pub struct Spawned {
    pid: u32,
    label: String,
    child: ChildSlot,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix` and returns it (lines
    /// before it are consumed). Fails with the process's stderr if it exits first.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}: no line starting with {prefix:?} within {timeout:?}; stderr:\n{}",
                            self.label,
                            self.stderr()
                        ),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: stdout closed before a line starting with {prefix:?}; stderr:\n{}",
                            self.label,
                            self.stderr()
                        ),
                    ))
                }
            }
        }
    }

    /// What the process wrote to stderr so far (up to [`STDERR_BYTES_MAX`]).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the process is still running (false once killed or exited).
    pub fn is_running(&self) -> bool {
        match self.child.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(None)),
                None => false,
            },
            Err(_) => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> io::Result<()> {
        let taken = match self.child.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        if let Some(mut child) = taken {
            let _ = child.kill();
            child.wait().map_err(|error| {
                io::Error::new(error.kind(), format!("reap {}: {error}", self.label))
            })?;
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// Removes `rdt-<pid>-…` namespaces whose creating process no longer exists (left by a run
/// that crashed before its drop), killing whatever still runs inside them. Namespaces of live
/// processes and `rdt-manual-*` ones (from `scripts/testbed.sh`) are left alone. Returns the
/// names removed.
pub fn cleanup_stale() -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for namespace in list_namespaces()? {
        let Some(rest) = namespace.strip_prefix(NAMESPACE_PREFIX) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if pid == 0 || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another cleaner (a concurrent test run) may remove it first: gone is fine.
        let gone = || !std::path::Path::new(&format!("/run/netns/{namespace}")).exists();
        if let Err(error) = kill_namespace_processes(&namespace) {
            if gone() {
                continue;
            }
            return Err(error);
        }
        match ip(&["netns", "delete", &namespace]) {
            Ok(()) => removed.push(namespace),
            Err(_) if gone() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// The names in `ip netns list`.
pub fn list_namespaces() -> io::Result<Vec<String>> {
    let text = ip_output(&["netns", "list"])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Fails with a clear message unless the effective user is root.
pub fn require_root() -> io::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the test bed creates network namespaces and needs root (CI runs as root); \
             run the tests with sudo",
        ));
    }
    Ok(())
}

fn validate_names(names: &[&str]) -> io::Result<()> {
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
    if names.is_empty() || names.len() > SERVERS_MAX {
        return Err(invalid(format!(
            "a test bed has 1..={SERVERS_MAX} servers, not {}",
            names.len()
        )));
    }
    for (index, name) in names.iter().enumerate() {
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= NAME_BYTES_MAX
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if !valid {
            return Err(invalid(format!(
                "server name {name:?}: use [a-z0-9][a-z0-9-]*, at most {NAME_BYTES_MAX} bytes"
            )));
        }
        if names[..index].contains(name) {
            return Err(invalid(format!("server name {name:?} given twice")));
        }
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> io::Result<String> {
    let output = Command::new("ip").args(args).output().map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "cannot run `ip {}`: {error} (install iproute2)",
                args.join(" ")
            ),
        )
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> io::Result<()> {
    ip_output(args).map(drop)
}

/// SIGKILLs every process in the namespace and waits (bounded) until none is left.
fn kill_namespace_processes(namespace: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(TEARDOWN_WAIT_MS);
    loop {
        let pids: Vec<i32> = ip_output(&["netns", "pids", namespace])?
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("processes {pids:?} still in namespace {namespace} after SIGKILL"),
            ));
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from `ip netns pids`.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Polling a condition (the processes are gone), not waiting for a time.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    padding: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a new non-persistent TAP (it disappears when the fd closes) named by the kernel
/// from `rdt%d`; returns the fd (non-blocking) and the name.
fn open_tap() -> io::Result<(OwnedFd, String)> {
    // SAFETY: open(2) with a constant C string.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("open /dev/net/tun: {error}"),
        ));
    }
    // SAFETY: `raw` is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        padding: [0; 22],
    };
    request.name[..6].copy_from_slice(b"rdt%d\0");
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out (40 bytes).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut request) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("ioctl TUNSETIFF (create TAP): {error}"),
        ));
    }
    let end = request.name.iter().position(|b| *b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&request.name[..end]).into_owned();
    Ok((fd, name))
}

struct Shared {
    netem: Mutex<Vec<Netem>>,
    stop: AtomicBool,
}

/// The userspace switch: a thread forwarding frames between the TAPs.
struct Switch {
    shared: Arc<Shared>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Switch {
    fn start(taps: Vec<OwnedFd>) -> io::Result<Switch> {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let shared = Arc::new(Shared {
            netem: Mutex::new(vec![Netem::default(); taps.len()]),
            stop: AtomicBool::new(false),
        });
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("testbed-switch".into())
            .spawn(move || switch_loop(&taps, &read, &state))?;
        Ok(Switch {
            shared,
            wake: write,
            thread: Some(thread),
        })
    }

    fn set(&self, index: usize, netem: Netem) -> io::Result<()> {
        let mut table = self
            .shared
            .netem
            .lock()
            .map_err(|_| io::Error::other("test bed switch panicked"))?;
        if let Some(slot) = table.get_mut(index) {
            *slot = netem;
        }
        drop(table);
        self.poke();
        Ok(())
    }

    fn poke(&self) {
        // SAFETY: write(2) of one byte from a valid buffer; a full pipe already wakes.
        unsafe {
            libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1);
        }
    }

    fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.poke();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.poke();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Queued {
    due: Instant,
    order: u64,
    from: usize,
    frame: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// xorshift64*: impairment decisions need no quality beyond "spread over 0..1".
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Forwarder<'a> {
    taps: &'a [OwnedFd],
    macs: Vec<([u8; 6], usize)>,
}

impl Forwarder<'_> {
    fn forward(&mut self, from: usize, frame: &[u8]) {
        if frame.len() < 14 {
            return;
        }
        let mut destination = [0u8; 6];
        destination.copy_from_slice(&frame[..6]);
        let mut source = [0u8; 6];
        source.copy_from_slice(&frame[6..12]);
        if source[0] & 1 == 0 {
            match self.macs.iter_mut().find(|(mac, _)| *mac == source) {
                Some(entry) => entry.1 = from,
                None => self.macs.push((source, from)),
            }
        }
        let known = if destination[0] & 1 == 0 {
            self.macs
                .iter()
                .find(|(mac, _)| *mac == destination)
                .map(|(_, port)| *port)
        } else {
            None
        };
        for (port, tap) in self.taps.iter().enumerate() {
            if port == from || known.is_some_and(|k| k != port) {
                continue;
            }
            // SAFETY: write(2) of the frame's bytes; errors (interface down: EIO) drop it,
            // as a cable would.
            unsafe {
                libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len());
            }
        }
    }
}

fn switch_loop(taps: &[OwnedFd], wake: &OwnedFd, shared: &Shared) {
    let seed = u64::from(std::process::id()) << 32 | 0x9e37_79b9;
    let mut rng = Rng(seed);
    let mut forwarder = Forwarder {
        taps,
        macs: Vec::new(),
    };
    let mut queue: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
    let mut queued = vec![0usize; taps.len()];
    let mut link_free = vec![Instant::now(); taps.len()];
    let mut order = 0u64;
    let mut buffer = vec![0u8; FRAME_BYTES_MAX];
    let mut pollfds: Vec<libc::pollfd> = taps
        .iter()
        .map(|tap| tap.as_raw_fd())
        .chain([wake.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(q)| q.due <= now) {
            if let Some(Reverse(item)) = queue.pop() {
                queued[item.from] = queued[item.from].saturating_sub(1);
                forwarder.forward(item.from, &item.frame);
            }
        }
        let timeout = match queue.peek() {
            Some(Reverse(next)) => {
                let wait = next.due.saturating_duration_since(now);
                i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(IDLE_POLL_MS)
            }
            None => IDLE_POLL_MS,
        };
        for pollfd in pollfds.iter_mut() {
            pollfd.revents = 0;
        }
        // SAFETY: poll(2) over our own array of pollfds.
        let ready =
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, timeout) };
        if ready <= 0 {
            continue;
        }
        if pollfds[taps.len()].revents != 0 {
            let mut drain = [0u8; 64];
            // SAFETY: read(2) into a local buffer from the non-blocking wake pipe.
            while unsafe { libc::read(wake.as_raw_fd(), drain.as_mut_ptr().cast(), drain.len()) }
                > 0
            {}
        }
        for (port, tap) in taps.iter().enumerate() {
            if pollfds[port].revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..FRAMES_PER_WAKE_MAX {
                // SAFETY: read(2) into our buffer, at most its length.
                let n = unsafe {
                    libc::read(tap.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len())
                };
                let Ok(length) = usize::try_from(n) else {
                    break;
                };
                if length == 0 {
                    break;
                }
                let frame = &buffer[..length];
                // Looked up after the read: a frame sent after `netem()` returned always gets
                // the new impairment (a snapshot taken before the read could be stale).
                let netem = match shared.netem.lock() {
                    Ok(table) => table.get(port).copied().unwrap_or_default(),
                    Err(_) => return,
                };
                if netem == Netem::default() {
                    forwarder.forward(port, frame);
                    continue;
                }
                if netem.loss_percent > 0.0 && rng.unit() * 100.0 < netem.loss_percent {
                    continue;
                }
                let arrived = Instant::now();
                let mut departs = arrived;
                // Serialization time at the link rate (no rate: no limit).
                if let Some(micros) = (length as u64 * 8 * 1000).checked_div(netem.rate_kbit) {
                    let start = link_free[port].max(arrived);
                    link_free[port] = start + Duration::from_micros(micros);
                    departs = link_free[port];
                }
                let reorder =
                    netem.reorder_percent > 0.0 && rng.unit() * 100.0 < netem.reorder_percent;
                if !reorder {
                    let jitter = f64::from(netem.jitter_ms) * (rng.unit() * 2.0 - 1.0);
                    let delay = (f64::from(netem.delay_ms) + jitter).max(0.0);
                    departs += Duration::from_micros((delay * 1000.0) as u64);
                }
                if departs <= arrived {
                    forwarder.forward(port, frame);
                } else if queued[port] < QUEUE_FRAMES_MAX {
                    queued[port] += 1;
                    order += 1;
                    queue.push(Reverse(Queued {
                        due: departs,
                        order,
                        from: port,
                        frame: frame.to_vec(),
                    }));
                }
            }
        }
    }
}
