//! [`SimClient`]: an etcd v3 client inside the simulation.
//!
//! It talks to the nodes with the same generated gRPC clients an etcd SDK
//! would use, over [`SimTransport`], one lazily connecting channel per node.
//! Every request has a deadline (a partition swallows requests silently), and
//! every failure is classified the way a client oracle must treat it:
//!
//! - [`RequestError::Refused`]: the request certainly did not take effect
//!   (the node said "no leader" or rejected the input, or the connection
//!   could not be opened, so nothing was sent);
//! - [`RequestError::Unknown`]: it may or may not have taken effect (no reply
//!   in time, the connection broke after sending, the server's own "request
//!   timed out"). A write with an unknown outcome is never retried here, and a
//!   checker must allow both outcomes.
//!
//! Writes are retried on another node only after a refusal; reads are
//! idempotent and are retried after any failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use zongheng::net::transport::channel;
use zongheng::server::status::ERROR_CODE_METADATA;
use zongheng_proto::etcdserverpb::cluster_client::ClusterClient;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use zongheng_proto::etcdserverpb::{
    compare, request_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};

use crate::cluster::CLIENT_PORT;
use crate::transport::SimTransport;

/// How long one request may take before its outcome is called unknown. Below
/// the node's own 5 s request timeout, so a stuck proposal shows up here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`SimClient::put`] and [`SimClient::range`] keep trying nodes.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts of a retried request.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a request did not succeed, and what that says about its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Certainly not applied. `code` is the gRPC code (`Unavailable` for "no
    /// leader" or an unreachable node: worth retrying elsewhere).
    Refused { code: tonic::Code, message: String },
    /// Maybe applied, maybe not.
    Unknown { reason: String },
}

impl RequestError {
    /// Whether another node, or the same one later, may accept the request.
    pub fn is_retryable_refusal(&self) -> bool {
        matches!(
            self,
            RequestError::Refused {
                code: tonic::Code::Unavailable,
                ..
            }
        )
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Refused { code, message } => write!(f, "refused ({code:?}): {message}"),
            RequestError::Unknown { reason } => write!(f, "outcome unknown: {reason}"),
        }
    }
}

impl std::error::Error for RequestError {}

#[derive(Clone)]
struct NodeClients {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
}

/// An etcd v3 client for the simulated nodes. Create it inside a turmoil
/// client (its channels run on that host's runtime and network).
pub struct SimClient {
    names: Vec<String>,
    nodes: BTreeMap<String, NodeClients>,
    request_timeout: Duration,
    retry_timeout: Duration,
    /// Where [`SimClient::put`] starts looking for a node that accepts.
    next_node: usize,
}

impl SimClient {
    /// A client for nodes `names`, each reached at `name:2379`.
    pub fn new(names: &[String]) -> Self {
        let nodes = names
            .iter()
            .map(|name| {
                let channel = channel(Arc::new(SimTransport::default()), &format!("{name}:{CLIENT_PORT}"));
                let clients = NodeClients {
                    kv: KvClient::new(channel.clone()),
                    maintenance: MaintenanceClient::new(channel.clone()),
                    cluster: ClusterClient::new(channel),
                };
                (name.clone(), clients)
            })
            .collect();
        Self {
            names: names.to_vec(),
            nodes,
            request_timeout: REQUEST_TIMEOUT,
            retry_timeout: RETRY_TIMEOUT,
            next_node: 0,
        }
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }

    fn node(&self, name: &str) -> NodeClients {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("the client knows no node {name:?}"))
            .clone()
    }

    /// Run one call with the request deadline and classify its failure.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RequestError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Err(_) => Err(RequestError::Unknown {
                reason: format!("no reply within {} ms", self.request_timeout.as_millis()),
            }),
            Ok(Err(status)) => Err(classify(&status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Put `key` = `value` through node `node`, once.
    pub async fn put_on(&self, node: &str, key: &str, value: &str) -> Result<PutResponse, RequestError> {
        let mut kv = self.node(node).kv;
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        self.call(kv.put(request)).await
    }

    /// Put through whichever node accepts: after a retryable refusal the
    /// next node is tried, until the retry timeout. An unknown outcome is
    /// returned at once (retrying could apply the write twice). Returns the
    /// node that accepted and its response.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<(String, PutResponse), RequestError> {
        let deadline = Instant::now() + self.retry_timeout;
        loop {
            let node = self.names[self.next_node % self.names.len()].clone();
            match self.put_on(&node, key, value).await {
                Ok(response) => return Ok((node, response)),
                Err(error) if error.is_retryable_refusal() && Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(%node, %error, "put refused; trying the next node");
                    self.next_node += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One range request to node `node`.
    pub async fn range_on(&self, node: &str, request: RangeRequest) -> Result<RangeResponse, RequestError> {
        let mut kv = self.node(node).kv;
        self.call(kv.range(request)).await
    }

    /// Every key starting with `prefix` as node `node` has applied it
    /// (serializable: no quorum round, possibly stale).
    pub async fn serializable_prefix_on(&self, node: &str, prefix: &str) -> Result<RangeResponse, RequestError> {
        self.range_on(node, prefix_range(prefix, true)).await
    }

    /// A range on any node that answers (reads are idempotent, so any failure
    /// is retried on the next node until the retry timeout).
    pub async fn range(&mut self, request: RangeRequest) -> Result<(String, RangeResponse), RequestError> {
        let deadline = Instant::now() + self.retry_timeout;
        loop {
            let node = self.names[self.next_node % self.names.len()].clone();
            match self.range_on(&node, request.clone()).await {
                Ok(response) => return Ok((node, response)),
                Err(error) if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(%node, %error, "range failed; trying the next node");
                    self.next_node += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Read `key` on node `node`: linearizable (read-index) or serializable.
    pub async fn get_on(&self, node: &str, key: &[u8], linearizable: bool) -> Result<RangeResponse, RequestError> {
        let request = RangeRequest {
            key: key.to_vec(),
            serializable: !linearizable,
            ..Default::default()
        };
        self.range_on(node, request).await
    }

    /// Read `key` as of `revision` on node `node` (linearizable).
    pub async fn get_at_on(&self, node: &str, key: &[u8], revision: i64) -> Result<RangeResponse, RequestError> {
        let request = RangeRequest {
            key: key.to_vec(),
            revision,
            ..Default::default()
        };
        self.range_on(node, request).await
    }

    /// Put `key` = `value` through node `node`, once (bytes).
    pub async fn put_bytes_on(&self, node: &str, key: &[u8], value: &[u8]) -> Result<PutResponse, RequestError> {
        let mut kv = self.node(node).kv;
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        self.call(kv.put(request)).await
    }

    /// Delete `key` through node `node`, once.
    pub async fn delete_on(&self, node: &str, key: &[u8]) -> Result<DeleteRangeResponse, RequestError> {
        let mut kv = self.node(node).kv;
        let request = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.call(kv.delete_range(request)).await
    }

    /// Compare-and-set through node `node`, once: if `key`'s value is
    /// `expected` (`None`: the key does not exist) put `new_value`; otherwise
    /// read the key (the failure branch), so the caller learns its value.
    pub async fn compare_and_set_on(
        &self,
        node: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new_value: &[u8],
    ) -> Result<TxnResponse, RequestError> {
        let mut kv = self.node(node).kv;
        let compare = match expected {
            Some(value) => Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: key.to_vec(),
                range_end: vec![],
                target_union: Some(compare::TargetUnion::Value(value.to_vec())),
            },
            None => Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.to_vec(),
                range_end: vec![],
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
            },
        };
        let request = TxnRequest {
            compare: vec![compare],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.to_vec(),
                    value: new_value.to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        };
        self.call(kv.txn(request)).await
    }

    /// Compact the key history up to `revision` through node `node`, once.
    pub async fn compact_on(&self, node: &str, revision: i64) -> Result<CompactionResponse, RequestError> {
        let mut kv = self.node(node).kv;
        let request = CompactionRequest {
            revision,
            physical: true,
        };
        self.call(kv.compact(request)).await
    }

    /// `member add` through node `node`, once.
    pub async fn member_add_on(
        &self,
        node: &str,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse, RequestError> {
        let mut cluster = self.node(node).cluster;
        let request = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner,
        };
        self.call(cluster.member_add(request)).await
    }

    /// `member remove` through node `node`, once.
    pub async fn member_remove_on(&self, node: &str, id: u64) -> Result<MemberRemoveResponse, RequestError> {
        let mut cluster = self.node(node).cluster;
        self.call(cluster.member_remove(MemberRemoveRequest { id })).await
    }

    /// `member promote` through node `node`, once.
    pub async fn member_promote_on(&self, node: &str, id: u64) -> Result<MemberPromoteResponse, RequestError> {
        let mut cluster = self.node(node).cluster;
        self.call(cluster.member_promote(MemberPromoteRequest { id })).await
    }

    /// `member list` on node `node` (linearizable).
    pub async fn member_list_on(&self, node: &str) -> Result<MemberListResponse, RequestError> {
        let mut cluster = self.node(node).cluster;
        self.call(cluster.member_list(MemberListRequest { linearizable: true }))
            .await
    }

    /// Node `node`'s Maintenance status (its view of the leader and term).
    pub async fn status_on(&self, node: &str) -> Result<StatusResponse, RequestError> {
        let mut maintenance = self.node(node).maintenance;
        self.call(maintenance.status(StatusRequest {})).await
    }

    /// Poll nodes `among` until every one of them answers and names the same
    /// leader in the same term, and that leader is one of `among` (so a
    /// cut-off majority does not count its old leader); returns that (leader
    /// id, term). Fails with what the nodes last said if that does not happen
    /// within `timeout`.
    pub async fn agreed_leader(&self, among: &[&str], timeout: Duration) -> Result<(u64, u64), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::with_capacity(among.len());
            let mut members = Vec::with_capacity(among.len());
            for node in among {
                views.push(match self.status_on(node).await {
                    Ok(status) => {
                        members.push(status.header.map(|header| header.member_id).unwrap_or(0));
                        Ok((status.leader, status.raft_term))
                    }
                    Err(error) => Err(error),
                });
            }
            if let Some(Ok(first)) = views.first() {
                let agreed = first.0 != 0
                    && members.contains(&first.0)
                    && views.iter().all(|view| view.as_ref().ok() == Some(first));
                if agreed {
                    return Ok(*first);
                }
            }
            if Instant::now() >= deadline {
                let described: Vec<String> = among
                    .iter()
                    .zip(&views)
                    .map(|(node, view)| match view {
                        Ok((leader, term)) => format!("{node}: leader {leader:x} term {term}"),
                        Err(error) => format!("{node}: {error}"),
                    })
                    .collect();
                return Err(format!(
                    "no agreed leader among {among:?} within {timeout:?}: {}",
                    described.join("; ")
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Poll nodes `among` with serializable reads of `prefix` until all hold
    /// the same keys and values at the same revision; returns that revision
    /// and the pairs. Fails if they have not converged within `timeout`.
    pub async fn converged_prefix(
        &self,
        among: &[&str],
        prefix: &str,
        timeout: Duration,
    ) -> Result<(i64, Vec<(String, String)>), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::with_capacity(among.len());
            for node in among {
                views.push(self.serializable_prefix_on(node, prefix).await.map(|response| {
                    let revision = response.header.map(|header| header.revision).unwrap_or(0);
                    let pairs: Vec<(String, String)> = response
                        .kvs
                        .iter()
                        .map(|kv| {
                            (
                                String::from_utf8_lossy(&kv.key).into_owned(),
                                String::from_utf8_lossy(&kv.value).into_owned(),
                            )
                        })
                        .collect();
                    (revision, pairs)
                }));
            }
            if let Some(Ok(first)) = views.first() {
                if views.iter().all(|view| view.as_ref().ok() == Some(first)) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() >= deadline {
                let described: Vec<String> = among
                    .iter()
                    .zip(&views)
                    .map(|(node, view)| match view {
                        Ok((revision, pairs)) => {
                            format!("{node}: revision {revision}, {} keys", pairs.len())
                        }
                        Err(error) => format!("{node}: {error}"),
                    })
                    .collect();
                return Err(format!(
                    "{among:?} did not converge on {prefix:?} within {timeout:?}: {}",
                    described.join("; ")
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// A range over every key starting with `prefix` (etcd's prefix convention:
/// the end is the prefix with its last byte incremented).
pub fn prefix_range(prefix: &str, serializable: bool) -> RangeRequest {
    let key = prefix.as_bytes().to_vec();
    let mut range_end = key.clone();
    while let Some(last) = range_end.pop() {
        if last < u8::MAX {
            range_end.push(last + 1);
            break;
        }
    }
    if range_end.is_empty() {
        // Every byte was 0xff (or the prefix is empty): no upper bound.
        range_end = vec![0];
    }
    RangeRequest {
        key,
        range_end,
        serializable,
        ..Default::default()
    }
}

/// Sort a failed call into refused (certainly not applied) or unknown.
pub(crate) fn classify(status: &tonic::Status) -> RequestError {
    let zongheng_code = status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .and_then(|value| value.to_str().ok());
    let refused = RequestError::Refused {
        code: status.code(),
        message: status.message().to_string(),
    };
    let unknown = RequestError::Unknown {
        reason: format!("{:?}: {}", status.code(), status.message()),
    };
    match zongheng_code {
        // The node proposed the request (or may have) and gave up waiting, or
        // failed in a way that does not say whether it had proposed it (an
        // internal error can wrap a broken forward to the leader).
        Some("ZH_TIMEOUT" | "ZH_STOPPED" | "ZH_INTERNAL") => unknown,
        // Every other coded error is returned before anything is proposed.
        Some(_) => refused,
        None if is_connect_failure(status) => RequestError::Refused {
            code: tonic::Code::Unavailable,
            message: status.message().to_string(),
        },
        None => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Aborted => unknown,
            _ => refused,
        },
    }
}

/// Whether the call failed while connecting, so nothing was sent.
fn is_connect_failure(status: &tonic::Status) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_increments_the_last_byte() {
        let range = prefix_range("key", true);
        assert_eq!(range.key, b"key");
        assert_eq!(range.range_end, b"kez");
        assert!(range.serializable);
        assert_eq!(prefix_range("", false).range_end, vec![0]);
    }

    #[test]
    fn errors_are_sorted_by_what_they_say_about_the_effect() {
        let mut no_leader = tonic::Status::unavailable("etcdserver: no leader");
        no_leader
            .metadata_mut()
            .insert(ERROR_CODE_METADATA, "ZH_NO_LEADER".parse().unwrap());
        assert!(classify(&no_leader).is_retryable_refusal());

        let mut timed_out = tonic::Status::unavailable("etcdserver: request timed out");
        timed_out
            .metadata_mut()
            .insert(ERROR_CODE_METADATA, "ZH_TIMEOUT".parse().unwrap());
        assert!(matches!(classify(&timed_out), RequestError::Unknown { .. }));

        let broken = tonic::Status::unavailable("connection reset");
        assert!(matches!(classify(&broken), RequestError::Unknown { .. }));
    }
}
