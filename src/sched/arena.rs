//! The goal arena: goals in a flat vector indexed by `u32`, dependents in
//! a compact (CSR) form with an append-only log of new edges, outputs in a
//! side table, and the output-path index used to share one goal between
//! requests for the same outputs (S9).

use std::collections::HashMap;

use crate::lock::StorePath;

use super::goal::{BuildMode, Goal, GoalKind, GoalState, Outcome, Phase, NONE};

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
/// Layout for the hot paths. Adding an edge appends `(from, to)` to a log
/// and touches nothing else at random: a host adds a goal's dependencies
/// together, but they point anywhere in the arena. Before any walk of
/// dependents the log is flushed ([`Arena::flush`]): folded into the compact
/// form (CSR: one contiguous slice of dependents per goal) when it has grown
/// large, else linked into per-goal overflow lists; either way each edge is
/// moved O(1) times on average. A goal finishing touches its CSR slice and
/// the dense dependency counters of its dependents, not their records.
/// Whether a goal has finished is one bit in a dense bitset (128 KiB per
/// million goals), so adding edges to many goals stays in cache.
#[derive(Default)]
pub(crate) struct Arena {
    pub(crate) goals: Vec<Goal>,
    /// Unfinished dependencies per goal ([`DONE_PENDING`] once finished).
    pub(crate) pending: Vec<u32>,
    /// One bit per goal, set when it finishes.
    done: Vec<u64>,
    /// Compacted dependents: goal `i`'s are `csr[csr_start[i]..csr_start[i + 1]]`
    /// (goals added after the last compaction have none there).
    csr_start: Vec<u32>,
    csr: Vec<u32>,
    /// Edges added since the last flush, `(from, to)`.
    log: EdgeLog,
    /// Overflow lists: head per goal (for the goals that had one when it
    /// was last grown), links in `extra`.
    extra_head: Vec<u32>,
    extra: Vec<Edge>,
    outputs: Vec<Box<[StorePath]>>,
    /// Output path -> the build or substitute goal that locks it.
    by_path: HashMap<StorePath, u32>,
    /// Goals per state, maintained by [`Arena::set_phase`].
    counts: [u64; GoalState::COUNT],
}

const EMPTY: &[StorePath] = &[];

/// Grows a per-goal or per-edge array fourfold (from at least 256). Each
/// regrowth copies the array into fresh memory; growing by four instead of
/// two copies a third of the bytes instead of all of them, and capacity that
/// is never used is never touched (the kernel maps pages on first write).
fn grow<T>(v: &mut Vec<T>) {
    let want = (v.capacity() * 4).max(256);
    v.reserve_exact(want - v.len());
}

/// Edges added since the last flush, in chunks that are never moved: a
/// growing vector would copy itself into fresh memory at each regrowth.
/// Chunks grow fourfold from 256 edges to 64 Ki edges (512 KiB).
#[derive(Default)]
struct EdgeLog {
    /// Full chunks, oldest first.
    full: Vec<Vec<(u32, u32)>>,
    /// The chunk being filled.
    cur: Vec<(u32, u32)>,
    /// Edges in `full`.
    full_len: usize,
}

impl EdgeLog {
    const MAX_CHUNK: usize = 1 << 16;

    #[inline(always)]
    fn push(&mut self, e: (u32, u32)) {
        if self.cur.len() == self.cur.capacity() {
            self.next_chunk(0);
        }
        self.cur.push(e);
    }

    /// Retires the current chunk (if it holds anything) and starts one with
    /// room for at least `room` edges.
    #[cold]
    #[inline(never)]
    fn next_chunk(&mut self, room: usize) {
        let cap = (self.cur.capacity() * 4)
            .clamp(256, Self::MAX_CHUNK)
            .max(room);
        let old = std::mem::replace(&mut self.cur, Vec::with_capacity(cap));
        if !old.is_empty() {
            self.full_len += old.len();
            self.full.push(old);
        }
    }

    /// Makes room for `n` more edges without a regrowth.
    fn reserve(&mut self, n: usize) {
        if self.cur.capacity() - self.cur.len() < n {
            self.next_chunk(n);
        }
    }

    fn len(&self) -> usize {
        self.full_len + self.cur.len()
    }

    fn is_empty(&self) -> bool {
        self.cur.is_empty() && self.full_len == 0
    }

    /// The chunks, oldest first.
    fn chunks(&self) -> impl DoubleEndedIterator<Item = &[(u32, u32)]> + '_ {
        self.full
            .iter()
            .map(Vec::as_slice)
            .chain(std::iter::once(self.cur.as_slice()))
    }

    /// The chunks, oldest first, to be changed in place.
    fn chunks_mut(&mut self) -> impl Iterator<Item = &mut [(u32, u32)]> + '_ {
        self.full
            .iter_mut()
            .map(Vec::as_mut_slice)
            .chain(std::iter::once(self.cur.as_mut_slice()))
    }

    /// The edges, oldest first.
    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.chunks().flat_map(|c| c.iter().copied())
    }
}

/// The dependency counter of a finished goal: far from 0, so the
/// decrements of its remaining edges never make it look ready.
const DONE_PENDING: u32 = 1 << 31;

/// A hint to load the cache line holding `p` (no effect on the program's
/// meaning; prefetching never faults, whatever the address).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`Arena::finish_running_plain`] was called on a goal that was not a
/// running plain goal: a bug. The state value is dropped (releasing
/// whatever it owned) rather than leaked.
#[cold]
#[inline(never)]
fn unreachable_finish(old: Phase) {
    debug_assert!(false, "a plain goal finished from state {old:?}");
    drop(old);
}

/// [`Arena::start`] was called on a goal that was not ready: a bug. The
/// state value is dropped (releasing whatever it owned) rather than leaked.
#[cold]
#[inline(never)]
fn unreachable_state(old: Phase) {
    debug_assert!(false, "a goal started from state {old:?}");
    drop(old);
}

impl Arena {
    /// Adds a goal in state `Ready` (no dependencies yet); returns its index.
    #[inline]
    pub(crate) fn push(
        &mut self,
        kind: GoalKind,
        mode: BuildMode,
        outputs: Vec<StorePath>,
        tag: u64,
    ) -> Option<u32> {
        let index = u32::try_from(self.goals.len()).ok().filter(|&i| i < NONE)?;
        let out = if outputs.is_empty() {
            NONE
        } else {
            self.push_outputs(kind, index, outputs)
        };
        if self.goals.len() == self.goals.capacity() {
            self.grow_goals();
        }
        self.goals.push(Goal {
            phase: Phase::Ready,
            tag,
            outputs: out,
            kind,
            mode,
        });
        self.pending.push(0);
        if index % 64 == 0 {
            self.done.push(0);
        }
        self.counts[GoalState::Ready as usize] += 1;
        Some(index)
    }

    /// Makes room for `goals` more goals and `edges` more edges.
    pub(crate) fn reserve(&mut self, goals: usize, edges: usize) {
        self.goals.reserve(goals);
        self.pending.reserve(goals);
        self.done.reserve(goals / 64 + 1);
        self.log.reserve(edges);
    }

    /// Makes room for more goals in the per-goal arrays, together.
    #[cold]
    #[inline(never)]
    fn grow_goals(&mut self) {
        grow(&mut self.goals);
        let cap = self.goals.capacity();
        self.pending.reserve(cap - self.pending.len());
        self.done
            .reserve((cap / 64 + 1).saturating_sub(self.done.len()));
    }

    /// Records goal `index`'s outputs (and, for a goal that locks them, the
    /// path index); returns their place in the outputs table.
    #[inline(never)]
    fn push_outputs(&mut self, kind: GoalKind, index: u32, outputs: Vec<StorePath>) -> u32 {
        if kind != GoalKind::Plain {
            for p in &outputs {
                self.by_path.insert(p.clone(), index);
            }
        }
        self.outputs.push(outputs.into_boxed_slice());
        (self.outputs.len() - 1) as u32
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

    /// Records that `to` depends on `from` (an entry in `from`'s
    /// dependents, visible to walks after the next [`Arena::flush`]).
    #[inline(always)]
    pub(crate) fn add_edge(&mut self, from: u32, to: u32) {
        self.log.push((from, to));
    }

    /// Makes every edge visible to [`Arena::dependents`]. When the new
    /// edges (the log and the overflow lists) have grown to an eighth of the
    /// compact form and the goals, they are folded into it; otherwise the
    /// logged edges are linked into the overflow lists. Each edge is thus
    /// moved O(1) times on average.
    #[inline(always)]
    pub(crate) fn flush(&mut self) {
        if !self.log.is_empty() {
            self.flush_log();
        }
    }

    #[inline(never)]
    fn flush_log(&mut self) {
        if (self.log.len() + self.extra.len()) * 8 >= self.csr.len() + self.goals.len() + 64 {
            self.compact();
            return;
        }
        if self.extra_head.len() < self.goals.len() {
            self.extra_head.resize(self.goals.len(), NONE);
        }
        let log = std::mem::take(&mut self.log);
        for (from, to) in log.iter() {
            let head = &mut self.extra_head[from as usize];
            self.extra.push(Edge {
                from,
                to,
                next: *head,
            });
            *head = (self.extra.len() - 1) as u32;
        }
    }

    /// Folds the log and the overflow lists into the compact form: a
    /// counting sort by source, cache-blocked. Each piece of the new edges
    /// (a log chunk, at most [`EdgeLog::MAX_CHUNK`] edges) is first sorted
    /// in place by ranges of sources (at most 256 ranges; through one
    /// scratch buffer of a chunk's size, so that no array of the size of all
    /// the edges is allocated and faulted in), then each range is sorted
    /// into its final place with counters that stay in cache, reading its
    /// segment of every piece. No pass makes random accesses over the whole
    /// arena. Up to 2^18 goals, a plain counting sort
    /// ([`Arena::compact_small`]).
    #[inline(never)]
    fn compact(&mut self) {
        let n = self.goals.len();
        // The new edges in the order they were added: the overflow lists'
        // (linked earlier), then the log's.
        let mut log = std::mem::take(&mut self.log);
        let extra = std::mem::take(&mut self.extra);
        let mut linked: Vec<(u32, u32)> = if extra.is_empty() {
            Vec::new()
        } else {
            self.extra_head = Vec::new();
            extra.iter().map(|e| (e.from, e.to)).collect()
        };
        drop(extra);
        let total = linked.len() + log.len();
        let bits = usize::BITS - n.max(1).leading_zeros();
        if bits <= 18 {
            let mut parts: Vec<&[(u32, u32)]> = vec![&linked];
            parts.extend(log.chunks());
            return self.compact_small(&parts, total);
        }
        let shift = bits - 8;
        let ranges = (n >> shift) + 1;
        let stride = ranges + 1;
        let mut pieces: Vec<&mut [(u32, u32)]> = linked
            .chunks_mut(EdgeLog::MAX_CHUNK)
            .chain(
                log.chunks_mut()
                    .flat_map(|c| c.chunks_mut(EdgeLog::MAX_CHUNK)),
            )
            .collect();
        // Pass 1: each piece sorted by range, stably; seg[p * stride + r] is
        // where range r starts in piece p.
        let mut seg = vec![0u32; pieces.len() * stride];
        let biggest = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut tmp = vec![(0u32, 0u32); biggest];
        for (p, piece) in pieces.iter_mut().enumerate() {
            let cnt = &mut seg[p * stride..(p + 1) * stride];
            for &(f, _) in piece.iter() {
                cnt[(f as usize >> shift) + 1] += 1;
            }
            for r in 0..ranges {
                cnt[r + 1] += cnt[r];
            }
            let mut fill = cnt[..ranges].to_vec();
            for &e in piece.iter() {
                let c = &mut fill[e.0 as usize >> shift];
                tmp[*c as usize] = e;
                *c += 1;
            }
            piece.copy_from_slice(&tmp[..piece.len()]);
        }
        drop(tmp);
        let segment =
            |p: usize, r: usize| (seg[p * stride + r] as usize)..(seg[p * stride + r + 1] as usize);
        // Pass 2: per range, a counting sort into the final array, with the
        // old compact slices copied in front of each goal's new edges.
        let mut csr = vec![0u32; self.csr.len() + total];
        let mut start = vec![0u32; n + 1];
        let mut local = vec![0u32; 1usize << shift];
        let mut at = 0u32;
        for r in 0..ranges {
            let lo = r << shift;
            let hi = ((r + 1) << shift).min(n);
            if lo >= hi {
                break;
            }
            let local = &mut local[..hi - lo];
            if lo + 1 < self.csr_start.len() {
                for (k, l) in local.iter_mut().enumerate() {
                    *l = self.old_len(lo + k);
                }
            } else {
                local.fill(0);
            }
            for (p, piece) in pieces.iter().enumerate() {
                for &(f, _) in &piece[segment(p, r)] {
                    local[f as usize - lo] += 1;
                }
            }
            // local[k] becomes the fill cursor of goal lo + k.
            for (k, l) in local.iter_mut().enumerate() {
                let len = *l;
                start[lo + k] = at;
                *l = at;
                at += len;
            }
            for (k, l) in local.iter_mut().enumerate() {
                let i = lo + k;
                if i + 1 >= self.csr_start.len() {
                    break; // goals added since the last compaction had none
                }
                let (a, z) = (self.csr_start[i] as usize, self.csr_start[i + 1] as usize);
                let f = *l as usize;
                csr[f..f + (z - a)].copy_from_slice(&self.csr[a..z]);
                *l += (z - a) as u32;
            }
            for (p, piece) in pieces.iter().enumerate() {
                for &(f, t) in &piece[segment(p, r)] {
                    let c = &mut local[f as usize - lo];
                    csr[*c as usize] = t;
                    *c += 1;
                }
            }
        }
        start[n] = at;
        self.csr = csr;
        self.csr_start = start;
    }

    /// [`Arena::compact`] for up to 2^18 goals (the counters, 1 MiB at
    /// most, stay in L2): a plain counting sort, whose one array of counters
    /// becomes the offsets. The new edges are scattered backwards from the
    /// end of each goal's slice (in reverse order, so they keep their
    /// order), then the old slice is copied in front of them.
    fn compact_small(&mut self, new: &[&[(u32, u32)]], total_new: usize) {
        let n = self.goals.len();
        // ends[i + 1]: first the number of dependents of goal i, then (after
        // the prefix sum) the end of its slice, then (after the scatter) its
        // start; shifted down by one at the end, it is `csr_start`.
        let mut ends = vec![0u32; n + 1];
        for i in 0..n {
            ends[i + 1] = self.old_len(i);
        }
        for part in new {
            for &(f, _) in *part {
                ends[f as usize + 1] += 1;
            }
        }
        for i in 0..n {
            ends[i + 1] += ends[i];
        }
        let total = ends[n];
        debug_assert_eq!(total as usize, self.csr.len() + total_new);
        let mut csr = vec![0u32; total as usize];
        for part in new.iter().rev() {
            for &(f, t) in part.iter().rev() {
                let c = &mut ends[f as usize + 1];
                *c -= 1;
                csr[*c as usize] = t;
            }
        }
        for i in 0..n.min(self.csr_start.len().saturating_sub(1)) {
            let (a, z) = (self.csr_start[i] as usize, self.csr_start[i + 1] as usize);
            let c = &mut ends[i + 1];
            *c -= (z - a) as u32;
            csr[*c as usize..*c as usize + (z - a)].copy_from_slice(&self.csr[a..z]);
        }
        ends.copy_within(1.., 0);
        ends[n] = total;
        self.csr = csr;
        self.csr_start = ends;
    }

    fn old_len(&self, i: usize) -> u32 {
        if i + 1 < self.csr_start.len() {
            self.csr_start[i + 1] - self.csr_start[i]
        } else {
            0
        }
    }

    /// A cursor over goal `i`'s dependents (use [`Arena::next_dependent`]);
    /// flushes the log first, so that every edge is seen.
    #[inline]
    pub(crate) fn dependents(&mut self, i: u32) -> DepCursor {
        self.flush();
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
                self.extra_head.get(i).copied().unwrap_or(NONE)
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
            self.done[i as usize / 64] |= 1 << (i % 64);
        }
        old
    }

    /// A running plain goal (its state value, `Running(Exec::Plain)`, owns
    /// nothing) ends with `outcome`: [`Arena::set_phase`] for that one
    /// case, with nothing to drop and its counters known. Any other state
    /// (a caller's bug) takes the general way, which hands the old state
    /// value to [`unreachable_finish`] to be dropped (released).
    #[inline(always)]
    pub(crate) fn finish_running_plain(&mut self, i: u32, outcome: Outcome) {
        let p = &mut self.goals[i as usize].phase;
        if !matches!(p, Phase::Running(super::goal::Exec::Plain)) {
            let old = self.set_phase(i, Phase::Done(outcome));
            return unreachable_finish(old);
        }
        *p = Phase::Done(outcome);
        self.counts[GoalState::Running as usize] -= 1;
        self.counts[GoalState::Finished as usize] += 1;
        self.pending[i as usize] = DONE_PENDING;
        self.done[i as usize / 64] |= 1 << (i % 64);
    }

    /// Software pipelining of the drain, where most accesses are random
    /// at a million goals. `ahead(k)` is the goal the host will be given
    /// `k + 1` calls from now (the ready queue's `k`-th entry). Each report
    /// asks for what later calls will read, one stage per distance, each
    /// stage using what an earlier report asked for: for the goal 4 ahead
    /// its record, counter and compact-form offsets; for the goal 2 ahead
    /// its slice of dependents; for the next goal its dependents' counters
    /// (decremented when it finishes). Hints only: nothing is changed, and
    /// an index out of range is simply not prefetched.
    #[inline(always)]
    pub(crate) fn prefetch_ahead(&self, ahead: impl Fn(usize) -> Option<u32>) {
        if let Some(j) = ahead(3) {
            let j = j as usize;
            prefetch(self.goals.as_ptr().wrapping_add(j));
            prefetch(self.pending.as_ptr().wrapping_add(j));
            prefetch(self.csr_start.as_ptr().wrapping_add(j));
        }
        if let Some(&a) = ahead(1).and_then(|j| self.csr_start.get(j as usize)) {
            prefetch(self.csr.as_ptr().wrapping_add(a as usize));
        }
        if let Some(j) = ahead(0) {
            self.prefetch_dependents(j);
        }
    }

    /// The counters of goal `i`'s dependents (a hint, as above).
    #[inline(always)]
    pub(crate) fn prefetch_dependents(&self, i: u32) {
        let i = i as usize;
        if i + 1 < self.csr_start.len() {
            let (a, z) = (self.csr_start[i] as usize, self.csr_start[i + 1] as usize);
            for &d in self.csr.get(a..z).unwrap_or_default() {
                prefetch(self.pending.as_ptr().wrapping_add(d as usize));
            }
        }
    }

    /// A ready goal (its record says ready, or waiting for dependencies
    /// with none left: see [`Arena::state`]) starts running with `exec`.
    /// Neither of those states owns anything.
    #[inline(always)]
    pub(crate) fn start(&mut self, i: u32, exec: super::goal::Exec) {
        debug_assert_eq!(self.state(i), GoalState::Ready);
        let old = std::mem::replace(&mut self.goals[i as usize].phase, Phase::Running(exec));
        if !matches!(old, Phase::Ready | Phase::WaitingDeps) {
            unreachable_state(old);
        }
        self.counts[GoalState::Ready as usize] -= 1;
        self.counts[GoalState::Running as usize] += 1;
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

    /// `true` once goal `i` has finished. Reads the dense bitset, not the
    /// goal's record (adding edges to many goals stays in cache).
    #[inline]
    pub(crate) fn is_finished(&self, i: u32) -> bool {
        self.done[i as usize / 64] & (1 << (i % 64)) != 0
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

    /// A goal just pushed (ready, no dependency counted, not queued) waits
    /// for `n > 0` dependencies: one step instead of `n` [`Arena::add_pending`].
    #[inline]
    pub(crate) fn set_new_pending(&mut self, g: u32, n: u32) {
        debug_assert!(n > 0 && self.pending[g as usize] == 0);
        debug_assert!(matches!(self.goals[g as usize].phase, Phase::Ready));
        self.pending[g as usize] = n;
        // Ready owns nothing: overwriting it drops nothing.
        self.goals[g as usize].phase = Phase::WaitingDeps;
        self.counts[GoalState::Ready as usize] -= 1;
        self.counts[GoalState::WaitingDeps as usize] += 1;
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

    fn deps(a: &mut Arena, i: u32) -> Vec<u32> {
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
            a.push(GoalKind::Plain, BuildMode::Normal, Vec::new(), 0);
        }
        for i in 1..200 {
            a.add_edge(0, i);
            if i > 1 {
                a.add_edge(i - 1, i);
            }
        }
        a.flush();
        assert!(a.extra.is_empty() && a.log.is_empty(), "compacted");
        a.push(GoalKind::Plain, BuildMode::Normal, Vec::new(), 0);
        a.add_edge(0, 200);
        a.add_edge(200, 5);
        assert_eq!(deps(&mut a, 0).len(), 200);
        assert_eq!(deps(&mut a, 200), vec![5]);
        assert_eq!(deps(&mut a, 3), vec![4]);
        assert_eq!(deps(&mut a, 199), Vec::<u32>::new());
        for _ in 0..100 {
            a.add_edge(7, 9);
        }
        a.flush();
        assert_eq!(deps(&mut a, 7).len(), 101);
        assert_eq!(deps(&mut a, 0).len(), 200);
        assert_eq!(deps(&mut a, 200), vec![5]);
        // Dependents keep the order in which their edges were added (the
        // order in which a finishing goal wakes them), across compactions.
        let mut c = a.dependents(0);
        let mut order = Vec::new();
        while let Some(d) = a.next_dependent(&mut c) {
            order.push(d);
        }
        assert_eq!(order, (1..=200).collect::<Vec<u32>>());
    }

    /// The cache-blocked compaction (more than 2^18 goals: several source
    /// ranges) and the overflow lists, against a plain model, across
    /// several flushes that each fold or link.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "2^18 goals and 650,000 edges: hours under Miri; safe code only"
    )]
    fn blocked_compaction_keeps_every_edge() {
        let n = (1u32 << 18) + 5000;
        let mut a = Arena::default();
        let mut model: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |m: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as u32
        };
        let mut added = 0;
        for round in 0..4 {
            let goals = [n / 2, n / 2 + 7, n / 2 + 7, n][round];
            while (a.len() as u32) < goals {
                a.push(GoalKind::Plain, BuildMode::Normal, Vec::new(), 0);
            }
            // Big batches fold into the compact form, small ones are linked.
            let edges = [200_000, 300_000, 50, 100_000][round];
            if round == 3 {
                // One log chunk bigger than a sorting piece (the blocked
                // compaction, with the edges linked in round 2).
                a.reserve(0, edges);
            }
            for _ in 0..edges {
                let (f, t) = (rnd(goals), rnd(goals));
                a.add_edge(f, t);
                model[f as usize].push(t);
                added += 1;
            }
            a.flush();
            assert_eq!(round == 2, !a.extra.is_empty(), "round {round}");
            for i in (0..goals).step_by(97).chain([0, goals - 1]) {
                let mut want = model[i as usize].clone();
                want.sort_unstable();
                assert_eq!(deps(&mut a, i), want, "round {round}, goal {i}");
            }
        }
        assert_eq!(a.csr.len(), added);
    }
}
