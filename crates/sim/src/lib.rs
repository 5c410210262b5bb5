//! zongheng-sim: whole zongheng clusters in one process, on a simulated
//! network and clock (turmoil), under a seeded nemesis, judged by invariant
//! checkers and a linearizability checker.
//!
//! ## What it is for
//! Distributed bugs live in interleavings: a partition during an election, a
//! crash between an fsync and an acknowledgement, a reply lost after a write
//! was applied. Real processes meet those interleavings by luck; a simulation
//! makes them on purpose and, given the same seed, again (TigerBeetle's VOPR
//! and openraft's turmoil fuzzer are the models). Each simulated host runs
//! the real node (`zongheng::node::start`: Raft, storage, the gRPC servers)
//! with only its side effects swapped:
//!
//! - the network is turmoil's ([`SimTransport`]): partitioned, delayed,
//!   lossy, held, and cut off when a host crashes;
//! - the disk is a [`zongheng_storage::MemEngine`] that keeps what was synced
//!   and loses the rest on a crash, behind an auditor that reports any Raft
//!   write acknowledged without an fsync ([`disk`]);
//! - time is each host's paused tokio clock, advanced by turmoil one
//!   millisecond per step, so minutes of Raft timeouts take seconds;
//! - randomness comes from the seed: turmoil's (latencies, loss, each host's
//!   tokio runtime), openraft's election timers
//!   (`zongheng::raft::runtime::seed_thread_rng`), the nemesis and the
//!   clients.
//!
//! ## The pieces
//! - [`SimCluster`] builds the hosts (voters `n1..nN` and idle spares) and
//!   applies faults between simulation steps; its [`Nemesis`] handle is how
//!   code inside the simulation injects faults and looks at every node.
//! - [`nemesis`]: a schedule of faults drawn from the seed (partitions,
//!   message loss, latency spikes, pauses, crashes, wiped disks re-added as
//!   new members, membership changes) and the code that applies it.
//! - [`workload`]: seeded clients recording a `zongheng_check` history.
//! - [`invariants`]: the checks made during a run (one leader per term,
//!   committed entries never change, synced Raft writes) and the record of
//!   every violation; [`run`] adds the checks at the end (identical replicas,
//!   acknowledged writes readable, the history linearizable).
//! - [`run()`] runs one seed start to end and returns a [`RunReport`]; the
//!   `sim` binary runs campaigns of many seeds (see `src/bin/sim.rs`).
//!
//! ## Determinism
//! A seed replays byte for byte: the same history (every invocation and
//! completion, to the simulated nanosecond), the same nemesis and checker
//! trace, the same Raft state changes on every node, in one process or
//! another, debug or release (`tests/nemesis.rs` runs a full nemesis seed
//! twice and compares). What that takes:
//!
//! - **`--cfg tokio_unstable`** (set for the workspace in
//!   `.cargo/config.toml`): with it turmoil seeds each host's tokio runtime,
//!   whose generator breaks ties in `tokio::select!`; without it that
//!   generator is seeded from the OS. It also makes a panic in any task of a
//!   simulated node fail the run.
//! - **No side effects in crash order.** A crash drops a host's tasks in an
//!   order tokio derives from process-wide task ids; turmoil's streams send
//!   a FIN or RST when dropped, which would draw latencies in that order. The
//!   transport of a crashed host drops its connections silently (a power
//!   loss), so nothing depends on what ran earlier in the process.
//! - A fixed simulated epoch; node code reads no OS clock or randomness and
//!   keeps ordered maps; this crate iterates only `BTreeMap`s and vectors.
//!
//! Instants are still the process's monotonic clock at each runtime's
//! creation plus simulated time, so only differences of instants replay
//! (node code only takes differences); log timestamps do not replay.
//!
//! ## What it does not do yet
//! No disk faults beyond losing unsynced writes (no torn or corrupted
//! writes, no fsync errors), no clock skew between hosts (turmoil steps all
//! clocks together), and one `meta` group only. The watch, lease, lock and
//! election clients are in [`coordination`].

pub mod bank;
pub mod client;
pub mod cluster;
pub mod coordination;
pub mod disk;
pub mod invariants;
pub mod linearizability;
pub mod logging;
pub mod nemesis;
pub mod run;
pub mod trace;
pub mod transport;
pub mod workload;

pub use client::{prefix_range, RequestError, SimClient};
pub use cluster::{Nemesis, NodeView, SimCluster, SimOptions, CLIENT_HOST, CLIENT_PORT, CLUSTER_TOKEN, PEER_PORT};
pub use invariants::{Invariant, Monitor, Violation};
pub use linearizability::Linearizability;
pub use nemesis::{NemesisOptions, Schedule};
pub use run::{run, RunOptions, RunReport};
pub use trace::{Trace, TraceEvent};
pub use transport::SimTransport;
pub use workload::{OpMix, WorkloadOptions};
