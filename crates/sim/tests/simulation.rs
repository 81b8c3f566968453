//! The simulation's CI entry points: many seeds, one replayable seed, and proof that a
//! deliberate bug is caught.

use redoubt_sim::{run, Bug, Invariant, SimOptions, SimReport};

/// Seeds per CI run: 1000 in release builds, fewer in (much slower) debug builds.
const SEEDS: u64 = if cfg!(debug_assertions) { 100 } else { 1000 };
/// Replayed by `replay_one` when `REDOUBT_SIM_SEED` is not set.
const DEFAULT_REPLAY_SEED: u64 = 0xD1CE;

fn run_or_panic(seed: u64) -> SimReport {
    match run(&SimOptions::new(seed)) {
        Ok(report) => report,
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn many_seeds() {
    let mut total = SimReport::default();
    for seed in 0..SEEDS {
        let report = run(&SimOptions::new(seed)).unwrap_or_else(|failure| {
            panic!("seed={seed} failed: {failure}");
        });
        assert_eq!(
            report.applied_seq, report.production_durable_seq,
            "seed={seed}: converged"
        );
        total.writes_durable += report.writes_durable;
        total.resets += report.resets;
        total.faulty_frames_rejected += report.faulty_frames_rejected;
        total.corruptions_injected += report.corruptions_injected;
        total.replays_injected += report.replays_injected;
        total.production_crashes += report.production_crashes;
        total.receiver_crashes += report.receiver_crashes;
        total.resumes_with_data += report.resumes_with_data;
        total.compressed_batches_sent += report.compressed_batches_sent;
        total.batches_sent += report.batches_sent;
        total.image_checks += report.image_checks;
    }
    println!("{SEEDS} seeds: {total:?}");
    // The faults really happened, and were really rejected.
    assert!(total.writes_durable > SEEDS * 20, "{total:?}");
    assert!(
        total.corruptions_injected > 0 && total.replays_injected > 0,
        "{total:?}"
    );
    assert!(total.faulty_frames_rejected > SEEDS / 4, "{total:?}");
    assert!(total.production_crashes > SEEDS / 2, "{total:?}");
    assert!(total.receiver_crashes > SEEDS / 2, "{total:?}");
    assert!(total.resumes_with_data > SEEDS, "{total:?}");
    assert!(total.batches_sent > SEEDS * 10, "{total:?}");
}

#[test]
fn replay_one() {
    let seed = match std::env::var("REDOUBT_SIM_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|error| panic!("REDOUBT_SIM_SEED={text:?}: {error}"))
        }
        Err(_) => DEFAULT_REPLAY_SEED,
    };
    let report = run_or_panic(seed);
    println!("seed={seed}: {report:?}");
    assert!(report.production_durable_seq > 0, "seed={seed}: {report:?}");
    assert_eq!(report.applied_seq, report.production_durable_seq);
    // Determinism: the same seed runs the same simulation.
    assert_eq!(
        run_or_panic(seed),
        report,
        "seed={seed} is not deterministic"
    );
}

/// Runs seeds with `bug` until one fails; returns the failure's invariant.
fn first_failure(bug: Bug) -> (u64, Invariant, String) {
    for seed in 0..200 {
        let options = SimOptions {
            bug: Some(bug),
            ..SimOptions::new(seed)
        };
        if let Err(failure) = run(&options) {
            assert_eq!(failure.seed, seed);
            let message = failure.to_string();
            assert!(message.contains(&format!("seed={seed} ")), "{message}");
            assert!(message.contains("REDOUBT_SIM_SEED="), "{message}");
            // The same seed passes without the bug: the bug, not the harness, failed it.
            if let Err(clean) = run(&SimOptions::new(seed)) {
                panic!("seed={seed} fails even without {bug:?}: {clean}");
            }
            println!("{bug:?}: {message}");
            return (seed, failure.invariant, message);
        }
    }
    panic!("{bug:?} was never detected in 200 seeds");
}

#[test]
fn a_bug_is_caught() {
    let (_, invariant, message) = first_failure(Bug::ApplyReversed);
    assert_eq!(invariant, Invariant::ApplyOrder, "{message}");
    assert!(message.contains("invariant=apply-order"), "{message}");

    let (_, invariant, message) = first_failure(Bug::ResumeSkipsSeq);
    assert_eq!(invariant, Invariant::Resume, "{message}");
    assert!(message.contains("invariant=resume"), "{message}");

    let (_, invariant, message) = first_failure(Bug::CheckpointAhead);
    assert_eq!(invariant, Invariant::ReplicaEqualsProduction, "{message}");
    assert!(
        message.contains("invariant=replica-equals-production"),
        "{message}"
    );
}
