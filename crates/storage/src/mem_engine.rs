//! [`MemEngine`]: the in-memory engine for tests and the deterministic simulator.
//!
//! It models durability the way redb behaves, so the simulator can crash a node and
//! see exactly what a real crash could leave: besides the visible state it keeps the
//! durable state (as of the last `Sync` write) and the buffered batches written since.
//! A `Sync` write makes itself and every earlier buffered batch durable; [`MemEngine::crash`]
//! throws away everything not yet durable. Real redb may keep some buffered batches
//! through a crash; this engine always loses all of them, the worst case a caller
//! must survive.
//!
//! Deterministic: `BTreeMap`s only, no hashing, no clock, no randomness.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::batch::{check_key, Op, WriteBatch};
use crate::engine::{check_get_many, check_scan, Durability, Engine, KeyValue};
use crate::error::StorageError;

/// An in-memory [`Engine`] with a crash model. Cloning gives another handle to the
/// same data, so a simulator can keep one across a simulated node restart.
#[derive(Clone, Default)]
pub struct MemEngine {
    state: Arc<RwLock<MemState>>,
}

#[derive(Default)]
struct MemState {
    /// What reads see: everything written, durable or not.
    visible: Tree,
    /// What survives [`MemEngine::crash`]: everything up to the last `Sync` write.
    durable: Tree,
    /// Batches written `Buffered` since the last `Sync` write, in order; replayed onto
    /// `durable` by the next `Sync` write.
    buffered: Vec<WriteBatch>,
}

/// A sorted map that also counts the bytes of its keys and values.
#[derive(Clone, Default)]
struct Tree {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    size_bytes: u64,
}

impl Tree {
    fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.size_bytes += pair_bytes(key, value);
                    if let Some(old) = self.map.insert(key.clone(), value.clone()) {
                        self.shrink(pair_bytes(key, &old));
                    }
                }
                Op::Delete { key } => {
                    if let Some(old) = self.map.remove(key) {
                        self.shrink(pair_bytes(key, &old));
                    }
                }
                Op::DeleteRange { start, end } => {
                    if start >= end {
                        continue;
                    }
                    // Removing key by key costs O(k log n) for k keys in the range;
                    // splitting and re-appending the map would cost O(n).
                    let doomed: Vec<Vec<u8>> = self
                        .map
                        .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in doomed {
                        if let Some(old) = self.map.remove(&key) {
                            self.shrink(pair_bytes(&key, &old));
                        }
                    }
                }
            }
        }
    }

    /// Subtracts the bytes of a pair that left the map; the count covers every pair in
    /// it, so going below zero is a bug in this file (checked in release builds too).
    fn shrink(&mut self, bytes: u64) {
        self.size_bytes = self
            .size_bytes
            .checked_sub(bytes)
            .expect("MemEngine byte count went below zero");
    }
}

fn pair_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Up to `limit` visible entries of `[start, end)` in key order (or
    /// reversed), each turned into a `T` by `keep`.
    fn scan_visible<T>(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        descending: bool,
        keep: impl Fn(&Vec<u8>, &Vec<u8>) -> T,
    ) -> Result<Vec<T>, StorageError> {
        if !check_scan(start, end, limit)? {
            return Ok(Vec::new());
        }
        let state = self.state.read();
        let range = state
            .visible
            .map
            .range::<[u8], _>((Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded)));
        Ok(if descending {
            range.rev().take(limit).map(|(key, value)| keep(key, value)).collect()
        } else {
            range.take(limit).map(|(key, value)| keep(key, value)).collect()
        })
    }

    /// Simulates a crash (power loss): every write not yet made durable by a `Sync`
    /// write is lost, and reads see the durable state again. Handles stay valid, as
    /// the disk does across a restart.
    pub fn crash(&self) {
        let mut state = self.state.write();
        state.visible = state.durable.clone();
        state.buffered.clear();
    }
}

impl fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read();
        f.debug_struct("MemEngine")
            .field("visible_keys", &state.visible.map.len())
            .field("durable_keys", &state.durable.map.len())
            .field("buffered_batches", &state.buffered.len())
            .finish()
    }
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        Ok(self.state.read().visible.map.get(key).cloned())
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        check_get_many(keys)?;
        let state = self.state.read();
        Ok(keys.iter().map(|key| state.visible.map.get(key).cloned()).collect())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.scan_visible(start, end, limit, false, |key, value| (key.clone(), value.clone()))
    }

    fn scan_keys(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        self.scan_visible(start, end, limit, false, |key, _| key.clone())
    }

    fn scan_rev(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.scan_visible(start, end, limit, true, |key, value| (key.clone(), value.clone()))
    }

    /// `Sync`: durable on return, together with every earlier `Buffered` batch.
    /// `Buffered`: visible on return, lost by [`MemEngine::crash`] until the next
    /// `Sync` write.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        batch.validate()?;
        let mut state = self.state.write();
        let state = &mut *state;
        state.visible.apply(batch.ops());
        match durability {
            Durability::Buffered => state.buffered.push(batch),
            Durability::Sync => {
                for buffered in state.buffered.drain(..) {
                    state.durable.apply(buffered.ops());
                }
                state.durable.apply(batch.ops());
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.state.read().visible.size_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(engine: &MemEngine, key: &[u8], value: &[u8], durability: Durability) {
        let mut batch = WriteBatch::new();
        batch.put(key.to_vec(), value.to_vec());
        engine.write(batch, durability).unwrap();
    }

    #[test]
    fn a_clone_is_a_handle_to_the_same_data() {
        let engine = MemEngine::new();
        let handle = engine.clone();
        put(&engine, b"k", b"v", Durability::Sync);
        assert_eq!(handle.get(b"k").unwrap(), Some(b"v".to_vec()));
        drop(engine);
        handle.crash();
        assert_eq!(handle.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn crash_replays_buffered_deletes_in_order() {
        let engine = MemEngine::new();
        put(&engine, b"a", b"1", Durability::Sync);
        let mut batch = WriteBatch::new();
        batch.delete(b"a".to_vec());
        engine.write(batch, Durability::Buffered).unwrap();
        put(&engine, b"a", b"2", Durability::Buffered);
        let mut batch = WriteBatch::new();
        batch.delete_range(b"a".to_vec()..b"b".to_vec());
        engine.write(batch, Durability::Buffered).unwrap();
        put(&engine, b"z", b"", Durability::Sync);
        engine.crash();
        assert_eq!(engine.get(b"a").unwrap(), None);
        assert_eq!(engine.get(b"z").unwrap(), Some(Vec::new()));
        assert_eq!(engine.size_bytes().unwrap(), 1);
    }
}
