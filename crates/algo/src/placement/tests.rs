//! Placement: balance, failure domains, determinism and movement.

use super::*;
use std::collections::BTreeSet;

fn equal_nodes(count: usize) -> Vec<NodeSpec> {
    (0..count).map(|i| NodeSpec::new(format!("n{i}"), 1)).collect()
}

/// Weights 1, 2 and 4 in turn: a cluster of mixed machine sizes.
fn mixed_nodes(count: usize) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| NodeSpec::new(format!("n{i}"), [1, 2, 4][i % 3]))
        .collect()
}

fn check_sets(nodes: &[NodeSpec], partitions: u32, config: &PlacementConfig, placement: &Placement) {
    assert_eq!(placement.replicas.len(), partitions as usize);
    let names: BTreeSet<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
    for (partition, set) in placement.replicas.iter().enumerate() {
        assert_eq!(
            set.len(),
            config.replicas.min(nodes.len()),
            "partition {partition}: {set:?}"
        );
        let distinct: BTreeSet<&String> = set.iter().collect();
        assert_eq!(
            distinct.len(),
            set.len(),
            "partition {partition} repeats a node: {set:?}"
        );
        assert!(set.iter().all(|node| names.contains(node.as_str())));
    }
}

/// The largest ratio of a node's replicas to its weighted fair share.
fn worst_ratio(nodes: &[NodeSpec], placement: &Placement, replicas: usize) -> f64 {
    let total_weight: u32 = nodes.iter().map(|node| node.weight).sum();
    let slots = (placement.replicas.len() * replicas) as f64;
    let loads = placement.loads();
    nodes
        .iter()
        .map(|node| {
            let fair = slots * f64::from(node.weight) / f64::from(total_weight);
            *loads.get(node.name.as_str()).unwrap_or(&0) as f64 / fair
        })
        .fold(0.0, f64::max)
}

#[test]
fn balanced_across_cluster_sizes_partition_counts_and_weights() {
    let config = PlacementConfig::default();
    for nodes_count in [3, 4, 5, 7, 10, 16, 25, 50] {
        for partitions in [16, 32, 64, 128, 256] {
            for nodes in [equal_nodes(nodes_count), mixed_nodes(nodes_count)] {
                let placement = place(&nodes, partitions, &config).unwrap();
                check_sets(&nodes, partitions, &config, &placement);
                let replicas = config.replicas.min(nodes.len());
                let total_weight: u64 = nodes.iter().map(|node| u64::from(node.weight)).sum();
                let loads = placement.loads();
                let leaders = placement.leaders();
                let weights: Vec<u32> = nodes.iter().map(|node| node.weight).collect();
                let caps = replica_caps(&weights, partitions, replicas, config.load_epsilon_ppm);
                for (node, &cap) in nodes.iter().zip(&caps) {
                    let weight = u64::from(node.weight);
                    let load = *loads.get(node.name.as_str()).unwrap_or(&0);
                    assert!(
                        load <= cap,
                        "{nodes_count} nodes, {partitions} partitions: {} holds {load}, cap {cap}",
                        node.name
                    );
                    let leader_cap = bounded_cap(partitions as usize, weight, total_weight, config.load_epsilon_ppm);
                    let led = *leaders.get(node.name.as_str()).unwrap_or(&0);
                    assert!(led <= leader_cap, "{} leads {led}, cap {leader_cap}", node.name);
                }
            }
        }
    }
}

#[test]
fn caps_hold_a_heavy_node_at_one_replica_per_partition() {
    // Weights 1, 2, 4 and R = 3 over 16 partitions: every node must hold all 16.
    assert_eq!(replica_caps(&[1, 2, 4], 16, 3, 100_000), vec![16, 16, 16]);
    // Weights 4, 1, 1, 1, 1 with R = 2: the heavy node's share (16 of 32
    // slots) is exactly P, the four others share the remaining 16 (4 each, 5 with ε).
    assert_eq!(replica_caps(&[4, 1, 1, 1, 1], 16, 2, 100_000), vec![16, 5, 5, 5, 5]);
    // Equal weights: ⌈1.1 · 96 / 5⌉ = 22.
    assert_eq!(replica_caps(&[1; 5], 32, 3, 100_000), vec![22; 5]);
}

#[test]
fn five_equal_nodes_stay_within_a_quarter_of_the_mean() {
    // Issue 6's process test grows 3 nodes to 5 with 32 partitions of 3
    // replicas and expects the busiest node at most 1.25x the mean.
    let nodes = equal_nodes(5);
    let placement = place(&nodes, 32, &PlacementConfig::default()).unwrap();
    let ratio = worst_ratio(&nodes, &placement, 3);
    assert!(ratio <= 1.15, "busiest node at {ratio:.3}x the mean");
}

#[test]
fn replicas_land_in_distinct_zones() {
    let zones = ["a", "b", "c"];
    let nodes: Vec<NodeSpec> = (0..9)
        .map(|i| NodeSpec::new(format!("n{i}"), 1).in_zone(zones[i % 3]))
        .collect();
    let zone_of = |name: &str| {
        nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap()
            .zone
            .clone()
            .unwrap()
    };
    let placement = place(&nodes, 64, &PlacementConfig::default()).unwrap();
    for set in &placement.replicas {
        let set_zones: BTreeSet<String> = set.iter().map(|node| zone_of(node)).collect();
        assert_eq!(set_zones.len(), 3, "{set:?} is not spread over three zones");
    }
    assert!(worst_ratio(&nodes, &placement, 3) <= 1.15);
}

#[test]
fn fewer_zones_than_replicas_use_every_zone() {
    let nodes: Vec<NodeSpec> = (0..6)
        .map(|i| NodeSpec::new(format!("n{i}"), 1).in_zone(if i < 3 { "east" } else { "west" }))
        .collect();
    let placement = place(&nodes, 32, &PlacementConfig::default()).unwrap();
    check_sets(&nodes, 32, &PlacementConfig::default(), &placement);
    for set in &placement.replicas {
        let east = set
            .iter()
            .filter(|node| node[1..].parse::<usize>().unwrap() < 3)
            .count();
        assert!(east == 1 || east == 2, "{set:?} sits in one zone");
    }
}

#[test]
fn failure_domains_win_over_balance() {
    // One node alone in its zone must hold a replica of every partition.
    let mut nodes: Vec<NodeSpec> = (0..4)
        .map(|i| NodeSpec::new(format!("n{i}"), 1).in_zone("big"))
        .collect();
    nodes.push(NodeSpec::new("lonely", 1).in_zone("small"));
    let config = PlacementConfig {
        replicas: 2,
        ..PlacementConfig::default()
    };
    let placement = place(&nodes, 16, &config).unwrap();
    assert_eq!(placement.loads()["lonely"], 16);
}

#[test]
fn fewer_nodes_than_replicas_place_on_all_of_them() {
    let nodes = equal_nodes(2);
    let placement = place(&nodes, 8, &PlacementConfig::default()).unwrap();
    assert!(placement.replicas.iter().all(|set| set.len() == 2));
    let single = place(&equal_nodes(1), 8, &PlacementConfig::default()).unwrap();
    assert!(single.replicas.iter().all(|set| set == &vec!["n0".to_string()]));
}

#[test]
fn input_order_does_not_matter() {
    let nodes = mixed_nodes(12);
    let mut reversed = nodes.clone();
    reversed.reverse();
    let config = PlacementConfig::default();
    assert_eq!(
        place(&nodes, 128, &config).unwrap(),
        place(&reversed, 128, &config).unwrap()
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let config = PlacementConfig::default();
    assert_eq!(place(&[], 32, &config), Err(PlacementError::NoNodes));
    let twice = vec![NodeSpec::new("a", 1), NodeSpec::new("a", 2)];
    assert_eq!(
        place(&twice, 32, &config),
        Err(PlacementError::DuplicateNode("a".into()))
    );
    let zero = vec![NodeSpec::new("a", 0)];
    assert!(matches!(
        place(&zero, 32, &config),
        Err(PlacementError::BadWeight { .. })
    ));
    assert_eq!(
        place(&equal_nodes(3), 0, &config),
        Err(PlacementError::BadPartitions(0))
    );
    let no_replicas = PlacementConfig {
        replicas: 0,
        ..config.clone()
    };
    assert_eq!(
        place(&equal_nodes(3), 32, &no_replicas),
        Err(PlacementError::BadReplicas(0))
    );
    let error = place(&zero, 32, &config).unwrap_err().to_string();
    assert!(error.contains("weights are 1..=64"), "{error}");
}

/// Replicas moved when `nodes` becomes `after`, against the least any
/// method could move: the replicas that must land on joining nodes, or
/// leave departed ones.
fn movement(before: &[NodeSpec], after: &[NodeSpec], partitions: u32) -> (usize, usize) {
    let config = PlacementConfig::default();
    let from = place(before, partitions, &config).unwrap();
    let to = place(after, partitions, &config).unwrap();
    let moved = from.replicas_added(&to);
    let before_names: BTreeSet<&str> = before.iter().map(|node| node.name.as_str()).collect();
    let after_names: BTreeSet<&str> = after.iter().map(|node| node.name.as_str()).collect();
    let joined: usize = to
        .loads()
        .iter()
        .filter(|(node, _)| !before_names.contains(*node))
        .map(|(_, load)| load)
        .sum();
    let left: usize = from
        .loads()
        .iter()
        .filter(|(node, _)| !after_names.contains(*node))
        .map(|(_, load)| load)
        .sum();
    (moved, joined.max(left))
}

#[test]
fn movement_on_join_and_leave_is_close_to_the_minimum() {
    let mut worst: f64 = 0.0;
    let (mut total_moved, mut total_minimum) = (0usize, 0usize);
    let mut report = String::from("nodes  partitions  change  moved  minimum  ratio\n");
    for nodes_count in [3, 4, 5, 8, 10, 20, 50] {
        for partitions in [16, 32, 64, 256] {
            let nodes = equal_nodes(nodes_count);
            let grown = equal_nodes(nodes_count + 1);
            let mut changes = vec![("join", movement(&nodes, &grown, partitions))];
            if nodes_count > 3 {
                let shrunk: Vec<NodeSpec> = nodes.iter().filter(|node| node.name != "n1").cloned().collect();
                changes.push(("leave", movement(&nodes, &shrunk, partitions)));
            }
            for (change, (moved, minimum)) in changes {
                let ratio = if minimum == 0 {
                    1.0
                } else {
                    moved as f64 / minimum as f64
                };
                report +=
                    &format!("{nodes_count:>5}  {partitions:>10}  {change:<6}  {moved:>5}  {minimum:>7}  {ratio:.2}\n");
                total_moved += moved;
                total_minimum += minimum;
                // Small counts are lumpy (a cap moving by one pushes a replica along);
                // beyond a few replicas the excess stays a fraction of the minimum.
                assert!(moved <= 2 * minimum + 4, "moved {moved}, minimum {minimum}:\n{report}");
                worst = worst.max(ratio);
            }
        }
    }
    let overall = total_moved as f64 / total_minimum as f64;
    println!(
        "{report}all changes: {total_moved} moved, {total_minimum} minimum, {overall:.3}x; worst case {worst:.2}x"
    );
    assert!(overall <= 1.2, "movement {overall:.3}x the minimum overall:\n{report}");
}
