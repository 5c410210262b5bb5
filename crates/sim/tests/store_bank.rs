//! The data store under faults: bank transfers across partitions (each its
//! own Raft group) through Percolator transactions, while nodes are cut off
//! and crashed. See `zongheng_sim::bank` for what is checked.

use zongheng_sim::bank::{run_bank, BankOptions};
use zongheng_sim::Trace;

fn run_seed(seed: u64) {
    let trace = Trace::default();
    let result = run_bank(&BankOptions::new(seed), &trace);
    match result {
        Ok(report) => {
            println!("seed {seed}: {report:?}");
            assert!(report.committed > 0, "seed {seed}: no transfer committed");
            assert!(report.faults > 0, "seed {seed}: no fault injected");
            assert!(report.audits > 0, "seed {seed}: no audit completed");
        }
        Err(error) => {
            for event in trace.events() {
                println!("{event}");
            }
            panic!("seed {seed}: {error}");
        }
    }
}

#[test]
fn bank_total_holds_through_partitions_and_crashes() {
    for seed in 1..=3 {
        run_seed(seed);
    }
}
