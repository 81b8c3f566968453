//! A replayed and a truncated replication frame, injected into a real connection between a
//! real send process (LCA) and a real apply process (ABA) by a proxy in the middle: the ABA
//! refuses the replayed frame and drops the connection, ignores the partial frame, never
//! applies beyond the last complete batch it received, and replication then resumes and
//! converges when the send process reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redoubt_datatap::{bind, serve, Engine, EngineConfig, Export, Exports, Listen};
use redoubt_replication::{lca, Aba, AbaConfig, LcaConfig, TargetStatus, Targets};
use redoubt_testkit::NbdClient;
use redoubt_volume::{ContainerCapacities, GroupStore, VolumeSpec};
use redoubt_wire::{decode_frame, decode_frame_header, Frame, FrameType, FRAME_HEADER_SIZE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

const GROUP: &str = "erp";
const LV_BYTES: u64 = 4 << 20;
const WAIT_MS_MAX: u64 = 60_000;

fn specs() -> Vec<VolumeSpec> {
    vec![VolumeSpec {
        name: "lv0".into(),
        size_bytes: LV_BYTES,
        source: None,
    }]
}

fn capacities() -> ContainerCapacities {
    ContainerCapacities {
        replication_bytes: 16 << 20,
        log_record_file_bytes: 256 << 20,
        snapshot_bytes: 1 << 20,
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the proxy does to the send process's frames on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Sends the first Records frame twice.
    Replay,
    /// Sends half of the first Records frame, then closes.
    Truncate,
    PassThrough,
}

#[derive(Default)]
struct Observed {
    /// Last seq of the last complete Records frame the ABA received, per connection.
    complete_last_seq: Vec<u64>,
    /// Whether the ABA closed the connection after the attack.
    aba_closed: Vec<bool>,
}

/// Reads one whole frame's bytes from `from`, or None at a clean end.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(from: &mut R) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; FRAME_HEADER_SIZE_BYTES];
    from.read_exact(&mut bytes).await.ok()?;
    let header = decode_frame_header(&bytes).ok()??;
    let total = FRAME_HEADER_SIZE_BYTES + header.payload_length as usize;
    bytes.resize(total, 0);
    from.read_exact(&mut bytes[FRAME_HEADER_SIZE_BYTES..])
        .await
        .ok()?;
    Some(bytes)
}

async fn proxy(
    listener: TcpListener,
    aba_address: String,
    observed: Arc<Mutex<Observed>>,
    gate: Arc<Notify>,
) {
    let mut connection = 0usize;
    loop {
        if connection == 2 {
            // The test inspects the ABA after both attacks before anything else arrives.
            gate.notified().await;
        }
        let Ok((lca, _)) = listener.accept().await else {
            return;
        };
        let attack = match connection {
            0 => Attack::Replay,
            1 => Attack::Truncate,
            _ => Attack::PassThrough,
        };
        connection += 1;
        let Ok(aba) = TcpStream::connect(&aba_address).await else {
            continue;
        };
        let (mut aba_read, mut aba_write) = aba.into_split();
        let (mut lca_read, mut lca_write) = lca.into_split();
        let index = connection - 1;
        if let Ok(mut seen) = observed.lock() {
            seen.complete_last_seq.push(0);
            seen.aba_closed.push(false);
        }
        // The ABA's answers go back as they are; the task ends when the ABA hangs up.
        let to_lca = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut aba_read, &mut lca_write).await;
        });
        let observed_here = observed.clone();
        let to_aba = async move {
            let mut records = 0;
            while let Some(frame) = read_frame(&mut lca_read).await {
                let is_records = decode_frame_header(&frame)
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.frame_type == FrameType::Records);
                if is_records {
                    records += 1;
                    if attack == Attack::Truncate && records == 1 {
                        let _ = aba_write.write_all(&frame[..frame.len() / 2]).await;
                        let _ = aba_write.shutdown().await;
                        return;
                    }
                }
                if aba_write.write_all(&frame).await.is_err() {
                    return;
                }
                if is_records {
                    if let Ok(Some((_, Frame::Records(batch), _))) = decode_frame(&frame) {
                        if let Ok(mut seen) = observed_here.lock() {
                            seen.complete_last_seq[index] = batch.last_seq();
                        }
                    }
                    if attack == Attack::Replay && records == 1 {
                        let _ = aba_write.write_all(&frame).await;
                        // Keep our half open: only the ABA may end this connection.
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        if attack == Attack::PassThrough {
            tokio::spawn(to_aba);
            continue;
        }
        let sender = tokio::spawn(to_aba);
        let closed = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), to_lca)
            .await
            .is_ok();
        sender.abort();
        if let Ok(mut seen) = observed.lock() {
            seen.aba_closed[index] = closed;
        }
    }
}

#[test]
fn replayed_and_truncated_frames_are_refused_and_the_replica_stays_a_prefix() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = tempfile::tempdir().expect("tempdir");

    // The apply process.
    let (aba, apply_thread) = Aba::open(AbaConfig {
        server_name: "dr-b".into(),
        group: GROUP.into(),
        data_dir: root.path().join("dr-b"),
        volumes: specs(),
        capacities: capacities(),
        config_version: 0,
        retention_seconds: 3600,
        production: None,
    })
    .expect("open the ABA");
    let aba_listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let aba_address = aba_listener.local_addr().expect("address").to_string();
    let (stop_aba, aba_stopped) = watch::channel(false);
    runtime.spawn(aba.clone().serve(aba_listener, aba_stopped));

    // The proxy between the two.
    let proxy_listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let proxy_address = proxy_listener.local_addr().expect("address").to_string();
    let observed = Arc::new(Mutex::new(Observed::default()));
    let gate = Arc::new(Notify::new());
    runtime.spawn(proxy(
        proxy_listener,
        aba_address,
        observed.clone(),
        gate.clone(),
    ));

    // Production: the datatap's engine, its NBD export, a send process to the proxy.
    let production_dir = root.path().join("prod-a");
    let mut store =
        GroupStore::open_or_create(&production_dir, GROUP, capacities()).expect("store");
    let (engine, opened, commit_thread): (Engine, _, _) =
        Engine::open(&mut store, &specs(), EngineConfig::new(GROUP, 256 << 20)).expect("engine");
    let exports = Arc::new(Exports::new(
        opened
            .into_iter()
            .map(|volume| Export {
                name: volume.name,
                lv_id: volume.lv_id,
                volume: volume.volume,
                engine: engine.clone(),
                read_only: false,
                description: String::new(),
            })
            .collect(),
    ));
    let bound = runtime
        .block_on(bind(&Listen::Tcp("127.0.0.1:0".into())))
        .expect("bind NBD");
    let nbd_address = bound
        .uri("lv0")
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv0")
        .to_string();
    let (stop_nbd, nbd_stopped) = watch::channel(false);
    runtime.spawn(serve(bound, exports, nbd_stopped));
    let watermarks = engine.watermarks().clone();
    watermarks.shipped_seq.store(0, Ordering::Release);
    let status = Arc::new(TargetStatus::default());
    let targets = Arc::new(Targets {
        statuses: vec![status.clone()],
    });
    let (stop_lca, lca_stopped) = watch::channel(false);
    runtime.spawn(lca::run(
        LcaConfig {
            group: GROUP.into(),
            sender_name: "prod-a".into(),
            target_name: "dr-b".into(),
            target_address: proxy_address,
            config_version: 0,
            journal: engine.journal().clone(),
            compression_level: None,
            throttle_bytes_per_second: 0,
            // Small batches: many Records frames.
            batch_bytes: 8 << 10,
        },
        watermarks.clone(),
        status.clone(),
        targets,
        lca_stopped,
    ));

    // Writes, each flushed, while the proxy attacks the first two connections.
    let mut client = NbdClient::connect(&nbd_address, "lv0").expect("NBD connect");
    let mut image = vec![0u8; LV_BYTES as usize];
    let written = AtomicU64::new(0);
    let mut write = |round: u64, image: &mut Vec<u8>| {
        for index in 0..64u64 {
            let offset = ((round * 64 + index) * 4096 * 3) % LV_BYTES;
            let block: Vec<u8> = (0..4096u64)
                .map(|i| (i + round * 7 + index) as u8)
                .collect();
            assert_eq!(client.write(offset, &block, false).expect("write"), 0);
            image[offset as usize..offset as usize + 4096].copy_from_slice(&block);
            written.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(client.flush().expect("flush"), 0);
    };
    write(0, &mut image);
    let first_round = image.clone();
    wait_until("the ABA drops the connection that replayed a frame", || {
        observed
            .lock()
            .map(|seen| seen.aba_closed.first() == Some(&true))
            .unwrap_or(false)
    });
    let stored_before = observed.lock().expect("observed").complete_last_seq[0];
    assert!(stored_before > 0);
    // New writes reach the ABA on the next connection only as half a frame.
    write(1, &mut image);
    wait_until(
        "the ABA drops the connection that ended inside a frame",
        || {
            observed
                .lock()
                .map(|seen| seen.aba_closed.get(1) == Some(&true))
                .unwrap_or(false)
        },
    );
    assert_eq!(observed.lock().expect("observed").complete_last_seq[1], 0);
    // Nothing of the partial frame was stored or applied, and nothing twice: the ABA holds
    // exactly the batch it received whole.
    wait_until("the apply thread to catch up", || {
        aba.status().applied_seq.load(Ordering::Acquire)
            == aba.status().durable_seq.load(Ordering::Acquire)
    });
    assert_eq!(
        aba.status().durable_seq.load(Ordering::Acquire),
        stored_before,
        "the ABA stored records of a truncated frame"
    );
    let replica_path = root.path().join("dr-b/groups/erp/replication/lv0");
    let replica = std::fs::read(&replica_path).expect("replica");
    // The replica is production as of the last whole batch: exactly the first round.
    assert!(
        replica == first_round,
        "the replica is not production as of the last whole batch"
    );

    // Then the connection is clean again: replication resumes and converges.
    gate.notify_one();
    write(2, &mut image);
    wait_until("the replica converges after the attacks", || {
        std::fs::read(&replica_path).is_ok_and(|bytes| bytes == image)
    });
    assert!(aba.status().connections.load(Ordering::Relaxed) >= 3);

    client.disconnect().expect("disconnect");
    let _ = stop_lca.send(true);
    let _ = stop_nbd.send(true);
    let _ = stop_aba.send(true);
    drop(aba);
    drop(engine);
    let _ = commit_thread.join();
    let _ = apply_thread.join();
}
