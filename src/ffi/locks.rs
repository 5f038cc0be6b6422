//! The lock-set half of the C ABI.

use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::args;
use super::boundary::call;
use super::enums::gk_backend;
use super::handle::{HandleTable, Kind};
use super::status::gk_status;
use crate::base::ForkMutex;
use crate::error::Result;
use crate::lock::{self, LockSet, StorePath, WaitMode};

/// An opaque handle to a lock set held by this process. 0 is never a valid handle.
pub type gk_lockset = u64;

/// The lock sets taken through the C ABI (after the workers in the lock
/// order of the handle tables: see `ffi::before_fork`).
pub(super) static LOCKSETS: ForkMutex<HandleTable<LockSet>> =
    ForkMutex::new(HandleTable::new(Kind::LockSet));

/// The one core of the acquisitions: the paths that `read` reads from the
/// entry point's arguments (validated, sorted, deduplicated), locked as
/// `wait` allows; the new handle in `*out`, 0 on any error.
///
/// # Safety
/// `out` must be NULL or valid for writing.
unsafe fn acquire(
    read: impl FnOnce() -> Result<Vec<StorePath>>,
    backend: u32,
    wait: WaitMode,
    out: *mut gk_lockset,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from the caller's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        let paths = read();
        let set = LockSet::acquire_normalized(paths?, gk_backend::parse(backend)?, wait)?;
        *out = LOCKSETS.with(|h| h.insert(set));
        Ok(())
    })
}

/// Tries to lock every path in `paths[0..n_paths]` without blocking, all or
/// nothing, in sorted order; duplicates are merged.
///
/// On `GK_OK`, `*out` is the new lock set. `GK_BUSY`: another process holds
/// one of the paths (nothing is held). `GK_HELD_BY_THIS_PROCESS`: this
/// process already holds one (nothing more is taken). Paths must be
/// absolute; `backend` is a `gk_backend`. On any other status `*out` is 0.
///
/// # Safety
/// `paths` must point to `n_paths` NUL-terminated strings; `out` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_lockset_try_acquire(
    paths: *const *const c_char,
    n_paths: usize,
    backend: u32,
    out: *mut gk_lockset,
) -> gk_status {
    // SAFETY: forwarded from this function's contract (twice).
    let read = || unsafe { args::path_array(paths, n_paths) };
    // SAFETY: as above.
    unsafe { acquire(read, backend, WaitMode::Try, out) }
}

/// Locks every path in `paths[0..n_paths]`, blocking until all are held.
///
/// It never holds one lock while blocking on another (G2): on contention it
/// releases what it has and blocks on the busy path alone. Returns
/// `GK_HELD_BY_THIS_PROCESS` at once instead of blocking on itself.
///
/// # Safety
/// As `gk_lockset_try_acquire`.
#[no_mangle]
pub unsafe extern "C" fn gk_lockset_acquire(
    paths: *const *const c_char,
    n_paths: usize,
    backend: u32,
    out: *mut gk_lockset,
) -> gk_status {
    // SAFETY: forwarded from this function's contract (twice).
    let read = || unsafe { args::path_array(paths, n_paths) };
    // SAFETY: as above.
    unsafe { acquire(read, backend, WaitMode::Forever, out) }
}

/// Like `gk_lockset_acquire`, but gives up after `timeout_ms` milliseconds
/// with `GK_TIMED_OUT`, holding nothing. A timeout of 0 is a try.
///
/// # Safety
/// As `gk_lockset_try_acquire`.
#[no_mangle]
pub unsafe extern "C" fn gk_lockset_acquire_timeout(
    paths: *const *const c_char,
    n_paths: usize,
    backend: u32,
    timeout_ms: u64,
    out: *mut gk_lockset,
) -> gk_status {
    // Saturate: a timeout beyond i64::MAX ms is still a bounded wait.
    let wait = wait_mode(i64::try_from(timeout_ms).unwrap_or(i64::MAX));
    // SAFETY: forwarded from this function's contract (twice).
    let read = || unsafe { args::path_array(paths, n_paths) };
    // SAFETY: as above.
    unsafe { acquire(read, backend, wait, out) }
}

fn wait_mode(timeout_ms: i64) -> WaitMode {
    match timeout_ms {
        t if t < 0 => WaitMode::Forever,
        0 => WaitMode::Try,
        t => WaitMode::Timeout(Duration::from_millis(t as u64)),
    }
}

/// Locks the paths packed in `buf[0..len]`, each terminated by a NUL byte
/// (`"/s/a\0/s/b\0"`). This is the batch entry point for bindings, which
/// can pass one buffer instead of marshalling each path. `timeout_ms`: a
/// negative value blocks without limit, 0 tries, a positive value bounds the
/// wait. Results as `gk_lockset_try_acquire`.
///
/// # Safety
/// `buf` must point to `len` readable bytes; `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_lockset_acquire_packed(
    buf: *const u8,
    len: usize,
    backend: u32,
    timeout_ms: i64,
    out: *mut gk_lockset,
) -> gk_status {
    // SAFETY: forwarded from this function's contract (twice).
    let read = || unsafe { args::packed_paths(buf, len) };
    // SAFETY: as above.
    unsafe { acquire(read, backend, wait_mode(timeout_ms), out) }
}

/// Asks that releasing `set` delete its lock files (`delete` true), which is
/// allowed once the paths are valid. The default is false.
#[no_mangle]
pub extern "C" fn gk_lockset_set_deletion(set: gk_lockset, delete: bool) -> gk_status {
    call(|_| {
        LOCKSETS.with(|h| {
            let s = h.get(set)?;
            s.check()?;
            s.set_deletion(delete);
            Ok(())
        })
    })
}

/// Releases every lock of `set` (deleting the lock files if asked) and makes
/// the handle stale. The locks are released even when an error is returned:
/// `GK_ERROR_NO_SPACE`/`GK_ERROR_IO` then mean a lock file could not be
/// deleted and was left in place, unlocked. A second release of the same
/// handle returns `GK_ERROR_STALE_HANDLE`.
#[no_mangle]
pub extern "C" fn gk_lockset_release(set: gk_lockset) -> gk_status {
    call(|_| LOCKSETS.with(|h| h.remove(set))?.check_and_release())
}

/// Checks the ledger invariants of `set` (G6): it belongs to this process,
/// each path is registered to it, and each descriptor is open.
#[no_mangle]
pub extern "C" fn gk_lockset_check(set: gk_lockset) -> gk_status {
    call(|_| LOCKSETS.with(|h| h.get(set)?.check()))
}

/// Writes the paths of `set`, sorted, each NUL-terminated, into
/// `buf[0..cap]`, and their total size into `*len_out`. With too small a
/// buffer (`cap` may be 0 and `buf` NULL) it returns
/// `GK_ERROR_BUFFER_TOO_SMALL` and the size needed in `*len_out`.
///
/// # Safety
/// `buf` must be valid for `cap` bytes of writes; `len_out` for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gk_lockset_paths(
    set: gk_lockset,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> gk_status {
    call(|_| {
        LOCKSETS.with(|h| {
            let s = h.get(set)?;
            s.check()?;
            let items = s.paths().map(|p| p.as_path().as_os_str().as_bytes());
            // SAFETY: forwarded from this function's contract.
            unsafe { args::write_list(buf, cap, len_out, items) }
        })
    })
}

/// Stores in `*out` whether this process holds the lock on `path` (through a
/// lock set or a scheduler goal).
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_path_is_locked_by_me(path: *const c_char, out: *mut bool) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        // SAFETY: as above.
        let p = unsafe { args::store_path(path, "path") }?;
        *out = lock::is_held_by_me(&p);
        Ok(())
    })
}

/// Writes every store path this process holds, sorted, each NUL-terminated,
/// into `buf[0..cap]`; sizes as `gk_lockset_paths`.
///
/// # Safety
/// As `gk_lockset_paths`.
#[no_mangle]
pub unsafe extern "C" fn gk_held_paths(
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> gk_status {
    call(|_| {
        let held = lock::held_paths();
        let items = held.iter().map(|(p, _)| p.as_os_str().as_bytes());
        // SAFETY: forwarded from this function's contract.
        unsafe { args::write_list(buf, cap, len_out, items) }
    })
}

/// Stores in `*out` the number of store paths this process holds.
///
/// # Safety
/// `out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_held_count(out: *mut usize) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        *unsafe { args::out(out, "out") }? = lock::held_count();
        Ok(())
    })
}
