//! Model-based random testing of the scheduler (proptest): random DAGs,
//! kinds, modes, pre-valid outputs, cached failures, max_jobs, keep-going,
//! host outcomes and cancellations. Every event and every call is checked
//! against a simple reference model of the rules, and after every step:
//! no finished goal holds a lock, only running goals hold locks, slots stay
//! within `0..=max(1, max_jobs)` and match the running goals, every goal
//! ends exactly once, and no goal runs before its dependencies succeeded.
//!
//! Half of the scenarios use the batched calls: goals added in batches
//! (`add_goals`, in order or reversed so that batch references point
//! forward), events taken several at a time (`next_events`) and reports made
//! together (`report_many`). Before some batches, a copy with one bad
//! element in the middle (a stale, self, out-of-range or foreign
//! dependency, a build without outputs, an output of another goal, a goal
//! reported twice or not running) must be refused, name that element, and
//! change nothing: the audit, the locks held, every goal's state, outcome
//! and tag, and the number of goals.

mod common;
mod sched_support;

use std::collections::BTreeSet;

use common::TempStore;
use goalkeeper::sched::{
    BatchField, BuildMode, Event, GoalId, GoalKind, GoalState, NewGoal, Outcome, Report, Worker,
    WorkerOptions,
};
use proptest::prelude::*;
use sched_support::{build_output, held};

#[derive(Clone, Debug)]
struct GoalSpec {
    kind: GoalKind,
    check_mode: bool,
    pre_valid: bool,
    cached_failure: bool,
    /// What the host reports when it runs the goal: 0 built/substituted
    /// (output created), 1 failed, 2 timed out, 3 success without output.
    host: u8,
    deps: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Op {
    Next,
    Report(usize),
    Cancel(usize),
}

/// How a scenario uses the batched calls.
#[derive(Clone, Debug)]
struct Batching {
    /// Goals per `add_goals` call.
    chunk: usize,
    /// Add each batch in reverse order (batch references point forward).
    reverse: bool,
    /// Which bad element to try first (0: none), see [`corrupt_goals`] and
    /// [`corrupt_reports`].
    corrupt: u8,
    /// The capacity given to `next_events`, and the most reports per
    /// `report_many`.
    cap: usize,
}

#[derive(Clone, Debug)]
struct Scenario {
    max_jobs: u32,
    keep_going: bool,
    goals: Vec<GoalSpec>,
    ops: Vec<Op>,
    batched: Option<Batching>,
}

fn batching() -> impl Strategy<Value = Option<Batching>> {
    proptest::option::of((1usize..6, any::<bool>(), 0u8..8, 1usize..5).prop_map(
        |(chunk, reverse, corrupt, cap)| Batching {
            chunk,
            reverse,
            corrupt,
            cap,
        },
    ))
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..10, 0u32..4, any::<bool>(), batching()).prop_flat_map(
        |(n, max_jobs, keep_going, batched)| {
            let goal = (
                prop_oneof![
                    4 => Just(GoalKind::Build),
                    2 => Just(GoalKind::Substitute),
                    1 => Just(GoalKind::Plain)
                ],
                prop::bool::weighted(0.15),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.1),
                prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            );
            let ops = prop::collection::vec(
                prop_oneof![
                    6 => Just(0u8),
                    3 => Just(1u8),
                    1 => Just(2u8)
                ]
                .prop_flat_map(|k| (Just(k), any::<prop::sample::Index>())),
                0..40,
            );
            (prop::collection::vec(goal, n), ops).prop_map(move |(gs, ops)| {
                let batched = batched.clone();
                let goals = gs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (kind, check, pre, cached, host, deps))| GoalSpec {
                        kind,
                        check_mode: check && kind == GoalKind::Build,
                        pre_valid: pre && kind != GoalKind::Plain,
                        cached_failure: cached && kind == GoalKind::Build,
                        host,
                        // Edges only to earlier goals: a DAG.
                        deps: if i == 0 {
                            Vec::new()
                        } else {
                            let mut d: Vec<usize> = deps.iter().map(|x| x.index(i)).collect();
                            d.sort_unstable();
                            d.dedup();
                            d
                        },
                    })
                    .collect();
                let ops = ops
                    .into_iter()
                    .map(|(k, ix)| match k {
                        0 => Op::Next,
                        1 => Op::Report(ix.index(n)),
                        _ => Op::Cancel(ix.index(n)),
                    })
                    .collect();
                Scenario {
                    max_jobs,
                    keep_going,
                    goals,
                    ops,
                    batched,
                }
            })
        },
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Pending,
    Running,
    Done(Outcome),
}

/// The reference model: what may happen next, given what happened so far.
struct Model<'a> {
    sc: &'a Scenario,
    st: Vec<St>,
    aborted: bool,
    paths: Vec<String>,
}

impl Model<'_> {
    fn valid(&self, i: usize) -> bool {
        std::path::Path::new(&self.paths[i]).exists()
    }

    fn deps_succeeded(&self, i: usize) -> bool {
        self.sc.goals[i]
            .deps
            .iter()
            .all(|&d| matches!(self.st[d], St::Done(o) if o.is_success()))
    }

    fn a_dep_failed(&self, i: usize) -> bool {
        self.sc.goals[i]
            .deps
            .iter()
            .any(|&d| matches!(self.st[d], St::Done(o) if !o.is_success()))
    }

    fn slots_in_use(&self) -> u32 {
        (0..self.st.len())
            .filter(|&i| self.st[i] == St::Running && self.sc.goals[i].kind != GoalKind::Plain)
            .count() as u32
    }

    fn end(&mut self, i: usize, o: Outcome, why: &str) {
        assert!(
            !matches!(self.st[i], St::Done(_)),
            "goal {i} ended twice ({why}: {o:?} after {:?})",
            self.st[i]
        );
        self.st[i] = St::Done(o);
        if o.stops_the_worker() && !self.sc.keep_going {
            self.aborted = true;
        }
    }

    fn on_run(&mut self, i: usize) {
        let g = &self.sc.goals[i];
        assert_eq!(self.st[i], St::Pending, "goal {i} run twice");
        assert!(
            self.deps_succeeded(i),
            "goal {i} runs before its deps succeeded"
        );
        assert!(
            !self.aborted,
            "goal {i} started after a failure without keep-going"
        );
        if g.kind != GoalKind::Plain {
            assert!(
                !self.valid(i) || g.check_mode,
                "goal {i} runs with valid outputs"
            );
            assert!(!g.cached_failure, "goal {i} runs despite a cached failure");
            let limit = match g.kind {
                GoalKind::Build => self.sc.max_jobs,
                _ => self.sc.max_jobs.max(1),
            };
            assert!(
                self.slots_in_use() < limit,
                "goal {i} runs without a free slot"
            );
        }
        self.st[i] = St::Running;
    }

    fn on_finished(&mut self, i: usize, o: Outcome) {
        let g = &self.sc.goals[i];
        assert_eq!(
            self.st[i],
            St::Pending,
            "finished event for goal {i} in {:?}",
            self.st[i]
        );
        let ok = match o {
            Outcome::AlreadyValid => g.kind != GoalKind::Plain && self.valid(i) && !g.check_mode,
            Outcome::CachedFailure => g.cached_failure && self.deps_succeeded(i),
            Outcome::DependencyFailed => self.a_dep_failed(i),
            Outcome::Cancelled => self.aborted,
            Outcome::Failed => {
                g.kind == GoalKind::Build && self.sc.max_jobs == 0 && self.deps_succeeded(i)
            }
            _ => false,
        };
        assert!(
            ok,
            "goal {i} may not finish {o:?} now ({g:?}, {:?})",
            self.st
        );
        self.end(i, o, "event");
    }
}

fn check_locks(w: &Worker, m: &Model, ids: &[GoalId], when: &str) {
    let a = w.audit();
    assert_eq!(a.locks_held_by_finished, 0, "{when}: {a:?}");
    assert_eq!(a.violations, 0, "{when}: {a:?}");
    let cap = m.sc.max_jobs.max(1) as u64;
    assert!(a.slots_used <= cap, "{when}: {a:?}");
    assert_eq!(
        a.slots_used,
        m.slots_in_use() as u64,
        "{when}: slots vs running"
    );
    for (i, st) in m.st.iter().enumerate() {
        let r = w.result(ids[i]).unwrap();
        let plain = m.sc.goals[i].kind == GoalKind::Plain;
        // A goal whose Run or Finished event is queued but not yet delivered
        // is already running or finished in the worker; the model learns it
        // when the event arrives (and checks it then).
        let worker_running = r.state == GoalState::Running;
        let should_hold = !plain
            && match st {
                St::Running => true,
                St::Pending => worker_running,
                St::Done(_) => false,
            };
        assert_eq!(
            held(&m.paths[i]),
            should_hold,
            "{when}: goal {i} ({st:?}, worker {:?}) lock held = {}",
            r.state,
            !should_hold
        );
        match st {
            St::Done(o) => assert_eq!(r.outcome, Some(*o), "{when}: goal {i}"),
            St::Running => {
                assert!(
                    worker_running && r.outcome.is_none(),
                    "{when}: goal {i}: {r:?}"
                )
            }
            St::Pending => {
                if let Some(o) = r.outcome {
                    assert!(
                        !matches!(o, Outcome::Built | Outcome::Substituted | Outcome::TimedOut),
                        "{when}: goal {i} ended {o:?} without running"
                    );
                }
            }
        }
    }
}

/// What the host reports for running goal `i`, and what must be recorded
/// (building its output first when the host "builds" it).
fn host_outcome(m: &Model, i: usize) -> (Outcome, Outcome) {
    let g = &m.sc.goals[i];
    let success = if g.kind == GoalKind::Substitute {
        Outcome::Substituted
    } else {
        Outcome::Built
    };
    match g.host {
        0 => {
            if g.kind != GoalKind::Plain {
                build_output(&m.paths[i]);
            }
            (success, success)
        }
        1 => (Outcome::Failed, Outcome::Failed),
        2 => (Outcome::TimedOut, Outcome::TimedOut),
        _ if g.kind == GoalKind::Plain => (success, success),
        _ => (success, if m.valid(i) { success } else { Outcome::Failed }),
    }
}

fn host_report(w: &mut Worker, m: &mut Model, ids: &[GoalId], i: usize) {
    let (reported, expect) = host_outcome(m, i);
    w.report(ids[i], reported).unwrap();
    m.end(i, expect, "report");
}

/// Everything a refused batch must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    audit: goalkeeper::sched::Audit,
    len: usize,
    goals: Vec<(GoalState, Option<Outcome>, u64, bool)>,
}

fn snapshot(w: &Worker, ids: &[GoalId], paths: &[String]) -> Snapshot {
    let mut audit = w.audit();
    audit.checks = 0; // every call runs the ledger
    Snapshot {
        audit,
        len: w.len(),
        goals: ids
            .iter()
            .zip(paths)
            .map(|(&g, p)| {
                let r = w.result(g).unwrap();
                (r.state, r.outcome, w.tag(g).unwrap(), held(p))
            })
            .collect(),
    }
}

/// Reports the running goals (at most `cap`, goal `first` first if it
/// runs) in one `report_many`; before it, maybe a copy with one bad report
/// in the middle, which must change nothing.
fn host_report_many(
    w: &mut Worker,
    m: &mut Model,
    ids: &[GoalId],
    first: usize,
    b: &Batching,
    when: &str,
) {
    let mut which: Vec<usize> = (0..m.st.len())
        .filter(|&i| m.st[i] == St::Running)
        .collect();
    which.sort_by_key(|&i| i != first);
    which.truncate(b.cap);
    if which.is_empty() {
        return;
    }
    let outcomes: Vec<(Outcome, Outcome)> = which.iter().map(|&i| host_outcome(m, i)).collect();
    let mut reports: Vec<Report> = which
        .iter()
        .zip(&outcomes)
        .map(|(&i, &(o, _))| Report::new(ids[i], o))
        .collect();
    if b.corrupt != 0 {
        let bad = corrupt_reports(w, &reports, ids, b.corrupt);
        let mid = reports.len().div_ceil(2);
        let mut copy = reports.clone();
        copy.insert(mid, bad);
        let before = snapshot(w, ids, &m.paths);
        let e = w.report_many(&mut copy).expect_err(when);
        assert_eq!(
            (
                e.index,
                e.field == BatchField::Goal || e.field == BatchField::Outcome
            ),
            (mid, true),
            "{when}: {e}"
        );
        assert!(copy.iter().all(|r| r.recorded.is_none()), "{when}");
        assert_eq!(snapshot(w, ids, &m.paths), before, "{when}: {e}");
    }
    w.report_many(&mut reports)
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    for ((&i, &(_, expect)), r) in which.iter().zip(&outcomes).zip(&reports) {
        assert_eq!(r.recorded, Some(expect), "{when}: goal {i}");
        m.end(i, expect, "report_many");
    }
}

/// A bad report for a batch of `good` ones: a goal reported twice, one
/// that is not running (a finished goal, or a forged id), or an outcome
/// the host does not report.
fn corrupt_reports(w: &Worker, good: &[Report], ids: &[GoalId], k: u8) -> Report {
    let finished = ids
        .iter()
        .find(|&&g| w.result(g).unwrap().state != GoalState::Running);
    match (k % 4, finished) {
        (0, _) => Report::new(good[0].goal, Outcome::Failed),
        (1, Some(&g)) => Report::new(g, Outcome::Built),
        (2, _) => Report::new(good[0].goal, Outcome::AlreadyValid),
        _ => Report::new(
            GoalId::from_raw(((w.serial() ^ 1) as u64) << 32 | good[0].goal.index() as u64),
            Outcome::Built,
        ),
    }
}

fn handle(w: &mut Worker, m: &mut Model, ids: &[GoalId], ev: Event) -> bool {
    let idx = |g: GoalId| ids.iter().position(|x| *x == g).expect("known goal");
    match ev {
        Event::Run { goal, kind } => {
            let i = idx(goal);
            assert_eq!(kind, m.sc.goals[i].kind);
            m.on_run(i);
        }
        Event::Finished { goal, outcome } => {
            assert_eq!(w.result(goal).unwrap().outcome, Some(outcome));
            m.on_finished(idx(goal), outcome)
        }
        Event::Wait { .. } => assert!(
            m.st.contains(&St::Running),
            "a wait with nothing running and no foreign lock: {:?}",
            m.st
        ),
        Event::Done => {
            assert!(
                m.st.iter().all(|s| matches!(s, St::Done(_))),
                "done too early: {:?}",
                m.st
            );
            return true;
        }
    }
    false
}

fn mode_of(g: &GoalSpec) -> BuildMode {
    if g.check_mode {
        BuildMode::Check
    } else {
        BuildMode::Normal
    }
}

/// Adds the scenario's goals with `add_goals`, `b.chunk` at a time (each
/// batch reversed if `b.reverse`: its references to goals of the same
/// batch then point forward); before each batch, a copy of it with one bad
/// element in the middle must be refused and change nothing.
fn add_in_batches(
    w: &mut Worker,
    sc: &Scenario,
    b: &Batching,
    paths: &[String],
    ids: &mut Vec<GoalId>,
) {
    let n = sc.goals.len();
    ids.resize(n, GoalId::from_raw(0));
    let mut start = 0;
    while start < n {
        let end = n.min(start + b.chunk);
        let order: Vec<usize> = if b.reverse {
            (start..end).rev().collect()
        } else {
            (start..end).collect()
        };
        let pos = |g: usize| order.iter().position(|&x| x == g).unwrap() as u32;
        let deps: Vec<Vec<GoalId>> = order
            .iter()
            .map(|&g| {
                sc.goals[g]
                    .deps
                    .iter()
                    .map(|&d| {
                        if d >= start {
                            GoalId::batch(pos(d))
                        } else {
                            ids[d]
                        }
                    })
                    .collect()
            })
            .collect();
        let make = |k: usize| {
            let g = order[k];
            let spec = &sc.goals[g];
            NewGoal::new(spec.kind, &[&paths[g]])
                .unwrap()
                .mode(mode_of(spec))
                .tag(g as u64 + 100)
        };
        if b.corrupt != 0 {
            let mid = order.len() / 2;
            // Batch references at or after `mid` move one place.
            let shifted: Vec<Vec<GoalId>> = deps
                .iter()
                .map(|ds| {
                    ds.iter()
                        .map(|&d| match d.batch_index() {
                            Some(k) if k as usize >= mid => GoalId::batch(k + 1),
                            _ => d,
                        })
                        .collect()
                })
                .collect();
            let bad_deps = [match b.corrupt % 4 {
                0 => GoalId::from_raw(0),
                1 => GoalId::batch(order.len() as u32 + 7),
                2 => GoalId::batch(mid as u32),
                // A goal id of no worker: this worker's serial with its low bit flipped.
                _ => GoalId::from_raw(((w.serial() ^ 1) as u64) << 32),
            }];
            let none: [&str; 0] = [];
            let other_output = (0..start).find(|&g| sc.goals[g].kind != GoalKind::Plain);
            let bad = match (b.corrupt, other_output) {
                (4, _) => NewGoal::new(GoalKind::Build, &none).unwrap(),
                (5, Some(g)) => {
                    NewGoal::new(GoalKind::Build, &[&paths[g], &format!("{}-x", paths[g])]).unwrap()
                }
                _ => NewGoal::new(GoalKind::Plain, &none)
                    .unwrap()
                    .deps(&bad_deps),
            };
            let mut copy: Vec<NewGoal> = (0..order.len())
                .map(|k| make(k).deps(&shifted[k]))
                .collect();
            copy.insert(mid, bad);
            let known: Vec<GoalId> = ids[..start].to_vec();
            let before = snapshot(w, &known, &paths[..start]);
            let e = w
                .add_goals(&mut copy)
                .expect_err("a batch with a bad element");
            assert_eq!(e.index, mid, "{e}");
            assert_eq!(snapshot(w, &known, &paths[..start]), before, "{e}");
        }
        let mut batch: Vec<NewGoal> = (0..order.len()).map(|k| make(k).deps(&deps[k])).collect();
        let got = w.add_goals(&mut batch).unwrap();
        for (k, &g) in order.iter().enumerate() {
            ids[g] = got[k];
            assert_eq!(w.tag(got[k]).unwrap(), g as u64 + 100);
        }
        start = end;
    }
}

fn run(sc: &Scenario) {
    let store = TempStore::new();
    let paths: Vec<String> = (0..sc.goals.len())
        .map(|i| store.path(&format!("g{i}")))
        .collect();
    let mut w = Worker::new(WorkerOptions {
        max_jobs: sc.max_jobs,
        keep_going: sc.keep_going,
        ..WorkerOptions::default()
    })
    .unwrap();
    w.set_debug_sweep(true);
    let cached: BTreeSet<String> = (0..sc.goals.len())
        .filter(|&i| sc.goals[i].cached_failure)
        .map(|i| paths[i].clone())
        .collect();
    w.set_cached_failure(Box::new(move |p| cached.contains(p.to_str().unwrap())));
    let mut ids = Vec::new();
    for (i, g) in sc.goals.iter().enumerate() {
        if g.pre_valid {
            build_output(&paths[i]);
        }
    }
    match &sc.batched {
        None => {
            for (i, g) in sc.goals.iter().enumerate() {
                ids.push(w.add_goal(g.kind, &[&paths[i]], mode_of(g)).unwrap());
                for &d in &g.deps {
                    w.add_dependency(ids[i], ids[d]).unwrap();
                }
            }
        }
        Some(b) => add_in_batches(&mut w, sc, b, &paths, &mut ids),
    }
    let mut m = Model {
        sc,
        st: vec![St::Pending; sc.goals.len()],
        aborted: false,
        paths,
    };
    let mut done = false;
    for (step, op) in sc.ops.iter().enumerate() {
        let when = format!("step {step} {op:?}");
        match op {
            Op::Next if !done => match &sc.batched {
                None => {
                    let ev = w.next_event().unwrap_or_else(|e| panic!("{when}: {e}"));
                    done = handle(&mut w, &mut m, &ids, ev);
                }
                Some(b) => {
                    let mut evs = Vec::new();
                    w.next_events(&mut evs, b.cap)
                        .unwrap_or_else(|e| panic!("{when}: {e}"));
                    assert!(!evs.is_empty() && evs.len() <= b.cap, "{when}: {evs:?}");
                    for (k, &ev) in evs.iter().enumerate() {
                        if matches!(ev, Event::Wait { .. } | Event::Done) {
                            assert_eq!(k + 1, evs.len(), "{when}: {evs:?} (last)");
                        }
                        if matches!(ev, Event::Wait { .. }) {
                            assert_eq!(evs.len(), 1, "{when}: a wait comes alone");
                        }
                        done = handle(&mut w, &mut m, &ids, ev);
                    }
                }
            },
            Op::Next => {}
            Op::Report(i) => {
                if m.st[*i] == St::Running {
                    match &sc.batched {
                        Some(b) => host_report_many(&mut w, &mut m, &ids, *i, b, &when),
                        None => host_report(&mut w, &mut m, &ids, *i),
                    }
                } else if w.result(ids[*i]).unwrap().state != GoalState::Running {
                    assert!(w.report(ids[*i], Outcome::Built).is_err(), "{when}");
                }
            }
            Op::Cancel(i) => {
                if w.result(ids[*i]).unwrap().outcome.is_some() {
                    // Finished in the worker (its event may still be queued).
                    assert!(w.cancel(ids[*i]).is_err(), "{when}");
                } else {
                    w.cancel(ids[*i]).unwrap();
                    m.end(*i, Outcome::Cancelled, "cancel");
                    done = false;
                }
            }
        }
        check_locks(&w, &m, &ids, &when);
    }
    // Drive to the end: answer every run, bounded.
    for step in 0..(10 * sc.goals.len() + 10) {
        let when = format!("final step {step}");
        let ev = w.next_event().unwrap_or_else(|e| panic!("{when}: {e}"));
        if handle(&mut w, &mut m, &ids, ev) {
            check_locks(&w, &m, &ids, &when);
            assert_eq!(w.audit().finished, sc.goals.len() as u64);
            return;
        }
        if matches!(ev, Event::Wait { .. }) {
            let i = m.st.iter().position(|s| *s == St::Running).unwrap();
            host_report(&mut w, &mut m, &ids, i);
        }
        check_locks(&w, &m, &ids, &when);
    }
    panic!("not done after the final steps: {:?}", m.st);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("GK_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_matches_the_reference_model(sc in scenario()) {
        run(&sc);
    }
}
