//! The running `meta` group on one node: writes, reads and membership changes,
//! from whichever member a client happens to reach.
//!
//! - **Writes** go to the leader. On the leader they are proposed with
//!   `client_write`; on a follower they are forwarded over the peer service
//!   ([`LeaderCall`]). A forwarded call refused with "not leader" (nothing was
//!   proposed) is retried against the new leader until the request deadline;
//!   a call whose outcome is unknown (timeout, connection lost after sending)
//!   is reported as a timeout and never retried here, because it may have
//!   been applied: the client decides, as with etcd.
//! - **Linearizable reads** use read-index: the leader confirms it still leads
//!   (a heartbeat round to a quorum) and names the log index a read must see;
//!   the serving node waits until it has applied that index and reads
//!   locally. A follower asks the leader for the index over the peer service,
//!   so followers serve linearizable reads without moving the data.
//! - **Serializable reads** read the local state as it is (possibly stale).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zongheng_proto::etcdserverpb::ResponseHeader;
use zongheng_proto::peer::{ForwardRequest, ReadIndexRequest};

use super::app::MetaApp;
use super::command::{MetaCommand, MetaResponse};
use super::mvcc::MvccError;
use super::proposer::Proposer;
use super::read_index::ReadIndexBatcher;
use super::MetaRaftConfig;
use crate::raft::codec;
use crate::raft::network::{PeerAddress, PeerPool};
use crate::raft::state_machine::Shared;
use crate::raft::{PeerNode, META_GROUP};
use crate::store::timestamp::{Allocation, OracleError, Timestamp, TimestampOracle, TIMESTAMP_BATCH_MAX};

/// How long a request may wait for a leader, a proposal or a read index.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while there is no leader or it just changed.
const LEADER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// A voter counts as active when it answered the leader this recently.
pub const ACTIVE_PEER_WINDOW: Duration = Duration::from_secs(3);
/// A learner is promotable when it is at most this many entries behind.
pub const LEARNER_PROMOTE_LAG_MAX: u64 = 1_000;

/// Why a `meta` operation failed. Each maps to the gRPC status etcd clients
/// expect (see `server::status`).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    #[error("no leader")]
    NoLeader,
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("{0}")]
    Refused(MvccError),
    #[error("{0}")]
    Store(crate::store::shard_map::ShardMapError),
    #[error("member not found")]
    MemberNotFound,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("membership change in progress")]
    MembershipInProgress,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a follower asks the leader to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderCall {
    Command(MetaCommand),
    AddMember {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    RemoveMember {
        id: u64,
    },
    PromoteMember {
        id: u64,
    },
    UpdateMember {
        id: u64,
        peer_urls: Vec<String>,
    },
    /// Renew a lease on the leader's clock (not written to the log).
    LeaseKeepAlive {
        id: i64,
    },
    /// Seconds left on a lease, by the leader's clock.
    LeaseTimeToLive {
        id: i64,
    },
    /// `count` transaction timestamps from the leader's oracle.
    Timestamps {
        count: u32,
    },
}

/// The leader's answer to a [`LeaderCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    /// The command's response and the log index it was applied at.
    Applied {
        response: MetaResponse,
        index: u64,
    },
    MemberAdded {
        id: u64,
    },
    MembershipChanged,
    /// The lease's TTL (keep-alive) or remaining seconds (time-to-live);
    /// `None` when the lease does not exist.
    LeaseTtl {
        ttl: Option<i64>,
        granted_ttl: i64,
    },
    /// Timestamps `first..first + count`.
    Timestamps {
        first: u64,
        count: u32,
    },
}

/// One member as `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

pub struct MetaGroup {
    pub node_id: u64,
    pub cluster_id: u64,
    pub raft: Raft<MetaRaftConfig>,
    pub state: Shared<MetaApp>,
    pool: Arc<PeerPool>,
    /// Batches the writes this node proposes while it leads.
    proposer: Proposer,
    /// Batches the leadership confirmations of linearizable reads.
    reads: ReadIndexBatcher,
    /// Lease deadlines, kept while this node leads (see `meta::lease`).
    pub lease_clock: super::lease::SharedLeaseClock,
    /// The timestamp oracle while this node leads, with the term it was
    /// started in (a new term starts it again from the committed mark).
    oracle: tokio::sync::Mutex<Option<(u64, TimestampOracle)>>,
    /// Wall-clock milliseconds since the Unix epoch (injected: simulated
    /// time in the simulator).
    wall_clock_ms: WallClock,
}

/// A source of wall-clock milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

impl MetaGroup {
    pub fn new(
        node_id: u64,
        cluster_id: u64,
        raft: Raft<MetaRaftConfig>,
        state: Shared<MetaApp>,
        pool: Arc<PeerPool>,
        wall_clock_ms: WallClock,
    ) -> Self {
        Self {
            oracle: tokio::sync::Mutex::new(None),
            wall_clock_ms,
            node_id,
            cluster_id,
            proposer: Proposer::start(raft.clone()),
            reads: ReadIndexBatcher::start(raft.clone()),
            raft,
            state,
            pool,
            lease_clock: Default::default(),
        }
    }

    /// The response header for a reply at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let term = self.raft.metrics().borrow().current_term;
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node_id,
            revision,
            raft_term: term,
        }
    }

    /// Read the local state (serializable: as applied here, possibly stale).
    pub fn read<T>(&self, read: impl FnOnce(&MetaApp) -> T) -> T {
        let applied = self.state.read().expect("state machine lock poisoned");
        read(&applied.app)
    }

    pub fn current_leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Member `id` as Raft membership records it (its peer URLs).
    pub fn peer_node(&self, id: u64) -> Option<PeerNode> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().get_node(&id).cloned()
    }

    /// Every member (voters and learners) as Raft membership records it.
    pub fn peer_nodes(&self) -> BTreeMap<u64, PeerNode> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect()
    }

    /// The voters of `meta`.
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.voters()
    }

    fn peer_address_of(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .and_then(PeerAddress::peer_address)
    }

    /// Propose a command through the leader and wait until it is applied on
    /// this member too (as etcd answers from the member that took the
    /// request), so a serializable read here right after sees the write.
    pub async fn write(&self, command: MetaCommand) -> Result<MetaResponse, MetaError> {
        let (response, index) = match self.call_leader(LeaderCall::Command(command)).await? {
            LeaderReply::Applied { response, index } => (response, index),
            other => return Err(MetaError::Internal(format!("unexpected leader reply {other:?}"))),
        };
        self.wait_applied(index, REQUEST_TIMEOUT).await?;
        match response {
            MetaResponse::Refused(error) => Err(MetaError::Refused(error)),
            MetaResponse::StoreRefused(error) => Err(MetaError::Store(error)),
            response => Ok(response),
        }
    }

    /// Wait until this member has applied log index `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), MetaError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "apply")
            .await
            .map(|_| ())
            .map_err(|error| match error {
                openraft::metrics::WaitError::Timeout(..) => MetaError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => MetaError::Stopped,
            })
    }

    /// Run `call` on the current leader, following leader changes until
    /// [`REQUEST_TIMEOUT`].
    pub async fn call_leader(&self, call: LeaderCall) -> Result<LeaderReply, MetaError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let result = match self.current_leader() {
                None => Err(MetaError::NoLeader),
                Some(leader) if leader == self.node_id => self.execute_on_leader(call.clone(), deadline).await,
                Some(leader) => self.forward(leader, &call, deadline).await,
            };
            match result {
                Err(MetaError::NoLeader | MetaError::NotLeader { .. })
                    if Instant::now() + LEADER_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(LEADER_RETRY_PAUSE).await;
                }
                Err(MetaError::NotLeader { .. }) => return Err(MetaError::NoLeader),
                other => return other,
            }
        }
    }

    async fn forward(&self, leader: u64, call: &LeaderCall, deadline: Instant) -> Result<LeaderReply, MetaError> {
        let Some(address) = self.peer_address_of(leader) else {
            return Err(MetaError::NoLeader);
        };
        let payload = codec::encode(call).map_err(|error| MetaError::Internal(error.to_string()))?;
        let mut client = self.pool.client(&address);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(ForwardRequest {
            group_id: META_GROUP,
            payload,
        });
        request.set_timeout(remaining);
        let reply = match tokio::time::timeout(remaining, client.forward(request)).await {
            Err(_) => return Err(MetaError::Timeout),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable && is_connect_failure(&status) => {
                // No connection to the leader: the request never left this
                // node, so it is safe to wait for a new leader and retry.
                return Err(MetaError::NotLeader { leader: None });
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                // The connection broke with the request possibly delivered:
                // the outcome is unknown, report a timeout (never retry).
                return Err(MetaError::Timeout);
            }
            // A broken stream (`Unknown` "transport error"), tonic's own
            // deadline (`Cancelled`), anything else from the transport: the
            // request may have been applied. Report a timeout, as etcd does.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(MetaError::Timeout);
            }
            Ok(Err(status)) => return Err(MetaError::Internal(format!("forward to leader: {status}"))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        codec::decode::<Result<LeaderReply, MetaError>>(&reply.payload)
            .map_err(|error| MetaError::Internal(error.to_string()))?
    }

    /// Execute `call` here, where this node believes it leads. Used by the
    /// peer service for forwarded calls too; it never forwards again.
    pub async fn execute_on_leader(&self, call: LeaderCall, deadline: Instant) -> Result<LeaderReply, MetaError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let work = async {
            match call {
                LeaderCall::Command(command) => {
                    let (response, index) = self.proposer.propose(command).await?;
                    Ok(LeaderReply::Applied { response, index })
                }
                LeaderCall::AddMember { peer_urls, is_learner } => self.add_member(peer_urls, is_learner).await,
                LeaderCall::RemoveMember { id } => self.remove_member(id).await,
                LeaderCall::PromoteMember { id } => self.promote_member(id).await,
                LeaderCall::UpdateMember { id, peer_urls } => self.update_member(id, peer_urls).await,
                LeaderCall::LeaseKeepAlive { id } => self.lease_on_leader(id, true),
                LeaderCall::LeaseTimeToLive { id } => self.lease_on_leader(id, false),
                LeaderCall::Timestamps { count } => self.timestamps_on_leader(count).await,
            }
        };
        match tokio::time::timeout(remaining, work).await {
            Ok(result) => result,
            Err(_) => Err(MetaError::Timeout),
        }
    }

    async fn add_member(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<LeaderReply, MetaError> {
        if peer_urls.is_empty() {
            return Err(MetaError::InvalidArgument(
                "member add needs at least one peer URL".into(),
            ));
        }
        let (existing_ids, url_taken, last_index) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let ids: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
            let taken = membership
                .nodes()
                .any(|(_, node)| node.peer_urls.iter().any(|url| peer_urls.contains(url)));
            (ids, taken, metrics.last_log_index.unwrap_or(0))
        };
        if url_taken {
            return Err(MetaError::PeerUrlExists);
        }
        // Unique and stable for this request: derived from the URLs and the
        // log position, re-drawn on the (unlikely) collision.
        let mut id = member_id(&peer_urls.join(","), last_index);
        while existing_ids.contains(&id) {
            id = member_id(&format!("{id}"), last_index);
        }
        let node = PeerNode {
            name: String::new(),
            peer_urls,
        };
        if !is_learner {
            // The new voter is not running yet: it does not count as active.
            let mut after = self.voters();
            after.insert(id);
            self.check_quorum_after(&after)?;
        }
        self.raft.add_learner(id, node, false).await.map_err(write_error)?;
        if !is_learner {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        Ok(LeaderReply::MemberAdded { id })
    }

    /// etcd's rule for membership changes: refuse a change after which the
    /// voters that are active now could not form a quorum (it would stall
    /// the cluster until the missing members return). `voters_after` is the
    /// voter set the change leads to.
    fn check_quorum_after(&self, voters_after: &BTreeSet<u64>) -> Result<(), MetaError> {
        let active = voters_after
            .iter()
            .filter(|id| **id == self.node_id || self.pool.answered_within(**id, ACTIVE_PEER_WINDOW))
            .count();
        let quorum = voters_after.len() / 2 + 1;
        if active < quorum {
            tracing::warn!(active, quorum, "refusing a membership change: too few active voters");
            return Err(MetaError::Unhealthy);
        }
        Ok(())
    }

    fn voters(&self) -> BTreeSet<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().voter_ids().collect()
    }

    async fn remove_member(&self, id: u64) -> Result<LeaderReply, MetaError> {
        let (is_voter, exists) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            (
                membership.voter_ids().any(|voter| voter == id),
                membership.get_node(&id).is_some(),
            )
        };
        if !exists {
            return Err(MetaError::MemberNotFound);
        }
        if is_voter {
            let mut after = self.voters();
            after.remove(&id);
            self.check_quorum_after(&after)?;
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft.change_membership(change, false).await.map_err(write_error)?;
        // Best effort: the attributes are cosmetic once the member is gone, and
        // this node may no longer lead (it may have removed itself).
        let _ = self.raft.client_write(MetaCommand::ForgetMember { id }).await;
        Ok(LeaderReply::MembershipChanged)
    }

    async fn promote_member(&self, id: u64) -> Result<LeaderReply, MetaError> {
        let (is_learner, lag) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let is_learner = membership.learner_ids().any(|learner| learner == id);
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            (is_learner, matched.map(|matched| last.saturating_sub(matched)))
        };
        if !is_learner {
            let exists = self.peer_address_of(id).is_some() || self.members().iter().any(|member| member.id == id);
            return Err(if exists {
                MetaError::NotLearner
            } else {
                MetaError::MemberNotFound
            });
        }
        match lag {
            Some(lag) if lag <= LEARNER_PROMOTE_LAG_MAX => {}
            _ => return Err(MetaError::LearnerNotReady),
        }
        let mut after = self.voters();
        after.insert(id);
        self.check_quorum_after(&after)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(LeaderReply::MembershipChanged)
    }

    /// Keep-alive or time-to-live of a lease, on the leader's clock.
    /// `count` timestamps from the oracle (see `store::timestamp`), through
    /// the leader.
    pub async fn timestamps(&self, count: u32) -> Result<(Timestamp, u32), MetaError> {
        match self.call_leader(LeaderCall::Timestamps { count }).await? {
            LeaderReply::Timestamps { first, count } => Ok((Timestamp(first), count)),
            other => Err(MetaError::Internal(format!("unexpected leader reply {other:?}"))),
        }
    }

    /// Hand out timestamps on the leader. A leader in a new term first
    /// confirms leadership and applies everything committed (so it sees the
    /// last committed mark), then starts its oracle above that mark; a mark
    /// the oracle asks for is committed before anything below it is handed
    /// out; and every answer waits for a leadership confirmation. Allocations
    /// are serialized by the oracle's lock.
    async fn timestamps_on_leader(&self, count: u32) -> Result<LeaderReply, MetaError> {
        let (first, count) = self.allocate_timestamps(count).await?;
        // A leader deposed without knowing it would still hand out
        // timestamps below its mark, smaller than those a new leader
        // already gave out: a transaction starting after another
        // committed could then miss its writes. Confirming leadership with
        // a quorum before answering rules that out (any newer leader's
        // timestamps come after this check, and start above the committed
        // mark). The oracle's lock is released first, so concurrent
        // requests share one confirmation round with linearizable reads.
        self.reads.read_index().await?;
        Ok(LeaderReply::Timestamps { first: first.0, count })
    }

    /// The allocation part of [`MetaGroup::timestamps_on_leader`], under the oracle's lock.
    async fn allocate_timestamps(&self, count: u32) -> Result<(Timestamp, u32), MetaError> {
        let mut oracle = self.oracle.lock().await;
        let term = self.raft.metrics().borrow().current_term;
        if oracle.as_ref().is_none_or(|(started, _)| *started != term) {
            self.read_index_local().await?;
            let mark = self.read(|app| app.timestamp_high_water_ms);
            *oracle = Some((term, TimestampOracle::start_leading(mark)));
        }
        let (_, state) = oracle.as_mut().expect("started above");
        loop {
            let now_ms = (self.wall_clock_ms)();
            match state.allocate(count, now_ms) {
                Err(OracleError::BadCount(count)) => {
                    return Err(MetaError::InvalidArgument(format!(
                        "asked for {count} timestamps; one request may take 1..={TIMESTAMP_BATCH_MAX}"
                    )))
                }
                Err(OracleError::NotReady) => return Err(MetaError::NoLeader),
                Ok(Allocation::Granted { first, count }) => return Ok((first, count)),
                Ok(Allocation::PersistFirst { high_water_ms }) => {
                    let command = MetaCommand::TimestampMark { high_water_ms };
                    let (response, _) = self.proposer.propose(command).await?;
                    if let MetaResponse::Refused(error) = response {
                        return Err(MetaError::Refused(error));
                    }
                    state.persisted(high_water_ms);
                }
            }
        }
    }

    fn lease_on_leader(&self, id: i64, renew: bool) -> Result<LeaderReply, MetaError> {
        if !self.is_leader() {
            return Err(MetaError::NotLeader {
                leader: self.current_leader(),
            });
        }
        let Some(granted_ttl) = self.read(|app| app.kv.lease(id).map(|record| record.ttl)) else {
            return Ok(LeaderReply::LeaseTtl {
                ttl: None,
                granted_ttl: 0,
            });
        };
        let now = Instant::now();
        let mut clock = self.lease_clock.lock().expect("lease clock lock poisoned");
        clock.ensure(id, granted_ttl, now);
        let ttl = if renew {
            clock.keep_alive(id, granted_ttl, now)
        } else {
            clock.remaining_seconds(id, now)
        };
        Ok(LeaderReply::LeaseTtl { ttl, granted_ttl })
    }

    async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<LeaderReply, MetaError> {
        if peer_urls.is_empty() {
            return Err(MetaError::InvalidArgument(
                "member update needs at least one peer URL".into(),
            ));
        }
        let node = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let taken = membership
                .nodes()
                .any(|(other, node)| *other != id && node.peer_urls.iter().any(|url| peer_urls.contains(url)));
            if taken {
                return Err(MetaError::PeerUrlExists);
            }
            let Some(node) = membership.get_node(&id) else {
                return Err(MetaError::MemberNotFound);
            };
            PeerNode {
                name: node.name.clone(),
                peer_urls,
            }
        };
        self.raft
            .change_membership(ChangeMembers::SetNodes([(id, node)].into_iter().collect()), false)
            .await
            .map_err(write_error)?;
        Ok(LeaderReply::MembershipChanged)
    }

    /// Wait until this node may serve a linearizable read: it has applied
    /// everything committed before the read began (read-index).
    pub async fn linearizable_barrier(&self) -> Result<(), MetaError> {
        if cfg!(feature = "mutation-stale-reads") {
            // The mutation build reads whatever this member has applied.
            return Ok(());
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let result = match self.current_leader() {
                None => Err(MetaError::NoLeader),
                Some(leader) if leader == self.node_id => self.read_index_local().await.map(|_| ()),
                Some(leader) => self.read_index_remote(leader, deadline).await,
            };
            match result {
                Err(MetaError::NoLeader | MetaError::NotLeader { .. })
                    if Instant::now() + LEADER_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(LEADER_RETRY_PAUSE).await;
                }
                Err(MetaError::NotLeader { .. }) => return Err(MetaError::NoLeader),
                other => return other,
            }
        }
    }

    /// On the leader: confirm leadership with a quorum and return the index a
    /// linearizable read must observe, once this node has applied it.
    pub async fn read_index_local(&self) -> Result<u64, MetaError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let read_index = self.reads.read_index().await?;
        self.wait_applied(read_index, deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok(read_index)
    }

    /// On the leader, for a follower: confirm leadership with a quorum and
    /// return the read index, without waiting for the leader's own apply
    /// (the follower waits for its own).
    pub async fn read_index_for_follower(&self) -> Result<u64, MetaError> {
        self.reads.read_index().await
    }

    async fn read_index_remote(&self, leader: u64, deadline: Instant) -> Result<(), MetaError> {
        let Some(address) = self.peer_address_of(leader) else {
            return Err(MetaError::NoLeader);
        };
        let mut client = self.pool.client(&address);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(ReadIndexRequest { group_id: META_GROUP });
        request.set_timeout(remaining);
        let reply = match tokio::time::timeout(remaining, client.read_index(request)).await {
            Err(_) => return Err(MetaError::Timeout),
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(MetaError::NotLeader { leader: None })
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(MetaError::NotLeader { leader: None })
            }
            // A read has no side effect: any transport failure is retried
            // against whoever leads next, until the deadline.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(MetaError::NotLeader { leader: None });
            }
            Ok(Err(status)) => return Err(MetaError::Internal(format!("read index from leader: {status}"))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(reply.read_index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|error| match error {
                openraft::metrics::WaitError::Timeout(..) => MetaError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => MetaError::Stopped,
            })
    }

    /// Every member, in id order, with what it published about itself.
    pub fn members(&self) -> Vec<MemberView> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let applied = self.state.read().expect("state machine lock poisoned");
        membership
            .nodes()
            .map(|(id, node)| {
                let attributes = applied.app.members.get(id);
                MemberView {
                    id: *id,
                    name: attributes
                        .map(|a| a.name.clone())
                        .filter(|name| !name.is_empty())
                        .unwrap_or_else(|| node.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: attributes.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: learners.contains(id),
                }
            })
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader
    }
}

pub(super) fn write_error(error: RaftError<u64, ClientWriteError<u64, PeerNode>>) -> MetaError {
    match error {
        // openraft answers ForwardToLeader both when the entry was never
        // appended and when it was appended and then truncated by a new
        // leader. A truncated entry may still be committed later (with five
        // voters, by another node holding it), so the outcome is unknown:
        // never retry it (that could apply the request twice).
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MetaError::Timeout,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => match change {
            ChangeMembershipError::InProgress(_) => MetaError::MembershipInProgress,
            ChangeMembershipError::EmptyMembership(_) => {
                MetaError::InvalidArgument("the change would leave the cluster without voters".into())
            }
            ChangeMembershipError::LearnerNotFound(_) => MetaError::MemberNotFound,
        },
        RaftError::Fatal(_) => MetaError::Stopped,
    }
}

/// Whether a peer call failed while connecting (so nothing was sent).
pub(crate) fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) {
                return true;
            }
        }
        source = error.source();
    }
    let message = status.message().to_ascii_lowercase();
    message.contains("connect error")
        || message.contains("error trying to connect")
        || message.contains("connection refused")
}

/// A member id: FNV-1a over `seed` and `salt`, never zero (etcd treats 0 as
/// "no member").
pub fn member_id(seed: &str, salt: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes().chain(salt.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}
