//! The values of the meta store, kept in the engine instead of memory.
//!
//! etcd keeps its key index in memory and every version's value on disk, and
//! so does the [`Mvcc`](super::mvcc::Mvcc) once a node's engine is attached:
//! each put's value goes first into `pending`, then into the engine under
//! `Key::StateMachine { group, key: b'h' ++ revision ++ user key }`. What stays
//! in memory per version is its metadata (revisions, version, lease), not its
//! value. A value is named by the revision that wrote it and its key, and
//! never changes; a later version of the key only makes it old. Reads of
//! current values (a range, a compare on a value, `prev_kv`) find it in
//! `pending` or in the engine, whose page cache keeps the often-read ones in
//! memory.
//!
//! ## Durability without an fsync per write
//! The Raft log already holds every applied write, so history values are
//! written with `Durability::Buffered` and made durable by the next snapshot,
//! whose `Sync` write makes every earlier buffered batch durable (see
//! `raft::state_machine`). After a crash, re-applying the log after the
//! snapshot writes the same values again: a value is named by its revision
//! and key, and that pair has one value on every replica, so writing it twice
//! is harmless.
//!
//! ## Compaction
//! A compacted version's value is removed from `pending`, or queued as an
//! engine delete that goes out with the next flush. Until then the engine holds
//! more than the index needs, never less. A read that finds no value for a
//! version the index still lists (possible only between a restart from an older
//! snapshot and the re-application of a compaction already flushed) answers
//! `Compacted`, which is what the cluster has decided for that revision.
//!
//! ## Limits
//! `pending` holds [`HISTORY_PENDING_VALUES_MAX`] values or
//! [`HISTORY_PENDING_BYTES_MAX`] bytes before the state machine flushes it in
//! the background (it grows while that flush runs, by what is applied
//! meanwhile), and
//! a flush writes it in engine batches of at most [`HISTORY_FLUSH_OPS_MAX`] puts
//! and deletes and [`HISTORY_FLUSH_BYTES_MAX`] bytes (below the engine's batch
//! limits).
//! Keys longer than [`HISTORY_KEY_BYTES_MAX`] keep their values in memory (the
//! engine's key limit is smaller than etcd's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use zongheng_storage::{Engine, Key, StorageError, WriteBatch, GET_MANY_KEYS_MAX, KEY_SIZE_BYTES_MAX};

/// Values waiting in memory before a flush forces one.
pub const HISTORY_PENDING_VALUES_MAX: usize = 1_024;
/// Bytes of values waiting in memory before a flush forces one.
pub const HISTORY_PENDING_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Puts and deletes in one engine batch of a flush.
pub const HISTORY_FLUSH_OPS_MAX: usize = 16_384;
/// Value bytes in one engine batch of a flush (the engine allows 128 MiB).
pub const HISTORY_FLUSH_BYTES_MAX: usize = 32 * 1024 * 1024;
/// The longest user key whose values move to the engine: the engine key adds
/// a tag, the group, a marker and the revision.
pub const HISTORY_KEY_BYTES_MAX: usize = KEY_SIZE_BYTES_MAX - 32;

/// Marks a history value among the group's `StateMachine` keys.
const HISTORY_MARKER: u8 = b'h';

/// The engine key of the value `key` had at `revision`.
pub fn engine_key(group: u64, revision: i64, key: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(1 + 8 + key.len());
    inner.push(HISTORY_MARKER);
    inner.extend_from_slice(&(revision as u64).to_be_bytes());
    inner.extend_from_slice(key);
    Key::StateMachine { group, key: inner }.encode()
}

/// The revision and user key of a value's engine key ([`engine_key`]);
/// `None` for any other key.
pub fn parse_engine_key(engine_key: &[u8]) -> Option<(i64, Vec<u8>)> {
    let Ok(Key::StateMachine { key: inner, .. }) = Key::decode(engine_key) else {
        return None;
    };
    let (&marker, rest) = inner.split_first()?;
    if marker != HISTORY_MARKER || rest.len() < 8 {
        return None;
    }
    let (revision, key) = rest.split_at(8);
    let revision = u64::from_be_bytes(revision.try_into().ok()?);
    Some((i64::try_from(revision).ok()?, key.to_vec()))
}

/// What one flush took, so that [`HistoryValues::flushed`] forgets exactly that.
#[derive(Debug, Default)]
pub struct FlushMark {
    puts: Vec<(i64, Vec<u8>)>,
    deletes: Vec<(i64, Vec<u8>)>,
}

impl FlushMark {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// The node's engine and the values on their way to it.
#[derive(Clone, Default)]
pub struct HistoryValues {
    engine: Option<(Arc<dyn Engine>, u64)>,
    /// (revision, key) -> value, not yet in the engine.
    pending: BTreeMap<(i64, Vec<u8>), Vec<u8>>,
    pending_bytes: usize,
    /// (revision, key) whose value compaction dropped, to delete from the engine.
    deletes: BTreeSet<(i64, Vec<u8>)>,
    /// Flushes that took values from `pending` and have not reported back: a
    /// value compacted meanwhile may reach the engine, so it is deleted too.
    flushes_in_flight: u32,
}

impl std::fmt::Debug for HistoryValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryValues")
            .field("attached", &self.engine.is_some())
            .field("pending", &self.pending.len())
            .field("pending_bytes", &self.pending_bytes)
            .field("deletes", &self.deletes.len())
            .finish()
    }
}

/// Two stores are equal whatever their engines: what is pending is compared.
impl PartialEq for HistoryValues {
    fn eq(&self, other: &Self) -> bool {
        self.pending == other.pending && self.deletes == other.deletes
    }
}

impl Eq for HistoryValues {}

impl HistoryValues {
    pub fn attach(&mut self, engine: Arc<dyn Engine>, group: u64) {
        self.engine = Some((engine, group));
    }

    /// Whether a value of `key` leaves memory.
    pub fn takes(&self, key: &[u8], value: &[u8]) -> bool {
        self.engine.is_some() && !value.is_empty() && key.len() <= HISTORY_KEY_BYTES_MAX
    }

    /// Keep the value `key` has at `revision`.
    pub fn keep(&mut self, revision: i64, key: &[u8], value: Vec<u8>) {
        self.pending_bytes += value.len();
        self.pending.insert((revision, key.to_vec()), value);
    }

    /// The value `key` had at `revision`; `None` if neither memory nor the
    /// engine has it (compacted).
    pub fn get(&self, revision: i64, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(value) = self.get_pending(revision, key) {
            return Ok(Some(value.clone()));
        }
        match &self.engine {
            Some((engine, group)) => engine.get(&engine_key(*group, revision, key)),
            None => Ok(None),
        }
    }

    /// The values of many versions (revision, key) at once, in the order
    /// asked; `None` where neither memory nor the engine has one. Those not
    /// in memory come from the engine in one read transaction per
    /// [`GET_MANY_KEYS_MAX`] of them, not one each (a range over many keys).
    pub fn get_many(&self, versions: &[(i64, &[u8])]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut values: Vec<Option<Vec<u8>>> = versions
            .iter()
            .map(|(revision, key)| self.get_pending(*revision, key).cloned())
            .collect();
        let Some((engine, group)) = &self.engine else {
            return Ok(values);
        };
        let missing: Vec<usize> = (0..versions.len()).filter(|&index| values[index].is_none()).collect();
        for chunk in missing.chunks(GET_MANY_KEYS_MAX) {
            let keys: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&index| engine_key(*group, versions[index].0, versions[index].1))
                .collect();
            for (&index, value) in chunk.iter().zip(engine.get_many(&keys)?) {
                values[index] = value;
            }
        }
        Ok(values)
    }

    /// The value of `key` at `revision` if it is still in memory. Without
    /// building a (revision, key) pair: a revision changed few keys.
    fn get_pending(&self, revision: i64, key: &[u8]) -> Option<&Vec<u8>> {
        self.pending
            .range((revision, Vec::new())..)
            .take_while(|((pending_revision, _), _)| *pending_revision == revision)
            .find(|((_, pending_key), _)| pending_key.as_slice() == key)
            .map(|(_, value)| value)
    }

    /// Compaction dropped the version of `key` at `revision`.
    pub fn forget(&mut self, revision: i64, key: &[u8]) {
        let entry = (revision, key.to_vec());
        match self.pending.remove(&entry) {
            Some(value) => {
                self.pending_bytes -= value.len();
                if self.flushes_in_flight > 0 {
                    self.deletes.insert(entry);
                }
            }
            None => {
                self.deletes.insert(entry);
            }
        }
    }

    /// Whether enough is waiting that the state machine should flush now.
    pub fn wants_flush(&self) -> bool {
        self.pending.len() >= HISTORY_PENDING_VALUES_MAX
            || self.pending_bytes >= HISTORY_PENDING_BYTES_MAX
            || self.deletes.len() >= HISTORY_PENDING_VALUES_MAX
    }

    /// Everything waiting, as engine batches of at most
    /// [`HISTORY_FLUSH_OPS_MAX`] puts and deletes each. The values stay
    /// readable from memory until [`Self::flushed`].
    pub fn flush_batches(&mut self) -> (Vec<WriteBatch>, FlushMark) {
        let mut mark = FlushMark::default();
        let mut batches = Vec::new();
        let Some((_, group)) = &self.engine else {
            return (batches, mark);
        };
        let group = *group;
        let mut batch = WriteBatch::new();
        let (mut ops, mut bytes) = (0, 0);
        let mut count = |batch: &mut WriteBatch, added: usize| {
            ops += 1;
            bytes += added;
            if ops == HISTORY_FLUSH_OPS_MAX || bytes >= HISTORY_FLUSH_BYTES_MAX {
                batches.push(std::mem::take(batch));
                (ops, bytes) = (0, 0);
            }
        };
        for (revision, key) in &self.deletes {
            batch.delete(engine_key(group, *revision, key));
            mark.deletes.push((*revision, key.clone()));
            count(&mut batch, key.len());
        }
        for ((revision, key), value) in &self.pending {
            batch.put(engine_key(group, *revision, key), value.clone());
            mark.puts.push((*revision, key.clone()));
            count(&mut batch, key.len() + value.len());
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        if !mark.is_empty() {
            self.flushes_in_flight += 1;
        }
        (batches, mark)
    }

    /// The batch of `mark` is in the engine: forget what it carried.
    pub fn flushed(&mut self, mark: FlushMark) {
        if mark.is_empty() {
            return;
        }
        for entry in &mark.deletes {
            self.deletes.remove(entry);
        }
        for entry in mark.puts {
            if let Some(value) = self.pending.remove(&entry) {
                self.pending_bytes -= value.len();
            }
        }
        self.flushes_in_flight -= 1;
    }

    /// The flush of `mark` failed: keep everything for the next one.
    pub fn flush_failed(&mut self, mark: FlushMark) {
        if !mark.is_empty() {
            self.flushes_in_flight -= 1;
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_keys_parse_back_and_other_keys_do_not() {
        for (revision, key) in [(1, &b"a"[..]), (i64::MAX, b""), (300, b"\x00\xffkey")] {
            assert_eq!(
                parse_engine_key(&engine_key(7, revision, key)),
                Some((revision, key.to_vec()))
            );
        }
        assert_eq!(parse_engine_key(&Key::SnapshotMeta { group: 7 }.encode()), None);
        let other_marker = Key::StateMachine {
            group: 7,
            key: b"x0123456789".to_vec(),
        }
        .encode();
        assert_eq!(parse_engine_key(&other_marker), None);
        let short = Key::StateMachine {
            group: 7,
            key: b"h123".to_vec(),
        }
        .encode();
        assert_eq!(parse_engine_key(&short), None);
        assert_eq!(parse_engine_key(b""), None);
    }
}
