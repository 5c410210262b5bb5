//! Raft messages between nodes, over the `zongheng.peer.v1.Peer` gRPC service.
//!
//! Every message names its Raft **group** (the `meta` group is group 0), so the
//! data store's many groups share the one connection each node keeps per
//! peer ([`PeerPool`]), and append entries and votes of all groups to one
//! peer leave together in batch calls ([`super::batch`]); snapshot chunks go
//! as single calls. The openraft request is bincode-encoded into the
//! message payload; the reply carries the encoded `Result` of the receiver's
//! `Raft` call, so a remote Raft error comes back typed.
//!
//! Every call has a deadline (openraft's `RPCOption::hard_ttl`): a partition can
//! swallow a response on a connection that still looks open, and a call
//! without a deadline would stall replication to that peer forever.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RaftTypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use zongheng_proto::peer::peer_client::PeerClient;
use zongheng_proto::peer::{RaftKind, RaftRequest};

use super::batch::{BatchCounters, PeerBatcher};
use super::codec;
use crate::net::transport::{self, Transport};

/// The largest peer message accepted or sent. Snapshot chunks
/// (`raft::SNAPSHOT_WIRE_CHUNK_BYTES`) and append batches
/// ([`APPEND_ENTRIES_BYTES_MAX`]) stay well below it.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes of log entries sent in one AppendEntries message. A larger batch
/// is refused locally with openraft's `PayloadTooLarge` and a hint of how
/// many entries fit, and openraft resends fewer (one entry always goes, up
/// to the client request limit).
pub const APPEND_ENTRIES_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A node's address as Raft membership stores it.
pub trait PeerAddress {
    /// "host:port" of the node's peer listener, if it has one.
    fn peer_address(&self) -> Option<String>;
}

/// One gRPC channel per peer address, shared by every Raft group and by
/// request forwarding.
pub struct PeerPool {
    transport: Arc<dyn Transport>,
    channels: Mutex<BTreeMap<String, Channel>>,
    /// When each member (by id) last answered a Raft message: the liveness
    /// that membership changes check (etcd's "active" members) and the
    /// store's failure detector reads. Keyed by id, not address: a removed
    /// member's address is reused by the member that replaces it, whose
    /// answers say nothing about the old one.
    last_answer: Mutex<BTreeMap<u64, tokio::time::Instant>>,
    /// The batching queue of each peer address.
    batchers: Mutex<BTreeMap<String, Arc<PeerBatcher>>>,
    batch_counters: Arc<BatchCounters>,
}

impl PeerPool {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            channels: Mutex::new(BTreeMap::new()),
            last_answer: Mutex::new(BTreeMap::new()),
            batchers: Mutex::new(BTreeMap::new()),
            batch_counters: Arc::new(BatchCounters::default()),
        }
    }

    /// The batching queue of the peer at `address`, started on first use.
    pub fn batcher(&self, address: &str) -> Arc<PeerBatcher> {
        if let Some(batcher) = self.batchers.lock().expect("peer pool lock poisoned").get(address) {
            return batcher.clone();
        }
        let client = self.client(address);
        self.batchers
            .lock()
            .expect("peer pool lock poisoned")
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(PeerBatcher::start(client, self.batch_counters.clone())))
            .clone()
    }

    /// Raft messages and batch calls sent so far.
    pub fn batch_counters(&self) -> &BatchCounters {
        &self.batch_counters
    }

    /// A client for the peer at `address` ("host:port").
    pub fn client(&self, address: &str) -> PeerClient<Channel> {
        let mut channels = self.channels.lock().expect("peer pool lock poisoned");
        let channel = channels
            .entry(address.to_string())
            .or_insert_with(|| transport::channel(self.transport.clone(), address))
            .clone();
        PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }

    /// Record that member `member_id` answered a Raft message now.
    pub fn record_answer(&self, member_id: u64) {
        let now = tokio::time::Instant::now();
        self.last_answer
            .lock()
            .expect("peer pool lock poisoned")
            .insert(member_id, now);
    }

    /// When member `member_id` last answered a Raft message, if ever.
    pub fn last_answer(&self, member_id: u64) -> Option<tokio::time::Instant> {
        self.last_answer
            .lock()
            .expect("peer pool lock poisoned")
            .get(&member_id)
            .copied()
    }

    /// Whether member `member_id` answered within `window`.
    pub fn answered_within(&self, member_id: u64, window: Duration) -> bool {
        self.last_answer(member_id).is_some_and(|at| at.elapsed() <= window)
    }
}

/// openraft's network factory for one group.
pub struct NetworkFactory {
    pool: Arc<PeerPool>,
    group: u64,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl NetworkFactory {
    /// `removed` is set when a leader answers that this node was removed
    /// from the group.
    pub fn new(pool: Arc<PeerPool>, group: u64, removed: Arc<tokio::sync::watch::Sender<bool>>) -> Self {
        Self { pool, group, removed }
    }
}

impl<C> RaftNetworkFactory<C> for NetworkFactory
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Node: PeerAddress,
{
    type Network = PeerConnection<C>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        let address = node.peer_address();
        let client = address.as_deref().map(|address| self.pool.client(address));
        let batcher = address.as_deref().map(|address| self.pool.batcher(address));
        PeerConnection {
            target,
            to_member_id: target,
            address,
            client,
            batcher,
            pool: self.pool.clone(),
            group: self.group,
            removed: self.removed.clone(),
        }
    }
}

/// openraft's handle to one peer for one group.
pub struct PeerConnection<C: RaftTypeConfig> {
    target: C::NodeId,
    /// `target` on the wire: the receiver refuses a message meant for
    /// another member id (see `server::peer::refuse_misaddressed`).
    to_member_id: u64,
    address: Option<String>,
    client: Option<PeerClient<Channel>>,
    /// The peer's batching queue (append entries and votes).
    batcher: Option<Arc<PeerBatcher>>,
    pool: Arc<PeerPool>,
    group: u64,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Why a peer call failed before the peer's Raft answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {target} has no peer address")]
    NoAddress { target: String },
    #[error("peer {target} ({address}) unreachable: {message}")]
    Unreachable {
        target: String,
        address: String,
        message: String,
    },
    #[error("peer call to {target} failed: {message}")]
    Network { target: String, message: String },
}

impl<C: RaftTypeConfig> PeerConnection<C> {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftKind,
        request: &Req,
        deadline: Duration,
    ) -> Result<Result<Resp, E>, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let target = self.target.to_string();
        let (Some(client), Some(batcher)) = (self.client.as_mut(), self.batcher.as_ref()) else {
            return Err(CallError::NoAddress { target });
        };
        let payload = codec::encode(request).map_err(|error| CallError::Network {
            target: target.clone(),
            message: error.to_string(),
        })?;
        let message = RaftRequest {
            group_id: self.group,
            kind: kind as i32,
            payload,
            to_member_id: self.to_member_id,
        };
        let reply = if kind == RaftKind::InstallSnapshot {
            let mut message = tonic::Request::new(message);
            message.set_timeout(deadline);
            tokio::time::timeout(deadline, client.raft(message))
                .await
                .map(|reply| reply.map(tonic::Response::into_inner))
        } else {
            tokio::time::timeout(deadline, batcher.send(message, deadline)).await
        };
        let reply = match reply {
            Err(_) => {
                return Err(CallError::Network {
                    target,
                    message: format!("no reply within {} ms", deadline.as_millis()),
                })
            }
            Ok(Err(status)) => {
                let address = self.address.clone().unwrap_or_default();
                let removed = status
                    .metadata()
                    .get(crate::server::status::ERROR_CODE_METADATA)
                    .is_some_and(|code| code == crate::server::peer::MEMBER_REMOVED_CODE);
                if removed {
                    let _ = self.removed.send(true);
                }
                return Err(match status.code() {
                    tonic::Code::Unavailable => CallError::Unreachable {
                        target,
                        address,
                        message: status.message().to_string(),
                    },
                    _ => CallError::Network {
                        target,
                        message: format!("{}: {}", status.code(), status.message()),
                    },
                });
            }
            Ok(Ok(reply)) => {
                self.pool.record_answer(self.to_member_id);
                reply
            }
        };
        codec::decode(&reply.payload).map_err(|error| CallError::Network {
            target,
            message: error.to_string(),
        })
    }
}

fn rpc_error<NID, N, E>(error: CallError) -> RPCError<NID, N, E>
where
    NID: openraft::NodeId,
    N: openraft::Node,
    E: std::error::Error,
{
    match error {
        error @ (CallError::Unreachable { .. } | CallError::NoAddress { .. }) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        error @ CallError::Network { .. } => RPCError::Network(NetworkError::new(&error)),
    }
}

impl<C> RaftNetwork<C> for PeerConnection<C>
where
    C: RaftTypeConfig,
    C::Node: PeerAddress,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>> {
        let target = self.target.clone();
        if let Some(fitting) = entries_that_fit(&rpc.entries) {
            return Err(RPCError::PayloadTooLarge(
                openraft::error::PayloadTooLarge::new_entries_hint(fitting),
            ));
        }
        match self
            .call::<_, _, RaftError<C::NodeId>>(RaftKind::AppendEntries, &rpc, option.hard_ttl())
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
            Err(error) => Err(rpc_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<C::NodeId>,
        RPCError<C::NodeId, C::Node, RaftError<C::NodeId, InstallSnapshotError>>,
    > {
        let target = self.target.clone();
        match self
            .call::<_, _, RaftError<C::NodeId, InstallSnapshotError>>(
                RaftKind::InstallSnapshot,
                &rpc,
                option.hard_ttl(),
            )
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
            Err(error) => Err(rpc_error(error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C::NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>> {
        let target = self.target.clone();
        match self
            .call::<_, _, RaftError<C::NodeId>>(RaftKind::Vote, &rpc, option.hard_ttl())
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
            Err(error) => Err(rpc_error(error)),
        }
    }
}

/// `None` when `entries` fit in one message; otherwise how many leading
/// entries do (at least one).
fn entries_that_fit<T: Serialize>(entries: &[T]) -> Option<u64> {
    if entries.len() <= 1 {
        return None;
    }
    let mut total = 0usize;
    for (count, entry) in entries.iter().enumerate() {
        // An entry that cannot be encoded fails later with a clear error.
        total += codec::encode(entry).map(|bytes| bytes.len()).unwrap_or(0);
        if total > APPEND_ENTRIES_BYTES_MAX {
            return Some(count.max(1) as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_batches_are_split_with_a_hint() {
        let small = vec![vec![0u8; 100]; 10];
        assert_eq!(entries_that_fit(&small), None);
        let large = vec![vec![0u8; 3 * 1024 * 1024]; 5];
        assert_eq!(entries_that_fit(&large), Some(2));
        let single = vec![vec![0u8; 20 * 1024 * 1024]];
        assert_eq!(entries_that_fit(&single), None);
        let first_huge = vec![vec![0u8; 20 * 1024 * 1024], vec![0u8; 1]];
        assert_eq!(entries_that_fit(&first_huge), Some(1));
    }
}
