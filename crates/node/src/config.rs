//! A node's configuration: defaults, then a TOML file (`--config`), then
//! `ZONGHENG_*` environment variables, then flags. Flag names follow etcd's
//! (`--listen-client-urls`, `--initial-cluster`, ...) so an etcd operator
//! already knows them; TOML keys are the flag names with `_` for `-`.
//!
//! [`NodeConfig::validate`] checks the result and returns a [`ConfigError`]
//! that says what to change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::raft::{url_host_port, RaftSettings};
use crate::server::etcd::ClientLimits;

/// `zongheng node` flags. Every flag is optional here; defaults are applied
/// by [`NodeConfig::load`].
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NodeArgs {
    /// TOML file with any of these settings (keys are flag names with `_`).
    #[arg(long, env = "ZONGHENG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Human-readable name of this member (unique in the cluster).
    #[arg(long, env = "ZONGHENG_NAME")]
    pub name: Option<String>,
    /// Directory for the node's data (created if missing).
    #[arg(long, env = "ZONGHENG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URL to serve clients on (etcd v3 gRPC API).
    #[arg(long, env = "ZONGHENG_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// URL to serve peers on (Raft and forwarding).
    #[arg(long, env = "ZONGHENG_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// URL to serve the data store's HTTP/JSON API on (none by default).
    #[arg(long, env = "ZONGHENG_LISTEN_HTTP_URL")]
    pub listen_http_url: Option<String>,
    /// Client URL to advertise to the cluster (defaults to --listen-client-urls).
    #[arg(long, env = "ZONGHENG_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Peer URL to advertise to the cluster (defaults to --listen-peer-urls).
    #[arg(long, env = "ZONGHENG_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial members, `name=peer-url,...`; ignored once the data dir holds a member.
    #[arg(long, env = "ZONGHENG_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one (after `member add`).
    #[arg(long, env = "ZONGHENG_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token distinguishing clusters bootstrapped from the same member list.
    #[arg(long, env = "ZONGHENG_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long = "heartbeat-interval", env = "ZONGHENG_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout in milliseconds (at least 3x the heartbeat).
    #[arg(long = "election-timeout", env = "ZONGHENG_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Applied entries between snapshots (after which the log is purged).
    #[arg(long, env = "ZONGHENG_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Largest client request in bytes.
    #[arg(long, env = "ZONGHENG_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one transaction.
    #[arg(long, env = "ZONGHENG_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Longest key in bytes.
    #[arg(long, env = "ZONGHENG_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Partitions of the data store, fixed when the cluster is created
    /// (0, the default: no data store; 32 suits most clusters). Each is a
    /// Raft group on R of the store's nodes.
    #[arg(long, env = "ZONGHENG_STORE_PARTITIONS")]
    pub store_partitions: Option<u32>,
    /// Replicas per data-store partition (R), fixed when the cluster is created.
    #[arg(long, env = "ZONGHENG_STORE_REPLICAS")]
    pub store_replicas: Option<u32>,
    /// This node's share of the data store's replicas, relative to the other
    /// nodes (0: hold none; at most 64).
    #[arg(long, env = "ZONGHENG_STORE_WEIGHT")]
    pub store_weight: Option<u32>,
    /// Failure domain (rack, zone, data centre): replicas of a partition go
    /// to distinct zones while there are enough.
    #[arg(long, env = "ZONGHENG_ZONE")]
    pub zone: Option<String>,
    /// Milliseconds of silence after which the meta leader declares a store
    /// node dead and re-creates its replicas elsewhere.
    #[arg(long, env = "ZONGHENG_STORE_DEAD_AFTER_MS")]
    pub store_dead_after_ms: Option<u64>,
    /// Most replica moves under way at once, cluster-wide.
    #[arg(long, env = "ZONGHENG_STORE_MOVES_MAX")]
    pub store_moves_max: Option<u32>,
    /// Threads running the node's async work (default: one per core, as
    /// Go's GOMAXPROCS for etcd). Nodes sharing a machine can split its cores
    /// between them.
    #[arg(long, env = "ZONGHENG_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// Data-store partitions of a new cluster unless `--store-partitions` says
/// otherwise. The store is opt-in: a cluster used only as an etcd-compatible
/// coordination store should not pay for idle partition groups (each runs
/// its own Raft timers and heartbeats on every replica). When it is wanted,
/// `zongheng_algo::PARTITIONS_DEFAULT` (32) is the suggested count; `dev`
/// starts 8.
pub const STORE_PARTITIONS_DEFAULT: u32 = 0;

/// Replicas per partition unless `--store-replicas` says otherwise.
pub const STORE_REPLICAS_DEFAULT: u32 = 3;
/// A store node silent this long is dead (TiKV's `max-store-down-time` is
/// 30 minutes; this store is smaller and copies faster).
pub const STORE_DEAD_AFTER_MS_DEFAULT: u64 = 60_000;
/// Shortest dead-after threshold: below a few election timeouts, a restart
/// or a leader change would look like a death.
pub const STORE_DEAD_AFTER_MS_MIN: u64 = 1_000;
/// Replica moves under way at once unless `--store-moves-max` says otherwise.
pub const STORE_MOVES_MAX_DEFAULT: u32 = 4;
/// Largest `--store-moves-max`.
pub const STORE_MOVES_MAX_LIMIT: u32 = 64;
/// Largest `--worker-threads`.
pub const WORKER_THREADS_MAX: usize = 256;

/// One worker thread per core the process may use (tokio's own default), or
/// one if that cannot be told.
pub fn worker_threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// How this node takes part in the data store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// R, used when this node creates the store.
    pub replicas: u32,
    pub weight: u32,
    pub zone: Option<String>,
    /// Used while this node is the meta leader (see `store::driver`).
    pub dead_after_ms: u64,
    pub moves_max: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            replicas: STORE_REPLICAS_DEFAULT,
            weight: 1,
            zone: None,
            dead_after_ms: STORE_DEAD_AFTER_MS_DEFAULT,
            moves_max: STORE_MOVES_MAX_DEFAULT,
        }
    }
}

/// Whether this node bootstraps a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    /// Where the HTTP/JSON API listens, if anywhere.
    pub listen_http: Option<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    /// name -> peer URLs, in name order.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub raft: RaftSettings,
    pub limits: ClientLimits,
    /// P, the data store's partition count (0: no data store).
    pub store_partitions: u32,
    pub store: StoreSettings,
    /// Threads of the node's async runtime (`--worker-threads`).
    pub worker_threads: usize,
}

/// What is wrong with a configuration, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("--{flag} {value:?} is not a URL with a host and port (example: http://127.0.0.1:2379)")]
    BadUrl { flag: &'static str, value: String },
    #[error("--{flag} takes one URL for now; got {count}")]
    TooManyUrls { flag: &'static str, count: usize },
    #[error(
        "--initial-cluster {value:?}: each member is name=URL (example: n1=http://127.0.0.1:2380,n2=...); {problem}"
    )]
    BadInitialCluster { value: String, problem: String },
    #[error("--initial-cluster does not list this member ({name}={url}); add it or fix --name / --initial-advertise-peer-urls")]
    NotInInitialCluster { name: String, url: String },
    #[error("--initial-cluster-state must be `new` or `existing`, not {0:?}")]
    BadClusterState(String),
    #[error("--election-timeout ({election_ms} ms) must be at least 3x --heartbeat-interval ({heartbeat_ms} ms)")]
    Timing { heartbeat_ms: u64, election_ms: u64 },
    #[error("--{flag} must be at least {min}, got {value}")]
    TooSmall { flag: &'static str, value: u64, min: u64 },
    #[error("--{flag} must be at most {max}, got {value}")]
    TooLarge { flag: &'static str, value: u64, max: u64 },
    #[error("--name must not be empty")]
    EmptyName,
}

fn parse_url(flag: &'static str, value: &str) -> Result<(String, SocketAddr), ConfigError> {
    let urls: Vec<&str> = value.split(',').map(str::trim).filter(|url| !url.is_empty()).collect();
    if urls.len() != 1 {
        return Err(ConfigError::TooManyUrls {
            flag,
            count: urls.len(),
        });
    }
    let url = urls[0];
    let address = url_host_port(url);
    let socket = address
        .parse::<SocketAddr>()
        .or_else(|_| address.replace("localhost", "127.0.0.1").parse::<SocketAddr>())
        .map_err(|_| ConfigError::BadUrl {
            flag,
            value: url.to_string(),
        })?;
    Ok((url.to_string(), socket))
}

fn split_urls(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parse `name=url,name=url2,...` (a name may repeat to give several URLs).
pub fn parse_initial_cluster(value: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let bad = |problem: String| ConfigError::BadInitialCluster {
        value: value.to_string(),
        problem,
    };
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} has no `=`")))?;
        if name.is_empty() {
            return Err(bad(format!("{entry:?} has an empty name")));
        }
        let address = url_host_port(url);
        if address.parse::<SocketAddr>().is_err() && !address.contains(':') {
            return Err(bad(format!("{url:?} is not a URL with a host and port")));
        }
        members.entry(name.to_string()).or_default().push(url.to_string());
    }
    if members.is_empty() {
        return Err(bad("no members".into()));
    }
    Ok(members)
}

impl NodeArgs {
    /// Fill every field `self` leaves unset from `lower`.
    fn or(self, lower: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config.or(lower.config),
            name: self.name.or(lower.name),
            data_dir: self.data_dir.or(lower.data_dir),
            listen_client_urls: self.listen_client_urls.or(lower.listen_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(lower.listen_peer_urls),
            listen_http_url: self.listen_http_url.or(lower.listen_http_url),
            advertise_client_urls: self.advertise_client_urls.or(lower.advertise_client_urls),
            initial_advertise_peer_urls: self.initial_advertise_peer_urls.or(lower.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(lower.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(lower.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(lower.initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            election_timeout: self.election_timeout.or(lower.election_timeout),
            snapshot_count: self.snapshot_count.or(lower.snapshot_count),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(lower.max_txn_ops),
            max_key_bytes: self.max_key_bytes.or(lower.max_key_bytes),
            store_partitions: self.store_partitions.or(lower.store_partitions),
            store_replicas: self.store_replicas.or(lower.store_replicas),
            store_weight: self.store_weight.or(lower.store_weight),
            zone: self.zone.or(lower.zone),
            store_dead_after_ms: self.store_dead_after_ms.or(lower.store_dead_after_ms),
            store_moves_max: self.store_moves_max.or(lower.store_moves_max),
            worker_threads: self.worker_threads.or(lower.worker_threads),
        }
    }
}

impl NodeConfig {
    /// Merge the file named by `--config` under the flags (and environment,
    /// which clap has already folded into `args`), then apply defaults and
    /// validate.
    pub fn load(args: NodeArgs) -> Result<NodeConfig, ConfigError> {
        let merged = match args.config.clone() {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                let file: NodeArgs = toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
                    path: path.clone(),
                    message: error.to_string(),
                })?;
                args.or(file)
            }
            None => args,
        };
        Self::from_args(merged)
    }

    /// Apply defaults to `args` and validate.
    pub fn from_args(args: NodeArgs) -> Result<NodeConfig, ConfigError> {
        let store = store_settings(&args)?;
        let name = args.name.unwrap_or_else(|| "default".to_string());
        if name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        let data_dir = args
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{name}.zongheng")));
        let listen_client_urls = args
            .listen_client_urls
            .unwrap_or_else(|| "http://127.0.0.1:2379".to_string());
        let listen_peer_urls = args
            .listen_peer_urls
            .unwrap_or_else(|| "http://127.0.0.1:2380".to_string());
        let (client_url, listen_client) = parse_url("listen-client-urls", &listen_client_urls)?;
        let (peer_url, listen_peer) = parse_url("listen-peer-urls", &listen_peer_urls)?;
        let listen_http = match &args.listen_http_url {
            Some(url) => Some(parse_url("listen-http-url", url)?.1),
            None => None,
        };
        let advertise_client_urls = match args.advertise_client_urls {
            Some(urls) => split_urls(&urls),
            None => vec![client_url],
        };
        let advertise_peer_urls = match args.initial_advertise_peer_urls {
            Some(urls) => {
                parse_url("initial-advertise-peer-urls", &urls)?;
                split_urls(&urls)
            }
            None => vec![peer_url],
        };
        let initial_cluster = match args.initial_cluster {
            Some(value) => parse_initial_cluster(&value)?,
            None => BTreeMap::from([(name.clone(), advertise_peer_urls.clone())]),
        };
        let own_urls = initial_cluster.get(&name);
        if !own_urls.is_some_and(|urls| urls.iter().any(|url| advertise_peer_urls.contains(url))) {
            return Err(ConfigError::NotInInitialCluster {
                name,
                url: advertise_peer_urls[0].clone(),
            });
        }
        let initial_cluster_state = match args.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => return Err(ConfigError::BadClusterState(other.to_string())),
        };
        let defaults = RaftSettings::default();
        let heartbeat_ms = args.heartbeat_interval.unwrap_or(defaults.heartbeat_ms);
        let election_ms = args.election_timeout.unwrap_or(defaults.election_timeout_ms);
        if heartbeat_ms < 10 {
            return Err(ConfigError::TooSmall {
                flag: "heartbeat-interval",
                value: heartbeat_ms,
                min: 10,
            });
        }
        if election_ms < 3 * heartbeat_ms {
            return Err(ConfigError::Timing {
                heartbeat_ms,
                election_ms,
            });
        }
        let snapshot_count = args.snapshot_count.unwrap_or(defaults.snapshot_count);
        if snapshot_count < 10 {
            return Err(ConfigError::TooSmall {
                flag: "snapshot-count",
                value: snapshot_count,
                min: 10,
            });
        }
        let limit_defaults = ClientLimits::default();
        let limits = ClientLimits {
            max_request_bytes: args.max_request_bytes.unwrap_or(limit_defaults.max_request_bytes),
            max_txn_ops: args.max_txn_ops.unwrap_or(limit_defaults.max_txn_ops),
            max_key_bytes: args.max_key_bytes.unwrap_or(limit_defaults.max_key_bytes),
        };
        if limits.max_request_bytes < 1024 {
            return Err(ConfigError::TooSmall {
                flag: "max-request-bytes",
                value: limits.max_request_bytes as u64,
                min: 1024,
            });
        }
        if limits.max_txn_ops < 1 {
            return Err(ConfigError::TooSmall {
                flag: "max-txn-ops",
                value: 0,
                min: 1,
            });
        }
        if limits.max_key_bytes < 1 {
            return Err(ConfigError::TooSmall {
                flag: "max-key-bytes",
                value: 0,
                min: 1,
            });
        }
        let store_partitions = args.store_partitions.unwrap_or(STORE_PARTITIONS_DEFAULT);
        if store_partitions > zongheng_algo::PARTITIONS_MAX {
            return Err(ConfigError::TooLarge {
                flag: "store-partitions",
                value: u64::from(store_partitions),
                max: u64::from(zongheng_algo::PARTITIONS_MAX),
            });
        }
        let worker_threads = args.worker_threads.unwrap_or_else(worker_threads_default);
        if worker_threads < 1 {
            return Err(ConfigError::TooSmall {
                flag: "worker-threads",
                value: 0,
                min: 1,
            });
        }
        if worker_threads > WORKER_THREADS_MAX {
            return Err(ConfigError::TooLarge {
                flag: "worker-threads",
                value: worker_threads as u64,
                max: WORKER_THREADS_MAX as u64,
            });
        }
        Ok(NodeConfig {
            name,
            data_dir,
            listen_client,
            listen_peer,
            listen_http,
            advertise_client_urls,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: args
                .initial_cluster_token
                .unwrap_or_else(|| "zongheng-cluster".to_string()),
            raft: RaftSettings {
                heartbeat_ms,
                election_timeout_ms: election_ms,
                snapshot_count,
                snapshot_catchup_entries: (snapshot_count / 2).clamp(5, 5_000),
            },
            limits,
            store_partitions,
            store,
            worker_threads,
        })
    }
}

fn store_settings(args: &NodeArgs) -> Result<StoreSettings, ConfigError> {
    let defaults = StoreSettings::default();
    let at_most = |flag: &'static str, value: u64, max: u64| {
        if value > max {
            Err(ConfigError::TooLarge { flag, value, max })
        } else {
            Ok(())
        }
    };
    let at_least = |flag: &'static str, value: u64, min: u64| {
        if value < min {
            Err(ConfigError::TooSmall { flag, value, min })
        } else {
            Ok(())
        }
    };
    let replicas = args.store_replicas.unwrap_or(defaults.replicas);
    at_least("store-replicas", u64::from(replicas), 1)?;
    at_most(
        "store-replicas",
        u64::from(replicas),
        zongheng_algo::placement::REPLICAS_MAX as u64,
    )?;
    let weight = args.store_weight.unwrap_or(defaults.weight);
    at_most(
        "store-weight",
        u64::from(weight),
        u64::from(zongheng_algo::placement::WEIGHT_MAX),
    )?;
    let zone = args.zone.clone().filter(|zone| !zone.is_empty());
    if let Some(zone) = &zone {
        at_most(
            "zone",
            zone.len() as u64,
            crate::store::shard_map::ZONE_BYTES_MAX as u64,
        )?;
    }
    let dead_after_ms = args.store_dead_after_ms.unwrap_or(defaults.dead_after_ms);
    at_least("store-dead-after-ms", dead_after_ms, STORE_DEAD_AFTER_MS_MIN)?;
    let moves_max = args.store_moves_max.unwrap_or(defaults.moves_max);
    at_least("store-moves-max", u64::from(moves_max), 1)?;
    at_most(
        "store-moves-max",
        u64::from(moves_max),
        u64::from(STORE_MOVES_MAX_LIMIT),
    )?;
    Ok(StoreSettings {
        replicas,
        weight,
        zone,
        dead_after_ms,
        moves_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> NodeArgs {
        let mut args = NodeArgs::default();
        for (key, value) in pairs {
            let value = value.to_string();
            match *key {
                "name" => args.name = Some(value),
                "listen-peer-urls" => args.listen_peer_urls = Some(value),
                "initial-cluster" => args.initial_cluster = Some(value),
                "heartbeat" => args.heartbeat_interval = Some(value.parse().unwrap()),
                "election" => args.election_timeout = Some(value.parse().unwrap()),
                "state" => args.initial_cluster_state = Some(value),
                other => panic!("unknown test key {other}"),
            }
        }
        args
    }

    #[test]
    fn defaults_make_a_single_member_cluster() {
        let config = NodeConfig::from_args(NodeArgs::default()).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.listen_client.to_string(), "127.0.0.1:2379");
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster_state, ClusterState::New);
        assert_eq!(config.limits.max_request_bytes, 1_572_864);
    }

    #[test]
    fn initial_cluster_must_name_this_member() {
        let error = NodeConfig::from_args(args(&[
            ("name", "n1"),
            ("listen-peer-urls", "http://127.0.0.1:2380"),
            ("initial-cluster", "n2=http://127.0.0.1:2390"),
        ]))
        .unwrap_err();
        assert!(matches!(error, ConfigError::NotInInitialCluster { .. }), "{error}");
        let config = NodeConfig::from_args(args(&[
            ("name", "n1"),
            ("listen-peer-urls", "http://127.0.0.1:2380"),
            ("initial-cluster", "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2390"),
        ]))
        .unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
    }

    #[test]
    fn bad_values_say_what_to_change() {
        let error = NodeConfig::from_args(args(&[("heartbeat", "100"), ("election", "200")])).unwrap_err();
        assert!(error.to_string().contains("at least 3x"), "{error}");
        let error = NodeConfig::from_args(args(&[("state", "old")])).unwrap_err();
        assert!(error.to_string().contains("`new` or `existing`"), "{error}");
        let error = parse_initial_cluster("n1").unwrap_err();
        assert!(error.to_string().contains("no `=`"), "{error}");
        for (threads, expected) in [(0, "at least 1"), (WORKER_THREADS_MAX + 1, "at most 256")] {
            let error = NodeConfig::from_args(NodeArgs {
                worker_threads: Some(threads),
                ..Default::default()
            })
            .unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn worker_threads_default_to_the_cores_and_follow_the_flag() {
        let config = NodeConfig::from_args(NodeArgs::default()).unwrap();
        assert_eq!(config.worker_threads, worker_threads_default());
        assert!(config.worker_threads >= 1);
        let config = NodeConfig::from_args(NodeArgs {
            worker_threads: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.worker_threads, 3);
    }

    #[test]
    fn file_values_sit_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "name = \"from-file\"\nsnapshot_count = 500\nheartbeat_interval = 50\n",
        )
        .unwrap();
        let flags = NodeArgs {
            config: Some(path),
            snapshot_count: Some(700),
            ..Default::default()
        };
        let config = NodeConfig::load(flags).unwrap();
        assert_eq!(config.name, "from-file");
        assert_eq!(config.raft.snapshot_count, 700);
        assert_eq!(config.raft.heartbeat_ms, 50);
        let dir_path = dir.path().join("bad.toml");
        std::fs::write(&dir_path, "nmae = \"typo\"\n").unwrap();
        let error = NodeConfig::load(NodeArgs {
            config: Some(dir_path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("nmae"), "{error}");
    }
}
