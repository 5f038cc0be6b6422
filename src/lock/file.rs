//! One lock file `P.lock`, following the daemon's lock-file protocol.

use std::io;
use std::os::unix::io::RawFd;

use super::backend::Backend;
use super::path::StorePath;
use super::registry::{Owner, Registry, State, STATE};
use crate::base::generation;
use crate::error::{Error, Result};
use crate::fault::{crash_point, injected, Point};
use crate::inspect::FileKey;

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
    /// it has been unlinked (`st_nlink == 0`) or carries the deletion mark
    /// (`st_size != 0`), its previous holder deleted it, so it is closed,
    /// re-opened and locked again, at most [`MAX_STALE_ATTEMPTS`] times. A
    /// file that is not a lock file we may use (not regular, more than one
    /// link, a foreign owner) is refused with [`Error::ForeignLockFile`] (L11).
    ///
    /// It waits for whoever holds the lock, including another lock set of
    /// this process (the scheduler's wait threads rely on that). A caller
    /// that must not wait for its own process checks first, as a lock set
    /// pass does ([`LockFile::try_registered`] reports such a lock).
    ///
    /// A wait may be abandoned: before opening the file, and again before
    /// re-opening it after the previous holder deleted it, `cancelled` is
    /// asked, and `Ok(None)` is the answer if it says so. A wait nobody wants
    /// any more thus never creates a lock file (nor re-creates one its holder
    /// just deleted).
    pub(crate) fn acquire_blocking(
        path: &StorePath,
        backend: Backend,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Self>> {
        for _ in 0..MAX_STALE_ATTEMPTS {
            if cancelled() {
                return Ok(None);
            }
            // Opened under the process lock, so that a concurrent fork
            // either sees the descriptor tracked or does not inherit it.
            let (fd, dir_owner) = STATE.with(|st| open_in(st, path))?;
            let granted = backend
                .lock_wait(fd)
                .map_err(|e| Error::from_io(path.lock_path(), "lock", e))
                .and_then(|()| check_granted(path, fd, dir_owner));
            if let Ok(Some(key)) = granted {
                return Ok(Some(LockFile::new(fd, backend, key)));
            }
            let _ = backend.unlock(fd);
            STATE.with(|st| st.registry.close(fd));
            granted?; // stale: open it again
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
    ///
    /// `free_first` are paths that no lock set of this process may hold
    /// (G5's fast path, by name): they are checked at the start of the same
    /// critical section, before anything is opened, and the first one held
    /// is [`Error::HeldByThisProcess`].
    pub(crate) fn try_registered(
        path: &StorePath,
        backend: Backend,
        owner: Owner,
        free_first: &[StorePath],
    ) -> Result<Acquired> {
        for _ in 0..MAX_STALE_ATTEMPTS {
            let attempt = STATE.with(|st| -> Result<Option<Acquired>> {
                st.registry.check_free(free_first)?;
                let (fd, dir_owner) = open_in(st, path)?;
                let got = match backend.try_lock(fd) {
                    Err(e) => Err(Error::from_io(path.lock_path(), "lock", e)),
                    Ok(false) => stat(fd)
                        .map_err(|e| Error::from_io(path.lock_path(), "fstat", e))
                        .map(|s| {
                            let key = FileKey::of_stat(&s);
                            let held = st.registry.owner_of_inode(key);
                            Some(held.map_or(Acquired::Busy, |o| Acquired::HeldHere(o, key)))
                        }),
                    Ok(true) => match check_granted(path, fd, dir_owner) {
                        Ok(Some(key)) => {
                            st.registry.register(path, key, owner);
                            return Ok(Some(Acquired::Locked(LockFile::new(fd, backend, key))));
                        }
                        r => {
                            let _ = backend.unlock(fd);
                            r.map(|_| None) // stale: open it again
                        }
                    },
                };
                st.registry.close(fd);
                got
            })?;
            if let Some(a) = attempt {
                return Ok(a);
            }
        }
        Err(stale_exhausted(path))
    }

    fn new(fd: RawFd, backend: Backend, key: FileKey) -> LockFile {
        LockFile {
            fd,
            backend,
            generation: generation(),
            key,
        }
    }

    /// The identity of the locked inode.
    pub(crate) fn key(&self) -> FileKey {
        self.key
    }

    /// The descriptor (for the registry's checks).
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Releases the lock. With `delete`, the lock file is deleted first, in
    /// the order of guix-daemon and Nix, then unlocked and closed:
    ///
    /// 1. if `P.lock` still names the locked inode (`lstat`, device and
    ///    inode compared), it is unlinked;
    /// 2. the inode, still locked, is marked non-empty, so that a peer
    ///    blocked on it that checks only `st_size` (guix-daemon) sees it is
    ///    stale: the token `"d"` is written, and if that fails (`ENOSPC`,
    ///    `EDQUOT`) the file is extended to one byte with `ftruncate`, which
    ///    needs no data block.
    ///
    /// A crash at any instant leaves at worst what a crash of guix-daemon
    /// at the same instant leaves, and never a linked file carrying the
    /// token (which old daemons would spin on for ever). Between 1 and 2 the
    /// inode is unlinked and empty: goalkeeper's waiters see `st_nlink == 0`,
    /// an `st_size`-only peer would take it for live. If the unlink fails,
    /// nothing is written and the file stays a live lock file; if both marks
    /// fail, the error says so (the inode cannot be re-linked). An inode
    /// that is still linked after step 1 (someone made another hard link to
    /// it while it was held) is not marked: [`Error::ForeignLockFile`].
    ///
    /// The lock is always released, even when an error is returned; the error
    /// then says that the file could not be deleted, or not marked.
    pub(crate) fn release(self, path: &StorePath, delete: bool) -> Result<()> {
        STATE.with(|st| self.release_in(&mut st.registry, path, delete))
    }

    /// [`LockFile::release`], with the process lock already held: a caller
    /// can update the registry in the same step, so that no other thread
    /// sees the lock released but registered, or registered but released.
    pub(crate) fn release_in(
        mut self,
        registry: &mut Registry,
        path: &StorePath,
        delete: bool,
    ) -> Result<()> {
        let fd = std::mem::replace(&mut self.fd, -1);
        if self.generation != generation() {
            // Inherited through fork: the atfork handler closed it already.
            return Ok(());
        }
        let result = if delete {
            delete_lock_file(fd, self.key, path)
        } else {
            Ok(())
        };
        let _ = self.backend.unlock(fd);
        registry.close(fd);
        result
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        if self.fd >= 0 && self.generation == generation() {
            let _ = self.backend.unlock(self.fd);
            STATE.with(|st| st.registry.close(self.fd));
        }
    }
}

fn delete_lock_file(fd: RawFd, key: FileKey, path: &StorePath) -> Result<()> {
    crash_point(Point::CrashBeforeUnlink);
    // Unlink the name only if it still names the inode we hold: never remove
    // a file someone else put there. A name that is gone or names another
    // file no longer leads to our inode, which is then marked all the same
    // for whoever is blocked on it.
    match key_at(path) {
        Ok(now) if now == key => {
            // SAFETY: the path is a valid NUL-terminated string.
            if unsafe { libc::unlink(path.lock_cstr().as_ptr()) } == -1 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    // Nothing written: the file stays a live lock file.
                    return Err(Error::from_io(path.lock_path(), "unlink", e));
                }
            }
        }
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(Error::from_io(path.lock_path(), "lstat before unlink", e)),
    }
    crash_point(Point::CrashAfterUnlink);
    // Only an inode no name leads to is marked: a linked file carrying the
    // mark is what old daemons spin on for ever. One link is all it had at
    // acquisition; another made since (by whoever may link other users'
    // files) keeps it unmarked, and the release says so.
    match stat(fd) {
        Ok(st) if st.st_nlink == 0 => {}
        Ok(st) => {
            return Err(Error::ForeignLockFile {
                path: path.lock_path().to_path_buf(),
                reason: format!(
                    "it gained {} other hard link(s) while it was held, so it was not marked \
                     as deleted",
                    st.st_nlink
                ),
            })
        }
        Err(e) => return Err(Error::from_io(path.lock_path(), "fstat before the mark", e)),
    }
    mark_deleted(fd, path)?;
    crash_point(Point::CrashAfterMark);
    Ok(())
}

/// Marks the unlinked, still locked inode as deleted for peers that check
/// only `st_size`: the token `"d"`, or one byte of file size if the write
/// fails. The inode is the one this process locked and found to be a lock
/// file at acquisition (regular, one link, an expected owner; L11).
fn mark_deleted(fd: RawFd, path: &StorePath) -> Result<()> {
    let written = match injected(Point::TokenWrite) {
        Some(_) => false,
        None => loop {
            // SAFETY: writing one byte from a static buffer to an fd we own.
            let n = unsafe { libc::pwrite(fd, b"d".as_ptr().cast(), 1, 0) };
            if n == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break n == 1;
        },
    };
    if written {
        return Ok(());
    }
    // Extending a file needs no data block, so this works where the write
    // failed for want of space.
    let e = match injected(Point::MarkTruncate) {
        Some(e) => e,
        // SAFETY: plain syscall on an fd we own.
        None if unsafe { libc::ftruncate(fd, 1) } == 0 => return Ok(()),
        None => io::Error::last_os_error(),
    };
    Err(Error::from_io(
        path.lock_path(),
        "mark the unlinked lock file as deleted (writing \"d\" and ftruncate both failed; \
         a peer that checks only st_size may take it for a live lock)",
        e,
    ))
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

/// Judges a file whose lock was just granted on `fd`, from its `fstat`:
/// the inode's key if it is a live lock file; `None` if it is stale
/// (deleted by its previous holder: open the path again), and an error for
/// a file we may not use. Unless it is live, the caller unlocks and closes
/// the descriptor.
///
/// An unlinked file is stale. A linked one must be a lock file we may use
/// (L11: regular, one link, owned by this process's effective user or by the
/// store directory's owner, `dir_owner`; anything else is refused without a
/// write). A linked lock file that is not empty carries the deletion token:
/// stale, and its deletion is finished.
fn check_granted(path: &StorePath, fd: RawFd, dir_owner: libc::uid_t) -> Result<Option<FileKey>> {
    let st = stat(fd).map_err(|e| Error::from_io(path.lock_path(), "fstat", e))?;
    if st.st_nlink == 0 {
        return Ok(None);
    }
    let refuse = |reason: String| {
        Err(Error::ForeignLockFile {
            path: path.lock_path().to_path_buf(),
            reason,
        })
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return refuse(format!("not a regular file (mode {:o})", st.st_mode));
    }
    if st.st_nlink > 1 {
        return refuse(format!(
            "it has {} hard links, a lock file has one (a link to another file planted here?)",
            st.st_nlink
        ));
    }
    if st.st_uid != dir_owner {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me {
            return refuse(format!(
                "owned by uid {}, neither this process's user (uid {me}) nor the store \
                 directory's owner (uid {dir_owner})",
                st.st_uid
            ));
        }
    }
    if st.st_size != 0 {
        finish_interrupted_deletion(path, FileKey::of_stat(&st));
        return Ok(None);
    }
    Ok(Some(FileKey::of_stat(&st)))
}

/// A lock file that is still linked but carries the deletion token was left
/// by a holder that died between writing the token and unlinking: earlier
/// versions of goalkeeper wrote first (today's order, unlink then mark, is
/// in [`LockFile::release`]), and so may other programs. guix-daemon spins
/// on such a file for ever. We hold its lock now, so nobody else can be
/// deleting it: finish the deletion, so that the next open creates a fresh
/// file instead of finding this one stale for ever (G7). The path is
/// unlinked only if it still names the locked inode. If the unlink fails
/// (e.g. a read-only store), the bounded retry reports the file.
fn finish_interrupted_deletion(path: &StorePath, locked: FileKey) {
    match key_at(path) {
        Ok(now) if now == locked => {}
        _ => return,
    }
    if injected(Point::FinishDeletion).is_some() {
        return;
    }
    // SAFETY: unlinking a NUL-terminated path whose lock we hold.
    unsafe { libc::unlink(path.lock_cstr().as_ptr()) };
}

/// The key of the file that `path.lock` names now, without following a
/// link. Read with lstat(2), as a held lock's key is read with fstat(2):
/// both sides of the comparison come from the same `struct stat` (under
/// Miri, std's metadata and libc's stat disagree on the inode).
fn key_at(path: &StorePath) -> io::Result<FileKey> {
    // SAFETY: an all-zero stat is a valid value; lstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live stat buffer.
    if unsafe { libc::lstat(path.lock_cstr().as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FileKey::of_stat(&st))
}

/// Opens (creating if needed) `path.lock` with `O_RDWR|O_CREAT|O_CLOEXEC|O_NOFOLLOW`,
/// mode 0600, after checking the store directory, and tracks the descriptor
/// so that fork children close it (the caller holds the process lock).
/// Returns the descriptor and the store directory's owner.
fn open_in(st: &mut State, path: &StorePath) -> Result<(RawFd, libc::uid_t)> {
    if let Some(e) = injected(Point::OpenNoSpace) {
        return Err(Error::from_io(path.lock_path(), "open", e));
    }
    let dir_owner = st.dirs.check(path)?;
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
    st.registry.track(fd);
    Ok((fd, dir_owner))
}

fn stale_exhausted(path: &StorePath) -> Error {
    Error::StaleRetriesExhausted {
        path: path.lock_path().to_path_buf(),
        attempts: MAX_STALE_ATTEMPTS,
    }
}
