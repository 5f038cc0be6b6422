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

impl Owner {
    /// The error for a path this owner already holds.
    pub(crate) fn held_error(&self, path: &StorePath) -> Error {
        Error::HeldByThisProcess {
            path: path.as_path().to_path_buf(),
            lockset: self.lockset,
            tag: self.tag,
        }
    }
}

/// Fails with [`Error::HeldByThisProcess`] if any of `paths` is held in this process.
pub(crate) fn check_free(st: &State, paths: &[StorePath]) -> Result<()> {
    for p in paths {
        if let Some(owner) = st.held.get(p) {
            return Err(owner.held_error(p));
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
    let mut v: Vec<(PathBuf, Owner)> = STATE.with(|st| {
        st.held
            .iter()
            .map(|(p, o)| (p.as_path().to_path_buf(), *o))
            .collect()
    });
    v.sort_unstable_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    v
}

/// Every store path held by an owner that `select` accepts, with its owner
/// (the scheduler selects its own goals' locks by their tags, for its audit
/// and full ledger sweep).
pub(crate) fn held_where(select: impl Fn(&Owner) -> bool) -> Vec<(StorePath, Owner)> {
    STATE.with(|st| {
        st.held
            .iter()
            .filter(|(_, o)| select(o))
            .map(|(p, o)| (p.clone(), *o))
            .collect()
    })
}

/// Number of store paths this process holds.
pub fn held_count() -> usize {
    STATE.with(|st| st.held.len())
}
