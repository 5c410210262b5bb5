//! `sim`: run the deterministic simulator over many seeds (a campaign), or
//! replay one.
//!
//! ```text
//! cargo run -p zongheng-sim --release --bin sim -- --seeds 1000 --minutes 10
//! cargo run -p zongheng-sim --release --bin sim -- --seed 4711 --minutes 10 --verbose
//! ```
//!
//! A campaign runs seeds `first..first+seeds` one after the other (each run
//! is single-threaded; `--jobs` runs several at once on separate threads),
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
    /// Count terms with two leaders instead of failing the seed (openraft's
    /// default leader ids allow them; see `Monitor::tolerate_shared_terms`).
    #[arg(long)]
    tolerate_shared_terms: bool,
    /// With --seed: print the nemesis and checker trace.
    #[arg(long)]
    verbose: bool,
    /// With --seed: also save the report when the seed passes.
    #[arg(long)]
    save: bool,
}

impl Args {
    fn options(&self, seed: u64) -> RunOptions {
        let fault_seconds = (self.minutes * 60.0).round().max(1.0) as u64;
        let mut options = RunOptions::new(seed, fault_seconds);
        options.workload.clients = self.clients;
        options.workload.keys = self.keys;
        options.workload.think_time_max = Duration::from_millis(self.think_ms);
        options.nodes = self.nodes;
        options.tolerate_shared_terms = self.tolerate_shared_terms;
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

    fn replay_command(&self, seed: u64) -> String {
        let mut command = format!(
            "cargo run -p zongheng-sim --release --bin sim -- --seed {seed} --minutes {}",
            self.minutes
        );
        if self.clients != 4 {
            command.push_str(&format!(" --clients {}", self.clients));
        }
        if self.keys != 5 {
            command.push_str(&format!(" --keys {}", self.keys));
        }
        if self.think_ms != 40 {
            command.push_str(&format!(" --think-ms {}", self.think_ms));
        }
        if self.nodes != 3 {
            command.push_str(&format!(" --nodes {}", self.nodes));
        }
        if self.tolerate_shared_terms {
            command.push_str(" --tolerate-shared-terms");
        }
        if self.faults != "all" {
            command.push_str(&format!(" --faults {}", self.faults));
        }
        if let Some(gap) = self.gap_max_ms {
            command.push_str(&format!(" --gap-max-ms {gap}"));
        }
        command
    }
}

/// Log lines stamped with simulated time (milliseconds since the start).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{:>9.3}s", elapsed.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn report_failure(args: &Args, report: &RunReport) {
    let seed = report.options.seed;
    println!("FAILED seed {seed}");
    println!("  replay: {}", args.replay_command(seed));
    for line in report.failures() {
        println!("  {line}");
    }
    match report.save(&args.failures_dir) {
        Ok(path) => println!("  report: {}", path.display()),
        Err(error) => println!("  could not save the report: {error}"),
    }
}

fn replay(args: &Args, seed: u64) -> bool {
    let report = run(&args.options(seed));
    if args.verbose {
        for event in &report.trace {
            println!("{event}");
        }
    }
    println!("{}", report.summary());
    if report.passed() {
        if args.save {
            match report.save(&args.failures_dir) {
                Ok(path) => println!("report: {}", path.display()),
                Err(error) => println!("could not save the report: {error}"),
            }
        }
        true
    } else {
        report_failure(args, &report);
        false
    }
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
    init_logging();
    let args = Args::parse();
    // A panic inside a run is reported as that run's failure; keep its
    // message short (no backtrace) and on stderr.
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
        "campaign: seeds {}..{}, {} simulated min of faults each, {} clients, {} nodes, {} job(s)",
        args.first, end, args.minutes, args.clients, args.nodes, args.jobs
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
                let report = run(&args.options(seed));
                let mut totals = totals.lock().expect("totals lock poisoned");
                totals.seeds += 1;
                totals.operations += report.history.operations.len() as u64;
                totals.unknown += report.stats.unknown;
                totals.simulated_ms += report.simulated_ms;
                totals.entries_checked += report.entries_checked;
                totals.shared_terms += report.shared_terms as u64;
                if !report.passed() {
                    totals.failed.push(seed);
                    let mut broken: Vec<String> =
                        report.violations.iter().map(|violation| violation.invariant.to_string()).collect();
                    if report.linearizability.is_failure() {
                        broken.push("linearizable history".into());
                    }
                    broken.sort();
                    broken.dedup();
                    for invariant in broken {
                        *totals.by_invariant.entry(invariant).or_default() += 1;
                    }
                    report_failure(&args, &report);
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
