//! The datatap under faults: SIGKILL mid-workload, and hostile clients.

use std::path::Path;
use std::sync::mpsc;

use redoubt_history::{
    check_at_least, generate, History, MemoryImages, WorkloadConfig, WorkloadEvent,
};
use redoubt_nbd_proto::{self as nbd, client, Command, CommandFlags};
use redoubt_testkit::{DatatapProcess, NbdClient};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

const LV_SIZES_BYTES: [u64; 2] = [8 << 20, 4 << 20];

/// What the writer thread saw before the server died.
struct Outcome {
    history: History,
    /// Every write acknowledged (SIGKILL must not lose any: the OS has them).
    acknowledged_seq: u64,
    flushed_seq: u64,
}

fn write_until_the_server_dies(
    address: String,
    seed: u64,
    kill_after_acks: u64,
    ready: mpsc::Sender<()>,
) -> Outcome {
    let run_id = 0x5eed_0000 + seed;
    let events = generate(&WorkloadConfig::new(seed, LV_SIZES_BYTES.to_vec(), 100_000)).unwrap();
    let mut clients = [
        NbdClient::connect(&address, "lv0").unwrap(),
        NbdClient::connect(&address, "lv1").unwrap(),
    ];
    let mut history = History::new(run_id, &LV_SIZES_BYTES).unwrap();
    let mut acknowledged_seq = 0;
    let mut flushed_seq = 0;
    let mut signalled = false;
    for event in &events {
        match event {
            WorkloadEvent::Write(op) => {
                let client = &mut clients[op.lv_index as usize];
                match client.write(op.offset_bytes, &op.payload(run_id), false) {
                    Ok(0) => {
                        history.record_write_ack_order(*op).unwrap();
                        acknowledged_seq = op.write_id;
                    }
                    _ => {
                        // In flight when the server died: it may or may not have landed.
                        history.record_write_ack_order(*op).unwrap();
                        break;
                    }
                }
                if !signalled && acknowledged_seq >= kill_after_acks {
                    signalled = true;
                    let _ = ready.send(());
                }
            }
            WorkloadEvent::Flush => {
                // One connection per LV: a FLUSH on each covers every write before it.
                let flushed = clients
                    .iter_mut()
                    .all(|client| matches!(client.flush(), Ok(0)));
                if !flushed {
                    break;
                }
                flushed_seq = history.record_flush();
            }
        }
    }
    Outcome {
        history,
        acknowledged_seq,
        flushed_seq,
    }
}

#[test]
fn sigkill_mid_workload_loses_no_acknowledged_write_and_replays_cleanly() {
    for seed in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut datatap =
            DatatapProcess::start(binary(), dir.path(), &["lv0:8MiB", "lv1:4MiB"], &[]);
        let address = datatap.address();
        let (ready, go) = mpsc::channel();
        let kill_after_acks = 500 * seed;
        let writer = std::thread::spawn(move || {
            write_until_the_server_dies(address, seed, kill_after_acks, ready)
        });
        // The writer keeps writing while the server is killed under it.
        go.recv().expect("writer reached the kill point");
        datatap.kill9();
        let outcome = writer.join().unwrap();
        assert!(outcome.acknowledged_seq >= kill_after_acks);

        datatap.restart();
        let address = datatap.address();
        let mut images = Vec::new();
        for (index, size) in LV_SIZES_BYTES.iter().enumerate() {
            let mut client = NbdClient::connect(&address, &format!("lv{index}")).unwrap();
            let mut bytes = Vec::new();
            for offset in (0..*size).step_by(1 << 20) {
                bytes.extend(client.read(offset, 1 << 20).unwrap().unwrap());
            }
            images.push(bytes);
        }
        let mut images = MemoryImages::from_lvs(images);
        let proof = check_at_least(&outcome.history, outcome.acknowledged_seq, &mut images)
            .unwrap_or_else(|violation| panic!("seed {seed}: {violation}"));
        assert!(proof.seq_max >= outcome.flushed_seq);
        assert!(proof.block_written_count > 0);
    }
}

fn raw_request(command: u16, offset_bytes: u64, length_bytes: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&nbd::REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&77u64.to_be_bytes());
    out.extend_from_slice(&offset_bytes.to_be_bytes());
    out.extend_from_slice(&length_bytes.to_be_bytes());
    out
}

#[test]
fn hostile_clients_get_errors_or_a_disconnect_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let datatap = DatatapProcess::start(binary(), dir.path(), &["lv0:1MiB"], &[]);
    let address = datatap.address();
    let mut good = NbdClient::connect(&address, "lv0").unwrap();
    assert_eq!(good.write(0, &[9u8; 4096], false).unwrap(), 0);

    let mut hostile = NbdClient::connect(&address, "lv0").unwrap();
    // Out of range: the right NBD errors, and the connection stays usable.
    assert_eq!(
        hostile.read(1 << 20, 4096).unwrap(),
        Err(22),
        "read past the end: EINVAL"
    );
    assert_eq!(
        hostile.write((1 << 20) - 512, &[1u8; 4096], false).unwrap(),
        28,
        "write past the end: ENOSPC"
    );
    assert_eq!(
        hostile.read(u64::MAX - 10, 4096).unwrap(),
        Err(22),
        "offset overflow: EINVAL"
    );
    assert_eq!(hostile.read(0, 0).unwrap(), Err(22), "zero length: EINVAL");
    // An unknown command gets EINVAL and the connection goes on.
    hostile
        .send(Command::Unknown(99), CommandFlags::empty(), 0, 4096, &[])
        .unwrap();
    assert_eq!(hostile.receive().unwrap().error, 22);
    assert_eq!(hostile.read(0, 4096).unwrap().unwrap(), vec![9u8; 4096]);
    // A write larger than the 32 MiB cap is a protocol violation: disconnect, no allocation.
    hostile.send_raw(&raw_request(1, 0, 64 << 20)).unwrap();
    assert!(hostile.is_closed_by_server());

    // Bad request magic: disconnect.
    let mut bad_magic = NbdClient::connect(&address, "lv0").unwrap();
    bad_magic
        .send_raw(&[0xde, 0xad, 0xbe, 0xef].repeat(7))
        .unwrap();
    assert!(bad_magic.is_closed_by_server());

    // Garbage during the handshake: disconnect.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let mut greeting = [0u8; nbd::SERVER_GREETING_BYTES];
    std::io::Read::read_exact(&mut stream, &mut greeting).unwrap();
    std::io::Write::write_all(&mut stream, &[0, 0, 0, 3]).unwrap();
    std::io::Write::write_all(&mut stream, &[0x41; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        rest.is_empty(),
        "no reply to a bad option magic, just a close"
    );

    // An oversized option is answered with NBD_REP_ERR_TOO_BIG, then closed.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    std::io::Read::read_exact(&mut stream, &mut greeting).unwrap();
    let mut out = Vec::new();
    client::encode_client_flags(&mut out, nbd::ClientFlags::KNOWN);
    out.extend_from_slice(&nbd::IHAVEOPT_MAGIC.to_be_bytes());
    out.extend_from_slice(&nbd::option_code::GO.to_be_bytes());
    out.extend_from_slice(&(1u32 << 30).to_be_bytes());
    std::io::Write::write_all(&mut stream, &out).unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
    assert_eq!(
        reply.len(),
        nbd::OPTION_REPLY_HEADER_BYTES + "option data too long".len()
    );

    // Through all of it, the well-behaved client was served.
    assert_eq!(good.read(0, 4096).unwrap().unwrap(), vec![9u8; 4096]);
    assert_eq!(good.flush().unwrap(), 0);
    good.disconnect().unwrap();
}

#[test]
fn trim_write_zeroes_and_pipelined_overlapping_writes_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut datatap = DatatapProcess::start(binary(), dir.path(), &["lv0:4MiB"], &[]);
    let mut client = NbdClient::connect(&datatap.address(), "lv0").unwrap();
    // 64 overlapping writes in flight at once. NBD leaves their order open, but exactly one
    // must win whole (never a torn mix), and the LV must agree with the journal: the same
    // winner after a SIGKILL and a replay.
    for round in 0..64u8 {
        client
            .send(
                Command::Write,
                CommandFlags::empty(),
                0,
                65536,
                &[round; 65536],
            )
            .unwrap();
    }
    for _ in 0..64 {
        assert_eq!(client.receive().unwrap().error, 0);
    }
    assert_eq!(client.write_zeroes(8192, 8192).unwrap(), 0);
    assert_eq!(client.trim(1 << 20, 1 << 20).unwrap(), 0);
    let data = client.read(0, 65536).unwrap().unwrap();
    let winner = data[0];
    let expected: Vec<u8> = (0..65536)
        .map(|i| {
            if (8192..16384).contains(&i) {
                0
            } else {
                winner
            }
        })
        .collect();
    assert_eq!(data, expected, "one write wins whole");
    datatap.kill9();
    datatap.restart();
    let mut client = NbdClient::connect(&datatap.address(), "lv0").unwrap();
    assert_eq!(client.read(0, 65536).unwrap().unwrap(), expected);
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Issue #18 finding 3: a client that asks for large reads and never reads the replies
/// cannot make production buffer them all (24 x 32 MiB took the agent to 930 MB before):
/// queued replies count against the connection's bound, and a client that takes no reply
/// bytes is disconnected after the stall timeout, which releases what its requests held.
#[test]
fn a_client_that_never_reads_its_replies_is_bounded_then_disconnected() {
    const READ_BYTES: u32 = 32 << 20;
    const READS: u64 = 24;
    let dir = tempfile::tempdir().unwrap();
    let datatap = DatatapProcess::start(
        binary(),
        dir.path(),
        &["lv0:1GiB"],
        &["--reply-stall-timeout-ms", "2000"],
    );
    let pid = datatap.pid();
    let address = datatap.address();
    let sockets_before = socket_count(pid);
    let mut hostile = NbdClient::connect(&address, "lv0").unwrap();
    for index in 0..READS {
        hostile
            .send(
                Command::Read,
                CommandFlags::default(),
                index * READ_BYTES as u64,
                READ_BYTES,
                &[],
            )
            .unwrap();
    }
    // The server gives up on the connection: its socket goes (the event waited for).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while socket_count(pid) > sockets_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept the connection of a client that reads nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let peak_mib = proc_status_kib(pid, "VmHWM:") / 1024;
    let bound_mib = redoubt_datatap::server::IN_FLIGHT_MIB_MAX as u64;
    eprintln!(
        "datatap peak RSS {peak_mib} MiB with {} MiB of replies asked for",
        READS * 32
    );
    assert!(
        peak_mib < bound_mib + 160,
        "peak RSS {peak_mib} MiB: more than the {bound_mib} MiB per-connection bound allows"
    );
    drop(hostile);
    // Everything it held is free: another client is served at once.
    let mut good = NbdClient::connect(&address, "lv0").unwrap();
    assert_eq!(good.write(0, &[7u8; 4096], false).unwrap(), 0);
    let read = good.read(0, 4096).unwrap().unwrap();
    assert!(read.iter().all(|b| *b == 7));
}
