//! Raft messages to one peer, batched across groups.
//!
//! A node hosting many partitions sends each peer the append entries and
//! votes of every group they share: 32 partitions on 3 nodes are 32 leaders'
//! heartbeats and appends to every follower. Instead of one gRPC call per
//! message, the messages for one peer queue in its [`PeerBatcher`] and leave
//! together in one `Peer.RaftBatch` call, as TiKV batches the raft messages
//! of all its regions per store.
//!
//! No message waits for a timer. The first message of a batch waits only for
//! one of [`RAFT_BATCHES_IN_FLIGHT_MAX`] call slots; whatever queued in the
//! meantime rides along (natural batching), up to
//! [`RAFT_BATCH_MESSAGES_MAX`] messages or [`RAFT_BATCH_BYTES_MAX`] bytes.
//! A lone message on an idle connection goes at once. The peer answers each
//! message as its group does, in completion order over a response stream, so
//! a slow group holds up no other.
//!
//! Bytes queued or in flight to one peer are bounded by
//! [`PEER_BYTES_IN_FLIGHT_MAX`]: a sender waits for room (under its own
//! deadline), so a slow or cut-off peer cannot make the node buffer without
//! bound. Snapshot chunks do not come here: they are large and go as single
//! calls (`raft::network`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use zongheng_proto::peer::peer_client::PeerClient;
use zongheng_proto::peer::{raft_batch_answer, RaftBatchItem, RaftBatchRequest, RaftReply, RaftRequest};

/// Messages in one `Peer.RaftBatch` call; a receiver refuses more.
pub const RAFT_BATCH_MESSAGES_MAX: usize = 256;

/// Payload bytes gathered into one batch. A single message larger than this
/// (an append of up to `network::APPEND_ENTRIES_BYTES_MAX`) goes alone.
pub const RAFT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Batch calls in flight to one peer at once. While all are busy, messages
/// queue and the next batch takes them together.
pub const RAFT_BATCHES_IN_FLIGHT_MAX: usize = 8;

/// Messages waiting for a batch to one peer; a sender waits for room.
pub const RAFT_QUEUE_MAX: usize = 4_096;

/// Bytes of messages queued or in flight to one peer.
pub const PEER_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;

/// The longest a receiver works on one message of a batch when the sender
/// named no deadline, or a longer one.
pub const RAFT_BATCH_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The in-flight byte budget is counted in units of this many bytes
/// (a semaphore counts permits in `u32`).
const BYTES_PER_PERMIT: usize = 1024;

/// Messages and batch calls sent by a node, over all peers: the ratio is
/// how many messages a call carries (`Store.NodeStats`).
#[derive(Debug, Default)]
pub struct BatchCounters {
    pub messages: AtomicU64,
    pub batches: AtomicU64,
}

/// The batching queue of one peer.
pub struct PeerBatcher {
    queue: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
}

struct Queued {
    item: RaftBatchItem,
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<RaftReply, Status>>,
    /// This message's share of [`PEER_BYTES_IN_FLIGHT_MAX`], given back
    /// when it is answered or given up.
    _room: OwnedSemaphorePermit,
}

impl PeerBatcher {
    /// A batcher sending over `client`; its task runs until the batcher is
    /// dropped.
    pub fn start(client: PeerClient<Channel>, counters: Arc<BatchCounters>) -> Self {
        let (queue, receiver) = mpsc::channel(RAFT_QUEUE_MAX);
        tokio::spawn(run(receiver, client, counters));
        Self {
            queue,
            bytes: Arc::new(Semaphore::new(PEER_BYTES_IN_FLIGHT_MAX / BYTES_PER_PERMIT)),
        }
    }

    /// Send `request` in the next batch and wait for its answer: what the
    /// peer's `Peer.Raft` would have answered, or the status of a failed
    /// call. The caller bounds the wait; `timeout` tells the peer how long
    /// the answer is worth working on.
    pub async fn send(&self, request: RaftRequest, timeout: Duration) -> Result<RaftReply, Status> {
        let bytes = request.payload.len();
        let permits = bytes
            .div_ceil(BYTES_PER_PERMIT)
            .clamp(1, PEER_BYTES_IN_FLIGHT_MAX / BYTES_PER_PERMIT) as u32;
        let room = self
            .bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| stopped())?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            item: RaftBatchItem {
                request: Some(request),
                timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            },
            bytes,
            deadline: Instant::now() + timeout,
            reply,
            _room: room,
        };
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> Status {
    Status::unavailable("zongheng: the peer's message queue stopped")
}

/// Gather queued messages into batches and send each on its own task.
async fn run(mut queue: mpsc::Receiver<Queued>, client: PeerClient<Channel>, counters: Arc<BatchCounters>) {
    let slots = Arc::new(Semaphore::new(RAFT_BATCHES_IN_FLIGHT_MAX));
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            // A sender that gave up (its deadline passed while it queued)
            // is not worth a message.
            if !queued.reply.is_closed() {
                if !batch.is_empty() && bytes + queued.bytes > RAFT_BATCH_BYTES_MAX {
                    held = Some(queued);
                    break;
                }
                bytes += queued.bytes;
                batch.push(queued);
            }
            if batch.len() < RAFT_BATCH_MESSAGES_MAX {
                next = queue.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.messages.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::spawn(send_batch(client.clone(), batch, slot));
    }
}

/// One `Peer.RaftBatch` call: every message gets its answer, or the status
/// the call failed with.
async fn send_batch(mut client: PeerClient<Channel>, batch: Vec<Queued>, _slot: OwnedSemaphorePermit) {
    let now = Instant::now();
    let timeout = batch
        .iter()
        .map(|queued| queued.deadline.saturating_duration_since(now))
        .max()
        .unwrap_or_default();
    let mut items = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for queued in batch {
        items.push(queued.item);
        waiters.push(Some((queued.reply, queued._room)));
    }
    let mut unanswered = waiters.len();
    let mut request = tonic::Request::new(RaftBatchRequest { items });
    request.set_timeout(timeout);
    let outcome = tokio::time::timeout(timeout, async {
        let mut answers = client.raft_batch(request).await?.into_inner();
        while unanswered > 0 {
            let Some(answer) = answers.message().await? else {
                return Err(Status::internal(
                    "zongheng: the peer ended a raft batch without answering every message",
                ));
            };
            let Some((reply, _room)) = waiters.get_mut(answer.index as usize).and_then(Option::take) else {
                continue;
            };
            unanswered -= 1;
            let _ = reply.send(match answer.outcome {
                Some(raft_batch_answer::Outcome::Reply(payload)) => Ok(payload),
                Some(raft_batch_answer::Outcome::Error(error)) => Err(error_status(error)),
                None => Err(Status::internal("zongheng: a raft batch answer without an outcome")),
            });
        }
        Ok(())
    })
    .await;
    let failure = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(status)) => status,
        Err(_) => Status::deadline_exceeded(format!("zongheng: no answer within {} ms", timeout.as_millis())),
    };
    for (reply, _room) in waiters.into_iter().flatten() {
        let _ = reply.send(Err(failure.clone()));
    }
}

/// The status a single `Peer.Raft` call would have failed with.
fn error_status(error: zongheng_proto::peer::RaftBatchError) -> Status {
    let mut status = Status::new(Code::from_i32(error.code), error.message);
    if !error.error_code.is_empty() {
        if let Ok(code) = tonic::metadata::MetadataValue::try_from(error.error_code) {
            status
                .metadata_mut()
                .insert(crate::server::status::ERROR_CODE_METADATA, code);
        }
    }
    status
}
