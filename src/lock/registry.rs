//! The in-process registry: which store paths this process holds, who holds
//! each, and which lock descriptors it has open (G5, G6). A second
//! acquisition inside the process is reported as
//! [`Error::HeldByThisProcess`], never silently granted (the POSIX-lock
//! trap) and never left to block on itself (the flock/OFD trap).
//!
//! [`Registry`] owns the maps; nothing outside this module touches them. It
//! lives in the lock layer's process-wide state, [`STATE`], one mutex that
//! survives `fork(2)` correctly, with the store directories found safe; so
//! every change happens under the same mutex as the kernel operation it
//! records: a lock is registered in the step that takes it and unregistered
//! in the step that releases it, and no other thread ever sees the two
//! disagree. The public questions to the registry are answered here too.
//!
//! A fork child inherits its parent's open file descriptions, and with them
//! OFD and `flock` locks, which would then outlive a `kill -9` of the parent.
//! The atfork child handler therefore closes every inherited lock
//! descriptor (without unlocking: the parent still holds them) and clears
//! the registry; the fork generation (`crate::base`), bumped before, tells
//! the child's copies of the parent's lock objects that they are foreign,
//! so they never touch those descriptor numbers again (G7, L5).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::os::unix::io::RawFd;
use std::path::PathBuf;

use super::path::StorePath;
use super::store_dir::CheckedDirs;
use crate::base::ForkMutex;
use crate::error::{Error, Result};
use crate::inspect::FileKey;

/// Who holds a lock inside this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The holding lock set's process-unique id.
    pub lockset: u64,
    /// An opaque value chosen by whoever took the lock set, 0 for none. The
    /// lock layer never interprets it; the scheduler stores the holding
    /// goal's id there, so that it can tell its own goals' locks apart.
    pub tag: u64,
}

impl Owner {
    /// An owner that is a bare lock set, without a tag.
    pub fn lockset(id: u64) -> Owner {
        Owner {
            lockset: id,
            tag: 0,
        }
    }

    /// The error for a path this owner already holds.
    pub(crate) fn held_error(&self, path: &StorePath) -> Error {
        Error::HeldByThisProcess {
            path: path.as_path().to_path_buf(),
            lockset: self.lockset,
            tag: self.tag,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock set {}", self.lockset)?;
        if self.tag != 0 {
            write!(f, ", owner tag {:#x}", self.tag)?;
        }
        Ok(())
    }
}

/// The registry of the locks this process holds, and of its open lock
/// descriptors (including those of wait threads, which hold no registered
/// lock until they hand it over).
///
/// Invariant: a path and the inode of its lock file are registered to the
/// same owner from the moment the kernel grants the lock until it is
/// released, and the lock's descriptor is open meanwhile.
pub(crate) struct Registry {
    /// Store paths held by this process, and who holds them.
    held: Map<StorePath, Owner>,
    /// The inodes of the lock files behind `held`, so that the same file
    /// reached through another name is recognised as held by this process.
    held_inodes: Map<FileKey, Owner>,
    /// Every open lock descriptor of this process.
    fds: HashSet<RawFd, Hasher>,
}

/// The registry's hasher (the standard one, built without a random key so
/// that the registry can be made in a `static`).
type Hasher = BuildHasherDefault<DefaultHasher>;
type Map<K, V> = HashMap<K, V, Hasher>;

impl Registry {
    /// An empty registry.
    pub(crate) const fn new() -> Registry {
        Registry {
            held: HashMap::with_hasher(BuildHasherDefault::new()),
            held_inodes: HashMap::with_hasher(BuildHasherDefault::new()),
            fds: HashSet::with_hasher(BuildHasherDefault::new()),
        }
    }

    /// Records that `owner` holds `path`, whose lock file is inode `key`.
    pub(crate) fn register(&mut self, path: &StorePath, key: FileKey, owner: Owner) {
        self.held_inodes.insert(key, owner);
        self.held.insert(path.clone(), owner);
    }

    /// The ledger's checks on path `path` of lock set `id` (G6): the path
    /// and its lock file's inode `key` are registered to the set, and its
    /// descriptor `fd` is open. With `take`, the lock's entries are also
    /// unregistered (the caller releases it in the same step): each goes if
    /// it names `id`, and one of another owner stays; the verdict is on what
    /// was registered before.
    pub(crate) fn check(
        &mut self,
        id: u64,
        path: &StorePath,
        (key, fd): (FileKey, RawFd),
        take: bool,
    ) -> Result<()> {
        let (path_owner, inode_owner) = if take {
            (
                take_mine(&mut self.held, path, id),
                take_mine(&mut self.held_inodes, &key, id),
            )
        } else {
            (
                self.held.get(path).copied(),
                self.held_inodes.get(&key).copied(),
            )
        };
        let mine = |o: Option<Owner>| o.is_some_and(|o| o.lockset == id);
        Err(Error::Invariant(match path_owner {
            _ if mine(path_owner) && mine(inode_owner) && self.fds.contains(&fd) => return Ok(()),
            None => format!("{path} is held by lock set {id} but missing from the registry"),
            Some(o) if o.lockset != id => {
                format!("{path} is held by lock set {id} but the registry names {o}")
            }
            Some(_) if !mine(inode_owner) => {
                format!("{path}: the inode of its lock file is not registered to lock set {id}")
            }
            Some(_) => format!("{path}: descriptor {fd} of lock set {id} is not open"),
        }))
    }

    /// Fails with [`Error::HeldByThisProcess`] if any of `paths` is held in
    /// this process.
    pub(crate) fn check_free(&self, paths: &[StorePath]) -> Result<()> {
        for p in paths {
            if let Some(owner) = self.held.get(p) {
                return Err(owner.held_error(p));
            }
        }
        Ok(())
    }

    /// Who in this process holds the lock file with inode `key`, if anyone.
    pub(crate) fn owner_of_inode(&self, key: FileKey) -> Option<Owner> {
        self.held_inodes.get(&key).copied()
    }

    /// Records `fd` as an open lock descriptor.
    pub(crate) fn track(&mut self, fd: RawFd) {
        self.fds.insert(fd);
    }

    /// Untracks and closes a lock descriptor.
    pub(crate) fn close(&mut self, fd: RawFd) {
        self.fds.remove(&fd);
        // SAFETY: closing a descriptor this library opened and still owns.
        unsafe { libc::close(fd) };
    }
}

/// Removes `key`'s entry from `map` if it names lock set `id`; returns the
/// owner the entry named, if any (an entry of another owner stays).
fn take_mine<K: std::hash::Hash + Eq>(map: &mut Map<K, Owner>, key: &K, id: u64) -> Option<Owner> {
    let (k, o) = map.remove_entry(key)?;
    if o.lockset != id {
        map.insert(k, o);
    }
    Some(o)
}

/// What [`STATE`] guards.
pub(crate) struct State {
    /// The locks this process holds, and its open lock descriptors.
    pub(crate) registry: Registry,
    /// The store directories checked and found safe.
    pub(crate) dirs: CheckedDirs,
}

/// The lock layer's process state, second in the lock order (after the C
/// ABI's handle tables: see `crate::lifecycle`).
pub(crate) static STATE: ForkMutex<State> = ForkMutex::new(State {
    registry: Registry::new(),
    dirs: CheckedDirs::new(),
});

/// In the child after `fork(2)`: closes every inherited lock descriptor
/// (without unlocking: the parent still holds the locks through its own
/// reference to the open file descriptions) and forgets what the parent
/// held, then releases the mutex.
pub(crate) fn after_fork_child() {
    // SAFETY: `before_fork` locked STATE in the thread that forked, which is
    // the only thread of the child, so this is the only reference.
    let r = unsafe { &mut (*STATE.data_ptr()).registry };
    for &fd in &r.fds {
        // SAFETY: closing an inherited descriptor number that this library
        // opened; no unlock, since the parent still holds the lock.
        unsafe { libc::close(fd) };
    }
    r.fds.clear();
    r.held.clear();
    r.held_inodes.clear();
    STATE.unlock_after_fork();
}

/// Who in this process holds `path`, if anyone.
pub fn owner_of(path: &StorePath) -> Option<Owner> {
    STATE.with(|st| st.registry.held.get(path).copied())
}

/// `true` if this process holds the lock on `path`.
pub fn is_held_by_me(path: &StorePath) -> bool {
    owner_of(path).is_some()
}

/// Every store path this process holds, sorted, with its owner.
pub fn held_paths() -> Vec<(PathBuf, Owner)> {
    let mut v = held_where(|_| true);
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v.into_iter()
        .map(|(p, o)| (p.as_path().to_path_buf(), o))
        .collect()
}

/// Every store path held by an owner that `select` accepts, with its owner
/// (the scheduler selects its own goals' locks by their tags, for its audit
/// and full ledger sweep).
pub(crate) fn held_where(select: impl Fn(&Owner) -> bool) -> Vec<(StorePath, Owner)> {
    STATE.with(|st| {
        let held = st.registry.held.iter().filter(|(_, o)| select(o));
        held.map(|(p, o)| (p.clone(), *o)).collect()
    })
}

/// Number of store paths this process holds.
pub fn held_count() -> usize {
    STATE.with(|st| st.registry.held.len())
}

/// The number of lock descriptors this process has open, including those of
/// wait threads (for tests and the audit).
pub fn open_descriptor_count() -> usize {
    STATE.with(|st| st.registry.fds.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{Backend, LockSet};

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
            let (key, fd) = set.lock_files()[0];
            let other = Owner::lockset(u64::MAX);
            STATE.with(|st| match case {
                1 => drop(st.registry.held.remove(&p)),
                2 => drop(st.registry.held.insert(p.clone(), other)),
                3 => drop(st.registry.held_inodes.remove(&key)),
                4 => drop(st.registry.fds.remove(&fd)),
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
            let left = STATE.with(|st| {
                let r = &mut st.registry;
                (r.held.remove(&p), r.held_inodes.contains_key(&key))
            });
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
            let keys: Vec<_> = set.lock_files().into_iter().map(|(k, _)| k).collect();
            let extra = dir.join("second-link");
            std::fs::hard_link(paths[0].lock_path(), &extra).unwrap();
            if corrupt {
                STATE.with(|st| st.registry.held.remove(&paths[1]));
            }
            let e = set.check_and_release().unwrap_err();
            if corrupt {
                assert!(e.to_string().contains("missing from the registry"), "{e}");
            } else {
                assert!(matches!(e, Error::ForeignLockFile { .. }), "{e}");
            }
            // Unregistered (by name and by inode) and unlocked.
            for (p, key) in paths.iter().zip(&keys) {
                let left = STATE.with(|st| {
                    let r = &st.registry;
                    (r.held.contains_key(p), r.held_inodes.contains_key(key))
                });
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
