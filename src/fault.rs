//! Test-only fault injection, behind the `fault-injection` cargo feature,
//! which the test suites, the soak and the ABI fuzzer enable and production
//! builds (`make`, `make install`) leave off. Without it this module is
//! private and every hook is a constant `None` that compiles away.
//!
//! With it, a fault is armed for the whole process by
//! `arm`, or for a process tree through the environment variable
//! `GOALKEEPER_FAULTS`, a comma-separated list of point names
//! (`token-write-enospc`, `mark-truncate-eio`, `lock-wait-edeadlk`,
//! `open-enospc`, `finish-deletion-erofs`, `crash-before-unlink`,
//! `crash-after-unlink`, `crash-after-mark`), each optionally followed by
//! `:PERCENT` to fire at random with that probability instead of every time
//! (`GOALKEEPER_FAULTS=token-write-enospc:30,crash-after-unlink:5`; the soak
//! test uses this).
//!
//! A release with deletion (`src/lock/file.rs`) has three instants a crash
//! can hit, one crash point each, in this order: `crash-before-unlink` (the
//! lock file is still linked and empty), `crash-after-unlink` (unlinked,
//! not yet marked: the one window an old peer that checks only `st_size`
//! can misread, as after a crash of guix-daemon at the same instant), and
//! `crash-after-mark` (unlinked and marked, still locked).

use std::io;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Point {
    /// Writing the deletion token `"d"` fails with `ENOSPC` (the release
    /// then marks the unlinked inode with `ftruncate(fd, 1)` instead).
    TokenWrite = 1,
    /// A blocking lock wait (`F_OFD_SETLKW`, `flock(LOCK_EX)`) fails with
    /// `EDEADLK`. The kernel never says that for OFD or `flock` locks (it
    /// detects deadlocks between process-owned POSIX locks only), so this is
    /// the only way to exercise that error path.
    LockWaitDeadlock = 2,
    /// Opening (creating) a lock file fails with `ENOSPC`, for systems where
    /// the tests cannot mount a small full file system.
    OpenNoSpace = 4,
    /// Unlinking a lock file left behind by an interrupted deletion (token
    /// written, holder gone before its unlink) fails with `EROFS`.
    FinishDeletion = 8,
    /// The process kills itself (`SIGKILL`) in a release with deletion,
    /// before the unlink: the lock file is still linked and empty.
    CrashBeforeUnlink = 16,
    /// The process kills itself in a release with deletion after the unlink,
    /// before the inode is marked (token or `ftruncate`): unlinked and empty.
    CrashAfterUnlink = 32,
    /// The process kills itself in a release with deletion after the inode
    /// is marked, before the lock is released: unlinked and non-empty.
    CrashAfterMark = 64,
    /// The fallback mark, `ftruncate(fd, 1)` after a failed token write,
    /// fails with `EIO` too (armed together with `TokenWrite`, it leaves the
    /// unlinked inode unmarked: the case no order can fix).
    MarkTruncate = 128,
}

#[cfg(feature = "fault-injection")]
impl Point {
    /// Every point with its `GOALKEEPER_FAULTS` name, in the order of their
    /// bits.
    pub const ALL: [(Point, &'static str); 8] = [
        (Point::TokenWrite, "token-write-enospc"),
        (Point::LockWaitDeadlock, "lock-wait-edeadlk"),
        (Point::OpenNoSpace, "open-enospc"),
        (Point::FinishDeletion, "finish-deletion-erofs"),
        (Point::CrashBeforeUnlink, "crash-before-unlink"),
        (Point::CrashAfterUnlink, "crash-after-unlink"),
        (Point::CrashAfterMark, "crash-after-mark"),
        (Point::MarkTruncate, "mark-truncate-eio"),
    ];

    /// The crash points of a release with deletion, in the order a release
    /// passes them. (A function, not an associated constant: cbindgen would
    /// export the enum to the C header for the latter.)
    pub fn crashes() -> [Point; 3] {
        [
            Point::CrashBeforeUnlink,
            Point::CrashAfterUnlink,
            Point::CrashAfterMark,
        ]
    }

    /// The point's `GOALKEEPER_FAULTS` name.
    pub fn name(self) -> &'static str {
        Point::ALL[self.slot()].1
    }

    fn slot(self) -> usize {
        (self as u32).trailing_zeros() as usize
    }
}

/// How often each point fires, in percent (0: it is not armed), and the
/// random state that picks occasions for a percentage below 100.
#[cfg(feature = "fault-injection")]
static PERCENT: [AtomicU8; 8] = [const { AtomicU8::new(0) }; 8];
#[cfg(feature = "fault-injection")]
static RNG: AtomicU64 = AtomicU64::new(1);

/// One-time initialisation at load time (see `crate::lifecycle`): parses
/// `GOALKEEPER_FAULTS` before any thread could fork in the middle of it.
#[cfg(feature = "fault-injection")]
pub(crate) fn init() {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    RNG.store((pid << 32 ^ t) | 1, Ordering::Relaxed);
    let Ok(v) = std::env::var("GOALKEEPER_FAULTS") else {
        return;
    };
    for item in v.split(',') {
        let (name, pct) = match item.trim().split_once(':') {
            Some((n, p)) => (n, p.trim().parse::<u8>().unwrap_or(100).min(100)),
            None => (item.trim(), 100),
        };
        for (p, n) in Point::ALL {
            if name == n {
                PERCENT[p.slot()].store(pct, Ordering::Relaxed);
            }
        }
    }
}

/// Whether fault `p` fires now: armed, and picked at random with its
/// percentage (a xorshift step: cheap, lock-free, good enough to pick
/// occasions).
#[cfg(feature = "fault-injection")]
fn fires(p: Point) -> bool {
    let pct = PERCENT[p.slot()].load(Ordering::Relaxed) as u64;
    if pct == 0 {
        return false;
    }
    let roll = RNG
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut x| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
        .unwrap_or(1);
    pct >= 100 || roll % 100 < pct
}

/// The error to inject at `p`, if that fault is armed.
pub(crate) fn injected(p: Point) -> Option<io::Error> {
    #[cfg(feature = "fault-injection")]
    if fires(p) {
        return Some(io::Error::from_raw_os_error(match p {
            Point::TokenWrite | Point::OpenNoSpace => libc::ENOSPC,
            Point::LockWaitDeadlock => libc::EDEADLK,
            Point::FinishDeletion => libc::EROFS,
            _ => libc::EIO,
        }));
    }
    let _ = p;
    None
}

/// Arms or disarms fault `p` in this process.
#[cfg(feature = "fault-injection")]
pub fn arm(p: Point, on: bool) {
    PERCENT[p.slot()].store(if on { 100 } else { 0 }, Ordering::Relaxed);
}

/// Kills this process with `SIGKILL` at crash point `p`, if it is armed,
/// as a `kill -9` arriving at exactly that moment would.
pub(crate) fn crash_point(p: Point) {
    #[cfg(feature = "fault-injection")]
    if fires(p) {
        // SAFETY: raise has no memory preconditions; SIGKILL cannot be caught.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    let _ = p;
}
