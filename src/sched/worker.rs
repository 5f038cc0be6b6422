//! The worker: one per client request. It owns its goals in an arena and is
//! driven by the host through a pull API: add goals and dependencies, ask for
//! the next event, report outcomes, cancel. It never blocks and never calls
//! back except through the host's predicates, on the calling thread.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lock::{normalize_set, Backend, LockSet, StorePath};
use crate::store_db::StoreDb;

use super::arena::Arena;
use super::batch::BatchScratch;
use super::goal::{BuildMode, GoalKind, GoalResult, GoalState, Outcome, Phase};
use super::ids::{next_worker_serial, GoalId};
use super::ledger::{Audit, Ledger};
use super::log::{Log, LogKind, LogRecord};
use super::ring::Ring;
use super::slots::Slots;
use super::validity::{FnPredicate, PathPredicate, Source, Validity};
use super::waits::{EventFd, ForeignWaits};

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

/// What the host should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Run goal `goal`: its dependencies succeeded, its slot is taken, its
    /// output locks are held, and its outputs were re-checked and are not
    /// valid (or the mode is check). Report the outcome with
    /// [`Worker::report`]. Plain goals hold no lock and no slot.
    Run {
        /// The goal to run.
        goal: GoalId,
        /// Its kind.
        kind: GoalKind,
    },
    /// Goal `goal` finished without running (already valid, dependency
    /// failed, cached failure, cancelled by a failure, could not start).
    Finished {
        /// The goal.
        goal: GoalId,
        /// How it ended.
        outcome: Outcome,
    },
    /// Nothing to do now: poll `fd` for reading (it becomes readable when a
    /// foreign lock wait may have ended) together with your builders, for at
    /// most `timeout` (`None`: no limit), then ask again.
    Wait {
        /// The worker's eventfd.
        fd: RawFd,
        /// When validity re-checks are due.
        timeout: Option<Duration>,
    },
    /// Every goal has finished.
    Done,
}

impl Event {
    pub(crate) fn goal_index(&self) -> Option<u32> {
        match self {
            Event::Run { goal, .. } | Event::Finished { goal, .. } => Some(goal.index()),
            _ => None,
        }
    }
}

/// Counters for the audit.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) handoffs: u64,
    pub(crate) validity_rechecks: u64,
}

/// A scheduler for one client request. See the module docs and
/// doc/design.md#6-the-workers-pull-loop for the pull loop.
pub struct Worker {
    pub(super) serial: u32,
    pub(super) opts: WorkerOptions,
    pub(super) fork_gen: u64,
    pub(super) arena: Arena,
    pub(super) ready: Ring,
    pub(super) slot_queue: VecDeque<u32>,
    pub(super) events: VecDeque<Event>,
    pub(super) slots: Slots,
    /// Running goals that hold a slot token (checked against `slots.used()`).
    pub(super) slot_holders: u32,
    pub(super) waits: ForeignWaits,
    /// (holder, waiter): waiter waits for the completion of holder, a goal of
    /// this worker holding one of its locks.
    pub(super) local_waits: Vec<(u32, u32)>,
    /// `legacy_hold` only: lock sets kept by finished goals.
    pub(super) legacy: Vec<(u32, LockSet)>,
    pub(super) efd: EventFd,
    pub(super) valid: Source,
    pub(super) cached: Option<Box<dyn PathPredicate>>,
    pub(super) ledger: Ledger,
    pub(super) log: Log,
    pub(super) aborting: bool,
    pub(super) stats: Stats,
    pub(super) cascade: Vec<u32>,
    pub(super) scratch: Vec<u32>,
    /// Scratch memory of the batch calls.
    pub(super) batch: BatchScratch,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("serial", &self.serial)
            .field("goals", &self.arena.len())
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
            fork_gen: crate::lock::process_generation(),
            arena: Arena::default(),
            ready: Ring::default(),
            slot_queue: VecDeque::new(),
            events: VecDeque::new(),
            slot_holders: 0,
            waits: ForeignWaits::default(),
            local_waits: Vec::new(),
            legacy: Vec::new(),
            efd: EventFd::new()?,
            valid: Source::Exists,
            cached: None,
            ledger: Ledger::new(),
            log: Log::default(),
            aborting: false,
            stats: Stats::default(),
            cascade: Vec::new(),
            scratch: Vec::new(),
            batch: BatchScratch::default(),
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
        if outputs.is_empty() && kind == GoalKind::Plain {
            return self.add_plain_goal(mode, tag);
        }
        self.begin()?;
        let r = if outputs.is_empty() {
            Ok(Vec::new())
        } else {
            normalize_set(outputs)
        }
        .and_then(|paths| self.add_goal_inner(kind, paths, mode, tag));
        self.end(r)
    }

    /// [`Worker::add_goal_tagged`] for paths already normalised (sorted,
    /// deduplicated).
    pub(crate) fn add_goal_normalized(
        &mut self,
        kind: GoalKind,
        paths: Vec<StorePath>,
        mode: BuildMode,
        tag: u64,
    ) -> Result<GoalId> {
        if paths.is_empty() && kind == GoalKind::Plain {
            return self.add_plain_goal(mode, tag);
        }
        self.begin()?;
        let r = self.add_goal_inner(kind, paths, mode, tag);
        self.end(r)
    }

    /// [`Worker::add_goal`] for a plain goal without outputs: nothing to
    /// validate, share or index.
    #[inline]
    fn add_plain_goal(&mut self, mode: BuildMode, tag: u64) -> Result<GoalId> {
        // The common case: it touches no goal's resources (a cancelled one,
        // after a failure without keep-going, goes the general way).
        if !self.aborting && self.same_process() {
            if let Some(i) = self.arena.push(GoalKind::Plain, mode, Vec::new(), tag) {
                self.ready.push_back(i);
                return self.end_fast(None, Ok(self.id(i)));
            }
        }
        self.add_plain_goal_slow(mode, tag)
    }

    /// [`Worker::add_plain_goal`], every case.
    #[inline(never)]
    fn add_plain_goal_slow(&mut self, mode: BuildMode, tag: u64) -> Result<GoalId> {
        self.begin()?;
        let r = match self.arena.push(GoalKind::Plain, mode, Vec::new(), tag) {
            Some(i) => {
                self.ready.push_back(i);
                if self.aborting {
                    self.finish(i, Outcome::Cancelled, true);
                }
                Ok(self.id(i))
            }
            None => Err(too_many_goals()),
        };
        self.end(r)
    }

    fn add_goal_inner(
        &mut self,
        kind: GoalKind,
        paths: Vec<StorePath>,
        mode: BuildMode,
        tag: u64,
    ) -> Result<GoalId> {
        check_output_count(kind, paths.len())?;
        if kind != GoalKind::Plain {
            if let Some(g) = self.arena.goal_of_path(&paths[0]) {
                let goal = &self.arena.goals[g as usize];
                if goal.kind == kind && self.arena.outputs(g) == paths.as_slice() {
                    self.share(g, mode);
                    return Ok(self.id(g));
                }
            }
            for p in &paths {
                if let Some(g) = self.arena.goal_of_path(p) {
                    return Err(self.overlap_error(p, g));
                }
            }
        }
        let i = self
            .arena
            .push(kind, mode, paths, tag)
            .ok_or_else(too_many_goals)?;
        self.ready.push_back(i);
        if self.aborting {
            self.finish(i, Outcome::Cancelled, true);
        }
        Ok(self.id(i))
    }

    /// Goal `g` is requested again (S9) in `mode`: a stronger mode is
    /// adopted if it has not started; otherwise the log says it keeps its own.
    pub(super) fn share(&mut self, g: u32, mode: BuildMode) {
        let goal = &self.arena.goals[g as usize];
        let started = !matches!(goal.phase, Phase::Ready | Phase::WaitingDeps);
        if mode > goal.mode && !started {
            self.arena.goals[g as usize].mode = mode;
        } else if mode != goal.mode {
            let line = format!(
                "{} was requested again in mode {mode:?}; it keeps mode {:?}",
                self.name(g),
                goal.mode
            );
            let rec = LogRecord::new(LogKind::ModeKept, line).goal(self.id(g));
            self.log.push(rec);
        }
    }

    /// `p`, an output of a new goal, is already an output of goal `g`, which
    /// is not the same goal (another output set, or another kind).
    #[cold]
    pub(super) fn overlap_error(&self, p: &StorePath, g: u32) -> Error {
        Error::InvalidArgument(format!(
            "{p} is already an output of {} ({:?} of {}); goals must not share \
             outputs partly, and the same outputs must be requested with the same kind",
            self.name(g),
            self.arena.goals[g as usize].kind,
            self.describe_outputs(g)
        ))
    }

    /// The host's tag of `goal` (see [`Worker::add_goal_tagged`]).
    #[inline]
    pub fn tag(&self, goal: GoalId) -> Result<u64> {
        Ok(self.arena.goals[self.index(goal)? as usize].tag)
    }

    /// The kind and the tag of `goal`, from one read of its record.
    #[inline]
    pub(crate) fn kind_and_tag(&self, goal: GoalId) -> Result<(GoalKind, u64)> {
        let g = &self.arena.goals[self.index(goal)? as usize];
        Ok((g.kind, g.tag))
    }

    /// Makes `goal` wait for `dep`. `goal` must not have started (it must be
    /// waiting for dependencies or ready). If `dep` already failed, `goal`
    /// ends `DependencyFailed` at once. A goal cannot depend on itself;
    /// longer cycles are reported as [`Error::SchedulerDeadlock`] by
    /// [`Worker::next_event`]. Adding the same edge twice is harmless.
    pub fn add_dependency(&mut self, goal: GoalId, dep: GoalId) -> Result<()> {
        // The common case, decided inline: two distinct goals of this
        // worker, `goal` not started, `dep` not finished. It touches no
        // goal's resources; the ledger's verdict is that of `end`.
        if let (Some(g), Some(d)) = (self.index_fast(goal), self.index_fast(dep)) {
            if g != d
                && self.same_process()
                && matches!(
                    self.arena.goals[g as usize].phase,
                    Phase::Ready | Phase::WaitingDeps
                )
                && !self.arena.is_finished(d)
            {
                self.arena.add_edge(d, g);
                self.arena.add_pending(g);
                return self.end_fast(None, Ok(()));
            }
        }
        self.add_dependency_slow(goal, dep)
    }

    /// [`Worker::add_dependency`], every case.
    #[inline(never)]
    fn add_dependency_slow(&mut self, goal: GoalId, dep: GoalId) -> Result<()> {
        self.begin()?;
        let r = self.add_dependency_inner(goal, dep);
        self.end(r)
    }

    #[inline(always)]
    fn add_dependency_inner(&mut self, goal: GoalId, dep: GoalId) -> Result<()> {
        let (g, d) = (self.index(goal)?, self.index(dep)?);
        if g == d
            || !matches!(
                self.arena.goals[g as usize].phase,
                Phase::Ready | Phase::WaitingDeps
            )
        {
            return Err(self.dependency_refused(g, d));
        }
        // The dependency's record (a likely cache miss) is read only once it
        // has finished.
        if self.arena.is_finished(d) {
            self.dependency_finished(g, d);
        } else {
            self.arena.add_edge(d, g);
            self.arena.add_pending(g);
        }
        Ok(())
    }

    /// Why `g` cannot depend on `d` (itself, or `g` has started).
    #[cold]
    #[inline(never)]
    fn dependency_refused(&self, g: u32, d: u32) -> Error {
        if g == d {
            return Error::InvalidArgument(format!("{} cannot depend on itself", self.name(g)));
        }
        Error::InvalidState(format!(
            "{} is {}; dependencies can only be added before it starts",
            self.name(g),
            state_name(self.arena.goals[g as usize].phase.state())
        ))
    }

    /// `g` is made to depend on `d`, which has finished: nothing to wait
    /// for after a success; otherwise `g` ends `DependencyFailed`.
    #[cold]
    #[inline(never)]
    pub(super) fn dependency_finished(&mut self, g: u32, d: u32) {
        match self.arena.goals[d as usize].phase.outcome() {
            Some(o) if o.is_success() => {}
            _ => self.finish(g, Outcome::DependencyFailed, true),
        }
    }

    /// The next thing for the host to do. Never blocks. Errors:
    /// [`Error::SchedulerDeadlock`] (goals remain but nothing is ready,
    /// running or waited on, e.g. a dependency cycle; the message names the
    /// stuck goals), [`Error::Invariant`] (a ledger violation was found; the
    /// event is kept for the next call).
    pub fn next_event(&mut self) -> Result<Event> {
        // The common case, decided inline: a ready plain goal starts.
        if self.same_process() {
            if let Some(i) = self.start_ready_plain() {
                let ev = Event::Run {
                    goal: self.id(i),
                    kind: GoalKind::Plain,
                };
                return self.end_fast_event(i, ev);
            }
        }
        self.next_event_slow()
    }

    /// [`Worker::next_event`], every case.
    #[inline(never)]
    fn next_event_slow(&mut self) -> Result<Event> {
        self.begin()?;
        let r = self.next_event_inner();
        self.end_event(r)
    }

    /// Reports how a goal that was `Run` ended: `Built`, `Substituted`,
    /// `Failed` or `TimedOut`. A success is checked: if an output is not
    /// valid, the goal is recorded as `Failed` (and the log says why). The
    /// goal's locks are released (with deletion after a success) and its slot
    /// freed before any dependent is woken.
    pub fn report(&mut self, goal: GoalId, outcome: Outcome) -> Result<()> {
        // The common case, decided inline: a running plain goal of this
        // worker reported successful (a plain goal's success is not
        // checked: it has no outputs to lock).
        if let Some(i) = self.index_fast(goal) {
            if outcome.is_reported_success() && self.same_process() && self.plain_running(i) {
                self.finish_plain_success(i, outcome);
                self.prefetch_from_ready_queue();
                return self.end_fast(Some(i), Ok(()));
            }
        }
        self.report_slow(goal, outcome)
    }

    /// [`Worker::report`], every case.
    #[inline(never)]
    fn report_slow(&mut self, goal: GoalId, outcome: Outcome) -> Result<()> {
        self.begin()?;
        let r = self.report_inner(goal, outcome);
        self.end(r)
    }

    #[inline(always)]
    fn report_inner(&mut self, goal: GoalId, outcome: Outcome) -> Result<()> {
        let i = self.index(goal)?;
        if !matches!(
            outcome,
            Outcome::Built | Outcome::Substituted | Outcome::Failed | Outcome::TimedOut
        ) {
            return Err(not_reportable(outcome));
        }
        if !matches!(self.arena.goals[i as usize].phase, Phase::Running(_)) {
            return Err(self.not_running(i));
        }
        let outcome = self.checked_report(i, outcome);
        self.finish(i, outcome, false);
        Ok(())
    }

    /// The outcome to record for a report of `outcome` for running goal
    /// `i`: a success of a goal with outputs is checked.
    #[inline(always)]
    pub(super) fn checked_report(&mut self, i: u32, outcome: Outcome) -> Outcome {
        if outcome.is_success() && self.arena.goals[i as usize].kind != GoalKind::Plain {
            self.checked_success(i, outcome)
        } else {
            outcome
        }
    }

    /// A reported success of goal `i`, checked: `Failed` if an output is
    /// not valid (the log says why).
    #[inline(never)]
    fn checked_success(&mut self, i: u32, outcome: Outcome) -> Outcome {
        match self.validity(i) {
            Validity::Valid => outcome,
            Validity::Invalid(k) => {
                let p = &self.arena.outputs(i)[k];
                let line = format!(
                    "{}: the builder reported success but {p} is not valid; recorded as failed",
                    self.name(i)
                );
                let rec = LogRecord::new(LogKind::NotValidAfterSuccess, line)
                    .goal(GoalId::new(self.serial, i))
                    .path(p);
                self.log.push(rec);
                Outcome::Failed
            }
            Validity::Unknown { k, why } => {
                self.log_unknown(
                    i,
                    k,
                    &why,
                    "the builder reported success; recorded as failed",
                );
                Outcome::Failed
            }
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn not_running(&self, i: u32) -> Error {
        Error::InvalidState(format!(
            "{} is {}, not running; only running goals can be reported",
            self.name(i),
            state_name(self.arena.goals[i as usize].phase.state())
        ))
    }

    /// Cancels a goal that has not finished (a running goal: the host stopped
    /// it). Its locks and slot are released; its dependents end
    /// `DependencyFailed` (reported as `Finished` events). The cancelled goal
    /// itself gets no event.
    pub fn cancel(&mut self, goal: GoalId) -> Result<()> {
        self.begin()?;
        let r = self.index(goal).and_then(|i| {
            if self.arena.goals[i as usize].phase.is_done() {
                let line = format!("{} has already finished", self.name(i));
                return Err(Error::InvalidState(line));
            }
            self.finish(i, Outcome::Cancelled, false);
            Ok(())
        });
        self.end(r)
    }

    /// State, outcome, kind, mode and outputs of a goal, at any time.
    pub fn result(&self, goal: GoalId) -> Result<GoalResult> {
        let i = self.index(goal)?;
        let g = &self.arena.goals[i as usize];
        Ok(GoalResult {
            state: self.arena.state(i),
            outcome: g.phase.outcome(),
            kind: g.kind,
            mode: g.mode,
            outputs: self
                .arena
                .outputs(i)
                .iter()
                .map(|p| p.as_path().to_path_buf())
                .collect(),
        })
    }

    /// The kind of a goal.
    pub fn kind_of(&self, goal: GoalId) -> Result<GoalKind> {
        Ok(self.arena.goals[self.index(goal)? as usize].kind)
    }

    /// The outputs of a goal, sorted.
    pub fn outputs(&self, goal: GoalId) -> Result<&[StorePath]> {
        Ok(self.arena.outputs(self.index(goal)?))
    }

    /// Runs the ledger checks on `goal` (and the slot counters), as every
    /// mutating call does on what it touched.
    pub fn check_goal(&mut self, goal: GoalId) -> Result<()> {
        self.begin()?;
        let r = self.index(goal).map(|i| self.ledger.touch(i));
        self.end(r)
    }

    /// Runs the ledger checks that concern no goal in particular (slot
    /// counters; everything with `GOALKEEPER_DEBUG_SWEEP=1`).
    pub fn check(&mut self) -> Result<()> {
        self.begin()?;
        self.end(Ok(()))
    }

    /// The worker's eventfd: readable when a foreign lock wait may have ended.
    pub fn fd(&self) -> RawFd {
        self.efd.fd()
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
        self.audit_inner()
    }

    /// Makes room for `goals` more goals and `edges` more dependencies, so
    /// that a host that knows the size of its request builds the graph
    /// without regrowing (and copying) the worker's arrays.
    pub fn reserve(&mut self, goals: usize, edges: usize) {
        self.arena.reserve(goals, edges);
        self.ready.reserve(goals);
    }

    /// Number of goals.
    pub fn len(&self) -> usize {
        self.arena.len()
    }

    /// `true` if no goal was added.
    pub fn is_empty(&self) -> bool {
        self.arena.len() == 0
    }

    /// Approximate heap bytes of the goal records and edges (for memory budgets).
    pub fn approx_bytes(&self) -> usize {
        self.arena.approx_bytes()
            + (self.ready.capacity() + self.slot_queue.capacity()) * 4
            + self.events.capacity() * std::mem::size_of::<Event>()
    }

    /// Cancels every goal that has not finished and releases everything the
    /// worker holds, including `legacy_hold` lock sets (the host abandons its
    /// goals: G1). Idempotent; `Drop` does it too.
    pub fn abandon(&mut self) {
        if self.fork_gen != crate::lock::process_generation() {
            return; // a fork child: the parent's locks are not ours to release
        }
        // Every goal finished (a request run to the end): nothing to walk.
        if self.arena.unfinished() > 0 {
            for i in 0..self.arena.len() as u32 {
                if !self.arena.goals[i as usize].phase.is_done() {
                    self.finish_one(i, Outcome::Cancelled, false, false);
                }
            }
        }
        for (_, set) in self.legacy.drain(..) {
            let _ = set.release();
        }
        self.events.clear();
    }

    // ---- helpers shared by the other modules ----

    /// `legacy_hold` (feature `legacy-hold` only): keeps a finished goal's
    /// lock set instead of releasing it, on purpose, and returns `None`;
    /// otherwise hands it back for release.
    pub(super) fn keep_for_legacy_hold(
        &mut self,
        i: u32,
        locks: Box<LockSet>,
    ) -> Option<Box<LockSet>> {
        #[cfg(feature = "legacy-hold")]
        if self.opts.legacy_hold {
            self.legacy.push((i, *locks)); // the #31785 bug, on purpose
            return None;
        }
        let _ = i;
        Some(locks)
    }

    pub(super) fn id(&self, i: u32) -> GoalId {
        GoalId::new(self.serial, i)
    }

    /// The arena index of `goal`, or [`Error::StaleHandle`] for an id of
    /// another worker, a forged one, or one out of range.
    #[inline(always)]
    pub(super) fn index(&self, goal: GoalId) -> Result<u32> {
        // The serial is never 0, so this also refuses the id 0.
        if goal.worker() == self.serial && (goal.index() as usize) < self.arena.len() {
            return Ok(goal.index());
        }
        Err(self.index_error(goal))
    }

    /// [`Worker::index`] for the fast paths: `Some(index)` exactly when
    /// `index` would return `Ok`, in one subtraction and one comparison (an
    /// id of another worker, or 0, is at least 2^32 away from this
    /// worker's first id).
    #[inline(always)]
    pub(super) fn index_fast(&self, goal: GoalId) -> Option<u32> {
        let k = goal.raw().wrapping_sub((self.serial as u64) << 32);
        (k < self.arena.len() as u64).then_some(k as u32)
    }

    /// `true` in the process that made the worker (see [`Worker::begin`]).
    #[inline(always)]
    pub(super) fn same_process(&self) -> bool {
        self.fork_gen == crate::lock::process_generation()
    }

    /// Why `goal` names no goal of this worker (see [`Worker::index`]).
    #[cold]
    #[inline(never)]
    fn index_error(&self, goal: GoalId) -> Error {
        if goal.raw() == 0 {
            return Error::StaleHandle("goal id 0 is never valid".into());
        }
        if goal.worker() != self.serial {
            return Error::StaleHandle(format!(
                "goal id {:#x} does not belong to this worker (worker {})",
                goal.raw(),
                self.serial
            ));
        }
        Error::StaleHandle(format!(
            "goal id {:#x} was never issued by this worker",
            goal.raw()
        ))
    }

    /// The goal of this worker that `owner` (a lock set's owner) is, if any.
    pub(super) fn own_goal(&self, owner: &crate::lock::Owner) -> Option<u32> {
        if owner.tag == 0 {
            return None;
        }
        self.index(GoalId::from_raw(owner.tag)).ok()
    }

    /// Goal `i` as messages name it: `goal 3 (…-glibc-2.39)`, by its index
    /// and its first output (see [`GoalName`]).
    pub(super) fn name(&self, i: u32) -> GoalName<'_> {
        GoalName {
            index: i,
            first_output: self.arena.outputs(i).first(),
        }
    }

    pub(super) fn describe_outputs(&self, i: u32) -> String {
        let outs = self.arena.outputs(i);
        match outs.len() {
            0 => "no outputs".into(),
            1 => outs[0].to_string(),
            n => format!("{} and {} more", outs[0], n - 1),
        }
    }

    #[inline(always)]
    pub(super) fn begin(&mut self) -> Result<()> {
        if self.fork_gen != crate::lock::process_generation() {
            return Err(Error::WrongProcess("worker"));
        }
        self.ledger.begin();
        Ok(())
    }

    /// Ends a boundary call: the ledger checks what the call touched; the
    /// call's own error comes first.
    #[inline(always)]
    pub(super) fn end<T>(&mut self, r: Result<T>) -> Result<T> {
        if self.ledger_clean() {
            self.ledger.count_check();
            return r;
        }
        self.end_full(r)
    }

    /// [`Worker::end`] when the ledger needs its full check.
    #[cold]
    #[inline(never)]
    pub(super) fn end_full<T>(&mut self, r: Result<T>) -> Result<T> {
        match self.check_ledger_full() {
            Ok(()) => r,
            Err(e) => Err(r.err().unwrap_or(e)),
        }
    }

    /// [`Worker::end_event`] for the fast path of [`Worker::next_event`],
    /// which started goal `i` and did not record it.
    #[inline(always)]
    fn end_fast_event(&mut self, i: u32, ev: Event) -> Result<Event> {
        if self.ledger_quiet() && self.plain_and_clean(i) {
            self.ledger.count_check();
            return Ok(ev);
        }
        self.ledger.begin();
        self.end_event(Ok(ev))
    }

    #[inline(always)]
    fn end_event(&mut self, r: Result<Event>) -> Result<Event> {
        if let Ok(ev) = &r {
            if let Some(i) = ev.goal_index() {
                self.ledger.touch(i);
            }
        }
        if self.ledger_clean() {
            self.ledger.count_check();
            return r;
        }
        self.end_event_full(r)
    }

    /// [`Worker::end_event`] when the ledger needs its full check.
    #[cold]
    #[inline(never)]
    fn end_event_full(&mut self, r: Result<Event>) -> Result<Event> {
        match (r, self.check_ledger_full()) {
            (r, Ok(())) => r,
            (Ok(ev), Err(e)) => {
                if ev.goal_index().is_some() {
                    self.events.push_front(ev); // not lost: the next call returns it
                }
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.abandon();
    }
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
            write!(f, " ({})", elide_store_hash(&base))?;
        }
        Ok(())
    }
}

/// `abc…xyz-glibc-2.39` -> `…-glibc-2.39` when the part before the first
/// `-` looks like a store hash (at least 16 letters and digits); anything
/// else unchanged.
fn elide_store_hash(base: &str) -> std::borrow::Cow<'_, str> {
    match base.split_once('-') {
        Some((hash, rest))
            if hash.len() >= 16
                && !rest.is_empty()
                && hash.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("…-{rest}").into()
        }
        _ => base.into(),
    }
}

#[cold]
fn not_reportable(outcome: Outcome) -> Error {
    Error::InvalidArgument(format!(
        "only built, substituted, failed and timed-out can be reported, not {}",
        outcome.name()
    ))
}

/// The kind's rule for the number of outputs: a build has at least one, a
/// substitute exactly one, a plain goal any number.
pub(super) fn check_output_count(kind: GoalKind, n: usize) -> Result<()> {
    match kind {
        GoalKind::Build if n == 0 => Err(Error::InvalidArgument(
            "a build goal needs at least one output".into(),
        )),
        GoalKind::Substitute if n != 1 => Err(Error::InvalidArgument(format!(
            "a substitute goal has exactly one output, not {n}"
        ))),
        _ => Ok(()),
    }
}

#[cold]
pub(super) fn too_many_goals() -> Error {
    Error::InvalidArgument("too many goals in one worker".into())
}

/// A state's name for messages.
pub(crate) fn state_name(s: GoalState) -> &'static str {
    match s {
        GoalState::WaitingDeps => "waiting for dependencies",
        GoalState::Ready => "ready",
        GoalState::WaitingSlot => "waiting for a build slot",
        GoalState::WaitingLock => "waiting for a lock",
        GoalState::Running => "running",
        GoalState::Finished => "finished",
    }
}
