//! A blocking wait for one lock, run on a helper thread so that the caller
//! can bound it with a timeout or poll for it from an event loop (G4).
//!
//! The thread blocks in the kernel (`F_OFD_SETLKW` or `flock`) on its own
//! descriptor, so it wakes within microseconds of the holder's release. The
//! waiter holds nothing else while it waits (G2). If the wait is abandoned
//! (timeout, cancellation, the waiting goal became valid), the thread keeps
//! waiting, and releases the lock the moment it gets it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::file::LockFile;
use super::path::StorePath;
use crate::error::{Error, Result};

/// Called from the wait thread when the wait ends (e.g. writes an eventfd).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

enum State {
    Waiting,
    Done(Result<LockFile>),
    Abandoned,
    Taken,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

/// A pending wait for the lock of one store path.
#[allow(dead_code)] // the scheduler uses all of it; lock sets only part
pub(crate) struct LockWait {
    shared: Arc<Shared>,
    path: StorePath,
    started: Instant,
}

#[allow(dead_code)]
impl LockWait {
    /// Starts a thread that blocks until `path`'s lock is granted, then calls `notify`.
    pub(crate) fn spawn(
        path: StorePath,
        backend: Backend,
        notify: Option<Notify>,
    ) -> Result<LockWait> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Waiting),
            cond: Condvar::new(),
        });
        let (s2, p2) = (shared.clone(), path.clone());
        std::thread::Builder::new()
            .name("gk-lockwait".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let r = LockFile::acquire_blocking(&p2, backend);
                let mut st = s2.state.lock().unwrap_or_else(|e| e.into_inner());
                match *st {
                    State::Waiting => *st = State::Done(r),
                    // Nobody wants it any more: `r` is dropped here, releasing the lock.
                    _ => return,
                }
                drop(st);
                s2.cond.notify_all();
                if let Some(n) = notify {
                    n();
                }
            })
            .map_err(|e| Error::from_io(path.lock_path(), "spawn lock wait thread", e))?;
        Ok(LockWait {
            shared,
            path,
            started: Instant::now(),
        })
    }

    /// The path waited for.
    pub(crate) fn path(&self) -> &StorePath {
        &self.path
    }

    /// When the wait began.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Takes the outcome if the wait has ended, without blocking.
    pub(crate) fn poll(&self) -> Option<Result<LockFile>> {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::take(&mut st)
    }

    /// Waits up to `timeout` for the outcome. A timeout too long for
    /// `Instant` to represent waits without limit.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<Result<LockFile>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = Self::take(&mut st) {
                return Some(r);
            }
            st = match deadline {
                None => self.shared.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.shared
                        .cond
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    fn take(st: &mut State) -> Option<Result<LockFile>> {
        if matches!(st, State::Done(_)) {
            if let State::Done(r) = std::mem::replace(st, State::Taken) {
                return Some(r);
            }
        }
        None
    }
}

impl Drop for LockWait {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        // A lock granted but never taken is released here, when `old` drops.
        let _old = std::mem::replace(&mut *st, State::Abandoned);
    }
}
