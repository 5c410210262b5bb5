//! `zongheng dev`: a local cluster of real node processes on loopback.
//!
//! Each node is this same binary run as `zongheng node ...` in a child
//! process, so what a newcomer tries is what production runs. Ports follow a
//! simple rule from `--base-port P`: node i (from 0) serves clients on
//! `P + 10*i` and peers on `P + 10*i + 1` (2379/2380, 2389/2390, ...). Data
//! lives under `--data-dir` (kept) or a temporary directory (removed on exit).
//! Ctrl-C or SIGTERM stops every node with SIGTERM, then SIGKILL after a
//! grace period; a node that dies on its own stops the whole cluster with its
//! log tail printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Most nodes `dev` starts (a local cluster is for trying things out).
pub const DEV_NODES_MAX: usize = 9;
/// How long stopped nodes get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the cluster gets to elect a leader before `dev` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Keep data here (created if missing) instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First client port; node i uses base+10*i (client) and base+10*i+1 (peer).
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Partitions of the data store (`zongheng store ...`); 0 for none.
    #[arg(long, default_value_t = 8)]
    pub store_partitions: u32,
}

struct DevNode {
    name: String,
    client: String,
    log: PathBuf,
    child: Child,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > DEV_NODES_MAX {
        bail!("--nodes must be between 1 and {DEV_NODES_MAX}");
    }
    let last_port = u32::from(args.base_port) + 10 * (args.nodes as u32 - 1) + 2;
    if last_port > u32::from(u16::MAX) {
        bail!("--base-port {} leaves no room for {} nodes", args.base_port, args.nodes);
    }
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("zongheng-dev-")
                .tempdir()
                .context("cannot create a temporary data dir")?,
        ),
    };
    let root: PathBuf = match (&args.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temporary)) => temporary.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;

    let port = |index: usize, offset: u16| args.base_port + 10 * index as u16 + offset;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let initial_cluster: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", port(i, 1)))
        .collect();
    let initial_cluster = initial_cluster.join(",");
    let executable = std::env::current_exe().context("cannot find the zongheng executable")?;

    let mut nodes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let data_dir = root.join(name);
        let log = root.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let client = format!("127.0.0.1:{}", port(index, 0));
        let child = Command::new(&executable)
            .arg("node")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", port(index, 1))])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "zongheng-dev"])
            .args(["--store-partitions", &args.store_partitions.to_string()])
            .args(["--listen-http-url", &format!("http://127.0.0.1:{}", port(index, 2))])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {name}"))?;
        nodes.push(DevNode {
            name: name.clone(),
            client,
            log,
            child,
        });
    }

    let endpoints: Vec<String> = nodes.iter().map(|node| node.client.clone()).collect();
    let endpoints = endpoints.join(",");
    if let Err(error) = wait_ready(&mut nodes).await {
        stop_all(&mut nodes).await;
        return Err(error);
    }

    println!(
        "zongheng dev cluster: {} nodes on loopback, data in {}",
        nodes.len(),
        root.display()
    );
    for node in &nodes {
        println!(
            "  {}  client http://{}  http/json http://127.0.0.1:{}  log {}",
            node.name,
            node.client,
            node.client
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .unwrap_or(0)
                + 2,
            node.log.display()
        );
    }
    println!();
    println!("Try it:");
    // Print the binary's own path, relative to the working directory when
    // it is inside it (`target/release/zongheng` after `cargo run --release`).
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| executable.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| executable.clone());
    let zongheng = shown.display();
    println!("  {zongheng} kv put greeting hello --endpoints {endpoints}");
    println!("  {zongheng} kv get greeting --endpoints {endpoints}");
    println!("  {zongheng} member list --endpoints {endpoints}");
    println!("  {zongheng} status --endpoints {endpoints}");
    if args.store_partitions > 0 {
        println!("  {zongheng} store put user/1 alice --endpoints {endpoints}");
        println!("  {zongheng} store scan user/ --endpoints {endpoints}");
        println!("  {zongheng} store status --endpoints {endpoints}");
        println!(
            "  curl -X PUT --data alice http://127.0.0.1:{}/v1/store/keys/user/1",
            port(0, 2)
        );
    }
    println!("  ETCDCTL_API=3 etcdctl --endpoints {endpoints} put foo bar");
    println!("  ETCDCTL_API=3 etcdctl --endpoints {endpoints} endpoint status -w table");
    println!();
    println!("Ctrl-C stops the cluster.");

    let outcome = supervise(&mut nodes).await;
    stop_all(&mut nodes).await;
    drop(temporary);
    outcome
}

/// Wait until some node reports a leader (or a node dies).
async fn wait_ready(nodes: &mut [DevNode]) -> anyhow::Result<()> {
    use zongheng_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use zongheng_proto::etcdserverpb::StatusRequest;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        for node in nodes.iter_mut() {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "node {} exited during start ({status}); its log:\n{}",
                    node.name,
                    log_tail(&node.log)
                );
            }
        }
        for node in nodes.iter() {
            let endpoint = format!("http://{}", node.client);
            let Ok(mut client) = MaintenanceClient::connect(endpoint).await else {
                continue;
            };
            if let Ok(reply) = client.status(StatusRequest {}).await {
                if reply.into_inner().leader != 0 {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let tails: Vec<String> = nodes
                .iter()
                .map(|node| format!("--- {}:\n{}", node.name, log_tail(&node.log)))
                .collect();
            bail!(
                "no leader after {} s; node logs:\n{}",
                READY_TIMEOUT.as_secs(),
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run until Ctrl-C / SIGTERM, or until every node has exited. A node that
/// exits (say, killed to watch a failover) is reported and the rest go on.
async fn supervise(nodes: &mut [DevNode]) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reported = vec![false; nodes.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (index, node) in nodes.iter_mut().enumerate() {
                    if reported[index] {
                        continue;
                    }
                    if let Some(status) = node.child.try_wait()? {
                        reported[index] = true;
                        eprintln!("node {} exited ({status}); the others go on. Last lines of its log:\n{}", node.name, log_tail(&node.log));
                    }
                }
                if reported.iter().all(|exited| *exited) {
                    bail!("every node has exited");
                }
            }
        }
    }
}

/// SIGTERM every node we started, then SIGKILL those still running.
async fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(remaining, node.child.wait()).await.is_err() {
            let _ = node.child.kill().await;
        }
    }
    println!("stopped {} nodes", nodes.len());
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
