//! zongheng (纵横): a distributed systems platform in one binary.
//!
//! A cluster of nodes, each running this same code, forms a consensus-backed
//! coordination store that speaks the etcd v3 API (`meta`). This crate is the
//! node: its subsystems read like the architecture diagram in
//! `docs/architecture.md`.
//!
//! - [`meta`]: the coordination store (one Raft group, etcd semantics).
//! - [`raft`]: openraft glue shared by every Raft group.
//! - [`server`]: the gRPC services (etcd v3 API for clients, the peer service).
//! - [`net`]: injected transport, so the simulator can run the same code.
//! - [`node`]: assembling a node from its configuration; start and shutdown.
//! - [`config`]: typed configuration (defaults, file, environment, flags).
//! - [`store`]: the sharded data store (partitions, transactions; in progress).
//! - [`cli`]: the `zongheng` command line.

pub mod cli;
pub mod config;
pub mod meta;
pub mod net;
pub mod node;
pub mod raft;
pub mod server;
pub mod store;
