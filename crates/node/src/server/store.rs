//! The data store's client service (`zongheng.store.v1.Store`).
//!
//! Any node answers. A partition request goes to this node's replica of the
//! partition when it has one (which forwards to the leader), and otherwise
//! to the nodes the shard map lists for the partition (its last reported
//! leader first), over the peer service, until one serves it. Timestamps
//! come from the meta leader's oracle. The shard map is this node's view of
//! `meta`'s (serializable: it may lag by a few entries, which routing
//! survives: a node that no longer holds a replica answers "not found" and
//! the next one is tried).
//!
//! A partition's answer, success or refusal, travels as the serialized
//! `Result<PartitionResponse, GroupError>` in the reply; gRPC errors mean the
//! request could not be carried (bad payload, no store, no timestamp).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use zongheng_algo::PartitionId;
use zongheng_proto::peer::ForwardRequest;
use zongheng_proto::store::store_server::Store;
use zongheng_proto::store::{
    DrainReply, DrainRequest, NodeStatsReply, NodeStatsRequest, PartitionCall, PartitionInfo, PartitionReply,
    ShardMapReply, ShardMapRequest, StoreNodeInfo, TimestampReply, TimestampRequest,
};

use super::status::status;
use crate::meta::command::MetaCommand;
use crate::meta::MetaGroup;
use crate::raft::codec;
use crate::raft::group_commit::GroupCommit;
use crate::raft::network::{PeerAddress, PeerPool};
use crate::store::group::{group_of, ForwardedRequest, GroupError, ReadAnswer, ReadMode, PARTITION_REQUEST_TIMEOUT};
use crate::store::request::PartitionRequest;
use crate::store::shard_map::{ShardMap, ShardMapCommand};
use crate::store::StoreGroups;

/// Pause between two passes over a partition's replicas when none served
/// the request (no leader yet, or none reachable).
const ROUTE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Largest serialized partition request (a prewrite of many mutations).
pub const PARTITION_CALL_BYTES_MAX: usize = 16 * 1024 * 1024;

pub struct StoreService {
    meta: Arc<MetaGroup>,
    groups: Arc<StoreGroups>,
    /// P this member was started to create the store with (0: none); says
    /// whether a missing shard map means "not created yet" or "no store".
    configured_partitions: u32,
    pool: Arc<PeerPool>,
    commit: Arc<GroupCommit>,
}

impl StoreService {
    pub fn new(
        meta: Arc<MetaGroup>,
        groups: Arc<StoreGroups>,
        configured_partitions: u32,
        pool: Arc<PeerPool>,
        commit: Arc<GroupCommit>,
    ) -> Self {
        Self {
            meta,
            groups,
            configured_partitions,
            pool,
            commit,
        }
    }

    /// The shard map as this node knows it, or why there is none. A node
    /// without a map confirms with the `meta` leader first (it may be a
    /// member that joined and is still catching up), so "no data store" is
    /// only said of a cluster that has none.
    pub(crate) async fn shard_map(&self) -> Result<ShardMap, Status> {
        let map = self.meta.read(|app| app.shard_map.clone());
        if map.is_created() {
            return Ok(map);
        }
        if let Err(error) = self.meta.linearizable_barrier().await {
            return Err(status(
                Code::Unavailable,
                format!("zongheng: cannot read the shard map: {error}; retry"),
                "ZH_STORE_NOT_READY",
            ));
        }
        let map = self.meta.read(|app| app.shard_map.clone());
        if map.is_created() {
            return Ok(map);
        }
        if self.configured_partitions > 0 {
            return Err(status(
                Code::Unavailable,
                "zongheng: the data store is being created; retry",
                "ZH_STORE_NOT_READY",
            ));
        }
        Err(status(
            Code::FailedPrecondition,
            "zongheng: this cluster has no data store (start it with --store-partitions)",
            "ZH_STORE_DISABLED",
        ))
    }

    /// Serve `request` on the partition: its leader for writes and
    /// linearizable reads; for follower and stale reads this node's replica
    /// or another one (the others first, to spread reads).
    pub(crate) async fn route(
        &self,
        partition: PartitionId,
        epoch: u64,
        request: PartitionRequest,
        read: ReadMode,
    ) -> Result<ReadAnswer, GroupError> {
        let deadline = Instant::now() + PARTITION_REQUEST_TIMEOUT;
        let any_replica = !request.is_write() && read != ReadMode::Linearizable;
        let payload = codec::encode(&ForwardedRequest {
            epoch,
            request: request.clone(),
            read,
        })
        .map_err(|error| GroupError::Internal(error.to_string()))?;
        loop {
            if let Some(group) = self.groups.get(partition) {
                if any_replica {
                    return group.read_here(read, epoch, &request).await;
                }
                return group.execute(epoch, request).await.map(|response| ReadAnswer {
                    response,
                    staleness_ms: 0,
                });
            }
            // No replica here: ask the nodes that hold one until one serves it.
            let candidates = self.meta.read(|app| {
                app.shard_map
                    .record(partition)
                    .map(|record| {
                        let others = record.nodes().into_iter().filter(|id| Some(*id) != record.leader);
                        if any_replica {
                            others.chain(record.leader).collect::<Vec<u64>>()
                        } else {
                            record.leader.into_iter().chain(others).collect()
                        }
                    })
                    .unwrap_or_default()
            });
            for node in candidates {
                let Some(address) = self.meta.peer_node(node).and_then(|peer| peer.peer_address()) else {
                    continue;
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut message = tonic::Request::new(ForwardRequest {
                    group_id: group_of(partition),
                    payload: payload.clone(),
                });
                message.set_timeout(remaining);
                let mut client = self.pool.client(&address);
                match tokio::time::timeout(remaining, client.forward(message)).await {
                    Err(_) => return Err(GroupError::Timeout),
                    Ok(Err(status)) if crate::meta::group::is_connect_failure(&status) => continue,
                    // The node holds no replica (any more): nothing was applied.
                    Ok(Err(status)) if status.code() == Code::NotFound => continue,
                    Ok(Err(_)) => return Err(GroupError::Timeout),
                    Ok(Ok(reply)) => {
                        let result = codec::decode::<Result<ReadAnswer, GroupError>>(&reply.into_inner().payload)
                            .map_err(|error| GroupError::Internal(error.to_string()))?;
                        match result {
                            Err(
                                GroupError::NotLeader { .. } | GroupError::NoLeader(_) | GroupError::TooStale { .. },
                            ) => continue,
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
        let map = self.shard_map().await?;
        if call.partition >= map.partitions {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "zongheng: partition {} does not exist (the cluster has {})",
                    call.partition, map.partitions
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
        let read = match zongheng_proto::store::ReadMode::try_from(call.read_mode) {
            Ok(zongheng_proto::store::ReadMode::Follower) => ReadMode::Follower,
            Ok(zongheng_proto::store::ReadMode::Stale) => ReadMode::Stale {
                max_staleness_ms: call.max_staleness_ms,
            },
            Ok(zongheng_proto::store::ReadMode::Linearizable) => ReadMode::Linearizable,
            Err(_) => {
                return Err(status(
                    Code::InvalidArgument,
                    format!("zongheng: unknown read mode {}", call.read_mode),
                    "ZH_STORE_BAD_REQUEST",
                ))
            }
        };
        let answer = self.route(call.partition, call.epoch, request, read).await;
        let staleness_ms = answer.as_ref().map_or(0, |answer| answer.staleness_ms);
        let result = codec::encode(&answer.map(|answer| answer.response))
            .map_err(|error| Status::internal(format!("zongheng: cannot encode the reply: {error}")))?;
        Ok(Response::new(PartitionReply { result, staleness_ms }))
    }

    async fn shard_map(&self, _request: Request<ShardMapRequest>) -> Result<Response<ShardMapReply>, Status> {
        let map = self.shard_map().await?;
        Ok(Response::new(shard_map_reply(&map, &self.meta)))
    }

    async fn node_stats(&self, _request: Request<NodeStatsRequest>) -> Result<Response<NodeStatsReply>, Status> {
        let counters = self.commit.counters();
        let groups = self.groups.all();
        Ok(Response::new(NodeStatsReply {
            node_id: self.meta.node_id,
            synced_writes: counters.writes.load(std::sync::atomic::Ordering::Relaxed),
            syncs: counters.syncs.load(std::sync::atomic::Ordering::Relaxed),
            replicas: groups.len() as u32,
            leaders: groups.iter().filter(|group| group.is_leader()).count() as u32,
            raft_messages: self
                .pool
                .batch_counters()
                .messages
                .load(std::sync::atomic::Ordering::Relaxed),
            raft_batches: self
                .pool
                .batch_counters()
                .batches
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn drain(&self, request: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        let request = request.into_inner();
        self.shard_map().await?;
        let id = if request.name.is_empty() {
            request.id
        } else {
            let named: Vec<u64> = self
                .meta
                .members()
                .into_iter()
                .filter(|member| member.name == request.name)
                .map(|member| member.id)
                .collect();
            match named.as_slice() {
                [id] => *id,
                [] => {
                    return Err(status(
                        Code::NotFound,
                        format!("zongheng: no member is named {:?}", request.name),
                        "ZH_MEMBER_NOT_FOUND",
                    ))
                }
                _ => {
                    return Err(status(
                        Code::InvalidArgument,
                        format!("zongheng: several members are named {:?}; drain by id", request.name),
                        "ZH_AMBIGUOUS_NAME",
                    ))
                }
            }
        };
        self.meta
            .write(MetaCommand::Store(ShardMapCommand::SetDraining {
                id,
                draining: !request.undo,
            }))
            .await
            .map_err(Status::from)?;
        let replicas = self
            .meta
            .read(|app| app.shard_map.loads().get(&id).copied().unwrap_or(0));
        Ok(Response::new(DrainReply {
            id,
            replicas: replicas as u32,
        }))
    }
}

/// The shard map as the `ShardMap` RPC answers it: ids with the names and
/// client URLs the members published.
pub fn shard_map_reply(map: &ShardMap, meta: &MetaGroup) -> ShardMapReply {
    let members: BTreeMap<u64, crate::meta::group::MemberView> =
        meta.members().into_iter().map(|member| (member.id, member)).collect();
    let name = |id: u64| {
        members
            .get(&id)
            .map(|member| member.name.clone())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("{id:x}"))
    };
    let loads = map.loads();
    let mut leaders: BTreeMap<u64, u32> = BTreeMap::new();
    for leader in map.records.iter().filter_map(|record| record.leader) {
        *leaders.entry(leader).or_insert(0) += 1;
    }
    let partition_infos = map
        .records
        .iter()
        .enumerate()
        .map(|(id, record)| PartitionInfo {
            id: id as u32,
            replicas: record.nodes().into_iter().map(name).collect(),
            leader: record.leader.map(name).unwrap_or_default(),
            epoch: record.epoch,
            replica_ids: record.nodes(),
            leader_id: record.leader.unwrap_or(0),
            moving_add: record
                .moving
                .and_then(|step| step.add)
                .map_or(0, |replica| replica.node),
            moving_remove: record.moving.and_then(|step| step.remove).unwrap_or(0),
        })
        .collect();
    let nodes = map
        .nodes
        .iter()
        .map(|(id, node)| StoreNodeInfo {
            id: *id,
            name: name(*id),
            client_urls: members
                .get(id)
                .map(|member| member.client_urls.clone())
                .unwrap_or_default(),
            weight: node.weight,
            zone: node.zone.clone().unwrap_or_default(),
            draining: node.draining,
            replicas: loads.get(id).copied().unwrap_or(0) as u32,
            leaders: leaders.get(id).copied().unwrap_or(0),
        })
        .collect();
    ShardMapReply {
        partitions: map.partitions,
        partition_infos,
        nodes,
        replication: map.replication,
    }
}

impl StoreService {
    /// The shard map as `zongheng store status --json` prints it.
    pub(crate) async fn shard_map_json(&self) -> Result<serde_json::Value, Status> {
        let map = self.shard_map().await?;
        Ok(crate::cli::store::shard_map_json(shard_map_reply(&map, &self.meta)))
    }
}

/// The data store as seen from inside a node: the [`PartitionTransport`] the
/// HTTP/JSON API (`server::http`) runs transactions over, with no gRPC hop
/// (timestamps from `meta`, partition requests routed as for a gRPC call).
pub struct LocalStore {
    service: Arc<StoreService>,
    partitions: u32,
}

impl LocalStore {
    /// `None` while the node knows no shard map (no store, or not created yet).
    pub async fn new(service: Arc<StoreService>) -> Result<Self, Status> {
        let partitions = service.shard_map().await?.partitions;
        Ok(Self { service, partitions })
    }

    pub fn service(&self) -> &StoreService {
        &self.service
    }
}

impl crate::store::client::PartitionTransport for LocalStore {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn timestamp(&self) -> Result<crate::store::timestamp::Timestamp, crate::store::client::StoreError> {
        self.service
            .meta
            .timestamps(1)
            .await
            .map(|(first, _)| first)
            .map_err(|error| crate::store::client::StoreError::Unavailable(format!("timestamp: {error}")))
    }

    async fn call(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
    ) -> Result<crate::store::request::PartitionResponse, crate::store::client::StoreError> {
        self.read(partition, request, ReadMode::Linearizable).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
        mode: ReadMode,
    ) -> Result<crate::store::request::PartitionResponse, crate::store::client::StoreError> {
        self.service
            .route(partition, 0, request, mode)
            .await
            .map(|answer| answer.response)
            .map_err(crate::store::client::StoreError::from_group)
    }
}
