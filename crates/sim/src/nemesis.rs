//! The seeded nemesis: a schedule of faults drawn from the run's seed, and
//! the code that applies it to a running cluster.
//!
//! ## The schedule
//! [`Schedule::generate`] draws two lanes of faults from the seed, each a
//! sequence of episodes with a start, a bounded duration and a quiet gap
//! after it. Lanes run concurrently, so a crash can fall inside a partition:
//!
//! - the **network lane**: partitions (a random minority cut off, the leader
//!   isolated, a bridge: two halves that cannot talk but both reach one node
//!   in the middle), message loss (turmoil's per-link `fail_rate`), latency
//!   spikes (turmoil's `set_link_latency`), and pauses;
//! - the **node lane**: crash and restart of one node, of the leader or of
//!   every node; a wiped data dir followed by removal of the old member and
//!   re-adding the host as a new member; and a membership change under load
//!   (a spare host added as a learner, promoted, then a random voter
//!   removed, so the voter count stays).
//!
//! Every episode ends before [`NemesisOptions::faults_until`]; then
//! [`heal_all`] repairs every link and restarts every member, so the checks
//! at the end look at a quiescent cluster.
//!
//! ## How each fault is applied
//! - Partitions: `turmoil::partition` between the two sides, both ways, then
//!   `turmoil::repair` of exactly those pairs. A segment dropped by a
//!   partition is never retransmitted by turmoil's TCP, so a connection that
//!   carried data through the partition stalls until the HTTP/2 keepalive
//!   replaces it (up to 15 s): recovery after healing is pessimistic.
//! - Message loss: `Sim::set_link_fail_rate` on every link between nodes.
//!   turmoil drops the message and everything in flight on that link, which
//!   on TCP stalls the connection as above: a few percent is a lot.
//! - Latency spikes: `Sim::set_link_latency` on every link of one node (or
//!   between all nodes), then back to the default range.
//! - Pauses: turmoil cannot stop one host's clock (every host is ticked each
//!   step), so a pause is approximated by holding every link of the node
//!   (`turmoil::hold`: messages queue, undelivered) and releasing them at the
//!   end (all queued messages arrive at once). The node's own timers keep
//!   running, unlike a real process pause: it can time out its leadership or
//!   start elections no one hears, as a node behind a stalled NIC would.
//! - Crashes: the host's software stops (its runtime is dropped) and its
//!   disk loses unsynced writes; a restart runs it again from its disk.
//! - Wipe and re-add: crash, empty disk, `member remove` of the old id
//!   through any live node, `member add` of the host's peer URL, then start
//!   it with `--initial-cluster-state existing` (it discovers its new id by
//!   its peer URL, as etcd does).
//! - Membership change: `member add --learner` of a spare, start it as
//!   `existing`, `member promote` once it has caught up, later `member
//!   remove` of a random voter (possibly the leader, possibly the new one)
//!   and a wipe of that host, which becomes a spare.
//!
//! Membership calls are retried until they succeed or their deadline passes;
//! a call with an unknown outcome is retried too, and "already done" answers
//! (member not found on remove, peer URL exists on add, not a learner on
//! promote) count as success.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::client::{RequestError, SimClient};
use crate::cluster::{Nemesis, PEER_PORT};
use crate::invariants::{Invariant, Monitor};
use crate::trace::Trace;

/// How long a membership call is retried before the nemesis gives up.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two attempts of a membership call.
const MEMBERSHIP_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// A membership call's own deadline (the node's is 5 s).
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// A fault of the network lane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NetworkFault {
    /// A random minority of the members cut off from the rest.
    PartitionMinority,
    /// The current leader cut off from every other node.
    IsolateLeader,
    /// Two halves that cannot reach each other, and one member that reaches both.
    Bridge,
    /// Each message between nodes dropped with this probability.
    MessageLoss { rate: f64 },
    /// Every link of one node (or, with `all`, between all nodes) at this latency.
    LatencySpike { latency_ms: u64, all: bool },
    /// One node's links held (its messages queued) until the end of the episode.
    Pause,
}

/// A fault of the node lane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeFault {
    /// One random member crashes, and restarts after the episode.
    Crash,
    /// The leader crashes, and restarts after the episode.
    CrashLeader,
    /// Every member crashes, and all restart after the episode.
    CrashAll,
    /// One member's data dir is wiped; it is removed and re-added as a new member.
    WipeAndRejoin,
    /// A spare is added as a learner and promoted; then a random voter is removed.
    ReplaceVoter,
}

/// One episode: a fault from `at` for `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode<F> {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub fault: F,
}

/// Which faults the nemesis may draw, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NemesisOptions {
    /// The first fault starts after this (the first election and some load).
    pub quiet_start: Duration,
    /// Every fault has ended by this simulated time.
    pub faults_until: Duration,
    pub partitions: bool,
    pub message_loss: bool,
    pub latency: bool,
    pub pauses: bool,
    pub crashes: bool,
    pub wipes: bool,
    pub membership: bool,
    /// Longest network fault.
    pub network_fault_max: Duration,
    /// Longest time a crashed node stays down.
    pub down_max: Duration,
    /// Longest quiet gap between two episodes of a lane.
    pub gap_max: Duration,
}

impl NemesisOptions {
    /// Every fault enabled, faults between 3 s and `faults_until`.
    pub fn all(faults_until: Duration) -> Self {
        Self {
            quiet_start: Duration::from_secs(3),
            faults_until,
            partitions: true,
            message_loss: true,
            latency: true,
            pauses: true,
            crashes: true,
            wipes: true,
            membership: true,
            network_fault_max: Duration::from_secs(15),
            down_max: Duration::from_secs(10),
            gap_max: Duration::from_secs(8),
        }
    }

    /// No faults at all (a healthy run).
    pub fn none(faults_until: Duration) -> Self {
        Self {
            partitions: false,
            message_loss: false,
            latency: false,
            pauses: false,
            crashes: false,
            wipes: false,
            membership: false,
            ..Self::all(faults_until)
        }
    }
}

/// The two lanes of faults of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub network: Vec<Episode<NetworkFault>>,
    pub nodes: Vec<Episode<NodeFault>>,
}

/// Draws the parameters of one kind of network fault.
type DrawNetworkFault = fn(&mut StdRng) -> NetworkFault;

fn millis_between(rng: &mut StdRng, low: Duration, high: Duration) -> u64 {
    let low = low.as_millis() as u64;
    let high = (high.as_millis() as u64).max(low);
    rng.gen_range(low..=high)
}

impl Schedule {
    /// Draw the schedule of a run from its seed.
    pub fn generate(seed: u64, options: &NemesisOptions) -> Self {
        // A stream of its own, so adding a client does not change the faults.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
        let mut network_kinds: Vec<(u32, DrawNetworkFault)> = Vec::new();
        if options.partitions {
            network_kinds.push((3, |_| NetworkFault::PartitionMinority));
            network_kinds.push((3, |_| NetworkFault::IsolateLeader));
            network_kinds.push((2, |_| NetworkFault::Bridge));
        }
        if options.message_loss {
            network_kinds.push((2, |rng| NetworkFault::MessageLoss {
                rate: [0.002, 0.01, 0.03][rng.gen_range(0..3)],
            }));
        }
        if options.latency {
            network_kinds.push((2, |rng| NetworkFault::LatencySpike {
                latency_ms: [50, 200, 600, 1_500][rng.gen_range(0..4)],
                all: rng.gen_bool(0.3),
            }));
        }
        if options.pauses {
            network_kinds.push((2, |_| NetworkFault::Pause));
        }
        let mut node_kinds: Vec<(u32, NodeFault)> = Vec::new();
        if options.crashes {
            node_kinds.push((4, NodeFault::Crash));
            node_kinds.push((3, NodeFault::CrashLeader));
            node_kinds.push((1, NodeFault::CrashAll));
        }
        if options.wipes {
            node_kinds.push((2, NodeFault::WipeAndRejoin));
        }
        if options.membership {
            node_kinds.push((2, NodeFault::ReplaceVoter));
        }

        let start = options.quiet_start.as_millis() as u64;
        let end = options.faults_until.as_millis() as u64;
        let gap_max = options.gap_max.max(Duration::from_millis(500));
        let mut network = Vec::new();
        if !network_kinds.is_empty() {
            let total: u32 = network_kinds.iter().map(|(weight, _)| weight).sum();
            let mut at = start + millis_between(&mut rng, Duration::ZERO, gap_max);
            loop {
                let mut draw = rng.gen_range(0..total);
                let make = network_kinds
                    .iter()
                    .find(|(weight, _)| {
                        let hit = draw < *weight;
                        draw = draw.saturating_sub(*weight);
                        hit
                    })
                    .expect("the draw is below the total")
                    .1;
                let fault = make(&mut rng);
                let duration = millis_between(&mut rng, Duration::from_millis(500), options.network_fault_max);
                if at + duration > end {
                    break;
                }
                network.push(Episode {
                    at_ms: at,
                    duration_ms: duration,
                    fault,
                });
                at += duration + millis_between(&mut rng, Duration::from_millis(500), gap_max);
            }
        }
        let mut nodes = Vec::new();
        if !node_kinds.is_empty() {
            let total: u32 = node_kinds.iter().map(|(weight, _)| weight).sum();
            let mut at = start + millis_between(&mut rng, Duration::ZERO, gap_max);
            loop {
                let mut draw = rng.gen_range(0..total);
                let fault = node_kinds
                    .iter()
                    .find(|(weight, _)| {
                        let hit = draw < *weight;
                        draw = draw.saturating_sub(*weight);
                        hit
                    })
                    .expect("the draw is below the total")
                    .1
                    .clone();
                // Membership episodes are given time for their calls; the
                // duration of a crash is how long the node stays down.
                let duration = match fault {
                    NodeFault::WipeAndRejoin | NodeFault::ReplaceVoter => {
                        millis_between(&mut rng, Duration::from_secs(2), Duration::from_secs(10))
                    }
                    // Half the crashes are a quick process restart (a
                    // supervisor bringing it back before anyone times out),
                    // half a longer outage.
                    _ if rng.gen_bool(0.5) => {
                        millis_between(&mut rng, Duration::from_millis(1), Duration::from_millis(200))
                    }
                    _ => millis_between(&mut rng, Duration::from_millis(200), options.down_max),
                };
                if at + duration > end {
                    break;
                }
                nodes.push(Episode {
                    at_ms: at,
                    duration_ms: duration,
                    fault,
                });
                at += duration + millis_between(&mut rng, Duration::from_millis(500), gap_max);
            }
        }
        Self { network, nodes }
    }
}

/// Everything a lane needs to apply its faults.
#[derive(Clone)]
pub struct LaneContext {
    pub nemesis: Nemesis,
    pub trace: Trace,
    pub monitor: Monitor,
    pub seed: u64,
    /// Every fault ends by then.
    pub faults_until: Duration,
}

/// When `episode` actually runs: at its time, or as soon as the lane is
/// free if an earlier episode overran (membership calls retry for a while),
/// keeping its duration but never past `faults_until`. `None` when no time
/// is left for it.
async fn begin(episode_at_ms: u64, duration_ms: u64, faults_until: Duration) -> Option<Duration> {
    let start = now().max(Duration::from_millis(episode_at_ms));
    if start >= faults_until {
        return None;
    }
    sleep_until(start).await;
    Some((start + Duration::from_millis(duration_ms)).min(faults_until))
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

async fn sleep_until(at: Duration) {
    let now = now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// The hosts that are members now (set to run, whether up or crashed).
fn member_hosts(nemesis: &Nemesis) -> Vec<String> {
    nemesis
        .hosts()
        .iter()
        .filter(|host| nemesis.is_configured(host))
        .cloned()
        .collect()
}

fn peer_url(host: &str) -> String {
    format!("http://{host}:{PEER_PORT}")
}

/// Apply the network lane's episodes, in order, each at its time.
pub async fn run_network_lane(context: LaneContext, episodes: Vec<Episode<NetworkFault>>) {
    let mut rng = StdRng::seed_from_u64(context.seed ^ 0x6e65_7477_6f72_6b21);
    let nemesis = &context.nemesis;
    for episode in episodes {
        let Some(end) = begin(episode.at_ms, episode.duration_ms, context.faults_until).await else {
            break;
        };
        let all_nodes: Vec<String> = nemesis.hosts().to_vec();
        let mut members = member_hosts(nemesis);
        members.shuffle(&mut rng);
        match episode.fault {
            NetworkFault::PartitionMinority | NetworkFault::IsolateLeader | NetworkFault::Bridge => {
                let (left, right) = match episode.fault {
                    NetworkFault::PartitionMinority => {
                        let minority = rng.gen_range(1..=((members.len().saturating_sub(1)) / 2).max(1));
                        let right = members.split_off(minority.min(members.len()));
                        (members, right)
                    }
                    NetworkFault::IsolateLeader => {
                        let leader = nemesis
                            .leader()
                            .map(|view| view.host)
                            .or_else(|| members.first().cloned())
                            .unwrap_or_else(|| "n1".to_string());
                        let rest: Vec<String> = all_nodes.iter().filter(|host| **host != leader).cloned().collect();
                        (vec![leader], rest)
                    }
                    _ => {
                        // members[0] is the bridge; the rest split in two.
                        let rest = members.split_off(1.min(members.len()));
                        let half = rest.len() / 2;
                        let (left, right) = rest.split_at(half);
                        (left.to_vec(), right.to_vec())
                    }
                };
                context.trace.record(format!(
                    "nemesis: {:?} {left:?} | {right:?} until {} ms",
                    episode.fault,
                    end.as_millis()
                ));
                nemesis.partition(&left, &right);
                sleep_until(end).await;
                nemesis.repair(&left, &right);
                context.trace.record(format!("nemesis: repaired {left:?} | {right:?}"));
            }
            NetworkFault::MessageLoss { rate } => {
                context.trace.record(format!(
                    "nemesis: message loss {rate} between nodes until {} ms",
                    end.as_millis()
                ));
                nemesis.set_fail_rate(&all_nodes, &all_nodes, rate).await;
                sleep_until(end).await;
                nemesis.set_fail_rate(&all_nodes, &all_nodes, 0.0).await;
                context.trace.record("nemesis: message loss over");
            }
            NetworkFault::LatencySpike { latency_ms, all } => {
                let latency = Duration::from_millis(latency_ms);
                let target: Vec<String> = if all {
                    all_nodes.clone()
                } else {
                    members.first().cloned().into_iter().collect()
                };
                // One node's links reach the clients too; between all nodes, only nodes.
                let others: Vec<String> = if all {
                    all_nodes.clone()
                } else {
                    let mut others = all_nodes.clone();
                    others.extend(client_hosts(nemesis));
                    others
                };
                context.trace.record(format!(
                    "nemesis: latency {latency_ms} ms on links of {target:?} until {} ms",
                    end.as_millis()
                ));
                nemesis.set_latency(&target, &others, latency).await;
                sleep_until(end).await;
                nemesis.reset_latency(&target, &others).await;
                context.trace.record("nemesis: latency back to normal");
            }
            NetworkFault::Pause => {
                let Some(target) = members.first().cloned() else {
                    continue;
                };
                let mut others: Vec<String> = all_nodes.iter().filter(|host| **host != target).cloned().collect();
                others.extend(client_hosts(nemesis));
                context.trace.record(format!(
                    "nemesis: pause {target} (links held) until {} ms",
                    end.as_millis()
                ));
                nemesis.hold(&[target.as_str()], &others);
                sleep_until(end).await;
                nemesis.release(&[target.as_str()], &others);
                context
                    .trace
                    .record(format!("nemesis: {target} resumed (links released)"));
            }
        }
    }
}

/// The turmoil hosts of the workload's clients and the nemesis, which a
/// node's link faults also reach.
pub fn client_hosts(nemesis: &Nemesis) -> Vec<String> {
    nemesis.client_hosts().to_vec()
}

/// Apply the node lane's episodes, in order, each at its time.
pub async fn run_node_lane(context: LaneContext, episodes: Vec<Episode<NodeFault>>) {
    let mut rng = StdRng::seed_from_u64(context.seed ^ 0x6e6f_6465_7321_2121);
    let nemesis = &context.nemesis;
    let client = SimClient::new(nemesis.hosts()).with_request_timeout(MEMBERSHIP_CALL_TIMEOUT);
    for episode in episodes {
        let Some(end) = begin(episode.at_ms, episode.duration_ms, context.faults_until).await else {
            break;
        };
        let mut members = member_hosts(nemesis);
        members.shuffle(&mut rng);
        match episode.fault {
            NodeFault::Crash | NodeFault::CrashLeader | NodeFault::CrashAll => {
                let victims: Vec<String> = match episode.fault {
                    NodeFault::Crash => members.first().cloned().into_iter().collect(),
                    NodeFault::CrashLeader => nemesis.leader().map(|view| view.host).into_iter().collect(),
                    _ => members.clone(),
                };
                if victims.is_empty() {
                    continue;
                }
                context.trace.record(format!(
                    "nemesis: {:?} crashes {victims:?} until {} ms",
                    episode.fault,
                    end.as_millis()
                ));
                for victim in &victims {
                    nemesis.crash(victim).await;
                }
                sleep_until(end).await;
                for victim in &victims {
                    // A member removed meanwhile stays down.
                    if nemesis.is_configured(victim) {
                        nemesis.restart(victim).await;
                    }
                }
                context.trace.record(format!("nemesis: restarted {victims:?}"));
            }
            NodeFault::WipeAndRejoin => {
                // Losing a voter's disk is survivable only while the other
                // voters can still form a quorum; the nemesis plays a careful
                // operator and does not wipe otherwise.
                let Some(voters) = stable_voters(nemesis) else {
                    context.trace.record("nemesis: no wipe (membership not stable)");
                    continue;
                };
                let Some(victim) = voters.choose(&mut rng).cloned() else {
                    continue;
                };
                context.trace.record(format!(
                    "nemesis: wipe {} ({:x}) and re-add it",
                    victim.host, victim.node_id
                ));
                nemesis.wipe(&victim.host).await;
                if !remove_member(&context, &client, victim.node_id, &victim.host).await {
                    continue;
                }
                let Some((id, half_added)) = add_member(&context, &client, &victim.host, false).await else {
                    continue;
                };
                nemesis.start(&victim.host, nemesis.join_config(&victim.host)).await;
                // An earlier attempt got as far as adding a learner: now that
                // it runs and catches up, make it the voter it was meant to be.
                if half_added && !promote_member(&context, &client, id, &victim.host).await {
                    continue;
                }
                context
                    .trace
                    .record(format!("nemesis: {} started to rejoin", victim.host));
                sleep_until(end).await;
            }
            NodeFault::ReplaceVoter => {
                if stable_voters(nemesis).is_none() {
                    context
                        .trace
                        .record("nemesis: no membership change (membership not stable)");
                    continue;
                }
                let Some(spare) = nemesis
                    .hosts()
                    .iter()
                    .find(|host| !nemesis.is_configured(host) && !nemesis.is_running(host))
                    .cloned()
                else {
                    continue;
                };
                context
                    .trace
                    .record(format!("nemesis: add {spare} as a learner, promote it, remove a voter"));
                let Some((id, _)) = add_member(&context, &client, &spare, true).await else {
                    continue;
                };
                nemesis.start(&spare, nemesis.join_config(&spare)).await;
                if !promote_member(&context, &client, id, &spare).await {
                    // Take the learner out again rather than leave it half added.
                    if remove_member(&context, &client, id, &spare).await {
                        nemesis.wipe(&spare).await;
                    }
                    continue;
                }
                sleep_until(end).await;
                let voters: Vec<_> = nemesis
                    .views()
                    .into_iter()
                    .filter(|view| view.voters.contains(&view.node_id))
                    .collect();
                let Some(victim) = voters.choose(&mut rng).cloned() else {
                    continue;
                };
                if remove_member(&context, &client, victim.node_id, &victim.host).await {
                    // The operator takes the removed machine away; it may join again later.
                    nemesis.wipe(&victim.host).await;
                }
            }
        }
    }
}

/// The voters, when the membership is stable enough to lose one of them:
/// a leader whose configuration has at least three voters and no learner
/// (no change half done), every voter running, and a data store (if any)
/// with every partition fully replicated ([`Nemesis::store_is_stable`]).
fn stable_voters(nemesis: &Nemesis) -> Option<Vec<crate::cluster::NodeView>> {
    if !nemesis.store_is_stable() {
        return None;
    }
    let leader = nemesis.leader()?;
    if leader.voters.len() < 3 || !leader.learners.is_empty() {
        return None;
    }
    let views = nemesis.views();
    let voters: Vec<_> = views
        .into_iter()
        .filter(|view| leader.voters.contains(&view.node_id))
        .collect();
    (voters.len() == leader.voters.len()).then_some(voters)
}

/// The next host (round robin from `attempt`) that runs a node; sleeps and
/// returns `None` when a whole round found none.
async fn next_running(context: &LaneContext, hosts: &[String], attempt: &mut usize) -> Option<String> {
    for _ in 0..hosts.len() {
        let host = &hosts[*attempt % hosts.len()];
        *attempt += 1;
        if context.nemesis.is_running(host) {
            return Some(host.clone());
        }
    }
    tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
    None
}

/// Whether `error` is a refusal whose message contains `message_part`.
fn is_refusal(error: &RequestError, message_part: &str) -> bool {
    matches!(error, RequestError::Refused { message, .. } if message.contains(message_part))
}

/// `member remove` of `id`, retried through every host until done.
async fn remove_member(context: &LaneContext, client: &SimClient, id: u64, host: &str) -> bool {
    let deadline = now() + MEMBERSHIP_DEADLINE;
    let hosts = context.nemesis.hosts().to_vec();
    let mut attempt = 0usize;
    while now() < deadline {
        let Some(via) = next_running(context, &hosts, &mut attempt).await else {
            continue;
        };
        let via = &via;
        match client.member_remove_on(via, id).await {
            Ok(_) => {
                context
                    .trace
                    .record(format!("nemesis: removed {host} ({id:x}) via {via}"));
                return true;
            }
            Err(error) if is_refusal(&error, "member not found") => {
                context
                    .trace
                    .record(format!("nemesis: {host} ({id:x}) already removed"));
                return true;
            }
            Err(error) => {
                tracing::debug!(%error, via, "member remove failed; retrying");
                tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
            }
        }
    }
    context
        .trace
        .record(format!("nemesis: gave up removing {host} ({id:x})"));
    context.monitor.violation(
        Invariant::NoRecovery,
        format!(
            "member remove of {host} ({id:x}) did not succeed within {} s",
            MEMBERSHIP_DEADLINE.as_secs()
        ),
    );
    false
}

/// `member add` of `host`'s peer URL, retried until done; returns the new
/// id, and whether a voter was asked for but an earlier attempt only got as
/// far as a learner (the caller starts the host, then promotes it: a learner
/// that is not running cannot catch up, so promoting it first never works).
async fn add_member(context: &LaneContext, client: &SimClient, host: &str, learner: bool) -> Option<(u64, bool)> {
    let deadline = now() + MEMBERSHIP_DEADLINE;
    let hosts = context.nemesis.hosts().to_vec();
    let url = peer_url(host);
    let mut attempt = 0usize;
    while now() < deadline {
        let Some(via) = next_running(context, &hosts, &mut attempt).await else {
            continue;
        };
        let via = &via;
        match client.member_add_on(via, vec![url.clone()], learner).await {
            Ok(response) => {
                let id = response.member.map(|member| member.id).unwrap_or(0);
                context.trace.record(format!(
                    "nemesis: added {host} as {id:x} ({}) via {via}",
                    if learner { "learner" } else { "voter" }
                ));
                return Some((id, false));
            }
            Err(error) if is_refusal(&error, "Peer URLs already exists") => {
                // An earlier attempt with an unknown outcome went through, or
                // half through: a voter is added as a learner first, then
                // promoted, and the promotion may not have happened.
                if let Ok(list) = client.member_list_on(via).await {
                    if let Some(member) = list.members.iter().find(|member| member.peer_ur_ls.contains(&url)) {
                        context.trace.record(format!(
                            "nemesis: {host} was already added as {:x} ({})",
                            member.id,
                            if member.is_learner { "learner" } else { "voter" }
                        ));
                        return Some((member.id, member.is_learner && !learner));
                    }
                }
                tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
            }
            Err(error) => {
                tracing::debug!(%error, via, "member add failed; retrying");
                tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
            }
        }
    }
    context.trace.record(format!("nemesis: gave up adding {host}"));
    context.monitor.violation(
        Invariant::NoRecovery,
        format!(
            "member add of {host} did not succeed within {} s",
            MEMBERSHIP_DEADLINE.as_secs()
        ),
    );
    None
}

/// `member promote` of learner `id`, retried until it has caught up.
async fn promote_member(context: &LaneContext, client: &SimClient, id: u64, host: &str) -> bool {
    let deadline = now() + MEMBERSHIP_DEADLINE;
    let hosts = context.nemesis.hosts().to_vec();
    let mut attempt = 0usize;
    while now() < deadline {
        let Some(via) = next_running(context, &hosts, &mut attempt).await else {
            continue;
        };
        let via = &via;
        match client.member_promote_on(via, id).await {
            Ok(_) => {
                context
                    .trace
                    .record(format!("nemesis: promoted {host} ({id:x}) via {via}"));
                return true;
            }
            Err(error) if is_refusal(&error, "can only promote a learner member") && !is_refusal(&error, "in sync") => {
                context
                    .trace
                    .record(format!("nemesis: {host} ({id:x}) was already promoted"));
                return true;
            }
            Err(error) => {
                tracing::debug!(%error, via, "member promote failed; retrying");
                tokio::time::sleep(MEMBERSHIP_RETRY_PAUSE).await;
            }
        }
    }
    context
        .trace
        .record(format!("nemesis: gave up promoting {host} ({id:x})"));
    false
}

/// Undo every fault: repair and release every link, normal latency, no
/// loss, every member running. Returns when all of that is applied.
pub async fn heal_all(nemesis: &Nemesis, trace: &Trace) {
    let mut everyone: Vec<String> = nemesis.hosts().to_vec();
    everyone.extend(client_hosts(nemesis));
    nemesis.repair(&everyone, &everyone);
    nemesis.release(&everyone, &everyone);
    nemesis.set_fail_rate(&everyone, &everyone, 0.0).await;
    nemesis.reset_latency(&everyone, &everyone).await;
    for host in nemesis.hosts() {
        if nemesis.is_configured(host) && !nemesis.is_running(host) {
            nemesis.restart(host).await;
        }
    }
    trace.record("nemesis: healed everything");
}
