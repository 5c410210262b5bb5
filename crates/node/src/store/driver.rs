//! The placement driver: on the `meta` leader, decide where partitions
//! should live and start the moves that take them there.
//!
//! Once per [`DRIVER_INTERVAL`], while this node leads `meta`:
//!
//! 1. **Create** the shard map if the store has none yet and this node was
//!    started to create one (`--store-partitions`): once every `meta` voter
//!    has registered (or after [`CREATE_WAIT`]), place P partitions over
//!    the registered nodes ([`zongheng_algo::place`]) and propose the map.
//! 2. **Forget** registered store nodes that are no longer `meta` members
//!    (removal's own clean-up is best effort).
//! 3. **Watch liveness**: every `meta` member answers this leader's Raft
//!    heartbeats, so when each last answered ([`PeerPool::last_answer`]) is
//!    a heartbeat failure detector for free ([`FailureDetector`]). A node
//!    silent for `--store-dead-after-ms`, or no longer a member, is dead: it
//!    leaves the target placement and its replicas are re-created elsewhere.
//!    A newly elected leader counts silence from its election, so it never
//!    condemns a node sooner than the threshold after taking over.
//! 4. **Plan**: the target is `place` over the live, undrained nodes of
//!    non-zero weight. Where that leaves a partition fewer than R replicas
//!    (too few nodes), it keeps the replicas it has, dead and draining ones
//!    included: a replica is removed without a replacement only from a
//!    partition holding more than R (so a drain needs R other nodes, as in
//!    TiKV, and waits for one to join otherwise).
//!    [`zongheng_algo::plan_moves`] picks the moves that
//!    take the current replica sets towards it, repairs first, at most
//!    `--store-moves-max` under way at once. Each becomes a
//!    [`ShardMapCommand::StartMove`] against the partition's epoch; the
//!    partition's leader carries it out (`store::agent`).
//! 5. **Cancel** a move whose target died or is being drained, or that has
//!    not finished within [`MOVE_STALL_TIMEOUT`]; the next plan starts
//!    over from what the partition reports.
//!
//! The driver only ever proposes; everything it reads is `meta`'s applied
//! state, and every proposal names the epoch it was decided at, so a driver
//! acting on a stale view (a deposed leader) is refused, never obeyed.
//!
//! Not done yet: moving leaderships to preferred leaders without moving
//! replicas, and placement by measured load (disk, requests) rather than
//! declared weight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use zongheng_algo::{
    place, plan_moves, DetectorConfig, FailureDetector, Liveness, NodeSpec, PartitionId, PlacementConfig,
};

use super::shard_map::{MoveIntent, ShardMap, ShardMapCommand};
use crate::config::StoreSettings;
use crate::meta::command::MetaCommand;
use crate::meta::MetaGroup;
use crate::raft::network::PeerPool;

/// How often the driver looks at the cluster.
pub const DRIVER_INTERVAL: Duration = Duration::from_millis(500);
/// How long a new store waits for every `meta` voter to register before it
/// is created over those that did.
pub const CREATE_WAIT: Duration = Duration::from_secs(10);
/// A move not finished after this long is cancelled and planned again.
pub const MOVE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Silence after which a node counts as suspect (shown, not acted on).
const SUSPECT_AFTER_MS: u64 = 1_000;

/// What the driver needs from its node.
pub struct DriverContext {
    pub node_id: u64,
    pub meta: Arc<MetaGroup>,
    pub pool: Arc<PeerPool>,
    /// P to create the store with (0: this node never creates one).
    pub partitions: u32,
    pub settings: StoreSettings,
}

/// What the driver knows while it leads, forgotten when it stops leading.
struct Leading {
    term: u64,
    since: Instant,
    detector: FailureDetector<u64>,
    /// When each move under way was first seen, by partition.
    moves_seen: BTreeMap<PartitionId, (u64, MoveIntent, Instant)>,
}

/// Run the driver until `shutdown` (see the module doc).
pub async fn run(context: DriverContext, mut shutdown: watch::Receiver<bool>) {
    let clock_base = Instant::now();
    let mut leading: Option<Leading> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DRIVER_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if !context.meta.is_leader() {
            leading = None;
            continue;
        }
        let term = context.meta.raft.metrics().borrow().current_term;
        let now_ms = millis_since(clock_base, Instant::now());
        if leading.as_ref().is_none_or(|state| state.term != term) {
            leading = Some(Leading {
                term,
                since: Instant::now(),
                detector: FailureDetector::new(
                    DetectorConfig {
                        suspect_after_ms: SUSPECT_AFTER_MS.min(context.settings.dead_after_ms),
                        dead_after_ms: context.settings.dead_after_ms,
                    },
                    now_ms,
                ),
                moves_seen: BTreeMap::new(),
            });
        }
        let state = leading.as_mut().expect("set above");
        step(&context, state, clock_base).await;
    }
}

fn millis_since(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base).as_millis() as u64
}

/// The name a node goes by in placement: its id in hex (names can repeat
/// across a wipe and rejoin; ids cannot).
fn placement_name(id: u64) -> String {
    format!("{id:016x}")
}

fn placement_id(name: &str) -> u64 {
    u64::from_str_radix(name, 16).expect("placement names are ids in hex")
}

async fn step(context: &DriverContext, state: &mut Leading, clock_base: Instant) {
    let map = context.meta.read(|app| app.shard_map.clone());
    let members = context.meta.peer_nodes();
    if !map.is_created() {
        create(context, state, &map, &members).await;
        return;
    }
    // Liveness from the answers to this leader's Raft messages.
    let now_ms = millis_since(clock_base, Instant::now());
    for id in members.keys() {
        if *id == context.node_id {
            state.detector.heard(*id, now_ms);
        } else if let Some(at) = context.pool.last_answer(*id) {
            state.detector.heard(*id, millis_since(clock_base, at));
        }
    }
    let dead = |id: u64| !members.contains_key(&id) || state.detector.liveness(&id, now_ms) == Liveness::Dead;

    // A store node that left the cluster (its removal's clean-up is best
    // effort) is forgotten, so it neither counts nor stays draining.
    for id in map.nodes.keys().filter(|id| !members.contains_key(id)) {
        tracing::info!(
            node = format!("{id:x}"),
            "forgetting a store node that left the cluster"
        );
        if let Err(error) = context.meta.write(MetaCommand::ForgetMember { id: *id }).await {
            tracing::debug!(%error, "forgetting a departed store node");
        }
    }

    // Cancel moves that cannot or did not finish.
    let mut moving = BTreeSet::new();
    state
        .moves_seen
        .retain(|partition, _| map.record(*partition).is_some_and(|record| record.moving.is_some()));
    for (partition, record) in map.records.iter().enumerate() {
        let partition = partition as PartitionId;
        let Some(intent) = record.moving.map(|step| step.intent()) else {
            continue;
        };
        let seen = state
            .moves_seen
            .entry(partition)
            .or_insert((record.epoch, intent, Instant::now()));
        if seen.0 != record.epoch || seen.1 != intent {
            *seen = (record.epoch, intent, Instant::now());
        }
        let target_gone = intent
            .add
            .is_some_and(|add| dead(add) || map.nodes.get(&add).is_none_or(|node| node.draining || node.weight == 0));
        let stalled = seen.2.elapsed() > MOVE_STALL_TIMEOUT;
        // Either way the partition is left alone until the next round, so
        // a cancelled move is not planned again at once.
        moving.insert(partition);
        if target_gone || stalled {
            tracing::info!(partition, ?intent, target_gone, stalled, "cancelling a replica move");
            state.moves_seen.remove(&partition);
            propose(
                context,
                ShardMapCommand::CancelMove {
                    partition,
                    epoch: record.epoch,
                },
            )
            .await;
        }
    }

    let eligible: Vec<NodeSpec> = map
        .nodes
        .iter()
        .filter(|(id, node)| node.weight > 0 && !node.draining && !dead(**id))
        .map(|(id, node)| {
            let spec = NodeSpec::new(placement_name(*id), node.weight);
            match &node.zone {
                Some(zone) => spec.in_zone(zone.clone()),
                None => spec,
            }
        })
        .collect();
    if eligible.is_empty() {
        return;
    }
    let config = PlacementConfig {
        replicas: map.replication as usize,
        ..PlacementConfig::default()
    };
    let mut target = match place(&eligible, map.partitions, &config) {
        Ok(target) => target,
        Err(error) => {
            tracing::warn!(%error, "cannot compute the store's target placement");
            return;
        }
    };
    // Too few eligible nodes for R replicas: keep the replicas a partition
    // has rather than remove them with nothing to replace them (a dead one
    // may come back; a draining one waits for a node to take its place).
    // Going from R voters to fewer is never planned: a joint configuration
    // whose new half has two voters stalls for good if either dies.
    for (set, record) in target.replicas.iter_mut().zip(&map.records) {
        let wanted = (map.replication as usize).min(record.replicas.len());
        let draining = |id: &u64| map.nodes.get(id).is_some_and(|node| node.draining);
        let (staying, leaving): (Vec<u64>, Vec<u64>) = record.nodes().into_iter().partition(|id| !draining(id));
        for id in staying.into_iter().chain(leaving) {
            if set.len() >= wanted {
                break;
            }
            let name = placement_name(id);
            if !set.contains(&name) {
                set.push(name);
            }
        }
    }
    let current: Vec<Vec<String>> = map
        .records
        .iter()
        .map(|record| record.nodes().into_iter().map(placement_name).collect())
        .collect();
    let live: BTreeSet<String> = map
        .records
        .iter()
        .flat_map(|record| record.nodes())
        .chain(map.nodes.keys().copied())
        .filter(|id| !dead(*id))
        .map(placement_name)
        .collect();
    let plan = plan_moves(
        &current,
        &target.replicas,
        &live,
        &moving,
        context.settings.moves_max as usize,
    );
    if !plan.stuck.is_empty() {
        tracing::warn!(partitions = ?plan.stuck, "partitions without a live majority cannot be repaired");
    }
    for step in plan.moves {
        let record = &map.records[step.partition as usize];
        let intent = MoveIntent {
            add: step.add.as_deref().map(placement_id),
            remove: step.remove.as_deref().map(placement_id),
        };
        tracing::info!(
            partition = step.partition,
            ?intent,
            epoch = record.epoch,
            "starting a replica move"
        );
        propose(
            context,
            ShardMapCommand::StartMove {
                partition: step.partition,
                epoch: record.epoch,
                intent,
            },
        )
        .await;
    }
}

/// Step 1 of the module doc.
async fn create(
    context: &DriverContext,
    state: &Leading,
    map: &ShardMap,
    members: &BTreeMap<u64, crate::raft::PeerNode>,
) {
    if context.partitions == 0 {
        return;
    }
    let voters = context.meta.voter_ids();
    let all_registered = voters.iter().all(|voter| map.nodes.contains_key(voter));
    if !all_registered && state.since.elapsed() < CREATE_WAIT {
        return;
    }
    let nodes: Vec<NodeSpec> = map
        .nodes
        .iter()
        .filter(|(id, node)| node.weight > 0 && members.contains_key(id))
        .map(|(id, node)| {
            let spec = NodeSpec::new(placement_name(*id), node.weight);
            match &node.zone {
                Some(zone) => spec.in_zone(zone.clone()),
                None => spec,
            }
        })
        .collect();
    if nodes.is_empty() {
        return;
    }
    let config = PlacementConfig {
        replicas: context.settings.replicas as usize,
        ..PlacementConfig::default()
    };
    let placement = match place(&nodes, context.partitions, &config) {
        Ok(placement) => placement,
        Err(error) => {
            tracing::warn!(%error, "cannot place the store's partitions");
            return;
        }
    };
    let replicas: Vec<Vec<u64>> = placement
        .replicas
        .iter()
        .map(|set| set.iter().map(|name| placement_id(name)).collect())
        .collect();
    tracing::info!(
        partitions = context.partitions,
        nodes = nodes.len(),
        "creating the data store"
    );
    propose(
        context,
        ShardMapCommand::Create {
            partitions: context.partitions,
            replication: context.settings.replicas,
            replicas,
        },
    )
    .await;
}

async fn propose(context: &DriverContext, command: ShardMapCommand) {
    if let Err(error) = context.meta.write(MetaCommand::Store(command)).await {
        tracing::debug!(%error, "a placement proposal was not applied");
    }
}
