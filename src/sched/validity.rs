//! The worker's validity source ("is this output valid?") and the host's
//! cached-failure predicate ("did this output fail before?").
//!
//! Validity comes from exactly one of:
//!
//! * **the store's database** ([`Source::Database`], set by
//!   `Worker::set_store_database`): a path is valid when it is registered in
//!   `ValidPaths`, as for the daemon itself. This is what a real store needs:
//!   a daemon that builds without a chroot writes its output in place, so the
//!   path exists long before it is registered;
//! * **a host predicate** ([`Source::Host`]);
//! * **the default**, "the path exists", only right for a store without a
//!   database (tests, demos).
//!
//! Setting one replaces the others. Every answer is a [`Validity`]. A
//! database that cannot answer (locked past its busy timeout, replaced by
//! garbage, unreadable, …) gives [`Validity::Unknown`], and the worker then
//! never finishes the goal as valid: before running it fails the goal, while
//! waiting for a lock it keeps waiting, and a reported success is recorded
//! as failed; the log names the database file and the error. A host
//! predicate's error keeps its documented meaning, "no" (and is logged).
//!
//! Predicates and queries run only on the thread that calls into the worker,
//! never while the lock layer's process state is locked, so a host predicate
//! may call back into goalkeeper (e.g. to ask whether a path is locked by
//! this process).

use std::path::Path;

use crate::lock::StorePath;
use crate::store_db::StoreDb;

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

/// Where a worker's validity answers come from.
#[derive(Default)]
pub(crate) enum Source {
    /// "The path exists" (a dangling symlink counts: the store path itself is
    /// there). Only right for a store without a database.
    #[default]
    Exists,
    /// The host's predicate.
    Host(Box<dyn PathPredicate>),
    /// The store's database (boxed: a `StoreDb` is a few hundred bytes).
    Database(Box<StoreDb>),
}

/// What the validity source says about a goal's outputs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Validity {
    /// Every output is valid (and there is at least one).
    Valid,
    /// Output `k` (an index into the goal's sorted outputs) is not valid, or
    /// the goal has no outputs.
    Invalid(usize),
    /// The store database could not answer for output `k` (the first
    /// field); the second names the database file and the error. Never to
    /// be taken as valid.
    Unknown(usize, String),
}
