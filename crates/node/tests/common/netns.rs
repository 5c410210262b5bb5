//! Real network partitions: members in network namespaces the test creates.
//!
//! A [`Lab`] is a small private network built from Linux network namespaces
//! (`ip netns`), which only root may create:
//!
//! ```text
//!            hub namespace: bridge `brpeer` (peer traffic), bridge `brclient` (client traffic)
//!              |   p1  p2  p3          c1  c2  c3   cl
//!   n1 ns: peer 172.31.1.1  client 172.31.2.1
//!   n2 ns: peer 172.31.1.2  client 172.31.2.2
//!   n3 ns: peer 172.31.1.3  client 172.31.2.3
//!   client ns:              client 172.31.2.100   (the test's client threads enter it)
//! ```
//!
//! Each member has two links: one on the peer network, one on the client
//! network. [`Lab::isolate`] sets the hub's end of a member's peer link down:
//! the member loses every peer while clients still reach it, which is the
//! interesting partition (an isolated leader that clients keep talking to).
//! Packets are dropped, not refused: TCP connections stall as in a real
//! partition, they do not reset. [`Lab::heal`] brings the link back.
//!
//! Why two networks instead of firewall rules: only iproute2 is needed, a cut
//! is one link state, and nothing depends on the host's iptables flavour.
//!
//! Rules this module keeps (the workplace's rules for test traffic):
//! - Every address used is inside a namespace the lab created (172.31.x.y,
//!   private); nothing is added to or changed in the host's own namespace.
//! - Namespaces are named `<tag>-...` where the tag defaults to `zhn<pid>`;
//!   `Drop` deletes them, also when the test panics. A run that was killed
//!   outright leaves its namespaces behind: the next [`Lab::create`] deletes
//!   those whose test process is gone (it signals nothing).
//! - Members run as `ip netns exec NS zongheng node ...` (ip execs in place,
//!   so the PID is the node's) with `PR_SET_PDEATHSIG` = SIGKILL, so they die
//!   with the test process even when `Drop` never runs. [`NetnsCluster`]
//!   signals only its own children, by PID.
//!
//! `ZONGHENG_NETNS_TAG` overrides the tag (the wrapper script sets it so its
//! `trap` can find and remove what the run created).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;

use super::{append_log_note, Options, LOG_TAIL_LINES};

/// The peer network: member `i` (0-based) is `172.31.1.(i+1)`.
const PEER_SUBNET: &str = "172.31.1";
/// The client network: member `i` is `172.31.2.(i+1)`, the test's clients `.100`.
const CLIENT_SUBNET: &str = "172.31.2";
const CLIENT_HOST: u8 = 100;
/// Ports inside each member's own namespace (every member has its own stack).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// At most this many members: addresses are `.1` to `.9`, below the clients' `.100`.
pub const MEMBERS_MAX: usize = 9;

/// Why partition tests cannot run here, or `None` if they can.
pub fn unavailable_reason() -> Option<String> {
    let euid = std::fs::metadata("/proc/self").map(|metadata| metadata.uid());
    if euid.as_ref().map_or(true, |uid| *uid != 0) {
        return Some(format!("needs root to create network namespaces (uid: {euid:?})"));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Err(error) => Some(format!("`ip` (iproute2) cannot run: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "`ip netns list` fails: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs `ip ARGS`, returning its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn namespace_names() -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output();
    let text = output.map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Deletes namespaces `zhn<pid>-...` left by test processes that no longer
/// exist. Processes still inside one (there should be none: members die
/// with their test) keep it alive; they are reported, never signalled.
fn remove_stale_namespaces() {
    for name in namespace_names() {
        let Some(pid) = name
            .strip_prefix("zhn")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let pids = Command::new("ip")
            .args(["netns", "pids", &name])
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        eprintln!(
            "netns: removing stale namespace {name} of a finished test process {pid} (processes inside: [{pids}])"
        );
        drop(ip(&["netns", "del", &name]));
    }
}

/// A private network of namespaces; see the module doc. Dropping it deletes
/// every namespace it created (and with them every link).
pub struct Lab {
    tag: String,
    members: usize,
    /// Created namespaces, in creation order (deleted in reverse).
    namespaces: Vec<String>,
}

impl Lab {
    /// Builds the network for `members` members.
    pub fn create(members: usize) -> Result<Lab, String> {
        assert!((1..=MEMBERS_MAX).contains(&members), "1 to {MEMBERS_MAX} members");
        remove_stale_namespaces();
        let tag = std::env::var("ZONGHENG_NETNS_TAG").unwrap_or_else(|_| format!("zhn{}", std::process::id()));
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "ZONGHENG_NETNS_TAG must be letters and digits: {tag:?}"
        );
        let mut lab = Lab {
            tag,
            members,
            namespaces: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn add_namespace(&mut self, name: String) -> Result<(), String> {
        if namespace_names().contains(&name) {
            // Left by an earlier lab of this same process: ours to remove.
            ip(&["netns", "del", &name])?;
        }
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub_ns();
        self.add_namespace(hub.clone())?;
        for bridge in ["brpeer", "brclient"] {
            ip(&["-n", &hub, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", bridge, "up"])?;
        }
        for index in 0..self.members {
            let ns = self.member_ns(index);
            self.add_namespace(ns.clone())?;
            self.attach(&ns, &format!("p{}", index + 1), "brpeer", "peer", &self.peer_ip(index))?;
            self.attach(
                &ns,
                &format!("c{}", index + 1),
                "brclient",
                "client",
                &self.client_ip(index),
            )?;
        }
        let client_ns = self.client_ns();
        self.add_namespace(client_ns.clone())?;
        let client_address = format!("{CLIENT_SUBNET}.{CLIENT_HOST}");
        self.attach(&client_ns, "cl", "brclient", "client", &client_address)
    }

    /// A veth from the hub's `bridge` (hub end `hub_end`) into `ns` (end
    /// `inner_end` with `address`/24).
    fn attach(&self, ns: &str, hub_end: &str, bridge: &str, inner_end: &str, address: &str) -> Result<(), String> {
        let hub = self.hub_ns();
        ip(&[
            "-n", &hub, "link", "add", hub_end, "type", "veth", "peer", "name", inner_end, "netns", ns,
        ])?;
        ip(&["-n", &hub, "link", "set", hub_end, "master", bridge])?;
        ip(&["-n", &hub, "link", "set", hub_end, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{address}/24"), "dev", inner_end])?;
        ip(&["-n", ns, "link", "set", inner_end, "up"])
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn members(&self) -> usize {
        self.members
    }

    pub fn hub_ns(&self) -> String {
        format!("{}-hub", self.tag)
    }

    pub fn client_ns(&self) -> String {
        format!("{}-client", self.tag)
    }

    pub fn member_ns(&self, index: usize) -> String {
        format!("{}-n{}", self.tag, index + 1)
    }

    pub fn peer_ip(&self, index: usize) -> String {
        format!("{PEER_SUBNET}.{}", index + 1)
    }

    pub fn client_ip(&self, index: usize) -> String {
        format!("{CLIENT_SUBNET}.{}", index + 1)
    }

    /// Cuts member `index` off from every peer; clients still reach it.
    pub fn isolate(&self, index: usize) -> Result<(), String> {
        ip(&["-n", &self.hub_ns(), "link", "set", &format!("p{}", index + 1), "down"])
    }

    /// Undoes [`Lab::isolate`].
    pub fn heal(&self, index: usize) -> Result<(), String> {
        ip(&["-n", &self.hub_ns(), "link", "set", &format!("p{}", index + 1), "up"])
    }

    /// A function that moves the calling thread into the client namespace
    /// (for a tokio runtime's `on_thread_start`: sockets a thread creates
    /// live in the thread's network namespace).
    pub fn client_thread_entry(&self) -> Result<impl Fn() + Send + Sync + 'static, String> {
        let path = format!("/run/netns/{}", self.client_ns());
        let file = std::fs::File::open(&path).map_err(|error| format!("open {path}: {error}"))?;
        let file = Arc::new(file);
        Ok(move || {
            nix::sched::setns(file.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|error| panic!("setns into the client namespace: {error}"));
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.namespaces.iter().rev() {
            if let Err(error) = ip(&["netns", "del", name]) {
                eprintln!("netns: cleanup: {error}");
            }
        }
    }
}

/// One member process in its namespace.
struct NetnsMember {
    name: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// A zongheng cluster whose members run in a [`Lab`]'s namespaces. Dropping
/// it kills the members (by PID), then deletes the namespaces.
pub struct NetnsCluster {
    options: Options,
    token: String,
    members: Vec<NetnsMember>,
    dir: Option<tempfile::TempDir>,
    // Declared last: dropped after the members are gone.
    lab: Lab,
}

impl NetnsCluster {
    /// Starts one member per namespace of `lab` (`--initial-cluster-state
    /// new`), without waiting for them: the caller checks readiness over
    /// gRPC from inside the client namespace.
    pub fn start(lab: Lab, options: Options) -> NetnsCluster {
        let dir = tempfile::Builder::new()
            .prefix("zongheng-netns-cluster-")
            .tempdir()
            .expect("create the cluster's temp dir");
        let members = (0..lab.members())
            .map(|index| {
                let name = format!("n{}", index + 1);
                NetnsMember {
                    data_dir: dir.path().join(format!("{name}.data")),
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                    starts: 0,
                }
            })
            .collect();
        let mut cluster = NetnsCluster {
            token: format!("{}-netns", lab.tag()),
            options,
            members,
            dir: Some(dir),
            lab,
        };
        for index in 0..cluster.members.len() {
            cluster.spawn(index, "new");
        }
        cluster
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    /// `http://172.31.2.<i+1>:2379`, reachable from the client namespace.
    pub fn client_url(&self, index: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.lab.client_ip(index))
    }

    pub fn client_urls(&self) -> Vec<String> {
        (0..self.size()).map(|index| self.client_url(index)).collect()
    }

    fn peer_url(&self, index: usize) -> String {
        format!("http://{}:{PEER_PORT}", self.lab.peer_ip(index))
    }

    /// Panics (the log tails follow from `Drop`) if member `index` exited.
    #[track_caller]
    pub fn assert_running(&mut self, index: usize) {
        let member = &mut self.members[index];
        let child = member
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        if let Ok(Some(status)) = child.try_wait() {
            member.child = None;
            panic!("member {} exited ({status}); its log is below", member.name);
        }
    }

    /// Cuts member `index` off from its peers (see [`Lab::isolate`]).
    pub fn isolate(&mut self, index: usize) {
        self.lab
            .isolate(index)
            .unwrap_or_else(|error| panic!("isolate {}: {error}", self.members[index].name));
        append_log_note(&self.members[index].log_path, "harness: peer link down (isolated)");
    }

    pub fn heal(&mut self, index: usize) {
        self.lab
            .heal(index)
            .unwrap_or_else(|error| panic!("heal {}: {error}", self.members[index].name));
        append_log_note(&self.members[index].log_path, "harness: peer link up (healed)");
    }

    /// Prints the tail of every member's log.
    pub fn print_logs(&self) {
        for (index, member) in self.members.iter().enumerate() {
            let text = std::fs::read(&member.log_path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_else(|error| format!("(no log: {error})"));
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "===== zongheng {} in {} (log {}) =====\n{}",
                member.name,
                self.lab.member_ns(index),
                member.log_path.display(),
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            );
        }
    }

    fn spawn(&mut self, index: usize, initial_cluster_state: &str) {
        let initial_cluster = (0..self.size())
            .map(|other| format!("{}={}", self.members[other].name, self.peer_url(other)))
            .collect::<Vec<_>>()
            .join(",");
        let (client_url, peer_url) = (self.client_url(index), self.peer_url(index));
        let namespace = self.lab.member_ns(index);
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "{} is already running", member.name);
        member.starts += 1;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &namespace])
            .arg(env!("CARGO_BIN_EXE_zongheng"))
            .arg("node")
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg(initial_cluster_state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(self.options.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(self.options.election_ms.to_string())
            .args(&self.options.extra_args);
        for (variable, _) in std::env::vars_os() {
            let variable = variable.to_string_lossy();
            if variable.starts_with("ZONGHENG_") && variable != "ZONGHENG_LOG_LEVEL" {
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
            "===== harness: start #{} of {} in {namespace}: {:?}",
            member.starts, member.name, command
        );
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe. The death signal
        // survives `ip`'s exec of the node (neither is set-uid).
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start ip netns exec ... zongheng node: {error}"));
        member.child = Some(child);
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_logs();
        }
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                // SIGKILL to the PID of a child we started and have not reaped.
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
