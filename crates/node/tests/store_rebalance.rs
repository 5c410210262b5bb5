//! The data store's partitions move as nodes come and go, with real
//! processes on loopback: 3 members grow to 5 (`member add`, then start),
//! one is killed for longer than `--store-dead-after-ms`, one is drained.
//!
//! What is shown:
//! - after growing to 5, no node holds more than 1.25× the mean number of
//!   replicas, every partition has 3, and no move is left under way;
//! - every key written before the growth and during the moves is readable;
//! - a killed node's replicas are re-created on the others once it has been
//!   silent for the dead-after threshold (it ends with none);
//! - a write routed with the epoch a partition had before it moved is refused
//!   with `ZH_STORE_STALE_EPOCH` and leaves nothing behind;
//! - `zongheng node drain NAME --wait` returns once the node holds no
//!   replica, and the data is all still there.
//!
//! `ZONGHENG_PROCESS_TESTS=0` turns it off.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_for, zongheng_enabled, Cluster, Kind, Options};

/// P: enough partitions that balance is measurable on 5 nodes.
const PARTITIONS: usize = 16;
/// Keys written before and during the growth.
const KEYS_PER_PHASE: usize = 40;
/// How long the store may take to settle after a change (moves are
/// catch-ups of small partitions, a few at a time, on a busy 2-core machine).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the shard map must stay unchanged to count as settled (several
/// rounds of the placement driver, which plans every 500 ms).
const QUIET_FOR: Duration = Duration::from_secs(4);

fn zongheng(endpoints: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .args(args)
        .args(["--endpoints", &endpoints.join(","), "--command-timeout", "20000"])
        .output()
        .expect("run zongheng")
}

/// Runs a command until it succeeds (a partition may be electing a leader).
fn eventually_ok(endpoints: &[String], args: &[&str]) -> String {
    wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let output = zongheng(endpoints, args);
        output
            .status
            .success()
            .then(|| String::from_utf8(output.stdout).unwrap())
    })
    .unwrap_or_else(|| panic!("zongheng {args:?} kept failing: {:?}", zongheng(endpoints, args)))
}

fn status(endpoints: &[String]) -> serde_json::Value {
    serde_json::from_str(&eventually_ok(endpoints, &["store", "status", "--json"])).expect("status is JSON")
}

/// Replicas held per node name, from `store status --json`.
fn loads(status: &serde_json::Value) -> Vec<(String, u64)> {
    status["nodes"]
        .as_array()
        .expect("a nodes array")
        .iter()
        .map(|node| {
            (
                node["name"].as_str().unwrap().to_string(),
                node["replicas"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether every partition has 3 replicas, none on `excluded`, and no move.
fn settled(status: &serde_json::Value, excluded: &[&str]) -> bool {
    let partitions = status["partitions"].as_array().expect("a partitions array");
    partitions.len() == PARTITIONS
        && partitions.iter().all(|partition| {
            let replicas = partition["replicas"].as_array().unwrap();
            partition.get("moving").is_none()
                && replicas.len() == 3
                && replicas
                    .iter()
                    .all(|replica| !excluded.contains(&replica.as_str().unwrap()))
        })
}

/// Waits until [`settled`] has held, with no partition's epoch changing,
/// for [`QUIET_FOR`]: the driver starts at most a few moves at a time, and
/// between two batches nothing is moving for a moment.
fn wait_settled(endpoints: &[String], excluded: &[&str], what: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let mut quiet_since: Option<(std::time::Instant, serde_json::Value)> = None;
    wait_for(SETTLE_TIMEOUT, Duration::from_millis(500), || {
        last = status(endpoints);
        if !settled(&last, excluded) {
            quiet_since = None;
            return None;
        }
        let epochs = serde_json::json!(last["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|partition| partition["epoch"].clone())
            .collect::<Vec<_>>());
        match &quiet_since {
            Some((since, seen)) if *seen == epochs => (since.elapsed() >= QUIET_FOR).then(|| last.clone()),
            _ => {
                quiet_since = Some((std::time::Instant::now(), epochs));
                None
            }
        }
    })
    .unwrap_or_else(|| panic!("the store did not settle {what} within {SETTLE_TIMEOUT:?}; last status: {last:#}"))
}

fn count(endpoints: &[String], prefix: &str) -> usize {
    eventually_ok(endpoints, &["store", "scan", prefix, "--count"])
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn partitions_spread_over_new_nodes_and_leave_dead_and_drained_ones() {
    if !zongheng_enabled() {
        return;
    }
    let options = Options {
        extra_args: vec![
            "--store-partitions".into(),
            PARTITIONS.to_string(),
            "--store-dead-after-ms".into(),
            "4000".into(),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(Kind::Zongheng, options);
    let endpoints = cluster.client_urls();
    for index in 0..KEYS_PER_PHASE {
        eventually_ok(
            &endpoints,
            &["store", "put", &format!("before/{index:03}"), &format!("b{index}")],
        );
    }
    wait_settled(&endpoints, &[], "on 3 nodes");

    // Grow to 5, writing while the partitions move.
    let fourth = cluster.add_member();
    let fifth = cluster.add_member();
    let endpoints = cluster.client_urls();
    for index in 0..KEYS_PER_PHASE {
        let endpoint = std::slice::from_ref(&endpoints[index % endpoints.len()]);
        eventually_ok(
            endpoint,
            &["store", "put", &format!("during/{index:03}"), &format!("d{index}")],
        );
    }
    let grown = wait_settled(&endpoints, &[], "on 5 nodes");
    let loads = loads(&grown);
    let total: u64 = loads.iter().map(|(_, replicas)| replicas).sum();
    assert_eq!(total as usize, PARTITIONS * 3, "{loads:?}");
    assert_eq!(loads.len(), 5, "{loads:?}");
    let mean = total as f64 / loads.len() as f64;
    let busiest = loads.iter().map(|(_, replicas)| *replicas).max().unwrap();
    println!("replicas per node on 5 nodes: {loads:?} (mean {mean:.1}, busiest {busiest})");
    assert!(
        busiest as f64 <= 1.25 * mean,
        "the busiest node holds {busiest} replicas, more than 1.25 × {mean:.1}: {loads:?}"
    );
    for (name, replicas) in &loads {
        assert!(*replicas > 0, "{name} holds no replica: {loads:?}");
    }
    assert_eq!(count(&endpoints, "before/"), KEYS_PER_PHASE);
    assert_eq!(count(&endpoints, "during/"), KEYS_PER_PHASE);

    // A write routed with an epoch from before the moves is refused with a
    // clear error and changes nothing.
    let moved = grown["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|partition| partition["epoch"].as_u64().unwrap() > 1)
        .expect("a partition moved");
    let moved_id = moved["id"].as_u64().unwrap() as u32;
    let key = (0..)
        .map(|index| format!("stale/{index}"))
        .find(|key| zongheng_algo::partition_of(key.as_bytes(), PARTITIONS as u32) == moved_id)
        .unwrap();
    let refused = stale_epoch_prewrite(&endpoints[0], moved_id, &key);
    assert!(refused.contains("ZH_STORE_STALE_EPOCH"), "{refused}");
    let missing = zongheng(&endpoints, &["store", "get", &key]);
    assert_eq!(missing.status.code(), Some(1), "the refused write left nothing");
    eventually_ok(&endpoints, &["store", "put", &key, "fresh"]);
    assert_eq!(eventually_ok(&endpoints, &["store", "get", &key]), "fresh\n");

    // A node dead for longer than the threshold: its replicas move away.
    let killed = cluster.member(fourth).name.clone();
    cluster.kill9(fourth);
    let survivors = cluster.live_client_urls();
    let repaired = wait_settled(&survivors, &[&killed], "after a node died");
    let killed_load = crate::loads(&repaired)
        .into_iter()
        .find(|(name, _)| *name == killed)
        .map(|(_, replicas)| replicas);
    assert_eq!(killed_load, Some(0), "{repaired:#}");
    assert_eq!(count(&survivors, "before/"), KEYS_PER_PHASE);
    assert_eq!(count(&survivors, "during/"), KEYS_PER_PHASE);
    assert_eq!(eventually_ok(&survivors, &["store", "get", "during/007"]), "d7\n");

    // Drain another: it ends with no replica, the data stays.
    let drained = cluster.member(fifth).name.clone();
    let output = eventually_ok(
        &survivors,
        &["node", "drain", &drained, "--wait", "--wait-timeout", "150"],
    );
    assert!(output.contains("is drained"), "{output}");
    let after_drain = wait_settled(&survivors, &[&killed, &drained], "after a drain");
    assert!(
        crate::loads(&after_drain)
            .iter()
            .any(|(name, replicas)| *name == drained && *replicas == 0),
        "{after_drain:#}"
    );
    assert_eq!(count(&survivors, "before/"), KEYS_PER_PHASE);
    assert_eq!(count(&survivors, "during/"), KEYS_PER_PHASE);

    // Bad input: draining a name no member has.
    let unknown = zongheng(&survivors, &["node", "drain", "no-such-node"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("ZH_MEMBER_NOT_FOUND"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// Send a prewrite of `key` to `partition` routed with epoch 1 (the epoch
/// every partition was created with), straight over the store's gRPC API;
/// returns the partition's error code (or what went wrong).
fn stale_epoch_prewrite(endpoint: &str, partition: u32, key: &str) -> String {
    use zongheng::store::group::GroupError;
    use zongheng::store::request::{PartitionRequest, PartitionResponse};
    use zongheng::store::timestamp::Timestamp;
    use zongheng::store::txn::Mutation;
    use zongheng_proto::store::store_client::StoreClient;
    use zongheng_proto::store::{PartitionCall, TimestampRequest};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = StoreClient::connect(endpoint.to_string()).await.expect("connect");
        let start_ts = client
            .timestamp(TimestampRequest { count: 1 })
            .await
            .expect("a timestamp")
            .into_inner()
            .first;
        let request = PartitionRequest::Prewrite {
            mutations: vec![Mutation::Put {
                key: key.as_bytes().to_vec(),
                value: b"stale".to_vec(),
            }],
            primary: key.as_bytes().to_vec(),
            start_ts: Timestamp(start_ts),
            ttl_ms: 3_000,
        };
        let reply = client
            .partition(PartitionCall {
                partition,
                epoch: 1,
                request: zongheng::raft::codec::encode(&request).unwrap(),
                ..Default::default()
            })
            .await
            .expect("the call is carried")
            .into_inner();
        let result: Result<PartitionResponse, GroupError> = zongheng::raft::codec::decode(&reply.result).unwrap();
        match result {
            Err(GroupError::Partition(error)) => format!("{}: {error}", error.code()),
            other => format!("not refused: {other:?}"),
        }
    })
}
