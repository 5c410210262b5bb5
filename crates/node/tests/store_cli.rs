//! `zongheng store` and `zongheng txn` as processes against a 3-member
//! cluster started with `--store-partitions 8`.
//!
//! What is shown:
//! - put, get, delete and scan (`--count`, `--limit`, `--end`) through any
//!   endpoint, with keys spread over several partitions;
//! - batch-get and batch-put; a batch over the named limit is refused with
//!   `ZH_STORE_BATCH_TOO_LARGE` and writes nothing;
//! - `store status --json` prints the shard map in the documented shape,
//!   every partition with 3 replicas;
//! - `txn` reads its snapshot and commits buffered writes; a second
//!   transaction that wrote the same key after the first started makes the
//!   first's commit fail with a write conflict (first committer wins);
//! - the data survives a kill -9 of one member and of all of them in turn;
//! - bad input (an inverted range, a cluster without a store) gets a clear
//!   error with a stable code.
//!
//! `ZONGHENG_PROCESS_TESTS=0` turns it off.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{wait_for, zongheng_enabled, Cluster, Kind, Options};

fn store(endpoints: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .args(args)
        .args(["--endpoints", &endpoints.join(","), "--command-timeout", "20000"])
        .output()
        .expect("run zongheng")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "zongheng failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn txn(endpoints: &[String], script: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .args(["txn", "--endpoints", &endpoints.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zongheng txn");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().expect("zongheng txn ends")
}

fn started() -> Option<Cluster> {
    if !zongheng_enabled() {
        return None;
    }
    let options = Options {
        extra_args: vec!["--store-partitions".into(), "8".into()],
        ..Options::default()
    };
    Some(Cluster::start_with(Kind::Zongheng, options))
}

/// Retries a command that may fail while a partition elects a leader.
fn eventually_ok(endpoints: &[String], args: &[&str]) -> String {
    wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let output = store(endpoints, args);
        output
            .status
            .success()
            .then(|| String::from_utf8(output.stdout).unwrap())
    })
    .unwrap_or_else(|| panic!("zongheng {args:?} kept failing: {:?}", store(endpoints, args)))
}

#[test]
fn store_commands_and_transactions_against_a_cluster() {
    let Some(mut cluster) = started() else { return };
    let endpoints = cluster.client_urls();

    // Writes through different endpoints, over several partitions.
    for index in 0..20 {
        let endpoint = std::slice::from_ref(&endpoints[index % endpoints.len()]);
        eventually_ok(
            endpoint,
            &["store", "put", &format!("user/{index:02}"), &format!("name-{index}")],
        );
    }
    assert_eq!(ok(store(&endpoints, &["store", "get", "user/07"])), "name-7\n");
    assert_eq!(ok(store(&endpoints, &["store", "scan", "user/", "--count"])), "20\n");
    let limited = ok(store(&endpoints, &["store", "scan", "user/", "--limit", "2"]));
    assert_eq!(limited, "user/00\nname-0\nuser/01\nname-1\n");
    let ranged = ok(store(
        &endpoints,
        &["store", "scan", "user/05", "--end", "user/08", "--count"],
    ));
    assert_eq!(ranged, "3\n");
    ok(store(&endpoints, &["store", "delete", "user/07"]));
    let missing = store(&endpoints, &["store", "get", "user/07"]);
    assert_eq!(missing.status.code(), Some(1), "a missing key exits 1");

    // The shard map.
    let status: serde_json::Value =
        serde_json::from_str(&ok(store(&endpoints, &["store", "status", "--json"]))).unwrap();
    let partitions = status["partitions"].as_array().expect("a partitions array");
    assert_eq!(partitions.len(), 8);
    for partition in partitions {
        assert_eq!(partition["replicas"].as_array().unwrap().len(), 3, "{partition}");
        assert!(partition["epoch"].is_u64() && partition["id"].is_u64() && partition["leader"].is_string());
    }

    // An interactive transaction sees its snapshot and its own writes.
    let output = txn(&endpoints, "get user/01\nput user/01 changed\nget user/01\ncommit\n");
    let text = ok(output);
    assert!(
        text.contains("name-1\n") && text.contains("changed\n") && text.contains("committed at"),
        "{text}"
    );

    // First committer wins: T1 starts, T2 writes the key and commits, T1's commit fails.
    let mut first = Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .args(["txn", "--endpoints", &endpoints.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_in = first.stdin.take().unwrap();
    first_in.write_all(b"get user/02\n").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    ok(store(&endpoints, &["store", "put", "user/02", "by-second"]));
    first_in.write_all(b"put user/02 by-first\ncommit\n").unwrap();
    drop(first_in);
    let first = first.wait_with_output().unwrap();
    assert!(!first.status.success(), "the later committer must fail");
    let errors = String::from_utf8_lossy(&first.stderr);
    assert!(errors.contains("write conflict"), "{errors}");
    assert_eq!(ok(store(&endpoints, &["store", "get", "user/02"])), "by-second\n");

    // Reads at followers (after a read index) and stale reads at any replica.
    assert_eq!(
        ok(store(&endpoints, &["store", "get", "user/05", "--consistency", "f"])),
        "name-5\n"
    );
    assert_eq!(
        eventually_ok(
            &endpoints,
            &[
                "store",
                "get",
                "user/05",
                "--consistency",
                "s",
                "--max-staleness-ms",
                "10000"
            ]
        ),
        "name-5\n"
    );
    assert_eq!(
        ok(store(
            &endpoints,
            &["store", "scan", "user/", "--count", "--consistency", "f"]
        )),
        "19\n"
    );

    // Batches: several keys in one snapshot, several writes in one transaction.
    assert_eq!(
        ok(store(
            &endpoints,
            &["store", "batch-put", "batch/a=1", "batch/b=2", "batch/c=3"]
        )),
        "OK (3 keys)\n"
    );
    assert_eq!(
        ok(store(
            &endpoints,
            &["store", "batch-get", "batch/b", "batch/zz", "batch/a", "batch/c"]
        )),
        "2\n\n1\n3\n"
    );
    let mut oversized = Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .args(["store", "batch-put", "-", "--endpoints", &endpoints.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (0..10_001).map(|index| format!("big/{index}=x\n")).collect();
    oversized.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let oversized = oversized.wait_with_output().unwrap();
    assert!(!oversized.status.success());
    assert!(
        String::from_utf8_lossy(&oversized.stderr).contains("ZH_STORE_BATCH_TOO_LARGE"),
        "{}",
        String::from_utf8_lossy(&oversized.stderr)
    );
    assert_eq!(ok(store(&endpoints, &["store", "scan", "big/", "--count"])), "0\n");

    // Bad input.
    let inverted = store(&endpoints, &["store", "scan", "b", "--end", "a"]);
    assert!(!inverted.status.success());
    assert!(String::from_utf8_lossy(&inverted.stderr).contains("ZH_STORE_INVERTED_RANGE"));

    // kill -9 of one member, then of each in turn: nothing acknowledged is lost.
    cluster.kill9(0);
    let survivors = cluster.live_client_urls();
    assert_eq!(
        eventually_ok(&survivors, &["store", "scan", "user/", "--count"]),
        "19\n"
    );
    eventually_ok(&survivors, &["store", "put", "user/99", "during-failure"]);
    cluster.restart(0);
    for index in 1..cluster.size() {
        cluster.kill9(index);
        cluster.restart(index);
    }
    let endpoints = cluster.client_urls();
    assert_eq!(
        eventually_ok(&endpoints, &["store", "scan", "user/", "--count"]),
        "20\n"
    );
    assert_eq!(
        eventually_ok(&endpoints, &["store", "get", "user/99"]),
        "during-failure\n"
    );
}

#[test]
fn a_cluster_without_a_store_says_so() {
    if !zongheng_enabled() {
        return;
    }
    let cluster = Cluster::start_with(Kind::Zongheng, Options::default());
    let output = store(&cluster.client_urls(), &["store", "get", "k"]);
    assert!(!output.status.success());
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("--store-partitions"), "{errors}");
}
