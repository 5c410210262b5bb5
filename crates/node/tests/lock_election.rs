//! The Lock and Election services end to end: a 3-member cluster started in
//! this process (`zongheng::node::start` over loopback TCP, in-memory
//! engines), driven with the tonic clients an SDK would use.
//!
//! What is shown: mutual exclusion with fencing tokens under contention,
//! hand-over when a holder's lease is revoked, a waiter whose own lease
//! expires, abandoned calls that leave no key behind, an election with
//! Leader/Observe/Proclaim/Resign, waiting calls ending at node shutdown,
//! the errors for bad input (compared with a real etcd when `etcd` is
//! installed), and interplay with `etcdctl lock` / `etcdctl elect` (the
//! client-side recipes on the same keys) when `etcdctl` is installed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use zongheng::config::{ClusterState, NodeConfig};
use zongheng::net::transport::TcpTransport;
use zongheng::node::{start, NodeError, NodeHandle};
use zongheng::raft::RaftSettings;
use zongheng::server::etcd::ClientLimits;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::{
    compare, range_request, request_op, Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use zongheng_proto::v3electionpb::election_client::ElectionClient;
use zongheng_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use zongheng_proto::v3lockpb::lock_client::LockClient;
use zongheng_proto::v3lockpb::{LockRequest, UnlockRequest};
use zongheng_storage::wal::{MemFiles, Wal};
use zongheng_storage::MemEngine;

/// How long anything that must happen may take (a loaded shared machine).
const EVENTUALLY: Duration = Duration::from_secs(20);
/// How long a call that must stay blocked is watched before moving on.
const STAYS_BLOCKED: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------------------
// The cluster.

/// A loopback port below the kernel's ephemeral range (a port picked by
/// binding port 0 lies inside it, where an outgoing connection may take it
/// as its source port before the node binds it), free a moment ago, never
/// handed out twice by this process.
fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    let seed = u64::from(std::process::id()).wrapping_mul(7_919);
    loop {
        let port = (LOW + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Cluster {
    nodes: Vec<Option<NodeHandle>>,
}

impl Cluster {
    async fn start() -> Cluster {
        for _attempt in 0..5 {
            let names = ["n1", "n2", "n3"];
            let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
            let initial_cluster = names
                .iter()
                .zip(&ports)
                .map(|(name, (_, peer))| (name.to_string(), vec![format!("http://127.0.0.1:{peer}")]))
                .collect();
            let configs = names.iter().zip(&ports).map(|(name, (client, peer))| NodeConfig {
                name: name.to_string(),
                data_dir: PathBuf::from(format!("/in-memory/{name}")),
                listen_client: format!("127.0.0.1:{client}").parse().unwrap(),
                listen_peer: format!("127.0.0.1:{peer}").parse().unwrap(),
                listen_http: None,
                advertise_client_urls: vec![format!("http://127.0.0.1:{client}")],
                advertise_peer_urls: vec![format!("http://127.0.0.1:{peer}")],
                initial_cluster: Clone::clone(&initial_cluster),
                initial_cluster_state: ClusterState::New,
                initial_cluster_token: "lock-election-test".to_string(),
                raft: RaftSettings::default(),
                limits: ClientLimits::default(),
                store_partitions: 0,
                store: Default::default(),
                worker_threads: 1,
            });
            let started = futures::future::join_all(configs.map(|config| {
                let wal = Wal::open(Arc::new(MemFiles::new())).expect("open an in-memory log");
                start(
                    config,
                    Arc::new(TcpTransport),
                    Arc::new(MemEngine::new()),
                    Arc::new(wal),
                )
            }))
            .await;
            if started.iter().any(|node| matches!(node, Err(NodeError::Listen { .. }))) {
                for node in started.into_iter().flatten() {
                    node.shutdown().await;
                }
                continue;
            }
            let nodes = started
                .into_iter()
                .map(|node| Some(node.expect("node starts")))
                .collect();
            let cluster = Cluster { nodes };
            cluster.wait_ready().await;
            return cluster;
        }
        panic!("could not find free loopback ports for a cluster");
    }

    /// Until every member knows the same leader and a write goes through.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            let leaders: Vec<Option<u64>> = self.running().map(|node| node.meta.current_leader()).collect();
            if leaders[0].is_some() && leaders.iter().all(|leader| *leader == leaders[0]) {
                let mut kv = KvClient::new(self.channel(0).await);
                if kv.put(put("ready", "")).await.is_ok() {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the cluster has no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn running(&self) -> impl Iterator<Item = &NodeHandle> {
        self.nodes.iter().flatten()
    }

    async fn channel(&self, index: usize) -> Channel {
        connect(&self.url(index)).await
    }

    fn url(&self, index: usize) -> String {
        format!("http://{}", self.endpoint(index))
    }

    fn endpoint(&self, index: usize) -> String {
        self.nodes[index]
            .as_ref()
            .expect("node is running")
            .client_address
            .to_string()
    }

    async fn lock(&self, index: usize) -> LockClient<Channel> {
        LockClient::new(self.channel(index).await)
    }

    async fn election(&self, index: usize) -> ElectionClient<Channel> {
        ElectionClient::new(self.channel(index).await)
    }

    async fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(index).await)
    }

    async fn grant(&self, index: usize, ttl: i64) -> i64 {
        grant_at(&self.url(index), ttl).await
    }

    async fn revoke(&self, index: usize, id: i64) {
        LeaseClient::new(self.channel(index).await)
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .expect("lease revoke");
    }

    async fn shutdown(mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------
// Request helpers.

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect to the server")
}

async fn grant_at(url: &str, ttl: i64) -> i64 {
    LeaseClient::new(connect(url).await)
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease grant")
        .into_inner()
        .id
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn prefix_range(prefix: &str) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest {
        key: prefix.into(),
        range_end: end,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The keys under `prefix`, by create revision.
async fn keys_under(kv: &mut KvClient<Channel>, prefix: &str) -> Vec<Vec<u8>> {
    let response = kv.range(prefix_range(prefix)).await.expect("range").into_inner();
    response.kvs.into_iter().map(|kv| kv.key).collect()
}

/// The create revision of `key` (0 if absent): the lock's fencing token.
async fn create_revision(kv: &mut KvClient<Channel>, key: &[u8]) -> i64 {
    let response = kv
        .range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    response.kvs.first().map_or(0, |kv| kv.create_revision)
}

async fn lock(client: &mut LockClient<Channel>, name: &str, lease: i64) -> Result<Vec<u8>, Status> {
    client
        .lock(LockRequest {
            name: name.into(),
            lease,
        })
        .await
        .map(|response| response.into_inner().key)
}

async fn unlock(client: &mut LockClient<Channel>, key: &[u8]) {
    client
        .unlock(UnlockRequest { key: key.to_vec() })
        .await
        .expect("unlock");
}

async fn campaign(
    client: &mut ElectionClient<Channel>,
    name: &str,
    lease: i64,
    value: &str,
) -> Result<LeaderKey, Status> {
    client
        .campaign(CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        })
        .await
        .map(|response| response.into_inner().leader.expect("a leader key"))
}

/// The current leader's value, or the error.
async fn leader_value(client: &mut ElectionClient<Channel>, name: &str) -> Result<String, Status> {
    let response = client.leader(LeaderRequest { name: name.into() }).await?.into_inner();
    Ok(String::from_utf8(response.kv.expect("a leader kv").value).unwrap())
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status {status:?}");
            assert_eq!(status.message(), message, "unexpected status {status:?}");
        }
        Ok(value) => panic!("expected {code:?} {message:?}, got {value:?}"),
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finish<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(EVENTUALLY, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .expect("task")
}

/// A value that carries the fencing token of the holder that wrote it:
/// `<token, 20 digits>:<count>`. Byte order of the value is token order.
fn fenced(token: i64, count: u64) -> String {
    format!("{token:020}:{count}")
}

/// The guard on a fenced value: the stored token is at most `token`
/// (`"<token>;"` sorts after every `"<token>:<count>"`).
fn fence_at_most(token: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Value as i32,
        key: b"counter".to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::Value(format!("{token:020};").into_bytes())),
    }
}

fn still_holding(key: &[u8], token: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::CreateRevision(token)),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

// ---------------------------------------------------------------------------
// Lock.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_excludes_and_fencing_tokens_increase() {
    const CLIENTS: usize = 4;
    const ROUNDS: u64 = 20;
    let cluster = Cluster::start().await;
    let mut kv = cluster.kv(0).await;
    kv.put(put("counter", &fenced(0, 0))).await.unwrap();
    let in_critical_section = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        // Clients spread over the members: followers forward, all wait locally.
        let member = client % 3;
        let mut locks = cluster.lock(member).await;
        let mut kv = cluster.kv(member).await;
        let lease = cluster.grant(member, 60).await;
        let in_critical_section = in_critical_section.clone();
        let tokens = tokens.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let key = lock(&mut locks, "counter-lock", lease).await.expect("lock");
                assert!(
                    !in_critical_section.swap(true, Ordering::SeqCst),
                    "two clients hold the lock at once"
                );
                let token = create_revision(&mut kv, &key).await;
                assert!(token > 0, "the held lock key exists");
                tokens.lock().unwrap().push(token);
                // Read-modify-write, guarded by the lock key and the token.
                let current = kv
                    .range(RangeRequest {
                        key: b"counter".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let value = String::from_utf8(current.kvs[0].value.clone()).unwrap();
                let (stored_token, count) = value.split_once(':').unwrap();
                assert!(stored_token.parse::<i64>().unwrap() < token, "tokens increase");
                let count: u64 = count.parse().unwrap();
                let txn = TxnRequest {
                    compare: vec![still_holding(&key, token), fence_at_most(token)],
                    success: vec![put_op("counter", &fenced(token, count + 1))],
                    failure: vec![],
                };
                assert!(
                    kv.txn(txn).await.unwrap().into_inner().succeeded,
                    "the guarded write goes through"
                );
                in_critical_section.store(false, Ordering::SeqCst);
                unlock(&mut locks, &key).await;
            }
        }));
    }
    for client in clients {
        finish(client, "a lock client").await;
    }
    let counter = kv
        .range(RangeRequest {
            key: b"counter".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let value = String::from_utf8(counter.kvs[0].value.clone()).unwrap();
    assert_eq!(value.split_once(':').unwrap().1, (CLIENTS as u64 * ROUNDS).to_string());
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), CLIENTS * ROUNDS as usize);
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "fencing tokens strictly increase from holder to holder: {tokens:?}"
    );
    // A stale holder (the first token) is refused by the fence.
    let stale = TxnRequest {
        compare: vec![fence_at_most(tokens[0])],
        success: vec![put_op("counter", &fenced(tokens[0], 0))],
        failure: vec![],
    };
    assert!(!kv.txn(stale).await.unwrap().into_inner().succeeded);
    assert!(keys_under(&mut kv, "counter-lock/").await.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_acquires_when_the_holders_lease_is_revoked() {
    let cluster = Cluster::start().await;
    let mut kv = cluster.kv(2).await;
    let holder_lease = cluster.grant(0, 60).await;
    let waiter_lease = cluster.grant(1, 60).await;
    let mut holder = cluster.lock(0).await;
    let held = lock(&mut holder, "revoked", holder_lease).await.unwrap();
    let holder_token = create_revision(&mut kv, &held).await;
    // The same lease locking again is a no-op: same key, same position.
    assert_eq!(lock(&mut holder, "revoked", holder_lease).await.unwrap(), held);
    assert_eq!(create_revision(&mut kv, &held).await, holder_token);
    let mut waiter_client = cluster.lock(1).await;
    let waiter = tokio::spawn(async move { lock(&mut waiter_client, "revoked", waiter_lease).await });
    tokio::time::sleep(STAYS_BLOCKED).await;
    assert!(!waiter.is_finished(), "the waiter must wait for the holder");
    cluster.revoke(2, holder_lease).await;
    let acquired = finish(waiter, "the waiter").await.expect("the waiter acquires");
    assert_eq!(acquired, format!("revoked/{waiter_lease:x}").into_bytes());
    assert_eq!(
        create_revision(&mut kv, &held).await,
        0,
        "the revoked holder's key is gone"
    );
    assert!(create_revision(&mut kv, &acquired).await > holder_token);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_expires_fails_and_leaves_the_holder_alone() {
    let cluster = Cluster::start().await;
    let mut kv = cluster.kv(0).await;
    let holder_lease = cluster.grant(0, 60).await;
    // Nobody keeps this one alive: it expires while its owner waits.
    let short_lease = cluster.grant(1, 1).await;
    let mut holder = cluster.lock(0).await;
    let held = lock(&mut holder, "expiring", holder_lease).await.unwrap();
    let mut waiter = cluster.lock(1).await;
    let result = tokio::time::timeout(EVENTUALLY, lock(&mut waiter, "expiring", short_lease))
        .await
        .expect("the waiter gives up once its key is gone");
    assert_status(result, Code::Unknown, "mutex: session is expired");
    assert_eq!(keys_under(&mut kv, "expiring/").await, vec![held]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_lock_and_campaign_calls_leave_no_key() {
    let cluster = Cluster::start().await;
    let mut kv = cluster.kv(0).await;
    let holder_lease = cluster.grant(0, 60).await;
    let mut holder = cluster.lock(0).await;
    let held = lock(&mut holder, "abandoned", holder_lease).await.unwrap();

    let waiter_lease = cluster.grant(1, 60).await;
    let mut waiter_client = cluster.lock(1).await;
    let waiter = tokio::spawn(async move { lock(&mut waiter_client, "abandoned", waiter_lease).await });
    eventually("the waiter's key", async || {
        (keys_under(&mut kv, "abandoned/").await.len() == 2).then_some(())
    })
    .await;
    // The client gives up: its request future (and the HTTP/2 stream) is dropped.
    waiter.abort();
    eventually("the abandoned key to be withdrawn", async || {
        (keys_under(&mut kv, "abandoned/").await == vec![held.clone()]).then_some(())
    })
    .await;

    // The same for a campaign, on another member.
    let leader_lease = cluster.grant(0, 60).await;
    let mut elections = cluster.election(0).await;
    let leader = campaign(&mut elections, "abandoned-e", leader_lease, "l")
        .await
        .unwrap();
    let candidate_lease = cluster.grant(2, 60).await;
    let mut candidate_client = cluster.election(2).await;
    let candidate =
        tokio::spawn(async move { campaign(&mut candidate_client, "abandoned-e", candidate_lease, "c").await });
    eventually("the candidate's key", async || {
        (keys_under(&mut kv, "abandoned-e/").await.len() == 2).then_some(())
    })
    .await;
    candidate.abort();
    eventually("the abandoned campaign key to be withdrawn", async || {
        (keys_under(&mut kv, "abandoned-e/").await == vec![leader.key.clone()]).then_some(())
    })
    .await;

    unlock(&mut holder, &held).await;
    assert!(keys_under(&mut kv, "abandoned/").await.is_empty());
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Election.

async fn next_observed(stream: &mut tonic::Streaming<LeaderResponse>) -> (i64, Vec<u8>, String) {
    let response = tokio::time::timeout(EVENTUALLY, stream.message())
        .await
        .expect("an observation")
        .expect("the stream is healthy")
        .expect("the stream is open");
    let kv = response.kv.expect("a leader kv");
    (
        response.header.expect("a header").revision,
        kv.key,
        String::from_utf8(kv.value).unwrap(),
    )
}

/// Two campaigners, a watcher and an observer, each on its own member
/// (`urls`; the same one three times for a single-member etcd).
async fn election_scenario(urls: [String; 3]) {
    let name = "e";
    let election = async |index: usize| ElectionClient::new(connect(&urls[index]).await);
    let grant = async |index: usize| grant_at(&urls[index], 60).await;
    let mut first = election(0).await;
    let mut second = election(1).await;
    let mut watcher = election(2).await;
    // etcd sends an Observe stream's headers with its first response, so the
    // call completes only once there is a leader: run it alongside.
    let mut observer = watcher.clone();
    let observing = tokio::spawn(async move { observer.observe(LeaderRequest { name: name.into() }).await });
    assert_status(
        leader_value(&mut watcher, name).await,
        Code::Unknown,
        "election: no leader",
    );

    let first_lease = grant(0).await;
    let second_lease = grant(1).await;
    let first_key = campaign(&mut first, name, first_lease, "a")
        .await
        .expect("an uncontested campaign wins");
    assert_eq!(first_key.name, name.as_bytes());
    assert_eq!(first_key.key, format!("{name}/{first_lease:x}").into_bytes());
    assert_eq!(first_key.lease, first_lease);
    let mut kv = KvClient::new(connect(&urls[2]).await);
    assert_eq!(create_revision(&mut kv, &first_key.key).await, first_key.rev);
    assert_eq!(leader_value(&mut watcher, name).await.unwrap(), "a");
    let mut observed = finish(observing, "the observe call").await.unwrap().into_inner();
    let (revision_a, key, value) = next_observed(&mut observed).await;
    assert_eq!((key, value.as_str()), (first_key.key.clone(), "a"));

    let second_campaign = tokio::spawn(async move { campaign(&mut second, name, second_lease, "b").await });
    tokio::time::sleep(STAYS_BLOCKED).await;
    assert!(!second_campaign.is_finished(), "one leader at a time");

    first
        .proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: "a2".into(),
        })
        .await
        .expect("the leader proclaims");
    assert_eq!(leader_value(&mut watcher, name).await.unwrap(), "a2");
    // A LeaderKey with the wrong revision is not the leader; nothing changes.
    let wrong = LeaderKey {
        rev: first_key.rev + 1,
        ..first_key.clone()
    };
    let refused = first
        .proclaim(ProclaimRequest {
            leader: Some(wrong.clone()),
            value: "forged".into(),
        })
        .await;
    assert_status(refused, Code::Unknown, "election: not leader");
    assert_eq!(leader_value(&mut watcher, name).await.unwrap(), "a2");

    first
        .resign(ResignRequest {
            leader: Some(first_key.clone()),
        })
        .await
        .expect("resign");
    let second_key = finish(second_campaign, "the second campaign")
        .await
        .expect("the second candidate leads");
    assert!(
        second_key.rev > first_key.rev,
        "leaders' revisions (fencing tokens) increase"
    );
    assert_eq!(leader_value(&mut watcher, name).await.unwrap(), "b");

    // The old leader is stale now: its proclamations fail, its resign is a
    // no-op (etcd answers success), the new leader is undisturbed.
    let stale = first
        .proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: "stale".into(),
        })
        .await;
    assert_status(stale, Code::Unknown, "election: not leader");
    first
        .resign(ResignRequest {
            leader: Some(first_key.clone()),
        })
        .await
        .expect("a stale resign succeeds and deletes nothing");
    assert_eq!(leader_value(&mut watcher, name).await.unwrap(), "b");

    let (revision_a2, key, value) = next_observed(&mut observed).await;
    assert_eq!((key, value.as_str()), (first_key.key.clone(), "a2"));
    let (revision_b, key, value) = next_observed(&mut observed).await;
    assert_eq!((key, value.as_str()), (second_key.key.clone(), "b"));
    assert!(
        revision_a < revision_a2 && revision_a2 < revision_b,
        "observations come in revision order"
    );

    let mut second = election(1).await;
    second
        .resign(ResignRequest {
            leader: Some(second_key.clone()),
        })
        .await
        .unwrap();
    assert_status(
        leader_value(&mut watcher, name).await,
        Code::Unknown,
        "election: no leader",
    );
    // No leader is not an observation; the next campaign is.
    let third_lease = grant(2).await;
    let third_key = campaign(&mut watcher, name, third_lease, "c").await.unwrap();
    let (_, key, value) = next_observed(&mut observed).await;
    assert_eq!((key, value.as_str()), (third_key.key.clone(), "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_leads_one_at_a_time_and_observers_follow() {
    let cluster = Cluster::start().await;
    election_scenario([cluster.url(0), cluster.url(1), cluster.url(2)]).await;
    cluster.shutdown().await;
}

/// The same scenario against etcd: the services answer as etcd's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_scenario_passes_against_a_real_etcd_too() {
    let Some(mut etcd) = Etcd::start().await else { return };
    election_scenario([etcd.endpoint.clone(), etcd.endpoint.clone(), etcd.endpoint.clone()]).await;
    let _ = etcd.child.kill().await;
}

// ---------------------------------------------------------------------------
// Shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_end_when_their_node_shuts_down() {
    let mut cluster = Cluster::start().await;
    let holder_lease = cluster.grant(1, 60).await;
    let mut holder = cluster.lock(1).await;
    lock(&mut holder, "shutdown", holder_lease).await.unwrap();
    let waiter_lease = cluster.grant(0, 60).await;
    let mut waiter_client = cluster.lock(0).await;
    let waiter = tokio::spawn(async move { lock(&mut waiter_client, "shutdown", waiter_lease).await });
    let mut observer = cluster.election(0).await;
    let mut observed = observer
        .observe(LeaderRequest {
            name: "shutdown-e".into(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(STAYS_BLOCKED).await;
    assert!(!waiter.is_finished());

    let node = cluster.nodes[0].take().unwrap();
    tokio::time::timeout(EVENTUALLY, node.shutdown())
        .await
        .expect("shutdown does not hang on waiting calls");
    let result = finish(waiter, "the waiting lock call").await;
    assert_eq!(result.expect_err("no lock on a stopped node").code(), Code::Unavailable);
    match tokio::time::timeout(EVENTUALLY, observed.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
        Ok(Ok(None)) => {}
        other => panic!("the observe stream should end with the node, got {other:?}"),
    }
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Bad input, compared with etcd.

/// Calls with bad input and what they answer: `ok` or `<code>: <message>`.
async fn bad_input_outcomes(channel: Channel, lease: i64) -> Vec<(&'static str, String)> {
    fn outcome<T>(result: Result<tonic::Response<T>, Status>) -> String {
        match result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        }
    }
    let mut locks = LockClient::new(channel.clone());
    let mut elections = ElectionClient::new(channel.clone());
    let unknown_lease = 0x7777_7777;
    let stale = LeaderKey {
        name: b"bad-e".to_vec(),
        key: b"bad-e/1234".to_vec(),
        rev: 2,
        lease,
    };
    let lock_request = |name: &str, lease: i64| LockRequest {
        name: name.into(),
        lease,
    };
    let campaign_request = |name: &str, lease: i64| CampaignRequest {
        name: name.into(),
        lease,
        value: b"v".to_vec(),
    };
    vec![
        ("lock, empty name", outcome(locks.lock(lock_request("", lease)).await)),
        ("lock, lease 0", outcome(locks.lock(lock_request("bad-0", 0)).await)),
        (
            "lock, unknown lease",
            outcome(locks.lock(lock_request("bad", unknown_lease)).await),
        ),
        (
            "unlock, key not held",
            outcome(locks.unlock(UnlockRequest { key: b"bad/1".to_vec() }).await),
        ),
        (
            "unlock, empty key",
            outcome(locks.unlock(UnlockRequest { key: vec![] }).await),
        ),
        (
            "campaign, empty name",
            outcome(elections.campaign(campaign_request("", lease)).await),
        ),
        (
            "campaign, lease 0",
            outcome(elections.campaign(campaign_request("bad-e0", 0)).await),
        ),
        (
            "campaign, unknown lease",
            outcome(elections.campaign(campaign_request("bad-e", unknown_lease)).await),
        ),
        (
            "proclaim, no leader field",
            outcome(
                elections
                    .proclaim(ProclaimRequest {
                        leader: None,
                        value: b"v".to_vec(),
                    })
                    .await,
            ),
        ),
        (
            "proclaim, stale leader",
            outcome(
                elections
                    .proclaim(ProclaimRequest {
                        leader: Some(stale.clone()),
                        value: b"v".to_vec(),
                    })
                    .await,
            ),
        ),
        (
            "resign, no leader field",
            outcome(elections.resign(ResignRequest { leader: None }).await),
        ),
        (
            "resign, stale leader",
            outcome(elections.resign(ResignRequest { leader: Some(stale) }).await),
        ),
        (
            "leader, no candidates",
            outcome(
                elections
                    .leader(LeaderRequest {
                        name: b"bad-none".to_vec(),
                    })
                    .await,
            ),
        ),
        (
            "leader, empty name",
            outcome(elections.leader(LeaderRequest { name: vec![] }).await),
        ),
    ]
}

/// What zongheng answers; where it differs from etcd, the etcd answer follows
/// the `|` (see the module docs of `server::lock` and `server::election`).
const EXPECTED_OUTCOMES: &[(&str, &str)] = &[
    (
        "lock, empty name",
        "InvalidArgument: lock: name is empty; give the lock a name | ok",
    ),
    (
        "lock, lease 0",
        "InvalidArgument: lock: lease is not provided; grant a lease (LeaseGrant), keep it alive and pass its id | ok",
    ),
    (
        "lock, unknown lease",
        "NotFound: etcdserver: requested lease not found | Unknown: etcdserver: requested lease not found",
    ),
    ("unlock, key not held", "ok"),
    ("unlock, empty key", "InvalidArgument: etcdserver: key is not provided | Unknown: etcdserver: key is not provided"),
    (
        "campaign, empty name",
        "InvalidArgument: election: name is empty; give the election a name | ok",
    ),
    (
        "campaign, lease 0",
        "InvalidArgument: election: lease is not provided; grant a lease (LeaseGrant), keep it alive and pass its id | ok",
    ),
    (
        "campaign, unknown lease",
        "NotFound: etcdserver: requested lease not found | Unknown: etcdserver: requested lease not found",
    ),
    (
        "proclaim, no leader field",
        "InvalidArgument: \"leader\" field must be provided | Unknown: \"leader\" field must be provided",
    ),
    ("proclaim, stale leader", "Unknown: election: not leader"),
    (
        "resign, no leader field",
        "InvalidArgument: \"leader\" field must be provided | Unknown: \"leader\" field must be provided",
    ),
    ("resign, stale leader", "ok"),
    ("leader, no candidates", "Unknown: election: no leader"),
    (
        "leader, empty name",
        // etcd reads the prefix "/", where the empty-named lock above is.
        "InvalidArgument: election: name is empty; give the election a name | ok",
    ),
];

fn expected(case: &str, etcd: bool) -> String {
    let (_, expected) = EXPECTED_OUTCOMES
        .iter()
        .find(|(name, _)| *name == case)
        .unwrap_or_else(|| panic!("no expectation for {case:?}"));
    let (ours, theirs) = expected.split_once(" | ").unwrap_or((expected, expected));
    if etcd { theirs } else { ours }.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_disturbs_nothing() {
    let cluster = Cluster::start().await;
    let lease = cluster.grant(0, 60).await;
    // Something to disturb: a held lock and a leader.
    let mut locks = cluster.lock(0).await;
    let held = lock(&mut locks, "bad", lease).await.unwrap();
    let mut elections = cluster.election(0).await;
    let leader = campaign(&mut elections, "bad-e", lease, "l").await.unwrap();
    let mut kv = cluster.kv(1).await;
    let before = (
        keys_under(&mut kv, "bad").await,
        leader_value(&mut elections, "bad-e").await.unwrap(),
    );

    let outcomes = bad_input_outcomes(cluster.channel(1).await, lease).await;
    for (case, outcome) in &outcomes {
        println!("zongheng  {case:28} {outcome}");
    }
    for (case, outcome) in outcomes {
        assert_eq!(outcome, expected(case, false), "{case}");
    }
    let after = (
        keys_under(&mut kv, "bad").await,
        leader_value(&mut elections, "bad-e").await.unwrap(),
    );
    assert_eq!(before, after, "bad input changed nothing");
    assert_eq!(before.0, vec![held, leader.key]);
    cluster.shutdown().await;
}

/// A single-member etcd in a temporary directory, killed on drop.
struct Etcd {
    child: tokio::process::Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Option<Etcd> {
        if std::process::Command::new("etcd").arg("--version").output().is_err() {
            println!("SKIPPED (reference side): etcd not found (apt-get install etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = tokio::process::Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            child,
            endpoint: client_url,
            _dir: dir,
        };
        eventually("etcd to serve", async || {
            let channel = Channel::from_shared(etcd.endpoint.clone())
                .unwrap()
                .connect()
                .await
                .ok()?;
            KvClient::new(channel).put(put("ready", "")).await.ok()
        })
        .await;
        Some(etcd)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_match_a_real_etcd_where_documented() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let channel = Channel::from_shared(etcd.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let outcomes = bad_input_outcomes(channel, lease).await;
    for (case, outcome) in &outcomes {
        println!("etcd      {case:28} {outcome}");
    }
    for (case, outcome) in outcomes {
        assert_eq!(outcome, expected(case, true), "{case}");
    }
    let _ = etcd.child.kill().await;
}

// ---------------------------------------------------------------------------
// etcdctl: its client-side recipes use the same keys as these services.

fn etcdctl_available() -> bool {
    let available = std::process::Command::new("etcdctl")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!("SKIPPED: etcdctl not found (apt-get install etcd-client)");
    }
    available
}

fn etcdctl(endpoint: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn terminate(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal etcdctl");
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(EVENTUALLY, lines.next_line())
        .await
        .expect("etcdctl prints a line")
        .expect("read etcdctl output")
        .expect("etcdctl is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_interoperate_with_the_services() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start().await;
    let endpoint = cluster.endpoint(1);

    // A lock held through the service blocks `etcdctl lock` until unlocked.
    let lease = cluster.grant(0, 60).await;
    let mut locks = cluster.lock(0).await;
    let held = lock(&mut locks, "shared", lease).await.unwrap();
    let command = etcdctl(&endpoint, &["lock", "shared", "echo", "etcdctl-holds-it"])
        .spawn()
        .unwrap();
    tokio::time::sleep(STAYS_BLOCKED * 2).await;
    unlock(&mut locks, &held).await;
    let output = tokio::time::timeout(EVENTUALLY, command.wait_with_output())
        .await
        .expect("etcdctl lock finishes after the unlock")
        .unwrap();
    assert!(
        output.status.success(),
        "etcdctl lock: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("etcdctl-holds-it"));

    // A lock held by `etcdctl lock` blocks the service until etcdctl lets go.
    let mut holder = etcdctl(&endpoint, &["lock", "shared"]).spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let etcdctl_key = next_line(&mut lines).await;
    assert!(
        etcdctl_key.starts_with("shared/"),
        "etcdctl prints its key: {etcdctl_key}"
    );
    let waiter_lease = cluster.grant(2, 60).await;
    let mut waiter_client = cluster.lock(2).await;
    let waiter = tokio::spawn(async move { lock(&mut waiter_client, "shared", waiter_lease).await });
    tokio::time::sleep(STAYS_BLOCKED).await;
    assert!(!waiter.is_finished(), "the service waits for etcdctl's lock");
    terminate(&holder);
    let _ = holder.wait().await;
    let key = finish(waiter, "the lock after etcdctl").await.expect("lock");
    let mut locks = cluster.lock(2).await;
    unlock(&mut locks, &key).await;

    // `etcdctl elect -l` observes what the service's leaders proclaim.
    let mut listener = etcdctl(&endpoint, &["elect", "-l", "shared-e"]).spawn().unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let lease = cluster.grant(0, 60).await;
    let mut elections = cluster.election(0).await;
    let leader = campaign(&mut elections, "shared-e", lease, "from-the-service")
        .await
        .unwrap();
    assert_eq!(next_line(&mut lines).await.as_bytes(), leader.key);
    assert_eq!(next_line(&mut lines).await, "from-the-service");
    elections
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: "proclaimed".into(),
        })
        .await
        .unwrap();
    assert_eq!(next_line(&mut lines).await.as_bytes(), leader.key);
    assert_eq!(next_line(&mut lines).await, "proclaimed");
    let _ = listener.kill().await;
    elections.resign(ResignRequest { leader: Some(leader) }).await.unwrap();

    // A leader elected by `etcdctl elect` is what Leader and Observe report.
    let mut watcher = cluster.election(2).await;
    let mut observed = watcher
        .observe(LeaderRequest {
            name: "shared-e".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut campaigner = etcdctl(&endpoint, &["elect", "shared-e", "from-etcdctl"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(campaigner.stdout.take().unwrap()).lines();
    let (_, key, value) = next_observed(&mut observed).await;
    assert!(key.starts_with(b"shared-e/"));
    assert_eq!(value, "from-etcdctl");
    assert_eq!(leader_value(&mut watcher, "shared-e").await.unwrap(), "from-etcdctl");
    // etcdctl resigns on SIGTERM only once it has printed its key: a signal
    // before that cancels its last read and it exits without resigning.
    assert_eq!(next_line(&mut lines).await.as_bytes(), key);
    assert_eq!(next_line(&mut lines).await, "from-etcdctl");
    terminate(&campaigner);
    let _ = campaigner.wait().await;
    eventually("etcdctl to resign", async || {
        leader_value(&mut watcher, "shared-e").await.err().map(|status| {
            assert_eq!(status.message(), "election: no leader");
        })
    })
    .await;
    cluster.shutdown().await;
}
