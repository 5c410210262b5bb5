//! The shard map: which nodes hold each partition, kept in `meta`.
//!
//! The map is part of `meta`'s replicated state ([`crate::meta::app::MetaApp`])
//! and changes only through `meta`'s log ([`ShardMapCommand`]), so every
//! member applies the same changes in the same order and a new `meta` leader
//! carries on where the old one stopped. It holds:
//!
//! - the **store nodes**: every node that registered for the store, with its
//!   weight (relative capacity; 0 holds no replica), its zone (failure
//!   domain) and whether an operator is draining it;
//! - per partition a **record**: its replica set (the partition group's
//!   voters), an **epoch** that grows with every change of that set, a
//!   leader hint, and at most one **move** under way.
//!
//! ## Who writes what
//! Two writers keep the map honest, as PD and the region leaders do in TiKV:
//!
//! - the **placement driver** on the `meta` leader (`store::driver`) decides:
//!   it creates the map, and starts a move ([`ShardMapCommand::StartMove`]:
//!   add this node, remove that one) or cancels one that stalled;
//! - the **partition's own leader** (`store::agent`) reports what happened:
//!   its committed voter set ([`ShardMapCommand::ReportReplicas`], with the
//!   log index of that membership, so a stale report never overwrites a newer
//!   one) and its leadership ([`ShardMapCommand::ReportLeader`], by term).
//!
//! So `replicas` is never what someone wanted, only what a partition's Raft
//! group committed: a node's data is deleted only after the partition's
//! leader confirms it is out of the group (see `store::agent`), never because
//! the map says so.
//!
//! ## Replica ids
//! A partition's Raft group addresses its members by **replica id**, not by
//! node id: a node that leaves a partition and later holds it again does so
//! as a new replica with a new id (TiKV's peer ids). Raft's safety needs
//! that: a replica whose data was deleted must never answer under its old
//! identity, or a stale candidate that still counts it as a voter could win
//! its vote with an empty log and overwrite committed entries. The first
//! replicas of a partition take their node's id; every replica a move adds
//! gets a fresh one from a counter in the map ([`replica_id`]).
//!
//! ## Epochs
//! A record starts at [`CREATION_EPOCH`]; each reported change of its replica
//! set adds one. A move is started against an epoch and refused if the
//! record has moved on since the driver looked (a stale driver cannot undo a
//! newer change). Clients route with the epoch they know; a partition refuses
//! requests routed with an older one than it has applied (`store::app`), so
//! clients learn of moves promptly.
//!
//! Everything here is deterministic and I/O-free: `apply` is called by
//! `meta`'s state machine on every member.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use zongheng_algo::placement::{REPLICAS_MAX, WEIGHT_MAX};
use zongheng_algo::{PartitionId, PARTITIONS_MAX};

/// The epoch of every partition when the map is created.
pub const CREATION_EPOCH: u64 = 1;
/// Longest zone label, in bytes.
pub const ZONE_BYTES_MAX: usize = 64;

/// A node that offered itself to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreNode {
    /// Relative capacity, 0..=[`WEIGHT_MAX`]; 0 holds no replica.
    pub weight: u32,
    /// Failure domain; `None` makes the node its own.
    pub zone: Option<String>,
    /// An operator asked for every replica to leave this node.
    pub draining: bool,
}

/// One replica of a partition: the node holding it and its id in the
/// partition's Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Replica {
    pub node: u64,
    pub id: u64,
}

/// A move the driver asks for, by node: add a replica on `add` (as a
/// learner, then a voter) and remove the one on `remove`, in one membership
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveIntent {
    pub add: Option<u64>,
    pub remove: Option<u64>,
}

/// A move under way: the new replica (with the id the map gave it) and the
/// node whose replica goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub add: Option<Replica>,
    pub remove: Option<u64>,
}

impl Move {
    /// The move as the driver asked for it.
    pub fn intent(&self) -> MoveIntent {
        MoveIntent {
            add: self.add.map(|replica| replica.node),
            remove: self.remove,
        }
    }
}

/// One partition in the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Voters of the partition's group, as its leader last reported them.
    pub replicas: Vec<Replica>,
    pub epoch: u64,
    /// Log index (in the partition's log) of the membership `replicas`
    /// came from; 0 for the membership the group was created with.
    pub membership_index: u64,
    /// The node of the last leader reported, and its term.
    pub leader: Option<u64>,
    pub leader_term: u64,
    pub moving: Option<Move>,
}

impl PartitionRecord {
    /// The nodes holding a voter, in order.
    pub fn nodes(&self) -> Vec<u64> {
        self.replicas.iter().map(|replica| replica.node).collect()
    }

    pub fn holds(&self, node: u64) -> bool {
        self.replicas.iter().any(|replica| replica.node == node)
    }

    /// The replica `node` should run: its voter, or a move's new replica.
    pub fn replica_on(&self, node: u64) -> Option<Replica> {
        self.replicas
            .iter()
            .copied()
            .find(|replica| replica.node == node)
            .or_else(|| {
                self.moving
                    .and_then(|step| step.add)
                    .filter(|replica| replica.node == node)
            })
    }

    /// Whether `node` should run a replica.
    pub fn wants(&self, node: u64) -> bool {
        self.replica_on(node).is_some()
    }
}

/// The id of the `sequence`-th replica a move creates in `partition`
/// (FNV-1a; never 0). The caller skips ids its record already uses.
pub fn replica_id(partition: PartitionId, sequence: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"replica"
        .iter()
        .chain(&partition.to_be_bytes())
        .chain(&sequence.to_be_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// The whole map (see the module doc). `partitions == 0`: not created yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub partitions: u32,
    pub replication: u32,
    pub records: Vec<PartitionRecord>,
    pub nodes: BTreeMap<u64, StoreNode>,
    /// Replica ids handed out by moves so far (see [`replica_id`]).
    pub replicas_created: u64,
}

/// A change to the map, carried in `meta`'s log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardMapCommand {
    /// A node offers itself to the store (again, after a change of weight or zone).
    Register { id: u64, weight: u32, zone: Option<String> },
    /// An operator drains a node (or takes it back).
    SetDraining { id: u64, draining: bool },
    /// The driver creates the map: `replicas[p]` are partition p's first voters.
    Create {
        partitions: u32,
        replication: u32,
        replicas: Vec<Vec<u64>>,
    },
    /// The driver starts a move of `partition`, seen at `epoch`.
    StartMove {
        partition: PartitionId,
        epoch: u64,
        intent: MoveIntent,
    },
    /// The driver gives up a move of `partition` at `epoch` (it stalled).
    CancelMove { partition: PartitionId, epoch: u64 },
    /// A partition's leader reports its committed voters.
    ReportReplicas {
        partition: PartitionId,
        voters: Vec<Replica>,
        membership_index: u64,
    },
    /// A partition's leader (on node `leader`) reports that it leads, in `term`.
    ReportLeader {
        partition: PartitionId,
        leader: u64,
        term: u64,
    },
}

/// Why the map refused a command; the same on every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ShardMapError {
    #[error("the data store has not been created yet; retry")]
    NotCreated,
    #[error("the data store already exists")]
    AlreadyCreated,
    #[error("partition {partition} does not exist (the cluster has {partitions})")]
    NoSuchPartition { partition: PartitionId, partitions: u32 },
    #[error("node {0:x} is not a store node")]
    UnknownNode(u64),
    #[error("partition {partition} is at epoch {current}, not {requested}")]
    StaleEpoch {
        partition: PartitionId,
        requested: u64,
        current: u64,
    },
    #[error("partition {0} already has a move under way")]
    MoveInProgress(PartitionId),
    #[error("invalid shard map command: {0}")]
    Invalid(String),
}

impl ShardMapError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ShardMapError::NotCreated => "ZH_STORE_NOT_READY",
            ShardMapError::AlreadyCreated => "ZH_STORE_EXISTS",
            ShardMapError::NoSuchPartition { .. } => "ZH_STORE_NO_SUCH_PARTITION",
            ShardMapError::UnknownNode(_) => "ZH_STORE_UNKNOWN_NODE",
            ShardMapError::StaleEpoch { .. } => "ZH_STORE_STALE_EPOCH",
            ShardMapError::MoveInProgress(_) => "ZH_STORE_MOVE_IN_PROGRESS",
            ShardMapError::Invalid(_) => "ZH_STORE_BAD_REQUEST",
        }
    }
}

impl ShardMap {
    pub fn is_created(&self) -> bool {
        self.partitions > 0
    }

    pub fn record(&self, partition: PartitionId) -> Option<&PartitionRecord> {
        self.records.get(partition as usize)
    }

    /// The replicas `node` should run, by partition.
    pub fn wanted_by(&self, node: u64) -> BTreeMap<PartitionId, Replica> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(partition, record)| {
                record
                    .replica_on(node)
                    .map(|replica| (partition as PartitionId, replica))
            })
            .collect()
    }

    /// Replicas held per node (voters only), for every node holding one.
    pub fn loads(&self) -> BTreeMap<u64, usize> {
        let mut loads = BTreeMap::new();
        for replica in self.records.iter().flat_map(|record| &record.replicas) {
            *loads.entry(replica.node).or_insert(0) += 1;
        }
        loads
    }

    /// Apply one command (see [`ShardMapCommand`]); deterministic.
    pub fn apply(&mut self, command: &ShardMapCommand) -> Result<(), ShardMapError> {
        match command {
            ShardMapCommand::Register { id, weight, zone } => {
                if *weight > WEIGHT_MAX {
                    return Err(ShardMapError::Invalid(format!("weight {weight} is above {WEIGHT_MAX}")));
                }
                if zone
                    .as_ref()
                    .is_some_and(|zone| zone.is_empty() || zone.len() > ZONE_BYTES_MAX)
                {
                    return Err(ShardMapError::Invalid(format!(
                        "a zone label is 1..={ZONE_BYTES_MAX} bytes"
                    )));
                }
                let node = self.nodes.entry(*id).or_default();
                node.weight = *weight;
                node.zone = zone.clone();
                Ok(())
            }
            ShardMapCommand::SetDraining { id, draining } => {
                let node = self.nodes.get_mut(id).ok_or(ShardMapError::UnknownNode(*id))?;
                node.draining = *draining;
                Ok(())
            }
            ShardMapCommand::Create {
                partitions,
                replication,
                replicas,
            } => self.create(*partitions, *replication, replicas),
            ShardMapCommand::StartMove {
                partition,
                epoch,
                intent,
            } => self.start_move(*partition, *epoch, *intent),
            ShardMapCommand::CancelMove { partition, epoch } => {
                let record = self.record_mut(*partition)?;
                if record.epoch != *epoch {
                    return Err(ShardMapError::StaleEpoch {
                        partition: *partition,
                        requested: *epoch,
                        current: record.epoch,
                    });
                }
                record.moving = None;
                Ok(())
            }
            ShardMapCommand::ReportReplicas {
                partition,
                voters,
                membership_index,
            } => self.report_replicas(*partition, voters, *membership_index),
            ShardMapCommand::ReportLeader {
                partition,
                leader,
                term,
            } => {
                let record = self.record_mut(*partition)?;
                if *term > record.leader_term {
                    record.leader = Some(*leader);
                    record.leader_term = *term;
                }
                Ok(())
            }
        }
    }

    /// A member left the cluster: it is no longer a store node. Its replicas
    /// stay in the records until their partitions report new voters.
    pub fn forget_node(&mut self, id: u64) {
        self.nodes.remove(&id);
    }

    fn record_mut(&mut self, partition: PartitionId) -> Result<&mut PartitionRecord, ShardMapError> {
        if !self.is_created() {
            return Err(ShardMapError::NotCreated);
        }
        let partitions = self.partitions;
        self.records
            .get_mut(partition as usize)
            .ok_or(ShardMapError::NoSuchPartition { partition, partitions })
    }

    fn create(&mut self, partitions: u32, replication: u32, replicas: &[Vec<u64>]) -> Result<(), ShardMapError> {
        if self.is_created() {
            return Err(ShardMapError::AlreadyCreated);
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(ShardMapError::Invalid(format!(
                "partition count {partitions} is outside 1..={PARTITIONS_MAX}"
            )));
        }
        if replication == 0 || replication as usize > REPLICAS_MAX {
            return Err(ShardMapError::Invalid(format!(
                "replication {replication} is outside 1..={REPLICAS_MAX}"
            )));
        }
        if replicas.len() != partitions as usize {
            return Err(ShardMapError::Invalid(format!(
                "{} replica sets for {partitions} partitions",
                replicas.len()
            )));
        }
        for (partition, set) in replicas.iter().enumerate() {
            let distinct: BTreeSet<&u64> = set.iter().collect();
            if set.is_empty() || distinct.len() != set.len() || set.len() > REPLICAS_MAX {
                return Err(ShardMapError::Invalid(format!(
                    "partition {partition} has replica set {set:x?}; it needs 1..={REPLICAS_MAX} distinct nodes"
                )));
            }
        }
        self.partitions = partitions;
        self.replication = replication;
        // First replicas take their node's id.
        self.records = replicas
            .iter()
            .map(|set| PartitionRecord {
                replicas: set.iter().map(|node| Replica { node: *node, id: *node }).collect(),
                epoch: CREATION_EPOCH,
                ..PartitionRecord::default()
            })
            .collect();
        Ok(())
    }

    fn start_move(&mut self, partition: PartitionId, epoch: u64, intent: MoveIntent) -> Result<(), ShardMapError> {
        if let Some(add) = intent.add {
            if !self.nodes.contains_key(&add) {
                return Err(ShardMapError::UnknownNode(add));
            }
        }
        let mut sequence = self.replicas_created;
        let record = self.record_mut(partition)?;
        if record.epoch != epoch {
            return Err(ShardMapError::StaleEpoch {
                partition,
                requested: epoch,
                current: record.epoch,
            });
        }
        if record.moving.is_some() {
            return Err(ShardMapError::MoveInProgress(partition));
        }
        match intent {
            MoveIntent {
                add: None,
                remove: None,
            } => return Err(ShardMapError::Invalid("a move must add or remove a replica".into())),
            MoveIntent { add: Some(add), .. } if record.holds(add) => {
                return Err(ShardMapError::Invalid(format!(
                    "node {add:x} already holds partition {partition}"
                )))
            }
            MoveIntent {
                remove: Some(remove), ..
            } if !record.holds(remove) => {
                return Err(ShardMapError::Invalid(format!(
                    "node {remove:x} holds no replica of partition {partition}"
                )))
            }
            MoveIntent {
                add: None,
                remove: Some(_),
            } if record.replicas.len() == 1 => {
                return Err(ShardMapError::Invalid(format!(
                    "removing the last replica of partition {partition}"
                )))
            }
            _ => {}
        }
        let add = intent.add.map(|node| {
            let id = loop {
                let id = replica_id(partition, sequence);
                sequence += 1;
                if !record.replicas.iter().any(|replica| replica.id == id) {
                    break id;
                }
            };
            Replica { node, id }
        });
        record.moving = Some(Move {
            add,
            remove: intent.remove,
        });
        self.replicas_created = sequence;
        Ok(())
    }

    fn report_replicas(
        &mut self,
        partition: PartitionId,
        voters: &[Replica],
        membership_index: u64,
    ) -> Result<(), ShardMapError> {
        let record = self.record_mut(partition)?;
        if voters.is_empty() {
            return Err(ShardMapError::Invalid(format!(
                "partition {partition} reported no voters"
            )));
        }
        if membership_index <= record.membership_index {
            // Older than what the map holds: a leader that lost the news.
            return Ok(());
        }
        record.membership_index = membership_index;
        let reported: BTreeSet<Replica> = voters.iter().copied().collect();
        let recorded: BTreeSet<Replica> = record.replicas.iter().copied().collect();
        if reported == recorded {
            return Ok(());
        }
        // Keep the order of the voters that stay (the first is the
        // preferred leader); new ones go last.
        let mut replicas: Vec<Replica> = record
            .replicas
            .iter()
            .copied()
            .filter(|replica| reported.contains(replica))
            .collect();
        replicas.extend(voters.iter().copied().filter(|replica| !recorded.contains(replica)));
        record.replicas = replicas;
        record.epoch += 1;
        if let Some(step) = record.moving {
            let added = step.add.is_none_or(|add| reported.contains(&add));
            let removed = step
                .remove
                .is_none_or(|node| !reported.iter().any(|replica| replica.node == node));
            // The target node got a voter by another way (an earlier move
            // whose change committed after it was cancelled): the move is
            // moot, and the driver plans again from the new replicas.
            let moot = step.add.is_some_and(|add| {
                reported
                    .iter()
                    .any(|replica| replica.node == add.node && replica.id != add.id)
            });
            if (added && removed) || moot {
                record.moving = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first replica: its id is its node's.
    fn first(node: u64) -> Replica {
        Replica { node, id: node }
    }

    fn created() -> ShardMap {
        let mut map = ShardMap::default();
        for id in 1..=4 {
            map.apply(&ShardMapCommand::Register {
                id,
                weight: 1,
                zone: None,
            })
            .unwrap();
        }
        map.apply(&ShardMapCommand::Create {
            partitions: 2,
            replication: 3,
            replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
        })
        .unwrap();
        map
    }

    #[test]
    fn a_move_completes_when_the_partition_reports_the_new_voters() {
        let mut map = created();
        let intent = MoveIntent {
            add: Some(4),
            remove: Some(1),
        };
        map.apply(&ShardMapCommand::StartMove {
            partition: 0,
            epoch: CREATION_EPOCH,
            intent,
        })
        .unwrap();
        let added = map.record(0).unwrap().moving.unwrap().add.unwrap();
        assert_eq!(added.node, 4);
        assert_ne!(added.id, 4, "a new replica gets a new id, never its node's");
        assert!(map.record(0).unwrap().wants(4));
        assert_eq!(map.wanted_by(4), BTreeMap::from([(0, added)]));
        // A second move of the same partition waits for the first.
        assert_eq!(
            map.apply(&ShardMapCommand::StartMove {
                partition: 0,
                epoch: CREATION_EPOCH,
                intent
            }),
            Err(ShardMapError::MoveInProgress(0))
        );
        map.apply(&ShardMapCommand::ReportReplicas {
            partition: 0,
            voters: vec![added, first(2), first(3)],
            membership_index: 7,
        })
        .unwrap();
        let record = map.record(0).unwrap();
        assert_eq!(record.replicas, vec![first(2), first(3), added]);
        assert_eq!(record.epoch, CREATION_EPOCH + 1);
        assert_eq!(record.moving, None);
        assert!(!record.wants(1));
        // The driver's view from before the move is stale now.
        assert!(matches!(
            map.apply(&ShardMapCommand::StartMove {
                partition: 0,
                epoch: CREATION_EPOCH,
                intent: MoveIntent {
                    add: Some(1),
                    remove: Some(2)
                }
            }),
            Err(ShardMapError::StaleEpoch { .. })
        ));
        // Node 1 back in partition 0: as a new replica, with an id never used there.
        map.apply(&ShardMapCommand::StartMove {
            partition: 0,
            epoch: CREATION_EPOCH + 1,
            intent: MoveIntent {
                add: Some(1),
                remove: Some(2),
            },
        })
        .unwrap();
        let again = map.record(0).unwrap().moving.unwrap().add.unwrap();
        assert_eq!(again.node, 1);
        assert!(again.id != 1 && again.id != added.id, "{again:?}");
    }

    #[test]
    fn stale_reports_never_undo_newer_ones() {
        let mut map = created();
        map.apply(&ShardMapCommand::ReportReplicas {
            partition: 1,
            voters: vec![first(2), first(3), first(4)],
            membership_index: 20,
        })
        .unwrap();
        map.apply(&ShardMapCommand::ReportReplicas {
            partition: 1,
            voters: vec![first(2), first(3), first(1)],
            membership_index: 10,
        })
        .unwrap();
        assert_eq!(map.record(1).unwrap().nodes(), vec![2, 3, 4]);
        assert_eq!(map.record(1).unwrap().epoch, CREATION_EPOCH + 1);
        // The same voters again, from a later membership: no new epoch.
        map.apply(&ShardMapCommand::ReportReplicas {
            partition: 1,
            voters: vec![first(4), first(3), first(2)],
            membership_index: 30,
        })
        .unwrap();
        assert_eq!(map.record(1).unwrap().epoch, CREATION_EPOCH + 1);
        assert_eq!(map.record(1).unwrap().membership_index, 30);
    }

    #[test]
    fn a_move_is_dropped_when_its_target_node_got_a_voter_another_way() {
        let mut map = created();
        map.apply(&ShardMapCommand::StartMove {
            partition: 0,
            epoch: CREATION_EPOCH,
            intent: MoveIntent {
                add: Some(4),
                remove: Some(1),
            },
        })
        .unwrap();
        // An earlier, cancelled move had added node 4 under another id, and
        // its change committed after all.
        let earlier = Replica { node: 4, id: 444 };
        map.apply(&ShardMapCommand::ReportReplicas {
            partition: 0,
            voters: vec![first(2), first(3), earlier],
            membership_index: 9,
        })
        .unwrap();
        let record = map.record(0).unwrap();
        assert_eq!(record.moving, None);
        assert_eq!(record.replica_on(4), Some(earlier));
    }

    #[test]
    fn leader_hints_follow_terms() {
        let mut map = created();
        let report = |leader, term| ShardMapCommand::ReportLeader {
            partition: 0,
            leader,
            term,
        };
        map.apply(&report(2, 5)).unwrap();
        map.apply(&report(1, 4)).unwrap();
        assert_eq!(map.record(0).unwrap().leader, Some(2));
        map.apply(&report(3, 6)).unwrap();
        assert_eq!(map.record(0).unwrap().leader, Some(3));
    }

    #[test]
    fn bad_commands_are_refused_and_change_nothing() {
        let mut map = ShardMap::default();
        assert_eq!(
            map.apply(&ShardMapCommand::CancelMove { partition: 0, epoch: 1 }),
            Err(ShardMapError::NotCreated)
        );
        let mut map = created();
        let before = map.clone();
        let refused = [
            ShardMapCommand::Create {
                partitions: 1,
                replication: 1,
                replicas: vec![vec![1]],
            },
            ShardMapCommand::Register {
                id: 9,
                weight: WEIGHT_MAX + 1,
                zone: None,
            },
            ShardMapCommand::Register {
                id: 9,
                weight: 1,
                zone: Some(String::new()),
            },
            ShardMapCommand::SetDraining { id: 9, draining: true },
            ShardMapCommand::StartMove {
                partition: 5,
                epoch: 1,
                intent: MoveIntent {
                    add: Some(4),
                    remove: None,
                },
            },
            ShardMapCommand::StartMove {
                partition: 0,
                epoch: 1,
                intent: MoveIntent {
                    add: Some(2),
                    remove: Some(1),
                },
            },
            ShardMapCommand::StartMove {
                partition: 0,
                epoch: 1,
                intent: MoveIntent {
                    add: Some(9),
                    remove: Some(1),
                },
            },
            ShardMapCommand::StartMove {
                partition: 0,
                epoch: 1,
                intent: MoveIntent {
                    add: Some(4),
                    remove: Some(9),
                },
            },
            ShardMapCommand::StartMove {
                partition: 0,
                epoch: 1,
                intent: MoveIntent {
                    add: None,
                    remove: None,
                },
            },
            ShardMapCommand::ReportReplicas {
                partition: 0,
                voters: vec![],
                membership_index: 99,
            },
        ];
        for command in &refused {
            assert!(map.apply(command).is_err(), "{command:?} was accepted");
            assert_eq!(map, before, "{command:?} changed the map");
        }
        let mut fresh = ShardMap::default();
        for bad in [
            (0, 3, vec![]),
            (1, 0, vec![vec![1]]),
            (2, 3, vec![vec![1]]),
            (1, 3, vec![vec![1, 1]]),
            (1, 3, vec![vec![]]),
        ] {
            assert!(fresh
                .apply(&ShardMapCommand::Create {
                    partitions: bad.0,
                    replication: bad.1,
                    replicas: bad.2.clone()
                })
                .is_err());
            assert!(!fresh.is_created());
        }
    }

    #[test]
    fn a_forgotten_node_keeps_its_replicas_until_they_are_reported_gone() {
        let mut map = created();
        map.forget_node(1);
        assert!(!map.nodes.contains_key(&1));
        assert_eq!(map.loads().get(&1), Some(&2));
        assert_eq!(
            map.apply(&ShardMapCommand::SetDraining { id: 1, draining: true }),
            Err(ShardMapError::UnknownNode(1))
        );
    }
}
