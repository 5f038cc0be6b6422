//! Walking `/proc`: which processes have a lock file open, which threads are
//! blocked in a lock call on it and for how long, and a process's command.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::kernel::{KernelLock, LockKind};
use super::key::FileKey;

/// A descriptor of some process open on one of the files of interest.
#[derive(Clone, Debug)]
pub(super) struct OpenFd {
    pub(super) pid: u32,
    /// The `lock:` lines of its fdinfo: locks held through this description.
    pub(super) locks: Vec<KernelLock>,
}

/// A thread blocked in a lock call on one of the files of interest.
#[derive(Clone, Debug)]
pub(super) struct Blocked {
    pub(super) pid: u32,
    pub(super) kind: LockKind,
    pub(super) blocked_for: Option<Duration>,
}

/// The result of the descriptor scan.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) fds: HashMap<FileKey, Vec<OpenFd>>,
    pub(super) blocked: HashMap<FileKey, Vec<Blocked>>,
    pub(super) unreadable: usize,
}

/// The command of `pid`: its command line with arguments joined by spaces,
/// or `[comm]` for processes without one (kernel threads, zombies).
pub fn command_of(pid: u32) -> Option<String> {
    if let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) {
        let words: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if !words.is_empty() {
            return Some(words.join(" "));
        }
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("[{}]", comm.trim_end()))
}

/// How long the diagnostics helpers reuse a descriptor table (they rescan
/// sooner for a holder the table lacks).
pub const SCAN_REUSE: Duration = Duration::from_secs(2);

/// The last full descriptor table, for [`Inspector::with_recent_scan`].
pub(super) static FD_TABLE: Mutex<Option<FdTable>> = Mutex::new(None);

/// Where files are open: `(pid, fd)` per file, from one walk of `/proc/*/fd`.
#[derive(Debug)]
pub(super) struct FdTable {
    pub(super) taken: Instant,
    pub(super) open: HashMap<FileKey, Vec<(u32, i32)>>,
    pub(super) unreadable: usize,
    /// Files whose OFD holder this very scan could not find (unreadable
    /// processes): rescanning for them before the table expires is useless.
    pub(super) misses: BTreeSet<FileKey>,
}

/// Walks every process's descriptors (`stat` of each `/proc/PID/fd/N`,
/// which follows the magic link to the open file, even a deleted one) and
/// records the regular files among `wanted` (all of them for `None`).
/// Vanished processes are skipped; unreadable ones counted.
pub(super) fn list_fds(wanted: Option<&BTreeSet<FileKey>>) -> FdTable {
    let mut table = FdTable {
        taken: Instant::now(),
        open: HashMap::new(),
        unreadable: 0,
        misses: BTreeSet::new(),
    };
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return table;
    };
    for ent in proc_dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(d) => d,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                    table.unreadable += 1;
                }
                continue; // vanished, or a permission problem
            }
        };
        for fd_ent in fds.flatten() {
            let Ok(fd) = fd_ent.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(meta) = fs::metadata(fd_ent.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = FileKey::of_metadata(&meta);
            if wanted.is_none_or(|w| w.contains(&key)) {
                table.open.entry(key).or_default().push((pid, fd));
            }
        }
    }
    table
}

/// Reads, afresh, the fdinfo lock lines of the descriptors `table` lists
/// for the files in `wanted`, then the threads of their processes for
/// blocked lock calls. Descriptors closed since the table was taken are
/// skipped.
pub(super) fn inspect_fds(table: &FdTable, wanted: &BTreeSet<FileKey>) -> Scan {
    let mut scan = Scan {
        unreadable: table.unreadable,
        ..Scan::default()
    };
    let mut matched: BTreeMap<u32, Vec<(i32, FileKey)>> = BTreeMap::new();
    for key in wanted {
        for &(pid, fd) in table.open.get(key).into_iter().flatten() {
            // Still open on this file? (From a reused table, the number may
            // have been closed or reused since.)
            match fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
                Ok(m) if FileKey::of_metadata(&m) == *key => {}
                _ => continue,
            }
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
                continue; // closed, or the process is gone
            };
            let locks = text
                .lines()
                .filter_map(|l| l.strip_prefix("lock:"))
                .filter_map(KernelLock::parse)
                .filter(|l| l.file() == *key) // the number may have been reused
                .collect();
            scan.fds
                .entry(*key)
                .or_default()
                .push(OpenFd { pid, locks });
            matched.entry(pid).or_default().push((fd, *key));
        }
    }
    // Each CPU's scheduler clock, read once per scan ("now" for the waiters
    // that last ran there).
    let mut clocks = HashMap::new();
    for (pid, fds) in matched {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((fd, kind)) = blocked_lock_call(pid, tid) else {
                continue;
            };
            let Some(&(_, key)) = fds.iter().find(|(f, _)| *f == fd) else {
                continue;
            };
            let blocked_for = blocked_since(pid, tid, &mut clocks);
            scan.blocked.entry(key).or_default().push(Blocked {
                pid,
                kind,
                blocked_for,
            });
        }
    }
    scan
}

/// If thread `tid` of `pid` is blocked in a blocking lock call, the
/// descriptor and the kind of lock it waits for.
fn blocked_lock_call(pid: u32, tid: u32) -> Option<(i32, LockKind)> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut w = text.split_whitespace();
    let nr: i64 = w.next()?.parse().ok()?;
    let arg = |s: Option<&str>| -> Option<u64> {
        u64::from_str_radix(s?.trim_start_matches("0x"), 16).ok()
    };
    let fd = arg(w.next())? as i32;
    let op = arg(w.next())? as i64;
    if nr == libc::SYS_fcntl {
        match op as i32 {
            libc::F_OFD_SETLKW => Some((fd, LockKind::Ofd)),
            libc::F_SETLKW => Some((fd, LockKind::Posix)),
            _ => None,
        }
    } else if nr == libc::SYS_flock
        && op as i32 & libc::LOCK_NB == 0
        && op as i32 & libc::LOCK_UN == 0
    {
        Some((fd, LockKind::Flock))
    } else {
        None
    }
}

/// How long thread `tid` of `pid` has not run: the scheduler clock now,
/// minus the scheduler clock when it last started running
/// (`se.exec_start`). For a thread blocked in a lock call, that is how long
/// it has been blocked.
///
/// `se.exec_start` is the scheduler's clock, not `CLOCK_MONOTONIC`: the run
/// queue's `rq_clock_task`, which leaves out the time spent in interrupts
/// and, in a VM, the time the host ran something else (steal time). So it
/// trails `CLOCK_MONOTONIC` by seconds on some machines (12.7 s on one CPU
/// of this project's 2-CPU VM, 13.9 s on the other), and each CPU's clock
/// trails by its own amount. "Now" is therefore read on the clock of the
/// CPU the thread last ran on (a blocked thread stays there until it
/// wakes): the `se.exec_start` of a short-lived thread pinned to that CPU,
/// which the scheduler sets when it puts that thread there
/// ([`clock_of_cpu`], once per CPU and scan in `clocks`). When that cannot
/// be done, this thread's own `se.exec_start`, which may be off by the
/// difference between two CPUs' clocks; `CLOCK_MONOTONIC` only when that
/// cannot be read either.
fn blocked_since(
    pid: u32,
    tid: u32,
    clocks: &mut HashMap<usize, Option<Duration>>,
) -> Option<Duration> {
    let task = format!("/proc/{pid}/task/{tid}");
    let then = exec_start(&format!("{task}/sched"))?;
    let now = last_cpu(&format!("{task}/stat"))
        .and_then(|cpu| *clocks.entry(cpu).or_insert_with(|| clock_of_cpu(cpu)))
        .or_else(|| exec_start("/proc/thread-self/sched"))
        .unwrap_or_else(monotonic);
    Some(now.saturating_sub(then))
}

/// The CPU a thread last ran on: field 39 (`processor`) of its
/// `/proc/PID/task/TID/stat`, counted after the command in parentheses
/// (which may itself hold spaces and parentheses).
fn last_cpu(stat_path: &str) -> Option<usize> {
    let text = fs::read_to_string(stat_path).ok()?;
    let after_comm = &text[text.rfind(')')? + 1..];
    // Fields 3 (state) onwards; `processor` is field 39.
    after_comm.split_whitespace().nth(39 - 3)?.parse().ok()
}

/// The scheduler clock of CPU `cpu` now, or `None` when this process may
/// not run there: a thread is started, moved to `cpu` (`sched_setaffinity`
/// on itself returns once it runs there, and the scheduler set its
/// `se.exec_start` from that CPU's clock when it put it there), and reads
/// its own `se.exec_start`. The caller's thread and its affinity are left
/// alone.
fn clock_of_cpu(cpu: usize) -> Option<Duration> {
    if cfg!(miri) || cpu >= libc::CPU_SETSIZE as usize {
        return None; // Miri has no sched_setaffinity
    }
    let pinned = move || {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` < CPU_SETSIZE, checked above: CPU_SET writes inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is this (new) thread; `set` is a valid cpu_set_t of
        // the size given.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if r != 0 {
            return None; // not allowed there (a cpuset), or offline
        }
        exec_start("/proc/thread-self/sched")
    };
    std::thread::Builder::new()
        .name("gk-cpu-clock".into())
        .spawn(pinned)
        .ok()?
        .join()
        .ok()
        .flatten()
}

/// `se.exec_start` of a `/proc/.../sched` file, in the scheduler clock.
fn exec_start(path: &str) -> Option<Duration> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("se.exec_start"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(ms / 1000.0))
}

fn monotonic() -> Duration {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
