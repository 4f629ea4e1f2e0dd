//! A linearizability checker: the Wing–Gong algorithm with Lowe's memoization ("WGL").
//!
//! A history is a set of operations, each with the time its call was sent and, if the client heard back,
//! the time its response arrived. The history is linearizable if the operations can be put in one order
//! that respects real time (an operation that returned before another was called comes first) and in
//! which every response is what the sequential [`Model`] would have answered.
//!
//! The search walks the call and return events in time order as a doubly linked list. At a call it tries
//! to linearize that operation next (the model must accept its response); if it can, it takes the call and
//! its return out of the list and starts again from the head. Reaching a return means an operation that
//! had to be linearized by then was not: undo the last choice and try the next call after it. A set of
//! (operations linearized, model state) pairs already explored prunes repeated work, which is what makes
//! the search practical (Lowe, "Testing for linearizability", 2016).
//!
//! An operation whose outcome the client never learnt (no response, or an error that leaves it open
//! whether it took effect) is given a return at infinity and an unknown output: it may be linearized
//! anywhere after its call, including after everything else, which is the same as never having happened.
//! Linearizability is compositional, so a key-value history is checked one key at a time
//! ([`check_per_key`]), each key with its own register.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification of one object.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash;
    /// What an operation asks.
    type Input;
    /// What an operation answers.
    type Output;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` ran in `state` and answered `output` (`None`: answer unknown), or `None`
    /// if it could not have answered that.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history. Times are in any unit, as long as all clients share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued it (one operation at a time per client).
    pub client: u64,
    /// When the call was sent.
    pub call: u64,
    /// When its response arrived; `None` if none did.
    pub ret: Option<u64>,
    /// What it asked.
    pub input: I,
    /// What it answered; `None` if the client does not know (no response, or an ambiguous error).
    pub output: Option<O>,
}

/// What a check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order respecting real time explains every response.
    Linearizable,
    /// No such order exists.
    NotLinearizable,
    /// The search gave up after its step budget.
    Unknown,
}

/// Event list node kinds, stored in parallel arrays.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    // Time, with returns at the same time sorting after calls (so such operations count as concurrent).
    key: (u64, bool),
}

/// A fixed-size set of operation indexes, hashable so it can key the explored-state cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OpSet(Vec<u64>);

impl OpSet {
    fn new(n: usize) -> OpSet {
        OpSet(vec![0; n.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks `history` against `model`, exploring at most `max_steps` search steps.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], max_steps: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events 0..2n; nodes 2n (head) and 2n + 1 (tail) are sentinels of the doubly linked list.
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (op, o) in history.iter().enumerate() {
        let ret = match (o.ret, &o.output) {
            (Some(t), Some(_)) => t.max(o.call),
            // Unknown outcome: it may take effect at any time after its call.
            _ => u64::MAX,
        };
        events.push(Event { op, is_call: true, key: (o.call, false) });
        events.push(Event { op, is_call: false, key: (ret, true) });
    }
    events.sort_by_key(|e| e.key);
    let (head, tail) = (2 * n, 2 * n + 1);
    let mut next: Vec<usize> = (0..2 * n + 2).map(|i| i + 1).collect();
    let mut prev: Vec<usize> = (0..2 * n + 2).map(|i| i.wrapping_sub(1)).collect();
    next[head] = 0;
    prev[0] = head;
    next[2 * n - 1] = tail;
    prev[tail] = 2 * n - 1;
    // The return event of each operation, found by position.
    let mut return_of = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if !e.is_call {
            return_of[e.op] = i;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = next[x];
        prev[next[x]] = prev[x];
    };
    // Re-inserts a lifted node: its own links were left as they were when it was taken out.
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        prev[next[x]] = x;
        next[prev[x]] = x;
    };

    let mut state = model.init();
    let mut linearized = OpSet::new(n);
    let mut explored: HashSet<(OpSet, M::State)> = HashSet::new();
    // Calls linearized so far, with the state before each.
    let mut chosen: Vec<(usize, M::State)> = Vec::new();
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != tail {
        steps += 1;
        if steps > max_steps {
            return Verdict::Unknown;
        }
        let e = events[entry];
        if e.is_call {
            let o = &history[e.op];
            if let Some(after) = model.step(&state, &o.input, o.output.as_ref()) {
                linearized.insert(e.op);
                if explored.insert((linearized.clone(), after.clone())) {
                    chosen.push((entry, std::mem::replace(&mut state, after)));
                    lift(&mut next, &mut prev, entry);
                    lift(&mut next, &mut prev, return_of[e.op]);
                    entry = next[head];
                    continue;
                }
                linearized.remove(e.op);
            }
            entry = next[entry];
        } else {
            // An operation that must be linearized by now is not: undo the last choice, try the next.
            let Some((call, before)) = chosen.pop() else {
                return Verdict::NotLinearizable;
            };
            let op = events[call].op;
            linearized.remove(op);
            state = before;
            unlift(&mut next, &mut prev, return_of[op]);
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Verdict::Linearizable
}

/// One key's register as cairn serves it: reads, writes, deletes and compare-and-set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

/// An operation on a [`Register`]. Values are `u64`s (tests write unique ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// The current value.
    Read,
    /// Set the value.
    Write(u64),
    /// Remove the value.
    Delete,
    /// Set the value to `new` if it is `expect` (`None`: absent).
    Cas {
        /// The value required.
        expect: Option<u64>,
        /// The value written if so.
        new: u64,
    },
}

/// A [`Register`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// What a read saw.
    Read(Option<u64>),
    /// A write or delete was applied.
    Done,
    /// Whether a compare-and-set applied.
    Cas(bool),
}

impl Model for Register {
    type State = Option<u64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<u64>> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(*state),
            (RegisterInput::Read, Some(RegisterOutput::Read(seen))) => (seen == state).then_some(*state),
            (RegisterInput::Write(v), None | Some(RegisterOutput::Done)) => Some(Some(*v)),
            (RegisterInput::Delete, None | Some(RegisterOutput::Done)) => Some(None),
            // An unknown compare-and-set applied exactly if its expectation held.
            (RegisterInput::Cas { expect, new }, None) => {
                Some(if expect == state { Some(*new) } else { *state })
            }
            (RegisterInput::Cas { expect, new }, Some(RegisterOutput::Cas(applied))) => {
                match (expect == state, applied) {
                    (true, true) => Some(Some(*new)),
                    (false, false) => Some(*state),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// A register operation on one key of a key-value history.
pub type KeyedOperation<K> = (K, Operation<RegisterInput, RegisterOutput>);

/// Checks a key-value history key by key; the first key that is not linearizable decides, then any key
/// whose search ran out of budget. Returns the verdict and, unless linearizable, the key that decided it.
pub fn check_per_key<K: Ord + Clone>(
    history: &[KeyedOperation<K>],
    max_steps_per_key: u64,
) -> (Verdict, Option<K>) {
    let mut by_key: std::collections::BTreeMap<K, Vec<Operation<RegisterInput, RegisterOutput>>> =
        std::collections::BTreeMap::new();
    for (key, op) in history {
        by_key.entry(key.clone()).or_default().push(op.clone());
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check(&Register, &ops, max_steps_per_key) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => return (Verdict::NotLinearizable, Some(key)),
            Verdict::Unknown => {
                unknown.get_or_insert(key);
            }
        }
    }
    match unknown {
        Some(key) => (Verdict::Unknown, Some(key)),
        None => (Verdict::Linearizable, None),
    }
}

/// The earliest moment `t` at which `history` (one register's) already fails: the operations called by
/// `t`, with those still running at `t` counted as pending. Operations around it explain a failure.
/// `None` if no prefix fails within the step budget.
pub fn first_failure<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Option<u64>
where
    M::Input: Clone,
    M::Output: Clone,
{
    let mut times: Vec<u64> = history.iter().flat_map(|op| [Some(op.call), op.ret]).flatten().collect();
    times.sort_unstable();
    times.dedup();
    let prefix = |t: u64| -> Vec<Operation<M::Input, M::Output>> {
        history
            .iter()
            .filter(|op| op.call <= t)
            .map(|op| {
                let mut op = op.clone();
                if op.ret.is_none_or(|r| r > t) {
                    op.ret = None;
                    op.output = None;
                }
                op
            })
            .collect()
    };
    // Failing is monotone in `t` (a longer prefix only adds constraints): binary search.
    let fails = |t: u64| check(model, &prefix(t), max_steps) == Verdict::NotLinearizable;
    let last = *times.last()?;
    if !fails(last) {
        return None;
    }
    let (mut lo, mut hi) = (0, times.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(times[mid]) { hi = mid } else { lo = mid + 1 }
    }
    Some(times[lo])
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterInput::*;
    use RegisterOutput as Out;

    fn op(
        client: u64,
        call: u64,
        ret: u64,
        input: RegisterInput,
        output: RegisterOutput,
    ) -> Operation<RegisterInput, RegisterOutput> {
        Operation { client, call, ret: Some(ret), input, output: Some(output) }
    }

    fn verdict(history: &[Operation<RegisterInput, RegisterOutput>]) -> Verdict {
        check(&Register, history, 1_000_000)
    }

    #[test]
    fn first_failure_finds_the_moment_a_stale_read_returns() {
        let history = [
            op(1, 1, 2, Write(1), Out::Done),
            op(2, 3, 4, Read, Out::Read(Some(1))),
            op(1, 5, 6, Write(2), Out::Done),
            op(2, 7, 9, Read, Out::Read(Some(1))),
            op(1, 10, 11, Read, Out::Read(Some(2))),
        ];
        assert_eq!(first_failure(&Register, &history, 1_000_000), Some(9));
        assert_eq!(first_failure(&Register, &history[..3], 1_000_000), None);
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        let ok = [op(1, 0, 1, Write(1), Out::Done), op(1, 2, 3, Read, Out::Read(Some(1)))];
        assert_eq!(verdict(&ok), Verdict::Linearizable);
        let stale = [op(1, 0, 1, Write(1), Out::Done), op(2, 2, 3, Read, Out::Read(None))];
        assert_eq!(verdict(&stale), Verdict::NotLinearizable);
        let cas = [
            op(1, 0, 1, Cas { expect: None, new: 5 }, Out::Cas(true)),
            op(2, 2, 3, Cas { expect: None, new: 6 }, Out::Cas(true)),
        ];
        assert_eq!(verdict(&cas), Verdict::NotLinearizable);
        assert_eq!(verdict(&[]), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: it may see the old or the new value, and a later read must agree
        // with whichever it saw first.
        for seen in [None, Some(1)] {
            let h = [op(1, 0, 10, Write(1), Out::Done), op(2, 5, 6, Read, Out::Read(seen))];
            assert_eq!(verdict(&h), Verdict::Linearizable, "{seen:?}");
        }
        let flip_back = [
            op(1, 0, 10, Write(1), Out::Done),
            op(2, 1, 2, Read, Out::Read(Some(1))),
            op(3, 3, 4, Read, Out::Read(None)),
        ];
        assert_eq!(verdict(&flip_back), Verdict::NotLinearizable);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let pending = Operation { client: 1, call: 0, ret: None, input: Write(7), output: None };
        for seen in [None, Some(7)] {
            let h = [pending.clone(), op(2, 5, 6, Read, Out::Read(seen))];
            assert_eq!(verdict(&h), Verdict::Linearizable);
        }
        // ...but once seen, it stays.
        let h = [pending, op(2, 5, 6, Read, Out::Read(Some(7))), op(2, 7, 8, Read, Out::Read(None))];
        assert_eq!(verdict(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn keys_are_checked_separately_and_budget_is_reported() {
        let h = vec![("a", op(1, 0, 1, Write(1), Out::Done)), ("b", op(2, 0, 1, Read, Out::Read(Some(1))))];
        assert_eq!(check_per_key(&h, 1000), (Verdict::NotLinearizable, Some("b")));
        let many: Vec<_> = (0..40).map(|i| op(i, 0, 100, Write(i), Out::Done)).collect();
        assert_eq!(check(&Register, &many, 10), Verdict::Unknown);
    }
}
