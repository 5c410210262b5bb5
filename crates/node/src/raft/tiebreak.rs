//! Breaking split votes with a fresh random delay for every election.
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts,
//! and checks it on a tick of 1.5 heartbeat intervals. Two candidates whose
//! timeouts round up to the same tick, with ticks in phase (nodes started
//! together, as `zongheng dev` and the simulator start them), campaign at the
//! same instants in every term: each votes for itself and neither wins. With
//! `single-term-leader` a vote is never moved to another candidate of the same
//! term, so nothing breaks the tie (seed 18 of a two-minute campaign: two
//! candidates, 430 terms, no leader for five simulated minutes). The Raft
//! paper and etcd draw a new random timeout for every election; openraft 0.9
//! has no hook for that, so this task does the equivalent from outside.
//!
//! When the node is a candidate with no leader, it waits a delay drawn afresh
//! from `[election_timeout, 2 * election_timeout)`, openraft's own range, and
//! if the node is still a candidate of the same term with no leader, it
//! starts the next election at once; whichever of this delay and openraft's
//! fixed timeout ends first starts the next term. Two tied candidates draw
//! different delays, so sooner or later one asks for votes while the other
//! still waits, and gets them. The delay is never shorter than openraft's
//! range: a candidate that campaigned faster than the others' timeouts would
//! keep resetting them with its higher term and, if its log is behind (so it
//! cannot win), keep everyone from electing (an earlier version of this task
//! drew from half the range and did exactly that). Followers, learners and
//! leaders are left alone: the task never disturbs a working leader.
//!
//! The delay comes from [`SeededRuntime::thread_rng`], so a simulation run
//! replays it.

use std::time::Duration;

use openraft::{AsyncRuntime, Raft, RaftTypeConfig, ServerState};
use rand::Rng;
use tokio::sync::watch;

use super::runtime::SeededRuntime;

/// Re-run elections of `raft` at random instants while it is a candidate
/// without a leader (see the module doc), until `shutdown` turns true or
/// openraft stops.
pub async fn run<C: RaftTypeConfig>(raft: Raft<C>, election_timeout: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    let mut handled_term = None;
    let floor_ms = (election_timeout.as_millis() as u64).max(1);
    let ceiling_ms = floor_ms * 2;
    loop {
        let (state, term, leader) = {
            let now = metrics.borrow_and_update();
            (now.state, now.current_term, now.current_leader.clone())
        };
        if state == ServerState::Candidate && leader.is_none() && handled_term != Some(term) {
            handled_term = Some(term);
            let delay = Duration::from_millis(SeededRuntime::thread_rng().gen_range(floor_ms..ceiling_ms));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let still_tied = {
                let now = metrics.borrow();
                now.state == ServerState::Candidate && now.current_term == term && now.current_leader.is_none()
            };
            if still_tied {
                tracing::debug!(
                    term,
                    delay_ms = delay.as_millis() as u64,
                    "no leader after a split vote: campaigning again"
                );
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
            continue;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
