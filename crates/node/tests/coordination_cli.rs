//! `zongheng lock` and `zongheng elect` as processes against a 3-member
//! cluster of `zongheng node` processes, and bad input to the Watch and
//! Lease services compared with a real etcd 3.4.
//!
//! What is shown:
//! - two `zongheng lock NAME -- sh -c ...` loops on different members never
//!   run their commands at the same time, and the fencing tokens the commands
//!   see (`ZONGHENG_LOCK_REVISION`) strictly increase;
//! - the command's exit status is `zongheng lock`'s exit status;
//! - a holder whose lease is revoked under it stops its command and exits
//!   non-zero, and the next waiter gets the lock;
//! - `zongheng elect` hands over when the leader process is stopped (SIGTERM:
//!   it resigns) or killed (SIGKILL: its lease expires), and `--listen`
//!   prints each leader in order;
//! - bad input (unknown leases, a watch with an empty range, duplicate watch
//!   ids, a TTL above the limit, ...) gets etcd's answers, where etcd's and
//!   ours differ the difference is written down, and the cluster is
//!   undisturbed: the revision is unchanged on every member and a put works.
//!
//! The lock/election scenarios through the gRPC services (and with
//! etcdctl's client-side recipes) are in `lock_election.rs` and
//! `etcdctl_coordination.rs`; this file covers the `zongheng` commands.
//! `ZONGHENG_PROCESS_TESTS=0` turns the zongheng side off; the etcd side runs
//! when `etcd` is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcd_available, etcdctl_available, signal_child, wait_for, zongheng_enabled, Cluster, Kind};
use futures::StreamExt;
use nix::sys::signal::Signal;
use tonic::transport::Channel;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use zongheng_proto::v3lockpb::lock_client::LockClient;
use zongheng_proto::v3lockpb::UnlockRequest;

/// How long anything that must happen may take (a loaded shared machine).
const EVENTUALLY: Duration = Duration::from_secs(30);
/// How long a process that must stay blocked is watched.
const STAYS_BLOCKED: Duration = Duration::from_millis(1_500);

// ---------------------------------------------------------------------------
// `zongheng` client processes.

fn zongheng(endpoints: &[String], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zongheng"));
    // Right after the subcommand: after `lock NAME -- CMD` it would be the
    // command's argument.
    command
        .env_remove("ZONGHENG_ENDPOINTS")
        .arg(args[0])
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(&args[1..])
        .stdin(Stdio::null());
    command
}

/// A `zongheng` command run to completion (bounded).
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(endpoints: &[String], args: &[&str]) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let mut process = Background::spawn(endpoints, args, dir.path(), "run");
    assert!(
        process.wait_exit(EVENTUALLY),
        "zongheng {args:?} did not finish: {}",
        process.stderr()
    );
    Finished {
        code: process.code,
        stdout: process.stdout(),
        stderr: process.stderr(),
    }
}

/// A `zongheng` process in the background, output to files.
struct Background {
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    code: Option<i32>,
}

impl Background {
    fn spawn(endpoints: &[String], args: &[&str], dir: &Path, name: &str) -> Background {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let child = zongheng(endpoints, args)
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start zongheng");
        Background {
            child: Some(child),
            stdout_path,
            stderr_path,
            code: None,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_stdout(&self, check: impl Fn(&str) -> bool) -> bool {
        wait_for(EVENTUALLY, Duration::from_millis(20), || {
            check(&self.stdout()).then_some(())
        })
        .is_some()
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        match wait_for(timeout, Duration::from_millis(20), || child.try_wait().ok().flatten()) {
            Some(status) => {
                self.code = status.code();
                self.child = None;
                true
            }
            None => false,
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("still running").id();
        signal_child(pid, signal);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn start_cluster() -> Option<Cluster> {
    if !zongheng_enabled() || !etcdctl_available() {
        return None;
    }
    Some(Cluster::start(Kind::Zongheng, 3))
}

// ---------------------------------------------------------------------------
// Lock.

/// The shell script each locked command runs: it records when it starts and
/// ends holding the lock, with its fencing token, in a shared file.
const CRITICAL_SECTION: &str = r#"echo "start $ZONGHENG_LOCK_REVISION $ZONGHENG_LOCK_KEY $ETCD_LOCK_KEY $ETCD_LOCK_REV" >> "$1"
sleep 0.3
echo "end $ZONGHENG_LOCK_REVISION" >> "$1""#;

#[test]
fn lock_commands_never_overlap_and_fencing_tokens_increase() {
    let Some(cluster) = start_cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("critical.log");
    let log_arg = log.to_str().unwrap().to_string();
    const ROUNDS: usize = 4;
    let loops: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|member| {
            let endpoint = vec![cluster.member(member).client_url()];
            let log_arg = log_arg.clone();
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let finished = run(
                        &endpoint,
                        &["lock", "jobs", "--", "sh", "-c", CRITICAL_SECTION, "critical", &log_arg],
                    );
                    assert_eq!(finished.code, Some(0), "lock failed: {}", finished.stderr);
                    assert!(finished.stdout.is_empty(), "a command's lock prints nothing itself");
                }
            })
        })
        .collect();
    for handle in loops {
        handle.join().expect("a lock loop failed");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * 2 * ROUNDS, "{text}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        let start: Vec<&str> = pair[0].split(' ').collect();
        let end: Vec<&str> = pair[1].split(' ').collect();
        // No overlap: every start is followed by its own end.
        assert_eq!((start[0], end[0]), ("start", "end"), "sections overlap:\n{text}");
        assert_eq!(start[1], end[1], "sections overlap:\n{text}");
        let token: i64 = start[1].parse().unwrap();
        assert!(token > last_token, "fencing tokens must increase:\n{text}");
        last_token = token;
        // The key is `jobs/<lease>`, under both names; etcdctl's revision
        // (the Lock answer's header) is at least the create revision.
        assert!(start[2].starts_with("jobs/") && start[2] == start[3], "{text}");
        assert!(start[4].parse::<i64>().unwrap() >= token, "{text}");
    }
    // Every lock was released: no key is left under the name.
    let keys = run(
        &cluster.client_urls(),
        &["kv", "get", "jobs/", "--prefix", "--keys-only"],
    );
    assert_eq!(keys.stdout.trim(), "", "{}", keys.stderr);
}

#[test]
fn lock_passes_the_commands_exit_status_on() {
    let Some(cluster) = start_cluster() else { return };
    let urls = cluster.client_urls();
    for code in [0, 3, 42] {
        let script = format!("exit {code}");
        let finished = run(&urls, &["lock", "status", "--", "sh", "-c", &script]);
        assert_eq!(finished.code, Some(code), "{}", finished.stderr);
    }
    // Killed by a signal: 128 + N, as a shell reports it.
    let finished = run(&urls, &["lock", "status", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(finished.code, Some(128 + 9), "{}", finished.stderr);
    // A command that cannot start: an error, and the lock is released.
    let finished = run(&urls, &["lock", "status", "--", "/nonexistent/command"]);
    assert_eq!(finished.code, Some(1));
    assert!(finished.stderr.contains("cannot run"), "{}", finished.stderr);
    let keys = run(&urls, &["kv", "get", "status/", "--prefix", "--keys-only"]);
    assert_eq!(keys.stdout.trim(), "", "{}", keys.stderr);
}

#[test]
fn a_holder_whose_lease_is_revoked_stops_its_command_and_the_next_waiter_gets_the_lock() {
    let Some(cluster) = start_cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("lease");
    let done_file = dir.path().join("done");
    let script = format!(
        "echo $ZONGHENG_LOCK_LEASE > {}; sleep 30; touch {}",
        lease_file.display(),
        done_file.display()
    );
    let urls = cluster.client_urls();
    let mut holder = Background::spawn(
        &urls[..1],
        &["lock", "fenced", "--ttl", "5", "--", "sh", "-c", &script],
        dir.path(),
        "holder",
    );
    let lease = wait_for(EVENTUALLY, Duration::from_millis(20), || {
        std::fs::read_to_string(&lease_file)
            .ok()
            .filter(|text| text.ends_with('\n'))
    })
    .expect("the holder's command starts");
    // Without a command: prints the key, holds until SIGTERM.
    let waiter = Background::spawn(&urls[1..2], &["lock", "--json", "fenced"], dir.path(), "waiter");
    std::thread::sleep(STAYS_BLOCKED);
    assert_eq!(waiter.stdout(), "", "the waiter must wait for the holder");

    let revoked = run(&urls[2..], &["lease", "revoke", lease.trim()]);
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    assert!(holder.wait_exit(EVENTUALLY), "the holder must stop");
    assert_eq!(holder.code, Some(1));
    let stderr = holder.stderr();
    assert!(stderr.contains("lost lock fenced/"), "{stderr}");
    assert!(stderr.contains("must be rejected by its fencing token"), "{stderr}");
    assert!(!done_file.exists(), "the command was stopped before it finished");

    assert!(waiter.wait_stdout(|text| text.ends_with('\n')), "{}", waiter.stderr());
    let held: serde_json::Value = serde_json::from_str(waiter.stdout().trim()).unwrap();
    assert!(held["key"].as_str().unwrap().starts_with("fenced/"), "{held}");
    assert!(held["revision"].as_i64().unwrap() > 0, "{held}");
    let mut waiter = waiter;
    waiter.signal(Signal::SIGTERM);
    assert!(waiter.wait_exit(EVENTUALLY));
    assert_eq!(waiter.code, Some(0), "{}", waiter.stderr());
    let keys = run(&urls, &["kv", "get", "fenced/", "--prefix", "--keys-only"]);
    assert_eq!(keys.stdout.trim(), "", "SIGTERM released the lock: {}", keys.stderr);
}

// ---------------------------------------------------------------------------
// Elect.

/// How many keys (candidates) are under `prefix`, by a linearizable read.
fn candidates(cluster: &Cluster, prefix: &str) -> u64 {
    let output = cluster.etcdctl(&["get", prefix, "--prefix", "--keys-only", "-w", "json"]);
    if !output.success() {
        return 0;
    }
    output.json()["count"].as_u64().unwrap_or(0)
}

/// The (key, value) pairs printed by `zongheng elect`, two lines each.
fn leaders(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

#[test]
fn elect_hands_over_when_the_leader_stops_and_listen_follows() {
    let Some(cluster) = start_cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.client_urls();
    let mut listener = Background::spawn(&urls[2..], &["elect", "web", "--listen"], dir.path(), "listener");
    let mut alpha = Background::spawn(&urls[..1], &["elect", "web", "alpha"], dir.path(), "alpha");
    assert!(alpha.wait_stdout(|text| leaders(text).len() == 1), "{}", alpha.stderr());
    let alpha_key = leaders(&alpha.stdout())[0].0.clone();
    assert!(alpha_key.starts_with("web/"), "{alpha_key}");
    assert!(
        listener.wait_stdout(|text| !leaders(text).is_empty()),
        "{}",
        listener.stderr()
    );

    let mut beta = Background::spawn(&urls[1..2], &["elect", "web", "beta", "--ttl", "2"], dir.path(), "beta");
    // Beta's key must be created before gamma's: the queue is in create
    // revision order, and two processes started together race for it.
    assert!(
        wait_for(EVENTUALLY, Duration::from_millis(20), || (candidates(&cluster, "web/")
            == 2)
            .then_some(()))
        .is_some(),
        "beta's candidacy never appeared: {} / {}",
        beta.stderr(),
        cluster.etcdctl(&["get", "web/", "--prefix", "--keys-only", "-w", "json"])
    );
    let mut gamma = Background::spawn(&urls[2..], &["elect", "web", "gamma"], dir.path(), "gamma");
    std::thread::sleep(STAYS_BLOCKED);
    assert_eq!(beta.stdout(), "", "one leader at a time");

    // SIGTERM: alpha resigns, beta (the next by create revision) leads.
    alpha.signal(Signal::SIGTERM);
    assert!(alpha.wait_exit(EVENTUALLY));
    assert_eq!(alpha.code, Some(0), "{}", alpha.stderr());
    assert!(beta.wait_stdout(|text| leaders(text).len() == 1), "{}", beta.stderr());
    assert_eq!(gamma.stdout(), "", "gamma waits behind beta");

    // SIGKILL: beta cannot resign; its 2 s lease expires and gamma leads.
    let killed_at = Instant::now();
    beta.signal(Signal::SIGKILL);
    assert!(beta.wait_exit(EVENTUALLY));
    assert!(gamma.wait_stdout(|text| leaders(text).len() == 1), "{}", gamma.stderr());
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1_000),
        "gamma must wait for beta's lease to expire"
    );
    assert!(
        listener.wait_stdout(|text| leaders(text).len() == 3),
        "{}",
        listener.stdout()
    );
    let observed = leaders(&listener.stdout());
    let values: Vec<&str> = observed.iter().map(|(_, value)| value.as_str()).collect();
    assert_eq!(values, ["alpha", "beta", "gamma"], "{observed:?}");
    assert_eq!(observed[0].0, alpha_key);
    assert_eq!(observed[1], leaders(&beta.stdout())[0]);
    assert_eq!(observed[2], leaders(&gamma.stdout())[0]);

    gamma.signal(Signal::SIGINT);
    assert!(gamma.wait_exit(EVENTUALLY));
    assert_eq!(gamma.code, Some(0), "{}", gamma.stderr());
    listener.signal(Signal::SIGTERM);
    assert!(listener.wait_exit(EVENTUALLY));
    assert_eq!(listener.code, Some(0), "{}", listener.stderr());
    let keys = run(&urls, &["kv", "get", "web/", "--prefix", "--keys-only"]);
    assert_eq!(keys.stdout.trim(), "", "{}", keys.stderr);
}

// ---------------------------------------------------------------------------
// Bad input.

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

/// How long one bad request may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a call answered: `show(response)`, `<code>: <message>`, or `no answer`.
async fn outcome<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    show: impl Fn(T) -> String,
) -> String {
    match tokio::time::timeout(ANSWER_TIMEOUT, call).await {
        Ok(Ok(response)) => show(response.into_inner()),
        Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
        Err(_) => "no answer".to_string(),
    }
}

/// A watch response as compared: what etcd and zongheng must agree on.
fn show_watch(response: &WatchResponse) -> String {
    let mut text = format!("watch_id={}", response.watch_id);
    if response.created {
        text.push_str(" created");
    }
    if response.canceled {
        text.push_str(&format!(" canceled reason={:?}", response.cancel_reason));
    }
    if !response.events.is_empty() {
        text.push_str(&format!(" events={}", response.events.len()));
    }
    text
}

/// Sends `requests` on one watch stream and describes each response; a
/// progress request ends the script (its answer, watch id -1, shows the
/// stream still works), so requests that get no answer show as none.
async fn watch_script(channel: Channel, requests: Vec<RequestUnion>) -> String {
    // Every request goes in before the stream is opened: etcd (grpc-go)
    // sends the response headers only with the first answer.
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let progress = RequestUnion::ProgressRequest(WatchProgressRequest {});
    for request in requests.into_iter().chain([progress]) {
        sender
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .unwrap();
    }
    let mut watches = WatchClient::new(channel);
    let opened = watches.watch(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let mut responses = match tokio::time::timeout(ANSWER_TIMEOUT, opened).await {
        Ok(Ok(responses)) => responses.into_inner(),
        Ok(Err(status)) => return format!("{:?}: {}", status.code(), status.message()),
        Err(_) => return "no answer".to_string(),
    };
    let mut shown = Vec::new();
    loop {
        let response = match tokio::time::timeout(ANSWER_TIMEOUT, responses.next()).await {
            Ok(Some(Ok(response))) => response,
            Ok(other) => {
                shown.push(format!("stream ended: {other:?}"));
                return shown.join("; ");
            }
            Err(_) => {
                shown.push("no answer".to_string());
                return shown.join("; ");
            }
        };
        if response.watch_id == -1 && !response.created && !response.canceled {
            shown.push("progress".to_string());
            return shown.join("; ");
        }
        shown.push(show_watch(&response));
    }
}

fn create(key: &str, range_end: &str, watch_id: i64) -> RequestUnion {
    RequestUnion::CreateRequest(WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        watch_id,
        ..Default::default()
    })
}

/// Bad requests and what they answer. `channel` is one member; nothing here
/// may change the store.
async fn bad_input_outcomes(channel: Channel) -> Vec<(&'static str, String)> {
    let unknown: i64 = 0x7777_7777;
    let mut leases = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel.clone());
    let mut locks = LockClient::new(channel.clone());
    let keepalive_unknown = {
        let requests = futures::stream::iter(vec![LeaseKeepAliveRequest { id: unknown }]);
        let first = async {
            let mut responses = leases.lease_keep_alive(requests).await?.into_inner();
            Ok(tonic::Response::new(responses.next().await))
        };
        outcome(
            first,
            |response: Option<Result<LeaseKeepAliveResponse, tonic::Status>>| match response {
                Some(Ok(response)) => format!("id={:x} ttl={}", response.id, response.ttl),
                other => format!("{other:?}"),
            },
        )
        .await
    };
    let granted = |response: zongheng_proto::etcdserverpb::LeaseGrantResponse| format!("granted ttl={}", response.ttl);
    let ok = |_| "ok".to_string();
    let revoke = leases.lease_revoke(LeaseRevokeRequest { id: unknown });
    let revoke_unknown = outcome(revoke, ok).await;
    let time_to_live = leases.lease_time_to_live(LeaseTimeToLiveRequest {
        id: unknown,
        keys: true,
    });
    let time_to_live_unknown = outcome(time_to_live, |response| {
        format!("ttl={} granted_ttl={}", response.ttl, response.granted_ttl)
    })
    .await;
    let grant = leases.lease_grant(LeaseGrantRequest {
        ttl: 9_000_000_001,
        id: 0,
    });
    let grant_too_long = outcome(grant, granted).await;
    let put = kv.put(PutRequest {
        key: b"bad-put".to_vec(),
        value: b"v".to_vec(),
        lease: unknown,
        ..Default::default()
    });
    let put_unknown_lease = outcome(put, |_| "ok".to_string()).await;
    let unlock = locks.unlock(UnlockRequest {
        key: b"bad-lock/1".to_vec(),
    });
    let unlock_not_held = outcome(unlock, |_| "ok".to_string()).await;
    vec![
        ("lease keepalive, unknown lease", keepalive_unknown),
        ("lease revoke, unknown lease", revoke_unknown),
        ("lease timetolive, unknown lease", time_to_live_unknown),
        ("lease grant, TTL above the maximum", grant_too_long),
        ("put, unknown lease", put_unknown_lease),
        ("unlock, key not held", unlock_not_held),
        (
            "watch, range end before the key",
            watch_script(channel.clone(), vec![create("b", "a", 0)]).await,
        ),
        (
            "watch, range end equal to the key",
            watch_script(channel.clone(), vec![create("b", "b", 0)]).await,
        ),
        (
            "watch, duplicate watch id",
            watch_script(channel.clone(), vec![create("a", "", 7), create("b", "", 7)]).await,
        ),
        (
            "watch, cancel of an unknown watch id",
            watch_script(
                channel.clone(),
                vec![RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 99 })],
            )
            .await,
        ),
    ]
}

/// What zongheng answers; where etcd 3.4 answers differently, its answer
/// follows ` | `.
const EXPECTED_OUTCOMES: &[(&str, &str)] = &[
    // etcd answers an unknown lease's keep-alive with TTL 0, not an error.
    ("lease keepalive, unknown lease", "id=77777777 ttl=0"),
    (
        "lease revoke, unknown lease",
        "NotFound: etcdserver: requested lease not found",
    ),
    ("lease timetolive, unknown lease", "ttl=-1 granted_ttl=0"),
    (
        "lease grant, TTL above the maximum",
        "OutOfRange: etcdserver: too large lease TTL (the limit is 9000000000 s) \
         | OutOfRange: etcdserver: too large lease TTL",
    ),
    ("put, unknown lease", "NotFound: etcdserver: requested lease not found"),
    // etcd's Unlock deletes the key, held or not; deleting nothing succeeds.
    ("unlock, key not held", "ok"),
    (
        "watch, range end before the key",
        "watch_id=-1 created canceled reason=\"mvcc: watcher range is empty\"; progress",
    ),
    (
        "watch, range end equal to the key",
        "watch_id=-1 created canceled reason=\"mvcc: watcher range is empty\"; progress",
    ),
    (
        "watch, duplicate watch id",
        "watch_id=7 created; watch_id=-1 created canceled \
         reason=\"mvcc: duplicate watch ID provided on the WatchStream\"; progress",
    ),
    // Nothing to cancel: no answer, and the stream goes on.
    ("watch, cancel of an unknown watch id", "progress"),
];

fn expected(case: &str, etcd: bool) -> String {
    let (_, expected) = EXPECTED_OUTCOMES
        .iter()
        .find(|(name, _)| *name == case)
        .unwrap_or_else(|| panic!("no expectation for {case:?}"));
    let (ours, theirs) = expected.split_once(" | ").unwrap_or((expected, expected));
    if etcd { theirs } else { ours }.to_string()
}

/// The revision each member reports after a linearizable read.
async fn revisions(urls: &[String]) -> Vec<i64> {
    let mut revisions = Vec::new();
    for url in urls {
        let response = KvClient::new(connect(url).await)
            .range(RangeRequest {
                key: b"probe".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        revisions.push(response.header.unwrap().revision);
    }
    revisions
}

/// Runs the bad input against member 1 of `cluster` and checks the answers
/// and that nothing changed.
fn check_bad_input(cluster: &Cluster) {
    let etcd = cluster.kind == Kind::Etcd;
    let label = cluster.kind.label();
    let urls = cluster.client_urls();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        KvClient::new(connect(&urls[0]).await)
            .put(PutRequest {
                key: b"before".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let before = revisions(&urls).await;
        assert!(before.iter().all(|revision| *revision == before[0]), "{before:?}");

        let outcomes = bad_input_outcomes(connect(&urls[1]).await).await;
        for (case, outcome) in &outcomes {
            println!("{label:9} {case:40} {outcome}");
        }
        for (case, outcome) in &outcomes {
            assert_eq!(*outcome, expected(case, etcd), "{label}: {case}");
        }
        assert_eq!(revisions(&urls).await, before, "{label}: bad input changed the store");
        // Every member still takes writes.
        for url in &urls {
            KvClient::new(connect(url).await)
                .put(PutRequest {
                    key: b"after".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|status| panic!("{label}: a put after bad input failed on {url}: {status}"));
        }
        assert_eq!(
            revisions(&urls).await,
            vec![before[0] + 3; urls.len()],
            "{label}: three puts, three revisions"
        );
    });
}

#[test]
fn bad_input_gets_etcds_answers_and_disturbs_nothing() {
    let Some(cluster) = start_cluster() else { return };
    check_bad_input(&cluster);
    // The CLI says the same in words, and exits non-zero.
    let urls = cluster.client_urls();
    let keepalive = run(&urls, &["lease", "keepalive", "77777777", "--once"]);
    assert_eq!(keepalive.code, Some(1));
    assert!(
        keepalive.stderr.contains("lease 77777777 expired or was revoked"),
        "{}",
        keepalive.stderr
    );
    let revoke = run(&urls, &["lease", "revoke", "77777777"]);
    assert_eq!(revoke.code, Some(1));
    assert!(revoke.stderr.contains("requested lease not found"), "{}", revoke.stderr);
    let put = run(&urls, &["kv", "put", "k", "v", "--lease", "77777777"]);
    assert_eq!(put.code, Some(1));
    assert!(put.stderr.contains("requested lease not found"), "{}", put.stderr);
    let watch = run(&urls, &["watch", "b", "a"]);
    assert_eq!(watch.code, Some(1));
    assert!(watch.stderr.contains("watcher range is empty"), "{}", watch.stderr);
    let lock = run(&urls, &["lock", "bad", "--ttl", "100000"]);
    assert_eq!(lock.code, Some(2), "clap refuses the TTL");
    assert!(lock.stderr.contains("the TTL is 1 to 86400 seconds"), "{}", lock.stderr);
}

#[test]
fn bad_input_answers_match_a_real_etcd_cluster() {
    if !etcd_available() || !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(Kind::Etcd, 3);
    check_bad_input(&cluster);
}
