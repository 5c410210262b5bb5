//! Shared by the checker's tests: a terse way to write histories by hand, and
//! a generator of histories from a simulated concurrent run of the
//! sequential etcd model.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use zongheng_check::{KvHistory, KvInput, KvOperation, KvOutput, Outcome};

const MS: u64 = 1_000_000;

/// Write histories as `(client, invoke ms, complete ms, input, outcome)`.
pub struct Builder {
    pub history: KvHistory,
}

impl Builder {
    pub fn new() -> Self {
        Self {
            history: KvHistory::new(),
        }
    }

    /// An operation with an answer, between `invoke_ms` and `complete_ms`.
    pub fn ok(mut self, client: u64, invoke_ms: u64, complete_ms: u64, input: KvInput, output: KvOutput) -> Self {
        self.push(client, invoke_ms, Some(complete_ms), input, Outcome::Ok(output));
        self
    }

    /// An operation that timed out at `complete_ms` (outcome unknown).
    pub fn unknown(mut self, client: u64, invoke_ms: u64, complete_ms: Option<u64>, input: KvInput) -> Self {
        self.push(
            client,
            invoke_ms,
            complete_ms,
            input,
            Outcome::Unknown("timed out".into()),
        );
        self
    }

    /// An operation that certainly did not take effect.
    pub fn failed(mut self, client: u64, invoke_ms: u64, complete_ms: u64, input: KvInput) -> Self {
        self.push(
            client,
            invoke_ms,
            Some(complete_ms),
            input,
            Outcome::Failed("no leader".into()),
        );
        self
    }

    fn push(
        &mut self,
        client: u64,
        invoke_ms: u64,
        complete_ms: Option<u64>,
        input: KvInput,
        outcome: Outcome<KvOutput>,
    ) {
        let id = self.history.operations.len() as u64;
        self.history.operations.push(KvOperation {
            id,
            client,
            invoke: invoke_ms * MS,
            complete: complete_ms.map(|ms| ms * MS),
            input,
            outcome,
        });
    }

    pub fn build(mut self) -> KvHistory {
        self.history.operations.sort_by_key(|op| (op.invoke, op.id));
        self.history
    }
}

pub fn put(key: &str, value: &str) -> KvInput {
    KvInput::Put {
        key: key.into(),
        value: value.into(),
    }
}
pub fn get(key: &str) -> KvInput {
    KvInput::Get {
        key: key.into(),
        linearizable: true,
    }
}
pub fn sget(key: &str) -> KvInput {
    KvInput::Get {
        key: key.into(),
        linearizable: false,
    }
}
pub fn del(key: &str) -> KvInput {
    KvInput::Delete { key: key.into() }
}
pub fn cas(key: &str, expected: Option<&str>, new_value: &str) -> KvInput {
    KvInput::CompareAndSet {
        key: key.into(),
        expected: expected.map(Into::into),
        new_value: new_value.into(),
    }
}

pub fn put_ok(revision: i64) -> KvOutput {
    KvOutput::Put { revision }
}
/// A get that found `value` written at `mod_revision`, store at `revision`.
pub fn got(value: &str, mod_revision: i64, revision: i64) -> KvOutput {
    KvOutput::Get {
        value: Some(value.into()),
        mod_revision,
        revision,
    }
}
pub fn got_nothing(revision: i64) -> KvOutput {
    KvOutput::Get {
        value: None,
        mod_revision: 0,
        revision,
    }
}
pub fn deleted(deleted: i64, revision: i64) -> KvOutput {
    KvOutput::Delete { deleted, revision }
}
pub fn cas_ok(succeeded: bool, revision: i64) -> KvOutput {
    KvOutput::CompareAndSet { succeeded, revision }
}

/// The sequential etcd store the generator runs.
#[derive(Clone, Default)]
pub struct Store {
    pub revision: i64,
    pub keys: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            revision: 1,
            keys: BTreeMap::new(),
        }
    }

    fn lookup(&self, key: &[u8]) -> (Option<Vec<u8>>, i64) {
        match self.keys.get(key) {
            Some((value, mod_revision)) => (Some(value.clone()), *mod_revision),
            None => (None, 0),
        }
    }

    /// Apply `input`; the answer a linearizable client would get.
    pub fn apply(&mut self, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                self.revision += 1;
                self.keys.insert(key.clone(), (value.clone(), self.revision));
                KvOutput::Put {
                    revision: self.revision,
                }
            }
            KvInput::Get { key, .. } => {
                let (value, mod_revision) = self.lookup(key);
                KvOutput::Get {
                    value,
                    mod_revision,
                    revision: self.revision,
                }
            }
            KvInput::Delete { key } => {
                if self.keys.remove(key).is_some() {
                    self.revision += 1;
                    KvOutput::Delete {
                        deleted: 1,
                        revision: self.revision,
                    }
                } else {
                    KvOutput::Delete {
                        deleted: 0,
                        revision: self.revision,
                    }
                }
            }
            KvInput::CompareAndSet {
                key,
                expected,
                new_value,
            } => {
                if self.lookup(key).0 == *expected {
                    self.revision += 1;
                    self.keys.insert(key.clone(), (new_value.clone(), self.revision));
                    KvOutput::CompareAndSet {
                        succeeded: true,
                        revision: self.revision,
                    }
                } else {
                    KvOutput::CompareAndSet {
                        succeeded: false,
                        revision: self.revision,
                    }
                }
            }
        }
    }
}

/// The shape of a generated run.
#[derive(Clone, Debug)]
pub struct Shape {
    pub clients: u64,
    pub operations: usize,
    pub keys: usize,
    /// Distinct values per key (small: reads are ambiguous; large: unique).
    pub values: usize,
    /// Of the operations, the fraction whose outcome is unknown.
    pub unknown_rate: f64,
    pub failed_rate: f64,
    /// Of the gets, the fraction that are serializable.
    pub serializable_rate: f64,
    /// Whether unknown operations may still be running at the end.
    pub unfinished: bool,
}

impl Shape {
    pub fn small() -> Self {
        Self {
            clients: 3,
            operations: 7,
            keys: 2,
            values: 2,
            unknown_rate: 0.2,
            failed_rate: 0.05,
            serializable_rate: 0.0,
            unfinished: true,
        }
    }
}

/// A history of a correct concurrent run: each client runs one operation at
/// a time; each operation takes effect at a random point inside its
/// interval (an unknown one at any point after its invocation, or never) and
/// answers what the sequential store says at that point.
pub fn generate(rng: &mut StdRng, shape: &Shape) -> KvHistory {
    struct Planned {
        client: u64,
        invoke: u64,
        effect_at: Option<u64>,
        complete: Option<u64>,
        input: KvInput,
        kind: Kind,
    }
    #[derive(PartialEq)]
    enum Kind {
        Ok,
        Unknown,
        Failed,
    }
    let mut free_at: Vec<u64> = (0..shape.clients).map(|_| rng.gen_range(0..MS)).collect();
    let mut planned = Vec::new();
    let mut last_of_client = vec![usize::MAX; shape.clients as usize];
    for _ in 0..shape.operations {
        let client = rng.gen_range(0..shape.clients);
        let invoke = free_at[client as usize] + rng.gen_range(1_000..200_000);
        let key = format!("k{}", rng.gen_range(0..shape.keys));
        let value_of = |rng: &mut StdRng| format!("v{}", rng.gen_range(0..shape.values.max(1)));
        let input = match rng.gen_range(0..10) {
            0..=3 => KvInput::Get {
                key: key.into_bytes(),
                linearizable: !rng.gen_bool(shape.serializable_rate),
            },
            4..=6 => KvInput::Put {
                key: key.into_bytes(),
                value: value_of(rng).into_bytes(),
            },
            7 => KvInput::Delete { key: key.into_bytes() },
            _ => KvInput::CompareAndSet {
                key: key.into_bytes(),
                expected: if rng.gen_bool(0.2) {
                    None
                } else {
                    Some(value_of(rng).into_bytes())
                },
                new_value: value_of(rng).into_bytes(),
            },
        };
        let roll: f64 = rng.gen();
        let kind = if roll < shape.unknown_rate {
            Kind::Unknown
        } else if roll < shape.unknown_rate + shape.failed_rate {
            Kind::Failed
        } else {
            Kind::Ok
        };
        let effect = invoke + rng.gen_range(0..1_000_000);
        let complete = effect + rng.gen_range(1_000..1_000_000);
        let (effect_at, complete) = match kind {
            Kind::Ok => (Some(effect), Some(complete)),
            Kind::Failed => (None, Some(complete)),
            // Took effect (maybe after the client gave up) or never.
            Kind::Unknown => {
                let effect_at = rng.gen_bool(0.5).then(|| invoke + rng.gen_range(0..3_000_000));
                (effect_at, Some(complete))
            }
        };
        free_at[client as usize] = complete.expect("set above");
        last_of_client[client as usize] = planned.len();
        planned.push(Planned {
            client,
            invoke,
            effect_at,
            complete,
            input,
            kind,
        });
    }
    if shape.unfinished {
        for &last in &last_of_client {
            if last != usize::MAX && planned[last].kind == Kind::Unknown {
                planned[last].complete = None;
            }
        }
    }

    // Run the sequential store in effect order.
    let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].effect_at.is_some()).collect();
    order.sort_by_key(|&i| (planned[i].effect_at, i));
    let mut store = Store::new();
    let mut snapshots = vec![store.clone(), store.clone()]; // by revision
    let mut outputs: Vec<Option<KvOutput>> = vec![None; planned.len()];
    // The highest revision each client saw, and when (for serializable floors).
    let mut seen: Vec<Vec<(u64, i64)>> = vec![Vec::new(); shape.clients as usize];
    for &i in &order {
        let op = &planned[i];
        let output = match &op.input {
            KvInput::Get {
                key,
                linearizable: false,
            } if op.kind == Kind::Ok => {
                // A member that has applied some revision between what the
                // client saw before and now.
                let floor = seen[op.client as usize]
                    .iter()
                    .filter(|(at, _)| *at <= op.invoke)
                    .map(|(_, revision)| *revision)
                    .max()
                    .unwrap_or(1);
                let revision = rng.gen_range(floor.min(store.revision)..=store.revision);
                let snapshot = &snapshots[revision as usize];
                let (value, mod_revision) = snapshot.lookup(key);
                KvOutput::Get {
                    value,
                    mod_revision,
                    revision,
                }
            }
            input => store.apply(input),
        };
        while snapshots.len() <= store.revision as usize {
            snapshots.push(store.clone());
        }
        if op.kind == Kind::Ok {
            seen[op.client as usize].push((op.complete.expect("ok completes"), output_revision(&output)));
            outputs[i] = Some(output);
        }
    }

    let mut history = KvHistory::new();
    let mut indices: Vec<usize> = (0..planned.len()).collect();
    indices.sort_by_key(|&i| (planned[i].invoke, i));
    for (id, i) in indices.into_iter().enumerate() {
        let op = &planned[i];
        let outcome = match op.kind {
            Kind::Ok => Outcome::Ok(outputs[i].clone().expect("ok operations took effect")),
            Kind::Failed => Outcome::Failed("no leader".into()),
            Kind::Unknown => Outcome::Unknown("timed out".into()),
        };
        history.operations.push(KvOperation {
            id: id as u64,
            client: op.client,
            invoke: op.invoke,
            complete: op.complete,
            input: op.input.clone(),
            outcome,
        });
    }
    history
}

fn output_revision(output: &KvOutput) -> i64 {
    output.revision()
}

/// Change one acknowledged get's answer to a value it did not read: another
/// value (or absence) with a plausible mod revision. Returns false when the
/// history has no acknowledged get.
pub fn mutate_read(rng: &mut StdRng, history: &mut KvHistory, values: usize) -> bool {
    let gets: Vec<usize> = (0..history.operations.len())
        .filter(|&i| {
            matches!(history.operations[i].input, KvInput::Get { .. })
                && matches!(history.operations[i].outcome, Outcome::Ok(_))
        })
        .collect();
    if gets.is_empty() {
        return false;
    }
    let index = gets[rng.gen_range(0..gets.len())];
    let Outcome::Ok(KvOutput::Get {
        value,
        mod_revision,
        revision,
    }) = &mut history.operations[index].outcome
    else {
        unreachable!("filtered to acknowledged gets")
    };
    loop {
        let new_value = if rng.gen_bool(0.2) {
            None
        } else {
            Some(format!("v{}", rng.gen_range(0..values.max(1))).into_bytes())
        };
        let new_mod = if new_value.is_some() {
            rng.gen_range(2..=(*revision).max(2))
        } else {
            0
        };
        if (new_value.clone(), new_mod) != (value.clone(), *mod_revision) {
            *value = new_value;
            *mod_revision = new_mod;
            // Keep the answer well formed.
            *revision = (*revision).max(new_mod);
            return true;
        }
    }
}
