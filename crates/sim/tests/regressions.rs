//! Failures the simulator found, kept as tests.
//!
//! Each test names what failed and the seed that found it. A seed replays
//! exactly only with the code it was found on (a change to the nemesis, the
//! clients or the node moves every later event), so where a seed would not
//! keep reproducing its bug, a scenario written from the failing trace pins
//! the same interleaving down instead; the seed is kept too, as one more
//! run under the full nemesis.

use zongheng_sim::{run, Invariant, RunOptions};

fn assert_passes(options: &RunOptions) {
    let report = run(options);
    println!("{}", report.summary());
    assert!(report.passed(), "{}", report.failures().join("\n"));
}

/// Found by seed 35 (1 simulated minute of faults): after message loss a
/// peer connection stalled for good (turmoil's TCP never retransmits, a
/// worst case of a black-holed flow), and nothing replaced it: the HTTP/2
/// keepalive only pinged while a request was open, and openraft's short
/// RPC deadlines left the connection idle at the moments it checked. One
/// node stayed cut off after every fault healed. Fixed in
/// `zongheng::net::transport::channel` (keepalive pings while idle too).
#[test]
fn seed_35_stalled_peer_connections_are_replaced() {
    let mut options = RunOptions::new(35, 60);
    options.tolerate_shared_terms = true;
    assert_passes(&options);
}

/// Found by seed 29 (1 simulated minute of faults, first version of the
/// nemesis): a node joining with `--initial-cluster-state existing` asked a
/// member that had just crashed for the member list and waited forever
/// (the 2 s deadline of the discovery call was only sent to the server, not
/// enforced), so the re-added member never started. Fixed in
/// `zongheng::node` (the discovery call has a client-side deadline).
#[test]
fn seed_29_a_joining_node_skips_a_member_that_does_not_answer() {
    let mut options = RunOptions::new(29, 60);
    options.tolerate_shared_terms = true;
    assert_passes(&options);
}

/// Found by seeds 17, 27, 34, 45, 46, 58 and 59 of the first campaign: two
/// leaders in term 1. Every node calls openraft's `initialize` at bootstrap
/// and campaigns at once; openraft 0.9 built without its
/// `single-term-leader` feature identifies a leader by (term, node id), so a
/// voter that granted its term-1 vote to `n3` grants it again to `n1`
/// (whose id is greater), and both become leader of term 1, one after the
/// other. The log stays safe (entries carry the full leader id), but Raft's
/// and etcd's "one leader per term" does not hold, and clients see two
/// leaders reporting the same `raft_term`. Open: enable `single-term-leader`
/// for openraft in the workspace's Cargo.toml (a change of the on-disk vote
/// and log id format).
#[test]
#[ignore = "open bug: openraft is built without single-term-leader (two leaders in term 1)"]
fn seed_17_one_leader_per_term() {
    let report = run(&RunOptions::new(17, 60));
    println!("{}", report.summary());
    assert!(
        !report
            .violations
            .iter()
            .any(|violation| violation.invariant == Invariant::OneLeaderPerTerm),
        "{}",
        report.failures().join("\n")
    );
}
