//! The ledger (G6): invariant checks at every boundary call, on what the
//! call touched (O(touched)), and the audit.
//!
//! Checked per touched goal: a goal that is not running holds no lock (the
//! process's lock registry names no path for it: this catches a finished
//! goal that kept its locks, the #31785 bug); a running build or substitute
//! holds its lock set and a slot, and the registry entries of its paths point
//! at that lock set with open descriptors. Checked per call in O(1): the slot
//! counter equals the number of running goals holding a slot token, within
//! `0..=max(1, max_jobs)`. With `GOALKEEPER_DEBUG_SWEEP=1` (read when the
//! worker is created) every call also sweeps every goal and every registry
//! entry of the worker.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::lock::registry::{held_where, Owner};

use super::goal::{Exec, GoalKind, GoalState, Phase};
use super::ids::GoalId;
use super::log::{LogKind, LogRecord};
use super::worker::{state_name, Worker};

/// A worker's counts, from [`Worker::audit`] (in C, `gk_worker_audit`
/// copies them into a `gk_audit`). `locks_held` and
/// `locks_held_by_finished` come from the process's lock registry, not from
/// the worker's own books; `locks_held_by_finished` must always be 0 (G1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Goals in the worker.
    pub goals: u64,
    /// Goals waiting for dependencies.
    pub waiting_deps: u64,
    /// Goals ready to be tried.
    pub ready: u64,
    /// Goals waiting for a build slot.
    pub waiting_slot: u64,
    /// Goals waiting for a lock.
    pub waiting_lock: u64,
    /// Goals running.
    pub running: u64,
    /// Goals finished.
    pub finished: u64,
    /// Goals finished with success (built, substituted, already valid).
    pub succeeded: u64,
    /// Goals finished otherwise (failed, timed out, cached failure,
    /// dependency failed, cancelled).
    pub failed: u64,
    /// Store paths whose locks the process's registry says this worker's goals hold.
    pub locks_held: u64,
    /// Of those, the ones held by goals that have finished (must be 0: G1).
    pub locks_held_by_finished: u64,
    /// Slots in use.
    pub slots_used: u64,
    /// The worker's `max_jobs`.
    pub max_jobs: u64,
    /// Goals waiting on a lock in the kernel (foreign waits).
    pub foreign_waits: u64,
    /// Locks handed over by wait threads so far.
    pub handoffs: u64,
    /// Validity re-checks made while waiting for foreign locks.
    pub validity_rechecks: u64,
    /// Ledger checks run (one per boundary call).
    pub checks: u64,
    /// Ledger violations found.
    pub violations: u64,
}

/// Whether `GOALKEEPER_DEBUG_SWEEP` asks for a full sweep per call (read once).
pub(crate) fn sweep_from_env() -> bool {
    static SWEEP: OnceLock<bool> = OnceLock::new();
    *SWEEP.get_or_init(|| {
        std::env::var("GOALKEEPER_DEBUG_SWEEP").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The ledger's own state: what the current call touched, and counters.
#[derive(Debug)]
pub(crate) struct Ledger {
    touched: Vec<u32>,
    sweep: bool,
    checks: u64,
    violations: u64,
    noted: Option<String>,
}

impl Ledger {
    pub(crate) fn new() -> Ledger {
        Ledger {
            touched: Vec::new(),
            sweep: sweep_from_env(),
            checks: 0,
            violations: 0,
            noted: None,
        }
    }

    #[inline(always)]
    pub(crate) fn begin(&mut self) {
        self.touched.clear();
    }

    /// Records that the current call changed goal `i`'s resources.
    #[inline]
    pub(crate) fn touch(&mut self, i: u32) {
        self.touched.push(i);
    }

    /// Counts a check that found nothing (the inline clean case).
    #[inline(always)]
    pub(crate) fn count_check(&mut self) {
        self.checks += 1;
    }

    /// Records a violation found during a transition (reported at the end of the call).
    pub(crate) fn note(&mut self, msg: String) {
        self.noted.get_or_insert(msg);
    }

    /// Turns the full sweep on or off (tests; the default comes from the environment).
    pub(crate) fn set_sweep(&mut self, on: bool) {
        self.sweep = on;
    }
}

impl Worker {
    /// The checks for the current call (G6) are made at its end, in two
    /// steps: the common case is decided inline ([`Worker::ledger_clean`]):
    /// nothing was noted, no sweep is asked for, the slot counters agree,
    /// and every touched goal is a plain goal that holds no lock set, for
    /// which the full check has nothing to look up. Any other case, and
    /// every touched goal of it, goes through the full check
    /// ([`Worker::check_ledger_full`]), whose first violation is returned as
    /// [`Error::Invariant`] and logged.
    ///
    /// `true` when the full check would find nothing, decided without it:
    /// exactly the cases in which [`Worker::check_ledger_full`] looks at
    /// nothing but the O(1) counters and, per touched goal, its kind and
    /// state (a plain goal that is not running with `Exec::Holding` needs no
    /// registry lookup: `check_one` returns `None` for it).
    #[inline(always)]
    pub(super) fn ledger_clean(&self) -> bool {
        self.ledger_quiet() && self.ledger.touched.iter().all(|&i| self.plain_and_clean(i))
    }

    /// The O(1) part of [`Worker::ledger_clean`]: nothing was noted, no
    /// sweep is asked for, and the slot counters agree. With nothing
    /// touched, the full check would find nothing exactly when this holds.
    #[inline(always)]
    pub(super) fn ledger_quiet(&self) -> bool {
        let used = self.slots.used();
        self.ledger.noted.is_none()
            && !self.ledger.sweep
            && used == self.slot_holders
            && used <= self.slots.capacity()
    }

    /// The per-goal part of [`Worker::ledger_clean`]: goal `i` is a plain
    /// goal that holds no lock set, for which the full check has nothing
    /// to look up.
    #[inline(always)]
    pub(super) fn plain_and_clean(&self, i: u32) -> bool {
        let g = &self.arena.goals[i as usize];
        g.kind == GoalKind::Plain && !matches!(g.phase, Phase::Running(Exec::Holding { .. }))
    }

    /// The end of a call whose fast path touched only goal `i` (or nothing,
    /// `None`) and did not record it: the same verdict as
    /// [`Worker::end`] with `touched` = that goal. The clean case is decided
    /// inline; anything else records the goal and runs the full check.
    #[inline(always)]
    pub(super) fn end_fast<T>(&mut self, touched: Option<u32>, r: Result<T>) -> Result<T> {
        if self.ledger_quiet() && touched.is_none_or(|i| self.plain_and_clean(i)) {
            self.ledger.count_check();
            return r;
        }
        self.ledger.begin();
        if let Some(i) = touched {
            self.ledger.touch(i);
        }
        self.end_full(r)
    }

    /// The full checks (see [`Worker::check_ledger`]).
    #[cold]
    #[inline(never)]
    pub(super) fn check_ledger_full(&mut self) -> Result<()> {
        self.ledger.checks += 1;
        let mut found = self.ledger.noted.take();
        let used = self.slots.used();
        if found.is_none() && (used != self.slot_holders || used > self.slots.capacity()) {
            found = Some(format!(
                "{used} slots are in use but {} running goals hold a slot (max_jobs {})",
                self.slot_holders,
                self.slots.max_jobs()
            ));
        }
        if found.is_none() {
            let touched = std::mem::take(&mut self.ledger.touched);
            for &i in &touched {
                if let Some(m) = self.check_one(i) {
                    found = Some(m);
                    break;
                }
            }
            self.ledger.touched = touched;
        }
        if found.is_none() && self.ledger.sweep {
            found = self.sweep();
        }
        match found {
            None => Ok(()),
            Some(m) => {
                self.ledger.violations += 1;
                self.log.push(LogRecord::new(
                    LogKind::LedgerViolation,
                    format!("ledger violation: {m}"),
                ));
                Err(Error::Invariant(m))
            }
        }
    }

    /// The checks on one goal: O(its outputs).
    fn check_one(&self, i: u32) -> Option<String> {
        let g = &self.arena.goals[i as usize];
        let id = self.id(i);
        match &g.phase {
            Phase::Running(Exec::Holding { locks, .. }) => {
                let o = locks.owner();
                if o.tag != id.raw() {
                    return Some(format!(
                        "{} runs with a lock set registered to {o}",
                        self.name(i)
                    ));
                }
                if locks.len() != self.arena.outputs(i).len() {
                    return Some(format!(
                        "{} holds {} locks for {} outputs",
                        self.name(i),
                        locks.len(),
                        self.arena.outputs(i).len()
                    ));
                }
                if let Err(e) = locks.check() {
                    return Some(format!("{}: {e}", self.name(i)));
                }
                None
            }
            Phase::Running(Exec::Plain) if g.kind != GoalKind::Plain => Some(format!(
                "{} is running without its output locks and build slot",
                self.name(i)
            )),
            Phase::Running(Exec::Plain) => None,
            phase => {
                if g.kind == GoalKind::Plain {
                    return None;
                }
                for p in self.arena.outputs(i) {
                    if let Some(o) = crate::lock::owner_of(p) {
                        if o.tag == id.raw() {
                            let state = match phase.outcome() {
                                Some(out) => format!("finished ({out})"),
                                None => state_name(phase.state()).to_string(),
                            };
                            return Some(format!(
                                "{} is {state} but still holds the lock on {p} (lock set {}); \
                                 a goal that is not running must hold no lock (G1, G2)",
                                self.name(i),
                                o.lockset
                            ));
                        }
                    }
                }
                None
            }
        }
    }

    /// The full O(all) sweep.
    fn sweep(&self) -> Option<String> {
        let mut holders = 0u32;
        for i in 0..self.arena.len() as u32 {
            if let Phase::Running(Exec::Holding { .. }) = &self.arena.goals[i as usize].phase {
                holders += 1;
            }
            if let Some(m) = self.check_one(i) {
                return Some(m);
            }
        }
        if holders != self.slot_holders {
            return Some(format!(
                "{holders} running goals hold slots, but the counter says {}",
                self.slot_holders
            ));
        }
        for (p, o) in self.held_by_my_goals() {
            let id = GoalId::from_raw(o.tag);
            let live =
                self.index(id)
                    .ok()
                    .and_then(|i| match &self.arena.goals[i as usize].phase {
                        Phase::Running(Exec::Holding { locks, .. }) => {
                            Some(locks.id() == o.lockset)
                        }
                        _ => None,
                    });
            if live != Some(true) {
                return Some(format!(
                    "{p} is locked by {o}, which is not a running goal of this worker holding it"
                ));
            }
        }
        None
    }

    /// Every path the process's registry says a goal of this worker holds.
    fn held_by_my_goals(&self) -> Vec<(crate::lock::StorePath, Owner)> {
        let serial = self.serial;
        held_where(|o| o.tag != 0 && GoalId::from_raw(o.tag).worker() == serial)
    }

    /// Turns the full sweep on or off for this worker (the default comes
    /// from `GOALKEEPER_DEBUG_SWEEP`).
    pub fn set_debug_sweep(&mut self, on: bool) {
        self.ledger.set_sweep(on);
    }

    pub(super) fn audit_inner(&self) -> Audit {
        let held = self.held_by_my_goals();
        let by_finished = held
            .iter()
            .filter(|(_, o)| {
                self.index(GoalId::from_raw(o.tag))
                    .map(|i| self.arena.goals[i as usize].phase.is_done())
                    .unwrap_or(true)
            })
            .count();
        let c = |s| self.arena.count(s);
        Audit {
            goals: self.arena.len() as u64,
            waiting_deps: c(GoalState::WaitingDeps),
            ready: c(GoalState::Ready),
            waiting_slot: c(GoalState::WaitingSlot),
            waiting_lock: c(GoalState::WaitingLock),
            running: c(GoalState::Running),
            finished: c(GoalState::Finished),
            succeeded: self.stats.succeeded,
            failed: self.stats.failed,
            locks_held: held.len() as u64,
            locks_held_by_finished: by_finished as u64,
            slots_used: self.slots.used() as u64,
            max_jobs: self.slots.max_jobs() as u64,
            foreign_waits: self.waits.len() as u64,
            handoffs: self.stats.handoffs,
            validity_rechecks: self.stats.validity_rechecks,
            checks: self.ledger.checks,
            violations: self.ledger.violations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::lock::{next_id, LockSet, StorePath};
    use crate::sched::{BuildMode, Event, Outcome, WorkerOptions};

    /// The fast paths of the single calls (a plain goal added, an edge
    /// between unfinished goals, a ready plain goal started, a running
    /// plain goal reported successful) decide the ledger's clean case
    /// inline; anything else must still get the full check's verdict. With
    /// the slot counters made to disagree (forced), each of them reports
    /// the violation, as the general path does.
    #[test]
    fn the_fast_paths_report_what_the_full_check_finds() {
        let mut w = Worker::new(WorkerOptions::default()).unwrap();
        let none: &[&str] = &[];
        let add = |w: &mut Worker| w.add_goal(GoalKind::Plain, none, BuildMode::Normal);
        let a = add(&mut w).unwrap();
        let b = add(&mut w).unwrap();
        let invariant = |r: Result<()>, what: &str| match r {
            Err(Error::Invariant(m)) => assert!(m.contains("slots are in use"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        };
        w.slot_holders += 1; // the test hook: a running goal would hold a slot
        invariant(add(&mut w).map(drop), "add_goal");
        invariant(w.add_dependency(b, a), "add_dependency");
        invariant(w.next_event().map(drop), "next_event");
        w.slot_holders -= 1;
        // The event was kept for the next call.
        let run_a = Event::Run {
            goal: a,
            kind: GoalKind::Plain,
        };
        assert_eq!(w.next_event().unwrap(), run_a);
        w.slot_holders += 1;
        invariant(w.report(a, Outcome::Built), "report");
        w.slot_holders -= 1;
        assert_eq!(w.audit().violations, 4);
        // The calls took effect all the same (the ledger reports; it does
        // not undo): a finished, b ready (its only dependency succeeded).
        assert_eq!(w.result(a).unwrap().outcome, Some(Outcome::Built));
        assert_eq!(
            w.next_event().unwrap(),
            Event::Run {
                goal: b,
                kind: GoalKind::Plain
            }
        );
    }

    /// The ledger's inline fast path accepts only touched plain goals that
    /// hold no lock set. A plain goal that runs holding a lock set and a
    /// slot (which no transition makes; forced here) must still be
    /// reported, by the full check, at the next call that touches it.
    #[test]
    fn a_touched_plain_goal_holding_locks_is_still_reported() {
        let dir = std::env::temp_dir().join(format!(
            "gk-ledger-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Worker::new(WorkerOptions::default()).unwrap();
        let none: &[&str] = &[];
        let g = w
            .add_goal(GoalKind::Plain, none, BuildMode::Normal)
            .unwrap();
        let other = w
            .add_goal(GoalKind::Plain, none, BuildMode::Normal)
            .unwrap();
        assert_eq!(
            w.next_event().unwrap(),
            Event::Run {
                goal: g,
                kind: GoalKind::Plain
            }
        );
        w.check_goal(g).expect("a running plain goal holds nothing");

        // The test hook: a lock set registered to the goal, and a slot.
        let owner = Owner {
            lockset: next_id(),
            tag: g.raw(),
        };
        let paths = vec![StorePath::new(dir.join("x")).unwrap()];
        // Miri has flock but not OFD locks; the backend is beside the point.
        let backend = if cfg!(miri) {
            crate::lock::Backend::Flock
        } else {
            w.opts.backend
        };
        let set = LockSet::try_for_owner(owner, paths, backend, None)
            .unwrap()
            .unwrap();
        let slot = w.slots.try_take(GoalKind::Build).unwrap();
        w.slot_holders += 1;
        w.arena.goals[g.index() as usize].phase =
            Phase::Running(Exec::Holding { locks: set, slot });

        // A call that touches another goal only: the slot counters still
        // agree, so it passes, as before.
        w.check_goal(other)
            .expect("untouched goals are not checked");
        // A call that touches it: reported.
        let e = w.check_goal(g).unwrap_err().to_string();
        assert!(e.contains("holds 1 locks for 0 outputs"), "{e}");
        assert_eq!(w.audit().violations, 1);
        // Its terminal transition releases what its state holds, as for
        // any goal (G1), and the ledger then finds nothing.
        w.report(g, Outcome::Built).unwrap();
        assert!(!crate::lock::is_held_by_me(
            &StorePath::new(dir.join("x")).unwrap()
        ));
        assert_eq!((w.audit().slots_used, w.audit().violations), (0, 1));
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
