//! Who holds a lock file, and who waits for it, as far as `/proc` can tell.
//!
//! Neither Nix nor Guix can say who holds a store path's lock. The kernel
//! can, and this module asks it:
//!
//! * `/proc/locks` lists every file lock in the system with its kind (POSIX,
//!   OFD, flock), the pid for POSIX and flock locks, and the device and inode
//!   of the locked file; blocked requests (waiters) follow their blocker on
//!   lines marked `->`. Entries are matched to a lock file by the device
//!   (major:minor) and inode that `stat` gives for it.
//! * OFD locks belong to an open file description, not a process, so
//!   `/proc/locks` shows them with pid −1. Their holders are found by
//!   scanning `/proc/*/fd/*` for descriptors of the same file and reading the
//!   `lock:` lines of their `/proc/PID/fdinfo/FD`, which list the locks held
//!   through that very description. Every process sharing the description
//!   (e.g. after `fork`) is named.
//! * A waiter's pid (and, for OFD waiters, the waiter itself) is found in
//!   `/proc/PID/task/TID/syscall`: a thread blocked in `fcntl(fd, F_SETLKW
//!   or F_OFD_SETLKW)` or `flock(fd, LOCK_EX)` on a descriptor of the file.
//!   How long it has been blocked is the time since that thread last ran
//!   (`se.exec_start` in `/proc/PID/task/TID/sched`), measured on the same
//!   clock: the scheduler clock of the CPU the waiter last ran on, read
//!   through the `se.exec_start` of a short-lived thread pinned to that CPU
//!   (each CPU's scheduler clock can be seconds away from `CLOCK_MONOTONIC`
//!   and from the other CPUs' clocks). A
//!   thread blocked in the kernel does not run, so this is the length of
//!   the current wait, unless a signal interrupted and restarted it. The kernel records no wait start
//!   time anywhere else; when these files are not readable the duration is
//!   unknown ([`Party::blocked_for`] is `None`).
//!
//! Processes come and go during the scan: a vanished process or descriptor
//! is skipped; one whose files are not readable (another user's, without
//! privilege) is counted in [`LockInfo::unreadable`], so a caller can say
//! "holder not found (N processes not readable)" instead of guessing.
//!
//! Cost: one read of `/proc/locks`; the descriptor scan (one `stat` per open
//! descriptor in the system: milliseconds, tens of them on a loaded machine
//! with many processes) happens only when an OFD lock or a waiter needs it,
//! and at most once per [`Inspector`]. The diagnostics helpers
//! ([`describe_holders`], [`holder_pids`]), which a scheduler calls whenever
//! a goal starts waiting for another process's lock, reuse the descriptor
//! table of a scan younger than [`SCAN_REUSE`] and rescan at most once per
//! [`SCAN_REUSE`] (when the table lacks the holder), so that many goals
//! starting to wait at once cost one scan, not one each. The lock entries,
//! fdinfo lines and blocked threads are always read afresh.

mod kernel;
mod key;
mod procfs;
mod report;

pub use kernel::{parse_proc_locks, read_proc_locks, KernelLock, LockKind};
pub use key::FileKey;
pub use procfs::{command_of, SCAN_REUSE};
pub use report::{
    describe_holders, describe_holders_and_pids, holder_pids, lock_info, Inspector, LockInfo, Party,
};
