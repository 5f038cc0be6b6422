//! The goal arena: goals in a flat vector indexed by `u32`, dependents as
//! linked lists in one shared edge pool (8 bytes per edge, no allocation per
//! goal), outputs in a side table, and the output-path index used to share
//! one goal between requests for the same outputs (S9).

use std::collections::HashMap;

use crate::lock::StorePath;

use super::goal::{BuildMode, Goal, GoalKind, GoalState, Phase, NONE};

/// "`to` depends on `from`": a link of `from`'s overflow list.
#[derive(Clone, Copy, Debug)]
struct Edge {
    from: u32,
    to: u32,
    next: u32,
}

/// A cursor over one goal's dependents (see [`Arena::dependents`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DepCursor {
    k: u32,
    end: u32,
    extra: u32,
}

/// The goals of one worker.
///
/// Layout for the hot path (a goal finishing wakes its dependents): the
/// dependency counters are a separate dense `u32` array, and dependents are
/// stored compactly (CSR: one contiguous slice per goal). Edges added since
/// the last compaction sit in per-goal overflow lists and are folded into
/// the compact form by [`Arena::maybe_compact`] (amortised O(1) per edge).
#[derive(Default)]
pub(crate) struct Arena {
    pub(crate) goals: Vec<Goal>,
    /// Unfinished dependencies per goal.
    pub(crate) pending: Vec<u32>,
    /// Compacted dependents: goal `i`'s are `csr[csr_start[i]..csr_start[i + 1]]`
    /// (goals added after the last compaction have none there).
    csr_start: Vec<u32>,
    csr: Vec<u32>,
    /// Overflow lists: head per goal, links in `extra`.
    extra_head: Vec<u32>,
    extra: Vec<Edge>,
    outputs: Vec<Box<[StorePath]>>,
    /// Output path -> the build or substitute goal that locks it.
    by_path: HashMap<StorePath, u32>,
    /// Goals per state, maintained by [`Arena::set_phase`].
    counts: [u64; GoalState::COUNT],
}

const EMPTY: &[StorePath] = &[];

/// The dependency counter of a finished goal: far from 0, so the
/// decrements of its remaining edges never make it look ready.
const DONE_PENDING: u32 = 1 << 31;

impl Arena {
    /// Adds a goal in state `Ready` (no dependencies yet); returns its index.
    pub(crate) fn push(
        &mut self,
        kind: GoalKind,
        mode: BuildMode,
        outputs: Vec<StorePath>,
    ) -> Option<u32> {
        let index = u32::try_from(self.goals.len()).ok().filter(|&i| i < NONE)?;
        let out = if outputs.is_empty() {
            NONE
        } else {
            if kind != GoalKind::Plain {
                for p in &outputs {
                    self.by_path.insert(p.clone(), index);
                }
            }
            self.outputs.push(outputs.into_boxed_slice());
            (self.outputs.len() - 1) as u32
        };
        self.goals.push(Goal {
            phase: Phase::Ready,
            outputs: out,
            kind,
            mode,
        });
        self.pending.push(0);
        self.extra_head.push(NONE);
        self.counts[GoalState::Ready as usize] += 1;
        Some(index)
    }

    /// The goal that locks `path`, if any.
    pub(crate) fn goal_of_path(&self, path: &StorePath) -> Option<u32> {
        self.by_path.get(path).copied()
    }

    /// The outputs of goal `i`, sorted.
    pub(crate) fn outputs(&self, i: u32) -> &[StorePath] {
        match self.goals[i as usize].outputs {
            NONE => EMPTY,
            o => &self.outputs[o as usize],
        }
    }

    /// Records that `to` depends on `from` (an entry in `from`'s dependents).
    pub(crate) fn add_edge(&mut self, from: u32, to: u32) {
        let head = self.extra_head[from as usize];
        self.extra.push(Edge {
            from,
            to,
            next: head,
        });
        self.extra_head[from as usize] = (self.extra.len() - 1) as u32;
    }

    /// Folds the overflow lists into the compact form when they have grown
    /// to an eighth of it (so each edge is moved O(1) times on average).
    pub(crate) fn maybe_compact(&mut self) {
        let extra = self.extra.len();
        if extra == 0 || extra * 8 < self.csr.len() + 64 {
            return;
        }
        // A counting sort by source, reading the overflow edges sequentially.
        let n = self.goals.len();
        let mut start = vec![0u32; n + 1];
        for i in 0..n {
            start[i + 1] = self.old_len(i);
        }
        for e in &self.extra {
            start[e.from as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut csr = vec![0u32; start[n] as usize];
        let mut fill: Vec<u32> = start[..n].to_vec();
        for (f, w) in fill.iter_mut().zip(self.csr_start.windows(2)) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let at = *f as usize;
            csr[at..at + (b - a)].copy_from_slice(&self.csr[a..b]);
            *f += (b - a) as u32;
        }
        for e in &self.extra {
            let f = &mut fill[e.from as usize];
            csr[*f as usize] = e.to;
            *f += 1;
        }
        for h in &mut self.extra_head {
            *h = NONE;
        }
        self.csr = csr;
        self.csr_start = start;
        self.extra = Vec::new();
    }

    fn old_len(&self, i: usize) -> u32 {
        if i + 1 < self.csr_start.len() {
            self.csr_start[i + 1] - self.csr_start[i]
        } else {
            0
        }
    }

    /// A cursor over goal `i`'s dependents (use [`Arena::next_dependent`]).
    #[inline]
    pub(crate) fn dependents(&self, i: u32) -> DepCursor {
        let i = i as usize;
        let (k, end) = if i + 1 < self.csr_start.len() {
            (self.csr_start[i], self.csr_start[i + 1])
        } else {
            (0, 0)
        };
        DepCursor {
            k,
            end,
            extra: if self.extra.is_empty() {
                NONE
            } else {
                self.extra_head[i]
            },
        }
    }

    /// The next dependent, or `None` at the end.
    #[inline]
    pub(crate) fn next_dependent(&self, c: &mut DepCursor) -> Option<u32> {
        if c.k < c.end {
            c.k += 1;
            return Some(self.csr[c.k as usize - 1]);
        }
        if c.extra == NONE {
            return None;
        }
        let e = self.extra[c.extra as usize];
        c.extra = e.next;
        Some(e.to)
    }

    /// Replaces goal `i`'s state value, keeping the counters right, and
    /// returns the old one (with whatever it owned).
    ///
    /// Inlined: the new state is usually a constant at the call site, so its
    /// counter and the terminal-state bookkeeping fold away, and the old
    /// state is read from the value taken out (the dependency counter only
    /// for a goal whose record says it waits for dependencies).
    #[inline(always)]
    pub(crate) fn set_phase(&mut self, i: u32, phase: Phase) -> Phase {
        let new = phase.state() as usize;
        let done = phase.is_done();
        let old = std::mem::replace(&mut self.goals[i as usize].phase, phase);
        let old_state = match old {
            Phase::WaitingDeps if self.pending[i as usize] == 0 => GoalState::Ready,
            ref p => p.state(),
        };
        self.counts[old_state as usize] -= 1;
        self.counts[new] += 1;
        if done {
            // Decrements from late edges can never make a finished goal "ready".
            self.pending[i as usize] = DONE_PENDING;
        }
        old
    }

    /// Goal `i`'s state. A goal whose last dependency finished is *ready*
    /// although its record still says "waiting for dependencies": waking it
    /// only touches the dense counter array, not the goal record (the hot
    /// path); the record is updated when the goal is taken from the queue.
    #[inline]
    pub(crate) fn state(&self, i: u32) -> GoalState {
        match self.goals[i as usize].phase {
            Phase::WaitingDeps if self.pending[i as usize] == 0 => GoalState::Ready,
            ref p => p.state(),
        }
    }

    /// `true` once goal `i` has finished. Reads the dense counter array, not
    /// the goal's record (adding edges to many goals stays in cache).
    #[inline]
    pub(crate) fn is_finished(&self, i: u32) -> bool {
        self.pending[i as usize] >= DONE_PENDING / 2
    }

    /// One dependency of `d` finished with success; `true` if `d` is now ready.
    /// `d` is waiting for dependencies or finished (its counter is then
    /// [`DONE_PENDING`] and never reaches 0).
    #[inline]
    pub(crate) fn dependency_done(&mut self, d: u32) -> bool {
        let p = &mut self.pending[d as usize];
        *p = p.saturating_sub(1);
        if *p == 0 {
            self.counts[GoalState::WaitingDeps as usize] -= 1;
            self.counts[GoalState::Ready as usize] += 1;
            return true;
        }
        false
    }

    /// `g` gets one more unfinished dependency (it must be ready or waiting
    /// for dependencies).
    #[inline]
    pub(crate) fn add_pending(&mut self, g: u32) {
        let p = &mut self.pending[g as usize];
        if *p == 0 {
            // Ready: its record says Ready, or WaitingDeps after its last
            // dependency finished. Neither owns anything.
            let rec = &mut self.goals[g as usize].phase;
            if matches!(rec, Phase::Ready) {
                *rec = Phase::WaitingDeps;
            }
            self.counts[GoalState::Ready as usize] -= 1;
            self.counts[GoalState::WaitingDeps as usize] += 1;
        }
        *p += 1;
    }

    pub(crate) fn count(&self, s: GoalState) -> u64 {
        self.counts[s as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.goals.len()
    }

    /// Number of goals that have not finished.
    pub(crate) fn unfinished(&self) -> u64 {
        self.goals.len() as u64 - self.count(GoalState::Finished)
    }

    /// Bytes used by the arena's own storage (for the memory budget).
    pub(crate) fn approx_bytes(&self) -> usize {
        self.goals.capacity() * std::mem::size_of::<Goal>()
            + (self.pending.capacity()
                + self.extra_head.capacity()
                + self.csr_start.capacity()
                + self.csr.capacity())
                * 4
            + self.extra.capacity() * std::mem::size_of::<Edge>()
            + self.outputs.capacity() * std::mem::size_of::<Box<[StorePath]>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(a: &Arena, i: u32) -> Vec<u32> {
        let mut c = a.dependents(i);
        let mut v = Vec::new();
        while let Some(d) = a.next_dependent(&mut c) {
            v.push(d);
        }
        v.sort_unstable();
        v
    }

    #[test]
    fn dependents_survive_compaction_and_later_additions() {
        let mut a = Arena::default();
        for _ in 0..200 {
            a.push(GoalKind::Plain, BuildMode::Normal, Vec::new());
        }
        for i in 1..200 {
            a.add_edge(0, i);
            if i > 1 {
                a.add_edge(i - 1, i);
            }
        }
        a.maybe_compact();
        assert!(a.extra.is_empty(), "compacted");
        a.push(GoalKind::Plain, BuildMode::Normal, Vec::new());
        a.add_edge(0, 200);
        a.add_edge(200, 5);
        assert_eq!(deps(&a, 0).len(), 200);
        assert_eq!(deps(&a, 200), vec![5]);
        assert_eq!(deps(&a, 3), vec![4]);
        assert_eq!(deps(&a, 199), Vec::<u32>::new());
        for _ in 0..100 {
            a.add_edge(7, 9);
        }
        a.maybe_compact();
        assert_eq!(deps(&a, 7).len(), 101);
        assert_eq!(deps(&a, 0).len(), 200);
        assert_eq!(deps(&a, 200), vec![5]);
    }
}
