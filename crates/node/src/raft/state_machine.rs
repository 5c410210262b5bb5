//! openraft's state machine, generic over what is applied.
//!
//! An [`Application`] is a deterministic function from committed commands to
//! responses, plus a way to serialize its whole state. [`StateMachineStore`]
//! wraps one with what openraft needs: the last applied log id and membership,
//! building, persisting, sending and installing snapshots. The `meta` store is
//! one application; the data store's partitions will be another, on the same
//! code.
//!
//! ## Durability
//! The application state lives in memory. What makes it durable is the log
//! (fsynced on append) plus the last snapshot, persisted in the engine with
//! `Durability::Sync` before openraft is told it exists (and so before the log
//! behind it can be purged). On restart the store loads the snapshot, and
//! openraft re-applies the committed log after it.
//!
//! An application may keep part of its state in the engine instead of memory
//! (the `meta` store's values). It writes that part with
//! `Durability::Buffered`, when it asks to ([`Application::flush_wanted`], after
//! applying) and whenever a snapshot is built: the snapshot's `Sync` write then
//! makes it durable, so a snapshot never depends on a value that a crash could
//! lose, and the log after the snapshot rewrites the rest.
//!
//! ## Determinism
//! `apply` must not read clocks, randomness or local configuration. A command
//! that cannot be applied is answered with an error response, the same on
//! every replica; an internal inconsistency panics and stops the node rather
//! than letting replicas diverge.

// openraft's trait methods return its `StorageError` by value; helpers
// returning the same type keep `?` working, so its size is not ours to change.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogId, RaftSnapshotBuilder, RaftTypeConfig, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use zongheng_storage::{Durability, Engine, Key, WriteBatch};

use super::codec;

/// Bytes per stored snapshot chunk (each is one engine value).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Engine keys looked at, and at most deleted in one batch, per step of the
/// sweep after a snapshot install.
pub const SWEEP_PAGE_KEYS: usize = 4_096;

/// A deterministic replicated application.
pub trait Application: Default + Send + Sync + 'static {
    type Config: RaftTypeConfig;

    /// Apply one committed command at `log_id`.
    fn apply(
        &mut self,
        log_id: &LogId<<Self::Config as RaftTypeConfig>::NodeId>,
        command: &<Self::Config as RaftTypeConfig>::D,
    ) -> <Self::Config as RaftTypeConfig>::R;

    /// The response to a log entry that carries no command (blank or
    /// membership entries).
    fn empty_response() -> <Self::Config as RaftTypeConfig>::R;

    /// Serialize the whole state.
    fn to_snapshot(&self) -> Result<Vec<u8>, codec::CodecError>;

    /// Rebuild from [`Application::to_snapshot`] bytes.
    fn from_snapshot(bytes: &[u8]) -> Result<Self, codec::CodecError>;

    /// Run on this node's `engine` from now on (called after open, restore
    /// and install). The application may move state there.
    fn attach(&mut self, _engine: Arc<dyn Engine>, _group: u64) {}

    /// Where this application keeps state in the engine (see `attach`), as
    /// engine keys `[start, end)`, if it does. After a snapshot install, the
    /// keys there that the installed state does not reference
    /// ([`Application::references`]) are left from the state it replaced and
    /// are deleted.
    fn engine_state_range(&self, _group: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }

    /// Whether the engine key `key`, in [`Application::engine_state_range`],
    /// holds part of this state.
    fn references(&self, _key: &[u8]) -> bool {
        true
    }

    /// Whether enough state waits in memory that it should be written now.
    fn flush_wanted(&self) -> bool {
        false
    }

    /// The engine writes of everything waiting; `None` if nothing waits.
    fn flush(&mut self) -> Option<StateFlush> {
        None
    }

    /// The batches of a [`StateFlush`] were written (`written`) or failed.
    fn flushed(&mut self, _token: FlushToken, _written: bool) {}

    /// The bytes a follower installs for the stored snapshot `stored`: the
    /// stored bytes plus whatever of the state lives in this node's engine.
    fn for_transfer(stored: Vec<u8>, _engine: Arc<dyn Engine>, _group: u64) -> Result<Vec<u8>, std::io::Error> {
        Ok(stored)
    }
}

/// What [`Application::flush`] hands back to [`Application::flushed`].
pub type FlushToken = Box<dyn std::any::Any + Send + Sync>;

/// Engine writes an application kept in memory, to write `Durability::Buffered`.
pub struct StateFlush {
    pub batches: Vec<WriteBatch>,
    pub token: FlushToken,
}

type NodeIdOf<A> = <<A as Application>::Config as RaftTypeConfig>::NodeId;
type NodeOf<A> = <<A as Application>::Config as RaftTypeConfig>::Node;

/// The application plus what openraft must know about it. Readers share it
/// through [`StateMachineStore::shared`].
pub struct Applied<A: Application> {
    pub app: A,
    pub last_applied: Option<LogId<NodeIdOf<A>>>,
    pub last_membership: StoredMembership<NodeIdOf<A>, NodeOf<A>>,
}

impl<A: Application> Default for Applied<A> {
    fn default() -> Self {
        Self {
            app: A::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
        }
    }
}

pub type Shared<A> = Arc<RwLock<Applied<A>>>;

/// A stored snapshot: its metadata and its bytes.
type StoredSnapshot<A> = (SnapshotMeta<NodeIdOf<A>, NodeOf<A>>, Vec<u8>);

/// What a stored snapshot's bytes decode to (besides the application).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotEnvelope<A: Application> {
    meta: SnapshotMeta<NodeIdOf<A>, NodeOf<A>>,
    chunks: u32,
    total_bytes: u64,
}

pub struct StateMachineStore<A: Application> {
    shared: Shared<A>,
    engine: Arc<dyn Engine>,
    group: u64,
    /// A flush asked for by the application runs in the background; at most
    /// one at a time.
    flushing: Arc<std::sync::atomic::AtomicBool>,
}

impl<A: Application> StateMachineStore<A>
where
    A::Config: RaftTypeConfig<Entry = Entry<A::Config>, SnapshotData = Cursor<Vec<u8>>>,
{
    /// Open the state machine of `group`, restoring the last persisted
    /// snapshot if there is one.
    pub fn open(engine: Arc<dyn Engine>, group: u64) -> Result<Self, StorageError<NodeIdOf<A>>> {
        let store = Self {
            shared: Arc::new(RwLock::new(Applied::default())),
            engine,
            group,
            flushing: Arc::default(),
        };
        if let Some((meta, data)) = store.read_snapshot()? {
            let app = A::from_snapshot(&data)
                .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
            let mut applied = store.shared.write().expect("state machine lock poisoned");
            applied.app = app;
            applied.last_applied = meta.last_log_id.clone();
            applied.last_membership = meta.last_membership.clone();
        }
        store
            .shared
            .write()
            .expect("state machine lock poisoned")
            .app
            .attach(store.engine.clone(), group);
        Ok(store)
    }

    pub fn shared(&self) -> Shared<A> {
        self.shared.clone()
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot<A>>, StorageError<NodeIdOf<A>>> {
        let read_error = |error: &dyn std::error::Error| {
            StorageError::from(StorageIOError::read_snapshot(
                None,
                &std::io::Error::other(error.to_string()),
            ))
        };
        let Some(bytes) = self
            .engine
            .get(&Key::SnapshotMeta { group: self.group }.encode())
            .map_err(|e| read_error(&e))?
        else {
            return Ok(None);
        };
        let envelope: SnapshotEnvelope<A> = codec::decode(&bytes).map_err(|e| read_error(&e))?;
        let mut data = Vec::with_capacity(envelope.total_bytes as usize);
        for chunk in 0..envelope.chunks {
            let key = Key::SnapshotChunk {
                group: self.group,
                chunk,
            }
            .encode();
            let part = self.engine.get(&key).map_err(|e| read_error(&e))?.ok_or_else(|| {
                read_error(&std::io::Error::other(format!(
                    "snapshot chunk {chunk} of group {} is missing",
                    self.group
                )))
            })?;
            data.extend_from_slice(&part);
        }
        if data.len() as u64 != envelope.total_bytes {
            return Err(read_error(&std::io::Error::other(
                "snapshot length does not match its envelope",
            )));
        }
        Ok(Some((envelope.meta, data)))
    }

    /// Persist a snapshot, fsynced, replacing the previous one atomically.
    fn write_snapshot(
        engine: &dyn Engine,
        group: u64,
        meta: &SnapshotMeta<NodeIdOf<A>, NodeOf<A>>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeIdOf<A>>> {
        let write_error = |error: &dyn std::error::Error| {
            StorageError::from(StorageIOError::write_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(error.to_string()),
            ))
        };
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![]
        } else {
            data.chunks(SNAPSHOT_CHUNK_BYTES).collect()
        };
        let envelope = SnapshotEnvelope::<A> {
            meta: meta.clone(),
            chunks: chunks.len() as u32,
            total_bytes: data.len() as u64,
        };
        let mut batch = WriteBatch::new();
        let (start, end) = Key::snapshot_chunk_range(group);
        batch.delete_range(start..end);
        for (index, chunk) in chunks.iter().enumerate() {
            batch.put(
                Key::SnapshotChunk {
                    group,
                    chunk: index as u32,
                }
                .encode(),
                chunk.to_vec(),
            );
        }
        batch.put(
            Key::SnapshotMeta { group }.encode(),
            codec::encode(&envelope).map_err(|e| write_error(&e))?,
        );
        engine.write(batch, Durability::Sync).map_err(|e| write_error(&e))
    }
}

/// Delete, `Durability::Buffered`, every engine key in the application's
/// state range that it does not reference; returns how many. Run after a
/// snapshot install, while no entry is applied (the state machine worker is
/// busy with the install), so the state checked is the installed one.
pub fn sweep_unreferenced<A: Application>(
    shared: &Shared<A>,
    engine: &dyn Engine,
    group: u64,
) -> Result<usize, zongheng_storage::StorageError> {
    let range = shared
        .read()
        .expect("state machine lock poisoned")
        .app
        .engine_state_range(group);
    let Some((mut start, end)) = range else {
        return Ok(0);
    };
    let mut swept = 0;
    loop {
        let keys = engine.scan_keys(&start, Some(&end), SWEEP_PAGE_KEYS)?;
        let Some(last) = keys.last() else { break };
        start = [last.as_slice(), &[0]].concat();
        let mut batch = WriteBatch::new();
        {
            let applied = shared.read().expect("state machine lock poisoned");
            for key in &keys {
                if !applied.app.references(key) {
                    batch.delete(key.clone());
                }
            }
        }
        swept += batch.len();
        if !batch.is_empty() {
            engine.write(batch, Durability::Buffered)?;
        }
        if keys.len() < SWEEP_PAGE_KEYS {
            break;
        }
    }
    Ok(swept)
}

/// Write what the application flushed, `Durability::Buffered`, and tell it
/// how that went.
fn write_flush<A: Application>(
    shared: &Shared<A>,
    engine: &dyn Engine,
    flush: Option<StateFlush>,
) -> Result<(), StorageError<NodeIdOf<A>>> {
    let Some(StateFlush { batches, token }) = flush else {
        return Ok(());
    };
    let result = write_buffered::<A>(engine, batches);
    shared
        .write()
        .expect("state machine lock poisoned")
        .app
        .flushed(token, result.is_ok());
    result
}

fn write_buffered<A: Application>(
    engine: &dyn Engine,
    batches: Vec<WriteBatch>,
) -> Result<(), StorageError<NodeIdOf<A>>> {
    for batch in batches {
        engine
            .write(batch, Durability::Buffered)
            .map_err(|error| StorageIOError::write_state_machine(&error))?;
    }
    Ok(())
}

/// Give memory freed by a snapshot's copies back to the operating system.
/// A snapshot encodes the whole state and copies it into chunks; glibc's
/// allocator keeps such large freed blocks in its arenas, so without this a
/// node's resident memory stays at its peak snapshot size after the copies
/// are gone.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it
    // touches no live allocation and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Builds a snapshot of the current state.
pub struct SnapshotBuilder<A: Application> {
    shared: Shared<A>,
    engine: Arc<dyn Engine>,
    group: u64,
}

impl<A: Application> RaftSnapshotBuilder<A::Config> for SnapshotBuilder<A>
where
    A::Config: RaftTypeConfig<Entry = Entry<A::Config>, SnapshotData = Cursor<Vec<u8>>>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<A::Config>, StorageError<NodeIdOf<A>>> {
        let started = std::time::Instant::now();
        let (data, last_applied, last_membership) = super::off_runtime(|| {
            let applied = self.shared.read().expect("state machine lock poisoned");
            let data = applied
                .app
                .to_snapshot()
                .map_err(|error| StorageIOError::read_state_machine(&error))?;
            Ok::<_, StorageError<NodeIdOf<A>>>((data, applied.last_applied.clone(), applied.last_membership.clone()))
        })?;
        let encoded = started.elapsed();
        // Whatever the state keeps for the engine goes out before the
        // snapshot's synced write, which makes it durable. Taken after the
        // encoding, so it covers everything the snapshot refers to.
        let flush = self.shared.write().expect("state machine lock poisoned").app.flush();
        super::off_runtime(|| write_flush(&self.shared, &*self.engine, flush))?;
        let snapshot_id = match &last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        super::off_runtime(|| StateMachineStore::<A>::write_snapshot(&*self.engine, self.group, &meta, &data))?;
        release_freed_memory();
        tracing::info!(
            group = self.group,
            snapshot = meta.snapshot_id,
            bytes = data.len(),
            encode_ms = encoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<A: Application> RaftStateMachine<A::Config> for StateMachineStore<A>
where
    A::Config: RaftTypeConfig<Entry = Entry<A::Config>, SnapshotData = Cursor<Vec<u8>>>,
{
    type SnapshotBuilder = SnapshotBuilder<A>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeIdOf<A>>>, StoredMembership<NodeIdOf<A>, NodeOf<A>>), StorageError<NodeIdOf<A>>> {
        let applied = self.shared.read().expect("state machine lock poisoned");
        Ok((applied.last_applied.clone(), applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<<A::Config as RaftTypeConfig>::R>, StorageError<NodeIdOf<A>>>
    where
        I: IntoIterator<Item = <A::Config as RaftTypeConfig>::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.shared.write().expect("state machine lock poisoned");
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.get_log_id().clone();
            if let Some(last) = &applied.last_applied {
                assert!(
                    log_id.index > last.index,
                    "applying {log_id} after {last}: the log went backwards"
                );
            }
            applied.last_applied = Some(log_id.clone());
            let response = match &entry.payload {
                EntryPayload::Blank => A::empty_response(),
                EntryPayload::Normal(command) => applied.app.apply(&log_id, command),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(log_id.clone()), membership.clone());
                    A::empty_response()
                }
            };
            responses.push(response);
        }
        // Written in the background: the engine write waits for the
        // engine's writer (often busy with a log fsync), and applying must not.
        // Until written, the values stay readable from memory; an error leaves
        // them for the next flush, and the snapshot's own flush reports it.
        if applied.app.flush_wanted() && !self.flushing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let flush = applied.app.flush();
            drop(applied);
            let (shared, engine, flushing, group) = (
                self.shared.clone(),
                self.engine.clone(),
                self.flushing.clone(),
                self.group,
            );
            tokio::spawn(async move {
                if let Err(error) = super::off_runtime(|| write_flush(&shared, &*engine, flush)) {
                    tracing::warn!(group, %error, "cannot write state to the engine; will retry");
                }
                flushing.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            engine: self.engine.clone(),
            group: self.group,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeIdOf<A>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeIdOf<A>, NodeOf<A>>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeIdOf<A>>> {
        let data = snapshot.into_inner();
        let bytes = data.len();
        let mut app =
            A::from_snapshot(&data).map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        drop(data);
        // The received state holds everything in memory; on this node part
        // of it may live in the engine. Stored the same way a local snapshot
        // is: the engine's part first, then the snapshot, synced.
        app.attach(self.engine.clone(), self.group);
        let stored = app
            .to_snapshot()
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        if let Some(StateFlush { batches, token }) = app.flush() {
            let written = write_buffered::<A>(&*self.engine, batches);
            app.flushed(token, written.is_ok());
            written?;
        }
        // Durable first: once installed, openraft may purge the log behind it.
        Self::write_snapshot(&*self.engine, self.group, meta, &stored)?;
        drop(stored);
        let mut applied = self.shared.write().expect("state machine lock poisoned");
        applied.app = app;
        applied.last_applied = meta.last_log_id.clone();
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
        release_freed_memory();
        // What the replaced state kept in the engine and the installed one no
        // longer lists would stay there for good. Losing this sweep to a
        // crash or an error only leaves that garbage; it never touches
        // what the installed state (now durable) lists.
        let swept = super::off_runtime(|| sweep_unreferenced(&self.shared, &*self.engine, self.group));
        let swept = swept.unwrap_or_else(|error| {
            tracing::warn!(group = self.group, %error, "cannot sweep values the installed snapshot dropped");
            0
        });
        tracing::info!(
            group = self.group,
            snapshot = meta.snapshot_id,
            bytes,
            swept,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<A::Config>>, StorageError<NodeIdOf<A>>> {
        let Some((meta, stored)) = self.read_snapshot()? else {
            return Ok(None);
        };
        // Reads every old value back from the engine: off the runtime's workers.
        let data = super::off_runtime(|| A::for_transfer(stored, self.engine.clone(), self.group))
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
