//! The scheduler's plain values: what a goal is (its kind and mode), how it
//! ended, where it is, and the events a worker hands to its host. The state
//! value that owns a goal's resources is `graph::Phase`.

use std::os::unix::io::RawFd;
use std::time::Duration;

use super::ids::GoalId;
use crate::error::{Error, Result};

/// What a goal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoalKind {
    /// Builds a derivation: locks all its outputs, takes a build slot.
    Build,
    /// Substitutes one store path: locks it, takes a build slot (at
    /// `max_jobs = 0` one substitution may still run).
    Substitute,
    /// Host work with no store outputs to lock and no slot (e.g. a top-level
    /// goal that only gathers others). Its outputs, if given, are recorded only.
    Plain,
}

/// How a build treats outputs that are already valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuildMode {
    /// Valid outputs are not rebuilt.
    Normal,
    /// Repair: the validity predicate decides what needs repairing (a host
    /// in repair mode answers "not valid" for corrupt paths).
    Repair,
    /// Check: rebuild even if valid, so the "already valid" shortcut is skipped.
    Check,
}

/// How a goal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The host built it (reported, and its outputs are valid).
    Built,
    /// The host substituted it (reported, and its output is valid).
    Substituted,
    /// Its outputs were valid already, or became valid while it waited.
    AlreadyValid,
    /// The host reported failure, or success without valid outputs, or it
    /// could not be started (e.g. a build with `max_jobs = 0`).
    Failed,
    /// The host reported a timeout.
    TimedOut,
    /// The host's cached-failure predicate said an output failed before.
    CachedFailure,
    /// A dependency did not succeed.
    DependencyFailed,
    /// Cancelled by the host, by an earlier failure without keep-going, or
    /// because the host abandoned the worker.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in numeric order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Built,
        Outcome::Substituted,
        Outcome::AlreadyValid,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::CachedFailure,
        Outcome::DependencyFailed,
        Outcome::Cancelled,
    ];

    /// `true` for built, substituted and already valid.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Built | Outcome::Substituted | Outcome::AlreadyValid
        )
    }

    /// Whether a host may report this outcome (built, substituted, failed,
    /// timed out); [`Error::InvalidArgument`] for the others, which only the
    /// worker decides.
    pub(crate) fn reportable(self) -> Result<()> {
        match self {
            Outcome::Built | Outcome::Substituted | Outcome::Failed | Outcome::TimedOut => Ok(()),
            o => Err(Error::InvalidArgument(format!(
                "only built, substituted, failed and timed-out can be reported, not {}",
                o.name()
            ))),
        }
    }

    /// `true` for the failures that, without keep-going, cancel the rest.
    pub fn stops_the_worker(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::TimedOut | Outcome::CachedFailure
        )
    }

    /// The outcome's name, e.g. `"already-valid"`.
    pub fn name(self) -> &'static str {
        self.name_c().to_str().unwrap_or("unknown")
    }

    /// The outcome's name as a static C string.
    pub fn name_c(self) -> &'static std::ffi::CStr {
        match self {
            Outcome::Built => c"built",
            Outcome::Substituted => c"substituted",
            Outcome::AlreadyValid => c"already-valid",
            Outcome::Failed => c"failed",
            Outcome::TimedOut => c"timed-out",
            Outcome::CachedFailure => c"cached-failure",
            Outcome::DependencyFailed => c"dependency-failed",
            Outcome::Cancelled => c"cancelled",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a goal is in its life (the public view of the worker's internal state value, `Phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoalState {
    /// Some dependency has not finished.
    WaitingDeps,
    /// Runnable; the worker will try it at the next `next_event`.
    Ready,
    /// Waiting for a build slot (holding no lock).
    WaitingSlot,
    /// Waiting for a lock held by another goal or process (holding nothing).
    WaitingLock,
    /// Running: the host was told (or will be told at the next event) to run
    /// it; its locks and slot are held.
    Running,
    /// Finished; see the outcome.
    Finished,
}

impl GoalState {
    /// Number of states (for counters).
    pub(crate) const COUNT: usize = 6;

    /// The state's name in messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            GoalState::WaitingDeps => "waiting for dependencies",
            GoalState::Ready => "ready",
            GoalState::WaitingSlot => "waiting for a build slot",
            GoalState::WaitingLock => "waiting for a lock",
            GoalState::Running => "running",
            GoalState::Finished => "finished",
        }
    }
}

impl GoalKind {
    /// The kind's rule for the number of outputs: a build has at least one,
    /// a substitute exactly one, a plain goal any number.
    pub(crate) fn check_output_count(self, n: usize) -> Result<()> {
        match self {
            GoalKind::Build if n == 0 => Err(Error::InvalidArgument(
                "a build goal needs at least one output".into(),
            )),
            GoalKind::Substitute if n != 1 => Err(Error::InvalidArgument(format!(
                "a substitute goal has exactly one output, not {n}"
            ))),
            _ => Ok(()),
        }
    }
}

/// What the host should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Run goal `goal`: its dependencies succeeded, its slot is taken, its
    /// output locks are held, and its outputs were re-checked and are not
    /// valid (or the mode is check). Report the outcome with
    /// [`Worker::report`](super::Worker::report). Plain goals hold no lock
    /// and no slot.
    Run {
        /// The goal to run.
        goal: GoalId,
        /// Its kind.
        kind: GoalKind,
    },
    /// Goal `goal` finished without running (already valid, dependency
    /// failed, cached failure, cancelled by a failure, could not start).
    Finished {
        /// The goal.
        goal: GoalId,
        /// How it ended.
        outcome: Outcome,
    },
    /// Nothing to do now: poll `fd` for reading (it becomes readable when a
    /// foreign lock wait may have ended) together with your builders, for at
    /// most `timeout` (`None`: no limit), then ask again.
    Wait {
        /// The worker's eventfd.
        fd: RawFd,
        /// When validity re-checks are due.
        timeout: Option<Duration>,
    },
    /// Every goal has finished.
    Done,
}

impl Event {
    /// The goal the event names (`Run`, `Finished`).
    pub(crate) fn goal(&self) -> Option<GoalId> {
        match self {
            Event::Run { goal, .. } | Event::Finished { goal, .. } => Some(*goal),
            _ => None,
        }
    }
}

/// What the host can learn about a goal, at any time (results outlive execution).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoalResult {
    /// Where the goal is.
    pub state: GoalState,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// Its kind.
    pub kind: GoalKind,
    /// Its build mode.
    pub mode: BuildMode,
    /// Its output paths, sorted.
    pub outputs: Vec<std::path::PathBuf>,
}
