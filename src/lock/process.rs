//! The lock layer's process-wide state, under one mutex that survives
//! `fork(2)` correctly: the [`Registry`] of held locks and open lock
//! descriptors, and the store directories found safe; and the public
//! questions to the registry.
//!
//! A fork child inherits its parent's open file descriptions, and with them
//! OFD and `flock` locks, which would then outlive a `kill -9` of the parent.
//! The atfork child handler therefore closes every inherited lock
//! descriptor (without unlocking: the parent still holds them) and clears
//! the registry; the fork generation (`crate::base`), bumped before, tells
//! the child's copies of the parent's lock objects that they are foreign,
//! so they never touch those descriptor numbers again (G7, L5).

use std::path::PathBuf;

use super::path::StorePath;
use super::registry::{Owner, Registry};
use super::store_dir::CheckedDirs;
use crate::base::ForkMutex;

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

/// In the child after `fork(2)`: closes every inherited lock descriptor and
/// forgets what the parent held, then releases the mutex.
pub(crate) fn after_fork_child() {
    // SAFETY: `before_fork` locked STATE in the thread that forked, which is
    // the only thread of the child, so this is the only reference.
    let st = unsafe { &mut *STATE.data_ptr() };
    st.registry.forget_after_fork();
    STATE.unlock_after_fork();
}

/// Who in this process holds `path`, if anyone.
pub fn owner_of(path: &StorePath) -> Option<Owner> {
    STATE.with(|st| st.registry.owner_of(path))
}

/// `true` if this process holds the lock on `path`.
pub fn is_held_by_me(path: &StorePath) -> bool {
    owner_of(path).is_some()
}

/// Every store path this process holds, sorted, with its owner.
pub fn held_paths() -> Vec<(PathBuf, Owner)> {
    let mut v: Vec<(PathBuf, Owner)> = held_where(|_| true)
        .into_iter()
        .map(|(p, o)| (p.as_path().to_path_buf(), o))
        .collect();
    v.sort_unstable_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    v
}

/// Every store path held by an owner that `select` accepts, with its owner
/// (the scheduler selects its own goals' locks by their tags, for its audit
/// and full ledger sweep).
pub(crate) fn held_where(select: impl Fn(&Owner) -> bool) -> Vec<(StorePath, Owner)> {
    STATE.with(|st| st.registry.held_where(select))
}

/// Number of store paths this process holds.
pub fn held_count() -> usize {
    STATE.with(|st| st.registry.held_count())
}

/// The number of lock descriptors this process has open, including those of
/// wait threads (for tests and the audit).
pub fn open_descriptor_count() -> usize {
    STATE.with(|st| st.registry.open_count())
}
