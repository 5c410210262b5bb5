//! The `zongheng` binary: parses the command line and runs the command.

use std::sync::Arc;

use clap::Parser;
use zongheng::cli::{Cli, Command, NodeAction};
use zongheng::config::NodeConfig;
use zongheng::net::transport::TcpTransport;

fn init_tracing(level: Option<&str>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    // A node's configuration names how many threads its runtime gets, so it
    // is read (and checked) before the runtime is built.
    let mut node_config = None;
    let mut workers = None;
    if let Command::Node(node) = &cli.command {
        if node.action.is_none() {
            match NodeConfig::load(node.args.clone()) {
                Ok(config) => {
                    workers = Some(config.worker_threads);
                    node_config = Some(config);
                }
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    std::process::exit(1);
                }
            }
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .thread_name("zongheng")
        .build()
        .expect("cannot start the tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(node) => match (node.action, node_config) {
                (Some(NodeAction::Drain(args)), _) => zongheng::cli::store::run_drain(args, false).await,
                (Some(NodeAction::Undrain(args)), _) => zongheng::cli::store::run_drain(args, true).await,
                (None, Some(config)) => {
                    init_tracing(cli.log_level.as_deref());
                    run_node(config).await
                }
                (None, None) => unreachable!("a node's configuration is loaded above"),
            },
            Command::Dev(args) => {
                init_tracing(cli.log_level.as_deref().or(Some("warn")));
                zongheng::cli::dev::run(args).await
            }
            Command::Kv(args) => zongheng::cli::kv::run(args).await,
            Command::Member(args) => zongheng::cli::member::run(args).await,
            Command::Status(args) => zongheng::cli::status::run(args).await,
            Command::Watch(args) => zongheng::cli::watch::run(args).await,
            Command::Lease(args) => zongheng::cli::lease::run(args).await,
            Command::Service(args) => zongheng::cli::service::run(args).await,
            Command::Bench(args) => zongheng::cli::bench::run(*args).await,
            Command::Lock(args) => zongheng::cli::lock::run(args).await,
            Command::Elect(args) => zongheng::cli::elect::run(args).await,
            Command::Store(args) => zongheng::cli::store::run(args).await,
            Command::Txn(args) => zongheng::cli::store::run_txn(args).await,
        }
    });
    if let Err(error) = result {
        eprintln!("Error: {error:#}");
        std::process::exit(1);
    }
}

async fn run_node(config: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|error| anyhow::anyhow!("cannot create --data-dir {}: {error}", config.data_dir.display()))?;
    // The engine first: it locks the data dir against a second process.
    let engine = zongheng_storage::RedbEngine::open(config.data_dir.join("zongheng.redb"))?;
    let wal_dir = config.data_dir.join("wal");
    let files = zongheng_storage::wal::DirFiles::open(&wal_dir)
        .map_err(|error| anyhow::anyhow!("cannot open the log directory {}: {error}", wal_dir.display()))?;
    let wal = zongheng_storage::wal::Wal::open(Arc::new(files))?;
    let node = zongheng::node::start(config, Arc::new(TcpTransport), Arc::new(engine), Arc::new(wal)).await?;
    let fatal = tokio::select! {
        _ = wait_for_termination() => { tracing::info!("shutting down"); None }
        _ = node.removed() => { tracing::warn!("removed from the cluster; shutting down"); None }
        reason = node.fatal() => { tracing::error!(%reason, "raft stopped; shutting down"); Some(reason) }
    };
    node.shutdown().await;
    tracing::info!("stopped");
    match fatal {
        Some(reason) => anyhow::bail!("the node stopped on a fatal error: {reason}"),
        None => Ok(()),
    }
}

/// SIGTERM or Ctrl-C.
async fn wait_for_termination() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
