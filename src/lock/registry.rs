//! The in-process registry: which store paths this process holds, and who
//! holds each (G5). A second acquisition inside the process is reported as
//! [`Error::HeldByThisProcess`], never silently granted (the POSIX-lock
//! trap) and never left to block on itself (the flock/OFD trap).

use std::fmt;
use std::path::PathBuf;

use super::path::StorePath;
use super::process::{State, STATE};
use crate::error::{Error, Result};

/// Who holds a lock inside this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The holding lock set's process-unique id.
    pub lockset: u64,
    /// The worker whose goal holds the lock set, or 0.
    pub worker: u64,
    /// The goal (its raw id) that holds the lock set, meaningful when `worker != 0`.
    pub goal: u64,
}

impl Owner {
    /// An owner that is a bare lock set, not a scheduler goal.
    pub fn lockset(id: u64) -> Owner {
        Owner {
            lockset: id,
            worker: 0,
            goal: 0,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.worker != 0 {
            write!(
                f,
                "goal {} of worker {}, lock set {}",
                self.goal, self.worker, self.lockset
            )
        } else {
            write!(f, "lock set {}", self.lockset)
        }
    }
}

/// Fails with [`Error::HeldByThisProcess`] if any of `paths` is held in this process.
pub(crate) fn check_free(st: &State, paths: &[StorePath]) -> Result<()> {
    for p in paths {
        if let Some(owner) = st.held.get(p) {
            return Err(Error::HeldByThisProcess {
                path: p.as_path().to_path_buf(),
                owner: *owner,
            });
        }
    }
    Ok(())
}

/// Who in this process holds `path`, if anyone.
pub fn owner_of(path: &StorePath) -> Option<Owner> {
    STATE.with(|st| st.held.get(path).copied())
}

/// `true` if this process holds the lock on `path`.
pub fn is_held_by_me(path: &StorePath) -> bool {
    owner_of(path).is_some()
}

/// Every store path this process holds, sorted, with its owner.
pub fn held_paths() -> Vec<(PathBuf, Owner)> {
    STATE.with(|st| {
        st.held
            .iter()
            .map(|(p, o)| (p.as_path().to_path_buf(), *o))
            .collect()
    })
}

/// Every store path held for a goal of scheduler worker `worker`, with its
/// owner (for the scheduler's audit and full ledger sweep).
pub(crate) fn owned_by_worker(worker: u64) -> Vec<(StorePath, Owner)> {
    STATE.with(|st| {
        st.held
            .iter()
            .filter(|(_, o)| o.worker == worker)
            .map(|(p, o)| (p.clone(), *o))
            .collect()
    })
}

/// Number of store paths this process holds.
pub fn held_count() -> usize {
    STATE.with(|st| st.held.len())
}
