//! The scheduler's basic life cycle in one process: plain goals, build
//! goals with real lock files, dependencies, S9 (shared goals), S5 (no lost
//! wake-ups, deadlock as an error), S6 (slots), G1 on every terminal path (S2).

mod common;
mod sched_support;

use std::time::Duration;

use common::TempStore;
use goalkeeper::sched::{BuildMode, Event, GoalKind, GoalState, Outcome, Worker, WorkerOptions};
use goalkeeper::Error;
use sched_support::{assert_clean, build_output, drive, held};

fn opts(max_jobs: u32, keep_going: bool) -> WorkerOptions {
    WorkerOptions {
        max_jobs,
        keep_going,
        ..WorkerOptions::default()
    }
}

#[test]
fn plain_chain_runs_in_dependency_order() {
    let mut w = Worker::new(opts(1, false)).unwrap();
    let none: [&str; 0] = [];
    let a = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    let b = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    let c = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    w.add_dependency(c, b).unwrap();
    w.add_dependency(b, a).unwrap();
    let mut order = Vec::new();
    let evs = drive(&mut w, Duration::from_secs(5), |_, g| {
        order.push(g);
        Outcome::Built
    });
    assert_eq!(order, vec![a, b, c]);
    assert_eq!(evs.last(), Some(&Event::Done));
    for g in [a, b, c] {
        let r = w.result(g).unwrap();
        assert_eq!(
            (r.state, r.outcome),
            (GoalState::Finished, Some(Outcome::Built))
        );
    }
}

#[test]
fn build_goals_lock_their_outputs_while_running_and_release_with_deletion() {
    let s = TempStore::new();
    let (x, y) = (s.path("x"), s.path("y"));
    let mut w = Worker::new(opts(2, false)).unwrap();
    let gx = w
        .add_goal(GoalKind::Build, &[&x], BuildMode::Normal)
        .unwrap();
    let gy = w
        .add_goal(GoalKind::Build, &[&y], BuildMode::Normal)
        .unwrap();
    w.add_dependency(gy, gx).unwrap();
    let ev = w.next_event().unwrap();
    assert_eq!(
        ev,
        Event::Run {
            goal: gx,
            kind: GoalKind::Build
        }
    );
    assert!(held(&x), "running goal holds its lock");
    assert!(!held(&y), "a goal waiting for deps holds nothing");
    assert_eq!(w.audit().locks_held, 1);
    assert!(matches!(
        w.next_event().unwrap(),
        Event::Wait { timeout: None, .. }
    ));
    build_output(&x);
    w.report(gx, Outcome::Built).unwrap();
    assert!(!held(&x), "released at completion (G1)");
    assert!(
        !s.lock_file("x").exists(),
        "lock file deleted after success"
    );
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: gy,
            kind: GoalKind::Build
        }
    );
    w.report(gy, Outcome::Failed).unwrap();
    assert!(!held(&y));
    assert!(s.lock_file("y").exists(), "no deletion after failure");
    assert_eq!(w.next_event().unwrap(), Event::Done);
    assert_eq!(w.result(gy).unwrap().outcome, Some(Outcome::Failed));
}

#[test]
fn success_without_valid_outputs_is_recorded_as_failure() {
    let s = TempStore::new();
    let x = s.path("x");
    let mut w = Worker::new(opts(1, false)).unwrap();
    let g = w
        .add_goal(GoalKind::Build, &[&x], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Run { .. }));
    w.report(g, Outcome::Built).unwrap();
    assert_eq!(w.result(g).unwrap().outcome, Some(Outcome::Failed));
    assert!(w
        .take_log()
        .iter()
        .any(|l| l.contains("not valid") && l.contains(&x)));
}

#[test]
fn s9_same_outputs_share_one_goal_and_partial_overlap_is_refused() {
    let s = TempStore::new();
    let (a, b, c) = (s.path("a"), s.path("b"), s.path("c"));
    let mut w = Worker::new(opts(1, false)).unwrap();
    let g1 = w
        .add_goal(GoalKind::Build, &[&a, &b], BuildMode::Normal)
        .unwrap();
    let g2 = w
        .add_goal(GoalKind::Build, &[&b, &a, &a], BuildMode::Normal)
        .unwrap();
    assert_eq!(g1, g2);
    let e = w
        .add_goal(GoalKind::Build, &[&b, &c], BuildMode::Normal)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = w
        .add_goal(GoalKind::Substitute, &[&a], BuildMode::Normal)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let sa = w
        .add_goal(GoalKind::Substitute, &[&c], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        w.add_goal(GoalKind::Substitute, &[&c], BuildMode::Check)
            .unwrap(),
        sa
    );
    assert_eq!(
        w.result(sa).unwrap().mode,
        BuildMode::Check,
        "stronger mode adopted"
    );
    assert_eq!(w.len(), 2);
}

#[test]
fn goal_ids_of_other_workers_and_forged_ids_are_refused() {
    let mut w1 = Worker::new(opts(1, false)).unwrap();
    let mut w2 = Worker::new(opts(1, false)).unwrap();
    let none: [&str; 0] = [];
    let g = w1
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    assert!(matches!(w2.result(g), Err(Error::StaleHandle(_))));
    assert!(matches!(w2.cancel(g), Err(Error::StaleHandle(_))));
    let forged = goalkeeper::sched::GoalId::from_raw(g.raw() + 1000);
    assert!(matches!(w1.result(forged), Err(Error::StaleHandle(_))));
    assert!(matches!(
        w1.result(goalkeeper::sched::GoalId::from_raw(0)),
        Err(Error::StaleHandle(_))
    ));
}

#[test]
fn s5_dependency_cycle_is_a_deadlock_error_naming_the_goals() {
    let mut w = Worker::new(opts(1, false)).unwrap();
    let none: [&str; 0] = [];
    let a = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    let b = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    w.add_dependency(a, b).unwrap();
    w.add_dependency(b, a).unwrap();
    let e = w.next_event().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::SchedulerDeadlock(_)), "{msg}");
    assert!(msg.contains("goal 0") && msg.contains("goal 1"), "{msg}");
    // Still an error, not a hang, and the host can get out by cancelling.
    assert!(w.next_event().is_err());
    w.cancel(a).unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Finished {
            goal: b,
            outcome: Outcome::DependencyFailed
        }
    );
    assert_eq!(w.next_event().unwrap(), Event::Done);
    assert!(w
        .add_dependency(a, a)
        .unwrap_err()
        .to_string()
        .contains("itself"));
}

#[test]
fn s5_a_goal_that_took_slot_and_lock_then_found_its_output_valid_wakes_the_next() {
    let s = TempStore::new();
    let (x, y) = (s.path("x"), s.path("y"));
    let mut w = Worker::new(opts(1, false)).unwrap();
    // x: not valid at the first check, valid at the re-check under the lock.
    let mut asked = 0;
    let xx = x.clone();
    w.set_valid_path(Box::new(move |p| {
        if p.to_str() == Some(xx.as_str()) {
            asked += 1;
            asked >= 2
        } else {
            p.exists()
        }
    }));
    let gx = w
        .add_goal(GoalKind::Build, &[&x], BuildMode::Normal)
        .unwrap();
    let gy = w
        .add_goal(GoalKind::Build, &[&y], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Finished {
            goal: gx,
            outcome: Outcome::AlreadyValid
        }
    );
    assert!(!held(&x));
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: gy,
            kind: GoalKind::Build
        }
    );
    assert_eq!(w.audit().slots_used, 1);
    w.cancel(gy).unwrap();
    assert_eq!(w.audit().slots_used, 0);
    assert!(!held(&y));
}

#[test]
fn s6_slots_stay_within_max_jobs_and_max_jobs_0_allows_one_substitution() {
    let s = TempStore::new();
    let mut w = Worker::new(opts(2, true)).unwrap();
    let paths: Vec<String> = (0..10).map(|i| s.path(&format!("p{i}"))).collect();
    for p in &paths {
        w.add_goal(GoalKind::Build, &[p], BuildMode::Normal)
            .unwrap();
    }
    let mut running = Vec::new();
    let mut max_seen = 0;
    loop {
        match w.next_event().unwrap() {
            Event::Run { goal, .. } => running.push(goal),
            Event::Wait { .. } => {
                let g = running.remove(0);
                build_output(&w.result(g).unwrap().outputs[0].to_string_lossy());
                w.report(g, Outcome::Built).unwrap();
            }
            Event::Done => break,
            e => panic!("{e:?}"),
        }
        let a = w.audit();
        max_seen = max_seen.max(a.slots_used);
        assert!(a.slots_used <= 2 && a.running <= 2, "{a:?}");
        assert_eq!(a.slots_used, running.len() as u64);
        assert_clean(&w, "s6");
    }
    assert_eq!(max_seen, 2);
    assert_eq!(w.audit().succeeded, 10);

    let mut w = Worker::new(opts(0, true)).unwrap();
    let sub = w
        .add_goal(GoalKind::Substitute, &[s.path("sub")], BuildMode::Normal)
        .unwrap();
    let sub2 = w
        .add_goal(GoalKind::Substitute, &[s.path("sub2")], BuildMode::Normal)
        .unwrap();
    let b = w
        .add_goal(GoalKind::Build, &[s.path("b")], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: sub,
            kind: GoalKind::Substitute
        }
    );
    assert_eq!(
        w.next_event().unwrap(),
        Event::Finished {
            goal: b,
            outcome: Outcome::Failed
        }
    );
    assert_eq!(w.result(sub2).unwrap().state, GoalState::WaitingSlot);
    assert!(
        !held(&s.path("sub2")),
        "S4: no lock while waiting for a slot"
    );
    assert!(w.take_log().iter().any(|l| l.contains("max_jobs is 0")));
    assert_eq!(w.audit().slots_used, 1);
    build_output(&s.path("sub"));
    w.report(sub, Outcome::Substituted).unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: sub2,
            kind: GoalKind::Substitute
        }
    );
}

#[test]
fn s5_a_slot_freed_for_a_goal_cancelled_before_it_started_goes_to_the_next() {
    // Found by the model test: the waiter woken for a freed slot was
    // cancelled before taking it, and the next waiter was never woken.
    let s = TempStore::new();
    let mut w = Worker::new(opts(1, true)).unwrap();
    let g: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            w.add_goal(GoalKind::Build, &[s.path(n)], BuildMode::Normal)
                .unwrap()
        })
        .collect();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: g[0],
            kind: GoalKind::Build
        }
    );
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    assert_eq!(w.result(g[2]).unwrap().state, GoalState::WaitingSlot);
    w.report(g[0], Outcome::Failed).unwrap(); // frees the slot, wakes b
    w.cancel(g[1]).unwrap(); // b goes before taking it
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: g[2],
            kind: GoalKind::Build
        }
    );
}
