//! Shrinking a failing history to a small one a person can read.
//!
//! Greedy, in the spirit of delta debugging (Zeller): try to drop whole
//! groups (a client's operations, a key's), then halves, quarters, ... down
//! to single operations, keeping every drop after which the history still
//! fails, until nothing more can go or the budget
//! ([`Limits::shrink_checks_max`]) is spent.
//!
//! Dropping operations is not harmless in general: removing the write a read
//! observed makes that read inexplicable, and the "failure" left would be one
//! the shrinker made. Two rules keep the failure the original one:
//! - a drop of read-only operations (and failed ones) is always kept when the
//!   rest still fails: fewer constraints can only help linearizability, so
//!   the rest failing proves the original fails;
//! - a drop that includes a writer (or an unknown operation) is kept only if
//!   no remaining operation depends on a dropped writer
//!   ([`Model::dependencies`]) and the same operation is still the one that
//!   cannot be placed.

use std::collections::{HashMap, HashSet};

use crate::history::History;
use crate::linearizability::{Failure, Limits, Model, SearchFn, SearchResult};

pub(crate) struct Shrunk<I, O> {
    pub history: History<I, O>,
    pub failure: Failure,
    /// Whether a fixed point was reached within the budget.
    pub complete: bool,
}

pub(crate) fn shrink<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
    failure: Failure,
    limits: &Limits,
    search: &SearchFn<'_, M>,
) -> Shrunk<M::Input, M::Output> {
    let mut shrinker = Shrinker {
        model,
        search,
        dependents: dependents(model, history),
        current: history.clone(),
        failure,
        checks_left: limits.shrink_checks_max,
    };

    // Whole groups first: they are few and take most operations away.
    for group in model.shrink_groups(history) {
        if shrinker.try_drop_ids(&group).is_none() {
            break;
        }
    }
    // Then chunks, halving down to single operations, until a pass of
    // singles changes nothing.
    let mut size = shrinker.current.operations.len().div_ceil(2).max(1);
    let mut complete = false;
    loop {
        let mut changed = false;
        // From the end backwards, so dropping a chunk leaves the earlier
        // chunks' positions as they were.
        let mut end = shrinker.current.operations.len();
        while end > 0 {
            let start = end.saturating_sub(size);
            let ids: Vec<u64> = shrinker.current.operations[start..end].iter().map(|op| op.id).collect();
            if shrinker.checks_left == 0 {
                break;
            }
            if shrinker.try_drop_ids(&ids) == Some(true) {
                changed = true;
            }
            end = start.min(shrinker.current.operations.len());
        }
        if shrinker.checks_left == 0 {
            break;
        }
        if size == 1 && !changed {
            complete = true;
            break;
        }
        size = (size / 2).max(1);
    }
    Shrunk {
        history: shrinker.current,
        failure: shrinker.failure,
        complete,
    }
}

/// For each writer id, the ids of the operations that depend on it.
fn dependents<M: Model>(model: &M, history: &History<M::Input, M::Output>) -> HashMap<u64, Vec<u64>> {
    let mut dependents = HashMap::<u64, Vec<u64>>::new();
    for (dependent, writer) in model.dependencies(history) {
        dependents.entry(writer).or_default().push(dependent);
    }
    dependents
}

struct Shrinker<'a, M: Model> {
    model: &'a M,
    search: &'a SearchFn<'a, M>,
    /// Of `current`.
    dependents: HashMap<u64, Vec<u64>>,
    current: History<M::Input, M::Output>,
    failure: Failure,
    checks_left: u32,
}

impl<M: Model> Shrinker<'_, M> {
    /// Try to drop the operations with these ids; keep the drop when the
    /// rules allow. `Some(dropped)`, or `None` once the budget is spent.
    fn try_drop_ids(&mut self, ids: &[u64]) -> Option<bool> {
        if self.checks_left == 0 {
            return None;
        }
        let ids: HashSet<u64> = ids.iter().copied().collect();
        let drop: Vec<bool> = self.current.operations.iter().map(|op| ids.contains(&op.id)).collect();
        if !drop.contains(&true) || drop.iter().all(|&d| d) {
            return Some(false);
        }
        let writers: Vec<u64> = self
            .current
            .operations
            .iter()
            .zip(&drop)
            .filter(|(op, &dropped)| dropped && !op.is_failed() && !self.model.is_read_only(op))
            .map(|(op, _)| op.id)
            .collect();
        let needed = writers.iter().any(|writer| {
            self.dependents
                .get(writer)
                .is_some_and(|dependents| dependents.iter().any(|d| !ids.contains(d)))
        });
        if needed {
            return Some(false);
        }
        let candidate = self.model.remove(&self.current, &drop);
        self.checks_left -= 1;
        if let SearchResult::NotLinearizable(failure) = (self.search)(&candidate) {
            if writers.is_empty() || failure.stuck == self.failure.stuck {
                self.dependents = dependents(self.model, &candidate);
                self.current = candidate;
                self.failure = failure;
                return Some(true);
            }
        }
        Some(false)
    }
}
