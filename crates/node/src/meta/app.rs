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

    fn engine_state_range(&self, group: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        Some(self.kv.value_key_range(group))
    }

    fn references(&self, engine_key: &[u8]) -> bool {
        self.kv.holds_value(engine_key)
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

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use zongheng_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
    use zongheng_storage::{Durability, MemEngine, WriteBatch};

    use super::*;
    use crate::raft::state_machine::{sweep_unreferenced, Applied, SWEEP_PAGE_KEYS};

    fn put(app: &mut MetaApp, key: &str, value: &str) {
        app.kv
            .put(&PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
            .unwrap();
    }

    fn flush(app: &mut MetaApp, engine: &MemEngine) {
        if let Some(StateFlush { batches, token }) = app.flush() {
            for batch in batches {
                engine.write(batch, Durability::Buffered).unwrap();
            }
            app.flushed(token, true);
        }
    }

    fn value_keys(engine: &MemEngine) -> Vec<Vec<u8>> {
        let start = super::super::history::engine_key(0, 0, b"");
        let end = super::super::history::engine_key(0, i64::MAX, b"");
        engine.scan_keys(&start, Some(&end), 65_536).unwrap()
    }

    #[test]
    fn a_snapshot_install_sweeps_the_values_only_the_replaced_state_listed() {
        let engine = Arc::new(MemEngine::new());
        let rewrites = SWEEP_PAGE_KEYS + 100;
        // The replaced state: a follower that applied every rewrite of "a"
        // and one of "b", its values in the engine.
        let writes = |app: &mut MetaApp| {
            for index in 0..rewrites {
                put(app, "a", &format!("a{index}"));
            }
            put(app, "b", "b");
        };
        let mut replaced = MetaApp::default();
        replaced.attach(engine.clone(), 0);
        writes(&mut replaced);
        flush(&mut replaced, &engine);
        assert_eq!(value_keys(&engine).len(), rewrites + 1);
        // The leader went on: one more write, and a compaction that dropped
        // every old version of "a". The follower installs its snapshot.
        let mut leader = MetaApp::default();
        writes(&mut leader);
        put(&mut leader, "c", "c");
        let revision = leader.kv.revision();
        leader
            .kv
            .compact(&CompactionRequest {
                revision,
                physical: false,
            })
            .unwrap();
        let mut installed = MetaApp::from_snapshot(&leader.to_snapshot().unwrap()).unwrap();
        installed.attach(engine.clone(), 0);
        flush(&mut installed, &engine);
        // An unrelated key of the group stays whatever happens.
        let other = zongheng_storage::Key::SnapshotMeta { group: 0 }.encode();
        let mut batch = WriteBatch::new();
        batch.put(other.clone(), b"kept".to_vec());
        engine.write(batch, Durability::Sync).unwrap();

        let shared = Arc::new(RwLock::new(Applied {
            app: installed,
            ..Applied::default()
        }));
        let swept = sweep_unreferenced(&shared, &*engine, 0).unwrap();
        assert_eq!(swept, rewrites - 1, "every old version of a, over two pages");
        assert_eq!(value_keys(&engine).len(), 3, "the latest a, b and c");
        assert_eq!(engine.get(&other).unwrap(), Some(b"kept".to_vec()));
        let applied = shared.read().unwrap();
        let everything = applied
            .app
            .kv
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap();
        let values: Vec<Vec<u8>> = everything.kvs.into_iter().map(|kv| kv.value).collect();
        let last = format!("a{}", rewrites - 1).into_bytes();
        assert_eq!(values, vec![last, b"b".to_vec(), b"c".to_vec()]);
        drop(applied);
        // A second sweep finds nothing left to delete.
        assert_eq!(sweep_unreferenced(&shared, &*engine, 0).unwrap(), 0);
    }
}
