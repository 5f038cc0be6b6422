//! Runs the `make demo` scenario (`demo/31785.scm`: Guix bug #31785, three
//! Guile client processes with their own workers, overlapping builds,
//! max-jobs 1, real `/bin/sh` builders) against the library cargo just
//! built, normally and with `--legacy-hold`, and checks the lines that carry
//! its story, so the demo cannot rot. Its store has a database (`db.sqlite`,
//! a `ValidPaths` table the clients write with the `sqlite3` program and the
//! workers read through the library): the clients register what their
//! builders wrote in place, and the workers' validity is that database, so
//! a waiter's re-check sees a half-built output and keeps waiting, and
//! nothing is found valid before it was registered. (What a worker that
//! takes "the path exists" as validity does with such an output is
//! tests/scheme/store-db.scm's.)
//!
//! The modules are loaded from source (`--no-auto-compile`, no compiled
//! files): no shared compiled-module directory that another test binary
//! might be rewriting. Each run gets its own `TMPDIR`, which must be empty
//! again afterwards (the demo deletes its temporary store).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// `guile` from `PATH`, or a failure that says how to get it (these tests do
/// not skip silently, like tests/scheme.rs).
fn guile() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["guile", "guile-3.0"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "Guile 3.0 is required for the demo test and was not found in PATH \
                 (Debian: apt-get install guile-3.0; `.ci/run` does this)"
            )
        })
}

/// Runs the demo with `args`; returns its output and stdout as text.
fn run_demo(name: &str, args: &[&str]) -> (Output, String) {
    let root = common::root();
    let tmp = common::build_dir().join(format!("gk-demo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("create the demo's TMPDIR");
    let out = common::run_bounded(
        Command::new(guile())
            .arg("--no-auto-compile")
            .arg(root.join("demo/31785.scm"))
            .arg("--timeout=40")
            .args(args)
            .current_dir(&root)
            .env_remove("GUILE_LOAD_COMPILED_PATH")
            .env("GUILE_AUTO_COMPILE", "0")
            .env("GUILE_LOAD_PATH", root.join("scheme"))
            .env(
                "GOALKEEPER_LIBRARY",
                common::lib_dir().join("libgoalkeeper.so"),
            )
            .env("TMPDIR", &tmp)
            .env("NO_COLOR", "1")
            .env("TERM", "dumb"),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .expect("read the demo's TMPDIR")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the demo left {leftovers:?} behind\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    (out, stdout)
}

/// The event lines (`  0.123  A  verb  …`) with the given verb.
fn events<'a>(stdout: &'a str, verb: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            let time = words.next().unwrap_or("");
            time.contains('.')
                && time.parse::<f64>().is_ok()
                && words.next().is_some_and(|w| ["A", "B", "C"].contains(&w))
                && words.next() == Some(verb)
        })
        .collect()
}

/// An event line's time (seconds since the demo started), client and the
/// first word after the verb (the package name, without a trailing ':').
fn parse_event(line: &str) -> (f64, &str, &str) {
    let mut words = line.split_whitespace();
    let time = words.next().and_then(|t| t.parse().ok()).expect("a time");
    let who = words.next().expect("a client");
    let _verb = words.next();
    let name = words.next().unwrap_or("").trim_end_matches(':');
    (time, who, name)
}

fn last_line(stdout: &str) -> &str {
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

#[test]
fn demo_runs_the_31785_scenario_and_no_finished_goal_holds_a_lock() {
    let (out, stdout) = run_demo("normal", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert_eq!(
        last_line(&stdout),
        "0 locks held by finished goals",
        "{context}"
    );
    // Three clients started, each with its own process.
    assert_eq!(events(&stdout, "start").len(), 3, "{context}");
    // 8 distinct outputs, 14 goals: whatever the interleaving, each output is
    // built once and the other 6 goals find their output already valid.
    let built = events(&stdout, "built");
    assert_eq!(built.len(), 8, "{context}");
    assert!(
        built.iter().all(|l| l.contains("registered in db.sqlite")),
        "{context}"
    );
    let valid = events(&stdout, "valid");
    assert_eq!(valid.len(), 6, "{context}");
    assert!(
        valid.iter().all(|l| l.contains("already valid")),
        "{context}"
    );
    // A `built` line's time is when its output was registered (taken just
    // before the commit); a `valid` line's time is when the worker found the
    // output valid (its log record's, for a goal that waited). Nothing was
    // found valid before it was registered: with "the path exists" as
    // validity, a waiter's re-check would have taken glibc while its builder
    // was still writing it.
    let registered: std::collections::HashMap<&str, f64> = built
        .iter()
        .map(|l| {
            let (t, _, name) = parse_event(l);
            (name, t)
        })
        .collect();
    assert_eq!(registered.len(), 8, "each output once\n{context}");
    for line in &valid {
        let (t, who, name) = parse_event(line);
        let reg = registered
            .get(name)
            .unwrap_or_else(|| panic!("{who} found {name} valid, never registered\n{context}"));
        assert!(
            t >= *reg,
            "{who} found {name} valid at {t}, before its registration at {reg}\n{context}"
        );
    }
    // The waiters' re-check saw glibc on disk but not registered, while A's
    // builder was writing it (its builder waits for that), and kept
    // waiting; the same client found it valid only after its registration.
    let rechecks = events(&stdout, "re-check");
    let glibc: Vec<_> = rechecks
        .iter()
        .filter(|l| {
            l.contains(
                "glibc-2.39 exists on disk but is not registered in db.sqlite: \
                 still being built, keep waiting",
            )
        })
        .collect();
    assert!(
        !glibc.is_empty(),
        "no re-check saw glibc half-built\n{context}"
    );
    // The first of them came before glibc's registration: A's builder
    // waited for it. (A later one may be stamped after the time taken
    // before the commit, having queried just before the commit.)
    let first = glibc
        .iter()
        .map(|l| parse_event(l).0)
        .fold(f64::INFINITY, f64::min);
    assert!(
        first < registered["glibc-2.39"],
        "the first re-check of glibc came after its registration\n{context}"
    );
    for line in &glibc {
        let (_, who, _) = parse_event(line);
        assert!(
            valid.iter().any(|v| {
                let (_, w, n) = parse_event(v);
                w == who && n == "glibc-2.39"
            }),
            "{who} re-checked glibc but never found it valid\n{context}"
        );
    }
    assert!(
        stdout.contains(
            "  database    8 paths in ValidPaths, each registered before any client found it valid"
        ),
        "{context}"
    );
    assert!(
        stdout.contains(&format!(
            "{} re-check(s) found an output on disk but not registered: the waiter kept waiting",
            rechecks.len()
        )),
        "{context}"
    );
    // B starts while A builds glibc (0.4 s of work): it waits for A's lock,
    // and the worker's log names the holder's pid, which is client A's.
    let waits = events(&stdout, "wait");
    assert!(
        waits
            .iter()
            .any(|l| l.contains("lock held by pid") && l.contains("= client A")),
        "no wait names client A as the holder\n{context}"
    );
    // A wait ended by a hand-off says how long after the release.
    assert!(
        valid
            .iter()
            .any(|l| l.contains("lock released") && l.contains("hand-off")),
        "{context}"
    );
    for verb in ["VIOLATION", "FAILED", "ERROR"] {
        assert!(events(&stdout, verb).is_empty(), "{verb}\n{context}");
    }
    assert!(
        stdout.contains("each built exactly once") && stdout.contains("every lock is free"),
        "{context}"
    );
    assert!(stdout.contains("  ledger      0 violation(s)"), "{context}");
    let table: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("all "))
        .collect();
    assert_eq!(table.len(), 1, "{context}");
    let totals: Vec<&str> = table[0].split_whitespace().collect();
    assert_eq!(&totals[1..4], ["14", "8", "6"], "{context}");
}

#[test]
fn demo_with_legacy_hold_fails_loudly_on_the_invariant() {
    let (out, stdout) = run_demo("legacy", &["--legacy-hold"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Exit status 1: the invariant violation, not a timeout or a crash (2).
    assert_eq!(out.status.code(), Some(1), "{context}");
    assert!(
        stdout.contains("!!! INVARIANT VIOLATION"),
        "no invariant banner\n{context}"
    );
    // The library's own message, raised by the call that finished the goal
    // (run-worker reports its goals with worker-report-many!).
    let violations = events(&stdout, "VIOLATION");
    assert!(!violations.is_empty(), "{context}");
    assert!(
        violations.iter().all(
            |l| l.contains("worker-report-many! raised &goalkeeper-error 'invariant-violation")
        ),
        "{context}"
    );
    assert!(
        stdout.contains("is finished (built) but still holds the lock on"),
        "{context}"
    );
    assert!(
        stdout.contains("audit: 1 lock(s) held by finished goals"),
        "{context}"
    );
    let last = last_line(&stdout);
    let held: u64 = last
        .strip_suffix(" locks held by finished goals")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected last line {last:?}\n{context}"));
    assert!(held >= 1, "{context}");
}

/// Every wait is bounded: a deadline that passes while A is still building
/// makes the demo stop the clients and their builders, say so, exit 2 and
/// remove its store (`run_demo` checks the latter), instead of hanging.
#[test]
fn demo_deadline_stops_everything_and_exits_2() {
    let (out, stdout) = run_demo("timeout", &["--timeout=0.3"]);
    let context = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{context}");
    assert!(
        stdout.contains("TIMEOUT: the clients did not finish within 0.3 s"),
        "{context}"
    );
    assert!(
        !stdout.contains("locks held by finished goals\n"),
        "{context}"
    );
}

/// The demo is a host of the library's own API, not a re-implementation:
/// it drives its workers with `run-worker` and its hooks (`#:watch` for the
/// builders' pipes, `#:on-log` for the worker's log records), starts its
/// builders with `spawn-builder`, reads the store database only through the
/// library (no SQLite FFI of its own) and no log text with regular
/// expressions (issue 13), and makes its point in at most 600 lines (issue
/// 18).
#[test]
fn demo_uses_run_worker_hooks_and_log_records() {
    let source = std::fs::read_to_string(common::root().join("demo/31785.scm"))
        .expect("read demo/31785.scm");
    let lines = source.lines().count();
    assert!(
        lines <= 600,
        "demo/31785.scm has {lines} lines; at most 600"
    );
    for wanted in [
        "(run-worker ",
        "(spawn-builder",
        "#:watch",
        "#:on-log",
        "log-record-holder-pid",
        // The validity is the store database, and the re-check the
        // worker's own record.
        "#:store-database %db-file",
        "'on-disk-not-valid",
    ] {
        assert!(source.contains(wanted), "the demo no longer uses {wanted}");
    }
    for unwanted in [
        "(ice-9 regex)",
        "regexp-exec",
        "worker-next-event",
        "(worker-log ",
        "#:valid-path?",
        "sqlite3_",
        "libsqlite3",
    ] {
        assert!(!source.contains(unwanted), "the demo uses {unwanted} again");
    }
}

/// The script compiles without warnings (unbound variables, arity, format
/// strings), so the branches the runs above do not take cannot rot either.
#[test]
fn demo_script_compiles_without_warnings() {
    let root = common::root();
    let guild = guile().with_file_name("guild");
    let output = common::build_dir().join("gk-demo-31785.go");
    let out = common::run_bounded(
        Command::new(&guild)
            .args([
                "compile",
                // No optimisation: the warnings are the same, ten times faster.
                "-O0",
                "-Wunbound-variable",
                "-Warity-mismatch",
                "-Wformat",
            ])
            .arg("-L")
            .arg(root.join("scheme"))
            .arg("-o")
            .arg(&output)
            .arg(root.join("demo/31785.scm"))
            .env_remove("GUILE_LOAD_COMPILED_PATH")
            .env("GUILE_AUTO_COMPILE", "0"),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("warning"),
        "guild compile demo/31785.scm failed or warned ({}):\n{stderr}",
        out.status
    );
    let _ = std::fs::remove_file(output);
}
