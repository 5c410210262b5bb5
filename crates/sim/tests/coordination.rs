//! The coordination tier of `cargo test`: lock, election, watch and lease
//! clients under the seeded nemesis (every fault kind), over a fixed set of
//! seeds, checked by the coordination invariants (see
//! `zongheng_sim::coordination`); and the proof that a seed replays byte for
//! byte.
//!
//! `ZONGHENG_SIM_SEED=S` runs only seed `S` in `one_seed` (with its traces
//! printed); campaigns are the `sim` binary's job:
//! `cargo run -p zongheng-sim --release --bin sim -- --workload coordination --seeds N`.

use std::path::PathBuf;
use std::time::Instant;

use zongheng_sim::coordination::run_options;
use zongheng_sim::{run, RunOptions, RunReport};

/// Simulated seconds of faults per seed; recovery (20 s) and the final
/// checks (expiry, sentinel, histories) come on top.
const FAULT_SECONDS: u64 = 40;
/// The seed of the determinism test.
const REPLAY_SEED: u64 = 3;

fn options(seed: u64) -> RunOptions {
    run_options(seed, FAULT_SECONDS)
}

fn failures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sim-failures/coordination")
}

fn describe_failure(report: &RunReport) -> String {
    let seed = report.options.seed;
    let saved = match report.save(&failures_dir()) {
        Ok(path) => format!("report saved to {}", path.display()),
        Err(error) => format!("report not saved: {error}"),
    };
    format!(
        "seed {seed} failed ({saved}); replay with ZONGHENG_SIM_SEED={seed} cargo test -p zongheng-sim --test coordination one_seed -- --nocapture\n  {}",
        report.failures().join("\n  ")
    )
}

/// Run `seeds` and fail with every failure and how to replay it.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut simulated_ms = 0;
    let mut count = 0;
    for seed in seeds {
        let report = run(&options(seed));
        println!("{}", report.summary());
        count += 1;
        simulated_ms += report.simulated_ms;
        if !report.passed() {
            failures.push(describe_failure(&report));
        }
    }
    println!(
        "{count} seeds, {:.1} simulated minutes, {:.1} s wall",
        simulated_ms as f64 / 60_000.0,
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeds_01_to_02() {
    run_seeds(1..=2);
}

#[test]
fn seeds_04_to_05() {
    run_seeds(4..=5);
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
