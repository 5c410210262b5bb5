//! The client's way to a cluster: [`PartitionTransport`] over the
//! `zongheng.store.v1.Store` gRPC service.
//!
//! Any node serves any request (it forwards to the partition's leader), so
//! the client keeps one channel per endpoint and moves to the next endpoint
//! when one fails. How a failure is reported decides what the protocol may
//! do next (see [`StoreError`]):
//!
//! - the connection could not be made: nothing was sent ([`StoreError::Unavailable`]);
//! - anything else after sending (a reset, a deadline): the request may have
//!   been applied ([`StoreError::Unknown`]);
//! - the partition answered: its answer, mapped from the node's
//!   [`GroupError`] (no leader → unavailable, timed out → unknown).
//!
//! Not done yet: routing straight to a partition's leader from a cached
//! shard map (every request takes one hop through the endpoint today).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::Channel;
use zongheng_algo::PartitionId;
use zongheng_proto::store::store_client::StoreClient;
use zongheng_proto::store::{PartitionCall, ShardMapReply, ShardMapRequest, TimestampRequest};

use super::client::{PartitionTransport, StoreError};
use super::group::GroupError;
use super::request::{PartitionRequest, PartitionResponse};
use super::timestamp::Timestamp;
use crate::raft::codec;
use crate::server::store::PARTITION_CALL_BYTES_MAX;

/// How long one call to one endpoint may take (a partition request waits at
/// most 5 s for its leader on the node, plus the hops).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// A cluster's data store, reached through its nodes' client endpoints.
pub struct RemoteStore {
    clients: Vec<StoreClient<Channel>>,
    partitions: u32,
    next: AtomicUsize,
}

impl RemoteStore {
    /// Connect through `channels` (one per node; lazy channels are fine),
    /// learning the partition count from the first node that answers.
    pub async fn connect(channels: Vec<Channel>) -> Result<Self, StoreError> {
        assert!(!channels.is_empty(), "a store client needs at least one endpoint");
        let mut store = Self {
            clients: channels
                .into_iter()
                .map(|channel| {
                    StoreClient::new(channel)
                        .max_encoding_message_size(PARTITION_CALL_BYTES_MAX)
                        .max_decoding_message_size(PARTITION_CALL_BYTES_MAX)
                })
                .collect(),
            partitions: 0,
            next: AtomicUsize::new(0),
        };
        let map = store.shard_map().await?;
        if map.partitions == 0 {
            return Err(StoreError::Unavailable(
                "the cluster has no data store (start it with --store-partitions)".into(),
            ));
        }
        store.partitions = map.partitions;
        Ok(store)
    }

    /// The shard map as one of the nodes knows it.
    pub async fn shard_map(&self) -> Result<ShardMapReply, StoreError> {
        let mut last = StoreError::Unavailable("no endpoint answered".into());
        for _ in 0..self.clients.len() {
            let mut client = self.client();
            let mut request = tonic::Request::new(ShardMapRequest {});
            request.set_timeout(STORE_CALL_TIMEOUT);
            match tokio::time::timeout(STORE_CALL_TIMEOUT, client.shard_map(request)).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => last = StoreError::Unavailable(status.message().to_string()),
                Err(_) => last = StoreError::Unavailable("shard map request timed out".into()),
            }
            self.rotate();
        }
        Err(last)
    }

    fn client(&self) -> StoreClient<Channel> {
        self.clients[self.next.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }
}

impl PartitionTransport for RemoteStore {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn timestamp(&self) -> Result<Timestamp, StoreError> {
        let mut client = self.client();
        let mut request = tonic::Request::new(TimestampRequest { count: 1 });
        request.set_timeout(STORE_CALL_TIMEOUT);
        match tokio::time::timeout(STORE_CALL_TIMEOUT, client.timestamp(request)).await {
            Ok(Ok(reply)) => Ok(Timestamp(reply.into_inner().first)),
            // Asking for a timestamp changes nothing a client can observe:
            // every failure is safe to retry.
            Ok(Err(status)) => {
                self.rotate();
                Err(StoreError::Unavailable(format!("timestamp: {}", status.message())))
            }
            Err(_) => {
                self.rotate();
                Err(StoreError::Unavailable("timestamp request timed out".into()))
            }
        }
    }

    async fn call(&self, partition: PartitionId, request: PartitionRequest) -> Result<PartitionResponse, StoreError> {
        let payload = codec::encode(&request).map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let mut client = self.client();
        let mut message = tonic::Request::new(PartitionCall {
            partition,
            epoch: 0,
            request: payload,
        });
        message.set_timeout(STORE_CALL_TIMEOUT);
        let reply = match tokio::time::timeout(STORE_CALL_TIMEOUT, client.partition(message)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) if crate::meta::group::is_connect_failure(&status) => {
                self.rotate();
                return Err(StoreError::Unavailable(status.message().to_string()));
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted
                ) =>
            {
                let code = status
                    .metadata()
                    .get(crate::server::status::ERROR_CODE_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("ZH_STORE_REFUSED");
                return Err(StoreError::Refused(format!("{code}: {}", status.message())));
            }
            Ok(Err(status)) => {
                self.rotate();
                return Err(StoreError::Unknown(status.message().to_string()));
            }
            Err(_) => {
                self.rotate();
                return Err(StoreError::Unknown("partition request timed out".into()));
            }
        };
        let result: Result<PartitionResponse, GroupError> =
            codec::decode(&reply.result).map_err(|error| StoreError::Unknown(format!("undecodable reply: {error}")))?;
        result.map_err(|error| match error {
            GroupError::Partition(super::app::PartitionError::Txn(error)) => StoreError::Txn(error),
            GroupError::Partition(error) => StoreError::Partition(error),
            GroupError::Timeout => StoreError::Unknown(error.to_string()),
            GroupError::NoLeader(_) | GroupError::NotLeader { .. } | GroupError::Stopped => {
                self.rotate();
                StoreError::Unavailable(error.to_string())
            }
            GroupError::Internal(_) => StoreError::Unknown(error.to_string()),
        })
    }
}
