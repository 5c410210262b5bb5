//! The data store under faults: bank transfers across partitions (each its
//! own Raft group) through Percolator transactions, while nodes are cut off
//! and crashed. See `zongheng_sim::bank` for what is checked.

use zongheng_sim::bank::{run_bank, BankOptions};
use zongheng_sim::Trace;

fn run_seed(seed: u64) {
    run_with(BankOptions::new(seed));
}

fn run_with(options: BankOptions) {
    let seed = options.seed;
    let trace = Trace::default();
    let result = run_bank(&options, &trace);
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

/// Five nodes, 3 replicas per partition: a request reaching a node without a
/// replica is forwarded to the nodes that have one.
#[test]
fn bank_total_holds_on_five_nodes_where_some_hold_no_replica() {
    run_with(BankOptions {
        nodes: 5,
        ..BankOptions::new(4)
    });
}
