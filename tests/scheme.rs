//! Runs the Guile bindings' SRFI-64 suites (`tests/scheme/*.scm`) against the
//! library cargo just built.
//!
//! The modules under `scheme/` are first compiled with `guild compile
//! -Wunbound-variable -Warity-mismatch -Wformat`; any warning fails the
//! test. Each suite then runs under `tests/scheme/support/driver.scm`, which
//! prints `GK-SRFI64 <suite> pass=N fail=N …` and sets the exit status: a
//! Guile SRFI-64 file on its own exits 0 even when tests fail
//! (doc/design.md#8-notes-for-test-writers), so this runner reads the counts and checks them, not only the
//! exit status. Guile is required: without it these tests fail, they do not
//! skip (`make check` and `.ci/run` install it: build-aux/deps).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The Guile modules, in dependency order.
const MODULES: &[&str] = &[
    "scheme/goalkeeper/abi.scm",
    "scheme/goalkeeper/ffi.scm",
    "scheme/goalkeeper/locks.scm",
    "scheme/goalkeeper/scheduler.scm",
    "scheme/goalkeeper/store-db.scm",
    "scheme/goalkeeper/supervisor.scm",
    "scheme/goalkeeper.scm",
    "tests/scheme/support/gk-test.scm",
];

/// Finds a program in `PATH`, trying each name in turn.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// `guile` and `guild`, or a failure that says how to get them.
fn guile_tools() -> (PathBuf, PathBuf) {
    let guile = find_program(&["guile", "guile-3.0"]);
    let guild = find_program(&["guild", "guild-3.0"]);
    match (guile, guild) {
        (Some(guile), Some(guild)) => (guile, guild),
        _ => panic!(
            "Guile 3.0 is required for the Scheme test suites and was not found in PATH \
             (looked for guile/guile-3.0 and guild/guild-3.0).\n\
             Install it (Debian: apt-get install guile-3.0 guile-3.0-dev; `make check` does this as root). \
             These suites do not skip silently."
        ),
    }
}

/// Everything a suite run needs: tools, the compiled-module directory, the library.
struct Setup {
    guile: PathBuf,
    ccache: PathBuf,
    library: PathBuf,
}

/// Compiles the modules once per test binary and returns the setup.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (guile, guild) = guile_tools();
        let root = common::root();
        let lib = common::lib_dir();
        let ccache = lib.join("gk-guile-ccache");
        let _ = std::fs::remove_dir_all(&ccache);
        std::fs::create_dir_all(&ccache).expect("create the compiled-module directory");
        for module in MODULES {
            let source = root.join(module);
            let relative = source
                .strip_prefix(root.join("scheme"))
                .or_else(|_| source.strip_prefix(root.join("tests/scheme/support")))
                .expect("module under scheme/ or tests/scheme/support/");
            let output = ccache.join(relative).with_extension("go");
            let out = common::run_bounded(
                Command::new(&guild)
                    .args([
                        "compile",
                        "-Wunbound-variable",
                        "-Warity-mismatch",
                        "-Wformat",
                    ])
                    .arg("-L")
                    .arg(root.join("scheme"))
                    .arg("-L")
                    .arg(root.join("tests/scheme/support"))
                    .arg("-o")
                    .arg(&output)
                    .arg(&source)
                    .env("GUILE_AUTO_COMPILE", "0")
                    .env("GUILE_LOAD_COMPILED_PATH", &ccache),
                Duration::from_secs(300),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && !stderr.contains("warning"),
                "guild compile {module} failed or warned ({}):\n{stderr}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Setup {
            guile,
            ccache,
            library: lib.join("libgoalkeeper.so"),
        }
    })
}

/// The counts a suite reported.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    pass: u64,
    fail: u64,
    xpass: u64,
    xfail: u64,
    skip: u64,
    seconds: f64,
}

/// Parses the driver's `GK-SRFI64 <suite> pass=N …` line.
fn parse_counts(stdout: &str) -> Option<Counts> {
    let line = stdout.lines().rev().find(|l| l.starts_with("GK-SRFI64 "))?;
    let mut counts = Counts::default();
    let mut seen = 0;
    for field in line.split_whitespace().skip(2) {
        let (key, value) = field.split_once('=')?;
        match key {
            "pass" => counts.pass = value.parse().ok()?,
            "fail" => counts.fail = value.parse().ok()?,
            "xpass" => counts.xpass = value.parse().ok()?,
            "xfail" => counts.xfail = value.parse().ok()?,
            "skip" => counts.skip = value.parse().ok()?,
            "seconds" => counts.seconds = value.parse().ok()?,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 6).then_some(counts)
}

/// Runs `tests/scheme/<name>.scm` under the driver; returns its counts after
/// checking that it passed with at least `min_pass` assertions.
fn run_suite_file(suite: &Path, limit: Duration) -> (std::process::Output, Option<Counts>) {
    let s = setup();
    let root = common::root();
    let cwd = common::build_dir();
    let load_path = format!(
        "{}:{}",
        root.join("scheme").display(),
        root.join("tests/scheme/support").display()
    );
    let cc = cc::Build::new()
        .target("x86_64-unknown-linux-gnu")
        .host("x86_64-unknown-linux-gnu")
        .opt_level(0)
        .cargo_metadata(false)
        .get_compiler();
    let out = common::run_bounded(
        Command::new(&s.guile)
            .arg("--no-auto-compile")
            .arg(root.join("tests/scheme/support/driver.scm"))
            .arg(suite)
            .current_dir(&cwd)
            .env("GUILE", &s.guile)
            .env("GUILE_AUTO_COMPILE", "0")
            .env("GUILE_LOAD_PATH", load_path)
            .env("GUILE_LOAD_COMPILED_PATH", &s.ccache)
            .env("GOALKEEPER_LIBRARY", &s.library)
            .env("CC", cc.path()),
        limit,
    );
    let counts = parse_counts(&String::from_utf8_lossy(&out.stdout));
    (out, counts)
}

fn run_suite(name: &str, min_pass: u64, limit: Duration) -> Counts {
    let suite = common::root().join(format!("tests/scheme/{name}.scm"));
    let (out, counts) = run_suite_file(&suite, limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let display = format!("tests/scheme/{name}.scm");
    let Some(counts) = counts else {
        common::record_suite(
            &display,
            false,
            0,
            1,
            &format!("no complete GK-SRFI64 line; {}", out.status),
        );
        panic!(
            "suite {name} printed no complete GK-SRFI64 line ({}):\n{stdout}\n{stderr}",
            out.status
        )
    };
    // Bypass the test harness's capture so the counts show in `make check`.
    for note in stdout.lines().filter(|l| l.starts_with("NOTE ")) {
        let _ = writeln!(std::io::stderr(), "scheme suite {name}: {}", &note[5..]);
    }
    let _ = writeln!(
        std::io::stderr(),
        "scheme suite {name}: {} passed, {} failed, {} unexpected passes, {} expected failures, {} skipped ({:.2} s)",
        counts.pass, counts.fail, counts.xpass, counts.xfail, counts.skip, counts.seconds
    );
    let ok =
        out.status.success() && counts.fail == 0 && counts.xpass == 0 && counts.pass >= min_pass;
    let mut detail = common::counts_detail(counts.pass, counts.fail);
    for (n, what) in [
        (counts.xpass, "unexpected passes"),
        (counts.xfail, "expected failures"),
        (counts.skip, "skipped"),
    ] {
        if n > 0 {
            detail.push_str(&format!(", {n} {what}"));
        }
    }
    if !out.status.success() && counts.fail == 0 {
        detail.push_str(&format!("; {}", out.status));
    }
    if counts.pass < min_pass {
        detail.push_str(&format!("; expected at least {min_pass} passes"));
    }
    common::record_suite(
        &display,
        ok,
        counts.pass,
        counts.fail + counts.xpass,
        &detail,
    );
    assert!(
        out.status.success() && counts.fail == 0 && counts.xpass == 0,
        "suite {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        counts.pass >= min_pass,
        "suite {name} ran only {} assertions; expected at least {min_pass}:\n{stdout}",
        counts.pass
    );
    counts
}

#[test]
fn scheme_locks() {
    run_suite("locks", 60, Duration::from_secs(120));
}

#[test]
fn scheme_scheduler() {
    run_suite("scheduler", 50, Duration::from_secs(120));
}

/// Guix bug #31785: three Guile processes with their own workers, overlapping
/// DAGs, max-jobs 1, staggered starts. The suite bounds itself at 60 s; this
/// limit only turns a hang into a failure.
#[test]
fn scheme_regression_31785() {
    let counts = run_suite("regression-31785", 25, Duration::from_secs(90));
    assert!(
        counts.seconds < 60.0,
        "the #31785 suite took {:.1} s",
        counts.seconds
    );
}

/// The worker's log records (`worker-log-records`) and run-worker's hooks
/// (#:on-log, #:on-exit, #:watch), with a real foreign holder process.
#[test]
fn scheme_log_records_and_run_worker_hooks() {
    run_suite("log", 31, Duration::from_secs(120));
}

/// (goalkeeper abi): enum tables, struct layouts, readers and writers
/// (tests/scheme_abi.rs compares the declarations with the header).
#[test]
fn scheme_abi_declarations() {
    run_suite("abi", 17, Duration::from_secs(60));
}

/// The store database: `store-path-valid?` and make-worker's
/// `#:store-database`, every bad input, a database turning bad mid-run, and
/// a waiter that keeps waiting on an output written in place but not yet
/// registered. One case waits out the library's 5 s busy timeout.
#[test]
fn scheme_store_db() {
    run_suite("store-db", 40, Duration::from_secs(120));
}

/// Interruptible waits: a real SIGINT to a Guile process (a script, the
/// REPL) blocked on a lock another process holds runs its handler and ends
/// the wait holding nothing.
#[test]
fn scheme_interrupt() {
    run_suite("interrupt", 28, Duration::from_secs(120));
}

/// Builders that die with their host: `spawn-builder`, and real host
/// processes sent SIGTERM, SIGKILL and SIGINT during a build.
#[test]
fn scheme_supervisor() {
    run_suite("supervisor", 30, Duration::from_secs(120));
}

#[test]
fn scheme_library_loading() {
    run_suite("library", 13, Duration::from_secs(120));
}

/// The driver must turn a failing SRFI-64 assertion into a failing exit
/// status and a non-zero `fail=` count; otherwise every suite above could go
/// green over red tests (doc/design.md#8-notes-for-test-writers).
#[test]
fn scheme_driver_reports_failures() {
    let dir = common::build_dir().join("gk-scheme-driver-selftest");
    std::fs::create_dir_all(&dir).expect("create dir");
    let failing = dir.join("failing.scm");
    std::fs::write(
        &failing,
        "(use-modules (srfi srfi-64))\n\
         (test-begin \"selftest\")\n\
         (test-equal \"right\" 2 (+ 1 1))\n\
         (test-equal \"wrong\" 3 (+ 1 1))\n\
         (test-end \"selftest\")\n",
    )
    .expect("write suite");
    let (out, counts) = run_suite_file(&failing, Duration::from_secs(60));
    let counts = counts.expect("a GK-SRFI64 line");
    assert_eq!((counts.pass, counts.fail), (1, 1), "{counts:?}");
    assert_eq!(out.status.code(), Some(1), "a failing suite must exit 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));

    let aborting = dir.join("aborting.scm");
    std::fs::write(
        &aborting,
        "(use-modules (srfi srfi-64))\n\
         (test-begin \"selftest\")\n\
         (test-assert \"fine\" #t)\n\
         (error \"the suite dies outside a test\")\n\
         (test-end \"selftest\")\n",
    )
    .expect("write suite");
    let (out, counts) = run_suite_file(&aborting, Duration::from_secs(60));
    assert!(counts.is_none(), "an aborted suite has no final counts");
    assert_eq!(out.status.code(), Some(2), "an aborted suite must exit 2");
}
