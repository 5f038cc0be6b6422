//! Regression tests for what the soak (tests/soak.rs) and the ABI fuzzer
//! (tests/abi_fuzz/) found, each named after the finding.

mod common;

use common::TempStore;
use goalkeeper::lock::{Backend, LockSet, WaitMode};
use std::time::Duration;

/// Found by the soak: a holder killed in the middle of a release with
/// deletion, after writing the token "d" and before the unlink, left the
/// lock file linked and carrying the token. Every later locker re-opened
/// it 1000 times and failed with GK_ERROR_STALE_LOCK_FILE (the C++ daemon
/// spins on such a file forever), so the path stayed wedged until someone
/// deleted the file by hand. Now the next locker, which holds the lock on
/// that inode, finishes the deletion and goes on with a fresh file (the fix,
/// 72d64ec, was made at the same time from the benchmark work; this test
/// crashes a real process at that point, through the crash-after-token
/// fault hook, with both backends and both wait modes).
#[test]
fn crash_between_token_and_unlink_does_not_wedge_the_path() {
    if !cfg!(debug_assertions) {
        return; // the crash point is a debug-build fault hook
    }
    for backend in [Backend::Ofd, Backend::Flock] {
        for wait in [WaitMode::Try, WaitMode::Forever] {
            let s = TempStore::new();
            let p = s.path("aaa-out");
            // SAFETY: the child only takes and releases a lock through the
            // library (fork-safe by design), then dies by SIGKILL.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                goalkeeper::fault::arm(goalkeeper::fault::Point::CrashAfterToken, true);
                let mut set = match LockSet::try_acquire([&p], backend) {
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
                "the child should have crashed inside the release (status {status:#x})"
            );
            let lock = s.lock_file("aaa-out");
            assert_eq!(
                std::fs::read(&lock).unwrap(),
                b"d",
                "the crash left the file linked, carrying the token"
            );
            let p2 = p.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(LockSet::acquire([p2], backend, wait)));
            let set = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("acquisition hung")
                .unwrap_or_else(|e| panic!("{backend:?}/{wait:?}: wedged: {e}"));
            assert_eq!(
                std::fs::metadata(&lock).unwrap().len(),
                0,
                "a fresh lock file replaced the half-deleted one"
            );
            set.release().unwrap();
        }
    }
}
