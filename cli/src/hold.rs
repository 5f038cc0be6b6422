//! `goalkeeper hold --store DIR PATH... -- CMD...`: run a command while
//! holding the locks of store paths.
//!
//! The locks are taken all or nothing (sorted, as every goalkeeper lock
//! set), then CMD runs; when it exits the locks are released and its exit
//! status becomes ours (128 + N if it was killed by signal N). The lock
//! descriptors are `O_CLOEXEC`, so CMD does not inherit them. While CMD runs:
//! SIGTERM and SIGHUP sent to us are forwarded to it; SIGINT and SIGQUIT are
//! left to it (a terminal sends them to both of us); and CMD gets SIGKILL if
//! we die (`PR_SET_PDEATHSIG`), so it never runs on without the locks.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use goalkeeper::inspect;
use goalkeeper::lock::{Backend, LockSet, StorePath, WaitMode};
use goalkeeper::Error;

use crate::cli::{BackendArg, HoldArgs};
use crate::{store_dir, Failure};

/// Exit status when a lock is busy (`--no-wait`) or the wait timed out (sysexits' EX_TEMPFAIL).
const EXIT_BUSY: u8 = 75;
/// Exit status when goalkeeper itself fails before running the command (as
/// timeout(1) and env(1) do: 1 could be the command's own).
const EXIT_FAILED: u8 = 125;

/// Runs `goalkeeper hold`; returns the exit status.
pub fn main(args: &HoldArgs) -> Result<u8, Failure> {
    let fail = |m: String| Failure::new(EXIT_FAILED, m);
    let backend = match args.backend {
        BackendArg::Ofd => Backend::Ofd,
        BackendArg::Flock => Backend::Flock,
    };
    let wait = match (args.no_wait, args.timeout) {
        (true, _) => WaitMode::Try,
        (false, Some(t)) => WaitMode::Timeout(t),
        (false, None) => WaitMode::Forever,
    };
    let store = store_dir(&args.store.store).map_err(|f| fail(f.message))?;
    let store =
        std::path::absolute(&store).map_err(|e| fail(format!("{}: {e}", store.display())))?;
    let paths = args
        .paths
        .iter()
        .map(|p| resolve(&store, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let command = &args.command;

    let set = match acquire(&paths, backend, wait) {
        Ok(set) => set,
        Err(e) if e.is_contention() => {
            eprintln!("goalkeeper: {e}{}", holder_note(&e));
            return Ok(EXIT_BUSY);
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let status = run(command);
    // Release whatever happened to the command; with --delete, a command
    // that succeeded made the paths valid, so their lock files may go (as
    // the daemon deletes them after a build), and waiters move on to fresh
    // ones.
    let mut set = set;
    if args.delete && status.as_ref().is_ok_and(|s| s.success()) {
        set.set_deletion(true);
    }
    if let Err(e) = set.release() {
        eprintln!("goalkeeper: warning: releasing the locks: {e}");
    }
    match status {
        Ok(s) => Ok(match (s.code(), s.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => 128u8.saturating_add(sig as u8),
            _ => 1,
        }),
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("goalkeeper: cannot run {:?}: {e}", command[0]);
            Ok(code)
        }
    }
}

/// A store path argument: absolute and directly inside the store, or a name
/// relative to it.
fn resolve(store: &Path, p: &OsStr) -> Result<StorePath, String> {
    let full = if p.as_bytes().starts_with(b"/") {
        PathBuf::from(p)
    } else {
        store.join(p)
    };
    let sp = StorePath::new(&full).map_err(|e| e.to_string())?;
    let dir = StorePath::new(store.join("x")).map_err(|e| e.to_string())?;
    if sp.store_dir() != dir.store_dir() {
        return Err(format!(
            "{} is not in the store {}",
            sp,
            dir.store_dir().display()
        ));
    }
    Ok(sp)
}

/// Takes the locks; before blocking, says who holds the busy one.
fn acquire(paths: &[StorePath], backend: Backend, wait: WaitMode) -> goalkeeper::Result<LockSet> {
    let all = || paths.iter().map(|p| p.as_path().as_os_str().to_owned());
    match LockSet::try_acquire(all(), backend) {
        Err(e @ Error::Busy { .. }) if wait != WaitMode::Try => {
            eprintln!("goalkeeper: waiting: {e}{}", holder_note(&e));
            LockSet::acquire(all(), backend, wait)
        }
        r => r,
    }
}

/// `" (held by pid N (cmd), ofd lock)"` for a busy path, when `/proc` says.
fn holder_note(e: &Error) -> String {
    let path = match e {
        Error::Busy { path } | Error::TimedOut { path, .. } => path,
        _ => return String::new(),
    };
    let Ok(sp) = StorePath::new(path) else {
        return String::new();
    };
    inspect::describe_holders(sp.lock_path())
        .map(|h| format!(" (held by {h})"))
        .unwrap_or_default()
}

/// The command's pid while it runs, for the signal forwarder (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived after the command was forked but before its pid was
/// known (0: none); forwarded as soon as the pid is stored.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our own child.
        unsafe { libc::kill(pid, sig) };
    } else {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

extern "C" fn ignore(_sig: libc::c_int) {}

fn set_handler(sig: libc::c_int, h: extern "C" fn(libc::c_int)) {
    // SAFETY: an all-zero sigaction is valid; we fill handler and flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = h as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

fn run(command: &[OsString]) -> io::Result<std::process::ExitStatus> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // We died before the death signal was armed.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    // Handlers are reset to the default in the child at exec.
    set_handler(libc::SIGTERM, forward);
    set_handler(libc::SIGHUP, forward);
    set_handler(libc::SIGINT, ignore);
    set_handler(libc::SIGQUIT, ignore);
    let mut child = cmd.spawn()?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // A signal may have come between fork and the store above (the command
    // may even have printed already); it was parked in PENDING.
    let sig = PENDING.swap(0, Ordering::SeqCst);
    if sig != 0 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    status
}
