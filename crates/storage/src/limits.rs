//! Named limits of the storage engine (STYLE practice 6). Every engine enforces them
//! the same way: a request above a limit returns [`StorageError::Limit`] and changes
//! nothing.
//!
//! [`StorageError::Limit`]: crate::StorageError::Limit

/// Largest key, in bytes, that an engine stores; also the largest range bound and
/// scan bound it accepts.
///
/// Why 16 KiB: storage keys are a user key plus a short typed prefix (a tag and a
/// group id) and possibly a suffix (an MVCC revision), so this leaves room for user
/// keys of several KiB (TiKV allows 8 KiB, FoundationDB 10 kB) while keeping B-tree
/// branch pages, which hold copies of keys, reasonably dense.
pub const KEY_SIZE_BYTES_MAX: usize = 16 * 1024;

/// Largest value, in bytes.
///
/// Why 64 MiB: far above any single Raft entry (a client request is bounded to a few
/// MiB upstream), and a value is read and written whole, so it must fit comfortably
/// in memory. Snapshots larger than this must be split by the snapshot layer.
pub const VALUE_SIZE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most operations (puts, deletes, range deletes) in one [`WriteBatch`].
///
/// Why 65 536: a group-commit round of Raft appends across many groups stays well
/// below it, and it bounds the time one write transaction holds the single writer.
///
/// [`WriteBatch`]: crate::WriteBatch
pub const BATCH_OPS_MAX: usize = 65_536;

/// Most bytes in one [`WriteBatch`]: the sum of every key, value and range bound.
///
/// Why 128 MiB: a batch is held in memory whole, twice (the batch and the engine's
/// dirty pages) until it commits; two maximal values fit.
///
/// [`WriteBatch`]: crate::WriteBatch
pub const BATCH_SIZE_BYTES_MAX: usize = 2 * VALUE_SIZE_BYTES_MAX;

/// Most keys one [`Engine::get_many`] reads; more are refused, as a scan's limit is.
///
/// Why the scan's limit: a multi-get serves the same callers (a range read that
/// finds its values by key) and holds its answers in memory the same way.
///
/// [`Engine::get_many`]: crate::Engine::get_many
pub const GET_MANY_KEYS_MAX: usize = SCAN_LIMIT_MAX;

/// Most key-value pairs one scan returns; a larger `limit` is refused, not clamped,
/// so that a caller expecting "everything" learns that it must page.
pub const SCAN_LIMIT_MAX: usize = 65_536;
