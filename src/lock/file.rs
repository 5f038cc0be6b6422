//! One lock file `P.lock`, following the daemon's lock-file protocol.

use std::io;
use std::os::unix::io::RawFd;

use super::backend::Backend;
use super::path::StorePath;
use super::process::{self, generation, State, STATE};
use super::registry::Owner;
use crate::error::{Error, Result};
use crate::inspect::FileKey;
use crate::lifecycle::ensure_installed;

/// How many times a lock file may turn out stale (deleted by its previous
/// holder) in a row before acquisition reports an error instead of spinning.
pub const MAX_STALE_ATTEMPTS: u32 = 1000;

/// The outcome of [`LockFile::try_registered`].
#[derive(Debug)]
pub(crate) enum Acquired {
    /// The lock is held, and registered to its owner.
    Locked(LockFile),
    /// Another open file description holds it, not one of this process's
    /// lock sets.
    Busy,
    /// One of this process's lock sets holds the file (perhaps under another
    /// name): its owner, and the file's inode.
    HeldHere(Owner, FileKey),
}

/// An open, locked lock file. Dropping it releases the lock without deletion;
/// [`LockFile::release`] is the explicit way.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: RawFd,
    backend: Backend,
    generation: u64,
    key: FileKey,
}

impl LockFile {
    /// Takes the lock on `path.lock`, blocking until it is free (retrying on
    /// `EINTR`, L6). The lock is not registered to anyone: a blocking wait
    /// hands it to a lock set pass, which registers it.
    ///
    /// After the kernel grants the lock, the file is checked with `fstat`: if
    /// it has been unlinked (`st_nlink == 0`) or carries the deletion token
    /// (`st_size != 0`), its previous holder deleted it, so it is closed,
    /// re-opened and locked again, at most [`MAX_STALE_ATTEMPTS`] times.
    ///
    /// It waits for whoever holds the lock, including another lock set of
    /// this process (the scheduler's wait threads rely on that). A caller
    /// that must not wait for its own process checks first, as a lock set
    /// pass does ([`LockFile::try_registered`] reports such a lock).
    pub(crate) fn acquire_blocking(path: &StorePath, backend: Backend) -> Result<Self> {
        Ok(Self::acquire_blocking_unless(path, backend, &|| false)?.expect("never cancelled"))
    }

    /// [`LockFile::acquire_blocking`] for a wait that may be abandoned:
    /// before opening the file, and again before re-opening it after the
    /// previous holder deleted it, `cancelled` is asked, and `Ok(None)` is
    /// the answer if it says so. A wait nobody wants any more thus never
    /// creates a lock file (nor re-creates one its holder just deleted).
    pub(crate) fn acquire_blocking_unless(
        path: &StorePath,
        backend: Backend,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Self>> {
        for _ in 0..MAX_STALE_ATTEMPTS {
            if cancelled() {
                return Ok(None);
            }
            let fd = open_lock_file(path)?;
            if let Err(e) = lock_blocking(backend, fd) {
                close_fd(fd);
                return Err(Error::from_io(path.lock_path(), "lock", e));
            }
            match stat(fd) {
                Ok(st) if !is_stale(&st) => {
                    return Ok(Some(LockFile {
                        fd,
                        backend,
                        generation: generation(),
                        key: key_of(&st),
                    }))
                }
                Ok(st) => {
                    finish_interrupted_deletion(path, &st);
                    let _ = backend.unlock(fd);
                    close_fd(fd);
                }
                Err(e) => {
                    let _ = backend.unlock(fd);
                    close_fd(fd);
                    return Err(Error::from_io(path.lock_path(), "fstat", e));
                }
            }
        }
        Err(stale_exhausted(path))
    }

    /// Takes the lock without blocking and, in the same step under the
    /// process lock, registers `path` and the file's inode to `owner`. So
    /// the registry never lags behind the kernel for a try: a thread of this
    /// process that finds the lock busy either sees the entry (and says
    /// "held by this process") or ran before the lock was taken. A busy lock
    /// whose inode one of this process's sets holds is [`Acquired::HeldHere`].
    /// Stale files are handled as in [`LockFile::acquire_blocking`].
    pub(crate) fn try_registered(
        path: &StorePath,
        backend: Backend,
        owner: Owner,
    ) -> Result<Acquired> {
        ensure_installed();
        for _ in 0..MAX_STALE_ATTEMPTS {
            let attempt = STATE.with(|st| -> Result<Option<Acquired>> {
                let fd = open_in(st, path)?;
                let fail = |st: &mut State, op, e| {
                    close_in(st, fd);
                    Err(Error::from_io(path.lock_path(), op, e))
                };
                match backend.try_lock(fd) {
                    Err(e) => fail(st, "lock", e),
                    Ok(false) => {
                        let key = match stat(fd) {
                            Ok(s) => key_of(&s),
                            Err(e) => return fail(st, "fstat", e),
                        };
                        close_in(st, fd);
                        Ok(Some(match st.held_inodes.get(&key) {
                            Some(o) => Acquired::HeldHere(*o, key),
                            None => Acquired::Busy,
                        }))
                    }
                    Ok(true) => match stat(fd) {
                        Ok(s) if !is_stale(&s) => {
                            let key = key_of(&s);
                            st.held_inodes.insert(key, owner);
                            st.held.insert(path.clone(), owner);
                            Ok(Some(Acquired::Locked(LockFile {
                                fd,
                                backend,
                                generation: generation(),
                                key,
                            })))
                        }
                        Ok(s) => {
                            finish_interrupted_deletion(path, &s);
                            let _ = backend.unlock(fd);
                            close_in(st, fd);
                            Ok(None) // stale: re-open
                        }
                        Err(e) => {
                            let _ = backend.unlock(fd);
                            fail(st, "fstat", e)
                        }
                    },
                }
            })?;
            if let Some(a) = attempt {
                return Ok(a);
            }
        }
        Err(stale_exhausted(path))
    }

    /// The identity of the locked inode.
    pub(crate) fn key(&self) -> FileKey {
        self.key
    }

    /// The descriptor (for tests and diagnostics).
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Releases the lock. With `delete`, the lock file is deleted first in a
    /// way that no peer can mistake for a live lock: the token `"d"` is
    /// written, then the file is unlinked, then unlocked and closed.
    ///
    /// The token goes *before* the unlink (the C++ daemon does the reverse):
    /// while we hold the lock nobody can observe the order, but if the write
    /// fails (ENOSPC) we simply keep the file, whereas an unlinked empty inode
    /// would look live to old peers that only check `st_size` (L9). If the
    /// unlink fails, the token is truncated away again.
    ///
    /// The lock is always released, even when an error is returned; the error
    /// then says that the file could not be deleted.
    pub(crate) fn release(self, path: &StorePath, delete: bool) -> Result<()> {
        STATE.with(|st| self.release_in(st, path, delete))
    }

    /// [`LockFile::release`], with the process lock already held: a caller
    /// can update the registry in the same step, so that no other thread
    /// sees the lock released but registered, or registered but released.
    pub(crate) fn release_in(
        mut self,
        st: &mut State,
        path: &StorePath,
        delete: bool,
    ) -> Result<()> {
        let fd = std::mem::replace(&mut self.fd, -1);
        if self.generation != generation() {
            // Inherited through fork: the atfork handler closed it already.
            return Ok(());
        }
        let mut result = Ok(());
        if delete {
            result = delete_lock_file(fd, path);
        }
        let _ = self.backend.unlock(fd);
        close_in(st, fd);
        result
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        if self.fd >= 0 && self.generation == generation() {
            let _ = self.backend.unlock(self.fd);
            close_fd(self.fd);
        }
    }
}

fn delete_lock_file(fd: RawFd, path: &StorePath) -> Result<()> {
    if let Some(e) = crate::fault::injected(crate::fault::Point::TokenWrite) {
        return Err(Error::from_io(path.lock_path(), "write deletion token", e));
    }
    // SAFETY: writing one byte from a static buffer to an fd we own.
    let n = unsafe { libc::write(fd, b"d".as_ptr().cast(), 1) };
    if n != 1 {
        let e = if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::from_raw_os_error(libc::EIO)
        };
        return Err(Error::from_io(path.lock_path(), "write deletion token", e));
    }
    crate::fault::crash_point(crate::fault::Point::CrashAfterToken);
    // SAFETY: the path is a valid NUL-terminated string.
    if unsafe { libc::unlink(path.lock_cstr().as_ptr()) } == -1 {
        let e = io::Error::last_os_error();
        // Undo the token so the file stays usable as a live lock file.
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::ftruncate(fd, 0) };
        return Err(Error::from_io(path.lock_path(), "unlink", e));
    }
    Ok(())
}

fn lock_blocking(backend: Backend, fd: RawFd) -> io::Result<()> {
    loop {
        match backend.lock_wait(fd) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue, // L6
            r => return r,
        }
    }
}

fn stat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The previous holder deleted the file: unlinked, or the token "d" written.
/// A lock file that is still linked but carries the deletion token was left
/// by a holder that died between writing the token and unlinking (we write
/// first, see [`LockFile::release`]; guix-daemon unlinks first, so it never
/// leaves such a file). We hold its lock now, so nobody else can be
/// deleting it: finish the deletion, so that the next open creates a fresh
/// file instead of finding this one stale for ever (G7). The path is
/// unlinked only if it still names the locked inode. If the unlink fails
/// (e.g. a read-only store), the bounded retry reports the file.
fn finish_interrupted_deletion(path: &StorePath, locked: &libc::stat) {
    if locked.st_nlink == 0 || locked.st_size == 0 {
        return;
    }
    // SAFETY: an all-zero stat is valid; lstat fills it from a NUL-terminated path.
    let mut now: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::lstat(path.lock_cstr().as_ptr(), &mut now) } != 0
        || key_of(&now) != key_of(locked)
    {
        return;
    }
    if crate::fault::injected(crate::fault::Point::FinishDeletion).is_some() {
        return;
    }
    // SAFETY: unlinking a NUL-terminated path whose lock we hold.
    unsafe { libc::unlink(path.lock_cstr().as_ptr()) };
}

fn is_stale(st: &libc::stat) -> bool {
    st.st_nlink == 0 || st.st_size != 0
}

fn key_of(st: &libc::stat) -> FileKey {
    FileKey::of_stat(st)
}

/// Opens (creating if needed) `path.lock` with `O_RDWR|O_CREAT|O_CLOEXEC|O_NOFOLLOW`,
/// mode 0600, after checking the store directory, and tracks the descriptor
/// so that fork children close it.
pub(crate) fn open_lock_file(path: &StorePath) -> Result<RawFd> {
    ensure_installed();
    // Open under the process lock so that a concurrent fork either sees the
    // descriptor tracked or does not inherit it at all.
    STATE.with(|st| open_in(st, path))
}

/// [`open_lock_file`], with the process lock already held.
fn open_in(st: &mut State, path: &StorePath) -> Result<RawFd> {
    if let Some(e) = crate::fault::injected(crate::fault::Point::OpenNoSpace) {
        return Err(Error::from_io(path.lock_path(), "open", e));
    }
    super::store_dir::check_cached(st, path)?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: the path is NUL-terminated; mode is passed as the variadic argument.
    let fd = unsafe { libc::open(path.lock_cstr().as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(Error::from_io(
            path.lock_path(),
            "open",
            io::Error::last_os_error(),
        ));
    }
    process::track_fd(st, fd);
    Ok(fd)
}

/// Untracks and closes a lock descriptor.
pub(crate) fn close_fd(fd: RawFd) {
    STATE.with(|st| close_in(st, fd));
}

/// [`close_fd`], with the process lock already held.
fn close_in(st: &mut State, fd: RawFd) {
    st.fds.remove(&fd);
    // SAFETY: closing a descriptor this library opened and still owns.
    unsafe { libc::close(fd) };
}

fn stale_exhausted(path: &StorePath) -> Error {
    Error::StaleRetriesExhausted {
        path: path.lock_path().to_path_buf(),
        attempts: MAX_STALE_ATTEMPTS,
    }
}
