//! The goal graph of one worker: the goals in a flat vector indexed by
//! `u32`, each goal's state value, its unfinished dependencies and its
//! dependents, its outputs, and the output-path index that shares one goal
//! between requests for the same outputs (S9).
//!
//! The state value ([`Phase`]) *owns* the goal's execution resources: a
//! running goal's lock set and slot token live inside [`Phase::Running`].
//! Leaving that state moves them out, and the only code that does so is the
//! terminal transition, which releases them: entering a terminal state *is*
//! the release (G1).

use std::collections::HashMap;

use super::goal::{BuildMode, GoalKind, GoalState, Outcome};
use super::slots::SlotToken;
use crate::lock::{LockSet, StorePath};

/// What a waiting-for-a-lock goal waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitRef {
    /// A kernel wait on a helper thread (the goal's entry in the worker's
    /// foreign waits).
    Foreign,
    /// The completion of another goal of this worker (its index).
    Local(u32),
}

/// What a running goal holds. A build or substitute goal runs holding all
/// of its output locks and a build slot; a plain goal holds nothing. There
/// is no third shape (a goal running with locks but no slot, or the
/// reverse), so none can be built by mistake. Only the terminal transition
/// takes the resources out of the running state, and it releases them.
#[derive(Debug)]
pub(crate) enum Exec {
    /// A plain goal: no lock, no slot.
    Plain,
    /// A build or substitute goal's resources.
    Holding {
        /// Its output locks, all of them (G2).
        locks: Box<LockSet>,
        /// Its build slot.
        slot: SlotToken,
    },
}

/// A goal's state value, owning whatever the goal holds.
#[derive(Debug)]
pub(crate) enum Phase {
    WaitingDeps,
    Ready,
    WaitingSlot,
    WaitingLock(WaitRef),
    Running(Exec),
    /// Finished, with how it ended: a finished goal carries its outcome and
    /// nothing else.
    Done(Outcome),
}

impl Phase {
    /// The public view of the state value.
    pub(crate) fn state(&self) -> GoalState {
        match self {
            Phase::WaitingDeps => GoalState::WaitingDeps,
            Phase::Ready => GoalState::Ready,
            Phase::WaitingSlot => GoalState::WaitingSlot,
            Phase::WaitingLock(_) => GoalState::WaitingLock,
            Phase::Running(_) => GoalState::Running,
            Phase::Done(_) => GoalState::Finished,
        }
    }

    /// How the goal ended, once it has.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self {
            Phase::Done(o) => Some(*o),
            _ => None,
        }
    }
}

/// Sentinel for "no index".
pub(crate) const NONE: u32 = u32::MAX;

/// One goal. Kept small (32 bytes): the dependency counters and dependents
/// live in the graph's dense arrays, the outputs in a side table. The host's
/// tag is here because every event that names the goal carries it.
#[derive(Debug)]
pub(crate) struct Goal {
    pub(crate) phase: Phase,
    /// The host's data for this goal (`gk_event.tag`), given when it was
    /// added; a goal shared by a second request for the same outputs (S9)
    /// keeps its first tag.
    pub(crate) tag: u64,
    /// Index into the outputs table, or [`NONE`] for a goal without outputs.
    outputs: u32,
    pub(crate) kind: GoalKind,
    pub(crate) mode: BuildMode,
}

/// A finished goal's dependency counter: far from 0, so the decrements of
/// its remaining edges never make it look ready.
const FINISHED: u32 = u32::MAX;

/// The goals of one block of the edge log: the counting sort of one block
/// writes the cursors of 4,096 goals (16 KiB) and their slices.
const BLOCK: u32 = 4096;

/// The goals of one worker.
///
/// Dependents are kept in a compact form (CSR: one contiguous slice per
/// goal) and a log of edges added since. Adding an edge appends to the log;
/// before a walk of dependents the log is flushed: folded into the compact
/// form by a counting sort when it has grown to an eighth of it, else linked
/// into per-goal lists of new edges, so that each edge moves O(1) times on
/// average, whatever the order of additions and walks. The log keeps the
/// edges of each block of [`BLOCK`] consecutive goals apart, so that the
/// counting sort writes one block's slices at a time, which stay in the
/// caches (from one log, it wrote at random: at a million goals, five
/// cache misses a goal in a 2 MB cache, cachegrind). Finishing a goal
/// reads its slice and the dense dependency counters of its dependents,
/// not their records.
#[derive(Default)]
pub(crate) struct Graph {
    goals: Vec<Goal>,
    /// Unfinished dependencies per goal, with [`FINISHED`] once finished.
    pending: Vec<u32>,
    /// One bit per goal, set when it finishes: a dense copy of what
    /// `pending` says, which adding edges reads for goals anywhere in the
    /// graph (12.5 KiB per 100,000 goals: it stays in the caches).
    done: Vec<u64>,
    /// Goal `i`'s compacted dependents are `csr[csr_start[i]..csr_start[i + 1]]`
    /// (goals added after the last compaction have none there).
    csr_start: Vec<u32>,
    csr: Vec<u32>,
    /// Edges added since the last flush, `(from, to)`, in the order added,
    /// in one list per block of [`BLOCK`] goals `from` (its dependencies).
    log: Vec<Vec<(u32, u32)>>,
    /// How many edges `log` holds.
    logged: usize,
    /// Lists of new edges, `(from, to)` in the order added: the head of
    /// each goal's list (its newest edge), and each edge's next one.
    extra_head: Vec<u32>,
    extra: Vec<(u32, u32)>,
    extra_next: Vec<u32>,
    outputs: Vec<Box<[StorePath]>>,
    /// Output path -> the build or substitute goal that locks it.
    by_path: HashMap<StorePath, u32>,
    /// Goals per state, kept by [`Graph::set_phase`] and the counters.
    counts: [u64; GoalState::COUNT],
}

impl Graph {
    /// Adds a goal in state `Ready` (no dependencies yet, not queued),
    /// taking its `outputs`; returns its index, which the caller has
    /// checked is below [`NONE`].
    #[inline]
    pub(crate) fn push(
        &mut self,
        kind: GoalKind,
        mode: BuildMode,
        outputs: &mut Vec<StorePath>,
        tag: u64,
    ) -> u32 {
        let index = self.goals.len() as u32;
        debug_assert!(index < NONE);
        let outputs = if outputs.is_empty() {
            NONE
        } else {
            if kind != GoalKind::Plain {
                for p in outputs.iter() {
                    self.by_path.insert(p.clone(), index);
                }
            }
            self.outputs
                .push(std::mem::take(outputs).into_boxed_slice());
            (self.outputs.len() - 1) as u32
        };
        self.goals.push(Goal {
            phase: Phase::Ready,
            tag,
            outputs,
            kind,
            mode,
        });
        self.pending.push(0);
        if index.is_multiple_of(64) {
            self.done.push(0);
        }
        self.counts[GoalState::Ready as usize] += 1;
        index
    }

    /// Makes room for `goals` more goals and `edges` more edges.
    pub(crate) fn reserve(&mut self, goals: usize, edges: usize) {
        self.goals.reserve(goals);
        self.pending.reserve(goals);
        if edges > 0 {
            // Room in each block for its share of the edges, as if even.
            let blocks = (self.goals.len() + goals).div_ceil(BLOCK as usize);
            self.add_blocks(blocks.max(self.log.len()).max(1));
            let share = edges / self.log.len();
            self.log.iter_mut().for_each(|b| b.reserve(share));
        }
    }

    /// Goal `i`.
    #[inline]
    pub(crate) fn goal(&self, i: u32) -> &Goal {
        &self.goals[i as usize]
    }

    /// Goal `i` is requested again in a stronger `mode` before it started.
    pub(crate) fn set_mode(&mut self, i: u32, mode: BuildMode) {
        self.goals[i as usize].mode = mode;
    }

    /// The goal that locks `path`, if any.
    pub(crate) fn goal_of_path(&self, path: &StorePath) -> Option<u32> {
        self.by_path.get(path).copied()
    }

    /// The outputs of goal `i`, sorted.
    pub(crate) fn outputs(&self, i: u32) -> &[StorePath] {
        match self.goals[i as usize].outputs {
            NONE => &[],
            o => &self.outputs[o as usize],
        }
    }

    /// Goal `i` as messages name it (see [`GoalName`]).
    pub(crate) fn name(&self, i: u32) -> GoalName<'_> {
        GoalName {
            index: i,
            first_output: self.outputs(i).first(),
        }
    }

    /// Records that `to` depends on `from`, unfinished: an edge (visible to
    /// walks after the next flush) and one more pending dependency of `to`,
    /// which must be ready or waiting for dependencies.
    #[inline(always)]
    pub(crate) fn add_edge(&mut self, from: u32, to: u32) {
        let block = (from / BLOCK) as usize;
        if block >= self.log.len() {
            self.add_blocks(block + 1);
        }
        self.log[block].push((from, to));
        self.logged += 1;
        let p = &mut self.pending[to as usize];
        *p += 1;
        if *p > 1 {
            return;
        }
        // Ready (its record says Ready, or WaitingDeps after its last
        // dependency finished). Neither owns anything.
        let rec = &mut self.goals[to as usize].phase;
        if matches!(rec, Phase::Ready) {
            *rec = Phase::WaitingDeps;
        }
        self.counts[GoalState::Ready as usize] -= 1;
        self.counts[GoalState::WaitingDeps as usize] += 1;
    }

    /// Makes the log `blocks` blocks long, each new block with room for
    /// four dependents a goal (so that a block seldom grows, and copies,
    /// while edges are added: memory not written to stays virtual).
    #[cold]
    fn add_blocks(&mut self, blocks: usize) {
        let room = 4 * BLOCK as usize;
        self.log.resize_with(blocks, || Vec::with_capacity(room));
    }

    /// Makes every edge visible to [`Graph::dependents`]: folds them into
    /// the compact form when the new ones have grown to an eighth of it,
    /// else links the logged ones into per-goal lists of new edges.
    fn flush(&mut self) {
        if (self.logged + self.extra.len()) * 8 >= self.csr.len() + self.goals.len() + 64 {
            return self.compact();
        }
        self.extra_head.resize(self.goals.len(), NONE);
        for (from, to) in self.log.iter_mut().flat_map(|b| b.drain(..)) {
            let head = &mut self.extra_head[from as usize];
            self.extra_next
                .push(std::mem::replace(head, self.extra.len() as u32));
            self.extra.push((from, to));
        }
        self.logged = 0;
    }

    /// Folds the linked edges and the log into the compact form, by a
    /// counting sort: each goal's old slice first, then its new edges in
    /// the order they were added (the order in which a finishing goal
    /// wakes its dependents).
    fn compact(&mut self) {
        let n = self.goals.len();
        // start[i + 1]: first the number of dependents of goal i, then
        // (prefix sums) where slice i + 1 starts.
        let mut start = vec![0u32; n + 1];
        for (i, w) in self.csr_start.windows(2).enumerate() {
            start[i + 1] = w[1] - w[0];
        }
        for new in std::iter::once(&self.extra).chain(&self.log) {
            new.iter().for_each(|&(f, _)| start[f as usize + 1] += 1);
        }
        let mut sum = 0;
        for s in start.iter_mut() {
            sum += *s;
            *s = sum;
        }
        // start[i] serves as goal i's cursor while the slices are written:
        // its old slice, then its new edges.
        let mut csr = vec![0u32; start[n] as usize];
        for (i, w) in self.csr_start.windows(2).enumerate() {
            let (at, old) = (start[i] as usize, &self.csr[w[0] as usize..w[1] as usize]);
            csr[at..at + old.len()].copy_from_slice(old);
            start[i] += old.len() as u32;
        }
        for new in std::iter::once(&self.extra).chain(&self.log) {
            for &(f, t) in new.iter() {
                csr[start[f as usize] as usize] = t;
                start[f as usize] += 1;
            }
        }
        // Each cursor now stands where the next slice starts.
        start.copy_within(0..n, 1);
        start[0] = 0;
        self.log.iter_mut().for_each(Vec::clear);
        self.logged = 0;
        self.extra = Vec::new();
        self.extra_next = Vec::new();
        self.extra_head = Vec::new();
        self.csr = csr;
        self.csr_start = start;
    }

    /// Hands `f` goal `i`'s dependents, in the order their edges were added
    /// (the log is flushed first, so that every edge is seen): after a
    /// `success` of `i`, each one whose last pending dependency it was, now
    /// ready; otherwise each one that has not finished.
    #[inline]
    pub(crate) fn dependents(&mut self, i: u32, success: bool, mut f: impl FnMut(u32)) {
        if self.logged != 0 {
            self.flush();
        }
        let i = i as usize;
        let old = match self.csr_start.get(i..i + 2) {
            Some(&[a, b]) => &self.csr[a as usize..b as usize],
            _ => &[],
        };
        let (mut old, mut e) = (old.iter(), self.extra_head.get(i).copied().unwrap_or(NONE));
        loop {
            let d = match old.next() {
                Some(&d) => d,
                None => match self.extra.get(e as usize) {
                    Some(&(_, to)) => {
                        e = self.extra_next[e as usize];
                        to
                    }
                    None => return,
                },
            };
            if !success {
                if !bit(&self.done, d) {
                    f(d);
                }
                continue;
            }
            // A finished goal's counter is far from 0: it never looks ready.
            let p = &mut self.pending[d as usize];
            *p -= 1;
            if *p == 0 {
                self.counts[GoalState::WaitingDeps as usize] -= 1;
                self.counts[GoalState::Ready as usize] += 1;
                f(d);
            }
        }
    }

    /// Replaces goal `i`'s state value, keeping the counters right, and
    /// returns the old one (with whatever it owned).
    #[inline(always)]
    pub(crate) fn set_phase(&mut self, i: u32, phase: Phase) -> Phase {
        let new = phase.state();
        let old_state = self.state(i);
        let old = std::mem::replace(&mut self.goals[i as usize].phase, phase);
        self.counts[old_state as usize] -= 1;
        self.counts[new as usize] += 1;
        if new == GoalState::Finished {
            // Decrements from late edges can never make a finished goal "ready".
            self.pending[i as usize] = FINISHED;
            self.done[i as usize / 64] |= 1 << (i % 64);
        }
        old
    }

    /// Goal `i`'s state. A goal whose last dependency finished is *ready*
    /// although its record still says "waiting for dependencies": waking it
    /// only touches the dense counter array, not the goal record; the record
    /// is updated when the goal is taken from the queue.
    pub(crate) fn state(&self, i: u32) -> GoalState {
        match self.goals[i as usize].phase {
            Phase::WaitingDeps if self.pending[i as usize] == 0 => GoalState::Ready,
            ref p => p.state(),
        }
    }

    /// `true` once goal `i` has finished (from the dense bitset, not the
    /// goal's record).
    #[inline]
    pub(crate) fn is_finished(&self, i: u32) -> bool {
        bit(&self.done, i)
    }

    /// Goals in `state`.
    pub(crate) fn count(&self, state: GoalState) -> u64 {
        self.counts[state as usize]
    }

    /// Number of goals.
    pub(crate) fn len(&self) -> usize {
        self.goals.len()
    }

    /// Number of goals that have not finished.
    pub(crate) fn unfinished(&self) -> u64 {
        self.goals.len() as u64 - self.count(GoalState::Finished)
    }
}

/// Bit `i` of `set`.
fn bit(set: &[u64], i: u32) -> bool {
    set[i as usize / 64] & (1 << (i % 64)) != 0
}

/// How messages name a goal: its index in the worker and its first output's
/// file name, with a store hash elided (`goal 3 (…-glibc-2.39)`); a goal
/// without outputs is just `goal 3`. Formatting allocates nothing until the
/// message is written.
pub(crate) struct GoalName<'a> {
    index: u32,
    first_output: Option<&'a StorePath>,
}

impl std::fmt::Display for GoalName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "goal {}", self.index)?;
        if let Some(p) = self.first_output {
            let base = p
                .as_path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            // `abc…xyz-glibc-2.39` -> `…-glibc-2.39` when the part before
            // the first `-` looks like a store hash (at least 16 letters
            // and digits).
            match base.split_once('-') {
                Some((hash, rest))
                    if hash.len() >= 16
                        && !rest.is_empty()
                        && hash.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                {
                    write!(f, " (…-{rest})")?
                }
                _ => write!(f, " ({base})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_records_stay_compact() {
        assert!(std::mem::size_of::<Phase>() <= 16);
        assert!(std::mem::size_of::<Goal>() <= 32);
    }

    fn deps(g: &mut Graph, i: u32) -> Vec<u32> {
        let mut v = Vec::new();
        g.dependents(i, false, |d| v.push(d));
        v
    }

    fn plain(g: &mut Graph) -> u32 {
        g.push(GoalKind::Plain, BuildMode::Normal, &mut Vec::new(), 0)
    }

    /// Dependents survive compactions and later additions, keep the order
    /// in which their edges were added (the order in which a finishing goal
    /// wakes them), and walks between additions see every edge, whether it
    /// was folded into the compact form or linked.
    #[test]
    fn dependents_survive_compaction_and_later_additions() {
        let mut g = Graph::default();
        for _ in 0..200 {
            plain(&mut g);
        }
        for i in 1..200 {
            g.add_edge(0, i);
            if i > 1 {
                g.add_edge(i - 1, i);
            }
        }
        assert_eq!(deps(&mut g, 0), (1..200).collect::<Vec<u32>>());
        assert!(g.extra.is_empty() && g.logged == 0, "compacted");
        plain(&mut g);
        g.add_edge(0, 200);
        g.add_edge(200, 5);
        assert_eq!(deps(&mut g, 200), vec![5]);
        assert!(!g.extra.is_empty(), "two edges are linked, not compacted");
        assert_eq!(deps(&mut g, 0), (1..=200).collect::<Vec<u32>>());
        assert_eq!(deps(&mut g, 3), vec![4]);
        assert_eq!(deps(&mut g, 199), Vec::<u32>::new());
        for _ in 0..100 {
            g.add_edge(7, 9);
        }
        assert_eq!(deps(&mut g, 7).len(), 101);
        assert_eq!(deps(&mut g, 0), (1..=200).collect::<Vec<u32>>());
        assert_eq!(deps(&mut g, 200), vec![5]);
    }

    /// Random additions and walks against a plain model, across flushes
    /// that each fold or link, with edges in several blocks of the log, and
    /// room reserved ahead for some of them.
    #[test]
    fn every_edge_is_walked_in_the_order_added() {
        let (n, rounds, per_goal) = if cfg!(miri) {
            (BLOCK + 300, 3, 1)
        } else {
            (20_000, 6, 3)
        };
        let mut g = Graph::default();
        let mut model: Vec<Vec<u32>> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |m: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as u32
        };
        for round in 0..rounds {
            let goals = n / rounds * (round + 1);
            while g.len() < goals as usize {
                plain(&mut g);
                model.push(Vec::new());
            }
            // Big batches fold into the compact form, small ones are linked.
            let edges = if round % 2 == 0 { per_goal * n } else { 20 };
            if round == 2 {
                g.reserve(0, edges as usize);
            }
            for _ in 0..edges {
                let (f, t) = (rnd(goals), rnd(goals));
                g.add_edge(f, t);
                model[f as usize].push(t);
            }
            for i in (0..goals).step_by(7) {
                assert_eq!(
                    deps(&mut g, i),
                    model[i as usize],
                    "round {round}, goal {i}"
                );
            }
        }
    }
}
