//! Fault tests on real processes: kill -9 of the leader and of every member,
//! a new member that must be brought up by snapshot, and bad input on the
//! client port.
//!
//! Each scenario is written once, generic over the server [`Kind`]. The
//! zongheng tests run by default (`ZONGHENG_PROCESS_TESTS=0` turns them off).
//! The same scenarios against a real etcd are `#[ignore]`d
//! reference runs that show the scenarios themselves are sound:
//! `cargo test -p zongheng --test process_faults -- --ignored`.
//!
//! Scenarios run one at a time (see [`one_at_a_time`]): they time failover on
//! a 2-core machine, and four 3-member clusters at once would measure the
//! machine, not the server.
//!
//! Clients follow the oracle rule: a write that returned OK must survive; a
//! write that failed or timed out is *unknown* (it may or may not have been
//! applied), never counted as lost or as absent.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{etcd_available, etcdctl_available, wait_for, zongheng_enabled, Cluster, Kind, Options, STOP_TIMEOUT};
use tonic::transport::{Channel, Endpoint};
use zongheng_proto::etcdserverpb::cluster_client::ClusterClient;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::{
    compare, request_op, Compare, MemberRemoveRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
};
use zongheng_proto::peer::peer_client::PeerClient;
use zongheng_proto::peer::{
    raft_batch_answer, raft_stream_answer, RaftBatchItem, RaftBatchRequest, RaftKind, RaftRequest, RaftStreamAnswer,
    RaftStreamItem, RaftStreamRequest,
};

/// How long a client may take to get a write through after the leader dies.
const FAILOVER_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a restarted or new member may take to show the latest data.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one gRPC request in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys written before adding a member (5 snapshots' worth at --snapshot-count 100).
const SNAPSHOT_KEYS: usize = 500;
/// Concurrent writers while every member is killed.
const CRASH_WRITERS: usize = 4;
/// Acknowledged writes to see before killing every member.
const CRASH_ACKS_BEFORE_KILL: usize = 200;
/// Upper bound on writes per writer, and on the load's duration.
const CRASH_WRITES_PER_WRITER_MAX: usize = 20_000;
const CRASH_LOAD_DURATION_MAX: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- entry points

#[test]
fn zongheng_leader_kill9_then_restart_catches_up() {
    if let Some(_guard) = enabled(Kind::Zongheng) {
        leader_kill9_then_restart_catches_up(Kind::Zongheng);
    }
}

#[test]
fn zongheng_new_member_gets_snapshot() {
    if let Some(_guard) = enabled(Kind::Zongheng) {
        new_member_gets_snapshot(Kind::Zongheng);
    }
}

#[test]
fn zongheng_kill9_all_keeps_acknowledged_writes() {
    if let Some(_guard) = enabled(Kind::Zongheng) {
        kill9_all_keeps_acknowledged_writes(Kind::Zongheng);
    }
}

#[test]
fn zongheng_bad_input_is_refused_and_changes_nothing() {
    if let Some(_guard) = enabled(Kind::Zongheng) {
        bad_input_is_refused_and_changes_nothing(Kind::Zongheng);
    }
}

/// A Raft message addressed to another member id is refused before it
/// reaches Raft (`server::peer::refuse_misaddressed`): a new member started
/// at a removed member's address must never answer, or vote, for it.
#[test]
fn zongheng_raft_message_for_another_member_is_refused() {
    let Some(_guard) = enabled(Kind::Zongheng) else { return };
    let mut cluster = Cluster::start(Kind::Zongheng, 1);
    cluster.wait_ready(0, CATCH_UP_TIMEOUT);
    let peer_url = cluster.member(0).peer_url();
    runtime().block_on(async {
        let mut peer = PeerClient::new(channel(&peer_url).await.expect("peer connection"));
        let status = peer
            .raft(RaftRequest {
                group_id: 0,
                kind: RaftKind::Vote as i32,
                payload: Vec::new(),
                to_member_id: 0x1234,
            })
            .await
            .expect_err("a vote request for member 1234 must be refused");
        assert_status(&status, tonic::Code::FailedPrecondition, "ZH_WRONG_MEMBER");
    });
    cluster.assert_running(0);
}

/// `status` has gRPC code `code` and zongheng error code `error_code`
/// (the `x-zongheng-error` metadata).
fn assert_status(status: &tonic::Status, code: tonic::Code, error_code: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-zongheng-error")
            .and_then(|code| code.to_str().ok()),
        Some(error_code),
        "{status:?}"
    );
}

/// A batch of Raft messages (`Peer.RaftBatch`) is answered message by
/// message, each as a single `Peer.Raft` call would be: a misaddressed vote
/// is refused with its code, a message for a group the node does not have
/// gets `NotFound`, an item without a message is a bad request, and a real
/// vote for the node's own id gets an answer. A batch over the limit is
/// refused whole, and the node keeps running.
#[test]
fn zongheng_raft_batch_answers_each_message() {
    let Some(_guard) = enabled(Kind::Zongheng) else { return };
    let mut cluster = Cluster::start(Kind::Zongheng, 1);
    cluster.wait_ready(0, CATCH_UP_TIMEOUT);
    let peer_url = cluster.member(0).peer_url();
    runtime().block_on(async {
        let mut peer = PeerClient::new(channel(&peer_url).await.expect("peer connection"));
        let message = |group_id, to_member_id| RaftBatchItem {
            request: Some(RaftRequest {
                group_id,
                kind: RaftKind::Vote as i32,
                payload: Vec::new(),
                to_member_id,
            }),
            timeout_ms: 2_000,
        };
        let items = vec![
            message(0, 0x1234),
            message(1_000_007, 0),
            RaftBatchItem {
                request: None,
                timeout_ms: 0,
            },
            message(0, 0),
        ];
        let mut answers = peer
            .raft_batch(RaftBatchRequest { items })
            .await
            .expect("a batch is accepted")
            .into_inner();
        let mut outcomes = std::collections::BTreeMap::new();
        while let Some(answer) = answers.message().await.expect("the answer stream") {
            assert!(
                outcomes.insert(answer.index, answer.outcome).is_none(),
                "index {} answered twice",
                answer.index
            );
        }
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
        let error = |index: u32| match &outcomes[&index] {
            Some(raft_batch_answer::Outcome::Error(error)) => error.clone(),
            other => panic!("message {index}: expected an error, got {other:?}"),
        };
        let misaddressed = error(0);
        assert_eq!(
            misaddressed.code,
            tonic::Code::FailedPrecondition as i32,
            "{misaddressed:?}"
        );
        assert_eq!(misaddressed.error_code, "ZH_WRONG_MEMBER");
        assert_eq!(error(1).code, tonic::Code::NotFound as i32, "{:?}", error(1));
        assert_eq!(error(2).code, tonic::Code::InvalidArgument as i32, "{:?}", error(2));
        // An empty payload is no vote request: the message reached the
        // meta group and its decoder, and was refused as undecodable.
        assert_eq!(error(3).code, tonic::Code::InvalidArgument as i32, "{:?}", error(3));
        assert!(error(3).message.contains("undecodable"), "{:?}", error(3));

        let oversized = (0..257).map(|_| message(0, 0)).collect();
        let status = peer
            .raft_batch(RaftBatchRequest { items: oversized })
            .await
            .expect_err("a batch over the limit is refused");
        assert_status(&status, tonic::Code::InvalidArgument, "ZH_RAFT_BATCH_TOO_LARGE");
    });
    cluster.assert_running(0);
}

/// The long-lived Raft stream (`Peer.RaftStream`) answers each message by
/// its id, as a single `Peer.Raft` call would, across several stream
/// messages; a stream message over the batch limit ends the stream with its
/// code, and the node keeps running.
#[test]
fn zongheng_raft_stream_answers_each_message() {
    let Some(_guard) = enabled(Kind::Zongheng) else { return };
    let mut cluster = Cluster::start(Kind::Zongheng, 1);
    cluster.wait_ready(0, CATCH_UP_TIMEOUT);
    let peer_url = cluster.member(0).peer_url();
    runtime().block_on(async {
        let mut peer = PeerClient::new(channel(&peer_url).await.expect("peer connection"));
        let message = |id, group_id, to_member_id| RaftStreamItem {
            id,
            request: Some(RaftRequest {
                group_id,
                kind: RaftKind::Vote as i32,
                payload: Vec::new(),
                to_member_id,
            }),
            timeout_ms: 2_000,
        };
        let (requests, outgoing) = tokio::sync::mpsc::channel(4);
        let mut answers = peer
            .raft_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .expect("a stream is accepted")
            .into_inner();
        let mut outcomes = std::collections::BTreeMap::new();
        let receive = |outcomes: &mut std::collections::BTreeMap<u64, _>, answer: RaftStreamAnswer| {
            assert!(
                outcomes.insert(answer.id, answer.outcome).is_none(),
                "id {} answered twice",
                answer.id
            );
        };
        requests
            .send(RaftStreamRequest {
                items: vec![message(7, 0, 0x1234), message(9, 1_000_007, 0)],
            })
            .await
            .expect("the stream takes a message");
        requests
            .send(RaftStreamRequest {
                items: vec![
                    RaftStreamItem {
                        id: 11,
                        request: None,
                        timeout_ms: 0,
                    },
                    message(12, 0, 0),
                ],
            })
            .await
            .expect("the stream takes a second message");
        while outcomes.len() < 4 {
            let batch = answers
                .message()
                .await
                .expect("the answer stream")
                .expect("the stream stays open while messages are unanswered");
            for answer in batch.answers {
                receive(&mut outcomes, answer);
            }
        }
        assert_eq!(outcomes.keys().copied().collect::<Vec<_>>(), vec![7, 9, 11, 12]);
        let error = |id: u64| match &outcomes[&id] {
            Some(raft_stream_answer::Outcome::Error(error)) => error.clone(),
            other => panic!("message {id}: expected an error, got {other:?}"),
        };
        let misaddressed = error(7);
        assert_eq!(
            misaddressed.code,
            tonic::Code::FailedPrecondition as i32,
            "{misaddressed:?}"
        );
        assert_eq!(misaddressed.error_code, "ZH_WRONG_MEMBER");
        assert_eq!(error(9).code, tonic::Code::NotFound as i32, "{:?}", error(9));
        assert_eq!(error(11).code, tonic::Code::InvalidArgument as i32, "{:?}", error(11));
        assert_eq!(error(12).code, tonic::Code::InvalidArgument as i32, "{:?}", error(12));
        assert!(error(12).message.contains("undecodable"), "{:?}", error(12));

        let oversized = (0..257).map(|id| message(100 + id, 0, 0)).collect();
        requests
            .send(RaftStreamRequest { items: oversized })
            .await
            .expect("the stream takes an oversized message");
        let status = answers
            .message()
            .await
            .expect_err("a stream message over the limit ends the stream");
        assert_status(&status, tonic::Code::InvalidArgument, "ZH_RAFT_BATCH_TOO_LARGE");
    });
    cluster.assert_running(0);
}

/// Every member of a cluster exits by itself on SIGTERM, one after the
/// other, while its peers keep their long-lived Raft streams to it open
/// (`Peer.RaftStream`): a stopping node ends those streams, or its server's
/// graceful shutdown, which waits for every open stream, would wait until
/// the harness kills it.
#[test]
fn zongheng_members_stop_on_sigterm_while_peers_stream_to_them() {
    let Some(_guard) = enabled(Kind::Zongheng) else { return };
    let mut cluster = Cluster::start(Kind::Zongheng, 3);
    for index in 0..3 {
        cluster.wait_ready(index, CATCH_UP_TIMEOUT);
    }
    for index in 0..3 {
        let status = cluster
            .stop(index)
            .unwrap_or_else(|| panic!("member {index} did not exit within {STOP_TIMEOUT:?} of SIGTERM"));
        assert!(status.success(), "member {index}: {status:?}");
    }
}

#[test]
#[ignore = "reference run against a real etcd; validates the scenario"]
fn etcd_leader_kill9_then_restart_catches_up() {
    if let Some(_guard) = enabled(Kind::Etcd) {
        leader_kill9_then_restart_catches_up(Kind::Etcd);
    }
}

#[test]
#[ignore = "reference run against a real etcd; validates the scenario"]
fn etcd_new_member_gets_snapshot() {
    if let Some(_guard) = enabled(Kind::Etcd) {
        new_member_gets_snapshot(Kind::Etcd);
    }
}

#[test]
#[ignore = "reference run against a real etcd; validates the scenario"]
fn etcd_kill9_all_keeps_acknowledged_writes() {
    if let Some(_guard) = enabled(Kind::Etcd) {
        kill9_all_keeps_acknowledged_writes(Kind::Etcd);
    }
}

#[test]
#[ignore = "reference run against a real etcd; validates the scenario"]
fn etcd_bad_input_is_refused_and_changes_nothing() {
    if let Some(_guard) = enabled(Kind::Etcd) {
        bad_input_is_refused_and_changes_nothing(Kind::Etcd);
    }
}

/// Whether this kind's scenarios can run here; if so, holds the lock that
/// runs scenarios one at a time.
fn enabled(kind: Kind) -> Option<MutexGuard<'static, ()>> {
    let available = etcdctl_available()
        && match kind {
            Kind::Zongheng => zongheng_enabled(),
            Kind::Etcd => etcd_available(),
        };
    available.then(one_at_a_time)
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SCENARIO: Mutex<()> = Mutex::new(());
    // A panicking scenario poisons the lock; the next one may still run.
    SCENARIO.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ------------------------------------------------------------------- scenarios

/// (a) kill -9 the leader: writes go through on the other two within a few
/// seconds; the old leader, restarted on its data dir, catches up. Then a
/// follower is stopped with SIGTERM and restarted.
fn leader_kill9_then_restart_catches_up(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3);
    cluster.etcdctl(&["put", "before-kill", "1"]).expect_ok();
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let killed_at = Instant::now();
    cluster.kill9(leader);

    // A client retrying against the survivors: the first success is the failover time.
    let mut attempts = 0;
    let accepted = wait_for(FAILOVER_WRITE_TIMEOUT, Duration::from_millis(100), || {
        attempts += 1;
        cluster
            .etcdctl(&["--command-timeout=2s", "put", "after-kill", "1"])
            .success()
            .then_some(())
    });
    let failover = killed_at.elapsed();
    assert!(
        accepted.is_some(),
        "no write accepted within {FAILOVER_WRITE_TIMEOUT:?} after killing the leader"
    );
    println!(
        "{}: write accepted {failover:?} after kill -9 of the leader ({attempts} attempts)",
        kind.label()
    );
    for n in 0..20 {
        cluster
            .etcdctl(&["put", &format!("after-kill/{n:02}"), &format!("v{n}")])
            .expect_ok();
    }
    let new_leader = cluster.wait_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader, "the killed member cannot lead");

    cluster.restart(leader);
    cluster.etcdctl(&["put", "after-restart", "latest"]).expect_ok();
    let expected = cluster
        .etcdctl(&["get", "--prefix", "", "-w", "json"])
        .expect_ok()
        .json();
    let expected_revision = expected["header"]["revision"].as_i64().expect("header revision");
    // Serializable reads are answered from the member's own state: they show
    // the catch-up itself, not a round trip through the leader.
    let caught_up = wait_for(CATCH_UP_TIMEOUT, Duration::from_millis(100), || {
        let local = cluster.etcdctl_on(leader, &["get", "--consistency=s", "--prefix", "", "-w", "json"]);
        (local.success() && local.json()["kvs"] == expected["kvs"]).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "restarted member does not serve the latest data (revision {expected_revision}) within {CATCH_UP_TIMEOUT:?}: {}",
        cluster.etcdctl_on(leader, &["get", "--consistency=s", "--prefix", "", "-w", "json"])
    );
    let value = cluster.etcdctl_on(
        leader,
        &["get", "--consistency=s", "--print-value-only", "after-restart"],
    );
    assert_eq!(value.stdout.trim(), "latest");

    // A graceful stop (SIGTERM) of a follower ends the process in bounded
    // time, and the member comes back on its data dir.
    let follower = (0..3).find(|&index| index != new_leader).expect("a follower");
    let exit = cluster
        .stop(follower)
        .unwrap_or_else(|| panic!("SIGTERM did not stop a member within {STOP_TIMEOUT:?}"));
    println!("{}: SIGTERM stopped a follower: {exit}", kind.label());
    cluster.restart(follower);
    cluster.etcdctl(&["put", "after-stop", "1"]).expect_ok();
    for index in 0..3 {
        cluster.assert_running(index);
    }
}

/// (b) With `--snapshot-count 100`, 500 writes, then a fourth member added
/// the etcd way: it must end up with every key (served locally).
fn new_member_gets_snapshot(kind: Kind) {
    let mut cluster = Cluster::start_with(
        kind,
        Options {
            snapshot_count: Some(100),
            ..Options::default()
        },
    );
    let runtime = runtime();
    let urls = cluster.client_urls();
    let written = runtime.block_on(async {
        let mut kv = kv_client(&urls[0]).await.expect("connect to n1");
        let mut written = BTreeMap::new();
        for n in 0..SNAPSHOT_KEYS {
            let (key, value) = (format!("snap/{n:04}"), format!("value-{n}"));
            let request = PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            kv.put(request)
                .await
                .unwrap_or_else(|status| panic!("put {key}: {status}"));
            written.insert(key, value);
        }
        written
    });

    let added = cluster.add_member();
    assert_eq!(added, 3);
    let n4 = cluster.member(added).client_url();
    let mut last_count = 0;
    let complete = runtime.block_on(async {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(response) = serializable_prefix(&n4, "snap/").await {
                last_count = response.kvs.len();
                if kvs_as_map(&response) == written {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(
        complete,
        "n4 serves {last_count} of {SNAPSHOT_KEYS} keys after {CATCH_UP_TIMEOUT:?}"
    );
    let members = cluster.etcdctl(&["member", "list", "-w", "json"]).expect_ok().json();
    let names: Vec<&str> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names.len(), 4, "member list: {members}");
    assert!(names.contains(&"n4"), "n4 has started and is named: {members}");
}

/// (c) Several clients write while every member is killed with -9; after a
/// restart of all three, every acknowledged write is there.
fn kill9_all_keeps_acknowledged_writes(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3);
    let runtime = runtime();
    let urls = cluster.client_urls();
    let acknowledged = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let ack_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..CRASH_WRITERS)
        .map(|writer| {
            let (urls, acknowledged, ack_count, stop) =
                (urls.clone(), acknowledged.clone(), ack_count.clone(), stop.clone());
            runtime.spawn(async move {
                let started = Instant::now();
                let mut endpoint = writer % urls.len();
                let mut client = None;
                let mut failures = 0usize;
                for n in 0..CRASH_WRITES_PER_WRITER_MAX {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > CRASH_LOAD_DURATION_MAX {
                        break;
                    }
                    if client.is_none() {
                        client = kv_client(&urls[endpoint]).await.ok();
                    }
                    let Some(kv) = client.as_mut() else {
                        endpoint = (endpoint + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    // Every attempt writes a key of its own, so an unknown
                    // outcome never hides behind a later acknowledged one.
                    let (key, value) = (format!("crash/w{writer}/{n:05}"), format!("w{writer}-n{n}"));
                    let request = PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    };
                    match kv.put(request).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(key, value);
                            ack_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            // Unknown outcome; try another member.
                            failures += 1;
                            client = None;
                            endpoint = (endpoint + 1) % urls.len();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                failures
            })
        })
        .collect();

    let enough = wait_for(Duration::from_secs(30), Duration::from_millis(10), || {
        (ack_count.load(Ordering::Relaxed) >= CRASH_ACKS_BEFORE_KILL).then_some(())
    });
    assert!(
        enough.is_some(),
        "only {} writes acknowledged in 30 s",
        ack_count.load(Ordering::Relaxed)
    );
    for index in 0..3 {
        cluster.kill9(index);
    }
    std::thread::sleep(Duration::from_millis(200)); // writers see the dead members
    stop.store(true, Ordering::Relaxed);
    let failures: usize = runtime.block_on(async {
        let mut failures = 0;
        for writer in writers {
            failures += writer.await.expect("writer task");
        }
        failures
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "{}: {} writes acknowledged, {failures} failed or unknown, before and during kill -9 of all members",
        kind.label(),
        acknowledged.len()
    );

    for index in 0..3 {
        cluster.restart_no_wait(index);
    }
    for index in 0..3 {
        cluster.wait_ready(index, common::MEMBER_READY_TIMEOUT);
    }
    let stored = runtime.block_on(async {
        let mut kv = kv_client(&urls[0]).await.expect("connect after restart");
        let request = RangeRequest {
            key: b"crash/".to_vec(),
            range_end: b"crash0".to_vec(),
            ..Default::default()
        };
        kv.range(request).await.expect("read back").into_inner()
    });
    let stored = kvs_as_map(&stored);
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(key, value)| stored.get(*key) != Some(value))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or changed after kill -9 of every member; first: {:?}",
        lost.len(),
        acknowledged.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let unknown_applied = stored.len() - acknowledged.len();
    println!(
        "{}: all acknowledged writes present; {unknown_applied} unacknowledged writes were applied too",
        kind.label()
    );
}

/// (d) Bad input on the client port: each request gets an error (garbage
/// bytes get the connection closed), the member keeps serving, and the
/// revision does not move.
fn bad_input_is_refused_and_changes_nothing(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3);
    cluster.etcdctl(&["put", "stable", "v"]).expect_ok();
    let url = cluster.member(0).client_url();
    let port = cluster.member(0).client_port;
    let runtime = runtime();
    let revision_before = runtime.block_on(current_revision(&url));

    // Each case: a name and a request that must be refused (or, for the
    // compare, must not take the success branch).
    let outcomes: Vec<(String, String)> = runtime.block_on(async {
        let mut kv = kv_client(&url).await.expect("connect");
        let mut cluster_api = ClusterClient::new(channel(&url).await.expect("connect"));
        let mut outcomes = Vec::new();

        let big_value = PutRequest {
            key: b"big".to_vec(),
            value: vec![b'x'; 1_600_000],
            ..Default::default()
        };
        let status = kv.put(big_value).await.expect_err("a 1.6 MB value is refused");
        outcomes.push(("value of 1.6 MB".to_string(), status_line(&status)));

        let big_key = PutRequest {
            key: vec![b'k'; 1_600_000],
            value: b"v".to_vec(),
            ..Default::default()
        };
        let status = kv.put(big_key).await.expect_err("a 1.6 MB key is refused");
        outcomes.push(("key of 1.6 MB".to_string(), status_line(&status)));

        let empty_key = PutRequest {
            key: Vec::new(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let status = kv.put(empty_key).await.expect_err("an empty key is refused");
        outcomes.push(("empty key".to_string(), status_line(&status)));

        let too_many = TxnRequest {
            success: (0..129).map(|n| put_op(&format!("ops/{n:03}"), "v")).collect(),
            ..Default::default()
        };
        let status = kv.txn(too_many).await.expect_err("129 ops are refused");
        outcomes.push(("txn of 129 ops".to_string(), status_line(&status)));

        // A compare over the range [b, a): empty by construction. etcd
        // answers it as a compare that does not hold, never as a match.
        let backwards = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
            }],
            success: vec![put_op("backwards", "taken")],
            failure: Vec::new(),
        };
        let outcome = match kv.txn(backwards).await {
            Err(status) => status_line(&status),
            Ok(response) => {
                let response = response.into_inner();
                assert!(
                    !response.succeeded,
                    "a compare on an empty (backwards) range must not hold"
                );
                "compare did not hold (succeeded: false)".to_string()
            }
        };
        outcomes.push(("compare with range_end before key".to_string(), outcome));

        let backwards_range = RangeRequest {
            key: b"stable".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        };
        let outcome = match kv.range(backwards_range).await {
            Err(status) => status_line(&status),
            Ok(response) => {
                let response = response.into_inner();
                assert!(response.kvs.is_empty(), "a backwards range holds no keys: {response:?}");
                format!("empty result (count {})", response.count)
            }
        };
        outcomes.push(("range with range_end before key".to_string(), outcome));

        let status = cluster_api
            .member_remove(MemberRemoveRequest { id: 0x1234_abcd })
            .await
            .expect_err("an unknown member id is refused");
        outcomes.push(("member remove of an unknown id".to_string(), status_line(&status)));
        outcomes
    });
    for (case, outcome) in &outcomes {
        println!("{}: {case}: {outcome}", kind.label());
    }
    let revision_after_requests = runtime.block_on(current_revision(&url));
    assert_eq!(
        revision_after_requests, revision_before,
        "refused requests changed the store"
    );

    for (case, garbage) in garbage_inputs() {
        let outcome = send_garbage(port, &garbage);
        println!("{}: {case}: {outcome}", kind.label());
        cluster.assert_running(0);
        let revision = runtime.block_on(current_revision(&url));
        assert_eq!(revision, revision_before, "after {case}: revision moved");
    }
    let value = cluster
        .etcdctl_on(0, &["get", "--print-value-only", "stable"])
        .expect_ok();
    assert_eq!(value.stdout.trim(), "v");
    cluster.etcdctl(&["endpoint", "health"]).expect_ok();
    for index in 0..3 {
        cluster.assert_running(index);
    }
}

// --------------------------------------------------------------------- helpers

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())
        .expect("valid URL")
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
}

async fn kv_client(url: &str) -> Result<KvClient<Channel>, tonic::transport::Error> {
    Ok(KvClient::new(channel(url).await?))
}

async fn serializable_prefix(url: &str, prefix: &str) -> Result<RangeResponse, Box<dyn std::error::Error>> {
    let mut kv = kv_client(url).await?;
    let mut range_end = prefix.as_bytes().to_vec();
    *range_end.last_mut().expect("non-empty prefix") += 1;
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end,
        serializable: true,
        ..Default::default()
    };
    Ok(kv.range(request).await?.into_inner())
}

/// The store's revision as a linearizable read on `url` reports it.
async fn current_revision(url: &str) -> i64 {
    let mut kv = kv_client(url).await.expect("connect");
    let response = kv
        .range(RangeRequest {
            key: b"stable".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a get works")
        .into_inner();
    response.header.expect("response header").revision
}

fn kvs_as_map(response: &RangeResponse) -> BTreeMap<String, String> {
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn status_line(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Byte strings that are not gRPC: binary noise, and an HTTP/2 preface
/// followed by a frame header announcing an impossible frame.
fn garbage_inputs() -> Vec<(&'static str, Vec<u8>)> {
    // A fixed xorshift stream: the same noise every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut bad_frame = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bad_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff]);
    bad_frame.extend_from_slice(&noise[..4096]);
    vec![
        ("64 KiB of binary noise", noise),
        ("HTTP/2 preface then a bogus frame", bad_frame),
    ]
}

/// Writes `garbage` to the client port and reads until the server closes
/// the connection (bounded); panics if it neither closes nor answers.
fn send_garbage(port: u16, garbage: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the client port");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    // The server may close before taking everything: that is a valid answer.
    let written = stream.write_all(garbage);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = 0usize;
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return format!("closed by the server after {received} bytes of answer (write: {written:?})"),
            Ok(n) => received += n,
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock || error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(error) => return format!("connection reset ({error}) after {received} bytes of answer"),
        }
        assert!(
            Instant::now() < deadline,
            "the server kept a connection of garbage open for 10 s ({received} bytes answered)"
        );
    }
}
