//! The worker's diagnostics log as structured records: `gk_log_record`,
//! `gk_worker_take_log_records` and `gk_log_kind_name`. The text log
//! (`gk_worker_take_log`, in `worker.rs`) is made of the same records'
//! messages, and drains the same log.
//!
//! The strings of the records handed out (path, message) are copied into
//! one buffer owned by the worker's cell, which the next call replaces: they
//! stay valid until the next `gk_worker_take_log_records` on the same worker
//! or `gk_worker_free`.

use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;

use super::args;
use super::boundary::call;
use super::enums::gk_log_kind;
use super::status::gk_status;
use super::worker::{gk_goal, gk_worker, with_worker};
use crate::error::Result;
use crate::sched::LogRecord;

/// One entry of a worker's diagnostics log (see
/// `gk_worker_take_log_records`). The strings belong to the worker: they
/// stay valid until the next `gk_worker_take_log_records` call on the same
/// worker, or `gk_worker_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gk_log_record {
    /// A `gk_log_kind`.
    pub kind: u32,
    /// For waits: the pid of the process holding the lock (this process for
    /// its own lock sets and goals), -1 when unknown or not applicable.
    pub holder_pid: i32,
    /// The goal concerned, 0 if none.
    pub goal: gk_goal,
    /// For waits on a goal of this process: the goal holding the lock, else 0.
    pub holder_goal: gk_goal,
    /// When the record was made: `CLOCK_MONOTONIC` in nanoseconds (comparable
    /// between the processes of one machine).
    pub time_ns: u64,
    /// How long the goal waited for the lock (`GK_LOG_HANDED_OVER`,
    /// `GK_LOG_BECAME_VALID`, some `GK_LOG_COULD_NOT_LOCK`) or has waited so
    /// far (`GK_LOG_ON_DISK_NOT_VALID`), in nanoseconds; -1 when not
    /// applicable.
    pub duration_ns: i64,
    /// The store path concerned (an output; its lock file is `path` + ".lock"),
    /// NUL-terminated, or NULL if none.
    pub path: *const c_char,
    /// The length of `path` in bytes, without the NUL; 0 if none.
    pub path_len: usize,
    /// The human-readable message, as `gk_worker_take_log` gives it;
    /// NUL-terminated, never NULL.
    pub message: *const c_char,
    /// The length of `message` in bytes, without the NUL.
    pub message_len: usize,
}

/// Copies the records' strings into `text` (replacing what it held) and
/// returns the C records pointing into it.
fn to_c(records: &[LogRecord], text: &mut Vec<u8>) -> Vec<gk_log_record> {
    text.clear();
    // Each string's (offset, length) in `text`, which it ends with a NUL.
    let put = |text: &mut Vec<u8>, s: &[u8]| {
        let (at, s) = (text.len(), args::until_nul(s));
        text.extend_from_slice(s);
        text.push(0);
        (at, s.len())
    };
    let at: Vec<_> = records
        .iter()
        .map(|r| {
            let path = r.path.as_ref().map(|p| put(text, p.as_os_str().as_bytes()));
            (path, put(text, r.message.as_bytes()))
        })
        .collect();
    // The text is complete: it is not written again, so the pointers into
    // it stay valid while the worker's cell holds it.
    let base = text.as_ptr();
    records
        .iter()
        .zip(at)
        .map(|(r, (path, (m, message_len)))| gk_log_record {
            kind: gk_log_kind::from_rust(r.kind) as u32,
            holder_pid: r
                .holder_pid
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(-1),
            goal: r.goal.map_or(0, |g| g.raw()),
            holder_goal: r.holder_goal.map_or(0, |g| g.raw()),
            time_ns: r.time_ns,
            duration_ns: r
                .duration
                .map_or(-1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            // SAFETY: the offset is within `text`, which was just built.
            path: path.map_or(std::ptr::null(), |(o, _)| unsafe { base.add(o) }.cast()),
            path_len: path.map_or(0, |(_, len)| len),
            // SAFETY: as above.
            message: unsafe { base.add(m) }.cast(),
            message_len,
        })
        .collect()
}

/// Takes up to `cap` records of the worker's diagnostics log, oldest first,
/// into `out[0..cap]`, and stores how many it wrote in `*n_out`. Records
/// beyond `cap` stay for the next call: call again until `*n_out < cap`.
/// The text log (`gk_worker_take_log`) is made of the same records'
/// messages; a record taken by either is gone for both.
///
/// The strings of the records (`path`, `message`) belong to the worker and
/// stay valid until the next `gk_worker_take_log_records` call on the same
/// worker, or `gk_worker_free`: copy what you keep. With `cap` 0 nothing is
/// taken (`out` may then be NULL). On any status but `GK_OK`, nothing is
/// taken and `*n_out` is 0.
///
/// # Safety
/// `out` must be NULL (only with `cap` 0) or valid for `cap` writes of
/// `gk_log_record`; `n_out` must be valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gk_worker_take_log_records(
    w: gk_worker,
    out: *mut gk_log_record,
    cap: usize,
    n_out: *mut usize,
) -> gk_status {
    call(|t| {
        // SAFETY: forwarded from this function's contract.
        let n_out = unsafe { args::out(n_out, "n_out") }?;
        *n_out = 0;
        args::check_array(out, cap, "out")?;
        let n = with_worker(t, w, |text, wk| -> Result<usize> {
            wk.check()?;
            if cap == 0 {
                return Ok(0);
            }
            let records = wk.take_log_records_up_to(cap);
            for (i, r) in to_c(&records, text).into_iter().enumerate() {
                // SAFETY: `out` is non-null, aligned and valid for `cap`
                // writes (the contract); `i < records.len() <= cap`.
                unsafe { out.add(i).write(r) };
            }
            Ok(records.len())
        })?;
        *n_out = n;
        Ok(())
    })
}

/// The name of a `gk_log_kind`, e.g. `"waits-foreign"`, or `"unknown"` for a
/// value that is not one. The string is static.
#[no_mangle]
pub extern "C" fn gk_log_kind_name(kind: u32) -> *const c_char {
    match gk_log_kind::from_raw(kind) {
        Some(k) => k.to_rust().name_c().as_ptr(),
        None => c"unknown".as_ptr(),
    }
}
