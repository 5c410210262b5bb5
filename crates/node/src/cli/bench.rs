//! `zongheng bench`: a load generator for the etcd v3 gRPC API, so one binary
//! measures either etcd or zongheng, on a laptop or against a user's cluster.
//!
//! ## What it does
//! Scenarios follow etcd's own `benchmark` tool so figures can be put side by
//! side with what etcd users know:
//!
//! | scenario | one operation |
//! |---|---|
//! | `put` | a `Put` of a `--key-size` key (sequential or random in `--key-space-size`) with a `--val-size` value |
//! | `range` | a `Range` of one key or of a range (`--range-end`, `--prefix`), linearizable or serializable (`--consistency l\|s`) |
//! | `txn-put` | a compare-and-set: `Txn(if mod_revision(k) == last { put k } else { get k })` |
//! | `watch` | one `Put` observed by `--watchers` watchers on `--watch-streams` streams; latency is put → event |
//! | `lease` | keepalive churn: `LeaseGrant`, `LeaseKeepAlive` (on a long-lived stream), `LeaseRevoke` |
//! | `mixed` | a `Range` with probability `--read-ratio`, otherwise a `Put` |
//! | `store-put` | a one-key transaction on the data store (zongheng only), see [`store`] |
//! | `store-get` | a one-key snapshot read on the data store (zongheng only) |
//!
//! `--clients` operations are in flight at once (closed loop: each client
//! sends its next request when the last one answers), spread over `--conns`
//! gRPC connections, which are spread over `--endpoints` in order
//! (`--target-leader` puts them all on the leader). Every run is bounded:
//! by `--total` operations, by `--duration`, or by both (whichever comes
//! first); with neither, a per-scenario default total applies.
//!
//! ## The report
//! Throughput (successful operations per second of the measured phase),
//! latency percentiles (p50, p90, p99, p99.9, max), a histogram, errors
//! counted by kind (gRPC code plus the message with numbers taken out, so
//! `lease 7f… not found` and `lease 80… not found` count as one kind), and
//! scenario counters (CAS conflicts, watch events expected and received).
//! `--json` prints the same report as one JSON object whose field names are
//! stable (`schema` says which version): `bench/compare.sh` and anyone
//! tracking a change of the write path over time read it. `ops + errors_total`
//! equals the number of operations attempted, which is `--total` when the run
//! was bounded by count (for `watch`, operations are puts; events that never
//! arrived are errors of kind `Missing` on top).
//!
//! ## Why an HDR histogram
//! Latencies here span four orders of magnitude (a serializable read on
//! loopback takes tens of microseconds; a write stuck behind an fsync or an
//! election takes seconds). The `hdrhistogram` crate records each one in
//! constant time and constant memory with a bounded relative error (three
//! significant digits), per client with no locking, and merges them at the
//! end; a sorted vector of samples would grow with the run and a fixed-bucket
//! histogram would lose the tail that p99.9 is about.
//!
//! ## What it does not do
//! No TLS or authentication (like the rest of the CLI); no open-loop load
//! (a fixed arrival rate without waiting for answers): `--rate` only paces a
//! closed loop, so under overload latency is measured from when a request
//! was sent, not from when it was due (coordinated omission is not
//! corrected). Writes are never retried: a failed or timed-out write is
//! counted as an error, whatever happened to it on the server.

mod lease;
mod report;
mod store;
mod watch;
mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::transport::Channel;
use zongheng_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use zongheng_proto::etcdserverpb::StatusRequest;

use super::client::{dial, json_line, parse_timeout_ms, print_output, ClientOptions, ParsedEndpoint};
pub use report::{ErrorCount, LatencySummary, Report, REPORT_SCHEMA};
use report::{OpError, Recorder};

/// Most concurrent clients (requests in flight). Each is a tokio task with
/// a small state; past this the load generator, not the server, is measured.
pub const CLIENTS_MAX: usize = 10_000;
/// Most gRPC connections.
pub const CONNS_MAX: usize = 1_000;
/// Most operations in one run.
pub const TOTAL_MAX: u64 = 100_000_000;
/// Largest key, in bytes (etcd's default request limit is 1.5 MiB).
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most keys written by `--prefill`.
pub const PREFILL_MAX: u64 = 10_000_000;
/// Puts per prefill txn: below etcd's default `--max-txn-ops` of 128.
const PREFILL_BATCH: u64 = 64;
/// Prefill txns in flight at once.
const PREFILL_CONCURRENCY: usize = 4;

/// Load options shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Requests in flight at once (each client waits for its answer before
    /// sending the next).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections; clients are spread over them, and they over
    /// --endpoints in order.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Operations to run in all (default: 10000, 1000 puts for `watch`,
    /// 2000 cycles for `lease`, unless --duration is given).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Stop starting operations after this long (`10s`, `500ms`, `2m`).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout_ms)]
    pub duration: Option<u64>,
    /// At most this many operations per second in all (0: as fast as the
    /// clients go).
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,
    /// Key size in bytes: keys are zero-padded decimal numbers.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long = "val-size", global = true, default_value_t = 256)]
    pub value_size: usize,
    /// Before measuring, write keys 0..N (not measured; for `range` and `mixed`).
    #[arg(long, global = true, default_value_t = 0)]
    pub prefill: u64,
    /// Send everything to the current leader (found with Maintenance.Status).
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Seed for random keys and read/write choices, so runs repeat.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub load: LoadOptions,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// Puts of new values to sequential or random keys.
    Put(PutArgs),
    /// Ranges over one key or a range.
    Range(RangeArgs),
    /// Compare-and-set txns on mod revision.
    TxnPut(TxnPutArgs),
    /// Fan-out latency from a put to N watchers of its key.
    Watch(WatchArgs),
    /// Lease churn: grant, keep alive, revoke.
    Lease(LeaseArgs),
    /// Reads and writes in a given ratio.
    Mixed(MixedArgs),
    /// One-key transactions on zongheng's data store.
    StorePut(store::StoreArgs),
    /// One-key snapshot reads on zongheng's data store (use --prefill).
    StoreGet(store::StoreArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Put(_) => "put",
            Scenario::Range(_) => "range",
            Scenario::TxnPut(_) => "txn-put",
            Scenario::Watch(_) => "watch",
            Scenario::Lease(_) => "lease",
            Scenario::Mixed(_) => "mixed",
            Scenario::StorePut(_) => "store-put",
            Scenario::StoreGet(_) => "store-get",
        }
    }

    fn default_total(&self) -> u64 {
        match self {
            Scenario::Watch(_) => 1_000,
            Scenario::Lease(_) => 2_000,
            _ => 10_000,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// Keys are drawn from 0..N.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
    /// Keys in order (operation i writes key i mod N) instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

/// Read consistency, as etcd's benchmark and etcdctl spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Linearizable: the read waits for the leader's commit index.
    #[value(name = "l")]
    Linearizable,
    /// Serializable: served from the member's local state.
    #[value(name = "s")]
    Serializable,
}

impl Consistency {
    fn label(self) -> &'static str {
        match self {
            Consistency::Linearizable => "l",
            Consistency::Serializable => "s",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RangeArgs {
    /// The key to read (default: key 0, the first one --prefill writes).
    pub key: Option<String>,
    /// End of the range (exclusive).
    #[arg(long)]
    pub range_end: Option<String>,
    /// Read every key with KEY as prefix (an empty KEY reads every key).
    #[arg(long, conflicts_with = "range_end")]
    pub prefix: bool,
    /// `l` (linearizable) or `s` (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// At most this many keys per answer (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TxnPutArgs {
    /// Keys are drawn from 0..N (default: one key per client, so CAS
    /// conflicts happen only when N is smaller than --clients).
    #[arg(long)]
    pub key_space_size: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Watchers of the one key.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over (streams over --conns).
    #[arg(long, default_value_t = 10)]
    pub watch_streams: usize,
    /// Puts per second of the one putter.
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LeaseArgs {
    /// TTL of each granted lease, in seconds.
    #[arg(long, default_value_t = 30)]
    pub ttl: i64,
    /// Keepalives per lease between grant and revoke.
    #[arg(long, default_value_t = 1)]
    pub keepalives: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    /// Fraction of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Keys are drawn from 0..N (use --prefill N so reads find them).
    #[arg(long, default_value_t = 10_000)]
    pub key_space_size: u64,
    /// Read consistency: `l` or `s`.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
}

/// When a run stops: after a count, at a deadline, or both.
pub struct Plan {
    total: Option<u64>,
    deadline: Option<Instant>,
    rate: u64,
    started: Instant,
    next: AtomicU64,
}

impl Plan {
    fn new(total: Option<u64>, duration: Option<Duration>, rate: u64) -> Plan {
        assert!(total.is_some() || duration.is_some(), "every run is bounded");
        let started = Instant::now();
        Plan {
            total,
            deadline: duration.map(|duration| started + duration),
            rate,
            started,
            next: AtomicU64::new(0),
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The index of the next operation to run, or None when the run is over.
    /// With `--rate`, waits until the operation is due.
    async fn next(&self) -> Option<u64> {
        if self.past_deadline() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|total| index >= total) {
            return None;
        }
        if self.rate > 0 {
            let due = self.started + Duration::from_secs_f64(index as f64 / self.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            if self.past_deadline() {
                return None;
            }
        }
        Some(index)
    }
}

/// One client's share of a closed-loop scenario: runs operation `index`.
/// Implementations keep their own state (random keys, CAS revisions, a
/// keepalive stream) and may record extra phases and counters.
trait Worker: Send + 'static {
    fn op(&mut self, index: u64, extra: &mut Recorder) -> impl Future<Output = Result<(), OpError>> + Send;
}

/// Runs `workers` (one per client) until `plan` says stop and merges what
/// they recorded.
async fn drive<W: Worker>(plan: Arc<Plan>, workers: Vec<W>) -> (Recorder, Duration) {
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorder = Recorder::new();
            let mut extra = Recorder::new();
            while let Some(index) = plan.next().await {
                let started = Instant::now();
                let result = worker.op(index, &mut extra).await;
                recorder.record(started.elapsed(), result);
            }
            recorder.merge_extra(extra);
            recorder
        }));
    }
    let mut total = Recorder::new();
    for task in tasks {
        total.merge(task.await.expect("a bench client panicked"));
    }
    (total, plan.started.elapsed())
}

/// Key `index` as bytes: the decimal number zero-padded to `key_size`.
pub fn key_of(index: u64, key_size: usize) -> Vec<u8> {
    let key = format!("{index:0key_size$}");
    assert!(
        key.len() == key_size,
        "key {index} does not fit {key_size} bytes; checked in validate"
    );
    key.into_bytes()
}

/// Decimal digits needed for every index below `count`.
fn digits_for(count: u64) -> usize {
    count.saturating_sub(1).max(1).ilog10() as usize + 1
}

fn check_key_space(flag: &str, count: u64, key_size: usize) -> anyhow::Result<()> {
    if count == 0 {
        bail!("{flag} must be at least 1");
    }
    if digits_for(count) > key_size {
        bail!(
            "{flag} {count} needs keys of {} digits, more than --key-size {key_size}; raise --key-size",
            digits_for(count)
        );
    }
    Ok(())
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    let load = &args.load;
    if load.clients == 0 || load.clients > CLIENTS_MAX {
        bail!("--clients must be between 1 and {CLIENTS_MAX}");
    }
    if load.conns == 0 || load.conns > CONNS_MAX {
        bail!("--conns must be between 1 and {CONNS_MAX}");
    }
    if load.total == Some(0) || load.total.is_some_and(|total| total > TOTAL_MAX) {
        bail!("--total must be between 1 and {TOTAL_MAX}");
    }
    if load.key_size == 0 || load.key_size > KEY_BYTES_MAX {
        bail!("--key-size must be between 1 and {KEY_BYTES_MAX}");
    }
    if load.value_size > VALUE_BYTES_MAX {
        bail!("--val-size must be at most {VALUE_BYTES_MAX}");
    }
    if load.prefill > PREFILL_MAX {
        bail!("--prefill must be at most {PREFILL_MAX}");
    }
    if load.prefill > 0 {
        check_key_space("--prefill", load.prefill, load.key_size)?;
    }
    match &args.scenario {
        Scenario::Put(put) => check_key_space("--key-space-size", put.key_space_size, load.key_size)?,
        Scenario::Range(_) => {}
        Scenario::TxnPut(txn) => {
            let space = txn.key_space_size.unwrap_or(load.clients as u64);
            check_key_space("--key-space-size", space, load.key_size)?;
        }
        Scenario::Watch(watch) => {
            if watch.watchers == 0 || watch.watchers > CLIENTS_MAX {
                bail!("--watchers must be between 1 and {CLIENTS_MAX}");
            }
            if watch.watch_streams == 0 || watch.watch_streams > watch.watchers {
                bail!("--watch-streams must be between 1 and --watchers ({})", watch.watchers);
            }
            if watch.put_rate == 0 {
                bail!("--put-rate must be at least 1");
            }
            if load.value_size < watch::STAMP_BYTES {
                bail!(
                    "--val-size must be at least {} for watch (the value carries the put's index and time)",
                    watch::STAMP_BYTES
                );
            }
        }
        Scenario::Lease(lease) => {
            if lease.ttl <= 0 {
                bail!("--ttl must be at least 1 second");
            }
        }
        Scenario::Mixed(mixed) => {
            if !(0.0..=1.0).contains(&mixed.read_ratio) {
                bail!("--read-ratio must be between 0.0 and 1.0");
            }
            check_key_space("--key-space-size", mixed.key_space_size, load.key_size)?;
        }
        Scenario::StorePut(store) | Scenario::StoreGet(store) => {
            check_key_space("--key-space-size", store.key_space_size, load.key_size)?;
        }
    }
    Ok(())
}

/// A request with the command timeout, both as `grpc-timeout` (so the server
/// gives up too) and as our own timer around the call.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Runs one gRPC call under `timeout`.
async fn call<T>(
    timeout: Duration,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(OpError::from_status(&status)),
        Err(_elapsed) => Err(OpError::timeout(timeout)),
    }
}

/// The connections of a run: `conns` channels over the endpoints in order,
/// or all on the leader.
async fn connect(args: &BenchArgs) -> anyhow::Result<(Vec<Channel>, Vec<String>)> {
    let endpoints = args.client.parsed_endpoints()?;
    let dial_timeout = args.client.dial_timeout();
    let targets: Vec<ParsedEndpoint> = if args.load.target_leader {
        vec![find_leader(&endpoints, dial_timeout, args.client.command_timeout()).await?]
    } else {
        endpoints
    };
    let mut channels = Vec::with_capacity(args.load.conns);
    for index in 0..args.load.conns {
        let endpoint = &targets[index % targets.len()];
        let channel = dial(&endpoint.url, dial_timeout)
            .await
            .map_err(|reason| anyhow::anyhow!("cannot connect to {}: {reason}", endpoint.display))?;
        channels.push(channel);
    }
    Ok((channels, targets.into_iter().map(|endpoint| endpoint.display).collect()))
}

/// The endpoint whose member is the leader it reports.
async fn find_leader(
    endpoints: &[ParsedEndpoint],
    dial_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<ParsedEndpoint> {
    let mut seen = Vec::new();
    for endpoint in endpoints {
        let Ok(channel) = dial(&endpoint.url, dial_timeout).await else {
            seen.push(format!("{}: unreachable", endpoint.display));
            continue;
        };
        let mut maintenance = MaintenanceClient::new(channel);
        match call(timeout, maintenance.status(request(StatusRequest {}, timeout))).await {
            Ok(status) => {
                let member_id = status.header.map(|header| header.member_id).unwrap_or(0);
                if status.leader != 0 && status.leader == member_id {
                    return Ok(endpoint.clone());
                }
                seen.push(format!("{}: follower of {:x}", endpoint.display, status.leader));
            }
            Err(error) => seen.push(format!("{}: {error}", endpoint.display)),
        }
    }
    bail!(
        "--target-leader: no endpoint is the leader ({}); give the leader's endpoint in --endpoints",
        seen.join("; ")
    )
}

/// The value written by puts: `size` bytes of a fixed printable pattern.
fn value_of(size: usize) -> Vec<u8> {
    (0..size).map(|index| b'a' + (index % 26) as u8).collect()
}

/// Writes keys 0..count with `value_size` values in txns of PREFILL_BATCH
/// puts. Not measured; any failure stops the run (the data would be wrong).
async fn prefill(channels: &[Channel], count: u64, load: &LoadOptions, timeout: Duration) -> anyhow::Result<()> {
    use zongheng_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
    let value = value_of(load.value_size);
    let batches: Vec<(u64, u64)> = (0..count)
        .step_by(PREFILL_BATCH as usize)
        .map(|start| (start, (start + PREFILL_BATCH).min(count)))
        .collect();
    let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let mut tasks = Vec::new();
    for worker in 0..PREFILL_CONCURRENCY {
        let mut kv = workload::kv_client(channels[worker % channels.len()].clone());
        let batches = batches.clone();
        let value = value.clone();
        let key_size = load.key_size;
        tasks.push(tokio::spawn(async move {
            loop {
                let next = batches.lock().expect("prefill queue lock").next();
                let Some((start, end)) = next else {
                    return anyhow::Ok(());
                };
                let success = (start..end)
                    .map(|index| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key_of(index, key_size),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let txn = TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                };
                call(timeout, kv.txn(request(txn, timeout)))
                    .await
                    .map_err(|error| anyhow::anyhow!("prefill of keys {start}..{end} failed: {error}"))?;
            }
        }));
    }
    for task in tasks {
        task.await.context("a prefill task panicked")??;
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let report = execute(&args).await?;
    if args.client.json {
        print_output(&json_line(&report))
    } else {
        print_output(&report.render_text())
    }
}

/// Runs the scenario of `args` and returns its report.
pub async fn execute(args: &BenchArgs) -> anyhow::Result<Report> {
    let load = &args.load;
    let timeout = args.client.command_timeout();
    let (channels, endpoints) = connect(args).await?;
    let store_scenario = matches!(args.scenario, Scenario::StorePut(_) | Scenario::StoreGet(_));
    if load.prefill > 0 && !store_scenario {
        prefill(&channels, load.prefill, load, timeout).await?;
    }
    let total = match (load.total, load.duration) {
        (None, None) => Some(args.scenario.default_total()),
        (total, _) => total,
    };
    let duration = load.duration.map(Duration::from_millis);
    let mut params: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut set = |name: &str, value: serde_json::Value| {
        params.insert(name.to_string(), value);
    };
    set("clients", load.clients.into());
    set("conns", load.conns.into());
    set("key_size", load.key_size.into());
    set("val_size", load.value_size.into());
    set("prefill", load.prefill.into());
    set("rate", load.rate.into());
    set("target_leader", load.target_leader.into());
    set("seed", load.seed.into());
    let clients = |index: usize| channels[index % channels.len()].clone();
    let (recorder, elapsed) = match &args.scenario {
        Scenario::Put(put) => {
            set("key_space_size", put.key_space_size.into());
            set("sequential_keys", put.sequential_keys.into());
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let workers = (0..load.clients)
                .map(|index| workload::PutWorker::new(clients(index), index, put, load, timeout))
                .collect();
            drive(plan, workers).await
        }
        Scenario::Range(range) => {
            let (key, range_end) = workload::range_of(range, load.key_size);
            set("consistency", range.consistency.label().into());
            set("key", String::from_utf8_lossy(&key).into());
            set("range_end", String::from_utf8_lossy(&range_end).into());
            set("limit", range.limit.into());
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let workers = (0..load.clients)
                .map(|index| workload::RangeWorker::new(clients(index), key.clone(), range_end.clone(), range, timeout))
                .collect();
            drive(plan, workers).await
        }
        Scenario::TxnPut(txn) => {
            let space = txn.key_space_size.unwrap_or(load.clients as u64);
            set("key_space_size", space.into());
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let workers = (0..load.clients)
                .map(|index| workload::TxnPutWorker::new(clients(index), index, space, load, timeout))
                .collect();
            drive(plan, workers).await
        }
        Scenario::Mixed(mixed) => {
            set("read_ratio", mixed.read_ratio.into());
            set("key_space_size", mixed.key_space_size.into());
            set("consistency", mixed.consistency.label().into());
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let workers = (0..load.clients)
                .map(|index| workload::MixedWorker::new(clients(index), index, mixed, load, timeout))
                .collect();
            drive(plan, workers).await
        }
        Scenario::Lease(lease_args) => {
            set("ttl", lease_args.ttl.into());
            set("keepalives", lease_args.keepalives.into());
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let workers = (0..load.clients)
                .map(|index| lease::LeaseWorker::new(clients(index), lease_args, timeout))
                .collect();
            drive(plan, workers).await
        }
        Scenario::StorePut(store_args) | Scenario::StoreGet(store_args) => {
            set("key_space_size", store_args.key_space_size.into());
            let remote = Arc::new(crate::cli::store::connect(&args.client).await?);
            if load.prefill > 0 {
                store::prefill(&remote, load.prefill, load).await?;
            }
            // One channel per endpoint: each answers for its own node.
            let mut nodes = Vec::new();
            for endpoint in args.client.parsed_endpoints()? {
                nodes.push(
                    dial(&endpoint.url, args.client.dial_timeout())
                        .await
                        .map_err(|reason| anyhow::anyhow!("cannot connect to {}: {reason}", endpoint.display))?,
                );
            }
            let before = store::cluster_counters(&nodes).await;
            let plan = Arc::new(Plan::new(total, duration, load.rate));
            let (mut recorder, elapsed) = if matches!(args.scenario, Scenario::StorePut(_)) {
                let workers = (0..load.clients)
                    .map(|index| store::StorePutWorker::new(remote.clone(), index, store_args, load))
                    .collect();
                drive(plan, workers).await
            } else {
                let workers = (0..load.clients)
                    .map(|index| store::StoreGetWorker::new(remote.clone(), index, store_args, load))
                    .collect();
                drive(plan, workers).await
            };
            if let (Some(before), Some(after)) = (before, store::cluster_counters(&nodes).await) {
                recorder.count(
                    "synced_writes",
                    after.synced_writes.saturating_sub(before.synced_writes),
                );
                recorder.count("fsyncs", after.fsyncs.saturating_sub(before.fsyncs));
                recorder.count(
                    "raft_messages",
                    after.raft_messages.saturating_sub(before.raft_messages),
                );
                recorder.count("raft_batches", after.raft_batches.saturating_sub(before.raft_batches));
            }
            (recorder, elapsed)
        }
        Scenario::Watch(watch_args) => {
            set("watchers", watch_args.watchers.into());
            set("watch_streams", watch_args.watch_streams.into());
            set("put_rate", watch_args.put_rate.into());
            watch::run(&channels, watch_args, load, total, duration, timeout).await?
        }
    };
    Ok(Report::new(
        args.scenario.name(),
        endpoints,
        params,
        total,
        duration,
        recorder,
        elapsed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_decimal() {
        assert_eq!(key_of(0, 8), b"00000000");
        assert_eq!(key_of(12_345, 8), b"00012345");
        assert_eq!(digits_for(1), 1);
        assert_eq!(digits_for(10), 1);
        assert_eq!(digits_for(11), 2);
        assert_eq!(digits_for(100_000), 5);
        assert!(check_key_space("--key-space-size", 100_000_000, 8).is_ok());
        let error = check_key_space("--key-space-size", 100_000_001, 8).unwrap_err();
        assert!(error.to_string().contains("raise --key-size"), "{error}");
    }

    #[tokio::test]
    async fn plans_stop_at_the_total() {
        let plan = Plan::new(Some(3), None, 0);
        let mut seen = Vec::new();
        while let Some(index) = plan.next().await {
            seen.push(index);
        }
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(plan.next().await, None);
    }

    #[tokio::test]
    async fn plans_stop_at_the_deadline() {
        let plan = Plan::new(None, Some(Duration::from_millis(30)), 1_000);
        let mut count = 0;
        while plan.next().await.is_some() {
            count += 1;
            assert!(count < 1_000, "the deadline stops the plan");
        }
        assert!(plan.started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn scenario_flags_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "zongheng",
            "bench",
            "range",
            "--consistency",
            "s",
            "--clients",
            "64",
            "--json",
            "--duration",
            "10s",
        ])
        .unwrap();
        let crate::cli::Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(args.load.clients, 64);
        assert_eq!(args.load.duration, Some(10_000));
        assert!(args.client.json);
        let Scenario::Range(range) = args.scenario else {
            panic!("not range")
        };
        assert_eq!(range.consistency, Consistency::Serializable);
    }
}
