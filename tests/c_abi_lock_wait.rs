//! `gk_lock_wait` from C (`tests/c/lock_wait_test.c`): a descriptor an event
//! loop waits on until the locks of some paths may be free, against real
//! holder processes (POSIX fcntl as guix-daemon, flock as Nix, goalkeeper's
//! OFD), holders that delete their lock files, a self-pipe beside it, and
//! every argument and handle error. Each test runs one section of the
//! program in a fresh store.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{compile, root, run_bounded, TempStore};

fn program() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        compile(
            "lock_wait_test",
            &[root().join("tests/c/lock_wait_test.c")],
            false,
            &[],
        )
    })
    .clone()
}

fn section(name: &str, at_least: usize) {
    let s = TempStore::new();
    let out = run_bounded(
        std::process::Command::new(program()).arg(s.dir()).arg(name),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("not ok")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    let finished = stdout.lines().any(|l| l == format!("1..{passed}"));
    let ok = out.status.success() && failed.is_empty() && finished && passed >= at_least;
    common::record_suite(
        &format!("tests/c/lock_wait_test.c {name}"),
        ok,
        passed as u64,
        failed.len().max(usize::from(!ok)) as u64,
        &common::counts_detail(passed as u64, failed.len() as u64),
    );
    assert!(
        ok,
        "section '{name}' failed ({:?}, {passed} passed, at least {at_least} wanted):\n{}\n{stdout}\nstderr:\n{stderr}",
        out.status,
        failed.join("\n")
    );
}

/// POSIX, flock and OFD holders in other processes, each releasing or
/// deleting its lock file: not readable while held, readable (and staying
/// so) once released, holding nothing, never re-creating a deleted file.
#[test]
fn lock_wait_against_real_holders() {
    section("holders", 60);
}

/// Several paths (all must be seen free), a free path, a path this process
/// holds (refused), an insecure store (fires; the retry says why).
#[test]
fn lock_wait_paths() {
    section("paths", 15);
}

/// The header's example: a self-pipe written by a signal handler, polled
/// beside the wait's descriptor, ends the wait holding nothing.
#[test]
fn lock_wait_beside_a_self_pipe() {
    section("selfpipe", 10);
}

/// Waits freed while pending reuse one thread, a fork child cannot use its
/// parent's wait, and the abandoned threads let the lock go.
#[test]
fn lock_wait_lifecycle() {
    section("lifecycle", 100);
}

/// NULL pointers, no paths, relative paths, unknown backends, stale, zero
/// and foreign handles, double free.
#[test]
fn lock_wait_argument_errors() {
    section("args", 18);
}
