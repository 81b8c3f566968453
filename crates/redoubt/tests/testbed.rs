//! The multi-server test bed (`redoubt_testkit::netns`): servers in network namespaces, the
//! datatap served across them to real peers (qemu-io, nbdinfo), faults on the links, SIGKILL
//! and restart inside a namespace, and a teardown that leaves nothing behind.
//!
//! Needs root (network namespaces); CI runs as root. Without root every test fails with the
//! bed's message, it does not skip.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use redoubt_testkit::netns::{self, Netem, Spawned, TestBed};

const PORT: u16 = 10809;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn bed(names: &[&str]) -> TestBed {
    TestBed::new(names).unwrap_or_else(|error| panic!("cannot build the test bed: {error}"))
}

/// Starts `redoubt datatap` inside `server`, listening on its bed address; returns the
/// process and the URI of `lv0` from its `ready` line.
fn start_datatap(bed: &mut TestBed, server: &str, dir: &Path) -> (Spawned, String) {
    let listen = format!("{}:{PORT}", bed.address(server).unwrap());
    let dir = dir.display().to_string();
    let args = [
        "datatap",
        "--dir",
        &dir,
        "--volume",
        "lv0:64MiB",
        "--listen",
        &listen,
    ];
    let datatap = bed.spawn(server, binary(), &args).unwrap();
    let line = datatap.wait_for_line("ready ", READY_TIMEOUT).unwrap();
    let uri = line.strip_prefix("ready ").unwrap().to_string();
    assert_eq!(uri, format!("nbd://{listen}/lv0"));
    (datatap, uri)
}

/// Runs `program args` inside `server`; returns (success, stdout + stderr, wall time).
fn run_in(bed: &TestBed, server: &str, program: &str, args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = bed
        .command(server, program)
        .unwrap()
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} in {server}: {error}"));
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, elapsed)
}

fn run_in_ok(bed: &TestBed, server: &str, program: &str, args: &[&str]) -> (String, Duration) {
    let (ok, text, elapsed) = run_in(bed, server, program, args);
    assert!(ok, "{program} {args:?} in {server} failed:\n{text}");
    (text, elapsed)
}

/// qemu-io with the given commands against `uri`; asserts that it ran every command cleanly.
fn qemu_io_ok(bed: &TestBed, server: &str, uri: &str, commands: &[&str]) -> Duration {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(uri);
    let (text, elapsed) = run_in_ok(bed, server, "qemu-io", &args);
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io {commands:?}:\n{text}"
    );
    elapsed
}

/// A TCP connect from inside `server` with a short timeout.
fn connect_from(bed: &TestBed, server: &str, to: SocketAddr, timeout: Duration) -> bool {
    bed.run_in(server, move || {
        TcpStream::connect_timeout(&to, timeout).is_ok()
    })
    .unwrap()
}

/// Links, addresses, routes and neighbours of every server: for failure messages.
fn network_state(bed: &TestBed) -> String {
    let mut text = String::new();
    for namespace in bed.namespaces() {
        for what in [&["link"][..], &["-4", "addr"], &["route"], &["neigh"]] {
            let mut args = vec!["-n", namespace.as_str()];
            args.extend(what);
            let output = redoubt_testkit::run("ip", &args);
            text.push_str(&format!(
                "ip {}:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            ));
        }
    }
    text
}

/// The fastest of `count` runs of nbdinfo from `server`: the least noisy measure.
fn fastest_nbdinfo(bed: &TestBed, server: &str, uri: &str, count: usize) -> Duration {
    (0..count)
        .map(|_| run_in_ok(bed, server, "nbdinfo", &[uri]).1)
        .min()
        .unwrap()
}

/// Alive = has a /proc entry that is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[test]
fn qemu_io_and_nbdinfo_reach_the_datatap_on_another_server() {
    let mut bed = bed(&["prod-a", "dr-b"]);
    assert_eq!(
        bed.address("prod-a").unwrap().to_string(),
        "198.18.0.1",
        "servers are numbered in the order given"
    );
    assert_eq!(bed.address("dr-b").unwrap().to_string(), "198.18.0.2");
    let dir = tempfile::tempdir().unwrap();
    let (datatap, uri) = start_datatap(&mut bed, "prod-a", dir.path());

    qemu_io_ok(
        &bed,
        "dr-b",
        &uri,
        &["write -P 0x5a 0 1M", "read -P 0x5a 0 1M"],
    );
    let (info, _) = run_in_ok(&bed, "dr-b", "nbdinfo", &[&uri]);
    assert!(info.contains("export-size: 67108864"), "{info}");
    // A wrong pattern is caught: the read above checked real bytes.
    let (_, text, _) = run_in(
        &bed,
        "dr-b",
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0xa5 0 4k", &uri],
    );
    assert!(text.contains("Pattern verification failed"), "{text}");
    assert!(datatap.is_running(), "stderr:\n{}", datatap.stderr());
}

#[test]
fn delay_loss_and_link_faults_are_applied_and_removed() {
    let mut bed = bed(&["prod-a", "dr-b"]);
    let dir = tempfile::tempdir().unwrap();
    let (datatap, uri) = start_datatap(&mut bed, "prod-a", dir.path());
    let target: SocketAddr = format!("{}:{PORT}", bed.address("prod-a").unwrap())
        .parse()
        .unwrap();

    // Delay: every client→server step of connect + NBD handshake waits 50 ms more.
    let baseline = fastest_nbdinfo(&bed, "dr-b", &uri, 3);
    bed.netem(
        "dr-b",
        Netem {
            delay_ms: 50,
            ..Netem::default()
        },
    )
    .unwrap();
    let delayed = fastest_nbdinfo(&bed, "dr-b", &uri, 2);
    assert!(
        delayed >= Duration::from_millis(100) && delayed >= baseline + Duration::from_millis(75),
        "50 ms delay not visible: baseline {baseline:?}, delayed {delayed:?}"
    );
    bed.clear_netem("dr-b").unwrap();
    let cleared = fastest_nbdinfo(&bed, "dr-b", &uri, 2);
    assert!(
        cleared + Duration::from_millis(75) <= delayed,
        "clear_netem left a delay: cleared {cleared:?}, delayed {delayed:?}"
    );

    // Rough weather (jitter, reorder, some loss, a rate cap): TCP still delivers every byte.
    bed.netem(
        "prod-a",
        Netem {
            delay_ms: 2,
            jitter_ms: 2,
            loss_percent: 1.0,
            reorder_percent: 20.0,
            rate_kbit: 50_000,
        },
    )
    .unwrap();
    qemu_io_ok(
        &bed,
        "dr-b",
        &uri,
        &["write -P 0x33 0 512k", "read -P 0x33 0 512k"],
    );
    bed.clear_netem("prod-a").unwrap();

    // 100% loss: a connect times out; cleared: it connects.
    assert!(connect_from(&bed, "dr-b", target, Duration::from_secs(1)));
    bed.netem(
        "dr-b",
        Netem {
            loss_percent: 100.0,
            ..Netem::default()
        },
    )
    .unwrap();
    assert!(
        !connect_from(&bed, "dr-b", target, Duration::from_millis(500)),
        "connected through 100% loss"
    );
    bed.clear_netem("dr-b").unwrap();
    assert!(connect_from(&bed, "dr-b", target, Duration::from_secs(2)));

    // Link down on the server's side: the client cannot reach it; link up: it can again.
    bed.link_down("prod-a").unwrap();
    assert!(
        !connect_from(&bed, "dr-b", target, Duration::from_millis(500)),
        "connected to a server whose link is down"
    );
    let (ok, text, _) = run_in(&bed, "dr-b", "timeout", &["2", "nbdinfo", &uri]);
    assert!(!ok, "nbdinfo reached a server whose link is down:\n{text}");
    bed.link_up("prod-a").unwrap();
    // Bounded retry: the link is up, the connect must succeed within the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connect_from(&bed, "dr-b", target, Duration::from_millis(500)) {
        assert!(
            Instant::now() < deadline,
            "no connect after link up\n{}",
            network_state(&bed)
        );
    }
    run_in_ok(&bed, "dr-b", "nbdinfo", &[&uri]);

    assert!(bed
        .netem(
            "dr-b",
            Netem {
                loss_percent: 101.0,
                ..Netem::default()
            }
        )
        .is_err());
    assert!(bed.link_down("no-such-server").is_err());
    assert!(datatap.is_running(), "stderr:\n{}", datatap.stderr());
}

#[test]
fn kill9_in_a_namespace_then_restart_keeps_the_data() {
    let mut bed = bed(&["prod-a", "dr-b"]);
    let dir = tempfile::tempdir().unwrap();
    let (mut datatap, uri) = start_datatap(&mut bed, "prod-a", dir.path());
    qemu_io_ok(
        &bed,
        "dr-b",
        &uri,
        &["write -P 0x5a 0 1M", "write -P 0xc3 1M 64k"],
    );

    let pid = datatap.pid();
    bed.kill9(&mut datatap).unwrap();
    assert!(!datatap.is_running());
    assert!(!alive(pid), "datatap {pid} survived SIGKILL");
    let namespace = bed.namespace("prod-a").unwrap();
    let pids = redoubt_testkit::run_ok("ip", &["netns", "pids", &namespace]);
    assert!(pids.trim().is_empty(), "left in {namespace}: {pids}");

    let (restarted, again) = start_datatap(&mut bed, "prod-a", dir.path());
    assert_eq!(again, uri);
    qemu_io_ok(
        &bed,
        "dr-b",
        &again,
        &["read -P 0x5a 0 1M", "read -P 0xc3 1M 64k"],
    );
    assert!(restarted.is_running(), "stderr:\n{}", restarted.stderr());
}

#[test]
fn drop_removes_namespaces_and_kills_every_process() {
    let mut bed = bed(&["prod-a", "dr-b", "dr-c"]);
    let namespaces = bed.namespaces();
    assert_eq!(namespaces.len(), 3);
    let listed = netns::list_namespaces().unwrap();
    for namespace in &namespaces {
        assert!(listed.contains(namespace), "{namespace} not in {listed:?}");
        assert!(namespace.starts_with(&format!("rdt-{}-", std::process::id())));
    }
    let dir = tempfile::tempdir().unwrap();
    let (datatap, _) = start_datatap(&mut bed, "prod-a", dir.path());
    // A grandchild the bed did not start directly: found through the namespace.
    let shell = bed
        .spawn("dr-c", "sh", &["-c", "sleep 600 & echo $!; wait"])
        .unwrap();
    let grandchild: u32 = shell
        .wait_for_line("", READY_TIMEOUT)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids = [datatap.pid(), shell.pid(), grandchild];
    for pid in pids {
        assert!(alive(pid), "{pid} not running before the drop");
    }

    // The handles outlive the bed: the bed's drop must still kill and reap them.
    drop(bed);
    let listed = netns::list_namespaces().unwrap();
    for namespace in &namespaces {
        assert!(!listed.contains(namespace), "{namespace} left behind");
        assert!(!Path::new(&format!("/run/netns/{namespace}")).exists());
    }
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the teardown");
    }
    assert!(!datatap.is_running() && !shell.is_running());
}

#[test]
fn cleanup_stale_removes_only_namespaces_of_dead_processes() {
    netns::require_root().unwrap();
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead = exited.id();
    assert!(!alive(dead));
    let stale = format!("rdt-{dead}-0-stale");
    let live = format!("rdt-{}-999999-live", std::process::id());
    for namespace in [&stale, &live] {
        redoubt_testkit::run_ok("ip", &["netns", "add", namespace]);
    }
    let removed = netns::cleanup_stale();
    let listed = netns::list_namespaces().unwrap();
    redoubt_testkit::run_ok("ip", &["netns", "delete", &live]);
    let removed = removed.unwrap();
    // A concurrent test run's cleanup may have removed it first: it must be gone either way.
    assert!(!removed.contains(&live), "{removed:?}");
    assert!(
        !listed.contains(&stale) && listed.contains(&live),
        "{listed:?}"
    );
}

#[test]
fn invalid_server_names_are_refused() {
    for names in [&[][..], &["Prod"], &["a b"], &["-a"], &["a", "a"]] {
        let error = TestBed::new(names).err().unwrap();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::InvalidInput,
            "{names:?}: {error}"
        );
    }
}
