//! Batched calls: many goals with their outputs and dependencies in one
//! call ([`Worker::add_goals`]), up to N events ([`Worker::next_events`]),
//! many reports ([`Worker::report_many`]).
//!
//! Each validates its whole input before it changes anything: all or
//! nothing. A refused batch names its first bad element (lowest index, then
//! lowest sub-element: [`BatchError`]) and leaves the worker exactly as it
//! was: no goal, edge, event, log record or counter is added. The ledger
//! checks, once at the end of the call, every goal the call touched (G6:
//! O(touched) per batch, not per element).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::lock::{normalize_set, StorePath};

use super::goal::{BuildMode, GoalKind, Outcome, Phase, NONE};
use super::ids::GoalId;
use super::worker::{check_output_count, state_name, too_many_goals, Event, Worker};

/// One goal of a batch for [`Worker::add_goals`].
#[derive(Clone, Debug)]
pub struct NewGoal<'a> {
    kind: GoalKind,
    mode: BuildMode,
    tag: u64,
    /// Sorted and deduplicated.
    outputs: Vec<StorePath>,
    deps: &'a [GoalId],
}

impl<'a> NewGoal<'a> {
    /// A goal of `kind` producing `outputs` (normalised: sorted,
    /// deduplicated; an invalid path is an error), in normal mode, with tag
    /// 0 and no dependencies.
    pub fn new<P: AsRef<std::ffi::OsStr>>(kind: GoalKind, outputs: &[P]) -> Result<NewGoal<'a>> {
        let outputs = if outputs.is_empty() {
            Vec::new()
        } else {
            normalize_set(outputs)?
        };
        Ok(NewGoal::normalized(
            kind,
            BuildMode::Normal,
            0,
            outputs,
            &[],
        ))
    }

    /// A goal whose outputs are already normalised (sorted, deduplicated).
    pub(crate) fn normalized(
        kind: GoalKind,
        mode: BuildMode,
        tag: u64,
        outputs: Vec<StorePath>,
        deps: &'a [GoalId],
    ) -> NewGoal<'a> {
        NewGoal {
            kind,
            mode,
            tag,
            outputs,
            deps,
        }
    }

    /// The outputs, sorted and deduplicated.
    pub fn outputs(&self) -> &[StorePath] {
        &self.outputs
    }

    /// The build mode.
    pub fn mode(mut self, mode: BuildMode) -> Self {
        self.mode = mode;
        self
    }

    /// The host's tag (see [`Worker::add_goal_tagged`]).
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// The goals this one waits for: ids of goals of the worker, or
    /// [`GoalId::batch(k)`](GoalId::batch) for goal `k` of the same batch
    /// (earlier or later in it, not itself).
    pub fn deps(mut self, deps: &'a [GoalId]) -> Self {
        self.deps = deps;
        self
    }
}

/// Which part of a batch element a [`BatchError`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchField {
    /// The batch as a whole (its description, a missing array, its size).
    Batch,
    /// The goal's kind.
    Kind,
    /// The goal's build mode.
    Mode,
    /// The goal's outputs: `sub` is the output, or 0 for a rule on the
    /// whole set (a build without outputs, a substitute with several). In
    /// Rust, the output's place in [`NewGoal::outputs`] (sorted); the C
    /// layer gives its place in the caller's array.
    Output,
    /// The offsets of the outputs (C: `output_offsets[index]`).
    OutputOffsets,
    /// The goal's dependencies: `sub` is the dependency.
    Dependency,
    /// The offsets of the dependencies (C: `dep_offsets[index]`).
    DepOffsets,
    /// A report's goal.
    Goal,
    /// A report's outcome.
    Outcome,
}

impl BatchField {
    /// How messages name element `index` (and `sub`) for this field.
    fn element(self, index: usize, sub: usize) -> String {
        match self {
            BatchField::Batch => "batch".into(),
            BatchField::Kind => format!("goals[{index}].kind"),
            BatchField::Mode => format!("goals[{index}].mode"),
            BatchField::Output => format!("goals[{index}].outputs[{sub}]"),
            BatchField::OutputOffsets => format!("output_offsets[{index}]"),
            BatchField::Dependency => format!("goals[{index}].deps[{sub}]"),
            BatchField::DepOffsets => format!("dep_offsets[{index}]"),
            BatchField::Goal => format!("reports[{index}].goal"),
            BatchField::Outcome => format!("reports[{index}].outcome"),
        }
    }
}

/// Why a batch was refused: its first bad element, and the error. The
/// worker is unchanged.
#[derive(Debug)]
pub struct BatchError {
    /// The element: goal `index` of an [`Worker::add_goals`] batch, report
    /// `index` of a [`Worker::report_many`] batch (0 for [`BatchField::Batch`]).
    pub index: usize,
    /// Which output or dependency of it (0 when not applicable).
    pub sub: usize,
    /// Which part of the element.
    pub field: BatchField,
    /// What is wrong with it (its message names the element).
    pub error: Error,
    /// The goal (or report) whose check found it, for the validation order
    /// (an offset `index` belongs to goal `index - 1`).
    owner: usize,
    /// `sub` is an output's place in the goal's sorted output set (the C
    /// layer gives the caller's place instead).
    sorted_output: bool,
}

impl BatchError {
    /// An error about element `index` (`sub`) of `field`; the message is
    /// prefixed with the element's name (`goals[3].deps[1]: ...`).
    pub fn new(index: usize, sub: usize, field: BatchField, error: Error) -> BatchError {
        let error = Error::InBatch {
            element: field.element(index, sub),
            source: Box::new(error),
        };
        BatchError {
            index,
            sub,
            field,
            error,
            owner: index,
            sorted_output: false,
        }
    }

    /// The same error, whose `sub` is an output's place in the goal's
    /// sorted outputs ([`NewGoal::outputs`]).
    fn of_sorted_output(mut self) -> BatchError {
        self.sorted_output = true;
        self
    }

    /// `true` if `sub` is an output's place in the goal's sorted outputs.
    pub(crate) fn names_sorted_output(&self) -> bool {
        self.sorted_output
    }

    /// An error about offset `index` of an offsets array, found checking
    /// goal `owner` (offset `index` ends goal `index - 1`).
    pub(crate) fn offset(
        index: usize,
        owner: usize,
        field: BatchField,
        error: Error,
    ) -> BatchError {
        BatchError {
            owner,
            ..BatchError::new(index, 0, field, error)
        }
    }

    /// An error about the batch as a whole.
    pub fn whole(error: Error) -> BatchError {
        BatchError::new(0, 0, BatchField::Batch, error)
    }

    /// The order in which elements are validated: by index, then goal-level
    /// fields before dependencies, then sub-element.
    fn rank(&self) -> (usize, u8, usize) {
        let phase = match self.field {
            BatchField::Batch => 0,
            BatchField::Dependency | BatchField::DepOffsets => 2,
            _ => 1,
        };
        (self.owner, phase, self.sub)
    }

    /// The earlier of two errors, in validation order.
    pub(crate) fn first(a: Option<BatchError>, b: Option<BatchError>) -> Option<BatchError> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.rank() < a.rank() { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for BatchError {}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Error {
        e.error
    }
}

/// How a goal of a batch resolves, decided by the validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// A new goal, at this arena index.
    New,
    /// The same outputs as an existing goal (S9): that goal.
    Existing,
    /// The same outputs as an earlier goal of the batch: its goal.
    Same,
}

/// Reusable scratch memory of the batch calls (so that a batch of one does
/// not allocate).
#[derive(Default, Debug)]
pub(crate) struct BatchScratch {
    /// Per goal of the batch: the arena index it resolves to.
    index: Vec<u32>,
    /// Per goal of the batch: how.
    slot: Vec<Slot>,
    /// One bit per goal of the worker: reported in this batch (cleared
    /// again before the call returns).
    marks: Vec<u64>,
    /// The events gathered by `next_events`, checked before they are handed out.
    events: Vec<Event>,
}

/// A report for [`Worker::report_many`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// A goal that was `Run`.
    pub goal: GoalId,
    /// Built, substituted, failed or timed out.
    pub outcome: Outcome,
    /// Out: the outcome recorded (failed if a success had an output that is
    /// not valid); `None` until the batch is accepted.
    pub recorded: Option<Outcome>,
}

impl Report {
    /// A report of `outcome` for `goal`.
    pub fn new(goal: GoalId, outcome: Outcome) -> Report {
        Report {
            goal,
            outcome,
            recorded: None,
        }
    }
}

impl Worker {
    /// Adds many goals, with their outputs and dependencies, in one call,
    /// all or nothing; returns their ids, in order.
    ///
    /// Each goal is as for [`Worker::add_goal_tagged`] (the same outputs
    /// again, in the worker or earlier in the batch, give the same goal,
    /// which keeps its first tag: S9) followed by
    /// [`Worker::add_dependency`] for each of its dependencies: a goal id of
    /// this worker or [`GoalId::batch(k)`](GoalId::batch), goal `k` of this
    /// batch (all the batch's goals exist before any edge is added, so `k`
    /// may come later). A dependency that already failed ends the goal
    /// `DependencyFailed` (a `Finished` event); a cycle is reported by
    /// [`Worker::next_event`], as always.
    ///
    /// The whole batch is validated first; the first bad element (lowest
    /// index; for one goal: kind, mode, outputs, then its dependencies in
    /// order) is returned as a [`BatchError`] and nothing is changed.
    pub fn add_goals(
        &mut self,
        goals: &mut [NewGoal<'_>],
    ) -> std::result::Result<Vec<GoalId>, BatchError> {
        if let [g] = &goals[..] {
            if g.kind == GoalKind::Plain && g.outputs.is_empty() {
                if let Some(r) = self.add_one_plain_goal(g.mode, g.tag, g.deps) {
                    return r.map(|id| vec![id]).map_err(BatchError::whole);
                }
            }
        }
        let mut ids = vec![GoalId::from_raw(0); goals.len()];
        self.add_goals_into(goals, None, &mut ids)?;
        Ok(ids)
    }

    /// [`Worker::add_goals`] writing the ids into `ids` (as long as
    /// `goals`). `parse_error` is the first element the caller could not
    /// even read (the C layer's kinds, modes, offsets and paths); its goal
    /// is given as a placeholder (a plain goal without outputs or
    /// dependencies), and it is reported unless an earlier element is bad.
    pub(crate) fn add_goals_into(
        &mut self,
        goals: &mut [NewGoal<'_>],
        parse_error: Option<BatchError>,
        ids: &mut [GoalId],
    ) -> std::result::Result<(), BatchError> {
        debug_assert_eq!(goals.len(), ids.len());
        if let Err(e) = self.begin() {
            return Err(BatchError::whole(e));
        }
        let r = match self.validate_goals(goals, parse_error) {
            Err(e) => Err(e),
            Ok(new) => {
                self.commit_goals(goals, new, ids);
                Ok(())
            }
        };
        match r {
            Ok(()) => self.end(Ok(())).map_err(BatchError::whole),
            Err(e) => {
                // Nothing changed: the ledger's verdict on the call (the
                // slot counters) is checked all the same; the batch's own
                // error comes first.
                let _ = self.end(Ok(()));
                ids.iter_mut().for_each(|id| *id = GoalId::from_raw(0));
                Err(e)
            }
        }
    }

    /// The common single call of a host adding one goal at a time with its
    /// dependencies (a batch of one plain goal without outputs whose
    /// dependencies are goals of this worker): checked and added without
    /// the batch machinery. `None` if it is not that case, or if anything
    /// is amiss: the caller then goes through [`Worker::add_goals_into`],
    /// which finds the same and names the error. Nothing is changed then.
    #[inline]
    pub(crate) fn add_one_plain_goal(
        &mut self,
        mode: BuildMode,
        tag: u64,
        deps: &[GoalId],
    ) -> Option<Result<GoalId>> {
        let len = self.arena.len() as u32;
        let fine = len < NONE - 1
            && deps
                .iter()
                .all(|&d| d.worker() == self.serial && d.index() < len);
        if !fine || self.aborting {
            return None;
        }
        if let Err(e) = self.begin() {
            return Some(Err(e));
        }
        let at = match self.arena.push(GoalKind::Plain, mode, Vec::new(), tag) {
            Some(at) => at,
            None => return Some(self.end(Err(too_many_goals()))),
        };
        let mut pending = 0;
        let mut failed = false;
        for &d in deps {
            let from = d.index();
            if self.arena.is_finished(from) {
                if !self.succeeded(from) {
                    failed = true;
                    break;
                }
            } else {
                self.arena.add_edge(from, at);
                pending += 1;
            }
        }
        if failed {
            self.finish(at, Outcome::DependencyFailed, true);
        } else if pending > 0 {
            self.arena.set_new_pending(at, pending);
        } else {
            self.ready.push_back(at);
        }
        Some(self.end(Ok(self.id(at))))
    }

    /// [`Worker::add_goals`] for a batch of `n` plain goals without
    /// outputs (the C layer's common batch, read in place): goal `i` has
    /// mode `mode(i)`, tag `tag(i)` and dependencies `deps(i)`, each a goal
    /// of this worker or [`GoalId::batch(k)`](GoalId::batch). Checked in one
    /// tight pass and added as [`Worker::add_goals`] adds them, without a
    /// per-goal record of the batch. `None` if anything is amiss (a
    /// dependency that names no goal of the worker or of the batch, or the
    /// goal itself), if the worker is aborting, or if the worker has no
    /// room for `n` more goals: nothing is changed then, and the caller
    /// goes the general way, which names the error.
    pub(crate) fn add_plain_goals<'a>(
        &mut self,
        n: usize,
        mode: impl Fn(usize) -> BuildMode,
        tag: impl Fn(usize) -> u64,
        deps: impl Fn(usize) -> &'a [GoalId],
        ids: &mut [GoalId],
    ) -> Option<Result<()>> {
        let base = self.arena.len();
        if self.aborting || n == 0 || ids.len() != n || n > (NONE as usize).saturating_sub(base) {
            return None;
        }
        let (len, serial) = (base as u32, self.serial);
        let mut edges = 0;
        for i in 0..n {
            let ds = deps(i);
            edges += ds.len();
            let fine = ds.iter().all(|&d| match d.batch_index() {
                Some(k) => (k as usize) < n && k as usize != i,
                None => d.worker() == serial && d.index() < len,
            });
            if !fine {
                return None;
            }
        }
        if let Err(e) = self.begin() {
            return Some(Err(e));
        }
        self.arena.reserve(n, edges);
        self.ready.reserve(n);
        for (i, id) in ids.iter_mut().enumerate() {
            // Room for n goals was checked above.
            let at = self
                .arena
                .push(GoalKind::Plain, mode(i), Vec::new(), tag(i));
            debug_assert_eq!(at, Some((base + i) as u32));
            *id = self.id(at.unwrap_or(NONE));
        }
        for i in 0..n {
            let at = (base + i) as u32;
            self.link_new_goal(
                at,
                deps(i).iter().map(|d| match d.batch_index() {
                    Some(k) => len + k,
                    None => d.index(),
                }),
            );
        }
        Some(self.end(Ok(())))
    }

    /// Resolves every goal of the batch (new, or shared with an existing
    /// goal or an earlier goal of the batch) into the scratch, and returns
    /// the number of new goals; or the first bad element. Changes nothing.
    fn validate_goals(
        &mut self,
        goals: &[NewGoal<'_>],
        parse_error: Option<BatchError>,
    ) -> std::result::Result<usize, BatchError> {
        let n = goals.len();
        let base = self.arena.len();
        let mut index = std::mem::take(&mut self.batch.index);
        let mut slot = std::mem::take(&mut self.batch.slot);
        index.clear();
        slot.clear();
        // Pass 1, goal by goal: the output rules and sharing. Every goal is
        // resolved, also after an error, so that pass 2 knows what the
        // batch references of earlier goals stand for.
        let mut first: Option<BatchError> = None;
        let mut new = 0usize;
        // Paths of the batch's new goals -> their batch index (built only
        // when the batch has goals that lock outputs).
        let mut by_path: HashMap<&StorePath, u32> = HashMap::new();
        let limit_new = (NONE as usize).saturating_sub(base);
        for (i, g) in goals.iter().enumerate() {
            if g.kind == GoalKind::Plain && new < limit_new {
                // The common case: a plain goal is always new.
                slot.push(Slot::New);
                index.push((base + new) as u32);
                new += 1;
                continue;
            }
            let (s, at, err) = self.resolve(i, g, goals, &index, &by_path, base + new);
            if s == Slot::New {
                if err.is_none() && g.kind != GoalKind::Plain {
                    for p in &g.outputs {
                        by_path.insert(p, i as u32);
                    }
                }
                new += 1;
            }
            slot.push(s);
            index.push(at);
            if first.is_none() {
                first = err;
            }
        }
        let mut first = BatchError::first(parse_error, first);
        // Pass 2: the dependencies of the goals before the first bad one.
        let limit = first.as_ref().map_or(n, |e| e.owner);
        for (i, g) in goals.iter().enumerate().take(limit.min(n)) {
            if self.deps_fine(i, g, &index, &slot) {
                continue;
            }
            if let Some(e) = self.check_deps(i, g, &index, &slot) {
                first = BatchError::first(first, Some(e));
                break;
            }
        }
        self.batch.index = index;
        self.batch.slot = slot;
        match first {
            Some(e) => Err(e),
            None => Ok(new),
        }
    }

    /// Pass 1 for goal `i`: its slot, its arena index, and its error if any.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn resolve(
        &self,
        i: usize,
        g: &NewGoal<'_>,
        goals: &[NewGoal<'_>],
        index: &[u32],
        by_path: &HashMap<&StorePath, u32>,
        next: usize,
    ) -> (Slot, u32, Option<BatchError>) {
        let new = |err: Option<BatchError>| {
            let at = u32::try_from(next).ok().filter(|&a| a < NONE);
            match at {
                Some(at) => (Slot::New, at, err),
                None => (
                    Slot::New,
                    NONE,
                    err.or(Some(BatchError::new(
                        i,
                        0,
                        BatchField::Batch,
                        too_many_goals(),
                    ))),
                ),
            }
        };
        if g.kind == GoalKind::Plain {
            return new(None);
        }
        if let Err(e) = check_output_count(g.kind, g.outputs.len()) {
            return new(Some(BatchError::new(i, 0, BatchField::Output, e)));
        }
        // The same outputs as an existing goal, or as an earlier goal of the batch.
        if let Some(e) = self.arena.goal_of_path(&g.outputs[0]) {
            if self.arena.goals[e as usize].kind == g.kind
                && self.arena.outputs(e) == g.outputs.as_slice()
            {
                return (Slot::Existing, e, None);
            }
        } else if let Some(&k) = by_path.get(&g.outputs[0]) {
            let other = &goals[k as usize];
            if other.kind == g.kind && other.outputs == g.outputs {
                return (Slot::Same, index[k as usize], None);
            }
        }
        for (j, p) in g.outputs.iter().enumerate() {
            if let Some(e) = self.arena.goal_of_path(p) {
                let err = self.overlap_error(p, e);
                let err = BatchError::new(i, j, BatchField::Output, err).of_sorted_output();
                return new(Some(err));
            }
            if let Some(&k) = by_path.get(p) {
                let other = &goals[k as usize];
                let err = Error::InvalidArgument(format!(
                    "{p} is already an output of goals[{k}] of this batch ({:?} of {} \
                     outputs); goals must not share outputs partly, and the same outputs \
                     must be requested with the same kind",
                    other.kind,
                    other.outputs.len()
                ));
                let err = BatchError::new(i, j, BatchField::Output, err).of_sorted_output();
                return new(Some(err));
            }
        }
        new(None)
    }

    /// Pass 2's common case, decided without building an error: every
    /// dependency of new goal `i` names another goal of this worker or of
    /// the batch. `false` sends the goal to [`Worker::check_deps`].
    #[inline(always)]
    fn deps_fine(&self, i: usize, g: &NewGoal<'_>, index: &[u32], slot: &[Slot]) -> bool {
        if slot[i] != Slot::New {
            return g.deps.is_empty();
        }
        let at = index[i];
        let len = self.arena.len() as u32;
        g.deps.iter().all(|&d| match d.batch_index() {
            Some(k) => index.get(k as usize).is_some_and(|&t| t != at),
            None => d.worker() == self.serial && d.index() < len,
        })
    }

    /// Pass 2 for goal `i`: each dependency names a goal of this worker or
    /// of the batch, not the goal itself, and the goal can still take
    /// dependencies (a shared goal that has started cannot).
    #[inline]
    fn check_deps(
        &self,
        i: usize,
        g: &NewGoal<'_>,
        index: &[u32],
        slot: &[Slot],
    ) -> Option<BatchError> {
        if g.deps.is_empty() {
            return None;
        }
        let at = index[i];
        if slot[i] != Slot::New {
            // Shared: with an existing goal, or with an earlier goal of the
            // batch that is itself new or existing.
            let existing = (at as usize) < self.arena.len();
            if existing
                && !matches!(
                    self.arena.goals[at as usize].phase,
                    Phase::Ready | Phase::WaitingDeps
                )
            {
                let err = Error::InvalidState(format!(
                    "this goal is {} (the same outputs), which is {}; dependencies can \
                     only be added before a goal starts",
                    self.name(at),
                    state_name(self.arena.state(at))
                ));
                return Some(BatchError::new(i, 0, BatchField::Dependency, err));
            }
        }
        for (j, &d) in g.deps.iter().enumerate() {
            let target = match d.batch_index() {
                Some(k) => match index.get(k as usize) {
                    Some(&t) => t,
                    None => {
                        let err = Error::InvalidArgument(format!(
                            "GK_BATCH_GOAL({k}) refers to goal {k} of a batch of {}",
                            index.len()
                        ));
                        return Some(BatchError::new(i, j, BatchField::Dependency, err));
                    }
                },
                None => match self.index(d) {
                    Ok(t) => t,
                    Err(e) => return Some(BatchError::new(i, j, BatchField::Dependency, e)),
                },
            };
            if target == at {
                let err = Error::InvalidArgument(match d.batch_index() {
                    Some(k) if k as usize == i => "a goal cannot depend on itself".into(),
                    _ => format!(
                        "a goal cannot depend on itself (this dependency is the same goal, \
                         {})",
                        if (at as usize) < self.arena.len() {
                            self.name(at).to_string()
                        } else {
                            "shared within the batch".into()
                        }
                    ),
                });
                return Some(BatchError::new(i, j, BatchField::Dependency, err));
            }
        }
        None
    }

    /// Adds the validated batch: cannot fail. The goals first (so that
    /// batch references may point forward), then the edges. A new goal is
    /// queued as ready only once its dependencies are known (none
    /// unfinished), and a new goal that waits gets its dependency count in
    /// one step.
    fn commit_goals(&mut self, goals: &mut [NewGoal<'_>], new: usize, ids: &mut [GoalId]) {
        let edges: usize = goals.iter().map(|g| g.deps.len()).sum();
        self.arena.reserve(new, edges);
        self.ready.reserve(new);
        let index = std::mem::take(&mut self.batch.index);
        let slot = std::mem::take(&mut self.batch.slot);
        let base = self.arena.len() as u32;
        for (i, g) in goals.iter_mut().enumerate() {
            match slot[i] {
                Slot::New => {
                    let outputs = std::mem::take(&mut g.outputs);
                    let at = self.arena.push(g.kind, g.mode, outputs, g.tag);
                    debug_assert_eq!(at, Some(index[i]));
                }
                Slot::Existing | Slot::Same => self.share(index[i], g.mode),
            }
            ids[i] = self.id(index[i]);
        }
        if self.aborting {
            // After a failure without keep-going, new goals end cancelled at
            // once; they take no edges (a shared goal has finished already).
            for j in base..self.arena.len() as u32 {
                self.finish(j, Outcome::Cancelled, true);
            }
        } else {
            for (i, g) in goals.iter().enumerate() {
                let at = index[i];
                if slot[i] != Slot::New || at < base {
                    self.add_shared_deps(at, g.deps, &index);
                    continue;
                }
                self.link_new_goal(
                    at,
                    g.deps.iter().map(|d| match d.batch_index() {
                        Some(k) => index[k as usize],
                        None => d.index(),
                    }),
                );
            }
        }
        self.batch.index = index;
        self.batch.slot = slot;
    }

    /// Links new goal `at` of a batch (ready, nothing pending, not queued
    /// yet) to its dependencies, given as goal indices: an edge from each
    /// unfinished one, counted. If one of them failed, `at` ends
    /// dependency-failed at once (its edges so far stay: a finished goal's
    /// counter never reaches 0). Otherwise it waits for its pending
    /// dependencies, or is queued if there are none, unless an earlier
    /// goal's failure already ended it (a cascade).
    #[inline(always)]
    fn link_new_goal(&mut self, at: u32, deps: impl Iterator<Item = u32>) {
        let mut pending = 0;
        for from in deps {
            if !self.arena.is_finished(from) {
                self.arena.add_edge(from, at);
                pending += 1;
            } else if !self.succeeded(from) {
                self.finish(at, Outcome::DependencyFailed, true);
                return;
            }
        }
        if self.arena.is_finished(at) {
            // Ended by an earlier goal's failure (a cascade).
        } else if pending > 0 {
            self.arena.set_new_pending(at, pending);
        } else {
            self.ready.push_back(at);
        }
    }

    /// `true` if finished goal `d` succeeded.
    #[inline]
    fn succeeded(&self, d: u32) -> bool {
        self.arena.goals[d as usize]
            .phase
            .outcome()
            .is_some_and(|o| o.is_success())
    }

    /// The dependencies of a goal that was there before the batch (or is
    /// an earlier goal of it): as [`Worker::add_dependency`] adds them.
    #[cold]
    #[inline(never)]
    fn add_shared_deps(&mut self, at: u32, deps: &[GoalId], index: &[u32]) {
        for &d in deps {
            if self.arena.is_finished(at) {
                break; // it ended dependency-failed: the rest is moot
            }
            let from = match d.batch_index() {
                Some(k) => index[k as usize],
                None => d.index(),
            };
            if self.arena.is_finished(from) {
                self.dependency_finished(at, from);
            } else {
                self.arena.add_edge(from, at);
                self.arena.add_pending(at);
            }
        }
    }

    /// Fills `out` (cleared first) with up to `max` events, in order, in
    /// one call; returns how many. It stops after a `Wait` or `Done`, so
    /// either is the last event; and a `Wait` comes only alone: when the
    /// call has gathered other events, it stops before it instead (the host
    /// acts on them, then asks again), so a `Wait` always means "nothing to
    /// do until the fd is readable or the timeout expires".
    ///
    /// Errors as for [`Worker::next_event`], with two refinements: a
    /// deadlock found after some events were gathered is returned by the
    /// next call (this one returns what it has); a ledger violation puts
    /// the gathered events back, in order, for the next call, and `out` is
    /// left empty.
    pub fn next_events(&mut self, out: &mut Vec<Event>, max: usize) -> Result<usize> {
        out.clear();
        self.next_events_with(max, |_, ev| out.push(ev))?;
        Ok(out.len())
    }

    /// [`Worker::next_events`] handing each event to `sink` with the worker
    /// (for the host's tag and the goal's kind), for the C layer. On an
    /// error, what `sink` received is void.
    pub(crate) fn next_events_with(
        &mut self,
        max: usize,
        mut sink: impl FnMut(&Worker, Event),
    ) -> Result<usize> {
        if max == 0 {
            return Err(Error::InvalidArgument(
                "room for at least one event is needed (the capacity is 0)".into(),
            ));
        }
        self.begin()?;
        let mut got = std::mem::take(&mut self.batch.events);
        got.clear();
        let mut failed = None;
        while got.len() < max {
            // The start of the drain's pipeline (see `Arena::prefetch_ahead`),
            // one goal ahead: the goals this loop will start next.
            let ready = &self.ready;
            self.arena.prefetch_ahead(|k| ready.get(k + 1));
            match self.next_event_inner() {
                Ok(Event::Wait { .. }) if !got.is_empty() => break,
                Ok(ev) => {
                    if let Some(i) = ev.goal_index() {
                        self.ledger.touch(i);
                    }
                    got.push(ev);
                    if matches!(ev, Event::Wait { .. } | Event::Done) {
                        break;
                    }
                }
                // Returned by the next call, which finds it again.
                Err(_) if !got.is_empty() => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let r = match failed {
            Some(e) => self.end(Err(e)),
            None if self.ledger_clean() => {
                self.ledger.count_check();
                Ok(got.len())
            }
            None => self.next_events_full(&got),
        };
        if r.is_ok() {
            for &ev in &got {
                sink(self, ev);
            }
        }
        self.batch.events = got;
        r
    }

    /// The end of [`Worker::next_events_with`] when the ledger needs its
    /// full check: on a violation, the gathered events go back to the
    /// front of the queue, in order (the next call returns them).
    #[cold]
    #[inline(never)]
    fn next_events_full(&mut self, got: &[Event]) -> Result<usize> {
        match self.check_ledger_full() {
            Ok(()) => Ok(got.len()),
            Err(e) => {
                for &ev in got.iter().rev() {
                    if ev.goal_index().is_some() {
                        self.events.push_front(ev);
                    }
                }
                Err(e)
            }
        }
    }

    /// Reports many goals that were `Run`, in one call, all or nothing; on
    /// success each report's `recorded` is the outcome recorded for its
    /// goal (failed if a success had an output that is not valid).
    ///
    /// The whole batch is validated first: each goal is a goal of this
    /// worker that is running, each outcome one a host reports (built,
    /// substituted, failed, timed out), and no goal appears twice. The first
    /// bad report is returned as a [`BatchError`] and nothing is changed.
    /// Then the reports are made in order, each exactly as
    /// [`Worker::report`] would (a failure without keep-going cancels the
    /// goals that are not running; the running goals of the batch are still
    /// reported).
    pub fn report_many(&mut self, reports: &mut [Report]) -> std::result::Result<(), BatchError> {
        self.report_many_checked(reports, None)
    }

    /// [`Worker::report_many`] for the C layer: `parse_error` is the first
    /// report whose outcome number it could not read; it is reported unless
    /// an earlier report is bad (the reports from it on are not looked at).
    pub(crate) fn report_many_checked(
        &mut self,
        reports: &mut [Report],
        parse_error: Option<BatchError>,
    ) -> std::result::Result<(), BatchError> {
        if let Err(e) = self.begin() {
            return Err(BatchError::whole(e));
        }
        let limit = parse_error.as_ref().map_or(reports.len(), |e| e.owner);
        let bad = self.validate_reports(&reports[..limit.min(reports.len())]);
        if let Some(e) = bad.or(parse_error) {
            let _ = self.end(Ok(()));
            return Err(e);
        }
        for j in 0..reports.len() {
            // The drain's pipeline over the reports themselves.
            self.arena
                .prefetch_ahead(|k| reports.get(j + k).map(|r| r.goal.index()));
            let r = &mut reports[j];
            let i = r.goal.index();
            if r.outcome.is_reported_success() && self.plain_running(i) {
                // As `Worker::report`'s fast path: the checks at the end
                // of the call cover the goal.
                self.finish_plain_success(i, r.outcome);
                self.ledger.touch(i);
                r.recorded = Some(r.outcome);
                continue;
            }
            let outcome = self.checked_report(i, r.outcome);
            self.finish(i, outcome, false);
            r.recorded = Some(outcome);
        }
        // The recorded outcome is the one `finish` stored: a reported goal
        // is running until this call ends it, and nothing else ends it.
        debug_assert!(reports
            .iter()
            .all(|r| { self.arena.goals[r.goal.index() as usize].phase.outcome() == r.recorded }));
        self.end(Ok(())).map_err(BatchError::whole)
    }

    /// The first bad report, if any (duplicates found with the scratch
    /// bitset, which is cleared again: O(reports)). The common case is a
    /// tight loop that builds no error; the first report it refuses is
    /// looked at again by [`Worker::report_error`], which says why.
    fn validate_reports(&mut self, reports: &[Report]) -> Option<BatchError> {
        let words = self.arena.len().div_ceil(64);
        let mut marks = std::mem::take(&mut self.batch.marks);
        if marks.len() < words {
            marks.resize(words, 0);
        }
        let mut bad = None;
        let mut marked = 0;
        for (j, r) in reports.iter().enumerate() {
            let fine = self.index_fast(r.goal).filter(|&i| {
                reportable(r.outcome).is_ok()
                    && matches!(self.arena.goals[i as usize].phase, Phase::Running(_))
                    && marks[i as usize / 64] & (1u64 << (i % 64)) == 0
            });
            let Some(i) = fine else {
                bad = Some(self.report_error(j, reports, &marks));
                break;
            };
            marks[i as usize / 64] |= 1u64 << (i % 64);
            marked = j + 1;
        }
        for r in &reports[..marked] {
            let i = r.goal.index() as usize;
            marks[i / 64] &= !(1u64 << (i % 64));
        }
        self.batch.marks = marks;
        bad
    }

    /// Why report `j` is refused (see [`Worker::validate_reports`]; the
    /// goals of the reports before it are set in `marks`): its goal is not
    /// one of this worker's, its outcome is not one a host reports, its
    /// goal is not running, or it was reported earlier in the batch.
    #[cold]
    #[inline(never)]
    fn report_error(&self, j: usize, reports: &[Report], marks: &[u64]) -> BatchError {
        let r = &reports[j];
        let i = match self.index(r.goal) {
            Ok(i) => i,
            Err(e) => return BatchError::new(j, 0, BatchField::Goal, e),
        };
        if let Err(e) = reportable(r.outcome) {
            return BatchError::new(j, 0, BatchField::Outcome, e);
        }
        if !matches!(self.arena.goals[i as usize].phase, Phase::Running(_)) {
            let e = self.not_running(i);
            return BatchError::new(j, 0, BatchField::Goal, e);
        }
        debug_assert!(marks[i as usize / 64] & (1u64 << (i % 64)) != 0);
        let first = reports[..j].iter().position(|x| x.goal == r.goal);
        let e = Error::InvalidArgument(format!(
            "{} is reported twice in one batch (first as reports[{}])",
            self.name(i),
            first.unwrap_or_default()
        ));
        BatchError::new(j, 0, BatchField::Goal, e)
    }
}

/// The outcomes a host reports.
#[inline]
fn reportable(outcome: Outcome) -> Result<()> {
    match outcome {
        Outcome::Built | Outcome::Substituted | Outcome::Failed | Outcome::TimedOut => Ok(()),
        o => Err(not_reportable(o)),
    }
}

#[cold]
#[inline(never)]
fn not_reportable(o: Outcome) -> Error {
    Error::InvalidArgument(format!(
        "only built, substituted, failed and timed-out can be reported, not {}",
        o.name()
    ))
}
