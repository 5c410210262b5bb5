//! `store`: the sharded, replicated data store (being built; see issue 6).
//!
//! Keys map to one of P partitions by a fixed hash
//! ([`zongheng_algo::partition_of`]); partitions map to replica sets by
//! consistent hashing with bounded loads ([`zongheng_algo::place`]). Each
//! partition will be its own Raft group, applying the transactional store
//! of [`txn`]: Percolator's locks and versions, with timestamps from the
//! meta leader's oracle ([`timestamp`]).
//!
//! What exists so far are the I/O-free cores: the partition's transactional
//! state machine and the timestamp oracle, each with unit tests, and a
//! model test of the client's protocol (bank transfers across partitions,
//! with clients that die mid-commit) in [`txn`]'s tests. The Raft groups,
//! routing, the shard map and the API come next.

pub mod app;
pub mod client;
pub mod request;
pub mod timestamp;
pub mod txn;
