//! The simulation tier of `cargo test`: a fixed set of seeds, each a full
//! run under the seeded nemesis (every fault kind), checked by every
//! invariant; and the proof that a seed replays byte for byte.
//!
//! `ZONGHENG_SIM_SEED=S` runs only seed `S` in `one_seed` (with its traces
//! printed), for replaying a failure found here; larger campaigns are the
//! `sim` binary's job (see `src/bin/sim.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use zongheng_sim::{run, RunOptions, RunReport};

/// Simulated seconds of faults per seed; recovery (20 s) and the final
/// checks come on top, so a run is about a simulated minute and a half.
const FAULT_SECONDS: u64 = 75;
/// The seed of the determinism test.
const REPLAY_SEED: u64 = 7;

/// The tier's runs: every fault kind, 4 clients pausing up to 100 ms between
/// operations (fewer operations than a campaign's 40 ms, to fit `cargo
/// test`'s debug build in its time budget).
fn options(seed: u64) -> RunOptions {
    let mut options = RunOptions::new(seed, FAULT_SECONDS);
    options.workload.think_time_max = Duration::from_millis(100);
    options
}

fn failures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sim-failures")
}

/// Run `seeds`, save the report of each failing one, and fail with every
/// failure and how to replay it.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut operations = 0;
    let mut simulated_ms = 0;
    let mut count = 0;
    for seed in seeds {
        let report = run(&options(seed));
        println!("{}", report.summary());
        count += 1;
        operations += report.history.operations.len();
        simulated_ms += report.simulated_ms;
        if !report.passed() {
            failures.push(describe_failure(&report));
        }
    }
    println!(
        "{count} seeds, {operations} operations, {:.1} simulated minutes, {:.1} s wall",
        simulated_ms as f64 / 60_000.0,
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn describe_failure(report: &RunReport) -> String {
    let seed = report.options.seed;
    let saved = match report.save(&failures_dir()) {
        Ok(path) => format!("report saved to {}", path.display()),
        Err(error) => format!("report not saved: {error}"),
    };
    format!(
        "seed {seed} failed ({saved}); replay with ZONGHENG_SIM_SEED={seed} cargo test -p zongheng-sim --test nemesis one_seed -- --nocapture\n  {}",
        report.failures().join("\n  ")
    )
}

// The fixed seeds, in groups the test harness runs in parallel.

#[test]
fn seeds_01_to_05() {
    run_seeds(1..=5);
}

#[test]
fn seeds_06_to_10() {
    run_seeds(6..=10);
}

#[test]
fn seeds_11_to_15() {
    run_seeds(11..=15);
}

#[test]
fn seeds_16_to_20() {
    run_seeds(16..=20);
}

/// Run `ZONGHENG_SIM_SEED` (or the replay seed) and print its traces.
#[test]
fn one_seed() {
    let seed = std::env::var("ZONGHENG_SIM_SEED")
        .ok()
        .map(|value| value.parse().expect("ZONGHENG_SIM_SEED is a u64"))
        .unwrap_or(REPLAY_SEED);
    let report = run(&options(seed));
    for event in &report.trace {
        println!("{event}");
    }
    println!("{}", report.summary());
    assert!(report.passed(), "{}", describe_failure(&report));
}

/// One full nemesis seed, run twice in this process: the histories (every
/// invocation and completion, to the simulated nanosecond), the nemesis and
/// checker traces, every node's Raft state changes, the violations and the
/// verdict must be identical, byte for byte as JSON.
#[test]
fn one_nemesis_seed_replays_byte_for_byte() {
    let first = run(&options(REPLAY_SEED));
    let second = run(&options(REPLAY_SEED));
    println!("{}\n{}", first.summary(), second.summary());
    for (what, mine, theirs) in [
        ("trace", &first.trace, &second.trace),
        ("raft trace", &first.raft_trace, &second.raft_trace),
    ] {
        if let Some(index) = (0..mine.len().max(theirs.len())).find(|&index| mine.get(index) != theirs.get(index)) {
            println!(
                "{what}s differ first at event {index}:\n  {:?}\n  {:?}",
                mine.get(index),
                theirs.get(index)
            );
        }
    }
    let json = |report: &RunReport| {
        serde_json::to_string(&(
            &report.history,
            &report.trace,
            &report.raft_trace,
            &report.violations,
            &report.linearizability,
            &report.schedule,
            report.simulated_ms,
        ))
        .expect("reports serialize")
    };
    let (first_json, second_json) = (json(&first), json(&second));
    println!(
        "{} operations, {} trace events, {} raft trace events, {} bytes of JSON",
        first.history.operations.len(),
        first.trace.len(),
        first.raft_trace.len(),
        first_json.len()
    );
    assert!(first.history.operations.len() > 500, "the run should do real work");
    assert!(!first.schedule.network.is_empty() && !first.schedule.nodes.is_empty());
    assert!(first_json == second_json, "two runs of seed {REPLAY_SEED} differ");
}
