//! Process-wide primitives that every layer may use: [`ForkMutex`], the
//! fork generation and this process's pid.
//!
//! A fork child inherits its parent's memory, locks and objects, but not
//! its other threads. What the child may do with them depends on two facts
//! kept here:
//!
//! * the **fork generation**, which changes in a child after every
//!   `fork(2)`: objects record it when they are made, and a child's calls on
//!   its parent's lock sets, workers and handles answer
//!   [`Error::WrongProcess`](crate::error::Error::WrongProcess) instead of
//!   touching the parent's descriptors;
//! * the **pid**, cached, and refreshed in the child.
//!
//! Both are updated by the `pthread_atfork` child handler that
//! `crate::lifecycle` installs at load time; this module knows nothing of
//! that handler, and imports nothing of the crate.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A mutex that the atfork handlers can hold across `fork(2)` and release
/// in both the parent and the child.
///
/// It is a futex word with three states (0 free, 1 held, 2 held with
/// waiters; the classic design of Drepper's "Futexes Are Tricky"): taking
/// and releasing an uncontended one are one atomic instruction each. Unlike
/// `std::sync::Mutex`, it can be left locked by one function (the `prepare`
/// handler) and unlocked by another (the `parent` and `child` handlers); in
/// the child, whose only thread is the one that forked, no waiter exists.
/// Not `parking_lot`'s raw mutex either: its contended path parks threads in
/// a process-wide table guarded by locks of its own, which the atfork
/// handlers cannot hold, so a fork could leave the child's copy of that
/// table locked.
///
/// Every `ForkMutex` is a static that the atfork `prepare` handler takes
/// (each layer's `before_fork`), in the lock order `crate::lifecycle`
/// documents: a `fork` while another thread holds one would otherwise leave
/// the child's copy locked forever.
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

    /// Locks the mutex without a guard: for [`ForkMutex::with`], and for a
    /// `before_fork` hook, which [`ForkMutex::unlock_after_fork`] pairs in
    /// both parent and child.
    pub(crate) fn lock_for_fork(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        // Contended: mark the word as having waiters (2), so that the
        // holder's unlock wakes one, and sleep until it is free.
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

    /// Unlocks what [`ForkMutex::lock_for_fork`] locked (at the end of
    /// [`ForkMutex::with`]; after a fork, in the parent or in the child,
    /// whose only thread is the one that forked).
    pub(crate) fn unlock_after_fork(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
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
    }

    /// Runs `f` with the mutex held. `f` must not call back into this mutex.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        struct Unlock<'a, T>(&'a ForkMutex<T>);
        impl<T> Drop for Unlock<'_, T> {
            fn drop(&mut self) {
                self.0.unlock_after_fork();
            }
        }
        self.lock_for_fork();
        let _unlock = Unlock(self);
        // SAFETY: the mutex is held, so this is the only reference to `data`.
        f(unsafe { &mut *self.data.get() })
    }

    /// The guarded data, for an `after_fork_child` hook, which holds the
    /// mutex through [`ForkMutex::lock_for_fork`] rather than through `with`.
    /// Dereferencing it is allowed only between `lock_for_fork` and
    /// `unlock_after_fork`, in the child, whose only thread is the one that
    /// forked.
    pub(crate) fn data_ptr(&self) -> *mut T {
        self.data.get()
    }
}

/// This process's pid (0 until [`init`] ran at load time).
static PID: AtomicU32 = AtomicU32::new(0);

/// See [`generation`].
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current fork generation: it changes in a child after every `fork(2)`.
/// Objects record it at creation and refuse to touch their descriptors when
/// it differs.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// This process's pid (cached; refreshed in fork children).
pub(crate) fn pid() -> u32 {
    PID.load(Ordering::Relaxed)
}

/// Records this process's pid (at load time).
pub(crate) fn init() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// In a fork child, before any other layer repairs its state: refreshes the
/// pid and bumps the fork generation.
pub(crate) fn after_fork_child() {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load-time constructor (`crate::lifecycle`) ran: without it the
    /// pid would still be 0 and no fork handler would be installed.
    #[test]
    fn the_load_time_constructor_ran() {
        assert_eq!(pid(), std::process::id());
    }
}
