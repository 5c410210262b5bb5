//! [`WriteBatch`]: the unit of atomic writing. A batch is a list of operations applied
//! in order, all or nothing, by one call to [`Engine::write`](crate::Engine::write).
//! Limits are checked for the whole batch before anything is applied, so a batch that
//! breaks one changes nothing.

use std::ops::Range;

use crate::error::StorageError;
use crate::limits::{BATCH_OPS_MAX, BATCH_SIZE_BYTES_MAX, KEY_SIZE_BYTES_MAX, VALUE_SIZE_BYTES_MAX};

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, replacing any previous value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value; may be empty.
        value: Vec<u8>,
    },
    /// Removes `key`; removing an absent key is not an error.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key in `[start, end)`. An empty or inverted range
    /// (`start >= end`) removes nothing.
    DeleteRange {
        /// First key removed, inclusive.
        start: Vec<u8>,
        /// First key kept, exclusive.
        end: Vec<u8>,
    },
}

impl Op {
    /// Bytes this operation carries: its key and value, or its two bounds.
    fn size_bytes(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeleteRange { start, end } => start.len() + end.len(),
        }
    }
}

/// Operations applied atomically and in order by [`Engine::write`](crate::Engine::write).
///
/// ```
/// use zongheng_storage::{Durability, Engine, MemEngine, WriteBatch};
///
/// let engine = MemEngine::new();
/// let mut batch = WriteBatch::new();
/// batch.put(b"a".to_vec(), b"1".to_vec()).delete(b"b".to_vec());
/// batch.delete_range(b"c".to_vec()..b"d".to_vec());
/// engine.write(batch, Durability::Sync)?;
/// assert_eq!(engine.get(b"a")?, Some(b"1".to_vec()));
/// # Ok::<(), zongheng_storage::StorageError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch. Written with [`Durability::Sync`](crate::Durability::Sync), an
    /// empty batch is a flush: it makes every earlier buffered write durable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put of `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put { key, value });
        self
    }

    /// Appends a delete of `key`.
    pub fn delete(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Delete { key });
        self
    }

    /// Appends a delete of every key in `range` (`[start, end)`); an empty or inverted
    /// range deletes nothing.
    pub fn delete_range(&mut self, range: Range<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::DeleteRange {
            start: range.start,
            end: range.end,
        });
        self
    }

    /// Appends every operation of `other`, after this batch's own.
    pub fn extend(&mut self, other: WriteBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// The operations, in the order they will be applied.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The operations, consumed; for engines implemented outside this crate.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks every named limit for the whole batch. Engines call this before applying
    /// anything, so a batch over a limit changes nothing.
    pub fn validate(&self) -> Result<(), StorageError> {
        StorageError::check_limit(
            "write batch operation count",
            self.ops.len(),
            "BATCH_OPS_MAX",
            BATCH_OPS_MAX,
        )?;
        let mut size_bytes: usize = 0;
        for op in &self.ops {
            match op {
                Op::Put { key, value } => {
                    check_key(key)?;
                    StorageError::check_limit(
                        "value size in bytes",
                        value.len(),
                        "VALUE_SIZE_BYTES_MAX",
                        VALUE_SIZE_BYTES_MAX,
                    )?;
                }
                Op::Delete { key } => check_key(key)?,
                Op::DeleteRange { start, end } => {
                    check_bound(start)?;
                    check_bound(end)?;
                }
            }
            size_bytes = size_bytes.saturating_add(op.size_bytes());
        }
        StorageError::check_limit(
            "write batch size in bytes",
            size_bytes,
            "BATCH_SIZE_BYTES_MAX",
            BATCH_SIZE_BYTES_MAX,
        )
    }
}

/// Checks a key against [`KEY_SIZE_BYTES_MAX`].
pub(crate) fn check_key(key: &[u8]) -> Result<(), StorageError> {
    StorageError::check_limit("key size in bytes", key.len(), "KEY_SIZE_BYTES_MAX", KEY_SIZE_BYTES_MAX)
}

/// Checks a range or scan bound against [`KEY_SIZE_BYTES_MAX`].
pub(crate) fn check_bound(bound: &[u8]) -> Result<(), StorageError> {
    StorageError::check_limit(
        "range bound size in bytes",
        bound.len(),
        "KEY_SIZE_BYTES_MAX",
        KEY_SIZE_BYTES_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_order() {
        let mut batch = WriteBatch::new();
        batch
            .put(b"k".to_vec(), b"v".to_vec())
            .delete(b"k".to_vec())
            .delete_range(b"a".to_vec()..b"z".to_vec());
        assert_eq!(batch.len(), 3);
        assert_eq!(
            batch.ops(),
            &[
                Op::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec()
                },
                Op::Delete { key: b"k".to_vec() },
                Op::DeleteRange {
                    start: b"a".to_vec(),
                    end: b"z".to_vec()
                },
            ]
        );
        assert!(batch.validate().is_ok());
    }

    #[test]
    fn validate_names_the_limit() {
        let mut batch = WriteBatch::new();
        batch.delete(vec![0; KEY_SIZE_BYTES_MAX + 1]);
        let error = batch.validate().unwrap_err();
        assert_eq!(error.code(), "STORAGE_LIMIT");
        assert!(error.to_string().contains("KEY_SIZE_BYTES_MAX"), "{error}");
    }
}
