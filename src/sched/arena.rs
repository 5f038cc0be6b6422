//! The goal arena: goals in a flat vector indexed by `u32`, dependents as
//! linked lists in one shared edge pool (8 bytes per edge, no allocation per
//! goal), outputs in a side table, and the output-path index used to share
//! one goal between requests for the same outputs (S9).
//!
//! What scheduling touches for *other* goals (a dependency's list head and
//! whether it finished when an edge is added; a dependent's pending count
//! when a goal finishes) is kept in a dense side array of 8 bytes per goal,
//! [`Hot`], rather than in the goal records: those accesses are random, and
//! a dense array stays in cache where the records do not (`make bench`,
//! schedule_100k_rust; numbers in the commit message).

use std::collections::HashMap;

use crate::lock::StorePath;

use super::goal::{BuildMode, Goal, GoalKind, GoalState, Phase, NONE};

/// One "`to` depends on the goal whose list this is" link.
#[derive(Clone, Copy, Debug)]
struct Edge {
    to: u32,
    next: u32,
}

/// The scheduling data of one goal that other goals' transitions touch.
#[derive(Clone, Copy, Debug)]
struct Hot {
    /// Unfinished dependencies, and [`FINISHED`] once the goal has finished.
    pending: u32,
    /// Head of the list of dependents in the edge pool, or [`NONE`].
    dependents: u32,
}

/// The flag in [`Hot::pending`] of a finished goal.
const FINISHED: u32 = 1 << 31;

/// The goals of one worker.
#[derive(Default)]
pub(crate) struct Arena {
    pub(crate) goals: Vec<Goal>,
    hot: Vec<Hot>,
    edges: Vec<Edge>,
    outputs: Vec<Box<[StorePath]>>,
    /// Output path -> the build or substitute goal that locks it.
    by_path: HashMap<StorePath, u32>,
    /// Goals per state, maintained by [`Arena::set_phase`].
    counts: [u64; GoalState::COUNT],
}

const EMPTY: &[StorePath] = &[];

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
            outcome: None,
        });
        self.hot.push(Hot {
            pending: 0,
            dependents: NONE,
        });
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

    /// Records that `to` depends on `from` (`from`'s dependents list).
    pub(crate) fn add_edge(&mut self, from: u32, to: u32) {
        let head = self.hot[from as usize].dependents;
        self.edges.push(Edge { to, next: head });
        self.hot[from as usize].dependents = (self.edges.len() - 1) as u32;
    }

    /// Counts one more unfinished dependency of goal `i`.
    pub(crate) fn add_pending(&mut self, i: u32) {
        let p = &mut self.hot[i as usize].pending;
        if *p & !FINISHED < FINISHED - 1 {
            *p += 1;
        }
    }

    /// Counts one dependency of goal `i` as finished; returns how many remain.
    pub(crate) fn sub_pending(&mut self, i: u32) -> u32 {
        let p = &mut self.hot[i as usize].pending;
        if *p & !FINISHED > 0 {
            *p -= 1;
        }
        *p & !FINISHED
    }

    /// Records that goal `i` has finished (its outcome is set).
    pub(crate) fn mark_finished(&mut self, i: u32) {
        self.hot[i as usize].pending |= FINISHED;
    }

    /// `true` once goal `i` has finished: [`Goal::outcome`] is then set. One
    /// access to the dense array instead of the goal's record.
    pub(crate) fn is_finished(&self, i: u32) -> bool {
        self.hot[i as usize].pending & FINISHED != 0
    }

    /// The first link of `i`'s dependents list (iterate with [`Arena::next_dependent`]).
    pub(crate) fn first_dependent(&self, i: u32) -> u32 {
        self.hot[i as usize].dependents
    }

    /// The dependent at link `e`, and the next link.
    pub(crate) fn next_dependent(&self, e: u32) -> Option<(u32, u32)> {
        if e == NONE {
            return None;
        }
        let edge = self.edges[e as usize];
        Some((edge.to, edge.next))
    }

    /// Replaces goal `i`'s state value, keeping the counters right, and
    /// returns the old one (with whatever it owned).
    pub(crate) fn set_phase(&mut self, i: u32, phase: Phase) -> Phase {
        let new = phase.state() as usize;
        let old = std::mem::replace(&mut self.goals[i as usize].phase, phase);
        self.counts[old.state() as usize] -= 1;
        self.counts[new] += 1;
        old
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
            + self.hot.capacity() * std::mem::size_of::<Hot>()
            + self.edges.capacity() * std::mem::size_of::<Edge>()
    }
}
