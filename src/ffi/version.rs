//! Versions, status names and the error message.

use std::ffi::c_char;

use super::boundary::message_ptr;
use super::status::gk_status;

/// The ABI version of this library. Bindings compare it with the version they
/// were written for and refuse to run on a mismatch. It changes whenever an
/// exported function or type changes incompatibly.
///
/// 2: goals carry the host's tag (`gk_worker_add_goal` and
/// `gk_worker_add_goal_packed` take it; `gk_event` carries it, its fields
/// reordered to 40 bytes without padding); the batch calls.
///
/// 3: `gk_noop` is no longer exported (only the benchmarks' build has it);
/// new calls `gk_lock_wait_new`/`_fd`/`_free`, `gk_spawn` and
/// `gk_signal_watch_start`/`_caught`/`_stop`; the log kind
/// `GK_LOG_ON_DISK_NOT_VALID`. No type's layout changed.
pub const GK_ABI_VERSION: u32 = 3;

/// The library version, e.g. `"0.1.0"`. The string is static.
#[no_mangle]
pub extern "C" fn gk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version (`GK_ABI_VERSION` of the header the library was built with).
#[no_mangle]
pub extern "C" fn gk_abi_version() -> u32 {
    GK_ABI_VERSION
}

/// The message of the most recent call on this thread that did not return
/// `GK_OK`, or `""` if the most recent call succeeded. The string is owned by
/// the library and valid until the next goalkeeper call on this thread.
/// Never NULL.
///
/// After `GK_BUSY` or `GK_TIMED_OUT` the message also names who holds the
/// busy lock, as `goalkeeper locks` does: "…; held by pid 4242
/// (guix-daemon …), posix lock". Finding the holder reads `/proc`
/// (milliseconds), so it is done by the first call of this function after
/// the busy call, not by the busy call itself.
#[no_mangle]
pub extern "C" fn gk_last_error_message() -> *const c_char {
    message_ptr()
}

/// The name of a status value, e.g. `"GK_BUSY"`, or `"GK_UNKNOWN_STATUS"`
/// for a value that is not a `gk_status`. The string is static.
#[no_mangle]
pub extern "C" fn gk_status_name(status: i32) -> *const c_char {
    match gk_status::from_raw(status as i64) {
        Some(s) => s.name_c().as_ptr(),
        None => c"GK_UNKNOWN_STATUS".as_ptr(),
    }
}
