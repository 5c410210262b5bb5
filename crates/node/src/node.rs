//! Assembling a node: identity, storage, the `meta` Raft group, the servers.
//!
//! [`start`] takes everything with side effects from its caller (the
//! transport and the storage engine), so the simulator runs this same code on
//! simulated hosts with an in-memory engine.
//!
//! ## Identity
//! - Bootstrapping (`--initial-cluster-state new`, empty data dir): every member
//!   derives each member's id from the cluster token and the member's name, so
//!   all agree without talking; each calls openraft's `initialize` with the
//!   same membership (openraft accepts that on every node).
//! - Joining (`existing`, empty data dir, after `member add`): the node asks
//!   the members listed in `--initial-cluster` for the member list and finds
//!   its id by its advertised peer URL, as etcd does.
//! - Restarting (the data dir holds an identity): `--initial-cluster*` is
//!   ignored; the membership comes from the node's own log and snapshot.
//!
//! Once a leader exists, the node publishes its name and client URLs into the
//! `meta` state (etcd's "publish"), which is what `member list` shows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zongheng_proto::etcdserverpb::cluster_server::ClusterServer;
use zongheng_proto::etcdserverpb::kv_server::KvServer;
use zongheng_proto::etcdserverpb::lease_server::LeaseServer;
use zongheng_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use zongheng_proto::etcdserverpb::watch_server::WatchServer;
use zongheng_proto::peer::peer_server::PeerServer;
use zongheng_proto::peer::MembersRequest;
use zongheng_proto::v3electionpb::election_server::ElectionServer;
use zongheng_proto::v3lockpb::lock_server::LockServer;
use zongheng_storage::{Durability, Engine, Key, WriteBatch};

use crate::config::{ClusterState, NodeConfig};
use crate::meta::group::member_id;
use crate::meta::{MetaApp, MetaCommand, MetaGroup};
use crate::net::serve::ServeOptions;
use crate::net::transport::Transport;
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerPool, PEER_MESSAGE_BYTES_MAX};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{codec, url_host_port, PeerNode, META_GROUP};
use crate::server::election::ElectionService;
use crate::server::etcd::{EtcdServices, GRPC_OVERHEAD_BYTES};
use crate::server::lease::LeaseService;
use crate::server::lock::LockService;
use crate::server::peer::PeerService;
use crate::server::watch::WatchService;
use crate::store::StoreGroups;

/// Most open client connections per node (each costs buffers and a task).
pub const CLIENT_CONNECTIONS_MAX: usize = 10_000;
/// Largest response a client can receive (etcd's own is 2 GiB - 1, the
/// gRPC maximum); a range over more data fails with `ResourceExhausted`
/// and should be paged with `limit`.
pub const CLIENT_RESPONSE_BYTES_MAX: usize = i32::MAX as usize;
/// Most concurrent gRPC streams (requests in flight) per client connection.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 1_000;
/// Most open peer connections per node (peers keep one each; the rest is
/// headroom for restarts and joining members).
pub const PEER_CONNECTIONS_MAX: usize = 256;
/// HTTP/2 receive window of one stream on the peer listener: twice the
/// largest append message (`raft::network::APPEND_ENTRIES_BYTES_MAX`); a
/// connection's window is twice this. Unread bytes per peer connection are
/// bounded by the connection's window.
pub const PEER_STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How long a joining node keeps asking the cluster for its member id.
const JOIN_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a joining node waits for one member's answer.
const DISCOVERY_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between publish or discovery attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] zongheng_storage::StorageError),
    #[error("cannot listen on {address}: {source} (is another process using the port?)")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining the cluster: {0}")]
    Join(String),
    #[error(
        "the data dir belongs to member {stored:?}, not {configured:?}; use the right --name or another --data-dir"
    )]
    WrongDataDir { stored: String, configured: String },
}

/// Who this node is, persisted on first start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Identity {
    name: String,
    node_id: u64,
    cluster_id: u64,
}

const IDENTITY_KEY: &str = "identity";

/// A running node.
pub struct NodeHandle {
    pub node_id: u64,
    pub client_address: SocketAddr,
    pub peer_address: SocketAddr,
    pub meta: Arc<MetaGroup>,
    /// This node's replicas of the data store's partitions.
    pub store: Arc<StoreGroups>,
    shutdown: watch::Sender<bool>,
    removed: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Resolves once this member has been removed from the cluster (it then
    /// has nothing left to do; etcd exits in that case too).
    pub async fn removed(&self) {
        let mut removed = self.removed.clone();
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Resolves with the reason if Raft stopped by itself (a storage error, a
    /// panic in the state machine): the node can no longer serve and must exit
    /// rather than linger half alive.
    pub async fn fatal(&self) -> String {
        let mut metrics = self.meta.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    }

    /// Stop serving, then stop Raft (flushing what it holds). Followers elect
    /// a new leader after an election timeout if this node led.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for partition in self.store.all() {
            if let Err(error) = partition.raft.shutdown().await {
                tracing::warn!(partition = partition.partition, %error, "partition raft did not shut down cleanly");
            }
        }
        if let Err(error) = self.meta.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }
}

fn cluster_id_for(token: &str, members: &BTreeMap<u64, PeerNode>) -> u64 {
    let ids: Vec<String> = members.keys().map(|id| format!("{id:016x}")).collect();
    member_id(&format!("cluster/{token}/{}", ids.join(",")), 0)
}

fn bootstrap_members(config: &NodeConfig) -> BTreeMap<u64, PeerNode> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            (
                member_id(&format!("member/{}/{name}", config.initial_cluster_token), 0),
                PeerNode {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                },
            )
        })
        .collect()
}

fn read_identity(engine: &dyn Engine) -> Result<Option<Identity>, NodeError> {
    let Some(bytes) = engine.get(
        &Key::Local {
            name: IDENTITY_KEY.into(),
        }
        .encode(),
    )?
    else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|error| NodeError::Raft(format!("stored identity is unreadable: {error}")))
}

fn write_identity(engine: &dyn Engine, identity: &Identity) -> Result<(), NodeError> {
    let mut batch = WriteBatch::new();
    let bytes = codec::encode(identity).map_err(|error| NodeError::Raft(error.to_string()))?;
    batch.put(
        Key::Local {
            name: IDENTITY_KEY.into(),
        }
        .encode(),
        bytes,
    );
    engine.write(batch, Durability::Sync)?;
    Ok(())
}

/// Ask the listed members for the member list until one names this node.
async fn discover_identity(config: &NodeConfig, pool: &PeerPool) -> Result<Identity, NodeError> {
    let deadline = tokio::time::Instant::now() + JOIN_DISCOVERY_TIMEOUT;
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls.iter().map(|url| url_host_port(url)))
        .collect();
    if others.is_empty() {
        return Err(NodeError::Join(
            "--initial-cluster lists no other member to join through".into(),
        ));
    }
    let mut last_problem = String::from("no member answered");
    loop {
        for address in &others {
            let mut client = pool.client(address);
            let mut request = tonic::Request::new(MembersRequest { group_id: META_GROUP });
            request.set_timeout(DISCOVERY_CALL_TIMEOUT);
            // `set_timeout` only tells the server; a member that does not
            // answer at all (powered off, its SYNs dropped) must not hold up
            // the join until the OS gives up on the connection.
            let reply = tokio::time::timeout(DISCOVERY_CALL_TIMEOUT, client.members(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
            match reply {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let mine = reply.members.iter().find(|member| {
                        member
                            .peer_urls
                            .iter()
                            .any(|url| config.advertise_peer_urls.contains(url))
                    });
                    match mine {
                        Some(member) => {
                            return Ok(Identity { name: config.name.clone(), node_id: member.id, cluster_id: reply.cluster_id })
                        }
                        None => {
                            last_problem = format!(
                                "{address} does not list a member with peer URL {}; run `member add {} --peer-urls={}` first",
                                config.advertise_peer_urls[0], config.name, config.advertise_peer_urls[0]
                            )
                        }
                    }
                }
                Err(status) => last_problem = format!("{address}: {}", status.message()),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Join(last_problem));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Start a node: open its state, start Raft and the servers.
pub async fn start(
    config: NodeConfig,
    transport: Arc<dyn Transport>,
    engine: Arc<dyn Engine>,
    wal: Arc<zongheng_storage::wal::Wal>,
) -> Result<NodeHandle, NodeError> {
    let pool = Arc::new(PeerPool::new(transport.clone()));
    let (identity, bootstrap) = match read_identity(&*engine)? {
        Some(identity) => {
            if identity.name != config.name {
                return Err(NodeError::WrongDataDir {
                    stored: identity.name,
                    configured: config.name.clone(),
                });
            }
            tracing::info!(
                node_id = format!("{:x}", identity.node_id),
                "restarting from the data dir; --initial-cluster is ignored"
            );
            (identity, None)
        }
        None => match config.initial_cluster_state {
            ClusterState::New => {
                let members = bootstrap_members(&config);
                let node_id = member_id(&format!("member/{}/{}", config.initial_cluster_token, config.name), 0);
                let identity = Identity {
                    name: config.name.clone(),
                    node_id,
                    cluster_id: cluster_id_for(&config.initial_cluster_token, &members),
                };
                (identity, Some(members))
            }
            ClusterState::Existing => (discover_identity(&config, &pool).await?, None),
        },
    };

    let raft_config = config
        .raft
        .openraft_config(&config.initial_cluster_token)
        .map_err(|error| NodeError::Raft(error.to_string()))?;
    crate::raft::log_store::migrate_engine_log(&*engine, &wal)?;
    // Every group's log writes on this node share fsyncs.
    let commit = crate::raft::group_commit::GroupCommit::start(wal.clone(), engine.clone());
    let log_store = LogStore::new(commit.clone(), META_GROUP);
    let state_machine = StateMachineStore::<MetaApp>::open(engine.clone(), META_GROUP)
        .map_err(|error| NodeError::Raft(error.to_string()))?;
    let shared = state_machine.shared();
    let (removed_sender, removed) = watch::channel(false);
    let removed_sender = Arc::new(removed_sender);
    let network = NetworkFactory::new(pool.clone(), META_GROUP, removed_sender.clone());
    let raft = Raft::new(
        identity.node_id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|error| NodeError::Raft(error.to_string()))?;
    let meta = Arc::new(MetaGroup::new(
        identity.node_id,
        identity.cluster_id,
        raft.clone(),
        shared,
        pool.clone(),
        {
            let transport = transport.clone();
            Arc::new(move || transport.wall_clock_ms())
        },
    ));

    let store = Arc::new(StoreGroups::default());
    let store_record = store_layout_record(&config, &*engine, bootstrap.is_some())?;
    let (shutdown, shutdown_signal) = watch::channel(false);
    let mut tasks = Vec::new();

    // Peer server first: peers must reach us before we take part in elections.
    let (peer_address, peer_listener) =
        transport
            .listen(config.listen_peer)
            .await
            .map_err(|source| NodeError::Listen {
                address: config.listen_peer,
                source,
            })?;
    let peer_listener = crate::net::transport::limit_connections(peer_listener, PEER_CONNECTIONS_MAX, "peer listener");
    let peer_service = PeerServer::new(PeerService::new(meta.clone(), store.clone(), shutdown_signal.clone()))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let mut signal = shutdown_signal.clone();
    tasks.push(tokio::spawn(async move {
        let routes = tonic::service::Routes::new(peer_service);
        // All Raft traffic from a peer shares one long-lived stream
        // (`raft::batch`): its window must hold a whole append batch, or
        // every large append waits for window updates.
        let options = ServeOptions {
            stream_window_bytes: Some(PEER_STREAM_WINDOW_BYTES),
            connection_window_bytes: Some(2 * PEER_STREAM_WINDOW_BYTES),
            ..ServeOptions::default()
        };
        crate::net::serve::serve(routes, peer_listener, options, async move {
            let _ = signal.wait_for(|stop| *stop).await;
        })
        .await;
    }));

    let (client_address, client_listener) =
        transport
            .listen(config.listen_client)
            .await
            .map_err(|source| NodeError::Listen {
                address: config.listen_client,
                source,
            })?;
    let client_listener =
        crate::net::transport::limit_connections(client_listener, CLIENT_CONNECTIONS_MAX, "client listener");
    // etcd's Go clients send `:authority` values (a URL, `#initially=[...]`)
    // that h2 rejects; repair them before h2 sees the request.
    let client_listener: crate::net::transport::Listener =
        Box::pin(futures::StreamExt::map(client_listener, |accepted| {
            accepted.map(|connection| {
                crate::net::transport::BoxedConnection(Box::new(crate::net::h2_authority::AuthorityFixer::new(
                    connection,
                )))
            })
        }));
    let services = EtcdServices::new(meta.clone(), config.limits.clone(), engine.clone());
    let max_message = config.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let lease_service = LeaseService::new(
        meta.clone(),
        std::time::Duration::from_millis(config.raft.election_timeout_ms),
    );
    tasks.push(tokio::spawn(crate::raft::tiebreak::run(
        meta.raft.clone(),
        std::time::Duration::from_millis(config.raft.election_timeout_ms),
        shutdown_signal.clone(),
    )));
    // The data store: this node's replicas follow the shard map (the
    // agent); while this node leads `meta`, it also decides placement (the
    // driver). Partition groups get the split-vote tiebreak when opened.
    tasks.push(tokio::spawn(crate::store::agent::run(
        crate::store::agent::AgentContext {
            node_id: identity.node_id,
            meta: meta.clone(),
            groups: store.clone(),
            engine: engine.clone(),
            commit: commit.clone(),
            pool: pool.clone(),
            raft: config.raft.clone(),
            cluster_token: config.initial_cluster_token.clone(),
            creates_store: store_record.partitions > 0,
            weight: config.store.weight,
            zone: config.store.zone.clone(),
        },
        shutdown_signal.clone(),
    )));
    tasks.push(tokio::spawn(crate::store::driver::run(
        crate::store::driver::DriverContext {
            node_id: identity.node_id,
            meta: meta.clone(),
            pool: pool.clone(),
            partitions: store_record.partitions,
            settings: config.store.clone(),
        },
        shutdown_signal.clone(),
    )));
    tasks.push(tokio::spawn(crate::meta::lease::run_expiry(
        meta.clone(),
        meta.lease_clock.clone(),
        shutdown_signal.clone(),
    )));
    let watch_service = WatchService::new(meta.clone(), shutdown_signal.clone(), config.limits.max_request_bytes);
    let lock_service = LockService::new(meta.clone(), shutdown_signal.clone(), config.limits.clone());
    let election_service = ElectionService::new(meta.clone(), shutdown_signal.clone(), config.limits.clone());
    let store_service = Arc::new(crate::server::store::StoreService::new(
        meta.clone(),
        store.clone(),
        store_record.partitions,
        pool.clone(),
        commit.clone(),
    ));
    let http_address = match config.listen_http {
        Some(address) => {
            let (bound, listener) = transport
                .listen(address)
                .await
                .map_err(|source| NodeError::Listen { address, source })?;
            let listener = crate::net::transport::limit_connections(listener, CLIENT_CONNECTIONS_MAX, "http listener");
            let router = crate::server::http::router(store_service.clone());
            let mut signal = shutdown_signal.clone();
            tasks.push(tokio::spawn(async move {
                crate::net::serve::serve_http1(router, listener, async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await;
            }));
            Some(bound)
        }
        None => None,
    };
    let mut signal = shutdown_signal.clone();
    tasks.push(tokio::spawn(async move {
        let routes = tonic::service::Routes::new(
            KvServer::new(services.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
        )
        .add_service(ClusterServer::new(services.clone()).max_decoding_message_size(max_message))
        .add_service(MaintenanceServer::new(services).max_decoding_message_size(max_message))
        .add_service(LeaseServer::new(lease_service).max_decoding_message_size(max_message))
        .add_service(
            WatchServer::new(watch_service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
        )
        .add_service(LockServer::new(lock_service).max_decoding_message_size(max_message))
        .add_service(
            zongheng_proto::store::store_server::StoreServer::from_arc(store_service)
                .max_decoding_message_size(crate::server::store::PARTITION_CALL_BYTES_MAX + GRPC_OVERHEAD_BYTES)
                .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
        )
        .add_service(
            ElectionServer::new(election_service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(CLIENT_RESPONSE_BYTES_MAX),
        );
        let options = ServeOptions {
            max_concurrent_streams: Some(CLIENT_STREAMS_PER_CONNECTION_MAX),
            ..ServeOptions::default()
        };
        crate::net::serve::serve(routes, client_listener, options, async move {
            let _ = signal.wait_for(|stop| *stop).await;
        })
        .await;
    }));

    if let Some(members) = bootstrap {
        write_identity(&*engine, &identity)?;
        match raft.initialize(members).await {
            Ok(()) => tracing::info!("bootstrapped a new cluster"),
            // Another member's messages got here first: already initialized.
            Err(error) => tracing::info!(%error, "cluster already initialized"),
        }
    } else {
        write_identity(&*engine, &identity)?;
    }

    tasks.push(tokio::spawn(publish_attributes(
        meta.clone(),
        config.name.clone(),
        config.advertise_client_urls.clone(),
        shutdown_signal.clone(),
    )));
    tasks.push(tokio::spawn(watch_removal(
        meta.clone(),
        removed_sender,
        shutdown_signal,
    )));
    tracing::info!(name = config.name, node_id = format!("{:x}", identity.node_id), %client_address, %peer_address, http_address = ?http_address, "node started");
    Ok(NodeHandle {
        node_id: identity.node_id,
        client_address,
        peer_address,
        meta,
        store,
        shutdown,
        removed,
        tasks,
    })
}

/// What this member was told to create the data store with: P. Written once
/// when a member bootstraps a new cluster and read back on every restart
/// (`--store-partitions` is ignored then, as `--initial-cluster` is for the
/// identity). The store itself, once created, lives in `meta`'s shard map;
/// this record only says whether this member may create it (while it leads
/// `meta`) and whether a cluster without a map is still creating its store
/// or has none. A member that joined later has P = 0 here.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreLayoutRecord {
    pub partitions: u32,
}

const STORE_LAYOUT_KEY: &str = "store-layout";

fn store_layout_record(
    config: &NodeConfig,
    engine: &dyn Engine,
    bootstrap: bool,
) -> Result<StoreLayoutRecord, NodeError> {
    let key = Key::Local {
        name: STORE_LAYOUT_KEY.into(),
    }
    .encode();
    if bootstrap {
        let record = StoreLayoutRecord {
            partitions: config.store_partitions,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            key,
            codec::encode(&record).map_err(|error| NodeError::Raft(error.to_string()))?,
        );
        engine.write(batch, Durability::Sync)?;
        return Ok(record);
    }
    let record: StoreLayoutRecord = match engine.get(&key)? {
        Some(bytes) => codec::decode(&bytes)
            .map_err(|error| NodeError::Raft(format!("stored store layout is unreadable: {error}")))?,
        None => StoreLayoutRecord::default(),
    };
    if record.partitions != config.store_partitions {
        tracing::warn!(
            stored = record.partitions,
            flag = config.store_partitions,
            "--store-partitions differs from what this member was created with; the stored value is used"
        );
    }
    Ok(record)
}

/// Record this member's name and client URLs in `meta` once a leader exists,
/// and again whenever they differ from what is recorded.
async fn publish_attributes(
    meta: Arc<MetaGroup>,
    name: String,
    client_urls: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let published = meta.read(|app| app.members.get(&meta.node_id).cloned());
        let current =
            published.is_some_and(|attributes| attributes.name == name && attributes.client_urls == client_urls);
        if current {
            return;
        }
        let command = MetaCommand::PublishMember {
            id: meta.node_id,
            name: name.clone(),
            client_urls: client_urls.clone(),
        };
        tokio::select! {
            result = meta.write(command) => match result {
                Ok(_) => return,
                Err(error) => tracing::debug!(%error, "publishing member attributes; will retry"),
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Report when a membership that once included this node no longer does
/// (the network layer also reports it, when the leader says so).
async fn watch_removal(meta: Arc<MetaGroup>, removed: Arc<watch::Sender<bool>>, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = meta.raft.metrics();
    let mut was_member = false;
    loop {
        let is_member = {
            let current = metrics.borrow_and_update();
            let membership = current.membership_config.membership();
            membership.get_node(&meta.node_id).is_some()
        };
        if is_member {
            was_member = true;
        } else if was_member {
            tracing::warn!(
                node_id = format!("{:x}", meta.node_id),
                "this member was removed from the cluster"
            );
            let _ = removed.send(true);
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
