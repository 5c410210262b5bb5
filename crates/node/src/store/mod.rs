//! `store`: the sharded, replicated data store (architecture section 18).
//!
//! Keys map to one of P partitions by a fixed hash
//! ([`zongheng_algo::partition_of`]); partitions map to replica sets by
//! consistent hashing with bounded loads ([`zongheng_algo::place`]). Each
//! partition is its own Raft group ([`group`]), applying the transactional
//! store of [`txn`]: Percolator's locks and versions, with timestamps from
//! the meta leader's oracle ([`timestamp`]). The shard map lives in `meta`
//! ([`shard_map`]); the meta leader's [`driver`] decides moves and every
//! node's [`agent`] carries them out. Clients route with [`remote`] and run
//! transactions with [`client`].

pub mod agent;
pub mod app;
pub mod client;
pub mod driver;
pub mod group;
pub mod remote;
pub mod request;
pub mod shard_map;
pub mod timestamp;
pub mod txn;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use zongheng_algo::PartitionId;

/// The partition replicas this node runs, by partition. The peer service
/// looks groups up here; the node adds them as it starts them.
#[derive(Default)]
pub struct StoreGroups {
    groups: RwLock<BTreeMap<PartitionId, Arc<group::PartitionGroup>>>,
}

impl StoreGroups {
    pub fn get(&self, partition: PartitionId) -> Option<Arc<group::PartitionGroup>> {
        self.groups
            .read()
            .expect("store groups lock poisoned")
            .get(&partition)
            .cloned()
    }

    pub fn insert(&self, group: Arc<group::PartitionGroup>) {
        self.groups
            .write()
            .expect("store groups lock poisoned")
            .insert(group.partition, group);
    }

    pub fn remove(&self, partition: PartitionId) -> Option<Arc<group::PartitionGroup>> {
        self.groups
            .write()
            .expect("store groups lock poisoned")
            .remove(&partition)
    }

    /// Every local replica, in partition order.
    pub fn all(&self) -> Vec<Arc<group::PartitionGroup>> {
        self.groups
            .read()
            .expect("store groups lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}
