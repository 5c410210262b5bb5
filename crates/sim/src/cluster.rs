//! [`SimCluster`]: a zongheng cluster on turmoil hosts, with in-memory disks
//! that outlive crashes, and a [`Nemesis`] handle that code inside the
//! simulation uses to inject faults and to look at the cluster as an oracle.
//!
//! ## Hosts
//! Each host `nK` runs `zongheng::node::start` with [`SimTransport`] and its
//! disk, a [`MemEngine`] behind the auditor of [`crate::disk`]. `n1..nN` are
//! the initial voters; the hosts after them are **spares**: registered with
//! turmoil (so they have an address) but idle until the nemesis adds them to
//! the cluster (`member add`, then start with `--initial-cluster-state
//! existing`). What a host runs is kept in a slot the cluster shares with its
//! host software, so a restart reads the current slot: the same disk after a
//! crash, a fresh one after a wipe, a joining configuration after a re-add.
//!
//! ## Faults and where they are applied
//! turmoil applies partitions, holds and repairs from inside the simulation,
//! so the nemesis does those at once. Crashes, restarts, wipes, link latency
//! and message loss can only be changed through the `Sim` handle, from
//! outside: the nemesis queues them and [`SimCluster::run`] carries them out
//! between two simulation steps, then wakes the client that asked. Both
//! happen at a simulated instant the seed decides, so they replay.
//!
//! A crash ([`SimCluster::crash`]) stops the host's software and then drops
//! its disk's unsynced writes, the worst a power loss could do.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use openraft::ServerState;
use tokio::sync::oneshot;
use zongheng::config::{ClusterState, NodeConfig};
use zongheng::meta::group::member_id;
use zongheng::meta::MetaGroup;
use zongheng::raft::RaftSettings;
use zongheng::server::etcd::ClientLimits;
use zongheng::store::shard_map::ShardMap;
use zongheng::store::StoreGroups;
use zongheng_storage::wal::{MemFiles, Wal};
use zongheng_storage::{Engine, MemEngine};

use crate::disk::AuditedEngine;
use crate::invariants::{Invariant, Monitor, NodeProgress};
use crate::trace::Trace;
use crate::transport::SimTransport;

/// Port every simulated node serves clients (the etcd v3 API) on.
pub const CLIENT_PORT: u16 = 2379;
/// Port every simulated node serves peers (Raft, forwarding) on.
pub const PEER_PORT: u16 = 2380;
/// The `--initial-cluster-token` of simulated clusters; node ids derive from it.
pub const CLUSTER_TOKEN: &str = "zongheng-sim";
/// The turmoil host name of the simulated client of single-client scenarios.
pub const CLIENT_HOST: &str = "client";
/// Where simulated time starts: a fixed instant, so nothing in a run depends on
/// when it ran (turmoil's default epoch is the wall clock).
const EPOCH_SECS: u64 = 1_700_000_000;
/// Bytes per Raft log segment of a simulated host: small (a few dozen
/// entries), so that runs rotate segments, rewrite groups forward and remove
/// segments often.
const LOG_SEGMENT_BYTES: u64 = 4 * 1024;

/// How many bytes past its last fsync a crashed host's log keeps: from a
/// hash of the host and the time, so a seed replays the same crashes.
fn torn_bytes(name: &str, elapsed: std::time::Duration) -> usize {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in name.bytes().chain(elapsed.as_nanos().to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Half the crashes cut within the first record or two (torn), half keep
    // up to a few whole ones.
    let bound = if hash & 1 == 0 { 64 } else { 1_024 };
    ((hash >> 1) % bound) as usize
}

/// Pairs per engine scan when fingerprinting (the engine's own cap is 65 536).
const FINGERPRINT_SCAN_PAIRS: usize = 4_096;

/// What to simulate: the seed, the cluster's size and timing, the network.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seeds turmoil (latencies, host runtimes) and openraft's election timers.
    pub seed: u64,
    /// Number of initial voters, named `n1`..`nN`.
    pub node_count: usize,
    /// Idle hosts after the voters, for membership changes.
    pub spare_count: usize,
    pub raft: RaftSettings,
    /// The run fails if the clients have not finished within this simulated time.
    pub simulation_duration: Duration,
    /// Simulated time per step; every host runs once per step.
    pub tick: Duration,
    pub min_message_latency: Duration,
    pub max_message_latency: Duration,
    /// Audit every disk write (see [`crate::disk`]); off only to show that
    /// the end-to-end checks catch what the audit would have caught first.
    pub audit_disk: bool,
    /// Data-store partitions (`--store-partitions`; 0: no data store).
    pub store_partitions: u32,
    /// Every node's store settings (dead-after threshold, moves at once).
    pub store: zongheng::config::StoreSettings,
}

impl SimOptions {
    /// Three nodes with short Raft timings (50 ms heartbeat, 300-600 ms
    /// election timeout), no spares, 1-10 ms links, 1 ms ticks, at most 3
    /// simulated minutes.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            node_count: 3,
            spare_count: 0,
            raft: RaftSettings {
                heartbeat_ms: 50,
                election_timeout_ms: 300,
                snapshot_count: 10_000,
                snapshot_catchup_entries: 5_000,
            },
            simulation_duration: Duration::from_secs(180),
            tick: Duration::from_millis(1),
            min_message_latency: Duration::from_millis(1),
            max_message_latency: Duration::from_millis(10),
            audit_disk: true,
            store_partitions: 0,
            store: zongheng::config::StoreSettings::default(),
        }
    }
}

/// A fault [`SimCluster::run`] applies from outside the simulation.
#[derive(Debug, Clone)]
enum HostFault {
    /// Stop the host's software and drop its disk's unsynced writes.
    Crash(String),
    /// Start the host's software again, from its disk and its slot's configuration.
    Restart(String),
    /// Stop the host, give it an empty disk and leave it idle (a wiped data dir).
    Wipe(String),
    /// Set what the host runs from now on and (re)start it.
    Start(String, Box<NodeConfig>),
    /// Fix the latency of the links between `a` and `b` (`None`: back to the
    /// simulation's default range).
    LinkLatency {
        a: Vec<String>,
        b: Vec<String>,
        latency: Option<Duration>,
    },
    /// Drop messages on the links between `a` and `b` with probability `rate`.
    LinkFailRate { a: Vec<String>, b: Vec<String>, rate: f64 },
}

struct FaultRequest {
    fault: HostFault,
    done: oneshot::Sender<()>,
}

/// What one host runs and keeps.
struct HostSlot {
    /// Its disk: the storage engine and the Raft log's files; kept across
    /// crashes, replaced by a wipe.
    engine: MemEngine,
    log: MemFiles,
    /// What to run at the next start; `None` keeps the host idle.
    config: Option<NodeConfig>,
    /// The running node's `meta` group, from its start until it stops.
    node: Option<Arc<MetaGroup>>,
    /// The running node's data-store replicas, from its start until it stops.
    store: Option<Arc<StoreGroups>>,
    /// Starts so far: tells two lifetimes of the host apart in traces.
    incarnation: u64,
    /// The running software's network, powered off just before a crash.
    transport: Option<SimTransport>,
}

type Slots = Arc<Mutex<BTreeMap<String, HostSlot>>>;

fn lock(slots: &Slots) -> MutexGuard<'_, BTreeMap<String, HostSlot>> {
    slots.lock().expect("host slots lock poisoned")
}

/// A running node as the oracle sees it (its own Raft metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub host: String,
    pub node_id: u64,
    pub state: ServerState,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
}

impl NodeView {
    pub fn is_leader(&self) -> bool {
        self.state == ServerState::Leader
    }
}

/// A running node's state machine at one instant: the applied index and a
/// digest of the whole application state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    pub host: String,
    pub applied: u64,
    pub digest: u64,
}

/// The handle code inside the simulation uses: faults (partitions, crashes,
/// wipes, link latency and loss, restarts with another configuration) and
/// the oracle's view of every node.
#[derive(Clone)]
pub struct Nemesis {
    requests: mpsc::Sender<FaultRequest>,
    slots: Slots,
    hosts: Vec<String>,
    clients: Vec<String>,
    options: SimOptions,
}

impl Nemesis {
    /// Drop every message between each host of `a` and each host of `b`, both
    /// ways, from now on. Call it from a turmoil client or host.
    pub fn partition<A: AsRef<str>, B: AsRef<str>>(&self, a: &[A], b: &[B]) {
        for left in a {
            for right in b {
                if left.as_ref() != right.as_ref() {
                    turmoil::partition(left.as_ref(), right.as_ref());
                }
            }
        }
    }

    /// Undo [`Nemesis::partition`] between `a` and `b` (held messages stay held).
    pub fn repair<A: AsRef<str>, B: AsRef<str>>(&self, a: &[A], b: &[B]) {
        for left in a {
            for right in b {
                if left.as_ref() != right.as_ref() {
                    turmoil::repair(left.as_ref(), right.as_ref());
                }
            }
        }
    }

    /// Hold (queue, undelivered) every message between `a` and `b` until
    /// [`Nemesis::release`].
    pub fn hold<A: AsRef<str>, B: AsRef<str>>(&self, a: &[A], b: &[B]) {
        for left in a {
            for right in b {
                if left.as_ref() != right.as_ref() {
                    turmoil::hold(left.as_ref(), right.as_ref());
                }
            }
        }
    }

    /// Make the links between `a` and `b` healthy and deliver what they held.
    pub fn release<A: AsRef<str>, B: AsRef<str>>(&self, a: &[A], b: &[B]) {
        for left in a {
            for right in b {
                if left.as_ref() != right.as_ref() {
                    turmoil::release(left.as_ref(), right.as_ref());
                }
            }
        }
    }

    /// Crash host `name` (power loss: unsynced writes are lost). Returns once
    /// the host is down; it stays down until [`Nemesis::restart`].
    pub async fn crash(&self, name: &str) {
        self.request(HostFault::Crash(name.to_string())).await;
    }

    /// Start host `name` again from what its disk made durable.
    pub async fn restart(&self, name: &str) {
        self.request(HostFault::Restart(name.to_string())).await;
    }

    /// Stop host `name` and replace its disk with an empty one; it stays idle
    /// until [`Nemesis::start`].
    pub async fn wipe(&self, name: &str) {
        self.request(HostFault::Wipe(name.to_string())).await;
    }

    /// (Re)start host `name` with `config` (e.g. [`Nemesis::join_config`]).
    pub async fn start(&self, name: &str, config: NodeConfig) {
        self.request(HostFault::Start(name.to_string(), Box::new(config))).await;
    }

    /// Fix the latency of every link between `a` and `b` to `latency`.
    pub async fn set_latency(&self, a: &[String], b: &[String], latency: Duration) {
        self.request(HostFault::LinkLatency {
            a: a.to_vec(),
            b: b.to_vec(),
            latency: Some(latency),
        })
        .await;
    }

    /// Give the links between `a` and `b` the simulation's default latencies again.
    pub async fn reset_latency(&self, a: &[String], b: &[String]) {
        self.request(HostFault::LinkLatency {
            a: a.to_vec(),
            b: b.to_vec(),
            latency: None,
        })
        .await;
    }

    /// Drop each message between `a` and `b` with probability `rate` (0 stops it).
    pub async fn set_fail_rate(&self, a: &[String], b: &[String], rate: f64) {
        self.request(HostFault::LinkFailRate {
            a: a.to_vec(),
            b: b.to_vec(),
            rate,
        })
        .await;
    }

    async fn request(&self, fault: HostFault) {
        let (done, applied) = oneshot::channel();
        self.requests
            .send(FaultRequest {
                fault: fault.clone(),
                done,
            })
            .expect("the SimCluster outlives its simulation");
        applied
            .await
            .unwrap_or_else(|_| panic!("{fault:?} was not applied: is the simulation driven by SimCluster::run?"));
    }

    /// Every node host, voters first, then spares.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The turmoil hosts of clients (see [`SimCluster::set_client_hosts`]).
    pub fn client_hosts(&self) -> &[String] {
        &self.clients
    }

    /// The configuration a host uses to join a running cluster after a
    /// `member add` of its peer URL: `existing`, discovering its id from
    /// every other host (`--initial-cluster` only serves discovery then).
    pub fn join_config(&self, name: &str) -> NodeConfig {
        let mut config = node_config(&self.options, &self.hosts, name);
        config.initial_cluster_state = ClusterState::Existing;
        config.initial_cluster = self
            .hosts
            .iter()
            .map(|member| (member.clone(), vec![format!("http://{member}:{PEER_PORT}")]))
            .collect();
        config
    }

    /// Each running node's view of itself, in host order.
    pub fn views(&self) -> Vec<NodeView> {
        let slots = lock(&self.slots);
        slots
            .iter()
            .filter_map(|(host, slot)| slot.node.as_ref().map(|node| view(host, node)))
            .collect()
    }

    /// The running node that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeView> {
        self.views()
            .into_iter()
            .filter(NodeView::is_leader)
            .max_by_key(|view| view.term)
    }

    /// Whether host `name` runs a node now.
    pub fn is_running(&self, name: &str) -> bool {
        lock(&self.slots).get(name).is_some_and(|slot| slot.node.is_some())
    }

    /// Whether host `name` is set to run (a member not crashed or removed).
    pub fn is_configured(&self, name: &str) -> bool {
        lock(&self.slots).get(name).is_some_and(|slot| slot.config.is_some())
    }

    /// The host running node `id`, if one does.
    pub fn host_of(&self, id: u64) -> Option<String> {
        self.views()
            .into_iter()
            .find(|view| view.node_id == id)
            .map(|view| view.host)
    }

    /// The shard map as the `meta` leader of the highest term applied it
    /// (`None`: no leader running, or no data store created).
    pub fn shard_map(&self) -> Option<ShardMap> {
        let leader = self.leader()?;
        let slots = lock(&self.slots);
        let node = slots.get(&leader.host)?.node.as_ref()?;
        let map = node.read(|app| app.shard_map.clone());
        map.is_created().then_some(map)
    }

    /// Whether the data store could lose one node now without a partition
    /// losing its majority: no store at all, or every partition has its R
    /// replicas (or every store node, if fewer), all on running nodes, and
    /// no move under way. The nemesis plays an operator who waits for
    /// re-replication to finish before taking another disk away.
    pub fn store_is_stable(&self) -> bool {
        if self.options.store_partitions == 0 {
            return true;
        }
        let Some(map) = self.shard_map() else {
            return false;
        };
        let running: BTreeSet<u64> = self.views().iter().map(|view| view.node_id).collect();
        let store_nodes = map
            .nodes
            .values()
            .filter(|node| node.weight > 0 && !node.draining)
            .count();
        let wanted = (map.replication as usize).min(store_nodes).max(1);
        map.records.iter().all(|record| {
            record.moving.is_none()
                && record.replicas.len() >= wanted
                && record.replicas.iter().all(|replica| running.contains(&replica.node))
        })
    }

    /// Every running replica of `partition`: (host, replica id, applied
    /// index, digest of the partition's state), all taken at this instant.
    pub fn partition_digests(&self, partition: u32) -> Vec<(String, u64, u64, u64)> {
        let slots = lock(&self.slots);
        slots
            .iter()
            .filter_map(|(host, slot)| {
                let group = slot.store.as_ref()?.get(partition)?;
                let applied = group.state.read().expect("state machine lock poisoned");
                Some((
                    host.clone(),
                    group.replica_id,
                    applied.last_applied.as_ref().map_or(0, |log_id| log_id.index),
                    applied.app.digest(),
                ))
            })
            .collect()
    }

    /// How each running replica of `partition` sees its group (for traces of
    /// failing runs): host, replica id, Raft state, term, leader, last log
    /// index, applied index, and the voters and learners it knows.
    pub fn partition_states(&self, partition: u32) -> Vec<String> {
        let slots = lock(&self.slots);
        slots
            .iter()
            .filter_map(|(host, slot)| {
                let group = slot.store.as_ref()?.get(partition)?;
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                Some(format!(
                    "{host} {:x} {:?} term {} leader {:x?} log {:?} applied {:?} voters {:x?} learners {:x?} joint {}",
                    group.replica_id,
                    metrics.state,
                    metrics.current_term,
                    metrics.current_leader,
                    metrics.last_log_index,
                    metrics.last_applied.as_ref().map(|log_id| log_id.index),
                    membership.voter_ids().collect::<Vec<_>>(),
                    membership.learner_ids().collect::<Vec<_>>(),
                    membership.get_joint_config().len() > 1,
                ))
            })
            .collect()
    }

    /// The state digests of the running nodes, all taken at this instant.
    pub fn digests(&self) -> Vec<StateDigest> {
        let slots = lock(&self.slots);
        slots
            .iter()
            .filter_map(|(host, slot)| {
                slot.node.as_ref().map(|node| {
                    let applied = node.state.read().expect("state machine lock poisoned");
                    StateDigest {
                        host: host.clone(),
                        applied: applied.last_applied.as_ref().map_or(0, |log_id| log_id.index),
                        digest: applied.app.digest(),
                    }
                })
            })
            .collect()
    }
}

fn view(host: &str, node: &MetaGroup) -> NodeView {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    NodeView {
        host: host.to_string(),
        node_id: metrics.id,
        state: metrics.state,
        term: metrics.current_term,
        leader: metrics.current_leader,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        last_applied: metrics.last_applied.as_ref().map_or(0, |log_id| log_id.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
    }
}

/// Node `name`'s configuration for bootstrapping with the initial voters,
/// built directly (`NodeConfig::from_args` wants IP addresses in URLs;
/// turmoil hosts are dialled by name).
fn node_config(options: &SimOptions, hosts: &[String], name: &str) -> NodeConfig {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    NodeConfig {
        name: name.to_string(),
        data_dir: PathBuf::from(format!("/simulated/{name}")),
        listen_client: SocketAddr::new(any, CLIENT_PORT),
        listen_peer: SocketAddr::new(any, PEER_PORT),
        listen_http: None,
        advertise_client_urls: vec![format!("http://{name}:{CLIENT_PORT}")],
        advertise_peer_urls: vec![format!("http://{name}:{PEER_PORT}")],
        initial_cluster: hosts
            .iter()
            .take(options.node_count)
            .map(|member| (member.clone(), vec![format!("http://{member}:{PEER_PORT}")]))
            .collect(),
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: CLUSTER_TOKEN.to_string(),
        raft: options.raft.clone(),
        limits: ClientLimits::default(),
        store_partitions: options.store_partitions,
        store: options.store.clone(),
        // A simulated host runs on the simulator's one thread.
        worker_threads: 1,
    }
}

/// A simulated cluster: its hosts' slots, the faults queued for it, its
/// traces and invariant monitor. One `SimCluster` drives one `turmoil::Sim`.
pub struct SimCluster {
    options: SimOptions,
    /// Every host: voters `n1..nN`, then spares.
    hosts: Vec<String>,
    slots: Slots,
    fault_sender: mpsc::Sender<FaultRequest>,
    fault_receiver: mpsc::Receiver<FaultRequest>,
    /// The turmoil hosts of clients, which node-wide link faults also reach.
    clients: Vec<String>,
    raft_trace: Trace,
    monitor: Monitor,
}

impl SimCluster {
    pub fn new(options: SimOptions) -> Self {
        assert!(options.node_count >= 1, "a cluster needs at least one node");
        let hosts: Vec<String> = (1..=options.node_count + options.spare_count)
            .map(|index| format!("n{index}"))
            .collect();
        let slots: BTreeMap<String, HostSlot> = hosts
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let config = (index < options.node_count).then(|| node_config(&options, &hosts, name));
                (
                    name.clone(),
                    HostSlot {
                        engine: MemEngine::new(),
                        log: MemFiles::with_segment_bytes(LOG_SEGMENT_BYTES),
                        config,
                        node: None,
                        store: None,
                        incarnation: 0,
                        transport: None,
                    },
                )
            })
            .collect();
        let (fault_sender, fault_receiver) = mpsc::channel();
        Self {
            options,
            hosts,
            slots: Arc::new(Mutex::new(slots)),
            fault_sender,
            fault_receiver,
            clients: Vec::new(),
            raft_trace: Trace::default(),
            monitor: Monitor::default(),
        }
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// The initial voters, `n1`..`nN`, in order.
    pub fn names(&self) -> &[String] {
        &self.hosts[..self.options.node_count]
    }

    /// Every host: the initial voters, then the spares.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The disk of host `name` now (a wipe replaces it).
    pub fn engine(&self, name: &str) -> MemEngine {
        lock(&self.slots)
            .get(name)
            .unwrap_or_else(|| panic!("no simulated host {name:?}"))
            .engine
            .clone()
    }

    /// The Raft id initial voter `name` bootstraps with. It is the id
    /// `zongheng::node` derives from the cluster token and the name; a test
    /// can confirm it with the `member_id` of a response header. (A host
    /// re-added after a wipe gets a new id; see [`NodeView::node_id`].)
    pub fn node_id(&self, name: &str) -> u64 {
        member_id(&format!("member/{CLUSTER_TOKEN}/{name}"), 0)
    }

    /// The host name of initial voter `id`.
    pub fn name_of(&self, id: u64) -> Option<&str> {
        self.names()
            .iter()
            .find(|name| self.node_id(name) == id)
            .map(String::as_str)
    }

    /// Node `name`'s bootstrap configuration.
    pub fn node_config(&self, name: &str) -> NodeConfig {
        node_config(&self.options, &self.hosts, name)
    }

    /// Every change of a node's Raft role, term, leader, vote, last log index
    /// or applied index, as the node's metrics reported it, in simulated
    /// time: the fine-grained record two runs of a seed are compared by.
    pub fn raft_trace(&self) -> &Trace {
        &self.raft_trace
    }

    /// The invariant checkers of this cluster and what they found.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Name the turmoil hosts the caller will add as clients, so that faults
    /// on all of a node's links (latency, pauses) reach them too. Call it
    /// before [`SimCluster::nemesis`].
    pub fn set_client_hosts(&mut self, clients: Vec<String>) {
        self.clients = clients;
    }

    /// A handle for code inside the simulation: faults and the oracle.
    pub fn nemesis(&self) -> Nemesis {
        Nemesis {
            requests: self.fault_sender.clone(),
            slots: self.slots.clone(),
            hosts: self.hosts.clone(),
            clients: self.clients.clone(),
            options: self.options.clone(),
        }
    }

    /// Seed this thread's openraft RNG, build the turmoil simulation with the
    /// seed and the options' limits, and register every host. Add clients with
    /// `sim.client(...)`, then call [`SimCluster::run`].
    pub fn build_sim(&self) -> turmoil::Sim<'static> {
        // Every host runs on this thread, so one thread-local generator serves
        // all their election timers, drawn in the simulation's order.
        zongheng::raft::runtime::seed_thread_rng(self.options.seed);
        let mut sim = turmoil::Builder::new()
            .rng_seed(self.options.seed)
            .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
            .simulation_duration(self.options.simulation_duration)
            .tick_duration(self.options.tick)
            .min_message_latency(self.options.min_message_latency)
            .max_message_latency(self.options.max_message_latency)
            .build();
        for name in &self.hosts {
            let host = name.clone();
            let slots = self.slots.clone();
            let raft_trace = self.raft_trace.clone();
            let monitor = self.monitor.clone();
            let audit = self.options.audit_disk;
            sim.host(name.as_str(), move || {
                host_software(host.clone(), slots.clone(), raft_trace.clone(), monitor.clone(), audit)
            });
        }
        sim
    }

    /// Cut the power of host `name`'s current software: its connections
    /// are dropped without a word (see [`SimTransport`]).
    fn power_off(&self, name: &str) {
        let mut slots = lock(&self.slots);
        let slot = slots
            .get_mut(name)
            .unwrap_or_else(|| panic!("no simulated host {name:?}"));
        slot.node = None;
        slot.store = None;
        if let Some(transport) = slot.transport.take() {
            transport.power_off();
        }
    }

    /// Crash host `name`: stop its software, then lose its unsynced writes.
    pub fn crash(&self, sim: &mut turmoil::Sim<'_>, name: &str) {
        self.power_off(name);
        sim.crash(name);
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(name).expect("crash of an unknown host");
        slot.node = None;
        slot.store = None;
        slot.engine.crash();
        // A torn tail: the log keeps a few bytes past its last fsync, a
        // different number each crash (but the same in a rerun of the seed).
        slot.log.crash(torn_bytes(name, sim.elapsed()));
        drop(slots);
        self.raft_trace.record_at(sim.elapsed(), format!("{name} crashed"));
    }

    /// Start host `name` again on its disk and configuration.
    pub fn restart(&self, sim: &mut turmoil::Sim<'_>, name: &str) {
        self.power_off(name);
        sim.bounce(name);
    }

    fn wipe(&self, sim: &mut turmoil::Sim<'_>, name: &str) {
        self.power_off(name);
        sim.crash(name);
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(name).expect("wipe of an unknown host");
        slot.node = None;
        slot.store = None;
        slot.config = None;
        slot.engine = MemEngine::new();
        slot.log = MemFiles::with_segment_bytes(LOG_SEGMENT_BYTES);
        drop(slots);
        self.raft_trace.record_at(sim.elapsed(), format!("{name} wiped"));
    }

    fn start(&self, sim: &mut turmoil::Sim<'_>, name: &str, config: NodeConfig) {
        self.power_off(name);
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(name).expect("start of an unknown host");
        slot.node = None;
        slot.store = None;
        slot.config = Some(config);
        drop(slots);
        sim.bounce(name);
    }

    fn apply(&self, sim: &mut turmoil::Sim<'_>, fault: HostFault) {
        match fault {
            HostFault::Crash(name) => self.crash(sim, &name),
            HostFault::Restart(name) => self.restart(sim, &name),
            HostFault::Wipe(name) => self.wipe(sim, &name),
            HostFault::Start(name, config) => self.start(sim, &name, *config),
            HostFault::LinkLatency { a, b, latency } => {
                for left in &a {
                    for right in b.iter().filter(|right| *right != left) {
                        match latency {
                            Some(latency) => sim.set_link_latency(left.as_str(), right.as_str(), latency),
                            None => {
                                sim.set_link_latency(left.as_str(), right.as_str(), self.options.min_message_latency);
                                sim.set_link_max_message_latency(
                                    left.as_str(),
                                    right.as_str(),
                                    self.options.max_message_latency,
                                );
                            }
                        }
                    }
                }
            }
            HostFault::LinkFailRate { a, b, rate } => {
                for left in &a {
                    for right in b.iter().filter(|right| *right != left) {
                        sim.set_link_fail_rate(left.as_str(), right.as_str(), rate);
                    }
                }
            }
        }
    }

    /// Step `sim` until every client has finished, applying the faults the
    /// clients queue through their [`Nemesis`] between steps. Fails if a host
    /// or client fails or the simulated time runs out.
    pub fn run(&self, sim: &mut turmoil::Sim<'_>) -> turmoil::Result {
        loop {
            let finished = sim.step()?;
            while let Ok(request) = self.fault_receiver.try_recv() {
                self.apply(sim, request.fault);
                // The client may have given up waiting; nothing to tell it then.
                let _ = request.done.send(());
            }
            if finished {
                return Ok(());
            }
        }
    }

    /// A hash of everything on host `name`'s disk (visible state, in key
    /// order): equal fingerprints mean byte-identical engines.
    pub fn fingerprint(&self, name: &str) -> u64 {
        let engine = self.engine(name);
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for byte in (bytes.len() as u64).to_be_bytes().iter().chain(bytes) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = engine
                .scan(&start, None, FINGERPRINT_SCAN_PAIRS)
                .expect("in-memory scans do not fail");
            for (key, value) in &page {
                mix(key);
                mix(value);
            }
            match page.last() {
                Some((last, _)) if page.len() == FINGERPRINT_SCAN_PAIRS => {
                    start = last.clone();
                    start.push(0);
                }
                _ => return hash,
            }
        }
    }
}

/// What host `name` runs each time turmoil starts it: the node its slot
/// says (or nothing, for an idle spare), watched by the invariant monitor,
/// until the node is removed from the cluster.
async fn host_software(
    name: String,
    slots: Slots,
    raft_trace: Trace,
    monitor: Monitor,
    audit: bool,
) -> turmoil::Result {
    let (config, engine, log, incarnation) = {
        let mut slots = lock(&slots);
        let slot = slots.get_mut(&name).expect("every host has a slot");
        slot.incarnation += 1;
        (
            slot.config.clone(),
            slot.engine.clone(),
            slot.log.clone(),
            slot.incarnation,
        )
    };
    let Some(config) = config else {
        // An idle spare, or a removed or wiped member waiting for a new start.
        std::future::pending::<()>().await;
        return Ok(());
    };
    raft_trace.record(format!(
        "{name} starting ({incarnation}, {:?})",
        config.initial_cluster_state
    ));
    let disk: Arc<dyn Engine> = if audit {
        AuditedEngine::new(engine.clone(), &name, monitor.clone())
    } else {
        Arc::new(engine.clone())
    };
    let transport = SimTransport::default();
    lock(&slots).get_mut(&name).expect("every host has a slot").transport = Some(transport.clone());
    let started = async {
        let wal = Arc::new(Wal::open(Arc::new(log)).map_err(|error| format!("cannot open its log: {error}"))?);
        let node = zongheng::node::start(config, Arc::new(transport), disk, wal.clone())
            .await
            .map_err(|error| format!("failed to start: {error}"))?;
        Ok::<_, String>((wal, node))
    };
    let (wal, node) = match started.await {
        Ok(started) => started,
        Err(problem) => {
            let detail = format!("{name} (start {incarnation}) {problem}");
            monitor.violation(Invariant::HostFailed, detail.clone());
            raft_trace.record(detail);
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    {
        let mut slots = lock(&slots);
        let slot = slots.get_mut(&name).expect("every host has a slot");
        slot.node = Some(node.meta.clone());
        slot.store = Some(node.store.clone());
    }
    raft_trace.record(format!("{name} started ({incarnation}) as {:x}", node.node_id));
    tokio::select! {
        // Raft stopping by itself is fatal; it also ends the watcher, so
        // look at it first.
        biased;
        fatal = node.fatal() => {
            let detail = format!("{name}: raft stopped: {fatal}");
            raft_trace.record(detail.clone());
            monitor.violation(Invariant::HostFailed, detail);
        }
        _ = node.removed() => {
            raft_trace.record(format!("{name} learned it was removed"));
        }
        _ = watch_node(&name, &node.meta, &wal, &raft_trace, &monitor) => {}
    }
    // A removed member stops serving (as etcd's does); the nemesis wipes the
    // host before it joins again.
    {
        let mut slots = lock(&slots);
        let slot = slots.get_mut(&name).expect("every host has a slot");
        slot.node = None;
        slot.store = None;
        slot.config = None;
    }
    node.shutdown().await;
    std::future::pending::<()>().await;
    Ok(())
}

/// Record every change of the node's Raft state that matters for replaying a
/// run (not the heartbeat-by-heartbeat replication progress), and feed each
/// change to the invariant monitor. Returns when the node's Raft stops.
async fn watch_node(name: &str, node: &MetaGroup, wal: &Wal, trace: &Trace, monitor: &Monitor) {
    let mut metrics = node.raft.metrics();
    let mut last = String::new();
    let mut progress = NodeProgress::default();
    loop {
        let current = metrics.borrow_and_update().clone();
        let leader = current
            .current_leader
            .map(|id| format!("{id:x}"))
            .unwrap_or_else(|| "none".into());
        let summary = format!(
            "{name} {:?} term {} leader {leader} vote {} last_log {:?} applied {:?}",
            current.state,
            current.current_term,
            current.vote,
            current.last_log_index,
            current.last_applied.as_ref().map(|log_id| log_id.index),
        );
        if summary != last {
            trace.record(summary.clone());
            last = summary;
        }
        monitor.observe(name, &current, wal, &mut progress);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
