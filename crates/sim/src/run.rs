//! One full simulation run from a seed: a cluster, seeded clients, the
//! seeded nemesis, healing, and every check; and what it produced.
//!
//! ## Phases of a run (simulated time)
//! 1. `0 .. faults_until`: the clients run their mix of operations while the
//!    nemesis applies its schedule (the first fault comes after a quiet
//!    start, for the first election).
//! 2. `faults_until`: every fault is healed ([`crate::nemesis::heal_all`]):
//!    links repaired and released, normal latency, no loss, every member
//!    running.
//! 3. `faults_until .. + recovery`: the clients go on, against a healed
//!    cluster; then they stop.
//! 4. Final checks, by the nemesis host acting as the checker: the cluster
//!    must converge (a leader, every member running and applied up to the
//!    leader's last log index) within `convergence_timeout`; all state
//!    machines must then have the same digest; every key is read once more
//!    (linearizably, recorded in the history as client 0) and its value must
//!    be explained by the writes the clients made.
//!
//! The history then goes to the linearizability checker
//! ([`crate::linearizability`]).
//!
//! A run replays exactly from its seed and options: the report's history,
//! traces and verdicts are equal byte for byte (see `tests/nemesis.rs`).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zongheng::raft::RaftSettings;
use zongheng_check::history::{ClientId, KvHistory, KvInput, KvOutput, Outcome};

use crate::client::SimClient;
use crate::cluster::{Nemesis, SimCluster, SimOptions};
use crate::coordination::{self, ClientContext, CoordinationOptions, CoordinationStats};
use crate::invariants::{Invariant, Monitor, Violation};
use crate::linearizability::{self, Linearizability};
use crate::nemesis::{self, LaneContext, NemesisOptions, Schedule};
use crate::trace::{Trace, TraceEvent};
use crate::workload::{self, get_output, key_name, Recorder, WorkloadOptions, WorkloadStats};

/// The client id of the final reads the checker makes.
pub const FINAL_READ_CLIENT: ClientId = 0;
/// The turmoil host that runs the nemesis and the final checks.
pub const NEMESIS_HOST: &str = "nemesis";
/// How long a final read of a key may keep retrying.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at the cluster while waiting for convergence.
const CONVERGENCE_POLL: Duration = Duration::from_millis(100);

/// Everything that decides a run, besides the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub seed: u64,
    /// Initial voters.
    pub nodes: usize,
    /// Idle hosts for membership changes.
    pub spares: usize,
    pub workload: WorkloadOptions,
    pub nemesis: NemesisOptions,
    /// How long the clients go on after healing.
    pub recovery: Duration,
    /// How long the healed cluster may take to converge once clients stop.
    pub convergence_timeout: Duration,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Entries between snapshots (small, so snapshots are built, sent and
    /// installed during a run).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_catchup_entries: u64,
    /// Audit every disk write for unsynced Raft writes (see `crate::disk`).
    pub audit_disk: bool,
    /// Run the coordination clients (locks, elections, watches, leases)
    /// instead of the KV clients; see [`crate::coordination`].
    #[serde(default)]
    pub coordination: Option<CoordinationOptions>,
}

impl RunOptions {
    /// A run of `fault_seconds` simulated seconds of faults with every fault
    /// kind: 3 voters and a spare, 4 clients over 5 keys, 20 s of recovery.
    pub fn new(seed: u64, fault_seconds: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            spares: 1,
            workload: WorkloadOptions::default(),
            nemesis: NemesisOptions::all(Duration::from_secs(fault_seconds)),
            recovery: Duration::from_secs(20),
            convergence_timeout: Duration::from_secs(60),
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_count: 500,
            snapshot_catchup_entries: 100,
            audit_disk: true,
            coordination: None,
        }
    }

    /// Simulated time from the start to the clients' stop.
    pub fn clients_until(&self) -> Duration {
        self.nemesis.faults_until + self.recovery
    }

    fn sim_options(&self) -> SimOptions {
        let mut options = SimOptions::new(self.seed);
        options.node_count = self.nodes;
        options.spare_count = self.spares;
        options.audit_disk = self.audit_disk;
        options.raft = RaftSettings {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
        };
        // Room for a membership call that started just before the healing
        // to finish, the final reads, and convergence.
        options.simulation_duration =
            self.clients_until() + self.convergence_timeout + FINAL_READ_TIMEOUT * 2 + Duration::from_secs(300);
        options
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub options: RunOptions,
    pub schedule: Schedule,
    pub violations: Vec<Violation>,
    pub linearizability: Linearizability,
    pub stats: WorkloadStats,
    /// Log entries compared by the committed-entry checker (node by node).
    pub entries_checked: u64,
    /// Terms that had a leader.
    pub terms: usize,
    /// Terms that had more than one leader.
    pub shared_terms: usize,
    pub simulated_ms: u64,
    pub wall_ms: u64,
    pub history: KvHistory,
    /// What the coordination clients did, in a coordination run.
    #[serde(default)]
    pub coordination: Option<CoordinationStats>,
    /// The nemesis's and the checker's events.
    pub trace: Vec<TraceEvent>,
    /// Every node's Raft state changes.
    pub raft_trace: Vec<TraceEvent>,
}

impl RunReport {
    /// Whether every invariant held and the checker did not reject the history.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && !self.linearizability.is_failure()
    }

    /// One line per broken invariant (and the checker's verdict if it failed).
    pub fn failures(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        if self.linearizability.is_failure() {
            lines.push(format!("{}: {}", Invariant::NotLinearizable, self.linearizability));
        }
        lines
    }

    /// The run's outcome in one line.
    pub fn summary(&self) -> String {
        let coordination = self
            .coordination
            .as_ref()
            .map_or(String::new(), |stats| format!("; coordination: {stats}"));
        format!(
            "seed {}: {} ({} ops: {} ok, {} failed, {} unknown; {} simulated s, {} ms wall; {}; {} entries checked; {} terms, {} with two leaders{coordination})",
            self.options.seed,
            if self.passed() { "ok" } else { "FAILED" },
            self.history.operations.len(),
            self.stats.ok,
            self.stats.failed,
            self.stats.unknown,
            self.simulated_ms / 1_000,
            self.wall_ms,
            self.linearizability,
            self.entries_checked,
            self.terms,
            self.shared_terms,
        )
    }

    /// Write the report as JSON to `dir/seed-<seed>.json`; returns the path.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("seed-{}.json", self.options.seed));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, json)?;
        Ok(path)
    }
}

/// Run one seed to the end and check it. Never panics for a failure of the
/// simulated system: a panic inside the simulation (a node's assertion, a
/// bug in this crate) is reported as a [`Invariant::HostFailed`] violation.
pub fn run(options: &RunOptions) -> RunReport {
    let started = Instant::now();
    let mut cluster = SimCluster::new(options.sim_options());
    let client_hosts: Vec<String> = match &options.coordination {
        Some(coordination) => coordination::client_hosts(coordination),
        None => (1..=options.workload.clients)
            .map(|index| format!("c{index}"))
            .collect(),
    };
    let mut all_clients = client_hosts.clone();
    all_clients.push(NEMESIS_HOST.to_string());
    cluster.set_client_hosts(all_clients);
    let schedule = Schedule::generate(options.seed, &options.nemesis);
    let recorder = Recorder::default();
    let trace = Trace::default();
    let monitor = cluster.monitor().clone();

    let mut sim = cluster.build_sim();
    let coordination_shared = coordination::Shared::default();
    let coordination_context = |host: &str| {
        options.coordination.clone().map(|coordination| ClientContext {
            host: host.to_string(),
            seed: options.seed,
            nodes: cluster.hosts().to_vec(),
            options: coordination,
            shared: coordination_shared.clone(),
            monitor: monitor.clone(),
            nemesis: cluster.nemesis(),
            stop_at: options.clients_until(),
        })
    };
    for host in &client_hosts {
        if let Some(context) = coordination_context(host) {
            sim.client(host.as_str(), async move {
                coordination::run_client(context).await;
                Ok(())
            });
        }
    }
    for (index, host) in client_hosts.iter().enumerate() {
        if options.coordination.is_some() {
            break;
        }
        let id = index as ClientId + 1;
        let workload = options.workload.clone();
        let hosts = cluster.hosts().to_vec();
        let recorder = recorder.clone();
        let monitor = monitor.clone();
        let seed = options.seed;
        let stop_at = options.clients_until();
        sim.client(host.as_str(), async move {
            workload::run_client(id, seed, workload, hosts, recorder, monitor, stop_at).await;
            Ok(())
        });
    }
    {
        let context = LaneContext {
            nemesis: cluster.nemesis(),
            trace: trace.clone(),
            monitor: monitor.clone(),
            seed: options.seed,
            faults_until: options.nemesis.faults_until,
        };
        let schedule = schedule.clone();
        let recorder = recorder.clone();
        let options = options.clone();
        let checker = coordination_context(NEMESIS_HOST);
        sim.client(NEMESIS_HOST, async move {
            let network = nemesis::run_network_lane(context.clone(), schedule.network);
            let nodes = nemesis::run_node_lane(context.clone(), schedule.nodes);
            futures::future::join(network, nodes).await;
            sleep_until(options.nemesis.faults_until).await;
            nemesis::heal_all(&context.nemesis, &context.trace).await;
            sleep_until(options.clients_until()).await;
            // The last operations may still be in flight (up to the request
            // timeout); the final reads must come after all of them.
            while recorder.active_clients() > 0 {
                tokio::time::sleep(CONVERGENCE_POLL).await;
            }
            final_checks(&options, &context, &recorder).await;
            if let Some(checker) = checker {
                coordination::check::final_checks(&checker, &context.trace).await;
            }
            Ok(())
        });
    }

    let outcome = catch_unwind(AssertUnwindSafe(|| cluster.run(&mut sim)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => monitor.violation_at(
            sim.elapsed().as_millis() as u64,
            Invariant::HostFailed,
            format!("the simulation failed: {error}"),
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            monitor.violation_at(
                sim.elapsed().as_millis() as u64,
                Invariant::HostFailed,
                format!("panic in the simulation: {message}"),
            );
        }
    }
    let simulated_ms = sim.elapsed().as_millis() as u64;
    let history = recorder.history();
    let linearizability = linearizability::check(&history);
    let report = RunReport {
        options: options.clone(),
        schedule,
        violations: monitor.violations(),
        linearizability,
        stats: recorder.stats(),
        entries_checked: monitor.entries_checked(),
        terms: monitor.terms_with_leader(),
        shared_terms: monitor.shared_terms(),
        simulated_ms,
        wall_ms: started.elapsed().as_millis() as u64,
        history,
        coordination: options
            .coordination
            .as_ref()
            .map(|_| coordination_shared.record().stats),
        trace: trace.events(),
        raft_trace: cluster.raft_trace().events(),
    };
    // Drop the simulation (its hosts and their nodes) before the cluster.
    drop(sim);
    report
}

async fn sleep_until(at: Duration) {
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// Wait for a quiescent cluster, compare the replicas, read every key.
async fn final_checks(options: &RunOptions, context: &LaneContext, recorder: &Recorder) {
    let nemesis = &context.nemesis;
    let monitor = &context.monitor;
    let trace = &context.trace;
    match converge(nemesis, options.convergence_timeout).await {
        Ok(description) => trace.record(format!("checker: converged: {description}")),
        Err(description) => {
            trace.record(format!("checker: did not converge: {description}"));
            monitor.violation(
                Invariant::NoRecovery,
                format!(
                    "the healed cluster did not converge within {} s: {description}",
                    options.convergence_timeout.as_secs()
                ),
            );
        }
    }
    // All state machines, taken at one instant; compare those at the same index.
    let digests = nemesis.digests();
    let mut by_index: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    for digest in &digests {
        by_index
            .entry(digest.applied)
            .or_default()
            .push((digest.host.clone(), digest.digest));
    }
    for (applied, replicas) in &by_index {
        let first = replicas[0].1;
        if replicas.iter().any(|(_, digest)| *digest != first) {
            monitor.violation(
                Invariant::ReplicasDiverged,
                format!("state machines at applied index {applied} differ: {replicas:x?}"),
            );
        }
    }
    trace.record(format!(
        "checker: state digests {:?}",
        digests
            .iter()
            .map(|digest| format!("{}@{}={:x}", digest.host, digest.applied, digest.digest))
            .collect::<Vec<_>>()
    ));

    let mut client = SimClient::new(nemesis.hosts())
        .with_request_timeout(options.workload.request_timeout)
        .with_retry_timeout(FINAL_READ_TIMEOUT);
    for index in 0..options.workload.keys {
        let key = key_name(index);
        let operation = recorder.invoke(
            FINAL_READ_CLIENT,
            KvInput::Get {
                key: key.clone(),
                linearizable: true,
            },
        );
        let request = zongheng_proto::etcdserverpb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        };
        match client.range(request).await {
            Ok((node, response)) => {
                let output = get_output(&response);
                recorder.complete(operation, Outcome::Ok(output.clone()));
                trace.record(format!(
                    "checker: {} via {node}: {output:?}",
                    String::from_utf8_lossy(&key)
                ));
                check_final_value(&recorder.history(), &key, &output, monitor);
            }
            Err(error) => {
                recorder.complete(operation, workload::failure_outcome(&error));
                monitor.violation(
                    Invariant::NoRecovery,
                    format!(
                        "the final read of {} failed for {} s: {error}",
                        String::from_utf8_lossy(&key),
                        FINAL_READ_TIMEOUT.as_secs()
                    ),
                );
            }
        }
    }
}

/// Poll until every member runs, one leader is known to all, and every
/// member has applied the leader's whole log. Returns a description of the
/// cluster either way.
async fn converge(nemesis: &Nemesis, timeout: Duration) -> Result<String, String> {
    let deadline = turmoil::sim_elapsed().unwrap_or_default() + timeout;
    loop {
        let views = nemesis.views();
        let description = views
            .iter()
            .map(|view| {
                format!(
                    "{} {:?} term {} leader {:x} log {} applied {}",
                    view.host,
                    view.state,
                    view.term,
                    view.leader.unwrap_or(0),
                    view.last_log_index,
                    view.last_applied
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let members_running = nemesis
            .hosts()
            .iter()
            .filter(|host| nemesis.is_configured(host))
            .all(|host| nemesis.is_running(host));
        let converged = match views
            .iter()
            .filter(|view| view.is_leader())
            .max_by_key(|view| view.term)
        {
            Some(leader) => {
                members_running
                    && views.iter().all(|view| {
                        view.leader == Some(leader.node_id)
                            && view.term == leader.term
                            && view.last_applied == leader.last_log_index
                            && view.last_log_index == leader.last_log_index
                    })
            }
            None => false,
        };
        if converged {
            return Ok(description);
        }
        if turmoil::sim_elapsed().unwrap_or_default() >= deadline {
            return Err(description);
        }
        tokio::time::sleep(CONVERGENCE_POLL).await;
    }
}

/// Check that the final value of `key` is explained by the history: it was
/// written by a write that did not fail, at a revision no lower than any
/// acknowledged write of the key; an absent key was deleted last (or may
/// have been, by a delete whose outcome is unknown); the final read saw
/// every revision any client had seen.
pub fn check_final_value(history: &KvHistory, key: &[u8], output: &KvOutput, monitor: &Monitor) {
    let KvOutput::Get {
        value,
        mod_revision,
        revision,
    } = output
    else {
        return;
    };
    let name = String::from_utf8_lossy(key);
    let mut acknowledged: Option<(i64, u64, bool)> = None; // (revision, op, is delete)
    let mut highest_seen = 0i64;
    let mut unknown_delete = false;
    for operation in history
        .operations
        .iter()
        .filter(|operation| operation.client != FINAL_READ_CLIENT)
    {
        if let Outcome::Ok(output) = &operation.outcome {
            let seen = match output {
                KvOutput::Put { revision }
                | KvOutput::Get { revision, .. }
                | KvOutput::Delete { revision, .. }
                | KvOutput::CompareAndSet { revision, .. } => *revision,
            };
            let linearizable = !matches!(
                operation.input,
                KvInput::Get {
                    linearizable: false,
                    ..
                }
            );
            if linearizable {
                highest_seen = highest_seen.max(seen);
            }
        }
        if operation.input.key() != key {
            continue;
        }
        let write = match (&operation.input, &operation.outcome) {
            (KvInput::Put { .. }, Outcome::Ok(KvOutput::Put { revision })) => Some((*revision, false)),
            (
                KvInput::CompareAndSet { .. },
                Outcome::Ok(KvOutput::CompareAndSet {
                    succeeded: true,
                    revision,
                }),
            ) => Some((*revision, false)),
            (KvInput::Delete { .. }, Outcome::Ok(KvOutput::Delete { deleted, revision })) if *deleted > 0 => {
                Some((*revision, true))
            }
            (KvInput::Delete { .. }, Outcome::Unknown(_)) => {
                unknown_delete = true;
                None
            }
            _ => None,
        };
        if let Some((revision, is_delete)) = write {
            if acknowledged.is_none_or(|(highest, _, _)| revision > highest) {
                acknowledged = Some((revision, operation.id, is_delete));
            }
        }
    }
    if *revision < highest_seen {
        monitor.violation(
            Invariant::AcknowledgedWriteLost,
            format!("the final read of {name} is at revision {revision}, but clients had seen revision {highest_seen}"),
        );
    }
    match value {
        Some(value) => {
            let writer = history.operations.iter().find(|operation| match &operation.input {
                KvInput::Put { key: k, value: v } => k == key && v == value,
                KvInput::CompareAndSet { key: k, new_value, .. } => k == key && new_value == value,
                _ => false,
            });
            let Some(writer) = writer else {
                monitor.violation(
                    Invariant::AcknowledgedWriteLost,
                    format!(
                        "{name} holds {:?}, which no client wrote",
                        String::from_utf8_lossy(value)
                    ),
                );
                return;
            };
            match &writer.outcome {
                Outcome::Failed(reason) => monitor.violation(
                    Invariant::AcknowledgedWriteLost,
                    format!(
                        "{name} holds the value of operation {} (client c{}), which was reported failed: {reason}",
                        writer.id, writer.client
                    ),
                ),
                Outcome::Ok(KvOutput::CompareAndSet { succeeded: false, .. }) => monitor.violation(
                    Invariant::AcknowledgedWriteLost,
                    format!(
                        "{name} holds the value of compare-and-set {} (client c{}), which answered that it did not apply",
                        writer.id, writer.client
                    ),
                ),
                Outcome::Ok(
                    KvOutput::Put { revision } | KvOutput::CompareAndSet { revision, .. },
                ) if revision != mod_revision => monitor.violation(
                    Invariant::AcknowledgedWriteLost,
                    format!(
                        "{name} holds the value of operation {} at mod revision {mod_revision}, but that write answered revision {revision}",
                        writer.id
                    ),
                ),
                _ => {}
            }
            if let Some((acknowledged_revision, operation, _)) = acknowledged {
                if *mod_revision < acknowledged_revision {
                    monitor.violation(
                        Invariant::AcknowledgedWriteLost,
                        format!(
                            "operation {operation} wrote {name} at revision {acknowledged_revision} and was acknowledged, but {name} was last modified at {mod_revision} (by operation {})",
                            writer.id
                        ),
                    );
                }
            }
        }
        None => {
            if let Some((acknowledged_revision, operation, false)) = acknowledged {
                if !unknown_delete {
                    monitor.violation(
                        Invariant::AcknowledgedWriteLost,
                        format!(
                            "operation {operation} wrote {name} at revision {acknowledged_revision} and was acknowledged, but {name} is absent and no later delete is possible"
                        ),
                    );
                }
            }
        }
    }
}
