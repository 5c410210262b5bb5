//! The `meta` state machine: the MVCC key-value store plus the cluster's own
//! records (member attributes), as one deterministic [`Application`].

use std::collections::BTreeMap;

use openraft::LogId;
use serde::{Deserialize, Serialize};

use super::command::{MetaCommand, MetaResponse};
use super::mvcc::Mvcc;
use super::MetaRaftConfig;
use crate::raft::codec::{self, CodecError};
use crate::raft::Application;
use crate::store::shard_map::ShardMap;

/// What a member published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaApp {
    pub kv: Mvcc,
    pub members: BTreeMap<u64, MemberAttributes>,
    /// The timestamp oracle's committed high-water mark, in physical ms.
    pub timestamp_high_water_ms: u64,
    /// Where the data store's partitions live.
    pub shard_map: ShardMap,
}

impl Application for MetaApp {
    type Config = MetaRaftConfig;

    fn apply(&mut self, _log_id: &LogId<u64>, command: &MetaCommand) -> MetaResponse {
        self.apply_command(command)
    }

    fn empty_response() -> MetaResponse {
        MetaResponse::Done
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

impl MetaApp {
    /// Apply one command (a batch command by command, in order).
    fn apply_command(&mut self, command: &MetaCommand) -> MetaResponse {
        let result = match command {
            MetaCommand::Put(request) => self.kv.put(request).map(MetaResponse::Put),
            MetaCommand::DeleteRange(request) => self.kv.delete_range(request).map(MetaResponse::DeleteRange),
            MetaCommand::Txn(request) => self.kv.txn(request).map(MetaResponse::Txn),
            MetaCommand::Compact(request) => self.kv.compact(request).map(MetaResponse::Compact),
            MetaCommand::LeaseGrant { id, ttl } => {
                self.kv.lease_grant(*id, *ttl).map(|()| MetaResponse::LeaseGranted {
                    id: *id,
                    ttl: *ttl,
                    revision: self.kv.revision(),
                })
            }
            MetaCommand::LeaseRevoke { id } => self
                .kv
                .lease_revoke(*id)
                .map(|revision| MetaResponse::LeaseRevoked { revision }),
            MetaCommand::PublishMember { id, name, client_urls } => {
                self.members.insert(
                    *id,
                    MemberAttributes {
                        name: name.clone(),
                        client_urls: client_urls.clone(),
                    },
                );
                Ok(MetaResponse::Done)
            }
            MetaCommand::ForgetMember { id } => {
                self.members.remove(id);
                self.shard_map.forget_node(*id);
                Ok(MetaResponse::Done)
            }
            MetaCommand::TimestampMark { high_water_ms } => {
                self.timestamp_high_water_ms = self.timestamp_high_water_ms.max(*high_water_ms);
                Ok(MetaResponse::Done)
            }
            MetaCommand::Store(command) => {
                return match self.shard_map.apply(command) {
                    Ok(()) => MetaResponse::Done,
                    Err(error) => MetaResponse::StoreRefused(error),
                }
            }
            MetaCommand::Batch(commands) => Ok(MetaResponse::Batch(
                commands.iter().map(|command| self.apply_command(command)).collect(),
            )),
        };
        result.unwrap_or_else(MetaResponse::Refused)
    }

    /// A digest of the whole replicated state (FNV-1a over its snapshot
    /// encoding, which is deterministic: maps are `BTreeMap`s). Two replicas
    /// that applied the same log prefix have equal digests; the simulator
    /// compares them once a cluster is quiescent.
    pub fn digest(&self) -> u64 {
        let bytes = codec::encode(self).expect("the meta state always encodes");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}
