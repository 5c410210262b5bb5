//! The coordination tier: seeded clients of the lock, election, watch and
//! lease services, run under the seeded nemesis, and the checks that say
//! whether those services kept their promises.
//!
//! ## What runs
//! A coordination run is an ordinary [`crate::run()`] (same cluster, same
//! nemesis schedule, same healing and convergence checks) whose
//! `RunOptions::coordination` is set: instead of the KV clients it starts
//! these, each on its own turmoil host, each drawing its choices from the
//! seed:
//!
//! - **lock clients** (`lock1..`): a session lease kept alive, `Lock` on one
//!   name, the lock key's create revision as the fencing token, then one or
//!   two writes to a guarded register with a `Txn` that applies only if the
//!   stored token is not above theirs, a short hold, `Unlock` ([`lock`]);
//! - **campaigners** (`cand1..`): a session lease, `Campaign`, a few
//!   `Proclaim`s, `Resign`; **observers** (`obs1..`): `Observe`, re-opened on
//!   another node when the stream breaks or goes silent ([`election`]);
//! - **watchers** (`watch1..`): the whole keyspace from revision 1, and two
//!   prefixes from "now"; a watch whose stream breaks or goes silent is
//!   re-created on another node from its last revision + 1; a **writer**
//!   puts and deletes keys of its own ([`watch`]);
//! - **lease owners** (`lease1..`): a lease with three keys, kept alive, the
//!   keys read back over time; and one owner (`leasex`) that is partitioned
//!   away from every node for longer than its TTL and never comes back for
//!   its lease ([`lease`]).
//!
//! ## What is checked
//! After healing, the checker writes a sentinel transaction (revision
//! `R_end`) into every watched range, waits for every watcher to reach it,
//! and reads the authoritative event history: a fresh watch of all keys from
//! revision 1 on every running member (all must agree, and every
//! acknowledged write must be in it). Then ([`check`]):
//!
//! - **lock safety**: each `Lock` answer at revision R names the key that
//!   owns the lock at R in the history (the key under the lock prefix with
//!   the lowest create revision); grants ordered by revision carry strictly
//!   increasing tokens; the register's accepted writes carry non-decreasing
//!   tokens in revision order (no accepted write of an earlier holder after a
//!   later holder's, so no two critical sections interleave in the
//!   register's history); acknowledged writes are in the history and
//!   refused ones are not;
//! - **election safety**: every successful `Proclaim` lands at a revision at
//!   which its key is the election's owner; every `Observe` answer at
//!   revision R equals the owner at R (key, value, create revision), and an
//!   observer's answers never go back in revision, across re-created streams;
//! - **watch completeness**: each watcher's events equal the history's
//!   events for its range from its start revision to `R_end`: same order,
//!   no gaps, no duplicates;
//! - **lease safety**: while a lease owner's last successful keep-alive was
//!   sent less than one TTL ago, a linearizable read of its keys finds them
//!   all (checked as the run goes); the partitioned owner's keys are deleted
//!   (delete events in the history) after healing.
//!
//! Histories record unknown outcomes as unknown: a lock write whose answer
//! was lost may or may not be in the register; the checks use only what the
//! history proves.
//!
//! ## Replay
//! Two runs of a seed in one process are identical (the record's digest,
//! traces, Raft trace and violations; `tests/coordination.rs`), and so were
//! two processes of the `sim` binary on seed 5. But two processes of the
//! test binary running seed 2 alone once differed slightly (the sentinel at
//! revision 856 in one, 858 in the other), which the KV workload does not
//! do; the cause is not found yet, so a failing seed's replay in a new
//! process may not fail the same way. Its saved report keeps what failed.
//!
//! ## What it does not do yet
//! No compaction in this workload (so a watch from revision 1 is always
//! answerable; the compacted-watch path is covered by node tests), no
//! `RequestProgress` semantics checked (it is only used to notice a dead
//! stream), and no linearizability check of the coordination operations
//! themselves: the checks above are invariants over the history, not a
//! model of the lock and election services.

pub mod check;
pub mod election;
pub mod events;
pub mod lease;
pub mod lock;
pub mod rpc;
pub mod watch;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cluster::Nemesis;
use crate::invariants::Monitor;
use crate::run::RunOptions;
pub use events::EventRecord;

/// The lock the lock clients share; their keys are `lock/L/<lease hex>`.
pub const LOCK_NAME: &str = "lock/L";
/// The guarded register the lock holders write.
pub const REGISTER_KEY: &str = "reg/fenced";
/// The election the campaigners share.
pub const ELECTION_NAME: &str = "elect/E";
/// Lease owners' keys are `lease/<host>/g<generation>/k<i>`.
pub const LEASE_PREFIX: &str = "lease/";
/// The writer's keys.
pub const WRITER_PREFIX: &str = "w/";
/// Keys the final sentinel transaction writes, one in each watched range.
pub const SENTINEL_KEYS: [&str; 3] = ["w/~end", "lease/~end", "elect/~end"];
/// Keys attached to each lease of a lease owner.
pub const KEYS_PER_LEASE: usize = 3;

/// What the coordination clients do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinationOptions {
    pub lock_clients: usize,
    pub campaigners: usize,
    pub observers: usize,
    pub lease_owners: usize,
    /// TTL of the lock clients' and campaigners' session leases.
    pub session_ttl_seconds: i64,
    /// TTL of the lease owners' leases.
    pub lease_ttl_seconds: i64,
    /// When the expiring owner is partitioned from every node.
    pub isolate_owner_at: Duration,
    /// How long it stays partitioned (longer than its TTL).
    pub isolation: Duration,
    /// Deadline of one ordinary request.
    pub request_timeout: Duration,
    /// Deadline of a `Lock` or `Campaign` call (they wait for their turn).
    pub wait_timeout: Duration,
    /// Longest pause of a client between two steps.
    pub think_time_max: Duration,
    /// One lock grant in this many is followed by a stall of the holder
    /// longer than its session TTL (0: never; see [`lock`]).
    #[serde(default)]
    pub lock_stall_one_in: u32,
}

impl Default for CoordinationOptions {
    fn default() -> Self {
        Self {
            lock_clients: 3,
            campaigners: 3,
            observers: 2,
            lease_owners: 2,
            session_ttl_seconds: 3,
            lease_ttl_seconds: 3,
            isolate_owner_at: Duration::from_secs(8),
            isolation: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            wait_timeout: Duration::from_secs(10),
            think_time_max: Duration::from_millis(100),
            lock_stall_one_in: 8,
        }
    }
}

/// The options of a coordination run: the usual cluster and nemesis (every
/// fault kind), no KV clients.
pub fn run_options(seed: u64, fault_seconds: u64) -> RunOptions {
    let mut options = RunOptions::new(seed, fault_seconds);
    options.workload.clients = 0;
    options.workload.keys = 0;
    options.coordination = Some(CoordinationOptions::default());
    options
}

/// The watchers: (name, key, range_end, start at revision 1 or "now").
pub fn watcher_specs() -> Vec<(String, Vec<u8>, Vec<u8>, bool)> {
    vec![
        ("watch1".into(), vec![0], vec![0], true),
        ("watch2".into(), b"elect/".to_vec(), b"elect0".to_vec(), false),
        ("watch3".into(), b"lease/".to_vec(), b"lease0".to_vec(), false),
    ]
}

/// The turmoil hosts of a coordination run's clients.
pub fn client_hosts(options: &CoordinationOptions) -> Vec<String> {
    let mut hosts = Vec::new();
    hosts.extend((1..=options.lock_clients).map(|index| format!("lock{index}")));
    hosts.extend((1..=options.campaigners).map(|index| format!("cand{index}")));
    hosts.extend((1..=options.observers).map(|index| format!("obs{index}")));
    hosts.extend(watcher_specs().into_iter().map(|(name, ..)| name));
    hosts.push("writer1".into());
    hosts.extend((1..=options.lease_owners).map(|index| format!("lease{index}")));
    hosts.push(lease::EXPIRING_OWNER.into());
    hosts
}

/// Counts of what the coordination clients did and what the checks covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinationStats {
    pub lock_grants: u64,
    pub register_writes_accepted: u64,
    pub register_writes_fenced: u64,
    pub register_writes_unknown: u64,
    pub campaigns_won: u64,
    pub proclaims: u64,
    pub observations: u64,
    pub observe_streams: u64,
    pub watch_events: u64,
    pub watch_recreations: u64,
    pub keepalives_ok: u64,
    pub lease_reads: u64,
    pub leases_lost: u64,
    pub sessions_lost: u64,
    pub history_events: u64,
    pub end_revision: i64,
    pub failed_requests: u64,
    pub unknown_requests: u64,
    /// A hash of everything recorded (every grant, write, observation and
    /// watch event, and the history), so a replay can be compared whole.
    pub record_digest: u64,
}

impl CoordinationStats {
    /// Client operations that were checked (requests and stream answers).
    pub fn operations(&self) -> u64 {
        self.lock_grants
            + self.register_writes_accepted
            + self.register_writes_fenced
            + self.register_writes_unknown
            + self.campaigns_won
            + self.proclaims
            + self.observations
            + self.watch_events
            + self.keepalives_ok
            + self.lease_reads
    }
}

impl std::fmt::Display for CoordinationStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lock grants, {} register writes accepted ({} fenced, {} unknown), {} campaigns won, {} proclaims, {} observations ({} streams), {} watch events ({} re-creations), {} keep-alives, {} lease reads ({} leases lost), {} history events to revision {}",
            self.lock_grants,
            self.register_writes_accepted,
            self.register_writes_fenced,
            self.register_writes_unknown,
            self.campaigns_won,
            self.proclaims,
            self.observations,
            self.observe_streams,
            self.watch_events,
            self.watch_recreations,
            self.keepalives_ok,
            self.lease_reads,
            self.leases_lost,
            self.history_events,
            self.end_revision,
        )
    }
}

/// A `Lock` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGrant {
    pub client: String,
    pub key: Vec<u8>,
    /// The lock key's create revision, read after the grant.
    pub token: i64,
    /// The answer's header revision (the revision the turn was confirmed at).
    pub revision: i64,
    pub at_ms: u64,
}

/// How a write ended, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Applied at this revision.
    Applied { revision: i64 },
    /// A txn whose compare failed (answered at this revision): not applied.
    NotApplied { revision: i64 },
    /// Refused: not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// A fenced write to the guarded register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWrite {
    pub client: String,
    pub token: i64,
    pub value: Vec<u8>,
    pub outcome: WriteOutcome,
}

/// An acknowledged plain write (put or delete) that must be in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedWrite {
    pub client: String,
    pub key: Vec<u8>,
    pub revision: i64,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A successful `Proclaim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proclamation {
    pub client: String,
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub value: Vec<u8>,
    pub revision: i64,
}

/// One `Observe` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub observer: String,
    pub node: String,
    /// Which of the observer's streams (they are re-opened).
    pub stream: u64,
    pub revision: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
}

/// What one watcher received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherResult {
    pub name: String,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub events: Vec<EventRecord>,
    pub recreations: u64,
    /// Why it stopped before the sentinel, if it did.
    pub incomplete: Option<String>,
}

/// The lease of the owner partitioned away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringLease {
    pub lease: i64,
    pub keys: Vec<Vec<u8>>,
    /// Revision of the last acknowledged put of its keys.
    pub created_revision: i64,
    pub isolated_at_ms: u64,
}

/// Everything the coordination clients recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CoordinationRecord {
    pub stats: CoordinationStats,
    pub lock_grants: Vec<LockGrant>,
    pub register_writes: Vec<RegisterWrite>,
    pub acked_writes: Vec<AckedWrite>,
    pub proclamations: Vec<Proclamation>,
    pub observations: Vec<Observation>,
    pub watchers: Vec<WatcherResult>,
    pub expiring: Option<ExpiringLease>,
}

#[derive(Default)]
struct State {
    record: CoordinationRecord,
    /// The sentinel's revision, once written: watchers stop there.
    end_revision: Option<i64>,
    /// Watchers still running.
    active_watchers: usize,
    /// Non-watcher clients still running.
    active_clients: usize,
}

/// The record the coordination clients write into; clones share it.
#[derive(Clone, Default)]
pub struct Shared {
    state: Arc<Mutex<State>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("coordination state poisoned")
    }

    pub fn update(&self, change: impl FnOnce(&mut CoordinationRecord)) {
        change(&mut self.lock().record);
    }

    pub fn stats(&self, change: impl FnOnce(&mut CoordinationStats)) {
        change(&mut self.lock().record.stats);
    }

    pub fn record(&self) -> CoordinationRecord {
        self.lock().record.clone()
    }

    pub fn end_revision(&self) -> Option<i64> {
        self.lock().end_revision
    }

    pub fn set_end_revision(&self, revision: i64) {
        self.lock().end_revision = Some(revision);
    }

    pub fn active_watchers(&self) -> usize {
        self.lock().active_watchers
    }

    pub fn active_clients(&self) -> usize {
        self.lock().active_clients
    }

    fn enter(&self, watcher: bool) {
        let mut state = self.lock();
        if watcher {
            state.active_watchers += 1;
        } else {
            state.active_clients += 1;
        }
    }

    fn leave(&self, watcher: bool) {
        let mut state = self.lock();
        if watcher {
            state.active_watchers -= 1;
        } else {
            state.active_clients -= 1;
        }
    }

    /// Count a failed request by what it proves.
    pub fn count_failure(&self, error: &crate::client::RequestError) {
        self.stats(|stats| match error {
            crate::client::RequestError::Refused { .. } => stats.failed_requests += 1,
            crate::client::RequestError::Unknown { .. } => stats.unknown_requests += 1,
        });
    }
}

/// What every coordination client is handed.
#[derive(Clone)]
pub struct ClientContext {
    pub host: String,
    pub seed: u64,
    pub nodes: Vec<String>,
    pub options: CoordinationOptions,
    pub shared: Shared,
    pub monitor: Monitor,
    pub nemesis: Nemesis,
    /// Clients stop starting operations at this simulated time.
    pub stop_at: Duration,
}

impl ClientContext {
    /// The client's own generator, from the seed and its host name.
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ fnv1a(self.host.as_bytes()))
    }
}

/// FNV-1a of `bytes` (a stable hash for digests of records).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in bytes {
        hash = (hash ^ *byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Simulated time since the simulation began.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

pub fn now_ms() -> u64 {
    now().as_millis() as u64
}

/// Sleep up to `max`, drawn from `rng`.
pub async fn think(rng: &mut StdRng, max: Duration) {
    let max_ms = max.as_millis() as u64;
    if max_ms > 0 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=max_ms))).await;
    }
}

/// Run client `host` of a coordination run to its end.
pub async fn run_client(context: ClientContext) {
    let host = context.host.clone();
    let watcher = watcher_specs().iter().any(|(name, ..)| *name == host);
    context.shared.enter(watcher);
    if host.starts_with("lock") {
        lock::run_lock_client(&context).await;
    } else if host.starts_with("cand") {
        election::run_campaigner(&context).await;
    } else if host.starts_with("obs") {
        election::run_observer(&context).await;
    } else if watcher {
        watch::run_watcher(&context).await;
    } else if host.starts_with("writer") {
        watch::run_writer(&context).await;
    } else if host == lease::EXPIRING_OWNER {
        lease::run_expiring_owner(&context).await;
    } else if host.starts_with("lease") {
        lease::run_owner(&context).await;
    } else {
        panic!("no coordination client is called {host}");
    }
    context.shared.leave(watcher);
}
