//! The two kernel lock mechanisms a store can use, behind one interface.

use std::io;
use std::os::unix::io::RawFd;

/// Which kernel lock a lock domain (a store) uses. Never mix them on one
/// store: on Linux `flock(2)` and `fcntl(2)` locks do not exclude each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Open-file-description record locks (`F_OFD_SETLK`/`F_OFD_SETLKW`).
    /// They conflict with the classic POSIX `fcntl` locks that guix-daemon's
    /// C++ `PathLocks` takes, so old and new daemons exclude each other, and
    /// they belong to the open file description, so closing an unrelated
    /// descriptor of the same file does not drop them.
    #[default]
    Ofd,
    /// `flock(2)` locks, for stores shared with current Nix.
    Flock,
}

impl Backend {
    /// Tries to take the exclusive lock without blocking: `Ok(false)` when
    /// another open file description holds it.
    pub(crate) fn try_lock(self, fd: RawFd) -> io::Result<bool> {
        let r = match self {
            Backend::Ofd => ofd(fd, libc::F_OFD_SETLK, libc::F_WRLCK),
            Backend::Flock => flock(fd, libc::LOCK_EX | libc::LOCK_NB),
        };
        match r {
            Ok(()) => Ok(true),
            // EWOULDBLOCK == EAGAIN on Linux; fcntl may also say EACCES.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Blocks until the exclusive lock is taken, retrying on `EINTR` (L6).
    pub(crate) fn lock_wait(self, fd: RawFd) -> io::Result<()> {
        if let Some(e) = crate::fault::injected(crate::fault::Point::LockWaitDeadlock) {
            return Err(e);
        }
        loop {
            let r = match self {
                Backend::Ofd => ofd(fd, libc::F_OFD_SETLKW, libc::F_WRLCK),
                Backend::Flock => flock(fd, libc::LOCK_EX),
            };
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r,
            }
        }
    }

    /// Drops the lock held through `fd`.
    pub(crate) fn unlock(self, fd: RawFd) -> io::Result<()> {
        match self {
            Backend::Ofd => ofd(fd, libc::F_OFD_SETLK, libc::F_UNLCK),
            Backend::Flock => flock(fd, libc::LOCK_UN),
        }
    }

    /// The backend's name, as used in messages and by the C ABI.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ofd => "ofd",
            Backend::Flock => "flock",
        }
    }
}

fn ofd(fd: RawFd, cmd: libc::c_int, ty: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    // Zero `l_start` and `l_len` are the whole file; OFD commands require
    // `l_pid` 0.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fl` is a valid, initialised struct flock that outlives the call.
    if unsafe { libc::fcntl(fd, cmd, &mut fl as *mut libc::flock) } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn flock(fd: RawFd, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock takes an fd and flags, no memory.
    if unsafe { libc::flock(fd, op) } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
