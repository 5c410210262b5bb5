//! Bounded (not timed) checks of large histories: they must be decided
//! within the default state limit. The times are printed for the record.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;
use zongheng_check::{check_kv, check_register, KvHistory, Limits};

fn campaign(seed: u64) -> (KvHistory, Shape) {
    let shape = Shape {
        clients: 5,
        operations: 2_000,
        keys: 10,
        values: 1_000_000,
        unknown_rate: 0.05,
        failed_rate: 0.01,
        serializable_rate: 0.1,
        unfinished: true,
    };
    (generate(&mut StdRng::seed_from_u64(seed), &shape), shape)
}

#[test]
fn two_thousand_operations_check_within_the_state_limit() {
    for seed in [1, 2, 3] {
        let (history, _) = campaign(seed);
        let unknown = history.operations.iter().filter(|op| op.is_unknown()).count();
        let started = Instant::now();
        let verdict = check_kv(&history);
        let elapsed = started.elapsed();
        println!(
            "check_kv: {} operations (5 clients, 10 keys, {unknown} unknown) in {:.1} ms (limit {} states)",
            history.operations.len(),
            elapsed.as_secs_f64() * 1e3,
            Limits::STATES_MAX_DEFAULT
        );
        assert!(verdict.is_linearizable(), "seed {seed}: {verdict}");

        let started = Instant::now();
        let verdict = check_register(&history);
        println!(
            "check_register: the same history in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        assert!(verdict.is_linearizable(), "seed {seed}: {verdict}");
    }
}

#[test]
fn a_broken_read_in_two_thousand_operations_is_found_and_shrunk() {
    let (mut history, shape) = campaign(7);
    // A read that returns a value nobody wrote at a plausible revision.
    let index = history
        .operations
        .iter()
        .rposition(|op| {
            matches!(op.input, zongheng_check::KvInput::Get { linearizable: true, .. })
                && matches!(op.outcome, zongheng_check::Outcome::Ok(_))
        })
        .expect("the campaign has reads");
    if let zongheng_check::Outcome::Ok(zongheng_check::KvOutput::Get {
        value, mod_revision, ..
    }) = &mut history.operations[index].outcome
    {
        *value = Some(b"never written".to_vec());
        *mod_revision = (*mod_revision).max(2);
    }
    let _ = shape;
    let started = Instant::now();
    let verdict = check_kv(&history);
    println!(
        "found and shrunk in {:.1} ms:\n{verdict}",
        started.elapsed().as_secs_f64() * 1e3
    );
    let report = verdict
        .report()
        .expect("a read of a value never written is not linearizable");
    assert_eq!(report.stuck, history.operations[index].id);
    assert!(
        report.history.operations.len() < 20,
        "shrunk to {} operations",
        report.history.operations.len()
    );
}
