//! Leases: the keep-alive loop every session uses, the lease owners that
//! read their keys back over time, and the owner partitioned away.
//!
//! ## The promise checked while the run goes
//! A keep-alive request sent at time `s` whose answer says TTL `t > 0` was
//! applied by the leader no earlier than `s`, and a newly elected leader
//! restarts every TTL in full (etcd's rule), so the lease lives at least
//! until `s + t`. A linearizable read of the owner's keys that *completes*
//! before that instant must find every key; finding one missing is a
//! [`Invariant::LeaseSafety`] violation. Keep-alives go one at a time on a
//! stream, so each answer belongs to the request sent just before it.
//!
//! ## The owner partitioned away
//! [`EXPIRING_OWNER`] keeps its lease alive until `isolate_owner_at`, then
//! cuts itself off from every node for `isolation` (longer than the TTL) and
//! never sends a keep-alive again. After healing its keys must be deleted;
//! the final checks wait for that and look for the delete events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::watch;
use zongheng_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest};

use super::rpc::{call, Endpoints};
use super::{now, now_ms, think, AckedWrite, ClientContext, ExpiringLease, Shared, KEYS_PER_LEASE};
use crate::client::{prefix_range, RequestError};
use crate::invariants::Invariant;

/// The lease owner partitioned away from every node.
pub const EXPIRING_OWNER: &str = "leasex";
/// How long a keep-alive answer may take before the stream is replaced.
const KEEPALIVE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed attempt to open a keep-alive stream.
const KEEPALIVE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A keep-alive answered with a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAliveAnswer {
    /// When the request was sent.
    pub sent: Duration,
    pub ttl_seconds: i64,
    /// The node that answered, and the term its header named.
    pub node: String,
    pub term: u64,
}

#[derive(Debug, Default)]
struct KeeperState {
    /// The last keep-alive answered with a live lease.
    last_ok: Option<KeepAliveAnswer>,
    /// The lease is gone (a keep-alive answered TTL <= 0).
    lost: bool,
}

/// A task keeping one lease alive; dropping the handle does not stop it,
/// [`LeaseKeeper::stop`] does.
pub struct LeaseKeeper {
    pub lease: i64,
    state: Arc<Mutex<KeeperState>>,
    stop: watch::Sender<bool>,
}

impl LeaseKeeper {
    /// Start keeping `lease` alive, sending every third of `ttl_seconds`,
    /// starting at node `first_node`.
    pub fn spawn(endpoints: Arc<Endpoints>, shared: Shared, lease: i64, ttl_seconds: i64, first_node: usize) -> Self {
        let state = Arc::new(Mutex::new(KeeperState::default()));
        let (stop, stopped) = watch::channel(false);
        let interval = Duration::from_millis((ttl_seconds.max(1) as u64 * 1000) / 3);
        tokio::spawn(keep_alive(
            endpoints,
            shared,
            lease,
            interval,
            first_node,
            state.clone(),
            stopped,
        ));
        Self { lease, state, stop }
    }

    pub fn last_ok(&self) -> Option<KeepAliveAnswer> {
        self.state.lock().expect("keeper state poisoned").last_ok.clone()
    }

    pub fn lost(&self) -> bool {
        self.state.lock().expect("keeper state poisoned").lost
    }

    /// Stop sending keep-alives (at once; an answer in flight is dropped).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn keep_alive(
    endpoints: Arc<Endpoints>,
    shared: Shared,
    lease: i64,
    interval: Duration,
    mut node: usize,
    state: Arc<Mutex<KeeperState>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let (name, rpc) = endpoints.node(node);
        let mut client = rpc.lease;
        let (requests, outbound) = futures::channel::mpsc::unbounded::<LeaseKeepAliveRequest>();
        let opened = tokio::select! {
            opened = tokio::time::timeout(KEEPALIVE_REPLY_TIMEOUT, client.lease_keep_alive(outbound)) => opened,
            _ = stopped.changed() => return,
        };
        let mut stream = match opened {
            Ok(Ok(response)) => response.into_inner(),
            _ => {
                node += 1;
                tokio::time::sleep(KEEPALIVE_RETRY_PAUSE).await;
                continue;
            }
        };
        loop {
            if *stopped.borrow() {
                return;
            }
            let sent = now();
            if requests.unbounded_send(LeaseKeepAliveRequest { id: lease }).is_err() {
                break;
            }
            let answer = tokio::select! {
                answer = tokio::time::timeout(KEEPALIVE_REPLY_TIMEOUT, stream.message()) => answer,
                _ = stopped.changed() => return,
            };
            match answer {
                Ok(Ok(Some(response))) if response.ttl > 0 => {
                    state.lock().expect("keeper state poisoned").last_ok = Some(KeepAliveAnswer {
                        sent,
                        ttl_seconds: response.ttl,
                        node: name.clone(),
                        term: response.header.map_or(0, |header| header.raft_term),
                    });
                    shared.stats(|stats| stats.keepalives_ok += 1);
                }
                Ok(Ok(Some(_))) => {
                    state.lock().expect("keeper state poisoned").lost = true;
                    return;
                }
                _ => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.changed() => return,
            }
        }
        node += 1;
    }
}

/// Grant a lease of `ttl_seconds` through node `node`, once.
pub async fn grant(
    endpoints: &Endpoints,
    node: usize,
    ttl_seconds: i64,
    timeout: Duration,
) -> Result<(i64, i64), RequestError> {
    let (_, rpc) = endpoints.node(node);
    let mut client = rpc.lease;
    let response = call(
        timeout,
        client.lease_grant(LeaseGrantRequest {
            ttl: ttl_seconds,
            id: 0,
        }),
    )
    .await?;
    Ok((response.id, response.ttl))
}

/// Revoke `lease` through node `node`, once, ignoring the outcome (it
/// expires anyway).
pub async fn revoke(endpoints: &Endpoints, node: usize, lease: i64, timeout: Duration) {
    let (_, rpc) = endpoints.node(node);
    let mut client = rpc.lease;
    let _ = call(timeout, client.lease_revoke(LeaseRevokeRequest { id: lease })).await;
}

/// A session for the lock clients and campaigners: a lease kept alive.
pub struct Session {
    pub keeper: LeaseKeeper,
}

impl Session {
    /// Grant a session lease and start keeping it alive; `None` (after
    /// moving `node` on) when the grant failed.
    pub async fn open(context: &ClientContext, endpoints: &Arc<Endpoints>, node: &mut usize) -> Option<Self> {
        let ttl = context.options.session_ttl_seconds;
        match grant(endpoints, *node, ttl, context.options.request_timeout).await {
            Ok((lease, ttl)) => Some(Self {
                keeper: LeaseKeeper::spawn(endpoints.clone(), context.shared.clone(), lease, ttl, *node),
            }),
            Err(error) => {
                context.shared.count_failure(&error);
                *node += 1;
                None
            }
        }
    }

    pub fn lease(&self) -> i64 {
        self.keeper.lease
    }
}

/// How one generation of a lease owner ended.
enum GenerationEnd {
    /// The time limit came; the lease is (as far as the owner knows) alive.
    Until { keys: Vec<Vec<u8>>, created_revision: i64 },
    /// The lease was lost or could not be set up.
    Lost,
}

/// Run one generation: grant, attach the keys, keep alive and read the keys
/// back until `until` or until the lease is lost.
async fn run_generation(
    context: &ClientContext,
    endpoints: &Arc<Endpoints>,
    rng: &mut StdRng,
    node: &mut usize,
    generation: u64,
    until: Duration,
) -> (GenerationEnd, Option<LeaseKeeper>) {
    let options = &context.options;
    let (lease, ttl) = match grant(endpoints, *node, options.lease_ttl_seconds, options.request_timeout).await {
        Ok(granted) => granted,
        Err(error) => {
            context.shared.count_failure(&error);
            *node += 1;
            return (GenerationEnd::Lost, None);
        }
    };
    let keeper = LeaseKeeper::spawn(endpoints.clone(), context.shared.clone(), lease, ttl, *node);
    let prefix = format!("{}{}/g{generation}/", super::LEASE_PREFIX, context.host);
    let mut keys = Vec::new();
    let mut created_revision = 0;
    for index in 0..KEYS_PER_LEASE {
        let key = format!("{prefix}k{index}").into_bytes();
        let value = format!("{}-g{generation}-{index}", context.host).into_bytes();
        let (name, rpc) = endpoints.node(*node);
        let mut kv = rpc.kv;
        let request = PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease,
            ..Default::default()
        };
        match call(options.request_timeout, kv.put(request)).await {
            Ok(response) => {
                let revision = response.header.map_or(0, |header| header.revision);
                created_revision = revision;
                context.shared.update(|record| {
                    record.acked_writes.push(AckedWrite {
                        client: context.host.clone(),
                        key: key.clone(),
                        revision,
                        value: Some(value.clone()),
                    })
                });
                keys.push(key);
            }
            Err(error) => {
                tracing::debug!(%error, node = %name, "lease owner put failed");
                context.shared.count_failure(&error);
                *node += 1;
                keeper.stop();
                return (GenerationEnd::Lost, None);
            }
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..=600))).await;
        if now() >= until {
            return (GenerationEnd::Until { keys, created_revision }, Some(keeper));
        }
        if keeper.lost() {
            context.shared.stats(|stats| stats.leases_lost += 1);
            return (GenerationEnd::Lost, None);
        }
        let (name, rpc) = endpoints.node(*node);
        let mut kv = rpc.kv;
        match call(options.request_timeout, kv.range(prefix_range(&prefix, false))).await {
            Ok(response) => {
                context.shared.stats(|stats| stats.lease_reads += 1);
                if response.kvs.len() < KEYS_PER_LEASE {
                    let completed = now();
                    match keeper.last_ok() {
                        Some(answer) if completed < answer.sent + Duration::from_secs(answer.ttl_seconds as u64) => {
                            context.monitor.violation(
                                Invariant::LeaseSafety,
                                format!(
                                    "{} read {} of the {KEYS_PER_LEASE} keys of lease {lease:x} via {name} at revision {} ({} ms), but a keep-alive sent at {} ms had answered TTL {} s (via {}, term {})",
                                    context.host,
                                    response.kvs.len(),
                                    response.header.map_or(0, |header| header.revision),
                                    completed.as_millis(),
                                    answer.sent.as_millis(),
                                    answer.ttl_seconds,
                                    answer.node,
                                    answer.term
                                ),
                            );
                        }
                        _ => {}
                    }
                    // Expired (legitimately or not): start a new generation.
                    context.shared.stats(|stats| stats.leases_lost += 1);
                    keeper.stop();
                    return (GenerationEnd::Lost, None);
                }
            }
            Err(error) => {
                context.shared.count_failure(&error);
                *node += 1;
            }
        }
    }
}

/// A lease owner: generations of a lease with keys, until the run stops.
pub async fn run_owner(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let mut generation = 0;
    while now() < context.stop_at {
        let (end, keeper) = run_generation(context, &endpoints, &mut rng, &mut node, generation, context.stop_at).await;
        if let (GenerationEnd::Until { .. }, Some(keeper)) = (end, keeper) {
            keeper.stop();
            revoke(&endpoints, node, keeper.lease, context.options.request_timeout).await;
        }
        generation += 1;
        think(&mut rng, context.options.think_time_max).await;
    }
}

/// The owner that is partitioned away: a live lease at `isolate_owner_at`,
/// then cut off for `isolation` and silent for good.
pub async fn run_expiring_owner(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let isolate_at = context.options.isolate_owner_at;
    let mut generation = 0;
    while now() < isolate_at {
        let (end, keeper) = run_generation(context, &endpoints, &mut rng, &mut node, generation, isolate_at).await;
        generation += 1;
        if let (GenerationEnd::Until { keys, created_revision }, Some(keeper)) = (end, keeper) {
            keeper.stop();
            context.nemesis.partition(&[context.host.as_str()], &context.nodes);
            context.shared.update(|record| {
                record.expiring = Some(ExpiringLease {
                    lease: keeper.lease,
                    keys,
                    created_revision,
                    isolated_at_ms: now_ms(),
                })
            });
            tokio::time::sleep(context.options.isolation).await;
            context.nemesis.repair(&[context.host.as_str()], &context.nodes);
            return;
        }
    }
}
