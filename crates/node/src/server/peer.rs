//! The peer service: Raft messages, forwarded writes, read-index and member
//! discovery between nodes. Requests name their Raft group: the `meta` group,
//! or a store partition's group (Raft messages and forwarded requests only);
//! a group this node has no replica of is refused with `NotFound`.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zongheng_proto::peer::peer_server::Peer;
use zongheng_proto::peer::{
    raft_batch_answer, raft_stream_answer, ForwardReply, ForwardRequest, MembersReply, MembersRequest, PeerMember,
    RaftBatchAnswer, RaftBatchError, RaftBatchRequest, RaftKind, RaftReply, RaftRequest, RaftStreamAnswer,
    RaftStreamAnswers, RaftStreamRequest, ReadIndexReply, ReadIndexRequest, ReplicaStatusReply, ReplicaStatusRequest,
};

use crate::meta::group::{LeaderCall, REQUEST_TIMEOUT};
use crate::meta::{MetaError, MetaGroup, MetaRaftConfig};
use crate::raft::batch::{RAFT_BATCH_MESSAGES_MAX, RAFT_BATCH_MESSAGE_TIMEOUT};
use crate::raft::{codec, META_GROUP};
use crate::store::app::StoreRaftConfig;
use crate::store::group::{
    partition_of_group, ForwardedRequest, GroupError, PartitionGroup, ReadAnswer, ReadMode, PARTITION_REQUEST_TIMEOUT,
};
use crate::store::StoreGroups;

#[derive(Clone)]
pub struct PeerService {
    meta: Arc<MetaGroup>,
    store: Arc<StoreGroups>,
    /// Set when the node stops: open Raft streams then end, so the server's
    /// graceful shutdown (which waits for every open stream) can finish.
    shutdown: watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(meta: Arc<MetaGroup>, store: Arc<StoreGroups>, shutdown: watch::Receiver<bool>) -> Self {
        Self { meta, store, shutdown }
    }

    /// The local replica of a store partition group, when `group_id` names one.
    fn partition_group(&self, group_id: u64) -> Option<Result<Arc<PartitionGroup>, Status>> {
        let partition = partition_of_group(group_id)?;
        Some(
            self.store.get(partition).ok_or_else(|| {
                Status::not_found(format!("zongheng: no replica of partition {partition} on this node"))
            }),
        )
    }

    async fn partition_raft(&self, group: &PartitionGroup, request: RaftRequest) -> Result<Vec<u8>, Status> {
        refuse_misaddressed_id(group.replica_id, request.to_member_id)?;
        let kind = RaftKind::try_from(request.kind).unwrap_or(RaftKind::Unspecified);
        match kind {
            RaftKind::AppendEntries => {
                let rpc: AppendEntriesRequest<StoreRaftConfig> =
                    codec::decode(&request.payload).map_err(bad_payload)?;
                let result = group.raft.append_entries(rpc).await;
                // A current leader reached us (a stale one is answered
                // `HigherVote`): the clock of stale reads restarts.
                if matches!(
                    result,
                    Ok(openraft::raft::AppendEntriesResponse::Success
                        | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                        | openraft::raft::AppendEntriesResponse::Conflict)
                ) {
                    group.heard_from_leader();
                }
                encode_reply(&result)
            }
            RaftKind::Vote => {
                let rpc: VoteRequest<u64> = codec::decode(&request.payload).map_err(bad_payload)?;
                encode_reply(&group.raft.vote(rpc).await)
            }
            RaftKind::InstallSnapshot => {
                let rpc: InstallSnapshotRequest<StoreRaftConfig> =
                    codec::decode(&request.payload).map_err(bad_payload)?;
                encode_reply(&group.raft.install_snapshot(rpc).await)
            }
            RaftKind::Unspecified => Err(Status::invalid_argument("zongheng: raft message kind not set")),
        }
    }

    /// One Raft message for the meta group or a partition group: the
    /// encoded answer of the group's `Raft` call.
    async fn raft_one(&self, request: RaftRequest) -> Result<Vec<u8>, Status> {
        if let Some(partition) = self.partition_group(request.group_id) {
            return self.partition_raft(&*partition?, request).await;
        }
        let group = self.group(request.group_id)?;
        refuse_misaddressed(group, request.to_member_id)?;
        let kind = RaftKind::try_from(request.kind).unwrap_or(RaftKind::Unspecified);
        let payload = match kind {
            RaftKind::AppendEntries => {
                let rpc: AppendEntriesRequest<MetaRaftConfig> = codec::decode(&request.payload).map_err(bad_payload)?;
                // A leader of a newer term than ours knows a newer
                // configuration than ours: we are the stale one.
                let current_term = group.raft.metrics().borrow().current_term;
                if rpc.vote.leader_id().term <= current_term {
                    refuse_removed(group, rpc.vote.leader_id().voted_for())?;
                }
                encode_reply(&group.raft.append_entries(rpc).await)?
            }
            RaftKind::Vote => {
                let rpc: VoteRequest<u64> = codec::decode(&request.payload).map_err(bad_payload)?;
                // A removed member's log ends at or before ours (we have
                // everything up to its removal and more); a candidate with a
                // longer log has seen entries we have not, such as the
                // change that added it: we are the stale one.
                // Only a leader refuses, and a leader's last entry is of its
                // own term (the blank entry it appends on election).
                let ours = {
                    let metrics = group.raft.metrics();
                    let metrics = metrics.borrow();
                    (metrics.current_term, metrics.last_log_index.unwrap_or(0))
                };
                let theirs = rpc
                    .last_log_id
                    .map(|id| (id.leader_id.term, id.index))
                    .unwrap_or((0, 0));
                if theirs <= ours {
                    refuse_removed(group, rpc.vote.leader_id().voted_for())?;
                }
                if cfg!(feature = "mutation-grant-all-votes") {
                    // The mutation build grants every vote without looking
                    // at terms or logs.
                    let granted: Result<openraft::raft::VoteResponse<u64>, openraft::error::RaftError<u64>> =
                        Ok(openraft::raft::VoteResponse::new(rpc.vote, rpc.last_log_id, true));
                    encode_reply(&granted)?
                } else {
                    encode_reply(&group.raft.vote(rpc).await)?
                }
            }
            RaftKind::InstallSnapshot => {
                let rpc: InstallSnapshotRequest<MetaRaftConfig> =
                    codec::decode(&request.payload).map_err(bad_payload)?;
                encode_reply(&group.raft.install_snapshot(rpc).await)?
            }
            RaftKind::Unspecified => return Err(Status::invalid_argument("zongheng: raft message kind not set")),
        };
        Ok(payload)
    }

    /// One message of a batch or stream, as `Raft` would answer it, given
    /// up after the sender's `timeout_ms` (at most
    /// [`RAFT_BATCH_MESSAGE_TIMEOUT`]).
    async fn raft_item(&self, request: Option<RaftRequest>, timeout_ms: u32) -> Result<Vec<u8>, Status> {
        let limit = match timeout_ms {
            0 => RAFT_BATCH_MESSAGE_TIMEOUT,
            ms => Duration::from_millis(ms.into()).min(RAFT_BATCH_MESSAGE_TIMEOUT),
        };
        let Some(request) = request else {
            return Err(Status::invalid_argument("zongheng: raft batch item without a message"));
        };
        tokio::time::timeout(limit, self.raft_one(request))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "zongheng: no answer within {} ms",
                    limit.as_millis()
                )))
            })
    }

    fn group(&self, group_id: u64) -> Result<&MetaGroup, Status> {
        if group_id == META_GROUP {
            Ok(&self.meta)
        } else {
            Err(Status::not_found(format!("zongheng: unknown raft group {group_id}")))
        }
    }
}

/// The leader tells a node it removed from the group so, when that node
/// asks for votes or acts as a leader: the removed node then stops (as etcd's
/// removed members do) instead of disrupting the cluster with elections. Only
/// a leader answers this way, and only to a sender that is not ahead of it
/// (the callers check: a vote request whose log is no longer than ours,
/// entries from a term no newer than ours). A leader cut off from the
/// majority keeps leading in its own eyes with an old configuration; without
/// that check it told a member added since, by then leader of a newer term,
/// that it was removed, and that member shut down (seed 34 of a campaign,
/// `crates/sim/tests/regressions.rs`).
fn refuse_removed(group: &MetaGroup, sender: Option<u64>) -> Result<(), Status> {
    let Some(sender) = sender else { return Ok(()) };
    if !group.is_leader() {
        return Ok(());
    }
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    if metrics.membership_config.membership().get_node(&sender).is_some() {
        return Ok(());
    }
    Err(crate::server::status::status(
        tonic::Code::FailedPrecondition,
        MEMBER_REMOVED_MESSAGE,
        MEMBER_REMOVED_CODE,
    ))
}

/// A Raft message addressed to another member id is refused. A peer address
/// outlives the member it was given to: after `member remove`, a wiped
/// machine is added again under a new id at the same address. A leader that
/// has not yet learned of the removal still sends the old id's votes and
/// entries there, and the new member's answer must not count: a fresh
/// learner grants any vote (seed 100 of a campaign: a stale candidate cut off
/// from the majority won an election with the new member's vote, and two
/// different entries were committed at one index). etcd checks its
/// `X-Raft-To` header the same way.
fn refuse_misaddressed(group: &MetaGroup, to_member_id: u64) -> Result<(), Status> {
    refuse_misaddressed_id(group.node_id, to_member_id)
}

/// [`refuse_misaddressed`] for any group: `node_id` is this node's member id.
fn refuse_misaddressed_id(node_id: u64, to_member_id: u64) -> Result<(), Status> {
    if to_member_id == 0 || to_member_id == node_id {
        return Ok(());
    }
    Err(crate::server::status::status(
        tonic::Code::FailedPrecondition,
        format!("zongheng: raft message for member {to_member_id:x} reached member {node_id:x}"),
        WRONG_MEMBER_CODE,
    ))
}

/// The error code of [`refuse_misaddressed`].
pub const WRONG_MEMBER_CODE: &str = "ZH_WRONG_MEMBER";

/// What the leader answers a removed member (see [`refuse_removed`]).
pub const MEMBER_REMOVED_MESSAGE: &str = "zongheng: this member was removed from the cluster";
pub const MEMBER_REMOVED_CODE: &str = "ZH_MEMBER_REMOVED";

/// The answer to message `index` of a batch: its reply, or the status a
/// single `Raft` call would have failed with.
fn batch_answer(index: u32, outcome: Result<Vec<u8>, Status>) -> RaftBatchAnswer {
    RaftBatchAnswer {
        index,
        outcome: Some(match outcome {
            Ok(payload) => raft_batch_answer::Outcome::Reply(RaftReply { payload }),
            Err(status) => raft_batch_answer::Outcome::Error(batch_error(&status)),
        }),
    }
}

/// The answer to message `id` of a `RaftStream`.
fn stream_answer(id: u64, outcome: Result<Vec<u8>, Status>) -> RaftStreamAnswer {
    RaftStreamAnswer {
        id,
        outcome: Some(match outcome {
            Ok(payload) => raft_stream_answer::Outcome::Reply(RaftReply { payload }),
            Err(status) => raft_stream_answer::Outcome::Error(batch_error(&status)),
        }),
    }
}

/// A status as one message's error in a batch or stream.
fn batch_error(status: &Status) -> RaftBatchError {
    RaftBatchError {
        code: status.code() as i32,
        message: status.message().to_string(),
        error_code: status
            .metadata()
            .get(crate::server::status::ERROR_CODE_METADATA)
            .and_then(|code| code.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Messages of one `RaftStream` being worked on at once. While this many
/// are unanswered the receiver reads no more of the stream, and HTTP/2 flow
/// control holds the sender back.
pub const RAFT_STREAM_MESSAGES_IN_PROGRESS_MAX: usize = 2_048;

/// Answers gathered into one `RaftStreamAnswers`.
pub const RAFT_STREAM_ANSWERS_MAX: usize = 256;

/// `RaftStreamAnswers` waiting for the sender to read them.
const RAFT_STREAM_ANSWERS_QUEUED: usize = 16;

fn batch_too_large(messages: usize) -> Status {
    crate::server::status::status(
        tonic::Code::InvalidArgument,
        format!("zongheng: a raft batch holds {messages} messages; the limit is {RAFT_BATCH_MESSAGES_MAX}"),
        "ZH_RAFT_BATCH_TOO_LARGE",
    )
}

fn bad_payload(error: codec::CodecError) -> Status {
    Status::invalid_argument(format!("zongheng: undecodable peer payload: {error}"))
}

fn encode_reply<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    codec::encode(value).map_err(|error| Status::internal(format!("zongheng: cannot encode reply: {error}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let payload = self.raft_one(request.into_inner()).await?;
        Ok(Response::new(RaftReply { payload }))
    }

    type RaftBatchStream = ReceiverStream<Result<RaftBatchAnswer, Status>>;

    async fn raft_batch(&self, request: Request<RaftBatchRequest>) -> Result<Response<Self::RaftBatchStream>, Status> {
        let items = request.into_inner().items;
        if items.len() > RAFT_BATCH_MESSAGES_MAX {
            return Err(batch_too_large(items.len()));
        }
        let (answers, stream) = tokio::sync::mpsc::channel(items.len().max(1));
        let service = self.clone();
        tokio::spawn(async move {
            let mut pending: FuturesUnordered<_> = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    let service = service.clone();
                    async move {
                        let outcome = service.raft_item(item.request, item.timeout_ms).await;
                        batch_answer(index as u32, outcome)
                    }
                })
                .collect();
            while let Some(answer) = pending.next().await {
                // The sender gone, the remaining answers have no reader;
                // the groups still finish their calls (dropping them here
                // would cancel a Raft call midway).
                let _ = answers.send(Ok(answer)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type RaftStreamStream = ReceiverStream<Result<RaftStreamAnswers, Status>>;

    async fn raft_stream(
        &self,
        request: Request<Streaming<RaftStreamRequest>>,
    ) -> Result<Response<Self::RaftStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, stream) = tokio::sync::mpsc::channel(RAFT_STREAM_ANSWERS_QUEUED);
        let service = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            // Whether the sender may still send: false once it closed its
            // side, the connection broke, it broke the protocol or this node
            // is stopping. What was taken is still answered (or at least
            // finished: dropping a message midway would cancel a Raft call);
            // then the answer stream ends, and the sender opens a new one.
            let mut reading = !*shutdown.borrow_and_update();
            loop {
                tokio::select! {
                    changed = shutdown.changed(), if reading => {
                        reading = changed.is_ok() && !*shutdown.borrow_and_update();
                    }
                    message = requests.message(),
                        if reading && pending.len() < RAFT_STREAM_MESSAGES_IN_PROGRESS_MAX =>
                    {
                        match message {
                            Ok(Some(request)) if request.items.len() > RAFT_BATCH_MESSAGES_MAX => {
                                let _ = answers.send(Err(batch_too_large(request.items.len()))).await;
                                reading = false;
                            }
                            Ok(Some(request)) => {
                                for item in request.items {
                                    let service = service.clone();
                                    pending.push(async move {
                                        let outcome = service.raft_item(item.request, item.timeout_ms).await;
                                        stream_answer(item.id, outcome)
                                    });
                                }
                            }
                            Ok(None) | Err(_) => reading = false,
                        }
                    }
                    Some(answer) = pending.next(), if !pending.is_empty() => {
                        // Whatever else is ready leaves in the same message.
                        let mut ready = vec![answer];
                        while ready.len() < RAFT_STREAM_ANSWERS_MAX {
                            match pending.next().now_or_never() {
                                Some(Some(answer)) => ready.push(answer),
                                _ => break,
                            }
                        }
                        let _ = answers.send(Ok(RaftStreamAnswers { answers: ready })).await;
                    }
                    else => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let request = request.into_inner();
        if let Some(partition) = self.partition_group(request.group_id) {
            let partition = partition?;
            let forwarded: ForwardedRequest = codec::decode(&request.payload).map_err(bad_payload)?;
            let result = if !forwarded.request.is_write() && forwarded.read != ReadMode::Linearizable {
                // Follower and stale reads are served by the replica asked.
                partition
                    .read_here(forwarded.read, forwarded.epoch, &forwarded.request)
                    .await
            } else if partition.is_leader() {
                let deadline = Instant::now() + PARTITION_REQUEST_TIMEOUT;
                partition
                    .execute_on_leader(forwarded.epoch, forwarded.request, deadline)
                    .await
                    .map(|response| ReadAnswer {
                        response,
                        staleness_ms: 0,
                    })
            } else {
                Err(GroupError::NotLeader {
                    partition: partition.partition,
                    leader: partition.current_leader(),
                })
            };
            return Ok(Response::new(ForwardReply {
                payload: encode_reply(&result)?,
            }));
        }
        let group = self.group(request.group_id)?;
        let call: LeaderCall = codec::decode(&request.payload).map_err(bad_payload)?;
        let result = if group.is_leader() {
            group.execute_on_leader(call, Instant::now() + REQUEST_TIMEOUT).await
        } else {
            Err(MetaError::NotLeader {
                leader: group.current_leader(),
            })
        };
        Ok(Response::new(ForwardReply {
            payload: encode_reply(&result)?,
        }))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let group_id = request.into_inner().group_id;
        if let Some(partition) = self.partition_group(group_id) {
            let partition = partition?;
            return match partition.read_index_for_follower().await {
                Ok(read_index) => Ok(Response::new(ReadIndexReply {
                    read_index,
                    leader_id: partition.replica_id,
                    term: partition.raft.metrics().borrow().current_term,
                })),
                Err(GroupError::NotLeader { .. }) => Err(Status::failed_precondition("zongheng: not the leader")),
                Err(error) => Err(Status::unavailable(format!("zongheng: read index: {error}"))),
            };
        }
        let group = self.group(group_id)?;
        match group.read_index_for_follower().await {
            Ok(read_index) => Ok(Response::new(ReadIndexReply {
                read_index,
                leader_id: group.node_id,
                term: group.raft.metrics().borrow().current_term,
            })),
            Err(MetaError::NotLeader { .. }) => Err(Status::failed_precondition("zongheng: not the leader")),
            Err(error) => Err(Status::unavailable(format!("zongheng: read index: {error}"))),
        }
    }

    /// The member list a joining node finds its id in. Answered only after
    /// a linearizable barrier: a member cut off from the majority may still
    /// list a removed member at the joining node's address, and a node that
    /// took that old id was granted votes meant for it (seed 139 of a
    /// coordination campaign: a stale candidate won with the vote of the
    /// rejoined node and committed entries diverged).
    async fn members(&self, request: Request<MembersRequest>) -> Result<Response<MembersReply>, Status> {
        let group = self.group(request.into_inner().group_id)?;
        group.linearizable_barrier().await.map_err(|error| {
            Status::unavailable(format!(
                "zongheng: cannot confirm the member list with the leader: {error}"
            ))
        })?;
        let members = group
            .members()
            .into_iter()
            .map(|member| PeerMember {
                id: member.id,
                name: member.name,
                peer_urls: member.peer_urls,
                is_learner: member.is_learner,
            })
            .collect();
        Ok(Response::new(MembersReply {
            cluster_id: group.cluster_id,
            members,
            leader_id: group.current_leader().unwrap_or(0),
        }))
    }

    async fn replica_status(
        &self,
        request: Request<ReplicaStatusRequest>,
    ) -> Result<Response<ReplicaStatusReply>, Status> {
        let request = request.into_inner();
        let Some(partition) = self.partition_group(request.group_id) else {
            return Err(Status::invalid_argument(format!(
                "zongheng: group {} is not a data-store partition",
                request.group_id
            )));
        };
        let partition = partition?;
        let reply = match partition.replica_status(request.replica_id).await {
            Ok(member) => ReplicaStatusReply {
                leader_id: partition.replica_id,
                confirmed: true,
                member,
            },
            Err(_) => ReplicaStatusReply {
                leader_id: partition.current_leader().unwrap_or(0),
                confirmed: false,
                member: false,
            },
        };
        Ok(Response::new(reply))
    }
}
