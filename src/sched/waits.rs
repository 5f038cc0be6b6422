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
use crate::lock::{LockWait, Notify, Owner, StorePath};

use super::ids::GoalId;

/// The worker's eventfd. The notify closures of wait threads share it, so
/// it stays open until the last thread that might write it is gone (a
/// descriptor number is never written after the worker closed it).
pub(crate) struct EventFd(Arc<OwnedFd>);

impl EventFd {
    pub(crate) fn new() -> Result<EventFd> {
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

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A callback for a wait thread: makes the eventfd readable.
    pub(crate) fn notifier(&self) -> Notify {
        let fd = self.0.clone();
        Arc::new(move || {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor kept open by `fd`.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        })
    }

    /// Resets the eventfd; `true` if some wait thread wrote it since the last drain.
    pub(crate) fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; the descriptor is non-blocking.
        let n = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }
}

/// One goal waiting in the kernel for one of its output locks.
pub(crate) struct ForeignWait {
    /// The waiting goal's arena index.
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

/// The table of foreign waits: a slab with a free list.
#[derive(Default)]
pub(crate) struct ForeignWaits {
    slots: Vec<Option<ForeignWait>>,
    free: Vec<u32>,
    live: usize,
}

impl ForeignWaits {
    pub(crate) fn insert(&mut self, w: ForeignWait) -> u32 {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(w);
                i
            }
            None => {
                self.slots.push(Some(w));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Removes a wait. Dropping the returned value abandons the kernel wait:
    /// the thread releases the lock the moment it gets it.
    pub(crate) fn remove(&mut self, i: u32) -> Option<ForeignWait> {
        let w = self.slots.get_mut(i as usize)?.take()?;
        self.live -= 1;
        self.free.push(i);
        Some(w)
    }

    pub(crate) fn get(&self, i: u32) -> Option<&ForeignWait> {
        self.slots.get(i as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, i: u32) -> Option<&mut ForeignWait> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Indices of the live waits, appended to `out`.
    pub(crate) fn live_indices(&self, out: &mut Vec<u32>) {
        out.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(|(i, _)| i as u32),
        );
    }

    /// The earliest re-check deadline.
    pub(crate) fn earliest_recheck(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|w| w.next_recheck)
            .min()
    }
}

/// Who in another process holds `path`'s lock, if it can be told (pids and
/// commands from `/proc/locks`, see [`crate::inspect`]); `None` makes
/// the log say just "another process". Asked once per foreign wait, never
/// on the hot path.
pub fn foreign_holder_hint(path: &StorePath) -> Option<String> {
    crate::inspect::describe_holders(path.lock_path())
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
    let me = Some(std::process::id());
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
