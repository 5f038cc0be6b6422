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
use std::time::Instant;

use crate::error::{Error, Result};
use crate::lock::{Backend, LockWait, Notify, Owner, StorePath};

use super::ids::GoalId;

/// The worker's eventfd. The notify closures of wait threads share it, so
/// it stays open until the last thread that might write it is gone (a
/// descriptor number is never written after the worker closed it).
struct EventFd(Arc<OwnedFd>);

impl EventFd {
    fn new() -> Result<EventFd> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::from_io(
                "eventfd",
                "create worker eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A callback for a wait thread: makes the eventfd readable.
    fn notifier(&self) -> Notify {
        let fd = self.0.clone();
        Arc::new(move || {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor kept open by `fd`.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        })
    }

    /// Resets the eventfd; `true` if some wait thread wrote it since the last drain.
    fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; the descriptor is non-blocking.
        let n = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }
}

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
/// waits on helper threads (a slab with a free list), waits for another
/// goal of the worker to finish, and the eventfd the threads write.
pub(crate) struct Waits {
    efd: EventFd,
    foreign: Vec<Option<ForeignWait>>,
    free: Vec<u32>,
    live: usize,
    /// (holder, waiter): the waiter waits for the completion of the holder,
    /// a goal of this worker holding one of its locks.
    local: Vec<(u32, u32)>,
}

impl Waits {
    pub(crate) fn new() -> Result<Waits> {
        Ok(Waits {
            efd: EventFd::new()?,
            foreign: Vec::new(),
            free: Vec::new(),
            live: 0,
            local: Vec::new(),
        })
    }

    /// The eventfd: readable when a kernel wait may have ended.
    pub(crate) fn fd(&self) -> RawFd {
        self.efd.fd()
    }

    /// Starts a kernel wait for `path` on a helper thread, whose end makes
    /// the eventfd readable; returns its index.
    pub(crate) fn start_foreign(
        &mut self,
        (goal, k, path): (u32, usize, StorePath),
        backend: Backend,
        next_recheck: Option<Instant>,
    ) -> Result<u32> {
        let wait = LockWait::spawn(path, backend, Some(self.efd.notifier()))?;
        let w = ForeignWait {
            goal,
            k,
            wait,
            next_recheck,
            unknown: None,
            on_disk: false,
        };
        self.live += 1;
        Ok(match self.free.pop() {
            Some(i) => {
                self.foreign[i as usize] = Some(w);
                i
            }
            None => {
                self.foreign.push(Some(w));
                (self.foreign.len() - 1) as u32
            }
        })
    }

    /// Removes a kernel wait. Dropping the returned value abandons it: the
    /// thread releases the lock the moment it gets it.
    pub(crate) fn remove_foreign(&mut self, i: u32) -> Option<ForeignWait> {
        let w = self.foreign.get_mut(i as usize)?.take()?;
        self.live -= 1;
        self.free.push(i);
        Some(w)
    }

    pub(crate) fn foreign(&self, i: u32) -> Option<&ForeignWait> {
        self.foreign.get(i as usize)?.as_ref()
    }

    pub(crate) fn foreign_mut(&mut self, i: u32) -> Option<&mut ForeignWait> {
        self.foreign.get_mut(i as usize)?.as_mut()
    }

    /// Number of kernel waits.
    pub(crate) fn foreign_count(&self) -> usize {
        self.live
    }

    /// Indices of the kernel waits.
    pub(crate) fn foreign_indices(&self) -> Vec<u32> {
        (0..self.foreign.len() as u32)
            .filter(|&i| self.foreign[i as usize].is_some())
            .collect()
    }

    /// The earliest re-check deadline.
    pub(crate) fn earliest_recheck(&self) -> Option<Instant> {
        self.foreign
            .iter()
            .flatten()
            .filter_map(|w| w.next_recheck)
            .min()
    }

    /// Resets the eventfd; `true` if some wait thread wrote it since the
    /// last drain. No system call while there is no kernel wait.
    pub(crate) fn drain(&self) -> bool {
        self.live > 0 && self.efd.drain()
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
        self.take_local_waiters_of(holder)
    }

    fn take_local_waiters_of(&mut self, holder: u32) -> Vec<u32> {
        let (woken, rest) = self.local.iter().partition(|&&(h, _)| h == holder);
        self.local = rest;
        woken.into_iter().map(|(_, w): (u32, u32)| w).collect()
    }
}

/// Who holds a lock a goal waits for, for the diagnostics log.
pub(crate) struct Holder {
    /// "goal 3 of this worker (lock set 7)", "another process (pid 42 …)".
    pub(crate) text: String,
    /// The holding process, when known: this process for its own lock sets
    /// and goals; for another process, the lowest pid `/proc` names.
    pub(crate) pid: Option<u32>,
    /// The holding goal, when it is a goal of this process.
    pub(crate) goal: Option<GoalId>,
}

/// Describes who holds a lock a goal waits for.
pub(crate) fn describe_holder(path: &StorePath, owner: Option<Owner>, worker: u32) -> Holder {
    let me = Some(crate::base::pid());
    match owner {
        Some(o) if o.tag != 0 => {
            let g = GoalId::from_raw(o.tag);
            let text = if g.worker() == worker {
                format!("{g} of this worker (lock set {})", o.lockset)
            } else {
                format!(
                    "{g} of worker {} in this process (lock set {})",
                    g.worker(),
                    o.lockset
                )
            };
            Holder {
                text,
                pid: me,
                goal: Some(g),
            }
        }
        Some(o) => Holder {
            text: format!("lock set {} in this process", o.lockset),
            pid: me,
            goal: None,
        },
        None => match crate::inspect::describe_holders_and_pids(path.lock_path()) {
            Some((who, pids)) => Holder {
                text: format!("another process ({who})"),
                pid: pids.first().copied(),
                goal: None,
            },
            None => Holder {
                text: "another process".to_string(),
                pid: None,
                goal: None,
            },
        },
    }
}
