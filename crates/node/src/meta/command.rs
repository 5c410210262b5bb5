//! What the `meta` Raft log carries, and what applying it answers.
//!
//! Commands reuse the etcd v3 request messages (they already say exactly what
//! etcd means by a put, a txn or a compaction), so a request is checked once at
//! the gRPC edge and applied unchanged on every replica.

use serde::{Deserialize, Serialize};
use zongheng_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    TxnRequest, TxnResponse,
};

use super::mvcc::MvccError;
use crate::store::shard_map::{ShardMapCommand, ShardMapError};

/// One entry of the `meta` log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Grant a lease (the id is chosen before proposing).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revoke a lease: its keys are deleted in one revision.
    LeaseRevoke {
        id: i64,
    },
    /// A member announces the name and client URLs it serves (etcd's publish).
    PublishMember {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Forget the attributes of a removed member.
    ForgetMember {
        id: u64,
    },
    /// Several writes in one entry (see `meta::proposer`), applied in order,
    /// each as if it were an entry of its own. Never nested by the proposer.
    Batch(Vec<MetaCommand>),
    /// The timestamp oracle may hand out timestamps below this physical
    /// millisecond (see `store::timestamp`); the mark never goes down.
    TimestampMark {
        high_water_ms: u64,
    },
    /// A change to the data store's shard map (see `store::shard_map`).
    Store(ShardMapCommand),
}

impl MetaCommand {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaCommand::Put(_) => "put",
            MetaCommand::DeleteRange(_) => "delete_range",
            MetaCommand::Txn(_) => "txn",
            MetaCommand::Compact(_) => "compact",
            MetaCommand::LeaseGrant { .. } => "lease_grant",
            MetaCommand::LeaseRevoke { .. } => "lease_revoke",
            MetaCommand::PublishMember { .. } => "publish_member",
            MetaCommand::ForgetMember { .. } => "forget_member",
            MetaCommand::Batch(_) => "batch",
            MetaCommand::TimestampMark { .. } => "timestamp_mark",
            MetaCommand::Store(_) => "store",
        }
    }
}

/// The result of applying one entry, identical on every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    /// A lease was granted (nothing else changes; `revision` is the current one).
    LeaseGranted {
        id: i64,
        ttl: i64,
        revision: i64,
    },
    /// A lease was revoked; `revision` is the store's revision after it.
    LeaseRevoked {
        revision: i64,
    },
    /// Applied; nothing to report (membership and blank entries, publish).
    Done,
    /// The command was refused by the state machine; nothing changed.
    Refused(MvccError),
    /// One response per command of a [`MetaCommand::Batch`], in order.
    Batch(Vec<MetaResponse>),
    /// The shard map refused a [`MetaCommand::Store`] command; nothing changed.
    StoreRefused(ShardMapError),
}
