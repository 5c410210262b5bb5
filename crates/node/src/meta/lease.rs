//! Lease expiry: the leader's clock, and the task that revokes what expired.
//!
//! Which leases exist is replicated state (`Mvcc`'s lease records, changed by
//! `LeaseGrant` and `LeaseRevoke` entries). *When* a lease expires is decided
//! by the leader alone, from keep-alives it receives, as in etcd:
//!
//! - Keep-alives go to the leader (followers forward them) and only move the
//!   leader's in-memory deadline; they are not written to the log.
//! - A newly elected leader gives every lease a full TTL from the moment it
//!   took over, so no lease expires early because of a failover (a client
//!   that was keeping it alive gets a full TTL to find the new leader).
//! - An expired lease is revoked through the log (a `LeaseRevoke` entry)
//!   proposed by the leader that decided it, on itself only: the proposal is
//!   never forwarded. A leader cut off from the others (or paused) keeps its
//!   clock running without hearing any keep-alive and finds every lease due;
//!   when it learns of the new leader, a forwarded revoke would delete a
//!   lease the new leader is keeping alive. (The simulator's lease owners
//!   found exactly that: `crates/sim/tests/coordination.rs`,
//!   `deposed_leader_renews_or_revokes_leases`.) Its own proposal, in its old term,
//!   cannot commit once another leader was elected, unless it wins a later
//!   election with that entry still in its log: not handled yet.
//! - Revoking through the log makes the lease's keys disappear on every
//!   replica at the same revision, with delete events for watchers.
//!
//! [`LeaseClock`] is the I/O-free core: it is fed the time and the current
//! lease set and answers which leases are due. The runner around it reads the
//! tokio clock (simulated under turmoil).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::command::MetaCommand;
use super::group::{LeaderCall, MetaGroup};

/// Longest lease TTL accepted, in seconds (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;
/// Most live leases in the store.
pub const LEASES_MAX: usize = 100_000;
/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Most revokes the leader proposes per check (the rest wait for the next).
pub const LEASE_REVOKES_PER_CHECK_MAX: usize = 64;
/// How long the leader waits for one expiry revoke to commit.
pub const LEASE_REVOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest TTL a lease gets, in seconds: shorter requests are raised to
/// it (etcd's rule: 1.5 election timeouts, so a lease survives a failover).
pub fn minimum_ttl_seconds(election_timeout: Duration) -> i64 {
    let millis = election_timeout.as_millis() as i64 * 3 / 2;
    ((millis + 999) / 1000).max(1)
}

/// The leader's view of lease deadlines.
#[derive(Debug, Default)]
pub struct LeaseClock {
    deadlines: BTreeMap<i64, Instant>,
    /// The term these deadlines belong to; a new term starts them afresh.
    term: Option<u64>,
}

impl LeaseClock {
    /// Bring the clock in line with the replicated lease set, as leader of
    /// `term`: on a new term every lease gets a full TTL from `now`; leases
    /// new to the clock get a full TTL; leases gone from the set are dropped.
    pub fn sync(&mut self, term: u64, now: Instant, leases: &[(i64, i64)]) {
        if self.term != Some(term) {
            self.deadlines.clear();
            self.term = Some(term);
        }
        let mut deadlines = BTreeMap::new();
        for (id, ttl) in leases {
            let deadline = self
                .deadlines
                .get(id)
                .copied()
                .unwrap_or_else(|| now + ttl_duration(*ttl));
            deadlines.insert(*id, deadline);
        }
        self.deadlines = deadlines;
    }

    /// Forget everything (this node is no longer the leader).
    pub fn clear(&mut self) {
        self.deadlines.clear();
        self.term = None;
    }

    /// A keep-alive: a full TTL from `now`. Returns the TTL, or `None` if the
    /// lease is unknown (revoked or never granted) or already expired.
    ///
    /// An expired lease is not brought back even though its revoke may not
    /// be applied yet: the expiry task may already have proposed the revoke,
    /// and a keep-alive answered "TTL t" now would promise keys that are
    /// about to be deleted (etcd's lessor also refuses to renew an expired
    /// lease and waits for its revoke). Seen while diagnosing seed 5 of
    /// `crates/sim/tests/coordination.rs`; no seed is known to need it alone.
    pub fn keep_alive(&mut self, id: i64, ttl: i64, now: Instant) -> Option<i64> {
        let deadline = self.deadlines.get_mut(&id)?;
        if *deadline <= now {
            return None;
        }
        *deadline = now + ttl_duration(ttl);
        Some(ttl)
    }

    /// Make sure `id` has a deadline (a lease granted since the last sync gets
    /// a full TTL from `now`).
    pub fn ensure(&mut self, id: i64, ttl: i64, now: Instant) {
        self.deadlines.entry(id).or_insert_with(|| now + ttl_duration(ttl));
    }

    /// Seconds left on `id`, rounded up; `None` if unknown.
    pub fn remaining_seconds(&self, id: i64, now: Instant) -> Option<i64> {
        let deadline = self.deadlines.get(&id)?;
        let left = deadline.saturating_duration_since(now);
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose deadline has passed, oldest deadline first, at most `limit`.
    pub fn expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut due: Vec<(Instant, i64)> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, d)| (*d, *id))
            .collect();
        due.sort();
        due.into_iter().take(limit).map(|(_, id)| id).collect()
    }
}

fn ttl_duration(ttl_seconds: i64) -> Duration {
    Duration::from_secs(ttl_seconds.clamp(0, LEASE_TTL_SECONDS_MAX) as u64)
}

/// Shared between the runner and the request handlers on this node.
pub type SharedLeaseClock = Arc<Mutex<LeaseClock>>;

/// On the leader, revoke expired leases; elsewhere, keep the clock empty.
pub async fn run_expiry(group: Arc<MetaGroup>, clock: SharedLeaseClock, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(LEASE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let due = {
            let (is_leader, term) = {
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.state == openraft::ServerState::Leader, metrics.current_term)
            };
            let mut clock = clock.lock().expect("lease clock lock poisoned");
            if !is_leader {
                clock.clear();
                continue;
            }
            let leases: Vec<(i64, i64)> =
                group.read(|app| app.kv.leases().map(|(id, record)| (id, record.ttl)).collect());
            let now = Instant::now();
            clock.sync(term, now, &leases);
            clock.expired(now, LEASE_REVOKES_PER_CHECK_MAX)
        };
        for id in due {
            // On this node only (see the module doc): `MetaGroup::write`
            // would follow a leader change and revoke on the new leader.
            let revoke = LeaderCall::Command(MetaCommand::LeaseRevoke { id });
            match group
                .execute_on_leader(revoke, Instant::now() + LEASE_REVOKE_TIMEOUT)
                .await
            {
                Ok(_) => tracing::debug!(lease = id, "lease expired and was revoked"),
                Err(error) => tracing::debug!(lease = id, %error, "revoking an expired lease failed; will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_covers_a_failover() {
        assert_eq!(minimum_ttl_seconds(Duration::from_millis(1000)), 2);
        assert_eq!(minimum_ttl_seconds(Duration::from_millis(300)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_extends_and_expiry_follows_deadlines() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.sync(1, start, &[(1, 5), (2, 10)]);
        assert_eq!(clock.expired(start + Duration::from_secs(4), 10), Vec::<i64>::new());
        assert_eq!(clock.expired(start + Duration::from_secs(5), 10), vec![1]);
        assert_eq!(clock.keep_alive(1, 5, start + Duration::from_secs(4)), Some(5));
        assert_eq!(clock.expired(start + Duration::from_secs(8), 10), Vec::<i64>::new());
        assert_eq!(clock.remaining_seconds(1, start + Duration::from_secs(8)), Some(1));
        assert_eq!(clock.expired(start + Duration::from_secs(10), 10), vec![1, 2]);
        assert_eq!(clock.keep_alive(3, 5, start), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_not_renewed() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.sync(1, start, &[(1, 5)]);
        // The expiry task has seen the lease due (and may have proposed its
        // revoke): a late keep-alive must not promise it five more seconds.
        let late = start + Duration::from_secs(5);
        assert_eq!(clock.expired(late, 10), vec![1]);
        assert_eq!(clock.keep_alive(1, 5, late), None);
        assert_eq!(clock.expired(late + Duration::from_millis(1), 10), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_gives_every_lease_a_full_ttl() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.sync(1, start, &[(1, 5)]);
        // Four seconds later a new leader (term 2) takes over: the lease gets
        // five more seconds from then, not one.
        let failover = start + Duration::from_secs(4);
        clock.sync(2, failover, &[(1, 5)]);
        assert_eq!(clock.expired(start + Duration::from_secs(8), 10), Vec::<i64>::new());
        assert_eq!(clock.expired(failover + Duration::from_secs(5), 10), vec![1]);
        // Same term: deadlines are kept; revoked leases are dropped.
        clock.sync(2, failover + Duration::from_secs(1), &[]);
        assert_eq!(clock.remaining_seconds(1, failover), None);
    }
}
