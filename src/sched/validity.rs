//! The host's predicates: "is this output valid?" and "did this output fail
//! before?" (cached failures). They are called only on the thread that calls
//! into the worker, never while the lock layer's process state is locked,
//! so a predicate may call back into goalkeeper (e.g. to ask whether a path
//! is locked by this process).

use std::path::Path;

use crate::lock::StorePath;

/// A host predicate on store paths. `Err` is a predicate failure (logged and
/// treated as "no").
pub(crate) trait PathPredicate: Send {
    fn ask(&mut self, path: &StorePath) -> std::result::Result<bool, String>;
}

/// A Rust closure as a predicate.
pub(crate) struct FnPredicate(pub(crate) Box<dyn FnMut(&Path) -> bool + Send>);

impl PathPredicate for FnPredicate {
    fn ask(&mut self, path: &StorePath) -> std::result::Result<bool, String> {
        Ok((self.0)(path.as_path()))
    }
}

/// The embedded default for validity: the path exists (a dangling symlink
/// counts: the store path itself is there).
pub(crate) fn path_exists(path: &StorePath) -> bool {
    std::fs::symlink_metadata(path.as_path()).is_ok()
}
