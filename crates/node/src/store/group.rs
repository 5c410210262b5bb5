//! One partition replica running on this node: its Raft group, and how a
//! request reaches the group's leader.
//!
//! Every partition is its own openraft instance with its own log (in the
//! node's one storage engine, under its own group id) and state machine
//! ([`PartitionApp`]), talking to its peers over the node's shared peer
//! connections (every message tagged with the group id).
//!
//! Requests go to the leader: writes are proposed there; linearizable reads
//! confirm leadership with a quorum (read index) and read once the leader has
//! applied that index. A replica that is not the leader forwards the request
//! over the peer service, and retries against a new leader while nothing was
//! sent. A request whose fate is unknown (sent, then the connection broke or
//! the deadline passed) is reported as [`GroupError::Timeout`] and never
//! retried here: every partition request is idempotent, so the client may.
//!
//! The group's first entry, [`PartitionCommand::Init`], is proposed by the
//! first leader that serves a request, so every replica learns which
//! partition it holds from the log.
//!
//! Which nodes hold a replica is decided by the shard map and carried out by
//! `store::agent` (which opens, closes and re-shapes groups).
//!
//! Not done yet (issue 6): proposals are not batched across groups (one fsync
//! per group append), and followers do not serve reads.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zongheng_algo::PartitionId;
use zongheng_proto::peer::{ForwardRequest, ReadIndexRequest};

use super::app::{PartitionApp, PartitionCommand, PartitionError, PartitionIdentity, ReplicaNode, StoreRaftConfig};
use super::request::{PartitionRequest, PartitionResponse};
use crate::raft::codec;
use crate::raft::network::{PeerAddress, PeerPool};
use crate::raft::state_machine::Shared;
use crate::raft::META_GROUP;

/// Group ids of partitions start here (the `meta` group is 0): partition p
/// is group `STORE_GROUP_BASE + p`.
pub const STORE_GROUP_BASE: u64 = 1_000;
/// How long a partition request may wait for a leader, a proposal or a read index.
pub const PARTITION_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while the group has no leader.
const LEADER_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The Raft group id of a partition.
pub fn group_of(partition: PartitionId) -> u64 {
    STORE_GROUP_BASE + u64::from(partition)
}

/// The partition of a Raft group id, if it is a store group.
pub fn partition_of_group(group: u64) -> Option<PartitionId> {
    (group >= STORE_GROUP_BASE && group != META_GROUP)
        .then(|| PartitionId::try_from(group - STORE_GROUP_BASE).ok())
        .flatten()
}

/// How fresh a read must be, chosen per request (the CAP choice, see
/// `docs/architecture.md` section 18).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// At the partition's leader after a read index: sees every write
    /// acknowledged before the read began. Unavailable without a quorum.
    #[default]
    Linearizable,
    /// At any replica, after asking the leader for a read index and waiting
    /// to apply it: as fresh as `Linearizable`, with the read's work on a
    /// follower. Still needs the leader and a quorum.
    Follower,
    /// At any replica, from what it has applied, if it heard from its leader
    /// within `max_staleness_ms`: may miss recent writes (the answer says by
    /// how old it may be), but works on a replica cut off from the leader
    /// until the bound passes.
    Stale { max_staleness_ms: u64 },
}

/// Why a partition request failed on the node side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    #[error("partition {0} has no leader")]
    NoLeader(PartitionId),
    #[error("partition {partition} is not led here (leader: {leader:?})")]
    NotLeader {
        partition: PartitionId,
        leader: Option<u64>,
    },
    #[error("request timed out; it may or may not have been applied")]
    Timeout,
    #[error("the partition replica stopped")]
    Stopped,
    #[error(
        "this replica last heard from its leader {staleness_ms} ms ago, more than the {max_staleness_ms} ms allowed"
    )]
    TooStale { staleness_ms: u64, max_staleness_ms: u64 },
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A request as forwarded between replicas: to the leader, or, for a
/// follower or stale read, to the replica that is to serve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub epoch: u64,
    pub request: PartitionRequest,
    pub read: ReadMode,
}

/// A read's answer and how stale it may be (0: as fresh as a linearizable read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadAnswer {
    pub response: PartitionResponse,
    pub staleness_ms: u64,
}

/// One partition replica on this node.
pub struct PartitionGroup {
    pub partition: PartitionId,
    /// P, the cluster's partition count.
    pub partitions: u32,
    /// This replica's id in the partition's group (see `store::shard_map`).
    pub replica_id: u64,
    /// The node it runs on.
    pub node: u64,
    pub raft: Raft<StoreRaftConfig>,
    pub state: Shared<PartitionApp>,
    pool: Arc<PeerPool>,
    /// When this replica last accepted entries or a heartbeat from a leader
    /// (for stale reads).
    leader_contact: std::sync::Mutex<Option<Instant>>,
}

impl PartitionGroup {
    pub fn new(
        partition: PartitionId,
        partitions: u32,
        replica_id: u64,
        node: u64,
        raft: Raft<StoreRaftConfig>,
        state: Shared<PartitionApp>,
        pool: Arc<PeerPool>,
    ) -> Self {
        Self {
            partition,
            partitions,
            replica_id,
            node,
            raft,
            state,
            pool,
            leader_contact: std::sync::Mutex::new(None),
        }
    }

    /// A leader's AppendEntries (entries or heartbeat) was accepted here now.
    pub fn heard_from_leader(&self) {
        *self.leader_contact.lock().expect("leader contact lock poisoned") = Some(Instant::now());
    }

    /// Milliseconds since this replica last heard from a leader (0 on the
    /// leader itself; `u64::MAX` if never).
    pub fn staleness_ms(&self) -> u64 {
        if self.is_leader() {
            return 0;
        }
        self.leader_contact
            .lock()
            .expect("leader contact lock poisoned")
            .map_or(u64::MAX, |at| at.elapsed().as_millis() as u64)
    }

    /// Serve the read `request` here, on this replica, as `mode` allows (see
    /// [`ReadMode`]); a linearizable read is served only by the leader.
    pub async fn read_here(
        &self,
        mode: ReadMode,
        epoch: u64,
        request: &PartitionRequest,
    ) -> Result<ReadAnswer, GroupError> {
        assert!(!request.is_write(), "only reads are served by any replica");
        let deadline = Instant::now() + PARTITION_REQUEST_TIMEOUT;
        let staleness_ms = match mode {
            ReadMode::Linearizable if !self.is_leader() => {
                return Err(GroupError::NotLeader {
                    partition: self.partition,
                    leader: self.current_leader(),
                })
            }
            ReadMode::Linearizable => {
                self.read_index().await?;
                0
            }
            ReadMode::Follower if self.is_leader() => {
                self.read_index().await?;
                0
            }
            ReadMode::Follower => {
                let leader = self.current_leader().ok_or(GroupError::NoLeader(self.partition))?;
                let index = self.remote_read_index(leader, deadline).await?;
                self.wait_applied(index, deadline).await?;
                0
            }
            ReadMode::Stale { max_staleness_ms } => {
                let staleness_ms = self.staleness_ms();
                if staleness_ms > max_staleness_ms {
                    return Err(GroupError::TooStale {
                        staleness_ms,
                        max_staleness_ms,
                    });
                }
                staleness_ms
            }
        };
        Ok(ReadAnswer {
            response: self.read_applied(epoch, request)?,
            staleness_ms,
        })
    }

    /// Answer the read `request` from the applied state as it is now.
    fn read_applied(&self, epoch: u64, request: &PartitionRequest) -> Result<PartitionResponse, GroupError> {
        let applied = self.state.read().expect("state machine lock poisoned");
        if applied.app.identity.is_none() {
            // Nothing was ever written here: read an empty partition,
            // with the same checks of the request.
            let empty = PartitionApp {
                identity: Some(PartitionIdentity {
                    partition: self.partition,
                    partitions: self.partitions,
                }),
                ..PartitionApp::default()
            };
            return Ok(empty.read(self.partition, epoch, request)?);
        }
        Ok(applied.app.read(self.partition, epoch, request)?)
    }

    /// On the leader, for a follower read elsewhere: confirm leadership with
    /// a quorum and return the index the follower must apply first.
    pub async fn read_index_for_follower(&self) -> Result<u64, GroupError> {
        let last_log_index = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let read_log_id = self.confirm_leadership().await?;
        Ok(read_log_id.max(last_log_index))
    }

    /// The peer address of `replica`'s node, from the group's membership.
    fn peer_address_of(&self, replica: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&replica)
            .and_then(PeerAddress::peer_address)
    }

    /// Ask the leader for a read index (see [`Self::read_index_for_follower`]).
    async fn remote_read_index(&self, leader: u64, deadline: Instant) -> Result<u64, GroupError> {
        let Some(address) = self.peer_address_of(leader) else {
            return Err(GroupError::NoLeader(self.partition));
        };
        let mut client = self.pool.client(&address);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut message = tonic::Request::new(ReadIndexRequest {
            group_id: self.group_id(),
        });
        message.set_timeout(remaining);
        match tokio::time::timeout(remaining, client.read_index(message)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().read_index),
            // A read has no side effect: any failure may be retried.
            Ok(Err(_)) | Err(_) => Err(GroupError::NotLeader {
                partition: self.partition,
                leader: None,
            }),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), GroupError> {
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "partition read")
            .await
            .map(|_| ())
            .map_err(|error| match error {
                openraft::metrics::WaitError::Timeout(..) => GroupError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => GroupError::Stopped,
            })
    }

    pub fn group_id(&self) -> u64 {
        group_of(self.partition)
    }

    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.replica_id)
    }

    /// Serve `request` (routed with shard-map `epoch`) through the group's
    /// leader, following leader changes until the deadline.
    pub async fn execute(&self, epoch: u64, request: PartitionRequest) -> Result<PartitionResponse, GroupError> {
        let deadline = Instant::now() + PARTITION_REQUEST_TIMEOUT;
        loop {
            let result = match self.current_leader() {
                None => Err(GroupError::NoLeader(self.partition)),
                Some(leader) if leader == self.replica_id => {
                    self.execute_on_leader(epoch, request.clone(), deadline).await
                }
                Some(leader) => self.forward(leader, epoch, &request, deadline).await,
            };
            match result {
                Err(GroupError::NoLeader(_) | GroupError::NotLeader { .. })
                    if Instant::now() + LEADER_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(LEADER_RETRY_PAUSE).await;
                }
                Err(GroupError::NotLeader { .. }) => return Err(GroupError::NoLeader(self.partition)),
                other => return other,
            }
        }
    }

    /// Serve `request` here, where this node believes it leads; used by the
    /// peer service for forwarded requests too (it never forwards again).
    pub async fn execute_on_leader(
        &self,
        epoch: u64,
        request: PartitionRequest,
        deadline: Instant,
    ) -> Result<PartitionResponse, GroupError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let work = async {
            if request.is_write() {
                self.ensure_initialized().await?;
                let command = PartitionCommand::Request {
                    partition: self.partition,
                    epoch,
                    request,
                };
                let reply = self
                    .raft
                    .client_write(command)
                    .await
                    .map_err(|error| self.write_error(error))?;
                Ok(reply.data?)
            } else {
                self.read_index().await?;
                self.read_applied(epoch, &request)
            }
        };
        tokio::time::timeout(remaining, work)
            .await
            .unwrap_or(Err(GroupError::Timeout))
    }

    /// Propose the group's first entry if no leader has yet.
    async fn ensure_initialized(&self) -> Result<(), GroupError> {
        let initialized = self
            .state
            .read()
            .expect("state machine lock poisoned")
            .app
            .identity
            .is_some();
        if initialized {
            return Ok(());
        }
        let init = PartitionCommand::Init {
            partition: self.partition,
            partitions: self.partitions,
        };
        let reply = self
            .raft
            .client_write(init)
            .await
            .map_err(|error| self.write_error(error))?;
        reply.data.map(|_| ()).map_err(GroupError::from)
    }

    /// Whether replica `replica` is a voter or learner of this group, in the committed
    /// or the pending membership, answered only where this replica leads
    /// and after confirming that with a quorum (see `store::agent`: a
    /// replica deletes its data only on a confirmed "no").
    pub async fn replica_status(&self, replica: u64) -> Result<bool, GroupError> {
        self.confirm_leadership().await?;
        let pending = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().get_node(&replica).is_some()
        };
        let committed = self
            .state
            .read()
            .expect("state machine lock poisoned")
            .last_membership
            .membership()
            .get_node(&replica)
            .is_some();
        Ok(pending || committed)
    }

    /// Confirm leadership with a quorum; the read log id's index.
    async fn confirm_leadership(&self) -> Result<u64, GroupError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|log_id| log_id.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => Err(GroupError::NotLeader {
                partition: self.partition,
                leader: forward.leader_id,
            }),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(GroupError::Timeout),
            Err(RaftError::Fatal(_)) => Err(GroupError::Stopped),
        }
    }

    /// Confirm leadership with a quorum and wait until this replica applied
    /// everything in its log at that moment (see `meta::read_index` for why
    /// the last log index, not only openraft's read log id).
    async fn read_index(&self) -> Result<(), GroupError> {
        let last_log_index = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let index = self.confirm_leadership().await?.max(last_log_index);
        self.wait_applied(index, Instant::now() + PARTITION_REQUEST_TIMEOUT)
            .await
    }

    async fn forward(
        &self,
        leader: u64,
        epoch: u64,
        request: &PartitionRequest,
        deadline: Instant,
    ) -> Result<PartitionResponse, GroupError> {
        let Some(address) = self.peer_address_of(leader) else {
            return Err(GroupError::NoLeader(self.partition));
        };
        let forwarded = ForwardedRequest {
            epoch,
            request: request.clone(),
            read: ReadMode::Linearizable,
        };
        let payload = codec::encode(&forwarded).map_err(|error| GroupError::Internal(error.to_string()))?;
        let mut client = self.pool.client(&address);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut message = tonic::Request::new(ForwardRequest {
            group_id: self.group_id(),
            payload,
        });
        message.set_timeout(remaining);
        let reply = match tokio::time::timeout(remaining, client.forward(message)).await {
            Err(_) => return Err(GroupError::Timeout),
            Ok(Err(status))
                if crate::meta::group::is_connect_failure(&status) || status.code() == tonic::Code::NotFound =>
            {
                // Nothing left this node, or the node holds no replica (any
                // more) and applied nothing: safe to wait for a leader and retry.
                return Err(GroupError::NotLeader {
                    partition: self.partition,
                    leader: None,
                });
            }
            // Anything else from the transport: the request may have been applied.
            Ok(Err(_)) => return Err(GroupError::Timeout),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        codec::decode::<Result<ReadAnswer, GroupError>>(&reply.payload)
            .map_err(|error| GroupError::Internal(error.to_string()))?
            .map(|answer| answer.response)
    }

    fn write_error(&self, error: RaftError<u64, ClientWriteError<u64, ReplicaNode>>) -> GroupError {
        match error {
            // As in `meta`: the entry may have been appended and may still
            // commit, so the outcome is unknown.
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => GroupError::Timeout,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => {
                GroupError::Internal(format!("unexpected membership error: {change}"))
            }
            RaftError::Fatal(_) => GroupError::Stopped,
        }
    }
}
