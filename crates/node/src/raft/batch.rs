//! Raft messages to one peer, batched across groups, over one long-lived
//! stream.
//!
//! A node hosting many partitions sends each peer the append entries and
//! votes of every group they share: 32 partitions on 3 nodes are 32 leaders'
//! heartbeats and appends to every follower. Instead of one gRPC call per
//! message, the messages for one peer queue in its [`PeerBatcher`] and leave
//! together, as TiKV batches the raft messages of all its regions per store,
//! over one `Peer.RaftStream` that stays open, as etcd keeps one stream per
//! peer: a batch is one message on the stream, not a call with its own
//! HTTP/2 stream, headers and a task on each side. (The earlier
//! `Peer.RaftBatch`, one call per batch, is still answered, for senders of
//! an earlier version.)
//!
//! No message waits for a timer. A lone message on an idle stream goes at
//! once; whatever queued while the batching task was busy or the stream was
//! full rides along (natural batching), up to [`RAFT_BATCH_MESSAGES_MAX`]
//! messages or [`RAFT_BATCH_BYTES_MAX`] bytes. The peer answers each message
//! as its group does, in completion order, so a slow group holds up no
//! other; answers carry the message's id.
//!
//! A stream ends when the peer ends it, the connection breaks (HTTP/2
//! keepalive closes a stalled one) or it cannot open: every message still
//! waiting gets the status it ended with, as a failed call's messages did,
//! and the next batch opens a new stream (the channel redials). A message
//! the peer never answers is given up at its deadline.
//!
//! Bytes queued or in flight to one peer are bounded by
//! [`PEER_BYTES_IN_FLIGHT_MAX`]: a sender waits for room (under its own
//! deadline), so a slow or cut-off peer cannot make the node buffer without
//! bound. Snapshot chunks do not come here: they are large and go as single
//! calls (`raft::network`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use zongheng_proto::peer::peer_client::PeerClient;
use zongheng_proto::peer::{raft_stream_answer, RaftReply, RaftRequest, RaftStreamItem, RaftStreamRequest};

/// Messages in one `Peer.RaftBatch` call; a receiver refuses more.
pub const RAFT_BATCH_MESSAGES_MAX: usize = 256;

/// Payload bytes gathered into one batch. A single message larger than this
/// (an append of up to `network::APPEND_ENTRIES_BYTES_MAX`) goes alone.
pub const RAFT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Batches written to a peer's stream and not yet taken by HTTP/2 (whose
/// flow control stops a sender the peer does not keep up with). While the
/// stream is full, messages queue and the next batch takes them together.
pub const RAFT_STREAM_BATCHES_QUEUED: usize = 8;

/// How often a stream's reader gives up on messages past their deadline
/// (see `expire_waiters`).
pub const RAFT_STREAM_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

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
    request: RaftRequest,
    timeout_ms: u32,
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<RaftReply, Status>>,
    /// This message's share of [`PEER_BYTES_IN_FLIGHT_MAX`], given back
    /// when it is answered or given up.
    room: OwnedSemaphorePermit,
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
            request,
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            bytes,
            deadline: Instant::now() + timeout,
            reply,
            room,
        };
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> Status {
    Status::unavailable("zongheng: the peer's message queue stopped")
}

/// Gather queued messages into batches and write each into the peer's
/// stream, opening a new stream when there is none or the last one ended.
async fn run(mut queue: mpsc::Receiver<Queued>, client: PeerClient<Channel>, counters: Arc<BatchCounters>) {
    let mut stream: Option<OpenStream> = None;
    let mut next_id: u64 = 0;
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
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
        let open = match stream.take() {
            Some(open) if !open.has_ended() => open,
            _ => OpenStream::start(client.clone()),
        };
        let mut items = Vec::with_capacity(batch.len());
        // Ids are consecutive: the batch's are `first_id..next_id`.
        let first_id = next_id;
        {
            let mut waiting = open.waiting.lock().expect("raft stream lock poisoned");
            if let Some(failure) = waiting.ended.clone() {
                // The stream ended since `has_ended` looked, and its reader
                // has answered every waiter it had: these would wait for
                // nobody.
                for queued in batch {
                    let _ = queued.reply.send(Err(failure.clone()));
                }
                continue;
            }
            for queued in batch {
                let id = next_id;
                next_id += 1;
                items.push(RaftStreamItem {
                    id,
                    request: Some(queued.request),
                    timeout_ms: queued.timeout_ms,
                });
                waiting.waiters.insert(
                    id,
                    Waiter {
                        deadline: queued.deadline,
                        reply: queued.reply,
                        _room: queued.room,
                    },
                );
            }
        }
        // A full stream (HTTP/2 flow control: the peer reads slowly) holds
        // this task, so messages queue behind it and later ones wait for
        // room in the queue.
        if open.requests.send(RaftStreamRequest { items }).await.is_err() {
            // The stream ended while this batch waited to go: its reader
            // answered the waiters it saw; these may have come after.
            open.fail(first_id..next_id, ended());
            continue;
        }
        stream = Some(open);
    }
}

/// The messages of one stream still waiting for an answer (ordered by id,
/// so failing them all wakes their senders in the same order every run, as
/// the simulator's seed replay needs), and why the stream ended once it has.
struct Waiting {
    waiters: BTreeMap<u64, Waiter>,
    ended: Option<Status>,
}

struct Waiter {
    deadline: Instant,
    reply: oneshot::Sender<Result<RaftReply, Status>>,
    _room: OwnedSemaphorePermit,
}

/// One `Peer.RaftStream`: the sending half, and the waiters its reader task
/// answers.
struct OpenStream {
    requests: mpsc::Sender<RaftStreamRequest>,
    waiting: Arc<Mutex<Waiting>>,
}

impl OpenStream {
    /// Open a stream to the peer; its reader task runs until the stream ends.
    fn start(client: PeerClient<Channel>) -> Self {
        let (requests, outgoing) = mpsc::channel(RAFT_STREAM_BATCHES_QUEUED);
        let waiting = Arc::new(Mutex::new(Waiting {
            waiters: BTreeMap::new(),
            ended: None,
        }));
        tokio::spawn(read_answers(client, outgoing, waiting.clone()));
        Self { requests, waiting }
    }

    fn has_ended(&self) -> bool {
        self.requests.is_closed() || self.waiting.lock().expect("raft stream lock poisoned").ended.is_some()
    }

    /// Answer `ids` with `failure`, those still waiting.
    fn fail(&self, ids: std::ops::Range<u64>, failure: Status) {
        let mut waiting = self.waiting.lock().expect("raft stream lock poisoned");
        for id in ids {
            if let Some(waiter) = waiting.waiters.remove(&id) {
                let _ = waiter.reply.send(Err(failure.clone()));
            }
        }
    }
}

fn ended() -> Status {
    Status::unavailable("zongheng: the raft stream to the peer ended")
}

/// Open the stream, answer each waiter as its answer arrives, and give up
/// on waiters past their deadline. When the stream ends (the peer closed
/// it, the connection broke, it could not open), every waiter left gets the
/// status it ended with and the stream is marked ended: the next batch opens
/// a new one.
async fn read_answers(
    client: PeerClient<Channel>,
    outgoing: mpsc::Receiver<RaftStreamRequest>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let failure = tokio::select! {
        outcome = answer_waiters(client, outgoing, &waiting) => match outcome {
            Err(status) => status,
            Ok(never) => match never {},
        },
        never = expire_waiters(&waiting) => match never {},
    };
    let mut waiting = waiting.lock().expect("raft stream lock poisoned");
    waiting.ended = Some(failure.clone());
    for (_, waiter) in std::mem::take(&mut waiting.waiters) {
        let _ = waiter.reply.send(Err(failure.clone()));
    }
}

/// Answer waiters from the stream's answers until it ends.
async fn answer_waiters(
    mut client: PeerClient<Channel>,
    outgoing: mpsc::Receiver<RaftStreamRequest>,
    waiting: &Mutex<Waiting>,
) -> Result<Infallible, Status> {
    let mut answers = client
        .raft_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    loop {
        let Some(batch) = answers.message().await? else {
            return Err(ended());
        };
        let mut waiting = waiting.lock().expect("raft stream lock poisoned");
        for answer in batch.answers {
            let Some(waiter) = waiting.waiters.remove(&answer.id) else {
                // Given up already (past its deadline).
                continue;
            };
            let _ = waiter.reply.send(match answer.outcome {
                Some(raft_stream_answer::Outcome::Reply(payload)) => Ok(payload),
                Some(raft_stream_answer::Outcome::Error(error)) => Err(error_status(error)),
                None => Err(Status::internal("zongheng: a raft stream answer without an outcome")),
            });
        }
    }
}

/// A peer that never answers a message (a partition swallowed it, or the
/// connection is stalled until keepalive closes it) must not keep the
/// message's share of the byte budget: every
/// [`RAFT_STREAM_SWEEP_INTERVAL`], waiters past their deadline, or whose
/// sender stopped waiting, are given up.
async fn expire_waiters(waiting: &Mutex<Waiting>) -> Infallible {
    let mut sweep = tokio::time::interval(RAFT_STREAM_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sweep.tick().await;
        let now = Instant::now();
        let mut waiting = waiting.lock().expect("raft stream lock poisoned");
        let expired: Vec<u64> = waiting
            .waiters
            .iter()
            .filter(|(_, waiter)| waiter.deadline <= now || waiter.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(waiter) = waiting.waiters.remove(&id) {
                let _ = waiter.reply.send(Err(Status::deadline_exceeded(
                    "zongheng: the peer did not answer a raft message in time",
                )));
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tonic::{Request, Response, Streaming};
    use zongheng_proto::peer::peer_server::{Peer, PeerServer};
    use zongheng_proto::peer::{
        raft_stream_answer, ForwardReply, ForwardRequest, MembersReply, MembersRequest, RaftBatchAnswer,
        RaftBatchRequest, RaftStreamAnswer, RaftStreamAnswers, ReadIndexReply, ReadIndexRequest, ReplicaStatusReply,
        ReplicaStatusRequest,
    };

    use super::*;
    use crate::net::transport::{self, TcpTransport, Transport};

    /// A peer whose stream answers a message by its payload: `echo` with
    /// the payload, `silent` never, `end` by ending the stream with an error.
    #[derive(Clone, Default)]
    struct FakePeer {
        streams_opened: Arc<AtomicUsize>,
    }

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    #[tonic::async_trait]
    impl Peer for FakePeer {
        async fn raft(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            unimplemented()
        }

        type RaftBatchStream = tokio_stream::wrappers::ReceiverStream<Result<RaftBatchAnswer, Status>>;

        async fn raft_batch(&self, _: Request<RaftBatchRequest>) -> Result<Response<Self::RaftBatchStream>, Status> {
            unimplemented()
        }

        type RaftStreamStream = tokio_stream::wrappers::ReceiverStream<Result<RaftStreamAnswers, Status>>;

        async fn raft_stream(
            &self,
            request: Request<Streaming<RaftStreamRequest>>,
        ) -> Result<Response<Self::RaftStreamStream>, Status> {
            self.streams_opened.fetch_add(1, Ordering::SeqCst);
            let mut requests = request.into_inner();
            let (answers, stream) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(request)) = requests.message().await {
                    for item in request.items {
                        let payload = item.request.map(|request| request.payload).unwrap_or_default();
                        match payload.as_slice() {
                            b"silent" => {}
                            b"end" => {
                                let _ = answers
                                    .send(Err(Status::aborted("the fake peer ends the stream")))
                                    .await;
                                return;
                            }
                            _ => {
                                let answer = RaftStreamAnswer {
                                    id: item.id,
                                    outcome: Some(raft_stream_answer::Outcome::Reply(RaftReply { payload })),
                                };
                                let _ = answers.send(Ok(RaftStreamAnswers { answers: vec![answer] })).await;
                            }
                        }
                    }
                }
            });
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(stream)))
        }

        async fn forward(&self, _: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
            unimplemented()
        }

        async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
            unimplemented()
        }

        async fn members(&self, _: Request<MembersRequest>) -> Result<Response<MembersReply>, Status> {
            unimplemented()
        }

        async fn replica_status(
            &self,
            _: Request<ReplicaStatusRequest>,
        ) -> Result<Response<ReplicaStatusReply>, Status> {
            unimplemented()
        }
    }

    /// A batcher sending to a [`FakePeer`] served on loopback.
    async fn batcher_to_fake() -> (PeerBatcher, FakePeer) {
        let fake = FakePeer::default();
        let (address, listener) = TcpTransport
            .listen("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("listen on loopback");
        let routes = tonic::service::Routes::new(PeerServer::new(fake.clone()));
        tokio::spawn(crate::net::serve::serve(
            routes,
            listener,
            crate::net::serve::ServeOptions::default(),
            std::future::pending(),
        ));
        let client = PeerClient::new(transport::channel(Arc::new(TcpTransport), &address.to_string()));
        (PeerBatcher::start(client, Arc::default()), fake)
    }

    fn message(payload: &[u8]) -> RaftRequest {
        RaftRequest {
            group_id: 1,
            kind: 0,
            payload: payload.to_vec(),
            to_member_id: 0,
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_share_one_stream_and_get_their_own_answers() {
        let (batcher, fake) = batcher_to_fake().await;
        let batcher = Arc::new(batcher);
        let mut sending = Vec::new();
        for index in 0..200u32 {
            let batcher = batcher.clone();
            sending.push(tokio::spawn(async move {
                let payload = format!("message {index}").into_bytes();
                let reply = batcher.send(message(&payload), WAIT).await.expect("an answer");
                assert_eq!(reply.payload, payload);
            }));
        }
        for sent in sending {
            sent.await.expect("a sender");
        }
        assert_eq!(fake.streams_opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_message_is_given_up_at_its_deadline_and_frees_its_room() {
        let (batcher, _fake) = batcher_to_fake().await;
        let all_room = batcher.bytes.available_permits();
        let started = Instant::now();
        let status = tokio::time::timeout(WAIT, batcher.send(message(b"silent"), Duration::from_millis(300)))
            .await
            .expect("the batcher answers by itself")
            .expect_err("nobody answers");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(batcher.bytes.available_permits(), all_room);
        // The stream still carries other messages.
        let reply = batcher.send(message(b"after"), WAIT).await.expect("an answer");
        assert_eq!(reply.payload, b"after");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_ends_fails_its_waiters_and_the_next_message_opens_another() {
        let (batcher, fake) = batcher_to_fake().await;
        let batcher = Arc::new(batcher);
        let waiting = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.send(message(b"silent"), WAIT).await })
        };
        // Let the silent message reach the peer before the stream ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = batcher.send(message(b"end"), WAIT).await.expect_err("the stream ended");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        let status = tokio::time::timeout(WAIT, waiting)
            .await
            .expect("the waiter is answered when the stream ends")
            .expect("the sender task")
            .expect_err("the stream ended");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        let reply = batcher.send(message(b"again"), WAIT).await.expect("a new stream");
        assert_eq!(reply.payload, b"again");
        assert_eq!(fake.streams_opened.load(Ordering::SeqCst), 2);
    }
}
