//! Lock contention with other processes and other lock holders of this
//! process: S3 (a leaked foreign lock cannot hang a goal whose output became
//! valid), G4/S11 (event-driven hand-off, no busy loop), S4 (no lock while
//! waiting for a slot), S13 (nothing blocks the scheduler thread).

mod common;
mod sched_support;

use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::lock::{Backend, LockSet};
use goalkeeper::sched::{BuildMode, Event, GoalKind, GoalState, Outcome, Worker, WorkerOptions};
use goalkeeper::Error;
use sched_support::{assert_clean, build_output, held, poll_fd, Holder};

fn worker(max_jobs: u32, recheck: Duration) -> Worker {
    Worker::new(WorkerOptions {
        max_jobs,
        recheck_interval: recheck,
        ..WorkerOptions::default()
    })
    .unwrap()
}

/// Calls next_event until it returns something other than Wait, polling the
/// fd in between; returns the event, the number of next_event calls, and
/// whether every poll ended because the fd became readable (not by timeout).
fn until_not_wait(w: &mut Worker, limit: Duration) -> (Event, u32, bool) {
    let start = Instant::now();
    let mut calls = 0;
    let mut readable = true;
    loop {
        assert!(start.elapsed() < limit, "still waiting after {limit:?}");
        calls += 1;
        let ev = w.next_event().expect("next_event");
        assert_clean(w, "while waiting");
        match ev {
            Event::Wait { fd, timeout } => {
                readable &= poll_fd(fd, timeout, limit);
            }
            ev => return (ev, calls, readable),
        }
    }
}

#[test]
fn s3_leaked_posix_lock_of_an_old_daemon_cannot_hang_a_goal_that_became_valid() {
    let s = TempStore::new();
    let p = s.path("leaked");
    let mut holder = Holder::start(&p, "posix"); // never releases
    let mut w = worker(1, Duration::from_millis(50));
    let g = w
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    match w.next_event().unwrap() {
        Event::Wait {
            timeout: Some(t), ..
        } => assert!(t <= Duration::from_millis(50)),
        e => panic!("expected a wait with a re-check timeout, got {e:?}"),
    }
    assert_eq!(w.result(g).unwrap().state, GoalState::WaitingLock);
    assert!(!held(&p), "G2: waiting holds nothing");
    let log = w.take_log().join("\n");
    assert!(log.contains("held by another process"), "{log}");
    assert!(
        log.contains(&format!("pid {}", holder.pid())) && log.contains("posix lock"),
        "the log names the POSIX holder: {log}"
    );
    // Someone else (the old daemon) finishes the path; its lock stays leaked.
    build_output(&p);
    let (ev, _, _) = until_not_wait(&mut w, Duration::from_secs(10));
    assert_eq!(
        ev,
        Event::Finished {
            goal: g,
            outcome: Outcome::AlreadyValid
        }
    );
    assert!(w.audit().validity_rechecks >= 1);
    assert!(holder.alive(), "the holder still holds its lock");
    let e = LockSet::try_acquire([&p], Backend::Ofd).unwrap_err();
    assert!(
        matches!(e, Error::Busy { .. }),
        "the lock was never taken: {e}"
    );
    assert_eq!(w.next_event().unwrap(), Event::Done);
    assert_eq!(w.audit().foreign_waits, 0);
}

#[test]
fn g4_s11_cross_process_hand_off_is_event_driven() {
    let s = TempStore::new();
    let p = s.path("handoff");
    let mut holder = Holder::start(&p, "ofd");
    // A re-check period far longer than the test: only the eventfd can wake us.
    let mut w = worker(1, Duration::from_secs(30));
    let g = w
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    let ev = w.next_event().unwrap();
    let Event::Wait { fd, timeout } = ev else {
        panic!("{ev:?}")
    };
    assert!(timeout.unwrap() > Duration::from_secs(20));
    // Nothing happens: the fd is not readable and next_event stays cheap.
    assert!(!poll_fd(
        fd,
        Some(Duration::from_millis(20)),
        Duration::from_secs(1)
    ));
    holder.release();
    let t0 = Instant::now();
    let (ev, calls, readable) = until_not_wait(&mut w, Duration::from_secs(10));
    let latency = t0.elapsed();
    assert_eq!(
        ev,
        Event::Run {
            goal: g,
            kind: GoalKind::Build
        }
    );
    assert!(
        readable,
        "woken by the eventfd (or not at all), never by a timeout"
    );
    assert!(
        calls <= 3,
        "busy loop: {calls} next_event calls for one hand-off"
    );
    assert!(
        latency < Duration::from_secs(2),
        "hand-off took {latency:?}"
    );
    assert!(held(&p));
    assert_eq!(w.audit().handoffs, 1);
    build_output(&p);
    w.report(g, Outcome::Built).unwrap();
    assert!(!held(&p));
    assert_eq!(w.next_event().unwrap(), Event::Done);
}

#[test]
fn s4_a_handed_over_lock_is_given_back_when_no_slot_is_free() {
    let s = TempStore::new();
    let (a, b) = (s.path("a"), s.path("b"));
    let mut holder = Holder::start(&b, "posix");
    let mut w = worker(1, Duration::from_secs(30));
    let gb = w
        .add_goal(GoalKind::Build, &[&b], BuildMode::Normal)
        .unwrap();
    let ga = w
        .add_goal(GoalKind::Build, &[&a], BuildMode::Normal)
        .unwrap();
    // b is busy: it waits (holding nothing, slot given back), a runs.
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: ga,
            kind: GoalKind::Build
        }
    );
    assert_eq!(w.result(gb).unwrap().state, GoalState::WaitingLock);
    holder.release();
    // The hand-off arrives while a holds the only slot: b must not keep the lock.
    let t0 = Instant::now();
    while w.audit().handoffs == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no hand-off");
        let ev = w.next_event().unwrap();
        let Event::Wait { fd, .. } = ev else {
            panic!("{ev:?}")
        };
        if w.audit().handoffs == 0 {
            assert!(
                poll_fd(fd, None, Duration::from_secs(10)),
                "hand-off signalled"
            );
        }
    }
    assert_eq!(w.result(gb).unwrap().state, GoalState::WaitingSlot);
    assert!(!held(&b), "S4: no lock while waiting for a slot");
    let probe = LockSet::try_acquire([&b], Backend::Ofd).expect("b's lock is free");
    probe.release().unwrap();
    build_output(&a);
    w.report(ga, Outcome::Built).unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Run {
            goal: gb,
            kind: GoalKind::Build
        }
    );
    assert!(held(&b));
    w.report(gb, Outcome::Failed).unwrap();
    assert_eq!(w.next_event().unwrap(), Event::Done);
}

#[test]
fn g5_a_lock_set_of_this_process_makes_the_goal_wait_and_the_log_says_who() {
    let s = TempStore::new();
    let p = s.path("mine");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let mut w = worker(1, Duration::from_secs(30));
    let g = w
        .add_goal(GoalKind::Substitute, &[&p], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    let log = w.take_log().join("\n");
    assert!(
        log.contains(&format!("held by lock set {} in this process", set.id())),
        "{log}"
    );
    set.release().unwrap();
    let (ev, calls, readable) = until_not_wait(&mut w, Duration::from_secs(10));
    assert_eq!(
        ev,
        Event::Run {
            goal: g,
            kind: GoalKind::Substitute
        }
    );
    assert!(readable && calls <= 3);
    w.cancel(g).unwrap();
    assert!(!held(&p));
}

#[test]
fn s13_nothing_blocks_the_scheduler_thread_while_a_lock_is_held_forever() {
    let s = TempStore::new();
    let paths: Vec<String> = (0..4).map(|i| s.path(&format!("f{i}"))).collect();
    let _holders: Vec<Holder> = paths.iter().map(|p| Holder::start(p, "ofd")).collect();
    let mut w = worker(1, Duration::from_secs(30));
    let goals: Vec<_> = paths
        .iter()
        .map(|p| {
            w.add_goal(GoalKind::Build, &[p], BuildMode::Normal)
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    for _ in 0..100 {
        assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    }
    assert_eq!(w.audit().foreign_waits, 4);
    for g in &goals {
        w.cancel(*g).unwrap();
    }
    assert_eq!(w.audit().foreign_waits, 0);
    assert_eq!(w.next_event().unwrap(), Event::Done);
    drop(w);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "calls blocked: {:?}",
        t0.elapsed()
    );
}

#[test]
fn g4_g5_two_workers_of_one_process_hand_over_event_driven() {
    let s = TempStore::new();
    let p = s.path("shared");
    let kg = WorkerOptions {
        keep_going: true,
        recheck_interval: Duration::from_secs(30),
        ..WorkerOptions::default()
    };
    let mut a = Worker::new(kg.clone()).unwrap();
    let mut b = Worker::new(kg).unwrap();
    let ga = a
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    let gb = b
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        a.next_event().unwrap(),
        Event::Run {
            goal: ga,
            kind: GoalKind::Build
        }
    );
    let Event::Wait { fd, .. } = b.next_event().unwrap() else {
        panic!("b must wait")
    };
    let log = b.take_log().join("\n");
    assert!(
        log.contains(&format!(
            "held by goal 0 of worker {} in this process",
            a.serial()
        )),
        "{log}"
    );
    assert!(!poll_fd(
        fd,
        Some(Duration::from_millis(20)),
        Duration::from_secs(1)
    ));
    // a fails (the path stays invalid): b must get the lock, promptly.
    a.report(ga, Outcome::Failed).unwrap();
    let (ev, calls, readable) = until_not_wait(&mut b, Duration::from_secs(10));
    assert_eq!(
        ev,
        Event::Run {
            goal: gb,
            kind: GoalKind::Build
        }
    );
    assert!(readable && calls <= 2, "calls {calls}, readable {readable}");
    assert!(held(&p));
    // And the other way round: a path that became valid ends the wait.
    let q = s.path("shared2");
    let ga2 = a
        .add_goal(GoalKind::Build, &[&q], BuildMode::Normal)
        .unwrap();
    let gb2 = b
        .add_goal(GoalKind::Build, &[&q], BuildMode::Normal)
        .unwrap();
    b.report(gb, Outcome::Failed).unwrap();
    assert_eq!(
        a.next_event().unwrap(),
        Event::Run {
            goal: ga2,
            kind: GoalKind::Build
        }
    );
    assert!(matches!(b.next_event().unwrap(), Event::Wait { .. }));
    build_output(&q);
    a.report(ga2, Outcome::Built).unwrap();
    let (ev, _, _) = until_not_wait(&mut b, Duration::from_secs(10));
    assert_eq!(
        ev,
        Event::Finished {
            goal: gb2,
            outcome: Outcome::AlreadyValid
        }
    );
    assert_eq!(b.next_event().unwrap(), Event::Done);
}

/// Two goals wait in the kernel for locks that two other processes hold,
/// and both holders release before the host asks again, so both wait
/// threads hold their locks when `next_event` runs. Each goal takes its
/// locks in the call that tells the host it runs, never in a call that
/// returns the other goal's event: after every call, this process holds
/// exactly the outputs of the goals the host was told run (the ABI fuzzer
/// found a call that returned one goal's event while the other, its `Run`
/// still queued, already held its lock).
#[test]
fn a_goal_takes_its_locks_in_the_call_that_says_it_runs() {
    let s = TempStore::new();
    let (a, b) = (s.path("a"), s.path("b"));
    let mut holders = [Holder::start(&a, "ofd"), Holder::start(&b, "ofd")];
    let mut w = worker(2, Duration::from_secs(60));
    let ga = w
        .add_goal(GoalKind::Build, &[&a], BuildMode::Normal)
        .unwrap();
    let gb = w
        .add_goal(GoalKind::Build, &[&b], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    holders.iter_mut().for_each(Holder::release);
    // Both wait threads hold their locks now, or soon (nobody else can).
    let start = Instant::now();
    while ![&a, &b]
        .iter()
        .all(|p| kernel_lock_granted(&format!("{p}.lock")))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the wait threads got no lock"
        );
        std::thread::yield_now();
    }
    let mut told = Vec::new();
    while told.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "told {told:?}");
        match w.next_event().unwrap() {
            Event::Run { goal, .. } => told.push(goal),
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, Duration::from_secs(1));
            }
            e => panic!("unexpected {e:?}"),
        }
        for (g, p) in [(ga, &a), (gb, &b)] {
            assert_eq!(
                held(p),
                told.contains(&g),
                "{p} after telling the host {told:?}"
            );
        }
    }
    for g in told {
        w.report(g, Outcome::Failed).unwrap();
    }
}

/// Whether `/proc/locks` lists a granted lock on the file at `path`.
fn kernel_lock_granted(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let dev = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    locks
        .lines()
        .any(|l| !l.contains("->") && l.split_whitespace().nth(5) == Some(dev.as_str()))
}
