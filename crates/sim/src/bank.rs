//! The data store's bank workload: money moves between accounts that live in
//! different partitions (each its own Raft group), through Percolator
//! transactions, while the nemesis partitions and crashes nodes.
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
//!   acknowledged reads at a later timestamp (so it sees that commit).
//!
//! Clients talk to the cluster only through the store's gRPC API
//! ([`RemoteStore`]), each worker from its own simulated host, so partitions
//! cut clients off as they cut nodes off. One transfer in ten is abandoned at
//! a random point (the client "dies"), leaving locks for others to resolve.
//!
//! Not yet here (issue 6): replica moves during the run, wiped disks, and a
//! 1,000-seed campaign through the `sim` binary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zongheng::net::transport::channel;
use zongheng::store::client::{PartitionTransport, StoreError, Transaction, TxnOptions};
use zongheng::store::remote::RemoteStore;
use zongheng::store::request::{PartitionRequest, PartitionResponse};
use zongheng::store::timestamp::Timestamp;
use zongheng::store::txn::TxnStatus;
use zongheng_algo::partition_of;

use crate::cluster::{SimCluster, SimOptions, CLIENT_PORT};
use crate::trace::Trace;
use crate::transport::SimTransport;

/// What a bank run does.
#[derive(Debug, Clone)]
pub struct BankOptions {
    pub seed: u64,
    /// Initial members; with more than 3, a node may hold no replica of a
    /// partition and forwards its requests to one that does.
    pub nodes: usize,
    pub partitions: u32,
    pub accounts: usize,
    pub initial_balance: u64,
    /// Client hosts moving money.
    pub workers: usize,
    pub transfers_per_worker: usize,
    /// Simulated time during which the nemesis injects faults.
    pub fault_time: Duration,
}

impl BankOptions {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            partitions: 4,
            accounts: 8,
            initial_balance: 100,
            workers: 3,
            transfers_per_worker: 40,
            fault_time: Duration::from_secs(30),
        }
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
    pub faults: usize,
}

/// Most transfers one worker makes, however long the faults last.
const TRANSFERS_PER_WORKER_MAX: usize = 2_000;

#[derive(Default)]
struct Shared {
    /// The nemesis has healed everything.
    faults_over: bool,
    report: BankReport,
    /// (primary key, start ts, commit ts) of every acknowledged commit.
    acknowledged: Vec<(Vec<u8>, Timestamp, Timestamp)>,
    workers_done: usize,
}

fn account(index: usize) -> Vec<u8> {
    format!("bank/account/{index:03}").into_bytes()
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
        let dialer: zongheng::store::remote::Dialer = Arc::new(|url: &str| {
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

/// Every balance in one snapshot, and its start timestamp.
async fn audit(store: &RemoteStore, accounts: usize) -> Result<(Timestamp, Vec<u64>), StoreError> {
    let txn = Transaction::begin(store, TxnOptions::default()).await?;
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

/// One seeded run (see the module doc); `Err` names the violated property.
pub fn run_bank(options: &BankOptions, trace: &Trace) -> Result<BankReport, String> {
    let sim_options = SimOptions {
        node_count: options.nodes,
        store_partitions: options.partitions,
        simulation_duration: options.fault_time + Duration::from_secs(240),
        ..SimOptions::new(options.seed)
    };
    let cluster = SimCluster::new(sim_options);
    let mut sim = cluster.build_sim();
    let names = cluster.names().to_vec();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (setup_done, setup_signal) = tokio::sync::watch::channel(false);

    // Setup and audits, then the final checks.
    {
        let (names, shared, options, trace) = (names.clone(), shared.clone(), options.clone(), trace.clone());
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
            loop {
                let (finished, committed_before) = {
                    let shared = shared.lock().unwrap();
                    let latest = shared.acknowledged.iter().map(|(_, _, commit_ts)| *commit_ts).max();
                    (shared.workers_done == options.workers, latest)
                };
                match audit(&store, options.accounts).await {
                    Ok((start_ts, balances)) => {
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
                    Err(error) if error.retryable() || matches!(error, StoreError::Unknown(_)) => {}
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
                let status = loop {
                    match store.call(partition, check.clone()).await {
                        Ok(PartitionResponse::Status(status)) => break status,
                        Ok(other) => return Err(format!("unexpected answer {other:?}").into()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
            Ok(())
        });
    }

    // Workers.
    for worker in 0..options.workers {
        let (names, shared, options, trace) = (names.clone(), shared.clone(), options.clone(), trace.clone());
        let mut setup_signal = setup_signal.clone();
        sim.client(format!("bank-{worker}"), async move {
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

    // The nemesis: a partition or a crash every few seconds, healed before the end.
    {
        let nemesis = cluster.nemesis();
        let (names, shared, options, trace) = (names.clone(), shared.clone(), options.clone(), trace.clone());
        let mut setup_signal = setup_signal.clone();
        sim.client("bank-nemesis", async move {
            let mut rng = StdRng::seed_from_u64(options.seed ^ 0x5eed);
            // Faults start once the accounts are open, so they hit the transfers.
            let _ = setup_signal.wait_for(|done| *done).await;
            let started = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1_000))).await;
            while started.elapsed() < options.fault_time {
                let victim = names[rng.gen_range(0..names.len())].clone();
                let others: Vec<String> = names.iter().filter(|name| **name != victim).cloned().collect();
                let hold = Duration::from_millis(rng.gen_range(500..3_000));
                if rng.gen_bool(0.5) {
                    trace.record(format!("partition {victim} from {others:?} for {hold:?}"));
                    nemesis.partition(&[victim.as_str()], &others);
                    tokio::time::sleep(hold).await;
                    nemesis.repair(&[victim.as_str()], &others);
                } else {
                    trace.record(format!("crash {victim} for {hold:?}"));
                    nemesis.crash(&victim).await;
                    tokio::time::sleep(hold).await;
                    nemesis.restart(&victim).await;
                }
                shared.lock().unwrap().report.faults += 1;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
            }
            trace.record("faults over");
            shared.lock().unwrap().faults_over = true;
            Ok(())
        });
    }

    let result = cluster.run(&mut sim).map_err(|error| error.to_string());
    let report = shared.lock().unwrap().report.clone();
    result.map(|()| report)
}
