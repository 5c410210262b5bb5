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

// ---------------------------------------------------------------------------
// Helpers added with the checkers. The types above are shared with the
// recorders and keep their meaning; everything below only reads them.

impl<I, O> Operation<I, O> {
    /// The output, when the server answered and the operation completed.
    /// An `Ok` outcome without a completion time is treated as unknown (the
    /// history ended before the completion was recorded).
    pub fn ok_output(&self) -> Option<&O> {
        match (&self.outcome, self.complete) {
            (Outcome::Ok(output), Some(_)) => Some(output),
            _ => None,
        }
    }

    /// Whether the operation certainly did not take effect.
    pub fn is_failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }

    /// Whether the operation may or may not have taken effect, at any time
    /// after its invocation (an `Unknown` outcome, or no completion).
    pub fn is_unknown(&self) -> bool {
        !self.is_failed() && self.ok_output().is_none()
    }
}

impl<I: Clone, O: Clone> History<I, O> {
    /// The operations for which `keep` is true, in the same order, with their
    /// original ids (so a sub-history can be read next to the full one).
    pub fn filter(&self, mut keep: impl FnMut(&Operation<I, O>) -> bool) -> Self {
        Self {
            operations: self.operations.iter().filter(|op| keep(op)).cloned().collect(),
        }
    }

    /// The operations whose ids are in `ids`.
    pub fn with_ids(&self, ids: &[u64]) -> Self {
        let wanted: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
        self.filter(|op| wanted.contains(&op.id))
    }
}

impl<I: Serialize, O: Serialize> History<I, O> {
    /// The history as JSON, to save a failing run's history to a file.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a history always serializes")
    }
}

impl<I: serde::de::DeserializeOwned, O: serde::de::DeserializeOwned> History<I, O> {
    /// Read a history saved with [`History::to_json`], to replay it through a
    /// checker.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

impl KvInput {
    /// Whether the operation can change the store (put, delete, txn).
    pub fn is_write(&self) -> bool {
        !matches!(self, KvInput::Get { .. })
    }
}

impl KvOutput {
    /// The response header's revision.
    pub fn revision(&self) -> i64 {
        match self {
            KvOutput::Put { revision }
            | KvOutput::Get { revision, .. }
            | KvOutput::Delete { revision, .. }
            | KvOutput::CompareAndSet { revision, .. } => *revision,
        }
    }
}

/// Bytes as a person reads them: a quoted string when they are printable
/// UTF-8, hex otherwise.
pub struct Bytes<'a>(pub &'a [u8]);

impl std::fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) if text.chars().all(|c| !c.is_control()) => write!(f, "{text:?}"),
            _ => {
                write!(f, "0x")?;
                self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

/// A value that may be absent, as a person reads it.
pub(crate) struct MaybeBytes<'a>(pub Option<&'a [u8]>);

impl std::fmt::Display for MaybeBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(bytes) => Bytes(bytes).fmt(f),
            None => write!(f, "absent"),
        }
    }
}

impl std::fmt::Display for KvInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvInput::Put { key, value } => write!(f, "put {} = {}", Bytes(key), Bytes(value)),
            KvInput::Get {
                key,
                linearizable: true,
            } => write!(f, "get {}", Bytes(key)),
            KvInput::Get {
                key,
                linearizable: false,
            } => write!(f, "get {} (serializable)", Bytes(key)),
            KvInput::Delete { key } => write!(f, "delete {}", Bytes(key)),
            KvInput::CompareAndSet {
                key,
                expected,
                new_value,
            } => write!(
                f,
                "cas {}: if {} then {}",
                Bytes(key),
                MaybeBytes(expected.as_deref()),
                Bytes(new_value)
            ),
        }
    }
}

impl std::fmt::Display for KvOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvOutput::Put { revision } => write!(f, "ok, rev {revision}"),
            KvOutput::Get {
                value: Some(value),
                mod_revision,
                revision,
            } => {
                write!(f, "{} (mod rev {mod_revision}), rev {revision}", Bytes(value))
            }
            KvOutput::Get {
                value: None,
                mod_revision,
                revision,
            } => {
                if *mod_revision == 0 {
                    write!(f, "absent, rev {revision}")
                } else {
                    write!(f, "absent (mod rev {mod_revision}?), rev {revision}")
                }
            }
            KvOutput::Delete { deleted, revision } => write!(f, "deleted {deleted}, rev {revision}"),
            KvOutput::CompareAndSet { succeeded, revision } => {
                write!(
                    f,
                    "{}, rev {revision}",
                    if *succeeded { "succeeded" } else { "refused" }
                )
            }
        }
    }
}

impl<O: std::fmt::Display> std::fmt::Display for Outcome<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok(output) => write!(f, "-> {output}"),
            Outcome::Failed(why) => write!(f, "FAILED ({why})"),
            Outcome::Unknown(why) => write!(f, "UNKNOWN ({why})"),
        }
    }
}

/// Nanoseconds as milliseconds with microsecond precision.
pub(crate) struct Millis(pub Nanos);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1_000_000, (self.0 / 1_000) % 1_000)
    }
}

impl<I: std::fmt::Display, O: std::fmt::Display> std::fmt::Display for Operation<I, O> {
    /// One line: id, client, invoke and complete times in ms, input, outcome.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let complete = match self.complete {
            Some(at) => Millis(at).to_string(),
            None => "...".to_string(),
        };
        write!(
            f,
            "#{:<5} client {:<3} [{:>10} .. {:>10} ms]  {}  {}",
            self.id,
            self.client,
            Millis(self.invoke).to_string(),
            complete,
            self.input,
            self.outcome
        )
    }
}

impl<I: std::fmt::Display, O: std::fmt::Display> std::fmt::Display for History<I, O> {
    /// One line per operation, in the history's order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for operation in &self.operations {
            writeln!(f, "  {operation}")?;
        }
        Ok(())
    }
}
