//! The durable Raft log of one group, in the node's log ([`Wal`]).
//!
//! Entries go to the log under the group's id; the vote, the committed log
//! id and the last purged log id are the group's state slots there
//! ([`SLOT_VOTE`], [`SLOT_COMMITTED`], [`SLOT_PURGED`]). Many groups share
//! one log and its fsyncs (see `group_commit`). The state machines and their
//! snapshots live in the storage engine instead (see `state_machine`).
//!
//! ## What survives a crash
//! - `append` writes the entries without an fsync and asks the node's
//!   [`GroupCommit`] flusher to call openraft's `LogFlushed` callback once
//!   the next shared fsync has made them durable; `save_vote` waits for that
//!   fsync. So a node never acknowledges an entry or grants a vote it could
//!   forget (see `group_commit`, also for why openraft 0.9 still waits for
//!   the leader's fsync before replicating).
//! - `truncate` also waits for the fsync: a conflicting suffix must not come
//!   back.
//! - `save_committed` does not wait: it becomes durable with the next fsync,
//!   so after a crash the committed index can come back a little stale, never
//!   ahead of the entries (the log keeps a prefix of its writes). Nothing
//!   unsafe follows from that on a follower (the leader tells it the index
//!   again). On a leader it would: openraft restores a node that restarts with
//!   a committed vote for itself as leader of the same term, and serves
//!   linearizable reads from max(first entry of its term, committed index);
//!   with a stale index those reads could miss acknowledged writes (seen once
//!   in the kill -9 process test, when this write was buffered and the vote
//!   was read back as saved). So `read_vote` returns the vote uncommitted: a
//!   restarted leader must win a new election, whose first entry covers
//!   everything before it. Syncing this write instead cost one fsync per
//!   commit on every member.
//! - `purge` does not wait: losing it only makes a restarted node re-purge
//!   entries, which is harmless. The purged log id is written before the
//!   purge itself, so a reader never sees entries gone without knowing why.
//!
//! ## Data dirs from before the log
//! Earlier versions kept the Raft log in the engine, under `Key::RaftLog`
//! and its siblings. [`migrate_engine_log`] moves such a log into the node's
//! log once, at start, before any group opens.

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
use zongheng_storage::wal::Wal;
use zongheng_storage::{Durability, Engine, Key, WriteBatch};

use super::codec;
use super::group_commit::GroupCommit;

/// The log state slot holding a group's vote.
pub const SLOT_VOTE: u8 = 0;
/// The log state slot holding a group's committed log id.
pub const SLOT_COMMITTED: u8 = 1;
/// The log state slot holding a group's last purged log id.
pub const SLOT_PURGED: u8 = 2;

/// The log of Raft group `group` in the node's log. Cheap to clone: clones
/// share the log and read the same data.
pub struct LogStore<C: RaftTypeConfig> {
    wal: Arc<Wal>,
    commit: Arc<GroupCommit>,
    group: u64,
    _config: std::marker::PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            wal: self.wal.clone(),
            commit: self.commit.clone(),
            group: self.group,
            _config: std::marker::PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// The log of `group` in `commit`'s log, synced through `commit`.
    pub fn new(commit: Arc<GroupCommit>, group: u64) -> Self {
        Self {
            wal: commit.wal().clone(),
            commit,
            group,
            _config: std::marker::PhantomData,
        }
    }

    fn read_slot<T: DeserializeOwned>(&self, slot: u8) -> Result<Option<T>, StorageError<C::NodeId>> {
        self.wal
            .state(self.group, slot)
            .map(|bytes| codec::decode(&bytes).map_err(|error| read_error(&error)))
            .transpose()
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError<C::NodeId>> {
        codec::encode(value).map_err(|error| StorageIOError::write_logs(&error).into())
    }
}

fn read_error<NID: openraft::NodeId>(error: &(impl std::error::Error + 'static)) -> StorageError<NID> {
    StorageIOError::read_logs(error).into()
}

fn write_error<NID: openraft::NodeId>(error: &(impl std::error::Error + 'static)) -> StorageError<NID> {
    StorageIOError::write_logs(error).into()
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
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&index) => index.saturating_add(1),
            Bound::Excluded(&index) => index,
            Bound::Unbounded => u64::MAX,
        };
        // Inline, as engine reads were: recent entries come from the page
        // cache, and moving off the worker would cost more than the `pread`.
        let stored = self
            .wal
            .entries(self.group, start, end)
            .map_err(|error| read_error(&error))?;
        stored
            .iter()
            .map(|bytes| codec::decode(bytes).map_err(|error| read_error(&error)))
            .collect()
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_slot(SLOT_PURGED)?;
        let last_log_id = match self.wal.bounds(self.group) {
            Some((first, next)) if next > first => {
                let stored = self
                    .wal
                    .entries(self.group, next - 1, next)
                    .map_err(|error| read_error(&error))?;
                let bytes = stored.first().ok_or_else(|| {
                    read_error(&io::Error::other(format!(
                        "entry {} of a group's log is missing",
                        next - 1
                    )))
                })?;
                let entry: Entry<C> = codec::decode(bytes).map_err(|error| read_error(&error))?;
                Some(entry.get_log_id().clone())
            }
            _ => last_purged_log_id.clone(),
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
        self.wal
            .set_state(self.group, SLOT_VOTE, &Self::encode(vote)?)
            .map_err(|error| StorageIOError::write_vote(&error))?;
        self.commit
            .sync()
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
        let vote: Option<Vote<C::NodeId>> = self.read_slot(SLOT_VOTE)?;
        Ok(vote.map(|vote| Vote {
            committed: false,
            ..vote
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), StorageError<C::NodeId>> {
        self.wal
            .set_state(self.group, SLOT_COMMITTED, &Self::encode(&committed)?)
            .map_err(|error| write_error(&error))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.read_slot::<Option<LogId<C::NodeId>>>(SLOT_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut first = None;
        let mut encoded = Vec::new();
        for entry in entries {
            first.get_or_insert(entry.get_log_id().index);
            encoded.push(Self::encode(&entry)?);
        }
        // Visible at once (a replication task may read them back as soon as
        // openraft lets it); acknowledged to openraft only once the
        // group-commit flusher made them durable.
        if let Some(first) = first {
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            if let Err(error) = self.wal.append(self.group, first, &refs) {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                return Err(write_error(&error));
            }
        }
        if cfg!(feature = "mutation-ack-before-fsync") {
            // The mutation build acknowledges entries a crash can still lose.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.commit
            .after_flush(move |result| callback.log_io_completed(result.map_err(io::Error::other)))
            .await
            .map_err(|error| write_error(&error))
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.wal
            .truncate(self.group, log_id.index)
            .map_err(|error| write_error(&error))?;
        self.commit.sync().await.map_err(|error| write_error(&error))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        // The purge point first: a reader never sees entries gone without
        // knowing why, even after a crash between the two records.
        self.wal
            .set_state(self.group, SLOT_PURGED, &Self::encode(&log_id)?)
            .map_err(|error| write_error(&error))?;
        self.wal
            .purge(self.group, log_id.index)
            .map_err(|error| write_error(&error))
    }
}

/// Engine keys of the Raft log as earlier versions kept it: every key from
/// `Key::RaftVote` up to, not including, `Key::SnapshotMeta`.
fn engine_log_range() -> (Vec<u8>, Vec<u8>) {
    (
        Key::RaftVote { group: 0 }.encode()[..1].to_vec(),
        Key::SnapshotMeta { group: 0 }.encode()[..1].to_vec(),
    )
}

/// Move a Raft log that an earlier version kept in `engine` into `wal` (see
/// the module doc); returns how many groups moved. Each group found is
/// replaced whole in the log, then synced, and only then deleted from the
/// engine (synced), so a crash in between just moves it again.
pub fn migrate_engine_log(engine: &dyn Engine, wal: &Wal) -> Result<usize, zongheng_storage::StorageError> {
    let (start, end) = engine_log_range();
    if engine.scan_keys(&start, Some(&end), 1)?.is_empty() {
        return Ok(0);
    }
    let mut groups = std::collections::BTreeSet::new();
    let mut from = start.clone();
    // Per group being moved: the index its next entry should have, and the
    // index it was purged up to (its purge key sorts before its entries).
    let mut next: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut purged_upto: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    loop {
        let page = engine.scan(&from, Some(&end), zongheng_storage::SCAN_LIMIT_MAX)?;
        let full = page.len() == zongheng_storage::SCAN_LIMIT_MAX;
        for (key, value) in &page {
            let decoded = Key::decode(key)?;
            let group = match &decoded {
                Key::RaftVote { group }
                | Key::RaftCommitted { group }
                | Key::RaftPurged { group }
                | Key::RaftLog { group, .. } => *group,
                _ => continue,
            };
            if groups.insert(group) {
                wal.remove_group(group)?;
            }
            match decoded {
                Key::RaftVote { .. } => wal.set_state(group, SLOT_VOTE, value)?,
                Key::RaftCommitted { .. } => wal.set_state(group, SLOT_COMMITTED, value)?,
                Key::RaftPurged { .. } => {
                    wal.set_state(group, SLOT_PURGED, value)?;
                    let purged: LogId<u64> =
                        codec::decode(value).map_err(|error| zongheng_storage::StorageError::Corrupt {
                            detail: format!("group {group}: an unreadable purged log id: {error}"),
                        })?;
                    wal.purge(group, purged.index)?;
                    purged_upto.insert(group, purged.index);
                }
                Key::RaftLog { index, .. } => {
                    // A purge that a crash kept from reaching the entries.
                    if purged_upto.get(&group).is_some_and(|&purged| index <= purged) {
                        continue;
                    }
                    // Entries after a gap (the engine deletes purged ranges)
                    // start the log anew at their index.
                    if next.get(&group).is_some_and(|&expected| expected != index) {
                        wal.truncate(group, 0)?;
                    }
                    wal.append(group, index, &[value.as_slice()])?;
                    next.insert(group, index + 1);
                }
                _ => {}
            }
        }
        match page.last() {
            Some((last, _)) if full => {
                from = last.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    wal.sync()?;
    let mut batch = WriteBatch::new();
    batch.delete_range(start..end);
    engine.write(batch, Durability::Sync)?;
    tracing::info!(
        groups = groups.len(),
        "moved the Raft log from the storage engine to the log files"
    );
    Ok(groups.len())
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use zongheng_storage::wal::MemFiles;
    use zongheng_storage::MemEngine;

    use super::*;
    use crate::meta::MetaRaftConfig;
    use crate::raft::META_GROUP;

    fn store(files: &MemFiles) -> LogStore<MetaRaftConfig> {
        let wal = Arc::new(Wal::open(Arc::new(files.clone())).expect("open the log"));
        LogStore::new(GroupCommit::start(wal, Arc::new(MemEngine::new())), META_GROUP)
    }

    #[tokio::test]
    async fn a_restarted_leader_reads_its_vote_back_uncommitted() {
        let files = MemFiles::new();
        store(&files)
            .save_vote(&Vote::new_committed(7, 1))
            .await
            .expect("save vote");
        files.crash(0);
        let vote = store(&files).read_vote().await.expect("read vote").expect("a vote");
        assert_eq!(vote, Vote::new(7, 1), "same term and choice, not committed");
    }

    #[tokio::test]
    async fn the_committed_index_becomes_durable_with_the_next_synced_write() {
        let files = MemFiles::new();
        let committed = Some(LogId::new(CommittedLeaderId::new(3, 1), 10));
        store(&files).save_committed(committed).await.expect("save committed");
        files.crash(0);
        let mut reopened = store(&files);
        assert_eq!(reopened.read_committed().await.expect("read"), None, "not synced: lost");
        reopened.save_committed(committed).await.expect("save committed");
        reopened.save_vote(&Vote::new(4, 2)).await.expect("save vote (synced)");
        files.crash(0);
        assert_eq!(store(&files).read_committed().await.expect("read"), committed);
    }

    fn entry(index: u64) -> Entry<MetaRaftConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_log_kept_in_the_engine_by_an_earlier_version_moves_to_the_log_files() {
        let engine = MemEngine::new();
        let mut batch = WriteBatch::new();
        let vote = Vote::new(2, 1);
        let purged = LogId::new(CommittedLeaderId::new(2, 1), 3);
        batch.put(
            Key::RaftVote { group: META_GROUP }.encode(),
            codec::encode(&vote).unwrap(),
        );
        batch.put(
            Key::RaftPurged { group: META_GROUP }.encode(),
            codec::encode(&purged).unwrap(),
        );
        // Entries 2..=9, of which 2 and 3 a lost purge left behind.
        for index in 2..10 {
            batch.put(
                Key::RaftLog {
                    group: META_GROUP,
                    index,
                }
                .encode(),
                codec::encode(&entry(index)).unwrap(),
            );
        }
        batch.put(Key::SnapshotMeta { group: META_GROUP }.encode(), b"stays".to_vec());
        engine.write(batch, Durability::Sync).unwrap();

        let files = MemFiles::new();
        let wal = Wal::open(Arc::new(files.clone())).unwrap();
        assert_eq!(migrate_engine_log(&engine, &wal).unwrap(), 1);
        assert_eq!(migrate_engine_log(&engine, &wal).unwrap(), 0, "once only");
        drop(wal);
        files.crash(0);
        engine.crash();
        let mut store = store(&files);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(9));
        let entries = store.try_get_log_entries(4..10).await.unwrap();
        assert_eq!(
            entries.iter().map(|entry| entry.log_id.index).collect::<Vec<_>>(),
            (4..10).collect::<Vec<_>>()
        );
        let (start, end) = engine_log_range();
        assert!(engine.scan_keys(&start, Some(&end), 10).unwrap().is_empty());
        assert!(engine
            .get(&Key::SnapshotMeta { group: META_GROUP }.encode())
            .unwrap()
            .is_some());
    }
}
