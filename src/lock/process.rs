//! Per-process lock state that must survive `fork(2)` correctly: the set of
//! open lock descriptors, the in-process registry of held paths, and the
//! fork generation.
//!
//! A fork child inherits its parent's open file descriptions, and with them
//! OFD and `flock` locks, which would then outlive a `kill -9` of the parent.
//! A `pthread_atfork` child handler therefore closes every inherited lock
//! descriptor (without unlocking: the parent still holds them), clears the
//! registry and bumps the fork generation, so that the child's copies of the
//! parent's lock objects know they are foreign and never touch those
//! descriptor numbers again (G7, L5).

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use super::file::FileKey;
use super::path::StorePath;
use super::registry::Owner;
use super::wait::Shared;

/// A mutex built on `pthread_mutex_t`, so that the `atfork` handlers can hold
/// it across `fork(2)` and release it in both the parent and the child.
pub(crate) struct ForkMutex<T> {
    raw: UnsafeCell<libc::pthread_mutex_t>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `raw`; T moves between threads only under it.
unsafe impl<T: Send> Sync for ForkMutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for ForkMutex<T> {}

impl<T> ForkMutex<T> {
    /// A new, unlocked mutex.
    pub(crate) const fn new(data: T) -> Self {
        ForkMutex {
            raw: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
            data: UnsafeCell::new(data),
        }
    }

    /// Runs `f` with the mutex held. `f` must not call back into this mutex.
    ///
    /// The atfork handlers are installed before the mutex is first taken:
    /// a `fork` while another thread holds it would otherwise leave the
    /// child's copy locked forever.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        ensure_atfork();
        struct Unlock<'a>(&'a UnsafeCell<libc::pthread_mutex_t>);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                // SAFETY: the mutex was locked by this thread just below.
                unsafe { libc::pthread_mutex_unlock(self.0.get()) };
            }
        }
        // SAFETY: `raw` is a valid, statically initialised mutex that never moves
        // (it lives in a `static`).
        unsafe { libc::pthread_mutex_lock(self.raw.get()) };
        let _unlock = Unlock(&self.raw);
        // SAFETY: the mutex is held, so this is the only reference to `data`.
        f(unsafe { &mut *self.data.get() })
    }

    pub(crate) fn lock_raw(&self) {
        // SAFETY: see `with`.
        unsafe { libc::pthread_mutex_lock(self.raw.get()) };
    }

    pub(crate) fn unlock_raw(&self) {
        // SAFETY: only called by the atfork handlers after `lock_raw` in `prepare`.
        unsafe { libc::pthread_mutex_unlock(self.raw.get()) };
    }

    /// The guarded data, for the atfork child handler, which holds the
    /// mutex through `lock_raw` in `prepare` rather than through `with`.
    fn data_ptr(&self) -> *mut T {
        self.data.get()
    }
}

/// The registry and descriptor set guarded by [`STATE`].
pub(crate) struct State {
    /// Every open lock descriptor of this process, including those of wait threads.
    pub(crate) fds: BTreeSet<RawFd>,
    /// Store paths held by this process, and who holds them.
    pub(crate) held: BTreeMap<StorePath, Owner>,
    /// The inodes of the lock files behind `held`, so that the same file
    /// reached through another name is recognised as held by this process.
    pub(crate) held_inodes: BTreeMap<FileKey, Owner>,
    /// Store directories whose permissions were checked and found safe, as
    /// bytes (compared with `memcmp` on the lock hot path; a process uses a
    /// handful of store directories at most), each with its owner's uid.
    pub(crate) checked_dirs: Vec<(Vec<u8>, libc::uid_t)>,
    /// Abandoned lock waits whose threads are still blocked in the kernel,
    /// for a later wait on the same path to adopt (see `wait.rs`). In a fork
    /// child it also holds the parent's, which are never touched again.
    pub(crate) ghosts: Vec<Arc<Shared>>,
}

pub(crate) static STATE: ForkMutex<State> = ForkMutex::new(State {
    fds: BTreeSet::new(),
    held: BTreeMap::new(),
    held_inodes: BTreeMap::new(),
    checked_dirs: Vec::new(),
    ghosts: Vec::new(),
});

/// This process's pid, refreshed in fork children (0 until the atfork
/// handlers are installed).
static PID: AtomicU32 = AtomicU32::new(0);

static GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

/// The current fork generation: it changes in a child after every `fork(2)`.
/// Objects record it at creation and refuse to touch their descriptors when
/// it differs.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

// Lock order, here and everywhere: the C ABI's handle table, then STATE.
extern "C" fn prepare() {
    crate::ffi::handle::HANDLES.lock_raw();
    STATE.lock_raw();
}

extern "C" fn parent() {
    STATE.unlock_raw();
    crate::ffi::handle::HANDLES.unlock_raw();
}

extern "C" fn child() {
    // SAFETY: `prepare` locked STATE in the thread that forked, which is the
    // only thread of the child.
    let st = unsafe { &mut *STATE.data_ptr() };
    for &fd in st.fds.iter() {
        // SAFETY: closing an inherited descriptor number that this library
        // opened; no unlock, since the parent still holds the lock through its
        // own reference to the open file description.
        unsafe { libc::close(fd) };
    }
    st.fds.clear();
    st.held.clear();
    st.held_inodes.clear();
    // The wait threads do not exist in the child. Their shared state stays
    // in the list, untouched: never adopted (its fork generation differs),
    // never dropped (no destructors, such as the hosts' notifiers, run in a
    // fork child), and still reachable, so it is not a leak (memcheck called
    // the forgotten list "definitely lost" in every such child).
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    STATE.unlock_raw();
    crate::ffi::handle::HANDLES.unlock_raw();
}

/// Runs when the library is loaded (an ELF constructor in `.init_array`),
/// before any caller can reach it from another thread. It does every
/// one-time initialisation that a call path would otherwise do lazily
/// behind a `Once`: a `fork(2)` that lands while another thread is inside
/// such a `call_once` leaves the child's copy of it "running" forever, and
/// the child's first goalkeeper call then waits for ever (found by the C
/// test `fork children never hang on a lock the parent's other thread
/// held`, about 1 run in 12).
extern "C" fn load_time_init() {
    ensure_atfork();
    let _ = crate::fault::injected(crate::fault::Point::TokenWrite);
    let _ = crate::sched::ledger_sweep_from_env();
}

#[used]
#[link_section = ".init_array"]
static LOAD_TIME_INIT: extern "C" fn() = load_time_init;

/// Installs the atfork handlers once per process: at load time (above),
/// and as a fallback before any [`ForkMutex`] is first taken (by
/// [`ForkMutex::with`]) and before the first lock descriptor is opened.
pub(crate) fn ensure_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registering plain `extern "C"` functions without captured state.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
        // Not through STATE: `ForkMutex::with` calls this function.
        PID.store(std::process::id(), Ordering::Relaxed);
    });
}

/// This process's pid (cached; refreshed in fork children).
pub(crate) fn pid() -> u32 {
    ensure_atfork();
    PID.load(Ordering::Relaxed)
}

/// Records `fd` as an open lock descriptor.
pub(crate) fn track_fd(st: &mut State, fd: RawFd) {
    st.fds.insert(fd);
}
