//! The worker's diagnostics log as structured records: each kind made by a
//! real situation (a real foreign holder process for waits, with its pid
//! found through the kernel; hand-offs and goals that became valid with how
//! long they waited; failures, predicates, the ledger, a full log), the
//! same log through the C ABI (`gk_worker_take_log_records`: strings,
//! capacity, the text log made of the same records).

mod common;
mod sched_support;

use std::ffi::CStr;
use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::ffi::gk_status::*;
use goalkeeper::ffi::*;
use goalkeeper::lock::{Backend, LockSet};
use goalkeeper::sched::{
    monotonic_ns, BuildMode, Event, GoalId, GoalKind, LogKind, LogRecord, Outcome, Worker,
    WorkerOptions,
};
use sched_support::{build_output, poll_fd, Holder};

fn worker(max_jobs: u32, recheck: Duration) -> Worker {
    Worker::new(WorkerOptions {
        max_jobs,
        recheck_interval: recheck,
        ..WorkerOptions::default()
    })
    .unwrap()
}

/// Drives `w` until an event other than Wait, within `limit`.
fn next_non_wait(w: &mut Worker, limit: Duration) -> Event {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < limit, "still waiting after {limit:?}");
        match w.next_event().expect("next_event") {
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, limit);
            }
            ev => return ev,
        }
    }
}

fn of_kind(records: &[LogRecord], kind: LogKind) -> Vec<&LogRecord> {
    records.iter().filter(|r| r.kind == kind).collect()
}

/// A wait on a lock another process holds names that process's pid; the
/// hand-off that ends it says how long the goal waited.
#[test]
fn a_foreign_holder_is_named_by_pid_and_the_hand_off_by_its_wait() {
    for kind in ["ofd", "posix", "flock"] {
        let s = TempStore::new();
        let p = s.path("glibc");
        let before = monotonic_ns();
        let mut holder = Holder::start(&p, kind);
        let backend = if kind == "flock" {
            Backend::Flock
        } else {
            Backend::Ofd
        };
        let mut w = Worker::new(WorkerOptions {
            backend,
            recheck_interval: Duration::from_secs(30),
            ..WorkerOptions::default()
        })
        .unwrap();
        let g = w
            .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
            .unwrap();
        assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
        let text = w.log_lines();
        let waits = w.take_log_records();
        assert_eq!(
            waits.iter().map(|r| r.message.clone()).collect::<Vec<_>>(),
            text,
            "the text log is the records' messages"
        );
        let [wait] = of_kind(&waits, LogKind::WaitsForeign)[..] else {
            panic!("{kind}: one foreign wait expected: {waits:#?}")
        };
        assert_eq!(wait.goal, Some(g), "{kind}");
        assert_eq!(wait.path.as_deref(), Some(std::path::Path::new(&p)));
        assert_eq!(
            wait.holder_pid,
            Some(holder.pid()),
            "{kind}: the holder's pid, from the kernel: {wait:?}"
        );
        assert_eq!(wait.holder_goal, None);
        assert!(wait.message.contains(&format!("pid {}", holder.pid())));
        assert!(wait.duration.is_none());
        assert!(before <= wait.time_ns && wait.time_ns <= monotonic_ns());

        holder.release();
        let ev = next_non_wait(&mut w, Duration::from_secs(10));
        assert_eq!(
            ev,
            Event::Run {
                goal: g,
                kind: GoalKind::Build
            }
        );
        let records = w.take_log_records();
        let [handed] = of_kind(&records, LogKind::HandedOver)[..] else {
            panic!("{kind}: one hand-off expected: {records:#?}")
        };
        assert_eq!(handed.goal, Some(g));
        assert_eq!(handed.path, wait.path);
        let waited = handed.duration.expect("a hand-off has a duration");
        assert!(
            waited > Duration::ZERO
                && waited.as_nanos() <= u128::from(handed.time_ns - wait.time_ns),
            "{kind}: waited {waited:?}, between the records {} ns",
            handed.time_ns - wait.time_ns
        );
        assert!(handed.message.contains("handed over after"));
        build_output(&p);
        w.report(g, Outcome::Built).unwrap();
        assert_eq!(w.next_event().unwrap(), Event::Done);
    }
}

/// The usual end of a #31785 wait: the holder built the path and released;
/// the waiter, handed the lock, finds the output valid.
#[test]
fn a_path_made_valid_by_the_holder_is_a_became_valid_record_with_the_wait() {
    let s = TempStore::new();
    let p = s.path("gcc");
    let mut holder = Holder::start(&p, "ofd");
    let mut w = worker(1, Duration::from_secs(30));
    let g = w
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    build_output(&p);
    holder.release();
    assert_eq!(
        next_non_wait(&mut w, Duration::from_secs(10)),
        Event::Finished {
            goal: g,
            outcome: Outcome::AlreadyValid
        }
    );
    let records = w.take_log_records();
    let kinds: Vec<LogKind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [LogKind::WaitsForeign, LogKind::BecameValid],
        "{records:#?}"
    );
    let valid = &records[1];
    assert_eq!(
        (valid.goal, valid.path.as_ref()),
        (Some(g), records[0].path.as_ref())
    );
    assert!(valid.duration.is_some_and(|d| d > Duration::ZERO));
    assert!(valid.message.contains("valid now"), "{}", valid.message);
}

/// A lock leaked by an old daemon: the re-check finds the path valid; the
/// record says how long the goal waited, at least one re-check period.
#[test]
fn a_path_found_valid_on_a_recheck_is_a_became_valid_record() {
    let s = TempStore::new();
    let p = s.path("leaked");
    let _holder = Holder::start(&p, "posix");
    let period = Duration::from_millis(50);
    let mut w = worker(1, period);
    let g = w
        .add_goal(GoalKind::Build, &[&p], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    build_output(&p);
    assert_eq!(
        next_non_wait(&mut w, Duration::from_secs(10)),
        Event::Finished {
            goal: g,
            outcome: Outcome::AlreadyValid
        }
    );
    let records = w.take_log_records();
    let [valid] = of_kind(&records, LogKind::BecameValid)[..] else {
        panic!("{records:#?}")
    };
    assert_eq!(valid.goal, Some(g));
    assert!(valid.duration.is_some_and(|d| d >= period), "{valid:?}");
    assert!(valid.message.contains("became valid while waiting"));
}

/// Holders in this process: a lock set (this pid, no goal) and a goal of
/// another worker (this pid and that goal).
#[test]
fn holders_in_this_process_are_this_pid_and_the_goal() {
    let s = TempStore::new();
    let (a, b) = (s.path("a"), s.path("b"));
    let me = std::process::id();
    let set = LockSet::try_acquire([&a], Backend::Ofd).unwrap();
    let mut other = worker(1, Duration::from_secs(30));
    let ob = other
        .add_goal(GoalKind::Build, &[&b], BuildMode::Normal)
        .unwrap();
    assert!(matches!(other.next_event().unwrap(), Event::Run { .. }));

    let mut w = worker(2, Duration::from_secs(30));
    let ga = w
        .add_goal(GoalKind::Build, &[&a], BuildMode::Normal)
        .unwrap();
    let gb = w
        .add_goal(GoalKind::Build, &[&b], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    let records = w.take_log_records();
    let waits = of_kind(&records, LogKind::WaitsForeign);
    assert_eq!(waits.len(), 2, "{records:#?}");
    let on = |g: GoalId| *waits.iter().find(|r| r.goal == Some(g)).expect("a wait");
    assert_eq!((on(ga).holder_pid, on(ga).holder_goal), (Some(me), None));
    assert!(on(ga).message.contains(&format!("lock set {}", set.id())));
    assert_eq!(
        (on(gb).holder_pid, on(gb).holder_goal),
        (Some(me), Some(ob))
    );
    other.cancel(ob).unwrap();
    set.release().unwrap();
}

/// The other kinds, each from the situation that makes it.
#[test]
fn every_other_kind_comes_from_its_situation() {
    let s = TempStore::new();

    // max_jobs 0: a build cannot run.
    let mut w = worker(0, Duration::from_secs(1));
    let g = w
        .add_goal(GoalKind::Build, &[&s.path("nojobs")], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Finished { .. }));
    let r = w.take_log_records();
    let kinds: Vec<LogKind> = r.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [LogKind::NoBuildSlots, LogKind::CancelledByFailure],
        "{r:#?}"
    );
    assert!(r.iter().all(|r| r.goal == Some(g)));

    // A reported success without a valid output; then, without
    // keep-going, the failure cancels the rest.
    let mut w = worker(1, Duration::from_secs(1));
    let liar = w
        .add_goal(GoalKind::Build, &[&s.path("liar")], BuildMode::Normal)
        .unwrap();
    let _later = w
        .add_goal(GoalKind::Build, &[&s.path("later")], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Run { goal, .. } if goal == liar));
    w.report(liar, Outcome::Built).unwrap();
    let r = w.take_log_records();
    let kinds: Vec<LogKind> = r.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [LogKind::NotValidAfterSuccess, LogKind::CancelledByFailure],
        "{r:#?}"
    );
    assert_eq!(
        r[0].path.as_deref(),
        Some(std::path::Path::new(&s.path("liar")))
    );
    assert!(r.iter().all(|r| r.goal == Some(liar)));
    assert!(
        r[1].message.contains("cancelled 1 goals"),
        "{}",
        r[1].message
    );

    // A predicate that fails (through the C ABI: a negative answer).
    unsafe extern "C" fn broken(_: *mut std::ffi::c_void, _: *const std::ffi::c_char) -> i32 {
        -3
    }
    let mut h: gk_worker = 0;
    // SAFETY: NULL options, a valid out pointer.
    assert_eq!(unsafe { gk_worker_new(std::ptr::null(), &mut h) }, GK_OK);
    assert_eq!(
        gk_worker_set_valid_path(h, Some(broken), std::ptr::null_mut()),
        GK_OK
    );
    let bad = std::ffi::CString::new(s.path("predicate")).unwrap();
    let mut g: gk_goal = 0;
    // SAFETY: one valid path, a valid out pointer.
    let st = unsafe { gk_worker_add_goal(h, 0, [bad.as_ptr()].as_ptr(), 1, 0, 0, &mut g) };
    assert_eq!(st, GK_OK);
    let mut ev = std::mem::MaybeUninit::<gk_event>::uninit();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { gk_worker_next_event(h, ev.as_mut_ptr()) }, GK_OK);
    let mut recs = [std::mem::MaybeUninit::<gk_log_record>::uninit(); 4];
    let mut n = 0usize;
    // SAFETY: room for 4 records; a valid count pointer.
    let st = unsafe { gk_worker_take_log_records(h, recs.as_mut_ptr().cast(), 4, &mut n) };
    assert_eq!(st, GK_OK);
    assert!(n >= 1, "no record");
    for r in &recs[..n] {
        // SAFETY: the library wrote `n` records; their strings are valid
        // until the next take on this worker.
        let (r, path) = unsafe {
            let r = r.assume_init();
            (r, CStr::from_ptr(r.path))
        };
        assert_eq!(r.kind, gk_log_kind::GK_LOG_PREDICATE_ERROR as u32);
        assert_eq!((r.goal, path), (g, bad.as_c_str()));
    }
    assert_eq!(gk_worker_free(h), GK_OK);

    // A cached failure.
    let mut w = worker(1, Duration::from_secs(1));
    let cached = s.path("cached");
    w.set_cached_failure(Box::new(|_| true));
    let g = w
        .add_goal(GoalKind::Build, &[&cached], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        w.next_event().unwrap(),
        Event::Finished {
            goal: g,
            outcome: Outcome::CachedFailure
        }
    );
    let r = w.take_log_records();
    assert_eq!(r.len(), 2, "{r:#?}");
    assert_eq!((r[0].kind, r[0].goal), (LogKind::CachedFailure, Some(g)));
    assert_eq!(r[0].path.as_deref(), Some(std::path::Path::new(&cached)));
    assert_eq!(r[1].kind, LogKind::CancelledByFailure);

    // The same goal again in a weaker mode once it ran in check mode.
    let mut w = worker(1, Duration::from_secs(1));
    let out = s.path("checked");
    let g = w
        .add_goal(GoalKind::Build, &[&out], BuildMode::Check)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Run { .. }));
    assert_eq!(
        w.add_goal(GoalKind::Build, &[&out], BuildMode::Normal)
            .unwrap(),
        g
    );
    let r = w.take_log_records();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!((r[0].kind, r[0].goal), (LogKind::ModeKept, Some(g)));
    w.cancel(g).unwrap();

    // A ledger violation (legacy_hold: a finished goal keeps its lock).
    let mut w = Worker::new(WorkerOptions {
        legacy_hold: true,
        ..WorkerOptions::default()
    })
    .unwrap();
    let leaky = s.path("leaky");
    let g = w
        .add_goal(GoalKind::Build, &[&leaky], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Run { .. }));
    build_output(&leaky);
    assert!(w.report(g, Outcome::Built).is_err());
    let r = w.take_log_records();
    let [v] = of_kind(&r, LogKind::LedgerViolation)[..] else {
        panic!("{r:#?}")
    };
    assert!(v.message.contains("still holds the lock"), "{}", v.message);
}

/// A full log drops its oldest records and says so first, with a record of
/// its own.
#[test]
fn a_full_log_says_how_many_records_it_dropped() {
    let s = TempStore::new();
    let mut w = worker(1, Duration::from_secs(1));
    let out = s.path("modes");
    let g = w
        .add_goal(GoalKind::Build, &[&out], BuildMode::Check)
        .unwrap();
    let n = 10_005;
    for _ in 0..n {
        w.add_goal(GoalKind::Build, &[&out], BuildMode::Normal)
            .unwrap();
    }
    assert_eq!(w.log_len(), 10_001);
    let first = w.take_log_records_up_to(2);
    assert_eq!(first[0].kind, LogKind::Dropped);
    assert_eq!(first[0].message, "(5 older log lines were dropped)");
    assert_eq!((first[1].kind, first[1].goal), (LogKind::ModeKept, Some(g)));
    assert_eq!(w.take_log_records().len(), 9_999);
    assert_eq!(w.log_len(), 0);
}

/// The C entry point: capacity, the strings' lifetime, the text log drawn
/// from the same records, and the names.
#[test]
fn the_c_abi_hands_out_records_with_their_strings() {
    let s = TempStore::new();
    let p = s.path("c-abi");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let mut h: gk_worker = 0;
    // SAFETY: NULL options, a valid out pointer.
    assert_eq!(unsafe { gk_worker_new(std::ptr::null(), &mut h) }, GK_OK);
    let cp = std::ffi::CString::new(p.clone()).unwrap();
    let outs = [cp.as_ptr()];
    let mut g: gk_goal = 0;
    for mode in [2, 0, 0] {
        // SAFETY: one valid path, a valid out pointer.
        let st = unsafe { gk_worker_add_goal(h, 0, outs.as_ptr(), 1, mode, 0, &mut g) };
        assert_eq!(st, GK_OK);
    }
    let mut ev = std::mem::MaybeUninit::<gk_event>::uninit();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { gk_worker_next_event(h, ev.as_mut_ptr()) }, GK_OK);
    // The log now holds two mode-kept records (the goal keeps check mode)
    // and the wait on the lock set.
    let mut recs = vec![std::mem::MaybeUninit::<gk_log_record>::uninit(); 8];
    let mut n = usize::MAX;
    // SAFETY: `recs` holds 8 records; `n` is valid.
    let st = unsafe { gk_worker_take_log_records(h, recs.as_mut_ptr().cast(), 1, &mut n) };
    assert_eq!((st, n), (GK_OK, 1));
    // SAFETY: the library wrote one record.
    let first = unsafe { recs[0].assume_init() };
    // SAFETY: the strings stay valid until the next take on this worker.
    let msg = unsafe { CStr::from_ptr(first.message) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(msg.len(), first.message_len);
    // Other calls on the worker leave the strings alone.
    let mut a = std::mem::MaybeUninit::<gk_audit>::uninit();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { gk_worker_audit(h, a.as_mut_ptr()) }, GK_OK);
    // SAFETY: as above.
    assert_eq!(
        unsafe { CStr::from_ptr(first.message) }.to_str().unwrap(),
        msg
    );
    // The rest.
    // SAFETY: as above.
    let st = unsafe { gk_worker_take_log_records(h, recs.as_mut_ptr().cast(), 8, &mut n) };
    assert_eq!(st, GK_OK);
    let rest: Vec<gk_log_record> = recs[..n]
        .iter()
        // SAFETY: the library wrote `n` records.
        .map(|r| unsafe { r.assume_init() })
        .collect();
    let all: Vec<gk_log_record> = std::iter::once(first).chain(rest).collect();
    let kinds: Vec<&str> = all
        .iter()
        // SAFETY: gk_log_kind_name returns a static string.
        .map(|r| {
            unsafe { CStr::from_ptr(gk_log_kind_name(r.kind)) }
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(kinds, ["mode-kept", "mode-kept", "waits-foreign"]);
    let wait = all.last().unwrap();
    assert_eq!(wait.goal, g);
    assert_eq!(wait.holder_pid as u32, std::process::id());
    assert_eq!((wait.holder_goal, wait.duration_ns), (0, -1));
    // SAFETY: a NUL-terminated path, valid until the next take.
    let path = unsafe { CStr::from_ptr(wait.path) }.to_str().unwrap();
    assert_eq!((path, wait.path_len), (p.as_str(), p.len()));
    assert!(all.iter().all(|r| r.time_ns > 0 && r.goal == g));

    // The text log and the records drain one log.
    set.release().unwrap();
    let cancelled_text = {
        assert_eq!(gk_worker_cancel(h, g), GK_OK);
        let mut len = 0usize;
        // SAFETY: a size query.
        unsafe { gk_worker_take_log(h, std::ptr::null_mut(), 0, &mut len) }
    };
    assert_eq!(cancelled_text, GK_OK, "a cancel logs nothing");
    // SAFETY: as above.
    let st = unsafe { gk_worker_take_log_records(h, recs.as_mut_ptr().cast(), 8, &mut n) };
    assert_eq!((st, n), (GK_OK, 0));

    // SAFETY: static strings.
    let name = |k| {
        unsafe { CStr::from_ptr(gk_log_kind_name(k)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(gk_log_kind::GK_LOG_HANDED_OVER as u32), "handed-over");
    assert_eq!(
        name(gk_log_kind::GK_LOG_VALIDITY_UNKNOWN as u32),
        "validity-unknown"
    );
    assert_eq!(
        name(gk_log_kind::GK_LOG_ON_DISK_NOT_VALID as u32),
        "on-disk-not-valid"
    );
    assert_eq!((name(0), name(17)), ("unknown", "unknown"));
    assert_eq!(gk_worker_free(h), GK_OK);
}
