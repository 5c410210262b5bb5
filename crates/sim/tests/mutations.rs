//! The simulator catches real bugs: each test here runs against a node
//! built with one deliberately broken behaviour (the `mutation-*` features
//! of `crates/node`) and asserts that a run fails the invariant that bug
//! breaks. They are `#[ignore]`d and compiled only with their feature:
//!
//! ```text
//! cargo test -p zongheng-sim --features mutation-ack-before-fsync --test mutations -- --ignored
//! cargo test -p zongheng-sim --features mutation-grant-all-votes --test mutations -- --ignored
//! cargo test -p zongheng-sim --features mutation-stale-reads --test mutations -- --ignored
//! ```

#[allow(unused_imports)]
use zongheng_sim::{run, Invariant, RunOptions, RunReport};

/// Run seeds `1..=max_seeds` until one breaks `invariant`; returns it.
#[allow(dead_code)]
fn first_seed_breaking(invariant: Invariant, max_seeds: u64) -> Option<RunReport> {
    (1..=max_seeds).find_map(|seed| {
        let report = run(&RunOptions::new(seed, 60));
        println!("{}", report.summary());
        for line in report.failures() {
            println!("  {line}");
        }
        report
            .violations
            .iter()
            .any(|violation| violation.invariant == invariant)
            .then_some(report)
    })
}

/// Appends acknowledged before they are synced: the audited disk reports it
/// at the first append.
#[cfg(feature = "mutation-ack-before-fsync")]
#[test]
#[ignore = "a deliberately broken node build"]
fn acknowledging_before_fsync_is_caught() {
    let report = first_seed_breaking(Invariant::UnsyncedRaftWrite, 1).expect("the first seed catches it");
    assert!(!report.passed());
}

/// Every vote granted: two leaders are elected in one term.
#[cfg(feature = "mutation-grant-all-votes")]
#[test]
#[ignore = "a deliberately broken node build"]
fn granting_every_vote_is_caught() {
    let report = first_seed_breaking(Invariant::OneLeaderPerTerm, 20).expect("one of 20 seeds catches it");
    assert!(!report.passed());
}

/// Linearizable reads served from local, possibly stale, state: a client
/// that moves to a lagging node reads an older revision than it had seen.
#[cfg(feature = "mutation-stale-reads")]
#[test]
#[ignore = "a deliberately broken node build"]
fn stale_linearizable_reads_are_caught() {
    let report = first_seed_breaking(Invariant::RevisionOrder, 20).expect("one of 20 seeds catches it");
    assert!(!report.passed());
}
