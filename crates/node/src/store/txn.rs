//! One partition's multi-version store with Percolator's locks: the part of
//! a distributed transaction that runs inside a partition's Raft group.
//!
//! Peng and Dabek, "Large-scale Incremental Processing Using Distributed
//! Transactions and Notifications" (OSDI 2010), as TiKV practises it. A
//! transaction reads at its `start_ts` and writes in two phases:
//!
//! 1. **Prewrite**: every written key gets a *lock* naming the transaction's
//!    primary key and its `start_ts`, holding the new value. A prewrite fails
//!    if the key is locked by another transaction, or if any transaction
//!    committed a write to it at or after `start_ts` (a write-write conflict:
//!    snapshot isolation's "first committer wins").
//! 2. **Commit**: the primary key's lock is replaced by a *write record* at
//!    `commit_ts`. That single step, inside one partition's Raft group, is
//!    the transaction's commit point. The secondaries are committed after it,
//!    by the client or, if the client died, by whoever finds their locks.
//!
//! A reader at `ts` that meets a lock with `start_ts <= ts` cannot know the
//! value yet: it asks the primary's partition ([`TxnStore::check_txn_status`])
//! and rolls the lock forward (the primary committed) or back (the primary
//! was rolled back, or its lock outlived its TTL), then reads again.
//!
//! A *rollback record* at `start_ts` marks a transaction as aborted on a key,
//! so a prewrite that arrives late (after a status check gave up on it)
//! cannot resurrect it.
//!
//! Every operation here is a deterministic function of the store and the
//! request: the TTL check compares the lock's `start_ts` with a `current_ts`
//! carried in the request, never a local clock, so every replica agrees.
//! Mutating operations check everything first and change nothing on error,
//! so a command is applied all or nothing.
//!
//! There is no one-phase commit yet. Writing at a commit timestamp chosen
//! before the write lands is only safe if no reader has read the partition at
//! or above that timestamp in between (a reader there would see the old value
//! first and the new one later, at the same snapshot); TiKV tracks the
//! largest read timestamp per partition for that. Until the partition leader
//! does, every write takes both phases.
//!
//! Values are inlined in write records (TiKV inlines short values the same
//! way); there is no separate data column. The whole store is in memory and
//! serialized into Raft snapshots, like `meta`'s; [`TxnStore::gc`] drops
//! versions no reader can ask for.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::timestamp::Timestamp;

/// Longest lock TTL a transaction may ask for. A client that dies holding
/// locks blocks readers of those keys for up to this long.
pub const LOCK_TTL_MS_MAX: u64 = 60_000;
/// Shortest lock TTL: below this, a transaction's own prewrite-to-commit
/// time would routinely exceed it and it would be rolled back by readers.
pub const LOCK_TTL_MS_MIN: u64 = 100;
/// Most mutations one prewrite (or one single-phase write) may carry.
pub const MUTATIONS_PER_REQUEST_MAX: usize = 4_096;

/// A key and its value, as scans return them.
pub type Row = (Vec<u8>, Vec<u8>);

/// One change a transaction makes to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Mutation {
    pub fn key(&self) -> &[u8] {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
        }
    }

    fn into_kind(self) -> WriteKind {
        match self {
            Mutation::Put { value, .. } => WriteKind::Put(value),
            Mutation::Delete { .. } => WriteKind::Delete,
        }
    }
}

/// A prewritten, not yet resolved, change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub primary: Vec<u8>,
    pub start_ts: Timestamp,
    pub ttl_ms: u64,
    pub kind: WriteKind,
}

impl Lock {
    /// Whether a client at `current_ts` may give up on this lock's owner.
    pub fn expired(&self, current_ts: Timestamp) -> bool {
        current_ts.physical_ms() >= self.start_ts.physical_ms().saturating_add(self.ttl_ms)
    }
}

/// What a write record (or a lock) does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteKind {
    Put(Vec<u8>),
    Delete,
    /// The transaction that started at this record's `start_ts` was rolled back.
    Rollback,
}

/// A committed (or rolled-back) version of a key, keyed by its commit ts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub start_ts: Timestamp,
    pub kind: WriteKind,
}

/// What a reader or writer ran into: a lock it must resolve first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub key: Vec<u8>,
    pub primary: Vec<u8>,
    pub start_ts: Timestamp,
    pub ttl_ms: u64,
}

/// Why a transactional operation failed. Each has a stable code
/// ([`TxnError::code`]) and says whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    #[error("key {:?} is locked by transaction {} (primary {:?}); resolve the lock and retry", String::from_utf8_lossy(&.0.key), .0.start_ts, String::from_utf8_lossy(&.0.primary))]
    Locked(LockInfo),
    #[error("write conflict on key {:?}: a transaction committed it at {conflict_commit_ts}, after this one started at {start_ts}; restart the transaction", String::from_utf8_lossy(key))]
    WriteConflict {
        key: Vec<u8>,
        start_ts: Timestamp,
        conflict_commit_ts: Timestamp,
    },
    #[error("transaction {start_ts} was rolled back (its locks expired or a reader gave up on it); restart it")]
    Aborted { start_ts: Timestamp },
    #[error(
        "transaction {start_ts} is unknown on key {:?}: it never prewrote this key, or it was cleaned up",
        String::from_utf8_lossy(key)
    )]
    NotFound { key: Vec<u8>, start_ts: Timestamp },
    #[error("transaction {start_ts} is already committed at {commit_ts} and cannot be rolled back")]
    AlreadyCommitted { start_ts: Timestamp, commit_ts: Timestamp },
    #[error("commit timestamp {commit_ts} must be after start timestamp {start_ts}")]
    BadTimestamps { start_ts: Timestamp, commit_ts: Timestamp },
    #[error("lock TTL {ttl_ms} ms is outside {LOCK_TTL_MS_MIN}..={LOCK_TTL_MS_MAX}")]
    BadTtl { ttl_ms: u64 },
    #[error("{count} mutations in one request; the limit is {MUTATIONS_PER_REQUEST_MAX}")]
    TooManyMutations { count: usize },
    #[error("{count} keys in one batch; the limit is {limit}: split the batch")]
    TooManyKeys { count: usize, limit: usize },
    #[error("key {:?} appears twice in one request", String::from_utf8_lossy(key))]
    DuplicateKey { key: Vec<u8> },
    #[error("the request carries no mutation")]
    Empty,
}

impl TxnError {
    /// The stable error code clients and operators match on.
    pub fn code(&self) -> &'static str {
        match self {
            TxnError::Locked(_) => "ZH_TXN_LOCKED",
            TxnError::WriteConflict { .. } => "ZH_TXN_WRITE_CONFLICT",
            TxnError::Aborted { .. } => "ZH_TXN_ABORTED",
            TxnError::NotFound { .. } => "ZH_TXN_NOT_FOUND",
            TxnError::AlreadyCommitted { .. } => "ZH_TXN_ALREADY_COMMITTED",
            TxnError::BadTimestamps { .. } => "ZH_TXN_BAD_TIMESTAMPS",
            TxnError::BadTtl { .. } => "ZH_TXN_BAD_TTL",
            TxnError::TooManyMutations { .. } => "ZH_TXN_TOO_MANY_MUTATIONS",
            TxnError::TooManyKeys { .. } => "ZH_STORE_BATCH_TOO_LARGE",
            TxnError::DuplicateKey { .. } => "ZH_TXN_DUPLICATE_KEY",
            TxnError::Empty => "ZH_TXN_EMPTY",
        }
    }

    /// Whether the whole transaction may succeed if restarted (with a new
    /// start timestamp, after resolving locks).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            TxnError::Locked(_) | TxnError::WriteConflict { .. } | TxnError::Aborted { .. }
        )
    }
}

/// The outcome of a transaction as its primary key's partition knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// Still running: its primary lock has this much TTL left at the asker's time.
    Locked {
        ttl_remaining_ms: u64,
    },
    Committed {
        commit_ts: Timestamp,
    },
    RolledBack,
}

/// The transactional state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnStore {
    locks: BTreeMap<Vec<u8>, Lock>,
    /// Per key, versions newest first (by commit ts; a rollback record sits at its start ts).
    writes: BTreeMap<Vec<u8>, BTreeMap<Reverse<Timestamp>, WriteRecord>>,
}

impl TxnStore {
    /// The value of `key` as of `ts`, or the lock that hides it.
    pub fn get(&self, key: &[u8], ts: Timestamp) -> Result<Option<Vec<u8>>, TxnError> {
        self.check_read_lock(key, ts)?;
        Ok(self.value_at(key, ts))
    }

    /// The values of `keys` as of `ts`, in order; the first locked key stops
    /// the read with [`TxnError::Locked`] (the client resolves it and asks
    /// again). More than [`BATCH_GET_KEYS_MAX`](super::request::BATCH_GET_KEYS_MAX)
    /// keys are refused.
    pub fn batch_get(&self, keys: &[Vec<u8>], ts: Timestamp) -> Result<Vec<Option<Vec<u8>>>, TxnError> {
        if keys.len() > super::request::BATCH_GET_KEYS_MAX {
            return Err(TxnError::TooManyKeys {
                count: keys.len(),
                limit: super::request::BATCH_GET_KEYS_MAX,
            });
        }
        keys.iter().map(|key| self.get(key, ts)).collect()
    }

    /// Keys in `[start, end)` (`end` empty: no upper bound) as of `ts`, at
    /// most `limit`, in key order; a lock that hides a key in the range stops
    /// the scan with [`TxnError::Locked`].
    pub fn scan(&self, start: &[u8], end: &[u8], ts: Timestamp, limit: usize) -> Result<Vec<Row>, TxnError> {
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        let range = (Bound::Included(start), upper);
        let mut locks = self.locks.range::<[u8], _>(range).peekable();
        let mut keys = self.writes.range::<[u8], _>(range).peekable();
        let mut found = Vec::new();
        while found.len() < limit {
            // The next key in either map; locks first on a tie.
            let next_lock = locks.peek().map(|(key, _)| key.as_slice());
            let next_write = keys.peek().map(|(key, _)| key.as_slice());
            let key = match (next_lock, next_write) {
                (None, None) => break,
                (Some(lock), Some(write)) => lock.min(write).to_vec(),
                (Some(lock), None) => lock.to_vec(),
                (None, Some(write)) => write.to_vec(),
            };
            if locks.peek().is_some_and(|(lock_key, _)| **lock_key == key) {
                locks.next();
            }
            if keys.peek().is_some_and(|(write_key, _)| **write_key == key) {
                keys.next();
            }
            self.check_read_lock(&key, ts)?;
            if let Some(value) = self.value_at(&key, ts) {
                found.push((key, value));
            }
        }
        Ok(found)
    }

    /// Lock every mutated key for the transaction at `start_ts` (phase 1).
    /// All or nothing: on error no lock is taken. A retried prewrite of keys
    /// this transaction already locked (or already committed) succeeds.
    pub fn prewrite(
        &mut self,
        mutations: Vec<Mutation>,
        primary: &[u8],
        start_ts: Timestamp,
        ttl_ms: u64,
    ) -> Result<(), TxnError> {
        validate_mutations(&mutations)?;
        if !(LOCK_TTL_MS_MIN..=LOCK_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(TxnError::BadTtl { ttl_ms });
        }
        let mut to_lock = Vec::with_capacity(mutations.len());
        for mutation in mutations {
            if self.check_prewrite(mutation.key(), start_ts)? {
                to_lock.push(mutation);
            }
        }
        for mutation in to_lock {
            let key = mutation.key().to_vec();
            let lock = Lock {
                primary: primary.to_vec(),
                start_ts,
                ttl_ms,
                kind: mutation.into_kind(),
            };
            self.locks.insert(key, lock);
        }
        Ok(())
    }

    /// Replace the transaction's locks on `keys` with write records at
    /// `commit_ts` (phase 2). All or nothing; keys already committed by this
    /// transaction are skipped, so a retried commit succeeds.
    pub fn commit(&mut self, keys: &[Vec<u8>], start_ts: Timestamp, commit_ts: Timestamp) -> Result<(), TxnError> {
        if commit_ts <= start_ts {
            return Err(TxnError::BadTimestamps { start_ts, commit_ts });
        }
        let mut to_commit = Vec::new();
        for key in keys {
            match self.locks.get(key) {
                Some(lock) if lock.start_ts == start_ts => to_commit.push(key),
                _ => match self.record_of(key, start_ts) {
                    Some((
                        _,
                        WriteRecord {
                            kind: WriteKind::Rollback,
                            ..
                        },
                    )) => {
                        return Err(TxnError::Aborted { start_ts });
                    }
                    Some(_) => {} // committed before: a retry
                    None => {
                        return Err(TxnError::NotFound {
                            key: key.clone(),
                            start_ts,
                        })
                    }
                },
            }
        }
        for key in to_commit {
            let lock = self.locks.remove(key).expect("checked above");
            self.writes.entry(key.clone()).or_default().insert(
                Reverse(commit_ts),
                WriteRecord {
                    start_ts,
                    kind: lock.kind,
                },
            );
        }
        Ok(())
    }

    /// Roll the transaction back on `keys`: drop its locks and leave rollback
    /// records so a late prewrite fails. Refused if it committed any of them.
    pub fn rollback(&mut self, keys: &[Vec<u8>], start_ts: Timestamp) -> Result<(), TxnError> {
        for key in keys {
            if let Some((commit_ts, record)) = self.record_of(key, start_ts) {
                if record.kind != WriteKind::Rollback {
                    return Err(TxnError::AlreadyCommitted { start_ts, commit_ts });
                }
            }
        }
        for key in keys {
            self.rollback_key(key, start_ts);
        }
        Ok(())
    }

    /// Decide the fate of the transaction at `start_ts` from its primary
    /// key, as a client at `current_ts` sees it. A lock past its TTL is
    /// rolled back; a transaction the primary never heard of is marked rolled
    /// back too, so its prewrite cannot land later.
    pub fn check_txn_status(&mut self, primary: &[u8], start_ts: Timestamp, current_ts: Timestamp) -> TxnStatus {
        if let Some(lock) = self.locks.get(primary).filter(|lock| lock.start_ts == start_ts) {
            if !lock.expired(current_ts) {
                let deadline_ms = lock.start_ts.physical_ms().saturating_add(lock.ttl_ms);
                return TxnStatus::Locked {
                    ttl_remaining_ms: deadline_ms - current_ts.physical_ms(),
                };
            }
            self.rollback_key(primary, start_ts);
            return TxnStatus::RolledBack;
        }
        match self.record_of(primary, start_ts) {
            Some((
                _,
                WriteRecord {
                    kind: WriteKind::Rollback,
                    ..
                },
            )) => TxnStatus::RolledBack,
            Some((commit_ts, _)) => TxnStatus::Committed { commit_ts },
            None => {
                self.rollback_key(primary, start_ts);
                TxnStatus::RolledBack
            }
        }
    }

    /// Finish the transaction at `start_ts` on `keys` the way its primary
    /// went: commit at `commit_ts`, or roll back when `None`. Keys whose lock
    /// is already gone are skipped (someone resolved them first).
    pub fn resolve(&mut self, keys: &[Vec<u8>], start_ts: Timestamp, commit_ts: Option<Timestamp>) {
        for key in keys {
            if self.locks.get(key).is_none_or(|lock| lock.start_ts != start_ts) {
                continue;
            }
            match commit_ts {
                Some(commit_ts) => {
                    self.commit(std::slice::from_ref(key), start_ts, commit_ts)
                        .expect("a present lock commits");
                }
                None => self.rollback_key(key, start_ts),
            }
        }
    }

    /// Drop versions no reader at `safe_point` or later can see: for every
    /// key, everything older than its newest version at or below the safe
    /// point, and rollback records below it. Returns the versions dropped.
    pub fn gc(&mut self, safe_point: Timestamp) -> usize {
        let mut dropped = 0;
        self.writes.retain(|_, versions| {
            let mut kept_visible = false;
            versions.retain(|Reverse(ts), record| {
                if *ts > safe_point {
                    return true;
                }
                let keep = match record.kind {
                    WriteKind::Rollback => false,
                    _ if kept_visible => false,
                    WriteKind::Delete => {
                        // The newest version is a delete: nothing older is visible, nor is it.
                        kept_visible = true;
                        false
                    }
                    WriteKind::Put(_) => {
                        kept_visible = true;
                        true
                    }
                };
                dropped += usize::from(!keep);
                keep
            });
            !versions.is_empty()
        });
        dropped
    }

    /// Locks held, for status pages and tests.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// The lock on `key`, if any.
    pub fn lock(&self, key: &[u8]) -> Option<&Lock> {
        self.locks.get(key)
    }

    /// Whether prewriting `key` for `start_ts` may go ahead: `Ok(true)` to
    /// lock it, `Ok(false)` when this transaction already did (a retry).
    fn check_prewrite(&self, key: &[u8], start_ts: Timestamp) -> Result<bool, TxnError> {
        if let Some(lock) = self.locks.get(key) {
            if lock.start_ts == start_ts {
                return Ok(false);
            }
            return Err(TxnError::Locked(lock_info(key, lock)));
        }
        if let Some(versions) = self.writes.get(key) {
            for (Reverse(commit_ts), record) in versions {
                if record.start_ts == start_ts {
                    return match record.kind {
                        WriteKind::Rollback => Err(TxnError::Aborted { start_ts }),
                        _ => Ok(false),
                    };
                }
                if *commit_ts < start_ts {
                    break;
                }
                if record.kind != WriteKind::Rollback {
                    return Err(TxnError::WriteConflict {
                        key: key.to_vec(),
                        start_ts,
                        conflict_commit_ts: *commit_ts,
                    });
                }
            }
        }
        Ok(true)
    }

    fn check_read_lock(&self, key: &[u8], ts: Timestamp) -> Result<(), TxnError> {
        match self.locks.get(key) {
            Some(lock) if lock.start_ts <= ts => Err(TxnError::Locked(lock_info(key, lock))),
            _ => Ok(()),
        }
    }

    fn value_at(&self, key: &[u8], ts: Timestamp) -> Option<Vec<u8>> {
        let versions = self.writes.get(key)?;
        versions
            .range(Reverse(ts)..)
            .map(|(_, record)| &record.kind)
            .find(|kind| **kind != WriteKind::Rollback)
            .and_then(|kind| match kind {
                WriteKind::Put(value) => Some(value.clone()),
                _ => None,
            })
    }

    /// The record this transaction left on `key`: its commit, or its rollback.
    fn record_of(&self, key: &[u8], start_ts: Timestamp) -> Option<(Timestamp, &WriteRecord)> {
        let versions = self.writes.get(key)?;
        // A transaction's records sit at or after its start ts.
        versions
            .range(..=Reverse(start_ts))
            .find(|(_, record)| record.start_ts == start_ts)
            .map(|(Reverse(ts), record)| (*ts, record))
    }

    fn rollback_key(&mut self, key: &[u8], start_ts: Timestamp) {
        if self.locks.get(key).is_some_and(|lock| lock.start_ts == start_ts) {
            self.locks.remove(key);
        }
        if self.record_of(key, start_ts).is_none() {
            self.writes.entry(key.to_vec()).or_default().insert(
                Reverse(start_ts),
                WriteRecord {
                    start_ts,
                    kind: WriteKind::Rollback,
                },
            );
        }
    }
}

fn lock_info(key: &[u8], lock: &Lock) -> LockInfo {
    LockInfo {
        key: key.to_vec(),
        primary: lock.primary.clone(),
        start_ts: lock.start_ts,
        ttl_ms: lock.ttl_ms,
    }
}

fn validate_mutations(mutations: &[Mutation]) -> Result<(), TxnError> {
    if mutations.is_empty() {
        return Err(TxnError::Empty);
    }
    if mutations.len() > MUTATIONS_PER_REQUEST_MAX {
        return Err(TxnError::TooManyMutations { count: mutations.len() });
    }
    let mut seen = std::collections::BTreeSet::new();
    for mutation in mutations {
        if !seen.insert(mutation.key()) {
            return Err(TxnError::DuplicateKey {
                key: mutation.key().to_vec(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
