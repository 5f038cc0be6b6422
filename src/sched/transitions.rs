//! The goal life cycle: ready -> slot -> locks -> validity re-check -> run,
//! the waits in between (holding nothing, G2), and the terminal transition
//! that releases everything before waking anyone (G1). Each transition
//! moves a goal between the worker's components through their own methods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::goal::{BuildMode, Event, GoalKind, GoalState, Outcome};
use super::graph::{Exec, Phase, WaitRef};
use super::ids::GoalId;
use super::log::LogKind;
use super::slots::SlotToken;
use super::validity::{Source, Validity};
use super::waits::ForeignWait;
use super::worker::Worker;
use crate::error::{Error, Result};
use crate::lock::{next_id, LockFile, LockSet, Owner, StorePath};

impl Worker {
    /// One step of the pull loop: the next event. In order: an event a
    /// transition queued; the kernel waits, when the eventfd fired or a
    /// re-check is due; the next ready goal (a plain goal runs at once, a
    /// build or substitute goal goes on to its slot and locks, see
    /// [`Worker::try_run`]); a goal waiting for a slot that is free. With
    /// none of these, `Wait` while something runs or is waited for, `Done`
    /// once every goal finished, and otherwise a deadlock (G3).
    #[inline(always)]
    pub(super) fn step(&mut self) -> Result<Event> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                if let Event::Run { goal, .. } = ev {
                    if !matches!(self.graph.goal(goal.index()).phase, Phase::Running(_)) {
                        continue; // cancelled before the host heard of it
                    }
                }
                return Ok(ev);
            }
            if !self.waits.foreign.is_empty() {
                self.poll_foreign_waits();
                if !self.events.is_empty() {
                    continue;
                }
            }
            let Some(i) = self.ready.pop_front() else {
                if self.wake_slot_waiter(false) {
                    continue;
                }
                return self.idle();
            };
            if self.graph.state(i) != GoalState::Ready {
                continue; // a stale queue entry
            }
            let kind = self.graph.goal(i).kind;
            if kind == GoalKind::Plain {
                self.graph.set_phase(i, Phase::Running(Exec::Plain));
                return Ok(Event::Run {
                    goal: self.id(i),
                    kind,
                });
            }
            // A build or substitute goal: already valid (finished), or on to
            // its slot and locks. The check before locking only saves taking
            // locks for valid outputs: the check under them decides (or the
            // goal waits).
            match self.validity_unless_check(i) {
                Validity::Valid => self.finish(i, Outcome::AlreadyValid, true),
                Validity::Unknown(k, why) => {
                    self.log_unknown(i, k, &why, "it goes on to take its locks");
                    self.try_run(i, None);
                }
                Validity::Invalid(_) => self.try_run(i, None),
            }
        }
    }

    /// The step's answer when nothing is ready (see [`Worker::step`]).
    fn idle(&mut self) -> Result<Event> {
        // A goal waiting for another goal of this worker waits for a
        // running goal: only running goals hold locks (G2).
        if !self.waits.foreign.is_empty() || self.graph.count(GoalState::Running) > 0 {
            let now = Instant::now();
            let timeout = self.waits.earliest_recheck().map(|t| {
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            return Ok(Event::Wait {
                fd: self.waits.fd(),
                timeout,
            });
        }
        if self.graph.unfinished() > 0 {
            return Err(self.deadlock_error());
        }
        Ok(Event::Done)
    }

    /// Takes a slot, then all output locks (sorted, all or nothing; `in_hand`
    /// is a lock a wait thread already got), then re-checks validity. On
    /// success the goal is running and a `Run` event is queued; otherwise it
    /// waits holding nothing, or finishes.
    fn try_run(&mut self, i: u32, in_hand: Option<(usize, LockFile)>) {
        let kind = self.graph.goal(i).kind;
        let Some(token) = self.slots.try_take(kind) else {
            drop(in_hand); // G2/S4: never hold a lock while waiting for a slot
            if kind == GoalKind::Build && self.slots.max_jobs() == 0 {
                let line = format!(
                    "{} cannot be built: max_jobs is 0, so no local build may run \
                     (only substitutions)",
                    self.graph.name(i)
                );
                self.record(LogKind::NoBuildSlots, i, None, line);
                return self.finish(i, Outcome::Failed, true);
            }
            self.graph.set_phase(i, Phase::WaitingSlot);
            self.slots.wait(i);
            return;
        };
        let owner = Owner {
            lockset: next_id(),
            tag: self.id(i).raw(),
        };
        let paths = self.graph.outputs(i).to_vec();
        match LockSet::try_for_owner(owner, paths, self.opts.backend, in_hand) {
            Ok(Ok(set)) => {
                let locks = Box::new(set);
                let phase = Phase::Running(Exec::Holding { locks, slot: token });
                self.graph.set_phase(i, phase);
                self.slots.hold();
                self.ledger.touch(i);
                match self.validity_unless_check(i) {
                    Validity::Valid => self.finish(i, Outcome::AlreadyValid, true),
                    Validity::Unknown(k, why) => {
                        self.log_unknown(i, k, &why, "failed without running it");
                        self.finish(i, Outcome::Failed, true);
                    }
                    Validity::Invalid(_)
                        if kind == GoalKind::Build && self.any_cached_failure(i) =>
                    {
                        self.finish(i, Outcome::CachedFailure, true)
                    }
                    Validity::Invalid(_) => self.events.push_back(Event::Run {
                        goal: self.id(i),
                        kind,
                    }),
                }
            }
            Ok(Err((mut paths, k))) => {
                self.give_back_slot(token, false);
                let path = paths.swap_remove(k);
                self.wait_foreign(i, k, path, None);
            }
            Err(Error::HeldByThisProcess { path, lockset, tag }) => {
                self.give_back_slot(token, false);
                let outs = self.graph.outputs(i);
                let k = outs.iter().position(|p| p.as_path() == path);
                let k = k.unwrap_or_default();
                let holder = GoalId::from_raw(tag)
                    .index_in(self.serial, self.graph.len())
                    .ok()
                    .filter(|&h| h != i && !self.graph.is_finished(h));
                match holder {
                    Some(h) => {
                        let line = format!(
                            "{} waits for {}, held by {} of this worker",
                            self.graph.name(i),
                            outs[k].lock_path().display(),
                            self.graph.name(h)
                        );
                        let holder_goal = Some(self.id(h));
                        let rec = self.record(LogKind::WaitsLocal, i, Some(k), line);
                        (rec.holder_pid, rec.holder_goal) = (Some(crate::base::pid()), holder_goal);
                        self.graph
                            .set_phase(i, Phase::WaitingLock(WaitRef::Local(h)));
                        self.waits.add_local(h, i);
                    }
                    // Another worker or lock set of this process, or a finished
                    // goal that kept its lock (legacy_hold): wait in the kernel.
                    None => {
                        let path = outs[k].clone();
                        self.wait_foreign(i, k, path, Some(Owner { lockset, tag }));
                    }
                }
            }
            Err(e) => {
                self.give_back_slot(token, false);
                let line = format!("{} could not lock its outputs: {e}", self.graph.name(i));
                self.record(LogKind::CouldNotLock, i, None, line);
                self.finish(i, Outcome::Failed, true);
            }
        }
    }

    /// Starts a kernel wait for `path` (output `k` of goal `i`, held by
    /// `owner` when it is held in this process) on a helper thread; the
    /// goal holds nothing meanwhile.
    fn wait_foreign(&mut self, i: u32, k: usize, path: StorePath, owner: Option<Owner>) {
        // Who holds it: the text, the holding process when known (this
        // process for its own lock sets and goals; for another process, the
        // lowest pid `/proc` names), and the holding goal of this process.
        let me = Some(crate::base::pid());
        let (who, pid, goal) = match owner {
            Some(o) if o.tag != 0 => {
                let g = GoalId::from_raw(o.tag);
                let whose = match g.worker() {
                    w if w == self.serial => "this worker".to_string(),
                    w => format!("worker {w} in this process"),
                };
                (
                    format!("{g} of {whose} (lock set {})", o.lockset),
                    me,
                    Some(g),
                )
            }
            Some(o) => (format!("lock set {} in this process", o.lockset), me, None),
            None => match crate::inspect::describe_holders_and_pids(path.lock_path()) {
                Some((who, pids)) => (
                    format!("another process ({who})"),
                    pids.first().copied(),
                    None,
                ),
                None => ("another process".to_string(), None, None),
            },
        };
        let line = format!(
            "{} waits for {}, held by {who}",
            self.graph.name(i),
            path.lock_path().display(),
        );
        let rec = self.record(LogKind::WaitsForeign, i, Some(k), line);
        (rec.holder_pid, rec.holder_goal) = (pid, goal);
        let recheck =
            (self.graph.goal(i).mode != BuildMode::Check).then_some(self.opts.recheck_interval);
        match self
            .waits
            .start_foreign((i, k, path), self.opts.backend, recheck)
        {
            Ok(()) => {
                self.graph
                    .set_phase(i, Phase::WaitingLock(WaitRef::Foreign));
            }
            Err(e) => {
                let line = format!("{} could not wait for its lock: {e}", self.graph.name(i));
                self.record(LogKind::CouldNotLock, i, None, line);
                self.finish(i, Outcome::Failed, true);
            }
        }
    }

    /// Looks at the kernel waits, if the eventfd fired or a re-check is due.
    fn poll_foreign_waits(&mut self) {
        // Drain first, then poll: a wait that ends after the poll writes the
        // eventfd after the drain, so it is never missed.
        let fired = self.waits.drain();
        let now = Instant::now();
        let due = self.waits.earliest_recheck().is_some_and(|t| t <= now);
        if !fired && !due {
            return;
        }
        let goals: Vec<u32> = self.waits.foreign.iter().map(|w| w.goal).collect();
        for g in goals {
            let Some(w) = self.waits.foreign_mut(g) else {
                continue; // finished by an earlier step of this loop
            };
            let recheck = w.next_recheck.is_some_and(|t| t <= now);
            if let Some(r) = (fired || recheck).then(|| w.wait.poll()).flatten() {
                let w = self.waits.remove_foreign(g).expect("present");
                self.handoff(w, r);
            } else if recheck {
                self.recheck(g, now);
            }
            // One goal's news per step: a goal takes its locks in the call
            // that tells the host it runs, never in an earlier one that
            // returns another goal's event. The rest wait for the next step.
            if !self.events.is_empty() {
                self.waits.unseen = fired;
                return;
            }
        }
    }

    /// A validity re-check of goal `g`, waiting in the kernel (S3): valid now,
    /// it finishes without the lock; otherwise it keeps waiting, and the
    /// log says when an output appears on disk without being valid, or
    /// when the store database's answer changes.
    fn recheck(&mut self, g: u32, now: Instant) {
        let w = self.waits.foreign_mut(g).expect("present");
        let (waited_k, waited) = (w.k, w.wait.started().elapsed());
        self.ledger.validity_rechecks += 1;
        let unknown = match self.validity(g) {
            Validity::Valid => {
                let line = format!(
                    "{} became valid while waiting for its lock; finished without taking \
                     the lock",
                    self.graph.name(g)
                );
                self.record(LogKind::BecameValid, g, Some(waited_k), line)
                    .duration = Some(waited);
                return self.finish(g, Outcome::AlreadyValid, true);
            }
            Validity::Invalid(k) => {
                // An output on disk but not valid: being written in place by
                // the lock's holder (or left by a build that did not finish).
                // Say so when that starts (never with the default source,
                // for which existing is being valid).
                let p = &self.graph.outputs(g)[k];
                let on_disk = !matches!(self.valid, Source::Exists)
                    && std::fs::symlink_metadata(p.as_path()).is_ok();
                let w = self.waits.foreign_mut(g).expect("present");
                let starts = on_disk && !w.on_disk;
                w.on_disk = on_disk;
                if starts {
                    let why = match &self.valid {
                        Source::Database(db) => {
                            format!("is not registered in {}", db.path().display())
                        }
                        _ => "the host's validity predicate says it is not valid".to_string(),
                    };
                    let line = format!(
                        "{}: re-check: {} exists on disk but {why}: still being built, or left \
                         by a build that did not finish; not taken as valid, it keeps waiting \
                         for its lock",
                        self.graph.name(g),
                        self.graph.outputs(g)[k]
                    );
                    self.record(LogKind::OnDiskNotValid, g, Some(k), line)
                        .duration = Some(waited);
                }
                None
            }
            Validity::Unknown(k, why) => Some((k, why)),
        };
        let w = self.waits.foreign_mut(g).expect("present");
        let before = std::mem::replace(&mut w.unknown, unknown.as_ref().map(|u| u.1.clone()));
        w.next_recheck = Some(now + self.opts.recheck_interval);
        // Keep waiting; say so when the database's answer changes.
        match (before, unknown) {
            (b, Some((k, why))) if b.as_deref() != Some(why.as_str()) => {
                self.log_unknown(g, k, &why, "keeps waiting for its lock");
            }
            (Some(_), None) => {
                let line = format!(
                    "{}: the store database answers again; its outputs are not valid yet, it \
                     keeps waiting for its lock",
                    self.graph.name(g)
                );
                self.record(LogKind::ValidityUnknown, g, None, line);
            }
            _ => {}
        }
    }

    /// A wait thread got the lock (or failed).
    fn handoff(&mut self, w: ForeignWait, r: Result<LockFile>) {
        let ForeignWait {
            goal: g, k, wait, ..
        } = w;
        self.ledger.handoffs += 1;
        let waited = wait.started().elapsed();
        drop(wait);
        // Out of the wait state (its table entry is gone); nothing is held yet.
        self.graph.set_phase(g, Phase::Ready);
        let lock = match r {
            Err(Error::HeldByThisProcess { lockset, tag, .. }) => {
                // Taken by someone in this process meanwhile: wait again.
                let path = self.graph.outputs(g)[k].clone();
                return self.wait_foreign(g, k, path, Some(Owner { lockset, tag }));
            }
            Err(e) => {
                let line = format!("{} failed waiting for its lock: {e}", self.graph.name(g));
                self.record(LogKind::CouldNotLock, g, Some(k), line)
                    .duration = Some(waited);
                return self.finish(g, Outcome::Failed, true);
            }
            Ok(lock) => lock,
        };
        let got = format!(
            "{} got {} handed over after {} ms",
            self.graph.name(g),
            self.graph.outputs(g)[k].lock_path().display(),
            waited.as_millis()
        );
        match self.validity_unless_check(g) {
            Validity::Invalid(_) => {}
            Validity::Valid => {
                let line = format!("{got} and its outputs are valid now; finished without running");
                self.record(LogKind::BecameValid, g, Some(k), line).duration = Some(waited);
                // Valid now: deleting the lock file is allowed.
                self.release_handed_over(g, k, lock, true);
                return self.finish(g, Outcome::AlreadyValid, true);
            }
            Validity::Unknown(bad, why) => {
                // Not known to be valid: the lock file stays.
                self.release_handed_over(g, k, lock, false);
                let then = "got its lock handed over, gave it back and failed without running";
                self.log_unknown(g, bad, &why, then);
                return self.finish(g, Outcome::Failed, true);
            }
        }
        self.record(LogKind::HandedOver, g, Some(k), got).duration = Some(waited);
        self.try_run(g, Some((k, lock)));
    }

    /// Releases a lock of output `k` that a wait thread handed over and goal
    /// `g` will not use (with deletion only when its outputs are valid); a
    /// failure is logged.
    fn release_handed_over(&mut self, g: u32, k: usize, lock: LockFile, delete: bool) {
        if let Err(e) = lock.release(&self.graph.outputs(g)[k], delete) {
            let line = format!("{}: {e}", self.graph.name(g));
            self.record(LogKind::ReleaseFailed, g, Some(k), line);
        }
    }

    /// S5: wakes the first goal waiting for a slot, if one is free for it
    /// (given back, or left unused by the goal woken for it, e.g. cancelled),
    /// to the front of the ready queue (`front`) or to its back.
    fn wake_slot_waiter(&mut self, front: bool) -> bool {
        let graph = &self.graph;
        let waiting =
            |w| matches!(graph.goal(w).phase, Phase::WaitingSlot).then(|| graph.goal(w).kind);
        let Some(w) = self.slots.next_waiter(waiting) else {
            return false;
        };
        self.graph.set_phase(w, Phase::Ready);
        if front {
            self.ready.push_front(w);
        } else {
            self.ready.push_back(w);
        }
        true
    }

    /// Returns a slot (of a goal that ran with it, `was_held`) and wakes
    /// the first goal waiting for one.
    fn give_back_slot(&mut self, token: SlotToken, was_held: bool) {
        if !self.slots.give_back(token, was_held) {
            self.ledger
                .note("a slot was given back while none was in use".into());
        }
        self.wake_slot_waiter(true);
    }

    /// Goal `g` (not started) waits for goal `d`: an edge while `d` has not
    /// finished; nothing after its success; after its failure `g` ends
    /// dependency-failed, and the result is `true` (`g` takes no more).
    #[inline(always)]
    pub(super) fn depend(&mut self, g: u32, d: u32) -> bool {
        if !self.graph.is_finished(d) {
            self.graph.add_edge(d, g);
            return false;
        }
        let ended = self.graph.goal(d).phase.outcome();
        let failed = !ended.is_some_and(Outcome::is_success);
        if failed {
            self.finish(g, Outcome::DependencyFailed, true);
        }
        failed
    }

    /// Ends goal `i` with `outcome` (`emit`: with a `Finished` event):
    /// releases what it holds, then wakes its dependents; a failure ends the
    /// dependents `DependencyFailed`, and without keep-going cancels every
    /// goal that is not running.
    #[inline(never)]
    pub(super) fn finish(&mut self, i: u32, outcome: Outcome, emit: bool) {
        let mut failed = Vec::new();
        self.finish_one(i, outcome, emit, &mut failed);
        if !outcome.is_success() {
            self.fail(i, outcome, failed);
        }
    }

    /// The rest of [`Worker::finish`] after goal `i` failed: its unfinished
    /// dependents (`failed`) end dependency-failed, and without keep-going
    /// the goals that are not running are cancelled.
    #[inline(never)]
    fn fail(&mut self, i: u32, outcome: Outcome, mut failed: Vec<u32>) {
        while let Some(d) = failed.pop() {
            if !self.graph.is_finished(d) {
                self.finish_one(d, Outcome::DependencyFailed, true, &mut failed);
            }
        }
        if outcome.stops_the_worker() && !self.opts.keep_going && !self.aborting {
            self.abort(i);
        }
    }

    /// The terminal transition of one goal (G1): the state value, and with
    /// it the lock set and slot token, is taken out and released here,
    /// before anyone is woken. After a failure, its unfinished dependents
    /// go onto `failed` (which `finish` ends dependency-failed).
    pub(super) fn finish_one(
        &mut self,
        i: u32,
        outcome: Outcome,
        emit: bool,
        failed: &mut Vec<u32>,
    ) {
        let old = self.graph.set_phase(i, Phase::Done(outcome));
        self.ledger.succeeded += u64::from(outcome.is_success());
        self.ledger.touch(i);
        match old {
            Phase::Running(Exec::Holding { locks, slot }) => {
                self.release(i, *locks, slot, outcome.is_success())
            }
            // Abandons the kernel wait: its thread releases the lock as soon as it gets it.
            Phase::WaitingLock(WaitRef::Foreign) => drop(self.waits.remove_foreign(i)),
            Phase::WaitingLock(WaitRef::Local(h)) => self.waits.remove_local(h, i),
            Phase::Done(first) => {
                let line = format!(
                    "{} finished twice ({first}, then {outcome})",
                    self.graph.name(i)
                );
                self.ledger.note(line);
            }
            Phase::WaitingDeps | Phase::Ready | Phase::WaitingSlot | Phase::Running(_) => {}
        }
        if emit {
            self.events.push_back(Event::Finished {
                goal: self.id(i),
                outcome,
            });
        }
        // Wake-ups, after the release: the goals of this worker that waited
        // for one of its locks (first in the queue), then its dependents.
        for w in self.waits.take_local_waiters(i) {
            self.graph.set_phase(w, Phase::Ready);
            self.ready.push_front(w);
        }
        let (ready, success) = (&mut self.ready, outcome.is_success());
        self.graph.dependents(i, success, |d| match success {
            true => ready.push_back(d),
            false => failed.push(d),
        });
    }

    /// Releases what a running build or substitute goal held (a plain goal
    /// holds nothing): its lock set (deleting the lock files after a
    /// success: the outputs were checked valid) and its slot.
    fn release(&mut self, i: u32, mut locks: LockSet, slot: SlotToken, success: bool) {
        locks.set_deletion(success);
        if cfg!(feature = "legacy-hold") && self.opts.legacy_hold {
            self.legacy.push(locks); // the #31785 bug, on purpose
        } else if let Err(e) = locks.release() {
            let line = format!("{}: releasing its locks: {e}", self.graph.name(i));
            self.record(LogKind::ReleaseFailed, i, None, line);
        }
        self.give_back_slot(slot, true);
    }

    /// A failure without keep-going: every goal that is not running ends
    /// `Cancelled` (running goals end when the host reports them).
    fn abort(&mut self, cause: u32) {
        self.aborting = true;
        let mut n = 0;
        for j in 0..self.graph.len() as u32 {
            if !matches!(self.graph.goal(j).phase, Phase::Done(_) | Phase::Running(_)) {
                self.finish_one(j, Outcome::Cancelled, true, &mut Vec::new());
                n += 1;
            }
        }
        let line = format!(
            "{} failed and keep-going is off: cancelled {n} goals that were not running",
            self.graph.name(cause)
        );
        self.record(LogKind::CancelledByFailure, cause, None, line);
    }

    /// The outcome to record for a report of `outcome` for running goal
    /// `i`: a reported success of a goal with outputs is checked, and is
    /// `Failed` if an output is not valid (the log says why).
    pub(super) fn checked_report(&mut self, i: u32, outcome: Outcome) -> Outcome {
        if !outcome.is_success() || self.graph.goal(i).kind == GoalKind::Plain {
            return outcome;
        }
        match self.validity(i) {
            Validity::Valid => outcome,
            Validity::Invalid(k) => {
                let line = format!(
                    "{}: the builder reported success but {} is not valid; recorded as failed",
                    self.graph.name(i),
                    self.graph.outputs(i)[k]
                );
                self.record(LogKind::NotValidAfterSuccess, i, Some(k), line);
                Outcome::Failed
            }
            Validity::Unknown(k, why) => {
                let then = "the builder reported success; recorded as failed";
                self.log_unknown(i, k, &why, then);
                Outcome::Failed
            }
        }
    }

    /// What the validity source says about goal `i`'s outputs, asked in
    /// order, up to the first that is not valid or cannot be answered for.
    /// A host predicate's error is logged (and counts as "not valid").
    pub(super) fn validity(&mut self, i: u32) -> Validity {
        let n = self.graph.outputs(i).len();
        if n == 0 {
            return Validity::Invalid(0);
        }
        for k in 0..n {
            let p = &self.graph.outputs(i)[k];
            let valid = match &mut self.valid {
                Source::Exists => std::fs::symlink_metadata(p.as_path()).is_ok(),
                Source::Host(pred) => match pred.ask(p) {
                    Ok(v) => v,
                    Err(e) => {
                        let line = format!("validity predicate failed on {p}: {e}; taken as no");
                        self.record(LogKind::PredicateError, i, Some(k), line);
                        false
                    }
                },
                Source::Database(db) => match db.is_valid(p.as_path()) {
                    Ok(v) => v,
                    Err(e) => return Validity::Unknown(k, e.to_string()),
                },
            };
            if !valid {
                return Validity::Invalid(k);
            }
        }
        Validity::Valid
    }

    /// [`Worker::validity`], except in check mode, where outputs are rebuilt
    /// whether valid or not (answered `Invalid` without asking).
    fn validity_unless_check(&mut self, i: u32) -> Validity {
        if self.graph.goal(i).mode == BuildMode::Check {
            Validity::Invalid(0)
        } else {
            self.validity(i)
        }
    }

    /// Logs that the store database could not say whether output `k` of goal
    /// `i` is valid, and what the goal does about it (`then`).
    fn log_unknown(&mut self, i: u32, k: usize, why: &str, then: &str) {
        let line = format!(
            "{}: cannot tell whether {} is valid ({why}); never taken as valid: {then}",
            self.graph.name(i),
            self.graph.outputs(i)[k]
        );
        self.record(LogKind::ValidityUnknown, i, Some(k), line);
    }

    /// Whether the host's cached-failure predicate says an output of goal
    /// `i` failed before (a predicate error is logged and taken as no).
    fn any_cached_failure(&mut self, i: u32) -> bool {
        let Some(mut pred) = self.cached.take() else {
            return false;
        };
        let mut found = false;
        for k in 0..self.graph.outputs(i).len() {
            let p = &self.graph.outputs(i)[k];
            let (kind, line) = match pred.ask(p) {
                Ok(false) => continue,
                Ok(true) => (
                    LogKind::CachedFailure,
                    format!("{} has a cached failure: {p}", self.graph.name(i)),
                ),
                Err(e) => (
                    LogKind::PredicateError,
                    format!("cached-failure predicate failed on {p}: {e}; taken as no"),
                ),
            };
            self.record(kind, i, Some(k), line);
            if kind == LogKind::CachedFailure {
                found = true;
                break;
            }
        }
        self.cached = Some(pred);
        found
    }

    /// The error for "goals remain but nothing can progress", naming them.
    fn deadlock_error(&mut self) -> Error {
        let stuck: Vec<u32> = (0..self.graph.len() as u32)
            .filter(|&j| !self.graph.is_finished(j))
            .collect();
        // What each stuck goal waits for: the stuck goals it depends on.
        let mut blockers: HashMap<u32, Vec<String>> = HashMap::new();
        for &j in &stuck {
            let name = self.graph.name(j).to_string();
            let add = |d| blockers.entry(d).or_default().push(name.clone());
            self.graph.dependents(j, false, add);
        }
        let parts: Vec<String> = stuck
            .iter()
            .take(20)
            .map(|&j| {
                let (name, state) = (self.graph.name(j), self.graph.state(j).describe());
                match blockers.get(&j) {
                    Some(b) => format!("{name} ({state}) waits for {}", b.join(", ")),
                    None => format!("{name} ({state})"),
                }
            })
            .collect();
        let more = match stuck.len() - parts.len() {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        Error::SchedulerDeadlock(format!("{}{more} (a dependency cycle?)", parts.join("; ")))
    }
}
