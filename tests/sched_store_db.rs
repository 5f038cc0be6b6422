//! The worker's validity from the store database (issue 11): a path is
//! valid when it is registered in `ValidPaths`, not when a file exists there;
//! and no goal is ever finished as valid on a database error, at each place
//! validity is asked (before locking, under the locks, the re-check of a
//! foreign wait, the hand-over of a lock, the check of a reported success).
//!
//! The databases are real SQLite files with Guix's schema. They turn bad
//! mid-run in the two ways a live system shows: locked past a short busy
//! timeout by a writer holding an exclusive transaction (a connection of
//! this process, as the daemon's own connection would be, on a
//! rollback-journal database), or the file overwritten with garbage. Foreign
//! locks are held by a real process (tests/c/sched_holder.c).

mod common;
mod sched_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{db, TempStore};
use goalkeeper::error::DbErrorKind;
use goalkeeper::sched::{BuildMode, Event, GoalId, GoalKind, Outcome, Worker, WorkerOptions};
use goalkeeper::store_db::{StoreDb, StoreDbOptions};
use goalkeeper::Error;
use rusqlite::Connection;
use sched_support::{assert_clean, build_output, held, poll_fd, Holder};

const LIMIT: Duration = Duration::from_secs(30);
const BUSY: Duration = Duration::from_millis(100);

fn worker(recheck_ms: u64) -> Worker {
    Worker::new(WorkerOptions {
        recheck_interval: Duration::from_millis(recheck_ms),
        keep_going: true,
        ..WorkerOptions::default()
    })
    .unwrap()
}

/// A worker whose validity is `db`, read with a short busy timeout.
fn worker_on(db: &Path, recheck_ms: u64) -> Worker {
    let mut w = worker(recheck_ms);
    let sdb = StoreDb::with_options(db, StoreDbOptions { busy_timeout: BUSY }).unwrap();
    w.set_store_db(sdb);
    assert_eq!(w.store_database(), Some(db));
    w
}

/// A connection of this process holding an exclusive transaction on a
/// rollback-journal database: every reader gets "locked" after its busy
/// timeout until [`Exclusive::end`].
struct Exclusive(Connection);

impl Exclusive {
    fn begin(db: &Path) -> Exclusive {
        let c = Connection::open(db).unwrap();
        c.execute_batch("begin exclusive").unwrap();
        Exclusive(c)
    }

    fn end(self) {
        self.0.execute_batch("rollback").unwrap();
    }
}

fn add(w: &mut Worker, path: &str) -> GoalId {
    w.add_goal(GoalKind::Build, &[path], BuildMode::Normal)
        .unwrap()
}

/// The next event that is not a Wait, polling the fd on Waits (bounded).
fn next_non_wait(w: &mut Worker) -> Event {
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < LIMIT, "no event within {LIMIT:?}");
        let ev = w.next_event().unwrap();
        assert_clean(w, &format!("after {ev:?}"));
        match ev {
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, Duration::from_millis(200));
            }
            ev => return ev,
        }
    }
}

/// Drives `w` through Wait events until `cond` holds (bounded).
fn wait_until(w: &mut Worker, what: &str, mut cond: impl FnMut(&mut Worker) -> bool) {
    let t = Instant::now();
    while !cond(w) {
        assert!(
            t.elapsed() < LIMIT,
            "{what}: not within {LIMIT:?}; log: {:#?}",
            w.log_lines()
        );
        match w.next_event().unwrap() {
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, Duration::from_millis(200));
            }
            ev => panic!("{what}: unexpected {ev:?}; log: {:#?}", w.log_lines()),
        }
        assert_clean(w, what);
    }
}

fn lines_with<'a>(log: &'a [String], needles: &[&str]) -> Vec<&'a String> {
    log.iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

fn outcome(w: &Worker, g: GoalId) -> Option<Outcome> {
    w.result(g).unwrap().outcome
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Validity is registration: an output that exists but is not registered
/// (a build writing in place) is built, not "already valid"; a registered
/// one is already valid even without a file; a reported success is checked
/// against the database too.
#[test]
fn validity_is_registration_not_existence() {
    let st = TempStore::new();
    let (written, registered, built) = (st.path("written"), st.path("registered"), st.path("b"));
    let dbp = db::create(st.dir(), "wal", &[&registered]);
    build_output(&written); // exists, unregistered: half-built in place
    let mut w = worker_on(&dbp, 1000);
    let g1 = add(&mut w, &written);
    assert!(matches!(next_non_wait(&mut w), Event::Run { goal, .. } if goal == g1));
    let g2 = add(&mut w, &registered);
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g2,
            outcome: Outcome::AlreadyValid
        }
    );
    // Success reported while the output is still unregistered: failed.
    w.report(g1, Outcome::Built).unwrap();
    assert_eq!(outcome(&w, g1), Some(Outcome::Failed));
    let log = w.take_log();
    assert_eq!(
        lines_with(&log, &["reported success", &written, "not valid"]).len(),
        1,
        "{log:#?}"
    );
    // Registered before the report: built, and its lock file deleted.
    let g3 = add(&mut w, &built);
    assert!(matches!(next_non_wait(&mut w), Event::Run { goal, .. } if goal == g3));
    build_output(&built);
    db::register(&dbp, &built);
    w.report(g3, Outcome::Built).unwrap();
    assert_eq!(outcome(&w, g3), Some(Outcome::Built));
    assert!(!held(&built));
    assert!(!st.lock_file("b").exists());
    assert_eq!(next_non_wait(&mut w), Event::Done);
}

/// Before locking and under the locks: a locked database. The output is
/// registered, so a working database would say "already valid"; locked past
/// the busy timeout, the goal goes on to its locks and then fails without
/// running. It holds nothing afterwards and its lock file stays (deletion
/// is only for valid outputs).
#[test]
fn locked_database_before_and_under_the_locks_fails_the_goal() {
    let st = TempStore::new();
    let out = st.path("out");
    let dbp = db::create(st.dir(), "delete", &[&out]);
    let mut w = worker_on(&dbp, 1000);
    let x = Exclusive::begin(&dbp);
    let g = add(&mut w, &out);
    let t = Instant::now();
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g,
            outcome: Outcome::Failed
        }
    );
    assert!(
        t.elapsed() >= 2 * BUSY,
        "two queries waited the busy timeout"
    );
    x.end();
    assert!(!held(&out));
    assert!(st.lock_file("out").exists(), "the lock file is not deleted");
    let records = w.take_log_records();
    let unknown: Vec<_> = records
        .iter()
        .filter(|r| r.kind == goalkeeper::sched::LogKind::ValidityUnknown)
        .collect();
    assert_eq!(
        unknown.len(),
        2,
        "a structured record each time: {records:#?}"
    );
    assert!(unknown.iter().all(|r| r.goal == Some(g)), "{unknown:#?}");
    let log: Vec<String> = records.into_iter().map(|r| r.message).collect();
    let db_name = s(&dbp);
    let before = lines_with(
        &log,
        &[&out, db_name, "locked", "goes on to take its locks"],
    );
    let under = lines_with(
        &log,
        &[&out, db_name, "locked", "failed without running it"],
    );
    assert_eq!((before.len(), under.len()), (1, 1), "{log:#?}");
    assert!(under[0].contains("never taken as valid"), "{}", under[0]);
    assert_eq!(next_non_wait(&mut w), Event::Done);
    // The same database answers again once the writer let go.
    let mut w = worker_on(&dbp, 1000);
    let g2 = add(&mut w, &out);
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g2,
            outcome: Outcome::AlreadyValid
        }
    );
}

/// The re-check of a foreign wait with the database replaced by garbage:
/// the goal keeps waiting (the log says why once, not at every re-check),
/// and finishes "already valid" only once the database is back and says so.
#[test]
fn garbage_database_during_a_foreign_wait_keeps_the_goal_waiting() {
    let st = TempStore::new();
    let out = st.path("out");
    let dbp = db::create(st.dir(), "delete", &[]);
    let mut w = worker_on(&dbp, 20);
    let holder = Holder::start(&out, "posix");
    let original = db::garble(&dbp);
    build_output(&out); // exists all along: existence must not count
    let g = add(&mut w, &out);
    wait_until(&mut w, "five re-checks", |w| {
        w.audit().validity_rechecks >= 5
    });
    assert_eq!(w.audit().waiting_lock, 1);
    let log = w.log_lines();
    let db_name = s(&dbp);
    let not_sqlite = "not an SQLite database";
    assert_eq!(
        lines_with(
            &log,
            &[&out, db_name, not_sqlite, "goes on to take its locks"]
        )
        .len(),
        1,
        "{log:#?}"
    );
    assert_eq!(
        lines_with(&log, &[&out, db_name, not_sqlite, "keeps waiting"]).len(),
        1,
        "one line for all the re-checks: {log:#?}"
    );
    // The database comes back, still without the path: it keeps waiting.
    db::restore(&dbp, &original);
    let n = w.audit().validity_rechecks;
    wait_until(&mut w, "a re-check after the restore", |w| {
        w.audit().validity_rechecks > n
    });
    assert_eq!(outcome(&w, g), None);
    assert_eq!(
        lines_with(&w.log_lines(), &["answers again", "keeps waiting"]).len(),
        1,
        "{:#?}",
        w.log_lines()
    );
    // Registered: the next re-check finishes it, the holder still holding.
    db::register(&dbp, &out);
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g,
            outcome: Outcome::AlreadyValid
        }
    );
    drop(holder);
    assert_eq!(next_non_wait(&mut w), Event::Done);
}

/// The re-check of a foreign wait while the lock's holder writes the output
/// in place: the output exists but is not registered, so the goal keeps
/// waiting, and says so once (an `on-disk-not-valid` record with the path,
/// the database and how long it has waited), not at every re-check; nothing
/// is said while the output is not on disk yet. Registered, the next
/// re-check finishes it, the holder still holding.
#[test]
fn output_on_disk_but_unregistered_keeps_the_waiter_waiting() {
    use goalkeeper::sched::LogKind;
    let st = TempStore::new();
    let out = st.path("out");
    let dbp = db::create(st.dir(), "wal", &[]);
    let mut w = worker_on(&dbp, 20);
    let holder = Holder::start(&out, "ofd");
    let g = add(&mut w, &out);
    wait_until(&mut w, "two re-checks", |w| {
        w.audit().validity_rechecks >= 2
    });
    let on_disk = |records: &[goalkeeper::sched::LogRecord]| {
        records
            .iter()
            .filter(|r| r.kind == LogKind::OnDiskNotValid)
            .cloned()
            .collect::<Vec<_>>()
    };
    let before = w.take_log_records();
    assert!(on_disk(&before).is_empty(), "not on disk yet: {before:#?}");
    build_output(&out); // the holder's build, in place
    let n = w.audit().validity_rechecks;
    wait_until(&mut w, "five re-checks with the output on disk", |w| {
        w.audit().validity_rechecks >= n + 5
    });
    assert_eq!((outcome(&w, g), w.audit().waiting_lock), (None, 1));
    let records = w.take_log_records();
    let seen = on_disk(&records);
    assert_eq!(seen.len(), 1, "once, not at every re-check: {records:#?}");
    let r = &seen[0];
    assert_eq!(
        (r.goal, r.path.as_deref()),
        (Some(g), Some(Path::new(&out)))
    );
    assert!(
        r.duration.is_some_and(|d| d >= Duration::from_millis(40)),
        "{r:#?}"
    );
    for needle in [
        out.as_str(),
        s(&dbp),
        "exists on disk but is not registered in",
        "keeps waiting for its lock",
    ] {
        assert!(
            r.message.contains(needle),
            "{needle:?} not in {:?}",
            r.message
        );
    }
    db::register(&dbp, &out);
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g,
            outcome: Outcome::AlreadyValid
        }
    );
    assert!(on_disk(&w.take_log_records()).is_empty());
    drop(holder);
    assert_eq!(next_non_wait(&mut w), Event::Done);
}

/// The same record with a host predicate as the validity: an output on disk
/// that the predicate refuses; never with the default validity, for which
/// being on disk is being valid.
#[test]
fn output_on_disk_refused_by_the_host_predicate_is_said_once() {
    use goalkeeper::sched::LogKind;
    let st = TempStore::new();
    let out = st.path("out");
    build_output(&out);
    let holder = Holder::start(&out, "ofd");
    let mut w = worker(20);
    w.set_valid_path(Box::new(|_| false));
    let g = add(&mut w, &out);
    wait_until(&mut w, "three re-checks", |w| {
        w.audit().validity_rechecks >= 3
    });
    let records = w.take_log_records();
    let seen: Vec<_> = records
        .iter()
        .filter(|r| r.kind == LogKind::OnDiskNotValid)
        .collect();
    assert_eq!(seen.len(), 1, "{records:#?}");
    assert_eq!(seen[0].goal, Some(g));
    assert!(
        seen[0]
            .message
            .contains("exists on disk but the host's validity predicate says it is not valid"),
        "{:?}",
        seen[0].message
    );
    w.cancel(g).unwrap();
    drop(holder);
}

/// The re-check and the hand-over with a locked database: while the
/// database is locked the goal keeps waiting; when the holder releases, the
/// lock is handed over, the database still cannot answer, and the goal
/// gives the lock back and fails instead of running or being "valid".
#[test]
fn locked_database_at_the_hand_over_fails_the_goal() {
    let st = TempStore::new();
    let out = st.path("out");
    let dbp = db::create(st.dir(), "truncate", &[]);
    let mut w = worker_on(&dbp, 20);
    let mut holder = Holder::start(&out, "ofd");
    let g = add(&mut w, &out);
    wait_until(&mut w, "waiting", |w| w.audit().validity_rechecks >= 1);
    // Registered now, but locked: a working database would finish it.
    db::register(&dbp, &out);
    let x = Exclusive::begin(&dbp);
    let n = w.audit().validity_rechecks;
    wait_until(&mut w, "two locked re-checks", |w| {
        w.audit().validity_rechecks >= n + 2
    });
    assert_eq!(outcome(&w, g), None, "{:#?}", w.log_lines());
    holder.release();
    assert_eq!(
        next_non_wait(&mut w),
        Event::Finished {
            goal: g,
            outcome: Outcome::Failed
        }
    );
    x.end();
    assert!(!held(&out));
    assert!(st.lock_file("out").exists(), "the lock file is not deleted");
    assert_eq!(w.audit().handoffs, 1);
    let log = w.take_log();
    let db_name = s(&dbp);
    assert_eq!(
        lines_with(&log, &[&out, db_name, "locked", "keeps waiting"]).len(),
        1,
        "{log:#?}"
    );
    assert_eq!(
        lines_with(&log, &[&out, db_name, "locked", "handed over", "failed"]).len(),
        1,
        "{log:#?}"
    );
    assert_eq!(next_non_wait(&mut w), Event::Done);
}

/// The check of a reported success with the database locked while the
/// builder ran: the output was registered, yet the success is recorded as a
/// failure, because the database could not confirm it.
#[test]
fn locked_database_at_the_report_records_a_failure() {
    let st = TempStore::new();
    let b = st.path("b");
    let dbp = db::create(st.dir(), "delete", &[]);
    let mut w = worker_on(&dbp, 1000);
    let g = add(&mut w, &b);
    assert!(matches!(next_non_wait(&mut w), Event::Run { goal, .. } if goal == g));
    build_output(&b);
    db::register(&dbp, &b);
    let x = Exclusive::begin(&dbp);
    w.report(g, Outcome::Built).unwrap();
    x.end();
    assert_eq!(outcome(&w, g), Some(Outcome::Failed));
    assert!(!held(&b));
    assert!(st.lock_file("b").exists(), "the lock file is not deleted");
    let log = w.take_log();
    assert_eq!(
        lines_with(
            &log,
            &[
                &b,
                s(&dbp),
                "locked",
                "reported success",
                "recorded as failed"
            ]
        )
        .len(),
        1,
        "{log:#?}"
    );
}

/// The check of a reported success with the database overwritten by garbage
/// (a WAL database) while the builder ran: recorded as a failure.
#[test]
fn garbage_database_at_the_report_is_logged_with_the_file() {
    let st = TempStore::new();
    let a = st.path("a");
    let dbp = db::create(st.dir(), "wal", &[]);
    let mut w = worker_on(&dbp, 1000);
    let g = add(&mut w, &a);
    assert!(matches!(next_non_wait(&mut w), Event::Run { goal, .. } if goal == g));
    build_output(&a);
    db::register(&dbp, &a);
    db::garble(&dbp);
    w.report(g, Outcome::Built).unwrap();
    assert_eq!(outcome(&w, g), Some(Outcome::Failed));
    let log = w.take_log();
    assert_eq!(
        lines_with(
            &log,
            &[&a, s(&dbp), "not an SQLite database", "recorded as failed"]
        )
        .len(),
        1,
        "{log:#?}"
    );
}

/// `set_store_database` opens and checks the database at once: each bad
/// database is an error naming the file, and the worker keeps its previous
/// validity source. Check mode never asks.
#[test]
fn bad_databases_are_refused_at_set_store_database() {
    let st = TempStore::new();
    let good = db::create(st.dir(), "wal", &[]);
    let mut w = worker(1000);
    w.set_store_database(&good).unwrap();
    let not_sqlite = st.dir().join("garbage.sqlite");
    std::fs::write(&not_sqlite, vec![b'x'; 4096]).unwrap();
    let no_table = st.dir().join("other.sqlite");
    Connection::open(&no_table)
        .unwrap()
        .execute_batch("create table t (x)")
        .unwrap();
    let cases: [(PathBuf, DbErrorKind); 5] = [
        (st.dir().join("missing.sqlite"), DbErrorKind::Missing),
        (not_sqlite, DbErrorKind::NotSqlite),
        (no_table, DbErrorKind::NoValidPaths),
        (st.dir().to_path_buf(), DbErrorKind::NotAFile),
        (
            PathBuf::from("var/guix/db/db.sqlite"),
            DbErrorKind::RelativePath,
        ),
    ];
    for (p, kind) in cases {
        match w.set_store_database(&p) {
            Err(e @ Error::StoreDatabase { .. }) => {
                let Error::StoreDatabase { kind: k, path, .. } = &e else {
                    unreachable!()
                };
                assert_eq!((*k, path.as_path()), (kind, p.as_path()), "{e}");
                assert!(e.to_string().contains(s(&p)), "{e}");
            }
            other => panic!(
                "{}: expected a store database error, got {other:?}",
                p.display()
            ),
        }
        assert_eq!(w.store_database(), Some(good.as_path()), "kept");
    }
    // Check mode rebuilds without asking, even with a garbage database.
    let out = st.path("checked");
    db::register(&good, &out);
    db::garble(&good);
    let g = w
        .add_goal(GoalKind::Build, &[&out], BuildMode::Check)
        .unwrap();
    assert!(matches!(next_non_wait(&mut w), Event::Run { goal, .. } if goal == g));
    w.cancel(g).unwrap();
    // A predicate replaces the database; reset goes back to existence.
    w.set_valid_path(Box::new(|_| false));
    assert_eq!(w.store_database(), None);
    w.reset_validity();
    assert_eq!(w.store_database(), None);
}
