//! The etcd v3 Watch service.
//!
//! One task per gRPC stream owns that stream's watchers. Watchers **pull**:
//! each remembers the next revision it must deliver, and whenever this member
//! applies entries the task asks the MVCC store for the events of each
//! watcher's range since then ([`Mvcc::events`]). Consequences:
//!
//! - Events come in revision order, each exactly once per watcher, with
//!   etcd's sub-revision order inside a transaction.
//! - A watcher with a past start revision replays history the same way as a
//!   live one receives new events: there is no separate catch-up path to race
//!   against live delivery.
//! - A slow client never makes the node buffer more than
//!   [`WATCH_RESPONSES_BUFFERED_MAX`] responses per stream: the task waits on
//!   the client, and the events stay in the MVCC history (bounded by
//!   compaction) until it catches up. A watcher that falls behind a
//!   compaction is cancelled with the compaction revision, as etcd does.
//! - A client that re-creates its watch on another member from its last
//!   revision + 1 misses nothing and sees nothing twice, because every member
//!   holds the same history.
//!
//! Watches read this member's applied state (etcd serves watches from the
//! member the client is connected to): a lagging follower delivers later,
//! never differently.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use zongheng_proto::etcdserverpb::watch_create_request::FilterType;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::watch_server::Watch;
use zongheng_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use zongheng_proto::mvccpb::event::EventType;
use zongheng_proto::mvccpb::Event;

use crate::meta::mvcc::{KeyRange, MvccError};
use crate::meta::MetaGroup;

/// Most watchers on one gRPC stream.
pub const WATCHERS_PER_STREAM_MAX: usize = 1_000;
/// Most watchers on one member, over all streams.
pub const WATCHERS_TOTAL_MAX: usize = 100_000;
/// Responses queued for one stream before its task waits for the client.
pub const WATCH_RESPONSES_BUFFERED_MAX: usize = 64;
/// Events read from history per watcher per response (whole revisions, so a
/// large transaction may exceed it).
pub const WATCH_EVENTS_PER_RESPONSE_MAX: usize = 256;
/// How often watchers created with `progress_notify` get an empty response
/// carrying the current revision when nothing else was sent (etcd's default).
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// etcd's reason for a watcher whose range holds no key.
const EMPTY_RANGE_REASON: &str = "mvcc: watcher range is empty";
/// etcd's reason for a watch id already used on the stream.
const DUPLICATE_ID_REASON: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// The watch id of a refused create, as etcd answers it (its watch stream
/// returns -1 with any error), whatever id was asked for.
const REFUSED_WATCH_ID: i64 = -1;

#[derive(Clone)]
pub struct WatchService {
    group: Arc<MetaGroup>,
    shutdown: watch::Receiver<bool>,
    total_watchers: Arc<AtomicUsize>,
    /// Fragment responses above this size when the watcher asked for it.
    max_response_bytes: usize,
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(group: Arc<MetaGroup>, shutdown: watch::Receiver<bool>, max_response_bytes: usize) -> Self {
        Self {
            group,
            shutdown,
            total_watchers: Arc::new(AtomicUsize::new(0)),
            max_response_bytes,
            progress_interval: WATCH_PROGRESS_INTERVAL,
        }
    }

    /// Shorter progress notifications (tests).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }
}

struct Watcher {
    range: KeyRange,
    next_revision: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    sent_since_tick: bool,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (outbound, responses) = mpsc::channel(WATCH_RESPONSES_BUFFERED_MAX);
        let stream = StreamTask {
            service: self.clone(),
            watchers: BTreeMap::new(),
            next_id: 0,
            outbound,
        };
        tokio::spawn(stream.run(inbound));
        let responses = tokio_stream::wrappers::ReceiverStream::new(responses);
        Ok(Response::new(Box::pin(responses) as WatchStream))
    }
}

struct StreamTask {
    service: WatchService,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    outbound: mpsc::Sender<Result<WatchResponse, Status>>,
}

/// The stream ended (client gone, or the node is shutting down).
struct Closed;

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut applied = self.service.group.raft.data_metrics();
        let mut shutdown = self.service.shutdown.clone();
        let mut progress = tokio::time::interval(self.service.progress_interval);
        progress.tick().await;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let step = tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    // The client closed its side or the transport failed.
                    Some(Err(_)) | None => Err(Closed),
                },
                changed = applied.changed() => match changed {
                    Ok(()) => self.pump().await,
                    Err(_) => Err(Closed),
                },
                _ = progress.tick() => self.progress_tick().await,
                // Only `true` is ever sent: any change is the shutdown.
                _ = shutdown.changed() => Err(Closed),
            };
            if step.is_err() {
                break;
            }
        }
        self.service
            .total_watchers
            .fetch_sub(self.watchers.len(), Ordering::Relaxed);
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.service.group.header(revision))
    }

    fn current_revision(&self) -> i64 {
        self.service.group.read(|app| app.kv.revision())
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        self.outbound.send(Ok(response)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    self.service.total_watchers.fetch_sub(1, Ordering::Relaxed);
                    let response = WatchResponse {
                        header: self.header(self.current_revision()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // etcd 3.4: one response for the whole stream, watch id -1.
                let response = WatchResponse {
                    header: self.header(self.current_revision()),
                    watch_id: -1,
                    ..Default::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Closed> {
        // etcd: an empty key means "from the smallest key"; a range end of
        // [0] means "every key from `key` on".
        let key = if create.key.is_empty() {
            vec![0]
        } else {
            create.key.clone()
        };
        let range = KeyRange::new(&key, &create.range_end);
        let current = self.current_revision();
        let requested_id = create.watch_id;
        let refuse = |reason: String| WatchResponse {
            header: None,
            watch_id: REFUSED_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if range.is_empty() {
            let mut response = refuse(EMPTY_RANGE_REASON.to_string());
            response.header = self.header(current);
            return self.send(response).await;
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let mut response = refuse(format!(
                "too many watchers on this stream (limit {WATCHERS_PER_STREAM_MAX})"
            ));
            response.header = self.header(current);
            return self.send(response).await;
        }
        if requested_id != 0 && self.watchers.contains_key(&requested_id) {
            let mut response = refuse(DUPLICATE_ID_REASON.to_string());
            response.header = self.header(current);
            return self.send(response).await;
        }
        let total = self.service.total_watchers.fetch_add(1, Ordering::Relaxed);
        if total >= WATCHERS_TOTAL_MAX {
            self.service.total_watchers.fetch_sub(1, Ordering::Relaxed);
            let mut response = refuse(format!("too many watchers on this member (limit {WATCHERS_TOTAL_MAX})"));
            response.header = self.header(current);
            return self.send(response).await;
        }
        let id = if requested_id != 0 {
            requested_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let filters = |filter: FilterType| create.filters.contains(&(filter as i32));
        let watcher = Watcher {
            range,
            next_revision: if create.start_revision > 0 {
                create.start_revision
            } else {
                current + 1
            },
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        self.send(WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        // Deliver history (or report a compacted start) right away.
        self.pump().await
    }

    /// Deliver every watcher's pending events.
    async fn pump(&mut self) -> Result<(), Closed> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            while let Some(watcher) = self.watchers.get(&id) {
                let current = self.current_revision();
                if watcher.next_revision > current {
                    break;
                }
                let (range, from, with_prev_kv) = (watcher.range.clone(), watcher.next_revision, watcher.prev_kv);
                let read = self.service.group.read(|app| {
                    app.kv
                        .events(&range, from, current, WATCH_EVENTS_PER_RESPONSE_MAX, with_prev_kv)
                        .map_err(|error| (error, app.kv.compact_revision()))
                });
                match read {
                    Err((MvccError::Compacted, compact_revision)) => {
                        self.watchers.remove(&id);
                        self.service.total_watchers.fetch_sub(1, Ordering::Relaxed);
                        let response = WatchResponse {
                            header: self.header(current),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            cancel_reason: "etcdserver: mvcc: required revision has been compacted".to_string(),
                            ..Default::default()
                        };
                        self.send(response).await?;
                        break;
                    }
                    Err((error, _)) => {
                        tracing::error!(%error, watch_id = id, "watch: reading events failed");
                        break;
                    }
                    Ok((events, covered)) => {
                        let watcher = self.watchers.get_mut(&id).expect("watcher present");
                        watcher.next_revision = covered + 1;
                        let events: Vec<Event> = events
                            .into_iter()
                            .filter(|event| {
                                let is_put = event.r#type == EventType::Put as i32;
                                !(is_put && watcher.no_put || !is_put && watcher.no_delete)
                            })
                            .collect();
                        if events.is_empty() {
                            continue;
                        }
                        watcher.sent_since_tick = true;
                        let fragment = watcher.fragment;
                        for response in self.responses(id, covered, events, fragment) {
                            self.send(response).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One response, or with `fragment` several whose encoded size stays under
    /// the request limit (all but the last marked `fragment`).
    fn responses(&self, id: i64, revision: i64, events: Vec<Event>, fragment: bool) -> Vec<WatchResponse> {
        let header = self.header(revision);
        let whole = WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        if !fragment || whole.encoded_len() <= self.service.max_response_bytes {
            return vec![whole];
        }
        let mut responses = Vec::new();
        let mut current = WatchResponse {
            header,
            watch_id: id,
            ..Default::default()
        };
        for event in whole.events {
            let event_bytes = event.encoded_len() + 8;
            if !current.events.is_empty() && current.encoded_len() + event_bytes > self.service.max_response_bytes {
                current.fragment = true;
                let next = WatchResponse {
                    header,
                    watch_id: id,
                    ..Default::default()
                };
                responses.push(std::mem::replace(&mut current, next));
            }
            current.events.push(event);
        }
        responses.push(current);
        responses
    }

    /// etcd's progress notification: watchers that asked for it and got
    /// nothing since the last tick learn the current revision.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let current = self.current_revision();
        let due: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter_map(|(id, watcher)| {
                let due = watcher.progress_notify && !watcher.sent_since_tick && watcher.next_revision > current;
                watcher.sent_since_tick = false;
                due.then_some(*id)
            })
            .collect();
        for id in due {
            self.send(WatchResponse {
                header: self.header(current),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
