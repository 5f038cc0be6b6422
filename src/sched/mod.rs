//! The goal scheduler: a [`Worker`] per client request, driven by the host
//! through a pull API, whose goals release their locks when they finish.
//!
//! The modules, bottom up: `ids` (goal ids: worker serial + index), `goal`
//! (kinds, modes, outcomes, states, events), `log` (the diagnostics log),
//! `slots` (build slots with Guix semantics and explicit tokens), `graph`
//! (the goals, their state values, which own their lock sets and slots,
//! their dependencies and outputs), `validity` (where validity comes from:
//! the store database, a host predicate, or "the path exists"), `waits`
//! (lock waits on helper threads and on goals of the worker, and the
//! eventfd), `ledger` (the checks at every call, G6, and the audit),
//! `batch` (the calls' inputs and their validation, all or nothing),
//! `worker` (the facade: the pull API) and `transitions` (the life cycle
//! of a goal). No module names one above it.
//!
//! A goal goes: waiting for dependencies -> ready -> (take a slot) -> (try
//! all output locks, sorted, all or nothing) -> (re-check validity) -> run.
//! When a lock is busy it gives back its slot and locks and waits holding
//! nothing: for the holder goal's completion if the holder is a goal of this
//! worker, otherwise on a kernel wait whose end makes the worker's eventfd
//! readable (G4), re-checking validity every `recheck_interval` so that a
//! lock leaked by an old daemon cannot hang it (S3).
//!
//! Validity is the store database's `ValidPaths` once the host calls
//! [`Worker::set_store_database`] (what a real store needs: the re-check is
//! only safe with the real definition of validity). A database error is
//! never "valid": before locking the goal goes on to its locks, under them
//! it fails, while waiting it keeps waiting, and a reported success is
//! recorded as failed; the log names the database file and the error.

mod batch;
mod goal;
mod graph;
pub mod ids;
mod ledger;
mod log;
mod slots;
mod transitions;
mod validity;
mod waits;
mod worker;

pub use batch::{BatchError, BatchField, NewGoal, Report};
pub use goal::{BuildMode, Event, GoalKind, GoalResult, GoalState, Outcome};
pub use ids::GoalId;
pub use ledger::Audit;
pub use log::{monotonic_ns, LogKind, LogRecord};
pub use worker::{Worker, WorkerOptions};

/// Whether new workers sweep every goal and registry entry at every call
/// (on top of the O(touched) checks): `GOALKEEPER_DEBUG_SWEEP=1` in the
/// environment when the library was loaded (read then, at load time, by
/// `crate::lifecycle`, before any thread could fork in the middle of it).
/// A worker can still change it (`Worker::set_debug_sweep`).
pub fn debug_sweep_default() -> bool {
    ledger::sweep_from_env()
}

pub(crate) use batch::Bad;
pub(crate) use validity::PathPredicate;
