//! The store agent: what every node does to make its partition replicas
//! match the shard map, and what a partition's leader does to carry out the
//! moves the placement driver asks for.
//!
//! The agent runs on every node, once per [`AGENT_INTERVAL`], against this
//! node's view of the shard map (its applied `meta` state, which may lag):
//!
//! 1. **Register**: the node offers itself to the store with its weight and
//!    zone ([`ShardMapCommand::Register`]); again whenever they change.
//! 2. **Open** a replica of every partition the map wants here (a voter, or
//!    the target of a move): an openraft instance on this node's engine. A
//!    partition still at its creation (epoch 1, no reported change) is
//!    initialized with its first replica set, as `meta` members initialize
//!    `meta`; any other replica starts empty and is caught up by its leader
//!    (log or snapshot) once that leader adds it as a learner.
//! 3. **Close** a replica the map no longer wants (its partition reported a
//!    committed membership without this node, or a move here was
//!    cancelled). Closing only stops the replica; its data stays.
//! 4. **Delete** a closed replica's data only when the partition's leader,
//!    after confirming its leadership with a quorum, answers that this node
//!    is in neither its committed nor its pending membership
//!    (`Peer.ReplicaStatus`). The map can lag the group, and a node whose
//!    view lags the map could otherwise erase a voter's log, which Raft
//!    never allows (a wiped voter can help commit an entry twice). Data on
//!    disk for partitions the map does not want here, found when the agent
//!    starts, goes through the same check.
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

use super::app::{PartitionApp, PartitionCommand};
use super::group::{group_of, partition_of_group, PartitionGroup, STORE_GROUP_BASE};
use super::shard_map::{PartitionRecord, ShardMap, ShardMapCommand, CREATION_EPOCH};
use super::StoreGroups;
use crate::meta::command::MetaCommand;
use crate::meta::group::ACTIVE_PEER_WINDOW;
use crate::meta::MetaGroup;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerAddress, PeerPool};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{PeerNode, RaftSettings};

/// How often the agent compares the map with the local replicas.
pub const AGENT_INTERVAL: Duration = Duration::from_millis(200);
/// A learner is made a voter once it is at most this many entries behind
/// the leader's last entry.
pub const LEARNER_CATCH_UP_LAG_MAX: u64 = 64;
/// How long one `ReplicaStatus` question may take.
const REPLICA_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most groups with data on disk the agent lists at start (the partition
/// count is at most 4,096).
const LOCAL_GROUPS_SCAN_MAX: usize = 8_192;

/// What the agent needs from its node.
pub struct AgentContext {
    pub node_id: u64,
    pub meta: Arc<MetaGroup>,
    pub groups: Arc<StoreGroups>,
    pub engine: Arc<dyn Engine>,
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
        retired: BTreeSet::new(),
        disk_scanned: false,
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
    /// Partitions whose replica here is closed and whose data waits for the
    /// leader's word before it is deleted.
    retired: BTreeSet<PartitionId>,
    disk_scanned: bool,
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
        let wanted = map.wanted_by(context.node_id);
        if !self.disk_scanned {
            match groups_on_disk(&*context.engine) {
                Ok(on_disk) => {
                    self.retired
                        .extend(on_disk.into_iter().filter(|partition| !wanted.contains(partition)));
                    self.disk_scanned = true;
                }
                Err(error) => tracing::warn!(%error, "listing the partitions on disk"),
            }
        }
        for partition in &wanted {
            if context.groups.get(*partition).is_none() {
                self.retired.remove(partition);
                if let Err(error) = self.open(*partition, &map).await {
                    tracing::warn!(partition, %error, "opening a partition replica");
                }
            }
        }
        for group in context.groups.all() {
            if !wanted.contains(&group.partition) {
                tracing::info!(
                    partition = group.partition,
                    "the shard map no longer lists this replica: closing it"
                );
                if let Some(group) = context.groups.remove(group.partition) {
                    if let Err(error) = group.raft.shutdown().await {
                        tracing::warn!(partition = group.partition, %error, "partition raft did not shut down cleanly");
                    }
                }
                self.retired.insert(group.partition);
            }
        }
        for partition in self.retired.clone() {
            if confirmed_removed(&context, partition, &map).await {
                match purge(&*context.engine, partition) {
                    Ok(()) => {
                        tracing::info!(partition, "deleted the data of a removed replica");
                        self.retired.remove(&partition);
                    }
                    Err(error) => tracing::warn!(partition, %error, "deleting a removed replica's data"),
                }
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

    /// Start this node's replica of `partition` (see the module doc, step 2).
    async fn open(&self, partition: PartitionId, map: &ShardMap) -> Result<(), String> {
        let context = &self.context;
        let group = group_of(partition);
        let raft_config = context
            .raft
            .openraft_config(&format!("{}/partition/{partition}", context.cluster_token))
            .map_err(|error| error.to_string())?;
        let log_store = LogStore::new(context.engine.clone(), group);
        let state_machine = StateMachineStore::<PartitionApp>::open(context.engine.clone(), group)
            .map_err(|error| error.to_string())?;
        let shared = state_machine.shared();
        // A removed partition replica is closed by this agent, not by the network layer.
        let (removed, _) = watch::channel(false);
        let network = NetworkFactory::new(context.pool.clone(), group, Arc::new(removed));
        let raft = Raft::new(
            context.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|error| error.to_string())?;
        if let Some(record) = map.record(partition) {
            if at_creation(record) && record.replicas.contains(&context.node_id) {
                initialize(context, &raft, partition, record).await;
            }
        }
        context.groups.insert(Arc::new(PartitionGroup::new(
            partition,
            map.partitions,
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
        tracing::info!(partition, "partition replica opened");
        Ok(())
    }
}

/// A partition whose replica set never changed since the map was created.
fn at_creation(record: &PartitionRecord) -> bool {
    record.epoch == CREATION_EPOCH && record.membership_index == 0
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
    let members: BTreeMap<u64, PeerNode> = record
        .replicas
        .iter()
        .filter_map(|id| context.meta.peer_node(*id).map(|node| (*id, node)))
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

/// The store partitions this node has data of (a vote: every group that
/// ever took part in an election or received entries has one).
fn groups_on_disk(engine: &dyn Engine) -> Result<BTreeSet<PartitionId>, zongheng_storage::StorageError> {
    let (start, end) = Key::raft_vote_range_from(STORE_GROUP_BASE);
    let pairs = engine.scan(&start, Some(&end), LOCAL_GROUPS_SCAN_MAX)?;
    let mut partitions = BTreeSet::new();
    for (key, _) in pairs {
        if let Ok(Key::RaftVote { group }) = Key::decode(&key) {
            if let Some(partition) = partition_of_group(group) {
                partitions.insert(partition);
            }
        }
    }
    Ok(partitions)
}

/// Forget everything this node stored for `partition`, in one synced write.
fn purge(engine: &dyn Engine, partition: PartitionId) -> Result<(), zongheng_storage::StorageError> {
    let mut batch = WriteBatch::new();
    for (start, end) in Key::group_ranges(group_of(partition)) {
        batch.delete_range(start..end);
    }
    engine.write(batch, Durability::Sync)
}

/// Whether `partition`'s leader confirmed that this node is out of the
/// group (see the module doc, step 4). Asks the leader hint first, then the
/// replicas the map lists, following the leader ids they answer with.
async fn confirmed_removed(context: &AgentContext, partition: PartitionId, map: &ShardMap) -> bool {
    let Some(record) = map.record(partition) else {
        return false;
    };
    let mut candidates: Vec<u64> = record
        .leader
        .into_iter()
        .chain(record.replicas.iter().copied())
        .collect();
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
            node_id: context.node_id,
        });
        request.set_timeout(REPLICA_STATUS_TIMEOUT);
        let reply = match tokio::time::timeout(REPLICA_STATUS_TIMEOUT, client.replica_status(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            _ => continue,
        };
        if reply.confirmed {
            return !reply.member;
        }
        if reply.leader_id != 0 {
            candidates.insert(0, reply.leader_id);
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
    let membership_index = committed.log_id().map(|log_id| log_id.index).unwrap_or(0);
    let recorded: BTreeSet<u64> = record.replicas.iter().copied().collect();
    if voters != recorded && membership_index > record.membership_index {
        let command = MetaCommand::Store(ShardMapCommand::ReportReplicas {
            partition,
            voters: voters.iter().copied().collect(),
            membership_index,
        });
        return context
            .meta
            .write(command)
            .await
            .map(|_| ())
            .map_err(|error| format!("reporting the voters: {error}"));
    }
    let intent = record.moving;
    let wanted_learner = intent.and_then(|intent| intent.add).filter(|add| !voters.contains(add));
    let stray: BTreeSet<u64> = learners
        .iter()
        .copied()
        .filter(|learner| Some(*learner) != wanted_learner)
        .collect();
    if !stray.is_empty() {
        return change(group, ChangeMembers::RemoveNodes(stray)).await;
    }
    let Some(intent) = intent else {
        return Ok(());
    };
    let mut target = voters.clone();
    if let Some(remove) = intent.remove {
        target.remove(&remove);
    }
    if let Some(add) = intent.add {
        target.insert(add);
    }
    if target == voters || target.is_empty() {
        return Ok(());
    }
    if let Some(add) = wanted_learner {
        if !learners.contains(&add) {
            let node = context
                .meta
                .peer_node(add)
                .ok_or_else(|| format!("move target {add:x} is not a member of the cluster"))?;
            tracing::info!(partition, add = format!("{add:x}"), "adding a learner");
            return group
                .raft
                .add_learner(add, node, false)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string());
        }
        let matched = replication.get(&add).cloned().flatten().map(|log_id| log_id.index);
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
    let active = |id: &u64| *id == context.node_id || context.pool.answered_within(*id, ACTIVE_PEER_WINDOW);
    let has_quorum = |set: &BTreeSet<u64>| set.iter().filter(|id| active(id)).count() * 2 > set.len();
    if !has_quorum(&voters) || !has_quorum(&target) {
        return Err(format!(
            "not changing voters {voters:x?} to {target:x?}: too few of them answered within {} ms",
            ACTIVE_PEER_WINDOW.as_millis()
        ));
    }
    tracing::info!(partition, ?intent, "changing the partition's voters");
    change(group, ChangeMembers::ReplaceAllVoters(target)).await
}

async fn change(group: &PartitionGroup, members: ChangeMembers<u64, PeerNode>) -> Result<(), String> {
    group
        .raft
        .change_membership(members, false)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}
