//! Histories: what clients invoked and what they observed.
//!
//! The rules every recorder follows (they are what makes the checker sound):
//! - `invoke` is taken just before the request leaves the client and
//!   `complete` just after the answer arrives, on one clock per history
//!   (simulated nanoseconds in the simulator, a monotonic clock in process
//!   tests).
//! - An operation whose outcome the client cannot know (a timeout, a broken
//!   connection after sending, "request timed out" from the server) is
//!   [`Outcome::Unknown`]: it may have taken effect at any time after its
//!   invocation, or never. It is never recorded as failed.
//! - [`Outcome::Failed`] is only for answers that prove the operation did not
//!   take effect (etcd errors such as "no leader" before proposing, invalid
//!   input, a refused transaction is *not* a failure but an `Ok` with
//!   `succeeded: false`).

use serde::{Deserialize, Serialize};

/// Which client issued an operation. Each client runs one operation at a time.
pub type ClientId = u64;

/// Nanoseconds since the start of the run, on the history's one clock.
pub type Nanos = u64;

/// What happened to an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// The server answered; the operation took effect exactly once, between
    /// invocation and completion.
    Ok(O),
    /// The operation certainly did not take effect.
    Failed(String),
    /// The operation may have taken effect, at any time after invocation, or
    /// not at all.
    Unknown(String),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Unique within the history (the recorder's sequence number).
    pub id: u64,
    pub client: ClientId,
    pub invoke: Nanos,
    /// `None` for operations still running when the history ended (treated
    /// as unknown).
    pub complete: Option<Nanos>,
    pub input: I,
    pub outcome: Outcome<O>,
}

/// A recorded history, operations in invocation order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct History<I, O> {
    pub operations: Vec<Operation<I, O>>,
}

impl<I, O> History<I, O> {
    pub fn new() -> Self {
        Self { operations: Vec::new() }
    }

    /// Record an operation that has just been invoked; returns its id.
    pub fn invoke(&mut self, client: ClientId, at: Nanos, input: I) -> u64 {
        let id = self.operations.len() as u64;
        self.operations.push(Operation {
            id,
            client,
            invoke: at,
            complete: None,
            input,
            outcome: Outcome::Unknown("still running".into()),
        });
        id
    }

    /// Record the completion of operation `id`.
    pub fn complete(&mut self, id: u64, at: Nanos, outcome: Outcome<O>) {
        let operation = &mut self.operations[id as usize];
        assert!(operation.complete.is_none(), "operation {id} completed twice");
        assert!(at >= operation.invoke, "operation {id} completed before it was invoked");
        operation.complete = Some(at);
        operation.outcome = outcome;
    }
}

/// A key-value operation against the etcd v3 API (the `meta` store), as the
/// checkers' KV models understand it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KvInput {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// `linearizable: false` is a serializable read: it may be stale and is
    /// checked against a weaker rule (see the checker).
    Get {
        key: Vec<u8>,
        linearizable: bool,
    },
    Delete {
        key: Vec<u8>,
    },
    /// A txn: if the key's value equals `expected` (`None`: the key does not
    /// exist, compared as `create_revision == 0`), put `new_value`.
    CompareAndSet {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new_value: Vec<u8>,
    },
}

impl KvInput {
    pub fn key(&self) -> &[u8] {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key, .. }
            | KvInput::Delete { key }
            | KvInput::CompareAndSet { key, .. } => key,
        }
    }
}

/// What a KV operation observed. `revision` is the response header's
/// revision (the store's revision when the operation took effect).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KvOutput {
    Put {
        revision: i64,
    },
    /// `mod_revision` is 0 when the key is absent.
    Get {
        value: Option<Vec<u8>>,
        mod_revision: i64,
        revision: i64,
    },
    Delete {
        deleted: i64,
        revision: i64,
    },
    CompareAndSet {
        succeeded: bool,
        revision: i64,
    },
}

pub type KvHistory = History<KvInput, KvOutput>;
pub type KvOperation = Operation<KvInput, KvOutput>;
