//! zongheng's I/O-free algorithm cores.
//!
//! Policies that decide something (where a partition's replicas live, which
//! partition a key belongs to, which moves to make next) are written here as
//! pure functions and state machines: no network, no disk, no clock, no
//! randomness that is not handed in. The node calls them for real; the
//! simulator and the lab call the same code, so what a test measures is what
//! the cluster does, and a seed replays exactly.
//!
//! What is here so far (the storage pillar's distribution, COURSE.md H3):
//!
//! - [`partition`]: key → partition, by a stable hash (the *index*);
//! - [`ring`]: a consistent-hash ring with virtual nodes weighted by capacity,
//!   and the bounded-load walk (Mirrokni, Thorup and Zadimoghaddam,
//!   "Consistent Hashing with Bounded Loads", 2016);
//! - [`placement`]: partition → replica set over the live store nodes (the
//!   *shelf*), with bounded load and distinct failure domains;
//! - [`rebalance`]: the moves that take the current replica sets to the target
//!   ones, repairs first, a bounded number at a time;
//! - [`failure`]: failure detection by heartbeat timeout (COURSE.md V3), which
//!   decides when a silent store node's replicas are re-created elsewhere.
//!
//! Why a separate crate: it has no dependency on tokio, openraft or the
//! storage engine, so its tests run in milliseconds and the lab can link it
//! without the node.

pub mod failure;
pub mod partition;
pub mod placement;
pub mod rebalance;
pub mod ring;

pub use failure::{DetectorConfig, FailureDetector, Liveness};
pub use partition::{partition_of, PartitionId, PARTITIONS_DEFAULT, PARTITIONS_MAX};
pub use placement::{place, NodeSpec, Placement, PlacementConfig, PlacementError};
pub use rebalance::{apply_move, plan_moves, Move, Plan};
pub use ring::HashRing;
