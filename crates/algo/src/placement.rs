//! Where a partition's replicas live: the shelf.
//!
//! Input: the live store nodes (name, weight, optional zone), the partition
//! count P and the replication factor R. Output: for every partition an
//! ordered replica set; the first member is the preferred leader.
//!
//! The method is consistent hashing with virtual nodes and bounded loads
//! (see [`ring`](crate::ring)), applied in R rounds:
//!
//! 1. Every node gets `weight × points_per_weight` points on the ring; every
//!    partition a fixed position (a hash of its number).
//! 2. Round 0 picks each partition's preferred leader: the first node
//!    clockwise from the partition whose leader count is below its cap
//!    `⌈(1+ε) · P · weight / total_weight⌉`.
//! 3. Rounds 1..R pick the other replicas the same way, skipping nodes already
//!    in the set, with the cap `⌈(1+ε) · P·R · weight / total_weight⌉` on
//!    replicas held.
//! 4. A node whose zone already holds a replica of the partition is passed
//!    over while the walk can still find a new zone. Failure domains come
//!    before balance: if the only new zone left is full, the cap gives way
//!    (and the imbalance shows in [`Placement::loads`]); if no new zone is
//!    left (fewer zones than R), zones repeat. A node without a zone label is
//!    its own failure domain.
//!
//! So with enough zones no node holds more than ⌈(1+ε)·its fair share⌉, and
//! a node joining or leaving moves few replicas: those whose ring arcs it
//! gains or loses, plus a few pushed along by caps that tightened or relaxed.
//! `tests::movement_report` prints the figures against the theoretical
//! minimum (the joining node's final load, or the leaving node's load).
//!
//! The result depends only on the set of nodes (input order does not matter),
//! their weights and zones, P, R and ε, so every meta leader computes the same
//! target and a seed replays exactly.
//!
//! Not done here: moving leaders without moving replicas (the rebalancer
//! transfers leadership towards the preferred leader), and placement by
//! measured load rather than declared weight.

use crate::partition::PartitionId;
use crate::ring::{bounded_cap, HashRing, RingError};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the hash that gives a partition its ring position.
const PARTITION_POSITION_SEED: u64 = 0x7061_7274_6974_696f; // "partitio"

/// Largest weight a node may declare (weights are relative capacities).
pub const WEIGHT_MAX: u32 = 64;
/// Most replicas of one partition.
pub const REPLICAS_MAX: usize = 7;
/// Largest ε, in parts per million (ε = 10: caps of 11× the mean mean no bound at all).
pub const LOAD_EPSILON_PPM_MAX: u64 = 10_000_000;
/// Most ring points per unit of weight.
pub const POINTS_PER_WEIGHT_MAX: u32 = 1024;

/// A live store node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// Relative capacity, 1..=[`WEIGHT_MAX`]; a node of weight 2 gets twice the replicas.
    pub weight: u32,
    /// Failure domain (rack, zone, data centre); `None` makes the node its own.
    pub zone: Option<String>,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
            zone: None,
        }
    }

    pub fn in_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }
}

/// The knobs of [`place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementConfig {
    /// R: replicas per partition (1..=[`REPLICAS_MAX`]); fewer nodes than R
    /// give every partition all the nodes.
    pub replicas: usize,
    /// ε of bounded loads, in parts per million: no node above ⌈(1+ε)·fair share⌉.
    pub load_epsilon_ppm: u64,
    /// Virtual points per unit of weight (Ketama uses 100-200 per node).
    pub points_per_weight: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            replicas: 3,
            load_epsilon_ppm: 100_000,
            points_per_weight: 128,
        }
    }
}

/// Why no placement could be computed; each says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    NoNodes,
    DuplicateNode(String),
    BadWeight { node: String, weight: u32 },
    BadReplicas(usize),
    BadPartitions(u32),
    BadEpsilon(u64),
    BadPointsPerWeight(u32),
    Ring(RingError),
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoNodes => write!(f, "no live store node to place partitions on; start or undrain a node"),
            Self::DuplicateNode(name) => write!(f, "node {name:?} is listed twice; node names must be unique"),
            Self::BadWeight { node, weight } => {
                write!(
                    f,
                    "node {node:?} has weight {weight}; weights are 1..={WEIGHT_MAX} (drain a node to give it none)"
                )
            }
            Self::BadReplicas(replicas) => write!(f, "replication factor {replicas} is outside 1..={REPLICAS_MAX}"),
            Self::BadPartitions(partitions) => {
                write!(
                    f,
                    "partition count {partitions} is outside 1..={}",
                    crate::PARTITIONS_MAX
                )
            }
            Self::BadEpsilon(ppm) => write!(f, "load epsilon {ppm} ppm is above {LOAD_EPSILON_PPM_MAX}"),
            Self::BadPointsPerWeight(points) => {
                write!(f, "points per weight {points} is outside 1..={POINTS_PER_WEIGHT_MAX}")
            }
            Self::Ring(RingError::TooManyPoints { points }) => write!(
                f,
                "{points} ring points exceed {}; lower the points per weight or the weights",
                crate::ring::RING_POINTS_MAX
            ),
            Self::Ring(RingError::Empty) => write!(f, "the ring has no points"),
        }
    }
}

impl std::error::Error for PlacementError {}

/// Replica sets by partition number; `replicas[p][0]` is p's preferred leader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub replicas: Vec<Vec<String>>,
}

impl Placement {
    /// Replicas held per node, for every node that holds one.
    pub fn loads(&self) -> BTreeMap<&str, usize> {
        let mut loads = BTreeMap::new();
        for set in &self.replicas {
            for node in set {
                *loads.entry(node.as_str()).or_insert(0) += 1;
            }
        }
        loads
    }

    /// Preferred leaderships per node.
    pub fn leaders(&self) -> BTreeMap<&str, usize> {
        let mut leaders = BTreeMap::new();
        for node in self.replicas.iter().filter_map(|set| set.first()) {
            *leaders.entry(node.as_str()).or_insert(0) += 1;
        }
        leaders
    }

    /// Replicas `target` has that `self` does not: the copies a move from
    /// `self` to `target` must create (each is one catch-up by snapshot).
    pub fn replicas_added(&self, target: &Placement) -> usize {
        assert_eq!(
            self.replicas.len(),
            target.replicas.len(),
            "placements of different partition counts"
        );
        self.replicas
            .iter()
            .zip(&target.replicas)
            .map(|(from, to)| to.iter().filter(|node| !from.contains(node)).count())
            .sum()
    }
}

/// A partition's position on the ring.
pub fn partition_position(partition: PartitionId) -> u64 {
    xxh3_64_with_seed(&partition.to_be_bytes(), PARTITION_POSITION_SEED)
}

/// Replica sets for partitions `0..partitions` over `nodes` (see the module doc).
pub fn place(nodes: &[NodeSpec], partitions: u32, config: &PlacementConfig) -> Result<Placement, PlacementError> {
    validate(nodes, partitions, config)?;
    let mut nodes: Vec<&NodeSpec> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let names: Vec<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
    let points: Vec<u32> = nodes
        .iter()
        .map(|node| node.weight * config.points_per_weight)
        .collect();
    let ring = HashRing::new(&names, &points).map_err(PlacementError::Ring)?;

    // Failure domains as small integers: one per zone label, one per unlabelled node.
    let mut zone_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let domains: Vec<usize> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| match &node.zone {
            Some(zone) => {
                let next = nodes.len() + zone_ids.len();
                *zone_ids.entry(zone.as_str()).or_insert(next)
            }
            None => index,
        })
        .collect();

    let replicas = config.replicas.min(nodes.len());
    let partition_count = partitions as usize;
    let total_weight: u64 = nodes.iter().map(|node| u64::from(node.weight)).sum();
    let cap = |items: usize, node: usize| {
        bounded_cap(
            items,
            u64::from(nodes[node].weight),
            total_weight,
            config.load_epsilon_ppm,
        )
    };
    let leader_caps: Vec<usize> = (0..nodes.len()).map(|node| cap(partition_count, node)).collect();
    let weights: Vec<u32> = nodes.iter().map(|node| node.weight).collect();
    let replica_caps = replica_caps(&weights, partitions, replicas, config.load_epsilon_ppm);

    let mut sets: Vec<Vec<usize>> = vec![Vec::with_capacity(replicas); partition_count];
    let mut leader_loads = vec![0usize; nodes.len()];
    let mut replica_loads = vec![0usize; nodes.len()];
    for round in 0..replicas {
        for (partition, set) in sets.iter_mut().enumerate() {
            let (loads, caps) = if round == 0 {
                (&leader_loads, &leader_caps)
            } else {
                (&replica_loads, &replica_caps)
            };
            let candidates: Vec<usize> = ring
                .walk_distinct(partition_position(partition as PartitionId))
                .filter(|node| !set.contains(node))
                .collect();
            let new_domain = |node: &usize| set.iter().all(|member| domains[*member] != domains[*node]);
            let has_room = |node: &usize| loads[*node] < caps[*node];
            let chosen = candidates
                .iter()
                .copied()
                .find(|node| new_domain(node) && has_room(node))
                .or_else(|| candidates.iter().copied().find(new_domain))
                .or_else(|| candidates.iter().copied().find(has_room))
                .unwrap_or(candidates[0]);
            set.push(chosen);
            if round == 0 {
                leader_loads[chosen] += 1;
            }
            replica_loads[chosen] += 1;
        }
    }

    repair_overloads(&mut sets, &mut replica_loads, &replica_caps, &domains);

    Ok(Placement {
        replicas: sets
            .into_iter()
            .map(|set| set.into_iter().map(|node| names[node].to_string()).collect())
            .collect(),
    })
}

/// The greedy walk can end with a node over its cap: the last partitions of
/// a round may find room only on nodes they already hold. Each such replica
/// is exchanged through a second partition: partition `q` gives its replica
/// on `x` to the overloaded partition `p`, and takes one on a node `u` with
/// room instead. Leaders (slot 0) stay put, and no exchange lowers the number
/// of failure domains a set spans. Deterministic: partitions and nodes are
/// tried in number order.
fn repair_overloads(sets: &mut [Vec<usize>], loads: &mut [usize], caps: &[usize], domains: &[usize]) {
    let spread = |set: &[usize]| {
        set.iter()
            .map(|&node| domains[node])
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let replaced = |set: &[usize], slot: usize, node: usize| {
        let mut copy = set.to_vec();
        copy[slot] = node;
        copy
    };
    for p in 0..sets.len() {
        for slot in 1..sets[p].len() {
            let overloaded = sets[p][slot];
            if loads[overloaded] <= caps[overloaded] {
                continue;
            }
            'search: for q in (0..sets.len()).filter(|&q| q != p) {
                for q_slot in 1..sets[q].len() {
                    let x = sets[q][q_slot];
                    if sets[p].contains(&x) || spread(&replaced(&sets[p], slot, x)) < spread(&sets[p]) {
                        continue;
                    }
                    let room = (0..loads.len()).find(|&u| {
                        loads[u] < caps[u]
                            && !sets[q].contains(&u)
                            && spread(&replaced(&sets[q], q_slot, u)) >= spread(&sets[q])
                    });
                    if let Some(u) = room {
                        sets[q][q_slot] = u;
                        sets[p][slot] = x;
                        loads[overloaded] -= 1;
                        loads[u] += 1;
                        break 'search;
                    }
                }
            }
        }
    }
}

/// The most replicas each node (by weight, in the given order) may hold
/// under bounded loads.
///
/// A node holds at most one replica of a partition, so its share is at most
/// P. A node whose weighted share `P·R · weight / total_weight` would exceed
/// P is held at P and the rest is shared among the others by weight
/// (water-filling); each share is then raised by ε and rounded up, and never
/// above P.
pub fn replica_caps(weights: &[u32], partitions: u32, replicas: usize, epsilon_ppm: u64) -> Vec<usize> {
    let partitions = partitions as usize;
    let mut full = vec![false; weights.len()];
    let mut slots = partitions * replicas;
    loop {
        let open_weight: u64 = (0..weights.len())
            .filter(|&i| !full[i])
            .map(|i| u64::from(weights[i]))
            .sum();
        let newly_full: Vec<usize> = (0..weights.len())
            .filter(|&i| {
                !full[i] && slots as u128 * u128::from(weights[i]) >= partitions as u128 * u128::from(open_weight)
            })
            .collect();
        if newly_full.is_empty() || open_weight == 0 {
            return (0..weights.len())
                .map(|i| {
                    if full[i] || open_weight == 0 {
                        partitions
                    } else {
                        bounded_cap(slots, u64::from(weights[i]), open_weight, epsilon_ppm).min(partitions)
                    }
                })
                .collect();
        }
        for i in newly_full {
            full[i] = true;
            slots = slots.saturating_sub(partitions);
        }
    }
}

fn validate(nodes: &[NodeSpec], partitions: u32, config: &PlacementConfig) -> Result<(), PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let mut seen = std::collections::BTreeSet::new();
    for node in nodes {
        if !seen.insert(node.name.as_str()) {
            return Err(PlacementError::DuplicateNode(node.name.clone()));
        }
        if !(1..=WEIGHT_MAX).contains(&node.weight) {
            return Err(PlacementError::BadWeight {
                node: node.name.clone(),
                weight: node.weight,
            });
        }
    }
    if !(1..=REPLICAS_MAX).contains(&config.replicas) {
        return Err(PlacementError::BadReplicas(config.replicas));
    }
    if !(1..=crate::PARTITIONS_MAX).contains(&partitions) {
        return Err(PlacementError::BadPartitions(partitions));
    }
    if config.load_epsilon_ppm > LOAD_EPSILON_PPM_MAX {
        return Err(PlacementError::BadEpsilon(config.load_epsilon_ppm));
    }
    if !(1..=POINTS_PER_WEIGHT_MAX).contains(&config.points_per_weight) {
        return Err(PlacementError::BadPointsPerWeight(config.points_per_weight));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
