//! The store-database validity source (`goalkeeper::store_db`), against real
//! SQLite databases with the Guix schema and a real concurrent writer
//! process (this test binary re-executed as `writer_role`), in WAL and in
//! rollback-journal mode.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::db::{create as create_db, insert as register};
use common::TempStore;
use goalkeeper::store_db::{self, DbErrorKind, StoreDb, StoreDbOptions};
use rusqlite::Connection;

const REPLY: Duration = Duration::from_secs(30);

/// Names and contents of the files in `dir` (the database must come out of
/// a read byte for byte as it went in, with no file added).
fn snapshot_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The writer process.

/// Not a test: when `GK_DB_WRITER` names a database, this test binary is a
/// writer process that obeys commands on stdin (see `Writer`).
#[test]
fn writer_role() {
    let Ok(db) = std::env::var("GK_DB_WRITER") else {
        return;
    };
    let c = Connection::open(&db).expect("writer: open");
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    c.execute_batch("pragma synchronous = off").unwrap();
    if let Ok(n) = std::env::var("GK_DB_CHECKPOINT") {
        c.execute_batch(&format!("pragma wal_autocheckpoint = {n}"))
            .unwrap();
    }
    let say = |s: &str| {
        println!("@db {s}");
        std::io::stdout().flush().unwrap();
    };
    say("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["exclusive"] => {
                c.execute_batch("begin exclusive").unwrap();
                say("ok");
            }
            ["rollback"] => {
                c.execute_batch("rollback").unwrap();
                say("ok");
            }
            ["insert", p] => {
                register(&c, p);
                say("ok");
            }
            ["insert-many", prefix, n] => {
                for i in 0..n.parse::<u32>().unwrap() {
                    register(&c, &format!("{prefix}{i:05}"));
                }
                say("done");
            }
            ["try-exclusive"] => {
                c.busy_timeout(Duration::ZERO).unwrap();
                match c.execute_batch("begin exclusive") {
                    Ok(()) => {
                        c.execute_batch("rollback").unwrap();
                        say("got");
                    }
                    Err(e) => say(&format!("busy {e}")),
                }
                c.busy_timeout(Duration::from_secs(20)).unwrap();
            }
            other => panic!("writer: unknown command {other:?}"),
        }
    }
    drop(c);
    std::process::exit(0);
}

/// A writer process on a database.
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Writer {
    /// Starts a writer; `checkpoint` sets its `wal_autocheckpoint`.
    fn start(db: &Path, checkpoint: Option<u32>) -> Writer {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "writer_role", "--nocapture", "--test-threads=1"])
            .env("GK_DB_WRITER", db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(n) = checkpoint {
            cmd.env("GK_DB_CHECKPOINT", n.to_string());
        }
        let mut child = cmd.spawn().expect("spawn the writer");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                // The test harness may print "test writer_role ... " first.
                if let Some(i) = l.find("@db ") {
                    if tx.send(l[i + 4..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let w = Writer {
            child,
            stdin,
            lines,
        };
        w.expect("ready");
        w
    }

    fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().expect("writer stdin");
        writeln!(s, "{cmd}").unwrap();
        s.flush().unwrap();
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(REPLY)
            .unwrap_or_else(|e| panic!("no reply from the writer within {REPLY:?}: {e}"))
    }

    fn expect(&self, word: &str) -> String {
        let l = self.next();
        assert!(
            l.starts_with(word),
            "expected {word:?} from the writer, got {l:?}"
        );
        l
    }

    fn ask(&mut self, cmd: &str, word: &str) -> String {
        self.send(cmd);
        self.expect(word)
    }

    /// Closes its stdin and waits (bounded) for its exit.
    fn finish(mut self) {
        self.stdin = None;
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "writer exited with {s}");
                return;
            }
            assert!(t.elapsed() < REPLY, "the writer did not exit");
            // Bounded polling of an exit status; not synchronisation.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Errors: each names the file.

fn err_of(r: Result<StoreDb, store_db::DbError>) -> store_db::DbError {
    match r {
        Ok(db) => panic!("expected an error, got {db:?}"),
        Err(e) => e,
    }
}

#[test]
fn relative_database_path_is_an_error() {
    let e = err_of(StoreDb::open("var/guix/db/db.sqlite"));
    assert_eq!(e.kind(), DbErrorKind::RelativePath);
    assert!(e.to_string().contains("var/guix/db/db.sqlite"), "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn missing_database_is_an_error() {
    let s = TempStore::new();
    let db = s.dir().join("db.sqlite");
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::Missing);
    assert_eq!(e.path(), db);
    assert!(e.to_string().contains(db.to_str().unwrap()), "{e}");
    assert!(!db.exists(), "opening must not create the database");
    let e = store_db::is_valid(&db, "/gnu/store/x").unwrap_err();
    assert_eq!(e.kind(), DbErrorKind::Missing);
}

#[test]
fn directory_is_not_a_database() {
    let s = TempStore::new();
    let e = err_of(StoreDb::open(s.dir()));
    assert_eq!(e.kind(), DbErrorKind::NotAFile);
    assert!(e.to_string().contains(s.dir().to_str().unwrap()), "{e}");
}

#[test]
fn file_that_is_not_sqlite_is_an_error() {
    let s = TempStore::new();
    let db = s.dir().join("db.sqlite");
    std::fs::write(&db, "this is not a database, but it is longer than one hundred bytes so that the whole header can be read from it.\n").unwrap();
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::NotSqlite, "{e}");
    assert!(e.to_string().contains(db.to_str().unwrap()), "{e}");
    // Short, too.
    std::fs::write(&db, "short").unwrap();
    assert_eq!(err_of(StoreDb::open(&db)).kind(), DbErrorKind::NotSqlite);
    // With a -wal file beside it (the live path), too.
    std::fs::write(s.dir().join("db.sqlite-wal"), "").unwrap();
    std::fs::write(&db, [b'x'; 4096]).unwrap();
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::NotSqlite, "{e}");
}

#[test]
fn empty_file_has_no_valid_paths() {
    let s = TempStore::new();
    let db = s.dir().join("db.sqlite");
    std::fs::write(&db, "").unwrap();
    let before = snapshot_dir(s.dir());
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::NoValidPaths, "{e}");
    assert!(e.to_string().contains("ValidPaths"), "{e}");
    assert_eq!(
        snapshot_dir(s.dir()),
        before,
        "the empty file was left alone"
    );
}

#[test]
fn database_without_valid_paths_is_an_error() {
    let s = TempStore::new();
    let db = s.dir().join("db.sqlite");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("create table Other (path text)").unwrap();
    drop(c);
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::NoValidPaths);
    assert!(e.to_string().contains(db.to_str().unwrap()), "{e}");
    assert!(e.to_string().contains("no table ValidPaths"), "{e}");

    let c = Connection::open(&db).unwrap();
    c.execute_batch("create table ValidPaths (id integer primary key, name text)")
        .unwrap();
    drop(c);
    let e = err_of(StoreDb::open(&db));
    assert_eq!(e.kind(), DbErrorKind::NoValidPaths);
    assert!(e.to_string().contains("no column path"), "{e}");
}

#[test]
fn relative_store_path_query_is_an_error() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "wal", &["/gnu/store/a"]);
    let mut sdb = StoreDb::open(&db).unwrap();
    let e = sdb.is_valid("gnu/store/a").unwrap_err();
    assert_eq!(e.kind(), DbErrorKind::RelativePath);
    assert!(e.to_string().contains(db.to_str().unwrap()), "{e}");
    assert!(sdb.valid_paths(["/gnu/store/a", "a"]).is_err());
}

/// A rollback-journal database held by a writer's exclusive transaction:
/// the query fails after the busy timeout, with an error that names the file
/// and the timeout; once the writer lets go, the same StoreDb answers.
#[test]
fn database_locked_past_the_timeout_is_an_error() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "truncate", &["/gnu/store/a"]);
    let opts = StoreDbOptions {
        busy_timeout: Duration::from_millis(200),
    };
    let mut sdb = StoreDb::with_options(&db, opts.clone()).unwrap();
    let mut w = Writer::start(&db, None);
    w.ask("exclusive", "ok");
    let t = Instant::now();
    let e = sdb.is_valid("/gnu/store/a").unwrap_err();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), DbErrorKind::Locked, "{e}");
    assert!(e.to_string().contains(db.to_str().unwrap()), "{e}");
    assert!(e.to_string().contains("200 ms"), "{e}");
    // Opening while it is locked fails the same way.
    let e = err_of(StoreDb::with_options(&db, opts));
    assert_eq!(e.kind(), DbErrorKind::Locked, "{e}");
    w.ask("rollback", "ok");
    assert!(sdb.is_valid("/gnu/store/a").unwrap());
    w.finish();
}

// ---------------------------------------------------------------------------
// Reads.

/// A database that no process has open, in each journal mode: the answers
/// are right, and the directory is byte for byte what it was (no -wal,
/// -shm or -journal file created, even as root).
#[test]
fn quiescent_database_is_read_without_creating_or_changing_a_file() {
    for mode in ["wal", "truncate", "delete"] {
        let s = TempStore::new();
        let db = create_db(s.dir(), mode, &["/gnu/store/aaa-x", "/gnu/store/bbb-y"]);
        let before = snapshot_dir(s.dir());
        // Only the database (and, in truncate mode, the writer's empty
        // -journal file, which that mode keeps).
        let expected = if mode == "truncate" { 2 } else { 1 };
        assert_eq!(before.len(), expected, "{mode}: {:?}", before.keys());
        let mut sdb = StoreDb::open(&db).unwrap();
        assert!(sdb.is_valid("/gnu/store/aaa-x").unwrap(), "{mode}");
        assert!(!sdb.is_valid("/gnu/store/ccc-z").unwrap(), "{mode}");
        assert!(
            !sdb.is_valid("/gnu/store/aaa-x/").unwrap(),
            "{mode}: exact bytes"
        );
        assert_eq!(
            sdb.valid_paths(["/gnu/store/bbb-y", "/gnu/store/nope", "/gnu/store/aaa-x"])
                .unwrap(),
            vec![true, false, true]
        );
        assert!(store_db::is_valid(&db, "/gnu/store/bbb-y").unwrap());
        if mode == "wal" {
            assert!(sdb.snapshot_reads() >= 4, "{mode}: {sdb:?}");
        } else {
            assert_eq!(
                sdb.snapshot_reads(),
                0,
                "{mode}: a rollback database is read live"
            );
        }
        drop(sdb);
        assert_eq!(snapshot_dir(s.dir()), before, "{mode}: files changed");
    }
}

/// While a writer has the WAL database open, a registration that is only in
/// the -wal file (no checkpoint) is seen: the live connection is used, not
/// a snapshot of the main file. A StoreDb that started on the quiescent
/// database switches over.
#[test]
fn wal_registration_not_yet_checkpointed_is_seen() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "wal", &["/gnu/store/aaa-x"]);
    let mut early = StoreDb::open(&db).unwrap();
    assert!(!early.is_valid("/gnu/store/new").unwrap());
    assert_eq!(early.snapshot_reads(), 2);
    let mut w = Writer::start(&db, Some(0));
    w.ask("insert /gnu/store/new", "ok");
    assert!(s.dir().join("db.sqlite-wal").exists());
    let mut late = StoreDb::open(&db).unwrap();
    assert!(late.is_valid("/gnu/store/new").unwrap());
    // Through a symbolic link to the database: the -wal file is beside
    // the link's target, and must be found there.
    let other = TempStore::new();
    let link = other.dir().join("link.sqlite");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let mut linked = StoreDb::open(&link).unwrap();
    assert!(linked.is_valid("/gnu/store/new").unwrap());
    assert_eq!(linked.snapshot_reads(), 0);
    assert_eq!(linked.path(), link);
    assert!(early.is_valid("/gnu/store/new").unwrap());
    assert_eq!(
        early.snapshot_reads(),
        2,
        "read live once the writer is there"
    );
    assert_eq!(late.snapshot_reads(), 0);
    w.finish();
    // The writer is gone; our connections keep the -wal file alive, and
    // still answer.
    assert!(late.is_valid("/gnu/store/new").unwrap());
    drop((early, late));
}

/// A real writer process registers 2000 paths, one transaction each, while
/// this process reads: every answer is a consistent snapshot (the valid set
/// is a prefix of the insertion order), registrations never disappear, and
/// at the end all are seen. In WAL mode with a checkpoint every 3 pages (so
/// that checkpoints run under the reads), and in rollback-journal mode.
#[test]
fn concurrent_writer_wal_and_rollback() {
    for (mode, ckpt) in [("wal", Some(3)), ("truncate", None)] {
        let s = TempStore::new();
        let db = create_db(s.dir(), mode, &[]);
        let mut sdb = StoreDb::open(&db).unwrap();
        let mut w = Writer::start(&db, ckpt);
        const N: usize = 2000;
        let p = |i: usize| format!("/gnu/store/p{i:05}");
        w.send(&format!("insert-many /gnu/store/p {N}"));
        let start = Instant::now();
        let (mut seen, mut reads, mut done) = (0usize, 0u64, false);
        while seen < N {
            assert!(start.elapsed() < REPLY, "{mode}: stuck at {seen}/{N}");
            if !done {
                if let Ok(l) = w.lines.try_recv() {
                    assert_eq!(l, "done");
                    done = true;
                }
            }
            let window: Vec<String> = (seen.saturating_sub(1)..(seen + 16).min(N))
                .map(p)
                .chain([p(0)])
                .collect();
            let v = sdb.valid_paths(&window).unwrap();
            reads += 1;
            let (win, first) = v.split_at(v.len() - 1);
            let valid = win.iter().take_while(|&&b| b).count();
            assert!(
                win[valid..].iter().all(|&b| !b),
                "{mode}: not a prefix of the insertion order: {v:?} at {seen}"
            );
            if seen > 0 {
                assert!(valid >= 1, "{mode}: {} disappeared", p(seen - 1));
                assert!(first[0], "{mode}: {} disappeared", p(0));
            }
            let new_seen = seen.saturating_sub(1) + valid;
            assert!(
                new_seen >= seen,
                "{mode}: went back from {seen} to {new_seen}"
            );
            seen = new_seen;
            if seen > 0 {
                assert!(sdb.is_valid(p(seen - 1)).unwrap(), "{mode}");
            }
            if done && seen < N {
                // The writer finished: everything must be there now.
                let all = sdb.valid_paths((0..N).map(p)).unwrap();
                assert!(
                    all.iter().all(|&b| b),
                    "{mode}: missing after the writer finished"
                );
                seen = N;
            }
        }
        if !done {
            w.expect("done");
        }
        eprintln!("{mode}: {reads} consistent batch reads while the writer wrote {N} transactions");
        w.finish();
    }
}

/// The reason goalkeeper links the system SQLite and never opens the
/// database with a descriptor of its own. A host connection in this process
/// (as guix-daemon's, in the daemon's process) holds a read transaction on a
/// rollback-journal database. goalkeeper's connections, opened, used and
/// closed through the same SQLite, keep that lock: a writer process cannot
/// get an exclusive lock. A raw open and close of the file (what a second
/// copy of SQLite in the process amounts to) silently drops it.
#[test]
fn store_db_keeps_the_host_connections_locks() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "truncate", &["/gnu/store/a"]);
    let mut w = Writer::start(&db, None);
    let host = Connection::open(&db).unwrap();
    host.execute_batch("begin").unwrap();
    let n: i64 = host
        .query_row("select count(*) from ValidPaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    assert!(w.ask("try-exclusive", "busy").starts_with("busy"));

    for _ in 0..3 {
        let mut sdb = StoreDb::open(&db).unwrap();
        assert!(sdb.is_valid("/gnu/store/a").unwrap());
        drop(sdb);
        assert!(store_db::is_valid(&db, "/gnu/store/a").unwrap());
    }
    let r = w.ask("try-exclusive", "");
    assert!(
        r.starts_with("busy"),
        "goalkeeper's connections dropped the host's lock: the writer {r}"
    );

    // The hazard, shown: one raw open and close in this process.
    drop(std::fs::File::open(&db).unwrap());
    let r = w.ask("try-exclusive", "");
    assert_eq!(
        r, "got",
        "expected the raw close to drop the host's POSIX lock (this is the hazard)"
    );
    host.execute_batch("commit").unwrap();
    w.finish();
}

/// goalkeeper uses the system's shared libsqlite3 (see
/// `store_db_keeps_the_host_connections_locks` for why), not a private copy
/// compiled in: the library is mapped into this process from its own file.
#[test]
fn sqlite_is_the_shared_system_library() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "wal", &["/gnu/store/a"]);
    assert!(store_db::is_valid(&db, "/gnu/store/a").unwrap());
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lib: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libsqlite3.so"))
        })
        .collect();
    assert!(
        !lib.is_empty(),
        "libsqlite3.so is not mapped: is rusqlite's `bundled` feature on?"
    );
    eprintln!("SQLite {} from {}", rusqlite::version(), lib[0]);
}

/// Not a test: when `GK_DB_READER` names a database, this test binary is a
/// reader (run as `nobody` by `unprivileged_reader_...`) that prints
/// `@db <path> true|false` for each path of `GK_DB_PATHS`, or `@db err …`.
#[test]
fn reader_role() {
    let Ok(db) = std::env::var("GK_DB_READER") else {
        return;
    };
    let paths = std::env::var("GK_DB_PATHS").unwrap_or_default();
    match StoreDb::open(&db) {
        Err(e) => println!("@db err {:?} {e}", e.kind()),
        Ok(mut sdb) => {
            for p in paths.split(':') {
                match sdb.is_valid(p) {
                    Ok(v) => println!("@db {p} {v}"),
                    Err(e) => println!("@db err {:?} {e}", e.kind()),
                }
            }
        }
    }
    std::process::exit(0);
}

/// A user who may read the daemon's database but not write its directory
/// (`nobody`, against root's 0755 directory and 0644 files): reads the
/// quiescent WAL database without creating anything, and, while a writer
/// has it open, sees a registration that is only in the WAL (through
/// SQLite's read-only shared memory: the -shm file is not writable).
#[test]
fn unprivileged_reader_of_a_wal_database() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("unprivileged_reader_of_a_wal_database: needs root to run the reader as nobody");
        return;
    }
    let s = TempStore::new();
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = create_db(s.dir(), "wal", &["/gnu/store/old"]);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // `nobody` must be able to run the reader: run a copy of this binary.
    let exe_dir = TempStore::new();
    std::fs::set_permissions(exe_dir.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = exe_dir.dir().join("reader");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let read_as_nobody = || -> String {
        let mut c = Command::new(&exe);
        c.args(["--exact", "reader_role", "--nocapture", "--test-threads=1"])
            .env("GK_DB_READER", &db)
            .env("GK_DB_PATHS", "/gnu/store/old:/gnu/store/new")
            .uid(65534)
            .gid(65534);
        let o = common::run_bounded(&mut c, REPLY);
        let out = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = out
            .lines()
            .filter_map(|l| l.find("@db ").map(|i| &l[i + 4..]))
            .collect();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        lines.join("\n")
    };

    let before = snapshot_dir(s.dir());
    assert_eq!(
        read_as_nobody(),
        "/gnu/store/old true\n/gnu/store/new false"
    );
    assert_eq!(snapshot_dir(s.dir()), before, "nothing created or changed");

    let mut w = Writer::start(&db, Some(0));
    w.ask("insert /gnu/store/new", "ok");
    let shm = s.dir().join("db.sqlite-shm");
    assert!(shm.exists());
    assert_eq!(
        std::fs::metadata(&shm).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(read_as_nobody(), "/gnu/store/old true\n/gnu/store/new true");
    w.finish();
}

/// Guix's `FailedPaths`, where guix-daemon `--cache-failures` lists the
/// outputs of failed builds, is read like `ValidPaths`: exactly, in one
/// transaction, with a live writer or none; a database without the table
/// (Nix's) lists nothing as failed; a relative path is refused.
#[test]
fn failed_paths_reads_guix_failed_paths_and_nothing_elsewhere() {
    let s = TempStore::new();
    let db = create_db(s.dir(), "wal", &["/gnu/store/aaa-ok"]);
    common::db::register_failed(&db, "/gnu/store/bbb-failed");
    let mut sdb = StoreDb::open(&db).unwrap();
    let ask = [
        "/gnu/store/aaa-ok",
        "/gnu/store/bbb-failed",
        "/gnu/store/bbb-failed/",
    ];
    assert_eq!(sdb.failed_paths(ask).unwrap(), vec![false, true, false]);
    assert_eq!(sdb.valid_paths(ask).unwrap(), vec![true, false, false]);
    // A failure recorded while the reader keeps its connection is seen.
    common::db::register_failed(&db, "/gnu/store/aaa-ok");
    assert_eq!(sdb.failed_paths(["/gnu/store/aaa-ok"]).unwrap(), vec![true]);
    assert!(sdb.failed_paths(["gnu/store/x"]).is_err());
    // Nix's schema has no FailedPaths.
    let n = TempStore::new();
    let nix = n.dir().join("db.sqlite");
    let c = rusqlite::Connection::open(&nix).unwrap();
    c.execute_batch("create table ValidPaths (id integer primary key, path text unique not null)")
        .unwrap();
    drop(c);
    let mut sdb = StoreDb::open(&nix).unwrap();
    assert_eq!(sdb.failed_paths(["/nix/store/x"]).unwrap(), vec![false]);
}
