//! etcd's Lock service (`v3lockpb.Lock`): distributed mutexes over the `meta`
//! store's keys, leases and revisions, done on the server.
//!
//! etcd serves this API by running its client-side recipe
//! (`clientv3/concurrency.Mutex`) inside the server; this module follows the
//! same algorithm, reading the local applied state instead of issuing RPCs to
//! itself. Because the keys are the same, a lock taken here excludes
//! `etcdctl lock` (the client-side recipe) on the same name, and vice versa.
//!
//! ## The algorithm (a queue ordered by create revision)
//! - A caller brings a lease. Its *lock key* is `name + "/" + hex(lease)`.
//! - One transaction: if the key does not exist, create it (empty value,
//!   attached to the lease); read the *owner*, the key under `name/` with the
//!   smallest create revision. The caller's position `my_revision` is the
//!   revision of that write, or the existing key's create revision (a second
//!   `Lock` with the same lease joins or re-enters the same position).
//! - The caller holds the lock when its key is the owner. Otherwise it waits
//!   until every key under the prefix created before it is gone. It watches
//!   only its *predecessor* (the key just before it in the queue), re-checking
//!   the whole queue when that one goes: a release wakes only the next waiter,
//!   never the herd.
//! - Before answering, it confirms (after a read-index barrier) that its own
//!   key still exists: its lease may have expired while it waited. If the key
//!   disappears while waiting, the call fails at once with etcd's
//!   `mutex: session is expired` (etcd notices only after its turn comes).
//! - A client that lost the answer (a timeout, a broken connection) calls
//!   `Lock` again with the same lease: it gets the same key and position.
//! - `Unlock(key)` deletes the key, as etcd does (any key, held or not:
//!   deleting nothing succeeds). Revoking or letting the lease expire also
//!   releases the lock.
//!
//! Waiting is local: a key that is deleted in this member's applied state is
//! deleted for good in the committed history, and every key created before
//! mine is applied here once my write is (the write returns only after this
//! member applied it), so the decision "no predecessor is left" never needs
//! the leader. Only the final confirmation uses a linearizable barrier.
//!
//! ## Fencing tokens
//! A lock can be lost without its holder noticing (a long GC pause, a
//! partition, an expired lease), so a mutex alone does not stop a stale holder
//! from writing. The lock key's **create revision is a fencing token**
//! (Kleppmann, "How to do distributed locking"): the store's revision only
//! grows, the queue is served in create-revision order, and each new holder's
//! key was created after its predecessor's, so tokens strictly increase from
//! one holder to the next. A client uses it like this:
//! 1. After `Lock` returns `key`, read the key once (`Range`) and take its
//!    `create_revision` as the token (for elections it is `LeaderKey.rev`).
//! 2. Send the token with every write to the guarded resource.
//! 3. The resource stores the largest token it has accepted next to the data
//!    and refuses writes carrying a smaller one: a compare-and-set on the
//!    token. For data kept in this store, do both in one `Txn`:
//!    `create_revision(key) == token` (the lock is still held right now) and
//!    a compare on the token stored with the value (a stale holder's token is
//!    smaller), then the write, which stores the token again.
//!
//! ## Ending a wait
//! A waiting call ends when the client goes away (tonic drops the handler
//! future) and when the node shuts down (`Unavailable`). Either way, as
//! etcd's `Mutex` does on an error, the call withdraws its key from the queue
//! (a delete guarded by its create revision, so a later incarnation of the key
//! is never touched) from a task spawned by a drop guard. A call abandoned
//! while its first write is in flight withdraws the key only if that write
//! created it.
//!
//! ## Differences from etcd
//! - A lease is required: etcd grants a fresh 60 s lease when `lease` is 0,
//!   which nobody keeps alive or can revoke; here that is `InvalidArgument`.
//!   An empty name is refused too (etcd would use the prefix `/`).
//! - Errors of the underlying KV operations keep the gRPC code the KV API
//!   gives them: an unknown lease is `NotFound` "etcdserver: requested lease
//!   not found", an empty `Unlock` key `InvalidArgument` "etcdserver: key is
//!   not provided". etcd sends the same messages with code `Unknown` (its
//!   embedded client loses the code on the way).
//! - `TryLock` (etcd 3.6) is not served.
//!
//! ## What it does not do yet
//! Finding the owner and the predecessor reads every key under the prefix,
//! so a lock with many waiters costs O(waiters) per release and per waiter;
//! a per-prefix index ordered by create revision would make it O(log n).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use zongheng_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use zongheng_proto::mvccpb::KeyValue;
use zongheng_proto::v3lockpb::lock_server::Lock;
use zongheng_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

use super::etcd::ClientLimits;
use super::status;
use crate::meta::mvcc::{KeyRange, Mvcc, MvccError};
use crate::meta::{MetaCommand, MetaError, MetaGroup, MetaResponse};

/// Most `Lock` calls waiting for their turn on one member at once (each holds
/// a task and a gRPC stream); more fail with `ResourceExhausted`.
pub const LOCK_WAITERS_MAX: usize = 100_000;

/// The length of `hex(lease)` at most (an `i64` in hex).
const LEASE_HEX_BYTES_MAX: usize = 16;

/// The queue of one lock or election: the keys under `name + "/"`, ordered by
/// create revision. Its methods only read an [`Mvcc`]: they are the I/O-free
/// core that the services drive.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    prefix: Vec<u8>,
    prefix_end: Vec<u8>,
}

/// Where a waiter stands in its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Turn {
    /// No key created before mine is left: I hold the lock (lead).
    Mine,
    /// Wait until this key (with this create revision) is gone.
    After { key: Vec<u8>, create_revision: i64 },
    /// My key is gone (its lease expired or was revoked, or it was deleted).
    Lost,
}

impl Queue {
    pub(crate) fn new(name: &[u8]) -> Self {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let prefix_end = prefix_end(&prefix);
        Self { prefix, prefix_end }
    }

    /// The key of the caller holding `lease`: etcd's `fmt.Sprintf("%s%x")`.
    pub(crate) fn key_for(&self, lease: i64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        key
    }

    /// The longest key this queue hands out, for the key size limit.
    pub(crate) fn key_bytes_max(&self) -> usize {
        self.prefix.len() + LEASE_HEX_BYTES_MAX
    }

    pub(crate) fn range(&self) -> KeyRange {
        KeyRange::new(&self.prefix, &self.prefix_end)
    }

    /// A read of the first key by create revision (etcd's `WithFirstCreate`),
    /// at `revision` (0: the current one).
    pub(crate) fn head_request(&self, revision: i64) -> RangeRequest {
        RangeRequest {
            key: self.prefix.clone(),
            range_end: self.prefix_end.clone(),
            limit: 1,
            revision,
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..Default::default()
        }
    }

    /// The owner (leader): the first key by create revision at `revision`.
    pub(crate) fn head(&self, kv: &Mvcc, revision: i64) -> Result<Option<KeyValue>, MvccError> {
        Ok(kv.range(&self.head_request(revision))?.kvs.into_iter().next())
    }

    /// The key just before `my_revision` in the queue: the largest create
    /// revision below it (etcd's `WithLastCreate` + `WithMaxCreateRev`).
    pub(crate) fn predecessor(&self, kv: &Mvcc, my_revision: i64) -> Result<Option<KeyValue>, MvccError> {
        assert!(my_revision > 1, "a queue key is created by a write, after revision 1");
        let request = RangeRequest {
            key: self.prefix.clone(),
            range_end: self.prefix_end.clone(),
            limit: 1,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            max_create_revision: my_revision - 1,
            ..Default::default()
        };
        Ok(kv.range(&request)?.kvs.into_iter().next())
    }

    /// Where the holder of `my_key`, created at `my_revision`, stands now.
    pub(crate) fn turn(&self, kv: &Mvcc, my_key: &[u8], my_revision: i64) -> Result<Turn, MvccError> {
        if create_revision_of(kv, my_key)? != my_revision {
            return Ok(Turn::Lost);
        }
        Ok(match self.predecessor(kv, my_revision)? {
            None => Turn::Mine,
            Some(predecessor) => Turn::After {
                key: predecessor.key,
                create_revision: predecessor.create_revision,
            },
        })
    }
}

/// The first key after every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`); `[0]` ("to the end") if there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The create revision of `key`'s live incarnation, 0 if it does not exist.
pub(crate) fn create_revision_of(kv: &Mvcc, key: &[u8]) -> Result<i64, MvccError> {
    let request = RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    Ok(kv.range(&request)?.kvs.first().map_or(0, |kv| kv.create_revision))
}

// Transaction building blocks.

pub(crate) fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
    }
}

pub(crate) fn op_put(put: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put)),
    }
}

pub(crate) fn op_range(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

pub(crate) fn op_get(key: &[u8]) -> RequestOp {
    op_range(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

pub(crate) fn op_delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            range_end: vec![],
            prev_kv: false,
        })),
    }
}

/// The range result of the `index`th operation of an executed txn branch.
pub(crate) fn range_result(response: &TxnResponse, index: usize) -> Result<&RangeResponse, Status> {
    match response.responses.get(index).and_then(|op| op.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => Ok(range),
        other => Err(internal(format!("txn op {index} is not a range: {other:?}"))),
    }
}

/// The revision in a state machine header (always set by `Mvcc`).
pub(crate) fn header_revision(header: &Option<ResponseHeader>) -> Result<i64, Status> {
    header
        .as_ref()
        .map(|header| header.revision)
        .ok_or_else(|| internal("a state machine response without a header".into()))
}

pub(crate) fn internal(detail: String) -> Status {
    status::status(
        tonic::Code::Internal,
        format!("zongheng: internal error: {detail}"),
        "ZH_INTERNAL",
    )
}

/// Run a txn through the log; `Ok` once this member applied it.
pub(crate) async fn write_txn(group: &MetaGroup, txn: TxnRequest) -> Result<TxnResponse, Status> {
    txn_of(group.write(MetaCommand::Txn(txn)).await)
}

fn txn_of(result: Result<MetaResponse, MetaError>) -> Result<TxnResponse, Status> {
    match result? {
        MetaResponse::Txn(response) => Ok(response),
        other => Err(internal(format!("unexpected state machine response {other:?}"))),
    }
}

/// Why waiting for a turn ended without it.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// My key is gone.
    Lost,
    /// The node is shutting down, or Raft stopped.
    Stopped,
    /// Reading the queue failed (it never does for these reads).
    Read(MvccError),
}

impl From<MvccError> for WaitError {
    fn from(error: MvccError) -> Self {
        WaitError::Read(error)
    }
}

/// Wait until every key of `queue` created before `my_revision` is gone,
/// watching one predecessor at a time and re-checking after each apply here.
pub(crate) async fn wait_for_turn(
    group: &MetaGroup,
    shutdown: &mut watch::Receiver<bool>,
    queue: &Queue,
    my_key: &[u8],
    my_revision: i64,
) -> Result<(), WaitError> {
    let mut applied = group.raft.data_metrics();
    // Changes from now on wake us; the state is read after this point.
    applied.borrow_and_update();
    loop {
        let (predecessor, predecessor_revision) = match group.read(|app| queue.turn(&app.kv, my_key, my_revision))? {
            Turn::Mine => return Ok(()),
            Turn::Lost => return Err(WaitError::Lost),
            Turn::After { key, create_revision } => (key, create_revision),
        };
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Err(WaitError::Stopped) },
                _ = shutdown.wait_for(|stop| *stop) => return Err(WaitError::Stopped),
            }
            let (predecessor_alive, mine_alive) = group.read(|app| {
                Ok::<_, MvccError>((
                    create_revision_of(&app.kv, &predecessor)? == predecessor_revision,
                    create_revision_of(&app.kv, my_key)? == my_revision,
                ))
            })?;
            if !mine_alive {
                return Err(WaitError::Lost);
            }
            if !predecessor_alive {
                break;
            }
        }
    }
}

/// After [`wait_for_turn`]: confirm with a read-index barrier that my key
/// still exists; returns the revision the answer is at.
pub(crate) async fn confirm_turn(
    group: &MetaGroup,
    shutdown: &mut watch::Receiver<bool>,
    my_key: &[u8],
    my_revision: i64,
) -> Result<Result<i64, WaitError>, Status> {
    tokio::select! {
        barrier = group.linearizable_barrier() => barrier?,
        _ = shutdown.wait_for(|stop| *stop) => return Ok(Err(WaitError::Stopped)),
    }
    let (alive, revision) = group
        .read(|app| Ok::<_, MvccError>((create_revision_of(&app.kv, my_key)? == my_revision, app.kv.revision())))?;
    Ok(if alive { Ok(revision) } else { Err(WaitError::Lost) })
}

/// Takes a caller's key out of its queue if the call ends without handing
/// the key to the client (client gone, shutdown, error), from a task spawned
/// on drop: the dropped handler cannot await anything.
pub(crate) struct Withdrawal {
    group: Arc<MetaGroup>,
    key: Vec<u8>,
    state: WithdrawalState,
}

enum WithdrawalState {
    /// The first write is in flight: withdraw only if it created the key.
    Joining(JoinHandle<Result<MetaResponse, MetaError>>),
    /// The key is in the queue at this create revision: withdraw it.
    Queued(i64),
    /// The client has the key (or nothing is left to withdraw).
    Done,
}

impl Withdrawal {
    /// Start `join`, the txn that puts `key` in the queue (compare
    /// `create_revision(key) == 0` then put it), in its own task so that it
    /// finishes, and is undone, even if the call is abandoned meanwhile.
    pub(crate) fn join(group: Arc<MetaGroup>, key: Vec<u8>, join: TxnRequest) -> Self {
        let writer = group.clone();
        let task = tokio::spawn(async move { writer.write(MetaCommand::Txn(join)).await });
        Self {
            group,
            key,
            state: WithdrawalState::Joining(task),
        }
    }

    /// The outcome of the joining txn. Afterwards the guard withdraws nothing
    /// until [`Withdrawal::queued`] arms it.
    pub(crate) async fn joined(&mut self) -> Result<TxnResponse, Status> {
        let WithdrawalState::Joining(task) = &mut self.state else {
            panic!("Withdrawal::joined called twice");
        };
        let result = task.await;
        self.state = WithdrawalState::Done;
        match result {
            Ok(result) => txn_of(result),
            Err(error) => Err(internal(format!("the queue write task failed: {error}"))),
        }
    }

    /// From now on, dropping the guard withdraws the key created at `revision`.
    pub(crate) fn queued(&mut self, revision: i64) {
        self.state = WithdrawalState::Queued(revision);
    }

    /// The client has the key: keep it.
    pub(crate) fn disarm(&mut self) {
        self.state = WithdrawalState::Done;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, WithdrawalState::Done);
        if matches!(state, WithdrawalState::Done) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to withdraw an abandoned queue key; its lease will remove it");
            return;
        };
        let group = self.group.clone();
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            let revision = match state {
                WithdrawalState::Queued(revision) => revision,
                WithdrawalState::Joining(task) => match task.await {
                    Ok(Ok(MetaResponse::Txn(response))) if response.succeeded => match response.header {
                        Some(header) => header.revision,
                        None => return,
                    },
                    // It failed, or found the key already there: not ours to remove.
                    _ => return,
                },
                WithdrawalState::Done => return,
            };
            let withdraw = TxnRequest {
                compare: vec![create_revision_is(&key, revision)],
                success: vec![op_delete(&key)],
                failure: vec![],
            };
            match group.write(MetaCommand::Txn(withdraw)).await {
                Ok(_) => tracing::debug!(key = %String::from_utf8_lossy(&key), "withdrew an abandoned queue key"),
                Err(error) => tracing::info!(
                    key = %String::from_utf8_lossy(&key), %error,
                    "could not withdraw an abandoned queue key; its lease will remove it"
                ),
            }
        });
    }
}

/// A place among a member's waiting calls, given back on drop.
pub(crate) struct WaiterSlot(Arc<AtomicUsize>);

impl WaiterSlot {
    pub(crate) fn take(count: &Arc<AtomicUsize>, max: usize, what: &str) -> Result<Self, Status> {
        if count.fetch_add(1, Ordering::Relaxed) >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return Err(status::status(
                tonic::Code::ResourceExhausted,
                format!("zongheng: too many waiting {what} calls on this member (the limit is {max}); retry later or on another member"),
                "ZH_TOO_MANY_WAITERS",
            ));
        }
        Ok(Self(count.clone()))
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request checks shared by Lock and Campaign: a name, a lease, sizes.
pub(crate) fn check_queue_request(
    service: &str,
    name: &[u8],
    lease: i64,
    request: &impl Message,
    limits: &ClientLimits,
) -> Result<Queue, Status> {
    if request.encoded_len() > limits.max_request_bytes {
        return Err(status::request_too_large());
    }
    if name.is_empty() {
        return Err(status::status(
            tonic::Code::InvalidArgument,
            format!("{service}: name is empty; give the {service} a name"),
            "ZH_INVALID_ARGUMENT",
        ));
    }
    if lease == 0 {
        return Err(status::status(
            tonic::Code::InvalidArgument,
            format!("{service}: lease is not provided; grant a lease (LeaseGrant), keep it alive and pass its id"),
            "ZH_INVALID_ARGUMENT",
        ));
    }
    let queue = Queue::new(name);
    if queue.key_bytes_max() > limits.max_key_bytes {
        return Err(status::key_too_large(limits.max_key_bytes));
    }
    Ok(queue)
}

/// etcd's `ErrSessionExpired`: the lock key vanished while waiting.
fn session_expired() -> Status {
    status::status(
        tonic::Code::Unknown,
        "mutex: session is expired",
        "ZH_LOCK_SESSION_EXPIRED",
    )
}

pub(crate) fn stopped() -> Status {
    Status::from(MetaError::Stopped)
}

#[derive(Clone)]
pub struct LockService {
    group: Arc<MetaGroup>,
    shutdown: watch::Receiver<bool>,
    limits: ClientLimits,
    waiters: Arc<AtomicUsize>,
}

impl LockService {
    pub fn new(group: Arc<MetaGroup>, shutdown: watch::Receiver<bool>, limits: ClientLimits) -> Self {
        Self {
            group,
            shutdown,
            limits,
            waiters: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        let queue = check_queue_request("lock", &request.name, request.lease, &request, &self.limits)?;
        let _slot = WaiterSlot::take(&self.waiters, LOCK_WAITERS_MAX, "Lock")?;
        let key = queue.key_for(request.lease);
        let join = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                op_put(PutRequest {
                    key: key.clone(),
                    value: vec![],
                    lease: request.lease,
                    ..Default::default()
                }),
                op_range(queue.head_request(0)),
            ],
            failure: vec![op_get(&key), op_range(queue.head_request(0))],
        };
        let mut withdrawal = Withdrawal::join(self.group.clone(), key.clone(), join);
        let joined = withdrawal.joined().await?;
        let my_revision = if joined.succeeded {
            header_revision(&joined.header)?
        } else {
            let existing = range_result(&joined, 0)?.kvs.first().ok_or_else(|| {
                internal("the lock key exists (the compare failed) but reading it found nothing".into())
            })?;
            existing.create_revision
        };
        withdrawal.queued(my_revision);
        let owner_revision = range_result(&joined, 1)?.kvs.first().map(|owner| owner.create_revision);
        if owner_revision == Some(my_revision) {
            withdrawal.disarm();
            return Ok(Response::new(LockResponse {
                header: Some(self.group.header(header_revision(&joined.header)?)),
                key,
            }));
        }
        let mut shutdown = self.shutdown.clone();
        let turn = match wait_for_turn(&self.group, &mut shutdown, &queue, &key, my_revision).await {
            Ok(()) => confirm_turn(&self.group, &mut shutdown, &key, my_revision).await?,
            Err(error) => Err(error),
        };
        match turn {
            Ok(revision) => {
                withdrawal.disarm();
                Ok(Response::new(LockResponse {
                    header: Some(self.group.header(revision)),
                    key,
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

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let request = request.into_inner();
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(status::request_too_large());
        }
        if request.key.len() > self.limits.max_key_bytes {
            return Err(status::key_too_large(self.limits.max_key_bytes));
        }
        // etcd's Unlock is a plain delete of the given key: deleting a key
        // that is not held (or not there) succeeds and changes nothing.
        let delete = DeleteRangeRequest {
            key: request.key,
            range_end: vec![],
            prev_kv: false,
        };
        match self.group.write(MetaCommand::DeleteRange(delete)).await? {
            MetaResponse::DeleteRange(response) => Ok(Response::new(UnlockResponse {
                header: Some(self.group.header(header_revision(&response.header)?)),
            })),
            other => Err(internal(format!("unexpected state machine response {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &mut Mvcc, key: &str, lease: i64) -> i64 {
        store
            .put(&PutRequest {
                key: key.into(),
                lease,
                ..Default::default()
            })
            .unwrap();
        store.revision()
    }

    fn delete(store: &mut Mvcc, key: &str) {
        store
            .delete_range(&DeleteRangeRequest {
                key: key.into(),
                range_end: vec![],
                prev_kv: false,
            })
            .unwrap();
    }

    #[test]
    fn keys_follow_etcds_scheme() {
        let queue = Queue::new(b"jobs");
        assert_eq!(queue.key_for(0x0069_4d7a_3c1f), b"jobs/694d7a3c1f");
        assert_eq!(queue.key_bytes_max(), 5 + 16);
        assert_eq!(prefix_end(b"jobs/"), b"jobs0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff]), [0]);
    }

    #[test]
    fn turns_follow_create_revision_and_wait_for_the_predecessor_only() {
        let queue = Queue::new(b"l");
        let mut store = Mvcc::new();
        put(&mut store, "l0", 0); // outside the prefix
        let first = put(&mut store, "l/c", 0);
        let second = put(&mut store, "l/a", 0);
        let third = put(&mut store, "l/b", 0);
        put(&mut store, "l/c", 0); // an update keeps its create revision
        assert_eq!(queue.head(&store, 0).unwrap().unwrap().key, b"l/c");
        assert_eq!(queue.turn(&store, b"l/c", first).unwrap(), Turn::Mine);
        assert_eq!(
            queue.turn(&store, b"l/b", third).unwrap(),
            Turn::After {
                key: b"l/a".to_vec(),
                create_revision: second
            }
        );
        // The owner leaves: the second is next, the third still waits for it.
        delete(&mut store, "l/c");
        assert_eq!(queue.turn(&store, b"l/a", second).unwrap(), Turn::Mine);
        assert!(matches!(queue.turn(&store, b"l/b", third).unwrap(), Turn::After { .. }));
        // The second's key disappears (lease gone): the third is next.
        delete(&mut store, "l/a");
        assert_eq!(queue.turn(&store, b"l/b", third).unwrap(), Turn::Mine);
        // A re-created key is a new incarnation: the old position is lost.
        delete(&mut store, "l/b");
        put(&mut store, "l/b", 0);
        assert_eq!(queue.turn(&store, b"l/b", third).unwrap(), Turn::Lost);
        // The head at an older revision.
        assert_eq!(queue.head(&store, third).unwrap().unwrap().key, b"l/c");
    }
}
