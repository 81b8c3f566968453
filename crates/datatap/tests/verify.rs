//! Online verify on the engine: while writer threads keep writing, a verify session hashes
//! the LVs as of exactly one seq. The expected image is rebuilt from the writes the engine
//! acknowledged with seq ≤ S, and every region hash must match it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redoubt_datatap::verify::{hash_region, VerifyError};
use redoubt_datatap::{BlockVolume, Engine, EngineConfig, Op, Payload};
use redoubt_journal::StdFs;

use common::MemoryVolume;

const LV_BYTES: u64 = 4 << 20;
const REGION_BYTES: u64 = 64 << 10;

struct Write {
    seq: u64,
    lv: String,
    offset_bytes: u64,
    data: Vec<u8>,
}

fn start_engine(dir: &Path) -> (Engine, std::thread::JoinHandle<()>) {
    let volumes: Vec<(String, Arc<dyn BlockVolume>)> = ["a", "b"]
        .iter()
        .map(|name| {
            // Reads take a little device time, so that the hasher is still busy while records
            // after the verify point arrive (the copy-before-write path must run).
            let volume: Arc<dyn BlockVolume> =
                Arc::new(MemoryVolume::zeroed(LV_BYTES, Duration::from_millis(2)));
            (name.to_string(), volume)
        })
        .collect();
    let mut config = EngineConfig::new("g", 64 << 20);
    config.sync_interval_ms = 2;
    let (engine, _opened, thread) = Engine::start(
        StdFs,
        &dir.join("group"),
        &dir.join("journal"),
        volumes,
        config,
    )
    .unwrap();
    (engine, thread)
}

/// Verifies repeated until a write reached a region the background pass had not hashed yet.
const VERIFY_ATTEMPTS_MAX: usize = 20;

#[test]
fn verify_hashes_the_image_at_one_seq_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, commit_thread) = start_engine(dir.path());
    let names: BTreeMap<u32, String> = engine
        .verify_hook()
        .volumes()
        .iter()
        .map(|volume| (volume.lv_id, volume.name.clone()))
        .collect();
    let lv_ids: Vec<u32> = names.keys().copied().collect();
    let log: Arc<Mutex<Vec<Write>>> = Arc::new(Mutex::new(Vec::new()));
    // Every attempt checks every hash against the image; the copy-before-write hook must
    // have run in at least one (on a busy machine the background pass may win a race).
    let mut exercised = false;
    for _attempt in 0..VERIFY_ATTEMPTS_MAX {
        let stop = Arc::new(AtomicBool::new(false));
        exercised = {
            // Two writers: 4 KiB..64 KiB writes at random 4 KiB-aligned offsets of both LVs.
            let writers: Vec<_> = (0..2u64)
                .map(|writer| {
                    let engine = engine.clone();
                    let log = log.clone();
                    let stop = stop.clone();
                    let names = names.clone();
                    let lv_ids = lv_ids.clone();
                    std::thread::spawn(move || {
                        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (writer + 1);
                        let mut next = move || {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            state
                        };
                        let mut count = 0u64;
                        while !stop.load(Ordering::Acquire) {
                            let lv_id = lv_ids[(next() % lv_ids.len() as u64) as usize];
                            let length = 4096 * (1 + next() % 16);
                            let offset = 4096 * (next() % ((LV_BYTES - length) / 4096 + 1));
                            let fill = (next() % 255 + 1) as u8;
                            let data = vec![fill; length as usize];
                            let mut payload = Payload::for_filling(data.len());
                            payload.as_mut_slice().copy_from_slice(&data);
                            let seq = engine
                                .submit_blocking(Op::Write {
                                    lv_id,
                                    offset_bytes: offset,
                                    data: payload,
                                    fua: false,
                                })
                                .unwrap();
                            log.lock().unwrap().push(Write {
                                seq,
                                lv: names[&lv_id].clone(),
                                offset_bytes: offset,
                                data,
                            });
                            count += 1;
                        }
                        count
                    })
                })
                .collect();

            // Let some history build up, then verify at production's durable seq.
            let deadline = Instant::now() + Duration::from_secs(20);
            let history_floor = engine.watermarks().durable_seq.load(Ordering::Acquire) + 200;
            while engine.watermarks().durable_seq.load(Ordering::Acquire) < history_floor {
                assert!(Instant::now() < deadline, "the writers made no progress");
                std::thread::yield_now();
            }
            let durable = engine.watermarks().durable_seq.load(Ordering::Acquire);
            let session = engine
                .verify_hook()
                .start(None, |applied| applied.max(durable), REGION_BYTES, 30_000)
                .unwrap();
            let seq = session.seq;
            assert!(seq >= durable);
            // A second verify while one runs is refused; one at a seq already applied too.
            assert!(matches!(
                engine
                    .verify_hook()
                    .start(Some(seq + 10), |a| a, REGION_BYTES, 1000),
                Err(VerifyError::Busy { .. })
            ));
            while !session.is_done() {
                assert!(Instant::now() < deadline, "the verify did not finish");
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Release);
            let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
            let result = session.result().unwrap().unwrap();

            // The image at `seq`, rebuilt from the acknowledged writes in seq order.
            // Every attempt's writes stay in the log: the image at a later point needs them all.
            let mut log = log.lock().unwrap();
            log.sort_by_key(|write| write.seq);
            assert!(
                log.last().unwrap().seq > seq,
                "writes went on past the verify point ({written} writes, point {seq})"
            );
            let mut images: BTreeMap<String, Vec<u8>> = names
                .values()
                .map(|name| (name.clone(), vec![0u8; LV_BYTES as usize]))
                .collect();
            for write in log.iter().filter(|write| write.seq <= seq) {
                let image = images.get_mut(&write.lv).unwrap();
                let start = write.offset_bytes as usize;
                image[start..start + write.data.len()].copy_from_slice(&write.data);
            }
            assert_eq!(result.len(), 2);
            for lv in &result {
                let image = &images[&lv.name];
                for (region, hash) in lv.hashes.iter().enumerate() {
                    let start = region * REGION_BYTES as usize;
                    let expected = hash_region(&image[start..start + REGION_BYTES as usize]);
                    assert_eq!(
                        *hash, expected,
                        "{} region {region} is not the image at seq {seq}",
                        lv.name
                    );
                }
            }
            // Whether the copy-before-write path ran: writes after the point reached unhashed
            // regions (scheduling decides; the caller repeats until it did).
            session.regions_hashed_before_write.load(Ordering::Relaxed) > 0
        };
        if exercised {
            break;
        }
    }
    assert!(
        exercised,
        "no region was hashed before a write in {VERIFY_ATTEMPTS_MAX} verifies: the hook never ran"
    );
    // A new verify may not start at a seq already applied.
    let applied = engine.verify_hook().applied_seq();
    assert!(matches!(
        engine
            .verify_hook()
            .start(Some(applied - 1), |a| a, REGION_BYTES, 1000),
        Err(VerifyError::PastSeq { .. })
    ));
    drop(engine);
    commit_thread.join().unwrap();
}
