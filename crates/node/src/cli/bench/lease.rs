//! The `lease` scenario: keepalive churn. One operation grants a lease,
//! keeps it alive `--keepalives` times and revokes it, which is what a
//! service registry's short-lived sessions do to a coordination store. Each
//! client keeps one `LeaseKeepAlive` stream open across operations, as
//! etcd's client does, and reopens it if it breaks.
//!
//! The stream is opened with its first request already queued: etcd's Go
//! server sends the response headers only with the first answer, so waiting
//! for the stream before sending would wait forever.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};

use super::report::{OpError, Recorder};
use super::{call, request, LeaseArgs, Worker};

/// Keepalive requests queued on one stream: the worker has one in flight.
const KEEPALIVE_QUEUE: usize = 4;

struct KeepAliveStream {
    sender: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

pub struct LeaseWorker {
    lease: LeaseClient<Channel>,
    stream: Option<KeepAliveStream>,
    ttl: i64,
    keepalives: u32,
    timeout: Duration,
}

impl LeaseWorker {
    pub fn new(channel: Channel, args: &LeaseArgs, timeout: Duration) -> LeaseWorker {
        LeaseWorker {
            lease: LeaseClient::new(channel),
            stream: None,
            ttl: args.ttl,
            keepalives: args.keepalives,
            timeout,
        }
    }

    /// Sends one keepalive for `id` and waits for its answer.
    async fn keep_alive(&mut self, id: i64) -> Result<(), OpError> {
        let keepalive = LeaseKeepAliveRequest { id };
        let stream = match self.stream.take() {
            Some(stream) => {
                if stream.sender.send(keepalive).await.is_err() {
                    return Err(OpError::new("StreamClosed".into(), "the keepalive stream closed"));
                }
                stream
            }
            None => {
                let (sender, receiver) = mpsc::channel(KEEPALIVE_QUEUE);
                sender.send(keepalive).await.expect("the receiver is alive here");
                // No grpc-timeout on the stream: it outlives any one call.
                let stream_request = tonic::Request::new(ReceiverStream::new(receiver));
                let responses = call(self.timeout, self.lease.lease_keep_alive(stream_request)).await?;
                KeepAliveStream { sender, responses }
            }
        };
        let mut stream = stream;
        let answer = match tokio::time::timeout(self.timeout, stream.responses.message()).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => {
                return Err(OpError::new(
                    "StreamClosed".into(),
                    "the server closed the keepalive stream",
                ))
            }
            Ok(Err(status)) => return Err(OpError::from_status(&status)),
            Err(_elapsed) => return Err(OpError::timeout(self.timeout)),
        };
        if answer.id != id || answer.ttl <= 0 {
            return Err(OpError::new(
                "LeaseLost".into(),
                &format!("keepalive of a live lease answered id {} ttl {}", answer.id, answer.ttl),
            ));
        }
        // Only a stream whose answers are in step is kept for the next op.
        self.stream = Some(stream);
        Ok(())
    }
}

impl Worker for LeaseWorker {
    async fn op(&mut self, _index: u64, extra: &mut Recorder) -> Result<(), OpError> {
        let started = Instant::now();
        let grant = LeaseGrantRequest { ttl: self.ttl, id: 0 };
        let granted = call(self.timeout, self.lease.lease_grant(request(grant, self.timeout))).await?;
        extra.phase("grant", started.elapsed());
        let mut outcome = Ok(());
        for _ in 0..self.keepalives {
            let started = Instant::now();
            outcome = self.keep_alive(granted.id).await;
            if outcome.is_err() {
                break;
            }
            extra.phase("keepalive", started.elapsed());
        }
        // Revoke even after a failed keepalive, so failed runs do not leave
        // leases behind for --ttl seconds.
        let started = Instant::now();
        let revoke = LeaseRevokeRequest { id: granted.id };
        let revoked = call(self.timeout, self.lease.lease_revoke(request(revoke, self.timeout))).await;
        if revoked.is_ok() {
            extra.phase("revoke", started.elapsed());
        }
        outcome?;
        revoked.map(drop)
    }
}
