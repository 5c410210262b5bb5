//! Group commit: the synced writes of every Raft group on a node (the
//! `meta` group and each partition replica) share fsyncs.
//!
//! Two kinds of work reach the flusher, one task per node:
//!
//! - a **synced write** ([`GroupCommit::write_synced`]: a vote, a
//!   truncation): the writer hands its batch over and waits;
//! - a **flush** ([`GroupCommit::after_flush`]: a log append): the log store
//!   has already written its entries to the engine without an fsync (visible
//!   at once to readers, such as openraft's replication to followers) and
//!   asks to be told once they are durable; it does not wait.
//!
//! The flusher takes everything waiting at that moment, in arrival order,
//! applies the synced writes' batches as one engine batch with
//! [`Durability::Sync`] (one fsync, which also makes every earlier buffered
//! write durable), and then answers everyone. While that fsync runs, new work
//! queues up and goes together in the next one, so a node with many busy
//! partitions pays one fsync per round rather than one per group (TiKV's
//! raftstore batches its groups' appends into one RocksDB write the same
//! way). An append does not wait for its fsync, so that the entries could go
//! to the followers while the leader's own fsync runs (Raft thesis 10.2.1, as
//! etcd does); openraft 0.9 does not use that yet: its core awaits the flush
//! callback before it wakes the replication tasks (`RaftCore::append_to_log`),
//! so a write's two fsyncs still follow each other
//! (`bench/results/2026-12-06-ade70ba-put-seq-latency-breakdown.md`).
//!
//! What a writer is told is exactly what a direct synced write would tell
//! it: `Ok` only once its batch (or, for a flush, everything it wrote
//! before asking) is on stable storage. Work is answered in the order it
//! arrived, so one group's appends are acknowledged in order; batches of
//! different groups touch different keys. The engine loses only a suffix of
//! buffered writes in a crash, never a middle, so a later buffered write
//! (the committed index) can never become durable without the entries
//! written before it. A batch over an engine limit is refused before it is
//! queued, so it cannot fail the others' round.
//!
//! The fsync blocks the flusher's thread: on a multi-threaded runtime the
//! flusher first moves the runtime's other work off it
//! (`tokio::task::block_in_place`); on the current-thread runtime of a
//! simulated host it writes in place (the in-memory engine does not block),
//! which keeps a simulation deterministic.
//!
//! Limits: [`ROUND_BATCHES_MAX`] writes and [`ROUND_BYTES_MAX`] bytes per
//! round (and the engine's own per-batch limits); [`QUEUE_MAX`] writes
//! waiting, beyond which writers wait for room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use zongheng_storage::{Durability, Engine, StorageError, WriteBatch, BATCH_OPS_MAX, BATCH_SIZE_BYTES_MAX};

/// Most writes merged into one fsync.
pub const ROUND_BATCHES_MAX: usize = 1_024;
/// Most bytes (keys and values) merged into one fsync.
pub const ROUND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most writes waiting for the flusher.
pub const QUEUE_MAX: usize = 8_192;

/// Told the round's outcome: `Err` carries the engine's error as text (one
/// error, many waiters).
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Pending {
    /// Empty for a flush.
    batch: WriteBatch,
    bytes: usize,
    done: Done,
}

/// The node's shared synced-write path (see the module doc).
pub struct GroupCommit {
    engine: Arc<dyn Engine>,
    queue: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
}

/// What the flusher has done, for the node's statistics and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Synced writes and flushes asked for.
    pub writes: AtomicU64,
    /// fsyncs (engine writes with `Durability::Sync`) that carried them.
    pub syncs: AtomicU64,
}

impl GroupCommit {
    /// Start the flusher for `engine` on the current runtime; it stops when
    /// the last handle is dropped.
    pub fn start(engine: Arc<dyn Engine>) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        let counters = Arc::new(Counters::default());
        tokio::spawn(flush(engine.clone(), receiver, counters.clone()));
        Arc::new(Self {
            engine,
            queue,
            counters,
        })
    }

    /// The engine the flusher writes to (reads go to it directly).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Write `batch` durably, sharing the fsync with whatever else is
    /// waiting; returns once it is on stable storage.
    pub async fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        batch.validate()?;
        let bytes = batch_bytes(&batch);
        let (done, finished) = oneshot::channel();
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let done: Done = Box::new(move |result| {
            let _ = done.send(result);
        });
        self.queue
            .send(Pending { batch, bytes, done })
            .await
            .map_err(|_| flusher_gone())?;
        finished
            .await
            .map_err(|_| flusher_gone())?
            .map_err(|message| StorageError::Io {
                context: "writing a group commit",
                source: std::io::Error::other(message),
            })
    }

    /// Call `done` once every write made to the engine before this call is
    /// durable (after the next round's fsync). Does not wait for it.
    pub async fn after_flush(
        &self,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StorageError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.queue
            .send(Pending {
                batch: WriteBatch::new(),
                bytes: 0,
                done: Box::new(done),
            })
            .await
            .map_err(|_| flusher_gone())
    }
}

fn flusher_gone() -> StorageError {
    StorageError::Io {
        context: "queueing a group commit",
        source: std::io::Error::other("the group-commit flusher stopped"),
    }
}

fn batch_bytes(batch: &WriteBatch) -> usize {
    batch
        .ops()
        .iter()
        .map(|op| match op {
            zongheng_storage::Op::Put { key, value } => key.len() + value.len(),
            zongheng_storage::Op::Delete { key } => key.len(),
            zongheng_storage::Op::DeleteRange { start, end } => start.len() + end.len(),
        })
        .sum()
}

/// The flusher: one merged synced write per round (see the module doc).
async fn flush(engine: Arc<dyn Engine>, mut receiver: mpsc::Receiver<Pending>, counters: Arc<Counters>) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match receiver.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut round = vec![first];
        let mut ops = round[0].batch.len();
        let mut bytes = round[0].bytes;
        while round.len() < ROUND_BATCHES_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            let fits = ops + next.batch.len() <= BATCH_OPS_MAX
                && bytes + next.bytes <= ROUND_BYTES_MAX.min(BATCH_SIZE_BYTES_MAX);
            if !fits {
                carried = Some(next);
                break;
            }
            ops += next.batch.len();
            bytes += next.bytes;
            round.push(next);
        }
        let mut merged = WriteBatch::new();
        let mut waiters = Vec::with_capacity(round.len());
        for pending in round {
            merged.extend(pending.batch);
            waiters.push(pending.done);
        }
        let result = write_blocking(&*engine, merged).map_err(|error| error.to_string());
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        for waiter in waiters {
            waiter(result.clone());
        }
    }
}

/// One synced engine write, off the async scheduler where there is one.
fn write_blocking(engine: &dyn Engine, batch: WriteBatch) -> Result<(), StorageError> {
    super::off_runtime(|| engine.write(batch, Durability::Sync))
}

#[cfg(test)]
mod tests {
    use zongheng_storage::MemEngine;

    use super::*;

    fn put(key: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes().to_vec(), b"v".to_vec());
        batch
    }

    #[tokio::test]
    async fn concurrent_writes_share_fsyncs_and_are_durable_when_answered() {
        let engine = Arc::new(MemEngine::new());
        let commit = GroupCommit::start(engine.clone());
        let writers: Vec<_> = (0..64)
            .map(|index| {
                let commit = commit.clone();
                tokio::spawn(async move { commit.write_synced(put(&format!("k{index:02}"))).await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        // Every answered write survives a crash.
        engine.crash();
        for index in 0..64 {
            assert!(engine.get(format!("k{index:02}").as_bytes()).unwrap().is_some());
        }
        let writes = commit.counters().writes.load(Ordering::Relaxed);
        let syncs = commit.counters().syncs.load(Ordering::Relaxed);
        assert_eq!(writes, 64);
        assert!(syncs < writes, "{syncs} fsyncs for {writes} writes: nothing was shared");
    }

    #[tokio::test]
    async fn a_flush_is_answered_once_earlier_buffered_writes_are_durable() {
        let engine = Arc::new(MemEngine::new());
        let commit = GroupCommit::start(engine.clone());
        engine.write(put("buffered"), Durability::Buffered).unwrap();
        let (told, answer) = oneshot::channel();
        commit
            .after_flush(move |result| {
                let _ = told.send(result);
            })
            .await
            .unwrap();
        answer.await.unwrap().unwrap();
        engine.crash();
        assert!(engine.get(b"buffered").unwrap().is_some(), "flushed before the answer");
    }

    #[tokio::test]
    async fn a_batch_over_a_limit_is_refused_alone() {
        let engine = Arc::new(MemEngine::new());
        let commit = GroupCommit::start(engine.clone());
        let mut oversized = WriteBatch::new();
        oversized.put(vec![b'k'; zongheng_storage::KEY_SIZE_BYTES_MAX + 1], b"v".to_vec());
        let (refused, accepted) = tokio::join!(commit.write_synced(oversized), commit.write_synced(put("fine")));
        assert!(refused.is_err());
        accepted.unwrap();
        assert!(engine.get(b"fine").unwrap().is_some());
    }
}
