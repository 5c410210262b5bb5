//! The ground truth for tests: try every order.
//!
//! Linearizability by its definition, with no cleverness: choose which
//! unknown operations took effect, then try every permutation of the chosen
//! and the required operations, keeping those that respect real time
//! (an operation that completed before another was invoked comes first) and
//! that the model accepts step by step. Exponential, so it refuses histories
//! longer than [`EXHAUSTIVE_OPERATIONS_MAX`]; the property tests compare the
//! real checkers against it on small histories.

use crate::history::History;
use crate::linearizability::Model;

/// Operations (after dropping failed ones) the exhaustive check accepts:
/// 10! orders is already 3.6 million.
pub const EXHAUSTIVE_OPERATIONS_MAX: usize = 10;

/// Whether some order of the history's operations explains every answer.
/// The model's [`Model::partition`] is part of its definition (independent
/// objects), so each part is tried on its own. Panics on parts longer than
/// [`EXHAUSTIVE_OPERATIONS_MAX`].
pub fn check_exhaustive<M: Model>(model: &M, history: &History<M::Input, M::Output>) -> bool {
    model.validate(history).is_ok() && model.partition(history).iter().all(|part| exhaustive_part(model, part))
}

/// One operation as the exhaustive check sees it.
struct Op<'h, I, O> {
    input: &'h I,
    output: Option<&'h O>,
    /// `None`: not bound by real time.
    invoke: Option<u64>,
    /// `None`: not bound by real time, or the outcome is unknown.
    complete: Option<u64>,
}

impl<I, O> Op<'_, I, O> {
    /// `self` may come before `later` unless `later` completed before
    /// `self` was invoked.
    fn may_precede(&self, later: &Self) -> bool {
        match (later.complete, self.invoke) {
            (Some(complete), Some(invoke)) => complete >= invoke,
            _ => true,
        }
    }
}

struct Orders<'a, 'h, M: Model> {
    model: &'a M,
    ops: &'a [Op<'h, M::Input, M::Output>],
    /// The operations to order (required ones and the chosen unknown ones).
    chosen: Vec<usize>,
    placed: Vec<bool>,
    order: Vec<usize>,
}

impl<M: Model> Orders<'_, '_, M> {
    /// Whether the rest of `chosen` can follow `order`, from `state`.
    fn extend(&mut self, state: &M::State) -> bool {
        if self.order.len() == self.chosen.len() {
            return true;
        }
        for slot in 0..self.chosen.len() {
            let candidate = self.chosen[slot];
            let op = &self.ops[candidate];
            if self.placed[slot] || !self.order.iter().all(|&earlier| self.ops[earlier].may_precede(op)) {
                continue;
            }
            let next = match op.output {
                Some(output) => self.model.step(state, op.input, output),
                None => Some(self.model.step_unknown(state, op.input)),
            };
            let Some(next) = next else { continue };
            self.placed[slot] = true;
            self.order.push(candidate);
            let found = self.extend(&next);
            self.order.pop();
            self.placed[slot] = false;
            if found {
                return true;
            }
        }
        false
    }
}

fn exhaustive_part<M: Model>(model: &M, history: &History<M::Input, M::Output>) -> bool {
    let ops: Vec<Op<'_, M::Input, M::Output>> = history
        .operations
        .iter()
        .filter(|op| !op.is_failed())
        .map(|op| {
            let real_time = model.is_real_time(&op.input);
            let output = op.ok_output();
            Op {
                input: &op.input,
                output,
                invoke: real_time.then_some(op.invoke),
                complete: if real_time && output.is_some() {
                    op.complete
                } else {
                    None
                },
            }
        })
        .collect();
    assert!(
        ops.len() <= EXHAUSTIVE_OPERATIONS_MAX,
        "{} operations is too many for the exhaustive check (at most {EXHAUSTIVE_OPERATIONS_MAX})",
        ops.len()
    );
    let optional: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].output.is_none()).collect();
    // Every subset of the unknown operations may be the ones that happened.
    (0u32..(1 << optional.len())).any(|subset| {
        let chosen: Vec<usize> = (0..ops.len())
            .filter(|&i| match optional.iter().position(|&o| o == i) {
                Some(bit) => subset & (1 << bit) != 0,
                None => true,
            })
            .collect();
        let placed = vec![false; chosen.len()];
        Orders {
            model,
            ops: &ops,
            chosen,
            placed,
            order: Vec::new(),
        }
        .extend(&model.init())
    })
}
