//! A blocking wait for one lock, run on a helper thread so that the caller
//! can bound it with a timeout or poll for it from an event loop (G4).
//!
//! The thread blocks in the kernel (`F_OFD_SETLKW` or `flock`) on its own
//! descriptor, so it wakes within microseconds of the holder's release. The
//! waiter holds nothing else while it waits (G2).
//!
//! A thread blocked in the kernel cannot be called back, so a wait that is
//! abandoned (timeout, cancellation, the waiting goal became valid) leaves
//! its thread behind, blocked. Such a *ghost* is kept in a list ([`GHOSTS`])
//! and adopted by the next wait for the same path and backend, so repeated
//! timeouts on one path reuse one thread and one descriptor instead of
//! piling them up. A ghost that is granted the lock releases it at once; one
//! that finds the lock file deleted by its holder stops there, without
//! re-creating the file.
//!
//! A *probe* ([`LockWait::probe`]) waits the same way but hands nothing
//! over: it only tells when the lock may be free. Granted the lock, its
//! thread releases it at once, before it notifies; finding the lock file
//! deleted by its holder ends it too (the holder released it), without
//! re-creating the file. The C ABI's `gk_lock_wait` is made of probes.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::file::LockFile;
use super::path::StorePath;
use crate::base::{generation, ForkMutex};
use crate::error::{Error, Result};

/// Called from the wait thread when the wait ends (e.g. writes an eventfd).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

enum State {
    Waiting,
    Done(Result<LockFile>),
    Abandoned,
    Taken,
}

struct Inner {
    state: State,
    notify: Option<Notify>,
    /// A probe: the lock is released, not handed over (see the module doc).
    probe: bool,
}

/// What a wait shares with its thread.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    cond: Condvar,
    path: StorePath,
    backend: Backend,
    /// The fork generation the thread runs in.
    generation: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Abandoned waits whose threads are still blocked in the kernel, for a
/// later wait on the same path to adopt. A wait's state changes under this
/// mutex, so that a wait is adopted only while it is abandoned and blocked.
/// In a fork child the list also holds the parent's, untouched: never
/// adopted (their fork generation differs), never dropped (no destructors,
/// such as the hosts' notifiers, run in a fork child), and still reachable,
/// so not a leak (memcheck called a forgotten list "definitely lost" in
/// every such child).
pub(crate) static GHOSTS: ForkMutex<Vec<Arc<Shared>>> = ForkMutex::new(Vec::new());

/// A pending wait for the lock of one store path.
pub(crate) struct LockWait {
    shared: Arc<Shared>,
    started: Instant,
}

impl LockWait {
    /// Waits until `path`'s lock is granted, then calls `notify`: on a new
    /// thread, or on the thread of an abandoned wait for the same path that
    /// is still blocked in the kernel.
    pub(crate) fn spawn(
        path: StorePath,
        backend: Backend,
        notify: Option<Notify>,
    ) -> Result<LockWait> {
        Self::start(path, backend, notify, false)
    }

    /// A probe: calls `notify` once `path`'s lock was seen free (granted
    /// and released at once, or its file deleted by its holder) or the wait
    /// failed. It never hands the lock over.
    pub(crate) fn probe(path: StorePath, backend: Backend, notify: Notify) -> Result<LockWait> {
        Self::start(path, backend, Some(notify), true)
    }

    fn start(
        path: StorePath,
        backend: Backend,
        notify: Option<Notify>,
        probe: bool,
    ) -> Result<LockWait> {
        let adopted = GHOSTS.with(|ghosts| {
            let gen = generation();
            let i = ghosts
                .iter()
                .position(|g| g.generation == gen && g.backend == backend && g.path == path)?;
            let g = ghosts.swap_remove(i);
            {
                // Entries are removed (under GHOSTS) before their thread
                // ends, so this one is still abandoned and blocked.
                let mut inner = g.lock();
                inner.state = State::Waiting;
                inner.notify = notify.clone();
                inner.probe = probe;
            }
            Some(g)
        });
        let shared = match adopted {
            Some(shared) => shared,
            None => {
                let shared = Arc::new(Shared {
                    inner: Mutex::new(Inner {
                        state: State::Waiting,
                        notify,
                        probe,
                    }),
                    cond: Condvar::new(),
                    path: path.clone(),
                    backend,
                    generation: generation(),
                });
                let s2 = shared.clone();
                std::thread::Builder::new()
                    .name("gk-lockwait".into())
                    .stack_size(64 * 1024)
                    .spawn(move || run(s2))
                    .map_err(|e| Error::from_io(path.lock_path(), "spawn lock wait thread", e))?;
                shared
            }
        };
        Ok(LockWait {
            shared,
            started: Instant::now(),
        })
    }

    /// When the wait began.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Takes the outcome if the wait has ended, without blocking.
    pub(crate) fn poll(&self) -> Option<Result<LockFile>> {
        Self::take(&mut self.shared.lock().state)
    }

    /// Waits up to `timeout` for the outcome. A timeout too long for
    /// `Instant` to represent waits without limit.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<Result<LockFile>> {
        let inner = self.shared.lock();
        let (mut inner, _) = self
            .shared
            .cond
            .wait_timeout_while(inner, timeout, |i| !matches!(i.state, State::Done(_)))
            .unwrap_or_else(|e| e.into_inner());
        Self::take(&mut inner.state)
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

/// The wait thread: blocks for the lock, then hands it over, or releases it
/// if the wait was abandoned meanwhile or is a probe.
fn run(s: Arc<Shared>) {
    loop {
        // A probe stops before re-opening a file its holder deleted.
        let (opened, deleted) = (Cell::new(false), Cell::new(false));
        let r = LockFile::acquire_blocking(&s.path, s.backend, &|| {
            let inner = s.lock();
            let seen = opened.replace(true) && inner.probe;
            deleted.set(seen && matches!(inner.state, State::Waiting));
            seen || matches!(inner.state, State::Abandoned)
        });
        // Out of the locks: whom to tell, and a lock nobody wants (a
        // probe's, or an abandoned wait's), if the wait has ended.
        let ended = GHOSTS.with(|ghosts| {
            let mut inner = s.lock();
            match (&inner.state, r) {
                (State::Waiting, r) if inner.probe && (deleted.get() || !matches!(r, Ok(None))) => {
                    inner.state = State::Taken;
                    Some((inner.notify.clone(), Some(r)))
                }
                // Abandoned at a stale file, and adopted again since: go on.
                (State::Waiting, Ok(None)) => None,
                (State::Waiting, r) => {
                    inner.state = State::Done(r.map(|f| f.expect("not cancelled")));
                    Some((inner.notify.clone(), None))
                }
                (_, r) => {
                    if let Some(i) = ghosts.iter().position(|g| Arc::ptr_eq(g, &s)) {
                        ghosts.swap_remove(i);
                    }
                    Some((None, Some(r)))
                }
            }
        });
        let Some((notify, unwanted)) = ended else {
            continue;
        };
        // Releasing a granted lock takes the process lock, so it happens out
        // here, and a probe's lock is released before anyone is told it may
        // be free.
        drop(unwanted);
        s.cond.notify_all();
        if let Some(n) = notify {
            n();
        }
        return;
    }
}

impl Drop for LockWait {
    fn drop(&mut self) {
        if self.shared.generation != generation() {
            // Inherited through fork: the thread does not exist here, and
            // its mutex may have been held at the fork. Touch nothing.
            return;
        }
        let (old, notify) = GHOSTS.with(|ghosts| {
            let mut inner = self.shared.lock();
            let old = std::mem::replace(&mut inner.state, State::Abandoned);
            if matches!(old, State::Waiting) {
                // Still blocked in the kernel: keep it for adoption.
                ghosts.push(self.shared.clone());
            }
            (old, inner.notify.take())
        });
        // A lock granted but never taken is released here, out of the locks.
        drop(old);
        drop(notify);
    }
}
