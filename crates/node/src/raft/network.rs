//! Raft messages between nodes, over the `zongheng.peer.v1.Peer` gRPC service.
//!
//! Every message names its Raft **group** (the `meta` group is group 0), so the
//! data store's many groups will share the one connection each node keeps per
//! peer ([`PeerPool`]). The openraft request is bincode-encoded into the
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

use super::codec;
use crate::net::transport::{self, Transport};

/// The largest peer message accepted or sent: a snapshot chunk plus framing.
/// Snapshot chunks are sized well below it (see `raft::config`).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

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
}

impl PeerPool {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            channels: Mutex::new(BTreeMap::new()),
        }
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

    /// Drop the channel to `address` (after the member was removed).
    pub fn forget(&self, address: &str) {
        self.channels.lock().expect("peer pool lock poisoned").remove(address);
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
    C: RaftTypeConfig,
    C::Node: PeerAddress,
{
    type Network = PeerConnection<C>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        let address = node.peer_address();
        let client = address.as_deref().map(|address| self.pool.client(address));
        PeerConnection {
            target,
            address,
            client,
            group: self.group,
            removed: self.removed.clone(),
        }
    }
}

/// openraft's handle to one peer for one group.
pub struct PeerConnection<C: RaftTypeConfig> {
    target: C::NodeId,
    address: Option<String>,
    client: Option<PeerClient<Channel>>,
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
        let Some(client) = self.client.as_mut() else {
            return Err(CallError::NoAddress { target });
        };
        let payload = codec::encode(request).map_err(|error| CallError::Network {
            target: target.clone(),
            message: error.to_string(),
        })?;
        let mut message = tonic::Request::new(RaftRequest {
            group_id: self.group,
            kind: kind as i32,
            payload,
        });
        message.set_timeout(deadline);
        let reply = tokio::time::timeout(deadline, client.raft(message)).await;
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
            Ok(Ok(reply)) => reply.into_inner(),
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
