//! # zongheng-storage: the embedded storage engine behind a small trait
//!
//! Everything a node keeps on its own disk goes through this crate: the state machines'
//! state kept on disk, snapshots and local records in an [`Engine`], and the Raft logs
//! of every group (entries, vote, committed and purged index) in a [`wal::Wal`] of
//! their own (see its module doc for why). The engine's API is one ordered byte keyspace with
//! point reads, range scans in both directions, and atomic write batches
//! ([`Engine`], [`WriteBatch`]). Keys are built from a Rust enum with an
//! order-preserving encoding ([`Key`]), never from ad-hoc byte prefixes.
//!
//! ## Why redb
//!
//! [redb](https://www.redb.org) is a copy-on-write B+tree in pure Rust with few
//! dependencies. Its durability story is conservative and simple to state: a commit
//! with `Durability::Immediate` has been fsynced when `commit()` returns, every page
//! is checksummed, and after a crash the database comes back at the last durable
//! commit (or a later non-durable one), never in between. fjall (an LSM tree) was
//! faster on fsync-heavy workloads but had recovery bugs, and a consensus log is the
//! last place to trade correctness for throughput.
//!
//! ## Why a trait
//!
//! * The deterministic simulator needs an engine that lives in memory, that it can
//!   crash on command (dropping exactly what was not yet durable) and that survives a
//!   simulated restart: [`MemEngine`].
//! * One conformance suite ([`conformance::run_all`]) pins down the contract, so the
//!   in-memory engine cannot drift from the real one and a future engine has a bar
//!   to clear (the openraft `testing` suite and TiKV's engine traits do the same).
//! * The trait is synchronous and blocking on purpose: disk engines are blocking, and
//!   callers on async threads move the calls onto a blocking thread themselves
//!   (`tokio::task::spawn_blocking` or a dedicated writer thread).
//!
//! ## The durability contract
//!
//! Every [`WriteBatch`] is applied atomically and in order: after a crash either all
//! of its operations are present or none is. [`Durability`] says when:
//!
//! * [`Durability::Sync`]: the batch is on stable storage when `write` returns
//!   (redb `Durability::Immediate`, one fsync). Only such writes may be acknowledged
//!   to anyone who relies on them surviving a crash (a vote, a log append).
//! * [`Durability::Buffered`]: the batch is atomic and immediately visible to reads,
//!   but a crash may lose it, until a later `Sync` write (even an empty batch) makes
//!   it and everything written before it durable. A crash never loses a buffered
//!   batch while keeping a later one.
//!
//! ## Named limits
//!
//! Keys, values, batches, scans and multi-gets are bounded ([`KEY_SIZE_BYTES_MAX`],
//! [`VALUE_SIZE_BYTES_MAX`], [`BATCH_OPS_MAX`], [`BATCH_SIZE_BYTES_MAX`],
//! [`SCAN_LIMIT_MAX`], [`GET_MANY_KEYS_MAX`]); exceeding one returns [`StorageError::Limit`] and changes
//! nothing, it never panics.
//!
//! ## What it does not do yet
//!
//! * Group commit: many Raft groups share one log and one fsync per round; the
//!   batching of waiters lives in the Raft log layer above, which calls
//!   [`wal::Wal::sync`] once per round.
//! * Compression: values are stored as given.
//! * Checksums beyond redb's own page checksums (XXH3-128): there is no end-to-end
//!   checksum of values, and the in-memory engine has none at all.
//! * Compaction of the redb file: freed pages are reused, but the file does not
//!   shrink on its own.
//! * Verifying the whole file on open: redb trusts a file it closed cleanly, and
//!   checks and repairs after a crash.

mod batch;
pub mod conformance;
mod engine;
mod error;
mod keys;
mod limits;
mod mem_engine;
mod redb_engine;
pub mod wal;

pub use batch::{Op, WriteBatch};
pub use engine::{Durability, Engine, KeyValue};
pub use error::StorageError;
pub use keys::Key;
pub use limits::{
    BATCH_OPS_MAX, BATCH_SIZE_BYTES_MAX, GET_MANY_KEYS_MAX, KEY_SIZE_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_SIZE_BYTES_MAX,
};
pub use mem_engine::MemEngine;
pub use redb_engine::{RedbEngine, REDB_CACHE_BYTES};
