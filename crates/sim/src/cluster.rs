//! [`SimCluster`]: a zongheng cluster on turmoil hosts, with in-memory disks
//! that outlive crashes, and a [`Nemesis`] that client code uses to inject
//! faults.
//!
//! Each host `nK` runs `zongheng::node::start` with [`SimTransport`] and a
//! [`MemEngine`]. The cluster keeps every engine handle, so a host that is
//! crashed and bounced starts from exactly what it made durable: the crash
//! ([`SimCluster::crash`]) stops the host's software and then drops the
//! engine's unsynced writes, the worst a power loss could do.
//!
//! Faults that turmoil applies from inside the simulation (partitions and
//! repairs) the [`Nemesis`] applies at once. Crashes and restarts can only be
//! done from outside, through the `Sim` handle, so the nemesis queues them and
//! [`SimCluster::run`] carries them out between two simulation steps, then
//! wakes the client that asked.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use zongheng::config::{ClusterState, NodeConfig};
use zongheng::meta::group::member_id;
use zongheng::node::NodeHandle;
use zongheng::raft::RaftSettings;
use zongheng::server::etcd::ClientLimits;
use zongheng_storage::{Engine, MemEngine};

use crate::trace::Trace;
use crate::transport::SimTransport;

/// Port every simulated node serves clients (the etcd v3 API) on.
pub const CLIENT_PORT: u16 = 2379;
/// Port every simulated node serves peers (Raft, forwarding) on.
pub const PEER_PORT: u16 = 2380;
/// The `--initial-cluster-token` of simulated clusters; node ids derive from it.
pub const CLUSTER_TOKEN: &str = "zongheng-sim";
/// The turmoil host name of the simulated client.
pub const CLIENT_HOST: &str = "client";
/// Where simulated time starts: a fixed instant, so nothing in a run depends on
/// when it ran (turmoil's default epoch is the wall clock).
const EPOCH_SECS: u64 = 1_700_000_000;
/// Pairs per engine scan when fingerprinting (the engine's own cap is 65 536).
const FINGERPRINT_SCAN_PAIRS: usize = 4_096;

/// What to simulate: the seed, the cluster's size and timing, the network.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seeds turmoil (latencies, host runtimes) and openraft's election timers.
    pub seed: u64,
    /// Number of voters, named `n1`..`nN`.
    pub node_count: usize,
    pub raft: RaftSettings,
    /// The run fails if the client has not finished within this simulated time.
    pub simulation_duration: Duration,
    /// Simulated time per step; every host runs once per step.
    pub tick: Duration,
    pub min_message_latency: Duration,
    pub max_message_latency: Duration,
}

impl SimOptions {
    /// Three nodes with short Raft timings (50 ms heartbeat, 300-600 ms
    /// election timeout), 1-10 ms links, 1 ms ticks, at most 3 simulated
    /// minutes.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            node_count: 3,
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
        }
    }
}

/// A fault the client asks [`SimCluster::run`] to apply from outside the
/// simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostFault {
    /// Stop the host's software and drop its engine's unsynced writes.
    Crash(String),
    /// Start the host's software again on the same engine.
    Restart(String),
}

struct FaultRequest {
    fault: HostFault,
    done: oneshot::Sender<()>,
}

/// Injects faults from inside the simulation (the client's code).
#[derive(Clone)]
pub struct Nemesis {
    requests: mpsc::Sender<FaultRequest>,
}

impl Nemesis {
    /// Drop every message between each host of `a` and each host of `b`, both
    /// ways, from now on. Call it from a turmoil client or host.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        for left in a {
            for right in b {
                turmoil::partition(*left, *right);
            }
        }
    }

    /// Undo [`Nemesis::partition`] between `a` and `b`.
    pub fn repair(&self, a: &[&str], b: &[&str]) {
        for left in a {
            for right in b {
                turmoil::repair(*left, *right);
            }
        }
    }

    /// Crash host `name` (power loss: unsynced writes are lost). Returns once
    /// the host is down; it stays down until [`Nemesis::restart`].
    pub async fn crash(&self, name: &str) {
        self.request(HostFault::Crash(name.to_string())).await;
    }

    /// Start host `name` again from what its engine made durable.
    pub async fn restart(&self, name: &str) {
        self.request(HostFault::Restart(name.to_string())).await;
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
}

/// A simulated cluster: its nodes' configurations and engines, and the
/// faults queued for it. One `SimCluster` drives one `turmoil::Sim`.
pub struct SimCluster {
    options: SimOptions,
    names: Vec<String>,
    engines: BTreeMap<String, MemEngine>,
    fault_sender: mpsc::Sender<FaultRequest>,
    fault_receiver: mpsc::Receiver<FaultRequest>,
    raft_trace: Trace,
}

impl SimCluster {
    pub fn new(options: SimOptions) -> Self {
        assert!(options.node_count >= 1, "a cluster needs at least one node");
        let names: Vec<String> = (1..=options.node_count).map(|index| format!("n{index}")).collect();
        let engines = names.iter().map(|name| (name.clone(), MemEngine::new())).collect();
        let (fault_sender, fault_receiver) = mpsc::channel();
        Self {
            options,
            names,
            engines,
            fault_sender,
            fault_receiver,
            raft_trace: Trace::default(),
        }
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// Host names, `n1`..`nN`, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The engine of host `name`: its disk, kept across crashes.
    pub fn engine(&self, name: &str) -> &MemEngine {
        self.engines
            .get(name)
            .unwrap_or_else(|| panic!("no simulated node {name:?}"))
    }

    /// The Raft id node `name` bootstraps with. It is the id `zongheng::node`
    /// derives from the cluster token and the name; a test can confirm it
    /// with the `member_id` of a response header.
    pub fn node_id(&self, name: &str) -> u64 {
        member_id(&format!("member/{CLUSTER_TOKEN}/{name}"), 0)
    }

    /// The host name of node `id`, if it is one of this cluster's.
    pub fn name_of(&self, id: u64) -> Option<&str> {
        self.names
            .iter()
            .find(|name| self.node_id(name) == id)
            .map(String::as_str)
    }

    /// Node `name`'s configuration, built directly (`NodeConfig::from_args`
    /// wants IP addresses in URLs; turmoil hosts are dialled by name).
    pub fn node_config(&self, name: &str) -> NodeConfig {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        NodeConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(format!("/simulated/{name}")),
            listen_client: SocketAddr::new(any, CLIENT_PORT),
            listen_peer: SocketAddr::new(any, PEER_PORT),
            advertise_client_urls: vec![format!("http://{name}:{CLIENT_PORT}")],
            advertise_peer_urls: vec![format!("http://{name}:{PEER_PORT}")],
            initial_cluster: self
                .names
                .iter()
                .map(|member| (member.clone(), vec![format!("http://{member}:{PEER_PORT}")]))
                .collect(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: CLUSTER_TOKEN.to_string(),
            raft: self.options.raft.clone(),
            limits: ClientLimits::default(),
        }
    }

    /// Every change of a node's Raft role, term, leader, vote, last log index
    /// or applied index, as the node's metrics reported it, in simulated
    /// time: the fine-grained record two runs of a seed are compared by.
    pub fn raft_trace(&self) -> &Trace {
        &self.raft_trace
    }

    /// A handle for client code to partition, repair, crash and restart.
    pub fn nemesis(&self) -> Nemesis {
        Nemesis {
            requests: self.fault_sender.clone(),
        }
    }

    /// Seed this thread's openraft RNG, build the turmoil simulation with the
    /// seed and the options' limits, and register a host per node. Add the
    /// client with `sim.client(CLIENT_HOST, ...)`, then call [`SimCluster::run`].
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
        for name in &self.names {
            let raft_trace = self.raft_trace.clone();
            let config = self.node_config(name);
            let engine = self.engine(name).clone();
            sim.host(name.as_str(), move || {
                let config = config.clone();
                let engine: Arc<dyn Engine> = Arc::new(engine.clone());
                let raft_trace = raft_trace.clone();
                async move {
                    let name = config.name.clone();
                    let node = zongheng::node::start(config, Arc::new(SimTransport), engine).await?;
                    raft_trace.record(format!("{name} started"));
                    // Serve (and trace) until the simulation crashes or ends
                    // this host; dropping the runtime drops the node with it.
                    trace_raft_state(&name, &node, &raft_trace).await;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            });
        }
        sim
    }

    /// Crash host `name`: stop its software, then lose its unsynced writes.
    pub fn crash(&self, sim: &mut turmoil::Sim<'_>, name: &str) {
        sim.crash(name);
        self.engine(name).crash();
        tracing::info!(host = name, "crashed");
    }

    /// Start host `name` again on its engine.
    pub fn restart(&self, sim: &mut turmoil::Sim<'_>, name: &str) {
        sim.bounce(name);
        tracing::info!(host = name, "restarted");
    }

    /// Step `sim` until every client has finished, applying the faults the
    /// clients queue through their [`Nemesis`] between steps. Fails if a host
    /// or client fails or the simulated time runs out.
    pub fn run(&self, sim: &mut turmoil::Sim<'_>) -> turmoil::Result {
        loop {
            let finished = sim.step()?;
            while let Ok(request) = self.fault_receiver.try_recv() {
                match &request.fault {
                    HostFault::Crash(name) => self.crash(sim, name),
                    HostFault::Restart(name) => self.restart(sim, name),
                }
                // The client may have given up waiting; nothing to tell it then.
                let _ = request.done.send(());
            }
            if finished {
                return Ok(());
            }
        }
    }

    /// A hash of everything on node `name`'s disk (visible state, in key
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

/// Record every change of `node`'s Raft state that matters for replaying a
/// run (not the heartbeat-by-heartbeat replication progress). Returns when
/// the node's Raft stops.
async fn trace_raft_state(name: &str, node: &NodeHandle, trace: &Trace) {
    let mut metrics = node.meta.raft.metrics();
    let mut last = String::new();
    loop {
        let summary = {
            let metrics = metrics.borrow_and_update();
            let leader = metrics
                .current_leader
                .map(|id| format!("{id:x}"))
                .unwrap_or_else(|| "none".into());
            format!(
                "{name} {:?} term {} leader {leader} vote {} last_log {:?} applied {:?}",
                metrics.state,
                metrics.current_term,
                metrics.vote,
                metrics.last_log_index,
                metrics.last_applied.map(|log_id| log_id.index),
            )
        };
        if summary != last {
            trace.record(summary.clone());
            last = summary;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
