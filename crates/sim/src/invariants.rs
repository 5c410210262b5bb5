//! Invariant checkers that watch a run from the inside, and the record of
//! what they found.
//!
//! A [`Monitor`] is shared by every simulated host of a run. Each node's
//! Raft metrics are fed to it as they change ([`Monitor::observe`], called
//! by the host's watcher task in `cluster`), and it checks, while the run
//! goes on:
//!
//! - **one leader per term**: no two nodes are ever leader in the same term;
//! - **committed entries never change**: every log entry a node has applied
//!   (so committed) is read back from that node's disk and hashed; the first
//!   hash seen for an index is kept, and any later node, or the same node
//!   after a restart, that applies a different entry at that index is a
//!   violation. This compares nodes with each other and over time;
//! - **the log store acknowledges only synced data**: the audited disk
//!   ([`crate::disk::AuditedEngine`]) reports Raft log appends, truncations
//!   and votes written without an fsync.
//!
//! The checks that need a quiescent cluster (identical state machines,
//! acknowledged writes readable, per-client revision order) run at the end
//! of a run (`run::final_checks`) and report into the same list of
//! [`Violation`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use zongheng::raft::{PeerNode, META_GROUP};
use zongheng_storage::wal::Wal;

/// Log entries read from a disk per scan when checking committed entries.
const COMMITTED_SCAN_ENTRIES: usize = 1_024;

/// Which invariant a [`Violation`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Invariant {
    /// Two nodes were leader in the same term.
    OneLeaderPerTerm,
    /// A committed log entry differs between nodes or over time.
    CommittedEntryChanged,
    /// A Raft log append, truncation or vote was written without an fsync.
    UnsyncedRaftWrite,
    /// After healing, the replicas' state machines differ at one applied index.
    ReplicasDiverged,
    /// After healing, a key's value is not explained by the writes clients
    /// made (an acknowledged write is lost, or a failed one took effect).
    AcknowledgedWriteLost,
    /// A client saw the revision go backwards (or a write not move it).
    RevisionOrder,
    /// A read at or above the compaction revision was refused as compacted.
    CompactedTooMuch,
    /// A node or the simulation itself failed (a panic, an error from a host).
    HostFailed,
    /// After every fault healed, the cluster did not elect a leader, serve
    /// requests or converge within the allowed time.
    NoRecovery,
    /// The linearizability checker rejected the history.
    NotLinearizable,
    /// A lock was granted out of turn, tokens did not increase, or the
    /// guarded register accepted a stale holder's write (`coordination`).
    LockSafety,
    /// A proclamation or an observation disagrees with the election's
    /// owner in the history, or an observer went back in revision.
    ElectionSafety,
    /// A watcher's events differ from the history's for its range, or an
    /// acknowledged write is missing from the history.
    WatchCompleteness,
    /// A lease's keys vanished while it was kept alive, or an abandoned
    /// lease did not expire.
    LeaseSafety,
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Invariant::OneLeaderPerTerm => "one leader per term",
            Invariant::CommittedEntryChanged => "committed entries never change",
            Invariant::UnsyncedRaftWrite => "raft writes are fsynced before acknowledgement",
            Invariant::ReplicasDiverged => "replicas identical once quiescent",
            Invariant::AcknowledgedWriteLost => "acknowledged writes readable after healing",
            Invariant::RevisionOrder => "revisions increase per client",
            Invariant::CompactedTooMuch => "compaction keeps revisions at or above it",
            Invariant::HostFailed => "hosts do not fail",
            Invariant::NoRecovery => "the cluster recovers after healing",
            Invariant::NotLinearizable => "linearizable history",
            Invariant::LockSafety => "lock safety",
            Invariant::ElectionSafety => "election safety",
            Invariant::WatchCompleteness => "watch completeness",
            Invariant::LeaseSafety => "lease safety",
        };
        f.write_str(name)
    }
}

/// One broken invariant, when (simulated time) and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub at_ms: u64,
    pub invariant: Invariant,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} ms] {}: {}", self.at_ms, self.invariant, self.detail)
    }
}

/// A committed entry as first seen.
struct CommittedEntry {
    hash: u64,
    /// The encoded entry, to describe it if another node disagrees.
    bytes: Vec<u8>,
    seen_on: String,
}

#[derive(Default)]
struct MonitorState {
    /// The leader of each term: (node id, host).
    leaders: BTreeMap<u64, (u64, String)>,
    /// Indexes already reported with a differing entry (each reported once).
    changed_entries: BTreeSet<u64>,
    /// Terms that had a second leader (each reported once).
    second_leaders: BTreeSet<u64>,
    /// Every committed entry seen so far, by index.
    committed: BTreeMap<u64, CommittedEntry>,
    /// How many (node, entry) pairs were compared.
    entries_checked: u64,
    violations: Vec<Violation>,
}

/// What a run's invariant checkers found; clones share it.
#[derive(Clone, Default)]
pub struct Monitor {
    state: Arc<Mutex<MonitorState>>,
}

/// Per node lifetime: how far its committed entries have been checked.
#[derive(Debug, Default)]
pub struct NodeProgress {
    checked_up_to: u64,
}

impl Monitor {
    /// Record a violation at the current simulated time.
    pub fn violation(&self, invariant: Invariant, detail: impl Into<String>) {
        let at_ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        self.violation_at(at_ms, invariant, detail);
    }

    /// Record a violation at simulated time `at_ms`.
    pub fn violation_at(&self, at_ms: u64, invariant: Invariant, detail: impl Into<String>) {
        let violation = Violation {
            at_ms,
            invariant,
            detail: detail.into(),
        };
        tracing::warn!(%violation, "invariant violated");
        self.lock().violations.push(violation);
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// How many committed entries were compared (node by node).
    pub fn entries_checked(&self) -> u64 {
        self.lock().entries_checked
    }

    /// How many terms had a leader.
    pub fn terms_with_leader(&self) -> usize {
        self.lock().leaders.len()
    }

    /// How many terms had more than one leader.
    pub fn shared_terms(&self) -> usize {
        self.lock().second_leaders.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        self.state.lock().expect("monitor lock poisoned")
    }

    /// Check node `host`'s latest metrics: its leadership, and every entry
    /// it applied since the last call (read from `engine`, its disk).
    pub fn observe(&self, host: &str, metrics: &RaftMetrics<u64, PeerNode>, wal: &Wal, progress: &mut NodeProgress) {
        let mut state = self.lock();
        if metrics.state == ServerState::Leader {
            let term = metrics.current_term;
            let first = state
                .leaders
                .entry(term)
                .or_insert_with(|| (metrics.id, host.to_string()))
                .clone();
            if first.0 != metrics.id && state.second_leaders.insert(term) {
                let detail = format!(
                    "{host} ({:x}) leads term {term}, which {} ({:x}) led",
                    metrics.id, first.1, first.0
                );
                drop(state);
                self.violation(Invariant::OneLeaderPerTerm, detail);
                state = self.lock();
            }
        }

        let applied = metrics.last_applied.as_ref().map_or(0, |log_id| log_id.index);
        // Entries a snapshot covers may be gone, or (right after a snapshot
        // was installed over a conflicting log) still be the stale ones the
        // install is about to purge: only entries applied from the log count.
        let snapshot = metrics.snapshot.as_ref().map_or(0, |log_id| log_id.index);
        let floor = progress.checked_up_to.max(snapshot);
        if applied <= floor {
            progress.checked_up_to = progress.checked_up_to.max(applied);
            return;
        }
        let mut next = floor + 1;
        while next <= applied {
            let to = applied.min(next + COMMITTED_SCAN_ENTRIES as u64 - 1);
            let entries = match wal.entries(META_GROUP, next, to + 1) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(%error, host, "cannot read the log to check committed entries");
                    break;
                }
            };
            // The log holds a contiguous run: entries[k] is index from + k.
            let from = wal.bounds(META_GROUP).map_or(next, |(first, _)| first.max(next));
            let full = entries.len() == COMMITTED_SCAN_ENTRIES;
            for (offset, bytes) in entries.iter().enumerate() {
                let index = from + offset as u64;
                next = index + 1;
                let hash = fnv1a(bytes);
                state.entries_checked += 1;
                match state.committed.get(&index) {
                    None => {
                        state.committed.insert(
                            index,
                            CommittedEntry {
                                hash,
                                bytes: bytes.clone(),
                                seen_on: host.to_string(),
                            },
                        );
                    }
                    Some(first) if first.hash != hash && !state.changed_entries.contains(&index) => {
                        let detail = format!(
                            "entry {index}: {host} applied {}, {} applied {}",
                            describe_entry(bytes),
                            first.seen_on,
                            describe_entry(&first.bytes)
                        );
                        state.changed_entries.insert(index);
                        drop(state);
                        self.violation(Invariant::CommittedEntryChanged, detail);
                        state = self.lock();
                    }
                    Some(_) => {}
                }
            }
            if !full {
                break;
            }
        }
        progress.checked_up_to = applied;
    }
}

/// An encoded log entry, decoded for a message (with its command).
fn describe_entry(bytes: &[u8]) -> String {
    match zongheng::raft::codec::decode::<openraft::Entry<zongheng::meta::MetaRaftConfig>>(bytes) {
        Ok(entry) => {
            let payload = match &entry.payload {
                openraft::EntryPayload::Normal(command) => format!("{command:?}"),
                openraft::EntryPayload::Blank => "blank".to_string(),
                openraft::EntryPayload::Membership(membership) => format!("membership {membership}"),
            };
            let mut payload: String = payload.chars().take(200).collect();
            if payload.len() == 200 {
                payload.push('…');
            }
            format!("{} {payload}", entry.log_id)
        }
        Err(error) => format!("an undecodable entry ({error})"),
    }
}

/// FNV-1a, 64 bits: stable across runs and platforms (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// How long ago, in whole milliseconds, for messages.
pub fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}
