//! The process lifecycle: what happens when the library is loaded and when
//! the process forks.
//!
//! This module is the crate's root of process-wide state. It owns
//!
//! * the load-time constructor (an ELF `.init_array` entry), which does every
//!   one-time initialisation before any caller can reach the library from
//!   another thread;
//! * the `pthread_atfork` handlers, which hold every process-wide mutex
//!   across `fork(2)` and then let each layer repair its state in the child;
//! * the **lock order** of those mutexes: the C ABI's handle table first,
//!   then the lock layer's process state. Every code path that holds both
//!   takes them in this order, and so does [`prepare`];
//! * [`ForkMutex`], the mutex kind those handlers can hold across a fork.
//!
//! Each layer exposes plain functions for its part (`before_fork`,
//! `after_fork_parent`, `after_fork_child`); none of them knows about the
//! others. Layers call down into this module only to make sure the handlers
//! are installed ([`ensure_installed`]), never to reach another layer.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// A mutex that the atfork handlers can hold across `fork(2)` and release
/// in both the parent and the child.
///
/// It is a futex word with three states (0 free, 1 held, 2 held with
/// waiters; the classic design of Drepper's "Futexes Are Tricky"): taking
/// and releasing an uncontended one are one atomic instruction each, inline,
/// which matters on the lock cycle's hot path (every lock-file operation
/// runs under the lock layer's process state). Unlike `std::sync::Mutex`, it
/// can be left locked by one function (the `prepare` handler) and unlocked
/// by another (the `parent` and `child` handlers); in the child, whose only
/// thread is the one that forked, no waiter exists. Not `parking_lot`'s raw
/// mutex either: its contended path parks threads in a process-wide table
/// guarded by locks of its own, which the atfork handlers cannot hold, so a
/// fork could leave the child's copy of that table locked.
pub(crate) struct ForkMutex<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `state`; T moves between threads only under it.
unsafe impl<T: Send> Sync for ForkMutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for ForkMutex<T> {}

impl<T> ForkMutex<T> {
    /// A new, unlocked mutex.
    pub(crate) const fn new(data: T) -> Self {
        ForkMutex {
            state: AtomicU32::new(0),
            data: UnsafeCell::new(data),
        }
    }

    #[inline(always)]
    fn lock(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    /// Waits for the mutex, marking it as having waiters (2) so that the
    /// holder's unlock wakes one.
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        for _ in 0..100 {
            if self
                .state
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            std::hint::spin_loop();
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            // SAFETY: a futex wait on a live, aligned u32 that stays in
            // place (the mutexes are statics); it returns at once if the
            // word is no longer 2, and spurious wake-ups loop.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    2u32,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }

    #[inline(always)]
    fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            self.wake_one();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        // SAFETY: a futex wake on a live, aligned u32; no memory is passed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1i32,
            )
        };
    }

    /// Runs `f` with the mutex held. `f` must not call back into this mutex.
    ///
    /// The atfork handlers are installed before the mutex is first taken:
    /// a `fork` while another thread holds it would otherwise leave the
    /// child's copy locked forever.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        ensure_installed();
        struct Unlock<'a, T>(&'a ForkMutex<T>);
        impl<T> Drop for Unlock<'_, T> {
            #[inline(always)]
            fn drop(&mut self) {
                self.0.unlock();
            }
        }
        self.lock();
        let _unlock = Unlock(self);
        // SAFETY: the mutex is held, so this is the only reference to `data`.
        f(unsafe { &mut *self.data.get() })
    }

    /// Locks the mutex without a guard: for a `before_fork` hook only, which
    /// [`ForkMutex::unlock_after_fork`] pairs in both parent and child.
    pub(crate) fn lock_for_fork(&self) {
        self.lock();
    }

    /// Unlocks what [`ForkMutex::lock_for_fork`] locked (after a fork, in
    /// the parent or in the child, whose only thread is the one that forked).
    pub(crate) fn unlock_after_fork(&self) {
        self.unlock();
    }

    /// The guarded data, for an `after_fork_child` hook, which holds the
    /// mutex through [`ForkMutex::lock_for_fork`] rather than through `with`.
    /// Dereferencing it is allowed only between `lock_for_fork` and
    /// `unlock_after_fork`, in the child, whose only thread forked.
    pub(crate) fn data_ptr(&self) -> *mut T {
        self.data.get()
    }
}

static INSTALL: Once = Once::new();

/// Installs the atfork handlers once per process: at load time (below), and
/// as a fallback before any [`ForkMutex`] is first taken.
pub(crate) fn ensure_installed() {
    INSTALL.call_once(|| {
        crate::lock::init_process();
        // SAFETY: registering plain `extern "C"` functions without captured state.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
}

/// Before `fork(2)`: takes every process-wide mutex, in the lock order.
extern "C" fn prepare() {
    crate::ffi::before_fork();
    crate::lock::before_fork();
}

/// In the parent after `fork(2)`: releases them, in reverse order.
extern "C" fn parent() {
    crate::lock::after_fork_parent();
    crate::ffi::after_fork_parent();
}

/// In the child after `fork(2)`: each layer repairs its state, then releases
/// its mutex (the lock layer closes the inherited lock descriptors and bumps
/// the fork generation).
extern "C" fn child() {
    crate::lock::after_fork_child();
    crate::ffi::after_fork_child();
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
    ensure_installed();
    crate::fault::init();
    crate::sched::init();
}

#[used]
#[link_section = ".init_array"]
static LOAD_TIME_INIT: extern "C" fn() = load_time_init;
