//! Property tests on generated histories (seeded: a failing seed replays).
//!
//! - Histories of a correct simulated run are accepted by every checker.
//! - Mutated histories (one read's answer changed, or one write's revision)
//!   are judged exactly as the exhaustive check judges them: it tries every
//!   order, so it is the ground truth on these small histories.
//! - The register checker agrees with stateright's `LinearizabilityTester`,
//!   an independent implementation, on every generated register history.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use zongheng_check::{
    check, check_exhaustive, check_kv, check_register, EtcdKvModel, KvHistory, KvInput, KvOutput, Outcome,
    RegisterModel,
};

/// Cases per property: a few seconds in a debug build on two cores.
const CASES: u64 = 600;

fn small_shape(rng: &mut StdRng) -> Shape {
    Shape {
        operations: rng.gen_range(3..=8),
        clients: rng.gen_range(2..=4),
        keys: rng.gen_range(1..=2),
        values: rng.gen_range(1..=3),
        serializable_rate: if rng.gen_bool(0.3) { 0.3 } else { 0.0 },
        ..Shape::small()
    }
}

#[test]
fn histories_of_correct_runs_are_accepted() {
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let shape = small_shape(&mut rng);
        let history = generate(&mut rng, &shape);
        let context = || format!("seed {seed}, shape {shape:?}:\n{history}");
        assert!(
            check_exhaustive(&EtcdKvModel::default(), &history),
            "ground truth rejects {}",
            context()
        );
        assert!(
            check_kv(&history).is_linearizable(),
            "check_kv: {}\n{}",
            check_kv(&history),
            context()
        );
        assert!(
            check(&EtcdKvModel::default(), &history).is_linearizable(),
            "generic etcd: {}",
            context()
        );
        assert!(
            check_register(&history).is_linearizable(),
            "check_register: {}",
            context()
        );
    }
    // Larger runs, beyond the exhaustive check.
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(10_000 + seed);
        let shape = Shape {
            operations: rng.gen_range(20..=80),
            clients: rng.gen_range(2..=5),
            keys: rng.gen_range(1..=3),
            values: rng.gen_range(2..=6),
            unknown_rate: 0.1,
            serializable_rate: 0.2,
            ..Shape::small()
        };
        let history = generate(&mut rng, &shape);
        assert!(
            check_kv(&history).is_linearizable(),
            "seed {seed}: {}\n{history}",
            check_kv(&history)
        );
        assert!(
            check_register(&history).is_linearizable(),
            "seed {seed}: {}",
            check_register(&history)
        );
    }
}

/// Change one write's revision by one (up or down), or one read's answer.
fn mutate_revision(rng: &mut StdRng, history: &mut KvHistory) -> bool {
    let writes: Vec<usize> = (0..history.operations.len())
        .filter(|&i| history.operations[i].input.is_write() && matches!(history.operations[i].outcome, Outcome::Ok(_)))
        .collect();
    if writes.is_empty() {
        return false;
    }
    let index = writes[rng.gen_range(0..writes.len())];
    let delta = if rng.gen_bool(0.5) { 1 } else { -1 };
    if let Outcome::Ok(output) = &mut history.operations[index].outcome {
        match output {
            KvOutput::Put { revision }
            | KvOutput::Delete { revision, .. }
            | KvOutput::CompareAndSet { revision, .. }
            | KvOutput::Get { revision, .. } => *revision = (*revision + delta).max(1),
        }
    }
    true
}

#[test]
fn mutated_histories_are_judged_as_the_exhaustive_check_judges_them() {
    let etcd = EtcdKvModel::default();
    let (mut mutated, mut rejected_etcd, mut rejected_register) = (0, 0, 0);
    for seed in 0..CASES * 2 {
        let mut rng = StdRng::seed_from_u64(1_000_000 + seed);
        let shape = small_shape(&mut rng);
        let mut history = generate(&mut rng, &shape);
        let changed = if rng.gen_bool(0.7) {
            mutate_read(&mut rng, &mut history, shape.values)
        } else {
            mutate_revision(&mut rng, &mut history)
        };
        if !changed {
            continue;
        }
        mutated += 1;
        let context = || format!("seed {seed}:\n{history}");

        let truth = check_exhaustive(&etcd, &history);
        let fast = check_kv(&history);
        assert_eq!(
            fast.is_linearizable(),
            truth,
            "check_kv disagrees with the ground truth: {fast}\n{}",
            context()
        );
        assert!(!fast.is_unknown(), "check_kv gave up on a tiny history: {fast}");
        let generic = check(&etcd, &history);
        assert_eq!(
            generic.is_linearizable(),
            truth,
            "generic etcd disagrees: {generic}\n{}",
            context()
        );
        rejected_etcd += usize::from(!truth);

        let truth = check_exhaustive(&RegisterModel, &history);
        let register = check_register(&history);
        assert_eq!(
            register.is_linearizable(),
            truth,
            "check_register disagrees: {register}\n{}",
            context()
        );
        rejected_register += usize::from(!truth);

        // Every rejection names an operation of its minimal history.
        for verdict in [fast, register] {
            if let Some(report) = verdict.report() {
                assert!(
                    report.history.operations.iter().any(|op| op.id == report.stuck),
                    "{report}"
                );
            }
        }
    }
    println!("{mutated} mutated histories: {rejected_etcd} not linearizable (etcd), {rejected_register} (registers)");
    // The property is only worth something if many mutations do break
    // linearizability (and some do not).
    assert!(
        rejected_etcd > mutated / 3 && rejected_etcd < mutated,
        "{rejected_etcd} of {mutated}"
    );
    assert!(
        rejected_register > mutated / 5 && rejected_register < mutated,
        "{rejected_register} of {mutated}"
    );
}

mod stateright_spec {
    //! The register semantics written again for stateright, independently
    //! of `RegisterModel`: a map of keys to values.
    use super::*;
    use stateright::semantics::SequentialSpec;

    #[derive(Clone, Default, Debug, Hash, PartialEq)]
    pub struct Registers(pub BTreeMap<Vec<u8>, Vec<u8>>);

    #[derive(Clone, Debug, PartialEq)]
    pub enum Ret {
        Put,
        Get(Option<Vec<u8>>),
        Delete(i64),
        CompareAndSet(bool),
    }

    impl Ret {
        pub fn of(output: &KvOutput) -> Self {
            match output {
                KvOutput::Put { .. } => Ret::Put,
                KvOutput::Get { value, .. } => Ret::Get(value.clone()),
                KvOutput::Delete { deleted, .. } => Ret::Delete(*deleted),
                KvOutput::CompareAndSet { succeeded, .. } => Ret::CompareAndSet(*succeeded),
            }
        }
    }

    impl SequentialSpec for Registers {
        type Op = KvInput;
        type Ret = Ret;

        fn invoke(&mut self, op: &KvInput) -> Ret {
            match op {
                KvInput::Put { key, value } => {
                    self.0.insert(key.clone(), value.clone());
                    Ret::Put
                }
                KvInput::Get { key, .. } => Ret::Get(self.0.get(key).cloned()),
                KvInput::Delete { key } => Ret::Delete(i64::from(self.0.remove(key).is_some())),
                KvInput::CompareAndSet {
                    key,
                    expected,
                    new_value,
                } => {
                    if self.0.get(key) == expected.as_ref() {
                        self.0.insert(key.clone(), new_value.clone());
                        Ret::CompareAndSet(true)
                    } else {
                        Ret::CompareAndSet(false)
                    }
                }
            }
        }
    }
}

/// stateright's verdict: events in time order (an invocation before a
/// completion at the same instant, as our checkers treat touching operations
/// as concurrent); an operation with an unknown outcome is invoked on a
/// thread of its own and never returns, which stateright treats as "may or
/// may not have taken effect".
fn stateright_verdict(history: &KvHistory) -> bool {
    use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
    let mut events: Vec<(u64, u8, u64, usize)> = Vec::new();
    for (index, op) in history.operations.iter().enumerate() {
        match (&op.outcome, op.complete) {
            (Outcome::Failed(_), _) => {}
            (Outcome::Ok(_), Some(complete)) => {
                events.push((op.invoke, 0, op.client, index));
                events.push((complete, 1, op.client, index));
            }
            _ => events.push((op.invoke, 0, 1_000_000 + op.id, index)),
        }
    }
    events.sort();
    let mut tester = LinearizabilityTester::new(stateright_spec::Registers::default());
    for (_, kind, thread, index) in events {
        let op = &history.operations[index];
        let recorded = if kind == 0 {
            tester.on_invoke(thread, op.input.clone()).map(|_| ())
        } else {
            let Outcome::Ok(output) = &op.outcome else {
                unreachable!("only acknowledged operations return")
            };
            tester.on_return(thread, stateright_spec::Ret::of(output)).map(|_| ())
        };
        recorded.expect("a well-formed history");
    }
    tester.is_consistent()
}

#[test]
fn register_checker_agrees_with_stateright() {
    let (mut cases, mut rejected) = (0, 0);
    for seed in 0..CASES * 2 {
        let mut rng = StdRng::seed_from_u64(2_000_000 + seed);
        let shape = Shape {
            serializable_rate: 0.0,
            ..small_shape(&mut rng)
        };
        let mut history = generate(&mut rng, &shape);
        if rng.gen_bool(0.6) {
            mutate_read(&mut rng, &mut history, shape.values);
        }
        let ours = check_register(&history);
        let theirs = stateright_verdict(&history);
        let truth = check_exhaustive(&RegisterModel, &history);
        assert_eq!(
            theirs, truth,
            "stateright disagrees with the exhaustive check, seed {seed}:\n{history}"
        );
        assert_eq!(
            ours.is_linearizable(),
            theirs,
            "seed {seed}: ours {ours}, stateright {theirs}:\n{history}"
        );
        cases += 1;
        rejected += usize::from(!theirs);
    }
    println!("stateright cross-check: {cases} histories, both agree on all; {rejected} not linearizable");
    assert!(
        rejected > cases / 10,
        "the cross-check needs failing histories too: {rejected} of {cases}"
    );
}

/// Many unknown writes and few values: revisions with no acknowledged write
/// (filled by unknown ones) are common and ambiguous, which is where the
/// revision search has to search (and backjump). The generic search on the
/// same model is the reference here (the histories are too long for the
/// exhaustive check).
#[test]
fn ambiguous_revision_gaps_are_judged_as_the_generic_search_judges_them() {
    let etcd = EtcdKvModel::default();
    let (mut cases, mut rejected) = (0, 0);
    for seed in 0..CASES * 3 {
        let mut rng = StdRng::seed_from_u64(3_000_000 + seed);
        let shape = Shape {
            operations: rng.gen_range(8..=16),
            clients: rng.gen_range(2..=4),
            keys: rng.gen_range(1..=3),
            values: rng.gen_range(1..=3),
            unknown_rate: 0.4,
            failed_rate: 0.05,
            serializable_rate: 0.2,
            unfinished: true,
        };
        let mut history = generate(&mut rng, &shape);
        if rng.gen_bool(0.5) {
            if rng.gen_bool(0.7) {
                mutate_read(&mut rng, &mut history, shape.values);
            } else {
                mutate_revision(&mut rng, &mut history);
            }
        }
        let fast = check_kv(&history);
        let generic = check(&etcd, &history);
        assert!(
            !fast.is_unknown() && !generic.is_unknown(),
            "seed {seed}: {fast} / {generic}"
        );
        assert_eq!(
            fast.is_linearizable(),
            generic.is_linearizable(),
            "seed {seed}: check_kv {fast}\ngeneric {generic}\n{history}"
        );
        cases += 1;
        rejected += usize::from(!generic.is_linearizable());
    }
    println!("ambiguous gaps: {cases} histories, {rejected} not linearizable; both searches agree on all");
    assert!(rejected > cases / 5 && rejected < cases, "{rejected} of {cases}");
}
