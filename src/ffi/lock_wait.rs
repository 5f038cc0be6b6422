//! Lock waits an event loop can wait on (`gk_lock_wait`): a descriptor that
//! becomes readable when the locks of some store paths may be free, for a
//! daemon that retries a non-blocking lock from its `select()`/`poll()`
//! loop instead of polling on a timer (G4).
//!
//! Each path gets a probe (`crate::lock::LockWait::probe`): a helper thread
//! blocked in the kernel on its own descriptor, which releases the lock the
//! moment it is granted and then counts the path as seen. The last path
//! seen writes an eventfd. Nothing is held for the caller, so whoever
//! retries first gets the lock; the caller's retry may lose that race, and
//! then it waits again.

use std::ffi::c_char;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::args;
use super::boundary::call;
use super::enums::gk_backend;
use super::handle::{HandleTable, Kind};
use super::status::gk_status;
use crate::base::ForkMutex;
use crate::error::{Error, Result};
use crate::lock::{self, LockWait, Notify};

/// An opaque handle to a lock wait (`gk_lock_wait_new`). 0 is never a valid handle.
pub type gk_lock_wait = u64;

/// The lock waits made through the C ABI (last in the lock order of the
/// handle tables: see `ffi::before_fork`).
pub(super) static LOCK_WAITS: ForkMutex<HandleTable<PathsWait>> =
    ForkMutex::new(HandleTable::new(Kind::LockWait));

/// A pending `gk_lock_wait`: one probe per path, and the eventfd the last
/// one writes. Dropping it abandons the probes still blocked (a later wait
/// for the same path adopts their threads).
pub(crate) struct PathsWait {
    _probes: Vec<LockWait>,
    efd: Arc<OwnedFd>,
}

/// A new eventfd, close-on-exec and non-blocking; `op` names the
/// operation in an error.
pub(super) fn eventfd(op: &'static str) -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::from_io(
            "eventfd",
            op,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the eventfd `fd` readable (async-signal-safe).
pub(super) fn ring(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Starts waiting until the lock of every path in `paths[0..n_paths]` may
/// be free, without taking any of them, and stores the new wait in `*out`.
///
/// `gk_lock_wait_fd` gives a descriptor that becomes readable, and stays
/// readable, once each path's lock was seen free since this call: its
/// holder released it (or died), or deleted its lock file. Then retry the
/// non-blocking acquisition (`gk_lockset_try_acquire`, or the daemon's
/// `lockPaths(..., false)`); another process may have taken a lock first, in
/// which case the retry finds it busy and the caller waits again. A wait
/// that fails (an insecure store, a lock file that is not ours) becomes
/// readable too, and the retry reports the error. The descriptor also
/// becomes readable if the holder released and re-took a lock at once, so
/// a wake-up means "retry", never "acquired".
///
/// It holds nothing for the caller: a helper thread per path blocks in the
/// kernel (`F_OFD_SETLKW` for `GK_BACKEND_OFD`, which conflicts with the
/// POSIX `fcntl` locks of guix-daemon; `flock` for `GK_BACKEND_FLOCK`, as
/// Nix), and releases a lock the moment it is granted. If the lock file
/// does not exist, the thread creates it, as a locker would.
///
/// The descriptor goes beside the caller's own in `poll()`/`select()`. To
/// make the wait interruptible (Ctrl-C, a client hanging up), poll a
/// self-pipe that the signal handler writes beside it:
///
/// ```c
/// gk_lockset set;
/// gk_status s;
/// while ((s = gk_lockset_try_acquire(paths, n, GK_BACKEND_OFD, &set)) == GK_BUSY) {
///     gk_lock_wait w;
///     int fd;
///     if (gk_lock_wait_new(paths, n, GK_BACKEND_OFD, &w) != GK_OK) break;
///     gk_lock_wait_fd(w, &fd);
///     struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
///                           {.fd = self_pipe[0], .events = POLLIN}};
///     while (poll(p, 2, -1) < 0 && errno == EINTR) {}
///     gk_lock_wait_free(w);
///     if (p[1].revents & POLLIN) return INTERRUPTED; // nothing is held
/// }                                                  // else: retry
/// ```
///
/// `GK_HELD_BY_THIS_PROCESS`: this process holds one of the paths (a wait
/// for it would end only when this process releases it); nothing is
/// started. Paths are checked as by `gk_lockset_try_acquire`. On any status
/// but `GK_OK`, `*out` is 0. Free the wait with `gk_lock_wait_free`, fired or
/// not.
///
/// # Safety
/// `paths` must point to `n_paths` NUL-terminated strings; `out` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_lock_wait_new(
    paths: *const *const c_char,
    n_paths: usize,
    backend: u32,
    out: *mut gk_lock_wait,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        // SAFETY: as above.
        let paths = unsafe { args::path_array(paths, n_paths) }?;
        let backend = gk_backend::parse(backend)?;
        for p in &paths {
            if let Some(owner) = lock::owner_of(p) {
                return Err(owner.held_error(p));
            }
        }
        let efd = Arc::new(eventfd("create a lock wait's eventfd")?);
        let left = AtomicUsize::new(paths.len());
        let kept = efd.clone();
        let notify: Notify = Arc::new(move || {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                ring(kept.as_raw_fd());
            }
        });
        let probes = paths
            .into_iter()
            .map(|p| LockWait::probe(p, backend, notify.clone()))
            .collect::<Result<Vec<_>>>()?;
        let w = PathsWait {
            _probes: probes,
            efd,
        };
        *out = LOCK_WAITS.with(|h| h.insert(w));
        Ok(())
    })
}

/// Stores in `*fd_out` the descriptor of `wait`: it becomes readable (and
/// stays so; never read it) when the locks may be free. It belongs to the
/// wait and is closed by `gk_lock_wait_free`; it is close-on-exec.
///
/// # Safety
/// `fd_out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_lock_wait_fd(wait: gk_lock_wait, fd_out: *mut i32) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let fd_out = unsafe { args::out(fd_out, "fd_out") }?;
        LOCK_WAITS.with(|h| {
            *fd_out = h.get(wait)?.efd.as_raw_fd();
            Ok(())
        })
    })
}

/// Frees `wait`, fired or not, and closes its descriptor; the handle becomes
/// stale (a second free returns `GK_ERROR_STALE_HANDLE`). Threads still
/// blocked are left to a later wait for the same path, which reuses them.
#[no_mangle]
pub extern "C" fn gk_lock_wait_free(wait: gk_lock_wait) -> gk_status {
    // Abandoning the probes takes the list of abandoned waits: outside the
    // handle table's lock.
    call(|_| LOCK_WAITS.with(|h| h.remove(wait)).map(drop))
}
