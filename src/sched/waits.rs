//! Waiting for locks held elsewhere, without holding anything (G2) and
//! without polling (G4).
//!
//! A goal that finds one of its output locks busy in the kernel (another
//! process, or another worker or lock set of this process) gets a
//! [`LockWait`]: a helper thread blocked in `F_OFD_SETLKW`/`flock` on its own
//! descriptor. When the kernel grants the lock, the thread writes the
//! worker's `eventfd`, which the host polls (the `Wait` event's fd). The
//! worker never blocks: it only looks at the waits when the eventfd fired or
//! a validity re-check is due. No eventfd syscall is made while no foreign
//! wait exists.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lock::{Backend, LockWait, Notify, StorePath};

/// One goal waiting in the kernel for one of its output locks.
pub(crate) struct ForeignWait {
    /// The waiting goal's index.
    pub(crate) goal: u32,
    /// The index of the awaited path in the goal's sorted outputs.
    pub(crate) k: usize,
    pub(crate) wait: LockWait,
    /// When validity is re-checked next (None in check mode: no shortcut).
    pub(crate) next_recheck: Option<Instant>,
    /// The store database's error at the last re-check, if it could not
    /// answer (logged once, not at every re-check, until it changes).
    pub(crate) unknown: Option<String>,
    /// Whether the last re-check found the awaited output on disk but not
    /// valid (logged once when that starts, not at every re-check).
    pub(crate) on_disk: bool,
}

/// The waits of one worker's goals for locks, holding nothing (G2): kernel
/// waits on helper threads (at most one per goal), waits for another goal
/// of the worker to finish, and the eventfd the threads write. The notify
/// closures of wait threads share the eventfd, so it stays open until the
/// last thread that might write it is gone (a descriptor number is never
/// written after the worker closed it).
pub(crate) struct Waits {
    efd: Arc<OwnedFd>,
    pub(crate) foreign: Vec<ForeignWait>,
    /// (holder, waiter): the waiter waits for the completion of the holder,
    /// a goal of this worker holding one of its locks.
    local: Vec<(u32, u32)>,
    /// The eventfd fired, but a step stopped after one goal's news before
    /// looking at every kernel wait: the next drain says so again.
    pub(crate) unseen: bool,
}

impl Waits {
    pub(crate) fn new() -> Result<Waits> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::from_io("eventfd", "create worker eventfd", e));
        }
        Ok(Waits {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            efd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            foreign: Vec::new(),
            local: Vec::new(),
            unseen: false,
        })
    }

    /// The eventfd: readable when a kernel wait may have ended.
    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Starts a kernel wait for `path` (output `k` of `goal`) on a helper
    /// thread, whose end makes the eventfd readable. Its first validity
    /// re-check is due `recheck_after` after the wait began (so a goal
    /// found valid by a re-check has waited at least that long).
    pub(crate) fn start_foreign(
        &mut self,
        (goal, k, path): (u32, usize, StorePath),
        backend: Backend,
        recheck_after: Option<Duration>,
    ) -> Result<()> {
        let fd = self.efd.clone();
        let notify: Notify = Arc::new(move || {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor kept open by `fd`.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        });
        let wait = LockWait::spawn(path, backend, Some(notify))?;
        let next_recheck = recheck_after.map(|d| wait.started() + d);
        self.foreign.push(ForeignWait {
            goal,
            k,
            wait,
            next_recheck,
            unknown: None,
            on_disk: false,
        });
        Ok(())
    }

    /// Removes goal `g`'s kernel wait. Dropping the returned value abandons
    /// it: the thread releases the lock the moment it gets it.
    pub(crate) fn remove_foreign(&mut self, g: u32) -> Option<ForeignWait> {
        let at = self.foreign.iter().position(|w| w.goal == g)?;
        Some(self.foreign.swap_remove(at))
    }

    /// Goal `g`'s kernel wait.
    pub(crate) fn foreign_mut(&mut self, g: u32) -> Option<&mut ForeignWait> {
        self.foreign.iter_mut().find(|w| w.goal == g)
    }

    /// The earliest re-check deadline.
    pub(crate) fn earliest_recheck(&self) -> Option<Instant> {
        self.foreign.iter().filter_map(|w| w.next_recheck).min()
    }

    /// Resets the eventfd; `true` if some wait thread wrote it since the
    /// last drain, or a step has not looked at every wait since it fired.
    /// No system call while there is no kernel wait.
    pub(crate) fn drain(&mut self) -> bool {
        if self.foreign.is_empty() {
            return false;
        }
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; the descriptor is non-blocking.
        let n = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        std::mem::take(&mut self.unseen) || (n == 8 && v > 0)
    }

    /// Goal `waiter` waits for goal `holder` of this worker to finish.
    pub(crate) fn add_local(&mut self, holder: u32, waiter: u32) {
        self.local.push((holder, waiter));
    }

    /// Goal `waiter` no longer waits for `holder`.
    pub(crate) fn remove_local(&mut self, holder: u32, waiter: u32) {
        self.local.retain(|&w| w != (holder, waiter));
    }

    /// Goal `holder` finished: the goals that waited for it, which wait no
    /// more.
    #[inline]
    pub(crate) fn take_local_waiters(&mut self, holder: u32) -> Vec<u32> {
        if self.local.is_empty() {
            return Vec::new();
        }
        let woken = self.local.extract_if(.., |&mut (h, _)| h == holder);
        woken.map(|(_, w)| w).collect()
    }
}
