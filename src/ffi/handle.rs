//! Generational handles: opaque `uint64_t` values that name objects owned by
//! the library. A handle is `kind << 56 | generation << 32 | index`, so a
//! released, forged, or wrong-kind handle is detected and answered with
//! `GK_ERROR_STALE_HANDLE`; it never dereferences freed memory.
//!
//! [`HandleTable`] is generic: each kind of object keeps its own table, a
//! `base::ForkMutex` static in the module of that kind (`locks`, `worker`,
//! `store_query`, `lock_wait`), and `ffi::before_fork` takes them in a
//! fixed order.

use crate::base::generation as process_generation;
use crate::error::{Error, Result};

/// What kind of object a handle names (the top byte of the handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    LockSet = 0x4c,
    Worker = 0x57,
    StoreDb = 0x44,
    LockWait = 0x54,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::LockSet, Kind::Worker, Kind::StoreDb, Kind::LockWait];

    /// The kind's name, and how a fork child's refused handle of it is named.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Kind::LockSet => ("lock set", "this lock set handle"),
            Kind::Worker => ("worker", "this worker handle"),
            Kind::StoreDb => ("store database", "this store database handle"),
            Kind::LockWait => ("lock wait", "this lock wait handle"),
        }
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
}

impl<T> HandleTable<T> {
    /// An empty table for objects of `kind`.
    pub(crate) const fn new(kind: Kind) -> Self {
        HandleTable {
            kind,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value` and returns its new handle.
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        let fork_gen = process_generation();
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 1,
                value: None,
            });
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.value = Some((value, fork_gen));
        ((self.kind as u64) << 56) | ((slot.generation as u64) << 32) | index as u64
    }

    /// The index of the live slot `handle` names: its top 32 bits are the
    /// table's kind and the slot's generation.
    fn slot_of(&self, handle: u64) -> Result<usize> {
        let index = handle as u32 as usize;
        let kind = (self.kind as u32) << GEN_BITS;
        match self.slots.get(index) {
            Some(s) if (handle >> 32) as u32 == kind | s.generation && s.value.is_some() => {
                Ok(index)
            }
            _ => Err(self.bad_handle(handle)),
        }
    }

    /// Why `handle` names no live object of this table.
    #[cold]
    fn bad_handle(&self, handle: u64) -> Error {
        let name = self.kind.names().0;
        let kind = (handle >> 56) as u8;
        if kind != self.kind as u8 {
            let what = match Kind::ALL.iter().find(|k| **k as u8 == kind) {
                Some(k) => format!("a {} handle", k.names().0),
                None => "not a goalkeeper handle".into(),
            };
            return Error::StaleHandle(format!(
                "handle {handle:#018x} is {what}, not a {name} handle"
            ));
        }
        // The slot exists but holds another generation or nothing.
        Error::StaleHandle(match self.slots.get(handle as u32 as usize) {
            Some(_) => format!("{name} handle {handle:#018x} is stale: it was released or freed"),
            None => format!("{name} handle {handle:#018x} was never issued"),
        })
    }

    /// The object named by `handle`. Objects inherited from the parent of a
    /// fork child are refused with [`Error::WrongProcess`].
    #[inline]
    pub(crate) fn get(&mut self, handle: u64) -> Result<&mut T> {
        let i = self.slot_of(handle)?;
        match &mut self.slots[i].value {
            Some((value, fork_gen)) if *fork_gen == process_generation() => Ok(value),
            _ => Err(Error::WrongProcess(self.kind.names().1)),
        }
    }

    /// Removes and returns the object named by `handle`; the handle becomes
    /// stale. An object inherited from a fork parent is removed too (its
    /// descriptors were closed at fork), and reported as [`Error::WrongProcess`].
    pub(crate) fn remove(&mut self, handle: u64) -> Result<T> {
        let i = self.slot_of(handle)?;
        let slot = &mut self.slots[i];
        let (value, fork_gen) = slot.value.take().expect("checked in slot_of");
        if slot.generation < GEN_MAX {
            slot.generation += 1;
            self.free.push(i as u32);
        } // else: retire the slot, so a handle is never reissued
        if fork_gen != process_generation() {
            return Err(Error::WrongProcess(self.kind.names().1));
        }
        Ok(value)
    }

    /// Number of live objects.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.value.is_some()).count()
    }
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
        assert!(matches!(t.get(a), Err(Error::StaleHandle(_))));
        assert!(matches!(t.remove(a), Err(Error::StaleHandle(_))));
        let b = t.insert(8);
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert!(matches!(t.get(a), Err(Error::StaleHandle(_))));
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
            assert!(matches!(t.get(forged), Err(Error::StaleHandle(_))));
        }
    }
}
