//! Group commit: the log writes of every Raft group on a node (the `meta`
//! group and each partition replica) share fsyncs of the node's log
//! ([`Wal`]).
//!
//! A log store writes its records to the log at once, without an fsync
//! (visible to readers at once, such as openraft's replication to
//! followers), and then either asks to be told once they are durable
//! ([`GroupCommit::after_flush`], an append: it does not wait) or waits for it
//! ([`GroupCommit::sync`], a vote, a truncation). The flusher, one task per
//! node, takes everything waiting at that moment, makes the log durable with
//! one fsync, and then answers everyone in arrival order. While that fsync
//! runs, new work queues up and goes together in the next one, so a node with
//! many busy partitions pays one fsync per round rather than one per group
//! (TiKV's raftstore batches its groups' appends into one write the same
//! way).
//!
//! An append does not wait for its fsync, so that the entries could go to
//! the followers while the leader's own fsync runs (Raft thesis 10.2.1, as
//! etcd does); openraft 0.9 does not use that yet: its core awaits the flush
//! callback before it wakes the replication tasks (`RaftCore::append_to_log`),
//! so a write's two fsyncs still follow each other
//! (`bench/results/2026-12-06-ade70ba-put-seq-latency-breakdown.md`).
//!
//! What a waiter is told is exactly what an fsync of its own would tell it:
//! `Ok` only once everything it wrote before asking is on stable storage.
//!
//! ## The engine's own commits
//! The state machines write to the storage engine `Buffered` (their state is
//! durable through the log and snapshots, see `state_machine`), and redb
//! frees the pages a buffered commit replaces only at its next durable commit.
//! So that the engine file does not grow between snapshots, every
//! [`ENGINE_SYNC_ROUNDS`] rounds the flusher also asks a second task to make
//! the engine durable (an empty `Sync` write), off the log's path: etcd
//! commits its backend on a timer for the same reason.
//!
//! The fsyncs block their thread: on a multi-threaded runtime the tasks
//! first move the runtime's other work off it (`tokio::task::block_in_place`);
//! on the current-thread runtime of a simulated host they run in place (the
//! in-memory files do not block), which keeps a simulation deterministic.
//!
//! Limits: [`ROUND_WAITERS_MAX`] waiters answered per round; [`QUEUE_MAX`]
//! waiting, beyond which writers wait for room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use zongheng_storage::wal::Wal;
use zongheng_storage::{Durability, Engine, StorageError, WriteBatch};

/// Most waiters answered after one fsync.
pub const ROUND_WAITERS_MAX: usize = 1_024;
/// Most waiters queued for the flusher.
pub const QUEUE_MAX: usize = 8_192;
/// Log fsync rounds per durable commit of the storage engine.
pub const ENGINE_SYNC_ROUNDS: u64 = 64;

/// Told the round's outcome: `Err` carries the log's error as text (one
/// error, many waiters).
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The node's shared log-sync path (see the module doc).
pub struct GroupCommit {
    wal: Arc<Wal>,
    engine: Arc<dyn Engine>,
    queue: mpsc::Sender<Done>,
    counters: Arc<Counters>,
}

/// What the flusher has done, for the node's statistics and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Syncs and flushes asked for.
    pub writes: AtomicU64,
    /// Log fsyncs that carried them.
    pub syncs: AtomicU64,
    /// Durable commits of the storage engine.
    pub engine_syncs: AtomicU64,
}

impl GroupCommit {
    /// Start the flusher for `wal` (and the engine's committer for `engine`)
    /// on the current runtime; both stop when the last handle is dropped.
    pub fn start(wal: Arc<Wal>, engine: Arc<dyn Engine>) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        let counters = Arc::new(Counters::default());
        // One request may wait: asks while a commit runs merge into it.
        let (engine_wanted, engine_requests) = mpsc::channel(1);
        tokio::spawn(flush(wal.clone(), receiver, counters.clone(), engine_wanted));
        tokio::spawn(commit_engine(engine.clone(), engine_requests, counters.clone()));
        Arc::new(Self {
            wal,
            engine,
            queue,
            counters,
        })
    }

    /// The node's log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// The engine the state machines write to.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Return once everything written to the log before this call is durable,
    /// sharing the fsync with whatever else is waiting.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let (done, finished) = oneshot::channel();
        self.after_flush(move |result| {
            let _ = done.send(result);
        })
        .await?;
        finished
            .await
            .map_err(|_| flusher_gone())?
            .map_err(|message| StorageError::Io {
                context: "syncing the log",
                source: std::io::Error::other(message),
            })
    }

    /// Call `done` once everything written to the log before this call is
    /// durable (after the next round's fsync). Does not wait for it.
    pub async fn after_flush(
        &self,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StorageError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.queue.send(Box::new(done)).await.map_err(|_| flusher_gone())
    }
}

fn flusher_gone() -> StorageError {
    StorageError::Io {
        context: "queueing a log sync",
        source: std::io::Error::other("the group-commit flusher stopped"),
    }
}

/// The flusher: one log fsync per round (see the module doc).
async fn flush(
    wal: Arc<Wal>,
    mut receiver: mpsc::Receiver<Done>,
    counters: Arc<Counters>,
    engine_wanted: mpsc::Sender<()>,
) {
    let mut rounds = 0u64;
    loop {
        let Some(first) = receiver.recv().await else { return };
        let mut waiters = vec![first];
        while waiters.len() < ROUND_WAITERS_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            waiters.push(next);
        }
        let result = super::off_runtime(|| wal.sync()).map_err(|error| error.to_string());
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        for waiter in waiters {
            waiter(result.clone());
        }
        rounds += 1;
        if rounds.is_multiple_of(ENGINE_SYNC_ROUNDS) {
            let _ = engine_wanted.try_send(());
        }
    }
}

/// The engine's committer: a durable engine commit whenever the flusher
/// asks (see the module doc). Stops with the flusher.
async fn commit_engine(engine: Arc<dyn Engine>, mut wanted: mpsc::Receiver<()>, counters: Arc<Counters>) {
    while wanted.recv().await.is_some() {
        match super::off_runtime(|| engine.write(WriteBatch::new(), Durability::Sync)) {
            Ok(()) => {
                counters.engine_syncs.fetch_add(1, Ordering::Relaxed);
            }
            // Nothing depends on this commit for durability: it only lets
            // the engine reuse pages. Say so and try again next time.
            Err(error) => tracing::warn!(%error, "a periodic durable commit of the storage engine failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use zongheng_storage::wal::MemFiles;
    use zongheng_storage::MemEngine;

    use super::*;

    fn start() -> (MemFiles, Arc<GroupCommit>) {
        let files = MemFiles::new();
        let wal = Arc::new(Wal::open(Arc::new(files.clone())).unwrap());
        (files, GroupCommit::start(wal, Arc::new(MemEngine::new())))
    }

    #[tokio::test]
    async fn concurrent_syncs_share_fsyncs_and_are_durable_when_answered() {
        let (files, commit) = start();
        let writers: Vec<_> = (0..64u64)
            .map(|group| {
                let commit = commit.clone();
                tokio::spawn(async move {
                    commit.wal().append(group, 1, &[b"entry"]).unwrap();
                    commit.sync().await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        // Every answered write survives a crash.
        files.crash(0);
        let wal = Wal::open(Arc::new(files)).unwrap();
        for group in 0..64 {
            assert_eq!(wal.bounds(group), Some((1, 2)));
        }
        let writes = commit.counters().writes.load(Ordering::Relaxed);
        let syncs = commit.counters().syncs.load(Ordering::Relaxed);
        assert_eq!(writes, 64);
        assert!(syncs < writes, "{syncs} fsyncs for {writes} writes: nothing was shared");
    }

    #[tokio::test]
    async fn a_flush_is_answered_once_earlier_writes_are_durable() {
        let (files, commit) = start();
        commit.wal().append(9, 1, &[b"buffered"]).unwrap();
        let (told, answer) = oneshot::channel();
        commit
            .after_flush(move |result| {
                let _ = told.send(result);
            })
            .await
            .unwrap();
        answer.await.unwrap().unwrap();
        files.crash(0);
        let wal = Wal::open(Arc::new(files)).unwrap();
        assert_eq!(wal.entries(9, 1, 2).unwrap(), vec![b"buffered".to_vec()]);
    }

    #[tokio::test]
    async fn the_engine_is_made_durable_every_so_many_rounds() {
        let engine = Arc::new(MemEngine::new());
        let wal = Arc::new(Wal::open(Arc::new(MemFiles::new())).unwrap());
        let commit = GroupCommit::start(wal, engine.clone());
        let mut batch = WriteBatch::new();
        batch.put(b"state".to_vec(), b"v".to_vec());
        engine.write(batch, Durability::Buffered).unwrap();
        for _ in 0..ENGINE_SYNC_ROUNDS {
            commit.sync().await.unwrap();
        }
        for _ in 0..100 {
            if commit.counters().engine_syncs.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        engine.crash();
        assert!(engine.get(b"state").unwrap().is_some());
    }
}
