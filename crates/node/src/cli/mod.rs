//! The `zongheng` command line: one binary for running nodes and for talking
//! to a cluster, with flags an etcd user will recognise.
//!
//! - `zongheng node ...`: run one node (see [`crate::config`]).
//! - `zongheng dev ...`: a local cluster of real node processes on loopback.
//! - `zongheng kv|member|status|watch|lease ...`: a client for people without
//!   etcdctl, readable output by default and `--json` for scripts.
//! - `zongheng service register|list|watch`: a service registry.
//! - `zongheng bench put|range|txn-put|watch|lease|mixed`: a load generator
//!   for the etcd v3 API (etcd or zongheng), see [`bench`].
//! - `zongheng store get|put|delete|scan|status` and `zongheng txn`: the
//!   sharded data store and its transactions, see [`store`].
//! - `zongheng lock|elect`: distributed locks (with fencing tokens) and
//!   leader election, like `etcdctl lock|elect`.

pub mod bench;
pub mod client;
pub mod dev;
pub mod elect;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod member;
pub mod service;
pub mod status;
pub mod store;
pub mod watch;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "zongheng", version, about = "zongheng (纵横): a distributed systems platform in one binary", long_about = None)]
pub struct Cli {
    /// Log level or filter (overrides RUST_LOG), e.g. `info` or `zongheng=debug`.
    #[arg(long, global = true, env = "ZONGHENG_LOG_LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// `zongheng node [FLAGS]` runs a node; `zongheng node drain|undrain NAME`
/// acts on a running one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeCli {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    #[command(flatten)]
    pub args: crate::config::NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Move every data-store replica off a node (it stays a member).
    Drain(store::DrainArgs),
    /// Let a drained node hold data-store replicas again.
    Undrain(store::DrainArgs),
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of a cluster, or drain one (`node drain NAME`).
    Node(Box<NodeCli>),
    /// Start a local cluster of real node processes on loopback.
    Dev(dev::DevArgs),
    /// Read and write keys (put, get, del, txn, compact).
    Kv(kv::KvArgs),
    /// List, add, remove and promote members.
    Member(member::MemberArgs),
    /// Show each endpoint's status (leader, term, revision, index, size).
    Status(status::StatusArgs),
    /// Print changes to a key, range or prefix as they happen.
    Watch(watch::WatchArgs),
    /// Grant, revoke, keep alive, inspect and list leases.
    Lease(lease::LeaseArgs),
    /// A service registry: register instances, list them, follow them.
    Service(service::ServiceArgs),
    /// Measure a cluster (etcd or zongheng) with etcd benchmark-style load.
    Bench(Box<bench::BenchArgs>),
    /// Hold a distributed lock (optionally running a command while holding it).
    Lock(lock::LockArgs),
    /// Campaign to lead an election, or follow its leaders with --listen.
    Elect(elect::ElectArgs),
    /// The sharded data store: get, put, delete, scan, status.
    Store(store::StoreArgs),
    /// An interactive transaction on the data store (commands on stdin).
    Txn(store::TxnArgs),
}
