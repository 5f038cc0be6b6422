//! What happens when the library is loaded and when the process forks.
//!
//! This module sits above every layer and nothing imports it. It installs
//!
//! * the **load-time constructor** (an ELF `.init_array` entry), which does
//!   every one-time initialisation before any caller can reach the library
//!   from another thread;
//! * the **`pthread_atfork` handlers**, which hold every process-wide mutex
//!   (every `base::ForkMutex`) across `fork(2)` and then let each layer repair
//!   its state in the child.
//!
//! The **lock order** of those mutexes is the C ABI's handle tables first
//! (`ffi::before_fork` names them, in order), then the lock layer's process
//! state (`lock::before_fork`). Every code path that holds two of them takes
//! them in this order, and so does [`prepare`].

/// Before `fork(2)`: takes every process-wide mutex, in the lock order.
extern "C" fn prepare() {
    crate::ffi::before_fork();
    crate::lock::before_fork();
}

/// In the parent after `fork(2)`: releases them, in reverse order.
extern "C" fn parent() {
    crate::lock::after_fork_parent();
    crate::ffi::after_fork();
}

/// In the child after `fork(2)`: the pid and fork generation first, then
/// each layer repairs its state and releases its mutexes (the lock layer
/// closes the inherited lock descriptors).
extern "C" fn child() {
    crate::base::after_fork_child();
    crate::lock::after_fork_child();
    crate::ffi::after_fork();
}

/// Runs when the library is loaded (an ELF constructor in `.init_array`),
/// before any caller can reach it from another thread. It does every
/// one-time initialisation that a call path would otherwise do lazily
/// behind a `Once`: a `fork(2)` that lands while another thread is inside
/// such a `call_once` leaves the child's copy of it "running" forever, and
/// the child's first goalkeeper call then waits for ever (found by the C
/// test `fork children never hang on a lock the parent's other thread
/// held`, about 1 run in 12).
extern "C" fn load_time_init() {
    crate::base::init();
    // SAFETY: registering plain `extern "C"` functions without captured state.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    assert_eq!(rc, 0, "pthread_atfork failed");
    #[cfg(feature = "fault-injection")]
    crate::fault::init();
    crate::sched::debug_sweep_default();
}

#[used]
#[link_section = ".init_array"]
static LOAD_TIME_INIT: extern "C" fn() = load_time_init;
