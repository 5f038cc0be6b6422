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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::path::StorePath;
use super::registry::Owner;
use super::wait::Shared;
use crate::inspect::FileKey;
use crate::lifecycle::{ensure_installed, ForkMutex};

/// The hasher of the registry's maps. Their keys are cheap to hash: a
/// [`StorePath`] writes the hash it computed once when it was made, and a
/// [`FileKey`] is two integers; one multiply-rotate step per word mixes them.
#[derive(Clone, Copy, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type Keyed<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// A set of descriptor numbers: one bit per descriptor (they are small,
/// dense integers), and a count.
pub(crate) struct FdSet {
    bits: Vec<u64>,
    len: usize,
}

impl FdSet {
    const fn new() -> FdSet {
        FdSet {
            bits: Vec::new(),
            len: 0,
        }
    }

    /// Adds `fd` (a descriptor the kernel just returned: never negative).
    #[inline]
    pub(crate) fn insert(&mut self, fd: RawFd) {
        let (w, b) = (fd as usize / 64, fd as usize % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    /// Removes `fd`, if present.
    #[inline]
    pub(crate) fn remove(&mut self, fd: RawFd) {
        if fd < 0 {
            return;
        }
        let (w, b) = (fd as usize / 64, fd as usize % 64);
        if let Some(word) = self.bits.get_mut(w) {
            if *word & (1 << b) != 0 {
                *word &= !(1 << b);
                self.len -= 1;
            }
        }
    }

    /// Whether `fd` is in the set.
    #[inline]
    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        fd >= 0
            && self
                .bits
                .get(fd as usize / 64)
                .is_some_and(|w| w & (1 << (fd as usize % 64)) != 0)
    }

    /// Number of descriptors in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every descriptor in the set, in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| (w * 64 + b) as RawFd)
        })
    }

    /// Empties the set (keeping its memory).
    pub(crate) fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }
}

/// The registry and descriptor set guarded by [`STATE`].
pub(crate) struct State {
    /// Every open lock descriptor of this process, including those of wait threads.
    pub(crate) fds: FdSet,
    /// Store paths held by this process, and who holds them. A hash map
    /// whose keys carry their hash: the lock cycle looks a path up, inserts
    /// and removes it without scanning its bytes more than once (to confirm
    /// equality), and the map keeps its memory when it goes empty.
    pub(crate) held: Keyed<StorePath, Owner>,
    /// The inodes of the lock files behind `held`, so that the same file
    /// reached through another name is recognised as held by this process.
    pub(crate) held_inodes: Keyed<FileKey, Owner>,
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
    fds: FdSet::new(),
    held: HashMap::with_hasher(BuildHasherDefault::new()),
    held_inodes: HashMap::with_hasher(BuildHasherDefault::new()),
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
    for fd in st.fds.iter() {
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
