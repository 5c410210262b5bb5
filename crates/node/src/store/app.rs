//! A partition's replicated state machine: the [`Application`] each
//! partition's Raft group applies.
//!
//! It wraps the partition's [`TxnStore`] with the checks that keep data where
//! readers will look for it. Every command names the partition it was routed
//! to and the shard-map epoch the client routed with, and is refused, the
//! same way on every replica, when:
//!
//! - it reached another partition's group ([`PartitionError::WrongPartition`]);
//! - one of its keys hashes to another partition
//!   ([`PartitionError::KeyNotInPartition`]): stored here, such a key would be
//!   invisible to every reader, who looks for it in its own partition;
//! - its epoch is older than the partition's ([`PartitionError::StaleEpoch`]):
//!   the client's shard map predates a replica move; it refreshes the map and
//!   retries. (Hash partitions never change which keys they hold, so a stale
//!   epoch only means the client may be talking to the wrong nodes; refusing
//!   it makes clients learn moves promptly, as TiKV's region epochs do.)
//!   Epoch 0 means "not tracked" and is never refused: a client without a
//!   shard map lets the node it calls route for it.
//!
//! The first entry of a new group is [`PartitionCommand::Init`], proposed by
//! the replica that creates the group; a move completes with
//! [`PartitionCommand::SetEpoch`].

use std::io::Cursor;

use openraft::LogId;
use serde::{Deserialize, Serialize};
use zongheng_algo::{partition_of, PartitionId};

use super::request::{PartitionRequest, PartitionResponse};
use super::txn::{TxnError, TxnStore};
use crate::raft::codec::{self, CodecError};
use crate::raft::network::PeerAddress;
use crate::raft::runtime::SeededRuntime;
use crate::raft::{url_host_port, Application};

/// A command in a partition's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// The group's first entry: which partition of how many it holds.
    Init { partition: PartitionId, partitions: u32 },
    /// A client request, with the routing it was sent under.
    Request {
        partition: PartitionId,
        epoch: u64,
        request: PartitionRequest,
    },
    /// A replica move finished: requests routed with an older epoch are refused.
    SetEpoch { epoch: u64 },
}

/// Why a partition refused a command (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("partition {partition} is at epoch {current_epoch}, the request was routed with epoch {request_epoch}; refresh the shard map and retry")]
    StaleEpoch {
        partition: PartitionId,
        request_epoch: u64,
        current_epoch: u64,
    },
    #[error("the request for partition {requested} reached partition {actual}; refresh the shard map and retry")]
    WrongPartition {
        requested: PartitionId,
        actual: PartitionId,
    },
    #[error(
        "key {:?} belongs to partition {belongs}, not {partition}",
        String::from_utf8_lossy(key)
    )]
    KeyNotInPartition {
        key: Vec<u8>,
        partition: PartitionId,
        belongs: PartitionId,
    },
    #[error("this partition replica is not initialized yet; retry")]
    NotInitialized,
    #[error("partition {partition} of {partitions} cannot be initialized as {requested} of {requested_partitions}")]
    AlreadyInitialized {
        partition: PartitionId,
        partitions: u32,
        requested: PartitionId,
        requested_partitions: u32,
    },
}

impl PartitionError {
    /// The stable error code clients and operators match on.
    pub fn code(&self) -> &'static str {
        match self {
            PartitionError::Txn(error) => error.code(),
            PartitionError::StaleEpoch { .. } => "ZH_STORE_STALE_EPOCH",
            PartitionError::WrongPartition { .. } => "ZH_STORE_WRONG_PARTITION",
            PartitionError::KeyNotInPartition { .. } => "ZH_STORE_KEY_NOT_IN_PARTITION",
            PartitionError::NotInitialized => "ZH_STORE_NOT_INITIALIZED",
            PartitionError::AlreadyInitialized { .. } => "ZH_STORE_ALREADY_INITIALIZED",
        }
    }
}

/// What applying a [`PartitionCommand`] returns.
pub type PartitionResult = Result<PartitionResponse, PartitionError>;

/// A partition group's member as its Raft membership records it: the node
/// holding the replica (the group's own ids are replica ids, see
/// `store::shard_map`) and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaNode {
    pub node: u64,
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}@{}", self.node, self.peer_urls.join(","))
    }
}

impl PeerAddress for ReplicaNode {
    fn peer_address(&self) -> Option<String> {
        self.peer_urls.first().map(|url| url_host_port(url))
    }
}

openraft::declare_raft_types!(
    /// openraft's types for a `store` partition group.
    pub StoreRaftConfig:
        D = PartitionCommand,
        R = PartitionResult,
        NodeId = u64,
        Node = ReplicaNode,
        AsyncRuntime = SeededRuntime,
);

/// Which partition this replica holds, once initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionIdentity {
    pub partition: PartitionId,
    pub partitions: u32,
}

/// The state of one partition replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionApp {
    pub identity: Option<PartitionIdentity>,
    pub epoch: u64,
    pub store: TxnStore,
}

impl Application for PartitionApp {
    type Config = StoreRaftConfig;

    fn apply(&mut self, _log_id: &LogId<u64>, command: &PartitionCommand) -> PartitionResult {
        match command {
            PartitionCommand::Init { partition, partitions } => self.init(*partition, *partitions),
            PartitionCommand::SetEpoch { epoch } => {
                self.epoch = self.epoch.max(*epoch);
                Ok(PartitionResponse::Done)
            }
            PartitionCommand::Request {
                partition,
                epoch,
                request,
            } => {
                self.check(*partition, *epoch, request)?;
                Ok(self.store.execute(request.clone())?)
            }
        }
    }

    fn empty_response() -> PartitionResult {
        Ok(PartitionResponse::Done)
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

impl PartitionApp {
    /// A digest of the whole replicated state (FNV-1a over its snapshot
    /// encoding, deterministic: maps are ordered). Replicas that applied the
    /// same log prefix have equal digests; the simulator compares them.
    pub fn digest(&self) -> u64 {
        let bytes = codec::encode(self).expect("a partition's state always encodes");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }

    /// Serve a read (get or scan) from the applied state, with the same
    /// checks a write gets. The caller has waited for a read index.
    pub fn read(&self, partition: PartitionId, epoch: u64, request: &PartitionRequest) -> PartitionResult {
        assert!(!request.is_write(), "writes go through the log");
        self.check(partition, epoch, request)?;
        let response = match request {
            PartitionRequest::Get { key, ts } => PartitionResponse::Value(self.store.get(key, *ts)?),
            PartitionRequest::BatchGet { keys, ts } => PartitionResponse::Values(self.store.batch_get(keys, *ts)?),
            PartitionRequest::Scan { start, end, ts, limit } => PartitionResponse::Rows(self.store.scan(
                start,
                end,
                *ts,
                (*limit).min(super::request::SCAN_ROWS_MAX),
            )?),
            _ => unreachable!("checked above: reads only"),
        };
        Ok(response)
    }

    fn init(&mut self, partition: PartitionId, partitions: u32) -> PartitionResult {
        let requested = PartitionIdentity { partition, partitions };
        match self.identity {
            None => {
                self.identity = Some(requested);
                Ok(PartitionResponse::Done)
            }
            Some(identity) if identity == requested => Ok(PartitionResponse::Done),
            Some(identity) => Err(PartitionError::AlreadyInitialized {
                partition: identity.partition,
                partitions: identity.partitions,
                requested: partition,
                requested_partitions: partitions,
            }),
        }
    }

    fn check(&self, partition: PartitionId, epoch: u64, request: &PartitionRequest) -> Result<(), PartitionError> {
        let identity = self.identity.ok_or(PartitionError::NotInitialized)?;
        if partition != identity.partition {
            return Err(PartitionError::WrongPartition {
                requested: partition,
                actual: identity.partition,
            });
        }
        // Epoch 0: the sender does not track epochs (a node routing for a
        // client that keeps no shard map); keys cannot be misplaced by it.
        if epoch != 0 && epoch < self.epoch {
            return Err(PartitionError::StaleEpoch {
                partition,
                request_epoch: epoch,
                current_epoch: self.epoch,
            });
        }
        for key in request_keys(request) {
            let belongs = partition_of(key, identity.partitions);
            if belongs != identity.partition {
                return Err(PartitionError::KeyNotInPartition {
                    key: key.to_vec(),
                    partition: identity.partition,
                    belongs,
                });
            }
        }
        Ok(())
    }
}

/// The keys a request touches (a scan's range is checked by the scan: a
/// partition holds only its own keys, so any range is safe to scan).
fn request_keys(request: &PartitionRequest) -> Vec<&[u8]> {
    match request {
        PartitionRequest::Get { key, .. } => vec![key],
        PartitionRequest::BatchGet { keys, .. } => keys.iter().map(Vec::as_slice).collect(),
        PartitionRequest::Scan { .. } => Vec::new(),
        PartitionRequest::Prewrite {
            mutations, primary: _, ..
        } => {
            // The primary may live in another partition: it is only a pointer.
            mutations.iter().map(|mutation| mutation.key()).collect()
        }
        PartitionRequest::Commit { keys, .. }
        | PartitionRequest::Rollback { keys, .. }
        | PartitionRequest::Resolve { keys, .. } => keys.iter().map(Vec::as_slice).collect(),
        PartitionRequest::CheckTxnStatus { primary, .. } => vec![primary],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::timestamp::Timestamp;
    use crate::store::txn::Mutation;

    const P: u32 = 8;

    fn key_in(partition: PartitionId) -> Vec<u8> {
        (0..)
            .map(|i| format!("key{i}").into_bytes())
            .find(|key| partition_of(key, P) == partition)
            .unwrap()
    }

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    fn prewrite(key: Vec<u8>) -> PartitionRequest {
        PartitionRequest::Prewrite {
            mutations: vec![Mutation::Put {
                key: key.clone(),
                value: b"v".to_vec(),
            }],
            primary: key,
            start_ts: Timestamp::new(10, 0),
            ttl_ms: 1_000,
        }
    }

    fn initialized(partition: PartitionId) -> PartitionApp {
        let mut app = PartitionApp::default();
        app.apply(
            &log_id(1),
            &PartitionCommand::Init {
                partition,
                partitions: P,
            },
        )
        .unwrap();
        app
    }

    #[test]
    fn requests_before_init_are_refused() {
        let mut app = PartitionApp::default();
        let command = PartitionCommand::Request {
            partition: 0,
            epoch: 0,
            request: prewrite(key_in(0)),
        };
        assert_eq!(app.apply(&log_id(1), &command), Err(PartitionError::NotInitialized));
    }

    #[test]
    fn a_key_of_another_partition_is_refused_and_not_stored() {
        let mut app = initialized(3);
        let stray = key_in(5);
        let command = PartitionCommand::Request {
            partition: 3,
            epoch: 0,
            request: prewrite(stray.clone()),
        };
        let error = app.apply(&log_id(2), &command).unwrap_err();
        assert_eq!(error.code(), "ZH_STORE_KEY_NOT_IN_PARTITION");
        assert_eq!(app.store.lock_count(), 0);
        // The same request with a key of this partition goes through.
        let command = PartitionCommand::Request {
            partition: 3,
            epoch: 0,
            request: prewrite(key_in(3)),
        };
        app.apply(&log_id(3), &command).unwrap();
        assert_eq!(app.store.lock_count(), 1);
    }

    #[test]
    fn a_stale_epoch_or_the_wrong_partition_is_refused() {
        let mut app = initialized(2);
        app.apply(&log_id(2), &PartitionCommand::SetEpoch { epoch: 4 }).unwrap();
        let stale = PartitionCommand::Request {
            partition: 2,
            epoch: 3,
            request: prewrite(key_in(2)),
        };
        assert_eq!(
            app.apply(&log_id(3), &stale).unwrap_err(),
            PartitionError::StaleEpoch {
                partition: 2,
                request_epoch: 3,
                current_epoch: 4
            }
        );
        let misrouted = PartitionCommand::Request {
            partition: 1,
            epoch: 4,
            request: prewrite(key_in(1)),
        };
        assert_eq!(
            app.apply(&log_id(4), &misrouted).unwrap_err().code(),
            "ZH_STORE_WRONG_PARTITION"
        );
        // An epoch never goes back.
        app.apply(&log_id(5), &PartitionCommand::SetEpoch { epoch: 1 }).unwrap();
        assert_eq!(app.epoch, 4);
        assert_eq!(app.store.lock_count(), 0);
    }

    #[test]
    fn init_is_idempotent_but_cannot_change_the_partition() {
        let mut app = initialized(2);
        app.apply(
            &log_id(2),
            &PartitionCommand::Init {
                partition: 2,
                partitions: P,
            },
        )
        .unwrap();
        assert_eq!(
            app.apply(
                &log_id(3),
                &PartitionCommand::Init {
                    partition: 3,
                    partitions: P
                }
            )
            .unwrap_err()
            .code(),
            "ZH_STORE_ALREADY_INITIALIZED"
        );
    }

    #[test]
    fn reads_get_the_same_checks_and_the_snapshot_round_trips() {
        let mut app = initialized(6);
        let key = key_in(6);
        let write = PartitionCommand::Request {
            partition: 6,
            epoch: 0,
            request: prewrite(key.clone()),
        };
        app.apply(&log_id(2), &write).unwrap();
        let commit = PartitionCommand::Request {
            partition: 6,
            epoch: 0,
            request: PartitionRequest::Commit {
                keys: vec![key.clone()],
                start_ts: Timestamp::new(10, 0),
                commit_ts: Timestamp::new(11, 0),
            },
        };
        app.apply(&log_id(3), &commit).unwrap();
        let get = PartitionRequest::Get {
            key: key.clone(),
            ts: Timestamp::new(12, 0),
        };
        assert_eq!(app.read(6, 0, &get), Ok(PartitionResponse::Value(Some(b"v".to_vec()))));
        let stray = PartitionRequest::Get {
            key: key_in(0),
            ts: Timestamp::new(12, 0),
        };
        assert_eq!(
            app.read(6, 0, &stray).unwrap_err().code(),
            "ZH_STORE_KEY_NOT_IN_PARTITION"
        );
        let restored = PartitionApp::from_snapshot(&app.to_snapshot().unwrap()).unwrap();
        assert_eq!(restored, app);
    }
}
