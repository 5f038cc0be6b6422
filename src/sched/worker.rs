//! The worker: one per client request, and the facade of the scheduler. It
//! owns its goals and is driven by the host through a pull API: add goals
//! and dependencies, ask for the next event, report outcomes, cancel. It
//! never blocks and never calls back except through the host's predicates,
//! on the calling thread.
//!
//! A worker is made of components, each keeping its own invariants: the
//! goal graph (`graph`: states, dependencies, outputs), the ready queue and
//! the queue of events not yet handed out, the build slots and the goals
//! waiting for one (`slots`), the lock waits (`waits`), the validity source
//! (`validity`), and the books (`ledger`, with the counters, and `log`). The life cycle
//! of a goal, which moves it between them, is in `transitions`. Every call
//! that can change the worker goes through [`Worker::call`], the one place
//! where a call's ledger check begins and ends; a single call is a batch of
//! one.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::time::Duration;

use super::batch::{self, Bad, BatchError, NewGoal, Report, Scratch};
use super::goal::{BuildMode, Event, GoalKind, GoalResult, GoalState, Outcome};
use super::graph::Graph;
use super::ids::{next_worker_serial, GoalId};
use super::ledger::{Audit, Ledger};
use super::log::{Log, LogKind, LogRecord};
use super::slots::Slots;
use super::validity::{FnPredicate, PathPredicate, Source};
use super::waits::Waits;
use crate::base::generation;
use crate::error::{Error, Result};
use crate::lock::{Backend, LockSet, StorePath};
use crate::store_db::StoreDb;

/// How a worker schedules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Build slots shared by builds and substitutions. At 0, one substitution
    /// may still run and a build fails ("no local builds").
    pub max_jobs: u32,
    /// After a failure, go on with the goals that do not depend on it
    /// (otherwise every goal not yet running is cancelled).
    pub keep_going: bool,
    /// The store's lock backend.
    pub backend: Backend,
    /// How often a goal waiting on a foreign lock re-checks whether its
    /// outputs became valid (the `Wait` event's timeout). Must be non-zero.
    pub recheck_interval: Duration,
    /// **Fault injection / demonstration only.** Emulates the C++ daemon of
    /// Guix bug #31785: finished goals keep their lock sets (in a side list)
    /// instead of releasing them. The ledger then reports every such goal
    /// (`GK_ERROR_INVARIANT_VIOLATION`, `locks_held_by_finished` in the
    /// audit). Only builds with the `legacy-hold` cargo feature accept it
    /// (the tests and `make demo`); any other build refuses it with
    /// [`Error::InvalidArgument`].
    pub legacy_hold: bool,
}

impl WorkerOptions {
    /// Refuses options this build cannot honour: `legacy_hold` exists only in
    /// builds with the `legacy-hold` cargo feature (the tests and the demo),
    /// so that a production library can never defeat G1.
    fn check(&self) -> Result<()> {
        if self.recheck_interval.is_zero() {
            return Err(Error::InvalidArgument(
                "recheck_interval must not be zero".into(),
            ));
        }
        if self.legacy_hold && !cfg!(feature = "legacy-hold") {
            return Err(Error::InvalidArgument(
                "legacy_hold (finished goals keep their locks, the #31785 bug) exists only in \
                 builds with the legacy-hold cargo feature, for tests and the demo; this \
                 library was built without it"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            max_jobs: 1,
            keep_going: false,
            backend: Backend::Ofd,
            recheck_interval: Duration::from_secs(1),
            legacy_hold: false,
        }
    }
}

/// A scheduler for one client request. See the module docs and
/// doc/design.md#6-the-workers-pull-loop for the pull loop.
pub struct Worker {
    pub(super) serial: u32,
    pub(super) opts: WorkerOptions,
    /// The fork generation the worker was made in: a fork child's calls
    /// are refused, and it never touches the parent's locks.
    fork_gen: u64,
    /// A failure without keep-going happened: every goal that was not
    /// running was cancelled, and goals added since end cancelled at once.
    pub(super) aborting: bool,
    pub(super) graph: Graph,
    /// Goals to try, in order; an entry of a goal that has left the ready
    /// state since is skipped when met.
    pub(super) ready: VecDeque<u32>,
    /// Events the transitions made, not yet handed out.
    pub(super) events: VecDeque<Event>,
    pub(super) slots: Slots,
    pub(super) waits: Waits,
    /// Where validity answers come from.
    pub(super) valid: Source,
    /// The host's cached-failure predicate.
    pub(super) cached: Option<Box<dyn PathPredicate>>,
    pub(super) ledger: Ledger,
    pub(super) log: Log,
    /// `legacy_hold` only: lock sets kept by finished goals.
    pub(super) legacy: Vec<LockSet>,
    scratch: Scratch,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("serial", &self.serial)
            .field("goals", &self.graph.len())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A new worker with its own eventfd.
    pub fn new(opts: WorkerOptions) -> Result<Worker> {
        opts.check()?;
        Ok(Worker {
            serial: next_worker_serial(),
            slots: Slots::new(opts.max_jobs),
            opts,
            fork_gen: generation(),
            aborting: false,
            graph: Graph::default(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            waits: Waits::new()?,
            valid: Source::Exists,
            cached: None,
            ledger: Ledger::new(),
            log: Log::default(),
            legacy: Vec::new(),
            scratch: Scratch::default(),
        })
    }

    /// The options the worker was made with.
    pub fn options(&self) -> &WorkerOptions {
        &self.opts
    }

    /// This worker's process-unique serial (the high half of its goal ids,
    /// which its goals' lock sets carry as their owner tag).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Takes validity from the store's database at `db_path` (absolute, e.g.
    /// `/var/guix/db/db.sqlite`): an output is valid when it is registered in
    /// table `ValidPaths`, as for the daemon. This is what a real store
    /// needs; the file-existence default is only right for a store without a
    /// database. The database is opened and checked now (read-only, busy
    /// timeout 5 s): a missing file, a file that is not SQLite, one without
    /// `ValidPaths`, a database locked past the timeout, or a relative path
    /// is an [`Error::StoreDatabase`] naming the file, and the worker keeps
    /// its previous validity source. On success the database replaces any
    /// validity predicate.
    ///
    /// If the database cannot answer later (locked, replaced, unreadable), no
    /// goal is finished as valid: a goal about to run fails, a goal waiting
    /// for a lock keeps waiting, and a reported success is recorded as
    /// failed; the log names the file and the error.
    ///
    /// A query never waits on a WAL database (both daemons' default). On a
    /// rollback-journal database it waits while the daemon commits, at most
    /// the busy timeout: the one place where [`Worker::next_event`] and
    /// [`Worker::report`] can block.
    pub fn set_store_database(&mut self, db_path: impl AsRef<Path>) -> Result<()> {
        let db = StoreDb::open(db_path)?;
        self.set_store_db(db);
        Ok(())
    }

    /// [`Worker::set_store_database`] with a database the caller opened
    /// (e.g. with other [`crate::store_db::StoreDbOptions`]).
    pub fn set_store_db(&mut self, db: StoreDb) {
        self.valid = Source::Database(Box::new(db));
    }

    /// The store database the worker takes validity from, if any.
    pub fn store_database(&self) -> Option<&Path> {
        match &self.valid {
            Source::Database(db) => Some(db.path()),
            _ => None,
        }
    }

    /// Back to the default validity, "the path exists" (only right for a
    /// store without a database), dropping a database or predicate.
    pub fn reset_validity(&mut self) {
        self.valid = Source::Exists;
    }

    /// Sets the validity predicate ("is this output already valid?"),
    /// replacing a store database. The default is "the path exists". Called
    /// on the calling thread only. A real store should use
    /// [`Worker::set_store_database`] instead.
    pub fn set_valid_path(&mut self, f: Box<dyn FnMut(&Path) -> bool + Send>) {
        self.valid = Source::Host(Box::new(FnPredicate(f)));
    }

    /// Sets the cached-failure predicate ("did building this output fail
    /// before?"), asked for build goals after locking. The default is never.
    pub fn set_cached_failure(&mut self, f: Box<dyn FnMut(&Path) -> bool + Send>) {
        self.cached = Some(Box::new(FnPredicate(f)));
    }

    pub(crate) fn set_valid_predicate(&mut self, p: Option<Box<dyn PathPredicate>>) {
        self.valid = p.map_or(Source::Exists, Source::Host);
    }

    pub(crate) fn set_cached_predicate(&mut self, p: Option<Box<dyn PathPredicate>>) {
        self.cached = p;
    }

    /// Runs one call of the host that can change the worker (G6): refuses
    /// a fork child's call (the parent's locks are not its to touch), runs
    /// `op`, then the ledger checks what `op` touched and the slot
    /// counters. The call's own error comes first.
    fn call<T, E: From<Error>>(
        &mut self,
        op: impl FnOnce(&mut Worker) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if self.fork_gen != generation() {
            return Err(Error::WrongProcess("worker").into());
        }
        self.ledger.begin();
        let r = op(self);
        let verdict = self
            .ledger
            .end(&self.graph, &self.slots, self.serial, &mut self.log);
        match verdict {
            Err(e) if r.is_ok() => Err(e.into()),
            _ => r,
        }
    }

    /// Adds a goal. Build goals need at least one output, substitute goals
    /// exactly one, plain goals any number (recorded only: a plain goal locks
    /// nothing, takes no slot and is never shared).
    ///
    /// The same output set requested again returns the same goal (S9), even
    /// if it has finished (look at [`Worker::result`]); a stronger mode
    /// (check > repair > normal) is adopted if it has not started. An output
    /// set that partly overlaps another goal's, or the same set with another
    /// kind, is refused with [`Error::InvalidArgument`].
    ///
    /// After a failure without keep-going, new goals end `Cancelled` at once
    /// (a `Finished` event says so).
    ///
    /// The goal's tag is 0; see [`Worker::add_goal_tagged`].
    pub fn add_goal<P: AsRef<OsStr>>(
        &mut self,
        kind: GoalKind,
        outputs: &[P],
        mode: BuildMode,
    ) -> Result<GoalId> {
        self.add_goal_tagged(kind, outputs, mode, 0)
    }

    /// [`Worker::add_goal`] with the host's data for the goal: `tag`, any
    /// 64-bit value (an index into the host's table, a pointer), which
    /// [`Worker::tag`] returns and which every C event naming the goal
    /// carries (`gk_event.tag`). A goal shared by a second request for the
    /// same outputs (S9) keeps the tag of the first: the second caller gets
    /// the same goal id, and should map ids, not tags, if it needs to tell
    /// the requests apart.
    pub fn add_goal_tagged<P: AsRef<OsStr>>(
        &mut self,
        kind: GoalKind,
        outputs: &[P],
        mode: BuildMode,
        tag: u64,
    ) -> Result<GoalId> {
        self.add_goal_normalized(NewGoal::new(kind, outputs)?.mode(mode).tag(tag))
    }

    /// [`Worker::add_goal_tagged`] for a goal read into its batch form: a
    /// batch of one.
    #[inline]
    pub(crate) fn add_goal_normalized(&mut self, mut goal: NewGoal<'_>) -> Result<GoalId> {
        let mut id = GoalId::from_raw(0);
        let goals = std::slice::from_mut(&mut goal);
        self.add_goals_into(goals, None, std::slice::from_mut(&mut id))
            .map_err(BatchError::into_single)?;
        Ok(id)
    }

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
        let mut ids = vec![GoalId::from_raw(0); goals.len()];
        self.add_goals_into(goals, None, &mut ids)?;
        Ok(ids)
    }

    /// The core of every way of adding goals: [`Worker::add_goals`] writing
    /// the ids into `ids` (as long as `goals`, zeroed on an error).
    /// `parse_error` is the first element the caller could not even read
    /// (the C layer's kinds, modes, offsets and paths); its goal is given
    /// as a placeholder (a plain goal without outputs or dependencies), and
    /// it is reported unless an earlier element is bad.
    pub(crate) fn add_goals_into(
        &mut self,
        goals: &mut [NewGoal<'_>],
        parse_error: Bad,
        ids: &mut [GoalId],
    ) -> std::result::Result<(), BatchError> {
        let r = self.call(|w| {
            let at = &mut w.scratch.at;
            let bad = batch::validate_goals(&w.graph, w.serial, goals, parse_error, at);
            if bad.is_none() {
                w.add_resolved(goals, ids);
            }
            bad.map_or(Ok(()), Err)
        });
        r.map_err(|b| {
            ids.fill(GoalId::from_raw(0));
            *b
        })
    }

    /// The rest of [`Worker::add_goals_into`] for a valid batch whose goal
    /// `k` resolved to goal `scratch.at[k]`: the goals first, so that batch
    /// references may point forward, then their dependencies, as
    /// `add_dependency` adds them; then the new goals that are ready are
    /// queued, in order. After a failure without keep-going, new goals take
    /// no dependencies and end cancelled at once.
    fn add_resolved(&mut self, goals: &mut [NewGoal<'_>], ids: &mut [GoalId]) {
        let first = self.graph.len() as u32;
        self.graph.reserve(goals.len(), 0);
        for (k, (g, id)) in goals.iter_mut().zip(ids.iter_mut()).enumerate() {
            let i = self.scratch.at[k];
            if i as usize == self.graph.len() {
                self.graph.push(g.kind, g.mode, &mut g.outputs, g.tag);
            } else {
                // Requested again (S9): a stronger mode is adopted if it
                // has not started; otherwise the log says it keeps its own.
                let kept = self.graph.goal(i).mode;
                if g.mode > kept && batch::can_take_deps(&self.graph, i) {
                    self.graph.set_mode(i, g.mode);
                } else if g.mode != kept {
                    let line = format!(
                        "{} was requested again in mode {:?}; it keeps mode {kept:?}",
                        self.graph.name(i),
                        g.mode
                    );
                    self.record(LogKind::ModeKept, i, None, line);
                }
            }
            *id = self.id(i);
        }
        let aborting = self.aborting;
        for (k, g) in goals.iter().enumerate().filter(|_| !aborting) {
            let i = self.scratch.at[k];
            if self.graph.is_finished(i) {
                continue; // shared with an earlier goal of the batch, which ended
            }
            for &d in g.deps {
                // A batch reference names goal `k` of the batch, as resolved.
                let d = d
                    .batch_index()
                    .map_or(d.index(), |k| self.scratch.at[k as usize]);
                if self.depend(i, d) {
                    break; // it ended dependency-failed: the rest is moot
                }
            }
        }
        // The new goals, which have the next indexes, in order.
        for i in first..self.graph.len() as u32 {
            if aborting {
                self.finish(i, Outcome::Cancelled, true);
            } else if self.graph.state(i) == GoalState::Ready {
                self.ready.push_back(i);
            }
        }
    }

    /// The host's tag of `goal` (see [`Worker::add_goal_tagged`]).
    pub fn tag(&self, goal: GoalId) -> Result<u64> {
        Ok(self.graph.goal(self.index(goal)?).tag)
    }

    /// The kind and the tag of `goal`, from one read of its record.
    pub(crate) fn kind_and_tag(&self, goal: GoalId) -> Result<(GoalKind, u64)> {
        let g = self.graph.goal(self.index(goal)?);
        Ok((g.kind, g.tag))
    }

    /// Makes `goal` wait for `dep`. `goal` must not have started (it must be
    /// waiting for dependencies or ready). If `dep` already failed, `goal`
    /// ends `DependencyFailed` at once. A goal cannot depend on itself;
    /// longer cycles are reported as [`Error::SchedulerDeadlock`] by
    /// [`Worker::next_event`]. Adding the same edge twice is harmless.
    pub fn add_dependency(&mut self, goal: GoalId, dep: GoalId) -> Result<()> {
        self.call(|w| -> std::result::Result<(), Box<Error>> {
            let (g, d) = (w.index(goal)?, w.index(dep)?);
            if g == d || !batch::can_take_deps(&w.graph, g) {
                let (name, state) = (w.graph.name(g), w.graph.state(g).describe());
                return Err(Box::new(if g == d {
                    Error::InvalidArgument(format!("{name} cannot depend on itself"))
                } else {
                    Error::InvalidState(format!(
                        "{name} is {state}; dependencies can only be added before it starts"
                    ))
                }));
            }
            w.depend(g, d);
            Ok(())
        })
        .map_err(|e| *e)
    }

    /// The next thing for the host to do. Never blocks. Errors:
    /// [`Error::SchedulerDeadlock`] (goals remain but nothing is ready,
    /// running or waited on, e.g. a dependency cycle; the message names the
    /// stuck goals), [`Error::Invariant`] (a ledger violation was found; the
    /// event is kept for the next call).
    pub fn next_event(&mut self) -> Result<Event> {
        let mut event = Event::Done;
        self.next_events_with(1, |_, ev| event = ev)?;
        Ok(event)
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
        self.next_events_with(max, |_, ev| out.push(ev))
    }

    /// The core of [`Worker::next_events`] and [`Worker::next_event`]:
    /// hands each event to `sink` with the worker (for the host's tag and
    /// the goal's kind), unless the call fails.
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
        // Gathers up to `max` events (see `next_events`), touching each
        // event's goal for the ledger.
        self.scratch.events.clear();
        let r = self.call(|w| -> std::result::Result<usize, Box<Error>> {
            while w.scratch.events.len() < max {
                let ev = match w.step() {
                    // An error is returned by the next call, which finds it again.
                    Ok(Event::Wait { .. }) | Err(_) if !w.scratch.events.is_empty() => break,
                    r => r?,
                };
                if let Some(g) = ev.goal() {
                    w.ledger.touch(g.index());
                }
                w.scratch.events.push(ev);
                if matches!(ev, Event::Wait { .. } | Event::Done) {
                    break;
                }
            }
            Ok(w.scratch.events.len())
        });
        let me = &*self;
        if r.is_ok() {
            for &ev in &me.scratch.events {
                sink(me, ev);
            }
        } else {
            // A ledger violation after the events were gathered: they go
            // back, in order, for the next call.
            for &ev in self
                .scratch
                .events
                .iter()
                .rev()
                .filter(|ev| ev.goal().is_some())
            {
                self.events.push_front(ev);
            }
        }
        r.map_err(|e| *e)
    }

    /// Reports how a goal that was `Run` ended: `Built`, `Substituted`,
    /// `Failed` or `TimedOut`. A success is checked: if an output is not
    /// valid, the goal is recorded as `Failed` (and the log says why). The
    /// goal's locks are released (with deletion after a success) and its slot
    /// freed before any dependent is woken.
    #[inline]
    pub fn report(&mut self, goal: GoalId, outcome: Outcome) -> Result<()> {
        self.report_many_checked(&mut [Report::new(goal, outcome)], None)
            .map_err(BatchError::into_single)
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

    /// The core of [`Worker::report_many`] and [`Worker::report`]:
    /// `parse_error` is the first report whose outcome number the C layer
    /// could not read; it is reported unless an earlier report is bad (the
    /// reports from it on are not looked at).
    pub(crate) fn report_many_checked(
        &mut self,
        reports: &mut [Report],
        parse_error: Bad,
    ) -> std::result::Result<(), BatchError> {
        self.call(|w| -> std::result::Result<(), Box<BatchError>> {
            let limit = parse_error.as_ref().map_or(reports.len(), |e| e.index);
            let checked = &reports[..limit.min(reports.len())];
            let bad = batch::validate_reports(&w.graph, w.serial, checked, &mut w.scratch);
            if let Some(e) = bad.or(parse_error) {
                return Err(e);
            }
            for r in reports.iter_mut() {
                // A reported goal is running until this call ends it, and
                // nothing else ends it: the outcome recorded is this one.
                let i = r.goal.index();
                let outcome = w.checked_report(i, r.outcome);
                w.finish(i, outcome, false);
                r.recorded = Some(outcome);
            }
            Ok(())
        })
        .map_err(|e| *e)
    }

    /// Cancels a goal that has not finished (a running goal: the host stopped
    /// it). Its locks and slot are released; its dependents end
    /// `DependencyFailed` (reported as `Finished` events). The cancelled goal
    /// itself gets no event.
    pub fn cancel(&mut self, goal: GoalId) -> Result<()> {
        self.call(|w| {
            let i = w.index(goal)?;
            if w.graph.is_finished(i) {
                let line = format!("{} has already finished", w.graph.name(i));
                return Err(Error::InvalidState(line));
            }
            w.finish(i, Outcome::Cancelled, false);
            Ok(())
        })
    }

    /// State, outcome, kind, mode and outputs of a goal, at any time.
    pub fn result(&self, goal: GoalId) -> Result<GoalResult> {
        let i = self.index(goal)?;
        let g = self.graph.goal(i);
        Ok(GoalResult {
            state: self.graph.state(i),
            outcome: g.phase.outcome(),
            kind: g.kind,
            mode: g.mode,
            outputs: self
                .graph
                .outputs(i)
                .iter()
                .map(|p| p.as_path().to_path_buf())
                .collect(),
        })
    }

    /// The outputs of a goal, sorted.
    pub fn outputs(&self, goal: GoalId) -> Result<&[StorePath]> {
        Ok(self.graph.outputs(self.index(goal)?))
    }

    /// Runs the ledger checks on `goal` (and the slot counters), as every
    /// mutating call does on what it touched.
    pub fn check_goal(&mut self, goal: GoalId) -> Result<()> {
        self.call(|w| {
            let i = w.index(goal)?;
            w.ledger.touch(i);
            Ok(())
        })
    }

    /// Runs the ledger checks that concern no goal in particular (slot
    /// counters; everything with `GOALKEEPER_DEBUG_SWEEP=1`).
    pub fn check(&mut self) -> Result<()> {
        self.call(|_| Ok(()))
    }

    /// Turns the full sweep on or off for this worker (the default comes
    /// from `GOALKEEPER_DEBUG_SWEEP`).
    pub fn set_debug_sweep(&mut self, on: bool) {
        self.ledger.sweep = on;
    }

    /// The worker's eventfd: readable when a foreign lock wait may have ended.
    pub fn fd(&self) -> RawFd {
        self.waits.fd()
    }

    /// Takes the diagnostics log as text (who waits for which lock, held by
    /// whom; why goals failed without running; ledger violations): the
    /// messages of [`Worker::take_log_records`].
    pub fn take_log(&mut self) -> Vec<String> {
        self.log.take().into_iter().map(|r| r.message).collect()
    }

    /// The diagnostics log's messages so far, without draining it.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.peek().map(|r| r.message.clone()).collect()
    }

    /// Takes the diagnostics log as structured records, oldest first.
    pub fn take_log_records(&mut self) -> Vec<LogRecord> {
        self.log.take()
    }

    /// Takes at most `n` records of the diagnostics log, oldest first; the
    /// rest stay for the next call.
    pub fn take_log_records_up_to(&mut self, n: usize) -> Vec<LogRecord> {
        self.log.take_up_to(n)
    }

    /// The number of records the diagnostics log holds.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Counts for tests and operators: goals by state, locks held (from the
    /// process's lock registry, not from the worker's own bookkeeping), slots,
    /// waits and ledger counters.
    pub fn audit(&self) -> Audit {
        let waits = self.waits.foreign.len();
        self.ledger
            .audit(&self.graph, &self.slots, self.serial, waits)
    }

    /// Makes room for `goals` more goals and `edges` more dependencies, so
    /// that a host that knows the size of its request builds the graph
    /// without regrowing (and copying) the worker's arrays. The room for
    /// dependencies is spread evenly over the goals they may name (in
    /// blocks of 4,096): a request whose dependencies gather on a few goals
    /// still regrows the room of those goals' block.
    pub fn reserve(&mut self, goals: usize, edges: usize) {
        self.graph.reserve(goals, edges);
        self.ready.reserve(goals);
    }

    /// Number of goals.
    pub fn len(&self) -> usize {
        self.graph.len()
    }

    /// `true` if no goal was added.
    pub fn is_empty(&self) -> bool {
        self.graph.len() == 0
    }

    /// Cancels every goal that has not finished and releases everything the
    /// worker holds, including `legacy_hold` lock sets (the host abandons its
    /// goals: G1). Idempotent; `Drop` does it too.
    pub fn abandon(&mut self) {
        if self.fork_gen != generation() {
            return; // a fork child: the parent's locks are not ours to release
        }
        for i in 0..self.graph.len() as u32 {
            if !self.graph.is_finished(i) {
                self.finish_one(i, Outcome::Cancelled, false, &mut Vec::new());
            }
        }
        for set in self.legacy.drain(..) {
            let _ = set.release();
        }
        self.events.clear();
    }

    /// The id of goal `i`.
    pub(super) fn id(&self, i: u32) -> GoalId {
        GoalId::new(self.serial, i)
    }

    /// The index of `goal`, or [`Error::StaleHandle`] for an id of another
    /// worker, a forged one, or one out of range.
    pub(super) fn index(&self, goal: GoalId) -> Result<u32> {
        goal.index_in(self.serial, self.graph.len())
    }

    /// Logs `message` of `kind` about goal `i` (and its output `output`,
    /// when given); returns the record, to be completed.
    pub(super) fn record(
        &mut self,
        kind: LogKind,
        i: u32,
        output: Option<usize>,
        message: String,
    ) -> &mut LogRecord {
        let path = output.and_then(|k| self.graph.outputs(i).get(k));
        self.log.push(LogRecord {
            goal: Some(self.id(i)),
            path: path.map(|p| p.as_path().to_path_buf()),
            ..LogRecord::new(kind, message)
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.abandon();
    }
}
