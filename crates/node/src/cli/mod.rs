//! The `zongheng` command line: one binary for running nodes and for talking
//! to a cluster, with flags an etcd user will recognise.
//!
//! - `zongheng node ...`: run one node (see [`crate::config`]).
//! - `zongheng dev ...`: a local cluster of real node processes on loopback.
//! - `zongheng kv|member|status ...`: a client for people without etcdctl,
//!   readable output by default and `--json` for scripts.

pub mod client;
pub mod dev;
pub mod kv;
pub mod member;
pub mod status;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of a cluster.
    Node(Box<crate::config::NodeArgs>),
    /// Start a local cluster of real node processes on loopback.
    Dev(dev::DevArgs),
    /// Read and write keys (put, get, del, txn, compact).
    Kv(kv::KvArgs),
    /// List, add, remove and promote members.
    Member(member::MemberArgs),
    /// Show each endpoint's status (leader, term, revision, index, size).
    Status(status::StatusArgs),
}
