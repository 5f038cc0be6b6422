//! Store path locks, following the lock-file protocol of the Guix/Nix daemon.
//!
//! For store path `P` the lock file is `P.lock`. See [`LockSet`] for the
//! all-or-nothing set, [`Backend`] for the kernel mechanisms, and the
//! registry functions ([`is_held_by_me`], [`held_paths`]) for the
//! in-process view (G5).
//!
//! The modules, bottom up: `path` (store paths and their lock-file names),
//! `backend` (the kernel calls), `store_dir` (the store directory check),
//! `registry` (the `Registry` of held locks and open lock descriptors, which
//! owns its maps; the one mutex, `STATE`, over the registry and the checked
//! directories; and the public questions to the registry), `file` (one lock
//! file: take, judge, release, delete), `wait` (a blocking wait on a helper
//! thread, and the list of abandoned ones) and `set` (the all-or-nothing
//! lock set).
//!
//! The scheduler, the layer above, builds on a small contract, the
//! `pub(crate)` items below: a goal's locks are taken by one pass,
//! `LockSet::try_for_owner`, whose owner tag is the goal's id; a busy lock
//! is waited for by a `LockWait`, whose granted `LockFile` the next pass
//! takes in hand; `held_where` and [`owner_of`] answer the ledger.

mod backend;
mod file;
mod path;
mod registry;
mod set;
mod store_dir;
mod wait;

pub use backend::Backend;
pub use file::MAX_STALE_ATTEMPTS;
pub use path::{normalize_paths, normalize_set, StorePath, LOCK_SUFFIX, PATH_MAX};
pub use registry::{held_count, held_paths, is_held_by_me, open_descriptor_count, owner_of, Owner};
pub use set::{LockSet, WaitMode};

pub(crate) use file::LockFile;
pub(crate) use registry::held_where;
pub(crate) use set::next_id;
pub(crate) use wait::{LockWait, Notify};

/// Before `fork(2)`: takes the lock layer's mutexes (the process state, then
/// the abandoned waits), after the C ABI's handle tables (see
/// `crate::lifecycle`).
pub(crate) fn before_fork() {
    registry::STATE.lock_for_fork();
    wait::GHOSTS.lock_for_fork();
}

/// In the parent after `fork(2)`: releases them.
pub(crate) fn after_fork_parent() {
    wait::GHOSTS.unlock_after_fork();
    registry::STATE.unlock_after_fork();
}

/// In the child after `fork(2)`: closes the inherited lock descriptors and
/// forgets the parent's locks (`registry::after_fork_child`), then releases
/// the mutexes. The abandoned waits' threads do not exist in the child;
/// their list is kept as it is (see `wait::GHOSTS`).
pub(crate) fn after_fork_child() {
    wait::GHOSTS.unlock_after_fork();
    registry::after_fork_child();
}
