//! The etcd v3 Lease service: grant, revoke, keep-alive (a stream),
//! time-to-live and list, on top of `meta`'s replicated lease records and the
//! leader's lease clock (see `meta::lease` for who decides expiry and why).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use zongheng_proto::etcdserverpb::lease_server::Lease;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};

use super::status;
use crate::meta::group::{LeaderCall, LeaderReply};
use crate::meta::lease::{minimum_ttl_seconds, LEASES_MAX, LEASE_TTL_SECONDS_MAX};
use crate::meta::{MetaCommand, MetaError, MetaGroup, MetaResponse};
use crate::raft::runtime::SeededRuntime;
use openraft::AsyncRuntime;

/// Keep-alive responses queued per stream before the task waits for the client.
pub const LEASE_KEEPALIVE_RESPONSES_BUFFERED_MAX: usize = 16;

#[derive(Clone)]
pub struct LeaseService {
    group: Arc<MetaGroup>,
    min_ttl_seconds: i64,
}

impl LeaseService {
    pub fn new(group: Arc<MetaGroup>, election_timeout: Duration) -> Self {
        Self {
            group,
            min_ttl_seconds: minimum_ttl_seconds(election_timeout),
        }
    }

    fn header(&self, revision: Option<i64>) -> Option<zongheng_proto::etcdserverpb::ResponseHeader> {
        let revision = revision.unwrap_or_else(|| self.group.read(|app| app.kv.revision()));
        Some(self.group.header(revision))
    }
}

fn unexpected(what: impl std::fmt::Debug) -> Status {
    status::status(
        tonic::Code::Internal,
        format!("zongheng: unexpected reply {what:?}"),
        "ZH_INTERNAL",
    )
}

/// The (leader, term) this node believes in now.
fn leadership_view(group: &MetaGroup) -> (Option<u64>, u64) {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    (metrics.current_leader, metrics.current_term)
}

/// Ask the leader for a lease's TTL (renewing it when `renew`), and answer
/// only once that leader is confirmed to still lead.
///
/// Why the confirmation: a leader cut off from its peers does not know it
/// was deposed (openraft has no check-quorum step-down), so it goes on
/// renewing leases in its own clock and answering "TTL 3" to keep-alives,
/// while the real leader, which hears none of them, expires the lease and
/// deletes its keys. A client told "TTL t" at time s rightly expects its
/// keys until s + t. The simulator's lease clients found this
/// (`crates/sim/tests/coordination.rs`, `deposed_leader_renews_or_revokes_leases`).
///
/// So after the renewal this node makes a linearizable barrier (the
/// leader confirms its leadership with a quorum, after it renewed) and
/// checks that its view of (leader, term) did not change meanwhile: then the
/// renewing leader still led after renewing, every later leader is elected
/// after the renewal and starts every lease with a full TTL (see
/// `meta::lease`), and the answer is true. Otherwise the call fails as
/// `NoLeader` and the client tries again. What remains open: the node that
/// renewed could lose and regain leadership between the renewal and the
/// barrier without this node noticing; confirming on the leader itself, in
/// the term of the renewal (`MetaGroup::execute_on_leader`), would close it.
async fn lease_ttl(group: &MetaGroup, id: i64, renew: bool) -> Result<(Option<i64>, i64), MetaError> {
    let call = if renew {
        LeaderCall::LeaseKeepAlive { id }
    } else {
        LeaderCall::LeaseTimeToLive { id }
    };
    let before = leadership_view(group);
    let reply = group.call_leader(call).await?;
    let after_call = leadership_view(group);
    group.linearizable_barrier().await?;
    let after_barrier = leadership_view(group);
    if before.0.is_none() || before != after_call || before != after_barrier {
        return Err(MetaError::NoLeader);
    }
    match reply {
        LeaderReply::LeaseTtl { ttl, granted_ttl } => Ok((ttl, granted_ttl)),
        other => Err(MetaError::Internal(format!("unexpected leader reply {other:?}"))),
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(status::lease_ttl_too_large(LEASE_TTL_SECONDS_MAX));
        }
        if request.id < 0 {
            return Err(status::status(
                tonic::Code::InvalidArgument,
                "etcdserver: lease id must not be negative",
                "ZH_INVALID_ARGUMENT",
            ));
        }
        if self.group.read(|app| app.kv.leases().count()) >= LEASES_MAX {
            return Err(status::too_many_leases(LEASES_MAX));
        }
        let ttl = request.ttl.max(self.min_ttl_seconds);
        // Server-chosen ids come from the runtime's RNG (seeded in the
        // simulator, so a run replays); positive and never 0 (0 is "no lease").
        let id = if request.id != 0 {
            request.id
        } else {
            SeededRuntime::thread_rng().gen_range(1..i64::MAX)
        };
        match self.group.write(MetaCommand::LeaseGrant { id, ttl }).await? {
            MetaResponse::LeaseGranted { id, ttl, revision } => Ok(Response::new(LeaseGrantResponse {
                header: self.header(Some(revision)),
                id,
                ttl,
                error: String::new(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.group.write(MetaCommand::LeaseRevoke { id }).await? {
            MetaResponse::LeaseRevoked { revision } => Ok(Response::new(LeaseRevokeResponse {
                header: self.header(Some(revision)),
            })),
            other => Err(unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (outbound, responses) = mpsc::channel(LEASE_KEEPALIVE_RESPONSES_BUFFERED_MAX);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                let response = match lease_ttl(&service.group, request.id, true).await {
                    // etcd answers an unknown lease with TTL 0 (the client
                    // then reports it expired), not with an error.
                    Ok((ttl, _)) => Ok(LeaseKeepAliveResponse {
                        header: service.header(None),
                        id: request.id,
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(error) => Err(Status::from(error)),
                };
                let failed = response.is_err();
                if outbound.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        let responses = tokio_stream::wrappers::ReceiverStream::new(responses);
        Ok(Response::new(Box::pin(responses) as KeepAliveStream))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let (ttl, granted_ttl) = lease_ttl(&self.group, request.id, false).await?;
        let keys = if request.keys && ttl.is_some() {
            self.group.read(|app| {
                app.kv
                    .lease(request.id)
                    .map(|record| record.keys.iter().cloned().collect())
            })
        } else {
            None
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(None),
            id: request.id,
            // etcd reports -1 for a lease that does not exist (expired or revoked).
            ttl: ttl.unwrap_or(-1),
            granted_ttl: if ttl.is_some() { granted_ttl } else { 0 },
            keys: keys.unwrap_or_default(),
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.group.linearizable_barrier().await?;
        let leases = self
            .group
            .read(|app| app.kv.leases().map(|(id, _)| LeaseStatus { id }).collect());
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(None),
            leases,
        }))
    }
}
