//! Multi-version key-value store with etcd v3 semantics, without I/O.
//!
//! This is the pure core of the `meta` state machine: it is fed committed
//! requests in log order and answers reads, and it never touches a disk, a
//! clock or a socket. Durability comes from the Raft log and snapshots around
//! it (see `raft::state_machine`).
//!
//! ## Revisions, as etcd defines them
//! - The store has one cluster-wide `revision`. It starts at 1 and grows by one
//!   for every write transaction that changes something (a `Put`, a
//!   `DeleteRange` that deleted at least one key, a `Txn` whose executed branch
//!   did either). Read-only transactions and deletes of nothing do not move it.
//! - Each key carries `create_revision` (the revision that created the current
//!   incarnation of the key), `mod_revision` (its last change) and `version`
//!   (number of changes since creation; a delete resets it, so a re-created
//!   key starts again at version 1).
//! - Reads may ask for an older revision. Compaction at revision C discards
//!   every version that is not visible at C or later; reads below C then fail
//!   with [`MvccError::Compacted`], reads above the current revision with
//!   [`MvccError::FutureRevision`].
//!
//! ## Representation
//! A `BTreeMap` from key to its history (versions in revision order, a
//! tombstone marking each delete). The whole index is in memory, as etcd keeps
//! its index in memory. Once a node's engine is attached ([`Mvcc::attach`]),
//! values live in the engine (`meta::history`), as etcd's live in its backend,
//! so a version costs its metadata only; empty values and values of keys too
//! long for the engine stay in memory. Without an engine (unit tests) every
//! value stays in memory. Iteration order is the key order, so everything observable is
//! deterministic.
//!
//! ## What it does not do yet
//! ## Leases
//! The store records which leases exist (id and granted TTL) and which keys
//! each holds, because attaching and detaching happen in the same write as
//! the put or delete. *When* a lease expires is not state: the leader's lease
//! clock (`meta::lease`) decides and proposes a revoke, which deletes the
//! lease's keys in one revision here.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use zongheng_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use zongheng_proto::mvccpb::event::EventType;
use zongheng_proto::mvccpb::{Event, KeyValue};
use zongheng_storage::{Engine, WriteBatch};

use super::changes::ChangeLog;
use super::history::{FlushMark, HistoryValues};

/// The revision of an empty store, as in etcd.
pub const INITIAL_REVISION: i64 = 1;

/// Errors of the MVCC core. Each maps to the gRPC status etcd clients expect
/// (see `server::status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid compare: {0}")]
    InvalidCompare(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An old value could not be read from the engine.
    #[error("storage: {0}")]
    Storage(String),
}

/// One stored version of a key: `None` is a tombstone (the key was deleted at
/// `mod_revision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    mod_revision: i64,
    kv: Option<StoredValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredValue {
    create_revision: i64,
    version: i64,
    value: Slot,
    lease: i64,
}

/// Where a version's value is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    /// In memory: every value while no engine is attached, and values the
    /// value store does not take (empty ones, those of very long keys).
    Here(Vec<u8>),
    /// In the value store (`meta::history`), under this version's revision
    /// and key.
    Moved,
}

/// The value of `key`'s version at `mod_revision`, from memory or the
/// engine. A moved value the engine no longer has was compacted.
fn read_value(
    values: &HistoryValues,
    key: &[u8],
    mod_revision: i64,
    stored: &StoredValue,
) -> Result<Vec<u8>, MvccError> {
    match &stored.value {
        Slot::Here(value) => Ok(value.clone()),
        Slot::Moved => match values.get(mod_revision, key) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(MvccError::Compacted),
            Err(error) => Err(MvccError::Storage(error.to_string())),
        },
    }
}

/// The value of a key's latest version, read while applying a write (a
/// compare, `prev_kv`, `ignore_value`). Every replica must apply the same
/// entry the same way, so a replica whose engine cannot read a current value
/// stops instead of answering differently from the others (etcd panics on
/// such a backend error too). A latest version is never compacted, so its
/// value is always in memory or the engine.
fn current_value(values: &HistoryValues, key: &[u8], mod_revision: i64, stored: &StoredValue) -> Vec<u8> {
    match read_value(values, key, mod_revision, stored) {
        Ok(value) => value,
        Err(error) => {
            panic!("cannot read the current value of a key at revision {mod_revision} while applying a write: {error}")
        }
    }
}

/// All versions of one key, oldest first. Never empty while in the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct History {
    versions: Vec<Version>,
}

impl History {
    /// The version visible at `revision`, if the key is live there.
    fn at(&self, revision: i64) -> Option<&StoredValue> {
        let position = self
            .versions
            .partition_point(|version| version.mod_revision <= revision);
        if position == 0 {
            return None;
        }
        let version = &self.versions[position - 1];
        version.kv.as_ref()
    }

    fn latest(&self) -> Option<(&StoredValue, i64)> {
        let version = self.versions.last()?;
        version.kv.as_ref().map(|kv| (kv, version.mod_revision))
    }

    fn mod_revision_at(&self, revision: i64) -> i64 {
        let position = self
            .versions
            .partition_point(|version| version.mod_revision <= revision);
        self.versions[position - 1].mod_revision
    }
}

/// The multi-version store. Serializable as a whole: that is the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mvcc {
    revision: i64,
    compact_revision: i64,
    keys: BTreeMap<Vec<u8>, History>,
    /// The keys each revision changed, in the order the write applied them
    /// (etcd's sub-revision order): the index watchers replay events from.
    /// Pruned with compaction, like the versions it points to.
    changes: ChangeLog,
    /// Live leases: id -> granted TTL and the keys attached to it.
    leases: BTreeMap<i64, LeaseRecord>,
    /// Values on their way to, or in, the engine. Not part of the
    /// snapshot: the snapshot's write makes the engine's copy durable.
    #[serde(skip)]
    history: HistoryValues,
}

/// A granted lease as the store knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// TTL in seconds, as granted.
    pub ttl: i64,
    /// Keys currently attached, in key order.
    pub keys: std::collections::BTreeSet<Vec<u8>>,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self::new()
    }
}

/// A key range as etcd encodes it: an empty `range_end` is the single key,
/// `range_end == [0]` means every key `>= key`, otherwise `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    start: Vec<u8>,
    end: RangeEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RangeEnd {
    Single,
    Unbounded,
    Exclusive(Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = if range_end.is_empty() {
            RangeEnd::Single
        } else if range_end == [0] {
            RangeEnd::Unbounded
        } else {
            RangeEnd::Exclusive(range_end.to_vec())
        };
        // etcd treats key == [0] with range_end == [0] as "all keys"; a start of
        // [0] already sorts before every non-empty key, so no special case.
        Self {
            start: key.to_vec(),
            end,
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.end {
            RangeEnd::Exclusive(end) => end.as_slice() <= self.start.as_slice(),
            _ => false,
        }
    }

    /// Whether two ranges share a key (used for the duplicate-key rule).
    fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let self_end = self.exclusive_end();
        let other_end = other.exclusive_end();
        let starts_before_other_ends = match &other_end {
            None => true,
            Some(end) => self.start.as_slice() < end.as_slice(),
        };
        let other_starts_before_self_ends = match &self_end {
            None => true,
            Some(end) => other.start.as_slice() < end.as_slice(),
        };
        starts_before_other_ends && other_starts_before_self_ends
    }

    /// The exclusive end as bytes; `None` when unbounded.
    fn exclusive_end(&self) -> Option<Vec<u8>> {
        match &self.end {
            RangeEnd::Single => {
                let mut end = self.start.clone();
                end.push(0);
                Some(end)
            }
            RangeEnd::Unbounded => None,
            RangeEnd::Exclusive(end) => Some(end.clone()),
        }
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Exclusive(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    fn bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        match &self.end {
            RangeEnd::Single => (Bound::Included(self.start.clone()), Bound::Included(self.start.clone())),
            RangeEnd::Unbounded => (Bound::Included(self.start.clone()), Bound::Unbounded),
            RangeEnd::Exclusive(end) => (Bound::Included(self.start.clone()), Bound::Excluded(end.clone())),
        }
    }
}

impl Mvcc {
    pub fn new() -> Self {
        Self {
            revision: INITIAL_REVISION,
            compact_revision: 0,
            keys: BTreeMap::new(),
            changes: ChangeLog::new(),
            leases: BTreeMap::new(),
            history: HistoryValues::default(),
        }
    }

    /// Run on `engine`: from now on values move there. Values already in
    /// memory (a state restored from an older snapshot, or one
    /// received whole from the leader) move now.
    pub fn attach(&mut self, engine: std::sync::Arc<dyn Engine>, group: u64) {
        self.history.attach(engine, group);
        for (key, history) in self.keys.iter_mut() {
            for version in &mut history.versions {
                retire(&mut self.history, key, version);
            }
        }
    }

    /// A copy with every value in memory: what a follower receives, since it
    /// cannot read this node's engine.
    pub fn materialized(&self) -> Result<Mvcc, MvccError> {
        let mut copy = Mvcc {
            revision: self.revision,
            compact_revision: self.compact_revision,
            keys: BTreeMap::new(),
            changes: self.changes.clone(),
            leases: self.leases.clone(),
            history: HistoryValues::default(),
        };
        for (key, history) in &self.keys {
            let mut versions = Vec::with_capacity(history.versions.len());
            for version in &history.versions {
                let kv = match &version.kv {
                    Some(stored) => {
                        // A value a later compaction already deleted stays
                        // moved: the receiver answers `Compacted` for it, as
                        // the log it applies next will make true.
                        let value = match self.value_of(key, version.mod_revision, stored) {
                            Ok(value) => Slot::Here(value),
                            Err(MvccError::Compacted) => Slot::Moved,
                            Err(error) => return Err(error),
                        };
                        Some(StoredValue {
                            value,
                            ..stored.clone()
                        })
                    }
                    None => None,
                };
                versions.push(Version {
                    mod_revision: version.mod_revision,
                    kv,
                });
            }
            copy.keys.insert(key.clone(), History { versions });
        }
        Ok(copy)
    }

    /// Whether enough values wait in memory to flush them now.
    pub fn history_wants_flush(&self) -> bool {
        self.history.wants_flush()
    }

    /// The engine batches that write every waiting value (and
    /// delete compacted ones); report with [`Mvcc::history_flushed`] once
    /// written.
    pub fn history_flush(&mut self) -> (Vec<WriteBatch>, FlushMark) {
        self.history.flush_batches()
    }

    pub fn history_flushed(&mut self, mark: FlushMark) {
        self.history.flushed(mark);
    }

    pub fn history_flush_failed(&mut self, mark: FlushMark) {
        self.history.flush_failed(mark);
    }

    /// Values waiting in memory for the engine.
    pub fn history_pending(&self) -> usize {
        self.history.pending_len()
    }

    /// The value of `key`'s version at `mod_revision`, from memory or the
    /// engine. A moved value the engine no longer has was compacted.
    fn value_of(&self, key: &[u8], mod_revision: i64, stored: &StoredValue) -> Result<Vec<u8>, MvccError> {
        read_value(&self.history, key, mod_revision, stored)
    }

    /// The engine keys under which this store's values can be: those of
    /// every revision up to the current one (`meta::history`).
    pub fn value_key_range(&self, group: u64) -> (Vec<u8>, Vec<u8>) {
        (
            super::history::engine_key(group, 0, b""),
            super::history::engine_key(group, self.revision.saturating_add(1), b""),
        )
    }

    /// Whether the engine key `engine_key` holds the value of a version this
    /// store still lists. Keys that are not value keys answer yes (they are
    /// not this store's to judge).
    pub fn holds_value(&self, engine_key: &[u8]) -> bool {
        let Some((revision, key)) = super::history::parse_engine_key(engine_key) else {
            return true;
        };
        self.keys.get(&key).is_some_and(|history| {
            let position = history
                .versions
                .partition_point(|version| version.mod_revision < revision);
            history
                .versions
                .get(position)
                .is_some_and(|version| version.mod_revision == revision && version.kv.is_some())
        })
    }

    /// Read the value of every pair of `kvs` from where its slot says: those
    /// in memory directly, the others from the engine together.
    fn fill_values(&self, kvs: &mut [(KeyValue, &Slot)]) -> Result<(), MvccError> {
        let mut moved: Vec<usize> = Vec::new();
        for (index, (kv, slot)) in kvs.iter_mut().enumerate() {
            match slot {
                Slot::Here(value) => kv.value = value.clone(),
                Slot::Moved => moved.push(index),
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        let versions: Vec<(i64, &[u8])> = moved
            .iter()
            .map(|&index| (kvs[index].0.mod_revision, kvs[index].0.key.as_slice()))
            .collect();
        let values = self
            .history
            .get_many(&versions)
            .map_err(|error| MvccError::Storage(error.to_string()))?;
        for (index, value) in moved.into_iter().zip(values) {
            kvs[index].0.value = value.ok_or(MvccError::Compacted)?;
        }
        Ok(())
    }

    /// The current revision (the revision of the last change).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Number of live keys at the current revision.
    pub fn live_key_count(&self) -> usize {
        self.keys.values().filter(|history| history.latest().is_some()).count()
    }

    /// Number of stored versions (live values and tombstones), a size measure.
    pub fn version_count(&self) -> usize {
        self.keys.values().map(|history| history.versions.len()).sum()
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.revision,
            ..Default::default()
        })
    }

    fn check_read_revision(&self, revision: i64) -> Result<i64, MvccError> {
        if revision <= 0 {
            return Ok(self.revision);
        }
        if revision > self.revision {
            return Err(MvccError::FutureRevision);
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        Ok(revision)
    }

    /// Serve a `Range` request against the current state.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let mut response = self.range_at_tip(request)?;
        response.header = self.header();
        Ok(response)
    }

    fn range_at_tip(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if request.limit < 0 {
            return Err(MvccError::InvalidRequest("limit must not be negative".into()));
        }
        let read_revision = self.check_read_revision(request.revision)?;
        let range = KeyRange::new(&request.key, &request.range_end);
        // Each pair with where its value is.
        let mut kvs: Vec<(KeyValue, &Slot)> = Vec::new();
        let mut count: i64 = 0;
        if !range.is_empty() {
            for (key, history) in self.keys.range(range.bounds()) {
                let Some(stored) = history.at(read_revision) else {
                    continue;
                };
                count += 1;
                if request.count_only {
                    continue;
                }
                // Values are read below, only for the pairs that are returned
                // (or that a sort by value needs), all at once.
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: stored.create_revision,
                    mod_revision: history.mod_revision_at(read_revision),
                    version: stored.version,
                    value: Vec::new(),
                    lease: stored.lease,
                };
                if passes_revision_filters(request, &kv) {
                    kvs.push((kv, &stored.value));
                }
            }
        }
        // etcd 3.4 fetches everything only when the request asked for an
        // order or a revision filter; otherwise it stops at `limit + 1` keys
        // in key order and sorts (a non-key target defaults to ascending)
        // only those. Reproduced so that clients see what etcd returns.
        let fetch_all = request.sort_order != range_request::SortOrder::None as i32
            || request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        if !fetch_all && request.limit > 0 {
            kvs.truncate(request.limit as usize + 1);
        }
        // Keys-only may still sort by value.
        let sorts_by_value = request.sort_target == range_request::SortTarget::Value as i32;
        if sorts_by_value {
            self.fill_values(&mut kvs)?;
        }
        sort_kvs(request, &mut kvs)?;
        if request.keys_only {
            for (kv, _) in &mut kvs {
                kv.value = Vec::new();
            }
        }
        let mut more = false;
        if request.limit > 0 && kvs.len() > request.limit as usize {
            kvs.truncate(request.limit as usize);
            more = true;
        }
        if !sorts_by_value && !request.keys_only {
            self.fill_values(&mut kvs)?;
        }
        Ok(RangeResponse {
            header: None,
            kvs: kvs.into_iter().map(|(kv, _)| kv).collect(),
            more,
            count,
        })
    }

    /// Apply a `Put` as its own write transaction.
    pub fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        validate_put(request)?;
        self.check_put(request, self.revision + 1)?;
        let response = self.apply_put(request, self.revision + 1);
        self.revision += 1;
        Ok(PutResponse {
            header: self.header(),
            ..response
        })
    }

    /// Apply a `DeleteRange` as its own write transaction.
    pub fn delete_range(&mut self, request: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let response = self.apply_delete(request, self.revision + 1);
        if response.deleted > 0 {
            self.revision += 1;
        }
        Ok(DeleteRangeResponse {
            header: self.header(),
            ..response
        })
    }

    /// Apply a `Txn`: evaluate the compares at the current revision, then run
    /// the chosen branch's operations in order as one write transaction.
    pub fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        validate_txn(request)?;
        let next = self.revision + 1;
        // As etcd does, decide every compare (nested ones too) on the state at
        // the start of the transaction, then check everything that can fail
        // before changing anything, so a failed transaction leaves no trace.
        let mut path = Vec::new();
        self.txn_path(request, &mut path)?;
        let succeeded = path[0];
        let branch = if succeeded { &request.success } else { &request.failure };
        let mut checking = path[1..].iter().copied();
        self.check_ops(branch, next, &mut checking)?;
        let mut changed = false;
        let mut applying = path[1..].iter().copied();
        let responses = self.apply_ops(branch, next, &mut changed, &mut applying);
        if changed {
            self.revision = next;
        }
        Ok(TxnResponse {
            header: self.header(),
            succeeded,
            responses,
        })
    }

    /// The branch taken by this txn and by every nested txn on the taken
    /// branches, in pre-order.
    fn txn_path(&self, request: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let succeeded = self.evaluate_compares(&request.compare)?;
        path.push(succeeded);
        for op in if succeeded { &request.success } else { &request.failure } {
            if let Some(request_op::Request::RequestTxn(nested)) = op.request.as_ref() {
                self.txn_path(nested, path)?;
            }
        }
        Ok(())
    }

    /// Compact history up to `revision`: versions not visible at `revision` or
    /// later are dropped. Reads below `revision` then fail with `Compacted`.
    pub fn compact(&mut self, request: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        let target = request.revision;
        if target <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if target > self.revision {
            return Err(MvccError::FutureRevision);
        }
        let mut emptied = Vec::new();
        for (key, history) in self.keys.iter_mut() {
            let position = history
                .versions
                .partition_point(|version| version.mod_revision <= target);
            if position == 0 {
                continue;
            }
            // Keep the version visible at `target` unless it is a tombstone.
            let keep_from = if history.versions[position - 1].kv.is_some() {
                position - 1
            } else {
                position
            };
            for version in history.versions.drain(..keep_from) {
                if let Some(StoredValue { value: Slot::Moved, .. }) = version.kv {
                    self.history.forget(version.mod_revision, key);
                }
            }
            if history.versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        self.compact_revision = target;
        // Events below the compaction revision can no longer be replayed.
        self.changes.retain_from(target);
        Ok(CompactionResponse { header: self.header() })
    }

    /// Grant lease `id` with `ttl` seconds. Does not change the revision.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id <= 0 {
            return Err(MvccError::InvalidRequest(format!(
                "lease id must be positive, got {id}"
            )));
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: Default::default(),
            },
        );
        Ok(())
    }

    /// Revoke lease `id`: delete every key attached to it in one write
    /// transaction (one revision, a delete event per key), then forget the
    /// lease. Returns the revision after the revoke.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64, MvccError> {
        let record = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound)?;
        if record.keys.is_empty() {
            return Ok(self.revision);
        }
        let next = self.revision + 1;
        for key in &record.keys {
            let delete = DeleteRangeRequest {
                key: key.clone(),
                range_end: vec![],
                prev_kv: false,
            };
            let response = self.apply_delete(&delete, next);
            assert_eq!(response.deleted, 1, "a key attached to lease {id} must be live");
        }
        self.revision = next;
        Ok(self.revision)
    }

    /// A lease's granted TTL and attached keys.
    pub fn lease(&self, id: i64) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    /// Every live lease, in id order.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &LeaseRecord)> {
        self.leases.iter().map(|(id, record)| (*id, record))
    }

    /// The events of revisions `from..=to` on keys in `range`, in revision
    /// order and, within a revision, in the order the write applied them;
    /// whole revisions only, stopping after the revision in which the count
    /// reaches `limit`. Returns the events and the last revision covered (the
    /// caller resumes from the next one). Fails with `Compacted` when `from`
    /// is below the compaction revision.
    pub fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        if from < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let to = to.min(self.revision);
        let mut events = Vec::new();
        if from > to {
            return Ok((events, to));
        }
        for (revision, keys) in self.changes.range(from, to) {
            for key in keys {
                if !range.contains(key) {
                    continue;
                }
                let Some(history) = self.keys.get(key) else { continue };
                let position = history
                    .versions
                    .partition_point(|version| version.mod_revision < revision);
                let Some(version) = history.versions.get(position).filter(|v| v.mod_revision == revision) else {
                    continue;
                };
                let prev_kv = if with_prev_kv && position > 0 {
                    let previous = &history.versions[position - 1];
                    match &previous.kv {
                        Some(stored) => {
                            let value = self.value_of(key, previous.mod_revision, stored)?;
                            Some(to_key_value(key, stored, previous.mod_revision, value))
                        }
                        None => None,
                    }
                } else {
                    None
                };
                let (kind, kv) = match &version.kv {
                    Some(stored) => {
                        let value = self.value_of(key, revision, stored)?;
                        (EventType::Put, to_key_value(key, stored, revision, value))
                    }
                    None => (
                        EventType::Delete,
                        KeyValue {
                            key: key.to_vec(),
                            mod_revision: revision,
                            ..Default::default()
                        },
                    ),
                };
                events.push(Event {
                    r#type: kind as i32,
                    kv: Some(kv),
                    prev_kv,
                });
            }
            if events.len() >= limit {
                return Ok((events, revision));
            }
        }
        Ok((events, to))
    }

    fn evaluate_compares(&self, compares: &[Compare]) -> Result<bool, MvccError> {
        let mut all_true = true;
        for compare in compares {
            if !self.evaluate_compare(compare)? {
                all_true = false;
            }
        }
        Ok(all_true)
    }

    /// etcd's rule: a compare over a range holds only if it holds for every
    /// live key in the range.
    fn evaluate_compare(&self, compare: &Compare) -> Result<bool, MvccError> {
        let target = compare::CompareTarget::try_from(compare.target)
            .map_err(|_| MvccError::InvalidCompare(format!("unknown compare target {}", compare.target)))?;
        let result = compare::CompareResult::try_from(compare.result)
            .map_err(|_| MvccError::InvalidCompare(format!("unknown compare result {}", compare.result)))?;
        let union = compare
            .target_union
            .as_ref()
            .ok_or_else(|| MvccError::InvalidCompare("compare has no target value".into()))?;
        let union_matches = matches!(
            (target, union),
            (compare::CompareTarget::Version, compare::TargetUnion::Version(_))
                | (compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(_))
                | (compare::CompareTarget::Mod, compare::TargetUnion::ModRevision(_))
                | (compare::CompareTarget::Value, compare::TargetUnion::Value(_))
                | (compare::CompareTarget::Lease, compare::TargetUnion::Lease(_))
        );
        if !union_matches {
            return Err(MvccError::InvalidCompare(format!(
                "compare target {target:?} does not match the value given"
            )));
        }
        if compare.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let range = KeyRange::new(&compare.key, &compare.range_end);
        let mut seen_any = false;
        if !range.is_empty() {
            for (key, history) in self.keys.range(range.bounds()) {
                let Some((stored, mod_revision)) = history.latest() else {
                    continue;
                };
                seen_any = true;
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: stored.create_revision,
                    mod_revision,
                    version: stored.version,
                    value: Vec::new(),
                    lease: stored.lease,
                };
                let value = match union {
                    compare::TargetUnion::Value(_) => current_value(&self.history, key, mod_revision, stored),
                    _ => Vec::new(),
                };
                if !compare_one(result, union, &kv, &value) {
                    return Ok(false);
                }
            }
        }
        if !seen_any {
            // etcd's rule for a key or range with no live key: a value compare
            // fails (there is no value to compare), any other compare sees a
            // zero KeyValue (version 0, revisions 0, lease 0). A malformed
            // range (end before start) is an empty range.
            if target == compare::CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_one(result, union, &KeyValue::default(), &[]));
        }
        Ok(true)
    }

    fn check_put(&self, put: &PutRequest, _revision: i64) -> Result<(), MvccError> {
        if put.ignore_value || put.ignore_lease {
            let exists = self.keys.get(&put.key).and_then(History::latest).is_some();
            if !exists {
                return Err(MvccError::KeyNotFound);
            }
        }
        if put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// Check a branch before applying it. Keys written earlier in the same
    /// transaction count as existing, so walk the ops in order on a scratch
    /// view of which keys exist.
    fn check_ops(
        &self,
        ops: &[RequestOp],
        revision: i64,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<(), MvccError> {
        for op in ops {
            match op.request.as_ref() {
                Some(request_op::Request::RequestRange(range)) => {
                    if range.key.is_empty() {
                        return Err(MvccError::EmptyKey);
                    }
                    // A read inside a txn runs at the txn's own revision; only
                    // a historical read can fail.
                    if range.revision > 0 {
                        self.check_read_revision(range.revision)?;
                    }
                }
                Some(request_op::Request::RequestPut(put)) => {
                    validate_put(put)?;
                    if put.lease != 0 && !self.leases.contains_key(&put.lease) {
                        return Err(MvccError::LeaseNotFound);
                    }
                    if put.ignore_value || put.ignore_lease {
                        // The duplicate-key rule forbids a delete of this key in
                        // the same txn, so only the current state matters.
                        self.check_put(put, revision)?;
                    }
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => {
                    if delete.key.is_empty() {
                        return Err(MvccError::EmptyKey);
                    }
                }
                Some(request_op::Request::RequestTxn(txn)) => {
                    let succeeded = path.next().expect("txn_path covers every nested txn");
                    self.check_ops(if succeeded { &txn.success } else { &txn.failure }, revision, path)?;
                }
                None => return Err(MvccError::InvalidRequest("request op is empty".into())),
            }
        }
        Ok(())
    }

    fn apply_ops(
        &mut self,
        ops: &[RequestOp],
        revision: i64,
        changed: &mut bool,
        path: &mut impl Iterator<Item = bool>,
    ) -> Vec<ResponseOp> {
        let mut responses = Vec::with_capacity(ops.len());
        // etcd gives each response inside a txn a header holding only the
        // revision the txn has reached at that op: the current revision until
        // the first change, the txn's new revision after it.
        let header_at = |store: &Mvcc, changed: bool| {
            Some(ResponseHeader {
                revision: if changed { revision } else { store.revision },
                ..Default::default()
            })
        };
        for op in ops {
            let response = match op.request.as_ref().expect("checked by check_ops") {
                request_op::Request::RequestRange(range) => {
                    // Reads in a txn see the txn's earlier writes: read at the tip.
                    let mut read = range.clone();
                    if read.revision <= 0 {
                        read.revision = 0;
                    }
                    let tip = self.revision;
                    if *changed {
                        self.revision = revision;
                    }
                    let result = self.range_at_tip(&read);
                    self.revision = tip;
                    let mut range_response = result.expect("checked by check_ops");
                    range_response.header = header_at(self, *changed);
                    response_op::Response::ResponseRange(range_response)
                }
                request_op::Request::RequestPut(put) => {
                    *changed = true;
                    let mut put_response = self.apply_put(put, revision);
                    put_response.header = header_at(self, *changed);
                    response_op::Response::ResponsePut(put_response)
                }
                request_op::Request::RequestDeleteRange(delete) => {
                    let mut delete_response = self.apply_delete(delete, revision);
                    if delete_response.deleted > 0 {
                        *changed = true;
                    }
                    delete_response.header = header_at(self, *changed);
                    response_op::Response::ResponseDeleteRange(delete_response)
                }
                request_op::Request::RequestTxn(txn) => {
                    let succeeded = path.next().expect("txn_path covers every nested txn");
                    let branch = if succeeded { &txn.success } else { &txn.failure };
                    let nested = self.apply_ops(branch, revision, changed, path);
                    response_op::Response::ResponseTxn(TxnResponse {
                        header: header_at(self, *changed),
                        succeeded,
                        responses: nested,
                    })
                }
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        responses
    }

    /// Write one put at `revision`. Callers have validated it.
    fn apply_put(&mut self, put: &PutRequest, revision: i64) -> PutResponse {
        let history = self.keys.entry(put.key.clone()).or_default();
        let previous = history.latest();
        let (create_revision, version) = match previous {
            Some((stored, _)) => (stored.create_revision, stored.version + 1),
            None => (revision, 1),
        };
        let value = if put.ignore_value {
            previous
                .map(|(stored, mod_revision)| current_value(&self.history, &put.key, mod_revision, stored))
                .unwrap_or_default()
        } else {
            put.value.clone()
        };
        let lease = if put.ignore_lease {
            previous.map(|(stored, _)| stored.lease).unwrap_or(0)
        } else {
            put.lease
        };
        let prev_kv = if put.prev_kv {
            previous.map(|(stored, mod_revision)| {
                let value = current_value(&self.history, &put.key, mod_revision, stored);
                to_key_value(&put.key, stored, mod_revision, value)
            })
        } else {
            None
        };
        let previous_lease = previous.map(|(stored, _)| stored.lease).unwrap_or(0);
        if let Some(latest) = history.versions.last_mut() {
            retire(&mut self.history, &put.key, latest);
        }
        self.changes.push(revision, &put.key);
        if previous_lease != lease {
            if let Some(record) = self.leases.get_mut(&previous_lease) {
                record.keys.remove(&put.key);
            }
            if let Some(record) = self.leases.get_mut(&lease) {
                record.keys.insert(put.key.clone());
            }
        }
        let value = if self.history.takes(&put.key, &value) {
            self.history.keep(revision, &put.key, value);
            Slot::Moved
        } else {
            Slot::Here(value)
        };
        history.versions.push(Version {
            mod_revision: revision,
            kv: Some(StoredValue {
                create_revision,
                version,
                value,
                lease,
            }),
        });
        PutResponse { header: None, prev_kv }
    }

    fn apply_delete(&mut self, delete: &DeleteRangeRequest, revision: i64) -> DeleteRangeResponse {
        let range = KeyRange::new(&delete.key, &delete.range_end);
        let mut deleted = 0;
        let mut prev_kvs = Vec::new();
        let mut changed_keys = Vec::new();
        let mut detached = Vec::new();
        if !range.is_empty() {
            for (key, history) in self.keys.range_mut(range.bounds()) {
                let Some((stored, mod_revision)) = history.latest() else {
                    continue;
                };
                if delete.prev_kv {
                    let value = current_value(&self.history, key, mod_revision, stored);
                    prev_kvs.push(to_key_value(key, stored, mod_revision, value));
                }
                deleted += 1;
                changed_keys.push(key.clone());
                if stored.lease != 0 {
                    detached.push((stored.lease, key.clone()));
                }
                if let Some(latest) = history.versions.last_mut() {
                    retire(&mut self.history, key, latest);
                }
                history.versions.push(Version {
                    mod_revision: revision,
                    kv: None,
                });
            }
        }
        if !changed_keys.is_empty() {
            self.changes.extend(revision, changed_keys.iter().map(Vec::as_slice));
        }
        for (lease, key) in detached {
            if let Some(record) = self.leases.get_mut(&lease) {
                record.keys.remove(&key);
            }
        }
        DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        }
    }
}

fn to_key_value(key: &[u8], stored: &StoredValue, mod_revision: i64, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: stored.create_revision,
        mod_revision,
        version: stored.version,
        value,
        lease: stored.lease,
    }
}

/// Move a version's value out of memory, if the value store takes it.
fn retire(history_values: &mut HistoryValues, key: &[u8], version: &mut Version) {
    let Some(stored) = &mut version.kv else { return };
    let Slot::Here(value) = &stored.value else { return };
    if !history_values.takes(key, value) {
        return;
    }
    if let Slot::Here(value) = std::mem::replace(&mut stored.value, Slot::Moved) {
        history_values.keep(version.mod_revision, key, value);
    }
}

fn compare_one(result: compare::CompareResult, union: &compare::TargetUnion, kv: &KeyValue, value: &[u8]) -> bool {
    use std::cmp::Ordering;
    let ordering = match union {
        compare::TargetUnion::Version(expected) => kv.version.cmp(expected),
        compare::TargetUnion::CreateRevision(expected) => kv.create_revision.cmp(expected),
        compare::TargetUnion::ModRevision(expected) => kv.mod_revision.cmp(expected),
        compare::TargetUnion::Value(expected) => value.cmp(expected.as_slice()),
        compare::TargetUnion::Lease(expected) => kv.lease.cmp(expected),
    };
    match result {
        compare::CompareResult::Equal => ordering == Ordering::Equal,
        compare::CompareResult::Greater => ordering == Ordering::Greater,
        compare::CompareResult::Less => ordering == Ordering::Less,
        compare::CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

fn passes_revision_filters(request: &RangeRequest, kv: &KeyValue) -> bool {
    if request.min_mod_revision > 0 && kv.mod_revision < request.min_mod_revision {
        return false;
    }
    if request.max_mod_revision > 0 && kv.mod_revision > request.max_mod_revision {
        return false;
    }
    if request.min_create_revision > 0 && kv.create_revision < request.min_create_revision {
        return false;
    }
    if request.max_create_revision > 0 && kv.create_revision > request.max_create_revision {
        return false;
    }
    true
}

fn sort_kvs<T>(request: &RangeRequest, kvs: &mut [(KeyValue, T)]) -> Result<(), MvccError> {
    use range_request::{SortOrder, SortTarget};
    let mut order = SortOrder::try_from(request.sort_order)
        .map_err(|_| MvccError::InvalidRequest(format!("unknown sort order {}", request.sort_order)))?;
    let target = SortTarget::try_from(request.sort_target)
        .map_err(|_| MvccError::InvalidRequest(format!("unknown sort target {}", request.sort_target)))?;
    // etcd: a non-key sort target without an order sorts ascending.
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None {
        return Ok(());
    }
    // Stable sorts keep key order among equal targets, as etcd does.
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|(kv, _)| kv.version),
        SortTarget::Create => kvs.sort_by_key(|(kv, _)| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|(kv, _)| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|(a, _), (b, _)| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
    Ok(())
}

fn validate_put(put: &PutRequest) -> Result<(), MvccError> {
    if put.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// The duplicate-key rule of etcd: within one branch (including nested
/// transactions' branches), no key may be written twice, and no put may fall
/// inside a deleted range. Checked for both branches, as etcd does.
pub fn validate_txn(request: &TxnRequest) -> Result<(), MvccError> {
    for branch in [&request.success, &request.failure] {
        let mut puts: Vec<Vec<u8>> = Vec::new();
        let mut deletes: Vec<KeyRange> = Vec::new();
        collect_writes(branch, &mut puts, &mut deletes)?;
        let mut sorted = puts.clone();
        sorted.sort();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(MvccError::DuplicateKey);
        }
        for key in &puts {
            let single = KeyRange::new(key, &[]);
            if deletes.iter().any(|range| range.overlaps(&single)) {
                return Err(MvccError::DuplicateKey);
            }
        }
    }
    Ok(())
}

fn collect_writes(ops: &[RequestOp], puts: &mut Vec<Vec<u8>>, deletes: &mut Vec<KeyRange>) -> Result<(), MvccError> {
    for op in ops {
        match op.request.as_ref() {
            Some(request_op::Request::RequestPut(put)) => puts.push(put.key.clone()),
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                deletes.push(KeyRange::new(&delete.key, &delete.range_end))
            }
            Some(request_op::Request::RequestTxn(txn)) => {
                // Either nested branch may run; both count against the outer branch.
                validate_txn(txn)?;
                collect_writes(&txn.success, puts, deletes)?;
                collect_writes(&txn.failure, puts, deletes)?;
            }
            Some(request_op::Request::RequestRange(_)) => {}
            None => return Err(MvccError::InvalidRequest("request op is empty".into())),
        }
    }
    Ok(())
}

/// Total number of operations in a txn, nested ones included (the count the
/// `max-txn-ops` limit applies to, per branch as etcd does).
pub fn txn_op_count(request: &TxnRequest) -> usize {
    let nested = |ops: &[RequestOp]| -> usize {
        ops.iter()
            .map(|op| match op.request.as_ref() {
                Some(request_op::Request::RequestTxn(txn)) => 1 + txn_op_count(txn),
                _ => 1,
            })
            .sum()
    };
    request
        .compare
        .len()
        .max(nested(&request.success))
        .max(nested(&request.failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    /// A put of `key` that keeps its current value and returns the previous
    /// version: both read the current value.
    fn rewrite_keeping_value(key: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        }
    }

    fn get(store: &Mvcc, key: &str) -> Option<KeyValue> {
        let request = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        store.range(&request).unwrap().kvs.into_iter().next()
    }

    fn get_at(store: &Mvcc, key: &str, revision: i64) -> Result<Option<KeyValue>, MvccError> {
        let request = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        Ok(store.range(&request)?.kvs.into_iter().next())
    }

    fn prefix_end(prefix: &str) -> Vec<u8> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        end
    }

    fn delete(key: &str) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    fn attached() -> (Mvcc, std::sync::Arc<zongheng_storage::MemEngine>) {
        let engine = std::sync::Arc::new(zongheng_storage::MemEngine::new());
        let mut store = Mvcc::new();
        store.attach(engine.clone(), 0);
        (store, engine)
    }

    fn flush(store: &mut Mvcc, engine: &zongheng_storage::MemEngine) -> usize {
        let (batches, mark) = store.history_flush();
        let count = batches.iter().map(WriteBatch::len).sum();
        for batch in batches {
            engine.write(batch, zongheng_storage::Durability::Buffered).unwrap();
        }
        store.history_flushed(mark);
        count
    }

    /// Whatever a store answers, the same store with every value in memory
    /// answers too.
    fn same_answers(attached: &Mvcc, in_memory: &Mvcc, keys: &[&str]) {
        for revision in attached.compact_revision().max(1)..=attached.revision() {
            for key in keys {
                assert_eq!(
                    get_at(attached, key, revision),
                    get_at(in_memory, key, revision),
                    "{key}@{revision}"
                );
            }
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..Default::default()
            };
            assert_eq!(attached.range(&all), in_memory.range(&all));
        }
        let everything = KeyRange::new(&[0], &[0]);
        let from = attached.compact_revision().max(1);
        assert_eq!(
            attached.events(&everything, from, attached.revision(), usize::MAX, true),
            in_memory.events(&everything, from, attached.revision(), usize::MAX, true)
        );
    }

    #[test]
    fn values_leave_memory_and_read_back_from_the_engine() {
        let (mut store, engine) = attached();
        let mut plain = Mvcc::new();
        let writes = |store: &mut Mvcc| {
            store.put(&put("a", "1")).unwrap();
            store.put(&put("a", "2")).unwrap();
            store.put(&put("b", "x")).unwrap();
            store.put(&rewrite_keeping_value("a")).unwrap();
            store.delete_range(&delete("b")).unwrap();
            store.put(&put("b", "y")).unwrap();
        };
        writes(&mut store);
        writes(&mut plain);
        // Every put's value moved: "a" at 2, 3 and 5, "b" at 4 and 7 (the
        // delete at 6 has none). `ignore_value` and `prev_kv` above read a
        // pending value.
        assert_eq!(store.history_pending(), 5);
        same_answers(&store, &plain, &["a", "b"]);
        assert_eq!(flush(&mut store, &engine), 5);
        assert_eq!(store.history_pending(), 0);
        same_answers(&store, &plain, &["a", "b"]);
        // Writes that read current values (a compare on a value, `prev_kv`,
        // `ignore_value`, a delete's `prev_kv`) read them from the engine and
        // answer as the all-in-memory store does.
        let reads = |store: &mut Mvcc| {
            let compare = TxnRequest {
                compare: vec![Compare {
                    key: b"b".to_vec(),
                    target: compare::CompareTarget::Value as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::Value(b"y".to_vec())),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put("c", "z"))),
                }],
                ..Default::default()
            };
            let txn = store.txn(&compare).unwrap();
            let kept = store.put(&rewrite_keeping_value("a")).unwrap();
            let deleted = store
                .delete_range(&DeleteRangeRequest {
                    key: b"b".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })
                .unwrap();
            (txn, kept, deleted)
        };
        let answered = reads(&mut store);
        assert!(answered.0.succeeded, "the value compare held");
        assert_eq!(answered, reads(&mut plain));
        same_answers(&store, &plain, &["a", "b", "c"]);
        flush(&mut store, &engine);
        // A snapshot holds no moved value; the engine does.
        let restored: Mvcc = crate::raft::codec::decode(&crate::raft::codec::encode(&store).unwrap()).unwrap();
        let mut restored = restored;
        restored.attach(engine.clone(), 0);
        same_answers(&restored, &plain, &["a", "b"]);
        // What a follower gets has every value inline, and answers alike
        // without any engine.
        let whole = store.materialized().unwrap();
        same_answers(&whole, &plain, &["a", "b"]);
    }

    #[test]
    fn compaction_deletes_moved_values_from_the_engine() {
        let (mut store, engine) = attached();
        for value in ["1", "2", "3"] {
            store.put(&put("a", value)).unwrap(); // revs 2..=4
        }
        // Three values reach the engine, two more stay pending.
        flush(&mut store, &engine);
        store.put(&put("a", "4")).unwrap(); // rev 5
        store.put(&put("a", "5")).unwrap(); // rev 6, the latest
        assert_eq!(store.history_pending(), 2);
        store
            .compact(&CompactionRequest {
                revision: 6,
                physical: false,
            })
            .unwrap();
        // The pending superseded one is dropped; the flushed ones are deleted
        // by the next flush, which also writes the latest value.
        assert_eq!(store.history_pending(), 1);
        assert_eq!(flush(&mut store, &engine), 4);
        let (start, end) = (
            super::super::history::engine_key(0, 0, b""),
            super::super::history::engine_key(0, i64::MAX, b""),
        );
        let left = engine.scan(&start, Some(&end), 100).unwrap();
        assert_eq!(left.len(), 1, "only the latest value stays");
        assert_eq!(left[0].0, super::super::history::engine_key(0, 6, b"a"));
        assert_eq!(get(&store, "a").unwrap().value, b"5");
    }

    #[test]
    fn a_value_the_engine_lost_reads_as_compacted() {
        let (mut store, engine) = attached();
        store.put(&put("a", "1")).unwrap();
        store.put(&put("a", "2")).unwrap();
        flush(&mut store, &engine);
        let mut batch = WriteBatch::new();
        batch.delete(super::super::history::engine_key(0, 2, b"a"));
        engine.write(batch, zongheng_storage::Durability::Sync).unwrap();
        assert_eq!(get_at(&store, "a", 2), Err(MvccError::Compacted));
        assert_eq!(get(&store, "a").unwrap().value, b"2");
        // Materializing keeps it moved instead of failing.
        let whole = store.materialized().unwrap();
        assert_eq!(get_at(&whole, "a", 2), Err(MvccError::Compacted));
    }

    #[test]
    fn ranges_sorted_limited_and_filtered_answer_as_in_memory() {
        use range_request::{SortOrder, SortTarget};
        let (mut store, engine) = attached();
        let mut plain = Mvcc::new();
        // Values out of key order, some keys rewritten, half flushed.
        for (index, (key, value)) in [("k1", "q"), ("k2", "b"), ("k3", "z"), ("k4", "a"), ("k5", "m")]
            .into_iter()
            .enumerate()
        {
            for target in [&mut store, &mut plain] {
                target.put(&put(key, value)).unwrap();
                if index % 2 == 0 {
                    target.put(&put(key, &format!("{value}{value}"))).unwrap();
                }
            }
            if index == 2 {
                flush(&mut store, &engine);
            }
        }
        assert!(store.history_pending() > 0, "some values still pending");
        let targets = [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ];
        let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
        for target in targets {
            for order in orders {
                for limit in [0, 1, 2, 4] {
                    for keys_only in [false, true] {
                        for min_mod_revision in [0, 5] {
                            let request = RangeRequest {
                                key: b"k".to_vec(),
                                range_end: b"l".to_vec(),
                                sort_target: target as i32,
                                sort_order: order as i32,
                                limit,
                                keys_only,
                                min_mod_revision,
                                ..Default::default()
                            };
                            let answer = store.range(&request).unwrap();
                            assert_eq!(answer, plain.range(&request).unwrap(), "{request:?}");
                            if !keys_only {
                                assert!(answer.kvs.iter().all(|kv| !kv.value.is_empty()), "{request:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_range_with_a_limit_reads_only_the_values_it_returns() {
        let (mut store, engine) = attached();
        store.put(&put("a", "1")).unwrap();
        store.put(&put("b", "2")).unwrap();
        flush(&mut store, &engine);
        // "b"'s value is gone from the engine: a range that does not return
        // it must not need it.
        let mut batch = WriteBatch::new();
        batch.delete(super::super::history::engine_key(0, 3, b"b"));
        engine.write(batch, zongheng_storage::Durability::Sync).unwrap();
        let first = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            limit: 1,
            ..Default::default()
        };
        let answer = store.range(&first).unwrap();
        assert_eq!(answer.kvs.len(), 1);
        assert_eq!(answer.kvs[0].value, b"1");
        assert!(answer.more);
        assert_eq!(answer.count, 2);
        let both = RangeRequest { limit: 0, ..first };
        assert_eq!(store.range(&both), Err(MvccError::Compacted));
    }

    #[test]
    fn attaching_moves_every_value() {
        let mut plain = Mvcc::new();
        for value in ["1", "2", "3"] {
            plain.put(&put("a", value)).unwrap();
        }
        let engine = std::sync::Arc::new(zongheng_storage::MemEngine::new());
        let mut store = plain.clone();
        store.attach(engine.clone(), 0);
        assert_eq!(store.history_pending(), 3);
        flush(&mut store, &engine);
        same_answers(&store, &plain, &["a"]);
    }

    #[test]
    fn pending_values_ask_for_a_flush_at_their_limit() {
        let (mut store, _engine) = attached();
        for i in 0..super::super::history::HISTORY_PENDING_VALUES_MAX {
            assert!(!store.history_wants_flush(), "after {i}");
            store.put(&put("a", &i.to_string())).unwrap();
        }
        assert!(store.history_wants_flush());
    }

    #[test]
    fn empty_store_is_at_revision_one() {
        let store = Mvcc::new();
        assert_eq!(store.revision(), 1);
        assert_eq!(get(&store, "a"), None);
    }

    #[test]
    fn put_sets_create_mod_revision_and_version() {
        let mut store = Mvcc::new();
        let response = store.put(&put("a", "1")).unwrap();
        assert_eq!(response.header.unwrap().revision, 2);
        let kv = get(&store, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
        store.put(&put("b", "x")).unwrap();
        store.put(&put("a", "2")).unwrap();
        let kv = get(&store, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
        assert_eq!(kv.value, b"2");
    }

    #[test]
    fn delete_resets_version_and_create_revision() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // rev 2
        store.put(&put("a", "2")).unwrap(); // rev 3
        let response = store.delete_range(&delete("a")).unwrap(); // rev 4
        assert_eq!(response.deleted, 1);
        assert_eq!(response.header.unwrap().revision, 4);
        assert_eq!(get(&store, "a"), None);
        store.put(&put("a", "3")).unwrap(); // rev 5
        let kv = get(&store, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn delete_of_nothing_does_not_bump_revision() {
        let mut store = Mvcc::new();
        let response = store.delete_range(&delete("missing")).unwrap();
        assert_eq!(response.deleted, 0);
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn historical_reads_see_old_versions() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        store.put(&put("a", "2")).unwrap(); // 3
        store.delete_range(&delete("a")).unwrap(); // 4
        assert_eq!(get_at(&store, "a", 1).unwrap(), None);
        assert_eq!(get_at(&store, "a", 2).unwrap().unwrap().value, b"1");
        let kv = get_at(&store, "a", 3).unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision, kv.version), (&b"2"[..], 3, 2));
        assert_eq!(get_at(&store, "a", 4).unwrap(), None);
        assert_eq!(get_at(&store, "a", 5), Err(MvccError::FutureRevision));
    }

    #[test]
    fn compaction_drops_unreachable_versions_and_refuses_old_reads() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        store.put(&put("a", "2")).unwrap(); // 3
        store.put(&put("b", "1")).unwrap(); // 4
        store.delete_range(&delete("b")).unwrap(); // 5
        store.put(&put("a", "3")).unwrap(); // 6
        store
            .compact(&CompactionRequest {
                revision: 5,
                physical: false,
            })
            .unwrap();
        assert_eq!(get_at(&store, "a", 4), Err(MvccError::Compacted));
        // The version visible at the compaction revision stays readable.
        assert_eq!(get_at(&store, "a", 5).unwrap().unwrap().value, b"2");
        assert_eq!(get_at(&store, "b", 5).unwrap(), None);
        assert_eq!(get(&store, "a").unwrap().value, b"3");
        // b's tombstone was the visible version at 5: the key is gone entirely.
        assert!(!store.keys.contains_key(b"b".as_slice()));
        assert_eq!(store.keys[b"a".as_slice()].versions.len(), 2);
        assert_eq!(
            store.compact(&CompactionRequest {
                revision: 5,
                physical: true
            }),
            Err(MvccError::Compacted)
        );
        assert_eq!(
            store.compact(&CompactionRequest {
                revision: 7,
                physical: true
            }),
            Err(MvccError::FutureRevision)
        );
        // Compaction does not change the revision.
        assert_eq!(store.revision(), 6);
    }

    #[test]
    fn range_prefix_limit_count_and_sort() {
        let mut store = Mvcc::new();
        for (key, value) in [("p/c", "1"), ("p/a", "3"), ("p/b", "2"), ("q", "0")] {
            store.put(&put(key, value)).unwrap();
        }
        let mut request = RangeRequest {
            key: "p/".into(),
            range_end: prefix_end("p/"),
            ..Default::default()
        };
        let response = store.range(&request).unwrap();
        let keys: Vec<_> = response
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect();
        assert_eq!(keys, ["p/a", "p/b", "p/c"]);
        assert_eq!((response.count, response.more), (3, false));

        request.limit = 2;
        let response = store.range(&request).unwrap();
        assert_eq!((response.kvs.len(), response.count, response.more), (2, 3, true));

        request.limit = 0;
        request.sort_target = range_request::SortTarget::Value as i32;
        request.sort_order = range_request::SortOrder::Descend as i32;
        let response = store.range(&request).unwrap();
        let values: Vec<_> = response.kvs.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(values, [b"3".to_vec(), b"2".to_vec(), b"1".to_vec()]);

        request.count_only = true;
        let response = store.range(&request).unwrap();
        assert_eq!((response.kvs.len(), response.count), (0, 3));

        // from-key: range_end = [0]
        let response = store
            .range(&RangeRequest {
                key: "p/b".into(),
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(response.count, 3);
        // all keys
        let response = store
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(response.count, 4);
        // keys_only, also when sorting by value
        let response = store
            .range(&RangeRequest {
                key: "p/".into(),
                range_end: prefix_end("p/"),
                keys_only: true,
                sort_target: range_request::SortTarget::Value as i32,
                sort_order: range_request::SortOrder::Ascend as i32,
                ..Default::default()
            })
            .unwrap();
        let keys: Vec<_> = response.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"p/c".to_vec(), b"p/b".to_vec(), b"p/a".to_vec()]);
        assert!(response.kvs.iter().all(|kv| kv.value.is_empty()));
        // keys_only
        let response = store
            .range(&RangeRequest {
                key: "q".into(),
                keys_only: true,
                ..Default::default()
            })
            .unwrap();
        assert!(response.kvs[0].value.is_empty());
    }

    #[test]
    fn revision_filters() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        store.put(&put("b", "1")).unwrap(); // 3
        store.put(&put("a", "2")).unwrap(); // 4
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            min_mod_revision: 4,
            ..Default::default()
        };
        let response = store.range(&request).unwrap();
        assert_eq!(response.kvs.len(), 1);
        assert_eq!(response.kvs[0].key, b"a");
        // etcd's count is over the range, before filters.
        assert_eq!(response.count, 2);
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            max_create_revision: 2,
            ..Default::default()
        };
        assert_eq!(store.range(&request).unwrap().kvs.len(), 1);
    }

    #[test]
    fn put_options() {
        let mut store = Mvcc::new();
        let ignore = PutRequest {
            key: "a".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(store.put(&ignore), Err(MvccError::KeyNotFound));
        store.put(&put("a", "1")).unwrap();
        let response = store
            .put(&PutRequest {
                prev_kv: true,
                ..put("a", "2")
            })
            .unwrap();
        assert_eq!(response.prev_kv.unwrap().value, b"1");
        store.put(&ignore).unwrap();
        assert_eq!(get(&store, "a").unwrap().value, b"2");
        assert_eq!(get(&store, "a").unwrap().version, 3);
        let bad = PutRequest {
            key: "a".into(),
            value: "x".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(store.put(&bad), Err(MvccError::ValueProvided));
        assert_eq!(
            store.put(&PutRequest {
                lease: 7,
                ..put("a", "1")
            }),
            Err(MvccError::LeaseNotFound)
        );
        assert_eq!(store.put(&put("", "1")), Err(MvccError::EmptyKey));
    }

    fn cmp(
        key: &str,
        target: compare::CompareTarget,
        result: compare::CompareResult,
        union: compare::TargetUnion,
    ) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.into(),
            range_end: vec![],
            target_union: Some(union),
        }
    }

    fn op_put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(put(key, value))),
        }
    }

    #[test]
    fn txn_compare_and_swap() {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        let txn = TxnRequest {
            compare: vec![cmp(
                "a",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("1".into()),
            )],
            success: vec![op_put("a", "2"), op_put("b", "2")],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "a".into(),
                    ..Default::default()
                })),
            }],
        };
        let response = store.txn(&txn).unwrap();
        assert!(response.succeeded);
        assert_eq!(response.header.unwrap().revision, 3);
        // Both puts share the revision of the transaction.
        assert_eq!(get(&store, "a").unwrap().mod_revision, 3);
        assert_eq!(get(&store, "b").unwrap().mod_revision, 3);
        let response = store.txn(&txn).unwrap();
        assert!(!response.succeeded);
        // A failed compare with a read-only branch does not move the revision.
        assert_eq!(store.revision(), 3);
        match &response.responses[0].response {
            Some(response_op::Response::ResponseRange(range)) => assert_eq!(range.kvs[0].value, b"2"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn txn_compares_on_revisions_version_and_missing_keys() {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        store.put(&put("a", "1")).unwrap(); // 3
        let check = |store: &mut Mvcc, compare: Compare| {
            store
                .txn(&TxnRequest {
                    compare: vec![compare],
                    ..Default::default()
                })
                .unwrap()
                .succeeded
        };
        assert!(check(
            &mut store,
            cmp(
                "a",
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(2)
            )
        ));
        assert!(check(
            &mut store,
            cmp(
                "a",
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(2)
            )
        ));
        assert!(check(
            &mut store,
            cmp(
                "a",
                CompareTarget::Mod,
                CompareResult::Greater,
                TargetUnion::ModRevision(2)
            )
        ));
        assert!(check(
            &mut store,
            cmp(
                "a",
                CompareTarget::Mod,
                CompareResult::Less,
                TargetUnion::ModRevision(4)
            )
        ));
        assert!(check(
            &mut store,
            cmp(
                "a",
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value("x".into())
            )
        ));
        // A missing key compares as version 0 / create revision 0.
        assert!(check(
            &mut store,
            cmp(
                "zz",
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(0)
            )
        ));
        assert!(check(
            &mut store,
            cmp(
                "zz",
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(0)
            )
        ));
        // ... but a value compare on a missing key always fails, even "!=".
        assert!(!check(
            &mut store,
            cmp(
                "zz",
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value("x".into())
            )
        ));
        // A malformed range (end before start) holds no key: same rules.
        let mut malformed = cmp(
            "b",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        );
        malformed.range_end = "a".into();
        assert!(check(&mut store, malformed.clone()));
        malformed.target = CompareTarget::Value as i32;
        malformed.target_union = Some(TargetUnion::Value("1".into()));
        assert!(!check(&mut store, malformed));
        // A mismatched target and value is refused.
        let bad = cmp(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Value("1".into()),
        );
        assert!(matches!(
            store.txn(&TxnRequest {
                compare: vec![bad],
                ..Default::default()
            }),
            Err(MvccError::InvalidCompare(_))
        ));
    }

    #[test]
    fn txn_compare_over_a_range_must_hold_for_every_key() {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let mut store = Mvcc::new();
        store.put(&put("r/a", "1")).unwrap();
        store.put(&put("r/b", "1")).unwrap();
        let mut compare = cmp(
            "r/",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("1".into()),
        );
        compare.range_end = prefix_end("r/");
        assert!(
            store
                .txn(&TxnRequest {
                    compare: vec![compare.clone()],
                    ..Default::default()
                })
                .unwrap()
                .succeeded
        );
        store.put(&put("r/c", "2")).unwrap();
        assert!(
            !store
                .txn(&TxnRequest {
                    compare: vec![compare],
                    ..Default::default()
                })
                .unwrap()
                .succeeded
        );
    }

    #[test]
    fn txn_duplicate_keys_are_refused_and_change_nothing() {
        let mut store = Mvcc::new();
        let txn = TxnRequest {
            success: vec![op_put("a", "1"), op_put("a", "2")],
            ..Default::default()
        };
        assert_eq!(store.txn(&txn), Err(MvccError::DuplicateKey));
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: "a".into(),
                        range_end: "c".into(),
                        prev_kv: false,
                    })),
                },
                op_put("b", "1"),
            ],
            ..Default::default()
        };
        assert_eq!(store.txn(&txn), Err(MvccError::DuplicateKey));
        assert_eq!(store.revision(), 1);
        // A failing put in the branch leaves no partial writes.
        let txn = TxnRequest {
            success: vec![
                op_put("x", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        lease: 5,
                        ..put("y", "1")
                    })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(store.txn(&txn), Err(MvccError::LeaseNotFound));
        assert_eq!(get(&store, "x"), None);
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn nested_compares_see_the_start_state_and_reads_see_own_writes() {
        let mut store = Mvcc::new();
        // etcd decides nested compares before running any op: "a" is still
        // missing (version 0) although the outer branch puts it first.
        let nested = TxnRequest {
            compare: vec![cmp(
                "a",
                compare::CompareTarget::Version,
                compare::CompareResult::Equal,
                compare::TargetUnion::Version(0),
            )],
            success: vec![op_put("b", "from-nested")],
            failure: vec![],
        };
        let txn = TxnRequest {
            success: vec![
                op_put("a", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(nested)),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: "b".into(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let response = store.txn(&txn).unwrap();
        assert_eq!(store.revision(), 2);
        match &response.responses[1].response {
            Some(response_op::Response::ResponseTxn(inner)) => assert!(inner.succeeded),
            other => panic!("unexpected {other:?}"),
        }
        match &response.responses[2].response {
            Some(response_op::Response::ResponseRange(range)) => assert_eq!(range.kvs[0].value, b"from-nested"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(get(&store, "b").unwrap().mod_revision, 2);
    }

    #[test]
    fn txn_inner_headers_carry_the_revision_reached() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap(); // 2
        let read_a = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        let txn = TxnRequest {
            success: vec![read_a.clone(), op_put("b", "1"), read_a],
            ..Default::default()
        };
        let response = store.txn(&txn).unwrap();
        let revisions: Vec<i64> = response
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(response_op::Response::ResponseRange(r)) => r.header.as_ref().unwrap().revision,
                Some(response_op::Response::ResponsePut(r)) => r.header.as_ref().unwrap().revision,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(revisions, [2, 3, 3]);
    }

    #[test]
    fn limit_without_order_sorts_only_the_first_keys_as_etcd_does() {
        let mut store = Mvcc::new();
        for (key, value) in [("s/a", "3"), ("s/b", "2"), ("s/c", "4"), ("s/d", "1")] {
            store.put(&put(key, value)).unwrap();
        }
        let mut request = RangeRequest {
            key: "s/".into(),
            range_end: prefix_end("s/"),
            limit: 2,
            sort_target: range_request::SortTarget::Value as i32,
            ..Default::default()
        };
        let keys = |store: &Mvcc, request: &RangeRequest| -> Vec<Vec<u8>> {
            store.range(request).unwrap().kvs.into_iter().map(|kv| kv.key).collect()
        };
        // No order: the first 3 keys in key order (a, b, c) sorted by value.
        assert_eq!(keys(&store, &request), [b"s/b".to_vec(), b"s/a".to_vec()]);
        request.sort_order = range_request::SortOrder::Ascend as i32;
        assert_eq!(keys(&store, &request), [b"s/d".to_vec(), b"s/b".to_vec()]);
    }

    fn event_summary(events: &[Event]) -> Vec<(i32, String, i64, Option<String>)> {
        events
            .iter()
            .map(|event| {
                let kv = event.kv.as_ref().unwrap();
                (
                    event.r#type,
                    String::from_utf8(kv.key.clone()).unwrap(),
                    kv.mod_revision,
                    event
                        .prev_kv
                        .as_ref()
                        .map(|prev| String::from_utf8(prev.value.clone()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn events_replay_history_in_revision_and_op_order() {
        let mut store = Mvcc::new();
        store.put(&put("w/a", "1")).unwrap(); // 2
        store.put(&put("other", "x")).unwrap(); // 3
        let txn = TxnRequest {
            success: vec![op_put("w/c", "1"), op_put("w/b", "1")],
            ..Default::default()
        };
        store.txn(&txn).unwrap(); // 4: c then b
        store.put(&put("w/a", "2")).unwrap(); // 5
        store
            .delete_range(&DeleteRangeRequest {
                key: "w/".into(),
                range_end: prefix_end("w/"),
                prev_kv: false,
            })
            .unwrap(); // 6
        let range = KeyRange::new(b"w/", &prefix_end("w/"));
        let (events, last) = store.events(&range, 1, 100, 1000, true).unwrap();
        assert_eq!(last, 6);
        let put_type = EventType::Put as i32;
        let delete_type = EventType::Delete as i32;
        assert_eq!(
            event_summary(&events),
            vec![
                (put_type, "w/a".into(), 2, None),
                (put_type, "w/c".into(), 4, None),
                (put_type, "w/b".into(), 4, None),
                (put_type, "w/a".into(), 5, Some("1".into())),
                (delete_type, "w/a".into(), 6, Some("2".into())),
                (delete_type, "w/b".into(), 6, Some("1".into())),
                (delete_type, "w/c".into(), 6, Some("1".into())),
            ]
        );
        // A limit stops after a whole revision.
        let (events, last) = store.events(&range, 1, 100, 2, false).unwrap();
        assert_eq!((events.len(), last), (3, 4));
        let (events, last) = store.events(&range, 5, 100, 1000, false).unwrap();
        assert_eq!((events.len(), last), (4, 6));
        // Nothing new: covered up to the current revision.
        let (events, last) = store.events(&range, 7, 100, 1000, false).unwrap();
        assert_eq!((events.len(), last), (0, 6));
        // A single key.
        let (events, _) = store
            .events(&KeyRange::new(b"other", b""), 1, 100, 1000, false)
            .unwrap();
        assert_eq!(events.len(), 1);
        // Compaction cuts replay.
        store
            .compact(&CompactionRequest {
                revision: 5,
                physical: false,
            })
            .unwrap();
        assert_eq!(store.events(&range, 4, 100, 1000, false), Err(MvccError::Compacted));
        let (events, _) = store.events(&range, 5, 100, 1000, false).unwrap();
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn leases_attach_detach_and_revoke_in_one_revision() {
        let mut store = Mvcc::new();
        assert_eq!(
            store.put(&PutRequest {
                lease: 7,
                ..put("a", "1")
            }),
            Err(MvccError::LeaseNotFound)
        );
        store.lease_grant(7, 10).unwrap();
        assert_eq!(store.lease_grant(7, 10), Err(MvccError::LeaseExists));
        assert_eq!(store.revision(), 1, "a grant does not change the revision");
        store
            .put(&PutRequest {
                lease: 7,
                ..put("a", "1")
            })
            .unwrap(); // 2
        store
            .put(&PutRequest {
                lease: 7,
                ..put("b", "1")
            })
            .unwrap(); // 3
        store
            .put(&PutRequest {
                lease: 7,
                ..put("c", "1")
            })
            .unwrap(); // 4
        store.put(&put("b", "2")).unwrap(); // 5: b detached (no lease)
        store.delete_range(&delete("c")).unwrap(); // 6: c detached
        store
            .put(&PutRequest {
                ignore_lease: true,
                ..put("a", "2")
            })
            .unwrap(); // 7: a keeps lease 7
        let keys: Vec<_> = store.lease(7).unwrap().keys.iter().cloned().collect();
        assert_eq!(keys, [b"a".to_vec()]);
        assert_eq!(get(&store, "a").unwrap().lease, 7);
        assert_eq!(store.lease_revoke(7), Ok(8));
        assert_eq!(get(&store, "a"), None);
        assert_eq!(get(&store, "b").unwrap().value, b"2");
        assert_eq!(store.lease_revoke(7), Err(MvccError::LeaseNotFound));
        let range = KeyRange::new(b"a", b"");
        let (events, _) = store.events(&range, 8, 8, 10, false).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].r#type, EventType::Delete as i32);
        // A lease with no keys revokes without a new revision.
        store.lease_grant(9, 5).unwrap();
        assert_eq!(store.lease_revoke(9), Ok(8));
    }

    #[test]
    fn op_count_includes_nested() {
        let inner = TxnRequest {
            success: vec![op_put("a", "1"), op_put("b", "1")],
            ..Default::default()
        };
        let outer = TxnRequest {
            success: vec![
                op_put("c", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                },
            ],
            ..Default::default()
        };
        assert_eq!(txn_op_count(&outer), 4);
    }

    #[test]
    fn snapshot_roundtrip_preserves_everything() {
        let mut store = Mvcc::new();
        store.put(&put("a", "1")).unwrap();
        store.put(&put("a", "2")).unwrap();
        store.delete_range(&delete("a")).unwrap();
        store.put(&put("b", "1")).unwrap();
        store
            .compact(&CompactionRequest {
                revision: 3,
                physical: false,
            })
            .unwrap();
        let bytes = bincode::serde::encode_to_vec(&store, bincode::config::standard()).unwrap();
        let (restored, _): (Mvcc, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(restored, store);
    }
}
