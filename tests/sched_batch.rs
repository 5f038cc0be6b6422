//! The batched calls of the Rust API (issue 12): `add_goals` (goals with
//! outputs, tags and dependencies in one call, forward references inside
//! the batch, S9 sharing within the batch and with the worker), the
//! all-or-nothing rule (a batch with one bad element in the middle changes
//! nothing: audit, lock registry, goal results, log, events), the first bad
//! element named; `next_events` (capacity, `Wait` only alone, `Done` last,
//! a deadlock after gathered events); `report_many` (recorded outcomes, a
//! success without valid outputs recorded failed, duplicates and goals that
//! are not running refused whole); and tags.

mod common;
mod sched_support;

use common::TempStore;
use goalkeeper::sched::{
    Audit, BatchField, BuildMode, Event, GoalId, GoalKind, GoalState, NewGoal, Outcome, Report,
    Worker, WorkerOptions,
};
use goalkeeper::Error;
use sched_support::{build_output, held};

fn opts(max_jobs: u32, keep_going: bool) -> WorkerOptions {
    WorkerOptions {
        max_jobs,
        keep_going,
        ..WorkerOptions::default()
    }
}

/// A batch under construction may be shared between threads: `NewGoal` is
/// `Send` and `Sync` (the worker keeps its own resolution of a batch).
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<NewGoal<'static>>();
};

fn plain<'a>() -> NewGoal<'a> {
    let none: [&str; 0] = [];
    NewGoal::new(GoalKind::Plain, &none).unwrap()
}

fn build<'a>(outs: &[&str]) -> NewGoal<'a> {
    NewGoal::new(GoalKind::Build, outs).unwrap()
}

/// Everything a refused batch must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    audit: Audit,
    results: Vec<(GoalState, Option<Outcome>, u64)>,
    log: Vec<String>,
    held: Vec<bool>,
}

fn snapshot(w: &Worker, ids: &[GoalId], paths: &[String]) -> Snapshot {
    let mut audit = w.audit();
    audit.checks = 0; // every call, refused or not, runs the ledger
    Snapshot {
        audit,
        results: ids
            .iter()
            .map(|&g| {
                let r = w.result(g).unwrap();
                (r.state, r.outcome, w.tag(g).unwrap())
            })
            .collect(),
        log: w.log_lines(),
        held: paths.iter().map(|p| held(p)).collect(),
    }
}

#[test]
fn a_batch_adds_goals_with_tags_and_forward_references() {
    let mut w = Worker::new(opts(1, false)).unwrap();
    // c depends on a (earlier) and b (later in the batch).
    let (a, b) = (GoalId::batch(0), GoalId::batch(2));
    let deps = [a, b];
    let mut goals = [
        plain().tag(10),
        plain().tag(11).deps(&deps),
        plain().tag(12),
    ];
    let ids = w.add_goals(&mut goals).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        ids.iter().map(|&g| w.tag(g).unwrap()).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    let mut order = Vec::new();
    let mut evs = Vec::new();
    loop {
        w.next_events(&mut evs, 8).unwrap();
        let mut reports = Vec::new();
        for ev in &evs {
            match *ev {
                Event::Run { goal, .. } => {
                    order.push(w.tag(goal).unwrap());
                    reports.push(Report::new(goal, Outcome::Built));
                }
                Event::Done => {
                    assert_eq!(order.last(), Some(&11), "{order:?}");
                    assert_eq!(order.len(), 3);
                    return;
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        w.report_many(&mut reports).unwrap();
        assert!(reports.iter().all(|r| r.recorded == Some(Outcome::Built)));
    }
}

#[test]
fn a_batch_with_one_bad_element_in_the_middle_changes_nothing() {
    let s = TempStore::new();
    let paths: Vec<String> = (0..6).map(|i| s.path(&format!("o{i}"))).collect();
    let mut w = Worker::new(opts(2, false)).unwrap();
    // Some state first: a running build holding its lock, a finished goal,
    // a waiting one.
    let g0 = w
        .add_goal_tagged(GoalKind::Build, &[&paths[0]], BuildMode::Normal, 100)
        .unwrap();
    let g1 = w
        .add_goal_tagged(GoalKind::Plain, &[] as &[&str], BuildMode::Normal, 101)
        .unwrap();
    let g2 = w
        .add_goal_tagged(GoalKind::Build, &[&paths[1]], BuildMode::Normal, 102)
        .unwrap();
    w.add_dependency(g2, g0).unwrap();
    let mut evs = Vec::new();
    w.next_events(&mut evs, 2).unwrap();
    assert_eq!(evs.len(), 2);
    let mut rep = [Report::new(g1, Outcome::Built)];
    w.report_many(&mut rep).unwrap();
    assert!(held(&paths[0]));
    let ids = [g0, g1, g2];
    let before = snapshot(&w, &ids, &paths);
    let n_before = w.len();

    // Each bad element, in the middle of otherwise good goals.
    let stale = GoalId::from_raw(0x1234_0000_0001);
    let other = Worker::new(opts(1, false)).unwrap();
    let none: [&str; 0] = [];
    let foreign = {
        let mut o = other;
        o.add_goal(GoalKind::Plain, &none, BuildMode::Normal)
            .unwrap()
    };
    let self_dep = [GoalId::batch(1)];
    let beyond = [GoalId::batch(3)];
    let started = [g1];
    let stale_dep = [stale];
    let foreign_dep = [foreign];
    let fine_dep = [g2, GoalId::batch(0)];
    type Case<'a> = (&'a str, NewGoal<'a>, BatchField, usize, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a build without outputs",
            build(&[]),
            BatchField::Output,
            0,
            "at least one output",
        ),
        (
            "a substitute with two outputs",
            NewGoal::new(GoalKind::Substitute, &[&paths[4], &paths[5]]).unwrap(),
            BatchField::Output,
            0,
            "exactly one output",
        ),
        (
            "a partial overlap with a goal of the worker",
            build(&[&paths[0], &paths[4]]),
            BatchField::Output,
            0,
            "already an output of goal 0",
        ),
        (
            "the same outputs with another kind",
            NewGoal::new(GoalKind::Substitute, &[&paths[1]]).unwrap(),
            BatchField::Output,
            0,
            "same kind",
        ),
        (
            "a partial overlap within the batch",
            // Outputs are sorted: o2 is the set's output 0 (the C layer
            // maps it back to the caller's order).
            build(&[&paths[3], &paths[2]]),
            BatchField::Output,
            0,
            "goals[0] of this batch",
        ),
        (
            "a dependency on itself",
            plain().deps(&self_dep),
            BatchField::Dependency,
            0,
            "itself",
        ),
        (
            "a reference beyond the batch",
            plain().deps(&beyond),
            BatchField::Dependency,
            0,
            "a batch of 3",
        ),
        (
            "a stale goal id",
            plain().deps(&stale_dep),
            BatchField::Dependency,
            0,
            "does not belong",
        ),
        (
            "a goal of another worker",
            plain().deps(&foreign_dep),
            BatchField::Dependency,
            0,
            "does not belong",
        ),
        (
            "dependencies for a shared goal that has finished",
            plain().deps(&started),
            BatchField::Output,
            9,
            "",
        ),
    ];
    for (what, bad, field, sub, msg) in cases {
        if what.starts_with("dependencies for a shared") {
            continue; // below: needs a shared build goal
        }
        let mut goals = [
            build(&[&paths[2]]).tag(7).deps(&fine_dep[..1]),
            bad,
            plain().tag(9).deps(&fine_dep[1..]),
        ];
        let e = w.add_goals(&mut goals).unwrap_err();
        assert_eq!((e.index, e.field, e.sub), (1, field, sub), "{what}: {e}");
        let text = e.to_string();
        assert!(text.contains(msg), "{what}: {text}");
        assert!(text.starts_with("goals[1]."), "{what}: {text}");
        assert_eq!(w.len(), n_before, "{what}: goals were added");
        assert_eq!(snapshot(&w, &ids, &paths), before, "{what}");
        assert!(!held(&paths[2]), "{what}");
    }
    // The shared running goal g0 cannot take dependencies.
    let mut goals = [plain(), build(&[&paths[0]]).deps(&fine_dep[1..]), plain()];
    let e = w.add_goals(&mut goals).unwrap_err();
    assert_eq!((e.index, e.field), (1, BatchField::Dependency), "{e}");
    assert!(
        matches!(e.error, Error::InBatch { ref source, .. } if matches!(**source, Error::InvalidState(_))),
        "{e}"
    );
    assert_eq!(snapshot(&w, &ids, &paths), before);

    // Two bad elements: the first one is named.
    let mut goals = [plain(), plain().deps(&beyond), build(&[])];
    let e = w.add_goals(&mut goals).unwrap_err();
    assert_eq!((e.index, e.field), (1, BatchField::Dependency), "{e}");
    let mut goals = [plain(), build(&[]), plain().deps(&beyond)];
    let e = w.add_goals(&mut goals).unwrap_err();
    assert_eq!((e.index, e.field), (1, BatchField::Output), "{e}");

    // And the same batch without the bad element goes in whole.
    let mut goals = [
        build(&[&paths[2]]).tag(7).deps(&fine_dep[..1]),
        plain().tag(9).deps(&fine_dep[1..]),
    ];
    let new = w.add_goals(&mut goals).unwrap();
    assert_eq!(w.len(), n_before + 2);
    assert_eq!(w.tag(new[0]).unwrap(), 7);
    assert_eq!(w.result(new[0]).unwrap().state, GoalState::WaitingDeps);
}

#[test]
fn shared_goals_keep_their_first_tag_and_the_strongest_mode() {
    let s = TempStore::new();
    let (x, y) = (s.path("x"), s.path("y"));
    let mut w = Worker::new(opts(1, false)).unwrap();
    let gx = w
        .add_goal_tagged(GoalKind::Build, &[&x], BuildMode::Normal, 1)
        .unwrap();
    let mut goals = [
        build(&[&x]).tag(2).mode(BuildMode::Check),
        build(&[&y]).tag(3),
        build(&[&y]).tag(4),
    ];
    let ids = w.add_goals(&mut goals).unwrap();
    assert_eq!(ids[0], gx, "S9 with a goal of the worker");
    assert_eq!(ids[1], ids[2], "S9 within the batch");
    assert_eq!(w.len(), 2);
    assert_eq!(w.tag(gx).unwrap(), 1);
    assert_eq!(w.tag(ids[1]).unwrap(), 3);
    assert_eq!(w.result(gx).unwrap().mode, BuildMode::Check);
    // A goal of the batch cannot depend on its own twin.
    let twin = [GoalId::batch(0)];
    let mut goals = [build(&[&y]), build(&[&y]).deps(&twin)];
    let e = w.add_goals(&mut goals).unwrap_err();
    assert_eq!((e.index, e.field), (1, BatchField::Dependency), "{e}");
    assert!(e.to_string().contains("itself"), "{e}");
}

#[test]
fn a_dependency_that_failed_ends_the_goal_and_aborting_cancels_new_goals() {
    let mut w = Worker::new(opts(1, true)).unwrap();
    let none: [&str; 0] = [];
    let f = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: f,
            kind: GoalKind::Plain
        }
    );
    w.report(f, Outcome::Failed).unwrap();
    let deps = [f];
    let chained = [GoalId::batch(0)];
    let mut goals = [plain().deps(&deps), plain().deps(&chained), plain()];
    let ids = w.add_goals(&mut goals).unwrap();
    let mut evs = Vec::new();
    w.next_events(&mut evs, 16).unwrap();
    let finished: Vec<(GoalId, Outcome)> = evs
        .iter()
        .filter_map(|e| match *e {
            Event::Finished { goal, outcome } => Some((goal, outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [
            (ids[0], Outcome::DependencyFailed),
            (ids[1], Outcome::DependencyFailed)
        ]
    );
    assert!(matches!(evs.last(), Some(Event::Run { goal, .. }) if *goal == ids[2]));

    // Without keep-going, a failure cancels what is not running, and new
    // goals end cancelled at once.
    let mut w = Worker::new(opts(1, false)).unwrap();
    let f = w
        .add_goal(GoalKind::Plain, &none, BuildMode::Normal)
        .unwrap();
    w.next_event().unwrap();
    w.report(f, Outcome::Failed).unwrap();
    let mut goals = [plain(), plain().deps(&chained)];
    let ids = w.add_goals(&mut goals).unwrap();
    w.next_events(&mut evs, 16).unwrap();
    assert_eq!(
        evs,
        [
            Event::Finished {
                goal: ids[0],
                outcome: Outcome::Cancelled
            },
            Event::Finished {
                goal: ids[1],
                outcome: Outcome::Cancelled
            },
            Event::Done
        ]
    );
}

#[test]
fn next_events_stops_at_capacity_returns_wait_only_alone_and_done_last() {
    let mut w = Worker::new(opts(1, false)).unwrap();
    let mut goals: Vec<NewGoal> = (0..5).map(|_| plain()).collect();
    let ids = w.add_goals(&mut goals).unwrap();
    let mut evs = Vec::new();
    assert!(w.next_events(&mut evs, 0).is_err(), "capacity 0");
    assert_eq!(w.next_events(&mut evs, 3).unwrap(), 3);
    assert_eq!(w.next_events(&mut evs, 3).unwrap(), 2, "no WAIT after RUNs");
    assert!(evs.iter().all(|e| matches!(e, Event::Run { .. })));
    assert_eq!(w.next_events(&mut evs, 3).unwrap(), 1);
    assert!(matches!(evs[0], Event::Wait { .. }), "{evs:?}");
    let mut reps: Vec<Report> = ids
        .iter()
        .map(|&g| Report::new(g, Outcome::Built))
        .collect();
    w.report_many(&mut reps).unwrap();
    assert_eq!(w.next_events(&mut evs, 3).unwrap(), 1);
    assert_eq!(evs, [Event::Done]);

    // A deadlock after gathered events: the events now, the error next.
    let mut w = Worker::new(opts(1, false)).unwrap();
    let (a, b) = (GoalId::batch(1), GoalId::batch(2));
    let (da, db) = ([b], [a]);
    let mut goals = [plain(), plain().deps(&da), plain().deps(&db)];
    let ids = w.add_goals(&mut goals).unwrap();
    assert_eq!(w.next_events(&mut evs, 8).unwrap(), 1);
    w.report(ids[0], Outcome::Built).unwrap();
    let e = w.next_events(&mut evs, 8).unwrap_err();
    assert!(matches!(e, Error::SchedulerDeadlock(_)), "{e}");
}

#[test]
fn report_many_records_outcomes_and_refuses_bad_batches_whole() {
    let s = TempStore::new();
    let (x, y, z) = (s.path("x"), s.path("y"), s.path("z"));
    let mut w = Worker::new(opts(3, true)).unwrap();
    let mut goals = [build(&[&x]), build(&[&y]), build(&[&z]), plain()];
    let ids = w.add_goals(&mut goals).unwrap();
    let mut evs = Vec::new();
    assert_eq!(w.next_events(&mut evs, 8).unwrap(), 4);
    assert!(held(&x) && held(&y) && held(&z));
    let paths = [x.clone(), y.clone(), z.clone()];
    let before = snapshot(&w, &ids, &paths);
    let stale = GoalId::from_raw(0xdead_0000_0000);
    let bad: Vec<(Vec<Report>, usize, BatchField)> = vec![
        (
            vec![
                Report::new(ids[0], Outcome::Built),
                Report::new(ids[1], Outcome::AlreadyValid),
                Report::new(ids[2], Outcome::Built),
            ],
            1,
            BatchField::Outcome,
        ),
        (
            vec![
                Report::new(ids[0], Outcome::Built),
                Report::new(stale, Outcome::Built),
            ],
            1,
            BatchField::Goal,
        ),
        (
            vec![
                Report::new(ids[0], Outcome::Built),
                Report::new(ids[1], Outcome::Failed),
                Report::new(ids[0], Outcome::Failed),
            ],
            2,
            BatchField::Goal,
        ),
    ];
    for (mut reps, index, field) in bad {
        let e = w.report_many(&mut reps).unwrap_err();
        assert_eq!((e.index, e.field), (index, field), "{e}");
        assert!(reps.iter().all(|r| r.recorded.is_none()));
        assert_eq!(snapshot(&w, &ids, &paths), before, "{e}");
    }
    // x built for real, y "built" without its output, z failed.
    build_output(&x);
    let mut reps = vec![
        Report::new(ids[0], Outcome::Built),
        Report::new(ids[1], Outcome::Built),
        Report::new(ids[2], Outcome::Failed),
        Report::new(ids[3], Outcome::Built),
    ];
    w.report_many(&mut reps).unwrap();
    let rec: Vec<_> = reps.iter().map(|r| r.recorded).collect();
    assert_eq!(
        rec,
        [
            Some(Outcome::Built),
            Some(Outcome::Failed),
            Some(Outcome::Failed),
            Some(Outcome::Built)
        ]
    );
    assert!(!held(&x) && !held(&y) && !held(&z));
    assert_eq!(w.audit().locks_held, 0);
    // Now none is running: reporting again is refused, whole.
    let e = w.report_many(&mut reps[..1]).unwrap_err();
    assert!(
        matches!(e.error, Error::InBatch { ref source, .. } if matches!(**source, Error::InvalidState(_))),
        "{e}"
    );
}
