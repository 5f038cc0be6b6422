//! The C enums, and the one mapping between each and its Rust type.
//!
//! Every number of the ABI's enums is written here, once, in the enum's
//! definition (cbindgen copies it into `include/goalkeeper.h`). The Rust
//! types of the lower layers ([`Backend`], [`GoalKind`], ...) carry no
//! numbers. [`c_mapping!`] writes both directions of a mapping as
//! exhaustive `match`es, so a variant added on either side without its
//! counterpart, or two variants mapped to one, fails to compile.
//!
//! Struct fields and arguments carry these values as `uint32_t`, never as the
//! enum type: a C caller may pass any number, and a Rust enum holding a
//! number that is not one of its variants would be undefined behaviour. So
//! values from C go through `from_c`, which refuses unknown numbers.

use crate::error::{Error, Result};
use crate::lock::Backend;
use crate::sched::{BatchField, BuildMode, GoalKind, GoalState, LogKind, Outcome};

/// Writes `to_rust`, `from_rust` and `from_c` for a C enum and its Rust
/// counterpart, from one list of pairs `C_VARIANT <=> [rust value]` (the
/// Rust side is any token tree that is both a pattern and an expression,
/// e.g. `GoalKind::Build`, `Some(Outcome::Built)`, `None`).
macro_rules! c_mapping {
    ($c:ident, $rust:ty, $what:literal, { $($cv:ident <=> [$($rv:tt)+]),+ $(,)? }) => {
        impl $c {
            /// The Rust value this C value stands for.
            #[deny(unreachable_patterns)]
            #[allow(dead_code)]
            pub(crate) fn to_rust(self) -> $rust {
                match self { $($c::$cv => $($rv)+),+ }
            }

            /// The C value that stands for a Rust value.
            #[deny(unreachable_patterns)]
            #[allow(dead_code)]
            pub(crate) fn from_rust(v: $rust) -> $c {
                match v { $($($rv)+ => $c::$cv),+ }
            }

            /// The C value for a number from C, or `None`.
            #[allow(dead_code)]
            pub(crate) fn from_raw(v: u32) -> Option<$c> {
                $(if v == $c::$cv as u32 { return Some($c::$cv); })+
                None
            }

            /// The Rust value for a number from C, or an error naming the
            /// argument's C type and the values it accepts.
            #[allow(dead_code)]
            pub(crate) fn parse(v: u32) -> Result<$rust> {
                match Self::from_raw(v) {
                    Some(c) => Ok(c.to_rust()),
                    None => Err(Self::unknown(v)),
                }
            }

            /// The error for a number from C that is none of these values.
            #[cold]
            #[inline(never)]
            fn unknown(v: u32) -> Error {
                let known: Vec<String> = [$(format!("{} = {}", stringify!($cv), $c::$cv as u32)),+].into();
                Error::InvalidArgument(format!(
                    "{} {v} is not a {} ({})", $what, stringify!($c), known.join(", ")
                ))
            }
        }
    };
}

/// Which kernel lock a store uses. Pass one of these as a `uint32_t backend`.
/// Never mix backends on one store: `flock` and `fcntl` locks do not exclude
/// each other on Linux.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_backend {
    /// OFD record locks, the default: they exclude guix-daemon's POSIX `fcntl` locks.
    GK_BACKEND_OFD = 0,
    /// `flock(2)`, for stores shared with current Nix.
    GK_BACKEND_FLOCK = 1,
}

/// What a goal does. Pass as a `uint32_t kind`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_goal_kind {
    /// Builds a derivation: locks all its outputs, takes a build slot.
    GK_GOAL_BUILD = 0,
    /// Substitutes one path: locks it, takes a build slot.
    GK_GOAL_SUBSTITUTE = 1,
    /// Host work without locks or slot; its outputs (0 or more) are recorded only.
    GK_GOAL_PLAIN = 2,
}

/// How a build treats outputs that are already valid. Pass as a `uint32_t mode`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_build_mode {
    /// Valid outputs are not rebuilt.
    GK_MODE_NORMAL = 0,
    /// Repair: the validity predicate decides what needs repairing.
    GK_MODE_REPAIR = 1,
    /// Check: rebuild even if valid (no "already valid" shortcut).
    GK_MODE_CHECK = 2,
}

/// How a goal ended. Pass as a `uint32_t outcome`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_outcome {
    /// Not finished.
    GK_OUTCOME_NONE = 0,
    /// Built by the host (outputs checked valid).
    GK_OUTCOME_BUILT = 1,
    /// Substituted by the host (output checked valid).
    GK_OUTCOME_SUBSTITUTED = 2,
    /// Valid already, or became valid while waiting.
    GK_OUTCOME_ALREADY_VALID = 3,
    /// Failed (reported, or success without valid outputs, or could not start).
    GK_OUTCOME_FAILED = 4,
    /// Timed out (reported).
    GK_OUTCOME_TIMED_OUT = 5,
    /// The cached-failure predicate said an output failed before.
    GK_OUTCOME_CACHED_FAILURE = 6,
    /// A dependency did not succeed.
    GK_OUTCOME_DEPENDENCY_FAILED = 7,
    /// Cancelled (by the host, by a failure without keep-going, or abandoned).
    GK_OUTCOME_CANCELLED = 8,
}

/// The kind of a `gk_event`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_event_kind {
    /// Run `goal` (inputs done, slot taken, output locks held, outputs not
    /// valid); then report it with `gk_worker_report`.
    GK_EVENT_RUN = 1,
    /// `goal` finished without running; `outcome` says how.
    GK_EVENT_FINISHED = 2,
    /// Nothing to do now: poll `fd` (POLLIN) with your builders for at most
    /// `timeout_ms` (-1: no limit), then call `gk_worker_next_event` again.
    GK_EVENT_WAIT = 3,
    /// Every goal has finished.
    GK_EVENT_DONE = 4,
}

/// Where a goal is in its life.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_goal_state {
    /// Some dependency has not finished.
    GK_STATE_WAITING_DEPS = 0,
    /// Runnable.
    GK_STATE_READY = 1,
    /// Waiting for a build slot (holding no lock).
    GK_STATE_WAITING_SLOT = 2,
    /// Waiting for a lock (holding nothing).
    GK_STATE_WAITING_LOCK = 3,
    /// Running (its locks and slot are held).
    GK_STATE_RUNNING = 4,
    /// Finished; see the outcome.
    GK_STATE_FINISHED = 5,
}

/// The kind of a `gk_log_record`: what a diagnostics log entry reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_log_kind {
    /// `goal` waits for the lock of `path`, held in the kernel by another
    /// process (`holder_pid` when it could be found, see the inspector) or
    /// by another lock set or worker of this process (`holder_pid` is this
    /// process, `holder_goal` the goal if one); it holds nothing meanwhile.
    GK_LOG_WAITS_FOREIGN = 1,
    /// `goal` waits for the lock of `path`, held by `holder_goal` of the
    /// same worker; it holds nothing meanwhile.
    GK_LOG_WAITS_LOCAL = 2,
    /// `goal` got the lock of `path` handed over after waiting
    /// `duration_ns`, and goes on to run.
    GK_LOG_HANDED_OVER = 3,
    /// `goal`, waiting `duration_ns` for the lock of `path`, found its
    /// outputs valid and finished already valid without running.
    GK_LOG_BECAME_VALID = 4,
    /// `goal` could not lock its outputs or wait for a lock, and failed.
    GK_LOG_COULD_NOT_LOCK = 5,
    /// Releasing `goal`'s locks reported an error (a lock file was left in
    /// place, unlocked).
    GK_LOG_RELEASE_FAILED = 6,
    /// A host predicate failed on `path`; its answer was taken as "no".
    GK_LOG_PREDICATE_ERROR = 7,
    /// The cached-failure predicate said `path`, an output of `goal`,
    /// failed before.
    GK_LOG_CACHED_FAILURE = 8,
    /// `goal` was reported built but `path` is not valid: recorded failed.
    GK_LOG_NOT_VALID_AFTER_SUCCESS = 9,
    /// `goal` failed without keep-going: the goals not running were cancelled.
    GK_LOG_CANCELLED_BY_FAILURE = 10,
    /// `goal` is a build and `max_jobs` is 0: it failed.
    GK_LOG_NO_BUILD_SLOTS = 11,
    /// `goal` was requested again in another build mode; it keeps its mode.
    GK_LOG_MODE_KEPT = 12,
    /// A ledger invariant check failed; the message names goal and path.
    GK_LOG_LEDGER_VIOLATION = 13,
    /// The log was full and older records were dropped (the message says
    /// how many).
    GK_LOG_DROPPED = 14,
    /// The store database could not say whether `path` is valid; the goal
    /// is never finished as valid on that answer (the message names the
    /// database, the error and what the goal does: it fails or keeps
    /// waiting). Also written once when a waiting goal's database answers
    /// again.
    GK_LOG_VALIDITY_UNKNOWN = 15,
    /// `goal`, waiting for another process's lock, re-checked its outputs
    /// and found `path` on disk but not valid (not registered in the store
    /// database, or refused by the validity predicate): still being written
    /// in place, or left by a build that did not finish. It keeps waiting;
    /// `duration_ns` is how long it has waited so far. Written once when a
    /// wait starts seeing it, not at every re-check.
    GK_LOG_ON_DISK_NOT_VALID = 16,
}

/// Which part of a batch element a `gk_batch_error` names (see
/// `gk_worker_add_goals` and `gk_worker_report_many`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gk_batch_field {
    /// No element in particular: the batch as a whole (its description, a
    /// missing array, its size). Also the value after `GK_OK`.
    GK_FIELD_NONE = 0,
    /// `kinds[index]`.
    GK_FIELD_KIND = 1,
    /// `modes[index]`.
    GK_FIELD_MODE = 2,
    /// Goal `index`'s output `sub` (in the order given), or its outputs as a
    /// whole (`sub` 0: a build without outputs, a substitute with several).
    GK_FIELD_OUTPUT = 3,
    /// `output_offsets[index]`.
    GK_FIELD_OUTPUT_OFFSETS = 4,
    /// Goal `index`'s dependency `sub`.
    GK_FIELD_DEPENDENCY = 5,
    /// `dep_offsets[index]`.
    GK_FIELD_DEP_OFFSETS = 6,
    /// `reports[index].goal`.
    GK_FIELD_GOAL = 7,
    /// `reports[index].outcome`.
    GK_FIELD_OUTCOME = 8,
}

impl gk_outcome {
    /// A reported outcome from C (`gk_worker_report`, `gk_report`): a
    /// `gk_outcome` other than `GK_OUTCOME_NONE`.
    pub(crate) fn parse_reported(v: u32) -> Result<Outcome> {
        gk_outcome::parse(v)?.ok_or_else(|| {
            Error::InvalidArgument("GK_OUTCOME_NONE is not an outcome to report".into())
        })
    }
}

c_mapping!(gk_backend, Backend, "backend", {
    GK_BACKEND_OFD <=> [Backend::Ofd],
    GK_BACKEND_FLOCK <=> [Backend::Flock],
});

c_mapping!(gk_goal_kind, GoalKind, "goal kind", {
    GK_GOAL_BUILD <=> [GoalKind::Build],
    GK_GOAL_SUBSTITUTE <=> [GoalKind::Substitute],
    GK_GOAL_PLAIN <=> [GoalKind::Plain],
});

c_mapping!(gk_build_mode, BuildMode, "build mode", {
    GK_MODE_NORMAL <=> [BuildMode::Normal],
    GK_MODE_REPAIR <=> [BuildMode::Repair],
    GK_MODE_CHECK <=> [BuildMode::Check],
});

c_mapping!(gk_outcome, Option<Outcome>, "outcome", {
    GK_OUTCOME_NONE <=> [None],
    GK_OUTCOME_BUILT <=> [Some(Outcome::Built)],
    GK_OUTCOME_SUBSTITUTED <=> [Some(Outcome::Substituted)],
    GK_OUTCOME_ALREADY_VALID <=> [Some(Outcome::AlreadyValid)],
    GK_OUTCOME_FAILED <=> [Some(Outcome::Failed)],
    GK_OUTCOME_TIMED_OUT <=> [Some(Outcome::TimedOut)],
    GK_OUTCOME_CACHED_FAILURE <=> [Some(Outcome::CachedFailure)],
    GK_OUTCOME_DEPENDENCY_FAILED <=> [Some(Outcome::DependencyFailed)],
    GK_OUTCOME_CANCELLED <=> [Some(Outcome::Cancelled)],
});

c_mapping!(gk_goal_state, GoalState, "goal state", {
    GK_STATE_WAITING_DEPS <=> [GoalState::WaitingDeps],
    GK_STATE_READY <=> [GoalState::Ready],
    GK_STATE_WAITING_SLOT <=> [GoalState::WaitingSlot],
    GK_STATE_WAITING_LOCK <=> [GoalState::WaitingLock],
    GK_STATE_RUNNING <=> [GoalState::Running],
    GK_STATE_FINISHED <=> [GoalState::Finished],
});

c_mapping!(gk_log_kind, LogKind, "log kind", {
    GK_LOG_WAITS_FOREIGN <=> [LogKind::WaitsForeign],
    GK_LOG_WAITS_LOCAL <=> [LogKind::WaitsLocal],
    GK_LOG_HANDED_OVER <=> [LogKind::HandedOver],
    GK_LOG_BECAME_VALID <=> [LogKind::BecameValid],
    GK_LOG_COULD_NOT_LOCK <=> [LogKind::CouldNotLock],
    GK_LOG_RELEASE_FAILED <=> [LogKind::ReleaseFailed],
    GK_LOG_PREDICATE_ERROR <=> [LogKind::PredicateError],
    GK_LOG_CACHED_FAILURE <=> [LogKind::CachedFailure],
    GK_LOG_NOT_VALID_AFTER_SUCCESS <=> [LogKind::NotValidAfterSuccess],
    GK_LOG_CANCELLED_BY_FAILURE <=> [LogKind::CancelledByFailure],
    GK_LOG_NO_BUILD_SLOTS <=> [LogKind::NoBuildSlots],
    GK_LOG_MODE_KEPT <=> [LogKind::ModeKept],
    GK_LOG_LEDGER_VIOLATION <=> [LogKind::LedgerViolation],
    GK_LOG_DROPPED <=> [LogKind::Dropped],
    GK_LOG_VALIDITY_UNKNOWN <=> [LogKind::ValidityUnknown],
    GK_LOG_ON_DISK_NOT_VALID <=> [LogKind::OnDiskNotValid],
});

c_mapping!(gk_batch_field, BatchField, "batch field", {
    GK_FIELD_NONE <=> [BatchField::Batch],
    GK_FIELD_KIND <=> [BatchField::Kind],
    GK_FIELD_MODE <=> [BatchField::Mode],
    GK_FIELD_OUTPUT <=> [BatchField::Output],
    GK_FIELD_OUTPUT_OFFSETS <=> [BatchField::OutputOffsets],
    GK_FIELD_DEPENDENCY <=> [BatchField::Dependency],
    GK_FIELD_DEP_OFFSETS <=> [BatchField::DepOffsets],
    GK_FIELD_GOAL <=> [BatchField::Goal],
    GK_FIELD_OUTCOME <=> [BatchField::Outcome],
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapping_round_trips_and_refuses_unknown_numbers() {
        for o in Outcome::ALL {
            let c = gk_outcome::from_rust(Some(o));
            assert_eq!(gk_outcome::parse(c as u32).unwrap(), Some(o));
        }
        assert_eq!(gk_outcome::parse(0).unwrap(), None);
        assert!(gk_outcome::parse(9).is_err());
        for v in 0..3 {
            let k = gk_goal_kind::parse(v).unwrap();
            assert_eq!(gk_goal_kind::from_rust(k) as u32, v);
            let m = gk_build_mode::parse(v).unwrap();
            assert_eq!(gk_build_mode::from_rust(m) as u32, v);
        }
        for v in 0..6 {
            let s = gk_goal_state::parse(v).unwrap();
            assert_eq!(gk_goal_state::from_rust(s) as u32, v);
        }
        let e = gk_backend::parse(7).unwrap_err().to_string();
        assert!(
            e.contains("GK_BACKEND_OFD = 0") && e.contains("GK_BACKEND_FLOCK = 1"),
            "{e}"
        );
        assert!(gk_goal_kind::parse(3).is_err() && gk_build_mode::parse(3).is_err());
        use gk_event_kind::*;
        let events = [
            GK_EVENT_RUN,
            GK_EVENT_FINISHED,
            GK_EVENT_WAIT,
            GK_EVENT_DONE,
        ]
        .map(|k| k as u32);
        assert!(!events.contains(&0) && events.contains(&4));
        for k in LogKind::ALL {
            let c = gk_log_kind::from_rust(k);
            assert_eq!(gk_log_kind::parse(c as u32).unwrap(), k);
        }
        let numbers: Vec<u32> = LogKind::ALL
            .iter()
            .map(|&k| gk_log_kind::from_rust(k) as u32)
            .collect();
        assert_eq!(numbers, (1..=LogKind::ALL.len() as u32).collect::<Vec<_>>());
        assert!(gk_log_kind::parse(0).is_err());
        assert!(gk_log_kind::parse(LogKind::ALL.len() as u32 + 1).is_err());
    }
}
