//! The panic boundary and the thread-local error message.
//!
//! Every exported function runs its body through [`call`]: a panic becomes
//! `GK_ERROR_PANIC` (it must never unwind into C or Guile, which would abort
//! the host process), an [`Error`] becomes its status with its message
//! stored for `gk_last_error_message()`, and success clears the message.
//!
//! A busy or timed-out lock's message names the holder (pid, command, lock
//! kind) when the kernel lets us know, as `goalkeeper locks` does. Finding
//! it means reading `/proc` (milliseconds), so it is done only when the
//! message is read: a host that tries a lock, gets `GK_BUSY` and moves on
//! without reading the message pays nothing.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::status::gk_status;
use crate::error::{Error, Result};

thread_local! {
    /// The last message, NUL-terminated. Reused, so clearing it does not allocate.
    static LAST: RefCell<Vec<u8>> = RefCell::new(vec![0]);
    /// The lock file whose holders the last message should name, once it is
    /// read (see the module documentation).
    static HOLDER_OF: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Stores `msg` as this thread's last error message (NULs are replaced).
pub(crate) fn set_message(msg: &str) {
    HOLDER_OF.with(|h| *h.borrow_mut() = None);
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.extend(msg.bytes().map(|b| if b == 0 { b'?' } else { b }));
        l.push(0);
    });
}

fn clear_message() {
    HOLDER_OF.with(|h| *h.borrow_mut() = None);
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() != 1 {
            l.clear();
            l.push(0);
        }
    });
}

/// Pointer to this thread's last message; valid until the next goalkeeper
/// call on this thread. Names the holder of a busy lock, the first time it
/// is asked for after the call that found it busy.
pub(crate) fn message_ptr() -> *const c_char {
    if let Some(lock_file) = HOLDER_OF.with(|h| h.borrow_mut().take()) {
        // The inspector reads /proc and is not expected to panic; if it
        // did, the message goes without the holder rather than unwinding
        // into C.
        let who = catch_unwind(|| crate::inspect::describe_holders(&lock_file))
            .ok()
            .flatten()
            .unwrap_or_else(|| "a process the kernel does not show now".into());
        LAST.with(|l| {
            let mut l = l.borrow_mut();
            l.pop(); // the NUL
            l.extend(
                format!("; held by {who}")
                    .bytes()
                    .map(|b| if b == 0 { b'?' } else { b }),
            );
            l.push(0);
        });
    }
    LAST.with(|l| l.borrow().as_ptr().cast())
}

/// The lock file of a contention error's path.
fn lock_file_of(e: &Error) -> Option<PathBuf> {
    let path = match e {
        Error::Busy { path } | Error::TimedOut { path, .. } => path,
        _ => return None,
    };
    let mut f = path.clone().into_os_string();
    f.push(crate::lock::LOCK_SUFFIX);
    Some(PathBuf::from(f))
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
    if let Some(f) = lock_file_of(e) {
        HOLDER_OF.with(|h| *h.borrow_mut() = Some(f));
    }
    gk_status::from(e)
}
