//! What a goal is: its kind, mode, outcome, and its state value.
//!
//! The state value ([`Phase`]) *owns* the goal's execution resources: a
//! running goal's lock set and slot token live inside [`Phase::Running`].
//! Leaving that state moves them out, and the only code that does so is the
//! terminal transition, which releases them: entering a terminal state *is*
//! the release (G1). Results ([`Goal::outcome`]) live beside the state and
//! outlive it.

use crate::lock::LockSet;

use super::slots::SlotToken;

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

    /// `true` for the successes a host reports (built, substituted).
    #[inline(always)]
    pub(crate) fn is_reported_success(self) -> bool {
        matches!(self, Outcome::Built | Outcome::Substituted)
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

/// Where a goal is in its life (the public view of [`Phase`]).
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
}

/// What a waiting-for-a-lock goal waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitRef {
    /// A kernel wait on a helper thread: index into the foreign-wait table.
    Foreign(u32),
    /// The completion of another goal of this worker (its arena index).
    Local(u32),
}

/// What a running goal holds. A build or substitute goal runs holding all
/// of its output locks and a build slot; a plain goal holds nothing. There
/// is no third shape (a goal running with locks but no slot, or the
/// reverse), so none can be built by mistake. Only the terminal transition
/// takes the resources out of the running state, and it releases them.
#[derive(Debug)]
pub(crate) enum Exec {
    /// A plain goal: no lock, no slot.
    Plain,
    /// A build or substitute goal's resources.
    Holding {
        /// Its output locks, all of them (G2).
        locks: Box<LockSet>,
        /// Its build slot.
        slot: SlotToken,
    },
}

/// A goal's state value, owning whatever the goal holds.
#[derive(Debug)]
pub(crate) enum Phase {
    WaitingDeps,
    Ready,
    WaitingSlot,
    WaitingLock(WaitRef),
    Running(Exec),
    /// Finished, with how it ended: a finished goal carries its outcome and
    /// nothing else.
    Done(Outcome),
}

impl Phase {
    pub(crate) fn state(&self) -> GoalState {
        match self {
            Phase::WaitingDeps => GoalState::WaitingDeps,
            Phase::Ready => GoalState::Ready,
            Phase::WaitingSlot => GoalState::WaitingSlot,
            Phase::WaitingLock(_) => GoalState::WaitingLock,
            Phase::Running(_) => GoalState::Running,
            Phase::Done(_) => GoalState::Finished,
        }
    }

    /// How the goal ended, once it has.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self {
            Phase::Done(o) => Some(*o),
            _ => None,
        }
    }

    /// `true` once the goal has finished.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Phase::Done(_))
    }
}

/// Sentinel for "no index" in the u32 links below.
pub(crate) const NONE: u32 = u32::MAX;

/// One goal in the arena. Kept small (32 bytes, half a cache line, never
/// straddling one): the dependency counters and dependents live in the
/// arena's dense arrays, the outputs in a side table. The host's tag is
/// here because every event that names the goal carries it, and the
/// record is the line the event already reads.
#[derive(Debug)]
pub(crate) struct Goal {
    pub(crate) phase: Phase,
    /// The host's data for this goal (`gk_event.tag`), given when it was
    /// added; a goal shared by a second request for the same outputs (S9)
    /// keeps its first tag.
    pub(crate) tag: u64,
    /// Index into the outputs table, or [`NONE`] for a goal without outputs.
    pub(crate) outputs: u32,
    pub(crate) kind: GoalKind,
    pub(crate) mode: BuildMode,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_records_stay_compact() {
        assert!(std::mem::size_of::<Phase>() <= 16);
        assert!(std::mem::size_of::<Goal>() <= 32);
    }
}
