//! The revision-ordered search for [`EtcdKvModel`]: exact, and linear when
//! nothing is ambiguous.
//!
//! Every acknowledged write that bumped the revision says which revision it
//! produced, and every other acknowledged operation says the revision it saw.
//! So the order of a linearization is almost given: the write that produced
//! revision `r` is at position `(r, 0)`, and everything that saw revision `r`
//! (gets, deletes of absent keys, refused compares) is at `(r, 1)`, in any
//! order among themselves (they change nothing). What is left to decide:
//! 1. **Real time.** The order must not put an operation before one that
//!    completed before it was invoked. With positions fixed this is one sweep
//!    in position order, keeping the latest invocation seen at earlier
//!    positions. Operations at the same position can always be ordered by
//!    invocation, so comparing across positions is enough.
//! 2. **Gaps.** A revision no acknowledged write claims (up to the highest
//!    revision anybody saw) was produced by an unknown write (timed out,
//!    never completed). Which one is the only search: depth-first over the
//!    gaps in revision order, each filled by an unused unknown write that was
//!    invoked before every operation at a later position completed (its own
//!    completion is at infinity), whose compare holds there, and which
//!    agrees with what later gets of its key saw (a get that saw
//!    `mod_revision == gap` pins the gap to a write of that key and value).
//!    Memoized on (gap, unknown writes used, key states). Unknown writes
//!    placed past the highest revision, or that change nothing, are
//!    invisible, so leaving them out is exact.
//! 3. **Values.** Replaying the writes in revision order gives every key's
//!    state at every revision; each write's precondition (a delete's key
//!    exists, a compare holds) and each observer's answer is checked there.
//!    Serializable gets are observers at their revision without real time.
//!
//! This is the same question the generic search answers for the same model,
//! with the order of writes read off the answers instead of searched for.

use std::collections::HashMap;

use crate::bitset::{Bitset, FxHashSet};
use crate::history::{Bytes, KvHistory, KvInput, KvOutput, Millis};
use crate::linearizability::{Budget, Failure, Limits, Model, SearchResult};
use crate::models::etcd_kv::EtcdKvModel;

/// A value in the interned table; keys are interned the same way.
type ValueId = u32;
/// Per key: `(value, mod_revision)`, `None` when absent.
type KeyStates = Vec<Option<(ValueId, i64)>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    Put(ValueId),
    Delete,
    CompareAndSet {
        expected: Option<ValueId>,
        new_value: ValueId,
    },
}

#[derive(Clone, Copy, Debug)]
struct Writer {
    /// Index into the history's operations.
    op: usize,
    key: usize,
    effect: Effect,
}

#[derive(Clone, Copy, Debug)]
enum Check {
    Get { value: Option<ValueId>, mod_revision: i64 },
    Absent,
    CompareRefused { expected: Option<ValueId> },
}

#[derive(Clone, Copy, Debug)]
struct Observer {
    op: usize,
    key: usize,
    check: Check,
}

/// Where the search stopped and why, ordered by how far it got.
struct Stop {
    /// (revision, 0 for its write, 1 for its observers).
    position: (i64, u8),
    stuck: usize,
    /// The key whose state at a revision made it fail (`None`: not one key).
    depends_on: Option<(usize, i64)>,
    reason: String,
}

/// Why an unknown write cannot fill a gap.
enum Unfit {
    /// Invoked after an operation at a later position completed.
    Late,
    /// A get saw this (key, value) written at the gap.
    Pinned(usize, ValueId),
    /// The first get of its key at or after the gap (at this revision) saw
    /// the key last written before the gap (at this mod revision).
    ReadOlder(i64, i64),
    /// Its delete or compare would not change the store here.
    ChangesNothing,
}

/// Frame indices (gap decisions) a failure depends on.
type Conflicts = std::collections::BTreeSet<usize>;

/// One gap decision of the search.
struct Frame {
    gap: i64,
    /// Key states before the gap.
    before: KeyStates,
    /// Unknown writes that may fill it, in invocation order.
    candidates: Vec<usize>,
    /// The keys those candidates write, sorted.
    candidate_keys: Vec<usize>,
    next: usize,
    chosen: Option<usize>,
    /// Earlier decisions the failures below this one depended on.
    conflicts: Conflicts,
}

struct Prepared<'h> {
    history: &'h KvHistory,
    keys: Vec<&'h [u8]>,
    values: Vec<&'h [u8]>,
    revision_max: i64,
    /// The acknowledged write that produced each revision.
    claims: Vec<Option<Writer>>,
    /// Operations that saw each revision.
    observers: Vec<Vec<Observer>>,
    /// Unknown writes, in invocation order.
    unknowns: Vec<Writer>,
    /// For a gap at `g`: the latest an unknown write placed there may have
    /// been invoked (every real-time operation at a later position completed
    /// no earlier).
    gap_invoke_max: Vec<u64>,
    /// For a gap at `g`: the (key, value) a get saw written at `g`.
    pinned: Vec<Option<(usize, ValueId)>>,
    /// Per key, the gets of it: (revision, mod_revision), by revision.
    gets_by_key: Vec<Vec<(i64, i64)>>,
    /// Per key, the revisions its acknowledged writes produced, in order.
    known_writes_by_key: Vec<Vec<i64>>,
}

fn fail(op: usize, history: &KvHistory, reason: String) -> Failure {
    Failure {
        linearized: Vec::new(),
        stuck: history.operations[op].id,
        reason,
    }
}

pub(crate) fn search(model: &EtcdKvModel, history: &KvHistory, limits: &Limits) -> SearchResult {
    if let Err(violation) = model.validate(history) {
        return SearchResult::NotLinearizable(Failure {
            linearized: Vec::new(),
            stuck: violation.operation,
            reason: violation.reason,
        });
    }
    let prepared = match Prepared::new(history) {
        Ok(prepared) => prepared,
        Err(failure) => return SearchResult::NotLinearizable(failure),
    };
    prepared.search(limits)
}

impl<'h> Prepared<'h> {
    fn new(history: &'h KvHistory) -> Result<Self, Failure> {
        let mut key_ids: HashMap<&[u8], usize> = HashMap::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut value_ids: HashMap<&[u8], ValueId> = HashMap::new();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut key_id = |key: &'h [u8]| {
            *key_ids.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        };
        let mut value_id = |value: &'h [u8]| {
            *value_ids.entry(value).or_insert_with(|| {
                values.push(value);
                (values.len() - 1) as ValueId
            })
        };

        let mut acknowledged: Vec<(i64, Writer)> = Vec::new();
        let mut observed: Vec<(i64, Observer)> = Vec::new();
        let mut unknowns = Vec::new();
        let mut revision_max = 1;
        for (index, operation) in history.operations.iter().enumerate() {
            if operation.is_failed() {
                continue;
            }
            let key = key_id(operation.input.key());
            let Some(output) = operation.ok_output() else {
                let effect = match &operation.input {
                    KvInput::Get { .. } => continue,
                    KvInput::Put { value, .. } => Effect::Put(value_id(value)),
                    KvInput::Delete { .. } => Effect::Delete,
                    KvInput::CompareAndSet {
                        expected, new_value, ..
                    } => Effect::CompareAndSet {
                        expected: expected.as_deref().map(&mut value_id),
                        new_value: value_id(new_value),
                    },
                };
                unknowns.push(Writer { op: index, key, effect });
                continue;
            };
            let revision = output.revision();
            if revision < 1 {
                return Err(fail(
                    index,
                    history,
                    format!("revision {revision}: the store starts at revision 1"),
                ));
            }
            revision_max = revision_max.max(revision);
            let mut write = |effect| {
                if revision < 2 {
                    return Err(fail(
                        index,
                        history,
                        format!("a write that took effect must give revision > 1, not {revision}"),
                    ));
                }
                acknowledged.push((revision, Writer { op: index, key, effect }));
                Ok(())
            };
            match (&operation.input, output) {
                (KvInput::Put { value, .. }, KvOutput::Put { .. }) => write(Effect::Put(value_id(value)))?,
                (
                    KvInput::Get { .. },
                    KvOutput::Get {
                        value, mod_revision, ..
                    },
                ) => {
                    if value.is_some() != (*mod_revision > 0) || *mod_revision > revision || *mod_revision == 1 {
                        return Err(fail(
                            index,
                            history,
                            format!("a get cannot answer {output}: a present key has 1 < mod revision <= revision"),
                        ));
                    }
                    let check = Check::Get {
                        value: value.as_deref().map(&mut value_id),
                        mod_revision: *mod_revision,
                    };
                    observed.push((revision, Observer { op: index, key, check }));
                }
                (KvInput::Delete { .. }, KvOutput::Delete { deleted: 0, .. }) => {
                    observed.push((
                        revision,
                        Observer {
                            op: index,
                            key,
                            check: Check::Absent,
                        },
                    ));
                }
                (KvInput::Delete { .. }, KvOutput::Delete { deleted: 1, .. }) => write(Effect::Delete)?,
                (
                    KvInput::CompareAndSet {
                        expected, new_value, ..
                    },
                    KvOutput::CompareAndSet { succeeded, .. },
                ) => {
                    let expected = expected.as_deref().map(&mut value_id);
                    if *succeeded {
                        write(Effect::CompareAndSet {
                            expected,
                            new_value: value_id(new_value),
                        })?;
                    } else {
                        let check = Check::CompareRefused { expected };
                        observed.push((revision, Observer { op: index, key, check }));
                    }
                }
                _ => {
                    return Err(fail(
                        index,
                        history,
                        format!("`{}` cannot answer {output}", operation.input),
                    ));
                }
            }
        }

        // Each revision after 1 takes one write: more revisions than writes
        // is impossible (and this bounds the tables below).
        let writes = (acknowledged.len() + unknowns.len()) as i64;
        if revision_max - 1 > writes {
            let (index, _) = history
                .operations
                .iter()
                .enumerate()
                .find(|(_, op)| op.ok_output().is_some_and(|output| output.revision() == revision_max))
                .expect("revision_max was seen");
            return Err(fail(
                index,
                history,
                format!(
                    "revision {revision_max} takes {} writes, but the history has only {writes}",
                    revision_max - 1
                ),
            ));
        }
        let size = revision_max as usize + 1;
        let mut claims: Vec<Option<Writer>> = vec![None; size];
        let mut known_writes_by_key: Vec<Vec<i64>> = vec![Vec::new(); keys.len()];
        for (revision, writer) in acknowledged {
            known_writes_by_key[writer.key].push(revision);
            if let Some(other) = claims[revision as usize] {
                let (first, second) = if history.operations[other.op].invoke <= history.operations[writer.op].invoke {
                    (other.op, writer.op)
                } else {
                    (writer.op, other.op)
                };
                return Err(fail(
                    second,
                    history,
                    format!(
                        "revision {revision} was also produced by #{}: two writes cannot produce one revision",
                        history.operations[first].id
                    ),
                ));
            }
            claims[revision as usize] = Some(writer);
        }
        let mut observers: Vec<Vec<Observer>> = vec![Vec::new(); size];
        let mut gets_by_key: Vec<Vec<(i64, i64)>> = vec![Vec::new(); keys.len()];
        let mut pinned: Vec<Option<(usize, ValueId)>> = vec![None; size];
        for (revision, observer) in observed {
            if let Check::Get { value, mod_revision } = observer.check {
                gets_by_key[observer.key].push((revision, mod_revision));
                if let Some(value) = value {
                    pinned[mod_revision as usize].get_or_insert((observer.key, value));
                }
            }
            observers[revision as usize].push(observer);
        }
        for gets in &mut gets_by_key {
            gets.sort_unstable();
        }
        for writes in &mut known_writes_by_key {
            writes.sort_unstable();
        }
        for list in &mut observers {
            list.sort_by_key(|observer| history.operations[observer.op].invoke);
        }

        let mut prepared = Prepared {
            history,
            keys,
            values,
            revision_max,
            claims,
            observers,
            unknowns,
            gap_invoke_max: vec![u64::MAX; size],
            pinned,
            gets_by_key,
            known_writes_by_key,
        };
        prepared.check_real_time()?;
        Ok(prepared)
    }

    /// Serializable gets are not bound by real time.
    fn real_time(&self, op: usize) -> bool {
        !matches!(
            self.history.operations[op].input,
            KvInput::Get {
                linearizable: false,
                ..
            }
        )
    }

    /// The operations at fixed positions, in order: (position, op).
    fn positioned(&self) -> Vec<((i64, u8), usize)> {
        let mut positioned = Vec::new();
        for revision in 1..=self.revision_max {
            if let Some(writer) = self.claims[revision as usize] {
                positioned.push(((revision, 0), writer.op));
            }
            for observer in &self.observers[revision as usize] {
                positioned.push(((revision, 1), observer.op));
            }
        }
        positioned
    }

    /// Step 1 of the module docs, and the gap bounds.
    fn check_real_time(&mut self) -> Result<(), Failure> {
        let positioned: Vec<((i64, u8), usize)> = self
            .positioned()
            .into_iter()
            .filter(|&(_, op)| self.real_time(op))
            .collect();
        let operations = &self.history.operations;
        // The latest invocation at earlier positions: (invoke, op).
        let mut latest_before: Option<(u64, usize)> = None;
        let mut group_start = 0;
        while group_start < positioned.len() {
            let position = positioned[group_start].0;
            let group_end = positioned[group_start..]
                .iter()
                .position(|&(p, _)| p != position)
                .map_or(positioned.len(), |offset| group_start + offset);
            for &(_, op) in &positioned[group_start..group_end] {
                let complete = operations[op].complete.expect("acknowledged");
                if let Some((invoke, earlier)) = latest_before {
                    if invoke > complete {
                        let earlier_position = positioned
                            .iter()
                            .find(|(_, o)| *o == earlier)
                            .expect("listed with its position")
                            .0;
                        let linearized = positioned
                            .iter()
                            .take_while(|(p, _)| *p < earlier_position)
                            .map(|&(_, o)| operations[o].id)
                            .collect();
                        return Err(Failure {
                            linearized,
                            stuck: operations[earlier].id,
                            reason: format!(
                                "its revision puts it before #{} (`{}`, {}), but #{} completed at {} ms, before \
                                 #{} was invoked at {} ms",
                                operations[op].id,
                                operations[op].input,
                                describe_position(position),
                                operations[op].id,
                                Millis(complete),
                                operations[earlier].id,
                                Millis(invoke)
                            ),
                        });
                    }
                }
            }
            for &(_, op) in &positioned[group_start..group_end] {
                let invoke = operations[op].invoke;
                if latest_before.is_none_or(|(at, _)| invoke > at) {
                    latest_before = Some((invoke, op));
                }
            }
            group_start = group_end;
        }
        // gap_invoke_max[g] = min completion over positions after (g, 0).
        let mut earliest_complete = u64::MAX;
        let mut index = positioned.len();
        for gap in (1..=self.revision_max).rev() {
            while index > 0 && positioned[index - 1].0 > (gap, 0) {
                index -= 1;
                earliest_complete =
                    earliest_complete.min(operations[positioned[index].1].complete.expect("acknowledged"));
            }
            self.gap_invoke_max[gap as usize] = earliest_complete;
        }
        Ok(())
    }

    fn fits(&self, states: &KeyStates, writer: &Writer) -> bool {
        match writer.effect {
            Effect::Put(_) => true,
            Effect::Delete => states[writer.key].is_some(),
            Effect::CompareAndSet { expected, .. } => states[writer.key].map(|(value, _)| value) == expected,
        }
    }

    fn apply(states: &mut KeyStates, writer: &Writer, revision: i64) {
        states[writer.key] = match writer.effect {
            Effect::Put(value) | Effect::CompareAndSet { new_value: value, .. } => Some((value, revision)),
            Effect::Delete => None,
        };
    }

    fn sees(states: &KeyStates, observer: &Observer) -> bool {
        let state = states[observer.key];
        match observer.check {
            Check::Get { value, mod_revision } => state == value.map(|value| (value, mod_revision)),
            Check::Absent => state.is_none(),
            Check::CompareRefused { expected } => state.map(|(value, _)| value) != expected,
        }
    }

    fn describe_key(&self, states: &KeyStates, key: usize) -> String {
        match states[key] {
            Some((value, mod_revision)) => {
                format!(
                    "{} = {} (mod rev {mod_revision})",
                    Bytes(self.keys[key]),
                    Bytes(self.values[value as usize])
                )
            }
            None => format!("{} absent", Bytes(self.keys[key])),
        }
    }

    /// Check the observers at `revision` against `states`.
    fn check_observers(&self, states: &KeyStates, revision: i64) -> Result<(), Stop> {
        for observer in &self.observers[revision as usize] {
            if !Self::sees(states, observer) {
                return Err(Stop {
                    position: (revision, 1),
                    stuck: observer.op,
                    depends_on: Some((observer.key, revision)),
                    reason: format!(
                        "at revision {revision} the store has {}, which does not give this answer",
                        self.describe_key(states, observer.key)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Replay acknowledged writes from `from` until a gap (returned) or the
    /// end (`None`).
    fn advance(
        &self,
        states: &mut KeyStates,
        from: i64,
        budget: &mut Budget,
    ) -> Result<Result<Option<i64>, Stop>, String> {
        for revision in from..=self.revision_max {
            budget.spend()?;
            let Some(writer) = self.claims[revision as usize] else {
                return Ok(Ok(Some(revision)));
            };
            if !self.fits(states, &writer) {
                return Ok(Err(Stop {
                    position: (revision, 0),
                    stuck: writer.op,
                    depends_on: Some((writer.key, revision - 1)),
                    reason: format!(
                        "it produced revision {revision}, but at revision {} the store has {}",
                        revision - 1,
                        self.describe_key(states, writer.key)
                    ),
                }));
            }
            Self::apply(states, &writer, revision);
            if let Err(stop) = self.check_observers(states, revision) {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(None))
    }

    /// Why unknown write `writer` cannot fill the gap at `gap`, if it cannot.
    fn unfit_for_gap(&self, states: &KeyStates, writer: &Writer, gap: i64) -> Option<Unfit> {
        let operation = &self.history.operations[writer.op];
        if operation.invoke > self.gap_invoke_max[gap as usize] {
            return Some(Unfit::Late);
        }
        let writes = |value: ValueId| match writer.effect {
            Effect::Put(written) | Effect::CompareAndSet { new_value: written, .. } => written == value,
            Effect::Delete => false,
        };
        if let Some((key, value)) = self.pinned[gap as usize] {
            if key != writer.key || !writes(value) {
                return Some(Unfit::Pinned(key, value));
            }
        }
        // The first get of this key at or after the gap must see this write
        // (or a later write of the key).
        let gets = &self.gets_by_key[writer.key];
        let first = gets.partition_point(|&(revision, _)| revision < gap);
        if let Some(&(revision, mod_revision)) = gets.get(first) {
            if mod_revision > 0 && mod_revision < gap {
                return Some(Unfit::ReadOlder(revision, mod_revision));
            }
        }
        if !self.fits(states, writer) {
            return Some(Unfit::ChangesNothing);
        }
        None
    }

    fn describe_unfit(&self, unfit: &Unfit, writer: &Writer, states: &KeyStates, gap: i64) -> String {
        match *unfit {
            Unfit::Late => format!(
                "invoked at {} ms, after an operation at a later revision completed ({} ms)",
                Millis(self.history.operations[writer.op].invoke),
                Millis(self.gap_invoke_max[gap as usize])
            ),
            Unfit::Pinned(key, value) => format!(
                "a get saw {} = {} written at revision {gap}",
                Bytes(self.keys[key]),
                Bytes(self.values[value as usize])
            ),
            Unfit::ReadOlder(revision, mod_revision) => format!(
                "a get at revision {revision} saw {} last written at revision {mod_revision}",
                Bytes(self.keys[writer.key])
            ),
            Unfit::ChangesNothing => {
                format!(
                    "would change nothing: the store has {}",
                    self.describe_key(states, writer.key)
                )
            }
        }
    }

    /// The revision of the last acknowledged write of `key` at or below
    /// `revision` (0: none).
    fn last_known_write(&self, key: usize, revision: i64) -> i64 {
        let writes = &self.known_writes_by_key[key];
        let count = writes.partition_point(|&r| r <= revision);
        if count == 0 {
            0
        } else {
            writes[count - 1]
        }
    }

    /// The gap decisions that can change `key`'s state at `revision`: those
    /// after its last acknowledged write at or below `revision` that had a
    /// writer of `key` among their candidates. (Writes before that last
    /// acknowledged one are overwritten by it.)
    fn conflicts_for_key(stack: &[Frame], this: &Self, key: usize, revision: i64) -> Conflicts {
        let after = this.last_known_write(key, revision);
        stack
            .iter()
            .enumerate()
            .filter(|(_, frame)| frame.gap > after && frame.gap <= revision && frame.candidate_keys.contains(&key))
            .map(|(index, _)| index)
            .collect()
    }

    fn stop_conflicts(&self, stack: &[Frame], stop: &Stop) -> Conflicts {
        match stop.depends_on {
            Some((key, revision)) => Self::conflicts_for_key(stack, self, key, revision),
            None => (0..stack.len()).collect(),
        }
    }

    /// Depth-first over the gaps with conflict-directed backjumping (Prosser,
    /// "Hybrid algorithms for the constraint satisfaction problem", 1993): a
    /// failure records which earlier gap decisions could have changed it
    /// (the decisions that may write the key it is about, after that key's
    /// last acknowledged write), and the search goes straight back to the
    /// latest of those instead of trying every combination of the decisions
    /// in between, which cannot help. A failure no decision can change ends
    /// the search at once.
    fn search(&self, limits: &Limits) -> SearchResult {
        let mut budget = Budget::new(limits);
        let mut deepest: Option<(Stop, Vec<(i64, usize)>)> = None;
        // Record a stop if it is the deepest so far, with the gap choices
        // that led there.
        let record = |stop: Stop, stack: &[Frame], deepest: &mut Option<(Stop, Vec<(i64, usize)>)>| {
            if deepest.as_ref().is_none_or(|(best, _)| stop.position > best.position) {
                let chosen = stack
                    .iter()
                    .filter_map(|frame| Some((frame.gap, frame.chosen?)))
                    .collect();
                *deepest = Some((stop, chosen));
            }
        };
        let mut used = Bitset::new(self.unknowns.len());
        // Which frame placed each unknown write.
        let mut used_by: Vec<usize> = vec![usize::MAX; self.unknowns.len()];
        let mut memo: FxHashSet<(i64, Bitset, KeyStates)> = FxHashSet::default();
        let mut stack: Vec<Frame> = Vec::new();
        let fail = |deepest: Option<(Stop, Vec<(i64, usize)>)>| {
            let (stop, chosen) = deepest.expect("a failed search recorded where it stopped");
            SearchResult::NotLinearizable(self.failure(stop, &chosen))
        };

        let mut states: KeyStates = vec![None; self.keys.len()];
        let first = self
            .check_observers(&states, 1)
            .map(|()| self.advance(&mut states, 2, &mut budget));
        match first {
            Err(stop) | Ok(Ok(Err(stop))) => {
                record(stop, &stack, &mut deepest);
                return fail(deepest);
            }
            Ok(Err(reason)) => return SearchResult::GaveUp(reason),
            Ok(Ok(Ok(None))) => return SearchResult::Linearizable,
            Ok(Ok(Ok(Some(gap)))) => stack.push(self.frame(gap, states, &used)),
        }
        while !stack.is_empty() {
            let depth = stack.len() - 1;
            if let Some(chosen) = stack[depth].chosen.take() {
                used.remove(chosen);
                used_by[chosen] = usize::MAX;
            }
            let gap = stack[depth].gap;
            let mut conflicts: Conflicts;
            if stack[depth].next == stack[depth].candidates.len() {
                // Every candidate failed: why, beyond what they recorded.
                conflicts = std::mem::take(&mut stack[depth].conflicts);
                let before = &stack[depth].before;
                for (index, writer) in self.unknowns.iter().enumerate() {
                    if used_by[index] != usize::MAX {
                        conflicts.insert(used_by[index]);
                    } else if let Some(Unfit::ChangesNothing) = self.unfit_for_gap(before, writer, gap) {
                        conflicts.extend(Self::conflicts_for_key(&stack, self, writer.key, gap - 1));
                    }
                }
                let stop = self.gap_stop(before, gap, &used);
                record(stop, &stack, &mut deepest);
            } else {
                let frame = &mut stack[depth];
                let candidate = frame.candidates[frame.next];
                frame.next += 1;
                frame.chosen = Some(candidate);
                used.insert(candidate);
                used_by[candidate] = depth;
                let mut states = frame.before.clone();
                Self::apply(&mut states, &self.unknowns[candidate], gap);
                if let Err(reason) = budget.spend() {
                    return SearchResult::GaveUp(reason);
                }
                if !memo.insert((gap, used.clone(), states.clone())) {
                    // Explored before from an identical position: it failed,
                    // for reasons we did not keep, so blame every decision.
                    frame.conflicts.extend(0..depth);
                    continue;
                }
                let outcome = self
                    .check_observers(&states, gap)
                    .map(|()| self.advance(&mut states, gap + 1, &mut budget));
                let stop = match outcome {
                    Err(stop) | Ok(Ok(Err(stop))) => stop,
                    Ok(Err(reason)) => return SearchResult::GaveUp(reason),
                    Ok(Ok(Ok(None))) => return SearchResult::Linearizable,
                    Ok(Ok(Ok(Some(next_gap)))) => {
                        stack.push(self.frame(next_gap, states, &used));
                        continue;
                    }
                };
                conflicts = self.stop_conflicts(&stack, &stop);
                record(stop, &stack, &mut deepest);
                if conflicts.remove(&depth) {
                    // Another candidate here may fix it.
                    stack[depth].conflicts.extend(conflicts);
                    continue;
                }
                // No choice here can fix it: this frame is done too.
                let frame = &mut stack[depth];
                if let Some(chosen) = frame.chosen.take() {
                    used.remove(chosen);
                    used_by[chosen] = usize::MAX;
                }
            }
            // Jump back to the latest decision that can change the outcome.
            conflicts.remove(&depth);
            let Some(&target) = conflicts.iter().next_back() else {
                return fail(deepest);
            };
            for frame in stack.drain(target + 1..) {
                if let Some(chosen) = frame.chosen {
                    used.remove(chosen);
                    used_by[chosen] = usize::MAX;
                }
            }
            conflicts.remove(&target);
            stack[target].conflicts.extend(conflicts);
        }
        fail(deepest)
    }

    fn frame(&self, gap: i64, before: KeyStates, used: &Bitset) -> Frame {
        let candidates: Vec<usize> = (0..self.unknowns.len())
            .filter(|&index| !used.contains(index) && self.unfit_for_gap(&before, &self.unknowns[index], gap).is_none())
            .collect();
        let mut candidate_keys: Vec<usize> = candidates.iter().map(|&index| self.unknowns[index].key).collect();
        candidate_keys.sort_unstable();
        candidate_keys.dedup();
        Frame {
            gap,
            before,
            candidates,
            candidate_keys,
            next: 0,
            chosen: None,
            conflicts: Conflicts::new(),
        }
    }

    /// No unknown write (left) can fill the gap: say who needed it and why
    /// each candidate does not fit.
    fn gap_stop(&self, states: &KeyStates, gap: i64, used: &Bitset) -> Stop {
        let stuck = self
            .positioned()
            .into_iter()
            .find(|&(position, _)| position > (gap, 0))
            .map(|(_, op)| op)
            .expect("a gap lies below some revision that was seen");
        let mut rejected = Vec::new();
        for (index, writer) in self.unknowns.iter().enumerate() {
            let id = self.history.operations[writer.op].id;
            if used.contains(index) {
                rejected.push(format!("#{id} already placed earlier"));
            } else if let Some(unfit) = self.unfit_for_gap(states, writer, gap) {
                rejected.push(format!("#{id} {}", self.describe_unfit(&unfit, writer, states, gap)));
            } else {
                rejected.push(format!(
                    "#{id} fits, but the operations after it could not all be placed"
                ));
            }
        }
        const SHOWN_MAX: usize = 6;
        let more = rejected.len().saturating_sub(SHOWN_MAX);
        rejected.truncate(SHOWN_MAX);
        let candidates = if rejected.is_empty() {
            "no write has an unknown outcome".to_string()
        } else {
            format!(
                "{}{}",
                rejected.join("; "),
                if more > 0 {
                    format!("; {more} more")
                } else {
                    String::new()
                }
            )
        };
        Stop {
            position: (gap, 0),
            stuck,
            depends_on: None,
            reason: format!(
                "revision {gap} was reached (this operation is at {}), but no acknowledged write produced it \
                 and no unknown write can have: {candidates}",
                describe_position(self.position_of(stuck))
            ),
        }
    }

    fn position_of(&self, op: usize) -> (i64, u8) {
        self.positioned()
            .into_iter()
            .find(|&(_, o)| o == op)
            .map_or((0, 0), |(position, _)| position)
    }

    /// The report: the order up to where the deepest attempt stopped.
    fn failure(&self, stop: Stop, chosen: &[(i64, usize)]) -> Failure {
        let mut order = Vec::new();
        let mut chosen = chosen.iter().peekable();
        for revision in 1..=self.revision_max {
            let writer = self.claims[revision as usize].map(|writer| writer.op).or_else(|| {
                chosen
                    .next_if(|(gap, _)| *gap == revision)
                    .map(|&(_, unknown)| self.unknowns[unknown].op)
            });
            if (revision, 0) >= stop.position {
                break;
            }
            order.extend(writer);
            if (revision, 1) >= stop.position {
                break;
            }
            order.extend(self.observers[revision as usize].iter().map(|observer| observer.op));
        }
        let operation = &self.history.operations[stop.stuck];
        let answer = match operation.ok_output() {
            Some(output) => format!("answered {output}"),
            None => "outcome unknown".to_string(),
        };
        Failure {
            linearized: order.into_iter().map(|op| self.history.operations[op].id).collect(),
            stuck: operation.id,
            reason: format!("`{}` {answer}: {}", operation.input, stop.reason),
        }
    }
}

fn describe_position((revision, phase): (i64, u8)) -> String {
    if phase == 0 {
        format!("the write producing revision {revision}")
    } else {
        format!("revision {revision}")
    }
}
