//! One register per key, revisions ignored.
//!
//! The plainest reading of a KV history: each key is an independent register
//! holding `Option<value>`; puts set it, deletes clear it, a compare-and-set
//! sets it when the compare holds, gets read it. Response revisions are not
//! checked (that is [`super::EtcdKvModel`]'s job), so this model also fits
//! stores without etcd's revisions. Independent objects compose
//! (linearizability is local, Herlihy & Wing 1990), so the history is split
//! per key and each key is searched on its own.
//!
//! Serializable gets are placed anywhere in the order (they may be stale);
//! their value must be one the register held at some point.

use std::collections::BTreeMap;

use crate::history::{KvHistory, KvInput, KvOperation, KvOutput};
use crate::linearizability::Model;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterModel;

/// The register of one key: its value, `None` when absent.
pub type RegisterState = Option<Vec<u8>>;

fn compare(state: &RegisterState, expected: &Option<Vec<u8>>) -> bool {
    state == expected
}

impl Model for RegisterModel {
    type Input = KvInput;
    type Output = KvOutput;
    type State = RegisterState;

    fn init(&self) -> RegisterState {
        None
    }

    fn step(&self, state: &RegisterState, input: &KvInput, output: &KvOutput) -> Option<RegisterState> {
        match (input, output) {
            (KvInput::Put { value, .. }, KvOutput::Put { .. }) => Some(Some(value.clone())),
            (KvInput::Get { .. }, KvOutput::Get { value, .. }) => (state == value).then(|| state.clone()),
            (KvInput::Delete { .. }, KvOutput::Delete { deleted, .. }) => {
                (*deleted == i64::from(state.is_some())).then_some(None)
            }
            (
                KvInput::CompareAndSet {
                    expected, new_value, ..
                },
                KvOutput::CompareAndSet { succeeded, .. },
            ) => {
                if compare(state, expected) != *succeeded {
                    None
                } else if *succeeded {
                    Some(Some(new_value.clone()))
                } else {
                    Some(state.clone())
                }
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &RegisterState, input: &KvInput) -> RegisterState {
        match input {
            KvInput::Put { value, .. } => Some(value.clone()),
            KvInput::Get { .. } => state.clone(),
            KvInput::Delete { .. } => None,
            KvInput::CompareAndSet {
                expected, new_value, ..
            } => {
                if compare(state, expected) {
                    Some(new_value.clone())
                } else {
                    state.clone()
                }
            }
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

    fn partition(&self, history: &KvHistory) -> Vec<KvHistory> {
        let mut by_key = BTreeMap::<&[u8], KvHistory>::new();
        for operation in &history.operations {
            by_key
                .entry(operation.input.key())
                .or_insert_with(KvHistory::new)
                .operations
                .push(operation.clone());
        }
        by_key.into_values().collect()
    }

    fn is_read_only(&self, operation: &KvOperation) -> bool {
        kv_is_read_only(operation)
    }

    /// A get depends on the writes of the value it read (or the deletes, if
    /// it found nothing), a successful compare on the writes of the value it
    /// expected; refused compares and deletes on any write of their key.
    /// Only writes invoked before the dependent completed count.
    fn dependencies(&self, history: &KvHistory) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        for dependent in &history.operations {
            let Some(output) = dependent.ok_output() else { continue };
            let complete = dependent.complete.unwrap_or(u64::MAX);
            let needs = |writer: &KvOperation| -> bool {
                let (writes, deletes) = match &writer.input {
                    KvInput::Put { value, .. } | KvInput::CompareAndSet { new_value: value, .. } => {
                        (Some(value), false)
                    }
                    KvInput::Delete { .. } => (None, true),
                    KvInput::Get { .. } => return false,
                };
                match (&dependent.input, output) {
                    (KvInput::Put { .. }, _) => false,
                    (KvInput::Get { .. }, KvOutput::Get { value: Some(value), .. })
                    | (
                        KvInput::CompareAndSet {
                            expected: Some(value), ..
                        },
                        KvOutput::CompareAndSet { succeeded: true, .. },
                    ) => writes == Some(value),
                    (KvInput::Get { .. }, _)
                    | (
                        KvInput::CompareAndSet { expected: None, .. },
                        KvOutput::CompareAndSet { succeeded: true, .. },
                    ) => deletes,
                    _ => true,
                }
            };
            for writer in &history.operations {
                if writer.id != dependent.id
                    && writer.input.key() == dependent.input.key()
                    && writer.invoke <= complete
                    && !writer.is_failed()
                    && needs(writer)
                {
                    pairs.push((dependent.id, writer.id));
                }
            }
        }
        pairs
    }

    fn shrink_groups(&self, history: &KvHistory) -> Vec<Vec<u64>> {
        kv_shrink_groups(history)
    }
}

/// Reads, refused compare-and-sets and deletes of absent keys change nothing.
pub(crate) fn kv_is_read_only(operation: &KvOperation) -> bool {
    matches!(
        (&operation.input, operation.ok_output()),
        (KvInput::Get { .. }, _)
            | (_, Some(KvOutput::Delete { deleted: 0, .. }))
            | (_, Some(KvOutput::CompareAndSet { succeeded: false, .. }))
    )
}

/// Whole clients, then whole keys.
pub(crate) fn kv_shrink_groups(history: &KvHistory) -> Vec<Vec<u64>> {
    let mut by_client = BTreeMap::<u64, Vec<u64>>::new();
    let mut by_key = BTreeMap::<&[u8], Vec<u64>>::new();
    for operation in &history.operations {
        by_client.entry(operation.client).or_default().push(operation.id);
        by_key.entry(operation.input.key()).or_default().push(operation.id);
    }
    by_client.into_values().chain(by_key.into_values()).collect()
}
