//! [`RedbEngine`]: the on-disk engine, one redb database file with one table of byte
//! keys and byte values.
//!
//! Each `write` is one redb write transaction, so a batch is atomic; redb serializes
//! write transactions, so concurrent writers queue here (group commit above this
//! crate keeps that queue short). Reads are redb read transactions: snapshots that
//! never block and are never blocked by the writer.

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::batch::{check_key, Op, WriteBatch};
use crate::engine::{check_get_many, check_scan, Durability, Engine, KeyValue};
use crate::error::StorageError;

/// The one table holding the engine's keyspace. Its name and types are part of the
/// on-disk format.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("zongheng_kv");

/// Memory redb may use to cache pages of the file, in bytes. redb's default is 1 GiB;
/// a node runs one engine and keeps its working set (recent log entries read back
/// for replication, the current snapshot) far smaller: the state machines keep their
/// indexes in memory, and pages read less often come from the OS page cache, which
/// etcd's bbolt relies on as well. Measured: 256 MiB and 32 MiB gave the same put
/// throughput; 8 MiB gave the same put and read throughput as 32 MiB and 17 to 24 MB
/// less resident memory per member
/// (`bench/results/2026-12-06-9c744c7-proposals-in-flight.md`).
pub const REDB_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// An [`Engine`] on one redb file.
///
/// What survives a crash (process kill or power loss):
///
/// * A batch written with [`Durability::Sync`] survives once `write` returns: redb
///   commits it with `Durability::Immediate`, one fsync of the file after writing the
///   new pages and commit slot, all checksummed. If the crash comes during the call,
///   the batch is either wholly present or wholly absent.
/// * A batch written with [`Durability::Buffered`] (redb `Durability::None`) is visible
///   to reads at once but is only in memory and the OS page cache, with no fsync: a
///   crash rolls the database back to the last durable commit, or to some later
///   buffered commit, never to the middle of a batch. The next `Sync` write, even of
///   an empty batch, makes it and every earlier buffered batch durable.
/// * Dropping the engine (a clean close) also makes pending buffered batches durable.
///
/// After a crash, opening the file runs redb's repair, which walks the file to verify
/// checksums; it takes time proportional to the file size.
pub struct RedbEngine {
    db: Database,
    path: PathBuf,
}

impl RedbEngine {
    /// Opens the database file at `path`, creating it (not its directory) if missing,
    /// and creates the engine's table in a durable commit. Fails with
    /// [`StorageError::Locked`] if another process or engine has the file open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(&path)
            .map_err(|error| from_redb(error.into(), "opening the database file", &path))?;
        let engine = RedbEngine { db, path };
        let txn = engine
            .db
            .begin_write()
            .map_err(|error| engine.error(error.into(), "creating the table"))?;
        txn.open_table(TABLE)
            .map_err(|error| engine.error(error.into(), "creating the table"))?;
        txn.commit()
            .map_err(|error| engine.error(error.into(), "creating the table"))?;
        Ok(engine)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, error: redb::Error, context: &'static str) -> StorageError {
        from_redb(error, context, &self.path)
    }

    /// Up to `limit` entries of `[start, end)` in key order (or reversed), each
    /// turned into a `T` by `keep` straight from redb's pages: a key-only scan
    /// copies no value.
    fn scan_in_order<T>(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        descending: bool,
        keep: impl Fn(&[u8], &[u8]) -> T,
    ) -> Result<Vec<T>, StorageError> {
        if !check_scan(start, end, limit)? {
            return Ok(Vec::new());
        }
        let context = "scanning";
        let txn = self
            .db
            .begin_read()
            .map_err(|error| self.error(error.into(), context))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|error| self.error(error.into(), context))?;
        let bounds = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        // The trait method, not ReadOnlyTable's inherent `range`, whose iterator does not
        // keep the read transaction alive (redb 5 removes it).
        let range = ReadableTable::range::<&[u8]>(&table, bounds).map_err(|error| self.error(error.into(), context))?;
        let mut kept = Vec::new();
        let mut push = |entry: Result<_, redb::StorageError>| -> Result<(), StorageError> {
            let (key, value): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
                entry.map_err(|error| self.error(error.into(), context))?;
            kept.push(keep(key.value(), value.value()));
            Ok(())
        };
        if descending {
            for entry in range.rev().take(limit) {
                push(entry)?;
            }
        } else {
            for entry in range.take(limit) {
                push(entry)?;
            }
        }
        Ok(kept)
    }
}

impl std::fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbEngine").field("path", &self.path).finish()
    }
}

impl Engine for RedbEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let context = "reading a key";
        let txn = self
            .db
            .begin_read()
            .map_err(|error| self.error(error.into(), context))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|error| self.error(error.into(), context))?;
        let value = ReadableTable::get(&table, key).map_err(|error| self.error(error.into(), context))?;
        Ok(value.map(|guard| guard.value().to_vec()))
    }

    /// One redb read transaction for all of `keys`.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        check_get_many(keys)?;
        let context = "reading keys";
        let txn = self
            .db
            .begin_read()
            .map_err(|error| self.error(error.into(), context))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|error| self.error(error.into(), context))?;
        keys.iter()
            .map(|key| {
                ReadableTable::get(&table, key.as_slice())
                    .map(|value| value.map(|guard| guard.value().to_vec()))
                    .map_err(|error| self.error(error.into(), context))
            })
            .collect()
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.scan_in_order(start, end, limit, false, pair)
    }

    fn scan_keys(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        self.scan_in_order(start, end, limit, false, |key, _| key.to_vec())
    }

    fn scan_rev(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.scan_in_order(start, end, limit, true, pair)
    }

    /// One redb write transaction per batch. `Sync` commits with
    /// `redb::Durability::Immediate` (fsynced when this returns); `Buffered` with
    /// `redb::Durability::None` (visible, lost by a crash until the next `Sync`
    /// commit). If anything fails, the transaction is dropped, which aborts it: no
    /// operation of the batch is applied.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        batch.validate()?;
        let context = "committing a write batch";
        let mut txn = self
            .db
            .begin_write()
            .map_err(|error| self.error(error.into(), context))?;
        txn.set_durability(match durability {
            Durability::Sync => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        })
        .map_err(|error| self.error(error.into(), context))?;
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|error| self.error(error.into(), context))?;
            for op in batch.ops() {
                let applied = match op {
                    Op::Put { key, value } => table.insert(key.as_slice(), value.as_slice()).map(|_previous| ()),
                    Op::Delete { key } => table.remove(key.as_slice()).map(|_previous| ()),
                    Op::DeleteRange { start, end } if start < end => {
                        table.retain_in::<&[u8], _>(start.as_slice()..end.as_slice(), |_, _| false)
                    }
                    Op::DeleteRange { .. } => Ok(()),
                };
                applied.map_err(|error| self.error(error.into(), context))?;
            }
        }
        txn.commit().map_err(|error| self.error(error.into(), context))
    }

    /// The length of the database file. It grows in steps, counts free pages, and does
    /// not shrink when data is deleted.
    fn size_bytes(&self) -> Result<u64, StorageError> {
        let metadata = std::fs::metadata(&self.path).map_err(|source| StorageError::Io {
            context: "reading the database file's size",
            source,
        })?;
        Ok(metadata.len())
    }
}

/// A scanned entry as a pair of owned bytes.
fn pair(key: &[u8], value: &[u8]) -> KeyValue {
    (key.to_vec(), value.to_vec())
}

/// Maps redb's errors onto ours; every redb error type converts into `redb::Error`.
fn from_redb(error: redb::Error, context: &'static str, path: &Path) -> StorageError {
    match error {
        redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
            // redb reports a file that is not a redb database this way.
            StorageError::Incompatible {
                detail: format!("{}: {source}", path.display()),
            }
        }
        redb::Error::Io(source) => StorageError::Io { context, source },
        redb::Error::PreviousIo => StorageError::Io {
            context,
            source: io::Error::other("an earlier I/O error left the database refusing writes until it is reopened"),
        },
        redb::Error::Corrupted(detail) => StorageError::Corrupt {
            detail: format!("{}: {detail}", path.display()),
        },
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => StorageError::Locked {
            path: path.to_path_buf(),
        },
        error @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)) => StorageError::Incompatible {
            detail: format!("{}: {error}", path.display()),
        },
        other => StorageError::Internal {
            detail: format!("{context} in {}: {other}", path.display()),
        },
    }
}
