//! Test-only fault injection. In release builds (`debug_assertions` off) every
//! hook is a constant `None` and compiles away.
//!
//! In debug builds a fault is armed for the whole process by
//! [`arm`], or for a process tree through the environment variable
//! `GOALKEEPER_FAULTS`, a comma-separated list of point names
//! (`token-write-enospc`, `lock-wait-edeadlk`, `open-enospc`,
//! `finish-deletion-erofs`).

use std::io;

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Point {
    /// Writing the deletion token `"d"` fails with `ENOSPC`.
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
}

impl Point {
    /// Every point with its `GOALKEEPER_FAULTS` name.
    pub const ALL: [(Point, &'static str); 4] = [
        (Point::TokenWrite, "token-write-enospc"),
        (Point::LockWaitDeadlock, "lock-wait-edeadlk"),
        (Point::OpenNoSpace, "open-enospc"),
        (Point::FinishDeletion, "finish-deletion-erofs"),
    ];
}

#[cfg(debug_assertions)]
mod imp {
    use super::Point;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Once;

    static ARMED: AtomicU32 = AtomicU32::new(0);
    static ENV: Once = Once::new();

    pub(super) fn armed(p: Point) -> bool {
        ENV.call_once(|| {
            if let Ok(v) = std::env::var("GOALKEEPER_FAULTS") {
                for name in v.split(',') {
                    for (p, n) in Point::ALL {
                        if name.trim() == n {
                            ARMED.fetch_or(p as u32, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        ARMED.load(Ordering::Relaxed) & p as u32 != 0
    }

    pub(super) fn arm(p: Point, on: bool) {
        if on {
            ARMED.fetch_or(p as u32, Ordering::Relaxed);
        } else {
            ARMED.fetch_and(!(p as u32), Ordering::Relaxed);
        }
    }
}

/// The error to inject at `p`, if that fault is armed.
#[inline(always)]
pub(crate) fn injected(p: Point) -> Option<io::Error> {
    #[cfg(debug_assertions)]
    if imp::armed(p) {
        return Some(io::Error::from_raw_os_error(match p {
            Point::TokenWrite | Point::OpenNoSpace => libc::ENOSPC,
            Point::LockWaitDeadlock => libc::EDEADLK,
            Point::FinishDeletion => libc::EROFS,
        }));
    }
    let _ = p;
    None
}

/// Arms or disarms fault `p` in this process (debug builds only; a no-op in
/// release builds).
pub fn arm(p: Point, on: bool) {
    #[cfg(debug_assertions)]
    imp::arm(p, on);
    let _ = (p, on);
}
