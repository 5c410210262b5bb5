//! etcd's Election service (`v3electionpb.Election`): leader election over the
//! `meta` store, done on the server as etcd does it (its
//! `clientv3/concurrency.Election` recipe run inside the server).
//!
//! An election is the lock queue of `server::lock` with a value: each
//! candidate's key `name + "/" + hex(lease)` holds its proclamation, and the
//! leader is the key under `name/` with the smallest create revision.
//!
//! - **Campaign**: create the key with the value and the lease if absent;
//!   if it exists (the same lease campaigns again) and holds another value,
//!   proclaim the new one. Then wait, like a `Lock`, until every key created
//!   before it is gone, and answer with the `LeaderKey` (name, key, create
//!   revision `rev`, lease). `rev` is the leader's fencing token (see
//!   `server::lock`): guard writes with `create_revision(key) == rev`.
//! - **Proclaim**: `if create_revision(key) == rev then put(key, value)`,
//!   keeping the key's lease; otherwise etcd's `election: not leader`.
//! - **Leader**: the first key by create revision (after a read-index
//!   barrier), or etcd's `election: no leader`.
//! - **Observe**: a stream with one response for every change of the leader
//!   or of its value (each proclamation, re-proclaiming the same value too),
//!   in revision order, each carrying the revision it happened at. It pulls
//!   from the MVCC history like the Watch service does: after each apply
//!   here, the revisions that touched the prefix are replayed and the leader
//!   at each is compared with the last one sent.
//! - **Resign**: `if create_revision(key) == rev then delete(key)`.
//!
//! A campaign that is abandoned (client gone, node shutting down) withdraws
//! its key, as etcd's `Campaign` resigns on a cancelled context.
//!
//! ## Differences from etcd
//! - Campaign needs a lease and a name (etcd grants an orphaned 60 s lease
//!   for lease 0, and accepts the empty name).
//! - A campaign whose key disappears while it waits (its lease expired) fails
//!   with `election: session is expired`; etcd keeps waiting and may then
//!   report leadership with a key that no longer exists.
//! - Proclaim keeps the key's own lease (`ignore_lease`); etcd re-attaches
//!   the key to the lease named in the request. The same when they agree.
//! - Resign with a stale `rev` deletes nothing and succeeds, exactly as etcd
//!   (its recipe ignores whether the guarded delete ran), so a leader can
//!   always resign safely, even after losing leadership.
//! - An observer that falls behind a compaction (a client that stopped
//!   reading) skips to the current leader; etcd ends its stream instead.
//! - A missing `leader` field is `InvalidArgument` (etcd: `Unknown`, same
//!   message). etcd's own election errors keep etcd's code, `Unknown`, and
//!   message, which clients match on.

use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use zongheng_proto::etcdserverpb::{PutRequest, TxnRequest};
use zongheng_proto::mvccpb::KeyValue;
use zongheng_proto::v3electionpb::election_server::Election;
use zongheng_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};

use super::etcd::ClientLimits;
use super::lock::{
    check_queue_request, confirm_turn, create_revision_is, header_revision, op_delete, op_get, op_put, range_result,
    stopped, wait_for_turn, write_txn, Queue, WaitError, WaiterSlot, Withdrawal,
};
use super::status;
use crate::meta::mvcc::{Mvcc, MvccError};
use crate::meta::MetaGroup;

/// Most `Campaign` calls waiting to lead on one member at once.
pub const CAMPAIGN_WAITERS_MAX: usize = 100_000;
/// Most `Observe` streams on one member at once.
pub const OBSERVERS_MAX: usize = 100_000;
/// Responses queued per `Observe` stream before its task waits for the client.
pub const OBSERVE_RESPONSES_BUFFERED_MAX: usize = 16;
/// Events read from history per step of an observer (whole revisions, so a
/// large transaction may exceed it).
pub const OBSERVE_EVENTS_PER_READ_MAX: usize = 256;

/// etcd's `ErrElectionNotLeader`.
fn not_leader() -> Status {
    status::status(tonic::Code::Unknown, "election: not leader", "ZH_ELECTION_NOT_LEADER")
}

/// etcd's `ErrElectionNoLeader`.
fn no_leader() -> Status {
    status::status(tonic::Code::Unknown, "election: no leader", "ZH_ELECTION_NO_LEADER")
}

/// The campaign key vanished while waiting (no etcd equivalent; see the
/// module doc).
fn session_expired() -> Status {
    status::status(
        tonic::Code::Unknown,
        "election: session is expired",
        "ZH_ELECTION_SESSION_EXPIRED",
    )
}

/// etcd's `ErrMissingLeaderKey`.
fn missing_leader_key() -> Status {
    status::status(
        tonic::Code::InvalidArgument,
        "\"leader\" field must be provided",
        "ZH_INVALID_ARGUMENT",
    )
}

fn empty_name() -> Status {
    status::status(
        tonic::Code::InvalidArgument,
        "election: name is empty; give the election a name",
        "ZH_INVALID_ARGUMENT",
    )
}

/// What an observer last announced: the leader key and its mod revision
/// (`None`: no leader, or nothing sent yet).
pub(crate) type Announced = Option<(Vec<u8>, i64)>;

/// The leader changes an observer must report for revisions `from..=to`:
/// `(revision, leader)` in revision order, given what it `last` announced
/// (updated). Returns them and the last revision covered. The I/O-free core
/// of Observe.
pub(crate) fn leader_changes(
    kv: &Mvcc,
    queue: &Queue,
    from: i64,
    to: i64,
    last: &mut Announced,
) -> Result<(Vec<(i64, KeyValue)>, i64), MvccError> {
    let (events, covered) = kv.events(&queue.range(), from, to, OBSERVE_EVENTS_PER_READ_MAX, false)?;
    let mut revisions: Vec<i64> = events
        .iter()
        .filter_map(|event| event.kv.as_ref().map(|kv| kv.mod_revision))
        .collect();
    revisions.dedup();
    let mut changes = Vec::new();
    for revision in revisions {
        let head = queue.head(kv, revision)?;
        let now = head.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
        if now != *last {
            *last = now;
            if let Some(head) = head {
                changes.push((revision, head));
            }
        }
    }
    Ok((changes, covered))
}

#[derive(Clone)]
pub struct ElectionService {
    group: Arc<MetaGroup>,
    shutdown: watch::Receiver<bool>,
    limits: ClientLimits,
    campaigners: Arc<AtomicUsize>,
    observers: Arc<AtomicUsize>,
}

impl ElectionService {
    pub fn new(group: Arc<MetaGroup>, shutdown: watch::Receiver<bool>, limits: ClientLimits) -> Self {
        Self {
            group,
            shutdown,
            limits,
            campaigners: Arc::new(AtomicUsize::new(0)),
            observers: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn check_leader_key(&self, leader: Option<LeaderKey>, request: &impl Message) -> Result<LeaderKey, Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(status::request_too_large());
        }
        let leader = leader.ok_or_else(missing_leader_key)?;
        if leader.key.len() > self.limits.max_key_bytes {
            return Err(status::key_too_large(self.limits.max_key_bytes));
        }
        if leader.key.is_empty() {
            return Err(status::status(
                tonic::Code::InvalidArgument,
                "election: leader key is empty; pass the LeaderKey that Campaign returned",
                "ZH_INVALID_ARGUMENT",
            ));
        }
        Ok(leader)
    }

    /// `if create_revision(key) == rev then put(key, value)` keeping its lease.
    async fn proclaim_as(&self, key: &[u8], rev: i64, value: Vec<u8>) -> Result<ProclaimResponse, Status> {
        if rev <= 0 {
            // No key was created at revision 0 or below: never a leader.
            return Err(not_leader());
        }
        let txn = TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![op_put(PutRequest {
                key: key.to_vec(),
                value,
                ignore_lease: true,
                ..Default::default()
            })],
            failure: vec![],
        };
        let response = write_txn(&self.group, txn).await?;
        if !response.succeeded {
            return Err(not_leader());
        }
        Ok(ProclaimResponse {
            header: Some(self.group.header(header_revision(&response.header)?)),
        })
    }

    fn check_name(&self, request: &LeaderRequest) -> Result<Queue, Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(status::request_too_large());
        }
        if request.name.is_empty() {
            return Err(empty_name());
        }
        if request.name.len() >= self.limits.max_key_bytes {
            return Err(status::key_too_large(self.limits.max_key_bytes));
        }
        Ok(Queue::new(&request.name))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let request = request.into_inner();
        let queue = check_queue_request("election", &request.name, request.lease, &request, &self.limits)?;
        let _slot = WaiterSlot::take(&self.campaigners, CAMPAIGN_WAITERS_MAX, "Campaign")?;
        let key = queue.key_for(request.lease);
        let join = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![op_put(PutRequest {
                key: key.clone(),
                value: request.value.clone(),
                lease: request.lease,
                ..Default::default()
            })],
            failure: vec![op_get(&key)],
        };
        let mut withdrawal = Withdrawal::join(self.group.clone(), key.clone(), join);
        let joined = withdrawal.joined().await?;
        let header_at = header_revision(&joined.header)?;
        let my_revision = if joined.succeeded {
            header_at
        } else {
            let existing = range_result(&joined, 0)?.kvs.first().cloned().ok_or_else(|| {
                super::lock::internal(
                    "the campaign key exists (the compare failed) but reading it found nothing".into(),
                )
            })?;
            withdrawal.queued(existing.create_revision);
            if existing.value != request.value {
                // On failure the guard resigns, as etcd's Campaign does.
                self.proclaim_as(&key, existing.create_revision, request.value.clone())
                    .await?;
            }
            existing.create_revision
        };
        withdrawal.queued(my_revision);
        let mut shutdown = self.shutdown.clone();
        let turn = match wait_for_turn(&self.group, &mut shutdown, &queue, &key, my_revision).await {
            Ok(()) => confirm_turn(&self.group, &mut shutdown, &key, my_revision).await?,
            Err(error) => Err(error),
        };
        match turn {
            Ok(_) => {
                withdrawal.disarm();
                Ok(Response::new(CampaignResponse {
                    // etcd answers with the header of the campaign's first write.
                    header: Some(self.group.header(header_at)),
                    leader: Some(LeaderKey {
                        name: request.name,
                        key,
                        rev: my_revision,
                        lease: request.lease,
                    }),
                }))
            }
            Err(WaitError::Lost) => {
                withdrawal.disarm();
                Err(session_expired())
            }
            Err(WaitError::Stopped) => Err(stopped()),
            Err(WaitError::Read(error)) => Err(error.into()),
        }
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = self.check_leader_key(request.leader.clone(), &request)?;
        let response = self.proclaim_as(&leader.key, leader.rev, request.value).await?;
        Ok(Response::new(response))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let request = request.into_inner();
        let queue = self.check_name(&request)?;
        self.group.linearizable_barrier().await?;
        let (revision, head) = self
            .group
            .read(|app| Ok::<_, MvccError>((app.kv.revision(), queue.head(&app.kv, 0)?)))?;
        let kv = head.ok_or_else(no_leader)?;
        Ok(Response::new(LeaderResponse {
            header: Some(self.group.header(revision)),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let request = request.into_inner();
        let queue = self.check_name(&request)?;
        let slot = WaiterSlot::take(&self.observers, OBSERVERS_MAX, "Observe")?;
        let (outbound, responses) = mpsc::channel(OBSERVE_RESPONSES_BUFFERED_MAX);
        let observer = Observer {
            group: self.group.clone(),
            shutdown: self.shutdown.clone(),
            queue,
            outbound,
            sent_revision: 0,
        };
        tokio::spawn(async move {
            let _slot = slot;
            observer.run().await;
        });
        let responses = tokio_stream::wrappers::ReceiverStream::new(responses);
        Ok(Response::new(Box::pin(responses) as ObserveStream))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let request = request.into_inner();
        let leader = self.check_leader_key(request.leader.clone(), &request)?;
        // etcd ignores whether the guarded delete ran: a stale leader's
        // resign succeeds and deletes nothing.
        let txn = TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![op_delete(&leader.key)],
            failure: vec![],
        };
        let response = write_txn(&self.group, txn).await?;
        Ok(Response::new(ResignResponse {
            header: Some(self.group.header(header_revision(&response.header)?)),
        }))
    }
}

/// One Observe stream's task.
struct Observer {
    group: Arc<MetaGroup>,
    shutdown: watch::Receiver<bool>,
    queue: Queue,
    outbound: mpsc::Sender<Result<LeaderResponse, Status>>,
    /// The revision of the last response sent (0: none yet).
    sent_revision: i64,
}

/// The stream is over: the client went away or the node is shutting down.
struct Closed;

impl Observer {
    async fn run(mut self) {
        if let Err(Closed) = self.observe().await {
            if *self.shutdown.borrow() {
                // Best effort: the client learns why its stream ended.
                let _ = self.outbound.try_send(Err(stopped()));
            }
        }
    }

    async fn observe(&mut self) -> Result<(), Closed> {
        let mut applied = self.group.raft.data_metrics();
        applied.borrow_and_update();
        // Start from a linearizable view, as etcd's first `Get` does.
        let barrier = tokio::select! {
            barrier = self.group.linearizable_barrier() => barrier,
            _ = self.shutdown.wait_for(|stop| *stop) => return Err(Closed),
            _ = self.outbound.closed() => return Err(Closed),
        };
        if let Err(error) = barrier {
            let _ = self.outbound.send(Err(error.into())).await;
            return Ok(());
        }
        let queue = self.queue.clone();
        let (current, head) = match self
            .group
            .read(|app| Ok::<_, MvccError>((app.kv.revision(), queue.head(&app.kv, 0)?)))
        {
            Ok(read) => read,
            Err(error) => {
                let _ = self.outbound.send(Err(error.into())).await;
                return Ok(());
            }
        };
        let mut last: Announced = head.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
        if let Some(head) = head {
            self.send(current, head).await?;
        }
        let mut next = current + 1;
        loop {
            loop {
                let step = self.group.read(|app| {
                    let current = app.kv.revision();
                    if next > current {
                        return Ok(None);
                    }
                    match leader_changes(&app.kv, &queue, next, current, &mut last) {
                        Ok(changes) => Ok(Some(changes)),
                        // Fell behind a compaction: skip to the current leader.
                        Err(MvccError::Compacted) => {
                            let head = queue.head(&app.kv, 0)?;
                            let now = head.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
                            let mut changes = Vec::new();
                            if now != last {
                                last = now;
                                changes.extend(head.map(|head| (current, head)));
                            }
                            Ok(Some((changes, current)))
                        }
                        Err(error) => Err(error),
                    }
                });
                let (changes, covered) = match step {
                    Ok(Some(step)) => step,
                    Ok(None) => break,
                    Err(error) => {
                        let _ = self.outbound.send(Err(error.into())).await;
                        return Ok(());
                    }
                };
                for (revision, kv) in changes {
                    self.send(revision, kv).await?;
                }
                next = covered + 1;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Err(Closed) },
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(Closed),
                _ = self.outbound.closed() => return Err(Closed),
            }
        }
    }

    async fn send(&mut self, revision: i64, kv: KeyValue) -> Result<(), Closed> {
        assert!(
            revision > self.sent_revision,
            "observations go forward: {revision} after {}",
            self.sent_revision
        );
        self.sent_revision = revision;
        let response = LeaderResponse {
            header: Some(self.group.header(revision)),
            kv: Some(kv),
        };
        tokio::select! {
            sent = self.outbound.send(Ok(response)) => sent.map_err(|_| Closed),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zongheng_proto::etcdserverpb::DeleteRangeRequest;

    fn put(store: &mut Mvcc, key: &str, value: &str) -> i64 {
        store
            .put(&PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
            .unwrap();
        store.revision()
    }

    fn delete(store: &mut Mvcc, key: &str) -> i64 {
        store
            .delete_range(&DeleteRangeRequest {
                key: key.into(),
                range_end: vec![],
                prev_kv: false,
            })
            .unwrap();
        store.revision()
    }

    fn summary(changes: &[(i64, KeyValue)]) -> Vec<(i64, String, String)> {
        changes
            .iter()
            .map(|(revision, kv)| {
                (
                    *revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn observers_see_every_leader_and_proclamation_in_order() {
        let queue = Queue::new(b"e");
        let mut store = Mvcc::new();
        let a = put(&mut store, "e/a", "1");
        let b = put(&mut store, "e/b", "x"); // a candidate: not reported
        let a2 = put(&mut store, "e/a", "2");
        let b2 = put(&mut store, "e/b", "y"); // still a candidate
        put(&mut store, "other", "z"); // outside the election
        let a3 = put(&mut store, "e/a", "2"); // re-proclaiming the same value
        let gone = delete(&mut store, "e/a"); // b leads
        let b_gone = delete(&mut store, "e/b"); // nobody leads
        let c = put(&mut store, "e/c", "3");
        let mut last = None;
        let (changes, covered) = leader_changes(&store, &queue, 1, store.revision(), &mut last).unwrap();
        assert_eq!(covered, c);
        assert_eq!(
            summary(&changes),
            vec![
                (a, "e/a".into(), "1".into()),
                (a2, "e/a".into(), "2".into()),
                (a3, "e/a".into(), "2".into()),
                (gone, "e/b".into(), "y".into()),
                (c, "e/c".into(), "3".into()),
            ]
        );
        let _ = (b, b2, b_gone);
        // Resuming in the middle continues from what was announced.
        let mut last = Some((b"e/a".to_vec(), a2));
        let (changes, _) = leader_changes(&store, &queue, b2, gone, &mut last).unwrap();
        assert_eq!(
            summary(&changes),
            vec![(a3, "e/a".into(), "2".into()), (gone, "e/b".into(), "y".into())]
        );
    }
}
