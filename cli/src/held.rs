//! For at most how long a lock has been held, as far as the kernel tells.
//!
//! The kernel records nowhere when a lock was granted: not in `/proc/locks`,
//! not in `/proc/PID/fdinfo`. What it does record bounds it from above:
//!
//! * the lock file's birth time (`statx`, `STATX_BTIME`): a lock on a file
//!   is taken after the file was created. goalkeeper, guix-daemon and Nix
//!   create an output's lock file when they first lock it, and delete it once
//!   the output is valid, so for a build this is usually when its lock was
//!   taken. Not every file system records it (then it is unknown).
//! * for a POSIX (`fcntl`) lock, the holder's start time (`/proc/PID/stat`):
//!   such a lock belongs to the process that took it, and a child does not
//!   inherit it. OFD and `flock` locks belong to an open file description,
//!   which a child inherits over `fork`, perhaps after the lock was taken:
//!   their holder's start time bounds nothing.
//!
//! The shorter of the two ages is the bound.

use std::path::Path;
use std::time::{Duration, SystemTime};

use goalkeeper::inspect::LockKind;
use serde::Serialize;

/// Where the bound comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The lock file's creation (birth) time.
    LockFileCreated,
    /// The holding process's start time (POSIX locks only).
    HolderStarted,
}

impl Bound {
    /// In words, for the table's footnote.
    pub fn words(self) -> &'static str {
        match self {
            Bound::LockFileCreated => "since the lock file was created",
            Bound::HolderStarted => "since the holder started",
        }
    }
}

/// How long ago the file at `path` was created, if the file system says.
pub fn file_age(path: &Path) -> Option<Duration> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statx is a valid output buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stx` a statx buffer, both
    // live for the call; AT_SYMLINK_NOFOLLOW: the entry itself, as listed.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_BTIME == 0 {
        return None;
    }
    let born = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
        u64::try_from(stx.stx_btime.tv_sec).ok()?,
        stx.stx_btime.tv_nsec,
    ))?;
    Some(SystemTime::now().duration_since(born).unwrap_or_default())
}

/// How long ago process `pid` started, rounded up: field 22 of
/// `/proc/PID/stat` (clock ticks after boot) against `CLOCK_BOOTTIME`, the
/// clock it is counted on.
pub fn process_age(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold any character:
    // fields 3 onwards follow its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(22 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 || hz == 0 {
        return None;
    }
    let now = Duration::new(u64::try_from(now.tv_sec).ok()?, now.tv_nsec as u32);
    // The start time was truncated to a tick: it may have started up to one
    // tick earlier, and an upper bound must count that tick.
    let started =
        Duration::from_secs(ticks / hz) + Duration::from_nanos(ticks % hz * 1_000_000_000 / hz);
    let tick = Duration::from_nanos(1_000_000_000 / hz);
    Some(now.saturating_sub(started) + tick)
}

/// The bound for one holder: the lock file's age, or for a POSIX lock its
/// holder's age if that is shorter.
pub fn held_at_most(
    file_age: Option<Duration>,
    kind: LockKind,
    pid: Option<u32>,
) -> Option<(Duration, Bound)> {
    let file = file_age.map(|a| (a, Bound::LockFileCreated));
    let holder = match (kind, pid) {
        (LockKind::Posix, Some(pid)) => process_age(pid).map(|a| (a, Bound::HolderStarted)),
        _ => None,
    };
    match (file, holder) {
        (Some(f), Some(h)) => Some(if h.0 < f.0 { h } else { f }),
        (f, h) => f.or(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_started_before_now_and_after_boot() {
        let age = process_age(std::process::id()).expect("/proc/self/stat");
        assert!(age < Duration::from_secs(24 * 3600 * 365), "{age:?}");
        assert_eq!(process_age(u32::MAX), None, "no such process");
    }

    #[test]
    fn the_shorter_age_bounds_a_posix_lock_only() {
        let me = Some(std::process::id());
        let long = Some(Duration::from_secs(1 << 40));
        let (_, b) = held_at_most(long, LockKind::Posix, me).unwrap();
        assert_eq!(b, Bound::HolderStarted);
        let (_, b) = held_at_most(long, LockKind::Ofd, me).unwrap();
        assert_eq!(b, Bound::LockFileCreated, "an OFD lock may be inherited");
        assert_eq!(held_at_most(None, LockKind::Flock, me), None);
        let (_, b) = held_at_most(Some(Duration::ZERO), LockKind::Posix, me).unwrap();
        assert_eq!(b, Bound::LockFileCreated);
    }
}
