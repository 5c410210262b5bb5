//! Linearizability checking: the Wing–Gong–Lowe search.
//!
//! A history is linearizable when every operation can be given a single
//! point in time between its invocation and its completion such that, taken
//! in the order of those points, the operations are a legal run of a
//! sequential [`Model`] that yields exactly the answers the clients saw.
//!
//! ## The algorithm
//! Wing and Gong's search (1993), with the refinements of Lowe, "Testing for
//! linearizability" (Concurrency and Computation, 2017), which is also what
//! Porcupine and Knossos' `wgl` checker implement:
//! - Every operation becomes a *call* entry at its invocation and a *return*
//!   entry at its completion, all in one doubly linked list sorted by time
//!   (a call sorts before a return at the same instant, so operations that
//!   touch are treated as concurrent: the permissive, sound choice).
//! - Depth-first: scan from the head; at a call entry, try to *linearize* the
//!   operation now (the model accepts its answer in the current state). If
//!   it fits, *lift* its two entries out of the list, push it, and restart
//!   at the head. Reaching the return entry of an operation not yet
//!   linearized means the current order is a dead end: pop the last choice,
//!   *unlift* it and try the next call after it.
//! - Memoization: the rest of the search depends only on which operations
//!   are linearized (a bit set) and the model state, so each such pair is
//!   explored once. This is what makes the search practical.
//!
//! Outcomes: an [`Outcome::Ok`] operation must be linearized between its
//! invocation and completion. [`Outcome::Failed`] operations are dropped. An
//! unknown operation ([`Outcome::Unknown`], or no completion) gets its return
//! entry at +infinity and is optional: the search succeeds once every
//! required operation is linearized. Linearizing an optional operation that
//! leaves the state unchanged is skipped (never linearizing it is the same
//! thing), which keeps unknown reads from multiplying the search.
//!
//! Operations the model marks as not bound by real time
//! ([`Model::is_real_time`], e.g. serializable reads) must still be placed,
//! but anywhere in the order: their call entry sorts first and their return
//! last.
//!
//! ## Bounds
//! The problem is NP-complete, so the search counts the states it explores
//! and stops at [`Limits::states_max`] (and optionally a wall-clock
//! [`Limits::time_max_ms`]), answering [`Verdict::Unknown`] rather than running
//! forever. The state count is deterministic: the same history gives the same
//! verdict on any machine.
//!
//! ## Reports
//! On failure the checker shrinks the history (see `shrink`) and describes
//! the smallest failing part: the longest linearizable prefix the search
//! found, the operation that could not be placed after it, and the model
//! states in which it was tried.
//!
//! ## What it does not do
//! No parallel search, no P-compositionality beyond what [`Model::partition`]
//! offers (a model splits its history into independent parts itself).

use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::bitset::{Bitset, FxHashSet};
use crate::history::{History, Operation, Outcome};

/// A sequential specification: the object the history should behave like.
///
/// Models are values (usually unit structs) so that a model can carry
/// options; every method is a pure function of its arguments.
pub trait Model {
    type Input: Clone + fmt::Debug + fmt::Display;
    type Output: Clone + fmt::Debug + fmt::Display;
    /// Hashed and compared for memoization: keep it small and canonical
    /// (two equal objects must be equal states).
    type State: Clone + Eq + Hash + fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Apply an operation that answered `output`. `None`: that answer is
    /// impossible in `state`.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// Apply an operation whose answer nobody saw (it took effect with
    /// whatever answer the state gives).
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Self::State;

    /// Whether the operation must take effect between its invocation and its
    /// completion. `false` for operations that may observe any point of the
    /// order (serializable reads): they are still placed, anywhere.
    fn is_real_time(&self, _input: &Self::Input) -> bool {
        true
    }

    /// Rules outside the sequential order that the whole history must obey
    /// (e.g. the per-client floor of serializable reads). Checked first, on
    /// the whole history.
    fn validate(&self, _history: &History<Self::Input, Self::Output>) -> Result<(), Violation> {
        Ok(())
    }

    /// Split a history into parts that can be checked independently (e.g. one
    /// per key for independent registers). The history is linearizable when
    /// every part is.
    fn partition(&self, history: &History<Self::Input, Self::Output>) -> Vec<History<Self::Input, Self::Output>> {
        vec![history.clone()]
    }

    // --- Hooks for shrinking a failing history (defaults are conservative).

    /// Whether the operation certainly left the state unchanged (a read, a
    /// refused compare-and-set). Dropping such operations can only make a
    /// history easier to linearize, so the shrinker drops them freely.
    fn is_read_only(&self, _operation: &Operation<Self::Input, Self::Output>) -> bool {
        false
    }

    /// Pairs `(dependent, writer)` of operation ids: `dependent`'s answer may
    /// rest on `writer` having happened (it read its value, its compare saw
    /// it). The shrinker never drops a writer while an operation that depends
    /// on it remains, so the failure it keeps is the original one, not one it
    /// made by removing an explanation. Default: every acknowledged operation
    /// depends on every operation invoked before it completed.
    fn dependencies(&self, history: &History<Self::Input, Self::Output>) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        for dependent in history.operations.iter().filter(|op| op.ok_output().is_some()) {
            let complete = dependent.complete.unwrap_or(u64::MAX);
            for writer in &history.operations {
                if writer.id != dependent.id && writer.invoke <= complete && !self.is_read_only(writer) {
                    pairs.push((dependent.id, writer.id));
                }
            }
        }
        pairs
    }

    /// The history without the operations marked in `drop`, still a
    /// plausible history of this model (the etcd model renumbers revisions).
    fn remove(
        &self,
        history: &History<Self::Input, Self::Output>,
        drop: &[bool],
    ) -> History<Self::Input, Self::Output> {
        let mut index = 0;
        history.filter(|_| {
            index += 1;
            !drop[index - 1]
        })
    }

    /// Groups the shrinker tries to drop at once before single operations
    /// (operation ids). Default: one group per client.
    fn shrink_groups(&self, history: &History<Self::Input, Self::Output>) -> Vec<Vec<u64>> {
        let mut by_client = std::collections::BTreeMap::<u64, Vec<u64>>::new();
        for operation in &history.operations {
            by_client.entry(operation.client).or_default().push(operation.id);
        }
        by_client.into_values().collect()
    }
}

/// A rule broken by one operation, found before any search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The operation's id.
    pub operation: u64,
    pub reason: String,
}

/// How far a check may go before it answers [`Verdict::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Search states (successful model steps) explored per check. Each costs
    /// a memo entry (the bit set of linearized operations and a model state),
    /// so this also bounds memory: about 1 M states of a 2,000-operation part
    /// is ~300 MB.
    pub states_max: u64,
    /// Wall-clock bound per check, off by default so that verdicts do not
    /// depend on the machine.
    pub time_max_ms: Option<u64>,
    /// Checks the shrinker may run on a failing history before it reports
    /// what it has.
    pub shrink_checks_max: u32,
}

impl Limits {
    /// Enough for the simulator's histories (thousands of operations): the
    /// KV search is linear in practice, the generic one is bounded here.
    pub const STATES_MAX_DEFAULT: u64 = 1_000_000;
    pub const SHRINK_CHECKS_MAX_DEFAULT: u32 = 2_000;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            states_max: Self::STATES_MAX_DEFAULT,
            time_max_ms: None,
            shrink_checks_max: Self::SHRINK_CHECKS_MAX_DEFAULT,
        }
    }
}

/// A search's own account of a failure, in operation ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The longest linearizable prefix found, in linearization order.
    pub linearized: Vec<u64>,
    /// The operation that could not be placed after that prefix.
    pub stuck: u64,
    /// Why: the states it was tried in, or the rule it broke.
    pub reason: String,
}

/// What a search decided about one history (or part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Linearizable,
    NotLinearizable(Failure),
    GaveUp(String),
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<I, O> {
    Linearizable,
    NotLinearizable(Box<Report<I, O>>),
    /// The search hit a limit before deciding.
    Unknown {
        reason: String,
    },
}

impl<I, O> Verdict<I, O> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Verdict::NotLinearizable(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }

    pub fn report(&self) -> Option<&Report<I, O>> {
        match self {
            Verdict::NotLinearizable(report) => Some(report),
            _ => None,
        }
    }
}

impl<I: fmt::Display, O: fmt::Display> fmt::Display for Verdict<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable(report) => report.fmt(f),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Why a history is not linearizable, on the smallest failing part found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<I, O> {
    /// The minimal failing sub-history (operations keep their original ids).
    /// Save it with [`History::to_json`] to replay it.
    pub history: History<I, O>,
    /// Operations in the history that was checked.
    pub original_operations: usize,
    /// Whether shrinking reached a fixed point (false: it stopped at
    /// [`Limits::shrink_checks_max`], and the history may shrink further).
    pub shrink_complete: bool,
    /// The longest linearizable prefix of `history`, in order (ids).
    pub linearized: Vec<u64>,
    /// The operation that could not be placed after that prefix.
    pub stuck: u64,
    /// Why it could not: the states it was tried in, or the rule it broke.
    pub reason: String,
}

impl<I: fmt::Display, O: fmt::Display> fmt::Display for Report<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "not linearizable: operation #{} could not be placed", self.stuck)?;
        writeln!(
            f,
            "minimal failing history: {} of {} operations{}",
            self.history.operations.len(),
            self.original_operations,
            if self.shrink_complete {
                ""
            } else {
                " (shrinking stopped at its budget)"
            }
        )?;
        write!(f, "{}", self.history)?;
        let prefix: Vec<String> = self.linearized.iter().map(|id| format!("#{id}")).collect();
        writeln!(
            f,
            "longest linearizable prefix ({} operations): {}",
            prefix.len(),
            prefix.join(", ")
        )?;
        if let Some(stuck) = self.history.operations.iter().find(|op| op.id == self.stuck) {
            writeln!(f, "could not place: {stuck}")?;
        }
        writeln!(f, "why: {}", self.reason)
    }
}

/// Check `history` against `model` with the default [`Limits`].
pub fn check<M: Model>(model: &M, history: &History<M::Input, M::Output>) -> Verdict<M::Input, M::Output> {
    check_with(model, history, &Limits::default())
}

/// Check `history` against `model`: validate, split with
/// [`Model::partition`], search each part, and on failure shrink and report.
pub fn check_with<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
    limits: &Limits,
) -> Verdict<M::Input, M::Output> {
    judge(model, history, limits, &|part: &History<M::Input, M::Output>| {
        search(model, part, limits)
    })
}

/// A search that decides one history (or part) for model `M`.
pub(crate) type SearchFn<'a, M> = dyn Fn(&History<<M as Model>::Input, <M as Model>::Output>) -> SearchResult + 'a;

/// The driver shared by every checker: `search` decides one part.
pub(crate) fn judge<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
    limits: &Limits,
    search: &SearchFn<'_, M>,
) -> Verdict<M::Input, M::Output> {
    let failing = match model.validate(history) {
        Err(violation) => {
            let failure = Failure {
                linearized: Vec::new(),
                stuck: violation.operation,
                reason: violation.reason,
            };
            Some((history.clone(), failure))
        }
        Ok(()) => {
            let mut gave_up = None;
            let mut failing = None;
            for part in model.partition(history) {
                match search(&part) {
                    SearchResult::Linearizable => {}
                    SearchResult::GaveUp(reason) => {
                        gave_up.get_or_insert(reason);
                    }
                    SearchResult::NotLinearizable(failure) => {
                        failing = Some((part, failure));
                        break;
                    }
                }
            }
            if failing.is_none() {
                if let Some(reason) = gave_up {
                    return Verdict::Unknown { reason };
                }
            }
            failing
        }
    };
    let Some((part, failure)) = failing else {
        return Verdict::Linearizable;
    };
    let shrunk = crate::shrink::shrink(model, &part, failure, limits, search);
    Verdict::NotLinearizable(Box::new(Report {
        history: shrunk.history,
        original_operations: history.operations.len(),
        shrink_complete: shrunk.complete,
        linearized: shrunk.failure.linearized,
        stuck: shrunk.failure.stuck,
        reason: shrunk.failure.reason,
    }))
}

/// Counts the work of one search against its [`Limits`].
pub(crate) struct Budget {
    states: u64,
    states_max: u64,
    started: Instant,
    time_max: Option<Duration>,
}

impl Budget {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            states: 0,
            states_max: limits.states_max,
            started: Instant::now(),
            time_max: limits.time_max_ms.map(Duration::from_millis),
        }
    }

    /// Count one explored state; `Err` with the reason once over a limit.
    pub(crate) fn spend(&mut self) -> Result<(), String> {
        self.states += 1;
        if self.states > self.states_max {
            return Err(format!(
                "explored {} states without deciding (limit states_max = {})",
                self.states_max, self.states_max
            ));
        }
        if let Some(time_max) = self.time_max {
            if self.states.is_multiple_of(1024) && self.started.elapsed() > time_max {
                return Err(format!(
                    "ran {} ms without deciding (limit time_max_ms = {}), {} states explored",
                    self.started.elapsed().as_millis(),
                    time_max.as_millis(),
                    self.states
                ));
            }
        }
        Ok(())
    }
}

/// What the search learned about one operation, for the report.
struct Attempts<S> {
    /// Distinct states in which its answer was impossible (the first few).
    impossible: Vec<S>,
    impossible_count: u64,
    /// Times it fit but everything after it failed (or was already explored).
    dead_ends: u64,
}

impl<S: PartialEq + Clone> Attempts<S> {
    /// Impossible states kept per operation for the report.
    const IMPOSSIBLE_SHOWN_MAX: usize = 4;

    fn record_impossible(&mut self, state: &S) {
        self.impossible_count += 1;
        if self.impossible.len() < Self::IMPOSSIBLE_SHOWN_MAX && !self.impossible.contains(state) {
            self.impossible.push(state.clone());
        }
    }
}

const NIL: u32 = u32::MAX;

/// The Wing–Gong–Lowe search over one history (or part), after
/// [`Model::validate`].
pub(crate) fn search<M: Model>(model: &M, history: &History<M::Input, M::Output>, limits: &Limits) -> SearchResult {
    if let Err(violation) = model.validate(history) {
        return SearchResult::NotLinearizable(Failure {
            linearized: Vec::new(),
            stuck: violation.operation,
            reason: violation.reason,
        });
    }

    struct Op<'h, I, O> {
        operation: &'h Operation<I, O>,
        output: Option<&'h O>,
    }
    let ops: Vec<Op<'_, M::Input, M::Output>> = history
        .operations
        .iter()
        .filter(|operation| !operation.is_failed())
        .map(|operation| Op {
            operation,
            output: operation.ok_output(),
        })
        .collect();
    let n = ops.len();
    assert!(
        n < (NIL / 2) as usize,
        "history too long for the search: {n} operations"
    );

    // Entries sorted by (at infinity, time, call before return, operation).
    let mut keys: Vec<(bool, u64, u8, u32)> = Vec::with_capacity(2 * n);
    for (index, op) in ops.iter().enumerate() {
        let real_time = model.is_real_time(&op.operation.input);
        let call_time = if real_time { op.operation.invoke } else { 0 };
        keys.push((false, call_time, 0, index as u32));
        match (op.output, op.operation.complete, real_time) {
            (Some(_), Some(complete), true) => keys.push((false, complete, 1, index as u32)),
            _ => keys.push((true, 0, 1, index as u32)),
        }
    }
    keys.sort_unstable();
    // Entry 0 is the head sentinel; entry e > 0 is keys[e - 1].
    let entries = 2 * n + 1;
    let mut next = vec![NIL; entries];
    let mut prev = vec![NIL; entries];
    let mut entry_op = vec![NIL; entries];
    let mut entry_is_call = vec![false; entries];
    let mut call_entry = vec![NIL; n];
    let mut return_entry = vec![NIL; n];
    for (position, &(_, _, kind, op)) in keys.iter().enumerate() {
        let entry = position + 1;
        entry_op[entry] = op;
        entry_is_call[entry] = kind == 0;
        if kind == 0 {
            call_entry[op as usize] = entry as u32;
        } else {
            return_entry[op as usize] = entry as u32;
        }
        prev[entry] = position as u32;
        next[position] = entry as u32;
    }
    let lift = |next: &mut [u32], prev: &mut [u32], op: usize| {
        for entry in [call_entry[op], return_entry[op]] {
            let (p, x) = (prev[entry as usize], next[entry as usize]);
            next[p as usize] = x;
            if x != NIL {
                prev[x as usize] = p;
            }
        }
    };
    let unlift = |next: &mut [u32], prev: &mut [u32], op: usize| {
        for entry in [return_entry[op], call_entry[op]] {
            let (p, x) = (prev[entry as usize], next[entry as usize]);
            next[p as usize] = entry;
            if x != NIL {
                prev[x as usize] = entry;
            }
        }
    };

    let mut required_left = ops.iter().filter(|op| op.output.is_some()).count();
    let mut state = model.init();
    let mut linearized = Bitset::new(n);
    let mut memo: FxHashSet<(Bitset, M::State)> = FxHashSet::default();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut attempts: Vec<Attempts<M::State>> = (0..n)
        .map(|_| Attempts {
            impossible: Vec::new(),
            impossible_count: 0,
            dead_ends: 0,
        })
        .collect();
    let mut budget = Budget::new(limits);
    // The deepest dead end: (depth, prefix, stuck op, state there).
    let mut deepest: Option<(usize, Vec<u64>, usize, M::State)> = None;
    let mut cursor = next[0];

    loop {
        if required_left == 0 {
            return SearchResult::Linearizable;
        }
        assert!(cursor != NIL, "a required operation is left but the entry list ran out");
        let entry = cursor as usize;
        let index = entry_op[entry] as usize;
        if entry_is_call[entry] {
            let op = &ops[index];
            let stepped = match op.output {
                Some(output) => {
                    let stepped = model.step(&state, &op.operation.input, output);
                    if stepped.is_none() {
                        attempts[index].record_impossible(&state);
                    }
                    stepped
                }
                None => Some(model.step_unknown(&state, &op.operation.input)).filter(|next| *next != state),
            };
            if let Some(new_state) = stepped {
                linearized.insert(index);
                if memo.insert((linearized.clone(), new_state.clone())) {
                    if let Err(reason) = budget.spend() {
                        return SearchResult::GaveUp(reason);
                    }
                    let before = std::mem::replace(&mut state, new_state);
                    stack.push((index, before));
                    lift(&mut next, &mut prev, index);
                    if op.output.is_some() {
                        required_left -= 1;
                    }
                    cursor = next[0];
                    continue;
                }
                linearized.remove(index);
                attempts[index].dead_ends += 1;
            }
            cursor = next[entry];
        } else {
            // The return of an operation not linearized: this order is a dead end.
            if deepest.as_ref().is_none_or(|(depth, ..)| stack.len() > *depth) {
                // At an optional return (at infinity) every call has been
                // scanned; name a required operation still waiting instead.
                let mut stuck = index;
                let mut scan = entry as u32;
                while ops[stuck].output.is_none() && scan != NIL {
                    let candidate = entry_op[scan as usize] as usize;
                    if ops[candidate].output.is_some() {
                        stuck = candidate;
                    }
                    scan = next[scan as usize];
                }
                let prefix = stack.iter().map(|(op, _)| ops[*op].operation.id).collect();
                deepest = Some((stack.len(), prefix, stuck, state.clone()));
            }
            let Some((last, before)) = stack.pop() else {
                let (_, linearized, stuck, state) = deepest.expect("recorded just above");
                let op = &ops[stuck];
                let reason = explain(op.operation, &attempts[stuck], &state);
                return SearchResult::NotLinearizable(Failure {
                    linearized,
                    stuck: op.operation.id,
                    reason,
                });
            };
            state = before;
            linearized.remove(last);
            unlift(&mut next, &mut prev, last);
            if ops[last].output.is_some() {
                required_left += 1;
            }
            attempts[last].dead_ends += 1;
            cursor = next[call_entry[last] as usize];
        }
    }
}

fn explain<I: fmt::Display, O: fmt::Display, S: fmt::Debug>(
    operation: &Operation<I, O>,
    attempts: &Attempts<S>,
    state_after_prefix: &S,
) -> String {
    let answer = match &operation.outcome {
        Outcome::Ok(output) => format!("answered {output}"),
        other => format!("{other}"),
    };
    let mut reason = format!("`{}` {answer}; ", operation.input);
    if attempts.impossible_count > 0 {
        let shown: Vec<String> = attempts.impossible.iter().map(|state| format!("{state:?}")).collect();
        reason += &format!(
            "that answer is impossible in the {} state(s) it was tried in before it completed (distinct ones: {}); ",
            attempts.impossible_count,
            shown.join(" | ")
        );
    }
    if attempts.dead_ends > 0 {
        reason += &format!(
            "{} placement(s) fit but left the operations after it impossible to place; ",
            attempts.dead_ends
        );
    }
    if attempts.impossible_count == 0 && attempts.dead_ends == 0 {
        reason += "it could not be placed before it completed; ";
    }
    reason + &format!("state after the longest prefix: {state_after_prefix:?}")
}
