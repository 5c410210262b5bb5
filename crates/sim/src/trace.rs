//! [`Trace`]: what a simulated client observed, stamped with simulated time.
//!
//! Two runs of one seed are compared by their traces: if the simulation is
//! deterministic they are equal event for event, to the millisecond.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Simulated time since the simulation started.
    pub at: Duration,
    pub event: String,
}

impl std::fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>8} ms  {}", self.at.as_millis(), self.event)
    }
}

/// A shared, append-only list of observations. Clones share the list.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<TraceEvent>>>,
}

impl Trace {
    /// Record `event` at the current simulated time (zero outside a
    /// simulation).
    pub fn record(&self, event: impl Into<String>) {
        self.record_at(turmoil::sim_elapsed().unwrap_or_default(), event);
    }

    /// Record `event` at simulated time `at` (for events recorded from
    /// outside the simulation, between steps: use `Sim::elapsed`).
    pub fn record_at(&self, at: Duration, event: impl Into<String>) {
        let event = TraceEvent {
            at,
            event: event.into(),
        };
        tracing::info!(at_ms = event.at.as_millis() as u64, "{}", event.event);
        self.events.lock().expect("trace lock poisoned").push(event);
    }

    pub fn events(&self) -> Vec<TraceEvent> {
        self.events.lock().expect("trace lock poisoned").clone()
    }

    /// The first event where `self` and `other` differ, as (index, mine,
    /// theirs); `None` when the traces are equal.
    pub fn first_difference(&self, other: &Trace) -> Option<(usize, Option<TraceEvent>, Option<TraceEvent>)> {
        let mine = self.events();
        let theirs = other.events();
        (0..mine.len().max(theirs.len()))
            .find(|&index| mine.get(index) != theirs.get(index))
            .map(|index| (index, mine.get(index).cloned(), theirs.get(index).cloned()))
    }
}
