//! schedule_10k_build_goals: a daemon's workload through the C ABI, against
//! the same system calls and queries in a flat loop, in the same run.
//!
//! The request: 10,000 build goals with one output each, each depending on
//! up to four earlier ones (the graph of the no-op benchmarks). The store
//! is a directory on tmpfs with real lock files; validity comes from a
//! SQLite store database in WAL mode (Guix's `ValidPaths`), which a "daemon"
//! connection holds open and writes; the builder does nothing but register
//! its output there, as guix-daemon does after a build. The worker, with
//! max-jobs of 1, is driven through the C functions a daemon calls:
//! `gk_worker_add_goal` and `gk_worker_add_dependency` per goal and edge,
//! then `gk_worker_next_event` and `gk_worker_report` per goal.
//!
//! The flat loop makes, for each goal in order, what the worker makes: the
//! validity query before locking, the lock file's open, OFD lock and
//! `fstat`, the query under the lock, the builder's registration, the query
//! that checks the reported success, and the release with deletion
//! (`lstat`, `unlink`, `fstat`, the token write, unlock, close), with a
//! read-only connection and statement prepared as `StoreDb`'s are.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use goalkeeper::ffi::{
    gk_event, gk_event_kind, gk_goal_kind, gk_outcome, gk_status, gk_worker_add_dependency,
    gk_worker_add_goal, gk_worker_free, gk_worker_new, gk_worker_next_event, gk_worker_report,
    gk_worker_set_store_database,
};
use rusqlite::{Connection, OpenFlags};

use crate::report::Measured;
use crate::sched::edges;

/// Goals per request.
const N: u32 = 10_000;
/// Repetitions (each side once per repetition, in alternating order).
const ROUNDS: usize = 9;
/// `StoreDb`'s query.
const QUERY: &str = "SELECT 1 FROM ValidPaths WHERE path = ?1";
/// The builder's registration.
const REGISTER: &str =
    "INSERT INTO ValidPaths (path, hash, registrationTime) VALUES (?1, 'sha256:0', 1)";

/// A fresh store (a directory for the outputs and their lock files) and its
/// database, with the daemon's connection open on it.
struct Store {
    dir: PathBuf,
    db: PathBuf,
    daemon: Connection,
    outputs: Vec<String>,
}

impl Store {
    fn new(base: &Path, name: &str) -> Store {
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("create the store");
        let db = dir.join("db.sqlite");
        let daemon = Connection::open(&db).expect("create the store database");
        daemon
            .execute_batch(
                "pragma journal_mode = wal;
                 create table ValidPaths (
                     id integer primary key autoincrement not null,
                     path text unique not null, hash text not null,
                     registrationTime integer not null, deriver text, narSize integer);",
            )
            .expect("schema");
        let outputs = (0..N)
            .map(|i| {
                format!(
                    "{}/{:032x}-package-{i}",
                    store.display(),
                    i as u128 * 0x9E37
                )
            })
            .collect();
        Store {
            dir,
            db,
            daemon,
            outputs,
        }
    }

    /// The builder: registers output `i` as valid.
    fn build(&self, i: usize) {
        let mut st = self.daemon.prepare_cached(REGISTER).expect("prepare");
        st.execute([&self.outputs[i]]).expect("register");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(s: gk_status, what: &str) {
    assert_eq!(s, gk_status::GK_OK, "{what}");
}

/// Seconds for the whole request through the worker.
fn run_worker(s: &Store, e: &[(u32, u32)]) -> f64 {
    let db = CString::new(s.db.as_os_str().as_bytes()).unwrap();
    let outs: Vec<CString> = s
        .outputs
        .iter()
        .map(|o| CString::new(o.as_str()).unwrap())
        .collect();
    let t = Instant::now();
    let mut w = 0;
    // SAFETY (this block): the C ABI with valid, live arguments.
    unsafe {
        ok(gk_worker_new(std::ptr::null(), &mut w), "gk_worker_new");
        ok(
            gk_worker_set_store_database(w, db.as_ptr()),
            "set_store_database",
        );
        let mut ids = vec![0u64; N as usize];
        let mut next_edge = 0;
        for i in 0..N as usize {
            let out = [outs[i].as_ptr()];
            let (build, normal) = (gk_goal_kind::GK_GOAL_BUILD as u32, 0);
            ok(
                gk_worker_add_goal(w, build, out.as_ptr(), 1, normal, i as u64, &mut ids[i]),
                "add_goal",
            );
            while next_edge < e.len() && e[next_edge].0 as usize == i {
                let d = e[next_edge].1 as usize;
                ok(
                    gk_worker_add_dependency(w, ids[i], ids[d]),
                    "add_dependency",
                );
                next_edge += 1;
            }
        }
        let mut ev: gk_event = std::mem::zeroed();
        let mut ran = 0;
        loop {
            ok(gk_worker_next_event(w, &mut ev), "next_event");
            match ev.kind {
                k if k == gk_event_kind::GK_EVENT_RUN as u32 => {
                    s.build(ev.tag as usize);
                    ok(
                        gk_worker_report(w, ev.goal, gk_outcome::GK_OUTCOME_BUILT as u32),
                        "report",
                    );
                    ran += 1;
                }
                k if k == gk_event_kind::GK_EVENT_DONE as u32 => break,
                k => panic!("unexpected event kind {k}"),
            }
        }
        assert_eq!(ran, N);
        ok(gk_worker_free(w), "gk_worker_free");
    }
    t.elapsed().as_secs_f64()
}

/// Seconds for the same system calls and queries in a flat loop.
fn run_flat(s: &Store) -> f64 {
    let lock_names: Vec<CString> = s
        .outputs
        .iter()
        .map(|o| CString::new(format!("{o}.lock")).unwrap())
        .collect();
    let t = Instant::now();
    // As `StoreDb` connects to a database a daemon has open.
    let uri = format!("file://{}?mode=ro", s.db.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).expect("open read-only");
    let valid = |p: &str| {
        let mut st = conn.prepare_cached(QUERY).expect("prepare");
        st.exists([p]).expect("query")
    };
    for (i, (out, lock)) in s.outputs.iter().zip(&lock_names).enumerate() {
        assert!(!valid(out));
        let lock = lock.as_ptr();
        // SAFETY (this block): plain system calls on this loop's own
        // descriptor and NUL-terminated path.
        unsafe {
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            let fd = libc::open(lock, flags, 0o600 as libc::c_uint);
            assert!(fd >= 0, "open");
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as _;
            assert_eq!(libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl), 0, "lock");
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            assert!(!valid(out));
            s.build(i);
            assert!(valid(out));
            let mut now: libc::stat = std::mem::zeroed();
            libc::lstat(lock, &mut now);
            libc::unlink(lock);
            libc::fstat(fd, &mut now);
            libc::pwrite(fd, b"d".as_ptr().cast(), 1, 0);
            fl.l_type = libc::F_UNLCK as _;
            libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl);
            libc::close(fd);
        }
    }
    t.elapsed().as_secs_f64()
}

/// schedule_10k_build_goals, in µs per goal.
pub fn run(base: &Path) -> Vec<(&'static str, Measured)> {
    let e = edges(N);
    let (mut wk, mut flat) = (Vec::new(), Vec::new());
    let per_goal = |secs: f64| secs * 1e6 / N as f64;
    run_worker(&Store::new(base, "warm-up"), &e);
    for r in 0..ROUNDS {
        let (a, b) = (Store::new(base, "worker"), Store::new(base, "flat"));
        if r % 2 == 0 {
            wk.push(per_goal(run_worker(&a, &e)));
            flat.push(per_goal(run_flat(&b)));
        } else {
            flat.push(per_goal(run_flat(&b)));
            wk.push(per_goal(run_worker(&a, &e)));
        }
    }
    vec![(
        "schedule_10k_build_goals",
        Measured::samples(
            &wk,
            Some(&flat),
            format!(
                "{N} build goals, one output each, {} edges, through gk_worker_add_goal, \
                 gk_worker_add_dependency, gk_worker_next_event and gk_worker_report (max-jobs 1); \
                 real lock files on tmpfs, validity from a SQLite store database (WAL) that a \
                 daemon connection keeps open, a builder that only registers its output; the \
                 baseline makes the same system calls and queries for each goal in a flat loop; \
                 construction included; {ROUNDS} alternating repetitions",
                e.len()
            ),
        ),
    )]
}
