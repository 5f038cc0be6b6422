//! Goal ids: opaque `u64` values that name a goal inside one worker.
//!
//! A goal id is `worker serial << 32 | arena index`. The worker serial is a
//! process-unique, never-zero number given to each [`Worker`](super::Worker)
//! when it is created, so it acts as the generation of the whole arena: an id
//! of another worker (or of a freed one) never names a goal here, and 0 is
//! never a valid id. Arena slots are never reused inside a worker (results
//! outlive execution), so no per-slot generation is needed.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// Identifies one goal of one worker. Only meaningful with that worker.
/// `repr(transparent)`: an array of `u64` goal ids from C is an array of
/// `GoalId`s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct GoalId(u64);

/// The worker serial of [`GoalId::batch`] references: never given to a
/// worker (as 0 is not), so such an id never names a goal.
pub(crate) const BATCH_SERIAL: u32 = u32::MAX;

impl GoalId {
    pub(crate) fn new(worker: u32, index: u32) -> GoalId {
        GoalId(((worker as u64) << 32) | index as u64)
    }

    /// The raw value (for C and logs).
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from its raw value. The worker checks it on use; a
    /// forged or foreign id is refused, never misread.
    pub fn from_raw(raw: u64) -> GoalId {
        GoalId(raw)
    }

    /// The index of the goal in its worker's arena (the `N` of "goal N" in
    /// logs). A worker numbers its goals from 0 in the order it makes them,
    /// so the goals a host adds one after another (each new, not shared:
    /// see [`Worker::add_goal`](super::Worker::add_goal)) have consecutive
    /// ids: the k-th after the first has the first's raw id plus k.
    pub fn index(self) -> u32 {
        self.0 as u32
    }

    /// The serial of the worker the id belongs to.
    pub fn worker(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// A reference to goal `k` of the batch being added, as a dependency in
    /// [`Worker::add_goals`](super::Worker::add_goals) (`GK_BATCH_GOAL(k)` in
    /// C): the worker serial `0xffffffff`, which no worker has, so a zeroed
    /// or stale id is never mistaken for one.
    pub fn batch(k: u32) -> GoalId {
        GoalId::new(BATCH_SERIAL, k)
    }

    /// `Some(k)` if this id is [`GoalId::batch(k)`](GoalId::batch).
    pub fn batch_index(self) -> Option<u32> {
        (self.worker() == BATCH_SERIAL).then_some(self.index())
    }

    /// The index of this id in worker `serial`, which has `len` goals, or
    /// [`Error::StaleHandle`] for an id of another worker, a forged one, or
    /// one out of range (the serial is never 0, so the id 0 is refused too).
    pub(crate) fn index_in(self, serial: u32, len: usize) -> Result<u32> {
        if self.worker() == serial && (self.index() as usize) < len {
            return Ok(self.index());
        }
        Err(self.not_in(serial))
    }

    /// Why this id names no goal of worker `serial` (see [`GoalId::index_in`]):
    /// out of line, so that the check itself stays small enough to inline.
    #[cold]
    fn not_in(self, serial: u32) -> Error {
        Error::StaleHandle(if self.0 == 0 {
            "goal id 0 is never valid".into()
        } else if self.worker() != serial {
            format!(
                "goal id {:#x} does not belong to this worker (worker {serial})",
                self.0
            )
        } else {
            format!("goal id {:#x} was never issued by this worker", self.0)
        })
    }
}

impl fmt::Debug for GoalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoalId({}@w{})", self.index(), self.worker())
    }
}

impl fmt::Display for GoalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "goal {}", self.index())
    }
}

static NEXT_WORKER: AtomicU32 = AtomicU32::new(1);

/// A new process-unique worker serial: never 0 (so 0 is never a goal id)
/// and never [`BATCH_SERIAL`] (batch references).
pub(crate) fn next_worker_serial() -> u32 {
    loop {
        let s = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        if s != 0 && s != BATCH_SERIAL {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_never_zero() {
        let a = next_worker_serial();
        let id = GoalId::new(a, 7);
        assert_ne!(id.raw(), 0);
        assert_eq!(GoalId::from_raw(id.raw()), id);
        assert_eq!((id.worker(), id.index()), (a, 7));
        assert_eq!(id.to_string(), "goal 7");
        assert_eq!(id.batch_index(), None);
        assert_eq!(GoalId::batch(5).batch_index(), Some(5));
        assert_eq!(GoalId::batch(5).raw(), 0xffff_ffff_0000_0005);
        assert_eq!(GoalId::from_raw(0).batch_index(), None);
    }
}
