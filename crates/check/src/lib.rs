//! zongheng-check: judging what clients saw.
//!
//! A test (simulated or against real processes) records a [`history`]: every
//! operation a client invoked, when, and what came back. The checkers here
//! decide whether some order of those operations, consistent with real time
//! and with a sequential model of the store, explains every answer
//! (linearizability), and report the smallest failing part when none does.
//!
//! The crate has no I/O and no dependency on the node: histories are data,
//! so the simulator, the process tests and a history read from a file are
//! judged by the same code.
//!
//! ## API
//! - [`check_kv`]`(&KvHistory) -> KvVerdict`: etcd's KV semantics with
//!   revisions ([`EtcdKvModel`]), by the revision-ordered search: fast on
//!   thousands of operations. Serializable gets are checked by the weaker
//!   rule in [`models::etcd_kv`]. [`check_kv_with`] takes the model's options
//!   and [`Limits`].
//! - [`check_register`]`(&KvHistory) -> KvVerdict`: one register per key,
//!   revisions ignored ([`RegisterModel`]), by the generic search per key.
//! - [`check`]`(&model, &history)` / [`check_with`]: the generic
//!   Wing–Gong–Lowe search ([`linearizability`]) for any [`Model`].
//! - [`check_exhaustive`]: every order, for tests on tiny histories.
//! - [`History::to_json`] / [`History::from_json`]: save a failing history
//!   from a campaign and replay it through a checker.
//!
//! Every answer is a [`Verdict`]: [`Verdict::Linearizable`],
//! [`Verdict::NotLinearizable`] with a [`Report`] (the minimal failing
//! sub-history, the longest linearizable prefix, the operation that could not
//! be placed and why; `Display` prints it for a person), or
//! [`Verdict::Unknown`] when a [`Limits`] bound stopped the search.
//!
//! ## What recorders must do
//! See [`history`]: times on one clock, a timeout is `Unknown` (never
//! `Failed`), and for the etcd model every acknowledged answer carries the
//! response header's revision. A client id is one sequential client pinned to
//! one member while it reads serializably (or set
//! [`EtcdKvModel::serializable_floor_per_client`] to false).
//!
//! ## Dependencies
//! - `serde` + `serde_json`: histories are saved to and replayed from JSON
//!   files (the workspace already uses both).
//! - dev: `rand` (the workspace's) for the seeded property tests;
//!   `stateright` for an independent linearizability tester (its
//!   `LinearizabilityTester`) that the tests compare against on generated
//!   register histories. Neither is a runtime dependency.

mod bitset;
pub mod exhaustive;
pub mod history;
pub mod linearizability;
pub mod models;
mod shrink;

pub use exhaustive::check_exhaustive;
pub use history::{ClientId, History, KvHistory, KvInput, KvOperation, KvOutput, Nanos, Operation, Outcome};
pub use linearizability::{check, check_with, Failure, Limits, Model, Report, Verdict, Violation};
pub use models::{EtcdKvModel, EtcdState, RegisterModel, RegisterState};

/// The verdict on a KV history.
pub type KvVerdict = Verdict<KvInput, KvOutput>;

/// Check a KV history against etcd's semantics, revisions included
/// ([`EtcdKvModel`] with its defaults), within the default [`Limits`].
pub fn check_kv(history: &KvHistory) -> KvVerdict {
    check_kv_with(&EtcdKvModel::default(), history, &Limits::default())
}

/// [`check_kv`] with the model's options and explicit limits.
pub fn check_kv_with(model: &EtcdKvModel, history: &KvHistory, limits: &Limits) -> KvVerdict {
    linearizability::judge(model, history, limits, &|part: &KvHistory| {
        models::etcd_revisions::search(model, part, limits)
    })
}

/// Check a KV history as independent registers, one per key, revisions
/// ignored ([`RegisterModel`]).
pub fn check_register(history: &KvHistory) -> KvVerdict {
    check(&RegisterModel, history)
}

/// [`check_register`] with explicit limits.
pub fn check_register_with(history: &KvHistory, limits: &Limits) -> KvVerdict {
    check_with(&RegisterModel, history, limits)
}
