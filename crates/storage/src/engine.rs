//! The [`Engine`] trait: one ordered byte keyspace with point reads, scans in both
//! directions and atomic batches, and the [`Durability`] a batch is written with.

use std::sync::Arc;

use crate::batch::{check_bound, check_key, WriteBatch};
use crate::error::StorageError;
use crate::limits::{GET_MANY_KEYS_MAX, SCAN_LIMIT_MAX};

/// A key and its value, as scans return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// When a written batch is safe from a crash. Both modes are atomic and make the batch
/// visible to reads as soon as `write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// On stable storage (fsynced) before `write` returns; survives a crash or power
    /// loss. It also makes every earlier `Buffered` write durable. redb:
    /// `Durability::Immediate`.
    Sync,
    /// Atomic and visible, but a crash may lose it until a later `Sync` write. A crash
    /// loses a suffix of the buffered writes, never a batch in the middle. redb:
    /// `Durability::None`.
    Buffered,
}

/// An embedded, ordered key-value engine: one keyspace of byte keys in ascending
/// bytewise order.
///
/// Calls are synchronous and may block on disk; callers on async threads run them on
/// a blocking thread. Every method is safe to call from many threads at once; writes
/// are serialized by the engine, and a read sees each batch either whole or not at all.
///
/// Every implementation must pass [`crate::conformance::run_all`].
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, or `None` if absent. A key longer than
    /// [`KEY_SIZE_BYTES_MAX`](crate::KEY_SIZE_BYTES_MAX) is refused (it cannot be present).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// The values of `keys`, in their order (`None` where a key is absent), all read
    /// from one view of the engine: a batch written meanwhile shows in all of them or
    /// in none. One read transaction instead of one per key, for callers that read
    /// many values at once (a range read). More than
    /// [`GET_MANY_KEYS_MAX`](crate::GET_MANY_KEYS_MAX) keys, or a key longer than
    /// [`KEY_SIZE_BYTES_MAX`](crate::KEY_SIZE_BYTES_MAX), is refused with
    /// [`StorageError::Limit`].
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError>;

    /// Pairs with keys in `[start, end)` (`end: None` means no upper bound), in
    /// ascending key order, at most `limit` of them. An empty or inverted range returns
    /// nothing. `limit` above [`SCAN_LIMIT_MAX`] is refused with
    /// [`StorageError::Limit`], as are bounds longer than
    /// [`KEY_SIZE_BYTES_MAX`](crate::KEY_SIZE_BYTES_MAX).
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError>;

    /// The keys [`Engine::scan`] would return, without their values (for callers that
    /// sweep a range by key, whatever its values weigh). Same bounds and limits.
    fn scan_keys(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StorageError>;

    /// Like [`Engine::scan`] over the same `[start, end)`, but in descending key order:
    /// the first pair is the largest key below `end`.
    fn scan_rev(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError>;

    /// Applies `batch` atomically and in order, with the given durability (see
    /// [`Durability`] for what survives a crash). A batch over a named limit returns
    /// [`StorageError::Limit`] and changes nothing. An empty batch with
    /// [`Durability::Sync`] is a flush of earlier buffered writes.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError>;

    /// Approximate bytes the engine occupies on disk (the file size for redb; the
    /// bytes of keys and values for the in-memory engine). Reported as `dbSize`.
    fn size_bytes(&self) -> Result<u64, StorageError>;
}

/// An engine behind an `Arc` (including `Arc<dyn Engine>`) is an engine.
impl<E: Engine + ?Sized> Engine for Arc<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key)
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        (**self).get_many(keys)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        (**self).scan(start, end, limit)
    }

    fn scan_keys(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        (**self).scan_keys(start, end, limit)
    }

    fn scan_rev(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        (**self).scan_rev(start, end, limit)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        (**self).write(batch, durability)
    }

    fn size_bytes(&self) -> Result<u64, StorageError> {
        (**self).size_bytes()
    }
}

/// Checks a multi-get's key count and every key.
pub(crate) fn check_get_many(keys: &[Vec<u8>]) -> Result<(), StorageError> {
    StorageError::check_limit(
        "keys in one multi-get",
        keys.len(),
        "GET_MANY_KEYS_MAX",
        GET_MANY_KEYS_MAX,
    )?;
    keys.iter().try_for_each(|key| check_key(key))
}

/// Checks a scan's bounds and limit; returns false when the range is empty (nothing to
/// read), so engines never hand an inverted range to their backend (`BTreeMap::range`
/// panics on one).
pub(crate) fn check_scan(start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<bool, StorageError> {
    StorageError::check_limit("scan limit in pairs", limit, "SCAN_LIMIT_MAX", SCAN_LIMIT_MAX)?;
    check_bound(start)?;
    if let Some(end) = end {
        check_bound(end)?;
        if start >= end {
            return Ok(false);
        }
    }
    Ok(limit > 0)
}
