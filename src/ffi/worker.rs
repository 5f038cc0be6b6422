//! The scheduler half of the C ABI: workers, goals, the pull loop.
//!
//! A worker is stored in its handle table as an `Arc<WorkerCell>`. A call
//! clones the `Arc` out of the table (holding the table's lock only for
//! that), or takes it from the thread's last call (on the same worker, in
//! the same process), then locks the worker itself, so the host's
//! predicates run with no goalkeeper-wide lock held and may call back into
//! goalkeeper (e.g. `gk_path_is_locked_by_me`, or another worker). A
//! predicate that calls back into its *own* worker gets
//! `GK_ERROR_INVALID_STATE`, never a deadlock.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::args;
use super::boundary::{call, ThreadState};
use super::enums::{
    gk_backend, gk_build_mode, gk_event_kind, gk_goal_kind, gk_goal_state, gk_outcome,
};
use super::handle::{HandleTable, Kind};
use super::status::gk_status;
use crate::base::{generation, ForkMutex};
use crate::error::{Error, Result};
use crate::lock::StorePath;
use crate::sched::{Audit, Event, GoalId, NewGoal, PathPredicate, Worker, WorkerOptions};

/// An opaque handle to a worker (a scheduler for one client request).
/// 0 is never a valid handle.
pub type gk_worker = u64;

/// A goal id, only meaningful with the worker that issued it. 0 is never
/// valid; an id of another worker, or one never issued, gives
/// `GK_ERROR_STALE_HANDLE`. Messages and log lines name a goal by its index
/// in its worker ("goal 3"): the low 32 bits of its id (`id & 0xffffffff`);
/// the high 32 bits identify the worker. A worker numbers its goals from 0
/// in the order it makes them, so the goals a host adds to a worker one
/// after another (each new, not shared: see `gk_worker_add_goal`) have
/// consecutive ids: the k-th after the first has the first's id plus k.
pub type gk_goal = u64;

/// Options for `gk_worker_new`. Pass NULL for the defaults (max_jobs 1,
/// no keep-going, OFD backend, 1000 ms re-check, no legacy hold).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gk_worker_options {
    /// Build slots shared by builds and substitutions (0: one substitution
    /// may run, builds fail).
    pub max_jobs: u32,
    /// Go on with independent goals after a failure.
    pub keep_going: bool,
    /// A `gk_backend`.
    pub backend: u32,
    /// Validity re-check period while waiting on a foreign lock, in ms (0 = 1000).
    pub recheck_interval_ms: u32,
    /// Fault injection / demonstration ONLY: finished goals keep their locks,
    /// like the C++ daemon of Guix bug #31785; the ledger then reports
    /// GK_ERROR_INVARIANT_VIOLATION. Only a library built with the
    /// `legacy-hold` cargo feature (the test suites, `make demo`) accepts it;
    /// a production build answers GK_ERROR_INVALID_ARGUMENT.
    pub legacy_hold: bool,
}

/// The same layout, with the `bool`s read as bytes (a C caller may store
/// any byte in a `bool`; reading it as a Rust `bool` would be undefined).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawOptions {
    max_jobs: u32,
    keep_going: u8,
    backend: u32,
    recheck_interval_ms: u32,
    legacy_hold: u8,
}

const _: () =
    assert!(std::mem::size_of::<RawOptions>() == std::mem::size_of::<gk_worker_options>());

/// An event from `gk_worker_next_event` (or one of `gk_worker_next_events`).
/// 40 bytes, without padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct gk_event {
    /// A `gk_event_kind` (0 if the call failed).
    pub kind: u32,
    /// The goal's `gk_goal_kind` (RUN, FINISHED), else 0.
    pub goal_kind: u32,
    /// The goal (RUN, FINISHED), else 0.
    pub goal: gk_goal,
    /// The goal's tag, as given when it was added (RUN, FINISHED), else 0:
    /// the host's own data for the goal (an index, a pointer), so that it
    /// finds its goal object without a table of goal ids. A goal shared by
    /// a second request for the same outputs (S9) keeps its first tag.
    pub tag: u64,
    /// The `gk_outcome` (FINISHED), else GK_OUTCOME_NONE.
    pub outcome: u32,
    /// The fd to poll for reading (WAIT), else -1.
    pub fd: i32,
    /// The poll timeout in ms (WAIT), -1 for none.
    pub timeout_ms: i64,
}

const _: () = assert!(std::mem::size_of::<gk_event>() == 40);

/// What `gk_worker_goal_result` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct gk_goal_result {
    /// A `gk_goal_state`.
    pub state: u32,
    /// A `gk_outcome` (GK_OUTCOME_NONE until finished).
    pub outcome: u32,
    /// A `gk_goal_kind`.
    pub kind: u32,
    /// A `gk_build_mode`.
    pub mode: u32,
}

/// A host predicate on store paths: `path` is NUL-terminated and valid only
/// during the call. Return 1 for yes, 0 for no, a negative value for an error
/// (treated as no and logged). It is called only on the thread that called
/// into the worker, and may call goalkeeper (not its own worker).
pub type gk_path_predicate =
    Option<unsafe extern "C" fn(data: *mut c_void, path: *const c_char) -> i32>;

/// A C predicate with its data and a reusable path buffer.
struct CPredicate {
    f: unsafe extern "C" fn(*mut c_void, *const c_char) -> i32,
    data: *mut c_void,
    buf: Vec<u8>,
}

// SAFETY: the worker calls the predicate only from goalkeeper calls made by
// the host, on the host's calling thread; moving the pointer between threads
// with the worker is the host's own arrangement (as with any C callback data).
unsafe impl Send for CPredicate {}

impl PathPredicate for CPredicate {
    fn ask(&mut self, path: &StorePath) -> std::result::Result<bool, String> {
        self.buf.clear();
        self.buf
            .extend_from_slice(path.as_path().as_os_str().as_bytes());
        self.buf.push(0);
        // SAFETY: `f` is the host's function, given with `data` for exactly
        // this use; `buf` is NUL-terminated and outlives the call.
        let r = unsafe { (self.f)(self.data, self.buf.as_ptr().cast()) };
        match r {
            1 => Ok(true),
            0 => Ok(false),
            r if r < 0 => Err(format!("predicate returned {r}")),
            r => Err(format!("predicate returned {r}, not 0 or 1")),
        }
    }
}

/// The workers made through the C ABI (first in the lock order of the
/// handle tables: see `ffi::before_fork`).
pub(super) static WORKERS: ForkMutex<HandleTable<Arc<WorkerCell>>> =
    ForkMutex::new(HandleTable::new(Kind::Worker));

thread_local! {
    /// The worker this thread called last: its handle, the fork generation
    /// of the call, and its cell. A call on it again skips the handle table,
    /// whose lock and reference count are four of a call's six atomic
    /// instructions (the worker's mutex is the other two); a freed worker
    /// is still refused, by its emptied cell.
    static LAST: Cell<Option<(gk_worker, u64, Arc<WorkerCell>)>> = const { Cell::new(None) };
}

/// A worker in the handle table.
pub(crate) struct WorkerCell {
    /// The thread currently inside a call on this worker (0: none; see
    /// [`ThreadState::token`]).
    in_call: AtomicUsize,
    /// The worker, and the strings of the records last taken by
    /// `gk_worker_take_log_records` (see `worker_log.rs`); both taken (and
    /// dropped) by `gk_worker_free`.
    worker: Mutex<Option<(Worker, Vec<u8>)>>,
}

/// Runs `f` on the worker named by `w` (and its log strings), with the
/// worker's mutex held but not the handle table's (which refuses stale,
/// forged, freed and wrong-kind handles, and a fork parent's workers; a
/// handle found in [`LAST`] passed it before, and a freed worker's emptied
/// cell refuses it), marking the worker as in a call of this thread, so
/// that its predicates cannot call back into it.
#[inline]
pub(super) fn with_worker<R>(
    t: &ThreadState,
    w: gk_worker,
    f: impl FnOnce(&mut Vec<u8>, &mut Worker) -> Result<R>,
) -> Result<R> {
    let fork_gen = generation();
    let cell = match LAST.try_with(Cell::take) {
        Ok(Some((h, g, cell))) if h == w && g == fork_gen => cell,
        _ => WORKERS.with(|h| h.get(w).map(|c| c.clone()))?,
    };
    let me = t.token();
    if cell.in_call.load(Ordering::Acquire) == me {
        return Err(Error::InvalidState(format!(
            "worker {w:#x} was called from inside one of its own predicates; \
             a predicate must not call back into its worker"
        )));
    }
    let mut guard = cell.worker.lock().map_err(|_| {
        Error::Invariant(format!(
            "worker {w:#x} was left inconsistent by an internal error; free it"
        ))
    })?;
    let Some((wk, log_text)) = guard.as_mut() else {
        return Err(Error::StaleHandle(format!(
            "worker handle {w:#018x} is stale: it was freed"
        )));
    };
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.store(0, Ordering::Release);
        }
    }
    cell.in_call.store(me, Ordering::Release);
    let leave = Leave(&cell.in_call);
    let r = f(log_text, wk);
    drop((leave, guard));
    let _ = LAST.try_with(|l| l.set(Some((w, fork_gen, cell))));
    r
}

pub(super) const NO_EVENT: gk_event = gk_event {
    kind: 0,
    goal_kind: 0,
    goal: 0,
    tag: 0,
    outcome: 0,
    fd: -1,
    timeout_ms: -1,
};

/// The C form of `ev`. Always inlined: the next_event and next_events
/// loops would otherwise call it per event (callgrind: ~10 to 20
/// instructions an event).
#[inline(always)]
pub(super) fn event_to_c(ev: Event, w: &Worker) -> gk_event {
    let mut out = NO_EVENT;
    match ev {
        Event::Run { goal, kind } => {
            out.kind = gk_event_kind::GK_EVENT_RUN as u32;
            out.goal = goal.raw();
            out.goal_kind = gk_goal_kind::from_rust(kind) as u32;
            out.tag = w.tag(goal).unwrap_or(0);
        }
        Event::Finished { goal, outcome } => {
            out.kind = gk_event_kind::GK_EVENT_FINISHED as u32;
            out.goal = goal.raw();
            if let Ok((kind, tag)) = w.kind_and_tag(goal) {
                out.goal_kind = gk_goal_kind::from_rust(kind) as u32;
                out.tag = tag;
            }
            out.outcome = gk_outcome::from_rust(Some(outcome)) as u32;
        }
        Event::Wait { fd, timeout } => {
            out.kind = gk_event_kind::GK_EVENT_WAIT as u32;
            out.fd = fd;
            out.timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64);
        }
        Event::Done => out.kind = gk_event_kind::GK_EVENT_DONE as u32,
    }
    out
}

/// Creates a worker. `opts` may be NULL for the defaults. On success `*out`
/// is the new handle; otherwise `*out` is 0 (`GK_ERROR_INVALID_ARGUMENT` for
/// an unknown backend).
///
/// # Safety
/// `opts` must be NULL or point to a readable `gk_worker_options`; `out`
/// must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_new(
    opts: *const gk_worker_options,
    out: *mut gk_worker,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        let mut o = WorkerOptions::default();
        if !opts.is_null() {
            args::check_array(opts, 1, "opts")?;
            // SAFETY: non-null and aligned; readable per the contract. Read
            // through the byte-typed mirror so any byte in a bool is defined.
            let raw = unsafe { std::ptr::read(opts.cast::<RawOptions>()) };
            o.max_jobs = raw.max_jobs;
            o.keep_going = raw.keep_going != 0;
            o.backend = gk_backend::parse(raw.backend)?;
            if raw.recheck_interval_ms != 0 {
                o.recheck_interval = Duration::from_millis(raw.recheck_interval_ms as u64);
            }
            o.legacy_hold = raw.legacy_hold != 0;
        }
        let w = Worker::new(o)?;
        let cell = Arc::new(WorkerCell {
            in_call: AtomicUsize::new(0),
            worker: Mutex::new(Some((w, Vec::new()))),
        });
        *out = WORKERS.with(|h| h.insert(cell));
        Ok(())
    })
}

/// Frees a worker: every goal that has not finished is cancelled and every
/// lock and slot it holds is released (the host abandoning its goals). The
/// handle goes stale; a second free gives `GK_ERROR_STALE_HANDLE`.
#[no_mangle]
pub extern "C" fn gk_worker_free(w: gk_worker) -> gk_status {
    call(|t| {
        let cell = WORKERS.with(|h| {
            if h.get(w)?.in_call.load(Ordering::Acquire) == t.token() {
                let e = "a predicate must not free its own worker";
                return Err(Error::InvalidState(e.into()));
            }
            h.remove(w)
        })?;
        // Dropped under the mutex: dropping a worker abandons its goals.
        drop(cell.worker.lock().unwrap_or_else(|e| e.into_inner()).take());
        Ok(())
    })
}

fn set_predicate(
    t: &ThreadState,
    w: gk_worker,
    f: gk_path_predicate,
    data: *mut c_void,
    valid: bool,
) -> Result<()> {
    let p: Option<Box<dyn PathPredicate>> = f.map(|f| {
        Box::new(CPredicate {
            f,
            data,
            buf: Vec::new(),
        }) as Box<dyn PathPredicate>
    });
    with_worker(t, w, |_, wk| {
        if valid {
            wk.set_valid_predicate(p);
        } else {
            wk.set_cached_predicate(p);
        }
        wk.check()
    })
}

/// Sets the validity predicate ("is this output valid?"), replacing a store
/// database; NULL restores the default, "the path exists". `data` is passed
/// back to `f`. A real store should use `gk_worker_set_store_database`.
#[no_mangle]
pub extern "C" fn gk_worker_set_valid_path(
    w: gk_worker,
    f: gk_path_predicate,
    data: *mut c_void,
) -> gk_status {
    call(|t| set_predicate(t, w, f, data, true))
}

/// Takes the worker's validity from the store database at `db_path`
/// (absolute, e.g. `/var/guix/db/db.sqlite`): an output is valid when it is
/// registered in table `ValidPaths`, as for the daemon. This is what a real
/// store needs (a build that writes its output in place makes the path exist
/// long before it is valid); the file-existence default is only right for a
/// store without a database. The database is opened read-only and checked
/// now (busy timeout 5000 ms); a bad one is an error naming the file, as
/// for `gk_store_db_open`, and the worker keeps its previous validity. On
/// success it replaces a validity predicate. NULL: back to the default, "the
/// path exists" (dropping a database or a predicate).
///
/// If the database cannot answer later (locked, replaced, unreadable), no
/// goal is finished as valid: a goal about to run fails, a goal waiting for
/// a lock keeps waiting, a reported success is recorded as failed, and the
/// worker's log names the database file and the error. A query never waits
/// on a WAL database (both daemons' default); on a rollback-journal database
/// it waits while the daemon commits, at most the busy timeout: the one
/// place where `gk_worker_next_event` and `gk_worker_report` can block.
///
/// # Safety
/// `db_path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_set_store_database(
    w: gk_worker,
    db_path: *const c_char,
) -> gk_status {
    call(|t| {
        let path = if db_path.is_null() {
            None
        } else {
            // SAFETY: non-null, and NUL-terminated per this function's contract.
            Some(unsafe { args::path(db_path, "db_path") }?)
        };
        with_worker(t, w, |_, wk| {
            match path {
                Some(p) => wk.set_store_database(p)?,
                None => wk.reset_validity(),
            }
            wk.check()
        })
    })
}

/// Sets the cached-failure predicate, asked for build goals after locking
/// ("did this output fail before?"); NULL: never.
#[no_mangle]
pub extern "C" fn gk_worker_set_cached_failure(
    w: gk_worker,
    f: gk_path_predicate,
    data: *mut c_void,
) -> gk_status {
    call(|t| set_predicate(t, w, f, data, false))
}

/// The one core of `gk_worker_add_goal` and `gk_worker_add_goal_packed`:
/// the outputs that `read` reads from the entry point's arguments
/// (validated, sorted, deduplicated), as a goal of `kind` and `mode`; its
/// id in `*out`, 0 on any error.
///
/// # Safety
/// `out` must be NULL or valid for writing.
unsafe fn add_goal(
    w: gk_worker,
    kind: u32,
    read: impl FnOnce() -> Result<Vec<StorePath>>,
    mode: u32,
    tag: u64,
    out: *mut gk_goal,
) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from the caller's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        let paths = read();
        let kind = gk_goal_kind::parse(kind)?;
        let mode = gk_build_mode::parse(mode)?;
        let goal = NewGoal::in_callers_order(kind, mode, tag, paths?, &[]);
        *out = with_worker(t, w, |_, wk| wk.add_goal_normalized(goal))?.raw();
        Ok(())
    })
}

/// Adds a goal with outputs `outputs[0..n_outputs]` (build: at least one;
/// substitute: exactly one; plain: any number, `outputs` may be NULL when
/// `n_outputs` is 0). The same output set again gives the same goal (S9),
/// which keeps its first tag and mode (a stronger mode is adopted if it
/// has not started); a partial overlap with another goal's outputs, or the
/// same outputs with another kind, is `GK_ERROR_INVALID_ARGUMENT`. `kind` is
/// a `gk_goal_kind`, `mode` a `gk_build_mode`, `tag` the host's data for
/// the goal (any value: an index, a pointer), which every event naming the
/// goal carries (`gk_event.tag`) and `gk_worker_goal_tag` returns. To add a
/// goal with its dependencies in one call, or many goals, see
/// `gk_worker_add_goals`.
///
/// # Safety
/// `outputs` must point to `n_outputs` NUL-terminated strings; `out` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_add_goal(
    w: gk_worker,
    kind: u32,
    outputs: *const *const c_char,
    n_outputs: usize,
    mode: u32,
    tag: u64,
    out: *mut gk_goal,
) -> gk_status {
    let read = || match n_outputs {
        0 => Ok(Vec::new()),
        // SAFETY: forwarded from this function's contract.
        n => unsafe { args::path_array(outputs, n) },
    };
    // SAFETY: as above.
    unsafe { add_goal(w, kind, read, mode, tag, out) }
}

/// Like `gk_worker_add_goal`, with the outputs packed in `outputs[0..len]`,
/// each terminated by a NUL byte (`len` 0: no outputs).
///
/// # Safety
/// `outputs` must point to `len` readable bytes; `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_add_goal_packed(
    w: gk_worker,
    kind: u32,
    outputs: *const u8,
    len: usize,
    mode: u32,
    tag: u64,
    out: *mut gk_goal,
) -> gk_status {
    let read = || match len {
        0 => Ok(Vec::new()),
        // SAFETY: forwarded from this function's contract.
        n => unsafe { args::packed_paths(outputs, n) },
    };
    // SAFETY: as above.
    unsafe { add_goal(w, kind, read, mode, tag, out) }
}

/// Makes `goal` wait for `dep`. `goal` must not have started
/// (`GK_ERROR_INVALID_STATE`); if `dep` already failed, `goal` ends
/// dependency-failed (a FINISHED event follows).
#[no_mangle]
pub extern "C" fn gk_worker_add_dependency(w: gk_worker, goal: gk_goal, dep: gk_goal) -> gk_status {
    call(|t| {
        with_worker(t, w, |_, wk| {
            wk.add_dependency(GoalId::from_raw(goal), GoalId::from_raw(dep))
        })
    })
}

/// Stores the next event in `*out`. Never blocks. `GK_ERROR_SCHEDULER_DEADLOCK`:
/// goals remain but nothing can progress (the message names them).
/// `GK_ERROR_INVARIANT_VIOLATION`: a ledger check failed (the message names
/// goal and path); the event is kept for the next call.
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_next_event(w: gk_worker, out: *mut gk_event) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = NO_EVENT;
        with_worker(t, w, |_, wk| {
            wk.next_events_with(1, |wk, ev| *out = event_to_c(ev, wk))
        })?;
        Ok(())
    })
}

/// Reports how a goal that was RUN ended: `GK_OUTCOME_BUILT`,
/// `GK_OUTCOME_SUBSTITUTED`, `GK_OUTCOME_FAILED` or `GK_OUTCOME_TIMED_OUT`.
/// Success is checked with the validity predicate (an invalid output makes
/// it failed). The goal's locks and slot are released before any dependent
/// is woken.
#[no_mangle]
pub extern "C" fn gk_worker_report(w: gk_worker, goal: gk_goal, outcome: u32) -> gk_status {
    call(|t| {
        let o = gk_outcome::parse_reported(outcome)?;
        with_worker(t, w, |_, wk| wk.report(GoalId::from_raw(goal), o))
    })
}

/// Cancels a goal that has not finished (a running one: the host stopped
/// it); its dependents end dependency-failed. `GK_ERROR_INVALID_STATE` if it
/// has finished.
#[no_mangle]
pub extern "C" fn gk_worker_cancel(w: gk_worker, goal: gk_goal) -> gk_status {
    call(|t| with_worker(t, w, |_, wk| wk.cancel(GoalId::from_raw(goal))))
}

/// Stores a goal's state, outcome, kind and mode in `*out` (results outlive
/// the goal's execution).
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_goal_result(
    w: gk_worker,
    goal: gk_goal,
    out: *mut gk_goal_result,
) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        let r = with_worker(t, w, |_, wk| {
            let id = GoalId::from_raw(goal);
            wk.check_goal(id)?;
            wk.result(id)
        })?;
        *out = gk_goal_result {
            state: gk_goal_state::from_rust(r.state) as u32,
            outcome: gk_outcome::from_rust(r.outcome) as u32,
            kind: gk_goal_kind::from_rust(r.kind) as u32,
            mode: gk_build_mode::from_rust(r.mode) as u32,
        };
        Ok(())
    })
}

/// Stores the tag `goal` was added with in `*out` (for a goal shared by
/// several requests for the same outputs, the first request's tag).
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_goal_tag(
    w: gk_worker,
    goal: gk_goal,
    out: *mut u64,
) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        *out = with_worker(t, w, |_, wk| wk.tag(GoalId::from_raw(goal)))?;
        Ok(())
    })
}

/// Writes a goal's outputs, sorted, each NUL-terminated, into `buf[0..cap]`
/// and their total size into `*len_out` (`GK_ERROR_BUFFER_TOO_SMALL` with
/// the size needed if `cap` is too small; `buf` may be NULL with `cap` 0).
///
/// # Safety
/// `buf` must be valid for `cap` bytes of writes; `len_out` for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_goal_outputs(
    w: gk_worker,
    goal: gk_goal,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> gk_status {
    call(|t| {
        with_worker(t, w, |_, wk| {
            let id = GoalId::from_raw(goal);
            wk.check_goal(id)?;
            let outs = wk.outputs(id)?;
            let items = outs.iter().map(|p| p.as_path().as_os_str().as_bytes());
            // SAFETY: forwarded from this function's contract.
            unsafe { args::write_list(buf, cap, len_out, items) }
        })
    })
}

/// A worker's counts: the scheduler's [`Audit`], whose layout is C's
/// (`gk_audit` in the header).
pub use crate::sched::Audit as gk_audit;

/// Stores the worker's counts in `*out` (see `gk_audit`). The audit reports
/// violations in its counts; it does not fail because of them.
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_audit(w: gk_worker, out: *mut Audit) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = with_worker(t, w, |_, wk| Ok(wk.audit()))?;
        Ok(())
    })
}

/// Stores the worker's eventfd in `*out` (the fd of WAIT events).
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_fd(w: gk_worker, out: *mut i32) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = with_worker(t, w, |_, wk| {
            wk.check()?;
            Ok(wk.fd())
        })?;
        Ok(())
    })
}

/// Drains the worker's diagnostics log into `buf[0..cap]`: lines, each
/// NUL-terminated, total size in `*len_out`. With too small a buffer nothing
/// is drained and `GK_ERROR_BUFFER_TOO_SMALL` gives the size needed.
///
/// # Safety
/// `buf` must be valid for `cap` bytes of writes; `len_out` for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_take_log(
    w: gk_worker,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> gk_status {
    call(|t| {
        with_worker(t, w, |_, wk| {
            wk.check()?;
            let lines = wk.log_lines();
            // NULs cannot appear in log lines we write, but never emit one.
            let items = lines.iter().map(|l| args::until_nul(l.as_bytes()));
            // SAFETY: forwarded from this function's contract.
            unsafe { args::write_list(buf, cap, len_out, items) }?;
            wk.take_log();
            Ok(())
        })
    })
}

/// The name of a `gk_outcome`, e.g. `"already-valid"`; `"none"` for 0 and
/// `"unknown"` for a value that is not an outcome. The string is static.
#[no_mangle]
pub extern "C" fn gk_outcome_name(outcome: u32) -> *const c_char {
    match gk_outcome::from_raw(outcome).map(gk_outcome::to_rust) {
        None => c"unknown".as_ptr(),
        Some(None) => c"none".as_ptr(),
        Some(Some(o)) => o.name_c().as_ptr(),
    }
}
