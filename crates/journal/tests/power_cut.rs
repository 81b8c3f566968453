//! Power-cut simulation: random appends, syncs, seals and prunes, a machine crash at a random
//! I/O call, a power cut that tears unsynced data, then recovery. Whatever a returned `sync`
//! covered must survive intact; the log must be a gap-free prefix of what was appended.

use std::path::PathBuf;

use redoubt_journal::{
    Entry, GroupId, Journal, JournalConfig, JournalError, OwnedRecord, PowerCut, RecordKind, SimFs,
    SimRng,
};

const SEEDS: u64 = 200;

fn config(rng: &mut SimRng) -> JournalConfig {
    JournalConfig {
        segment_size_bytes: 4096 + rng.below_or_equal(4096),
        write_buffer_bytes: rng.below_or_equal(2048),
        ..JournalConfig::new(GroupId([9; 16]), 1 << 30)
    }
}

/// The record the model expects for `seq`: a function of the seq so both sides agree.
fn expected(seq: u64) -> (RecordKind, Vec<u8>) {
    match seq % 7 {
        0 => (RecordKind::Trim, Vec::new()),
        1 => (RecordKind::Marker, format!("marker-{seq}").into_bytes()),
        _ => {
            let length = 1 + (seq.wrapping_mul(2_654_435_761) % 900) as usize;
            (
                RecordKind::Write,
                (0..length).map(|i| (seq as usize ^ i) as u8).collect(),
            )
        }
    }
}

fn append_expected(journal: &mut Journal<SimFs>) -> Result<u64, JournalError> {
    let seq = journal.appended_seq() + 1;
    let (kind, payload) = expected(seq);
    let entry = match kind {
        RecordKind::Trim => Entry::trim(1, seq * 4096, 4096, seq),
        RecordKind::Marker => Entry::marker(std::str::from_utf8(&payload).unwrap_or("m"), seq),
        _ => Entry::write(2, seq * 4096, &payload, seq),
    };
    journal.append(&entry)
}

fn check_record(record: &OwnedRecord, seq: u64) {
    let (kind, payload) = expected(seq);
    assert_eq!(record.header.seq, seq);
    assert_eq!(record.header.kind, kind, "kind of seq {seq}");
    assert_eq!(record.header.timestamp_ns, seq);
    assert_eq!(record.payload, payload, "payload of seq {seq}");
}

struct Outcome {
    durable_acked: u64,
    appended: u64,
    /// Highest seq any prune was asked for; nothing above it may be gone.
    pruned_through: u64,
}

/// Run a random workload until it ends or the simulated machine crashes.
fn workload(fs: &SimFs, rng: &mut SimRng, config: &JournalConfig) -> Outcome {
    let mut journal = Journal::open(fs.clone(), dir(), config.clone()).unwrap();
    let mut outcome = Outcome {
        durable_acked: 0,
        appended: 0,
        pruned_through: 0,
    };
    fs.crash_after(rng.below_or_equal(400));
    let steps = rng.below_or_equal(300);
    for _ in 0..steps {
        let result = match rng.below_or_equal(15) {
            0..=10 => append_expected(&mut journal).map(|seq| outcome.appended = seq),
            11..=12 => journal.sync().map(|seq| outcome.durable_acked = seq),
            13 => journal.seal().map(|_| ()),
            _ => {
                let through = rng.below_or_equal(journal.durable_seq());
                // Counted before the call: a crash mid-prune may still have removed some.
                outcome.pruned_through = outcome.pruned_through.max(through);
                journal.prune_through(through).map(|_| ())
            }
        };
        if result.is_err() {
            break;
        }
        // Sealing makes records durable too; the watermark is what a caller may rely on.
        outcome.durable_acked = outcome.durable_acked.max(journal.durable_seq());
    }
    outcome
}

fn dir() -> PathBuf {
    PathBuf::from("/lfc/rg")
}

#[test]
fn synced_records_survive_any_power_cut() {
    let mut seeds_with_durable_records = 0;
    let mut seeds_keeping_unsynced_tail = 0;
    let mut seeds_losing_unsynced_tail = 0;
    let mut seeds_with_sealed_segments = 0;
    for seed in 0..SEEDS {
        let mut rng = SimRng::new(seed);
        let fs = SimFs::new();
        let config = config(&mut rng);
        let outcome = workload(&fs, &mut rng, &config);
        let cut = if rng.one_in(4) {
            PowerCut::DropUnsynced
        } else {
            PowerCut::TearUnsynced { seed }
        };
        fs.power_cut(cut);

        let mut journal = Journal::open(fs.clone(), dir(), config.clone())
            .unwrap_or_else(|error| panic!("seed {seed}: recovery failed: {error}"));
        let recovered = journal.appended_seq();
        assert!(
            recovered >= outcome.durable_acked,
            "seed {seed}: lost synced records"
        );
        assert!(
            recovered <= outcome.appended,
            "seed {seed}: invented records"
        );
        assert_eq!(
            journal.durable_seq(),
            recovered,
            "seed {seed}: recovery makes all durable"
        );
        seeds_with_durable_records += u64::from(outcome.durable_acked > 0);
        seeds_keeping_unsynced_tail += u64::from(recovered > outcome.durable_acked);
        seeds_losing_unsynced_tail += u64::from(recovered < outcome.appended);
        seeds_with_sealed_segments += u64::from(journal.sealed_segments().len() > 0);
        let first = journal.first_seq().unwrap_or(recovered + 1);
        assert!(
            first <= outcome.pruned_through + 1 || recovered < first,
            "seed {seed}"
        );
        let records = journal
            .read_from(first)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|error| panic!("seed {seed}: read failed: {error}"));
        assert_eq!(
            records.len() as u64,
            recovered + 1 - first,
            "seed {seed}: gap-free"
        );
        for (record, seq) in records.iter().zip(first..) {
            check_record(record, seq);
        }

        // The sequence resumes right after the recovered tail, and survives another reopen.
        let seq = append_expected(&mut journal).unwrap();
        assert_eq!(seq, recovered + 1, "seed {seed}");
        assert_eq!(journal.sync().unwrap(), seq);
        drop(journal);
        fs.power_cut(PowerCut::DropUnsynced);
        let journal = Journal::open(fs, dir(), config).unwrap();
        assert_eq!(journal.appended_seq(), seq, "seed {seed}: second recovery");
    }
    // The workload must actually reach the interesting cases, or the test proves nothing.
    assert!(
        seeds_with_durable_records > SEEDS / 4,
        "{seeds_with_durable_records}"
    );
    assert!(
        seeds_keeping_unsynced_tail > 0,
        "torn cuts keep some unsynced records"
    );
    assert!(
        seeds_losing_unsynced_tail > SEEDS / 4,
        "{seeds_losing_unsynced_tail}"
    );
    assert!(
        seeds_with_sealed_segments > SEEDS / 4,
        "{seeds_with_sealed_segments}"
    );
}
