//! The gRPC clients the coordination workload uses, one set per node, and
//! the deadline and failure classification every call goes through (the
//! same as [`crate::client::SimClient`]'s: refused or unknown).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use zongheng::net::transport::channel;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::v3electionpb::election_client::ElectionClient;
use zongheng_proto::v3lockpb::lock_client::LockClient;

use crate::client::{classify, RequestError};
use crate::cluster::CLIENT_PORT;
use crate::transport::SimTransport;

/// Every etcd service of one node, over one lazily connecting channel.
#[derive(Clone)]
pub struct NodeRpc {
    pub kv: KvClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub lock: LockClient<Channel>,
    pub election: ElectionClient<Channel>,
    pub watch: WatchClient<Channel>,
}

/// The nodes a workload client talks to. Create it inside a turmoil host.
pub struct Endpoints {
    names: Vec<String>,
    nodes: BTreeMap<String, NodeRpc>,
}

impl Endpoints {
    pub fn new(names: &[String]) -> Arc<Self> {
        let nodes = names
            .iter()
            .map(|name| {
                let channel = channel(Arc::new(SimTransport::default()), &format!("{name}:{CLIENT_PORT}"));
                let rpc = NodeRpc {
                    kv: KvClient::new(channel.clone()),
                    lease: LeaseClient::new(channel.clone()),
                    lock: LockClient::new(channel.clone()),
                    election: ElectionClient::new(channel.clone()),
                    watch: WatchClient::new(channel),
                };
                (name.clone(), rpc)
            })
            .collect();
        Arc::new(Self {
            names: names.to_vec(),
            nodes,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Node number `index` (modulo the node count) and its name.
    pub fn node(&self, index: usize) -> (String, NodeRpc) {
        let name = self.names[index % self.names.len()].clone();
        let rpc = self.nodes[&name].clone();
        (name, rpc)
    }
}

/// Run one call with `timeout` and classify its failure.
pub async fn call<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RequestError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(RequestError::Unknown {
            reason: format!("no reply within {} ms", timeout.as_millis()),
        }),
        Ok(Err(status)) => Err(classify(&status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

/// Whether `error` carries `message_part` (etcd's recipes report session and
/// leadership loss only by message).
pub fn says(error: &RequestError, message_part: &str) -> bool {
    match error {
        RequestError::Refused { message, .. } => message.contains(message_part),
        RequestError::Unknown { reason } => reason.contains(message_part),
    }
}
