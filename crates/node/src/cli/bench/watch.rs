//! The `watch` scenario: fan-out latency. `--watchers` watchers watch one
//! key, spread over `--watch-streams` Watch streams (and the streams over
//! the connections); one putter writes the key `--put-rate` times a second.
//! Each value carries the put's index and the time it was sent (on this
//! process's monotonic clock, which the watchers share), so each delivery's
//! latency is exact without clock agreement between machines.
//!
//! The headline latency is, per put, the time until the *last* watcher got
//! it: with 100 watchers, its p99 is the p99 of the 100th delivery, the
//! figure that matters to a service registry whose every client must learn
//! of a change. The `delivery` phase has every single delivery, and `put`
//! the putter's own call.
//!
//! All watches are created (the server confirmed each) before the first put,
//! so every acknowledged put must reach every watcher; after the last put the
//! run waits up to `--command-timeout` for stragglers and counts what never
//! came as `Missing` errors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};

use super::report::{OpError, Recorder};
use super::{call, request, value_of, workload, LoadOptions, Plan, WatchArgs};

/// Bytes at the start of each value: the put's index and its send time in
/// nanoseconds since the run's epoch, both big-endian u64.
pub const STAMP_BYTES: usize = 16;
/// The key every watcher watches and the putter writes.
const WATCH_KEY: &[u8] = b"zongheng-bench-watch";
/// Most puts in one watch run (each has a delivery counter).
const WATCH_PUTS_MAX: u64 = 1_000_000;
/// How often the drain checks whether every delivery arrived.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What the putter and the stream readers share.
struct Shared {
    epoch: Instant,
    watchers: u32,
    /// Per put index: watchers that have received it.
    delivered: Vec<AtomicU32>,
}

fn stamp(index: u64, sent: Duration, value_size: usize) -> Vec<u8> {
    let mut value = value_of(value_size);
    value[..8].copy_from_slice(&index.to_be_bytes());
    value[8..16].copy_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
    value
}

fn read_stamp(value: &[u8]) -> Option<(u64, Duration)> {
    let index = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((index, Duration::from_nanos(sent)))
}

/// Opens one Watch stream with `count` watchers of the key and waits until
/// the server has confirmed each. Returns the stream and its request sender
/// (kept open: closing it would end the stream).
async fn open_stream(
    channel: Channel,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<(Streaming<WatchResponse>, mpsc::Sender<WatchRequest>)> {
    let (sender, receiver) = mpsc::channel(count + 1);
    for _ in 0..count {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: WATCH_KEY.to_vec(),
                ..Default::default()
            })),
        };
        sender.try_send(create).expect("the queue holds every create");
    }
    // Creates are queued first: etcd sends the stream's headers with its
    // first answer. No grpc-timeout: the stream outlives any one call.
    let mut client = WatchClient::new(channel);
    let mut responses = call(
        timeout,
        client.watch(tonic::Request::new(ReceiverStream::new(receiver))),
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot open a watch stream: {error}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut created = 0;
    while created < count {
        let response = tokio::time::timeout_at(deadline, responses.message())
            .await
            .context("watches not confirmed within --command-timeout")?
            .map_err(|status| anyhow::anyhow!("watch stream failed: {}", OpError::from_status(&status)))?;
        let Some(response) = response else {
            bail!("the server closed a watch stream while watches were being created")
        };
        if response.canceled {
            bail!("the server refused a watch: {}", response.cancel_reason);
        }
        if response.created {
            created += 1;
        }
    }
    Ok((responses, sender))
}

/// Reads one stream's events until told to stop.
async fn read_events(
    mut responses: Streaming<WatchResponse>,
    sender: mpsc::Sender<WatchRequest>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Recorder {
    let mut recorder = Recorder::new();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = responses.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                recorder.error(OpError::new("StreamClosed".into(), "the server closed a watch stream"));
                break;
            }
            Err(status) => {
                recorder.error(OpError::from_status(&status));
                break;
            }
        };
        if response.canceled {
            recorder.error(OpError::new("Canceled".into(), &response.cancel_reason));
            break;
        }
        let now = shared.epoch.elapsed();
        for event in response.events {
            let stamped = event.kv.as_ref().and_then(|kv| read_stamp(&kv.value));
            let Some((index, sent)) = stamped.filter(|(index, _)| *index < shared.delivered.len() as u64) else {
                recorder.count("events_foreign", 1);
                continue;
            };
            let latency = now.saturating_sub(sent);
            recorder.count("events_received", 1);
            recorder.phase("delivery", latency);
            let delivered = shared.delivered[index as usize].fetch_add(1, Ordering::AcqRel) + 1;
            if delivered == shared.watchers {
                recorder.latency_only(latency);
            }
        }
    }
    drop(sender);
    recorder
}

/// Runs the scenario: returns what was recorded and the putter's elapsed time.
pub async fn run(
    channels: &[Channel],
    args: &WatchArgs,
    load: &LoadOptions,
    total: Option<u64>,
    duration: Option<Duration>,
    timeout: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    assert!(load.value_size >= STAMP_BYTES, "checked in validate");
    let puts = match (total, duration) {
        (Some(total), _) => total,
        (None, Some(duration)) => (duration.as_secs_f64() * args.put_rate as f64).ceil() as u64 + 1,
        (None, None) => unreachable!("every run is bounded"),
    };
    if puts > WATCH_PUTS_MAX {
        bail!("watch runs at most {WATCH_PUTS_MAX} puts; lower --total or --duration");
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        watchers: args.watchers as u32,
        delivered: (0..puts).map(|_| AtomicU32::new(0)).collect(),
    });
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(args.watch_streams);
    for stream in 0..args.watch_streams {
        let count = args.watchers / args.watch_streams + usize::from(stream < args.watchers % args.watch_streams);
        let channel = channels[stream % channels.len()].clone();
        let (responses, sender) = open_stream(channel, count, timeout).await?;
        readers.push(tokio::spawn(read_events(
            responses,
            sender,
            shared.clone(),
            stop.clone(),
        )));
    }

    let plan = Plan::new(Some(puts), duration, args.put_rate);
    let mut kv = workload::kv_client(channels[0].clone());
    let mut putter = Recorder::new();
    let mut acked = vec![false; puts as usize];
    while let Some(index) = plan.next().await {
        let value = stamp(index, shared.epoch.elapsed(), load.value_size);
        let put = PutRequest {
            key: WATCH_KEY.to_vec(),
            value,
            ..Default::default()
        };
        let started = Instant::now();
        match call(timeout, kv.put(request(put, timeout))).await {
            Ok(_) => {
                putter.ops += 1;
                putter.phase("put", started.elapsed());
                acked[index as usize] = true;
            }
            Err(error) => putter.error(error),
        }
    }
    let elapsed = plan.started.elapsed();

    // Wait for every acknowledged put to reach every watcher.
    let watchers = u64::from(shared.watchers);
    let missing = || -> u64 {
        acked
            .iter()
            .enumerate()
            .filter(|(_, acked)| **acked)
            .map(|(index, _)| watchers.saturating_sub(u64::from(shared.delivered[index].load(Ordering::Acquire))))
            .sum()
    };
    let drain_deadline = Instant::now() + timeout;
    while missing() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let missing = missing();
    stop_sender.send(true).ok();
    let mut recorder = putter;
    for reader in readers {
        recorder.merge(reader.await.expect("a watch reader panicked"));
    }
    recorder.count("watchers", watchers);
    recorder.count("watch_streams", args.watch_streams as u64);
    recorder.count("events_expected", recorder.ops * watchers);
    recorder.count("events_missing", missing);
    recorder.count("events_received", 0);
    if missing > 0 {
        recorder.error_count(
            OpError::new(
                "Missing".into(),
                "watch events of acknowledged puts not delivered within --command-timeout after the last put",
            ),
            missing,
        );
    }
    Ok((recorder, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let value = stamp(42, Duration::from_nanos(123_456_789), 64);
        assert_eq!(value.len(), 64);
        assert_eq!(read_stamp(&value), Some((42, Duration::from_nanos(123_456_789))));
        assert_eq!(read_stamp(b"short"), None);
    }
}
