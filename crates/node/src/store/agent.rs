//! The store agent: what every node does to make its partition replicas
//! match the shard map, and what a partition's leader does to carry out the
//! moves the placement driver asks for.
//!
//! The agent runs on every node, once per [`AGENT_INTERVAL`], against this
//! node's view of the shard map (its applied `meta` state, which may lag):
//!
//! 1. **Register**: the node offers itself to the store with its weight and
//!    zone ([`ShardMapCommand::Register`]); again whenever they change.
//! 2. **Open** the replica the map wants here for each partition (a voter,
//!    or the target of a move): an openraft instance on this node's engine,
//!    under the replica's own id. A partition still at its creation (epoch
//!    1, no reported change) is initialized with its first replica set, as
//!    `meta` members initialize `meta`; any other replica starts empty and is
//!    caught up by its leader (log or snapshot) once that leader adds it as a
//!    learner. Which replica a partition's data on this disk belongs to is
//!    recorded next to it (`Key::Local` `store/replica/P`), written before
//!    the replica first starts: a new replica never starts on an older
//!    replica's data, which must be deleted first (step 4).
//! 3. **Retire** a replica the map no longer wants (its partition reported a
//!    committed membership without this node, or a move here was
//!    cancelled): it keeps running until the partition's leader, after
//!    confirming its leadership with a quorum, answers that the replica is
//!    in neither its committed nor its pending membership
//!    (`Peer.ReplicaStatus`); then it stops and its data is deleted.
//!    The map can lag the group, and a node whose view lags the map could
//!    otherwise erase a voter's log, which Raft never allows (a wiped voter
//!    can help commit an entry twice). It keeps running meanwhile because a
//!    membership change that was proposed but not committed may still need
//!    its vote: a candidate in a joint configuration needs a majority of
//!    both halves (the bank campaign found a partition stalled for good by
//!    a replica stopped too early, seed 283). Data on disk for partitions
//!    the map does not want here, or for an older replica than the one it
//!    wants, goes through the same steps, running after a restart.
//! 4. (Deletion is step 3's end: one synced batch over the group's keys.)
//! 5. **Lead**: for every partition this node leads, report the leadership
//!    ([`ShardMapCommand::ReportLeader`]); report the committed voter set
//!    when it differs from the map's ([`ShardMapCommand::ReportReplicas`]);
//!    carry out the partition's move: add the target as a learner, wait until
//!    it is within [`LEARNER_CATCH_UP_LAG_MAX`] entries, then replace the
//!    voters in one joint-consensus change (openraft's `change_membership`),
//!    but only while a majority of both the old and the new voters answered
//!    lately (a joint configuration without a live quorum in one half stalls
//!    the partition until those members return);
//!    remove learners no move asks for; and bring the partition's epoch up to
//!    the map's ([`PartitionCommand::SetEpoch`]). One such task runs per
//!    partition at a time.
//!
//! Every step is idempotent and driven by comparing the map with the group's
//! own state, so a crash at any point is repaired by the next tick, on this
//! node or on the partition's next leader.
//!
//! Chapter: H3 storage (replication, re-replication) and V3 recovery in
//! COURSE.md; the split between a placement driver and region leaders is
//! TiKV's (PD and raftstore).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{ChangeMembers, Raft};
use tokio::sync::watch;
use zongheng_algo::PartitionId;
use zongheng_proto::peer::ReplicaStatusRequest;
use zongheng_storage::{Durability, Engine, Key, WriteBatch};

use super::app::{PartitionApp, PartitionCommand, ReplicaNode};
use super::group::{group_of, PartitionGroup};
use super::shard_map::{PartitionRecord, Replica, ShardMap, ShardMapCommand, CREATION_EPOCH};
use super::StoreGroups;
use crate::meta::command::MetaCommand;
use crate::meta::group::ACTIVE_PEER_WINDOW;
use crate::meta::MetaGroup;
use crate::raft::group_commit::GroupCommit;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerAddress, PeerPool};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::RaftSettings;

/// How often the agent compares the map with the local replicas.
pub const AGENT_INTERVAL: Duration = Duration::from_millis(200);
/// A learner is made a voter once it is at most this many entries behind
/// the leader's last entry.
pub const LEARNER_CATCH_UP_LAG_MAX: u64 = 64;
/// How long one `ReplicaStatus` question may take.
const REPLICA_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most replica records the agent lists at start (the partition count is
/// at most 4,096, one record each).
const LOCAL_GROUPS_SCAN_MAX: usize = 8_192;

/// What the agent needs from its node.
pub struct AgentContext {
    pub node_id: u64,
    pub meta: Arc<MetaGroup>,
    pub groups: Arc<StoreGroups>,
    pub engine: Arc<dyn Engine>,
    /// The node's shared synced-write path (its engine is `engine`).
    pub commit: Arc<GroupCommit>,
    pub pool: Arc<PeerPool>,
    pub raft: RaftSettings,
    pub cluster_token: String,
    /// Register before the map exists (this node was started to create a store).
    pub creates_store: bool,
    pub weight: u32,
    pub zone: Option<String>,
}

/// Run the agent until `shutdown` (see the module doc).
pub async fn run(context: AgentContext, mut shutdown: watch::Receiver<bool>) {
    let mut agent = Agent {
        context: Arc::new(context),
        on_disk: None,
        leading: Arc::new(Mutex::new(BTreeSet::new())),
        shutdown: shutdown.clone(),
    };
    loop {
        agent.tick().await;
        tokio::select! {
            _ = tokio::time::sleep(AGENT_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

struct Agent {
    context: Arc<AgentContext>,
    /// The replica each partition's data on this disk belongs to (read
    /// from the disk at the first tick with a map, then kept in step).
    on_disk: Option<BTreeMap<PartitionId, u64>>,
    /// Partitions with a leader task running.
    leading: Arc<Mutex<BTreeSet<PartitionId>>>,
    shutdown: watch::Receiver<bool>,
}

impl Agent {
    async fn tick(&mut self) {
        let context = self.context.clone();
        let map = context.meta.read(|app| app.shard_map.clone());
        if context.creates_store || map.is_created() {
            register(&context, &map).await;
        }
        if !map.is_created() {
            return;
        }
        if self.on_disk.is_none() {
            match replicas_on_disk(&*context.engine) {
                Ok(on_disk) => {
                    remove_orphan_logs(&context, &on_disk);
                    self.on_disk = Some(on_disk);
                }
                Err(error) => {
                    tracing::warn!(%error, "listing the replicas on disk");
                    return;
                }
            }
        }
        let wanted = map.wanted_by(context.node_id);
        // Retire replicas the map no longer wants here (or wants as another
        // replica): each keeps running until its group's leader confirms it
        // is out of the group, then it stops and its data goes. Stopping
        // earlier could stall the group: a membership change not yet
        // committed may still count on this replica's vote (a candidate in
        // a joint configuration needs a majority of both halves), and the
        // map cannot know about changes that were never committed.
        let retiring: Vec<(PartitionId, u64)> = self
            .on_disk
            .as_ref()
            .expect("read above")
            .iter()
            .filter(|(partition, replica)| wanted.get(partition).is_none_or(|wanted| wanted.id != **replica))
            .map(|(partition, replica)| (*partition, *replica))
            .collect();
        for (partition, replica) in retiring {
            if !confirmed_removed(&context, partition, replica, &map).await {
                if context.groups.get(partition).is_none() {
                    // Data on disk from before a restart: run it meanwhile.
                    let owner = Replica {
                        node: context.node_id,
                        id: replica,
                    };
                    if let Err(error) = self.open(partition, owner, &map, false).await {
                        tracing::warn!(partition, %error, "opening a retiring partition replica");
                    }
                }
                continue;
            }
            if let Some(group) = context.groups.remove(partition) {
                tracing::info!(
                    partition,
                    replica = format!("{replica:x}"),
                    "the partition's leader confirmed this replica left the group: stopping it"
                );
                if let Err(error) = group.raft.shutdown().await {
                    tracing::warn!(partition, %error, "partition raft did not shut down cleanly");
                }
            }
            let purged = purge(&*context.engine, partition)
                .and_then(|()| context.commit.wal().remove_group(group_of(partition)));
            match purged {
                Ok(()) => {
                    tracing::info!(
                        partition,
                        replica = format!("{replica:x}"),
                        "deleted the data of a removed replica"
                    );
                    self.on_disk.as_mut().expect("read above").remove(&partition);
                }
                Err(error) => tracing::warn!(partition, %error, "deleting a removed replica's data"),
            }
        }
        // Open the wanted replicas whose disk space is free or already theirs.
        for (partition, replica) in &wanted {
            if context.groups.get(*partition).is_some() {
                continue;
            }
            let on_disk = self.on_disk.as_ref().expect("read above").get(partition).copied();
            if on_disk.is_some_and(|owner| owner != replica.id) {
                continue; // an older replica's data waits for deletion
            }
            match self.open(*partition, *replica, &map, on_disk.is_none()).await {
                Ok(()) => {
                    self.on_disk
                        .as_mut()
                        .expect("read above")
                        .insert(*partition, replica.id);
                }
                Err(error) => tracing::warn!(partition, %error, "opening a partition replica"),
            }
        }
        for group in context.groups.all() {
            if !group.is_leader() {
                continue;
            }
            let Some(record) = map.record(group.partition).cloned() else {
                continue;
            };
            if !self
                .leading
                .lock()
                .expect("agent lock poisoned")
                .insert(group.partition)
            {
                continue;
            }
            let (context, leading) = (context.clone(), self.leading.clone());
            tokio::spawn(async move {
                lead(&context, &group, &record).await;
                leading.lock().expect("agent lock poisoned").remove(&group.partition);
            });
        }
    }

    /// Start `replica` of `partition` here (see the module doc, step 2);
    /// `fresh`: no data of this partition is on disk yet.
    async fn open(&self, partition: PartitionId, replica: Replica, map: &ShardMap, fresh: bool) -> Result<(), String> {
        let context = &self.context;
        let group = group_of(partition);
        if fresh {
            record_replica(&*context.engine, partition, replica.id).map_err(|error| error.to_string())?;
        }
        let raft_config = context
            .raft
            .openraft_config(&format!("{}/partition/{partition}", context.cluster_token))
            .map_err(|error| error.to_string())?;
        let log_store = LogStore::new(context.commit.clone(), group);
        let state_machine = StateMachineStore::<PartitionApp>::open(context.engine.clone(), group)
            .map_err(|error| error.to_string())?;
        let shared = state_machine.shared();
        // A removed partition replica is closed by this agent, not by the network layer.
        let (removed, _) = watch::channel(false);
        let network = NetworkFactory::new(context.pool.clone(), group, Arc::new(removed));
        let raft = Raft::new(replica.id, Arc::new(raft_config), network, log_store, state_machine)
            .await
            .map_err(|error| error.to_string())?;
        if let Some(record) = map.record(partition) {
            if at_creation(record) && record.replicas.contains(&replica) {
                initialize(context, &raft, partition, record).await;
            }
        }
        context.groups.insert(Arc::new(PartitionGroup::new(
            partition,
            map.partitions,
            replica.id,
            context.node_id,
            raft.clone(),
            shared,
            context.pool.clone(),
        )));
        tokio::spawn(crate::raft::tiebreak::run(
            raft,
            Duration::from_millis(context.raft.election_timeout_ms),
            self.shutdown.clone(),
        ));
        tracing::info!(
            partition,
            replica = format!("{:x}", replica.id),
            "partition replica opened"
        );
        Ok(())
    }
}

/// A partition whose replica set never changed since the map was created.
fn at_creation(record: &PartitionRecord) -> bool {
    record.epoch == CREATION_EPOCH && record.membership_index == 0
}

/// How a partition group's membership names `replica`: its node and that
/// node's peer URLs (from `meta`'s membership).
fn replica_node(context: &AgentContext, replica: Replica) -> Option<ReplicaNode> {
    context.meta.peer_node(replica.node).map(|peer| ReplicaNode {
        node: replica.node,
        peer_urls: peer.peer_urls,
    })
}

/// Initialize a new partition group with its first replica set; refused
/// harmlessly where the group already has a log (a restart, or entries
/// from a leader that got here first).
async fn initialize(
    context: &AgentContext,
    raft: &Raft<super::app::StoreRaftConfig>,
    partition: PartitionId,
    record: &PartitionRecord,
) {
    let members: BTreeMap<u64, ReplicaNode> = record
        .replicas
        .iter()
        .filter_map(|replica| replica_node(context, *replica).map(|node| (replica.id, node)))
        .collect();
    if members.len() != record.replicas.len() {
        tracing::warn!(
            partition,
            "a first replica is not a member of the cluster: not initializing"
        );
        return;
    }
    match raft.is_initialized().await {
        Ok(true) => {}
        Ok(false) => {
            if let Err(error) = raft.initialize(members).await {
                tracing::debug!(partition, %error, "partition already initialized");
            }
        }
        Err(error) => tracing::warn!(partition, %error, "partition raft stopped"),
    }
}

/// Offer this node to the store, or update its weight and zone.
async fn register(context: &AgentContext, map: &ShardMap) {
    let current = map
        .nodes
        .get(&context.node_id)
        .is_some_and(|node| node.weight == context.weight && node.zone == context.zone);
    if current {
        return;
    }
    let command = MetaCommand::Store(ShardMapCommand::Register {
        id: context.node_id,
        weight: context.weight,
        zone: context.zone.clone(),
    });
    if let Err(error) = context.meta.write(command).await {
        tracing::debug!(%error, "registering with the store; will retry");
    }
}

/// Prefix of the local records naming the replica that owns a partition's
/// data on this disk.
const REPLICA_RECORD_PREFIX: &str = "store/replica/";

fn replica_record_key(partition: PartitionId) -> Vec<u8> {
    Key::Local {
        name: format!("{REPLICA_RECORD_PREFIX}{partition:05}"),
    }
    .encode()
}

/// Record, durably, that `partition`'s data here belongs to `replica`.
fn record_replica(
    engine: &dyn Engine,
    partition: PartitionId,
    replica: u64,
) -> Result<(), zongheng_storage::StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(replica_record_key(partition), replica.to_be_bytes().to_vec());
    engine.write(batch, Durability::Sync)
}

/// The replica each partition's data on this disk belongs to.
fn replicas_on_disk(engine: &dyn Engine) -> Result<BTreeMap<PartitionId, u64>, zongheng_storage::StorageError> {
    let start = Key::Local {
        name: REPLICA_RECORD_PREFIX.to_string(),
    }
    .encode();
    let mut end = start.clone();
    *end.last_mut().expect("the prefix is not empty") += 1;
    let mut replicas = BTreeMap::new();
    for (key, value) in engine.scan(&start, Some(&end), LOCAL_GROUPS_SCAN_MAX)? {
        let Ok(Key::Local { name }) = Key::decode(&key) else {
            continue;
        };
        let partition = name
            .strip_prefix(REPLICA_RECORD_PREFIX)
            .and_then(|rest| rest.parse().ok());
        let replica = <[u8; 8]>::try_from(value.as_slice()).map(u64::from_be_bytes);
        match (partition, replica) {
            (Some(partition), Ok(replica)) => {
                replicas.insert(partition, replica);
            }
            _ => tracing::warn!(name, "an unreadable replica record; ignoring it"),
        }
    }
    Ok(replicas)
}

/// Drop the logs of partition groups with no replica record: a crash came
/// between deleting a removed replica's data (record included) and removing
/// its log, which would otherwise keep its log segments forever.
fn remove_orphan_logs(context: &AgentContext, on_disk: &BTreeMap<PartitionId, u64>) {
    let wal = context.commit.wal();
    for group in wal.groups() {
        let Some(partition) = crate::store::group::partition_of_group(group) else {
            continue;
        };
        if on_disk.contains_key(&partition) {
            continue;
        }
        match wal.remove_group(group) {
            Ok(()) => tracing::info!(partition, "removed the log of a replica whose data was deleted"),
            Err(error) => tracing::warn!(partition, %error, "removing the log of a deleted replica"),
        }
    }
}

/// Forget everything this node stored for `partition`, with the record of
/// whose it was, in one synced write.
fn purge(engine: &dyn Engine, partition: PartitionId) -> Result<(), zongheng_storage::StorageError> {
    let mut batch = WriteBatch::new();
    for (start, end) in Key::group_ranges(group_of(partition)) {
        batch.delete_range(start..end);
    }
    batch.delete(replica_record_key(partition));
    engine.write(batch, Durability::Sync)
}

/// Whether `partition`'s leader confirmed that `replica` is out of the
/// group (see the module doc, step 4). Asks the node of the last reported
/// leader first, then the nodes of the replicas the map lists, following
/// the leaders they name. A replica the map never knew (no record at all)
/// has nobody to ask and keeps its data.
async fn confirmed_removed(context: &AgentContext, partition: PartitionId, replica: u64, map: &ShardMap) -> bool {
    let Some(record) = map.record(partition) else {
        return false;
    };
    let mut candidates: Vec<u64> = record.leader.into_iter().chain(record.nodes()).collect();
    let mut asked = BTreeSet::new();
    while let Some(node) = candidates.first().copied() {
        candidates.remove(0);
        if node == context.node_id || !asked.insert(node) {
            continue;
        }
        let Some(address) = context.meta.peer_node(node).and_then(|peer| peer.peer_address()) else {
            continue;
        };
        let mut client = context.pool.client(&address);
        let mut request = tonic::Request::new(ReplicaStatusRequest {
            group_id: group_of(partition),
            replica_id: replica,
        });
        request.set_timeout(REPLICA_STATUS_TIMEOUT);
        let reply = match tokio::time::timeout(REPLICA_STATUS_TIMEOUT, client.replica_status(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            _ => continue,
        };
        if reply.confirmed {
            return !reply.member;
        }
        // The answer names the leader's replica; its node is in the map.
        let leader_node = record
            .replicas
            .iter()
            .chain(record.moving.and_then(|step| step.add).as_ref())
            .find(|candidate| candidate.id == reply.leader_id)
            .map(|candidate| candidate.node);
        if let Some(leader_node) = leader_node {
            candidates.insert(0, leader_node);
        }
    }
    false
}

/// One round of a partition leader's duties (see the module doc, step 5).
async fn lead(context: &AgentContext, group: &PartitionGroup, record: &PartitionRecord) {
    let partition = group.partition;
    let term = group.raft.metrics().borrow().current_term;
    if record.leader != Some(context.node_id) || record.leader_term < term {
        let command = MetaCommand::Store(ShardMapCommand::ReportLeader {
            partition,
            leader: context.node_id,
            term,
        });
        if let Err(error) = context.meta.write(command).await {
            tracing::debug!(partition, %error, "reporting partition leadership");
        }
    }
    if let Err(error) = reconcile_membership(context, group, record).await {
        tracing::debug!(partition, %error, "partition membership change; will retry");
    }
    let epoch = group.state.read().expect("state machine lock poisoned").app.epoch;
    if epoch < record.epoch {
        if let Err(error) = group
            .raft
            .client_write(PartitionCommand::SetEpoch { epoch: record.epoch })
            .await
        {
            tracing::debug!(partition, %error, "raising the partition's epoch");
        }
    }
}

/// Bring the group's membership one step closer to what the map asks.
async fn reconcile_membership(
    context: &AgentContext,
    group: &PartitionGroup,
    record: &PartitionRecord,
) -> Result<(), String> {
    let partition = group.partition;
    let (pending, last_log_index, replication) = {
        let metrics = group.raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.membership_config.clone(),
            metrics.last_log_index.unwrap_or(0),
            metrics.replication.clone().unwrap_or_default(),
        )
    };
    let committed = group
        .state
        .read()
        .expect("state machine lock poisoned")
        .last_membership
        .clone();
    if pending.log_id() != committed.log_id() {
        return Ok(()); // a change is still committing
    }
    let membership = committed.membership();
    if let Some(last) = membership
        .get_joint_config()
        .last()
        .filter(|_| membership.get_joint_config().len() > 1)
    {
        // A leader stopped half-way through a change: finish it.
        let voters: BTreeSet<u64> = last.clone();
        return change(group, ChangeMembers::ReplaceAllVoters(voters)).await;
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    let node_of = |replica: u64| membership.get_node(&replica).map(|node| node.node);
    let membership_index = committed.log_id().map(|log_id| log_id.index).unwrap_or(0);
    let recorded: BTreeSet<u64> = record.replicas.iter().map(|replica| replica.id).collect();
    if voters != recorded && membership_index > record.membership_index {
        let reported: Vec<Replica> = voters
            .iter()
            .map(|id| Replica {
                node: node_of(*id).expect("a voter is in the membership"),
                id: *id,
            })
            .collect();
        let command = MetaCommand::Store(ShardMapCommand::ReportReplicas {
            partition,
            voters: reported,
            membership_index,
        });
        return context
            .meta
            .write(command)
            .await
            .map(|_| ())
            .map_err(|error| format!("reporting the voters: {error}"));
    }
    let step = record.moving;
    let wanted_learner = step.and_then(|step| step.add).filter(|add| !voters.contains(&add.id));
    let stray: BTreeSet<u64> = learners
        .iter()
        .copied()
        .filter(|learner| Some(*learner) != wanted_learner.map(|add| add.id))
        .collect();
    if !stray.is_empty() {
        return change(group, ChangeMembers::RemoveNodes(stray)).await;
    }
    let Some(step) = step else {
        return Ok(());
    };
    if step
        .add
        .is_some_and(|add| voters.iter().any(|id| *id != add.id && node_of(*id) == Some(add.node)))
    {
        // The target node already holds a voter (an earlier change landed
        // after its move was cancelled): a second one would put two votes
        // on one node. The map drops the move once the voters are reported.
        return Ok(());
    }
    let mut target = voters.clone();
    if let Some(remove) = step.remove {
        target.retain(|id| node_of(*id) != Some(remove));
    }
    if let Some(add) = step.add {
        target.insert(add.id);
    }
    if target == voters || target.is_empty() {
        return Ok(());
    }
    if let Some(add) = wanted_learner {
        if !learners.contains(&add.id) {
            let node = replica_node(context, add)
                .ok_or_else(|| format!("move target {:x} is not a member of the cluster", add.node))?;
            tracing::info!(
                partition,
                add = format!("{:x}", add.id),
                node = format!("{:x}", add.node),
                "adding a learner"
            );
            return group
                .raft
                .add_learner(add.id, node, false)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string());
        }
        let matched = replication.get(&add.id).cloned().flatten().map(|log_id| log_id.index);
        let caught_up =
            matched.is_some_and(|matched| last_log_index.saturating_sub(matched) <= LEARNER_CATCH_UP_LAG_MAX);
        if !caught_up {
            return Ok(());
        }
    }
    // etcd's rule, as for `meta` (`MetaGroup::check_quorum_after`): a
    // change whose old or new voters could not form a quorum of members that
    // answered lately would stall the partition in a joint configuration
    // until they return, or for good if one was wiped. An intent decided
    // long ago (the driver's view was cut off) meets today's cluster here.
    let active = |id: &u64| *id == group.replica_id || context.pool.answered_within(*id, ACTIVE_PEER_WINDOW);
    let has_quorum = |set: &BTreeSet<u64>| set.iter().filter(|id| active(id)).count() * 2 > set.len();
    if !has_quorum(&voters) || !has_quorum(&target) {
        return Err(format!(
            "not changing voters {voters:x?} to {target:x?}: too few of them answered within {} ms",
            ACTIVE_PEER_WINDOW.as_millis()
        ));
    }
    tracing::info!(partition, ?step, "changing the partition's voters");
    change(group, ChangeMembers::ReplaceAllVoters(target)).await
}

async fn change(group: &PartitionGroup, members: ChangeMembers<u64, ReplicaNode>) -> Result<(), String> {
    group
        .raft
        .change_membership(members, false)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}
