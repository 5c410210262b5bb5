//! The client's half of a Percolator transaction: snapshot reads with lock
//! resolution, buffered writes, and the two-phase commit.
//!
//! A [`Transaction`] takes a start timestamp from the oracle, reads at it,
//! and buffers its writes. [`Transaction::commit`]:
//!
//! 1. picks the smallest written key as the **primary** and prewrites every
//!    partition's share of the writes, all partitions at once;
//! 2. takes a commit timestamp from the oracle (after every lock is in
//!    place, so any reader at or above it meets the locks);
//! 3. commits the primary key: **the commit point**; once that is applied the
//!    transaction is committed whatever happens to this client;
//! 4. commits the secondaries, best effort: a lock left behind is rolled
//!    forward by the next reader that meets it.
//!
//! A reader or writer that meets another transaction's lock asks the lock's
//! primary partition for the transaction's status, which rolls the
//! transaction back if its lock outlived its TTL, then resolves the lock
//! (commit or rollback) and tries again; a live lock is waited for, up to the
//! transaction's deadline.
//!
//! Every partition request is idempotent (see [`request`](super::request)),
//! so a request whose outcome is unknown is sent again until the deadline.
//! If the primary's commit still has no known outcome then, the commit
//! returns [`StoreError::Unknown`]: the transaction may or may not have
//! committed, as with a timed-out etcd write.
//!
//! The transport is a trait, so the same protocol runs over the network, in
//! the simulator and in the model test below (bank transfers with clients
//! that die mid-commit).
//!
//! Not done yet: lock TTL heartbeats for transactions that run longer than
//! their TTL, and pessimistic locking.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;
use zongheng_algo::{partition_of, PartitionId};

use super::group::ReadMode;
use super::request::{PartitionRequest, PartitionResponse, BATCH_GET_KEYS_MAX, BATCH_KEYS_MAX};
use super::timestamp::Timestamp;
use super::txn::{LockInfo, Mutation, Row, TxnError, TxnStatus};

/// Lock TTL a transaction asks for unless told otherwise.
pub const LOCK_TTL_MS_DEFAULT: u64 = 3_000;
/// How long a transaction's reads and commit may take unless told otherwise.
pub const TXN_DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Longest pause before asking again about a live lock or retrying a
/// request that failed in transit.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(100);
/// First pause of the backoff.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(5);
/// Rows asked of one partition per scan request.
pub const SCAN_PAGE_ROWS: usize = 1_000;
/// Partitions a scan reads at once.
pub const SCAN_PARTITIONS_IN_FLIGHT: usize = 16;

/// Why a store operation failed, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The partition refused it; see the transaction error's code.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// The partition refused the request's routing (a stale shard-map epoch, a
    /// key sent to the wrong partition).
    #[error(transparent)]
    Partition(super::app::PartitionError),
    /// The node refused the request as malformed or impossible (no data
    /// store, no such partition); retrying cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// Not applied: no route, no leader, connection refused. Safe to retry.
    #[error("partition unavailable: {0}")]
    Unavailable(String),
    /// Sent, but no answer: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The transaction's deadline passed while retrying or waiting for a lock.
    #[error("transaction deadline exceeded")]
    Timeout,
}

impl StoreError {
    /// The stable code clients and operators match on.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Txn(error) => error.code(),
            StoreError::Partition(error) => error.code(),
            StoreError::Refused(_) => "ZH_STORE_REFUSED",
            StoreError::Unavailable(_) => "ZH_STORE_UNAVAILABLE",
            StoreError::Unknown(_) => "ZH_STORE_OUTCOME_UNKNOWN",
            StoreError::Timeout => "ZH_TIMEOUT",
        }
    }

    /// Whether restarting the whole transaction may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Txn(error) => error.retryable(),
            StoreError::Partition(error) => matches!(
                error,
                super::app::PartitionError::StaleEpoch { .. } | super::app::PartitionError::NotInitialized
            ),
            StoreError::Unavailable(_) | StoreError::Timeout => true,
            StoreError::Unknown(_) | StoreError::Refused(_) => false,
        }
    }

    /// How a partition's refusal reads to a client (see `store::remote`
    /// for what each means for a retry).
    pub fn from_group(error: super::group::GroupError) -> StoreError {
        use super::group::GroupError;
        match error {
            GroupError::Partition(super::app::PartitionError::Txn(error)) => StoreError::Txn(error),
            GroupError::Partition(error) => StoreError::Partition(error),
            GroupError::Timeout | GroupError::Internal(_) => StoreError::Unknown(error.to_string()),
            GroupError::NoLeader(_)
            | GroupError::NotLeader { .. }
            | GroupError::Stopped
            | GroupError::TooStale { .. } => StoreError::Unavailable(error.to_string()),
        }
    }

    fn in_transit(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Unknown(_))
    }
}

/// How a client reaches the timestamp oracle and the partitions.
pub trait PartitionTransport: Send + Sync {
    /// P, the cluster's partition count.
    fn partitions(&self) -> u32;
    /// One fresh timestamp from the oracle.
    fn timestamp(&self) -> impl Future<Output = Result<Timestamp, StoreError>> + Send;
    /// One request to the leader of `partition`.
    fn call(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
    ) -> impl Future<Output = Result<PartitionResponse, StoreError>> + Send;
    /// One read to `partition`, as fresh as `mode` asks (a transport that
    /// only knows leaders serves every read linearizably).
    fn read(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
        mode: ReadMode,
    ) -> impl Future<Output = Result<PartitionResponse, StoreError>> + Send {
        let _ = mode;
        self.call(partition, request)
    }
}

/// Knobs of one transaction.
#[derive(Debug, Clone)]
pub struct TxnOptions {
    pub lock_ttl_ms: u64,
    pub deadline: Duration,
    /// How fresh its reads must be. `Follower` keeps snapshot isolation
    /// (a read index from the leader first); `Stale` may miss commits before
    /// the start timestamp, so a transaction that reads stale and writes is
    /// no longer snapshot-isolated: use it for read-only work that tolerates
    /// old data.
    pub read_mode: ReadMode,
}

impl Default for TxnOptions {
    fn default() -> Self {
        Self {
            lock_ttl_ms: LOCK_TTL_MS_DEFAULT,
            deadline: TXN_DEADLINE_DEFAULT,
            read_mode: ReadMode::Linearizable,
        }
    }
}

/// An optimistic, snapshot-isolated transaction (see the module doc).
pub struct Transaction<'t, T: PartitionTransport> {
    transport: &'t T,
    start_ts: Timestamp,
    writes: BTreeMap<Vec<u8>, Mutation>,
    options: TxnOptions,
    deadline: Instant,
}

impl<'t, T: PartitionTransport> Transaction<'t, T> {
    pub async fn begin(transport: &'t T, options: TxnOptions) -> Result<Self, StoreError> {
        let deadline = Instant::now() + options.deadline;
        let start_ts = retry(deadline, || transport.timestamp()).await?;
        Ok(Self {
            transport,
            start_ts,
            writes: BTreeMap::new(),
            options,
            deadline,
        })
    }

    pub fn start_ts(&self) -> Timestamp {
        self.start_ts
    }

    /// The value of `key` in this transaction's snapshot, with its own writes applied.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(mutation) = self.writes.get(key) {
            return Ok(match mutation {
                Mutation::Put { value, .. } => Some(value.clone()),
                Mutation::Delete { .. } => None,
            });
        }
        let partition = partition_of(key, self.transport.partitions());
        let request = PartitionRequest::Get {
            key: key.to_vec(),
            ts: self.start_ts,
        };
        match self.call_resolving(partition, request).await? {
            PartitionResponse::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// The values of `keys` in this transaction's snapshot (with its own
    /// writes applied), in the order asked: one request per partition, all
    /// partitions at once. More than [`BATCH_KEYS_MAX`] keys are refused
    /// with `ZH_STORE_BATCH_TOO_LARGE` before anything is sent.
    pub async fn batch_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.len() > BATCH_KEYS_MAX {
            return Err(StoreError::Txn(TxnError::TooManyKeys {
                count: keys.len(),
                limit: BATCH_KEYS_MAX,
            }));
        }
        let partitions = self.transport.partitions();
        let mut asked: BTreeMap<PartitionId, Vec<Vec<u8>>> = BTreeMap::new();
        for key in keys {
            if !self.writes.contains_key(key) {
                asked
                    .entry(partition_of(key, partitions))
                    .or_default()
                    .push(key.clone());
            }
        }
        let reads = asked.into_iter().flat_map(|(partition, keys)| {
            keys.chunks(BATCH_GET_KEYS_MAX)
                .map(|chunk| {
                    let request = PartitionRequest::BatchGet {
                        keys: chunk.to_vec(),
                        ts: self.start_ts,
                    };
                    let chunk = chunk.to_vec();
                    async move {
                        match self.call_resolving(partition, request).await? {
                            PartitionResponse::Values(values) if values.len() == chunk.len() => {
                                Ok(chunk.into_iter().zip(values).collect::<Vec<_>>())
                            }
                            other => Err(unexpected(other)),
                        }
                    }
                })
                .collect::<Vec<_>>()
        });
        let mut found: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for answer in futures::future::join_all(reads).await {
            found.extend(answer?);
        }
        Ok(keys
            .iter()
            .map(|key| match self.writes.get(key) {
                Some(Mutation::Put { value, .. }) => Some(value.clone()),
                Some(Mutation::Delete { .. }) => None,
                None => found.get(key).cloned().flatten(),
            })
            .collect())
    }

    /// Keys in `[start, end)` (`end` empty: no upper bound) in this
    /// transaction's snapshot, with its own writes applied, in key order, at
    /// most `limit`. Hash partitioning scatters a range over every
    /// partition: each is scanned (page by page, resolving locks) and the
    /// answers are merged.
    pub async fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Row>, StoreError> {
        let in_range = |key: &[u8]| key >= start && (end.is_empty() || key < end);
        // This transaction's deletes may hide stored rows: fetch that many more.
        let deletes = self
            .writes
            .iter()
            .filter(|(key, mutation)| in_range(key) && matches!(mutation, Mutation::Delete { .. }))
            .count();
        let wanted = limit.saturating_add(deletes);
        // Every partition at once (a bounded number in flight), each paged
        // until it has `wanted` rows of its own: its keys beyond those cannot
        // be among the `limit` smallest of the merge.
        let scans = (0..self.transport.partitions()).map(|partition| async move {
            let mut rows_here: Vec<Row> = Vec::new();
            let mut cursor = start.to_vec();
            loop {
                let request = PartitionRequest::Scan {
                    start: cursor.clone(),
                    end: end.to_vec(),
                    ts: self.start_ts,
                    limit: SCAN_PAGE_ROWS,
                };
                let rows = match self.call_resolving(partition, request).await? {
                    PartitionResponse::Rows(rows) => rows,
                    other => return Err(unexpected(other)),
                };
                let full_page = rows.len() == SCAN_PAGE_ROWS;
                if let Some((last, _)) = rows.last() {
                    // The next page starts just after the last key.
                    cursor = last.clone();
                    cursor.push(0);
                }
                rows_here.extend(rows);
                if !full_page || rows_here.len() >= wanted {
                    return Ok(rows_here);
                }
            }
        });
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut answers = futures::stream::iter(scans).buffer_unordered(SCAN_PARTITIONS_IN_FLIGHT);
        while let Some(rows) = futures::StreamExt::next(&mut answers).await {
            merged.extend(rows?);
        }
        for (key, mutation) in self.writes.iter().filter(|(key, _)| in_range(key)) {
            match mutation {
                Mutation::Put { value, .. } => {
                    merged.insert(key.clone(), value.clone());
                }
                Mutation::Delete { .. } => {
                    merged.remove(key);
                }
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        self.writes.insert(
            key.clone(),
            Mutation::Put {
                key,
                value: value.into(),
            },
        );
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.writes.insert(key.clone(), Mutation::Delete { key });
    }

    /// Commit (see the module doc); returns the commit timestamp (the start
    /// timestamp for a transaction that wrote nothing).
    pub async fn commit(self) -> Result<Timestamp, StoreError> {
        let Some(primary) = self.writes.keys().next().cloned() else {
            return Ok(self.start_ts);
        };
        if self.writes.len() > BATCH_KEYS_MAX {
            return Err(StoreError::Txn(TxnError::TooManyKeys {
                count: self.writes.len(),
                limit: BATCH_KEYS_MAX,
            }));
        }
        let partitions = self.transport.partitions();
        let mut groups: BTreeMap<PartitionId, Vec<Mutation>> = BTreeMap::new();
        for (key, mutation) in &self.writes {
            groups
                .entry(partition_of(key, partitions))
                .or_default()
                .push(mutation.clone());
        }

        // Phase 1: lock everything.
        let prewrites = groups.iter().map(|(&partition, mutations)| {
            let request = PartitionRequest::Prewrite {
                mutations: mutations.clone(),
                primary: primary.clone(),
                start_ts: self.start_ts,
                ttl_ms: self.options.lock_ttl_ms,
            };
            self.call_resolving(partition, request)
        });
        let results = futures::future::join_all(prewrites).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            self.roll_back(&groups).await;
            return Err(error);
        }

        // Phase 2: the commit point is the primary's commit.
        let commit_ts = retry(self.deadline, || self.transport.timestamp()).await?;
        let primary_partition = partition_of(&primary, partitions);
        let commit_primary = PartitionRequest::Commit {
            keys: vec![primary.clone()],
            start_ts: self.start_ts,
            commit_ts,
        };
        match retry(self.deadline, || {
            self.transport.call(primary_partition, commit_primary.clone())
        })
        .await
        {
            Ok(_) => {}
            Err(StoreError::Timeout) => {
                return Err(StoreError::Unknown(format!(
                    "the commit of transaction {} was sent but not confirmed before the deadline",
                    self.start_ts
                )))
            }
            Err(error) => {
                // Refused (rolled back by a reader after the TTL): release the secondaries now.
                self.roll_back(&groups).await;
                return Err(error);
            }
        }

        // Secondaries, once each: a lock left behind is rolled forward by its next reader.
        let secondaries = groups.iter().filter_map(|(&partition, mutations)| {
            let keys: Vec<Vec<u8>> = mutations
                .iter()
                .map(|mutation| mutation.key().to_vec())
                .filter(|key| *key != primary)
                .collect();
            (!keys.is_empty()).then(|| {
                self.transport.call(
                    partition,
                    PartitionRequest::Commit {
                        keys,
                        start_ts: self.start_ts,
                        commit_ts,
                    },
                )
            })
        });
        futures::future::join_all(secondaries).await;
        Ok(commit_ts)
    }

    /// Undo a failed prewrite, best effort: locks not removed here are
    /// rolled back by readers once their TTL passes.
    async fn roll_back(&self, groups: &BTreeMap<PartitionId, Vec<Mutation>>) {
        let rollbacks = groups.iter().map(|(&partition, mutations)| {
            self.transport.call(
                partition,
                PartitionRequest::Rollback {
                    keys: mutations.iter().map(|mutation| mutation.key().to_vec()).collect(),
                    start_ts: self.start_ts,
                },
            )
        });
        futures::future::join_all(rollbacks).await;
    }

    /// `request`, resolving the locks it runs into and retrying requests
    /// lost in transit, until the deadline.
    async fn call_resolving(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
    ) -> Result<PartitionResponse, StoreError> {
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            let sent = if request.is_write() {
                self.transport.call(partition, request.clone()).await
            } else {
                self.transport
                    .read(partition, request.clone(), self.options.read_mode)
                    .await
            };
            let error = match sent {
                Ok(response) => return Ok(response),
                Err(StoreError::Txn(TxnError::Locked(lock))) if lock.start_ts != self.start_ts => {
                    match resolve_lock(self.transport, &lock, self.deadline).await? {
                        Resolved::Done => continue,
                        Resolved::Alive => StoreError::Txn(TxnError::Locked(lock)),
                    }
                }
                Err(error) if error.in_transit() => error,
                Err(error) => return Err(error),
            };
            if Instant::now() + pause > self.deadline {
                return Err(match error {
                    StoreError::Unknown(_) => error,
                    _ => StoreError::Timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }
}

enum Resolved {
    /// The lock is gone (rolled forward or back): try again at once.
    Done,
    /// Its transaction is alive: wait and try again.
    Alive,
}

/// Settle the transaction behind `lock` from its primary, and resolve `lock`'s key.
async fn resolve_lock<T: PartitionTransport>(
    transport: &T,
    lock: &LockInfo,
    deadline: Instant,
) -> Result<Resolved, StoreError> {
    let partitions = transport.partitions();
    let current_ts = retry(deadline, || transport.timestamp()).await?;
    let check = PartitionRequest::CheckTxnStatus {
        primary: lock.primary.clone(),
        start_ts: lock.start_ts,
        current_ts,
    };
    let status = match retry(deadline, || {
        transport.call(partition_of(&lock.primary, partitions), check.clone())
    })
    .await?
    {
        PartitionResponse::Status(status) => status,
        other => return Err(unexpected(other)),
    };
    let commit_ts = match status {
        TxnStatus::Locked { .. } => return Ok(Resolved::Alive),
        TxnStatus::Committed { commit_ts } => Some(commit_ts),
        TxnStatus::RolledBack => None,
    };
    let resolve = PartitionRequest::Resolve {
        keys: vec![lock.key.clone()],
        start_ts: lock.start_ts,
        commit_ts,
    };
    retry(deadline, || {
        transport.call(partition_of(&lock.key, partitions), resolve.clone())
    })
    .await?;
    Ok(Resolved::Done)
}

/// `attempt` until it gives an answer other than "lost in transit", or the deadline.
async fn retry<R, F, Fut>(deadline: Instant, mut attempt: F) -> Result<R, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<R, StoreError>>,
{
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        match attempt().await {
            Err(error) if error.in_transit() => {
                if Instant::now() + pause > deadline {
                    return Err(StoreError::Timeout);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

fn unexpected(response: PartitionResponse) -> StoreError {
    StoreError::Unavailable(format!("unexpected response from the partition: {response:?}"))
}

#[cfg(test)]
mod tests;
