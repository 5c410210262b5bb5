//! `sim`: run the deterministic simulator over many seeds (a campaign), or
//! replay one.
//!
//! ```text
//! cargo run -p zongheng-sim --release --bin sim -- --seeds 1000 --minutes 10
//! cargo run -p zongheng-sim --release --bin sim -- --seed 4711 --minutes 10 --verbose
//! cargo run -p zongheng-sim --release --bin sim -- --workload coordination --seeds 1000
//! ```
//!
//! `--workload kv` (the default) runs the KV clients checked for
//! linearizability; `--workload coordination` runs the lock, election, watch
//! and lease clients of `zongheng_sim::coordination` instead (the KV client
//! options do not apply to it).
//!
//! A campaign runs seeds `first..first+seeds`, each in a child process (see
//! `--in-process`), one after the other (`--jobs` runs several at once),
//! prints a progress line every `--progress-every` seeds and, for each failing
//! seed, the command that replays it, what failed, and where its report (the
//! options, the nemesis schedule, every violation, the history as JSON and
//! the traces) was saved. The exit status is 1 if any seed failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use zongheng_sim::{run, RunOptions, RunReport};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation campaigns for zongheng's meta store")]
struct Args {
    /// What the clients do: `kv` or `coordination`.
    #[arg(long, default_value = "kv", value_parser = ["kv", "coordination"])]
    workload: String,
    /// Replay this one seed (overrides --seeds and --first).
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds a campaign runs.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a campaign.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Simulated minutes of faults per seed (recovery and checks come after).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Concurrent clients per run.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Longest pause of a client between two operations, in milliseconds.
    #[arg(long, default_value_t = 40)]
    think_ms: u64,
    /// Initial voters.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seeds run at once, each on its own thread.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print a progress line every this many seeds.
    #[arg(long, default_value_t = 10)]
    progress_every: u64,
    /// Stop starting new seeds after this many wall-clock seconds.
    #[arg(long)]
    max_wall_seconds: Option<u64>,
    /// Where failing seeds' reports are saved.
    #[arg(long, default_value = "target/sim-failures")]
    failures_dir: PathBuf,
    /// Fault kinds the nemesis draws from: `all`, or a comma list of
    /// partitions, loss, latency, pauses, crashes, wipes, membership.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Longest quiet gap between two faults of a lane, in milliseconds.
    #[arg(long)]
    gap_max_ms: Option<u64>,
    /// With --seed: print the nemesis and checker trace.
    #[arg(long)]
    verbose: bool,
    /// With --seed: also save the report when the seed passes.
    #[arg(long)]
    save: bool,
    /// Run a campaign's seeds in this process instead of one child process
    /// per seed. A panic in a simulated node's task makes tokio (built with
    /// `tokio_unstable`, as turmoil asks) shut the host's runtime down in a
    /// way that panics again and aborts the process; a child per seed turns
    /// that into one failing seed.
    #[arg(long)]
    in_process: bool,
    /// With --seed: print the outcome as one `OUTCOME {json}` line (what a
    /// campaign reads from its child processes).
    #[arg(long, hide = true)]
    outcome_line: bool,
}

impl Args {
    fn options(&self, seed: u64) -> RunOptions {
        let fault_seconds = (self.minutes * 60.0).round().max(1.0) as u64;
        let mut options = if self.workload == "coordination" {
            zongheng_sim::coordination::run_options(seed, fault_seconds)
        } else {
            let mut options = RunOptions::new(seed, fault_seconds);
            options.workload.clients = self.clients;
            options.workload.keys = self.keys;
            options.workload.think_time_max = Duration::from_millis(self.think_ms);
            options
        };
        options.nodes = self.nodes;
        if self.faults != "all" {
            let kinds: Vec<&str> = self.faults.split(',').map(str::trim).collect();
            let nemesis = &mut options.nemesis;
            nemesis.partitions = kinds.contains(&"partitions");
            nemesis.message_loss = kinds.contains(&"loss");
            nemesis.latency = kinds.contains(&"latency");
            nemesis.pauses = kinds.contains(&"pauses");
            nemesis.crashes = kinds.contains(&"crashes");
            nemesis.wipes = kinds.contains(&"wipes");
            nemesis.membership = kinds.contains(&"membership");
        }
        if let Some(gap) = self.gap_max_ms {
            options.nemesis.gap_max = Duration::from_millis(gap);
        }
        options
    }

    /// The options of a run as command-line arguments (without the seed).
    fn run_arguments(&self) -> Vec<String> {
        let mut arguments = vec!["--minutes".to_string(), self.minutes.to_string()];
        if self.workload != "kv" {
            arguments.extend(["--workload".into(), self.workload.clone()]);
        }
        if self.clients != 4 {
            arguments.extend(["--clients".into(), self.clients.to_string()]);
        }
        if self.keys != 5 {
            arguments.extend(["--keys".into(), self.keys.to_string()]);
        }
        if self.think_ms != 40 {
            arguments.extend(["--think-ms".into(), self.think_ms.to_string()]);
        }
        if self.nodes != 3 {
            arguments.extend(["--nodes".into(), self.nodes.to_string()]);
        }
        if self.faults != "all" {
            arguments.extend(["--faults".into(), self.faults.clone()]);
        }
        if let Some(gap) = self.gap_max_ms {
            arguments.extend(["--gap-max-ms".into(), gap.to_string()]);
        }
        arguments
    }

    fn replay_command(&self, seed: u64) -> String {
        format!(
            "cargo run -p zongheng-sim --release --bin sim -- --seed {seed} {}",
            self.run_arguments().join(" ")
        )
    }
}

/// What a campaign keeps of one seed's run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Outcome {
    seed: u64,
    passed: bool,
    operations: u64,
    unknown: u64,
    simulated_ms: u64,
    entries_checked: u64,
    shared_terms: u64,
    /// The invariants the run broke, each once.
    broken: Vec<String>,
    /// One line per violation.
    failures: Vec<String>,
    report: Option<String>,
}

impl Outcome {
    fn of(report: &RunReport, saved: Option<String>) -> Self {
        let mut broken: Vec<String> = report
            .violations
            .iter()
            .map(|violation| violation.invariant.to_string())
            .collect();
        if report.linearizability.is_failure() {
            broken.push(zongheng_sim::Invariant::NotLinearizable.to_string());
        }
        broken.sort();
        broken.dedup();
        Self {
            seed: report.options.seed,
            passed: report.passed(),
            operations: report.history.operations.len() as u64
                + report.coordination.as_ref().map_or(0, |stats| stats.operations()),
            unknown: report.stats.unknown,
            simulated_ms: report.simulated_ms,
            entries_checked: report.entries_checked,
            shared_terms: report.shared_terms as u64,
            broken,
            failures: report.failures(),
            report: saved,
        }
    }
}

/// Run `seed` here; save its report if it failed (or `save`).
fn run_here(args: &Args, seed: u64, save: bool) -> (RunReport, Outcome) {
    let report = run(&args.options(seed));
    let saved = (save || !report.passed()).then(|| match report.save(&args.failures_dir) {
        Ok(path) => path.display().to_string(),
        Err(error) => format!("(not saved: {error})"),
    });
    let outcome = Outcome::of(&report, saved);
    (report, outcome)
}

/// Run `seed` in a child process (see `--in-process`).
fn run_child(args: &Args, seed: u64) -> Outcome {
    let executable = std::env::current_exe().expect("the running executable has a path");
    let mut command = std::process::Command::new(executable);
    command
        .args(["--seed", &seed.to_string(), "--outcome-line", "--failures-dir"])
        .arg(&args.failures_dir)
        .args(args.run_arguments());
    let output = command.output().expect("a child process starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if let Some(line) = stdout.lines().rev().find_map(|line| line.strip_prefix("OUTCOME ")) {
        if let Ok(outcome) = serde_json::from_str::<Outcome>(line) {
            return outcome;
        }
    }
    // The child died without reporting: keep what it said.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::create_dir_all(&args.failures_dir);
    let log = args.failures_dir.join(format!("seed-{seed}.log"));
    let _ = std::fs::write(&log, format!("{stdout}\n--- stderr ---\n{stderr}"));
    let panics: Vec<String> = stderr
        .lines()
        .filter(|line| line.contains("panicked at"))
        .zip(stderr.lines().skip(1))
        .map(|(at, message)| format!("{at} {message}"))
        .take(3)
        .collect();
    Outcome {
        seed,
        passed: false,
        operations: 0,
        unknown: 0,
        simulated_ms: 0,
        entries_checked: 0,
        shared_terms: 0,
        broken: vec![zongheng_sim::Invariant::HostFailed.to_string()],
        failures: std::iter::once(format!("the run's process died ({})", output.status))
            .chain(panics)
            .collect(),
        report: Some(log.display().to_string()),
    }
}

fn print_failure(args: &Args, outcome: &Outcome) {
    println!("FAILED seed {}", outcome.seed);
    println!("  replay: {}", args.replay_command(outcome.seed));
    for line in &outcome.failures {
        println!("  {line}");
    }
    if let Some(report) = &outcome.report {
        println!("  report: {report}");
    }
}

fn replay(args: &Args, seed: u64) -> bool {
    let (report, outcome) = run_here(args, seed, args.save);
    if args.outcome_line {
        println!(
            "OUTCOME {}",
            serde_json::to_string(&outcome).expect("an outcome serializes")
        );
        return outcome.passed;
    }
    if args.verbose {
        for event in &report.trace {
            println!("{event}");
        }
    }
    println!("{}", report.summary());
    if outcome.passed {
        if let Some(path) = &outcome.report {
            println!("report: {path}");
        }
    } else {
        print_failure(args, &outcome);
    }
    outcome.passed
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    failed: Vec<u64>,
    operations: u64,
    unknown: u64,
    simulated_ms: u64,
    entries_checked: u64,
    shared_terms: u64,
    /// Failing seeds per broken invariant.
    by_invariant: std::collections::BTreeMap<String, u64>,
}

fn main() {
    zongheng_sim::logging::init_logging();
    let args = Args::parse();
    if let Some(seed) = args.seed {
        std::process::exit(if replay(&args, seed) { 0 } else { 1 });
    }

    let started = Instant::now();
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let totals = Mutex::new(Totals::default());
    let deadline = args
        .max_wall_seconds
        .map(|seconds| started + Duration::from_secs(seconds));
    println!(
        "campaign: {} workload, seeds {}..{}, {} simulated min of faults each, {} clients, {} nodes, {} job(s)",
        args.workload, args.first, end, args.minutes, args.clients, args.nodes, args.jobs
    );
    let args = Arc::new(args);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let outcome = if args.in_process {
                    run_here(&args, seed, false).1
                } else {
                    run_child(&args, seed)
                };
                let mut totals = totals.lock().expect("totals lock poisoned");
                totals.seeds += 1;
                totals.operations += outcome.operations;
                totals.unknown += outcome.unknown;
                totals.simulated_ms += outcome.simulated_ms;
                totals.entries_checked += outcome.entries_checked;
                totals.shared_terms += outcome.shared_terms;
                if !outcome.passed {
                    totals.failed.push(seed);
                    for invariant in &outcome.broken {
                        *totals.by_invariant.entry(invariant.clone()).or_default() += 1;
                    }
                    print_failure(&args, &outcome);
                }
                if totals.seeds % args.progress_every.max(1) == 0 {
                    println!(
                        "progress: {} seeds, {} failed, {} ops ({} unknown), {:.0} simulated min, {} entries checked, {:.0} s wall",
                        totals.seeds,
                        totals.failed.len(),
                        totals.operations,
                        totals.unknown,
                        totals.simulated_ms as f64 / 60_000.0,
                        totals.entries_checked,
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let mut totals = totals.into_inner().expect("totals lock poisoned");
    totals.failed.sort_unstable();
    for (invariant, seeds) in &totals.by_invariant {
        println!("  {seeds} seed(s) broke: {invariant}");
    }
    println!(
        "done: {} seeds, {} failed {:?}, {} operations checked ({} unknown), {:.1} simulated minutes, {} committed entries compared, {} terms with two leaders, {:.0} s wall",
        totals.seeds,
        totals.failed.len(),
        totals.failed,
        totals.operations,
        totals.unknown,
        totals.simulated_ms as f64 / 60_000.0,
        totals.entries_checked,
        totals.shared_terms,
        started.elapsed().as_secs_f64()
    );
    std::process::exit(if totals.failed.is_empty() { 0 } else { 1 });
}
