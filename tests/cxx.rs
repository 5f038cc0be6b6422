//! The C++ suites (tests/cxx/*.cc): compiled against include/goalkeeper.hpp
//! with `-Wall -Wextra -Werror`, linked with the built libgoalkeeper.so,
//! and run with a hard time limit in a private temporary store.
//!
//! With `GOALKEEPER_SANITIZE=address` (what `make check-sanitize` sets) the
//! C++ side is built with AddressSanitizer (and LeakSanitizer) and every
//! report is fatal. The Rust library itself is not instrumented; its heap
//! still goes through ASan's malloc, so C++ misuse of memory the library
//! hands out (messages, buffers) is caught too.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{compile, root, run_bounded, TempStore};

fn sanitizer() -> Option<String> {
    std::env::var("GOALKEEPER_SANITIZE")
        .ok()
        .filter(|s| !s.is_empty())
}

fn src(name: &str) -> PathBuf {
    root().join("tests/cxx").join(name)
}

/// Builds `name` from `sources`, runs it on a fresh store with `args`, and
/// fails with its output unless it exits 0 within `limit` and prints
/// `expect`. Returns stdout.
fn build_and_run(
    name: &str,
    sources: &[&str],
    args: &[&str],
    limit: Duration,
    expect: &str,
) -> String {
    build_and_run_with(name, sources, args, limit, expect, &[])
}

/// [`build_and_run`] with extra linker arguments (e.g. `-lsqlite3`).
fn build_and_run_with(
    name: &str,
    sources: &[&str],
    args: &[&str],
    limit: Duration,
    expect: &str,
    libs: &[&str],
) -> String {
    let sources: Vec<PathBuf> = sources.iter().map(|s| src(s)).collect();
    let san = sanitizer();
    let mut extra: Vec<String> = vec!["-I".into(), root().join("tests/cxx").display().to_string()];
    extra.extend(libs.iter().map(|l| l.to_string()));
    let exe_name = match &san {
        Some(kind) => {
            extra.push(format!("-fsanitize={kind}"));
            extra.push("-fno-omit-frame-pointer".into());
            format!("{name}-{kind}")
        }
        None => name.to_string(),
    };
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let exe = compile(&exe_name, &sources, true, &extra_refs);
    let store = TempStore::new();
    let mut cmd = Command::new(&exe);
    cmd.arg(store.dir()).args(args);
    if san.is_some() {
        // Any ASan/LSan report fails the run (exitcode 23 is not used by the
        // programs themselves). Fork children leave with _exit(), which skips
        // the leak check; the processes that exit normally are checked.
        cmd.env(
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:exitcode=23:abort_on_error=0:\
             detect_stack_use_after_return=1:check_initialization_order=1:\
             strict_init_order=1",
        );
    }
    let out = run_bounded(&mut cmd, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let sanitizer_report = san.is_some() && stderr.contains("Sanitizer");
    let ok = out.status.success() && !sanitizer_report && stdout.contains(expect);
    let detail = if ok {
        format!("printed \"{expect}\"")
    } else if !out.status.success() || sanitizer_report {
        format!("{}", out.status)
    } else {
        format!("exited 0 without printing \"{expect}\"")
    };
    common::record_suite(
        &format!("tests/cxx/{}", sources_display(&sources)),
        ok,
        u64::from(ok),
        u64::from(!ok),
        &detail,
    );
    assert!(
        out.status.success(),
        "{exe_name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    if san.is_some() {
        assert!(
            !stderr.contains("Sanitizer"),
            "{exe_name}: sanitizer report:\n{stderr}"
        );
    }
    println!("{stdout}");
    assert!(
        stdout.contains(expect),
        "{exe_name} did not print {expect:?}:\n{stdout}"
    );
    stdout
}

/// The program's main source file, for its line in `make check`.
fn sources_display(sources: &[PathBuf]) -> String {
    sources
        .first()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every C ABI function through goalkeeper.hpp, including the error paths.
#[test]
fn cxx_api() {
    build_and_run(
        "api_test",
        &["api_test.cc"],
        &[],
        Duration::from_secs(60),
        "api_test: all passed",
    );
}

/// The store database through goalkeeper.hpp: StoreDb, store_path_valid()
/// and Worker::set_store_database(), every error a goalkeeper::error naming
/// the file, with real SQLite files written through the system libsqlite3.
#[test]
fn cxx_store_db() {
    build_and_run_with(
        "store_db_test",
        &["store_db_test.cc"],
        &[],
        Duration::from_secs(60),
        "store_db_test: all passed",
        &["-lsqlite3"],
    );
}

/// Old (POSIX fcntl, legacy_pathlocks.cc) and new (goalkeeper OFD) locks
/// exclude each other, and each side survives the other's lock-file deletion.
#[test]
fn cxx_legacy_interop() {
    build_and_run(
        "legacy_interop",
        &["legacy_interop.cc", "legacy_pathlocks.cc"],
        &[],
        Duration::from_secs(60),
        "legacy_interop: all steps passed",
    );
}

/// A miniature guix-daemon: one forked handler per connection, each running
/// a goalkeeper worker through the pull loop with real builders; >= 3
/// clients with overlapping DAGs all finish, every derivation is built
/// exactly once, and no lock is held once every goal has finished.
#[test]
fn cxx_mini_daemon() {
    build_and_run(
        "mini_daemon",
        &["mini_daemon.cc"],
        &["4"],
        Duration::from_secs(90),
        "each output built exactly once",
    );
}

/// A store shared by old and new daemons: 3 goalkeeper clients and 2 legacy
/// (POSIX PathLocks) clients build one DAG at once without double builds or
/// deadlock; each side sees the other's locks; and a lock leaked by a
/// legacy client (#31785) does not hang the goalkeeper clients (S3).
#[test]
fn cxx_mixed_store() {
    build_and_run(
        "mixed_store",
        &["mixed_store.cc", "legacy_pathlocks.cc"],
        &[],
        Duration::from_secs(120),
        "mixed_store: all phases passed",
    );
}

/// The README's C++ example builds with -Werror and runs.
#[test]
fn cxx_readme_example() {
    build_and_run(
        "readme_example",
        &["../../examples/hello.cc"],
        &[],
        Duration::from_secs(60),
        "ccc-hello: built",
    );
}

/// The drop-in for guix-daemon's PathLocks (goalkeeper-pathlocks.hh) used
/// the way DerivationGoal::tryToBuild uses it: no-wait locking, "someone
/// beat us to it", a real build, release with deletion; busy sets hold
/// nothing; wait mode blocks until another process releases and prints its
/// message once; the destructor's safety net; errors and self re-locks.
#[test]
fn cxx_pathlocks_dropin() {
    build_and_run(
        "pathlocks_dropin",
        &["pathlocks_dropin.cc"],
        &[],
        Duration::from_secs(90),
        "pathlocks_dropin: all passed",
    );
}

/// The drop-in PathLocks and the legacy (POSIX) PathLocks in separate
/// processes: they exclude each other both ways, each survives the other's
/// deletion of a lock file, and a refused set holds nothing on either side.
#[test]
fn cxx_pathlocks_legacy() {
    build_and_run(
        "pathlocks_legacy",
        &["pathlocks_legacy.cc", "legacy_pathlocks.cc"],
        &[],
        Duration::from_secs(90),
        "pathlocks_legacy: all steps passed",
    );
}

/// The README's drop-in example builds with -Werror and runs.
#[test]
fn cxx_readme_pathlocks() {
    build_and_run(
        "readme_pathlocks",
        &["readme_pathlocks.cc"],
        &[],
        Duration::from_secs(60),
        "aaa-hello: built, 0 lock(s) held",
    );
}

/// A pre-C++17 compiler meets one clear #error in each C++ header, not a
/// hundred errors from inside them.
#[test]
fn cxx_headers_need_cxx17_and_say_so() {
    let target = "x86_64-unknown-linux-gnu";
    let tool = cc::Build::new()
        .cpp(true)
        .target(target)
        .host(target)
        .opt_level(0)
        .cargo_metadata(false)
        .get_compiler();
    let mut failures = Vec::new();
    for header in ["goalkeeper.hpp", "goalkeeper-pathlocks.hh"] {
        for std in ["-std=c++11", "-std=c++14"] {
            let out = tool
                .to_command()
                .args([std, "-fsyntax-only", "-x", "c++", "-I"])
                .arg(root().join("include"))
                .arg("-")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin
                        .take()
                        .expect("stdin")
                        .write_all(format!("#include <{header}>\n").as_bytes())?;
                    c.wait_with_output()
                })
                .expect("run the C++ compiler");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let errors = stderr.lines().filter(|l| l.contains(": error:")).count();
            if out.status.success() || errors != 1 || !stderr.contains("needs C++17") {
                failures.push(format!("{header} with {std}: {errors} errors:\n{stderr}"));
            }
        }
    }
    common::record_suite(
        "tests/cxx.rs: the C++ headers under C++11 and C++14",
        failures.is_empty(),
        4 - failures.len() as u64,
        failures.len() as u64,
        "one #error each",
    );
    assert!(
        failures.is_empty(),
        "want one #error naming C++17:\n{}",
        failures.join("\n")
    );
}

/// A model of guix-daemon's worker (shared_ptr goals, a top-level list,
/// waitForAWhile and a select() loop, the has-become-valid path without
/// unlock()) running Guix's store-deadlock scenario, scaled down, as three
/// processes: the old loop polls for every contended lock and deadlocks
/// without the unlock; the migrated loop (goalkeeper-pathlocks.hh) finishes,
/// never wakes on a timer, and names each goal that finished holding a lock.
#[test]
fn cxx_daemon_model() {
    build_and_run(
        "daemon_model",
        &["daemon_model.cc", "legacy_pathlocks.cc"],
        &[],
        Duration::from_secs(120),
        "daemon_model: all passed",
    );
}
