//! The etcd v3 API (KV, Cluster, Maintenance) on top of the `meta` group.
//!
//! Each handler checks its request against the named limits, then either
//! reads (after a read-index barrier unless the request is serializable) or
//! proposes a [`MetaCommand`] through the leader. Watch, Lease, Lock and
//! Election are in their own modules (`server::{watch, lease, lock,
//! election}`); Auth is not registered yet: clients get gRPC `Unimplemented`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};
use zongheng_proto::etcdserverpb::cluster_server::Cluster;
use zongheng_proto::etcdserverpb::kv_server::Kv;
use zongheng_proto::etcdserverpb::maintenance_server::Maintenance;
use zongheng_proto::etcdserverpb::{
    request_op, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentRequest,
    DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse,
};
use zongheng_storage::Engine;

use super::status;
use crate::meta::group::{LeaderCall, LeaderReply, MemberView};
use crate::meta::mvcc::{txn_op_count, validate_txn};
use crate::meta::{MetaCommand, MetaGroup, MetaResponse};

/// The etcd API version reported by `Status` (the API this server implements).
pub const ETCD_API_VERSION: &str = "3.4.0";

/// Limits on client requests, each named and enforced with etcd's error.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Largest encoded request (etcd's `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most operations in one txn branch (etcd's `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Longest key.
    pub max_key_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            max_key_bytes: 32 * 1024,
        }
    }
}

/// gRPC framing headroom above `max_request_bytes` (as etcd allows), so an
/// oversized request reaches the handler and gets etcd's error rather than a
/// transport-level reset.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub struct EtcdServices {
    group: Arc<MetaGroup>,
    limits: ClientLimits,
    engine: Arc<dyn Engine>,
}

impl EtcdServices {
    pub fn new(group: Arc<MetaGroup>, limits: ClientLimits, engine: Arc<dyn Engine>) -> Self {
        Self { group, limits, engine }
    }

    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(status::request_too_large());
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.len() > self.limits.max_key_bytes {
            return Err(status::key_too_large(self.limits.max_key_bytes));
        }
        Ok(())
    }

    fn check_ops(&self, ops: &[RequestOp]) -> Result<(), Status> {
        for op in ops {
            match op.request.as_ref() {
                Some(request_op::Request::RequestRange(range)) => self.check_key(&range.key)?,
                Some(request_op::Request::RequestPut(put)) => self.check_key(&put.key)?,
                Some(request_op::Request::RequestDeleteRange(delete)) => self.check_key(&delete.key)?,
                Some(request_op::Request::RequestTxn(txn)) => self.check_txn(txn)?,
                None => {
                    return Err(status::status(
                        tonic::Code::InvalidArgument,
                        "etcdserver: invalid request: request op is empty",
                        "ZH_INVALID_REQUEST",
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_txn(&self, txn: &TxnRequest) -> Result<(), Status> {
        if txn_op_count(txn) > self.limits.max_txn_ops {
            return Err(status::too_many_ops());
        }
        for compare in &txn.compare {
            self.check_key(&compare.key)?;
        }
        self.check_ops(&txn.success)?;
        self.check_ops(&txn.failure)
    }

    fn header(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header
            .map(|header| header.revision)
            .unwrap_or_else(|| self.group.read(|app| app.kv.revision()));
        Some(self.group.header(revision))
    }

    async fn write(&self, command: MetaCommand) -> Result<MetaResponse, Status> {
        self.group.write(command).await.map_err(Status::from)
    }

    fn member(view: &MemberView) -> Member {
        Member {
            id: view.id,
            name: view.name.clone(),
            peer_ur_ls: view.peer_urls.clone(),
            client_ur_ls: view.client_urls.clone(),
            is_learner: view.is_learner,
        }
    }

    fn members(&self) -> Vec<Member> {
        self.group.members().iter().map(Self::member).collect()
    }
}

fn unexpected(response: MetaResponse) -> Status {
    status::status(
        tonic::Code::Internal,
        format!("zongheng: unexpected state machine response {response:?}"),
        "ZH_INTERNAL",
    )
}

#[tonic::async_trait]
impl Kv for EtcdServices {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        self.check_key(&request.key)?;
        if !request.serializable {
            self.group.linearizable_barrier().await?;
        }
        let mut response = self.group.read(|app| app.kv.range(&request))?;
        response.header = self.header(response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        self.check_key(&request.key)?;
        match self.write(MetaCommand::Put(request)).await? {
            MetaResponse::Put(mut response) => {
                response.header = self.header(response.header);
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        self.check_key(&request.key)?;
        match self.write(MetaCommand::DeleteRange(request)).await? {
            MetaResponse::DeleteRange(mut response) => {
                response.header = self.header(response.header);
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        self.check_txn(&request)?;
        // Refuse what the state machine would refuse without a round trip.
        validate_txn(&request)?;
        match self.write(MetaCommand::Txn(request)).await? {
            MetaResponse::Txn(mut response) => {
                response.header = self.header(response.header);
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        // Compaction is applied synchronously with the entry, so `physical`
        // (wait until the data is gone) holds once the write returns.
        match self.write(MetaCommand::Compact(request)).await? {
            MetaResponse::Compact(mut response) => {
                response.header = self.header(response.header);
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl Cluster for EtcdServices {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        let call = LeaderCall::AddMember {
            peer_urls: request.peer_ur_ls.clone(),
            is_learner: request.is_learner,
        };
        let id = match self.group.call_leader(call).await? {
            LeaderReply::MemberAdded { id } => id,
            other => {
                return Err(status::status(
                    tonic::Code::Internal,
                    format!("zongheng: unexpected reply {other:?}"),
                    "ZH_INTERNAL",
                ))
            }
        };
        // Let this node see the new membership before listing it.
        self.group.linearizable_barrier().await?;
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: request.peer_ur_ls,
            client_ur_ls: vec![],
            is_learner: request.is_learner,
        };
        Ok(Response::new(MemberAddResponse {
            header: self.header(None),
            member: Some(member),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.group.call_leader(LeaderCall::RemoveMember { id }).await?;
        // The removed member may be this node: list what it knows.
        let _ = self.group.linearizable_barrier().await;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(None),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        self.group
            .call_leader(LeaderCall::UpdateMember {
                id: request.id,
                peer_urls: request.peer_ur_ls,
            })
            .await?;
        self.group.linearizable_barrier().await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(None),
            members: self.members(),
        }))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.group.linearizable_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(None),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.group.call_leader(LeaderCall::PromoteMember { id }).await?;
        self.group.linearizable_barrier().await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(None),
            members: self.members(),
        }))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for EtcdServices {
    async fn alarm(&self, _request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarms are raised yet (no space quota, no corruption checker).
        Ok(Response::new(AlarmResponse {
            header: self.header(None),
            alarms: vec![],
        }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (leader, last_log_index, applied, learner) = {
            let metrics = self.group.raft.metrics();
            let metrics = metrics.borrow();
            let learner = metrics
                .membership_config
                .membership()
                .learner_ids()
                .any(|id| id == self.group.node_id);
            (
                metrics.current_leader.unwrap_or(0),
                metrics.last_log_index.unwrap_or(0),
                metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0),
                learner,
            )
        };
        let db_size = self.engine.size_bytes().unwrap_or(0) as i64;
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        Ok(Response::new(StatusResponse {
            header: self.header(None),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader,
            raft_index: last_log_index,
            raft_term: self.group.raft.metrics().borrow().current_term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: db_size,
            is_learner: learner,
            ..Default::default()
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        // redb reuses freed pages itself; there is nothing to rewrite.
        Ok(Response::new(DefragmentResponse {
            header: self.header(None),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(status::unimplemented("Maintenance.Hash"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(status::unimplemented("Maintenance.HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(status::unimplemented("Maintenance.Snapshot"))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(status::unimplemented("Maintenance.MoveLeader"))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(status::unimplemented("Maintenance.Downgrade"))
    }
}
