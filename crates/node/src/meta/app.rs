//! The `meta` state machine: the MVCC key-value store plus the cluster's own
//! records (member attributes), as one deterministic [`Application`].

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::LogId;
use serde::{Deserialize, Serialize};

use zongheng_storage::Engine;

use super::command::{MetaCommand, MetaResponse};
use super::history::FlushMark;
use super::mvcc::Mvcc;
use super::MetaRaftConfig;
use crate::raft::codec::{self, CodecError};
use crate::raft::state_machine::{FlushToken, StateFlush};
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

    fn attach(&mut self, engine: Arc<dyn Engine>, group: u64) {
        self.kv.attach(engine, group);
    }

    fn flush_wanted(&self) -> bool {
        self.kv.history_wants_flush()
    }

    fn flush(&mut self) -> Option<StateFlush> {
        let (batches, mark) = self.kv.history_flush();
        if mark.is_empty() {
            return None;
        }
        Some(StateFlush {
            batches,
            token: Box::new(mark),
        })
    }

    fn flushed(&mut self, token: FlushToken, written: bool) {
        let mark = *token
            .downcast::<FlushMark>()
            .expect("a meta flush token is a FlushMark");
        if written {
            self.kv.history_flushed(mark);
        } else {
            self.kv.history_flush_failed(mark);
        }
    }

    /// The stored snapshot refers to values in this node's engine;
    /// a follower gets them inline.
    fn for_transfer(stored: Vec<u8>, engine: Arc<dyn Engine>, group: u64) -> Result<Vec<u8>, std::io::Error> {
        let mut app: MetaApp = codec::decode(&stored).map_err(std::io::Error::other)?;
        drop(stored);
        app.kv.attach(engine, group);
        app.kv = app.kv.materialized().map_err(std::io::Error::other)?;
        codec::encode(&app).map_err(std::io::Error::other)
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

    /// A digest of the whole replicated state (FNV-1a over its encoding with
    /// every value inline, old values read back from the engine; the encoding
    /// is deterministic: maps are `BTreeMap`s). Two replicas that applied the
    /// same log prefix have equal digests; the simulator compares them once a
    /// cluster is quiescent, which also checks that every replica can read
    /// every old value it lists. Panics if the engine cannot be read.
    pub fn digest(&self) -> u64 {
        let whole = MetaApp {
            kv: self.kv.materialized().expect("the engine answers reads of old values"),
            ..self.clone()
        };
        let bytes = codec::encode(&whole).expect("the meta state always encodes");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}
