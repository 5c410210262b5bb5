//! `meta`: the coordination store, one Raft group with etcd v3 semantics.
//!
//! ## From a request to the disk
//! 1. A client's etcd v3 gRPC call reaches any member (`server::etcd`), which
//!    checks it against the named limits and turns it into a [`MetaCommand`].
//! 2. [`group::MetaGroup::write`] proposes it on the leader, forwarding it over
//!    the peer service when this member is a follower. On the leader,
//!    [`proposer`] packs the writes waiting at that moment into one entry.
//! 3. openraft replicates the entry; every member's log store fsyncs it
//!    (`raft::log_store`) before acknowledging, and once a quorum holds it the
//!    entry is committed.
//! 4. Each member applies it to [`app::MetaApp`] (the [`mvcc::Mvcc`] store and
//!    the member records) in log order; the leader's response goes back to the
//!    client with the new revision.
//!
//! Reads: linearizable ones wait for a read index (leader-confirmed, one
//! confirmation round for all the reads waiting, see [`read_index`]), then
//! read the local [`mvcc::Mvcc`]; serializable ones read it directly.
//!
//! ## The CAP choice, per request
//! Writes and linearizable reads need a quorum: in a minority partition they
//! fail with "no leader" or time out (consistency over availability).
//! Serializable reads (`--consistency=s` in etcdctl, `serializable: true`)
//! are served by any member from its applied state, so they stay available in
//! a partition and may be stale.
//!
//! ## What it does not do yet
//! Auth (users, roles, permissions) is not implemented; the whole MVCC
//! history (values included) is held in memory and compaction is the only
//! way to bound it.

pub mod app;
pub mod changes;
pub mod command;
pub mod group;
pub mod history;
pub mod lease;
pub mod mvcc;
pub mod proposer;
pub mod read_index;

pub use app::MetaApp;
pub use command::{MetaCommand, MetaResponse};
pub use group::{MetaError, MetaGroup};

use std::io::Cursor;

use crate::raft::runtime::SeededRuntime;
use crate::raft::PeerNode;

openraft::declare_raft_types!(
    /// openraft's types for the `meta` group.
    pub MetaRaftConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = PeerNode,
        AsyncRuntime = SeededRuntime,
);
