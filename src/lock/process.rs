//! Per-process lock state that must survive `fork(2)` correctly: the set of
//! open lock descriptors, the in-process registry of held paths, and the
//! fork generation.
//!
//! A fork child inherits its parent's open file descriptions, and with them
//! OFD and `flock` locks, which would then outlive a `kill -9` of the parent.
//! A `pthread_atfork` child handler therefore closes every inherited lock
//! descriptor (without unlocking: the parent still holds them), clears the
//! registry and bumps the fork generation, so that the child's copies of the
//! parent's lock objects know they are foreign and never touch those
//! descriptor numbers again (G7, L5).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::path::StorePath;
use super::registry::Owner;
use super::wait::Shared;
use crate::inspect::FileKey;
use crate::lifecycle::{ensure_installed, ForkMutex};

/// The registry and descriptor set guarded by [`STATE`].
pub(crate) struct State {
    /// Every open lock descriptor of this process, including those of wait threads.
    pub(crate) fds: BTreeSet<RawFd>,
    /// Store paths held by this process, and who holds them.
    pub(crate) held: BTreeMap<StorePath, Owner>,
    /// The inodes of the lock files behind `held`, so that the same file
    /// reached through another name is recognised as held by this process.
    pub(crate) held_inodes: BTreeMap<FileKey, Owner>,
    /// Store directories whose permissions were checked and found safe, as
    /// bytes (compared with `memcmp` on the lock hot path; a process uses a
    /// handful of store directories at most), each with its owner's uid.
    pub(crate) checked_dirs: Vec<(Vec<u8>, libc::uid_t)>,
    /// Abandoned lock waits whose threads are still blocked in the kernel,
    /// for a later wait on the same path to adopt (see `wait.rs`). In a fork
    /// child it also holds the parent's, which are never touched again.
    pub(crate) ghosts: Vec<Arc<Shared>>,
}

pub(crate) static STATE: ForkMutex<State> = ForkMutex::new(State {
    fds: BTreeSet::new(),
    held: BTreeMap::new(),
    held_inodes: BTreeMap::new(),
    checked_dirs: Vec::new(),
    ghosts: Vec::new(),
});

/// This process's pid, refreshed in fork children (0 until
/// [`init_process`] ran).
static PID: AtomicU32 = AtomicU32::new(0);

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current fork generation: it changes in a child after every `fork(2)`.
/// Objects record it at creation and refuse to touch their descriptors when
/// it differs.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Records this process's pid (called once, by the lifecycle, before the
/// atfork handlers are installed).
pub(crate) fn init_process() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// Before `fork(2)`: takes the process state's mutex (after the handle
/// table's: see `crate::lifecycle`).
pub(crate) fn before_fork() {
    STATE.lock_for_fork();
}

/// In the parent after `fork(2)`.
pub(crate) fn after_fork_parent() {
    STATE.unlock_after_fork();
}

/// In the child after `fork(2)`: closes every inherited lock descriptor
/// (without unlocking: the parent still holds the locks through its own
/// reference to the open file descriptions), forgets what the parent held,
/// and bumps the fork generation, then releases the mutex.
pub(crate) fn after_fork_child() {
    // SAFETY: `before_fork` locked STATE in the thread that forked, which is
    // the only thread of the child, so this is the only reference.
    let st = unsafe { &mut *STATE.data_ptr() };
    for &fd in st.fds.iter() {
        // SAFETY: closing an inherited descriptor number that this library
        // opened; no unlock, since the parent still holds the lock.
        unsafe { libc::close(fd) };
    }
    st.fds.clear();
    st.held.clear();
    st.held_inodes.clear();
    // The wait threads do not exist in the child. Their shared state stays
    // in the list, untouched: never adopted (its fork generation differs),
    // never dropped (no destructors, such as the hosts' notifiers, run in a
    // fork child), and still reachable, so it is not a leak (memcheck called
    // the forgotten list "definitely lost" in every such child).
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    STATE.unlock_after_fork();
}

/// This process's pid (cached; refreshed in fork children).
pub(crate) fn pid() -> u32 {
    ensure_installed();
    PID.load(Ordering::Relaxed)
}

/// Records `fd` as an open lock descriptor.
pub(crate) fn track_fd(st: &mut State, fd: RawFd) {
    st.fds.insert(fd);
}
