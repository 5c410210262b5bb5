//! The durable Raft log of one group, on the storage engine.
//!
//! Layout (see `zongheng_storage::Key`): entries under `RaftLog { group, index }`
//! so one group's log is contiguous and in index order; the vote, the
//! committed log id and the last purged log id under their own keys. Many
//! groups share one engine, which is what lets the data store's partitions
//! group-commit their appends later.
//!
//! ## What survives a crash
//! - `append` writes the entries without an fsync and asks the node's
//!   [`GroupCommit`] flusher to call openraft's `LogFlushed` callback once
//!   the next shared fsync has made them durable; `save_vote` is a synced
//!   write through the same flusher. So a node never acknowledges an entry
//!   or grants a vote it could forget, and the appends of all groups share
//!   fsyncs (see `group_commit`, also for why openraft 0.9 still waits for
//!   the leader's fsync before replicating).
//! - `truncate` is also synced: a conflicting suffix must not come back.
//! - `save_committed` is buffered: it becomes durable with the next synced
//!   write (the next append), so after a crash the committed index can come
//!   back a little stale. Nothing unsafe follows from that on a follower (the
//!   leader tells it the index again). On a leader it would: openraft
//!   restores a node that restarts with a committed vote for itself as leader
//!   of the same term, and serves linearizable reads from max(first entry of
//!   its term, committed index); with a stale index those reads could miss
//!   acknowledged writes (seen once in the kill -9 process test, when this
//!   write was buffered and the vote was read back as saved). So
//!   `read_vote` returns the vote uncommitted: a restarted leader must win
//!   a new election, whose first entry covers everything before it. Syncing
//!   this write instead cost one fsync per commit on every member.
//! - `purge` is buffered: losing it only makes a restarted node re-purge
//!   entries, which is harmless; the next synced write makes it durable.
//!
//! Synced writes wait for the group-commit flusher (see its module doc);
//! buffered ones and reads go to the engine inline on the calling task.

// openraft's trait methods return its `StorageError` by value; helpers
// returning the same type keep `?` working, so its size is not ours to change.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zongheng_storage::{Durability, Engine, Key, WriteBatch};

use super::codec;
use super::group_commit::GroupCommit;

/// Entries read back per engine scan (bounded by the engine's own scan limit).
const LOG_READ_BATCH_MAX: usize = 4096;

/// The log of Raft group `group` in `engine`. Cheap to clone: clones share the
/// engine and read the same data.
pub struct LogStore<C: RaftTypeConfig> {
    engine: Arc<dyn Engine>,
    commit: Arc<GroupCommit>,
    group: u64,
    _config: std::marker::PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            commit: self.commit.clone(),
            group: self.group,
            _config: std::marker::PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// The log of `group` on `commit`'s engine, synced through `commit`.
    pub fn new(commit: Arc<GroupCommit>, group: u64) -> Self {
        Self {
            engine: commit.engine().clone(),
            commit,
            group,
            _config: std::marker::PhantomData,
        }
    }

    fn read_value<T: DeserializeOwned>(&self, key: Key) -> Result<Option<T>, StorageError<C::NodeId>> {
        let bytes = self.engine.get(&key.encode()).map_err(|error| read_error(&error))?;
        bytes
            .map(|bytes| codec::decode(&bytes).map_err(|error| read_error(&error)))
            .transpose()
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError<C::NodeId>> {
        self.engine
            .write(batch, durability)
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError<C::NodeId>> {
        codec::encode(value).map_err(|error| StorageIOError::write_logs(&error).into())
    }
}

fn read_error<NID: openraft::NodeId>(error: &(impl std::error::Error + 'static)) -> StorageError<NID> {
    StorageIOError::read_logs(error).into()
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        use std::ops::Bound;
        let mut next = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => index + 1,
            Bound::Unbounded => 0,
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(&index) => Some(index + 1),
            Bound::Excluded(&index) => Some(index),
            Bound::Unbounded => None,
        };
        let mut entries = Vec::new();
        loop {
            if end_exclusive.is_some_and(|end| next >= end) {
                break;
            }
            let start = Key::RaftLog {
                group: self.group,
                index: next,
            }
            .encode();
            let end = match end_exclusive {
                Some(end) => Key::RaftLog {
                    group: self.group,
                    index: end,
                }
                .encode(),
                None => Key::raft_log_range(self.group).1,
            };
            let pairs = self
                .engine
                .scan(&start, Some(&end), LOG_READ_BATCH_MAX)
                .map_err(|error| read_error(&error))?;
            let full = pairs.len() == LOG_READ_BATCH_MAX;
            for (_, bytes) in pairs {
                let entry: Entry<C> = codec::decode(&bytes).map_err(|error| read_error(&error))?;
                next = entry.get_log_id().index + 1;
                entries.push(entry);
            }
            if !full {
                break;
            }
        }
        Ok(entries)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_value(Key::RaftPurged { group: self.group })?;
        let (start, end) = Key::raft_log_range(self.group);
        let last = self
            .engine
            .scan_rev(&start, Some(&end), 1)
            .map_err(|error| read_error(&error))?;
        let last_log_id = match last.into_iter().next() {
            Some((_, bytes)) => {
                let entry: Entry<C> = codec::decode(&bytes).map_err(|error| read_error(&error))?;
                Some(entry.get_log_id().clone())
            }
            None => last_purged_log_id.clone(),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut batch = WriteBatch::new();
        batch.put(Key::RaftVote { group: self.group }.encode(), Self::encode(vote)?);
        self.commit
            .write_synced(batch)
            .await
            .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    /// The vote as saved, but never marked committed: openraft reads it only
    /// when the node starts, and a committed vote for this node would restore
    /// it as leader of its old term, trusting a committed index that is
    /// saved without fsync (see the module doc). Uncommitted, the vote still
    /// binds the node to its choice for that term; it just has to win an
    /// election again, as a restarted etcd leader does.
    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        let vote: Option<Vote<C::NodeId>> = self.read_value(Key::RaftVote { group: self.group })?;
        Ok(vote.map(|vote| Vote {
            committed: false,
            ..vote
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), StorageError<C::NodeId>> {
        let mut batch = WriteBatch::new();
        batch.put(
            Key::RaftCommitted { group: self.group }.encode(),
            Self::encode(&committed)?,
        );
        self.write(batch, Durability::Buffered)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self
            .read_value::<Option<LogId<C::NodeId>>>(Key::RaftCommitted { group: self.group })?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            let key = Key::RaftLog {
                group: self.group,
                index: entry.get_log_id().index,
            }
            .encode();
            batch.put(key, Self::encode(&entry)?);
        }
        // Visible at once (a replication task may read them back as soon as
        // openraft lets it); acknowledged to openraft only once the
        // group-commit flusher made them durable.
        if let Err(error) = self.engine.write(batch, Durability::Buffered) {
            callback.log_io_completed(Err(io::Error::other(error.to_string())));
            return Err(StorageIOError::write_logs(&error).into());
        }
        if cfg!(feature = "mutation-ack-before-fsync") {
            // The mutation build acknowledges entries a crash can still lose.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.commit
            .after_flush(move |result| callback.log_io_completed(result.map_err(io::Error::other)))
            .await
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let (start, end) = Key::raft_log_range_from(self.group, log_id.index);
        let mut batch = WriteBatch::new();
        batch.delete_range(start..end);
        self.commit
            .write_synced(batch)
            .await
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let (start, end) = Key::raft_log_range_upto(self.group, log_id.index);
        let mut batch = WriteBatch::new();
        // Record the purge point first in the same atomic batch: a reader never
        // sees entries gone without knowing why.
        batch.put(Key::RaftPurged { group: self.group }.encode(), Self::encode(&log_id)?);
        batch.delete_range(start..end);
        self.write(batch, Durability::Buffered)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};
    use zongheng_storage::MemEngine;

    use super::*;
    use crate::meta::MetaRaftConfig;
    use crate::raft::META_GROUP;

    #[tokio::test]
    async fn a_restarted_leader_reads_its_vote_back_uncommitted() {
        let engine = Arc::new(MemEngine::new());
        let mut store = LogStore::<MetaRaftConfig>::new(GroupCommit::start(engine.clone()), META_GROUP);
        store.save_vote(&Vote::new_committed(7, 1)).await.expect("save vote");
        engine.crash();
        let vote = store.read_vote().await.expect("read vote").expect("a vote");
        assert_eq!(vote, Vote::new(7, 1), "same term and choice, not committed");
    }

    #[tokio::test]
    async fn the_committed_index_becomes_durable_with_the_next_synced_write() {
        let engine = Arc::new(MemEngine::new());
        let mut store = LogStore::<MetaRaftConfig>::new(GroupCommit::start(engine.clone()), META_GROUP);
        let committed = Some(LogId::new(CommittedLeaderId::new(3, 1), 10));
        store.save_committed(committed).await.expect("save committed");
        engine.crash();
        assert_eq!(store.read_committed().await.expect("read"), None, "buffered: lost");
        store.save_committed(committed).await.expect("save committed");
        store.save_vote(&Vote::new(4, 2)).await.expect("save vote (synced)");
        engine.crash();
        assert_eq!(store.read_committed().await.expect("read"), committed);
    }
}
