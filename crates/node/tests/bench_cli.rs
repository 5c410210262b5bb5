//! `zongheng bench` against a real local 3-node cluster: every scenario runs
//! to its requested total with zero errors and prints a well-formed JSON
//! report. Not a performance test: totals are small and nothing is timed,
//! so it passes on a busy 2-core machine; `bench/compare.sh` measures.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, Kind};

/// Hard limit on one bench run (each runs a few hundred operations).
const BENCH_PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `zongheng bench ARGS --json` and returns its report, panicking with
/// everything it printed if it fails or does not finish in time.
fn bench(endpoints: &str, args: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zongheng"))
        .arg("bench")
        .args(args)
        .args(["--endpoints", endpoints, "--json", "--command-timeout", "10s"])
        .env_remove("ZONGHENG_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zongheng bench");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            drop(pipe.read_to_string(&mut text));
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + BENCH_PROCESS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll zongheng bench") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            drop(child.kill());
            drop(child.wait());
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let described = format!("zongheng bench {args:?} -> {status:?}\n--- stdout\n{stdout}--- stderr\n{stderr}");
    assert!(status.is_some_and(|status| status.success()), "{described}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|error| panic!("no JSON report ({error}): {described}"))
}

fn number(report: &serde_json::Value, path: &[&str]) -> f64 {
    let mut value = report;
    for field in path {
        value = value
            .get(field)
            .unwrap_or_else(|| panic!("report has no {path:?}: {report}"));
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {report}"))
}

/// Checks what every report must hold: the schema, the requested count, no
/// errors, ordered latencies, a histogram that adds up.
fn check_report(report: &serde_json::Value, scenario: &str, total: u64) {
    assert_eq!(report["schema"], "zongheng-bench/1", "{report}");
    assert_eq!(report["scenario"], scenario, "{report}");
    assert_eq!(report["requested_total"], total, "{report}");
    assert_eq!(report["errors_total"], 0, "{scenario} had errors: {}", report["errors"]);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["ops"], total, "{scenario} did not complete its total: {report}");
    assert!(number(report, &["elapsed_s"]) > 0.0, "{report}");
    assert!(number(report, &["ops_per_s"]) > 0.0, "{report}");
    let latency = |name: &str| number(report, &["latency_ms", name]);
    assert!(latency("min") > 0.0, "{report}");
    assert!(latency("min") <= latency("p50"), "{report}");
    assert!(latency("p50") <= latency("p90"), "{report}");
    assert!(latency("p90") <= latency("p99"), "{report}");
    assert!(latency("p99") <= latency("p99_9"), "{report}");
    assert!(latency("p99_9") <= latency("max"), "{report}");
    let count = number(report, &["latency_ms", "count"]) as u64;
    let bucketed: u64 = report["histogram"]
        .as_array()
        .unwrap_or_else(|| panic!("histogram is not a list: {report}"))
        .iter()
        .map(|bucket| bucket["count"].as_u64().expect("bucket counts are numbers"))
        .sum();
    assert_eq!(bucketed, count, "the histogram holds every latency: {report}");
    for field in ["endpoints", "params", "phases", "counters"] {
        assert!(report.get(field).is_some(), "{field} missing: {report}");
    }
}

#[test]
fn every_scenario_completes_with_zero_errors_and_a_well_formed_report() {
    if !common::zongheng_enabled() || !common::etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(Kind::Zongheng, 3);
    let endpoints = cluster.client_urls().join(",");

    let report = bench(&endpoints, &["put", "--total", "200", "--clients", "4", "--conns", "3"]);
    check_report(&report, "put", 200);
    assert_eq!(report["latency_ms"]["count"], 200, "{report}");
    assert_eq!(report["params"]["clients"], 4, "{report}");

    let report = bench(
        &endpoints,
        &["put", "--total", "50", "--sequential-keys", "--target-leader"],
    );
    check_report(&report, "put", 50);
    assert_eq!(report["endpoints"].as_array().map(Vec::len), Some(1), "{report}");

    let report = bench(
        &endpoints,
        &[
            "range",
            "--prefill",
            "100",
            "--total",
            "300",
            "--clients",
            "8",
            "--conns",
            "3",
        ],
    );
    check_report(&report, "range", 300);
    assert_eq!(report["params"]["consistency"], "l", "{report}");

    let report = bench(
        &endpoints,
        &[
            "range",
            "000000",
            "--prefix",
            "--consistency",
            "s",
            "--total",
            "100",
            "--clients",
            "2",
        ],
    );
    check_report(&report, "range", 100);
    assert_eq!(report["params"]["range_end"], "000001", "{report}");

    let report = bench(
        &endpoints,
        &["txn-put", "--total", "200", "--clients", "4", "--conns", "2"],
    );
    check_report(&report, "txn-put", 200);
    let counters = &report["counters"];
    let succeeded = counters["txn_succeeded"].as_u64().unwrap_or(0);
    let conflicts = counters["txn_conflicts"].as_u64().unwrap_or(0);
    assert_eq!(succeeded + conflicts, 200, "{report}");
    // One key per client: a conflict only on a key written by an earlier run.
    assert!(conflicts <= 4, "{report}");

    let report = bench(
        &endpoints,
        &[
            "watch",
            "--total",
            "50",
            "--watchers",
            "20",
            "--watch-streams",
            "4",
            "--put-rate",
            "200",
            "--conns",
            "3",
        ],
    );
    check_report(&report, "watch", 50);
    assert_eq!(report["counters"]["events_expected"], 1_000, "{report}");
    assert_eq!(report["counters"]["events_received"], 1_000, "{report}");
    assert_eq!(report["counters"]["events_missing"], 0, "{report}");
    assert_eq!(report["phases"]["delivery"]["count"], 1_000, "{report}");
    assert_eq!(
        report["latency_ms"]["count"], 50,
        "every put reached every watcher: {report}"
    );

    let report = bench(
        &endpoints,
        &["lease", "--total", "60", "--clients", "4", "--keepalives", "2"],
    );
    check_report(&report, "lease", 60);
    assert_eq!(report["phases"]["grant"]["count"], 60, "{report}");
    assert_eq!(report["phases"]["keepalive"]["count"], 120, "{report}");
    assert_eq!(report["phases"]["revoke"]["count"], 60, "{report}");

    let report = bench(
        &endpoints,
        &[
            "mixed",
            "--prefill",
            "100",
            "--key-space-size",
            "100",
            "--read-ratio",
            "0.5",
            "--total",
            "300",
            "--clients",
            "4",
            "--conns",
            "3",
        ],
    );
    check_report(&report, "mixed", 300);
    let reads = report["counters"]["reads"].as_u64().unwrap_or(0);
    let writes = report["counters"]["writes"].as_u64().unwrap_or(0);
    assert_eq!(reads + writes, 300, "{report}");
    assert!(reads > 0 && writes > 0, "{report}");

    // A run bounded by time alone stops on its own.
    let report = bench(&endpoints, &["range", "--duration", "1s", "--clients", "2"]);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert!(report["ops"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(number(&report, &["elapsed_s"]) < 30.0, "{report}");
}
