//! Failure detection by fixed heartbeat timeout: the course's first detector
//! (COURSE.md V3, "dead after k misses, detection time k·T").
//!
//! The observer records when it last heard from each node
//! ([`FailureDetector::heard`]); a node is
//!
//! - [`Liveness::Alive`] if it was heard within `suspect_after_ms`;
//! - [`Liveness::Suspect`] after that, until `dead_after_ms`: a short outage,
//!   a slow network or a restart, which should not yet cost anything
//!   expensive (the store's rebalancer treats a suspect node as present);
//! - [`Liveness::Dead`] after `dead_after_ms` of silence: its work is
//!   re-created elsewhere.
//!
//! An observer that has only just started watching (a newly elected leader)
//! has heard nothing yet; silence is counted from when it started, so a new
//! observer never declares a node dead sooner than `dead_after_ms` after it
//! took over. Time is handed in (milliseconds on any monotonic clock), so the
//! detector runs the same in the node, the simulator and the lab.
//!
//! Not here yet: the φ accrual detector (Hayashibara et al., 2004), which
//! adapts the threshold to the observed heartbeat jitter.

use std::collections::BTreeMap;

/// What the detector believes about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
}

/// Thresholds of a [`FailureDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Silence after which a node is suspect (k·T for heartbeats every T).
    pub suspect_after_ms: u64,
    /// Silence after which a node is dead; at least `suspect_after_ms`.
    pub dead_after_ms: u64,
}

/// Last-heard times of the watched nodes (see the module doc).
#[derive(Debug, Clone)]
pub struct FailureDetector<N: Ord + Clone> {
    config: DetectorConfig,
    watching_since_ms: u64,
    last_heard_ms: BTreeMap<N, u64>,
}

impl<N: Ord + Clone> FailureDetector<N> {
    /// Start watching at `now_ms`: every node is given the full thresholds
    /// from now.
    pub fn new(config: DetectorConfig, now_ms: u64) -> Self {
        assert!(
            config.dead_after_ms >= config.suspect_after_ms,
            "a node must be suspect before it is dead"
        );
        Self {
            config,
            watching_since_ms: now_ms,
            last_heard_ms: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    /// `node` answered at `at_ms` (an older report than the last is ignored).
    pub fn heard(&mut self, node: N, at_ms: u64) {
        let last = self.last_heard_ms.entry(node).or_insert(at_ms);
        *last = (*last).max(at_ms);
    }

    /// Stop tracking `node` (it left the cluster).
    pub fn forget(&mut self, node: &N) {
        self.last_heard_ms.remove(node);
    }

    /// Milliseconds of silence from `node` as of `now_ms`.
    pub fn silence_ms(&self, node: &N, now_ms: u64) -> u64 {
        let since = self
            .last_heard_ms
            .get(node)
            .copied()
            .unwrap_or(self.watching_since_ms)
            .max(self.watching_since_ms);
        now_ms.saturating_sub(since)
    }

    pub fn liveness(&self, node: &N, now_ms: u64) -> Liveness {
        let silence = self.silence_ms(node, now_ms);
        if silence >= self.config.dead_after_ms {
            Liveness::Dead
        } else if silence >= self.config.suspect_after_ms {
            Liveness::Suspect
        } else {
            Liveness::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: DetectorConfig = DetectorConfig {
        suspect_after_ms: 300,
        dead_after_ms: 3_000,
    };

    #[test]
    fn k_missed_heartbeats_make_a_node_suspect_and_the_threshold_makes_it_dead() {
        // Heartbeats every T = 100 ms; suspect after k = 3 misses (k·T = 300 ms).
        let mut detector = FailureDetector::new(CONFIG, 0);
        for beat in 0..10 {
            detector.heard("a", beat * 100);
        }
        assert_eq!(detector.liveness(&"a", 950), Liveness::Alive);
        assert_eq!(detector.liveness(&"a", 1_199), Liveness::Alive);
        assert_eq!(detector.liveness(&"a", 1_200), Liveness::Suspect);
        assert_eq!(detector.liveness(&"a", 3_899), Liveness::Suspect);
        assert_eq!(detector.liveness(&"a", 3_900), Liveness::Dead);
        // One heartbeat brings it back.
        detector.heard("a", 4_000);
        assert_eq!(detector.liveness(&"a", 4_050), Liveness::Alive);
    }

    #[test]
    fn a_new_observer_counts_silence_from_when_it_started() {
        let detector: FailureDetector<&str> = FailureDetector::new(CONFIG, 10_000);
        assert_eq!(detector.liveness(&"never-heard", 10_100), Liveness::Alive);
        assert_eq!(detector.liveness(&"never-heard", 12_999), Liveness::Suspect);
        assert_eq!(detector.liveness(&"never-heard", 13_000), Liveness::Dead);
        // A report from before the observer started does not count against the node.
        let mut detector = detector;
        detector.heard("old", 1_000);
        assert_eq!(detector.silence_ms(&"old", 10_500), 500);
    }

    #[test]
    fn late_reports_never_move_the_last_heard_time_back() {
        let mut detector = FailureDetector::new(CONFIG, 0);
        detector.heard(7_u64, 2_000);
        detector.heard(7_u64, 1_000);
        assert_eq!(detector.silence_ms(&7, 2_500), 500);
        detector.forget(&7);
        assert_eq!(detector.silence_ms(&7, 2_500), 2_500);
    }
}
