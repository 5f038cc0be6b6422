//! The inputs of the worker's calls, and their validation: goals with
//! their outputs and dependencies ([`NewGoal`], for `Worker::add_goals`),
//! reports ([`Report`], for `Worker::report_many`), and the error that names
//! a batch's first bad element ([`BatchError`]). A single call is a batch of
//! one.
//!
//! A batch is validated whole before the worker changes: all or nothing. A
//! refused batch names its first bad element (lowest index, then lowest
//! sub-element) and leaves the worker exactly as it was: no goal, edge,
//! event, log record or counter is added.

use std::collections::BTreeMap;

use super::goal::{BuildMode, Event, GoalKind, Outcome};
use super::graph::{Graph, Phase, NONE};
use super::ids::GoalId;
use crate::error::{Error, Result};
use crate::lock::{normalize_set, StorePath};

/// One goal of a batch for [`Worker::add_goals`](super::Worker::add_goals).
#[derive(Clone, Debug)]
pub struct NewGoal<'a> {
    pub(super) kind: GoalKind,
    pub(super) mode: BuildMode,
    pub(super) tag: u64,
    /// Sorted and deduplicated.
    pub(super) outputs: Vec<StorePath>,
    /// For each output, its place in the caller's array, when the caller
    /// gave them in another order (the C layer); errors name that place.
    pub(super) places: Vec<u32>,
    pub(super) deps: &'a [GoalId],
}

impl<'a> NewGoal<'a> {
    /// A goal of `kind` producing `outputs` (normalised: sorted,
    /// deduplicated; an invalid path is an error), in normal mode, with tag
    /// 0 and no dependencies.
    #[inline]
    pub fn new<P: AsRef<std::ffi::OsStr>>(kind: GoalKind, outputs: &[P]) -> Result<NewGoal<'a>> {
        let outputs = if outputs.is_empty() {
            Vec::new()
        } else {
            normalize_set(outputs)?
        };
        let goal = NewGoal::in_callers_order(kind, BuildMode::Normal, 0, outputs, &[]);
        Ok(goal)
    }

    /// A goal of `kind` and `mode` with the host's `tag`, waiting for
    /// `deps`, producing `outputs` (validated paths) given in the caller's
    /// order: they are sorted and deduplicated here, and when that order is
    /// not already the sorted one, errors name an output by its first place
    /// in it (the C layer's arrays).
    #[inline]
    pub(crate) fn in_callers_order(
        kind: GoalKind,
        mode: BuildMode,
        tag: u64,
        mut outputs: Vec<StorePath>,
        deps: &'a [GoalId],
    ) -> NewGoal<'a> {
        let mut places = Vec::new();
        if !outputs.is_sorted_by(|a, b| a < b) {
            places = (0..outputs.len() as u32).collect();
            let at = |k: &u32| &outputs[*k as usize];
            places.sort_by(|a, b| at(a).cmp(at(b)).then(a.cmp(b)));
            places.dedup_by(|a, b| at(a) == at(b));
            outputs = places.iter().map(|k| at(k).clone()).collect();
        }
        NewGoal {
            kind,
            mode,
            tag,
            outputs,
            places,
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

    /// The host's tag (see [`Worker::add_goal_tagged`](super::Worker::add_goal_tagged)).
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
    /// The element: goal `index` of an `add_goals` batch, report `index` of
    /// a `report_many` batch (0 for [`BatchField::Batch`]).
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
        }
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

    /// The error, boxed: what the validation passes around (a `BatchError`
    /// is a hundred bytes, and most validations find none).
    pub(crate) fn bad(self) -> Bad {
        Some(Box::new(self))
    }

    /// The error without the element's name: what a single call, a batch
    /// of one, returns.
    pub(crate) fn into_single(self) -> Error {
        match self.error {
            Error::InBatch { source, .. } => *source,
            e => e,
        }
    }

    /// The earlier of two errors, in validation order.
    #[inline]
    pub(crate) fn first(a: Bad, b: Bad) -> Bad {
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

impl From<Error> for BatchError {
    /// An error of the call as a whole (a fork child's call, the ledger's
    /// verdict).
    fn from(e: Error) -> BatchError {
        BatchError::whole(e)
    }
}

impl From<Error> for Box<BatchError> {
    /// The same, boxed (what a call that validates passes around).
    fn from(e: Error) -> Box<BatchError> {
        Box::new(BatchError::whole(e))
    }
}

/// A batch's first bad element so far, if any (see [`BatchError::bad`]).
pub(crate) type Bad = Option<Box<BatchError>>;

/// Reusable memory of the calls, so that a batch of one allocates nothing.
#[derive(Default, Debug)]
pub(crate) struct Scratch {
    /// One bit per goal of the worker: reported in this batch (cleared
    /// again before the call returns).
    marks: Vec<u64>,
    /// The events gathered by `next_events`, checked before they are handed out.
    pub(crate) events: Vec<Event>,
    /// The goal each goal of the batch being added resolves to (see
    /// [`validate_goals`]), apart from the goals, so that resolving a batch
    /// reference reads 4 bytes a goal (in the caches), not a goal's record.
    pub(crate) at: Vec<u32>,
}

/// A report for [`Worker::report_many`](super::Worker::report_many).
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

/// Validates a batch of goals for worker `serial`, whose goals are `graph`:
/// resolves every goal to the goal it stands for, `at[i]` for goal `i` (an
/// existing one: the same outputs again, S9; or a new one, an index past
/// the graph's end, pushed by the first goal of the batch that resolves to
/// it), and returns the first bad element, in the documented order, with
/// `parse_error` (the first element the caller could not even read) among
/// them. Changes nothing else.
pub(crate) fn validate_goals(
    graph: &Graph,
    serial: u32,
    goals: &[NewGoal<'_>],
    parse_error: Bad,
    at: &mut Vec<u32>,
) -> Bad {
    // Pass 1, goal by goal: the output rules and sharing. Every goal is
    // resolved, also after an error, so that pass 2 knows what the batch
    // references of earlier goals stand for.
    let (mut first, mut next, mut edges) = (parse_error, graph.len(), 0);
    // The outputs of the batch's new goals that lock them -> their goal
    // (made for the first such goal).
    let mut by_path: Option<BTreeMap<&StorePath, usize>> = None;
    at.clear();
    for (i, g) in goals.iter().enumerate() {
        let (shared, mut err) = resolve(graph, i, g, goals, at, by_path.as_ref());
        let here = shared.unwrap_or(next.min(NONE as usize) as u32);
        if shared.is_none() {
            next += 1;
            if here == NONE && err.is_none() {
                let e = Error::InvalidArgument("too many goals in one worker".into());
                err = BatchError::new(i, 0, BatchField::Batch, e).bad();
            }
            if err.is_none() && g.kind != GoalKind::Plain {
                let map = by_path.get_or_insert_with(BTreeMap::new);
                map.extend(g.outputs.iter().map(|p| (p, i)));
            }
        }
        at.push(here);
        edges += g.deps.len();
        if err.is_some() {
            first = BatchError::first(first, err);
        }
    }
    // Pass 2 (if there are any): the dependencies of the goals before the
    // first bad one.
    let limit = first.as_ref().map_or(goals.len(), |e| e.owner);
    for (i, g) in goals.iter().enumerate().take(limit).filter(|_| edges > 0) {
        if let Some(e) = check_deps(graph, serial, i, g, at) {
            return BatchError::first(first, e.bad());
        }
    }
    first
}

/// Pass 1 for goal `i`: the goal it shares (the same outputs as an
/// existing goal, or as an earlier goal of the batch, which resolved to
/// `at[k]`: S9), or `None` for a new goal; and its error if any.
fn resolve(
    graph: &Graph,
    i: usize,
    g: &NewGoal<'_>,
    goals: &[NewGoal<'_>],
    at: &[u32],
    by_path: Option<&BTreeMap<&StorePath, usize>>,
) -> (Option<u32>, Bad) {
    if g.kind == GoalKind::Plain {
        return (None, None);
    }
    if let Err(e) = g.kind.check_output_count(g.outputs.len()) {
        return (None, BatchError::new(i, 0, BatchField::Output, e).bad());
    }
    // The same outputs and kind as a goal of the worker or an earlier goal
    // of the batch share it; any other overlap is refused.
    for (j, p) in g.outputs.iter().enumerate() {
        let err = if let Some(e) = graph.goal_of_path(p) {
            if j == 0 && graph.goal(e).kind == g.kind && graph.outputs(e) == g.outputs.as_slice() {
                return (Some(e), None);
            }
            let outs = graph.outputs(e);
            let outs = match outs.len() {
                1 => outs[0].to_string(),
                n => format!("{} and {} more", outs[0], n - 1),
            };
            Error::InvalidArgument(format!(
                "{p} is already an output of {} ({:?} of {outs}); goals must not share outputs \
                 partly, and the same outputs must be requested with the same kind",
                graph.name(e),
                graph.goal(e).kind,
            ))
        } else if let Some(&k) = by_path.and_then(|m| m.get(p)) {
            let other = &goals[k];
            if j == 0 && other.kind == g.kind && other.outputs == g.outputs {
                return (Some(at[k]), None);
            }
            Error::InvalidArgument(format!(
                "{p} is already an output of goals[{k}] of this batch ({:?} of {} outputs); \
                 goals must not share outputs partly, and the same outputs must be requested \
                 with the same kind",
                other.kind,
                other.outputs.len()
            ))
        } else {
            continue;
        };
        // The output's place in the caller's array (the C layer's order).
        let place = g.places.get(j).map_or(j, |&k| k as usize);
        return (
            None,
            BatchError::new(i, place, BatchField::Output, err).bad(),
        );
    }
    (None, None)
}

/// Pass 2 for goal `i`: each dependency names a goal of this worker or of
/// the batch (goal `k` of the batch resolved to `at[k]`), not the goal
/// itself, and the goal can still take dependencies (a shared goal that
/// has started cannot).
fn check_deps(
    graph: &Graph,
    serial: u32,
    i: usize,
    g: &NewGoal<'_>,
    resolved: &[u32],
) -> Option<BatchError> {
    if g.deps.is_empty() {
        return None;
    }
    let at = resolved[i];
    if (at as usize) < graph.len() && !can_take_deps(graph, at) {
        let err = Error::InvalidState(format!(
            "this goal is {} (the same outputs), which is {}; dependencies can only be \
             added before a goal starts",
            graph.name(at),
            graph.state(at).describe()
        ));
        return Some(BatchError::new(i, 0, BatchField::Dependency, err));
    }
    for (j, &d) in g.deps.iter().enumerate() {
        let target = match d.batch_index() {
            Some(k) => match resolved.get(k as usize) {
                Some(&r) => r,
                None => {
                    let e = Error::InvalidArgument(format!(
                        "GK_BATCH_GOAL({k}) refers to goal {k} of a batch of {}",
                        resolved.len()
                    ));
                    return Some(BatchError::new(i, j, BatchField::Dependency, e));
                }
            },
            None => match d.index_in(serial, graph.len()) {
                Ok(t) => t,
                Err(e) => return Some(BatchError::new(i, j, BatchField::Dependency, e)),
            },
        };
        if target == at {
            let err = Error::InvalidArgument(match d.batch_index() {
                Some(k) if k as usize == i => "a goal cannot depend on itself".into(),
                _ => format!(
                    "a goal cannot depend on itself (this dependency is the same goal, {})",
                    if (at as usize) < graph.len() {
                        graph.name(at).to_string()
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

/// Whether goal `g` may still get dependencies: it has not started.
pub(crate) fn can_take_deps(graph: &Graph, g: u32) -> bool {
    matches!(graph.goal(g).phase, Phase::Ready | Phase::WaitingDeps)
}

/// Validates a batch of reports for worker `serial`, whose goals are
/// `graph`: each names a running goal of the worker, once, with an outcome
/// a host reports. Returns the first bad report; changes nothing (the
/// scratch bitset that finds duplicates is cleared again: O(reports)).
#[inline]
pub(crate) fn validate_reports(
    graph: &Graph,
    serial: u32,
    reports: &[Report],
    scratch: &mut Scratch,
) -> Bad {
    let marks = &mut scratch.marks;
    if reports.len() > 1 && marks.len() < graph.len().div_ceil(64) {
        marks.resize(graph.len().div_ceil(64), 0);
    }
    // A batch of one cannot name a goal twice.
    let twice = |marks: &[u64], i: u32| {
        reports.len() > 1 && marks[i as usize / 64] & (1u64 << (i % 64)) != 0
    };
    let mut bad = None;
    let mut marked = 0;
    for (j, r) in reports.iter().enumerate() {
        let fine = r.goal.index_in(serial, graph.len()).ok().filter(|&i| {
            r.outcome.reportable().is_ok()
                && matches!(graph.goal(i).phase, Phase::Running(_))
                && !twice(marks, i)
        });
        let Some(i) = fine else {
            bad = report_error(graph, serial, reports, j).bad();
            break;
        };
        if reports.len() > 1 {
            marks[i as usize / 64] |= 1u64 << (i % 64);
            marked = j + 1;
        }
    }
    for r in &reports[..marked] {
        let i = r.goal.index() as usize;
        marks[i / 64] &= !(1u64 << (i % 64));
    }
    bad
}

/// Why report `j` is refused (see [`validate_reports`]): its goal is not
/// one of this worker's, its outcome is not one a host reports, its goal
/// is not running, or it was reported earlier in the batch.
#[cold]
fn report_error(graph: &Graph, serial: u32, reports: &[Report], j: usize) -> BatchError {
    let r = &reports[j];
    let (field, error) = match r.goal.index_in(serial, graph.len()) {
        Err(e) => (BatchField::Goal, e),
        Ok(_) if r.outcome.reportable().is_err() => {
            (BatchField::Outcome, r.outcome.reportable().unwrap_err())
        }
        Ok(i) if !matches!(graph.goal(i).phase, Phase::Running(_)) => {
            let (name, state) = (graph.name(i), graph.state(i).describe());
            let e = format!("{name} is {state}, not running; only running goals can be reported");
            (BatchField::Goal, Error::InvalidState(e))
        }
        Ok(i) => {
            let first = reports[..j].iter().position(|x| x.goal == r.goal);
            let e = Error::InvalidArgument(format!(
                "{} is reported twice in one batch (first as reports[{}])",
                graph.name(i),
                first.unwrap_or_default()
            ));
            (BatchField::Goal, e)
        }
    };
    BatchError::new(j, 0, field, error)
}
