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

use super::goal::{GoalKind, GoalState};
use super::graph::{Exec, Graph, Phase};
use super::ids::GoalId;
use super::log::{Log, LogKind, LogRecord};
use super::slots::Slots;
use crate::error::{Error, Result};
use crate::lock::{held_where, owner_of, Owner, StorePath};

/// A worker's counts (see `gk_worker_audit`; in Rust, `Worker::audit`,
/// which returns this very struct, whose layout is C's). `locks_held` and
/// `locks_held_by_finished` come from the process's lock registry, not from
/// the worker's own books; `locks_held_by_finished` must always be 0 (G1).
#[repr(C)]
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

/// Whether `GOALKEEPER_DEBUG_SWEEP` asks for a full sweep per call (read
/// once, at load time: see `crate::lifecycle`).
pub(crate) fn sweep_from_env() -> bool {
    static SWEEP: OnceLock<bool> = OnceLock::new();
    *SWEEP.get_or_init(|| {
        std::env::var("GOALKEEPER_DEBUG_SWEEP").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The ledger's own state: what the current call touched, a violation a
/// transition noted, and the counters of the audit.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    touched: Vec<u32>,
    /// The full sweep at every call (tests; the default comes from the
    /// environment).
    pub(crate) sweep: bool,
    noted: Option<String>,
    checks: u64,
    violations: u64,
    /// Goals finished with success (the others of the finished failed).
    pub(crate) succeeded: u64,
    pub(crate) handoffs: u64,
    pub(crate) validity_rechecks: u64,
}

impl Ledger {
    pub(crate) fn new() -> Ledger {
        Ledger {
            sweep: sweep_from_env(),
            ..Ledger::default()
        }
    }
    /// A call begins: nothing touched yet.
    pub(crate) fn begin(&mut self) {
        self.touched.clear();
    }

    /// Records that the current call changed goal `i`'s resources.
    pub(crate) fn touch(&mut self, i: u32) {
        self.touched.push(i);
    }

    /// Records a violation found during a transition (reported at the end of the call).
    pub(crate) fn note(&mut self, msg: String) {
        self.noted.get_or_insert(msg);
    }

    /// The checks at the end of a call (G6): a violation a transition noted;
    /// the slot counters (O(1)); each goal the call touched (O(its
    /// outputs)); and, with the sweep on, every goal and every registry
    /// entry of the worker (`serial`). The first violation found is logged
    /// and returned as [`Error::Invariant`]. A call that touched only plain
    /// goals, with nothing noted and the slot counters right, has nothing
    /// to look up: that screen is all it costs.
    #[inline]
    pub(crate) fn end(
        &mut self,
        graph: &Graph,
        slots: &Slots,
        serial: u32,
        log: &mut Log,
    ) -> Result<()> {
        self.checks += 1;
        let used = slots.used();
        let nothing_to_look_up = self.noted.is_none()
            && !self.sweep
            && used == slots.holders()
            && used <= slots.capacity()
            && self.touched.iter().all(|&i| nothing_to_check(graph, i));
        if nothing_to_look_up {
            return Ok(());
        }
        self.look_up(graph, slots, serial, log)
    }

    /// The checks of [`Ledger::end`] that look things up.
    fn look_up(&mut self, graph: &Graph, slots: &Slots, serial: u32, log: &mut Log) -> Result<()> {
        let used = slots.used();
        let m = self.noted.take().or_else(|| {
            if used != slots.holders() || used > slots.capacity() {
                return Some(format!(
                    "{used} slots are in use but {} running goals hold a slot (max_jobs {})",
                    slots.holders(),
                    slots.max_jobs()
                ));
            }
            let m = self
                .touched
                .iter()
                .find_map(|&i| check_goal(graph, serial, i));
            m.or_else(|| self.sweep.then(|| sweep(graph, slots, serial)).flatten())
        });
        let Some(m) = m else {
            return Ok(());
        };
        self.violations += 1;
        let line = format!("ledger violation: {m}");
        log.push(LogRecord::new(LogKind::LedgerViolation, line));
        Err(Error::Invariant(m))
    }

    /// The worker's counts (see [`Audit`]): `foreign_waits` from its waits,
    /// the locks from the process's registry.
    pub(crate) fn audit(
        &self,
        graph: &Graph,
        slots: &Slots,
        serial: u32,
        foreign_waits: usize,
    ) -> Audit {
        let held = held_by_worker(serial);
        let by_finished = held
            .iter()
            .filter(|(_, o)| {
                GoalId::from_raw(o.tag)
                    .index_in(serial, graph.len())
                    .is_ok_and(|i| graph.is_finished(i))
            })
            .count();
        let c = |s| graph.count(s);
        Audit {
            goals: graph.len() as u64,
            waiting_deps: c(GoalState::WaitingDeps),
            ready: c(GoalState::Ready),
            waiting_slot: c(GoalState::WaitingSlot),
            waiting_lock: c(GoalState::WaitingLock),
            running: c(GoalState::Running),
            finished: c(GoalState::Finished),
            succeeded: self.succeeded,
            failed: c(GoalState::Finished).saturating_sub(self.succeeded),
            locks_held: held.len() as u64,
            locks_held_by_finished: by_finished as u64,
            slots_used: slots.used() as u64,
            max_jobs: slots.max_jobs() as u64,
            foreign_waits: foreign_waits as u64,
            handoffs: self.handoffs,
            validity_rechecks: self.validity_rechecks,
            checks: self.checks,
            violations: self.violations,
        }
    }
}

/// The checks on goal `i` of worker `serial`: O(its outputs). A running
/// build or substitute holds a lock set registered to it, one lock per
/// output; a goal that is not running holds no lock (G1, G2).
fn check_goal(graph: &Graph, serial: u32, i: u32) -> Option<String> {
    if nothing_to_check(graph, i) {
        return None;
    }
    let g = graph.goal(i);
    let id = GoalId::new(serial, i).raw();
    let name = || graph.name(i);
    match &g.phase {
        Phase::Running(Exec::Holding { locks, .. }) => {
            let (o, n) = (locks.owner(), graph.outputs(i).len());
            if o.tag != id {
                return Some(format!("{} runs with a lock set registered to {o}", name()));
            }
            if locks.len() != n {
                return Some(format!(
                    "{} holds {} locks for {n} outputs",
                    name(),
                    locks.len()
                ));
            }
            locks.check().err().map(|e| format!("{}: {e}", name()))
        }
        Phase::Running(Exec::Plain) if g.kind != GoalKind::Plain => Some(format!(
            "{} is running without its output locks and build slot",
            name()
        )),
        Phase::Running(Exec::Plain) => None,
        phase => graph.outputs(i).iter().find_map(|p| {
            let o = owner_of(p).filter(|o| o.tag == id)?;
            let state = match phase.outcome() {
                Some(out) => format!("finished ({out})"),
                None => phase.state().describe().to_string(),
            };
            Some(format!(
                "{} is {state} but still holds the lock on {p} (lock set {}); a goal that is \
                 not running must hold no lock (G1, G2)",
                name(),
                o.lockset
            ))
        }),
    }
}

/// Whether goal `i` holds nothing the checks could look up: a plain goal,
/// whose state owns no lock set (a plain goal never has one, which the
/// checks see if it does).
fn nothing_to_check(graph: &Graph, i: u32) -> bool {
    let g = graph.goal(i);
    g.kind == GoalKind::Plain && !matches!(g.phase, Phase::Running(Exec::Holding { .. }))
}

/// The full O(all) sweep: every goal, the slot holders, and every registry
/// entry of the worker.
fn sweep(graph: &Graph, slots: &Slots, serial: u32) -> Option<String> {
    let mut holders = 0u32;
    for i in 0..graph.len() as u32 {
        if let Phase::Running(Exec::Holding { .. }) = &graph.goal(i).phase {
            holders += 1;
        }
        if let Some(m) = check_goal(graph, serial, i) {
            return Some(m);
        }
    }
    if holders != slots.holders() {
        return Some(format!(
            "{holders} running goals hold slots, but the counter says {}",
            slots.holders()
        ));
    }
    held_by_worker(serial).into_iter().find_map(|(p, o)| {
        let live = GoalId::from_raw(o.tag)
            .index_in(serial, graph.len())
            .ok()
            .and_then(|i| match &graph.goal(i).phase {
                Phase::Running(Exec::Holding { locks, .. }) => Some(locks.id() == o.lockset),
                _ => None,
            });
        (live != Some(true)).then(|| {
            format!("{p} is locked by {o}, which is not a running goal of this worker holding it")
        })
    })
}

/// Every path the process's registry says a goal of worker `serial` holds.
fn held_by_worker(serial: u32) -> Vec<(StorePath, Owner)> {
    held_where(|o| o.tag != 0 && GoalId::from_raw(o.tag).worker() == serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{next_id, LockSet};
    use crate::sched::goal::{BuildMode, Event, Outcome};
    use crate::sched::worker::{Worker, WorkerOptions};

    /// Every single call (a plain goal added, an edge between unfinished
    /// goals, a ready plain goal started, a running plain goal reported
    /// successful) ends with the ledger's checks: with the slot counters
    /// made to disagree (forced), each of them reports the violation.
    #[test]
    fn every_call_reports_what_the_ledger_finds() {
        let mut w = Worker::new(WorkerOptions::default()).unwrap();
        let none: &[&str] = &[];
        let add = |w: &mut Worker| w.add_goal(GoalKind::Plain, none, BuildMode::Normal);
        let a = add(&mut w).unwrap();
        let b = add(&mut w).unwrap();
        let invariant = |r: Result<()>, what: &str| match r {
            Err(Error::Invariant(m)) => assert!(m.contains("slots are in use"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        };
        w.slots.skew_holders(1); // the test hook: a running goal would hold a slot
        invariant(add(&mut w).map(drop), "add_goal");
        invariant(w.add_dependency(b, a), "add_dependency");
        invariant(w.next_event().map(drop), "next_event");
        w.slots.skew_holders(-1);
        // The event was kept for the next call.
        let run_a = Event::Run {
            goal: a,
            kind: GoalKind::Plain,
        };
        assert_eq!(w.next_event().unwrap(), run_a);
        w.slots.skew_holders(1);
        invariant(w.report(a, Outcome::Built), "report");
        w.slots.skew_holders(-1);
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

    /// A plain goal that runs holding a lock set and a slot (which no
    /// transition makes; forced here) is reported at the next call that
    /// touches it.
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
        w.slots.skew_holders(1);
        let locks = Box::new(set);
        w.graph
            .set_phase(g.index(), Phase::Running(Exec::Holding { locks, slot }));

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
