//! What a client asks of one partition, and what it gets back.
//!
//! The same enum serves reads (answered by the replica after a read index)
//! and writes (proposed to the partition's Raft group and applied on every
//! replica by [`TxnStore::execute`]). Every request is idempotent: a client
//! that does not know whether its request was applied (a timeout, a lost
//! connection) may send it again, and the second application changes nothing
//! the first did not.

use serde::{Deserialize, Serialize};

use super::timestamp::Timestamp;
use super::txn::{Mutation, Row, TxnError, TxnStatus, TxnStore};

/// Most rows one scan request returns (a scan over more pages).
pub const SCAN_ROWS_MAX: usize = 10_000;
/// Most keys one batch read asks of one partition (a client splits larger
/// batches by partition, and refuses a batch of more than
/// [`BATCH_KEYS_MAX`] keys in all).
pub const BATCH_GET_KEYS_MAX: usize = 4_096;
/// Most keys in one client batch (a batch get, or a batch put's mutations).
pub const BATCH_KEYS_MAX: usize = 10_000;

/// One request to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionRequest {
    Get {
        key: Vec<u8>,
        ts: Timestamp,
    },
    /// Several keys of this partition at one timestamp (values in the same order).
    BatchGet {
        keys: Vec<Vec<u8>>,
        ts: Timestamp,
    },
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
        ts: Timestamp,
        limit: usize,
    },
    Prewrite {
        mutations: Vec<Mutation>,
        primary: Vec<u8>,
        start_ts: Timestamp,
        ttl_ms: u64,
    },
    Commit {
        keys: Vec<Vec<u8>>,
        start_ts: Timestamp,
        commit_ts: Timestamp,
    },
    Rollback {
        keys: Vec<Vec<u8>>,
        start_ts: Timestamp,
    },
    CheckTxnStatus {
        primary: Vec<u8>,
        start_ts: Timestamp,
        current_ts: Timestamp,
    },
    Resolve {
        keys: Vec<Vec<u8>>,
        start_ts: Timestamp,
        commit_ts: Option<Timestamp>,
    },
}

impl PartitionRequest {
    /// Whether the request changes state (and so goes through Raft).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            PartitionRequest::Get { .. } | PartitionRequest::BatchGet { .. } | PartitionRequest::Scan { .. }
        )
    }
}

/// A partition's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionResponse {
    Value(Option<Vec<u8>>),
    Values(Vec<Option<Vec<u8>>>),
    Rows(Vec<Row>),
    Status(TxnStatus),
    Done,
}

impl TxnStore {
    /// Carry out one request (see the module doc). Deterministic: every
    /// replica applying the same requests in the same order ends equal.
    pub fn execute(&mut self, request: PartitionRequest) -> Result<PartitionResponse, TxnError> {
        match request {
            PartitionRequest::Get { key, ts } => self.get(&key, ts).map(PartitionResponse::Value),
            PartitionRequest::BatchGet { keys, ts } => self.batch_get(&keys, ts).map(PartitionResponse::Values),
            PartitionRequest::Scan { start, end, ts, limit } => self
                .scan(&start, &end, ts, limit.min(SCAN_ROWS_MAX))
                .map(PartitionResponse::Rows),
            PartitionRequest::Prewrite {
                mutations,
                primary,
                start_ts,
                ttl_ms,
            } => self
                .prewrite(mutations, &primary, start_ts, ttl_ms)
                .map(|()| PartitionResponse::Done),
            PartitionRequest::Commit {
                keys,
                start_ts,
                commit_ts,
            } => self
                .commit(&keys, start_ts, commit_ts)
                .map(|()| PartitionResponse::Done),
            PartitionRequest::Rollback { keys, start_ts } => {
                self.rollback(&keys, start_ts).map(|()| PartitionResponse::Done)
            }
            PartitionRequest::CheckTxnStatus {
                primary,
                start_ts,
                current_ts,
            } => Ok(PartitionResponse::Status(
                self.check_txn_status(&primary, start_ts, current_ts),
            )),
            PartitionRequest::Resolve {
                keys,
                start_ts,
                commit_ts,
            } => {
                self.resolve(&keys, start_ts, commit_ts);
                Ok(PartitionResponse::Done)
            }
        }
    }
}
