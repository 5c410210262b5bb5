//! Watchers that survive their node, the writer that gives them work, and
//! the fresh watch that reads the authoritative history at the end.
//!
//! A watcher keeps one watch open and remembers the revision of the last
//! event it received. It re-creates the watch on the next node from that
//! revision + 1 when the stream breaks, when the watch is cancelled, or when
//! the stream stays silent (after [`WATCH_SILENCE`] without a message it
//! sends a `RequestProgress`; a second silent period means the node, or the
//! path to it, is gone), and, to move between nodes even in a quiet run, by
//! itself now and then ([`WATCH_STAY_MAX`]). Responses never split a
//! revision, so "last revision + 1" neither skips nor repeats anything. It
//! stops once it has received the final sentinel's revision.

use std::time::Duration;

use rand::Rng;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};

use super::rpc::{call, Endpoints};
use super::{now, think, watcher_specs, AckedWrite, ClientContext, EventRecord, WatcherResult, WRITER_PREFIX};

/// Silence on a watch stream after which a progress request is sent; two
/// in a row and the watch is re-created elsewhere.
const WATCH_SILENCE: Duration = Duration::from_secs(3);
/// How long a watcher waits for the sentinel once the run has stopped.
const WATCH_FINISH_DEADLINE: Duration = Duration::from_secs(120);
/// Longest time a watcher stays on one node before moving on by itself
/// (so every watcher is re-created on other nodes even in a quiet run).
const WATCH_STAY_MAX: Duration = Duration::from_secs(15);

fn create_request(key: &[u8], range_end: &[u8], start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision,
            ..Default::default()
        })),
    }
}

/// Why one watch stream ended.
enum StreamEnd {
    /// The sentinel arrived: done.
    Finished,
    /// Broken, cancelled or silent: re-create elsewhere.
    Lost(String),
    /// The watcher chose to move to another node.
    Moved,
}

/// Watch `key..range_end` from `*next` on node `node` until the end
/// revision, the stream ends, or `give_up_at`; appends to `events`.
#[allow(clippy::too_many_arguments)]
async fn watch_once(
    context: &ClientContext,
    endpoints: &Endpoints,
    node: usize,
    key: &[u8],
    range_end: &[u8],
    next: &mut i64,
    events: &mut Vec<EventRecord>,
    give_up_at: Duration,
    move_at: Option<Duration>,
) -> StreamEnd {
    let (_, rpc) = endpoints.node(node);
    let mut client = rpc.watch;
    let (requests, outbound) = futures::channel::mpsc::unbounded::<WatchRequest>();
    if requests.unbounded_send(create_request(key, range_end, *next)).is_err() {
        return StreamEnd::Lost("request channel closed".into());
    }
    let mut stream = match tokio::time::timeout(context.options.request_timeout, client.watch(outbound)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return StreamEnd::Lost(format!("watch refused: {status}")),
        Err(_) => return StreamEnd::Lost("no stream".into()),
    };
    let mut silent_periods = 0;
    loop {
        if let Some(end) = context.shared.end_revision() {
            if *next > end {
                return StreamEnd::Finished;
            }
        }
        if now() >= give_up_at {
            return StreamEnd::Lost("gave up".into());
        }
        if move_at.is_some_and(|at| now() >= at) && context.shared.end_revision().is_none() {
            return StreamEnd::Moved;
        }
        match tokio::time::timeout(WATCH_SILENCE, stream.message()).await {
            Ok(Ok(Some(response))) => {
                silent_periods = 0;
                if response.canceled {
                    return StreamEnd::Lost(format!(
                        "cancelled (compact revision {}): {}",
                        response.compact_revision, response.cancel_reason
                    ));
                }
                for event in &response.events {
                    let record = EventRecord::of(event);
                    *next = record.revision + 1;
                    events.push(record);
                }
            }
            Ok(Ok(None)) => return StreamEnd::Lost("stream closed".into()),
            Ok(Err(status)) => return StreamEnd::Lost(format!("stream failed: {status}")),
            Err(_) => {
                silent_periods += 1;
                if silent_periods >= 2 {
                    return StreamEnd::Lost("silent".into());
                }
                let progress = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                };
                if requests.unbounded_send(progress).is_err() {
                    return StreamEnd::Lost("request channel closed".into());
                }
            }
        }
    }
}

/// The current revision, read linearizably through any node.
async fn current_revision(context: &ClientContext, endpoints: &Endpoints, node: &mut usize) -> i64 {
    loop {
        let (_, rpc) = endpoints.node(*node);
        let mut kv = rpc.kv;
        let request = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        match call(context.options.request_timeout, kv.range(request)).await {
            Ok(response) => return response.header.map_or(0, |header| header.revision),
            Err(_) => {
                *node += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One watcher: its range from its start revision to the sentinel.
pub async fn run_watcher(context: &ClientContext) {
    let (_, key, range_end, from_first) = watcher_specs()
        .into_iter()
        .find(|(name, ..)| *name == context.host)
        .expect("a watcher has a spec");
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    // Start a little into the run, so "now" is not revision 1.
    think(&mut rng, std::time::Duration::from_secs(2)).await;
    let start_revision = if from_first {
        1
    } else {
        current_revision(context, &endpoints, &mut node).await + 1
    };
    let mut next = start_revision;
    let mut events = Vec::new();
    let mut recreations = 0;
    let give_up_at = context.stop_at + WATCH_FINISH_DEADLINE;
    let stay_max_ms = WATCH_STAY_MAX.as_millis() as u64;
    let incomplete = loop {
        let move_at = now() + Duration::from_millis(rng.gen_range(stay_max_ms / 3..=stay_max_ms));
        let end = watch_once(
            context,
            &endpoints,
            node,
            &key,
            &range_end,
            &mut next,
            &mut events,
            give_up_at,
            Some(move_at),
        )
        .await;
        match end {
            StreamEnd::Finished => break None,
            StreamEnd::Moved => {
                recreations += 1;
                node += 1;
            }
            StreamEnd::Lost(reason) => {
                if now() >= give_up_at {
                    break Some(format!(
                        "no sentinel by {} ms (last: {reason}; next revision {next})",
                        give_up_at.as_millis()
                    ));
                }
                tracing::debug!(watcher = %context.host, %reason, next, "re-creating the watch");
                recreations += 1;
                node += 1;
                think(&mut rng, Duration::from_millis(200)).await;
            }
        }
    };
    context.shared.update(|record| {
        record.stats.watch_events += events.len() as u64;
        record.stats.watch_recreations += recreations;
        record.watchers.push(WatcherResult {
            name: context.host.clone(),
            key,
            range_end,
            start_revision,
            events,
            recreations,
            incomplete,
        });
    });
}

/// Puts and deletes keys under [`WRITER_PREFIX`] until the run stops.
pub async fn run_writer(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let mut sequence = 0u64;
    while now() < context.stop_at {
        think(&mut rng, context.options.think_time_max).await;
        let key = format!("{WRITER_PREFIX}k{}", rng.gen_range(0..5)).into_bytes();
        sequence += 1;
        let (_, rpc) = endpoints.node(node);
        let mut kv = rpc.kv;
        let written = if rng.gen_ratio(1, 4) {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            call(context.options.request_timeout, kv.delete_range(request))
                .await
                .map(|response| {
                    (response.deleted > 0).then(|| (response.header.map_or(0, |header| header.revision), None))
                })
        } else {
            let value = format!("{}-{sequence}", context.host).into_bytes();
            let request = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            };
            call(context.options.request_timeout, kv.put(request))
                .await
                .map(|response| Some((response.header.map_or(0, |header| header.revision), Some(value))))
        };
        match written {
            Ok(Some((revision, value))) => context.shared.update(|record| {
                record.acked_writes.push(AckedWrite {
                    client: context.host.clone(),
                    key,
                    revision,
                    value,
                })
            }),
            Ok(None) => {}
            Err(error) => {
                context.shared.count_failure(&error);
                node += 1;
            }
        }
    }
}

/// The authoritative history as node `node` holds it: a fresh watch of
/// every key from revision 1 until `end_revision`.
pub async fn read_history(
    context: &ClientContext,
    endpoints: &Endpoints,
    node: usize,
    end_revision: i64,
    deadline: Duration,
) -> Result<Vec<EventRecord>, String> {
    let mut next = 1;
    let mut events = Vec::new();
    let (name, _) = endpoints.node(node);
    let mut last_reason = String::new();
    while now() < deadline {
        match watch_once(
            context,
            endpoints,
            node,
            &[0],
            &[0],
            &mut next,
            &mut events,
            deadline,
            None,
        )
        .await
        {
            StreamEnd::Finished => return Ok(events),
            StreamEnd::Moved => {}
            StreamEnd::Lost(reason) => {
                last_reason = reason;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(format!(
        "the history from {name} stopped at revision {} of {end_revision}: {last_reason}",
        next - 1
    ))
}
