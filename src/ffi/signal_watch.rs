//! Catching the signals that end a host, so that it can stop its builders
//! and release their locks first: `gk_signal_watch_start`,
//! `gk_signal_watch_caught`, `gk_signal_watch_stop`.
//!
//! The handler is C-level and async-signal-safe: it records the signal and
//! makes an eventfd readable. A Guile host could install a Scheme handler
//! instead, but that starts Guile 3.0.8's signal-delivery thread, and a
//! child that the host forks while that thread runs Scheme can deadlock on
//! a lock the thread held (seen here: a forked builder stuck on the symbol
//! table's mutex), so the Guile `run-worker` uses this.

use std::ffi::c_int;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use super::args;
use super::boundary::call;
use super::lock_wait::{eventfd, ring};
use super::status::gk_status;
use crate::base::ForkMutex;
use crate::error::Error;

/// The signals watched: those that end a process by default and that a user
/// or a service manager sends to stop it.
const SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The first signal caught since the outermost watch started (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// The eventfd the handler makes readable.
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The process whose watches `WATCHES` counts and the handler serves: in a
/// fork child, which inherits the handler, a signal takes its default
/// action.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The nesting of the owner's watches, and which signals have our handler.
pub(super) struct Watches {
    depth: usize,
    installed: [bool; 3],
}

/// Locked by `ffi::before_fork` (last of the ffi tables), so that a fork
/// while another thread starts or stops a watch leaves the child a usable
/// state (which it then resets: its pid is another).
pub(super) static WATCHES: ForkMutex<Watches> = ForkMutex::new(Watches {
    depth: 0,
    installed: [false; 3],
});

extern "C" fn on_signal(signal: c_int) {
    // SAFETY: only async-signal-safe calls; errno is kept for the code the
    // signal interrupted.
    unsafe {
        let errno = *libc::__errno_location();
        if libc::getpid() != OWNER.load(Ordering::SeqCst) {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        } else {
            let _ = CAUGHT.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
            ring(EVENT_FD.load(Ordering::SeqCst));
        }
        *libc::__errno_location() = errno;
    }
}

/// The library's handler, as `sigaction` stores it.
fn handler() -> libc::sighandler_t {
    on_signal as extern "C" fn(c_int) as libc::sighandler_t
}

/// The handler `signal` has now.
fn current_handler(signal: c_int) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is valid; a NULL new action only queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

fn set_handler(signal: c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed sigaction with a handler, flags and a mask is valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for s in SIGNALS {
            libc::sigaddset(&mut action.sa_mask, s);
        }
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Starts watching SIGINT, SIGTERM and SIGHUP, and stores in `*fd_out` a
/// descriptor that becomes readable (and stays so) once one of them is
/// caught; `gk_signal_watch_caught` says which.
///
/// Until the matching `gk_signal_watch_stop`, each of these signals whose
/// action is the default when the outermost watch starts is caught instead
/// of ending the process; a signal the host handles or ignores is left
/// alone. Watches nest, from any threads, and share the descriptor, which
/// belongs to the library (never read or close it). A fork child inherits
/// no watch: a signal there takes its default action.
///
/// This is for a host that must stop its builders and release their locks
/// before it ends: it waits on the descriptor beside its others, and when
/// a signal was caught it kills and reaps its builders, releases their
/// goals' locks and calls `gk_signal_watch_stop`, which then ends the
/// process as the signal would have.
///
/// # Safety
/// `fd_out` must be NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_signal_watch_start(fd_out: *mut i32) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(fd_out, "fd_out") }?;
        *out = -1;
        *out = WATCHES.with(start)?;
        Ok(())
    })
}

/// The body of `gk_signal_watch_start`, with the watches locked: returns the
/// descriptor.
fn start(w: &mut Watches) -> Result<i32, Error> {
    // SAFETY: getpid takes no argument.
    let pid = unsafe { libc::getpid() };
    if OWNER.load(Ordering::SeqCst) != pid {
        // A new process (or a fork child of a watching one).
        w.depth = 0;
        EVENT_FD.store(eventfd("create")?.into_raw_fd(), Ordering::SeqCst);
    }
    if w.depth == 0 {
        let fd = EVENT_FD.load(Ordering::SeqCst);
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into `count` from our eventfd; it may
        // be empty (EAGAIN).
        unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) };
        CAUGHT.store(0, Ordering::SeqCst);
        OWNER.store(pid, Ordering::SeqCst);
        for (i, &signal) in SIGNALS.iter().enumerate() {
            w.installed[i] = current_handler(signal) == libc::SIG_DFL;
            if w.installed[i] {
                set_handler(signal, handler());
            }
        }
    }
    w.depth += 1;
    Ok(EVENT_FD.load(Ordering::SeqCst))
}

/// Stores in `*signal_out` the first signal caught since the outermost
/// watch started (`SIGINT`, `SIGTERM` or `SIGHUP`), or 0.
///
/// # Safety
/// `signal_out` must be NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_signal_watch_caught(signal_out: *mut i32) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(signal_out, "signal_out") }?;
        *out = CAUGHT.load(Ordering::SeqCst);
        Ok(())
    })
}

/// Ends a watch started by `gk_signal_watch_start`. The outermost one gives
/// the watched signals their default action back (those whose handler is
/// still the library's) and, if one of them was caught, sends it to the
/// process again: the process then ends as that signal ends it.
/// `GK_ERROR_INVALID_STATE` if no watch of this process is running.
#[no_mangle]
pub extern "C" fn gk_signal_watch_stop() -> gk_status {
    call(|_| {
        // SAFETY: getpid takes no argument.
        let pid = unsafe { libc::getpid() };
        // The signal to send again (0: none).
        let resend = WATCHES.with(|w| {
            if OWNER.load(Ordering::SeqCst) != pid || w.depth == 0 {
                return Err(Error::InvalidState(
                    "gk_signal_watch_stop without a running gk_signal_watch_start".into(),
                ));
            }
            w.depth -= 1;
            if w.depth > 0 {
                return Ok(0);
            }
            // `installed` becomes: still our handler, given back its default.
            for (i, &signal) in SIGNALS.iter().enumerate() {
                w.installed[i] = w.installed[i] && current_handler(signal) == handler();
                if w.installed[i] {
                    set_handler(signal, libc::SIG_DFL);
                }
            }
            let caught = CAUGHT.swap(0, Ordering::SeqCst);
            let ours = SIGNALS
                .iter()
                .zip(w.installed)
                .any(|(&s, o)| o && s == caught);
            w.installed = [false; 3];
            Ok(if ours { caught } else { 0 })
        })?;
        if resend != 0 {
            // SAFETY: kill takes no pointer; the default action ends the
            // process here.
            unsafe { libc::kill(pid, resend) };
        }
        Ok(())
    })
}
