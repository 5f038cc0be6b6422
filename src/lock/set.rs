//! Lock sets: a sorted, deduplicated set of store paths, locked all or nothing.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::file::{Acquired, LockFile};
use super::path::{normalize_set, StorePath};
use super::registry::{Owner, STATE};
use super::wait::LockWait;
use crate::base::generation;
use crate::error::{Error, Result};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Allocates a process-unique lock-set id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The locks on a set of store paths, all held.
///
/// Acquisition is all or nothing, in sorted path order (G2): a try that finds
/// path *k* busy releases paths 1..*k*−1 before it returns, and a blocking
/// acquisition gives up everything it holds before it blocks.
///
/// [`LockSet::release`] is the way to release. `Drop` releases too, as a
/// safety net, never with deletion.
#[derive(Debug)]
pub struct LockSet {
    id: u64,
    owner: Owner,
    backend: Backend,
    /// The paths, sorted; `files[i]` is the lock of `paths[i]`.
    paths: Vec<StorePath>,
    files: Vec<LockFile>,
    delete: bool,
    generation: u64,
}

/// How long an acquisition may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Never block: report [`Error::Busy`] at once.
    Try,
    /// Block until every lock is held.
    Forever,
    /// Block at most this long, then report [`Error::TimedOut`].
    Timeout(Duration),
}

/// What one pass over a set's paths found: the set, all held; or, when a
/// path was busy, the paths (handed back) and the busy path's index. The
/// pass then holds nothing.
pub(crate) type Pass = std::result::Result<LockSet, (Vec<StorePath>, usize)>;

impl LockSet {
    /// Tries to lock every path in `paths` without blocking.
    ///
    /// Errors: [`Error::Busy`] (another process holds one), [`Error::HeldByThisProcess`],
    /// [`Error::InvalidPath`], [`Error::InvalidArgument`] (empty set), and the I/O errors.
    pub fn try_acquire<I, P>(paths: I, backend: Backend) -> Result<LockSet>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<OsStr>,
    {
        Self::acquire(paths, backend, WaitMode::Try)
    }

    /// Locks every path in `paths`, waiting as `wait` allows.
    pub fn acquire<I, P>(paths: I, backend: Backend, wait: WaitMode) -> Result<LockSet>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<OsStr>,
    {
        Self::acquire_normalized(normalize_set(paths)?, backend, wait)
    }

    /// Like [`LockSet::acquire`], for paths already validated, sorted and
    /// deduplicated (see [`normalize_set`]).
    ///
    /// Each pass tries every path without blocking; when path `k` is busy,
    /// the pass has released everything, and the acquisition waits for that
    /// path alone, holding nothing else (G2), then makes the next pass with
    /// its lock in hand, until a pass takes every path or the deadline passes.
    pub fn acquire_normalized(
        paths: Vec<StorePath>,
        backend: Backend,
        wait: WaitMode,
    ) -> Result<LockSet> {
        let owner = Owner::lockset(next_id());
        let start = Instant::now();
        // A deadline too far away for `Instant` to represent (e.g.
        // `Duration::MAX`) is no deadline at all: wait as long as it takes.
        let deadline = match wait {
            WaitMode::Timeout(d) => start.checked_add(d),
            _ => None,
        };
        let mut pass = Self::try_for_owner(owner, paths, backend, None)?;
        loop {
            let (paths, k) = match pass {
                Ok(set) => return Ok(set),
                Err(busy) => busy,
            };
            let busy = &paths[k];
            let in_hand = match (wait, deadline) {
                (WaitMode::Try, _) => {
                    return Err(Error::Busy {
                        path: busy.as_path().to_path_buf(),
                    })
                }
                (WaitMode::Timeout(_), Some(deadline)) => {
                    let w = LockWait::spawn(busy.clone(), backend, None)?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    match w.wait_timeout(left) {
                        Some(r) => r?,
                        None => {
                            return Err(Error::TimedOut {
                                path: busy.as_path().to_path_buf(),
                                waited_ms: start.elapsed().as_millis() as u64,
                            })
                        }
                    }
                }
                _ => LockFile::acquire_blocking(busy, backend, &|| false)?.expect("not cancelled"),
            };
            pass = Self::try_for_owner(owner, paths, backend, Some((k, in_hand)))?;
        }
    }

    /// One all-or-nothing, non-blocking pass over `paths` (sorted,
    /// deduplicated) for `owner`: how the scheduler takes a goal's output
    /// locks. Try-locks the paths in order, registering each lock (path and
    /// inode) to `owner` at the moment the kernel grants it, so that the
    /// registry names exactly what this process holds (G5, G6). A lock
    /// `in_hand` (index, lock), granted by a [`LockWait`], is registered
    /// first. On the first busy path `k`, releases what the pass holds and
    /// returns `Ok(Err((paths, k)))`.
    ///
    /// Paths are not reserved before they are locked: a thread that merely
    /// tries a path does not make it "held by this process" for other
    /// threads, and a blocking acquisition never fails because of such an
    /// attempt.
    pub(crate) fn try_for_owner(
        owner: Owner,
        paths: Vec<StorePath>,
        backend: Backend,
        mut in_hand: Option<(usize, LockFile)>,
    ) -> Result<Pass> {
        let id = owner.lockset;
        // G5's fast path, a path held by a set of this process (by name), is
        // checked for every path before anything is opened: in the first path's
        // critical section, or, with a lock in hand, in the section that
        // registers it (we hold its kernel lock, so no other set of ours can).
        let mut check_first: &[StorePath] = &paths;
        if let Some((k, f)) = &in_hand {
            STATE.with(|st| {
                st.registry.check_free(&paths)?;
                st.registry.register(&paths[*k], f.key(), owner);
                Ok::<_, Error>(())
            })?;
            check_first = &[];
        }
        let mut got = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            if in_hand.as_ref().is_some_and(|(k, _)| *k == i) {
                got.push(in_hand.take().expect("checked").1);
                continue;
            }
            let failure = match LockFile::try_registered(p, backend, owner, check_first) {
                Ok(Acquired::Locked(f)) => {
                    got.push(f);
                    check_first = &[];
                    continue;
                }
                Ok(Acquired::Busy) => Ok(i),
                Ok(Acquired::HeldHere(o, key)) if o.lockset == id => {
                    // This very pass holds the same file under another name (a
                    // store directory reached through a link). Waiting for it
                    // would wait for ourselves (G5).
                    let j = got
                        .iter()
                        .position(|f| f.key() == key)
                        .or(in_hand.as_ref().map(|(k, _)| *k))
                        .unwrap_or(i);
                    let msg = format!("{} and {} name the same lock file", paths[j], paths[i]);
                    Err(Error::InvalidArgument(msg))
                }
                Ok(Acquired::HeldHere(o, _)) => Err(o.held_error(p)),
                Err(e) => Err(e),
            };
            // L8: release what this pass holds (never deleting): the paths
            // before `i`, and the lock in hand if it was not reached.
            let extra = in_hand.take().map(|(k, f)| (&paths[k], f));
            let _ = release_locks(id, paths.iter().zip(got).chain(extra), false, false);
            return failure.map(|k| Err((paths, k)));
        }
        Ok(Ok(LockSet {
            id,
            owner,
            backend,
            paths,
            files: got,
            delete: false,
            generation: generation(),
        }))
    }

    /// The set's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who holds the set (for registry entries and messages).
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The backend the set was taken with.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The locked store paths, sorted.
    pub fn paths(&self) -> impl ExactSizeIterator<Item = &StorePath> + Clone {
        self.paths.iter()
    }

    /// Number of paths in the set.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// `true` if the set holds no path (only after release).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether release will delete the lock files (allowed once the paths are valid).
    pub fn set_deletion(&mut self, delete: bool) {
        self.delete = delete;
    }

    /// Whether release will delete the lock files.
    pub fn deletion(&self) -> bool {
        self.delete
    }

    /// Releases every lock, deleting the lock files if [`LockSet::set_deletion`]
    /// asked for it. The locks are always released; an error reports a lock
    /// file that could not be deleted (it is then left in place, unlocked).
    pub fn release(self) -> Result<()> {
        self.release_checked(false)
    }

    /// [`LockSet::check`] and [`LockSet::release`] together, path by path,
    /// each path's check and release in one critical section of the process
    /// lock (the C ABI's release does both). Every lock is released even when
    /// a check fails; the first check error comes first, then the first
    /// release error.
    pub fn check_and_release(self) -> Result<()> {
        self.release_checked(true)
    }

    fn release_checked(mut self, check: bool) -> Result<()> {
        let files = std::mem::take(&mut self.files);
        if self.generation != generation() {
            return Err(Error::WrongProcess("this lock set")); // the atfork handler closed them
        }
        release_locks(self.id, self.paths.iter().zip(files), self.delete, check)
    }

    /// Checks this set's ledger invariants (G6): the set belongs to this
    /// process, every path and its lock file's inode are registered to this
    /// set, and every descriptor is tracked as open. O(paths in the set).
    pub fn check(&self) -> Result<()> {
        if self.generation != generation() {
            return Err(Error::WrongProcess("this lock set"));
        }
        STATE.with(|st| {
            for (p, f) in self.paths.iter().zip(&self.files) {
                st.registry.check(self.id, p, (f.key(), f.fd()), false)?;
            }
            Ok(())
        })
    }

    /// The keys and descriptors of the set's lock files (for the tests that
    /// corrupt the registry on purpose).
    #[cfg(test)]
    pub(crate) fn lock_files(&self) -> Vec<(crate::inspect::FileKey, std::os::unix::io::RawFd)> {
        self.files.iter().map(|f| (f.key(), f.fd())).collect()
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        if !self.files.is_empty() && self.generation == generation() {
            let files = std::mem::take(&mut self.files);
            let _ = release_locks(self.id, self.paths.iter().zip(files), false, false);
        }
    }
}

/// Releases `locks` (path, lock) of lock set `id`, each together with its
/// registry entries (path and inode) in one step under the process lock.
/// So another thread never finds a lock released but still registered (a
/// false "held by this process"), nor registered no more but still locked
/// (a false "busy, another process"), and a deleted lock file's inode
/// number, which the file system may reuse at once, is unregistered before
/// it is freed. With `check`, each path is checked in the same step
/// ([`LockSet::check`]'s checks, from what the registry held when the step
/// began). Every lock is released even when one fails; the first check
/// error comes first, then the first release error.
fn release_locks<'p>(
    id: u64,
    locks: impl IntoIterator<Item = (&'p StorePath, LockFile)>,
    delete: bool,
    check: bool,
) -> Result<()> {
    let (mut check_err, mut release_err) = (None, None);
    for (p, f) in locks {
        let (released, checked) = STATE.with(|st| {
            let checked = st.registry.check(id, p, (f.key(), f.fd()), true);
            (f.release_in(&mut st.registry, p, delete), checked)
        });
        if check && check_err.is_none() {
            check_err = checked.err();
        }
        if release_err.is_none() {
            release_err = released.err();
        }
    }
    check_err.or(release_err).map_or(Ok(()), Err)
}
