//! `bank`: run the data store's bank workload (`zongheng_sim::bank`) over
//! many seeds, or replay one.
//!
//! ```text
//! cargo run -p zongheng-sim --release --bin bank -- --seeds 1000 --jobs 2
//! cargo run -p zongheng-sim --release --bin bank -- --seed 17 --verbose
//! ```
//!
//! Each seed of a campaign runs in a child process (a panic inside a
//! simulated node's task can abort the whole process, see the `sim` binary),
//! `--jobs` at a time. A failing seed is printed with the command that
//! replays it. The exit status is 1 if any seed failed.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use zongheng_sim::bank::{run_bank, BankOptions, BankReport};
use zongheng_sim::Trace;

#[derive(Parser, Debug)]
#[command(about = "Bank-transfer campaigns against zongheng's data store in the simulator")]
struct Args {
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds a campaign runs.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a campaign.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Simulated seconds of faults per seed.
    #[arg(long, default_value_t = 30)]
    fault_seconds: u64,
    /// Seeds run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print a progress line every this many seeds.
    #[arg(long, default_value_t = 10)]
    progress_every: u64,
    /// With --seed: print the trace even when the seed passes.
    #[arg(long)]
    verbose: bool,
}

fn options(args: &Args, seed: u64) -> BankOptions {
    BankOptions::new(seed).with_fault_time(Duration::from_secs(args.fault_seconds))
}

/// One seed here; prints `OUTCOME ok committed refused unknown abandoned audits faults moves registers` or the failure.
fn replay(args: &Args, seed: u64) -> bool {
    let trace = Trace::default();
    match run_bank(&options(args, seed), &trace) {
        Ok(report) => {
            if args.verbose {
                for event in trace.events() {
                    println!("{event}");
                }
            }
            let BankReport {
                committed,
                refused,
                unknown,
                abandoned,
                audits,
                faults,
                moves,
                register_operations,
            } = report;
            println!(
                "OUTCOME ok {committed} {refused} {unknown} {abandoned} {audits} {faults} {moves} {register_operations}"
            );
            true
        }
        Err(error) => {
            for event in trace.events() {
                println!("{event}");
            }
            println!("OUTCOME failed {error}");
            false
        }
    }
}

#[derive(Default)]
struct Totals {
    done: u64,
    failed: Vec<(u64, String)>,
    counts: [u64; 8],
}

fn main() {
    let args = Args::parse();
    zongheng_sim::logging::init_logging();
    if let Some(seed) = args.seed {
        let passed = replay(&args, seed);
        std::process::exit(if passed { 0 } else { 1 });
    }
    let started = Instant::now();
    let end = args.first + args.seeds;
    println!(
        "bank campaign: seeds {}..{end}, {} simulated s of faults each, {} job(s)",
        args.first, args.fault_seconds, args.jobs
    );
    let next = Arc::new(AtomicU64::new(args.first));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let executable = std::env::current_exe().expect("the bank binary knows its path");
    let workers: Vec<_> = (0..args.jobs.max(1))
        .map(|_| {
            let (next, totals, executable) = (next.clone(), totals.clone(), executable.clone());
            let (fault_seconds, progress_every, seeds) = (args.fault_seconds, args.progress_every, args.seeds);
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let output = Command::new(&executable)
                    .args(["--seed", &seed.to_string(), "--fault-seconds", &fault_seconds.to_string()])
                    .output()
                    .expect("run one seed");
                let stdout = String::from_utf8_lossy(&output.stdout);
                let outcome = stdout.lines().rev().find(|line| line.starts_with("OUTCOME "));
                let mut totals = totals.lock().unwrap();
                totals.done += 1;
                match outcome.and_then(|line| line.strip_prefix("OUTCOME ok ")) {
                    Some(counts) if output.status.success() => {
                        for (slot, count) in totals.counts.iter_mut().zip(counts.split(' ')) {
                            *slot += count.parse::<u64>().unwrap_or(0);
                        }
                    }
                    _ => {
                        let why = outcome
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("no outcome ({})", output.status));
                        println!("seed {seed} FAILED: {why}");
                        println!("  replay: cargo run -p zongheng-sim --release --bin bank -- --seed {seed} --fault-seconds {fault_seconds}");
                        totals.failed.push((seed, why));
                    }
                }
                if totals.done % progress_every == 0 || totals.done == seeds {
                    let [committed, refused, unknown, abandoned, audits, faults, moves, registers] = totals.counts;
                    println!(
                        "progress: {} seeds, {} failed, {committed} committed, {refused} refused, {unknown} unknown, \
                         {abandoned} abandoned, {audits} audits, {faults} faults, {moves} replica-set changes, \
                         {registers} register operations checked, {} s wall",
                        totals.done,
                        totals.failed.len(),
                        started.elapsed().as_secs()
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a campaign worker panicked");
    }
    let totals = totals.lock().unwrap();
    if totals.failed.is_empty() {
        println!("campaign passed: {} seeds", totals.done);
    } else {
        println!("campaign FAILED: {} of {} seeds", totals.failed.len(), totals.done);
        std::process::exit(1);
    }
}
