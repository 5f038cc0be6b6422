//! S2: every terminal transition releases the goal's locks and slot, for
//! top-level goals and subgoals, with and without keep-going; S8: a failure
//! without keep-going cancels the rest and releases everything, with
//! keep-going independent branches go on. Every worker here runs the full
//! ledger sweep on every call.

mod common;
mod sched_support;

use common::TempStore;
use goalkeeper::lock::{Backend, LockSet};
use goalkeeper::sched::{
    BuildMode, Event, GoalId, GoalKind, GoalState, Outcome, Worker, WorkerOptions,
};
use sched_support::{assert_clean, build_output, held};

fn worker(max_jobs: u32, keep_going: bool) -> Worker {
    let mut w = Worker::new(WorkerOptions {
        max_jobs,
        keep_going,
        ..WorkerOptions::default()
    })
    .unwrap();
    w.set_debug_sweep(true);
    w
}

/// The lock of `p` is free: nobody in this process holds it, and a new
/// open file description can take it.
fn assert_free(p: &str, when: &str) {
    assert!(!held(p), "{when}: {p} still registered as held");
    LockSet::try_acquire([p], Backend::Ofd)
        .unwrap_or_else(|e| panic!("{when}: {p} still locked in the kernel: {e}"))
        .release()
        .unwrap();
}

fn next(w: &mut Worker) -> Event {
    let ev = w.next_event().expect("next_event");
    assert_clean(w, &format!("{ev:?}"));
    ev
}

/// The ways a goal that holds its locks can end.
#[derive(Clone, Copy, Debug)]
enum End {
    Built,
    Substituted,
    Failed,
    TimedOut,
    BuiltButInvalid,
    ValidUnderLock,
    CachedFailure,
    CancelledRunning,
    Abandoned,
}

const ENDS: [End; 9] = [
    End::Built,
    End::Substituted,
    End::Failed,
    End::TimedOut,
    End::BuiltButInvalid,
    End::ValidUnderLock,
    End::CachedFailure,
    End::CancelledRunning,
    End::Abandoned,
];

fn run_end(end: End, keep_going: bool, as_subgoal: bool) {
    let s = TempStore::new();
    let (x, y, top) = (s.path("x"), s.path("y"), s.path("top"));
    let mut w = worker(1, keep_going);
    let when = format!("{end:?}, keep_going {keep_going}, subgoal {as_subgoal}");
    let xx = x.clone();
    let mut asked = 0;
    if matches!(end, End::ValidUnderLock) {
        // Invalid at the first check, valid at the re-check under the lock.
        w.set_valid_path(Box::new(move |p| {
            if p.to_str() == Some(xx.as_str()) {
                asked += 1;
                asked > 1
            } else {
                p.exists()
            }
        }));
    }
    if matches!(end, End::CachedFailure) {
        let xx = x.clone();
        w.set_cached_failure(Box::new(move |p| p.to_str() == Some(xx.as_str())));
    }
    let kind = if matches!(end, End::Substituted) {
        GoalKind::Substitute
    } else {
        GoalKind::Build
    };
    let gx = w.add_goal(kind, &[&x], BuildMode::Normal).unwrap();
    let gy = w
        .add_goal(GoalKind::Build, &[&y], BuildMode::Normal)
        .unwrap();
    let gtop = as_subgoal.then(|| {
        let t = w
            .add_goal(GoalKind::Build, &[&top], BuildMode::Normal)
            .unwrap();
        w.add_dependency(t, gx).unwrap();
        t
    });
    let ev = next(&mut w);
    let expect_finish = |o| Event::Finished {
        goal: gx,
        outcome: o,
    };
    let outcome = match end {
        End::ValidUnderLock => {
            assert_eq!(ev, expect_finish(Outcome::AlreadyValid), "{when}");
            Outcome::AlreadyValid
        }
        End::CachedFailure => {
            assert_eq!(ev, expect_finish(Outcome::CachedFailure), "{when}");
            Outcome::CachedFailure
        }
        _ => {
            assert_eq!(ev, Event::Run { goal: gx, kind }, "{when}");
            assert!(held(&x), "{when}: running goal holds its lock");
            match end {
                End::Built => {
                    build_output(&x);
                    w.report(gx, Outcome::Built).unwrap();
                    Outcome::Built
                }
                End::Substituted => {
                    build_output(&x);
                    w.report(gx, Outcome::Substituted).unwrap();
                    Outcome::Substituted
                }
                End::Failed => {
                    w.report(gx, Outcome::Failed).unwrap();
                    Outcome::Failed
                }
                End::TimedOut => {
                    w.report(gx, Outcome::TimedOut).unwrap();
                    Outcome::TimedOut
                }
                End::BuiltButInvalid => {
                    w.report(gx, Outcome::Built).unwrap();
                    Outcome::Failed
                }
                End::CancelledRunning => {
                    w.cancel(gx).unwrap();
                    Outcome::Cancelled
                }
                End::Abandoned => {
                    drop(w);
                    for p in [&x, &y, &top] {
                        assert_free(p, &when);
                    }
                    return;
                }
                _ => unreachable!(),
            }
        }
    };
    assert_clean(&w, &when);
    assert_eq!(w.result(gx).unwrap().outcome, Some(outcome), "{when}");
    assert_eq!(
        s.lock_file("x").exists(),
        !outcome.is_success(),
        "{when}: lock file deleted exactly after success"
    );
    assert_free(&x, &when);
    // Drive the rest to the end; nothing may stay locked.
    let mut events = Vec::new();
    loop {
        match next(&mut w) {
            Event::Run { goal, .. } => {
                let out = w.result(goal).unwrap().outputs[0].clone();
                build_output(out.to_str().unwrap());
                w.report(goal, Outcome::Built).unwrap();
                events.push((goal, Outcome::Built));
            }
            Event::Finished { goal, outcome } => events.push((goal, outcome)),
            Event::Wait { .. } => panic!("{when}: unexpected wait"),
            Event::Done => break,
        }
    }
    let a = w.audit();
    assert_eq!((a.locks_held, a.slots_used, a.running), (0, 0, 0), "{when}");
    assert_eq!(a.finished, a.goals, "{when}");
    let failed = !outcome.is_success();
    let stops = outcome.stops_the_worker() && !keep_going;
    let y_outcome = w.result(gy).unwrap().outcome.unwrap();
    assert_eq!(
        y_outcome,
        if stops {
            Outcome::Cancelled
        } else {
            Outcome::Built
        },
        "{when}: the independent goal"
    );
    if let Some(t) = gtop {
        let o = w.result(t).unwrap().outcome.unwrap();
        assert_eq!(
            o,
            if failed {
                Outcome::DependencyFailed
            } else {
                Outcome::Built
            },
            "{when}: the dependent"
        );
    }
    for p in [&x, &y, &top] {
        assert_free(p, &when);
    }
}

#[test]
fn s2_every_terminal_transition_releases_locks_and_slot() {
    for end in ENDS {
        for keep_going in [false, true] {
            for as_subgoal in [false, true] {
                run_end(end, keep_going, as_subgoal);
            }
        }
    }
}

#[test]
fn s2_goals_that_end_while_waiting_hold_nothing() {
    let s = TempStore::new();
    let (a, b, c, f) = (s.path("a"), s.path("b"), s.path("c"), s.path("f"));
    let mut holder = sched_support::Holder::start(&c, "posix");
    let mut w = worker(2, true);
    let ga = w
        .add_goal(GoalKind::Build, &[&a], BuildMode::Normal)
        .unwrap();
    let gc = w
        .add_goal(GoalKind::Build, &[&c], BuildMode::Normal)
        .unwrap();
    let gb = w
        .add_goal(GoalKind::Build, &[&b], BuildMode::Normal)
        .unwrap();
    let gf = w
        .add_goal(GoalKind::Build, &[&f], BuildMode::Normal)
        .unwrap();
    let gd = w
        .add_goal(GoalKind::Plain, &[&a], BuildMode::Normal)
        .unwrap();
    w.add_dependency(gd, gf).unwrap();
    assert_eq!(
        next(&mut w),
        Event::Run {
            goal: ga,
            kind: GoalKind::Build
        }
    );
    assert_eq!(
        next(&mut w),
        Event::Run {
            goal: gb,
            kind: GoalKind::Build
        }
    );
    // c: waiting on the holder's lock; f: waiting for a slot; d: for f.
    assert!(matches!(next(&mut w), Event::Wait { .. }));
    let st = |w: &Worker, g: GoalId| w.result(g).unwrap().state;
    assert_eq!(st(&w, gc), GoalState::WaitingLock);
    assert_eq!(st(&w, gf), GoalState::WaitingSlot);
    assert_eq!(st(&w, gd), GoalState::WaitingDeps);
    assert!(!held(&c) && !held(&f), "waiting goals hold nothing (G2)");
    w.cancel(gc).unwrap();
    w.cancel(gf).unwrap();
    assert_eq!(
        next(&mut w),
        Event::Finished {
            goal: gd,
            outcome: Outcome::DependencyFailed
        }
    );
    assert_eq!(w.audit().foreign_waits, 0, "the kernel wait was abandoned");
    holder.release();
    assert_free(&c, "after the abandoned wait");
    assert_free(&f, "cancelled while waiting for a slot");
    w.report(ga, Outcome::Failed).unwrap();
    w.report(gb, Outcome::TimedOut).unwrap();
    assert_free(&a, "failed");
    assert_free(&b, "timed out");
    assert_eq!(next(&mut w), Event::Done);
}

#[test]
fn s8_failure_without_keep_going_cancels_the_rest_and_releases_everything() {
    for keep_going in [false, true] {
        let s = TempStore::new();
        let p = |n: &str| s.path(n);
        let mut w = worker(2, keep_going);
        // a fails; c depends on a; e depends on c; b runs alongside a; d is independent.
        let ga = w
            .add_goal(GoalKind::Build, &[p("a")], BuildMode::Normal)
            .unwrap();
        let gb = w
            .add_goal(GoalKind::Build, &[p("b")], BuildMode::Normal)
            .unwrap();
        let gc = w
            .add_goal(GoalKind::Build, &[p("c")], BuildMode::Normal)
            .unwrap();
        let gd = w
            .add_goal(GoalKind::Substitute, &[p("d")], BuildMode::Normal)
            .unwrap();
        let ge = w
            .add_goal(GoalKind::Plain, &[p("e")], BuildMode::Normal)
            .unwrap();
        w.add_dependency(gc, ga).unwrap();
        w.add_dependency(ge, gc).unwrap();
        assert_eq!(
            next(&mut w),
            Event::Run {
                goal: ga,
                kind: GoalKind::Build
            }
        );
        assert_eq!(
            next(&mut w),
            Event::Run {
                goal: gb,
                kind: GoalKind::Build
            }
        );
        w.report(ga, Outcome::Failed).unwrap();
        assert_free(&p("a"), "failed");
        assert!(
            held(&p("b")),
            "the running goal keeps its locks until reported"
        );
        let mut finished = Vec::new();
        loop {
            match next(&mut w) {
                Event::Finished { goal, outcome } => finished.push((goal, outcome)),
                Event::Run { goal, .. } => {
                    assert!(keep_going, "nothing new runs without keep-going");
                    assert_eq!(goal, gd);
                    build_output(&p("d"));
                    w.report(goal, Outcome::Substituted).unwrap();
                }
                Event::Wait { .. } => {
                    build_output(&p("b"));
                    w.report(gb, Outcome::Built).unwrap();
                }
                Event::Done => break,
            }
        }
        let o = |g| w.result(g).unwrap().outcome.unwrap();
        assert_eq!(o(gc), Outcome::DependencyFailed);
        assert_eq!(o(ge), Outcome::DependencyFailed);
        assert_eq!(o(gb), Outcome::Built, "running goals finish");
        assert_eq!(
            o(gd),
            if keep_going {
                Outcome::Substituted
            } else {
                Outcome::Cancelled
            }
        );
        assert!(finished.contains(&(gc, Outcome::DependencyFailed)));
        for n in ["a", "b", "c", "d", "e"] {
            assert_free(&p(n), "at the end");
        }
        if !keep_going {
            // Goals added after the failure end at once.
            let late = w
                .add_goal(GoalKind::Build, &[p("late")], BuildMode::Normal)
                .unwrap();
            assert_eq!(
                next(&mut w),
                Event::Finished {
                    goal: late,
                    outcome: Outcome::Cancelled
                }
            );
            let log = w.take_log().join("\n");
            assert!(log.contains("keep-going is off"), "{log}");
        }
    }
}
