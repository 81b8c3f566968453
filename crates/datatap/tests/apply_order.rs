//! Large writes reach the LVs several at a time (`Committer::apply_parallel_run`): the LVs
//! must still end up as the journal's order says, overlapping writes included. Writer threads
//! submit 256 KiB..1 MiB writes at random offsets (they overlap all the time) with some FUA
//! and FLUSH among them; the LVs are compared with the image rebuilt from the acknowledged
//! writes in seq order, and the journal's records are compared with the writes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::MemoryVolume;

use redoubt_datatap::{BlockVolume, Engine, EngineConfig, Op, Payload};
use redoubt_journal::StdFs;

const LV_BYTES: u64 = 16 << 20;
const WRITERS: u64 = 3;
const WRITES_PER_WRITER: u64 = 120;

struct Write {
    seq: u64,
    lv_id: u32,
    offset_bytes: u64,
    data: Vec<u8>,
}

fn start_engine(
    dir: &Path,
) -> (
    Engine,
    std::thread::JoinHandle<()>,
    BTreeMap<u32, Arc<MemoryVolume>>,
) {
    let mut memories = BTreeMap::new();
    let volumes: Vec<(String, Arc<dyn BlockVolume>)> = ["a", "b"]
        .iter()
        .map(|name| {
            let memory = Arc::new(MemoryVolume::zeroed(LV_BYTES, Duration::ZERO));
            memories.insert(redoubt_journal::lv_id_for_name(name), memory.clone());
            let volume: Arc<dyn BlockVolume> = memory;
            (name.to_string(), volume)
        })
        .collect();
    let (engine, _opened, thread) = Engine::start(
        StdFs,
        &dir.join("group"),
        &dir.join("journal"),
        volumes,
        EngineConfig::new("g", 1 << 30),
    )
    .unwrap();
    (engine, thread, memories)
}

#[test]
fn overlapping_large_writes_reach_the_lvs_in_journal_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, commit_thread, memories) = start_engine(dir.path());
    let lv_ids: Vec<u32> = memories.keys().copied().collect();
    let log: Arc<Mutex<Vec<Write>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let engine = engine.clone();
            let log = log.clone();
            let lv_ids = lv_ids.clone();
            std::thread::spawn(move || {
                let mut state = 0x2545_f491_4f6c_dd1du64 ^ (writer + 1);
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for index in 0..WRITES_PER_WRITER {
                    let lv_id = lv_ids[(next() % lv_ids.len() as u64) as usize];
                    let length = (256 << 10) * (1 + next() % 4);
                    let offset = 4096 * (next() % ((LV_BYTES - length) / 4096 + 1));
                    // Every write distinct, so a lost or reordered one shows.
                    let stamp = (writer << 48) | (index << 8);
                    let data: Vec<u8> = (0..length)
                        .map(|position| ((stamp ^ position.wrapping_mul(0x9e37)) % 251) as u8)
                        .collect();
                    let mut payload = Payload::for_filling(data.len());
                    payload.as_mut_slice().copy_from_slice(&data);
                    let seq = engine
                        .submit_blocking(Op::Write {
                            lv_id,
                            offset_bytes: offset,
                            data: payload,
                            fua: next() % 16 == 0,
                        })
                        .unwrap();
                    log.lock().unwrap().push(Write {
                        seq,
                        lv_id,
                        offset_bytes: offset,
                        data,
                    });
                    if next() % 32 == 0 {
                        engine.submit_blocking(Op::Flush).unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    // Everything acknowledged reaches the LVs.
    engine.submit_blocking(Op::Checkpoint).unwrap();

    let mut log = log.lock().unwrap();
    log.sort_by_key(|write| write.seq);
    assert_eq!(log.len() as u64, WRITERS * WRITES_PER_WRITER);
    let mut images: BTreeMap<u32, Vec<u8>> = lv_ids
        .iter()
        .map(|lv_id| (*lv_id, vec![0u8; LV_BYTES as usize]))
        .collect();
    for write in log.iter() {
        let start = write.offset_bytes as usize;
        images.get_mut(&write.lv_id).unwrap()[start..start + write.data.len()]
            .copy_from_slice(&write.data);
    }
    for (lv_id, image) in &images {
        let lv = memories[lv_id].data.lock().unwrap();
        if let Some(offset) = lv.iter().zip(image.iter()).position(|(a, b)| a != b) {
            let last_writer = log
                .iter()
                .rev()
                .find(|write| {
                    write.lv_id == *lv_id
                        && (write.offset_bytes..write.offset_bytes + write.data.len() as u64)
                            .contains(&(offset as u64))
                })
                .map(|write| write.seq);
            panic!(
                "LV {lv_id} differs from the journal's order at byte {offset}: the last write there is seq {last_writer:?}"
            );
        }
    }
    drop(engine);
    commit_thread.join().unwrap();
}
