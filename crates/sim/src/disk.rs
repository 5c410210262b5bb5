//! [`AuditedEngine`]: a simulated node's disk, with an auditor on its writes.
//!
//! The disk itself is a [`MemEngine`]: it keeps what was synced and loses
//! every buffered write on a crash, the worst a power loss may do (see its
//! module doc). The simulator keeps that engine across crashes and restarts
//! of the node and replaces it only to simulate a wiped data dir.
//!
//! The auditor checks the other half of "acknowledge only what is fsynced"
//! for the writes a node acknowledges as soon as its engine write returns: a
//! snapshot or a local record (identity, replica ownership) written
//! `Buffered` is reported as an [`Invariant::UnsyncedRaftWrite`] violation at
//! once, before a crash could turn it into lost data. The Raft log, votes
//! included, lives in the node's log files (`zongheng_storage::wal`, in
//! memory here, with torn crashes); any of it written to the engine is a
//! violation too. An append or vote acknowledged before its fsync is beyond
//! what an engine can see, and is caught end to end instead (the crash tiers
//! and `tests/mutations.rs`). Buffered state-machine writes pass: the log
//! and the last snapshot make that state durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zongheng_storage::{Durability, Engine, Key, KeyValue, MemEngine, Op, StorageError, WriteBatch};

use crate::invariants::{Invariant, Monitor};

/// A [`MemEngine`] whose buffered writes are audited (see the module doc).
pub struct AuditedEngine {
    inner: MemEngine,
    host: String,
    monitor: Monitor,
    /// Set once a violation was reported: one per disk is enough to read.
    reported: AtomicBool,
}

impl AuditedEngine {
    pub fn new(inner: MemEngine, host: &str, monitor: Monitor) -> Arc<Self> {
        Arc::new(Self {
            inner,
            host: host.to_string(),
            monitor,
            reported: AtomicBool::new(false),
        })
    }

    /// What in `batch`, written without an fsync, a node must not have
    /// acknowledged, or must not write to the engine at all (`None` when the
    /// batch may be lost harmlessly).
    fn must_be_synced(batch: &WriteBatch) -> Option<String> {
        for op in batch.ops() {
            if let Op::Put { key, .. } = op {
                match Key::decode(key) {
                    Ok(key @ (Key::SnapshotMeta { .. } | Key::Local { .. })) => {
                        return Some(format!("{key:?} written without an fsync"));
                    }
                    Ok(
                        key @ (Key::RaftVote { .. }
                        | Key::RaftCommitted { .. }
                        | Key::RaftPurged { .. }
                        | Key::RaftLog { .. }),
                    ) => {
                        return Some(format!(
                            "{key:?} written to the engine: the Raft log lives in the log files"
                        ));
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

impl Engine for AuditedEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.inner.get_many(keys)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(start, end, limit)
    }

    fn scan_keys(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        self.inner.scan_keys(start, end, limit)
    }

    fn scan_rev(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan_rev(start, end, limit)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        if durability == Durability::Buffered {
            if let Some(problem) = Self::must_be_synced(&batch) {
                if !self.reported.swap(true, Ordering::SeqCst) {
                    self.monitor
                        .violation(Invariant::UnsyncedRaftWrite, format!("{}: {problem}", self.host));
                }
            }
        }
        self.inner.write(batch, durability)
    }

    fn size_bytes(&self) -> Result<u64, StorageError> {
        self.inner.size_bytes()
    }
}
