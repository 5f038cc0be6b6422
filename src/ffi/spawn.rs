//! Starting a builder that cannot outlive its host: `gk_spawn`.
//!
//! A host runs a build goal as a child process while the goal's output
//! locks are held. The builder must not outlive the host: once the host is
//! gone its locks are free, and a builder still writing the output would
//! write with no lock held. `gk_spawn` forks and execs from Rust, so no code
//! of the host's language runs in the child (a forked multi-threaded Guile
//! can deadlock there before it reaches `exec`), and gives the child:
//!
//! * its own process group, numbered by its pid, so that the host stops it
//!   and the processes it started with one `kill(-pid, SIGKILL)`;
//! * `PR_SET_PDEATHSIG` = `SIGKILL`, so that the kernel kills it when the
//!   *thread* that called `gk_spawn` exits, and so when the host dies, even
//!   by `SIGKILL`. The child checks `getppid()` after setting it, in case
//!   the host died first;
//! * its standard input, output and error from the given descriptors, every
//!   other descriptor close-on-exec (so it inherits no pipe or lock
//!   descriptor of the host), an empty signal mask and `SIGPIPE` at its
//!   default.
//!
//! What remains (doc/design.md#builders-die-with-their-host): when the
//! host is killed by `SIGKILL`, the kernel closes its descriptors, which
//! releases its locks, before it sends the builder `PR_SET_PDEATHSIG`; and
//! the builder's own children get no such signal.

use std::ffi::{c_char, CStr, OsStr};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::args;
use super::boundary::call;
use super::status::gk_status;
use crate::error::{Error, Result};

/// The most arguments `gk_spawn` takes (the kernel's own limit is on their
/// total size).
const MAX_ARGS: usize = 1 << 16;

/// The child's descriptor `target` (0, 1 or 2) from the host's `fd`: a
/// duplicate of it, or the host's own `target` when `fd` is -1.
fn stdio(fd: i32, what: &'static str) -> Result<Stdio> {
    if fd == -1 {
        return Ok(Stdio::inherit());
    }
    if fd < 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} {fd} is neither a file descriptor nor -1"
        )));
    }
    // SAFETY: only borrowed for the duplication, which fails with EBADF if
    // `fd` is not open.
    let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| Error::InvalidArgument(format!("{what} {fd}: {e}")))?;
    Ok(Stdio::from(owned))
}

/// In the child, after `fork`: the builder's process-death signal, and
/// close-on-exec for every descriptor from 3 on. Only system calls, as the
/// child of a multi-threaded process allows.
fn in_child(host: libc::pid_t) -> io::Result<()> {
    let signal = libc::SIGKILL as libc::c_ulong;
    // SAFETY: prctl and getppid have no memory arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The host may have died before the prctl: then nobody kills us later.
    // SAFETY: as above.
    if unsafe { libc::getppid() } != host {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: close_range takes no pointer. Marking (rather than closing)
    // keeps std's own close-on-exec pipe, which reports a failed exec.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        // Before Linux 5.11: one descriptor at a time, up to the limit.
        // SAFETY: sysconf takes no pointer.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
        let max = if max < 0 {
            1024
        } else {
            max.min(1 << 20) as i32
        };
        for fd in 3..max {
            // SAFETY: fcntl on a descriptor that may not be open: EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Starts a builder: runs `argv[0]` (looked up in `PATH` when it has no
/// `/`) with the arguments `argv[0..argc]` and the host's environment, as a
/// child process that cannot outlive the host, and stores its pid in
/// `*pid_out`. The host reaps it with `waitpid` as any child.
///
/// The child is the leader of a process group of its own (its pid), so
/// `kill(-pid, SIGKILL)` stops it and what it started; it gets `SIGKILL`
/// when the thread that called `gk_spawn` exits (`PR_SET_PDEATHSIG`; the
/// child checks that this thread had not exited already), so call it from
/// the thread that waits for the builder; its standard input, output and
/// error are duplicates of `stdin_fd`, `stdout_fd` and `stderr_fd` (-1: the
/// host's own 0, 1 or 2; give a builder `/dev/null` rather than a terminal,
/// which it cannot read from its own process group); every other descriptor
/// of the host is closed at `exec`; its signal mask is empty and `SIGPIPE`
/// is at its default. Nothing of the host's language runs in the child
/// between `fork` and `exec`.
///
/// The call returns once the child has run `exec`: a program that cannot be
/// run is an error here (`GK_ERROR_IO`, `GK_ERROR_PERMISSION_DENIED`, with
/// the program and the system's reason), not a child that exits 127.
/// `GK_ERROR_NULL_POINTER` for a NULL `argv`, string or `pid_out`;
/// `GK_ERROR_INVALID_ARGUMENT` for `argc` 0 or above 65536, an empty
/// program name or a descriptor that is neither open nor -1.
///
/// When the host is killed by `SIGKILL`, the kernel releases its locks a
/// moment before it kills the builder, and the builder's own children are
/// not killed (doc/design.md#builders-die-with-their-host).
///
/// # Safety
/// `argv` must be NULL or point to `argc` readable pointers, each NULL or a
/// NUL-terminated string; `pid_out` must be NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_spawn(
    argv: *const *const c_char,
    argc: usize,
    stdin_fd: i32,
    stdout_fd: i32,
    stderr_fd: i32,
    pid_out: *mut i32,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let pid_out = unsafe { args::out(pid_out, "pid_out") }?;
        *pid_out = -1;
        if argv.is_null() {
            return Err(Error::NullPointer("argv"));
        }
        if argc == 0 || argc > MAX_ARGS {
            return Err(Error::InvalidArgument(format!(
                "argc {argc}: a program needs 1 to {MAX_ARGS} arguments, its name first"
            )));
        }
        // SAFETY: `argv` points to `argc` pointers (the contract).
        let pointers = unsafe { std::slice::from_raw_parts(argv, argc) };
        let mut strings = Vec::with_capacity(argc);
        for &p in pointers {
            if p.is_null() {
                return Err(Error::NullPointer("argv[i]"));
            }
            // SAFETY: non-null and NUL-terminated (the contract).
            strings.push(OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes()));
        }
        let program = strings[0];
        if program.is_empty() {
            return Err(Error::InvalidArgument("argv[0] is empty".into()));
        }
        let mut command = Command::new(program);
        command
            .args(&strings[1..])
            .stdin(stdio(stdin_fd, "stdin_fd")?)
            .stdout(stdio(stdout_fd, "stdout_fd")?)
            .stderr(stdio(stderr_fd, "stderr_fd")?)
            .process_group(0);
        // SAFETY: getpid takes no argument.
        let host = unsafe { libc::getpid() };
        // SAFETY: `in_child` makes system calls only, no allocation or lock.
        unsafe { command.pre_exec(move || in_child(host)) };
        let child = command
            .spawn()
            .map_err(|e| Error::from_io(program, "spawn", e))?;
        *pid_out = child.id() as i32;
        // Dropping `child` neither waits for it nor kills it.
        Ok(())
    })
}
