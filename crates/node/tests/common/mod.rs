//! Process-level test harness: real server processes on loopback, driven by
//! etcdctl.
//!
//! A [`Cluster`] starts N members of one [`Kind`] of server (zongheng, or a
//! real etcd as the reference) as child processes, each with its own data dir
//! and log file in one temp dir, and waits until every member serves a
//! linearizable read. Tests then drive the cluster with the `etcdctl` binary
//! (etcd 3.4, Debian's `etcd-client`) through [`Cluster::etcdctl`], and break
//! it with [`Cluster::kill9`], [`Cluster::stop`], [`Cluster::restart`],
//! [`Cluster::pause`] / [`Cluster::resume`] (SIGSTOP / SIGCONT: a frozen
//! process, as in a long GC pause) and [`Cluster::add_member`]. The
//! [`netns`] module runs members in network namespaces for real partitions.
//!
//! Why processes and etcdctl rather than in-process nodes: this tier checks
//! what an operator sees. A real `kill -9` loses whatever was not fsynced; a
//! real etcdctl decodes exactly what goes over the wire, and the same script
//! run against a real etcd tells us what "compatible" means.
//!
//! Rules the harness keeps:
//! - Every wait is bounded in time; a member that exits while we wait for it
//!   fails the test at once with the tail of its log.
//! - Only processes this harness started are signalled, by PID; `Drop` kills
//!   every child still running, so a failed test leaves nothing behind.
//! - Ports are picked below the kernel's ephemeral range (so no outgoing
//!   connection can take a port between our pick and the server's bind) and
//!   never handed out twice in one test process (tests run in parallel).
//! - A test that panics prints the tail of every member's log (from `Drop`).
//!
//! Switches: `ZONGHENG_PROCESS_TESTS=0` turns off the tests that start zongheng
//! processes (see [`zongheng_enabled`]); `ZONGHENG_KEEP_TEST_DIRS=1` keeps the
//! temp dirs (data and logs) after the test for inspection.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod netns;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a freshly started cluster gets to serve a linearizable read.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one restarted or added member gets to serve a read.
pub const MEMBER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// etcdctl's own per-request timeout (`--command-timeout`).
pub const ETCDCTL_COMMAND_TIMEOUT: &str = "10s";
/// etcdctl's dial timeout (`--dial-timeout`).
pub const ETCDCTL_DIAL_TIMEOUT: &str = "3s";
/// Hard limit on one etcdctl run, in case it hangs despite its own timeouts.
pub const ETCDCTL_PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each member's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;

/// Which server a [`Cluster`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The `zongheng node` binary built by this crate.
    Zongheng,
    /// A real etcd (Debian's `etcd-server`), the reference.
    Etcd,
}

impl Kind {
    /// Short name used in logs and file names.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Zongheng => "zongheng",
            Kind::Etcd => "etcd",
        }
    }

    fn command(self) -> Command {
        match self {
            Kind::Zongheng => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_zongheng"));
                command.arg("node");
                command
            }
            Kind::Etcd => Command::new("etcd"),
        }
    }
}

/// True when the tests that start zongheng processes are switched on
/// (on unless `ZONGHENG_PROCESS_TESTS=0`); prints why not otherwise.
pub fn zongheng_enabled() -> bool {
    let enabled = std::env::var("ZONGHENG_PROCESS_TESTS").map_or(true, |value| value != "0");
    if !enabled {
        println!("SKIPPED (zongheng side): ZONGHENG_PROCESS_TESTS=0 turns off the tests that start zongheng processes");
    }
    enabled
}

/// True when `etcdctl` (3.4, API v3) can be run; prints a skip notice if not.
pub fn etcdctl_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| tool_runs("etcdctl", "version"));
    if !available {
        println!("SKIPPED: etcdctl not found (apt-get install etcd-client)");
    }
    available
}

/// True when the reference `etcd` server can be run; prints a skip notice if not.
pub fn etcd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| tool_runs("etcd", "--version"));
    if !available {
        println!("SKIPPED (reference side): etcd not found (apt-get install etcd-server)");
    }
    available
}

fn tool_runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Hands out a loopback port that no other test in this process has, and that
/// was free a moment ago.
///
/// Ports come from below the kernel's ephemeral range: a port picked by
/// binding `127.0.0.1:0` lies inside that range, where any outgoing
/// connection (etcdctl, a peer dialing another) may take it as its source
/// port before the server binds it. Starting points differ per process so
/// that two test binaries running at once rarely probe the same ports.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOWEST_PORT: u64 = 12_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|low| *low > LOWEST_PORT + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST_PORT;
    let seed = u64::from(std::process::id()).wrapping_mul(7_919);
    let mut handed_out = HANDED_OUT.get_or_init(Default::default).lock().unwrap();
    for _ in 0..span {
        let offset = (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = (LOWEST_PORT + offset) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST_PORT}..{ephemeral_low}");
}

/// What a cluster is started with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of members.
    pub size: usize,
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in milliseconds.
    pub election_ms: u64,
    /// `--snapshot-count`, if set.
    pub snapshot_count: Option<u64>,
    /// More flags for every member.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        // etcd's defaults: short enough for quick failover in tests, long
        // enough not to flap when the 2-core machine is busy compiling.
        Options {
            size: 3,
            heartbeat_ms: 100,
            election_ms: 1_000,
            snapshot_count: None,
            extra_args: Vec::new(),
        }
    }
}

/// One member: its identity, its files and its process, if running.
#[derive(Debug)]
pub struct Member {
    /// `--name`, `n1`, `n2`, ...
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--initial-cluster` this member was first started with.
    initial_cluster: String,
    child: Option<Child>,
    starts: u32,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
}

impl Member {
    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The result of one etcdctl run.
#[derive(Clone, Debug)]
pub struct Ctl {
    pub args: Vec<String>,
    /// Exit code; `None` if killed by a signal (or by our hard timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ctl {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything etcdctl said unless it exited 0.
    #[track_caller]
    pub fn expect_ok(self) -> Ctl {
        assert!(self.success(), "etcdctl failed: {self}");
        self
    }

    /// stdout parsed as JSON (for `-w json`); panics with the output if not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|error| panic!("etcdctl printed no JSON ({error}): {self}"))
    }

    /// stderr without etcd client library log lines (JSON objects with
    /// `"level"`, which carry timestamps and retry counts): what the user is told.
    pub fn errors(&self) -> String {
        self.stderr
            .lines()
            .filter(|line| !line.trim_start().starts_with("{\"level\""))
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

impl std::fmt::Display for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcdctl {} -> exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            truncate(&self.stdout, 4_000),
            truncate(&self.stderr, 4_000)
        )
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let head: String = text.chars().take(max_chars).collect();
        format!("{head}... ({} bytes in all)\n", text.len())
    }
}

/// Runs etcdctl (API v3) against `endpoints` with bounded timeouts, feeding it
/// `stdin` if given.
pub fn etcdctl_at(endpoints: &[String], args: &[&str], stdin: Option<&[u8]>) -> Ctl {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--command-timeout={ETCDCTL_COMMAND_TIMEOUT}"))
        .arg(format!("--dial-timeout={ETCDCTL_DIAL_TIMEOUT}"))
        .args(args);
    let started = Instant::now();
    let (code, stdout, stderr) = run_bounded(command, stdin, ETCDCTL_PROCESS_TIMEOUT)
        .unwrap_or_else(|error| panic!("cannot run etcdctl: {error}"));
    Ctl {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        code,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Runs `command` to completion or until `limit`, then kills it. Returns the
/// exit code (None when killed) and what it printed.
fn run_bounded(
    mut command: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> std::io::Result<(Option<i32>, String, String)> {
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let stdin_writer = child.stdin.take().map(|mut pipe| {
        let input = stdin.unwrap_or_default().to_vec();
        // The child may exit before reading everything; a broken pipe is its answer.
        thread::spawn(move || drop(pipe.write_all(&input)))
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            drop(pipe.read_to_end(&mut bytes));
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout_reader = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr_reader = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            drop(child.kill());
            drop(child.wait());
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(writer) = stdin_writer {
        drop(writer.join());
    }
    let stdout = stdout_reader.join().unwrap_or_default();
    let mut stderr = stderr_reader.join().unwrap_or_default();
    if status.is_none() {
        let _ = writeln!(stderr, "[harness: killed after {limit:?}]");
    }
    Ok((status.and_then(|status| status.code()), stdout, stderr))
}

/// Polls `check` every `interval` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, interval: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

static CLUSTER_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A cluster of server processes on loopback. Dropping it kills them all.
pub struct Cluster {
    pub kind: Kind,
    options: Options,
    /// Initial cluster token, unique per cluster so stray traffic between two
    /// clusters of one test run is refused rather than merged.
    token: String,
    dir: Option<tempfile::TempDir>,
    members: Vec<Member>,
}

impl Cluster {
    /// Starts a cluster of `size` members with default options and waits
    /// until every member serves reads.
    pub fn start(kind: Kind, size: usize) -> Cluster {
        Cluster::start_with(
            kind,
            Options {
                size,
                ..Options::default()
            },
        )
    }

    /// Starts a cluster and waits until every member serves reads.
    pub fn start_with(kind: Kind, options: Options) -> Cluster {
        assert!(options.size >= 1, "a cluster needs a member");
        let sequence = CLUSTER_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-cluster-", kind.label()))
            .tempdir()
            .expect("create the cluster's temp dir");
        let token = format!("{}-test-{}-{}", kind.label(), std::process::id(), sequence);
        let mut members: Vec<Member> = (1..=options.size)
            .map(|index| {
                let name = format!("n{index}");
                Member {
                    data_dir: dir.path().join(format!("{name}.data")),
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    initial_cluster: String::new(),
                    child: None,
                    starts: 0,
                    paused: false,
                }
            })
            .collect();
        let initial_cluster = initial_cluster_of(&members);
        for member in &mut members {
            member.initial_cluster = initial_cluster.clone();
        }
        let mut cluster = Cluster {
            kind,
            options,
            token,
            dir: Some(dir),
            members,
        };
        for index in 0..cluster.members.len() {
            cluster.spawn(index, "new");
        }
        for index in 0..cluster.members.len() {
            cluster.wait_ready(index, CLUSTER_READY_TIMEOUT);
        }
        cluster
    }

    /// The temp dir holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir present until drop").path()
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].child.is_some()
    }

    /// Client URLs of every member, running or not.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URLs of the running members that are not paused (a paused
    /// member accepts connections but never answers: etcdctl would wait
    /// out its whole command timeout on it).
    pub fn live_client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|member| member.child.is_some() && !member.paused)
            .map(Member::client_url)
            .collect()
    }

    /// Index of the member whose client or peer port is `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.members
            .iter()
            .position(|member| member.client_port == port || member.peer_port == port)
    }

    /// Pairs of (`127.0.0.1:PORT`, placeholder) for every port of the
    /// cluster, to take ports out of output that is compared across runs.
    pub fn port_placeholders(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for member in &self.members {
            pairs.push((
                format!("127.0.0.1:{}", member.client_port),
                format!("<{}.client>", member.name),
            ));
            pairs.push((
                format!("127.0.0.1:{}", member.peer_port),
                format!("<{}.peer>", member.name),
            ));
        }
        pairs
    }

    /// Runs etcdctl against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> Ctl {
        etcdctl_at(&self.live_client_urls(), args, None)
    }

    /// Runs etcdctl against every running member, with `stdin` as its input.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &[u8]) -> Ctl {
        etcdctl_at(&self.live_client_urls(), args, Some(stdin))
    }

    /// Runs etcdctl against one member only.
    pub fn etcdctl_on(&self, index: usize, args: &[&str]) -> Ctl {
        etcdctl_at(&[self.members[index].client_url()], args, None)
    }

    /// Waits until member `index` answers a linearizable read (which needs a
    /// leader and a quorum), panicking with its log tail on timeout or exit.
    pub fn wait_ready(&mut self, index: usize, timeout: Duration) {
        let url = self.members[index].client_url();
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < timeout {
            if let Some(status) = self.exited(index) {
                panic!(
                    "{} member {} exited while starting ({status}); its log is below",
                    self.kind.label(),
                    self.members[index].name
                );
            }
            let probe = etcdctl_at(
                std::slice::from_ref(&url),
                &["--command-timeout=2s", "get", "zongheng-test-readiness-probe"],
                None,
            );
            if probe.success() {
                return;
            }
            last = Some(probe);
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} member {} not ready after {timeout:?} (its log is below); last probe: {}",
            self.kind.label(),
            self.members[index].name,
            last.map(|probe| probe.to_string()).unwrap_or_default()
        );
    }

    /// Index of the current leader according to `endpoint status` on the
    /// running members, if they agree on one that is running.
    pub fn leader(&self) -> Option<usize> {
        self.find_leader().ok()
    }

    /// Waits (bounded) until the running members agree on a running leader.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut last_problem = String::new();
        let leader = wait_for(timeout, Duration::from_millis(200), || {
            self.find_leader().map_err(|problem| last_problem = problem).ok()
        });
        leader.unwrap_or_else(|| panic!("no agreed leader within {timeout:?}: {last_problem}"))
    }

    fn find_leader(&self) -> Result<usize, String> {
        let status = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let entries = serde_json::from_str::<serde_json::Value>(status.stdout.trim())
            .ok()
            .filter(|_| status.success())
            .ok_or_else(|| status.to_string())?;
        let mut leaders = HashSet::new();
        let mut leader_index = None;
        for entry in entries.as_array().into_iter().flatten() {
            let leader_id = entry["Status"]["leader"].as_u64().unwrap_or(0);
            leaders.insert(leader_id);
            if leader_id != 0 && entry["Status"]["header"]["member_id"].as_u64() == Some(leader_id) {
                let endpoint = entry["Endpoint"].as_str().unwrap_or_default();
                let port = endpoint.rsplit(':').next().and_then(|port| port.parse().ok());
                leader_index = port.and_then(|port| self.index_of_port(port));
            }
        }
        match leader_index {
            Some(index) if leaders.len() == 1 => Ok(index),
            _ => Err(format!("members report leaders {leaders:?}: {entries}")),
        }
    }

    /// Sends SIGKILL to member `index` and reaps it. Its data dir stays.
    pub fn kill9(&mut self, index: usize) {
        let member = &mut self.members[index];
        let mut child = member
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        // Child::kill sends SIGKILL to this PID, a process we started. It
        // ends a stopped (paused) process too.
        drop(child.kill());
        drop(child.wait());
        member.paused = false;
        append_log_note(&member.log_path, &format!("harness: kill -9 pid {}", child.id()));
    }

    /// Freezes member `index` with SIGSTOP: it keeps its sockets and its
    /// state, the kernel keeps accepting connections for it, but it answers
    /// nothing until [`Cluster::resume`] (a long GC pause, a stalled VM).
    pub fn pause(&mut self, index: usize) {
        let member = &mut self.members[index];
        assert!(!member.paused, "{} is already paused", member.name);
        let pid = member
            .child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        signal_child(pid, nix::sys::signal::Signal::SIGSTOP);
        member.paused = true;
        append_log_note(&member.log_path, &format!("harness: SIGSTOP pid {pid}"));
    }

    /// Continues member `index` after [`Cluster::pause`] with SIGCONT.
    pub fn resume(&mut self, index: usize) {
        let member = &mut self.members[index];
        assert!(member.paused, "{} is not paused", member.name);
        let pid = member
            .child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        signal_child(pid, nix::sys::signal::Signal::SIGCONT);
        member.paused = false;
        append_log_note(&member.log_path, &format!("harness: SIGCONT pid {pid}"));
    }

    /// Whether member `index` is stopped with SIGSTOP.
    pub fn is_paused(&self, index: usize) -> bool {
        self.members[index].paused
    }

    /// PID of member `index`'s process, if running.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].pid()
    }

    /// Sends SIGTERM to member `index` and waits for it to exit; kills it if
    /// it has not exited within [`STOP_TIMEOUT`]. Returns its exit status.
    pub fn stop(&mut self, index: usize) -> Option<ExitStatus> {
        let member = &mut self.members[index];
        let mut child = member
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        if member.paused {
            // A stopped process keeps SIGTERM pending until it runs again.
            signal_child(child.id(), nix::sys::signal::Signal::SIGCONT);
            member.paused = false;
        }
        append_log_note(&member.log_path, &format!("harness: SIGTERM pid {}", child.id()));
        drop(Command::new("kill").args(["-TERM", &child.id().to_string()]).status());
        let exited = wait_for(STOP_TIMEOUT, Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            append_log_note(&member.log_path, "harness: no exit after SIGTERM, kill -9");
            drop(child.kill());
            drop(child.wait());
        }
        exited
    }

    /// Starts a stopped member again on its own data dir with
    /// `--initial-cluster-state existing`, and waits until it serves reads.
    pub fn restart(&mut self, index: usize) {
        self.restart_no_wait(index);
        self.wait_ready(index, MEMBER_READY_TIMEOUT);
    }

    /// Like [`Cluster::restart`] without waiting (to restart several members
    /// that need each other for a quorum).
    pub fn restart_no_wait(&mut self, index: usize) {
        assert!(!self.is_running(index), "{} is still running", self.members[index].name);
        self.spawn(index, "existing");
    }

    /// Adds a member the etcd way: `member add` on the running cluster, then
    /// starts it with `--initial-cluster-state existing` and an
    /// `--initial-cluster` listing every member; waits until it serves reads.
    /// Returns its index.
    pub fn add_member(&mut self) -> usize {
        let index = self.members.len();
        let name = format!("n{}", index + 1);
        let member = Member {
            data_dir: self.dir().join(format!("{name}.data")),
            log_path: self.dir().join(format!("{name}.log")),
            name,
            client_port: free_port(),
            peer_port: free_port(),
            initial_cluster: String::new(),
            child: None,
            starts: 0,
            paused: false,
        };
        let peer_urls = format!("--peer-urls={}", member.peer_url());
        // etcd 3.4 refuses `member add` with "etcdserver: unhealthy cluster"
        // until every member has been connected to the leader for 5 s
        // (--strict-reconfig-check), so a cluster started a moment ago must
        // be asked again. A retry after an unknown outcome may find the
        // member already added.
        let mut last = None;
        let added = wait_for(MEMBER_READY_TIMEOUT, Duration::from_millis(250), || {
            let output = self.etcdctl(&["member", "add", &member.name, &peer_urls]);
            let done = output.success() || output.errors().contains("Peer URLs already exists");
            last = Some(output);
            done.then_some(())
        });
        if added.is_none() {
            panic!(
                "member add {} never succeeded; last: {}",
                member.name,
                last.map(|o| o.to_string()).unwrap_or_default()
            );
        }
        self.members.push(member);
        let initial_cluster = initial_cluster_of(&self.members);
        self.members[index].initial_cluster = initial_cluster;
        self.spawn(index, "existing");
        self.wait_ready(index, MEMBER_READY_TIMEOUT);
        index
    }

    /// Panics (with its log tail) if a member that should run has exited.
    #[track_caller]
    pub fn assert_running(&mut self, index: usize) {
        assert!(self.is_running(index), "{} was not running", self.members[index].name);
        if let Some(status) = self.exited(index) {
            panic!(
                "{} member {} exited ({status}); its log is below",
                self.kind.label(),
                self.members[index].name
            );
        }
    }

    /// The last `lines` lines of member `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let text = std::fs::read(&self.members[index].log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|error| format!("(no log: {error})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of every member's log.
    pub fn print_logs(&self) {
        for (index, member) in self.members.iter().enumerate() {
            eprintln!(
                "===== {} {} (client {}, peer {}, log {}) =====\n{}",
                self.kind.label(),
                member.name,
                member.client_port,
                member.peer_port,
                member.log_path.display(),
                self.log_tail(index, LOG_TAIL_LINES)
            );
        }
    }

    /// Starts member `index`'s process; its output goes to its log file.
    fn spawn(&mut self, index: usize, initial_cluster_state: &str) {
        let kind = self.kind;
        let options = self.options.clone();
        let token = self.token.clone();
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "{} is already running", member.name);
        member.starts += 1;
        let mut command = kind.command();
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&member.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(initial_cluster_state)
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--heartbeat-interval")
            .arg(options.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(options.election_ms.to_string());
        if let Some(snapshot_count) = options.snapshot_count {
            command.arg("--snapshot-count").arg(snapshot_count.to_string());
        }
        command.args(&options.extra_args);
        // Flags say everything: configuration from the test runner's
        // environment (ZONGHENG_CONFIG, ETCD_DATA_DIR, ...) must not leak in.
        for (variable, _) in std::env::vars_os() {
            let variable = variable.to_string_lossy();
            let configures = match kind {
                Kind::Zongheng => variable.starts_with("ZONGHENG_") && variable != "ZONGHENG_LOG_LEVEL",
                Kind::Etcd => variable.starts_with("ETCD_"),
            };
            if configures {
                command.env_remove(variable.as_ref());
            }
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .expect("open member log");
        let _ = writeln!(
            log,
            "===== harness: start #{} of {}: {:?}",
            member.starts, member.name, command
        );
        command
            .env("NO_COLOR", "1") // plain logs in the log file
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {:?}: {error}", kind.label()));
        member.child = Some(child);
    }

    /// If member `index` has exited on its own, reaps it and returns why.
    pub fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        let member = &mut self.members[index];
        let status = member.child.as_mut()?.try_wait().ok().flatten()?;
        member.child = None;
        member.paused = false;
        Some(status)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_logs();
        }
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                drop(child.kill());
                drop(child.wait());
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var("ZONGHENG_KEEP_TEST_DIRS").is_ok_and(|value| value == "1") {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}

fn initial_cluster_of(members: &[Member]) -> String {
    members
        .iter()
        .map(|member| format!("{}={}", member.name, member.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sends `signal` to `pid`, a child this harness started and has not reaped
/// (so the PID cannot have been reused).
pub fn signal_child(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("PID fits in i32"));
    nix::sys::signal::kill(pid, signal).unwrap_or_else(|error| panic!("{signal} to pid {pid}: {error}"));
}

pub(crate) fn append_log_note(path: &Path, note: &str) {
    if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(log, "===== {note}");
    }
}

/// Decodes standard base64 (as etcdctl prints bytes in `-w json`).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(byte: u8) -> Option<u32> {
        Some(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut accumulator = 0u32;
        for (position, byte) in chunk.iter().enumerate() {
            accumulator |= sextet(*byte)? << (18 - 6 * position);
        }
        out.extend_from_slice(&accumulator.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}
