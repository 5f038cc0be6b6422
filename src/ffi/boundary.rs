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

use std::cell::{Cell, RefCell};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::status::gk_status;
use crate::error::{Error, Result};
use crate::sched::NewGoal;

/// Everything the C boundary keeps per thread, in one thread-local, whose
/// reference every exported function's body gets from [`call`].
pub(crate) struct ThreadState {
    /// The last message, NUL-terminated (empty before the first one).
    /// Reused, so clearing it does not allocate.
    message: RefCell<Vec<u8>>,
    /// Whether `message` holds a message (a successful call then clears it;
    /// otherwise it has nothing to do).
    has_message: Cell<bool>,
    /// The lock file whose holders the last message should name, once it is
    /// read (see the module documentation).
    holder_of: RefCell<Option<PathBuf>>,
    /// The goals of this thread's last `gk_worker_add_goals`, emptied: their
    /// memory, for the next call's (see `worker_batch.rs`).
    pub(super) goals: Cell<Vec<NewGoal<'static>>>,
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            message: RefCell::new(Vec::new()),
            has_message: Cell::new(false),
            holder_of: RefCell::new(None),
            goals: Cell::new(Vec::new()),
        }
    };
}

impl ThreadState {
    /// A number that identifies this thread among the live threads (the
    /// address of its state).
    pub(super) fn token(&self) -> usize {
        self as *const ThreadState as usize
    }

    /// Stores `msg` as this thread's last error message (NULs are
    /// replaced); `""` clears it.
    fn set_message(&self, msg: &str) {
        *self.holder_of.borrow_mut() = None;
        let mut l = self.message.borrow_mut();
        l.clear();
        l.extend(msg.bytes().map(|b| if b == 0 { b'?' } else { b }));
        l.push(0);
        self.has_message.set(!msg.is_empty());
    }

    /// Records `e` as the last error and returns its status.
    fn fail(&self, e: Error) -> gk_status {
        self.set_message(&e.to_string());
        // A contention error: the holders of its lock file, when asked.
        if let Error::Busy { path } | Error::TimedOut { path, .. } = &e {
            let mut f = path.clone().into_os_string();
            f.push(crate::lock::LOCK_SUFFIX);
            *self.holder_of.borrow_mut() = Some(PathBuf::from(f));
        }
        gk_status::from(&e)
    }
}

/// Pointer to this thread's last message; valid until the next goalkeeper
/// call on this thread. Names the holder of a busy lock, the first time it
/// is asked for after the call that found it busy.
pub(crate) fn message_ptr() -> *const c_char {
    THREAD.with(|t| {
        if let Some(lock_file) = t.holder_of.take() {
            // The inspector reads /proc and is not expected to panic; if it
            // did, the message goes without the holder rather than unwinding
            // into C.
            let who = catch_unwind(|| crate::inspect::describe_holders(&lock_file))
                .ok()
                .flatten()
                .unwrap_or_else(|| "a process the kernel does not show now".into());
            let mut said = String::from_utf8_lossy(&t.message.borrow()).into_owned();
            said.pop(); // the NUL
            t.set_message(&format!("{said}; held by {who}"));
        }
        let l = t.message.borrow();
        if l.is_empty() {
            c"".as_ptr()
        } else {
            l.as_ptr().cast()
        }
    })
}

/// Runs an exported function's body with this thread's [`ThreadState`]:
/// catches panics, maps errors to statuses (success is `GK_OK`), and keeps
/// the thread-local message in step. Only a status crosses the boundary.
pub(crate) fn call(f: impl FnOnce(&ThreadState) -> Result<()>) -> gk_status {
    let r = catch_unwind(AssertUnwindSafe(|| {
        THREAD.with(|t| match f(t) {
            Ok(()) => {
                if t.has_message.get() {
                    t.set_message("");
                }
                gk_status::GK_OK
            }
            Err(e) => t.fail(e),
        })
    }));
    match r {
        Ok(status) => status,
        Err(panic) => panicked(panic),
    }
}

/// A panic caught at the boundary becomes `GK_ERROR_PANIC` with a message.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> gk_status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let msg = format!("internal error in goalkeeper (caught panic: {what}); please report it");
    // Unless the thread's state is already gone (a call from a thread-local
    // destructor at thread exit).
    let _ = THREAD.try_with(|t| t.set_message(&msg));
    gk_status::GK_ERROR_PANIC
}

/// The boundary itself (the exported functions are tested through the C
/// ABI in tests/c_abi_boundary.rs); Miri runs these too (`make miri`).
#[cfg(test)]
mod tests {
    use super::*;
    use gk_status::*;

    fn message() -> String {
        // SAFETY: the library promises a valid NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(message_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_gk_error_panic_with_a_message() {
        let s = call(|_| panic!("boom {}", 42));
        assert_eq!(s, GK_ERROR_PANIC);
        assert!(message().contains("boom 42"), "{}", message());
        let s = call(|_| std::panic::panic_any(7u8));
        assert_eq!(s, GK_ERROR_PANIC);
        assert!(message().contains("unknown panic"), "{}", message());
        assert_eq!(call(|_| Ok(())), GK_OK);
        assert_eq!(message(), "", "success clears the message");
    }

    #[test]
    fn messages_are_nul_terminated_and_never_contain_nul() {
        let s = call(|_| Err(Error::InvalidArgument("a\0b".into())));
        assert_eq!(s, GK_ERROR_INVALID_ARGUMENT);
        assert_eq!(message(), "invalid argument: a?b");
        // The message is per thread.
        std::thread::spawn(|| assert_eq!(message(), ""))
            .join()
            .unwrap();
        assert_eq!(call(|_| Ok(())), GK_OK);
        assert_eq!(message(), "");
    }
}
