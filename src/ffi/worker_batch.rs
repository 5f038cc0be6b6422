//! The batched calls of the C ABI: `gk_worker_add_goals` (many goals, with
//! their outputs and dependencies, CSR style), `gk_worker_next_events` (up
//! to N events) and `gk_worker_report_many` (many reports, with the outcome
//! recorded for each).
//!
//! A batch is read and checked whole before the worker changes: all or
//! nothing. The C layer reads what only it can read (kinds, modes, offsets,
//! output strings, outcome numbers); the scheduler checks the rest (output
//! rules, sharing, dependencies, goal states) and names the first bad
//! element, in the documented order; `gk_batch_error` says which.

use std::ffi::c_char;

use super::args;
use super::boundary::{call, ThreadState};
use super::enums::{gk_batch_field, gk_build_mode, gk_goal_kind, gk_outcome};
use super::status::gk_status;
use super::worker::{event_to_c, gk_event, gk_goal, gk_worker, with_worker};
use crate::error::{Error, Result};
use crate::lock::{StorePath, PATH_MAX};
use crate::sched::{Bad, BatchError, BatchField, BuildMode, GoalId, GoalKind, NewGoal, Report};

/// The largest number of outputs one goal of a batch may have (as for a
/// lock set: `MAX_SET_LEN`).
const MAX_OUTPUTS: u32 = 1 << 20;

/// Many goals for `gk_worker_add_goals`, as arrays indexed by goal, with
/// each goal's outputs and dependencies given CSR style: goal `i`'s are
/// elements `offsets[i]` to `offsets[i + 1] - 1` of a flat array
/// (`offsets[0]` is 0, the offsets never decrease, and `offsets[n_goals]`
/// is the flat array's length). 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gk_goal_batch {
    /// `sizeof(gk_goal_batch)`: refused if different.
    pub struct_size: u32,
    /// The number of goals (0: the call adds nothing).
    pub n_goals: u32,
    /// `[n_goals]` `gk_goal_kind`s.
    pub kinds: *const u32,
    /// `[n_goals]` `gk_build_mode`s, or NULL: all `GK_MODE_NORMAL`.
    pub modes: *const u32,
    /// `[n_goals]` tags (the host's data for each goal, see
    /// `gk_worker_add_goal`), or NULL: all 0.
    pub tags: *const u64,
    /// `[n_goals + 1]` offsets into the outputs, or NULL: no goal has outputs.
    pub output_offsets: *const u32,
    /// `[output_offsets[n_goals]]` NUL-terminated store paths; or NULL, and
    /// the outputs are in `outputs_packed` instead (exactly one of the two
    /// when there are outputs).
    pub outputs: *const *const c_char,
    /// The outputs one after another, each terminated by a NUL byte: goal
    /// `i`'s are the strings `output_offsets[i]` to `output_offsets[i + 1] - 1`
    /// of it, and it holds exactly `output_offsets[n_goals]` strings.
    pub outputs_packed: *const u8,
    /// The length of `outputs_packed` in bytes.
    pub outputs_packed_len: usize,
    /// `[n_goals + 1]` offsets into `deps`, or NULL: no goal has dependencies.
    pub dep_offsets: *const u32,
    /// `[dep_offsets[n_goals]]` goal ids: goals of the worker, or
    /// `GK_BATCH_GOAL(k)` for goal `k` of this batch (earlier or later in it,
    /// not the goal itself).
    pub deps: *const gk_goal,
}

/// Which element of a batch was refused (`gk_worker_add_goals`,
/// `gk_worker_report_many`); the status and `gk_last_error_message()` say
/// why. Zeroed on `GK_OK`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct gk_batch_error {
    /// The element: goal `index` (add_goals), report `index`
    /// (report_many), or the offset `index` (`GK_FIELD_*_OFFSETS`); 0 for
    /// `GK_FIELD_NONE`.
    pub index: usize,
    /// Which output or dependency of it (0 when not applicable).
    pub sub: usize,
    /// A `gk_batch_field`: which part of the element.
    pub field: u32,
    /// Always 0.
    pub reserved: u32,
}

/// One report for `gk_worker_report_many`. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct gk_report {
    /// In: a goal that was RUN.
    pub goal: gk_goal,
    /// In: `GK_OUTCOME_BUILT`, `GK_OUTCOME_SUBSTITUTED`, `GK_OUTCOME_FAILED`
    /// or `GK_OUTCOME_TIMED_OUT`.
    pub outcome: u32,
    /// Out: the `gk_outcome` recorded (`GK_OUTCOME_FAILED` for a success
    /// whose outputs are not all valid); 0 if the call failed.
    pub recorded: u32,
}

/// Runs a batch call's body, which fails as a call (`Err`: a pointer
/// argument, the worker handle) or for an element of the batch
/// (`Ok(Err)`); writes `*err` (if given) and returns the status.
fn batch_call(
    err: *mut gk_batch_error,
    body: impl FnOnce(&ThreadState) -> Result<std::result::Result<(), BatchError>>,
) -> gk_status {
    call(|t| {
        let err = if err.is_null() {
            None
        } else {
            // SAFETY: non-null; valid for writing per the callers' contracts.
            let e = unsafe { args::out(err, "err") }?;
            *e = gk_batch_error::default();
            Some(e)
        };
        let Err(b) = body(t)? else {
            return Ok(());
        };
        if let Some(e) = err {
            *e = gk_batch_error {
                index: b.index,
                sub: b.sub,
                field: gk_batch_field::from_rust(b.field) as u32,
                reserved: 0,
            };
        }
        Err(b.error)
    })
}

/// `n` elements at `p` as a slice, or `None` for NULL; refused if
/// misaligned or too large.
///
/// # Safety
/// `p` must be NULL or point to `n` readable `T`s.
unsafe fn opt_array<'a, T>(
    p: *const T,
    n: usize,
    field: BatchField,
    what: &'static str,
) -> std::result::Result<Option<&'a [T]>, BatchError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: as this function's contract says.
    let a = unsafe { args::array(p, n, what) };
    a.map(Some).map_err(|e| BatchError::new(0, 0, field, e))
}

/// The `[a, b)` range of goal `i` in a CSR offsets array, checked against
/// the previous offset, the flat array's length `total`, and `max`
/// elements per goal.
#[inline]
fn range(
    off: &[u32],
    i: usize,
    total: u32,
    max: u32,
    field: BatchField,
) -> std::result::Result<(u32, u32), Box<BatchError>> {
    let (a, b) = (off[i], off[i + 1]);
    if (i == 0 && a != 0) || b < a || b > total || b - a > max {
        return Err(bad_range(a, b, i, total, max, field));
    }
    Ok((a, b))
}

/// Why [`range`] refused goal `i`'s offsets `a` and `b`.
#[cold]
fn bad_range(a: u32, b: u32, i: usize, total: u32, max: u32, field: BatchField) -> Box<BatchError> {
    let at_start = i == 0 && a != 0;
    let e = Error::InvalidArgument(if at_start {
        format!("the first offset must be 0, not {a}")
    } else if b < a || b > total {
        format!(
            "offset {b} is outside {a}..={total} (the previous offset .. the last offset): \
             offsets never decrease"
        )
    } else {
        format!("goal {i} has {} outputs; at most {max} are accepted", b - a)
    });
    let index = if at_start { 0 } else { i + 1 };
    Box::new(BatchError::offset(index, i, field, e))
}

/// Where the outputs come from.
enum Outputs<'a> {
    Strings(&'a [*const c_char]),
    Packed(&'a [u8]),
}

/// Reads the batch into `goals` (a placeholder, a plain goal without
/// outputs or dependencies, for a goal that cannot be read), and returns the
/// first element that cannot be read. A whole-batch error (NULL arrays,
/// misalignment, inconsistent outputs) is returned at once.
///
/// # Safety
/// The arrays of `b` must be as `gk_goal_batch` describes.
unsafe fn read_batch<'a>(
    b: &'a gk_goal_batch,
    goals: &mut Vec<NewGoal<'a>>,
) -> std::result::Result<Bad, BatchError> {
    let n = b.n_goals as usize;
    if n == 0 {
        return Ok(None);
    }
    let whole = |e: Error| BatchError::whole(e);
    // SAFETY: the arrays are as this function's contract says (here and below).
    let kinds = unsafe { opt_array(b.kinds, n, BatchField::Kind, "kinds") }?
        .ok_or_else(|| BatchError::new(0, 0, BatchField::Kind, Error::NullPointer("kinds")))?;
    // SAFETY: as above.
    let modes = unsafe { opt_array(b.modes, n, BatchField::Mode, "modes") }?;
    // SAFETY: as above.
    let tags = unsafe { opt_array(b.tags, n, BatchField::Batch, "tags") }?;
    let (oo, dd) = (BatchField::OutputOffsets, BatchField::DepOffsets);
    // SAFETY: as above.
    let out_off = unsafe { opt_array(b.output_offsets, n + 1, oo, "output_offsets") }?;
    // SAFETY: as above.
    let dep_off = unsafe { opt_array(b.dep_offsets, n + 1, dd, "dep_offsets") }?;
    let out_total = out_off.map_or(0, |o| o[n]);
    let dep_total = dep_off.map_or(0, |o| o[n]);
    let outputs = if out_total == 0 {
        Outputs::Strings(&[])
    } else {
        match (b.outputs.is_null(), b.outputs_packed.is_null()) {
            (false, false) => {
                return Err(whole(Error::InvalidArgument(
                    "give outputs or outputs_packed, not both".into(),
                )))
            }
            (true, true) => return Err(whole(Error::NullPointer("outputs and outputs_packed"))),
            (false, true) => {
                // SAFETY: `output_offsets[n_goals]` pointers (the contract).
                let strings = unsafe { args::array(b.outputs, out_total as usize, "outputs") };
                Outputs::Strings(strings.map_err(whole)?)
            }
            (true, false) => {
                let len = b.outputs_packed_len;
                if len > out_total as usize * PATH_MAX || len > isize::MAX as usize {
                    return Err(whole(Error::InvalidArgument(format!(
                        "outputs_packed_len {len} is larger than {out_total} paths can be"
                    ))));
                }
                // SAFETY: non-null, `len` readable bytes per the contract.
                Outputs::Packed(unsafe { std::slice::from_raw_parts(b.outputs_packed, len) })
            }
        }
    };
    let all_deps = if b.deps.is_null() {
        None // refused with the first goal that has dependencies
    } else {
        // SAFETY: `dep_offsets[n_goals]` ids (the contract); `GoalId` is a
        // transparent `u64`.
        let deps = unsafe { args::array(b.deps.cast::<GoalId>(), dep_total as usize, "deps") };
        Some(deps.map_err(whole)?)
    };
    let mut first: Bad = None;
    // The packed walk: where goal i's outputs start, and whether it is still
    // in step (after a malformed string, later goals' outputs are unknown).
    let mut cursor = 0usize;
    let mut in_step = true;
    let mut read_goal = |i: usize| {
        let tag = tags.map_or(0, |t| t[i]);
        let mut bad: Bad = None;
        let kind = gk_goal_kind::parse(kinds[i]).unwrap_or_else(|e| {
            bad = BatchError::new(i, 0, BatchField::Kind, e).bad();
            GoalKind::Plain
        });
        // No modes: all GK_MODE_NORMAL (0).
        let mode = gk_build_mode::parse(modes.map_or(0, |m| m[i])).unwrap_or_else(|e| {
            bad = bad
                .take()
                .or(BatchError::new(i, 0, BatchField::Mode, e).bad());
            BuildMode::Normal
        });
        let mut paths = Vec::new();
        if let Some(off) = out_off {
            match range(off, i, out_total, MAX_OUTPUTS, BatchField::OutputOffsets) {
                Err(e) => {
                    bad = bad.or(Some(e));
                    in_step = false;
                }
                Ok((a, z)) => {
                    // SAFETY: the strings are as the contract says.
                    match unsafe { read_outputs(&outputs, i, a, z, &mut cursor, &mut in_step) } {
                        Ok(v) => paths = v,
                        Err(e) => bad = bad.or(Some(e)),
                    }
                }
            }
        }
        let readable = bad.is_none();
        let mut deps: &[GoalId] = &[];
        if let Some(off) = dep_off {
            match range(off, i, dep_total, u32::MAX, BatchField::DepOffsets) {
                Err(e) => bad = bad.or(Some(e)),
                Ok((a, z)) if z == a => {}
                Ok((a, z)) => match all_deps {
                    Some(all) => deps = &all[a as usize..z as usize],
                    None => {
                        let e = Error::NullPointer("deps");
                        bad = bad.or(BatchError::new(i, 0, BatchField::Dependency, e).bad());
                    }
                },
            }
        }
        // `deps` stays empty after an error in them.
        let (kind, mode, paths, deps) = match readable {
            true => (kind, mode, paths, deps),
            false => (GoalKind::Plain, BuildMode::Normal, Vec::new(), &[][..]),
        };
        first = first.take().or(bad); // goals are read in validation order
        NewGoal::in_callers_order(kind, mode, tag, paths, deps)
    };
    goals.reserve(n);
    (0..n).for_each(|i| goals.push(read_goal(i)));
    if let Outputs::Packed(bytes) = outputs {
        if in_step && cursor != bytes.len() {
            let e = Error::InvalidArgument(format!(
                "outputs_packed has {} bytes after its {out_total} strings",
                bytes.len() - cursor
            ));
            return Err(whole(e));
        }
    }
    Ok(first)
}

/// `goals`, emptied, for goals of another lifetime: the memory of the
/// last call's goals, for the next call's. A thread keeps the memory of its
/// largest batch (80 bytes a goal, about what the worker keeps per goal),
/// so that a host's repeated large batches do not fault fresh memory in
/// (a fresh 8 MB per 100,000 goals cost `schedule_100k_c_batch` a fifth
/// of its time); it is freed when the thread exits.
fn recycle<'b>(goals: Vec<NewGoal<'_>>) -> Vec<NewGoal<'b>> {
    let mut goals = std::mem::ManuallyDrop::new(goals);
    goals.clear();
    // SAFETY: an empty vector's memory, from the global allocator, for
    // elements of the same layout (only the lifetime differs).
    unsafe { Vec::from_raw_parts(goals.as_mut_ptr().cast(), 0, goals.capacity()) }
}

/// Goal `i`'s outputs, strings `a..z`, validated, in the caller's order.
///
/// # Safety
/// As [`read_batch`].
unsafe fn read_outputs(
    outputs: &Outputs<'_>,
    i: usize,
    a: u32,
    z: u32,
    cursor: &mut usize,
    in_step: &mut bool,
) -> std::result::Result<Vec<StorePath>, Box<BatchError>> {
    let mut v = Vec::with_capacity((z - a) as usize);
    // The first bad output; the packed walk goes on over the goal's other
    // outputs, to stay in step for the next goals.
    let mut bad = None;
    for j in 0..(z - a) as usize {
        let at = |e: Error| Box::new(BatchError::new(i, j, BatchField::Output, e));
        match outputs {
            Outputs::Strings(p) => {
                // SAFETY: each a NUL-terminated string (the contract).
                let parsed = unsafe { args::c_bytes(p[a as usize + j], "an output") };
                v.push(parsed.and_then(StorePath::from_bytes).map_err(at)?);
            }
            Outputs::Packed(bytes) => {
                if !*in_step {
                    return Ok(Vec::new()); // unknown, after an earlier error
                }
                let rest = &bytes[*cursor..];
                let Some(len) = rest.iter().position(|&c| c == 0) else {
                    *in_step = false;
                    return Err(bad.unwrap_or_else(|| {
                        at(Error::InvalidArgument(format!(
                            "outputs_packed ends before this output (it holds fewer than \
                             output_offsets[n_goals] = {} NUL-terminated strings)",
                            z
                        )))
                    }));
                };
                *cursor += len + 1;
                match StorePath::from_bytes(&rest[..len]) {
                    Ok(path) => v.push(path),
                    Err(e) => bad = bad.or(Some(at(e))),
                }
            }
        }
    }
    bad.map_or(Ok(v), Err)
}

/// Adds many goals, with their outputs and dependencies, in one call: all
/// or nothing. `batch` describes them (see `gk_goal_batch`); on `GK_OK`,
/// `ids_out[i]` is goal `i`'s id. Each goal is as for `gk_worker_add_goal`
/// (the same outputs again, in the worker or earlier in the batch, give the
/// same goal, which keeps its first tag: S9, so `ids_out` may repeat an id),
/// followed by its dependencies as for `gk_worker_add_dependency`: goal ids
/// of this worker, or `GK_BATCH_GOAL(k)` for goal `k` of this batch. Every
/// goal of the batch exists before any dependency is added, so a reference
/// may point forward. A dependency that already failed ends the goal
/// dependency-failed (a FINISHED event follows, and its later dependencies
/// are not added); a cycle is reported by `gk_worker_next_event` as
/// `GK_ERROR_SCHEDULER_DEADLOCK`. After a failure without keep-going, the
/// new goals end cancelled at once (FINISHED events), without dependencies.
///
/// The whole batch is checked before anything changes. On an error the
/// worker is unchanged, `ids_out` is zeroed, and `*err` (if `err` is not
/// NULL) names the first bad element; the message names it too
/// (`goals[3].deps[1]: ...`). The order: `err`, `batch` and `ids_out`
/// themselves (`GK_ERROR_NULL_POINTER`, `GK_ERROR_INVALID_ARGUMENT` for
/// misalignment), `struct_size` (`GK_ERROR_INVALID_ARGUMENT` unless it is
/// `sizeof(gk_goal_batch)`: the caller was compiled against another
/// header); the batch as a whole
/// (`GK_FIELD_NONE`: arrays, `outputs` and `outputs_packed`, trailing bytes
/// in `outputs_packed`); the worker handle (`GK_ERROR_STALE_HANDLE`); then
/// goal by goal, lowest index first: its kind, mode, output offset,
/// outputs (`GK_ERROR_INVALID_PATH`, `GK_ERROR_NULL_POINTER`; the output
/// rules of its kind and any overlap with another goal's outputs:
/// `GK_ERROR_INVALID_ARGUMENT`), dependency offset, then each dependency
/// (a goal id of another worker or never issued: `GK_ERROR_STALE_HANDLE`;
/// `GK_BATCH_GOAL(k)` beyond the batch, or the goal itself:
/// `GK_ERROR_INVALID_ARGUMENT`; dependencies for a shared goal that has
/// started: `GK_ERROR_INVALID_STATE`).
///
/// The ledger checks, once, every goal the call finished (G6).
///
/// A thread keeps the working memory of its largest batch (about 80 bytes
/// a goal) for its later calls, and frees it when it exits.
///
/// # Safety
/// `batch` must point to a readable `gk_goal_batch` whose arrays are as it
/// describes; `ids_out` must be valid for `n_goals` writes; `err` must be
/// NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_add_goals(
    w: gk_worker,
    batch: *const gk_goal_batch,
    ids_out: *mut gk_goal,
    err: *mut gk_batch_error,
) -> gk_status {
    batch_call(err, |t| {
        args::check_array(batch, 1, "batch")?;
        // SAFETY: non-null and aligned; `struct_size` and `n_goals` lead
        // every version of the struct, readable per the contract.
        let (size, n) = unsafe {
            (
                std::ptr::addr_of!((*batch).struct_size).read(),
                std::ptr::addr_of!((*batch).n_goals).read() as usize,
            )
        };
        // SAFETY: `n` writable ids per the contract; `GoalId` is a
        // transparent `u64`.
        let ids = unsafe { args::array_mut(ids_out.cast::<GoalId>(), n, "ids_out") }?;
        ids.iter_mut().for_each(|id| *id = GoalId::from_raw(0));
        if size as usize != std::mem::size_of::<gk_goal_batch>() {
            return Err(Error::InvalidArgument(format!(
                "batch->struct_size is {size}, not sizeof(gk_goal_batch) = {}: the caller was \
                 compiled against another goalkeeper.h",
                std::mem::size_of::<gk_goal_batch>()
            )));
        }
        // SAFETY: a whole gk_goal_batch, readable per the contract.
        let b = unsafe { &*batch };
        let mut goals = recycle(t.goals.take());
        // SAFETY: forwarded from this function's contract.
        let r = match unsafe { read_batch(b, &mut goals) } {
            Ok(parse_error) => with_worker(t, w, |_, wk| {
                Ok(wk.add_goals_into(&mut goals, parse_error, ids))
            }),
            Err(e) => Ok(Err(e)),
        };
        t.goals.set(recycle(goals));
        r
    })
}

/// Fills `events[0 .. *n_out)` with the next events, in order, `1 <= *n_out
/// <= cap` on `GK_OK` (as many `gk_worker_next_event` calls would, in one
/// call). It stops after a WAIT or DONE event, so either is last; and a
/// WAIT comes only alone: when the call has gathered other events, it stops
/// before it (act on those, then ask again), so a WAIT always means "nothing
/// to do until fd is readable or the timeout expires". Never blocks.
///
/// `cap` 0 is `GK_ERROR_INVALID_ARGUMENT`. `GK_ERROR_SCHEDULER_DEADLOCK`
/// only when no event could be gathered (a deadlock found after some events
/// is returned by the next call). `GK_ERROR_INVARIANT_VIOLATION`: the
/// ledger found a violation (the message names goal and path); `*n_out` is
/// 0 and the gathered events are kept, in order, for the next call. The
/// ledger checks, once, every goal of the events returned (G6).
///
/// # Safety
/// `events` must be valid for `cap` writes; `n_out` for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_next_events(
    w: gk_worker,
    events: *mut gk_event,
    cap: usize,
    n_out: *mut usize,
) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let n_out = unsafe { args::out(n_out, "n_out") }?;
        *n_out = 0;
        if cap == 0 {
            return Err(Error::InvalidArgument(
                "cap is 0: room for at least one event is needed".into(),
            ));
        }
        args::check_array(events, cap, "events")?;
        let mut n = 0;
        with_worker(t, w, |_, wk| {
            wk.next_events_with(cap, |wk, ev| {
                // SAFETY: `n < cap` (the worker hands out at most `cap`
                // events), and `events` is valid for `cap` writes.
                unsafe { events.add(n).write(event_to_c(ev, wk)) };
                n += 1;
            })
        })?;
        *n_out = n;
        Ok(())
    })
}

/// Reports many goals that were RUN, in one call: all or nothing. Each
/// report is as for `gk_worker_report`, in order (a success is checked
/// with the worker's validity, the goal's locks and slot are released
/// before any dependent is woken, a failure without keep-going cancels the
/// goals that are not running); on `GK_OK` each report's `recorded` is the
/// outcome recorded, so that the host needs no `gk_worker_goal_result` call.
///
/// The whole batch is checked first; on an error nothing is reported, every
/// `recorded` is 0, and `*err` names the first bad report: its outcome
/// (`GK_FIELD_OUTCOME`: not a `gk_outcome`, `GK_OUTCOME_NONE`, or one a
/// host does not report: `GK_ERROR_INVALID_ARGUMENT`) or its goal
/// (`GK_FIELD_GOAL`: not a goal of this worker, `GK_ERROR_STALE_HANDLE`; not
/// running, `GK_ERROR_INVALID_STATE`; reported twice in the batch,
/// `GK_ERROR_INVALID_ARGUMENT`). `n` 0 reports nothing. The ledger checks,
/// once, every goal the call finished (G6).
///
/// # Safety
/// `reports` must be valid for `n` reads and writes (it may be NULL when `n`
/// is 0); `err` must be NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_report_many(
    w: gk_worker,
    reports: *mut gk_report,
    n: usize,
    err: *mut gk_batch_error,
) -> gk_status {
    batch_call(err, |t| {
        // SAFETY: forwarded from this function's contract.
        let reports = unsafe { args::array_mut(reports, n, "reports") }?;
        let mut parse_error = None;
        let mut reps = Vec::with_capacity(n);
        for (j, r) in reports.iter_mut().enumerate() {
            r.recorded = 0;
            if parse_error.is_some() {
                continue;
            }
            match gk_outcome::parse_reported(r.outcome) {
                Ok(o) => reps.push(Report::new(GoalId::from_raw(r.goal), o)),
                Err(e) => parse_error = Some(BatchError::new(j, 0, BatchField::Outcome, e)),
            }
        }
        let r = with_worker(t, w, |_, wk| {
            Ok(wk.report_many_checked(&mut reps, parse_error.map(Box::new)))
        })?;
        if r.is_ok() {
            for (c, r) in reports.iter_mut().zip(&reps) {
                c.recorded = gk_outcome::from_rust(r.recorded) as u32;
            }
        }
        Ok(r)
    })
}
