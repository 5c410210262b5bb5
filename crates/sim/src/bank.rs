//! The data store's bank workload: money moves between accounts that live in
//! different partitions (each its own Raft group), through Percolator
//! transactions, while the full nemesis runs and partitions move.
//!
//! Faults, all at once on their own lanes (see [`crate::nemesis`]):
//!
//! - the **network lane**: partitions, isolated leaders, bridges, message
//!   loss, latency spikes, pauses;
//! - the **node lane**: crashes (some longer than the store's dead-after
//!   threshold, so replicas are re-created elsewhere and moved back when the
//!   node returns), wiped disks with the node re-added as a new member, and
//!   a spare added while a voter is removed (both move replicas);
//! - the **store lane** (here): a node drained for a while (every replica
//!   moves off it), then taken back.
//!
//! The nemesis wipes or removes a node only while every partition is fully
//! replicated ([`crate::cluster::Nemesis::store_is_stable`]), as an operator
//! waits for re-replication before taking another disk away; with R = 3 two
//! lost disks in one partition would lose data, and no store claims more.
//!
//! What it checks:
//!
//! - **snapshot isolation holds the total**: every audit (one transaction
//!   reading every balance at its start timestamp) sums to the initial total,
//!   during the faults and after them;
//! - **no balance goes negative** (a transfer checks the source in its snapshot,
//!   and write-write conflicts stop two transfers from spending the same money);
//! - **no acknowledged commit is lost**: after healing, every transaction whose
//!   commit was acknowledged is reported committed by its primary key's
//!   partition, at the acknowledged timestamp;
//! - **timestamps follow real time**: an audit that begins after a commit was
//!   acknowledged reads at a later timestamp (so it sees that commit);
//! - **per-key histories are linearizable**: register clients put, read and
//!   compare-and-set single keys, reading at the leader or, half the time,
//!   at a follower after a read index; the history is judged by the register
//!   model of `zongheng-check`; their stale reads (any replica, bounded
//!   staleness) must return a value the key once held;
//! - half the audits read at followers (a read index first), and must sum
//!   and follow real time like the others;
//! - **the store converges**: after healing, every partition has its replicas
//!   on running nodes with no move under way, and its replicas' states are
//!   identical;
//! - the cluster's own invariants (one leader per term, fsync before
//!   acknowledging, ...) from the invariant monitor.
//!
//! Clients talk to the cluster only through the store's gRPC API
//! ([`RemoteStore`], routing straight to partition leaders), each from its
//! own simulated host, so partitions cut clients off as they cut nodes off.
//! One transfer in ten is abandoned at a random point (the client "dies"),
//! leaving locks for others to resolve.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use zongheng::config::StoreSettings;
use zongheng::net::transport::channel;
use zongheng::store::client::{PartitionTransport, StoreError, Transaction, TxnOptions};
use zongheng::store::group::ReadMode;
use zongheng::store::remote::{Dialer, RemoteStore};
use zongheng::store::request::{PartitionRequest, PartitionResponse};
use zongheng::store::timestamp::Timestamp;
use zongheng::store::txn::TxnStatus;
use zongheng_algo::partition_of;
use zongheng_check::history::{KvHistory, KvInput, KvOutput, Outcome};

use crate::cluster::{Nemesis, SimCluster, SimOptions, CLIENT_PORT};
use crate::nemesis::{self, LaneContext, NemesisOptions, Schedule};
use crate::trace::Trace;
use crate::transport::SimTransport;

/// What a bank run does.
#[derive(Debug, Clone)]
pub struct BankOptions {
    pub seed: u64,
    /// Initial members; with more than 3, a node may hold no replica of a
    /// partition and forwards its requests to one that does.
    pub nodes: usize,
    /// Idle hosts the node lane may add as members (each new member
    /// receives replicas).
    pub spares: usize,
    pub partitions: u32,
    pub accounts: usize,
    pub initial_balance: u64,
    /// Client hosts moving money.
    pub workers: usize,
    pub transfers_per_worker: usize,
    /// Client hosts reading and writing single keys for the linearizability
    /// check, and how many keys they share.
    pub register_clients: usize,
    pub register_keys: usize,
    /// Simulated time during which the nemesis injects faults.
    pub fault_time: Duration,
    /// Which faults the network and node lanes draw.
    pub nemesis: NemesisOptions,
    /// Whether the store lane drains nodes.
    pub drains: bool,
    /// Every node's store settings (a short dead-after threshold, so
    /// repairs happen within a run).
    pub store: StoreSettings,
    /// Applied entries between snapshots (low, so snapshots are sent).
    pub snapshot_count: u64,
}

impl BankOptions {
    /// Three nodes and two spares, 4 partitions, every fault for 30 s.
    pub fn new(seed: u64) -> Self {
        let fault_time = Duration::from_secs(30);
        Self {
            seed,
            nodes: 3,
            spares: 2,
            partitions: 4,
            accounts: 8,
            initial_balance: 100,
            workers: 3,
            transfers_per_worker: 40,
            register_clients: 2,
            register_keys: 3,
            fault_time,
            nemesis: NemesisOptions::all(fault_time),
            drains: true,
            store: StoreSettings {
                dead_after_ms: 4_000,
                moves_max: 2,
                ..StoreSettings::default()
            },
            snapshot_count: 40,
        }
    }

    /// The same with `fault_time` of faults.
    pub fn with_fault_time(mut self, fault_time: Duration) -> Self {
        self.fault_time = fault_time;
        self.nemesis.faults_until = fault_time;
        self
    }
}

/// What a bank run saw.
#[derive(Debug, Default, Clone)]
pub struct BankReport {
    pub committed: usize,
    pub refused: usize,
    pub unknown: usize,
    pub abandoned: usize,
    pub audits: usize,
    /// Episodes of the nemesis's lanes.
    pub faults: usize,
    /// Replica moves seen finished (partition epochs gained).
    pub moves: u64,
    /// Register operations judged by the linearizability checker.
    pub register_operations: usize,
}

/// Most transfers one worker makes, however long the faults last.
const TRANSFERS_PER_WORKER_MAX: usize = 2_000;
/// Most register operations one register client makes.
const REGISTER_OPERATIONS_MAX: usize = 400;
/// How long the store may take to converge after the faults end.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two looks at a converging store.
const CONVERGENCE_POLL: Duration = Duration::from_millis(500);
/// Audits failing in a row after which the partitions' states are traced.
const AUDIT_FAILURES_TRACED: u32 = 10;
/// Attempts (100 ms apart) at one final check of an acknowledged commit.
const FINAL_CHECK_ATTEMPTS_MAX: u32 = 1_200;
/// The turmoil host of the nemesis.
const NEMESIS_HOST: &str = "bank-nemesis";

struct Shared {
    /// The nemesis has healed everything.
    faults_over: bool,
    report: BankReport,
    /// (primary key, start ts, commit ts) of every acknowledged commit.
    acknowledged: Vec<(Vec<u8>, Timestamp, Timestamp)>,
    workers_done: usize,
    registers_done: usize,
    /// Single-key operations of the register clients.
    history: KvHistory,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            faults_over: false,
            report: BankReport::default(),
            acknowledged: Vec::new(),
            workers_done: 0,
            registers_done: 0,
            history: KvHistory::new(),
        }
    }
}

fn account(index: usize) -> Vec<u8> {
    format!("bank/account/{index:03}").into_bytes()
}

fn register(index: usize) -> Vec<u8> {
    format!("bank/register/{index:03}").into_bytes()
}

fn parse_balance(value: Option<Vec<u8>>) -> Result<u64, String> {
    let value = value.ok_or("an account is missing")?;
    String::from_utf8(value)
        .map_err(|error| error.to_string())?
        .parse()
        .map_err(|error: std::num::ParseIntError| error.to_string())
}

async fn connect(names: &[String]) -> Result<RemoteStore, String> {
    let channels: Vec<tonic::transport::Channel> = names
        .iter()
        .map(|name| channel(Arc::new(SimTransport::default()), &format!("{name}:{CLIENT_PORT}")))
        .collect();
    // The cluster may still be electing: try for a while.
    for _ in 0..100 {
        // Requests go straight to partition leaders, as the CLI's do.
        let dialer: Dialer = Arc::new(|url: &str| {
            let address = url
                .split_once("://")
                .map_or(url, |(_, rest)| rest)
                .trim_end_matches('/');
            Some(channel(Arc::new(SimTransport::default()), address))
        });
        match RemoteStore::connect_with(channels.clone(), Some(dialer)).await {
            Ok(store) => return Ok(store),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Err("no node answered the store's shard map".into())
}

async fn transfer(
    store: &RemoteStore,
    from: usize,
    to: usize,
    amount: u64,
) -> Result<Option<(Timestamp, Timestamp)>, StoreError> {
    let mut txn = Transaction::begin(store, TxnOptions::default()).await?;
    let from_balance = parse_balance(txn.get(&account(from)).await?).expect("balances are numbers");
    let to_balance = parse_balance(txn.get(&account(to)).await?).expect("balances are numbers");
    if from_balance < amount {
        return Ok(None);
    }
    txn.put(account(from), (from_balance - amount).to_string());
    txn.put(account(to), (to_balance + amount).to_string());
    let start_ts = txn.start_ts();
    Ok(Some((start_ts, txn.commit().await?)))
}

/// Every balance in one snapshot, and its start timestamp; `read_mode`
/// linearizable or follower (both keep snapshot isolation).
async fn audit(store: &RemoteStore, accounts: usize, read_mode: ReadMode) -> Result<(Timestamp, Vec<u64>), StoreError> {
    let options = TxnOptions {
        read_mode,
        ..TxnOptions::default()
    };
    let txn = Transaction::begin(store, options).await?;
    let mut balances = Vec::with_capacity(accounts);
    for index in 0..accounts {
        balances.push(parse_balance(txn.get(&account(index)).await?).expect("balances are numbers"));
    }
    Ok((txn.start_ts(), balances))
}

fn check_balances(balances: &[u64], options: &BankOptions, when: &str) -> Result<(), String> {
    let total: u64 = balances.iter().sum();
    let expected = options.accounts as u64 * options.initial_balance;
    if total != expected {
        return Err(format!(
            "{when}: the balances {balances:?} sum to {total}, not {expected}"
        ));
    }
    Ok(())
}

/// Simulated time in nanoseconds, the register history's clock.
fn now_nanos() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_nanos() as u64
}

/// Longest staleness a register client's stale read accepts.
const STALE_READ_MS_MAX: u64 = 2_000;

/// One single-key operation as a transaction; what the history records. A
/// linearizable get is read at the leader or, with `follower`, at another
/// replica after a read index (linearizable too); a get marked not
/// linearizable is a stale read, which the register model only requires
/// to return a value the key once held.
async fn register_operation(store: &RemoteStore, input: &KvInput, follower: bool) -> Outcome<KvOutput> {
    // A write refused by the partition (a conflict, a rolled-back lock)
    // did not happen; any other failure may have committed.
    let write_outcome = |result: Result<Timestamp, StoreError>, output: KvOutput| match result {
        Ok(_) => Outcome::Ok(output),
        Err(StoreError::Txn(error)) => Outcome::Failed(error.to_string()),
        Err(error) => Outcome::Unknown(error.to_string()),
    };
    let read_mode = match input {
        KvInput::Get {
            linearizable: false, ..
        } => ReadMode::Stale {
            max_staleness_ms: STALE_READ_MS_MAX,
        },
        _ if follower => ReadMode::Follower,
        _ => ReadMode::Linearizable,
    };
    let options = TxnOptions {
        read_mode,
        ..TxnOptions::default()
    };
    let txn = match Transaction::begin(store, options).await {
        Ok(txn) => txn,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    match input {
        KvInput::Get { key, .. } => match txn.get(key).await {
            Ok(value) => Outcome::Ok(KvOutput::Get {
                value,
                mod_revision: 0,
                revision: 0,
            }),
            Err(error) => Outcome::Failed(error.to_string()),
        },
        KvInput::Put { key, value } => {
            let mut txn = txn;
            txn.put(key.clone(), value.clone());
            write_outcome(txn.commit().await, KvOutput::Put { revision: 0 })
        }
        KvInput::CompareAndSet {
            key,
            expected,
            new_value,
        } => {
            let mut txn = txn;
            let current = match txn.get(key).await {
                Ok(current) => current,
                Err(error) => return Outcome::Failed(error.to_string()),
            };
            if current != *expected {
                return Outcome::Ok(KvOutput::CompareAndSet {
                    succeeded: false,
                    revision: 0,
                });
            }
            txn.put(key.clone(), new_value.clone());
            write_outcome(
                txn.commit().await,
                KvOutput::CompareAndSet {
                    succeeded: true,
                    revision: 0,
                },
            )
        }
        KvInput::Delete { .. } => unreachable!("register clients do not delete"),
    }
}

/// The store lane: drain a running member for a while, then take it back.
async fn run_store_lane(nemesis: Nemesis, options: BankOptions, shared: Arc<Mutex<Shared>>, trace: Trace) {
    if !options.drains {
        return;
    }
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x6472_6169_6e21);
    let store = match connect(nemesis.hosts()).await {
        Ok(store) => store,
        Err(error) => {
            trace.record(format!("store lane: {error}"));
            return;
        }
    };
    let faults_until = options.nemesis.faults_until;
    let now = || turmoil::sim_elapsed().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(rng.gen_range(3_000..8_000))).await;
    while now() + Duration::from_secs(4) < faults_until {
        let running: Vec<String> = nemesis
            .hosts()
            .iter()
            .filter(|host| nemesis.is_running(host))
            .cloned()
            .collect();
        let Some(victim) = running.choose(&mut rng).cloned() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let hold = Duration::from_millis(rng.gen_range(2_000..10_000)).min(faults_until.saturating_sub(now()));
        match store.drain(&victim, 0, false).await {
            Ok((id, replicas)) => {
                trace.record(format!(
                    "store lane: drain {victim} ({id:x}, {replicas} replicas) for {hold:?}"
                ));
                shared.lock().unwrap().report.faults += 1;
                tokio::time::sleep(hold).await;
                // Taken back by id (the name may belong to a new member by
                // now); refused if it left the cluster meanwhile.
                for _ in 0..20 {
                    match store.drain("", id, true).await {
                        Ok(_) => {
                            trace.record(format!("store lane: undrained {victim}"));
                            break;
                        }
                        Err(StoreError::Refused(message)) if message.contains("NOT_FOUND") => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
            // It may have been applied all the same; healing takes every node back.
            Err(error) => trace.record(format!("store lane: drain of {victim} failed: {error}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..6_000))).await;
    }
}

/// After healing: wait until every partition has its replicas on running
/// nodes, no move under way and every node taken back (a drain whose
/// answer was lost may still apply after the faults: it is undone here, as
/// an operator would), then until the replicas of each partition hold
/// identical states. Returns the epochs gained (moves finished) over the run.
async fn converge(nemesis: &Nemesis, trace: &Trace) -> Result<u64, String> {
    let deadline = turmoil::sim_elapsed().unwrap_or_default() + CONVERGENCE_TIMEOUT;
    let store = connect(nemesis.hosts()).await?;
    let mut last_problem;
    loop {
        last_problem = match nemesis.shard_map() {
            None => "no meta leader with a shard map".to_string(),
            Some(map) => {
                let running: BTreeSet<u64> = nemesis.views().iter().map(|view| view.node_id).collect();
                // Store nodes that can hold a replica now. With fewer than R
                // of them a partition keeps its replicas on departed nodes
                // (the driver never shrinks a partition below R).
                let eligible = map
                    .nodes
                    .iter()
                    .filter(|(id, node)| node.weight > 0 && !node.draining && running.contains(id))
                    .count();
                let replication = map.replication as usize;
                let wanted = replication.min(eligible).max(1);
                let unsettled: Vec<String> = map
                    .records
                    .iter()
                    .enumerate()
                    .filter(|(_, record)| {
                        let live = record
                            .replicas
                            .iter()
                            .filter(|replica| running.contains(&replica.node))
                            .count();
                        let departed_allowed = eligible < replication;
                        record.moving.is_some()
                            || live != wanted
                            || (!departed_allowed && record.replicas.len() != live)
                            || record.replicas.len() > replication
                    })
                    .map(|(partition, record)| {
                        format!("{partition}: {:x?} moving {:?}", record.replicas, record.moving)
                    })
                    .collect();
                let members: BTreeSet<u64> = nemesis
                    .leader()
                    .map(|leader| leader.voters.union(&leader.learners).copied().collect())
                    .unwrap_or_default();
                if map.nodes.keys().any(|id| !members.contains(id)) {
                    "a node that left the cluster is still registered".to_string()
                } else if map.nodes.values().any(|node| node.draining) {
                    for (id, _) in map.nodes.iter().filter(|(_, node)| node.draining) {
                        match store.drain("", *id, true).await {
                            Ok(_) => trace.record(format!("healing: undrained {id:x}")),
                            Err(error) => trace.record(format!("healing: undrain of {id:x} failed: {error}")),
                        }
                    }
                    "a node is still draining".to_string()
                } else if !unsettled.is_empty() {
                    format!("partitions not settled: {}", unsettled.join("; "))
                } else {
                    let mut diverged = Vec::new();
                    for (partition, record) in map.records.iter().enumerate() {
                        let digests = nemesis.partition_digests(partition as u32);
                        let replicas: Vec<_> = digests
                            .iter()
                            .filter(|(_, id, _, _)| record.replicas.iter().any(|replica| replica.id == *id))
                            .collect();
                        let live = record
                            .replicas
                            .iter()
                            .filter(|replica| running.contains(&replica.node))
                            .count();
                        let same = replicas.len() == live
                            && replicas
                                .windows(2)
                                .all(|pair| pair[0].2 == pair[1].2 && pair[0].3 == pair[1].3);
                        if !same {
                            diverged.push(format!("{partition}: {replicas:?}"));
                        }
                    }
                    if diverged.is_empty() {
                        let moves: u64 = map.records.iter().map(|record| record.epoch - 1).sum();
                        trace.record(format!(
                            "store converged: {} partitions, {moves} replica-set changes, loads {:x?}",
                            map.partitions,
                            map.loads()
                        ));
                        return Ok(moves);
                    }
                    format!("replicas differ (host, id, applied, digest): {}", diverged.join("; "))
                }
            }
        };
        if turmoil::sim_elapsed().unwrap_or_default() >= deadline {
            if let Some(map) = nemesis.shard_map() {
                for partition in 0..map.partitions {
                    for state in nemesis.partition_states(partition) {
                        trace.record(format!("partition {partition}: {state}"));
                    }
                }
            }
            return Err(format!(
                "the store did not converge within {} s after healing: {last_problem}",
                CONVERGENCE_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(CONVERGENCE_POLL).await;
    }
}

/// One seeded run (see the module doc); `Err` names the violated property.
pub fn run_bank(options: &BankOptions, trace: &Trace) -> Result<BankReport, String> {
    let sim_options = SimOptions {
        node_count: options.nodes,
        spare_count: options.spares,
        store_partitions: options.partitions,
        store: options.store.clone(),
        simulation_duration: options.fault_time + Duration::from_secs(360),
        ..SimOptions::new(options.seed)
    };
    // Snapshots every few dozen entries, so replicas added by moves (and
    // followers back from a crash) catch up by snapshot, not only from the log.
    let sim_options = SimOptions {
        raft: zongheng::raft::RaftSettings {
            snapshot_count: options.snapshot_count,
            snapshot_catchup_entries: options.snapshot_count / 4,
            ..sim_options.raft.clone()
        },
        ..sim_options
    };
    let mut cluster = SimCluster::new(sim_options);
    let workers: Vec<String> = (0..options.workers).map(|worker| format!("bank-{worker}")).collect();
    let registers: Vec<String> = (0..options.register_clients)
        .map(|client| format!("bank-register-{client}"))
        .collect();
    let mut clients: Vec<String> = vec!["bank-auditor".to_string(), NEMESIS_HOST.to_string()];
    clients.extend(workers.iter().cloned());
    clients.extend(registers.iter().cloned());
    cluster.set_client_hosts(clients);
    let mut sim = cluster.build_sim();
    let names = cluster.hosts().to_vec();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (setup_done, setup_signal) = tokio::sync::watch::channel(false);
    let (checks_done, checks_signal) = tokio::sync::watch::channel(false);

    // Setup and audits, then the final checks of balances and commits.
    {
        let (names, shared, options, trace) = (names.clone(), shared.clone(), options.clone(), trace.clone());
        let auditor_nemesis = cluster.nemesis();
        sim.client("bank-auditor", async move {
            let store = connect(&names).await?;
            loop {
                let mut setup = Transaction::begin(&store, TxnOptions::default()).await;
                if let Ok(txn) = setup.as_mut() {
                    for index in 0..options.accounts {
                        txn.put(account(index), options.initial_balance.to_string());
                    }
                }
                match setup {
                    Ok(txn) => match txn.commit().await {
                        Ok(commit_ts) => {
                            trace.record(format!("accounts opened at {commit_ts}"));
                            break;
                        }
                        Err(error) => trace.record(format!("opening the accounts failed: {error}")),
                    },
                    Err(error) => trace.record(format!("opening the accounts failed: {error}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = setup_done.send(true);
            let mut rng = StdRng::seed_from_u64(options.seed ^ 0xa0d1);
            let mut failed_audits = 0u32;
            loop {
                let (finished, committed_before) = {
                    let shared = shared.lock().unwrap();
                    let latest = shared.acknowledged.iter().map(|(_, _, commit_ts)| *commit_ts).max();
                    (shared.workers_done == options.workers, latest)
                };
                let read_mode = if rng.gen_bool(0.5) {
                    ReadMode::Follower
                } else {
                    ReadMode::Linearizable
                };
                match audit(&store, options.accounts, read_mode).await {
                    Ok((start_ts, balances)) => {
                        failed_audits = 0;
                        check_balances(&balances, &options, "an audit")?;
                        // Timestamps follow real time: a snapshot taken after a
                        // commit was acknowledged must include it.
                        if let Some(commit_ts) = committed_before.filter(|commit_ts| start_ts <= *commit_ts) {
                            return Err(format!(
                                "an audit started after a commit at {commit_ts} was acknowledged, \
                                 but its snapshot is at {start_ts}"
                            )
                            .into());
                        }
                        shared.lock().unwrap().report.audits += 1;
                        if finished {
                            trace.record(format!("final balances {balances:?}"));
                            break;
                        }
                    }
                    Err(error) if error.retryable() || matches!(error, StoreError::Unknown(_)) => {
                        failed_audits += 1;
                        if failed_audits == AUDIT_FAILURES_TRACED {
                            trace.record(format!("{failed_audits} audits failed in a row; the last: {error}"));
                            for partition in 0..options.partitions {
                                for state in auditor_nemesis.partition_states(partition) {
                                    trace.record(format!("partition {partition}: {state}"));
                                }
                            }
                        }
                    }
                    Err(error) => return Err(format!("an audit failed for good: {error}").into()),
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..500))).await;
            }
            // Every acknowledged commit is still committed, at its timestamp.
            let acknowledged = shared.lock().unwrap().acknowledged.clone();
            for (primary, start_ts, commit_ts) in acknowledged {
                let partition = partition_of(&primary, store.partitions());
                let check = PartitionRequest::CheckTxnStatus {
                    primary: primary.clone(),
                    start_ts,
                    current_ts: Timestamp::MAX,
                };
                let mut attempts = 0u32;
                let status = loop {
                    match store.call(partition, check.clone()).await {
                        Ok(PartitionResponse::Status(status)) => break status,
                        Ok(other) => return Err(format!("unexpected answer {other:?}").into()),
                        Err(error) => {
                            attempts += 1;
                            if attempts == FINAL_CHECK_ATTEMPTS_MAX {
                                for state in auditor_nemesis.partition_states(partition) {
                                    trace.record(format!("partition {partition}: {state}"));
                                }
                                return Err(format!(
                                    "partition {partition} did not answer the final checks after healing: {error}"
                                )
                                .into());
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                    }
                };
                if status != (TxnStatus::Committed { commit_ts }) {
                    return Err(format!(
                        "the transfer that started at {start_ts} was acknowledged committed at {commit_ts}, \
                         but its primary now says {status:?}"
                    )
                    .into());
                }
            }
            let _ = checks_done.send(true);
            Ok(())
        });
    }

    // Workers.
    for (worker, host) in workers.iter().enumerate() {
        let (names, shared, options, trace) = (names.clone(), shared.clone(), options.clone(), trace.clone());
        let mut setup_signal = setup_signal.clone();
        sim.client(host.as_str(), async move {
            let store = connect(&names).await?;
            let _ = setup_signal.wait_for(|done| *done).await;
            let mut rng = StdRng::seed_from_u64(options.seed * 1_000 + worker as u64);
            // At least `transfers_per_worker`, and on until the faults are over.
            for done in 0..TRANSFERS_PER_WORKER_MAX {
                if done >= options.transfers_per_worker && shared.lock().unwrap().faults_over {
                    break;
                }
                let from = rng.gen_range(0..options.accounts);
                let to = (from + rng.gen_range(1..options.accounts)) % options.accounts;
                let amount = rng.gen_range(1..=30);
                let primary = account(from).min(account(to));
                let abandon_after = rng
                    .gen_ratio(1, 10)
                    .then(|| Duration::from_millis(rng.gen_range(1..200)));
                let result = match abandon_after {
                    Some(limit) => match tokio::time::timeout(limit, transfer(&store, from, to, amount)).await {
                        Ok(result) => result,
                        Err(_) => {
                            shared.lock().unwrap().report.abandoned += 1;
                            continue;
                        }
                    },
                    None => transfer(&store, from, to, amount).await,
                };
                let mut shared = shared.lock().unwrap();
                match result {
                    Ok(Some((start_ts, commit_ts))) => {
                        shared.report.committed += 1;
                        shared.acknowledged.push((primary, start_ts, commit_ts));
                    }
                    Ok(None) => {}
                    Err(StoreError::Unknown(_)) => shared.report.unknown += 1,
                    Err(error) if error.retryable() => shared.report.refused += 1,
                    Err(error) => return Err(format!("worker {worker}: a transfer failed for good: {error}").into()),
                }
            }
            shared.lock().unwrap().workers_done += 1;
            trace.record(format!("worker {worker} done"));
            Ok(())
        });
    }

    // Register clients: single-key puts, gets and compare-and-sets.
    for (index, host) in registers.iter().enumerate() {
        let (names, shared, options) = (names.clone(), shared.clone(), options.clone());
        let mut setup_signal = setup_signal.clone();
        sim.client(host.as_str(), async move {
            let store = connect(&names).await?;
            let _ = setup_signal.wait_for(|done| *done).await;
            let client_id = index as u64 + 1;
            let mut rng = StdRng::seed_from_u64(options.seed * 7_919 + index as u64);
            for sequence in 0..REGISTER_OPERATIONS_MAX {
                if shared.lock().unwrap().faults_over && sequence >= 20 {
                    break;
                }
                let key = register(rng.gen_range(0..options.register_keys));
                let value = format!("{client_id}-{sequence}").into_bytes();
                let input = match rng.gen_range(0..10) {
                    0..=3 => KvInput::Put { key, value },
                    4..=6 => KvInput::Get {
                        key,
                        linearizable: true,
                    },
                    7 => KvInput::Get {
                        key,
                        linearizable: false,
                    },
                    _ => {
                        let expected = (rng.gen_bool(0.3))
                            .then(|| format!("{client_id}-{}", sequence.saturating_sub(1)).into_bytes());
                        KvInput::CompareAndSet {
                            key,
                            expected,
                            new_value: value,
                        }
                    }
                };
                let id = shared
                    .lock()
                    .unwrap()
                    .history
                    .invoke(client_id, now_nanos(), input.clone());
                let outcome = register_operation(&store, &input, rng.gen_bool(0.5)).await;
                shared.lock().unwrap().history.complete(id, now_nanos(), outcome);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
            }
            shared.lock().unwrap().registers_done += 1;
            Ok(())
        });
    }

    // The nemesis: the network and node lanes of a seeded schedule and the
    // store lane, then healing and the store's convergence.
    {
        let nemesis = cluster.nemesis();
        let monitor = cluster.monitor().clone();
        let (shared, options, trace) = (shared.clone(), options.clone(), trace.clone());
        let mut setup_signal = setup_signal.clone();
        let mut checks_signal = checks_signal.clone();
        sim.client(NEMESIS_HOST, async move {
            // Faults start once the accounts are open, so they hit the transfers.
            let _ = setup_signal.wait_for(|done| *done).await;
            let started = turmoil::sim_elapsed().unwrap_or_default();
            let mut nemesis_options = options.nemesis.clone();
            nemesis_options.quiet_start = nemesis_options.quiet_start.max(started);
            nemesis_options.faults_until = started + options.fault_time;
            let schedule = Schedule::generate(options.seed, &nemesis_options);
            let episodes = schedule.network.len() + schedule.nodes.len();
            trace.record(format!(
                "nemesis: {episodes} episodes until {:?}",
                nemesis_options.faults_until
            ));
            let context = LaneContext {
                nemesis: nemesis.clone(),
                trace: trace.clone(),
                monitor: monitor.clone(),
                seed: options.seed,
                faults_until: nemesis_options.faults_until,
            };
            // Record every change of the shard map, for replays.
            {
                let (nemesis, trace) = (nemesis.clone(), trace.clone());
                tokio::spawn(async move {
                    let mut last = String::new();
                    loop {
                        let summary = match nemesis.shard_map() {
                            Some(map) => map
                                .records
                                .iter()
                                .enumerate()
                                .map(|(partition, record)| {
                                    format!(
                                        "p{partition} e{} {:x?}{}",
                                        record.epoch,
                                        record.replicas,
                                        record
                                            .moving
                                            .map(|intent| format!(" +{:x?} -{:x?}", intent.add, intent.remove))
                                            .unwrap_or_default()
                                    )
                                })
                                .chain(
                                    map.nodes
                                        .iter()
                                        .filter(|(_, node)| node.draining)
                                        .map(|(id, _)| format!("draining {id:x}")),
                                )
                                .collect::<Vec<_>>()
                                .join(" | "),
                            None => "no shard map".into(),
                        };
                        if summary != last {
                            trace.record(format!("shard map: {summary}"));
                            last = summary;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                });
            }
            let mut store_options = options.clone();
            store_options.nemesis.faults_until = nemesis_options.faults_until;
            futures::future::join3(
                nemesis::run_network_lane(context.clone(), schedule.network),
                nemesis::run_node_lane(context.clone(), schedule.nodes),
                run_store_lane(nemesis.clone(), store_options, shared.clone(), trace.clone()),
            )
            .await;
            nemesis::heal_all(&nemesis, &trace).await;
            {
                let mut shared = shared.lock().unwrap();
                shared.faults_over = true;
                shared.report.faults += episodes;
            }
            trace.record("faults over");
            // The transfers and registers finish, the auditor checks; then
            // the store must settle with identical replicas.
            let _ = checks_signal.wait_for(|done| *done).await;
            while shared.lock().unwrap().registers_done < options.register_clients {
                tokio::time::sleep(CONVERGENCE_POLL).await;
            }
            let moves = converge(&nemesis, &trace).await?;
            shared.lock().unwrap().report.moves = moves;
            Ok(())
        });
    }

    let result = cluster.run(&mut sim).map_err(|error| error.to_string());
    let (report, history) = {
        let shared = shared.lock().unwrap();
        (shared.report.clone(), shared.history.clone())
    };
    result?;
    let violations: Vec<String> = cluster.monitor().violations().iter().map(ToString::to_string).collect();
    if !violations.is_empty() {
        return Err(format!("invariants violated: {}", violations.join("; ")));
    }
    match zongheng_check::check_register(&history) {
        zongheng_check::Verdict::Linearizable => {}
        zongheng_check::Verdict::NotLinearizable(report) => {
            return Err(format!("the register history is not linearizable: {report}"))
        }
        zongheng_check::Verdict::Unknown { reason } => {
            trace.record(format!("the register history could not be judged: {reason}"));
        }
    }
    Ok(BankReport {
        register_operations: history.operations.len(),
        ..report
    })
}
