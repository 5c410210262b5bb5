//! etcd's KV semantics, revisions included.
//!
//! The state is the store revision and, per key, its value and
//! `mod_revision`. The store starts at revision 1 and empty. Each put bumps
//! the revision by one and sets the key's `mod_revision` to it; a delete
//! bumps it only when the key existed; a compare-and-set (a txn: `expected:
//! None` means the key must be absent, else its value must equal) that
//! succeeds is a put, and one that is refused changes nothing. Answers:
//! - a linearizable get returns the key's value and `mod_revision` at its
//!   point in the order, and `revision` = the store revision there;
//! - a put, delete or compare-and-set returns `revision` = the store revision
//!   after it (unchanged for a delete of an absent key or a refused compare).
//!
//! ## Serializable gets
//! A serializable get is answered by any member from what it has applied, so
//! it may be stale; it is not bound by real time. The rule checked (sound for
//! zongheng's `meta` and for etcd, whose serializable range reads the kvs and
//! the header revision from one snapshot of the member's store):
//! 1. its header revision `R` names the snapshot: the returned value and
//!    `mod_revision` must be the key's state at revision `R` of the one
//!    order of writes (placed anywhere in the search, checked against the
//!    state where the store revision is `R`);
//! 2. `R` is at least every revision the same client saw in its earlier
//!    completed operations (a member never goes back, and a client stays on
//!    one member; turn this off with
//!    [`EtcdKvModel::serializable_floor_per_client`] for clients that
//!    switch members);
//! 3. `R` was reached before the read completed: every write known to have
//!    produced a revision `<= R` was invoked before the read completed, and at
//!    least `R - 1` writes (acknowledged or unknown) were invoked by then.
//!
//! Rules 2 and 3 are [`Model::validate`]; rule 1 is in the search.
//!
//! ## Checking it fast
//! [`Model`]'s generic search works with this model, but is exponential in
//! the unknown writes it could place; `crate::check_kv` instead uses the
//! revision-ordered search in `etcd_revisions`, exact and usually linear,
//! cross-checked against the generic search and the exhaustive check in the
//! tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{Bytes, KvHistory, KvInput, KvOperation, KvOutput, Outcome};
use crate::linearizability::{Model, Violation};
use crate::models::register::{kv_is_read_only, kv_shrink_groups};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdKvModel {
    /// Rule 2 above: a serializable read's revision is at least every
    /// revision its client saw before. True by default; false when a client
    /// id may fail over to another member between operations.
    pub serializable_floor_per_client: bool,
}

impl Default for EtcdKvModel {
    fn default() -> Self {
        Self {
            serializable_floor_per_client: true,
        }
    }
}

/// The store: its revision, and per key the value and `mod_revision`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EtcdState {
    pub revision: i64,
    pub keys: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
}

impl Default for EtcdState {
    fn default() -> Self {
        Self {
            revision: 1,
            keys: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for EtcdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rev {} {{", self.revision)?;
        for (index, (key, (value, mod_revision))) in self.keys.iter().enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            write!(f, "{separator}{}={}@{mod_revision}", Bytes(key), Bytes(value))?;
        }
        write!(f, "}}")
    }
}

impl EtcdState {
    fn compare(&self, key: &[u8], expected: &Option<Vec<u8>>) -> bool {
        self.keys.get(key).map(|(value, _)| value) == expected.as_ref()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Self {
        let mut next = self.clone();
        next.revision += 1;
        next.keys.insert(key.to_vec(), (value.to_vec(), next.revision));
        next
    }

    fn delete(&self, key: &[u8]) -> Self {
        let mut next = self.clone();
        next.revision += 1;
        next.keys.remove(key);
        next
    }
}

impl Model for EtcdKvModel {
    type Input = KvInput;
    type Output = KvOutput;
    type State = EtcdState;

    fn init(&self) -> EtcdState {
        EtcdState::default()
    }

    fn step(&self, state: &EtcdState, input: &KvInput, output: &KvOutput) -> Option<EtcdState> {
        let bumped = state.revision + 1;
        match (input, output) {
            (KvInput::Put { key, value }, KvOutput::Put { revision }) => {
                (*revision == bumped).then(|| state.put(key, value))
            }
            (
                KvInput::Get { key, .. },
                KvOutput::Get {
                    value,
                    mod_revision,
                    revision,
                },
            ) => {
                let (actual_value, actual_mod) = match state.keys.get(key) {
                    Some((value, mod_revision)) => (Some(value), *mod_revision),
                    None => (None, 0),
                };
                (*revision == state.revision && value.as_ref() == actual_value && *mod_revision == actual_mod)
                    .then(|| state.clone())
            }
            (KvInput::Delete { key }, KvOutput::Delete { deleted, revision }) => {
                if state.keys.contains_key(key) {
                    (*deleted == 1 && *revision == bumped).then(|| state.delete(key))
                } else {
                    (*deleted == 0 && *revision == state.revision).then(|| state.clone())
                }
            }
            (
                KvInput::CompareAndSet {
                    key,
                    expected,
                    new_value,
                },
                KvOutput::CompareAndSet { succeeded, revision },
            ) => match (state.compare(key, expected), *succeeded) {
                (true, true) => (*revision == bumped).then(|| state.put(key, new_value)),
                (false, false) => (*revision == state.revision).then(|| state.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn step_unknown(&self, state: &EtcdState, input: &KvInput) -> EtcdState {
        match input {
            KvInput::Put { key, value } => state.put(key, value),
            KvInput::Get { .. } => state.clone(),
            KvInput::Delete { key } if state.keys.contains_key(key) => state.delete(key),
            KvInput::Delete { .. } => state.clone(),
            KvInput::CompareAndSet {
                key,
                expected,
                new_value,
            } if state.compare(key, expected) => state.put(key, new_value),
            KvInput::CompareAndSet { .. } => state.clone(),
        }
    }

    fn is_real_time(&self, input: &KvInput) -> bool {
        !matches!(
            input,
            KvInput::Get {
                linearizable: false,
                ..
            }
        )
    }

    fn validate(&self, history: &KvHistory) -> Result<(), Violation> {
        match serializable_violation(history, self.serializable_floor_per_client) {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    fn is_read_only(&self, operation: &KvOperation) -> bool {
        kv_is_read_only(operation)
    }

    /// With revisions, dependencies are precise: a get that found a value
    /// depends on the write at its `mod_revision`; every other answer depends
    /// on the key's last acknowledged write at or before the revision it
    /// looked at. Unknown writes of the key invoked before the dependent
    /// completed may have filled a revision in between, so it depends on
    /// those too (for a found value, only those writing that value).
    fn dependencies(&self, history: &KvHistory) -> Vec<(u64, u64)> {
        let mut known: BTreeMap<&[u8], Vec<(i64, u64)>> = BTreeMap::new();
        let mut unknown: BTreeMap<&[u8], Vec<&KvOperation>> = BTreeMap::new();
        for op in &history.operations {
            if let Some(revision) = bumped_revision(op) {
                known.entry(op.input.key()).or_default().push((revision, op.id));
            } else if op.is_unknown() && op.input.is_write() {
                unknown.entry(op.input.key()).or_default().push(op);
            }
        }
        for writes in known.values_mut() {
            writes.sort_unstable();
        }
        let last_known_at = |key: &[u8], revision: i64| {
            let writes = known.get(key)?;
            let count = writes.partition_point(|&(r, _)| r <= revision);
            count.checked_sub(1).map(|index| writes[index].1)
        };
        let mut pairs = Vec::new();
        for dependent in &history.operations {
            let Some(output) = dependent.ok_output() else { continue };
            let key = dependent.input.key();
            let complete = dependent.complete.unwrap_or(u64::MAX);
            let unknown_writers = unknown.get(key).map(Vec::as_slice).unwrap_or_default().iter();
            let unknown_writers = unknown_writers.filter(|writer| writer.invoke <= complete);
            match (&dependent.input, output) {
                (KvInput::Put { .. }, _) => {}
                (
                    KvInput::Get { .. },
                    KvOutput::Get {
                        value: Some(value),
                        mod_revision,
                        ..
                    },
                ) => {
                    let at = known
                        .get(key)
                        .and_then(|writes| writes.iter().find(|(r, _)| r == mod_revision));
                    pairs.extend(at.map(|&(_, writer)| (dependent.id, writer)));
                    pairs.extend(
                        unknown_writers
                            .filter(|writer| match &writer.input {
                                KvInput::Put { value: written, .. }
                                | KvInput::CompareAndSet { new_value: written, .. } => written == value,
                                _ => false,
                            })
                            .map(|writer| (dependent.id, writer.id)),
                    );
                }
                _ => {
                    let looked_at = if bumped_revision(dependent).is_some() {
                        output.revision() - 1
                    } else {
                        output.revision()
                    };
                    pairs.extend(last_known_at(key, looked_at).map(|writer| (dependent.id, writer)));
                    pairs.extend(unknown_writers.map(|writer| (dependent.id, writer.id)));
                }
            }
        }
        pairs
    }

    /// Dropping a write that produced revision `r` renumbers every later
    /// revision down by one, so the rest stays a plausible etcd history.
    /// Dropping an unknown write closes one revision no acknowledged write
    /// produced (the first after the writes acknowledged before it was
    /// invoked), as if it had filled that one; the shrinker re-checks the
    /// result, so a wrong guess only costs a drop.
    fn remove(&self, history: &KvHistory, drop: &[bool]) -> KvHistory {
        let claimed: BTreeSet<i64> = history.operations.iter().filter_map(bumped_revision).collect();
        let revision_max = history
            .operations
            .iter()
            .filter_map(|op| Some(op.ok_output()?.revision()))
            .max()
            .unwrap_or(1);
        let mut gaps: BTreeSet<i64> = (2..=revision_max)
            .filter(|revision| !claimed.contains(revision))
            .collect();
        let mut dropped_revisions: Vec<i64> = Vec::new();
        for (op, _) in history.operations.iter().zip(drop).filter(|(_, &dropped)| dropped) {
            if let Some(revision) = bumped_revision(op) {
                dropped_revisions.push(revision);
            } else if op.is_unknown() && op.input.is_write() {
                let before = history
                    .operations
                    .iter()
                    .filter(|other| other.complete.is_some_and(|at| at < op.invoke))
                    .filter_map(bumped_revision)
                    .max()
                    .unwrap_or(1);
                if let Some(&gap) = gaps.range(before + 1..).next() {
                    gaps.remove(&gap);
                    dropped_revisions.push(gap);
                }
            }
        }
        dropped_revisions.sort_unstable();
        let below = |revision: i64, inclusive: bool| {
            dropped_revisions.partition_point(|&d| if inclusive { d <= revision } else { d < revision }) as i64
        };
        let mut kept = KvHistory::new();
        for (op, _) in history.operations.iter().zip(drop).filter(|(_, &dropped)| !dropped) {
            let mut op = op.clone();
            if let Outcome::Ok(output) = &mut op.outcome {
                match output {
                    KvOutput::Put { revision }
                    | KvOutput::Delete { revision, .. }
                    | KvOutput::CompareAndSet { revision, .. } => *revision -= below(*revision, true),
                    KvOutput::Get {
                        mod_revision, revision, ..
                    } => {
                        *revision -= below(*revision, true);
                        if *mod_revision > 0 {
                            *mod_revision -= below(*mod_revision, false);
                        }
                    }
                }
            }
            kept.operations.push(op);
        }
        kept
    }

    fn shrink_groups(&self, history: &KvHistory) -> Vec<Vec<u64>> {
        kv_shrink_groups(history)
    }
}

/// The revision an acknowledged write produced, if it bumped the revision.
pub(crate) fn bumped_revision(operation: &KvOperation) -> Option<i64> {
    match (&operation.input, operation.ok_output()?) {
        (KvInput::Put { .. }, KvOutput::Put { revision }) => Some(*revision),
        (KvInput::Delete { .. }, KvOutput::Delete { deleted, revision }) if *deleted > 0 => Some(*revision),
        (
            KvInput::CompareAndSet { .. },
            KvOutput::CompareAndSet {
                succeeded: true,
                revision,
            },
        ) => Some(*revision),
        _ => None,
    }
}

/// Rules 2 and 3 of the module docs for every serializable get.
pub(crate) fn serializable_violation(history: &KvHistory, floor_per_client: bool) -> Option<Violation> {
    let reads: Vec<&KvOperation> = history
        .operations
        .iter()
        .filter(|op| {
            matches!(
                op.input,
                KvInput::Get {
                    linearizable: false,
                    ..
                }
            ) && op.ok_output().is_some()
        })
        .collect();
    if reads.is_empty() {
        return None;
    }
    // Acknowledged writes by revision, with the latest invocation among
    // those at or below each revision.
    let mut acknowledged: Vec<(i64, u64, u64)> = history
        .operations
        .iter()
        .filter_map(|op| Some((bumped_revision(op)?, op.invoke, op.id)))
        .collect();
    acknowledged.sort_unstable();
    let mut latest_invoke: Vec<(u64, u64)> = Vec::with_capacity(acknowledged.len());
    let mut latest: Option<(u64, u64)> = None;
    for &(_, invoke, id) in &acknowledged {
        if latest.is_none_or(|(at, _)| invoke > at) {
            latest = Some((invoke, id));
        }
        latest_invoke.extend(latest);
    }
    // Invocations of every operation that may have produced a revision.
    let mut write_invokes: Vec<u64> = history
        .operations
        .iter()
        .filter(|op| op.input.is_write() && !op.is_failed() && (op.is_unknown() || bumped_revision(op).is_some()))
        .map(|op| op.invoke)
        .collect();
    write_invokes.sort_unstable();

    for read in reads {
        let complete = read.complete.expect("ok outputs have a completion");
        let revision = read.ok_output().expect("filtered above").revision();
        if floor_per_client {
            let floor = history
                .operations
                .iter()
                .filter(|op| op.client == read.client && op.id != read.id)
                .filter(|op| op.complete.is_some_and(|at| at <= read.invoke))
                .filter_map(|op| Some((op.ok_output()?.revision(), op.id)))
                .max();
            if let Some((floor, seen_by)) = floor {
                if revision < floor {
                    return Some(Violation {
                        operation: read.id,
                        reason: format!(
                            "serializable read returned revision {revision}, but its client {} had already seen \
                             revision {floor} (operation #{seen_by}); a member's revision never goes back (if this \
                             client switched members in between, record it under a new client id, or set \
                             EtcdKvModel::serializable_floor_per_client to false)",
                            read.client
                        ),
                    });
                }
            }
        }
        let known = acknowledged.partition_point(|&(r, ..)| r <= revision);
        if known > 0 {
            let (invoke, writer) = latest_invoke[known - 1];
            if invoke > complete {
                return Some(Violation {
                    operation: read.id,
                    reason: format!(
                        "serializable read returned revision {revision}, which includes operation #{writer}, \
                         invoked after the read completed"
                    ),
                });
            }
        }
        let writes_before = write_invokes.partition_point(|&at| at <= complete) as i64;
        if revision - 1 > writes_before {
            return Some(Violation {
                operation: read.id,
                reason: format!(
                    "serializable read returned revision {revision}, which takes {} writes, but only \
                     {writes_before} writes were invoked before it completed",
                    revision - 1
                ),
            });
        }
    }
    None
}
