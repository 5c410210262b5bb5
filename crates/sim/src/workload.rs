//! Seeded clients: concurrent etcd clients issuing a configurable mix of
//! operations over a small key space, recording a [`KvHistory`].
//!
//! Each client is its own turmoil host (`c1`, `c2`, ...), runs one operation
//! at a time, and draws everything (the operation, the key, the node it
//! talks to, its think time) from a generator seeded with the run's seed and
//! its number, so a seed replays the same requests at the same simulated
//! instants. The key space is small (a handful of keys) so that clients
//! conflict: concurrent writes to one key, compare-and-sets that race.
//!
//! ## Recording (the rules of `zongheng_check::history`)
//! - `invoke` is read from the simulated clock just before the request
//!   leaves the client, `complete` just after the answer arrives, in
//!   nanoseconds since the simulation began. Every message takes at least one
//!   tick (the minimum link latency), so an operation's effect on a node
//!   always falls strictly inside its interval.
//! - Values are unique (`c<client>-<sequence>`), so any value read names the
//!   one write that wrote it.
//! - A timeout, a broken connection after sending, the server's "request
//!   timed out" or an internal error are [`Outcome::Unknown`]. Only answers
//!   that prove the request had no effect are [`Outcome::Failed`] ("no
//!   leader" before proposing, a refused connection: see
//!   [`crate::client::RequestError`]).
//!
//! ## Checks made while recording
//! - **Revisions increase per client**: a client's operations are sequential,
//!   so a write it completes must land at a revision above every revision its
//!   earlier linearizable operations saw, and a linearizable read at or
//!   above it. Serializable reads may be stale and are not checked.
//! - **Compaction keeps what it should**: when the mix includes compactions,
//!   clients also read keys at a past revision at or above every compaction
//!   invoked so far; such a read must not fail with "compacted". These reads
//!   and compactions are not part of the history (the KV model has no
//!   revisions in the past).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use zongheng_check::history::{ClientId, KvHistory, KvInput, KvOutput, Nanos, Outcome};
use zongheng_proto::etcdserverpb::response_op;
use zongheng_proto::etcdserverpb::{RangeResponse, ResponseHeader};

use crate::client::{RequestError, SimClient};
use crate::invariants::{Invariant, Monitor};

/// Relative weights of the operations a client issues (0 disables one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMix {
    pub put: u32,
    pub get_linearizable: u32,
    pub get_serializable: u32,
    pub delete: u32,
    pub compare_and_set: u32,
    /// A compaction, or a read at a past revision that must survive it.
    pub compact: u32,
}

impl Default for OpMix {
    fn default() -> Self {
        Self {
            put: 25,
            get_linearizable: 25,
            get_serializable: 10,
            delete: 8,
            compare_and_set: 30,
            compact: 2,
        }
    }
}

/// What the clients of a run do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadOptions {
    /// Concurrent clients (each one operation at a time).
    pub clients: usize,
    /// Keys `k0..kN`.
    pub keys: usize,
    pub mix: OpMix,
    /// Each client pauses up to this long (uniformly drawn) between operations.
    pub think_time_max: Duration,
    /// How long a client waits for an answer before calling the outcome
    /// unknown. Above the node's own 5 s request timeout, so a node that
    /// cannot find a leader says so ("no leader", a provable failure) before
    /// the client gives up.
    pub request_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            clients: 4,
            keys: 5,
            mix: OpMix::default(),
            think_time_max: Duration::from_millis(40),
            request_timeout: Duration::from_secs(6),
        }
    }
}

/// Counts of what the clients did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStats {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub compactions: u64,
    pub past_reads: u64,
}

struct Shared {
    history: KvHistory,
    stats: WorkloadStats,
    /// The highest revision any client has asked to compact to.
    compact_invoked: i64,
    /// Clients still running.
    active_clients: usize,
}

/// The history the clients of a run record into; clones share it.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Mutex<Shared>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                history: KvHistory::new(),
                stats: WorkloadStats::default(),
                compact_invoked: 0,
                active_clients: 0,
            })),
        }
    }
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().expect("recorder lock poisoned")
    }

    /// Record that `client` invokes `input` now; returns the operation's id.
    pub fn invoke(&self, client: ClientId, input: KvInput) -> u64 {
        self.lock().history.invoke(client, now_nanos(), input)
    }

    /// Record operation `id`'s outcome now.
    pub fn complete(&self, id: u64, outcome: Outcome<KvOutput>) {
        let mut shared = self.lock();
        match &outcome {
            Outcome::Ok(_) => shared.stats.ok += 1,
            Outcome::Failed(_) => shared.stats.failed += 1,
            Outcome::Unknown(_) => shared.stats.unknown += 1,
        }
        shared.history.complete(id, now_nanos(), outcome);
    }

    pub fn history(&self) -> KvHistory {
        self.lock().history.clone()
    }

    pub fn stats(&self) -> WorkloadStats {
        self.lock().stats.clone()
    }

    /// How many clients are still running.
    pub fn active_clients(&self) -> usize {
        self.lock().active_clients
    }
}

/// Simulated nanoseconds since the simulation began.
pub fn now_nanos() -> Nanos {
    turmoil::sim_elapsed().unwrap_or_default().as_nanos() as Nanos
}

/// The name of key `index`.
pub fn key_name(index: usize) -> Vec<u8> {
    format!("k{index}").into_bytes()
}

/// The outcome of a failed request, as the history records it.
pub fn failure_outcome<O>(error: &RequestError) -> Outcome<O> {
    match error {
        RequestError::Refused { .. } => Outcome::Failed(error.to_string()),
        RequestError::Unknown { .. } => Outcome::Unknown(error.to_string()),
    }
}

fn revision_of(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |header| header.revision)
}

/// What a single-key range returned, as a `Get` output.
pub fn get_output(response: &RangeResponse) -> KvOutput {
    let kv = response.kvs.first();
    KvOutput::Get {
        value: kv.map(|kv| kv.value.clone()),
        mod_revision: kv.map_or(0, |kv| kv.mod_revision),
        revision: revision_of(&response.header),
    }
}

enum Choice {
    Put,
    GetLinearizable,
    GetSerializable,
    Delete,
    CompareAndSet,
    Compact,
}

fn choose(mix: &OpMix, rng: &mut StdRng) -> Choice {
    let weights = [
        (mix.put, Choice::Put),
        (mix.get_linearizable, Choice::GetLinearizable),
        (mix.get_serializable, Choice::GetSerializable),
        (mix.delete, Choice::Delete),
        (mix.compare_and_set, Choice::CompareAndSet),
        (mix.compact, Choice::Compact),
    ];
    let total: u32 = weights.iter().map(|(weight, _)| weight).sum();
    assert!(total > 0, "the operation mix needs a non-zero weight");
    let mut draw = rng.gen_range(0..total);
    for (weight, choice) in weights {
        if draw < weight {
            return choice;
        }
        draw -= weight;
    }
    unreachable!("the draw is below the total weight")
}

/// One client's state between operations.
struct ClientState {
    id: ClientId,
    rng: StdRng,
    hosts: Vec<String>,
    node: usize,
    sequence: u64,
    /// The highest revision a linearizable operation of this client saw.
    last_revision: i64,
    /// The value this client last saw for each key (for compare-and-set).
    known: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl ClientState {
    fn node(&self) -> &str {
        &self.hosts[self.node]
    }

    fn switch_node(&mut self) {
        self.node = self.rng.gen_range(0..self.hosts.len());
    }

    /// Check and advance the client's revision after a linearizable
    /// operation at `revision`; `wrote` when it changed the store.
    fn observe_revision(&mut self, monitor: &Monitor, what: &str, revision: i64, wrote: bool) {
        let broken = if wrote {
            revision <= self.last_revision
        } else {
            revision < self.last_revision
        };
        if broken {
            monitor.violation(
                Invariant::RevisionOrder,
                format!(
                    "client c{} {what} via {} at revision {revision}, after it had seen revision {}",
                    self.id,
                    self.node(),
                    self.last_revision
                ),
            );
        }
        self.last_revision = self.last_revision.max(revision);
    }
}

/// Run client `id` until the simulated clock reaches `stop_at`: one
/// operation at a time, recorded into `recorder`.
pub async fn run_client(
    id: ClientId,
    seed: u64,
    options: WorkloadOptions,
    hosts: Vec<String>,
    recorder: Recorder,
    monitor: Monitor,
    stop_at: Duration,
) {
    let client = SimClient::new(&hosts).with_request_timeout(options.request_timeout);
    let mut rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let node = rng.gen_range(0..hosts.len());
    let mut state = ClientState {
        id,
        rng,
        hosts,
        node,
        sequence: 0,
        last_revision: 0,
        known: BTreeMap::new(),
    };
    let think_max_ms = options.think_time_max.as_millis() as u64;
    recorder.lock().active_clients += 1;
    loop {
        if think_max_ms > 0 {
            let think = state.rng.gen_range(0..=think_max_ms);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
        if turmoil::sim_elapsed().unwrap_or_default() >= stop_at {
            break;
        }
        // Now and then move to another node, so every node serves requests.
        if state.rng.gen_ratio(1, 50) {
            state.switch_node();
        }
        let key = key_name(state.rng.gen_range(0..options.keys));
        state.sequence += 1;
        let value = format!("c{id}-{}", state.sequence).into_bytes();
        let succeeded = match choose(&options.mix, &mut state.rng) {
            Choice::Put => put(&client, &mut state, &recorder, &monitor, key, value).await,
            Choice::GetLinearizable => get(&client, &mut state, &recorder, &monitor, key, true).await,
            Choice::GetSerializable => get(&client, &mut state, &recorder, &monitor, key, false).await,
            Choice::Delete => delete(&client, &mut state, &recorder, &monitor, key).await,
            Choice::CompareAndSet => compare_and_set(&client, &mut state, &recorder, &monitor, key, value).await,
            Choice::Compact => compact_or_read_past(&client, &mut state, &recorder, &monitor, key).await,
        };
        if !succeeded {
            state.switch_node();
        }
    }
    recorder.lock().active_clients -= 1;
}

async fn put(
    client: &SimClient,
    state: &mut ClientState,
    recorder: &Recorder,
    monitor: &Monitor,
    key: Vec<u8>,
    value: Vec<u8>,
) -> bool {
    let operation = recorder.invoke(
        state.id,
        KvInput::Put {
            key: key.clone(),
            value: value.clone(),
        },
    );
    match client.put_bytes_on(state.node(), &key, &value).await {
        Ok(response) => {
            let revision = revision_of(&response.header);
            recorder.complete(operation, Outcome::Ok(KvOutput::Put { revision }));
            state.observe_revision(monitor, "put", revision, true);
            state.known.insert(key, Some(value));
            true
        }
        Err(error) => {
            recorder.complete(operation, failure_outcome(&error));
            false
        }
    }
}

async fn get(
    client: &SimClient,
    state: &mut ClientState,
    recorder: &Recorder,
    monitor: &Monitor,
    key: Vec<u8>,
    linearizable: bool,
) -> bool {
    let operation = recorder.invoke(
        state.id,
        KvInput::Get {
            key: key.clone(),
            linearizable,
        },
    );
    match client.get_on(state.node(), &key, linearizable).await {
        Ok(response) => {
            let output = get_output(&response);
            if let KvOutput::Get { value, revision, .. } = &output {
                if linearizable {
                    state.observe_revision(monitor, "linearizable get", *revision, false);
                }
                state.known.insert(key, value.clone());
            }
            recorder.complete(operation, Outcome::Ok(output));
            true
        }
        Err(error) => {
            recorder.complete(operation, failure_outcome(&error));
            false
        }
    }
}

async fn delete(
    client: &SimClient,
    state: &mut ClientState,
    recorder: &Recorder,
    monitor: &Monitor,
    key: Vec<u8>,
) -> bool {
    let operation = recorder.invoke(state.id, KvInput::Delete { key: key.clone() });
    match client.delete_on(state.node(), &key).await {
        Ok(response) => {
            let revision = revision_of(&response.header);
            recorder.complete(
                operation,
                Outcome::Ok(KvOutput::Delete {
                    deleted: response.deleted,
                    revision,
                }),
            );
            state.observe_revision(monitor, "delete", revision, response.deleted > 0);
            state.known.insert(key, None);
            true
        }
        Err(error) => {
            recorder.complete(operation, failure_outcome(&error));
            false
        }
    }
}

async fn compare_and_set(
    client: &SimClient,
    state: &mut ClientState,
    recorder: &Recorder,
    monitor: &Monitor,
    key: Vec<u8>,
    new_value: Vec<u8>,
) -> bool {
    // Usually expect what this client last saw (so many succeed); sometimes
    // expect absence, which fails whenever the key exists.
    let expected = if state.rng.gen_ratio(1, 5) {
        None
    } else {
        state.known.get(&key).cloned().flatten()
    };
    let operation = recorder.invoke(
        state.id,
        KvInput::CompareAndSet {
            key: key.clone(),
            expected: expected.clone(),
            new_value: new_value.clone(),
        },
    );
    match client
        .compare_and_set_on(state.node(), &key, expected.as_deref(), &new_value)
        .await
    {
        Ok(response) => {
            let revision = revision_of(&response.header);
            recorder.complete(
                operation,
                Outcome::Ok(KvOutput::CompareAndSet {
                    succeeded: response.succeeded,
                    revision,
                }),
            );
            state.observe_revision(monitor, "compare-and-set", revision, response.succeeded);
            if response.succeeded {
                state.known.insert(key, Some(new_value));
            } else {
                // The failure branch read the key.
                let current = response.responses.first().and_then(|op| match &op.response {
                    Some(response_op::Response::ResponseRange(range)) => {
                        Some(range.kvs.first().map(|kv| kv.value.clone()))
                    }
                    _ => None,
                });
                if let Some(current) = current {
                    state.known.insert(key, current);
                }
            }
            true
        }
        Err(error) => {
            recorder.complete(operation, failure_outcome(&error));
            false
        }
    }
}

/// Half the time compact a little behind what this client has seen; the
/// other half read `key` at a past revision that no compaction invoked so
/// far has reached, which must succeed.
async fn compact_or_read_past(
    client: &SimClient,
    state: &mut ClientState,
    recorder: &Recorder,
    monitor: &Monitor,
    key: Vec<u8>,
) -> bool {
    if state.last_revision < 2 {
        return true;
    }
    let floor = recorder.lock().compact_invoked;
    if state.rng.gen_bool(0.5) {
        let revision = state.last_revision - state.rng.gen_range(0..20);
        if revision <= floor {
            return true;
        }
        {
            let mut shared = recorder.lock();
            shared.compact_invoked = shared.compact_invoked.max(revision);
            shared.stats.compactions += 1;
        }
        return match client.compact_on(state.node(), revision).await {
            Ok(_) => true,
            // An earlier compaction went further: nothing to do.
            Err(RequestError::Refused {
                code: tonic::Code::OutOfRange,
                ..
            }) => true,
            Err(_) => false,
        };
    }
    let lowest = floor.max(1);
    if lowest > state.last_revision {
        return true;
    }
    let revision = state.rng.gen_range(lowest..=state.last_revision);
    recorder.lock().stats.past_reads += 1;
    match client.get_at_on(state.node(), &key, revision).await {
        Ok(_) => true,
        Err(RequestError::Refused {
            code: tonic::Code::OutOfRange,
            message,
        }) if message.contains("compacted") => {
            // Only a violation if no compaction above `revision` was invoked
            // while this read was in flight.
            if recorder.lock().compact_invoked <= revision {
                monitor.violation(
                    Invariant::CompactedTooMuch,
                    format!(
                        "client c{} read {} at revision {revision} via {}: {message}; the highest compaction asked for is {}",
                        state.id,
                        String::from_utf8_lossy(&key),
                        state.node(),
                        recorder.lock().compact_invoked
                    ),
                );
            }
            true
        }
        Err(_) => false,
    }
}
