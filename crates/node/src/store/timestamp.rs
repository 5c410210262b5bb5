//! Timestamps for transactions, and the oracle that hands them out.
//!
//! A [`Timestamp`] is a hybrid of wall-clock milliseconds and a counter:
//! `physical_ms << 18 | logical`, as in TiKV's placement driver. Ordering the
//! u64 orders by time first; 2^18 (262,144) timestamps per millisecond.
//! Lock TTLs compare the physical parts, so "expired" means about the same
//! thing to every client.
//!
//! The [`TimestampOracle`] is the I/O-free core of the meta leader's
//! timestamp service. Its one promise: **a timestamp is never handed out
//! twice and never goes backwards, across leader changes and restarts.** It
//! keeps that by persisting a high-water mark through `meta`'s Raft log before
//! handing out anything below it:
//!
//! - the oracle may hand out timestamps whose physical part is below the
//!   persisted mark without touching the log;
//! - when the clock (or the counter) would cross the mark, it asks for a new
//!   mark [`TIMESTAMP_WINDOW_MS`] ahead and waits until that is committed;
//! - a new leader starts strictly above the last committed mark, whatever its
//!   own clock says, so a leader whose clock is behind the old one's cannot
//!   repeat a timestamp.
//!
//! Each allocation takes a batch (`count`), so a node's clients share one
//! round to the leader (the batched allocation of the issue).
//!
//! The clock is injected: `now_ms` is an argument, so the simulator and the
//! tests drive it.

use serde::{Deserialize, Serialize};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 18;
/// Timestamps per physical millisecond.
pub const LOGICAL_PER_MS: u64 = 1 << LOGICAL_BITS;
/// How far ahead of the clock the persisted high-water mark is set, so one
/// Raft write covers this long of allocations.
pub const TIMESTAMP_WINDOW_MS: u64 = 3_000;
/// Most timestamps one request may take.
pub const TIMESTAMP_BATCH_MAX: u32 = 4_096;

/// A transaction timestamp (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    pub fn new(physical_ms: u64, logical: u64) -> Self {
        assert!(
            logical < LOGICAL_PER_MS,
            "logical part {logical} overflows {LOGICAL_BITS} bits"
        );
        Timestamp(physical_ms << LOGICAL_BITS | logical)
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u64 {
        self.0 & (LOGICAL_PER_MS - 1)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the oracle needs before it can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// `count` timestamps, `first..first+count`.
    Granted { first: Timestamp, count: u32 },
    /// Persist this high-water mark (physical ms) through Raft, then call
    /// [`TimestampOracle::persisted`] and ask again.
    PersistFirst { high_water_ms: u64 },
}

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    #[error("asked for {0} timestamps; one request may take 1..={TIMESTAMP_BATCH_MAX}")]
    BadCount(u32),
    #[error("the oracle has not loaded its high-water mark yet (no leader, or a leader just elected)")]
    NotReady,
}

/// The timestamp oracle's state on the meta leader (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct TimestampOracle {
    /// The last timestamp handed out (zero before the first).
    last: Timestamp,
    /// Physical ms below which timestamps may be handed out: the committed mark.
    high_water_ms: u64,
    ready: bool,
}

impl TimestampOracle {
    /// A leader starts from the committed high-water mark: everything at or
    /// below it may have been handed out by an earlier leader, so it begins
    /// strictly above it.
    pub fn start_leading(committed_high_water_ms: u64) -> Self {
        Self {
            last: Timestamp::new(committed_high_water_ms, LOGICAL_PER_MS - 1),
            high_water_ms: committed_high_water_ms,
            ready: true,
        }
    }

    /// A new high-water mark was committed.
    pub fn persisted(&mut self, high_water_ms: u64) {
        self.high_water_ms = self.high_water_ms.max(high_water_ms);
    }

    /// The last timestamp handed out.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Hand out `count` consecutive timestamps at `now_ms` or later.
    pub fn allocate(&mut self, count: u32, now_ms: u64) -> Result<Allocation, OracleError> {
        if !(1..=TIMESTAMP_BATCH_MAX).contains(&count) {
            return Err(OracleError::BadCount(count));
        }
        if !self.ready {
            return Err(OracleError::NotReady);
        }
        // Follow the clock when it is ahead; otherwise keep counting from the
        // last timestamp (a clock that went backwards changes nothing).
        let next = self.last.0 + 1;
        let first = if now_ms > self.last.physical_ms() {
            Timestamp::new(now_ms, 0)
        } else {
            Timestamp(next)
        };
        // A batch never straddles a millisecond, so the counter can overflow
        // into the next one only by starting there.
        let first = if first.logical() + u64::from(count) > LOGICAL_PER_MS {
            Timestamp::new(first.physical_ms() + 1, 0)
        } else {
            first
        };
        if first.physical_ms() >= self.high_water_ms {
            return Ok(Allocation::PersistFirst {
                high_water_ms: first.physical_ms().max(now_ms) + TIMESTAMP_WINDOW_MS,
            });
        }
        self.last = Timestamp(first.0 + u64::from(count) - 1);
        Ok(Allocation::Granted { first, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(oracle: &mut TimestampOracle, count: u32, now_ms: u64) -> Timestamp {
        match oracle.allocate(count, now_ms).unwrap() {
            Allocation::Granted { first, count: granted } => {
                assert_eq!(granted, count);
                first
            }
            Allocation::PersistFirst { high_water_ms } => {
                oracle.persisted(high_water_ms);
                match oracle.allocate(count, now_ms).unwrap() {
                    Allocation::Granted { first, .. } => first,
                    other => panic!("still not granted after persisting: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn layout_orders_by_time_then_counter() {
        let ts = Timestamp::new(1_700_000_000_000, 5);
        assert_eq!(ts.physical_ms(), 1_700_000_000_000);
        assert_eq!(ts.logical(), 5);
        assert!(Timestamp::new(10, LOGICAL_PER_MS - 1) < Timestamp::new(11, 0));
    }

    #[test]
    fn nothing_is_handed_out_before_the_mark_is_persisted() {
        let mut oracle = TimestampOracle::start_leading(0);
        assert_eq!(
            oracle.allocate(1, 1_000).unwrap(),
            Allocation::PersistFirst {
                high_water_ms: 1_000 + TIMESTAMP_WINDOW_MS
            }
        );
        oracle.persisted(1_000 + TIMESTAMP_WINDOW_MS);
        assert_eq!(
            oracle.allocate(1, 1_000).unwrap(),
            Allocation::Granted {
                first: Timestamp::new(1_000, 0),
                count: 1
            }
        );
    }

    #[test]
    fn timestamps_strictly_increase_even_when_the_clock_stands_still_or_goes_back() {
        let mut oracle = TimestampOracle::start_leading(0);
        let mut previous = Timestamp::ZERO;
        for (step, now_ms) in [5_000, 5_000, 4_000, 5_001, 5_001, 100, 9_000].into_iter().enumerate() {
            let count = (step as u32 % 3) + 1;
            let first = granted(&mut oracle, count, now_ms);
            assert!(first > previous, "step {step}: {first} after {previous}");
            previous = Timestamp(first.0 + u64::from(count) - 1);
            assert_eq!(oracle.last(), previous);
        }
    }

    #[test]
    fn a_new_leader_with_a_slower_clock_starts_above_everything_handed_out() {
        let mut old = TimestampOracle::start_leading(0);
        let handed = granted(&mut old, 10, 50_000);
        // The mark committed by the old leader is what the new one loads.
        let committed_mark = 50_000 + TIMESTAMP_WINDOW_MS;
        let mut new = TimestampOracle::start_leading(committed_mark);
        // Its clock is a minute behind.
        let first = granted(&mut new, 1, 0);
        assert!(first > handed);
        assert!(first.physical_ms() > committed_mark);
    }

    #[test]
    fn a_full_millisecond_rolls_over() {
        let mut oracle = TimestampOracle::start_leading(0);
        oracle.persisted(10_000);
        let first = granted(&mut oracle, TIMESTAMP_BATCH_MAX, 1);
        assert_eq!(first, Timestamp::new(1, 0));
        // Fill the millisecond, then one more batch lands in the next one.
        for _ in 1..(LOGICAL_PER_MS / u64::from(TIMESTAMP_BATCH_MAX)) {
            granted(&mut oracle, TIMESTAMP_BATCH_MAX, 1);
        }
        assert_eq!(granted(&mut oracle, 1, 1), Timestamp::new(2, 0));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut oracle = TimestampOracle::start_leading(0);
        assert_eq!(oracle.allocate(0, 1), Err(OracleError::BadCount(0)));
        assert_eq!(
            oracle.allocate(TIMESTAMP_BATCH_MAX + 1, 1),
            Err(OracleError::BadCount(TIMESTAMP_BATCH_MAX + 1))
        );
        assert_eq!(TimestampOracle::default().allocate(1, 1), Err(OracleError::NotReady));
    }
}
