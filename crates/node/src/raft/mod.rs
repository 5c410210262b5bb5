//! Consensus: the glue between openraft and the rest of the node.
//!
//! openraft (0.9.25, the maintained Rust Raft library) decides; this module
//! owns everything around it, written once for every Raft group a node runs:
//!
//! - [`log_store`]: the durable log on the storage engine (fsync before an
//!   append or a vote is reported done);
//! - [`group_commit`]: the synced writes of every group on the node share
//!   fsyncs;
//! - [`state_machine`]: snapshots and apply, generic over an [`Application`];
//! - [`network`]: Raft messages over one gRPC connection per peer, every
//!   message tagged with its group id (the `meta` group is [`META_GROUP`]);
//! - [`batch`]: the messages of all groups to one peer leave in shared
//!   calls;
//! - [`runtime`]: tokio with a seedable RNG so simulations replay exactly;
//! - [`codec`]: how entries and messages become bytes;
//! - [`tiebreak`]: a fresh random delay for every election, so tied
//!   candidates do not campaign in lockstep forever.
//!
//! Why openraft rather than a home-made Raft: it is maintained, tested with a
//! storage conformance suite and a fuzzer, and supports joint-consensus
//! membership changes, learners, snapshots and read-index reads. What it leaves
//! to us (storage, network, snapshot transport, membership workflows) is what
//! this module and `meta` provide.
//!
//! Chapter: V1 coordination (consensus) in COURSE.md; Ongaro and Ousterhout,
//! "In Search of an Understandable Consensus Algorithm" (2014).

pub mod batch;
pub mod codec;
pub mod group_commit;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod state_machine;
pub mod tiebreak;

pub use state_machine::Application;

use serde::{Deserialize, Serialize};

/// The Raft group of the `meta` coordination store.
pub const META_GROUP: u64 = 0;

/// A member as Raft membership records it: its name (empty until a member
/// added with `member add` starts and publishes it) and peer URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

impl network::PeerAddress for PeerNode {
    fn peer_address(&self) -> Option<String> {
        self.peer_urls.first().map(|url| url_host_port(url))
    }
}

/// "http://127.0.0.1:2380" -> "127.0.0.1:2380" (a bare host:port passes through).
pub fn url_host_port(url: &str) -> String {
    let without_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    without_scheme.trim_end_matches('/').to_string()
}

/// Timing and snapshot settings of one group.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging
    /// followers catch up from the log rather than a snapshot.
    pub snapshot_catchup_entries: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            // etcd 3.4's defaults (--snapshot-count, and the entries it keeps
            // behind a snapshot). A snapshot encodes the whole in-memory
            // index, so building one is not free.
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
        }
    }
}

/// Run blocking work (an engine write, encoding a snapshot) without holding
/// up the runtime's other tasks: on a multi-threaded runtime they move to
/// another worker first (`block_in_place`); on the current-thread runtime of
/// a simulated host the work runs in place, which keeps the simulation
/// deterministic (its in-memory engine does not block).
pub(crate) fn off_runtime<R>(work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Entries sent per AppendEntries message.
pub const APPEND_ENTRIES_MAX: u64 = 512;
/// Bytes per snapshot chunk on the wire (below the peer message limit).
pub const SNAPSHOT_WIRE_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

impl RaftSettings {
    pub fn openraft_config(&self, cluster_name: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        let config = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            // A slow disk or a long GC pause must not stall replication forever.
            install_snapshot_timeout: (self.election_timeout_ms * 2).max(2_000),
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_count),
            max_in_snapshot_log_to_keep: self.snapshot_catchup_entries,
            snapshot_max_chunk_size: SNAPSHOT_WIRE_CHUNK_BYTES,
            ..Default::default()
        };
        config.validate().map_err(Box::new)
    }
}
