//! Generational handles: opaque `uint64_t` values that name objects owned by
//! the library. A handle is `kind << 56 | generation << 32 | index`, so a
//! released, forged, or wrong-kind handle is detected and answered with
//! `GK_ERROR_STALE_HANDLE`; it never dereferences freed memory.

use std::fmt;

use crate::error::{Error, Hot};
use crate::lifecycle::ForkMutex;
use crate::lock::process_generation;
use crate::lock::LockSet;

/// What kind of object a handle names (the top byte of the handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    LockSet = 0x4c,
    Worker = 0x57,
    StoreDb = 0x44,
    LockWait = 0x54,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::LockSet => "lock set",
            Kind::Worker => "worker",
            Kind::StoreDb => "store database",
            Kind::LockWait => "lock wait",
        })
    }
}

const GEN_BITS: u32 = 24;
const GEN_MAX: u32 = (1 << GEN_BITS) - 1;

struct Slot<T> {
    generation: u32,
    value: Option<(T, u64)>, // the object and the fork generation it was made in
}

/// A table of objects addressed by generational handles.
pub(crate) struct HandleTable<T> {
    kind: Kind,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> HandleTable<T> {
    /// An empty table for objects of `kind`.
    pub(crate) const fn new(kind: Kind) -> Self {
        HandleTable {
            kind,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `value` and returns its new handle.
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        let fork_gen = process_generation();
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some((value, fork_gen));
        self.live += 1;
        ((self.kind as u64) << 56) | ((slot.generation as u64) << 32) | index as u64
    }

    fn slot_of(&self, handle: u64) -> Hot<usize> {
        let generation = ((handle >> 32) as u32) & GEN_MAX;
        let index = handle as u32 as usize;
        match self.slots.get(index) {
            Some(s)
                if (handle >> 56) as u8 == self.kind as u8
                    && s.generation == generation
                    && s.value.is_some() =>
            {
                Ok(index)
            }
            _ => Err(self.bad_handle(handle)),
        }
    }

    /// Why `handle` names no live object of this table.
    #[cold]
    #[inline(never)]
    fn bad_handle(&self, handle: u64) -> Box<Error> {
        let kind = (handle >> 56) as u8;
        if kind != self.kind as u8 {
            let what = match kind {
                k if k == Kind::LockSet as u8 => "a lock set handle",
                k if k == Kind::Worker as u8 => "a worker handle",
                k if k == Kind::StoreDb as u8 => "a store database handle",
                k if k == Kind::LockWait as u8 => "a lock wait handle",
                _ => "not a goalkeeper handle",
            };
            return Box::new(Error::StaleHandle(format!(
                "handle {handle:#018x} is {what}, not a {} handle",
                self.kind
            )));
        }
        // The slot exists but holds another generation or nothing.
        Box::new(Error::StaleHandle(
            match self.slots.get(handle as u32 as usize) {
                Some(_) => format!(
                    "{} handle {handle:#018x} is stale: it was released or freed",
                    self.kind
                ),
                None => format!("{} handle {handle:#018x} was never issued", self.kind),
            },
        ))
    }

    /// The object named by `handle`. Objects inherited from the parent of a
    /// fork child are refused with [`Error::WrongProcess`].
    pub(crate) fn get(&mut self, handle: u64) -> Hot<&mut T> {
        let i = self.slot_of(handle)?;
        let (value, fork_gen) = self.slots[i].value.as_mut().expect("checked in slot_of");
        if *fork_gen != process_generation() {
            return Err(Box::new(Error::WrongProcess(kind_name(self.kind))));
        }
        Ok(value)
    }

    /// Removes and returns the object named by `handle`; the handle becomes
    /// stale. An object inherited from a fork parent is removed too (its
    /// descriptors were closed at fork), and reported as [`Error::WrongProcess`].
    pub(crate) fn remove(&mut self, handle: u64) -> Hot<T> {
        let i = self.slot_of(handle)?;
        let slot = &mut self.slots[i];
        let (value, fork_gen) = slot.value.take().expect("checked in slot_of");
        self.live -= 1;
        if slot.generation < GEN_MAX {
            slot.generation += 1;
            self.free.push(i as u32);
        } // else: retire the slot, so a handle is never reissued
        if fork_gen != process_generation() {
            drop(value);
            return Err(Box::new(Error::WrongProcess(kind_name(self.kind))));
        }
        Ok(value)
    }

    /// Number of live objects.
    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::LockSet => "this lock set handle",
        Kind::Worker => "this worker handle",
        Kind::StoreDb => "this store database handle",
        Kind::LockWait => "this lock wait handle",
    }
}

/// All handle tables. One mutex guards them, taken by the atfork `prepare`
/// handler before the lock layer's own state (the lock order everywhere).
pub(crate) struct Handles {
    /// Lock sets made through the C ABI.
    pub(crate) locksets: HandleTable<Box<LockSet>>,
    /// Scheduler workers (`gk_worker`).
    pub(crate) workers: HandleTable<std::sync::Arc<super::worker::WorkerCell>>,
    /// Store databases opened by hosts (`gk_store_db`).
    pub(crate) store_dbs: HandleTable<super::store_query::SharedDb>,
    /// Lock waits (`gk_lock_wait`).
    pub(crate) lock_waits: HandleTable<super::lock_wait::PathsWait>,
}

/// The process's handle tables.
pub(crate) static HANDLES: ForkMutex<Handles> = ForkMutex::new(Handles {
    locksets: HandleTable::new(Kind::LockSet),
    workers: HandleTable::new(Kind::Worker),
    store_dbs: HandleTable::new(Kind::StoreDb),
    lock_waits: HandleTable::new(Kind::LockWait),
});

/// Before `fork(2)`: takes the handle table's mutex, first in the lock order
/// (see `crate::lifecycle`).
pub(crate) fn before_fork() {
    HANDLES.lock_for_fork();
}

/// In the parent after `fork(2)`.
pub(crate) fn after_fork_parent() {
    HANDLES.unlock_after_fork();
}

/// In the child after `fork(2)`. The tables are kept: every object in them
/// records the fork generation it was made in, so the child's calls refuse
/// the parent's objects (`GK_ERROR_WRONG_PROCESS`).
pub(crate) fn after_fork_child() {
    HANDLES.unlock_after_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_go_stale_and_are_not_reissued() {
        let mut t: HandleTable<u32> = HandleTable::new(Kind::Worker);
        let a = t.insert(7);
        assert_eq!(*t.get(a).unwrap(), 7);
        assert_eq!(t.remove(a).unwrap(), 7);
        assert!(matches!(
            t.get(a).map_err(|e| *e),
            Err(Error::StaleHandle(_))
        ));
        assert!(matches!(
            t.remove(a).map_err(|e| *e),
            Err(Error::StaleHandle(_))
        ));
        let b = t.insert(8);
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert!(matches!(
            t.get(a).map_err(|e| *e),
            Err(Error::StaleHandle(_))
        ));
        assert_eq!(*t.get(b).unwrap(), 8);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn forged_and_foreign_handles_are_refused() {
        let mut t: HandleTable<u32> = HandleTable::new(Kind::LockSet);
        let mut w: HandleTable<u32> = HandleTable::new(Kind::Worker);
        let h = w.insert(1);
        let e = t.get(h).unwrap_err().to_string();
        assert!(e.contains("worker handle"), "{e}");
        for forged in [0, u64::MAX, (Kind::LockSet as u64) << 56 | 1 << 32 | 12345] {
            assert!(matches!(
                t.get(forged).map_err(|e| *e),
                Err(Error::StaleHandle(_))
            ));
        }
    }
}
