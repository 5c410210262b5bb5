//! A 3-node `meta` cluster under turmoil: the leader is cut off from the
//! majority, and a follower crashes and restarts.
//!
//! Every scenario runs in simulated time (a few simulated minutes at most)
//! and records what its client saw in a [`Trace`]; the determinism test runs
//! one seed twice and compares the traces.

use std::time::{Duration, Instant};

use zongheng_sim::{prefix_range, RequestError, SimClient, SimCluster, SimOptions, Trace, CLIENT_HOST};

/// The seed of the scenarios below unless `ZONGHENG_SIM_SEED` names another;
/// any seed must pass.
const SEED: u64 = 20_261_122;
/// How long a healthy cluster may take to elect its first leader.
const FIRST_ELECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the majority may take to replace a cut-off leader: a few
/// election timeouts (300-600 ms here) plus the time to notice.
const REELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a healed or restarted node may take to catch up. A connection
/// that lost segments in the partition stalls until the HTTP/2 keepalive
/// (10 s + 5 s) replaces it, so this allows for that.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Node logs only when asked for (`RUST_LOG=info cargo test -p zongheng-sim`):
/// openraft logs every failed RPC of a partition at error level.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// What one run produced, for assertions and for comparing two runs.
struct Run {
    /// What the client saw.
    trace: Trace,
    /// Every node's Raft state changes.
    raft_trace: Trace,
    /// Each node's engine fingerprint at the end, in name order.
    fingerprints: Vec<u64>,
    simulated: Duration,
    wall: Duration,
}

fn print_trace(title: &str, run: &Run) {
    println!(
        "{title}: {} simulated, {:?} wall",
        format_duration(run.simulated),
        run.wall
    );
    for event in run.trace.events() {
        println!("  {event}");
    }
}

fn seed() -> u64 {
    match std::env::var("ZONGHENG_SIM_SEED") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("ZONGHENG_SIM_SEED={value:?} is not a u64")),
        Err(_) => SEED,
    }
}

fn format_duration(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

/// The name of node `id`, for traces that read without a lookup table.
fn name(cluster_names: &[(String, u64)], id: u64) -> String {
    cluster_names
        .iter()
        .find(|(_, node_id)| *node_id == id)
        .map(|(name, _)| name.clone())
        .unwrap_or_else(|| format!("{id:x}"))
}

/// Drive `scenario` as the simulation's one client and run it to the end.
fn run_scenario<F, Fut>(seed: u64, scenario: F) -> Run
where
    F: FnOnce(ScenarioContext) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    init_logging();
    let started = Instant::now();
    let cluster = SimCluster::new(SimOptions::new(seed));
    let mut sim = cluster.build_sim();
    let trace = Trace::default();
    let context = ScenarioContext {
        names: cluster.names().to_vec(),
        ids: cluster
            .names()
            .iter()
            .map(|name| (name.clone(), cluster.node_id(name)))
            .collect(),
        nemesis: cluster.nemesis(),
        trace: trace.clone(),
    };
    let client = scenario(context);
    sim.client(CLIENT_HOST, async move { client.await.map_err(Into::into) });
    let result = cluster.run(&mut sim);
    let run = Run {
        trace,
        raft_trace: cluster.raft_trace().clone(),
        fingerprints: cluster.names().iter().map(|name| cluster.fingerprint(name)).collect(),
        simulated: sim.elapsed(),
        wall: started.elapsed(),
    };
    if let Err(error) = result {
        print_trace("failed run", &run);
        for event in run.raft_trace.events() {
            println!("  raft {event}");
        }
        panic!("seed {seed}: {error}");
    }
    run
}

/// What the client side of a scenario gets.
struct ScenarioContext {
    names: Vec<String>,
    ids: Vec<(String, u64)>,
    nemesis: zongheng_sim::Nemesis,
    trace: Trace,
}

/// The leader is partitioned from both followers; the followers elect a new
/// leader and take writes; a write sent to the old leader does not succeed;
/// after the partition heals the old leader follows and every node converges.
async fn leader_partition(context: ScenarioContext) -> Result<(), String> {
    let ScenarioContext {
        names,
        ids,
        nemesis,
        trace,
    } = context;
    let client = SimClient::new(&names);
    let all: Vec<&str> = names.iter().map(String::as_str).collect();

    let (first_leader, term) = client.agreed_leader(&all, FIRST_ELECTION_TIMEOUT).await?;
    let old_leader = name(&ids, first_leader);
    trace.record(format!("leader {old_leader} term {term}"));
    for node in &all {
        let status = client.status_on(node).await.map_err(|error| error.to_string())?;
        let member = status.header.map(|header| header.member_id).unwrap_or(0);
        if name(&ids, member) != *node {
            return Err(format!(
                "{node} reports member id {member:x}, not the id SimCluster derives"
            ));
        }
    }

    let mut client = client;
    for index in 0..5 {
        let (node, response) = client
            .put(&format!("key/{index}"), &format!("before-{index}"))
            .await
            .map_err(|error| error.to_string())?;
        let revision = response.header.map(|header| header.revision).unwrap_or(0);
        trace.record(format!("put key/{index} via {node}: revision {revision}"));
    }

    let majority: Vec<&str> = all.iter().copied().filter(|node| *node != old_leader).collect();
    nemesis.partition(&[old_leader.as_str()], &majority);
    trace.record(format!("partition {old_leader} | {majority:?}"));
    let partitioned_at = tokio::time::Instant::now();

    let (new_leader_id, new_term) = client.agreed_leader(&majority, REELECTION_TIMEOUT).await?;
    let new_leader = name(&ids, new_leader_id);
    trace.record(format!(
        "majority leader {new_leader} term {new_term} after {} ms",
        partitioned_at.elapsed().as_millis()
    ));
    if new_leader == old_leader || !majority.contains(&new_leader.as_str()) || new_term <= term {
        return Err(format!(
            "the majority {majority:?} should elect one of its own in a later term; got {new_leader} term {new_term}"
        ));
    }

    for (index, node) in majority.iter().enumerate() {
        let response = client
            .put_on(node, &format!("key/majority-{index}"), &format!("during-{index}"))
            .await
            .map_err(|error| format!("a write through majority node {node} failed: {error}"))?;
        let revision = response.header.map(|header| header.revision).unwrap_or(0);
        trace.record(format!("put key/majority-{index} via {node}: revision {revision}"));
    }

    match client.put_on(&old_leader, "key/isolated", "lost").await {
        Ok(response) => {
            return Err(format!(
                "the cut-off leader {old_leader} acknowledged a write: {response:?}"
            ));
        }
        Err(error) => {
            let kind = match error {
                RequestError::Refused { .. } => "refused",
                RequestError::Unknown { .. } => "unknown",
            };
            trace.record(format!("put key/isolated via {old_leader}: {kind}"));
        }
    }

    nemesis.repair(&[old_leader.as_str()], &majority);
    trace.record("repair");
    let repaired_at = tokio::time::Instant::now();
    let (agreed_leader, agreed_term) = client.agreed_leader(&all, CATCH_UP_TIMEOUT).await?;
    trace.record(format!(
        "all follow {} term {agreed_term} after {} ms",
        name(&ids, agreed_leader),
        repaired_at.elapsed().as_millis()
    ));
    if agreed_leader == first_leader {
        return Err(format!(
            "{old_leader} should have stepped down, but all follow it in term {agreed_term}"
        ));
    }

    let (revision, pairs) = client.converged_prefix(&all, "key/", CATCH_UP_TIMEOUT).await?;
    trace.record(format!(
        "converged at revision {revision} after {} ms: {} keys",
        repaired_at.elapsed().as_millis(),
        pairs.len()
    ));
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| key.as_str()).collect();
    let expected = [
        "key/0",
        "key/1",
        "key/2",
        "key/3",
        "key/4",
        "key/majority-0",
        "key/majority-1",
    ];
    if keys != expected {
        // The isolated write was appended only to the old leader's log, in a
        // term the majority's logs never held: the new leader overwrote it.
        return Err(format!(
            "after healing every node should hold exactly {expected:?}; got {keys:?}"
        ));
    }
    let (_, linearizable) = client
        .range(prefix_range("key/", false))
        .await
        .map_err(|error| error.to_string())?;
    let linearizable_revision = linearizable.header.map(|header| header.revision).unwrap_or(0);
    if linearizable_revision != revision || linearizable.kvs.len() != pairs.len() {
        return Err(format!(
            "a linearizable read saw revision {linearizable_revision}, serializable reads {revision}"
        ));
    }
    trace.record("done");
    Ok(())
}

/// A follower crashes (losing unsynced writes), the cluster takes more
/// writes, the follower restarts from its disk and catches up.
async fn follower_crash_restart(context: ScenarioContext) -> Result<(), String> {
    let ScenarioContext {
        names,
        ids,
        nemesis,
        trace,
    } = context;
    let mut client = SimClient::new(&names);
    let all: Vec<&str> = names.iter().map(String::as_str).collect();

    let (leader_id, term) = client.agreed_leader(&all, FIRST_ELECTION_TIMEOUT).await?;
    let leader = name(&ids, leader_id);
    trace.record(format!("leader {leader} term {term}"));
    for index in 0..3 {
        let (node, response) = client
            .put(&format!("key/{index}"), "before-crash")
            .await
            .map_err(|error| error.to_string())?;
        trace.record(format!(
            "put key/{index} via {node}: revision {}",
            response.header.map(|h| h.revision).unwrap_or(0)
        ));
    }

    let follower = all
        .iter()
        .copied()
        .find(|node| *node != leader)
        .expect("three nodes have a follower");
    let survivors: Vec<&str> = all.iter().copied().filter(|node| *node != follower).collect();
    nemesis.crash(follower).await;
    trace.record(format!("crash {follower}"));
    for index in 3..8 {
        let response = client
            .put_on(&leader, &format!("key/{index}"), "while-down")
            .await
            .map_err(|error| format!("the leader should take writes with one follower down: {error}"))?;
        trace.record(format!(
            "put key/{index} via {leader}: revision {}",
            response.header.map(|h| h.revision).unwrap_or(0)
        ));
    }
    let (revision_while_down, _) = client.converged_prefix(&survivors, "key/", CATCH_UP_TIMEOUT).await?;

    nemesis.restart(follower).await;
    trace.record(format!("restart {follower}"));
    let restarted_at = tokio::time::Instant::now();
    let (revision, pairs) = client.converged_prefix(&all, "key/", CATCH_UP_TIMEOUT).await?;
    trace.record(format!(
        "converged at revision {revision} after {} ms: {} keys",
        restarted_at.elapsed().as_millis(),
        pairs.len()
    ));
    if revision != revision_while_down || pairs.len() != 8 {
        return Err(format!(
            "{follower} should catch up to revision {revision_while_down} with 8 keys; got {revision}, {}",
            pairs.len()
        ));
    }
    let (after_leader, after_term) = client.agreed_leader(&all, CATCH_UP_TIMEOUT).await?;
    trace.record(format!("all follow {} term {after_term}", name(&ids, after_leader)));
    trace.record("done");
    Ok(())
}

#[test]
fn a_partitioned_leader_is_replaced_and_catches_up_after_healing() {
    let run = run_scenario(seed(), leader_partition);
    print_trace("leader partition", &run);
    assert!(
        run.simulated < Duration::from_secs(60),
        "the scenario should take well under a simulated minute"
    );
}

#[test]
fn a_crashed_follower_restarts_from_its_disk_and_catches_up() {
    let run = run_scenario(seed(), follower_crash_restart);
    print_trace("follower crash and restart", &run);
    assert!(
        run.simulated < Duration::from_secs(60),
        "the scenario should take well under a simulated minute"
    );
}

/// Runs the leader-partition scenario twice with one seed and compares what
/// the client saw, every node's Raft state changes (to the simulated
/// millisecond) and every node's final disk contents.
#[test]
fn one_seed_replays_the_leader_partition_scenario() {
    let seed = seed();
    let first = run_scenario(seed, leader_partition);
    let second = run_scenario(seed, leader_partition);
    println!(
        "seed {seed}: {} wall, {} wall",
        first.wall.as_millis(),
        second.wall.as_millis()
    );
    for (what, mine, theirs) in [
        ("client", &first.trace, &second.trace),
        ("raft", &first.raft_trace, &second.raft_trace),
    ] {
        match mine.first_difference(theirs) {
            None => println!("{what} traces are identical ({} events)", mine.events().len()),
            Some((index, mine, theirs)) => {
                println!("{what} traces differ first at event {index}:\n  {mine:?}\n  {theirs:?}")
            }
        }
    }
    println!("fingerprints: {:x?} vs {:x?}", first.fingerprints, second.fingerprints);
    assert_eq!(
        first.trace.events(),
        second.trace.events(),
        "the client's observations differ"
    );
    assert_eq!(
        first.raft_trace.events(),
        second.raft_trace.events(),
        "the nodes' Raft state changes differ"
    );
    assert_eq!(first.fingerprints, second.fingerprints, "the nodes' disks differ");
    assert_eq!(first.simulated, second.simulated);
}
