//! Lock sets: a sorted, deduplicated set of store paths, locked all or nothing.

use smallvec::SmallVec;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::file::{Acquired, LockFile};
use super::path::{normalize_set, StorePath};
use super::process::{generation, State, STATE};
use super::registry::{check_free, Owner};
use super::wait::LockWait;
use crate::error::{Error, Hot, Result};

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
    /// The paths, sorted; `files[i]` is the lock of `paths[i]` (two parallel
    /// vectors: the set keeps the vector of paths it was given).
    paths: Paths,
    files: Files,
    delete: bool,
    generation: u64,
}

/// The paths of a lock set, sorted and deduplicated. A set of one path (the
/// common call) keeps its path inline, without a heap allocation.
pub(crate) type Paths = SmallVec<[StorePath; 1]>;

/// The locks of a set, in path order (one inline, as [`Paths`]).
type Files = SmallVec<[LockFile; 1]>;

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
    pub fn acquire_normalized(
        paths: Vec<StorePath>,
        backend: Backend,
        wait: WaitMode,
    ) -> Result<LockSet> {
        Self::acquire_paths(paths.into(), backend, wait).map(|set| *set)
    }

    /// [`LockSet::acquire_normalized`] for paths held in a [`Paths`] (the C
    /// ABI passes a single path inline), boxed. The set is built in its box
    /// and stays there: the C ABI's handle table keeps the box, so the set
    /// is never copied on the way (a set is ~120 bytes).
    ///
    /// The uncontended pass is forced inline into the caller, down to the
    /// system calls (`try_once`, `LockFile::try_registered`, `open_in`,
    /// `Backend::try_lock`, and on release `release_one` and
    /// `LockFile::release_in`), and the contended rest is out of line: so a
    /// C ABI lock cycle runs in one stack frame of the library. On the
    /// machines measured, the return out of every frame that was live across
    /// a system call is mispredicted, ~7-10 ns each, and the cycle's five
    /// system calls under six nested frames cost more than all the rest of
    /// its bookkeeping (doc/design.md#7-measured-limits).
    #[inline(always)]
    pub(crate) fn acquire_paths(
        paths: Paths,
        backend: Backend,
        wait: WaitMode,
    ) -> Result<Box<LockSet>> {
        let id = next_id();
        let owner = Owner::lockset(id);
        // Only a timeout reads the clock (a try or an unbounded wait does not
        // need it; it is a measurable share of an uncontended lock cycle).
        let start = matches!(wait, WaitMode::Timeout(_)).then(Instant::now);
        match try_once(id, owner, paths, backend, None)? {
            Ok(set) => Ok(set),
            Err((paths, k)) => Self::acquire_contended(id, paths, k, backend, wait, start),
        }
    }

    /// The rest of [`LockSet::acquire_paths`] after its first pass found
    /// path `k` busy: fails at once for a try; otherwise waits for that path
    /// alone, holding nothing else (G2), and makes the next pass with it in
    /// hand, until a pass takes every path or the deadline (from `start`)
    /// passes. Out of line: the uncontended cycle never runs it.
    #[cold]
    #[inline(never)]
    fn acquire_contended(
        id: u64,
        mut paths: Paths,
        mut k: usize,
        backend: Backend,
        wait: WaitMode,
        start: Option<Instant>,
    ) -> Result<Box<LockSet>> {
        let owner = Owner::lockset(id);
        // A deadline too far away for `Instant` to represent (e.g.
        // `Duration::MAX`) is no deadline at all: wait as long as it takes.
        let deadline = match (wait, start) {
            (WaitMode::Timeout(d), Some(start)) => start.checked_add(d),
            _ => None,
        };
        let wait = match (wait, deadline) {
            (WaitMode::Timeout(_), None) => WaitMode::Forever,
            (w, _) => w,
        };
        loop {
            let busy = &paths[k];
            let waited_ms = |_: ()| start.map_or(0, |s| s.elapsed().as_millis() as u64);
            let in_hand = match (wait, deadline) {
                (WaitMode::Try, _) => {
                    return Err(Error::Busy {
                        path: busy.as_path().to_path_buf(),
                    })
                }
                (WaitMode::Forever, _) => (k, LockFile::acquire_blocking(busy, backend)?),
                (WaitMode::Timeout(_), Some(deadline)) => {
                    let w = LockWait::spawn(busy.clone(), backend, None)?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    match w.wait_timeout(left) {
                        Some(r) => (k, r?),
                        None => {
                            return Err(Error::TimedOut {
                                path: busy.as_path().to_path_buf(),
                                waited_ms: waited_ms(()),
                            })
                        }
                    }
                }
                (WaitMode::Timeout(_), None) => unreachable!("deadline set above"),
            };
            match try_once(id, owner, paths, backend, Some(in_hand))? {
                Ok(set) => return Ok(set),
                Err((returned, busy)) => (paths, k) = (returned, busy),
            }
        }
    }

    /// Builds a lock set for a scheduler goal: one non-blocking pass over
    /// `paths` (sorted, deduplicated), with `in_hand` (index, lock) already
    /// granted by a [`LockWait`]. On contention, everything is released and
    /// `Ok(Err((paths, k)))` names the busy index; the paths are handed back.
    /// The set comes in the box the goal keeps it in.
    #[allow(dead_code)] // used by the scheduler
    #[allow(clippy::type_complexity)]
    pub(crate) fn try_for_owner(
        owner: Owner,
        paths: Vec<StorePath>,
        backend: Backend,
        in_hand: Option<(usize, LockFile)>,
    ) -> Result<std::result::Result<Box<LockSet>, (Vec<StorePath>, usize)>> {
        Ok(
            try_once(owner.lockset, owner, paths.into(), backend, in_hand)?
                .map_err(|(paths, k)| (paths.into_vec(), k)),
        )
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
    pub fn release(mut self) -> Result<()> {
        if self.generation != generation() {
            self.files.clear(); // the atfork handler closed the descriptors
            return Err(Error::WrongProcess("this lock set"));
        }
        Ok(self.release_inner(false)?)
    }

    /// [`LockSet::check`] and [`LockSet::release`] together, path by path,
    /// each path's check and release in one critical section of the process
    /// lock (the C ABI's release does both). Every lock is released even when
    /// a check fails; the first check error comes first, then the first
    /// release error.
    pub fn check_and_release(mut self) -> Result<()> {
        Ok(self.check_and_release_in_place()?)
    }

    /// [`LockSet::check_and_release`] for a set that stays where it is (the
    /// C ABI's, in its box): it is left empty, and its drop does nothing.
    #[inline(always)]
    pub(crate) fn check_and_release_in_place(&mut self) -> Hot<()> {
        if self.generation != generation() {
            self.files.clear(); // the atfork handler closed the descriptors
            return Err(Box::new(Error::WrongProcess("this lock set")));
        }
        self.release_inner(true)
    }

    #[inline(always)]
    fn release_inner(&mut self, check: bool) -> Hot<()> {
        if let ([p], 1) = (&self.paths[..], self.files.len()) {
            // One path (the common call): the same step, without the loop.
            let f = self.files.pop().expect("one lock");
            return release_one(self.id, p, f, self.delete, check).map_err(|f| f.error);
        }
        let files = std::mem::take(&mut self.files);
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
            for (p, f) in self.paths.iter().zip(self.files.iter()) {
                check_one(st, self.id, p, f)?;
            }
            Ok(())
        })
    }
}

/// The checks of [`LockSet::check`] for path `p` of lock set `id`, with the
/// process lock held.
fn check_one(st: &State, id: u64, p: &StorePath, f: &LockFile) -> Result<()> {
    let path_owner = st.held.get(p).copied();
    let inode_owner = st.held_inodes.get(&f.key()).copied();
    verdict(
        id,
        p,
        f.fd(),
        path_owner,
        inode_owner,
        st.fds.contains(f.fd()),
    )
}

/// The verdict of the checks of path `p` of lock set `id`, from what the
/// registry says: the owner of the path, the owner of its lock file's
/// inode, and whether its descriptor `fd` is tracked as open.
#[inline]
fn verdict(
    id: u64,
    p: &StorePath,
    fd: std::os::unix::io::RawFd,
    path_owner: Option<Owner>,
    inode_owner: Option<Owner>,
    fd_open: bool,
) -> Result<()> {
    if path_owner.is_some_and(|o| o.lockset == id)
        && inode_owner.is_some_and(|o| o.lockset == id)
        && fd_open
    {
        return Ok(());
    }
    Err(violation(id, p, fd, path_owner, inode_owner))
}

/// The first failed check of [`verdict`], as an error.
#[cold]
#[inline(never)]
fn violation(
    id: u64,
    p: &StorePath,
    fd: std::os::unix::io::RawFd,
    path_owner: Option<Owner>,
    inode_owner: Option<Owner>,
) -> Error {
    Error::Invariant(match path_owner {
        None => format!("{p} is held by lock set {id} but missing from the registry"),
        Some(o) if o.lockset != id => {
            format!("{p} is held by lock set {id} but the registry names {o}")
        }
        Some(_) if inode_owner.is_none_or(|o| o.lockset != id) => {
            format!("{p}: the inode of its lock file is not registered to lock set {id}")
        }
        Some(_) => format!("{p}: descriptor {fd} of lock set {id} is not open"),
    })
}

/// Removes `key`'s entry from `map` if it names lock set `id`; returns the
/// owner the entry named, if any (an entry of another owner stays).
#[inline]
fn take_if_mine<K: std::hash::Hash + Eq>(
    map: &mut std::collections::HashMap<K, Owner, impl std::hash::BuildHasher>,
    key: &K,
    id: u64,
) -> Option<Owner> {
    match map.remove_entry(key) {
        Some((k, o)) if o.lockset != id => {
            map.insert(k, o);
            Some(o)
        }
        found => found.map(|(_, o)| o),
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        if !self.files.is_empty() && self.generation == generation() {
            self.delete = false;
            let _ = self.release_inner(false);
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
/// ([`LockSet::check`]'s checks: its registry entries name this set, and
/// its descriptor is tracked as open), from what the registry held when the
/// step began. Every lock is released even when one fails; the first check
/// error comes first, then the first release error.
fn release_locks<'p>(
    id: u64,
    locks: impl IntoIterator<Item = (&'p StorePath, LockFile)>,
    delete: bool,
    check: bool,
) -> Hot<()> {
    let mut first_err = None;
    let mut check_err = None;
    for (p, f) in locks {
        if let Err(fail) = release_one(id, p, f, delete, check && check_err.is_none()) {
            if fail.check {
                check_err = Some(fail.error);
            } else {
                first_err.get_or_insert(fail.error);
            }
        }
    }
    check_err.or(first_err).map_or(Ok(()), Err)
}

/// What went wrong in one step of [`release_locks`]: its check
/// (`check`), or else its release. Boxed, so that the common outcome, none,
/// is one word.
struct Failure {
    error: Box<Error>,
    check: bool,
}

/// One step of [`release_locks`]: releases lock `f` of path `p` of lock set
/// `id` and its registry entries under the process lock; with `check`, a
/// failed check is the error, before a failed release.
#[inline(always)]
fn release_one(
    id: u64,
    p: &StorePath,
    f: LockFile,
    delete: bool,
    check: bool,
) -> std::result::Result<(), Failure> {
    let (key, fd) = (f.key(), f.fd());
    STATE.with(
        #[inline(always)]
        |st| {
            let fd_open = st.fds.contains(fd);
            let r = f.release_in(st, p, delete);
            let inode_owner = take_if_mine(&mut st.held_inodes, &key, id);
            let path_owner = take_if_mine(&mut st.held, p, id);
            if check {
                if let Err(e) = verdict(id, p, fd, path_owner, inode_owner, fd_open) {
                    return Err(Failure {
                        error: Box::new(e),
                        check: true,
                    });
                }
            }
            r.map_err(|error| Failure {
                error,
                check: false,
            })
        },
    )
}

/// One all-or-nothing pass: try-locks the paths in order, registering each
/// lock (path and inode) to `owner` at the moment the kernel grants it, so
/// that the registry names exactly what this process holds (G5, G6). A lock
/// `in_hand` (index, lock), granted by a blocking wait, is registered first.
/// On the first busy path `k`, releases 0..k and returns `Ok(Err((paths, k)))`.
///
/// Paths are not reserved before they are locked: a thread that merely tries
/// a path does not make it "held by this process" for other threads, and a
/// blocking acquisition never fails because of such an attempt.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn try_once(
    id: u64,
    owner: Owner,
    paths: Paths,
    backend: Backend,
    in_hand: Option<(usize, LockFile)>,
) -> Result<std::result::Result<Box<LockSet>, (Paths, usize)>> {
    match (&paths[..], &in_hand) {
        ([_], None) => try_single(id, owner, paths, backend),
        _ => try_many(id, owner, paths, backend, in_hand),
    }
}

/// [`try_once`] for one path and no lock in hand (the common call), inline
/// in its callers: no stack frame of its own stays live across the system
/// calls it makes (see [`LockSet::acquire_paths`]).
#[allow(clippy::type_complexity)]
#[inline(always)]
fn try_single(
    id: u64,
    owner: Owner,
    paths: Paths,
    backend: Backend,
) -> Result<std::result::Result<Box<LockSet>, (Paths, usize)>> {
    let p = &paths[0];
    let got = match LockFile::try_registered(p, backend, owner, std::slice::from_ref(p))? {
        Acquired::Locked(f) => f,
        // Another set of this process (a pass of one path cannot hold
        // it under another name).
        Acquired::HeldHere(o, _) => return Err(o.held_error(p)),
        Acquired::Busy => return Ok(Err((paths, 0))),
    };
    Ok(Ok(Box::new(LockSet {
        id,
        owner,
        backend,
        paths,
        files: Files::from_buf([got]),
        delete: false,
        generation: generation(),
    })))
}

/// [`try_once`] for several paths, or with a lock in hand.
#[allow(clippy::type_complexity)]
#[inline(never)]
fn try_many(
    id: u64,
    owner: Owner,
    paths: Paths,
    backend: Backend,
    mut in_hand: Option<(usize, LockFile)>,
) -> Result<std::result::Result<Box<LockSet>, (Paths, usize)>> {
    // G5's fast path, a path held by a set of this process (by name), is
    // checked for every path before anything is opened: in the first path's
    // critical section, or, with a lock in hand, in the section that
    // registers it (we hold its kernel lock, so no other set of ours can).
    let mut check_first: &[StorePath] = &paths;
    if let Some((k, f)) = &in_hand {
        STATE.with(|st| {
            check_free(st, &paths)?;
            st.held_inodes.insert(f.key(), owner);
            st.held.insert(paths[*k].clone(), owner);
            Ok::<_, Error>(())
        })?;
        check_first = &[];
    }
    // Releases what this pass holds (registered to `id`): paths 0..got.len()
    // and the lock in hand if it was not reached.
    let unwind = |got: Files, in_hand: Option<(usize, LockFile)>, paths: &[StorePath]| {
        let locks = paths.iter().zip(got);
        let extra = in_hand.map(|(k, f)| (&paths[k], f));
        // L8: release 1..k-1, never deleting
        let _ = release_locks(id, locks.chain(extra), false, false);
    };
    let mut got = Files::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        if let Some((k, _)) = &in_hand {
            if *k == i {
                got.push(in_hand.take().expect("checked").1);
                continue;
            }
        }
        let free_first = std::mem::take(&mut check_first);
        match LockFile::try_registered(p, backend, owner, free_first) {
            Ok(Acquired::Locked(f)) => got.push(f),
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
                unwind(got, in_hand, &paths);
                return Err(Error::InvalidArgument(msg));
            }
            Ok(Acquired::HeldHere(o, _)) => {
                unwind(got, in_hand, &paths);
                return Err(o.held_error(p));
            }
            Ok(Acquired::Busy) => {
                unwind(got, in_hand, &paths);
                return Ok(Err((paths, i)));
            }
            Err(e) => {
                unwind(got, in_hand, &paths);
                return Err(e);
            }
        }
    }
    Ok(Ok(Box::new(LockSet {
        id,
        owner,
        backend,
        paths,
        files: got,
        delete: false,
        generation: generation(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C ABI's release checks each path in the step that releases it
    /// ([`LockSet::check_and_release`]); its verdicts are those of
    /// [`LockSet::check`], and every lock is released whatever the verdict.
    /// The registry is corrupted by hand here, one way per case.
    #[test]
    #[cfg_attr(miri, ignore)] // OFD locks
    fn check_and_release_gives_the_verdicts_of_check() {
        let dir = std::env::temp_dir().join(format!("gk-set-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wants = [
            None,
            Some("missing from the registry"),
            Some("but the registry names lock set"),
            Some("the inode of its lock file is not registered"),
            Some("is not open"),
        ];
        for (case, want) in wants.into_iter().enumerate() {
            let p = StorePath::new(dir.join(format!("p{case}"))).unwrap();
            let set = LockSet::try_acquire([p.as_path()], Backend::Ofd).unwrap();
            let (key, fd) = (set.files[0].key(), set.files[0].fd());
            let other = Owner::lockset(u64::MAX);
            STATE.with(|st| match case {
                1 => drop(st.held.remove(&p)),
                2 => drop(st.held.insert(p.clone(), other)),
                3 => drop(st.held_inodes.remove(&key)),
                4 => st.fds.remove(fd),
                _ => {}
            });
            let msg = |r: Result<()>| r.err().map(|e| e.to_string());
            let (checked, released) = (msg(set.check()), msg(set.check_and_release()));
            assert_eq!(checked, released, "case {case}");
            match want {
                None => assert_eq!(released, None),
                Some(m) => assert!(
                    released.as_deref().unwrap_or("").contains(m),
                    "{released:?}"
                ),
            }
            // Released: only a foreign entry (case 2) is left, and the
            // kernel lock is free.
            let left = STATE.with(|st| (st.held.remove(&p), st.held_inodes.contains_key(&key)));
            assert_eq!(left, ((case == 2).then_some(other), false), "case {case}");
            LockSet::try_acquire([p.as_path()], Backend::Ofd)
                .unwrap()
                .release()
                .unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A release of several paths releases every lock whatever fails, and
    /// reports a failed check before a failed release: here path 0's
    /// deletion fails (its lock file got a second link while held, so it is
    /// not marked) and path 1's registry entry is gone. Without the broken
    /// entry, the deletion's error is the one reported.
    #[test]
    #[cfg_attr(miri, ignore)] // OFD locks
    fn a_failed_check_comes_before_a_failed_release_and_every_lock_is_released() {
        let dir = std::env::temp_dir().join(format!("gk-set-unit-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for corrupt in [true, false] {
            let paths: Vec<StorePath> = (0..3)
                .map(|i| StorePath::new(dir.join(format!("m{i}"))).unwrap())
                .collect();
            let mut set =
                LockSet::try_acquire(paths.iter().map(|p| p.as_path()), Backend::Ofd).unwrap();
            set.set_deletion(true);
            let keys: Vec<_> = set.files.iter().map(|f| f.key()).collect();
            let extra = dir.join("second-link");
            std::fs::hard_link(paths[0].lock_path(), &extra).unwrap();
            if corrupt {
                STATE.with(|st| st.held.remove(&paths[1]));
            }
            let e = set.check_and_release().unwrap_err();
            if corrupt {
                assert!(e.to_string().contains("missing from the registry"), "{e}");
            } else {
                assert!(matches!(e, Error::ForeignLockFile { .. }), "{e}");
            }
            // Unregistered (by name and by inode) and unlocked.
            for (p, key) in paths.iter().zip(&keys) {
                let left =
                    STATE.with(|st| (st.held.contains_key(p), st.held_inodes.contains_key(key)));
                assert_eq!(left, (false, false), "{p}");
                LockSet::try_acquire([p.as_path()], Backend::Ofd)
                    .unwrap()
                    .release()
                    .unwrap();
            }
            std::fs::remove_file(&extra).unwrap();
            for p in &paths {
                let _ = std::fs::remove_file(p.lock_path());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
