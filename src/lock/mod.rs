//! Store path locks, following the lock-file protocol of the Guix/Nix daemon.
//!
//! For store path `P` the lock file is `P.lock`. See [`LockSet`] for the
//! all-or-nothing set, [`Backend`] for the kernel mechanisms, and
//! [`registry`] for the in-process view (G5).

mod backend;
mod file;
mod path;
mod process;
pub mod registry;
mod set;
pub mod store_dir;
mod wait;

pub use backend::Backend;
pub use file::MAX_STALE_ATTEMPTS;
pub use path::{normalize_paths, normalize_set, StorePath, LOCK_SUFFIX, PATH_MAX};
pub use registry::{held_count, held_paths, is_held_by_me, owner_of, Owner};
pub use set::{LockSet, WaitMode};

// Used by the scheduler (src/sched), which builds on the lock layer's internals.
#[allow(unused_imports)]
pub(crate) use file::LockFile;
#[allow(unused_imports)]
pub(crate) use set::{next_id, Paths};
#[allow(unused_imports)]
pub(crate) use wait::{LockWait, Notify};

/// The number of lock descriptors this process has open, including those of
/// wait threads (for tests and the audit).
pub fn open_descriptor_count() -> usize {
    process::STATE.with(|st| st.fds.len())
}

/// This process's pid as the lock layer sees it (refreshed after `fork`).
pub fn pid() -> u32 {
    process::pid()
}

pub(crate) use process::generation as process_generation;
pub(crate) use process::{after_fork_child, after_fork_parent, before_fork, init_process};
