//! The worker's diagnostics log: who waits for what, held by whom; lock
//! hand-offs; why a goal failed without running; predicate errors; ledger
//! violations. Each entry is a structured [`LogRecord`] (kind, goal, path,
//! holder, time, duration) that also carries the human message; the text
//! log is the records' messages. Bounded; drained by `take_log` and
//! `take_log_records`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use super::ids::GoalId;

/// At most this many records are kept; older ones are dropped and counted.
pub(crate) const LOG_CAP: usize = 10_000;

/// What a [`LogRecord`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// A goal waits for a lock held in the kernel by another process, or by
    /// another lock set or worker of this process; it holds nothing
    /// meanwhile. The holder's pid is given when it could be found.
    WaitsForeign,
    /// A goal waits for a lock held by another goal of the same worker (the
    /// holder goal is given); it holds nothing meanwhile.
    WaitsLocal,
    /// A goal that waited for a lock got it handed over (the duration is
    /// how long it waited) and goes on to run.
    HandedOver,
    /// A goal waiting for a lock found its outputs valid (on a re-check, or
    /// once the lock was handed over) and finished already valid without
    /// running; the duration is how long it waited.
    BecameValid,
    /// A goal could not lock its outputs, or could not wait for a lock, or
    /// its wait failed: it ended failed. The message has the error.
    CouldNotLock,
    /// Releasing a goal's locks reported an error (a lock file could not be
    /// deleted and was left in place, unlocked).
    ReleaseFailed,
    /// A host predicate (validity or cached failure) failed on the path;
    /// its answer was taken as "no".
    PredicateError,
    /// The cached-failure predicate said an output of the goal failed
    /// before: the goal ends cached-failure.
    CachedFailure,
    /// The host reported success but the path is not valid: the goal is
    /// recorded as failed.
    NotValidAfterSuccess,
    /// The goal failed and keep-going is off: every goal that was not
    /// running was cancelled (the message says how many).
    CancelledByFailure,
    /// A build goal cannot run because `max_jobs` is 0: it failed.
    NoBuildSlots,
    /// A goal was requested again in another build mode after it started;
    /// it keeps its mode.
    ModeKept,
    /// A ledger invariant check failed (the message names goal and path).
    LedgerViolation,
    /// The log was full: older records were dropped (the message says how
    /// many). Always the first record taken after a drop.
    Dropped,
    /// The store database could not say whether an output is valid (locked
    /// past its busy timeout, unreadable, replaced by garbage, ...): the
    /// goal is never finished as valid on that answer; the message names
    /// the database file, the error and what the goal does (fails, keeps
    /// waiting). Also written, once, when a waiting goal's database answers
    /// again.
    ValidityUnknown,
    /// A goal waiting for another process's lock re-checked its outputs and
    /// found one on disk but not valid: not registered in the store
    /// database (or refused by the host's validity predicate), because the
    /// lock's holder is still writing it in place, or a build that did not
    /// finish left it. The goal keeps waiting; the path is the output, the
    /// duration how long it has waited so far. Written when a wait starts
    /// seeing the output so, not at every re-check. Never with the default
    /// validity ("the path exists").
    OnDiskNotValid,
}

impl LogKind {
    /// Every kind, in declaration order.
    pub const ALL: [LogKind; 16] = [
        LogKind::WaitsForeign,
        LogKind::WaitsLocal,
        LogKind::HandedOver,
        LogKind::BecameValid,
        LogKind::CouldNotLock,
        LogKind::ReleaseFailed,
        LogKind::PredicateError,
        LogKind::CachedFailure,
        LogKind::NotValidAfterSuccess,
        LogKind::CancelledByFailure,
        LogKind::NoBuildSlots,
        LogKind::ModeKept,
        LogKind::LedgerViolation,
        LogKind::Dropped,
        LogKind::ValidityUnknown,
        LogKind::OnDiskNotValid,
    ];

    /// The kind's name, e.g. `"waits-foreign"`.
    pub fn name(self) -> &'static str {
        self.name_c().to_str().expect("ASCII")
    }

    /// The kind's name as a static C string.
    pub(crate) fn name_c(self) -> &'static std::ffi::CStr {
        match self {
            LogKind::WaitsForeign => c"waits-foreign",
            LogKind::WaitsLocal => c"waits-local",
            LogKind::HandedOver => c"handed-over",
            LogKind::BecameValid => c"became-valid",
            LogKind::CouldNotLock => c"could-not-lock",
            LogKind::ReleaseFailed => c"release-failed",
            LogKind::PredicateError => c"predicate-error",
            LogKind::CachedFailure => c"cached-failure",
            LogKind::NotValidAfterSuccess => c"not-valid-after-success",
            LogKind::CancelledByFailure => c"cancelled-by-failure",
            LogKind::NoBuildSlots => c"no-build-slots",
            LogKind::ModeKept => c"mode-kept",
            LogKind::LedgerViolation => c"ledger-violation",
            LogKind::Dropped => c"dropped",
            LogKind::ValidityUnknown => c"validity-unknown",
            LogKind::OnDiskNotValid => c"on-disk-not-valid",
        }
    }
}

impl std::fmt::Display for LogKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a worker's diagnostics log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// What happened.
    pub kind: LogKind,
    /// The goal concerned, if any.
    pub goal: Option<GoalId>,
    /// The store path concerned, if any: the output whose lock is awaited
    /// or was handed over (its lock file is `PATH.lock`), the path a
    /// predicate failed on, the output that is not valid.
    pub path: Option<PathBuf>,
    /// For waits: the pid of the process holding the lock, when known (this
    /// process's own pid when the holder is a lock set or goal of this
    /// process; for another process, as `/proc` tells, see
    /// [`crate::inspect`]).
    pub holder_pid: Option<u32>,
    /// For waits on a goal of this process: that goal.
    pub holder_goal: Option<GoalId>,
    /// When the record was made: `CLOCK_MONOTONIC`, in nanoseconds (one
    /// clock for every process of the machine).
    pub time_ns: u64,
    /// For hand-offs and goals that became valid while waiting: how long
    /// the goal waited for the lock; for [`LogKind::OnDiskNotValid`], how
    /// long it has waited so far.
    pub duration: Option<Duration>,
    /// The human-readable line, as the text log gives it.
    pub message: String,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl LogRecord {
    /// A record of `kind` saying `message`, stamped now.
    pub(crate) fn new(kind: LogKind, message: String) -> LogRecord {
        LogRecord {
            kind,
            goal: None,
            path: None,
            holder_pid: None,
            holder_goal: None,
            time_ns: monotonic_ns(),
            duration: None,
            message,
        }
    }
}

/// The log: at most [`LOG_CAP`] records, and how many older ones were
/// dropped to keep it so.
#[derive(Default)]
pub(crate) struct Log {
    records: VecDeque<LogRecord>,
    dropped: u64,
}

impl Log {
    /// Appends `record` (dropping the oldest if the log is full); returns
    /// it, to be completed.
    pub(crate) fn push(&mut self, record: LogRecord) -> &mut LogRecord {
        if self.records.len() >= LOG_CAP {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
        self.records.back_mut().expect("just pushed")
    }

    /// The records so far, oldest first; the log is emptied.
    pub(crate) fn take(&mut self) -> Vec<LogRecord> {
        self.take_up_to(usize::MAX)
    }

    /// At most `n` records, oldest first (after the note about dropped
    /// records, if any were dropped); the rest stay.
    pub(crate) fn take_up_to(&mut self, n: usize) -> Vec<LogRecord> {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            let line = format!("({n} older log lines were dropped)");
            self.records
                .push_front(LogRecord::new(LogKind::Dropped, line));
        }
        let n = n.min(self.records.len());
        self.records.drain(..n).collect()
    }

    /// The records, without draining.
    pub(crate) fn peek(&self) -> impl Iterator<Item = &LogRecord> {
        self.records.iter()
    }

    /// The number of records waiting (a note about dropped records counts
    /// as one).
    pub(crate) fn len(&self) -> usize {
        self.records.len() + usize::from(self.dropped > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_drops_the_oldest_and_says_so_first() {
        let mut log = Log::default();
        for i in 0..LOG_CAP + 3 {
            log.push(LogRecord::new(LogKind::ModeKept, format!("line {i}")));
        }
        assert_eq!(log.len(), LOG_CAP + 1);
        let first = log.take_up_to(2);
        assert_eq!(first[0].kind, LogKind::Dropped);
        assert_eq!(first[0].message, "(3 older log lines were dropped)");
        assert_eq!(first[1].message, "line 3");
        assert_eq!(log.len(), LOG_CAP - 1);
        let rest = log.take();
        assert_eq!(rest.len(), LOG_CAP - 1);
        assert!(rest.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let names: std::collections::BTreeSet<&str> =
            LogKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), LogKind::ALL.len());
    }
}
