//! `zongheng store` and `zongheng txn`: the data store from the command line.
//!
//! - `store get KEY`, `store put KEY VALUE`, `store delete KEY`: one
//!   snapshot-isolated transaction each;
//! - `store scan PREFIX [--end KEY] [--limit N] [--count]`: keys in a prefix
//!   (or `[PREFIX, END)`), gathered from every partition in key order;
//! - `store status [--json]`: the shard map (partitions, replicas, leaders,
//!   epochs);
//! - `txn`: an interactive transaction read from standard input, one command
//!   per line (`get K`, `put K V`, `delete K`, `scan PREFIX`, `commit`,
//!   `rollback`), for trying snapshot isolation by hand in two terminals.

use std::io::BufRead;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;
use tonic::transport::Endpoint;

use super::client::{display_bytes, json_line, parse_endpoints, print_output, ClientOptions};
use crate::store::client::{Transaction, TxnOptions};
use crate::store::group::ReadMode;
use crate::store::remote::RemoteStore;

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
    /// How fresh reads must be: `l` linearizable (at the partition's leader),
    /// `f` follower (at any replica, after a read index from the leader: as
    /// fresh), `s` stale (at any replica, from what it has applied; may miss
    /// recent writes, but answers while the leader is cut off).
    #[arg(long, global = true, value_enum, default_value = "l")]
    pub consistency: StoreConsistency,
    /// With `--consistency s`: refuse a replica that last heard from its
    /// leader longer ago than this (milliseconds).
    #[arg(long, global = true, default_value_t = 5_000, value_name = "MS")]
    pub max_staleness_ms: u64,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// `--consistency` of `zongheng store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreConsistency {
    #[value(name = "l")]
    Linearizable,
    #[value(name = "f")]
    Follower,
    #[value(name = "s")]
    Stale,
}

impl StoreArgs {
    fn txn_options(&self) -> TxnOptions {
        let read_mode = match self.consistency {
            StoreConsistency::Linearizable => ReadMode::Linearizable,
            StoreConsistency::Follower => ReadMode::Follower,
            StoreConsistency::Stale => ReadMode::Stale {
                max_staleness_ms: self.max_staleness_ms,
            },
        };
        TxnOptions {
            read_mode,
            ..TxnOptions::default()
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Print a key's value (nothing, exit code 1, if it does not exist).
    Get { key: String },
    /// Set a key's value.
    Put { key: String, value: String },
    /// Delete a key.
    Delete { key: String },
    /// Print the values of several keys, read in one snapshot (a line per
    /// key; an empty line for a missing key, `null` in JSON).
    BatchGet {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set several keys at once, atomically (`KEY=VALUE` arguments, or one
    /// per line on standard input with `-`).
    BatchPut {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// List the keys with a prefix (or in [PREFIX, --end)), in key order.
    Scan {
        prefix: String,
        /// Exclusive end of the range instead of the prefix's end.
        #[arg(long)]
        end: Option<String>,
        /// Most keys to print.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
        /// Print only how many keys there are.
        #[arg(long)]
        count: bool,
    },
    /// Show the shard map: partitions, their replicas, leaders and epochs.
    Status,
}

#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    #[command(flatten)]
    pub client: ClientOptions,
}

/// Connect to the endpoints' store service.
pub(crate) async fn connect(options: &ClientOptions) -> anyhow::Result<RemoteStore> {
    let endpoints = parse_endpoints(&options.endpoints).map_err(|error| anyhow::anyhow!("{error}"))?;
    let channels = endpoints
        .iter()
        .map(|endpoint| {
            Endpoint::from_shared(endpoint.url.clone())
                .map(|endpoint| endpoint.tcp_nodelay(true).connect_lazy())
                .with_context(|| format!("bad endpoint {}", endpoint.display))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Requests go straight to each partition's leader once the shard map is
    // known; the endpoints are the way in and the fallback.
    let dialer: crate::store::remote::Dialer = Arc::new(|url: &str| {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        Endpoint::from_shared(url)
            .ok()
            .map(|endpoint| endpoint.tcp_nodelay(true).connect_lazy())
    });
    RemoteStore::connect_with(channels, Some(dialer))
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach the data store at {}: {error}", options.endpoints))
}

/// The first key after every key with `prefix` (empty: no end).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[derive(Serialize)]
struct PartitionJson {
    id: u32,
    replicas: Vec<String>,
    leader: String,
    epoch: u64,
    /// A move under way: `{"add": name, "remove": name}` (either may be null).
    #[serde(skip_serializing_if = "Option::is_none")]
    moving: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct NodeJson {
    id: String,
    name: String,
    weight: u32,
    zone: Option<String>,
    draining: bool,
    replicas: u32,
    leaders: u32,
}

/// The shard map's partitions and nodes as `store status --json` (and the
/// HTTP API) print them.
fn status_parts(map: zongheng_proto::store::ShardMapReply) -> (Vec<PartitionJson>, Vec<NodeJson>) {
    let names: std::collections::BTreeMap<u64, String> =
        map.nodes.iter().map(|node| (node.id, node.name.clone())).collect();
    let name = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("{id:x}"));
    let partitions = map
        .partition_infos
        .into_iter()
        .map(|info| PartitionJson {
            id: info.id,
            replicas: info.replicas,
            leader: info.leader,
            epoch: info.epoch,
            moving: (info.moving_add != 0 || info.moving_remove != 0).then(|| {
                serde_json::json!({
                    "add": (info.moving_add != 0).then(|| name(info.moving_add)),
                    "remove": (info.moving_remove != 0).then(|| name(info.moving_remove)),
                })
            }),
        })
        .collect();
    let nodes = map
        .nodes
        .iter()
        .map(|node| NodeJson {
            id: format!("{:x}", node.id),
            name: node.name.clone(),
            weight: node.weight,
            zone: (!node.zone.is_empty()).then(|| node.zone.clone()),
            draining: node.draining,
            replicas: node.replicas,
            leaders: node.leaders,
        })
        .collect();
    (partitions, nodes)
}

/// `store status --json`'s object.
pub(crate) fn shard_map_json(map: zongheng_proto::store::ShardMapReply) -> serde_json::Value {
    let replication = map.replication;
    let (partitions, nodes) = status_parts(map);
    serde_json::json!({"partitions": partitions, "nodes": nodes, "replication": replication})
}

/// `zongheng node drain|undrain NAME`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node to drain, by the name `member list` shows.
    pub name: String,
    /// Wait until the node holds no replica (or, for undrain, return at once).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// Pause between two looks at a draining node.
const DRAIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Mark a node as draining (or not) and, with `--wait`, follow its replicas
/// leaving until none is left.
pub async fn run_drain(args: DrainArgs, undo: bool) -> anyhow::Result<()> {
    drain(args, undo).await.map_err(with_code)
}

async fn drain(args: DrainArgs, undo: bool) -> anyhow::Result<()> {
    let store = connect(&args.client).await?;
    let (id, mut replicas) = store.drain(&args.name, 0, undo).await?;
    let verb = if undo { "undrained" } else { "draining" };
    if args.client.json && (undo || !args.wait) {
        print_output(&json_line(
            &serde_json::json!({"id": format!("{id:x}"), "name": args.name, "state": verb, "replicas": replicas}),
        ))?;
        return Ok(());
    }
    if !args.client.json {
        print_output(&format!(
            "{} ({id:x}) is {verb}; it holds {replicas} replicas\n",
            args.name
        ))?;
    }
    if undo || !args.wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.wait_timeout);
    let mut shown = replicas;
    while replicas > 0 {
        if std::time::Instant::now() >= deadline {
            bail!(
                "ZH_TIMEOUT: {} still holds {replicas} replicas after {} s",
                args.name,
                args.wait_timeout
            );
        }
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
        if let Ok(map) = store.shard_map().await {
            replicas = map
                .nodes
                .iter()
                .find(|node| node.id == id)
                .map_or(0, |node| node.replicas);
            if replicas != shown && !args.client.json {
                print_output(&format!("{} holds {replicas} replicas\n", args.name))?;
                shown = replicas;
            }
        }
    }
    if args.client.json {
        print_output(&json_line(
            &serde_json::json!({"id": format!("{id:x}"), "name": args.name, "state": "drained", "replicas": 0}),
        ))?;
    } else {
        print_output(&format!("{} is drained: it holds no replica\n", args.name))?;
    }
    Ok(())
}

/// A store error as the CLI prints it: its stable code first.
fn with_code(error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<crate::store::client::StoreError>() {
        Some(store_error) => anyhow::anyhow!("{}: {store_error}", store_error.code()),
        None => error,
    }
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    run_store(args).await.map_err(with_code)
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let store = connect(&args.client).await?;
    let options = args.txn_options();
    let json = args.client.json;
    match args.command {
        StoreCommand::Get { key } => {
            let txn = Transaction::begin(&store, options.clone()).await?;
            match txn.get(key.as_bytes()).await? {
                Some(value) if json => print_output(&json_line(
                    &serde_json::json!({"key": key, "value": display_bytes(&value)}),
                ))?,
                Some(value) => print_output(&format!("{}\n", display_bytes(&value)))?,
                None => {
                    if json {
                        print_output(&json_line(&serde_json::json!({"key": key, "value": null})))?;
                    }
                    std::process::exit(1);
                }
            }
        }
        StoreCommand::Put { key, value } => {
            let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
            txn.put(key.into_bytes(), value.into_bytes());
            let commit_ts = txn.commit().await?;
            if json {
                print_output(&json_line(&serde_json::json!({"commit_ts": commit_ts.0})))?;
            } else {
                print_output("OK\n")?;
            }
        }
        StoreCommand::Delete { key } => {
            let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
            txn.delete(key.into_bytes());
            let commit_ts = txn.commit().await?;
            if json {
                print_output(&json_line(&serde_json::json!({"commit_ts": commit_ts.0})))?;
            } else {
                print_output("OK\n")?;
            }
        }
        StoreCommand::BatchGet { keys } => {
            let txn = Transaction::begin(&store, options.clone()).await?;
            let asked: Vec<Vec<u8>> = keys.iter().map(|key| key.as_bytes().to_vec()).collect();
            let values = txn.batch_get(&asked).await?;
            let mut out = String::new();
            for (key, value) in keys.iter().zip(values) {
                if json {
                    out += &json_line(&serde_json::json!({
                        "key": key,
                        "value": value.as_deref().map(display_bytes),
                    }));
                } else {
                    out += &format!("{}\n", value.as_deref().map(display_bytes).unwrap_or_default());
                }
            }
            print_output(&out)?;
        }
        StoreCommand::BatchPut { pairs } => {
            let lines: Vec<String> = if pairs == ["-"] {
                std::io::stdin().lock().lines().collect::<Result<_, _>>()?
            } else {
                pairs
            };
            let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
            let mut count = 0usize;
            for line in lines.iter().filter(|line| !line.trim().is_empty()) {
                let Some((key, value)) = line.split_once('=') else {
                    bail!("ZH_STORE_BAD_REQUEST: {line:?} is not KEY=VALUE");
                };
                txn.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
                count += 1;
            }
            let commit_ts = txn.commit().await?;
            if json {
                print_output(&json_line(
                    &serde_json::json!({"commit_ts": commit_ts.0, "keys": count}),
                ))?;
            } else {
                print_output(&format!("OK ({count} keys)\n"))?;
            }
        }
        StoreCommand::Scan {
            prefix,
            end,
            limit,
            count,
        } => {
            let start = prefix.as_bytes().to_vec();
            let end = end.map(String::into_bytes).unwrap_or_else(|| prefix_end(&start));
            if !end.is_empty() && end <= start {
                bail!(
                    "ZH_STORE_INVERTED_RANGE: the range end {:?} is not after its start {:?}",
                    String::from_utf8_lossy(&end),
                    prefix
                );
            }
            let txn = Transaction::begin(&store, options.clone()).await?;
            let limit = if count { usize::MAX } else { limit };
            let rows = txn.scan(&start, &end, limit).await?;
            if count {
                if json {
                    print_output(&json_line(&serde_json::json!({"count": rows.len()})))?;
                } else {
                    print_output(&format!("{}\n", rows.len()))?;
                }
            } else {
                let mut out = String::new();
                for (key, value) in rows {
                    if json {
                        out += &json_line(
                            &serde_json::json!({"key": display_bytes(&key), "value": display_bytes(&value)}),
                        );
                    } else {
                        out += &format!("{}\n{}\n", display_bytes(&key), display_bytes(&value));
                    }
                }
                print_output(&out)?;
            }
        }
        StoreCommand::Status => {
            let map = store.shard_map().await?;
            let replication = map.replication;
            let partitions_count = map.partitions;
            let (partitions, nodes) = status_parts(map);
            if json {
                print_output(&json_line(&serde_json::json!({
                    "partitions": partitions,
                    "nodes": nodes,
                    "replication": replication,
                })))?;
            } else {
                let mut out = format!("{partitions_count} partitions, {replication} replicas each\n");
                for partition in &partitions {
                    out += &format!(
                        "partition {:>4}  epoch {:<3} leader {:<12} replicas {}{}\n",
                        partition.id,
                        partition.epoch,
                        if partition.leader.is_empty() {
                            "?"
                        } else {
                            &partition.leader
                        },
                        partition.replicas.join(","),
                        match &partition.moving {
                            Some(moving) => format!("  moving {moving}"),
                            None => String::new(),
                        }
                    );
                }
                out += "nodes:\n";
                for node in &nodes {
                    out += &format!(
                        "  {:<12} {:<16} weight {:<3} replicas {:<4} leaders {:<4}{}{}\n",
                        node.name,
                        node.id,
                        node.weight,
                        node.replicas,
                        node.leaders,
                        node.zone
                            .as_ref()
                            .map(|zone| format!(" zone {zone}"))
                            .unwrap_or_default(),
                        if node.draining { " draining" } else { "" }
                    );
                }
                print_output(&out)?;
            }
        }
    }
    Ok(())
}

/// `zongheng txn`: one transaction, commands from standard input.
pub async fn run_txn(args: TxnArgs) -> anyhow::Result<()> {
    run_txn_commands(args).await.map_err(with_code)
}

async fn run_txn_commands(args: TxnArgs) -> anyhow::Result<()> {
    let store = connect(&args.client).await?;
    let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
    print_output(&format!("begin: start timestamp {}\n", txn.start_ts()))?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => continue,
            ["get", key] => match txn.get(key.as_bytes()).await? {
                Some(value) => print_output(&format!("{}\n", display_bytes(&value)))?,
                None => print_output("(none)\n")?,
            },
            ["put", key, value] => {
                txn.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
                print_output("OK (buffered until commit)\n")?;
            }
            ["delete", key] => {
                txn.delete(key.as_bytes().to_vec());
                print_output("OK (buffered until commit)\n")?;
            }
            ["scan", prefix] => {
                let start = prefix.as_bytes().to_vec();
                for (key, value) in txn.scan(&start, &prefix_end(&start), 1_000).await? {
                    print_output(&format!("{} = {}\n", display_bytes(&key), display_bytes(&value)))?;
                }
            }
            ["commit"] => {
                let commit_ts = txn.commit().await?;
                print_output(&format!("committed at {commit_ts}\n"))?;
                return Ok(());
            }
            ["rollback"] => {
                print_output("rolled back (nothing was written)\n")?;
                return Ok(());
            }
            _ => print_output(&format!(
                "unknown command {line:?}; use get K, put K V, delete K, scan PREFIX, commit or rollback\n"
            ))?,
        }
    }
    bail!("standard input ended before commit: the transaction was not committed")
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
    }
}
