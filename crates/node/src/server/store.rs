//! The data store's client service (`zongheng.store.v1.Store`).
//!
//! Any node answers. A partition request goes to this node's replica of the
//! partition when it has one (which forwards to the leader), and otherwise
//! to the nodes holding a replica, over the peer service, until one serves it.
//! Timestamps come from the meta leader's oracle.
//!
//! A partition's answer, success or refusal, travels as the serialized
//! `Result<PartitionResponse, GroupError>` in the reply; gRPC errors mean the
//! request could not be carried (bad payload, no store, no timestamp).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use zongheng_algo::{PartitionId, Placement};
use zongheng_proto::peer::ForwardRequest;
use zongheng_proto::store::store_server::Store;
use zongheng_proto::store::{
    PartitionCall, PartitionInfo, PartitionReply, ShardMapReply, ShardMapRequest, TimestampReply, TimestampRequest,
};

use super::status::status;
use crate::meta::MetaGroup;
use crate::raft::network::PeerPool;
use crate::raft::{codec, url_host_port};
use crate::store::group::{group_of, ForwardedRequest, GroupError, PARTITION_REQUEST_TIMEOUT};
use crate::store::request::{PartitionRequest, PartitionResponse};
use crate::store::StoreGroups;

/// Pause between two passes over a partition's replicas when none served
/// the request (no leader yet, or none reachable).
const ROUTE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Largest serialized partition request (a prewrite of many mutations).
pub const PARTITION_CALL_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Where the store's partitions live, as this node knows it.
pub struct StoreLayout {
    pub partitions: u32,
    pub placement: Placement,
    /// Member name -> peer address ("host:port").
    pub peer_addresses: BTreeMap<String, String>,
    /// Member id -> name.
    pub names: BTreeMap<u64, String>,
}

pub struct StoreService {
    meta: Arc<MetaGroup>,
    groups: Arc<StoreGroups>,
    layout: Arc<StoreLayout>,
    pool: Arc<PeerPool>,
}

impl StoreService {
    pub fn new(meta: Arc<MetaGroup>, groups: Arc<StoreGroups>, layout: Arc<StoreLayout>, pool: Arc<PeerPool>) -> Self {
        Self {
            meta,
            groups,
            layout,
            pool,
        }
    }

    async fn route(
        &self,
        partition: PartitionId,
        epoch: u64,
        request: PartitionRequest,
    ) -> Result<PartitionResponse, GroupError> {
        if let Some(group) = self.groups.get(partition) {
            return group.execute(epoch, request).await;
        }
        // No replica here: ask the nodes that hold one until one serves it.
        let deadline = Instant::now() + PARTITION_REQUEST_TIMEOUT;
        let payload = codec::encode(&ForwardedRequest { epoch, request })
            .map_err(|error| GroupError::Internal(error.to_string()))?;
        let replicas = self.layout.placement.replicas[partition as usize].clone();
        loop {
            for name in &replicas {
                let Some(address) = self.layout.peer_addresses.get(name) else {
                    continue;
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut message = tonic::Request::new(ForwardRequest {
                    group_id: group_of(partition),
                    payload: payload.clone(),
                });
                message.set_timeout(remaining);
                let mut client = self.pool.client(address);
                match tokio::time::timeout(remaining, client.forward(message)).await {
                    Err(_) => return Err(GroupError::Timeout),
                    Ok(Err(status)) if crate::meta::group::is_connect_failure(&status) => continue,
                    Ok(Err(_)) => return Err(GroupError::Timeout),
                    Ok(Ok(reply)) => {
                        let result =
                            codec::decode::<Result<PartitionResponse, GroupError>>(&reply.into_inner().payload)
                                .map_err(|error| GroupError::Internal(error.to_string()))?;
                        match result {
                            Err(GroupError::NotLeader { .. } | GroupError::NoLeader(_)) => continue,
                            other => return other,
                        }
                    }
                }
            }
            if Instant::now() + ROUTE_RETRY_PAUSE >= deadline {
                return Err(GroupError::NoLeader(partition));
            }
            tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
        }
    }
}

#[tonic::async_trait]
impl Store for StoreService {
    async fn timestamp(&self, request: Request<TimestampRequest>) -> Result<Response<TimestampReply>, Status> {
        let count = request.into_inner().count;
        let (first, count) = self.meta.timestamps(count).await.map_err(Status::from)?;
        Ok(Response::new(TimestampReply { first: first.0, count }))
    }

    async fn partition(&self, request: Request<PartitionCall>) -> Result<Response<PartitionReply>, Status> {
        let call = request.into_inner();
        if self.layout.partitions == 0 {
            return Err(status(
                Code::FailedPrecondition,
                "zongheng: this cluster has no data store (start it with --store-partitions)",
                "ZH_STORE_DISABLED",
            ));
        }
        if call.partition >= self.layout.partitions {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "zongheng: partition {} does not exist (the cluster has {})",
                    call.partition, self.layout.partitions
                ),
                "ZH_STORE_NO_SUCH_PARTITION",
            ));
        }
        if call.request.len() > PARTITION_CALL_BYTES_MAX {
            return Err(super::status::request_too_large());
        }
        let request: PartitionRequest = codec::decode(&call.request).map_err(|error| {
            status(
                Code::InvalidArgument,
                format!("zongheng: undecodable partition request: {error}"),
                "ZH_STORE_BAD_REQUEST",
            )
        })?;
        let result = self.route(call.partition, call.epoch, request).await;
        let result = codec::encode(&result)
            .map_err(|error| Status::internal(format!("zongheng: cannot encode the reply: {error}")))?;
        Ok(Response::new(PartitionReply { result }))
    }

    async fn shard_map(&self, _request: Request<ShardMapRequest>) -> Result<Response<ShardMapReply>, Status> {
        let partition_infos = self
            .layout
            .placement
            .replicas
            .iter()
            .enumerate()
            .map(|(id, replicas)| {
                let leader = self
                    .groups
                    .get(id as PartitionId)
                    .and_then(|group| group.current_leader())
                    .and_then(|leader| self.layout.names.get(&leader).cloned())
                    .unwrap_or_default();
                PartitionInfo {
                    id: id as u32,
                    replicas: replicas.clone(),
                    leader,
                    epoch: 0,
                }
            })
            .collect();
        Ok(Response::new(ShardMapReply {
            partitions: self.layout.partitions,
            partition_infos,
        }))
    }
}

/// The layout of the store this member was created with.
pub fn layout_of(record: &crate::node::StoreLayoutRecord, placement: Placement) -> StoreLayout {
    StoreLayout {
        partitions: record.partitions,
        placement,
        peer_addresses: record
            .members
            .values()
            .filter_map(|member| {
                member
                    .peer_urls
                    .first()
                    .map(|url| (member.name.clone(), url_host_port(url)))
            })
            .collect(),
        names: record
            .members
            .iter()
            .map(|(id, member)| (*id, member.name.clone()))
            .collect(),
    }
}
