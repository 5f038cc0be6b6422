//! The panic boundary and the thread-local error message.
//!
//! Every exported function runs its body through [`call`]: a panic becomes
//! `GK_ERROR_PANIC` (it must never unwind into C or Guile, which would abort
//! the host process), an [`Error`] becomes its status with its message
//! stored for `gk_last_error_message()`, and success clears the message.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::gk_status;
use crate::error::{Error, Result};

thread_local! {
    /// The last message, NUL-terminated. Reused, so clearing it does not allocate.
    static LAST: RefCell<Vec<u8>> = RefCell::new(vec![0]);
}

/// Stores `msg` as this thread's last error message (NULs are replaced).
pub(crate) fn set_message(msg: &str) {
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.extend(msg.bytes().map(|b| if b == 0 { b'?' } else { b }));
        l.push(0);
    });
}

fn clear_message() {
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() != 1 {
            l.clear();
            l.push(0);
        }
    });
}

/// Pointer to this thread's last message; valid until the next goalkeeper
/// call on this thread.
pub(crate) fn message_ptr() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr().cast())
}

/// Runs an exported function's body: catches panics, maps errors to
/// statuses, and keeps the thread-local message in step.
pub(crate) fn call(f: impl FnOnce() -> Result<gk_status>) -> gk_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(status)) => {
            clear_message();
            status
        }
        Ok(Err(e)) => fail(&e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_message(&format!(
                "internal error in goalkeeper (caught panic: {what}); please report it"
            ));
            gk_status::GK_ERROR_PANIC
        }
    }
}

/// Records `e` as the last error and returns its status.
pub(crate) fn fail(e: &Error) -> gk_status {
    set_message(&e.to_string());
    gk_status::from(e)
}
