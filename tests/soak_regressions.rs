//! Regression tests for what the soak (tests/soak.rs) and the ABI fuzzer
//! (tests/abi_fuzz/) found, each named after the finding.

mod common;

use common::TempStore;
use goalkeeper::fault::Point;
use goalkeeper::lock::{Backend, LockSet, WaitMode};
use std::time::Duration;

/// Forks a child that locks `p`, sets deletion and releases with the crash
/// point `at` armed, so that it dies by SIGKILL at that instant of the
/// release; returns once it is reaped.
fn crash_inside_release(p: &str, backend: Backend, at: Point) {
    // SAFETY: the child only takes and releases a lock through the library
    // (fork-safe by design), then dies by SIGKILL.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        goalkeeper::fault::arm(at, true);
        let mut set = match LockSet::try_acquire([p], backend) {
            Ok(set) => set,
            // SAFETY: leaving the child at once.
            Err(_) => unsafe { libc::_exit(2) },
        };
        set.set_deletion(true);
        let _ = set.release(); // killed in here
                               // SAFETY: leaving the child at once.
        unsafe { libc::_exit(3) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child (it dies at once).
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the child should have crashed inside the release at {} (status {status:#x})",
        at.name()
    );
}

/// The next locker gets `p` within a bound, on a fresh, empty lock file.
fn next_locker_gets_it(p: &str, lock: &std::path::Path, backend: Backend, wait: WaitMode) {
    let p2 = p.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(LockSet::acquire([p2], backend, wait)));
    let set = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("acquisition hung")
        .unwrap_or_else(|e| panic!("{backend:?}/{wait:?}: wedged: {e}"));
    assert_eq!(
        std::fs::metadata(lock).unwrap().len(),
        0,
        "the next locker holds an empty, linked lock file"
    );
    set.release().unwrap();
}

/// Found by the soak: a holder killed in the middle of a release with
/// deletion, after writing the token "d" and before the unlink (the order
/// of earlier versions), left the lock file linked and carrying the token.
/// Every later locker re-opened it 1000 times and failed with
/// GK_ERROR_STALE_LOCK_FILE (the C++ daemon spins on such a file forever),
/// so the path stayed wedged until someone deleted the file by hand. Now the
/// next locker, which holds the lock on that inode, finishes the deletion
/// and goes on with a fresh file (fix 72d64ec). Today's release unlinks
/// first and never leaves such a file (next test), but older versions and
/// other programs may: the file is planted here as they leave it, and the
/// next locker must heal it, with both backends and both wait modes.
#[test]
fn crash_between_token_and_unlink_does_not_wedge_the_path() {
    for backend in [Backend::Ofd, Backend::Flock] {
        for wait in [WaitMode::Try, WaitMode::Forever] {
            let s = TempStore::new();
            let p = s.path("aaa-out");
            let lock = s.lock_file("aaa-out");
            std::fs::write(&lock, b"d").unwrap();
            std::fs::set_permissions(&lock, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            next_locker_gets_it(&p, &lock, backend, wait);
        }
    }
}

/// Issue 10: a crash at each instant of a release with deletion (real
/// processes, killed by the crash points of src/fault.rs) never leaves a
/// linked lock file carrying the token, which guix-daemon would spin on
/// for ever: before the unlink the file is linked and empty (a live lock
/// file), after it the name is gone. The next locker gets the path in every
/// case, with both backends and both wait modes.
#[test]
fn crash_at_any_instant_of_a_release_leaves_no_linked_token_file() {
    for at in Point::crashes() {
        for backend in [Backend::Ofd, Backend::Flock] {
            for wait in [WaitMode::Try, WaitMode::Forever] {
                let s = TempStore::new();
                let p = s.path("aaa-out");
                let lock = s.lock_file("aaa-out");
                crash_inside_release(&p, backend, at);
                match (at, std::fs::metadata(&lock)) {
                    (Point::CrashBeforeUnlink, Ok(m)) => {
                        assert_eq!(m.len(), 0, "{}: linked and empty", at.name())
                    }
                    (Point::CrashBeforeUnlink, Err(e)) => {
                        panic!("{}: the lock file is gone: {e}", at.name())
                    }
                    (_, Ok(m)) => panic!(
                        "{}: the lock file is still linked ({} bytes)",
                        at.name(),
                        m.len()
                    ),
                    (_, Err(_)) => {}
                }
                next_locker_gets_it(&p, &lock, backend, wait);
            }
        }
    }
}
