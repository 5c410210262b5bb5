//! Which replica moves to start next, to take the cluster from where its
//! partitions are to where [`place`](crate::place) wants them.
//!
//! A move replaces at most one replica of one partition: add `add` as a
//! learner, let it catch up (by snapshot), make it a voter in place of
//! `remove`, then drop `remove`. One replica at a time keeps every
//! intermediate configuration at R or R+1 members with a majority of the old
//! ones, so the partition stays writable throughout (Raft §6, and TiKV's and
//! CockroachDB's replicate queues do the same).
//!
//! The planner is pure: it is handed the current and target replica sets, the
//! live nodes and the partitions already moving, and returns at most
//! `moves_max` moves in flight in total. Order:
//!
//! 1. **Repairs first**: partitions with the fewest live replicas, so a
//!    partition one failure away from losing its majority is fixed before a
//!    merely unbalanced one.
//! 2. Dead replicas are the ones removed first.
//! 3. Then partition number, so the plan is deterministic.
//!
//! A partition whose live replicas are not a majority of its current set
//! cannot change its membership (the change itself needs a quorum); it is
//! reported as `stuck` rather than planned, for an operator to see.

use crate::partition::PartitionId;
use std::collections::BTreeSet;

/// One replica replacement for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: PartitionId,
    /// The node that gets a new replica (`None`: only remove).
    pub add: Option<String>,
    /// The replica that goes (`None`: only add).
    pub remove: Option<String>,
}

/// What [`plan_moves`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Moves to start now, most urgent first.
    pub moves: Vec<Move>,
    /// Partitions that differ from their target but have no live majority.
    pub stuck: Vec<PartitionId>,
}

/// Plan the next moves (see the module doc). `current` and `target` are
/// replica sets by partition number; `moving` holds partitions whose move is
/// still under way; `moves_max` bounds the moves in flight, those included.
pub fn plan_moves(
    current: &[Vec<String>],
    target: &[Vec<String>],
    live: &BTreeSet<String>,
    moving: &BTreeSet<PartitionId>,
    moves_max: usize,
) -> Plan {
    assert_eq!(
        current.len(),
        target.len(),
        "current and target cover different partition counts"
    );
    let mut candidates: Vec<(usize, Move)> = Vec::new();
    let mut stuck = Vec::new();
    for (partition, (from, to)) in current.iter().zip(target).enumerate() {
        let partition = partition as PartitionId;
        let add = to.iter().find(|node| !from.contains(node)).cloned();
        let mut removable: Vec<&String> = from.iter().filter(|node| !to.contains(node)).collect();
        // Dead replicas go first; among equals, the last in the set (never the preferred leader first).
        removable.sort_by_key(|node| live.contains(*node));
        let remove = if from.len() >= to.len() {
            removable.first().map(|node| (*node).clone())
        } else {
            None
        };
        if add.is_none() && remove.is_none() {
            continue;
        }
        if moving.contains(&partition) {
            continue;
        }
        let live_replicas = from.iter().filter(|node| live.contains(*node)).count();
        if live_replicas * 2 <= from.len() {
            stuck.push(partition);
            continue;
        }
        candidates.push((live_replicas, Move { partition, add, remove }));
    }
    candidates.sort_by_key(|(live_replicas, step)| (*live_replicas, step.partition));
    let room = moves_max.saturating_sub(moving.len());
    Plan {
        moves: candidates.into_iter().take(room).map(|(_, step)| step).collect(),
        stuck,
    }
}

/// `sets` after `step` completes (for tests, the lab and the simulator's model).
pub fn apply_move(sets: &mut [Vec<String>], step: &Move) {
    let set = &mut sets[step.partition as usize];
    match (&step.add, &step.remove) {
        (Some(add), Some(remove)) => {
            let slot = set
                .iter()
                .position(|node| node == remove)
                .expect("removed replica is in the set");
            set[slot] = add.clone();
        }
        (Some(add), None) => set.push(add.clone()),
        (None, Some(remove)) => set.retain(|node| node != remove),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{place, NodeSpec, PlacementConfig};

    fn sets(spec: &[&[&str]]) -> Vec<Vec<String>> {
        spec.iter()
            .map(|set| set.iter().map(|node| node.to_string()).collect())
            .collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|node| node.to_string()).collect()
    }

    #[test]
    fn repairs_come_before_rebalancing() {
        let current = sets(&[&["a", "b", "c"], &["a", "b", "d"], &["b", "c", "d"]]);
        let target = sets(&[&["a", "b", "e"], &["a", "b", "e"], &["b", "c", "e"]]);
        // d is dead: partitions 1 and 2 have two live replicas of three, partition 0 three.
        let live = names(&["a", "b", "c", "e"]);
        let plan = plan_moves(&current, &target, &live, &BTreeSet::new(), 2);
        assert_eq!(
            plan.moves,
            vec![
                Move {
                    partition: 1,
                    add: Some("e".into()),
                    remove: Some("d".into())
                },
                Move {
                    partition: 2,
                    add: Some("e".into()),
                    remove: Some("d".into())
                },
            ]
        );
        assert!(plan.stuck.is_empty());
    }

    #[test]
    fn moves_in_flight_count_against_the_limit_and_are_not_replanned() {
        let current = sets(&[&["a"], &["a"], &["a"]]);
        let target = sets(&[&["b"], &["b"], &["b"]]);
        let live = names(&["a", "b"]);
        let moving: BTreeSet<PartitionId> = [0].into();
        let plan = plan_moves(&current, &target, &live, &moving, 2);
        assert_eq!(plan.moves.len(), 1);
        assert_eq!(plan.moves[0].partition, 1);
        assert!(plan_moves(&current, &target, &live, &[0, 1].into(), 2).moves.is_empty());
    }

    #[test]
    fn a_partition_without_a_live_majority_is_stuck_not_moved() {
        let current = sets(&[&["a", "b", "c"]]);
        let target = sets(&[&["a", "d", "e"]]);
        let plan = plan_moves(&current, &target, &names(&["a", "d", "e"]), &BTreeSet::new(), 4);
        assert!(plan.moves.is_empty());
        assert_eq!(plan.stuck, vec![0]);
    }

    #[test]
    fn growing_and_shrinking_sets_add_or_remove_only() {
        let current = sets(&[&["a", "b"], &["a", "b", "c", "d"]]);
        let target = sets(&[&["a", "b", "c"], &["a", "b", "c"]]);
        let plan = plan_moves(&current, &target, &names(&["a", "b", "c", "d"]), &BTreeSet::new(), 4);
        assert_eq!(plan.moves[0].add.as_deref(), Some("c"));
        assert_eq!(plan.moves[0].remove, None);
        assert_eq!(plan.moves[1].add, None);
        assert_eq!(plan.moves[1].remove.as_deref(), Some("d"));
    }

    #[test]
    fn repeated_plans_converge_on_the_target_within_the_limit() {
        let config = PlacementConfig::default();
        let three: Vec<NodeSpec> = (0..3).map(|i| NodeSpec::new(format!("n{i}"), 1)).collect();
        let five: Vec<NodeSpec> = (0..5).map(|i| NodeSpec::new(format!("n{i}"), 1)).collect();
        let mut current = place(&three, 32, &config).unwrap().replicas;
        let target = place(&five, 32, &config).unwrap();
        let live: BTreeSet<String> = five.iter().map(|node| node.name.clone()).collect();
        let moves_max = 4;
        let needed = crate::Placement {
            replicas: current.clone(),
        }
        .replicas_added(&target);
        let mut rounds = 0;
        loop {
            let plan = plan_moves(&current, &target.replicas, &live, &BTreeSet::new(), moves_max);
            if plan.moves.is_empty() {
                break;
            }
            assert!(plan.moves.len() <= moves_max);
            for step in &plan.moves {
                apply_move(&mut current, step);
                // Every intermediate set keeps R replicas, all distinct.
                let set = &current[step.partition as usize];
                assert_eq!(set.len(), 3);
                assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), 3);
            }
            rounds += 1;
            assert!(rounds <= needed, "no convergence");
        }
        for (now, wanted) in current.iter().zip(&target.replicas) {
            assert_eq!(
                now.iter().collect::<BTreeSet<_>>(),
                wanted.iter().collect::<BTreeSet<_>>()
            );
        }
        // One replica per partition per round: a partition that needs two new
        // replicas takes two rounds, so a round or two beyond the ideal.
        assert!(
            rounds <= needed.div_ceil(moves_max) + 2,
            "{rounds} rounds for {needed} moves"
        );
    }
}
