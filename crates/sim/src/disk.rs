//! [`AuditedEngine`]: a simulated node's disk, with an auditor on its writes.
//!
//! The disk itself is a [`MemEngine`]: it keeps what was synced and loses
//! every buffered write on a crash, the worst a power loss may do (see its
//! module doc). The simulator keeps that engine across crashes and restarts
//! of the node and replaces it only to simulate a wiped data dir.
//!
//! The auditor checks the other half of "acknowledge only what is fsynced"
//! for the writes a node acknowledges as soon as its engine write returns: a
//! vote, a truncation of the log, a snapshot or a local record (identity,
//! replica ownership) written `Buffered` is reported as an
//! [`Invariant::UnsyncedRaftWrite`] violation at once, before a crash could
//! turn it into lost data. Log appends are written `Buffered` on purpose and
//! acknowledged later, after the group-commit flusher's fsync
//! (`raft/group_commit.rs`); an append acknowledged too early is beyond what
//! an engine can see, and is caught end to end instead (the crash tiers and
//! `tests/mutations.rs`). Buffered writes that may be lost harmlessly (the
//! committed index, a purge of entries a snapshot covers) pass.

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
    /// acknowledged (`None` when the batch may be lost harmlessly).
    fn must_be_synced(batch: &WriteBatch) -> Option<String> {
        let is_purge = batch
            .ops()
            .iter()
            .any(|op| matches!(op, Op::Put { key, .. } if matches!(Key::decode(key), Ok(Key::RaftPurged { .. }))));
        for op in batch.ops() {
            match op {
                Op::Put { key, .. } => match Key::decode(key) {
                    Ok(key @ Key::RaftVote { .. }) => {
                        return Some(format!("{key:?} written without an fsync"));
                    }
                    Ok(key @ (Key::SnapshotMeta { .. } | Key::Local { .. })) => {
                        return Some(format!("{key:?} written without an fsync"));
                    }
                    _ => {}
                },
                Op::DeleteRange { start, .. } if !is_purge => {
                    if let Ok(key @ Key::RaftLog { .. }) = Key::decode(start) {
                        return Some(format!("log truncated from {key:?} without an fsync"));
                    }
                }
                _ => {}
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
