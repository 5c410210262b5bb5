//! The transaction protocol against a model of the partitions: bank
//! transfers across partitions, with requests lost before or after they are
//! applied and clients that die at any point of a commit.
//!
//! The model keeps each partition as one [`TxnStore`] (what its Raft group
//! applies), so this tests the protocol, not replication; the simulator tests
//! the two together. Time is tokio's paused clock, so lock TTLs expire in
//! virtual time and a seed replays exactly.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use super::*;
use crate::store::timestamp::{Allocation, TimestampOracle};
use crate::store::txn::TxnStore;

const ACCOUNTS: usize = 8;
const INITIAL_BALANCE: u64 = 100;
const PARTITIONS: u32 = 4;
const TRANSFER_WORKERS: u64 = 4;
const TRANSFERS_PER_WORKER: usize = 25;
const AUDITORS: u64 = 2;
const AUDITS_PER_AUDITOR: usize = 10;

struct Model {
    partitions: Vec<Mutex<TxnStore>>,
    oracle: Mutex<TimestampOracle>,
    epoch: Instant,
    rng: Mutex<StdRng>,
    /// Chance, in percent, that a request is lost before it is applied, and
    /// again that its answer is lost after.
    loss_percent: u32,
}

impl Model {
    fn new(seed: u64, loss_percent: u32) -> Self {
        Self {
            partitions: (0..PARTITIONS).map(|_| Mutex::new(TxnStore::default())).collect(),
            oracle: Mutex::new(TimestampOracle::start_leading(0)),
            epoch: Instant::now(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            loss_percent,
        }
    }

    fn lost(&self) -> bool {
        self.rng.lock().unwrap().gen_range(0..100) < self.loss_percent
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.rng.lock().unwrap().gen_range(0..4_000))
    }
}

impl PartitionTransport for Model {
    fn partitions(&self) -> u32 {
        PARTITIONS
    }

    async fn timestamp(&self) -> Result<Timestamp, StoreError> {
        tokio::time::sleep(self.delay()).await;
        if self.lost() {
            return Err(StoreError::Unavailable("timestamp request lost".into()));
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        let mut oracle = self.oracle.lock().unwrap();
        loop {
            match oracle.allocate(1, now_ms).unwrap() {
                Allocation::Granted { first, .. } => return Ok(first),
                Allocation::PersistFirst { high_water_ms } => oracle.persisted(high_water_ms),
            }
        }
    }

    async fn call(&self, partition: PartitionId, request: PartitionRequest) -> Result<PartitionResponse, StoreError> {
        tokio::time::sleep(self.delay()).await;
        if self.lost() {
            return Err(StoreError::Unavailable("request lost before it arrived".into()));
        }
        let result = self.partitions[partition as usize].lock().unwrap().execute(request);
        tokio::time::sleep(self.delay()).await;
        if self.lost() {
            return Err(StoreError::Unknown("answer lost after the request was applied".into()));
        }
        result.map_err(StoreError::Txn)
    }
}

fn account(index: usize) -> Vec<u8> {
    format!("account/{index}").into_bytes()
}

fn balance(value: Option<Vec<u8>>) -> u64 {
    let value = value.expect("every account exists");
    String::from_utf8(value).unwrap().parse().unwrap()
}

/// One transfer; `Ok(Some((start_ts, commit_ts)))` when it committed.
async fn transfer(
    model: &Model,
    from: usize,
    to: usize,
    amount: u64,
) -> Result<Option<(Timestamp, Timestamp)>, StoreError> {
    let mut txn = Transaction::begin(model, TxnOptions::default()).await?;
    let from_balance = balance(txn.get(&account(from)).await?);
    let to_balance = balance(txn.get(&account(to)).await?);
    if from_balance < amount {
        return Ok(None);
    }
    txn.put(account(from), (from_balance - amount).to_string());
    txn.put(account(to), (to_balance + amount).to_string());
    let start_ts = txn.start_ts();
    let commit_ts = txn.commit().await?;
    Ok(Some((start_ts, commit_ts)))
}

/// Every balance in one snapshot, with one batch read (a request per partition).
async fn audit(model: &Model) -> Result<Vec<u64>, StoreError> {
    let txn = Transaction::begin(model, TxnOptions::default()).await?;
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
    Ok(txn.batch_get(&keys).await?.into_iter().map(balance).collect())
}

fn check_snapshot(balances: &[u64], when: &str) {
    let total: u64 = balances.iter().sum();
    assert_eq!(
        total,
        ACCOUNTS as u64 * INITIAL_BALANCE,
        "{when}: balances {balances:?}"
    );
}

#[derive(Debug, Default)]
struct Outcomes {
    committed: Vec<(Vec<u8>, Timestamp, Timestamp)>,
    refused: usize,
    unknown: usize,
    crashed: usize,
    audits: usize,
}

async fn run_bank(seed: u64) -> Outcomes {
    let model = Arc::new(Model::new(seed, 5));
    loop {
        let mut setup = Transaction::begin(&*model, TxnOptions::default()).await.unwrap();
        for index in 0..ACCOUNTS {
            setup.put(account(index), INITIAL_BALANCE.to_string());
        }
        if setup.commit().await.is_ok() {
            break;
        }
    }

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut tasks = JoinSet::new();
    for worker in 0..TRANSFER_WORKERS {
        let (model, outcomes) = (model.clone(), outcomes.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1_000 + worker);
            for _ in 0..TRANSFERS_PER_WORKER {
                let from = rng.gen_range(0..ACCOUNTS);
                let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                let amount = rng.gen_range(1..=30);
                let primary = account(from).min(account(to));
                // One client in eight dies somewhere in its transaction.
                let crash_after = rng.gen_ratio(1, 8).then(|| Duration::from_millis(rng.gen_range(1..40)));
                let result = match crash_after {
                    Some(limit) => match tokio::time::timeout(limit, transfer(&model, from, to, amount)).await {
                        Ok(result) => result,
                        Err(_) => {
                            outcomes.lock().unwrap().crashed += 1;
                            continue;
                        }
                    },
                    None => transfer(&model, from, to, amount).await,
                };
                let mut outcomes = outcomes.lock().unwrap();
                match result {
                    Ok(Some((start_ts, commit_ts))) => outcomes.committed.push((primary, start_ts, commit_ts)),
                    Ok(None) => {}
                    Err(StoreError::Unknown(_)) => outcomes.unknown += 1,
                    Err(error) => {
                        assert!(error.retryable(), "a transfer failed for good: {error}");
                        outcomes.refused += 1;
                    }
                }
            }
        });
    }
    for auditor in 0..AUDITORS {
        let (model, outcomes) = (model.clone(), outcomes.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1_000 + 500 + auditor);
            for _ in 0..AUDITS_PER_AUDITOR {
                match audit(&model).await {
                    Ok(balances) => {
                        check_snapshot(&balances, &format!("seed {seed}, auditor {auditor}"));
                        outcomes.lock().unwrap().audits += 1;
                    }
                    Err(error) => assert!(error.retryable(), "an audit failed for good: {error}"),
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a worker panicked");
    }

    // Afterwards a reader resolves whatever the crashed clients left, and the money is all there.
    let balances = loop {
        if let Ok(balances) = audit(&model).await {
            break balances;
        }
    };
    check_snapshot(&balances, &format!("seed {seed}, final"));

    // No acknowledged commit is lost: each primary still says committed, at the acknowledged timestamp.
    let outcomes = Arc::try_unwrap(outcomes).unwrap().into_inner().unwrap();
    for (primary, start_ts, commit_ts) in &outcomes.committed {
        let partition = partition_of(primary, PARTITIONS) as usize;
        let status = model.partitions[partition]
            .lock()
            .unwrap()
            .check_txn_status(primary, *start_ts, Timestamp::MAX);
        assert_eq!(status, TxnStatus::Committed { commit_ts: *commit_ts }, "seed {seed}");
    }
    outcomes
}

#[tokio::test(start_paused = true)]
async fn bank_transfers_keep_the_total_through_lost_messages_and_dead_clients() {
    let mut totals = Outcomes::default();
    for seed in 0..30 {
        let outcomes = run_bank(seed).await;
        totals.committed.extend(outcomes.committed);
        totals.refused += outcomes.refused;
        totals.unknown += outcomes.unknown;
        totals.crashed += outcomes.crashed;
        totals.audits += outcomes.audits;
    }
    println!(
        "30 seeds: {} committed, {} refused (conflicts), {} unknown, {} clients died, {} audits",
        totals.committed.len(),
        totals.refused,
        totals.unknown,
        totals.crashed,
        totals.audits
    );
    // The run must exercise each path, or it shows nothing.
    assert!(totals.committed.len() > 500);
    assert!(totals.refused > 0 && totals.crashed > 0 && totals.audits > 300);
}

#[tokio::test(start_paused = true)]
async fn a_reader_rolls_a_dead_clients_transaction_forward_after_the_primary_committed() {
    let model = Model::new(7, 0);
    // A client prewrites two keys in different partitions, commits only the primary, and dies.
    let (a, b) = (b"account/0".to_vec(), b"account/1".to_vec());
    assert_ne!(partition_of(&a, PARTITIONS), partition_of(&b, PARTITIONS));
    let start_ts = model.timestamp().await.unwrap();
    let primary = a.clone().min(b.clone());
    for key in [&a, &b] {
        let request = PartitionRequest::Prewrite {
            mutations: vec![Mutation::Put {
                key: key.clone(),
                value: b"7".to_vec(),
            }],
            primary: primary.clone(),
            start_ts,
            ttl_ms: 60_000,
        };
        model.call(partition_of(key, PARTITIONS), request).await.unwrap();
    }
    let commit_ts = model.timestamp().await.unwrap();
    let commit = PartitionRequest::Commit {
        keys: vec![primary.clone()],
        start_ts,
        commit_ts,
    };
    model.call(partition_of(&primary, PARTITIONS), commit).await.unwrap();
    // A reader finds the secondary's lock and, without waiting for its TTL, rolls it forward.
    let reader = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    let before = Instant::now();
    for key in [&a, &b] {
        assert_eq!(reader.get(key).await.unwrap(), Some(b"7".to_vec()));
    }
    assert!(before.elapsed() < Duration::from_secs(1));
    assert!(model
        .partitions
        .iter()
        .all(|partition| partition.lock().unwrap().lock_count() == 0));
}

#[tokio::test(start_paused = true)]
async fn a_reader_waits_out_a_dead_clients_lock_then_rolls_it_back() {
    let model = Model::new(8, 0);
    let mut writer = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    writer.put(b"k".to_vec(), b"v".to_vec());
    let start_ts = writer.start_ts();
    // Prewrite by hand (the client dies before committing).
    let request = PartitionRequest::Prewrite {
        mutations: vec![Mutation::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }],
        primary: b"k".to_vec(),
        start_ts,
        ttl_ms: 1_000,
    };
    model.call(partition_of(b"k", PARTITIONS), request).await.unwrap();
    let reader = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    let before = Instant::now();
    assert_eq!(reader.get(b"k").await.unwrap(), None);
    let waited = before.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "read after {waited:?}, before the TTL ran out"
    );
    // The dead client's late commit is refused.
    assert_eq!(
        writer.commit().await.unwrap_err().code(),
        "ZH_TXN_ABORTED",
        "a commit after a rollback must fail"
    );
}

#[tokio::test(start_paused = true)]
async fn scan_merges_partitions_in_key_order_with_the_transactions_own_writes() {
    let model = Model::new(9, 0);
    let mut writer = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    for index in 0..2_500 {
        writer.put(format!("row/{index:05}"), format!("{index}"));
    }
    writer.put(b"other".to_vec(), b"x".to_vec());
    writer.commit().await.unwrap();
    let mut reader = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    reader.delete(b"row/00001".to_vec());
    reader.put(b"row/00001a".to_vec(), b"new".to_vec());
    let rows = reader.scan(b"row/", b"row0", 5).await.unwrap();
    let keys: Vec<String> = rows
        .iter()
        .map(|(key, _)| String::from_utf8(key.clone()).unwrap())
        .collect();
    assert_eq!(keys, ["row/00000", "row/00001a", "row/00002", "row/00003", "row/00004"]);
    // More rows than one page per partition, all of them, in order.
    let all = reader.scan(b"row/", b"row0", usize::MAX).await.unwrap();
    assert_eq!(all.len(), 2_500);
    assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0));
}

#[tokio::test(start_paused = true)]
async fn batch_get_answers_in_the_order_asked_with_the_transactions_own_writes() {
    let model = Model::new(11, 0);
    let mut writer = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    for index in 0..20 {
        writer.put(format!("key/{index:02}"), format!("v{index}"));
    }
    writer.commit().await.unwrap();
    let mut reader = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    reader.put(b"key/03".to_vec(), b"mine".to_vec());
    reader.delete(b"key/04".to_vec());
    let asked: Vec<Vec<u8>> = ["key/05", "key/03", "missing", "key/04", "key/19"]
        .iter()
        .map(|key| key.as_bytes().to_vec())
        .collect();
    let values = reader.batch_get(&asked).await.unwrap();
    let values: Vec<Option<&str>> = values
        .iter()
        .map(|value| value.as_deref().map(|bytes| std::str::from_utf8(bytes).unwrap()))
        .collect();
    assert_eq!(values, [Some("v5"), Some("mine"), None, None, Some("v19")]);

    // Oversized batches are refused before anything is sent, with a stable code.
    let too_many: Vec<Vec<u8>> = (0..=BATCH_KEYS_MAX)
        .map(|index| format!("k{index}").into_bytes())
        .collect();
    let error = reader.batch_get(&too_many).await.unwrap_err();
    assert_eq!(error.code(), "ZH_STORE_BATCH_TOO_LARGE");
    assert!(!error.retryable());
    let mut big = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    for key in &too_many {
        big.put(key.clone(), b"x".to_vec());
    }
    assert_eq!(big.commit().await.unwrap_err().code(), "ZH_STORE_BATCH_TOO_LARGE");
    let check = Transaction::begin(&model, TxnOptions::default()).await.unwrap();
    assert_eq!(
        check.get(b"k0").await.unwrap(),
        None,
        "nothing of the refused batch was written"
    );
}
