//! The client's way to a cluster: [`PartitionTransport`] over the
//! `zongheng.store.v1.Store` gRPC service.
//!
//! Any node serves any request (it forwards to the partition's leader), so
//! the simplest client keeps one channel per endpoint it was given and moves
//! to the next when one fails. Given a [`Dialer`], the client also caches the
//! shard map and sends each request straight to the node its partition last
//! reported as leader, with the partition's epoch: no hop through another
//! node. It refreshes the map when a partition refuses a stale epoch (and
//! resends: a refused request was not applied), and when a direct route
//! fails (and falls back to the endpoints meanwhile).
//!
//! How a failure is reported decides what the protocol may do next (see
//! [`StoreError`]):
//!
//! - the connection could not be made: nothing was sent ([`StoreError::Unavailable`]);
//! - anything else after sending (a reset, a deadline): the request may have
//!   been applied ([`StoreError::Unknown`]);
//! - the partition answered: its answer, mapped from the node's
//!   [`GroupError`] (no leader → unavailable, timed out → unknown).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use zongheng_algo::PartitionId;
use zongheng_proto::store::store_client::StoreClient;
use zongheng_proto::store::{
    DrainRequest, PartitionCall, ReadMode as ProtoReadMode, ShardMapReply, ShardMapRequest, TimestampRequest,
};

use super::app::PartitionError;
use super::client::{PartitionTransport, StoreError};
use super::group::{GroupError, ReadMode};
use super::request::{PartitionRequest, PartitionResponse};
use super::timestamp::Timestamp;
use crate::raft::codec;
use crate::server::store::PARTITION_CALL_BYTES_MAX;

/// How long one call to one endpoint may take (a partition request waits at
/// most 5 s for its leader on the node, plus the hops).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long [`RemoteStore::connect`] waits for a store still being created.
pub const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between attempts while the store is being created.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Least time between two shard-map refreshes (a burst of stale answers
/// costs one refresh).
const MAP_REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// With a dialer, a partition without a known leader has the map fetched
/// again at most this often (its leader is reported a moment after it is
/// elected).
const MISSING_ROUTE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Most times one call is resent after a stale-epoch refusal.
const STALE_EPOCH_RETRIES_MAX: usize = 3;

/// Opens a channel to a node's client URL (as the shard map lists it).
pub type Dialer = Arc<dyn Fn(&str) -> Option<Channel> + Send + Sync>;

/// The cached routes: per partition its epoch, its leader's channel and
/// its replicas' channels (for follower and stale reads).
#[derive(Default)]
struct Routes {
    epochs: Vec<u64>,
    leaders: Vec<Option<StoreClient<Channel>>>,
    replicas: Vec<Vec<StoreClient<Channel>>>,
    refreshed: Option<Instant>,
}

/// A cluster's data store, reached through its nodes' client endpoints.
pub struct RemoteStore {
    clients: Vec<StoreClient<Channel>>,
    partitions: u32,
    next: AtomicUsize,
    dialer: Option<Dialer>,
    routes: Mutex<Routes>,
    /// Spreads follower and stale reads over a partition's replicas.
    next_replica: AtomicUsize,
}

fn store_client(channel: Channel) -> StoreClient<Channel> {
    StoreClient::new(channel)
        .max_encoding_message_size(PARTITION_CALL_BYTES_MAX)
        .max_decoding_message_size(PARTITION_CALL_BYTES_MAX)
}

impl RemoteStore {
    /// Connect through `channels` (one per node; lazy channels are fine),
    /// learning the partition count from the first node that answers;
    /// every request goes through these endpoints.
    pub async fn connect(channels: Vec<Channel>) -> Result<Self, StoreError> {
        Self::connect_with(channels, None).await
    }

    /// [`RemoteStore::connect`], and with a `dialer`, route each request
    /// straight to its partition's leader (see the module doc).
    pub async fn connect_with(channels: Vec<Channel>, dialer: Option<Dialer>) -> Result<Self, StoreError> {
        assert!(!channels.is_empty(), "a store client needs at least one endpoint");
        let mut store = Self {
            clients: channels.into_iter().map(store_client).collect(),
            partitions: 0,
            next: AtomicUsize::new(0),
            dialer,
            routes: Mutex::new(Routes::default()),
            next_replica: AtomicUsize::new(0),
        };
        let deadline = Instant::now() + STORE_CONNECT_TIMEOUT;
        let map = loop {
            match store.shard_map().await {
                Ok(map) => break map,
                Err(StoreError::Unavailable(message))
                    if message.contains("ZH_STORE_NOT_READY") && Instant::now() + CONNECT_RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        };
        if map.partitions == 0 {
            return Err(StoreError::Unavailable(
                "the cluster has no data store (start it with --store-partitions)".into(),
            ));
        }
        store.partitions = map.partitions;
        store.learn(&map);
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
                Ok(Err(status)) => {
                    let code = status
                        .metadata()
                        .get(crate::server::status::ERROR_CODE_METADATA)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("");
                    last = StoreError::Unavailable(format!("{code}: {}", status.message()));
                }
                Err(_) => last = StoreError::Unavailable("shard map request timed out".into()),
            }
            self.rotate();
        }
        Err(last)
    }

    /// Drain the store node named `name`, or with an empty name the one
    /// with id `id` (or take it back with `undo`); answers its id and the
    /// replicas it still holds.
    pub async fn drain(&self, name: &str, id: u64, undo: bool) -> Result<(u64, u32), StoreError> {
        let mut client = self.client();
        let mut request = tonic::Request::new(DrainRequest {
            name: name.to_string(),
            id,
            undo,
        });
        request.set_timeout(STORE_CALL_TIMEOUT);
        match tokio::time::timeout(STORE_CALL_TIMEOUT, client.drain(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                Ok((reply.id, reply.replicas))
            }
            Ok(Err(status)) => {
                self.rotate();
                let code = status
                    .metadata()
                    .get(crate::server::status::ERROR_CODE_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("ZH_STORE_REFUSED");
                Err(StoreError::Refused(format!("{code}: {}", status.message())))
            }
            Err(_) => {
                self.rotate();
                Err(StoreError::Unknown("drain request timed out".into()))
            }
        }
    }

    /// Remember `map`'s epochs and, with a dialer, its leaders' channels.
    fn learn(&self, map: &ShardMapReply) {
        let mut routes = self.routes.lock().expect("routes lock poisoned");
        routes.refreshed = Some(Instant::now());
        routes.epochs = map.partition_infos.iter().map(|info| info.epoch).collect();
        let Some(dialer) = &self.dialer else {
            routes.leaders = vec![None; routes.epochs.len()];
            routes.replicas = vec![Vec::new(); routes.epochs.len()];
            return;
        };
        let mut channels: std::collections::BTreeMap<u64, Option<StoreClient<Channel>>> = Default::default();
        let mut channel_of = |node: u64| {
            channels
                .entry(node)
                .or_insert_with(|| {
                    map.nodes
                        .iter()
                        .find(|info| info.id == node)
                        .and_then(|info| info.client_urls.first())
                        .and_then(|url| dialer(url))
                        .map(store_client)
                })
                .clone()
        };
        let (mut leaders, mut replicas) = (Vec::new(), Vec::new());
        for info in &map.partition_infos {
            leaders.push(if info.leader_id == 0 {
                None
            } else {
                channel_of(info.leader_id)
            });
            replicas.push(info.replica_ids.iter().filter_map(|node| channel_of(*node)).collect());
        }
        routes.leaders = leaders;
        routes.replicas = replicas;
    }

    /// Fetch the map again, unless that was done a moment ago.
    async fn refresh(&self) {
        let recent = self
            .routes
            .lock()
            .expect("routes lock poisoned")
            .refreshed
            .is_some_and(|at| at.elapsed() < MAP_REFRESH_INTERVAL_MIN);
        if recent {
            return;
        }
        if let Ok(map) = self.shard_map().await {
            self.learn(&map);
        }
    }

    /// The epoch and direct route of `partition` (`None`: go through the endpoints).
    fn route(&self, partition: PartitionId) -> (u64, Option<StoreClient<Channel>>) {
        let routes = self.routes.lock().expect("routes lock poisoned");
        let index = partition as usize;
        (
            routes.epochs.get(index).copied().unwrap_or(0),
            routes.leaders.get(index).cloned().flatten(),
        )
    }

    fn forget_leader(&self, partition: PartitionId) {
        if let Some(leader) = self
            .routes
            .lock()
            .expect("routes lock poisoned")
            .leaders
            .get_mut(partition as usize)
        {
            *leader = None;
        }
    }

    fn client(&self) -> StoreClient<Channel> {
        self.clients[self.next.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt at `partition` through `client`; `direct` says whether
    /// `client` is the cached leader route rather than an endpoint.
    #[allow(clippy::too_many_arguments)]
    async fn call_once(
        &self,
        mut client: StoreClient<Channel>,
        direct: bool,
        partition: PartitionId,
        epoch: u64,
        payload: Vec<u8>,
        mode: ReadMode,
    ) -> Result<PartitionResponse, StoreError> {
        let (read_mode, max_staleness_ms) = match mode {
            ReadMode::Linearizable => (ProtoReadMode::Linearizable, 0),
            ReadMode::Follower => (ProtoReadMode::Follower, 0),
            ReadMode::Stale { max_staleness_ms } => (ProtoReadMode::Stale, max_staleness_ms),
        };
        let mut message = tonic::Request::new(PartitionCall {
            partition,
            epoch,
            request: payload,
            read_mode: read_mode as i32,
            max_staleness_ms,
        });
        message.set_timeout(STORE_CALL_TIMEOUT);
        // A failed endpoint is left for the next; a failed direct route is forgotten.
        let moved_on = || {
            if direct {
                self.forget_leader(partition);
            } else {
                self.rotate();
            }
        };
        let reply = match tokio::time::timeout(STORE_CALL_TIMEOUT, client.partition(message)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) if crate::meta::group::is_connect_failure(&status) => {
                moved_on();
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
                moved_on();
                return Err(StoreError::Unknown(status.message().to_string()));
            }
            Err(_) => {
                moved_on();
                return Err(StoreError::Unknown("partition request timed out".into()));
            }
        };
        let result: Result<PartitionResponse, GroupError> =
            codec::decode(&reply.result).map_err(|error| StoreError::Unknown(format!("undecodable reply: {error}")))?;
        result.map_err(|error| match error {
            GroupError::Partition(PartitionError::Txn(error)) => StoreError::Txn(error),
            GroupError::Partition(error) => StoreError::Partition(error),
            GroupError::Timeout => StoreError::Unknown(error.to_string()),
            GroupError::NoLeader(_)
            | GroupError::NotLeader { .. }
            | GroupError::Stopped
            | GroupError::TooStale { .. } => {
                moved_on();
                StoreError::Unavailable(error.to_string())
            }
            GroupError::Internal(_) => StoreError::Unknown(error.to_string()),
        })
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
        let mut stale_retries = 0;
        if self.dialer.is_some() && self.route(partition).1.is_none() {
            let stale = self
                .routes
                .lock()
                .expect("routes lock poisoned")
                .refreshed
                .is_none_or(|at| at.elapsed() >= MISSING_ROUTE_REFRESH_INTERVAL);
            if stale {
                self.refresh().await;
            }
        }
        loop {
            let (epoch, leader) = self.route(partition);
            let direct = leader.is_some();
            let client = leader.unwrap_or_else(|| self.client());
            let result = self
                .call_once(
                    client,
                    direct,
                    partition,
                    epoch,
                    payload.clone(),
                    ReadMode::Linearizable,
                )
                .await;
            match result {
                // Refused, so not applied: learn the new epoch and resend.
                Err(StoreError::Partition(PartitionError::StaleEpoch { .. }))
                    if stale_retries < STALE_EPOCH_RETRIES_MAX =>
                {
                    stale_retries += 1;
                    self.routes.lock().expect("routes lock poisoned").refreshed = None;
                    self.refresh().await;
                }
                Err(StoreError::Unavailable(_)) if direct => {
                    // Nothing was applied; try again through the endpoints
                    // while the map catches up with the new leader.
                    self.refresh().await;
                    let (epoch, _) = self.route(partition);
                    return self
                        .call_once(self.client(), false, partition, epoch, payload, ReadMode::Linearizable)
                        .await;
                }
                other => {
                    if other.is_err() && !direct && self.dialer.is_some() {
                        self.refresh().await;
                    }
                    return other;
                }
            }
        }
    }

    async fn read(
        &self,
        partition: PartitionId,
        request: PartitionRequest,
        mode: ReadMode,
    ) -> Result<PartitionResponse, StoreError> {
        if mode == ReadMode::Linearizable {
            return self.call(partition, request).await;
        }
        let payload = codec::encode(&request).map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let (epoch, replica) = {
            let routes = self.routes.lock().expect("routes lock poisoned");
            let index = partition as usize;
            let replicas = routes.replicas.get(index).filter(|replicas| !replicas.is_empty());
            (
                routes.epochs.get(index).copied().unwrap_or(0),
                replicas.map(|replicas| {
                    replicas[self.next_replica.fetch_add(1, Ordering::Relaxed) % replicas.len()].clone()
                }),
            )
        };
        if let Some(replica) = replica {
            // Straight to a replica; if it cannot serve (cut off from its
            // leader, too stale, moved away), let a node route it.
            match self
                .call_once(replica, false, partition, epoch, payload.clone(), mode)
                .await
            {
                Err(StoreError::Unavailable(_)) | Err(StoreError::Partition(PartitionError::StaleEpoch { .. })) => {
                    self.refresh().await;
                }
                other => return other,
            }
        }
        let (epoch, _) = self.route(partition);
        self.call_once(self.client(), false, partition, epoch, payload, mode)
            .await
    }
}
