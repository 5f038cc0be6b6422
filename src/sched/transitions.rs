//! The goal life cycle: ready -> slot -> locks -> validity re-check -> run,
//! the waits in between (holding nothing, G2), and the terminal transition
//! that releases everything before waking anyone (G1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lock::{next_id, LockFile, LockSet, LockWait, Owner, StorePath};

use super::goal::{BuildMode, Exec, GoalKind, GoalState, Outcome, Phase, WaitRef};
use super::ids::GoalId;
use super::log::{LogKind, LogRecord};
use super::slots::SlotToken;
use super::validity::{ask_all, Source, Validity};
use super::waits::{describe_holder, ForeignWait};
use super::worker::{state_name, Event, Worker};

impl Worker {
    #[inline(always)]
    pub(super) fn next_event_inner(&mut self) -> Result<Event> {
        if let Some(i) = self.start_ready_plain() {
            return Ok(Event::Run {
                goal: self.id(i),
                kind: GoalKind::Plain,
            });
        }
        self.next_event_general()
    }

    /// The hot path of [`Worker::next_event_inner`]: no event queued, no
    /// foreign wait, and the front of the ready queue is a plain goal that
    /// is ready (no lock, no slot, no allocation), after skipping stale
    /// entries; it starts running, and its index is returned. Anything else
    /// (`None`) is left to the general loop, which looks at everything in
    /// order.
    #[inline(always)]
    pub(super) fn start_ready_plain(&mut self) -> Option<u32> {
        if !(self.events.is_empty() && self.waits.len() == 0) {
            return None;
        }
        while let Some(i) = self.ready.front() {
            match self.arena.state(i) {
                GoalState::Ready if self.arena.goals[i as usize].kind == GoalKind::Plain => {
                    self.ready.pop_front();
                    self.arena.start(i, Exec::Plain);
                    return Some(i);
                }
                GoalState::Ready => break,
                _ => {
                    self.ready.pop_front(); // a stale queue entry
                }
            }
        }
        None
    }

    /// [`Worker::next_event_inner`] for everything but its hot path.
    #[inline(never)]
    fn next_event_general(&mut self) -> Result<Event> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                if let Event::Run { goal, .. } = ev {
                    if !matches!(
                        self.arena.goals[goal.index() as usize].phase,
                        Phase::Running(_)
                    ) {
                        continue; // cancelled before the host heard of it
                    }
                }
                return Ok(ev);
            }
            if self.waits.len() > 0 {
                self.poll_foreign_waits();
                if !self.events.is_empty() {
                    continue;
                }
            }
            let Some(i) = self.ready.pop_front() else {
                if self.wake_slot_waiter() {
                    continue;
                }
                break;
            };
            if self.arena.state(i) != GoalState::Ready {
                continue; // a stale queue entry
            }
            if self.arena.goals[i as usize].kind == GoalKind::Plain {
                // The hot path: no lock, no slot, no allocation.
                self.arena.set_phase(i, Phase::Running(Exec::Plain));
                self.arena.prefetch_dependents(i);
                return Ok(Event::Run {
                    goal: self.id(i),
                    kind: GoalKind::Plain,
                });
            }
            self.start(i);
        }
        if self.waits.len() > 0
            || self.arena.count(GoalState::Running) > 0
            || self.has_progressing_local_wait()
        {
            let now = Instant::now();
            let timeout = self.waits.earliest_recheck().map(|t| {
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            return Ok(Event::Wait {
                fd: self.efd.fd(),
                timeout,
            });
        }
        if self.arena.unfinished() > 0 {
            return Err(self.deadlock_error());
        }
        Ok(Event::Done)
    }

    fn has_progressing_local_wait(&self) -> bool {
        // Only reachable when a holder is itself waiting; it then shows up as
        // running or foreign-waiting, so this is a safety net.
        !self.local_waits.is_empty() && self.arena.count(GoalState::WaitingLock) > 0 && {
            self.local_waits.iter().any(|&(h, _)| {
                !matches!(
                    self.arena.goals[h as usize].phase,
                    Phase::Done(_) | Phase::WaitingDeps
                )
            })
        }
    }

    /// A build or substitute goal popped from the ready queue.
    fn start(&mut self, i: u32) {
        match self.validity_unless_check(i) {
            Validity::Valid => self.finish(i, Outcome::AlreadyValid, true),
            // The check before locking only saves taking locks for valid
            // outputs: the check under the locks decides (or the goal waits).
            Validity::Unknown { k, why } => {
                self.log_unknown(i, k, &why, "it goes on to take its locks");
                self.try_run(i, None);
            }
            Validity::Invalid(_) => self.try_run(i, None),
        }
    }

    /// Takes a slot, then all output locks (sorted, all or nothing; `in_hand`
    /// is a lock a wait thread already got), then re-checks validity. On
    /// success the goal is running and a `Run` event is queued; otherwise it
    /// waits holding nothing, or finishes.
    fn try_run(&mut self, i: u32, in_hand: Option<(usize, LockFile)>) {
        let kind = self.arena.goals[i as usize].kind;
        let Some(token) = self.slots.try_take(kind) else {
            drop(in_hand); // G2/S4: never hold a lock while waiting for a slot
            if kind == GoalKind::Build && self.slots.max_jobs() == 0 {
                let line = format!(
                    "{} cannot be built: max_jobs is 0, so no local build may run \
                     (only substitutions)",
                    self.name(i)
                );
                let rec = LogRecord::new(LogKind::NoBuildSlots, line).goal(self.id(i));
                self.log.push(rec);
                self.finish(i, Outcome::Failed, true);
                return;
            }
            self.arena.set_phase(i, Phase::WaitingSlot);
            self.slot_queue.push_back(i);
            return;
        };
        let paths = self.arena.outputs(i).to_vec();
        let owner = Owner {
            lockset: next_id(),
            tag: self.id(i).raw(),
        };
        match LockSet::try_for_owner(owner, paths, self.opts.backend, in_hand) {
            Ok(Ok(set)) => {
                self.arena.set_phase(
                    i,
                    Phase::Running(Exec::Holding {
                        locks: set,
                        slot: token,
                    }),
                );
                self.slot_holders += 1;
                self.ledger.touch(i);
                match self.validity_unless_check(i) {
                    Validity::Valid => self.finish(i, Outcome::AlreadyValid, true),
                    Validity::Unknown { k, why } => {
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
                self.give_back_slot(token);
                let path = paths.swap_remove(k);
                self.wait_foreign(i, k, path, None);
            }
            Err(Error::HeldByThisProcess { path, lockset, tag }) => {
                let owner = Owner { lockset, tag };
                self.give_back_slot(token);
                let outs = self.arena.outputs(i);
                let k = outs
                    .iter()
                    .position(|p| p.as_path() == path)
                    .unwrap_or_default();
                let sp = outs[k].clone();
                let holder = self
                    .own_goal(&owner)
                    .filter(|&h| h != i && !self.arena.goals[h as usize].phase.is_done());
                match holder {
                    Some(h) => {
                        let line = format!(
                            "{} waits for {}, held by {} of this worker",
                            self.name(i),
                            sp.lock_path().display(),
                            self.name(h)
                        );
                        let rec = LogRecord::new(LogKind::WaitsLocal, line)
                            .goal(self.id(i))
                            .path(&sp)
                            .holder(Some(std::process::id()), Some(self.id(h)));
                        self.log.push(rec);
                        self.arena
                            .set_phase(i, Phase::WaitingLock(WaitRef::Local(h)));
                        self.local_waits.push((h, i));
                    }
                    // Another worker or lock set of this process, or a finished
                    // goal that kept its lock (legacy_hold): wait in the kernel.
                    None => self.wait_foreign(i, k, sp, Some(owner)),
                }
            }
            Err(e) => {
                self.give_back_slot(token);
                let line = format!("{} could not lock its outputs: {e}", self.name(i));
                let rec = LogRecord::new(LogKind::CouldNotLock, line).goal(self.id(i));
                self.log.push(rec);
                self.finish(i, Outcome::Failed, true);
            }
        }
    }

    /// Starts a kernel wait for `path` (output `k` of goal `i`) on a helper
    /// thread; the goal holds nothing meanwhile.
    fn wait_foreign(&mut self, i: u32, k: usize, path: StorePath, owner: Option<Owner>) {
        let who = describe_holder(&path, owner, self.serial);
        let line = format!(
            "{} waits for {}, held by {}",
            self.name(i),
            path.lock_path().display(),
            who.text
        );
        let rec = LogRecord::new(LogKind::WaitsForeign, line)
            .goal(self.id(i))
            .path(&path)
            .holder(who.pid, who.goal);
        self.log.push(rec);
        match LockWait::spawn(path, self.opts.backend, Some(self.efd.notifier())) {
            Ok(wait) => {
                let next_recheck = (self.arena.goals[i as usize].mode != BuildMode::Check)
                    .then(|| Instant::now() + self.opts.recheck_interval);
                let w = self.waits.insert(ForeignWait {
                    goal: i,
                    k,
                    wait,
                    next_recheck,
                    unknown: None,
                    on_disk: false,
                });
                self.arena
                    .set_phase(i, Phase::WaitingLock(WaitRef::Foreign(w)));
            }
            Err(e) => {
                let line = format!("{} could not wait for its lock: {e}", self.name(i));
                let rec = LogRecord::new(LogKind::CouldNotLock, line).goal(self.id(i));
                self.log.push(rec);
                self.finish(i, Outcome::Failed, true);
            }
        }
    }

    /// Looks at the foreign waits, if the eventfd fired or a re-check is due.
    fn poll_foreign_waits(&mut self) {
        // Drain first, then poll: a wait that ends after the poll writes the
        // eventfd after the drain, so it is never missed.
        let fired = self.efd.drain();
        let now = Instant::now();
        let due = self.waits.earliest_recheck().is_some_and(|t| t <= now);
        if !fired && !due {
            return;
        }
        let mut idx = std::mem::take(&mut self.scratch);
        idx.clear();
        self.waits.live_indices(&mut idx);
        for &wi in &idx {
            let Some(w) = self.waits.get(wi) else {
                continue; // finished by an earlier step of this loop
            };
            let recheck = w.next_recheck.is_some_and(|t| t <= now);
            if fired || recheck {
                if let Some(r) = w.wait.poll() {
                    let w = self.waits.remove(wi).expect("present");
                    self.handoff(w, r);
                    continue;
                }
            }
            if recheck {
                let g = w.goal;
                self.stats.validity_rechecks += 1;
                let unknown = match self.validity(g) {
                    Validity::Valid => {
                        let line = format!(
                            "{} became valid while waiting for its lock; finished without \
                             taking the lock",
                            self.name(g)
                        );
                        let mut rec = LogRecord::new(LogKind::BecameValid, line).goal(self.id(g));
                        if let Some(w) = self.waits.get(wi) {
                            rec = rec.path(w.wait.path()).duration(w.wait.started().elapsed());
                        }
                        self.log.push(rec);
                        self.finish(g, Outcome::AlreadyValid, true);
                        continue;
                    }
                    Validity::Invalid(k) => {
                        // An output on disk but not valid: being written in
                        // place by the lock's holder (or left by a build that
                        // did not finish). Say so when that starts.
                        let on_disk = self.on_disk_but_not_valid(g, k);
                        let was = self.waits.get(wi).is_some_and(|w| w.on_disk);
                        if on_disk && !was {
                            let waited = self.waits.get(wi).map(|w| w.wait.started().elapsed());
                            self.log_on_disk_not_valid(g, k, waited);
                        }
                        if let Some(w) = self.waits.get_mut(wi) {
                            w.on_disk = on_disk;
                        }
                        None
                    }
                    Validity::Unknown { k, why } => Some((k, why)),
                };
                // Keep waiting; say so when the database's answer changes.
                let before = self.waits.get(wi).and_then(|w| w.unknown.clone());
                match (&before, &unknown) {
                    (b, Some((k, why))) if b.as_deref() != Some(why.as_str()) => {
                        self.log_unknown(g, *k, why, "keeps waiting for its lock");
                    }
                    (Some(_), None) => {
                        let line = format!(
                            "{}: the store database answers again; its outputs are not \
                             valid yet, it keeps waiting for its lock",
                            self.name(g)
                        );
                        let rec = LogRecord::new(LogKind::ValidityUnknown, line).goal(self.id(g));
                        self.log.push(rec);
                    }
                    _ => {}
                }
                if let Some(w) = self.waits.get_mut(wi) {
                    w.next_recheck = Some(now + self.opts.recheck_interval);
                    w.unknown = unknown.map(|(_, why)| why);
                }
            }
        }
        self.scratch = idx;
    }

    /// A wait thread got the lock (or failed).
    fn handoff(&mut self, w: ForeignWait, r: Result<LockFile>) {
        let ForeignWait {
            goal: g, k, wait, ..
        } = w;
        self.stats.handoffs += 1;
        let waited = wait.started().elapsed();
        let lock_path = wait.path().lock_path().display().to_string();
        drop(wait);
        // Out of the wait state (its table entry is gone); nothing is held yet.
        self.arena.set_phase(g, Phase::Ready);
        match r {
            Err(Error::HeldByThisProcess { lockset, tag, .. }) => {
                // Taken by someone in this process meanwhile: wait again.
                let path = self.arena.outputs(g)[k].clone();
                self.wait_foreign(g, k, path, Some(Owner { lockset, tag }));
            }
            Err(e) => {
                let line = format!("{} failed waiting for its lock: {e}", self.name(g));
                let rec = LogRecord::new(LogKind::CouldNotLock, line)
                    .goal(self.id(g))
                    .path(&self.arena.outputs(g)[k])
                    .duration(waited);
                self.log.push(rec);
                self.finish(g, Outcome::Failed, true);
            }
            Ok(lock) => {
                let path = self.arena.outputs(g)[k].clone();
                match self.validity_unless_check(g) {
                    Validity::Invalid(_) => {}
                    Validity::Valid => {
                        let line = format!(
                            "{} got {lock_path} handed over after {} ms and its outputs are \
                             valid now; finished without running",
                            self.name(g),
                            waited.as_millis()
                        );
                        let rec = LogRecord::new(LogKind::BecameValid, line)
                            .goal(self.id(g))
                            .path(&path)
                            .duration(waited);
                        self.log.push(rec);
                        // Valid now: deleting the lock file is allowed.
                        self.release_handed_over(g, lock, &path, true);
                        self.finish(g, Outcome::AlreadyValid, true);
                        return;
                    }
                    Validity::Unknown { k: bad, why } => {
                        // Not known to be valid: the lock file stays.
                        self.release_handed_over(g, lock, &path, false);
                        self.log_unknown(
                            g,
                            bad,
                            &why,
                            "got its lock handed over, gave it back and failed without running",
                        );
                        self.finish(g, Outcome::Failed, true);
                        return;
                    }
                }
                let line = format!(
                    "{} got {lock_path} handed over after {} ms",
                    self.name(g),
                    waited.as_millis()
                );
                let rec = LogRecord::new(LogKind::HandedOver, line)
                    .goal(self.id(g))
                    .path(&path)
                    .duration(waited);
                self.log.push(rec);
                self.try_run(g, Some((k, lock)));
            }
        }
    }

    /// Releases a lock a wait thread handed over that goal `g` will not use
    /// (with deletion only when its outputs are valid); a failure is logged.
    fn release_handed_over(&mut self, g: u32, lock: LockFile, path: &StorePath, delete: bool) {
        if let Err(e) = lock.release(path, delete) {
            let line = format!("{}: {e}", self.name(g));
            let rec = LogRecord::new(LogKind::ReleaseFailed, line)
                .goal(self.id(g))
                .path(path);
            self.log.push(rec);
        }
    }

    /// S5: a slot is free but goals wait for one (the goal woken for it
    /// ended before taking it, e.g. cancelled): wake the first that can use it.
    fn wake_slot_waiter(&mut self) -> bool {
        while let Some(&w) = self.slot_queue.front() {
            if !matches!(self.arena.goals[w as usize].phase, Phase::WaitingSlot) {
                self.slot_queue.pop_front(); // stale
                continue;
            }
            let kind = self.arena.goals[w as usize].kind;
            if self.slots.used() < self.slots.limit(kind) {
                self.slot_queue.pop_front();
                self.arena.set_phase(w, Phase::Ready);
                self.ready.push_back(w);
                return true;
            }
            return false;
        }
        false
    }

    /// Returns a slot and wakes the first goal waiting for one.
    fn give_back_slot(&mut self, token: SlotToken) {
        if !self.slots.give_back(token) {
            self.ledger
                .note("a slot was given back while none was in use".into());
        }
        while let Some(w) = self.slot_queue.pop_front() {
            if matches!(self.arena.goals[w as usize].phase, Phase::WaitingSlot) {
                self.arena.set_phase(w, Phase::Ready);
                self.ready.push_front(w);
                break;
            }
        }
    }

    /// Ends goal `i` with `outcome`: releases what it holds, then wakes its
    /// dependents; a failure ends the dependents `DependencyFailed`, and
    /// without keep-going cancels every goal that is not running.
    pub(super) fn finish(&mut self, i: u32, outcome: Outcome, emit: bool) {
        self.finish_one(i, outcome, emit, true);
        while let Some(d) = self.cascade.pop() {
            if !self.arena.goals[d as usize].phase.is_done() {
                self.finish_one(d, Outcome::DependencyFailed, true, true);
            }
        }
        if outcome.stops_the_worker() && !self.opts.keep_going && !self.aborting {
            self.abort(i);
        }
    }

    /// The terminal transition of one goal (G1): the state value, and with
    /// it the lock set and slot token, is taken out and released here, before
    /// anyone is woken.
    ///
    /// The common case (a goal that held nothing, or a plain one, succeeding
    /// with nobody waiting for it in this worker) is kept inline; leaving a
    /// lock wait, waking local waiters and a failure's cascade are out of
    /// line, and so is the release of a lock set and slot (`release_exec`).
    #[inline]
    pub(super) fn finish_one(&mut self, i: u32, outcome: Outcome, emit: bool, cascade: bool) {
        let old = self.arena.set_phase(i, Phase::Done(outcome));
        if outcome.is_success() {
            self.stats.succeeded += 1;
        } else {
            self.stats.failed += 1;
        }
        self.ledger.touch(i);
        match old {
            Phase::Running(exec) => self.release_exec(i, exec, outcome.is_success()),
            Phase::WaitingDeps | Phase::Ready | Phase::WaitingSlot => {}
            other => self.leave_state(i, other, outcome),
        }
        if emit {
            self.events.push_back(Event::Finished {
                goal: self.id(i),
                outcome,
            });
        }
        // Wake-ups, after the release.
        if !self.local_waits.is_empty() {
            self.wake_local_waiters(i);
        }
        if outcome.is_success() {
            self.wake_dependents(i);
            self.prefetch_from_ready_queue();
        } else if cascade {
            let c = self.arena.dependents(i);
            self.cascade_from(c);
        }
    }

    /// Goal `i` succeeded: each dependent whose last dependency it was
    /// becomes ready. Only the dense counters are touched, not the goal
    /// records.
    #[inline(always)]
    fn wake_dependents(&mut self, i: u32) {
        let mut c = self.arena.dependents(i);
        while let Some(d) = self.arena.next_dependent(&mut c) {
            if self.arena.dependency_done(d) {
                self.ready.push_back(d);
            }
        }
    }

    /// The drain's pipeline (see `Arena::prefetch_ahead`) over the ready
    /// queue, which the single calls take their goals from next. (The batch
    /// calls run it over what they start and report next.)
    #[inline(always)]
    pub(super) fn prefetch_from_ready_queue(&self) {
        let ready = &self.ready;
        self.arena.prefetch_ahead(|k| ready.get(k));
    }

    /// `true` if goal `i` is a running plain goal (its state value owns
    /// nothing) that no goal of this worker waits for: the case
    /// [`Worker::finish_plain_success`] handles.
    #[inline(always)]
    pub(super) fn plain_running(&self, i: u32) -> bool {
        let g = &self.arena.goals[i as usize];
        g.kind == GoalKind::Plain
            && matches!(g.phase, Phase::Running(Exec::Plain))
            && self.local_waits.is_empty()
    }

    /// The terminal transition of a running plain goal reported successful
    /// ([`Worker::plain_running`] holds): [`Worker::finish_one`]'s steps for
    /// that case, which has nothing to release (`Exec::Plain`), no event
    /// to make (the host reported it), no local waiter to wake, and no
    /// cascade or abort (a success). The caller's ledger check covers `i`,
    /// and the caller runs the drain's pipeline.
    #[inline(always)]
    pub(super) fn finish_plain_success(&mut self, i: u32, outcome: Outcome) {
        debug_assert!(outcome.is_success() && self.plain_running(i));
        self.arena.finish_running_plain(i, outcome);
        self.stats.succeeded += 1;
        self.wake_dependents(i);
    }

    /// The rest of [`Worker::finish_one`] for a goal that was waiting for a
    /// lock (the wait is abandoned), or had finished already (a violation,
    /// reported at the end of the call).
    #[cold]
    #[inline(never)]
    fn leave_state(&mut self, i: u32, old: Phase, outcome: Outcome) {
        match old {
            Phase::WaitingLock(WaitRef::Foreign(w)) => {
                // Abandons the kernel wait: its thread releases the lock as soon as it gets it.
                drop(self.waits.remove(w));
            }
            Phase::WaitingLock(WaitRef::Local(h)) => {
                self.local_waits.retain(|&(hh, ww)| !(hh == h && ww == i));
            }
            Phase::Done(first) => {
                let line = format!("{} finished twice ({first}, then {outcome})", self.name(i));
                self.ledger.note(line);
            }
            Phase::Running(exec) => self.release_exec(i, exec, outcome.is_success()),
            Phase::WaitingDeps | Phase::Ready | Phase::WaitingSlot => {}
        }
    }

    /// Goal `i` finished: the goals of this worker waiting for one of its
    /// locks become ready (first in the queue).
    #[inline(never)]
    fn wake_local_waiters(&mut self, i: u32) {
        let mut k = 0;
        while k < self.local_waits.len() {
            let (h, w) = self.local_waits[k];
            if h == i {
                self.local_waits.swap_remove(k);
                self.arena.set_phase(w, Phase::Ready);
                self.ready.push_front(w);
            } else {
                k += 1;
            }
        }
    }

    /// A goal failed: its unfinished dependents go on the cascade list (they
    /// end `DependencyFailed`).
    #[inline(never)]
    fn cascade_from(&mut self, mut c: super::arena::DepCursor) {
        while let Some(d) = self.arena.next_dependent(&mut c) {
            if !self.arena.goals[d as usize].phase.is_done() {
                self.cascade.push(d);
            }
        }
    }

    /// Releases what a running goal held: nothing for a plain goal; a
    /// build or substitute goal's lock set (deleting the lock files after a
    /// success) and its slot.
    #[inline(always)]
    fn release_exec(&mut self, i: u32, exec: Exec, success: bool) {
        match exec {
            Exec::Plain => {} // a plain goal holds nothing
            Exec::Holding { locks, slot } => self.release_holding(i, locks, slot, success),
        }
    }

    #[inline(never)]
    fn release_holding(&mut self, i: u32, mut locks: Box<LockSet>, slot: SlotToken, success: bool) {
        // Success means the outputs were checked valid: the lock files may go.
        locks.set_deletion(success);
        if let Some(locks) = self.keep_for_legacy_hold(i, locks) {
            if let Err(e) = locks.release() {
                let line = format!("{}: releasing its locks: {e}", self.name(i));
                let rec = LogRecord::new(LogKind::ReleaseFailed, line).goal(self.id(i));
                self.log.push(rec);
            }
        }
        self.slot_holders = self.slot_holders.wrapping_sub(1);
        self.give_back_slot(slot);
    }

    /// A failure without keep-going: every goal that is not running ends
    /// `Cancelled` (running goals end when the host reports them).
    fn abort(&mut self, cause: u32) {
        self.aborting = true;
        let mut n = 0;
        for j in 0..self.arena.len() as u32 {
            if !matches!(
                self.arena.goals[j as usize].phase,
                Phase::Done(_) | Phase::Running(_)
            ) {
                self.finish_one(j, Outcome::Cancelled, true, false);
                n += 1;
            }
        }
        let line = format!(
            "{} failed and keep-going is off: cancelled {n} goals that were not running",
            self.name(cause)
        );
        let rec = LogRecord::new(LogKind::CancelledByFailure, line).goal(self.id(cause));
        self.log.push(rec);
    }

    /// What the validity source says about goal `i`'s outputs. A host
    /// predicate's error is logged (and counts as "not valid").
    pub(super) fn validity(&mut self, i: u32) -> Validity {
        let id = GoalId::new(self.serial, i);
        let Worker {
            valid, arena, log, ..
        } = self;
        ask_all(valid, arena.outputs(i), &mut |p, line| {
            log.push(
                LogRecord::new(LogKind::PredicateError, line)
                    .goal(id)
                    .path(p),
            )
        })
    }

    /// [`Worker::validity`], except in check mode, where outputs are rebuilt
    /// whether valid or not (answered `Invalid` without asking).
    fn validity_unless_check(&mut self, i: u32) -> Validity {
        if self.arena.goals[i as usize].mode == BuildMode::Check {
            Validity::Invalid(0)
        } else {
            self.validity(i)
        }
    }

    /// Whether output `k` of goal `i`, which the validity source says is not
    /// valid, exists on disk all the same. Always `false` for the default
    /// source, for which existing is being valid.
    fn on_disk_but_not_valid(&self, i: u32, k: usize) -> bool {
        !matches!(self.valid, Source::Exists)
            && self
                .arena
                .outputs(i)
                .get(k)
                .is_some_and(|p| std::fs::symlink_metadata(p.as_path()).is_ok())
    }

    /// Logs that a re-check of waiting goal `i` found its output `k` on disk
    /// but not valid (not registered in the store database, or refused by the
    /// host's predicate), and that the goal keeps waiting for its lock.
    fn log_on_disk_not_valid(&mut self, i: u32, k: usize, waited: Option<Duration>) {
        let p = &self.arena.outputs(i)[k];
        let why = match &self.valid {
            Source::Database(db) => format!("is not registered in {}", db.path().display()),
            _ => "the host's validity predicate says it is not valid".to_string(),
        };
        let line = format!(
            "{}: re-check: {p} exists on disk but {why}: still being built, or left by a \
             build that did not finish; not taken as valid, it keeps waiting for its lock",
            self.name(i),
        );
        let mut rec = LogRecord::new(LogKind::OnDiskNotValid, line)
            .goal(GoalId::new(self.serial, i))
            .path(p);
        if let Some(d) = waited {
            rec = rec.duration(d);
        }
        self.log.push(rec);
    }

    /// Logs that the store database could not say whether output `k` of goal
    /// `i` is valid, and what the goal does about it (`then`).
    pub(super) fn log_unknown(&mut self, i: u32, k: usize, why: &str, then: &str) {
        let p = &self.arena.outputs(i)[k];
        let line = format!(
            "{}: cannot tell whether {p} is valid ({why}); never taken as valid: {then}",
            self.name(i),
        );
        let rec = LogRecord::new(LogKind::ValidityUnknown, line)
            .goal(GoalId::new(self.serial, i))
            .path(p);
        self.log.push(rec);
    }

    fn any_cached_failure(&mut self, i: u32) -> bool {
        let Some(pred) = self.cached.as_mut() else {
            return false;
        };
        for p in self.arena.outputs(i) {
            match pred.ask(p) {
                Ok(true) => {
                    let line = format!("{} has a cached failure: {p}", self.name(i));
                    let rec = LogRecord::new(LogKind::CachedFailure, line)
                        .goal(GoalId::new(self.serial, i))
                        .path(p);
                    self.log.push(rec);
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    let line = format!("cached-failure predicate failed on {p}: {e}; taken as no");
                    let rec = LogRecord::new(LogKind::PredicateError, line)
                        .goal(GoalId::new(self.serial, i))
                        .path(p);
                    self.log.push(rec);
                }
            }
        }
        false
    }

    /// The error for "goals remain but nothing can progress", naming them.
    fn deadlock_error(&mut self) -> Error {
        let mut blockers: HashMap<u32, Vec<u32>> = HashMap::new();
        for j in 0..self.arena.len() as u32 {
            if self.arena.goals[j as usize].phase.is_done() {
                continue;
            }
            let mut c = self.arena.dependents(j);
            while let Some(d) = self.arena.next_dependent(&mut c) {
                blockers.entry(d).or_default().push(j);
            }
        }
        let mut parts = Vec::new();
        let mut total = 0;
        for j in 0..self.arena.len() as u32 {
            let g = &self.arena.goals[j as usize];
            if g.phase.is_done() {
                continue;
            }
            total += 1;
            if parts.len() >= 20 {
                continue;
            }
            let mut s = format!("{} ({})", self.name(j), state_name(self.arena.state(j)));
            if let Some(b) = blockers.get(&j) {
                let names: Vec<String> = b.iter().map(|&x| self.name(x).to_string()).collect();
                s.push_str(&format!(" waits for {}", names.join(", ")));
            }
            parts.push(s);
        }
        let more = if total > parts.len() {
            format!("; and {} more", total - parts.len())
        } else {
            String::new()
        };
        Error::SchedulerDeadlock(format!("{}{more} (a dependency cycle?)", parts.join("; ")))
    }
}
