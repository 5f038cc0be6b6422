//! Fault-injection soak (issue 6): many short multi-process runs, each on a
//! fresh temporary store, with faults injected, and every run checked.
//!
//! A *run*: 2–5 client processes (this binary, re-executed with `--client`),
//! each with its own `Worker`, build random overlapping DAGs of derivations
//! (1–2 outputs each) over one store, with random `max_jobs` and
//! `keep_going`. Builders are real processes (`/bin/sh`) that succeed, fail,
//! hang past the client's timeout, or exit 0 without writing their output.
//! A builder writes to a scratch file; the client moves it into the store
//! while it holds the output locks (as the daemon registers outputs), then
//! reports. Faults, at random times:
//!
//! * `kill -9` of a client (holding locks, waiting, or between steps), and
//!   crashes *inside* a release with deletion (the crash points of
//!   `src/fault.rs`, one per client: before the unlink, between the unlink
//!   and the mark, or after the mark);
//! * `SIGSTOP` … `SIGCONT` of a client;
//! * signal storms (`SIGUSR1`, handler installed without `SA_RESTART`) sent
//!   to every thread of a client, so blocking lock waits see `EINTR`;
//! * a "legacy daemon" (this coordinator, with classic POSIX `fcntl`
//!   locks, like guix-daemon) that takes a lock file, holds it, and releases
//!   it plainly or with deletion (unlink, then the token, in the C++ order)
//!   while clients wait on it; or replaces it by a symlink while holding it;
//!   or makes it mode 000 while holding it;
//! * ENOSPC on the deletion token and on lock-file creation (fault hook,
//!   armed at random in some clients).
//!
//! In every run, two *legacy peers* (`tests/cxx/legacy_peer.cc`, locking as
//! guix-daemon's `PathLocks::lockPaths` does: POSIX locks, `st_size` as the
//! only stale check, unbounded retries), one blocking and one trying
//! without waiting, lock random outputs of the run for as long as the
//! clients run, deleting the lock file half the time.
//!
//! Checks, for every run:
//! * **no two holders**: every holder (client goal while running, legacy
//!   daemon, legacy peer) appends `S pid path t` when it has the lock and
//!   `E pid path t` before it lets go (CLOCK_MONOTONIC ns, one `O_APPEND`
//!   write per line); a killed holder's interval ends when the kill was
//!   sent. The recorded intervals lie inside the real ones, so any overlap
//!   on one path is a real double holder. The one exception is counted
//!   apart: a legacy peer blocked on the inode of a client that crashed
//!   between the unlink and the mark takes the unlinked, empty inode for a
//!   live lock (it logs `S ... unlinked`), as it would after the same crash
//!   of guix-daemon; overlaps with such an interval are "inside the crash
//!   window". Overlaps with a legacy peer's lock taken through a lock file
//!   that the chaos replaced by a symlink (`S ... symlink`) are counted
//!   apart too: guix-daemon's open follows the symlink and locks its
//!   target, which excludes nobody (goalkeeper refuses such a lock file);
//!   and so are overlaps with a hold (the legacy daemon's or a client's)
//!   whose lock file such a peer deleted under it when it let go (`E ...
//!   deleted-under`), by a holder that began after that peer's release: it
//!   locked a fresh lock file, as after any deletion;
//! * **built at most once**: each output is moved into the store at most
//!   once (`W` lines);
//! * **no lost outputs**: every goal a surviving client saw succeed has its
//!   outputs in the store, and every goal of a surviving client finished;
//! * **no deadlock**: every surviving client finishes within the bound, and
//!   none reports a scheduler deadlock;
//! * **the audit**: after every event, no finished goal holds a lock, slots
//!   stay within `max_jobs`, and no call reports an invariant violation;
//! * **nothing left locked or wedged**: afterwards every lock file is free
//!   (OFD, flock and POSIX probes), even with orphaned hanging builders
//!   still alive (they would hold any lock descriptor they inherited), and
//!   no lock file is left linked and marked (guix-daemon would spin on it);
//! * **no wedged legacy peer**: told to stop after the clients are gone,
//!   each legacy peer locks every output path at once and reports within
//!   5 s; one that spins on a lock file it takes for stale never reports.
//!
//! Usage: `soak [--runs N | --duration SECS] [--jobs J] [--seed S]
//! [--fuzz-summary FILE]`. Without arguments (as in `cargo test`) it does a
//! short run (150 runs). `make soak` runs the long one; see the Makefile.

mod common;
mod lockkit;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockkit::Helper;

// ---------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------

/// SplitMix64: a small deterministic generator (runs are reproducible from
/// their seed; no dependency needed).
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Appends one line with one `write(2)` on an `O_APPEND` descriptor, so
/// lines from many processes never interleave.
fn append_line(fd: RawFd, line: &str) {
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    // SAFETY: writing our own buffer.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    assert_eq!(n as usize, buf.len(), "short write to the holder log");
}

fn open_append(path: &Path) -> RawFd {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    assert!(fd >= 0, "open {}", path.display());
    fd
}

fn pidfd_open(pid: i32) -> RawFd {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    fd
}

fn pidfd_signal(pidfd: RawFd, sig: i32) -> bool {
    // SAFETY: plain syscall; NULL siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Polls `fds` for readability for at most `timeout_ms`; EINTR is a normal
/// (empty) return.
fn poll_read(fds: &[RawFd], timeout_ms: i32) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfds.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    p.iter().map(|x| x.revents != 0).collect()
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
}

// ---------------------------------------------------------------------------
// The client: one worker process.
// ---------------------------------------------------------------------------

mod client {
    use super::*;
    use goalkeeper::sched::{BuildMode, Event, GoalId, GoalKind, Outcome, Worker, WorkerOptions};
    use goalkeeper::Error;

    struct Spec {
        store: PathBuf,
        scratch: PathBuf,
        log: PathBuf,
        result: PathBuf,
        max_jobs: u32,
        keep_going: bool,
        seed: u64,
        build_timeout: Duration,
        start_delay: Duration,
        goals: Vec<Vec<String>>,
        deps: Vec<(usize, usize)>,
    }

    fn parse(path: &str) -> Spec {
        let text = std::fs::read_to_string(path).expect("client spec");
        let mut s = Spec {
            store: PathBuf::new(),
            scratch: PathBuf::new(),
            log: PathBuf::new(),
            result: PathBuf::new(),
            max_jobs: 1,
            keep_going: false,
            seed: 0,
            build_timeout: Duration::from_millis(300),
            start_delay: Duration::ZERO,
            goals: Vec::new(),
            deps: Vec::new(),
        };
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            match w[0] {
                "store" => s.store = w[1].into(),
                "scratch" => s.scratch = w[1].into(),
                "log" => s.log = w[1].into(),
                "result" => s.result = w[1].into(),
                "max_jobs" => s.max_jobs = w[1].parse().unwrap(),
                "keep_going" => s.keep_going = w[1] == "1",
                "seed" => s.seed = w[1].parse().unwrap(),
                "build_timeout_ms" => {
                    s.build_timeout = Duration::from_millis(w[1].parse().unwrap())
                }
                "start_delay_ms" => s.start_delay = Duration::from_millis(w[1].parse().unwrap()),
                "goal" => s.goals.push(w[1..].iter().map(|x| x.to_string()).collect()),
                "dep" => s.deps.push((w[1].parse().unwrap(), w[2].parse().unwrap())),
                _ => panic!("bad spec line {line:?}"),
            }
        }
        s
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Builder {
        Ok,
        Fail,
        NoWrite,
        Hang,
    }

    struct Running {
        goal: usize,
        child: std::process::Child,
        pidfd: RawFd,
        deadline: Instant,
        tmps: Vec<PathBuf>,
        /// The inode of each output's lock file when the goal was run.
        locks: Vec<Option<(u64, u64)>>,
    }

    /// The device and inode `P.lock` names now, if it exists.
    fn lock_inode(output: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut lock = output.as_os_str().to_owned();
        lock.push(".lock");
        let m = std::fs::symlink_metadata(lock).ok()?;
        Some((m.dev(), m.ino()))
    }

    extern "C" fn on_usr1(_: libc::c_int) {}

    /// Runs the client; the exit code says how it went (0: finished).
    pub fn main(args: &[String]) -> i32 {
        let spec = parse(&args[0]);
        // SIGUSR1 interrupts blocking system calls (no SA_RESTART), so the
        // coordinator's signal storms make blocking lock waits see EINTR.
        // SAFETY: installing a handler that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
            // The coordinator started us with SIGUSR1 blocked, so that a
            // storm arriving before the handler was installed waits for it.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        std::thread::sleep(spec.start_delay); // staggered start (scenario timing)
        let log = open_append(&spec.log);
        let pid = std::process::id();
        let mut rng = Rng(spec.seed);
        let mut w = match Worker::new(WorkerOptions {
            max_jobs: spec.max_jobs,
            keep_going: spec.keep_going,
            recheck_interval: Duration::from_millis(150),
            ..WorkerOptions::default()
        }) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("client {pid}: Worker::new: {e}");
                return 10;
            }
        };
        let mut ids: Vec<GoalId> = Vec::new();
        for outs in &spec.goals {
            let paths: Vec<PathBuf> = outs.iter().map(|o| spec.store.join(o)).collect();
            ids.push(
                w.add_goal(GoalKind::Build, &paths, BuildMode::Normal)
                    .expect("add_goal"),
            );
        }
        for &(g, d) in &spec.deps {
            w.add_dependency(ids[g], ids[d]).expect("add_dependency");
        }
        let index: BTreeMap<GoalId, usize> = ids.iter().enumerate().map(|(i, g)| (*g, i)).collect();
        let plan: Vec<Builder> = (0..spec.goals.len())
            .map(|_| match rng.below(100) {
                0..=79 => Builder::Ok,
                80..=86 => Builder::Fail,
                87..=92 => Builder::NoWrite,
                _ => Builder::Hang,
            })
            .collect();
        let mut outcomes: BTreeMap<usize, Outcome> = BTreeMap::new();
        let mut running: Vec<Running> = Vec::new();
        let mut notes = String::new();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut violations = Vec::new();
        let mut deadlock = None;
        let max_jobs = spec.max_jobs.max(1) as u64;
        let mut wait_fd = w.fd();
        let mut wait_timeout: Option<Duration> = None;
        let mut waiting = false;

        'main: loop {
            // Builders that ended, or ran past their deadline.
            let now = Instant::now();
            let mut i = 0;
            while i < running.len() {
                let r = &mut running[i];
                let status = match r.child.try_wait() {
                    Ok(Some(st)) => Some(st),
                    Ok(None) if now >= r.deadline => {
                        let _ = r.child.kill();
                        *counts.entry("builder timeouts").or_default() += 1;
                        r.child.wait().ok()
                    }
                    _ => None,
                };
                let Some(status) = status else {
                    i += 1;
                    continue;
                };
                let r = running.swap_remove(i);
                close(r.pidfd);
                let timed_out = status.signal() == Some(libc::SIGKILL);
                let outs = &spec.goals[r.goal];
                let outcome = if timed_out {
                    Outcome::TimedOut
                } else if status.success() {
                    Outcome::Built
                } else {
                    Outcome::Failed
                };
                if outcome == Outcome::Built && r.tmps.iter().all(|t| t.exists()) {
                    // Into the store while the output locks are held.
                    for (t, o) in r.tmps.iter().zip(outs) {
                        let dst = spec.store.join(o);
                        std::fs::rename(t, &dst).expect("move output into the store");
                        append_line(log, &format!("W {pid} {} {}", dst.display(), mono_ns()));
                    }
                } else if outcome == Outcome::Built {
                    // Success without outputs: the worker must refuse it.
                    *counts.entry("builders without output").or_default() += 1;
                } else if outcome == Outcome::Failed {
                    *counts.entry("builder failures").or_default() += 1;
                }
                let t = mono_ns();
                for (o, held) in outs.iter().zip(&r.locks) {
                    // A legacy peer that locked a symlink the chaos left and
                    // then deleted "its" lock file, ours, leaves a lock file
                    // of another inode or none: from that unlink on, a
                    // newcomer locks a fresh lock file.
                    let path = spec.store.join(o);
                    let gone = held.is_some() && lock_inode(&path) != *held;
                    let mark = if gone { " deleted-under" } else { "" };
                    append_line(log, &format!("E {pid} {} {t}{mark}", path.display()));
                }
                // A crash inside report() (a crash point of a release) can only
                // happen after this line: a lower bound for the death of
                // this process, and so for the end of whatever it holds.
                append_line(log, &format!("R {pid} - {}", mono_ns()));
                match w.report(ids[r.goal], outcome) {
                    Ok(()) => {}
                    Err(e @ Error::Invariant(_)) => violations.push(format!("report: {e}")),
                    Err(e) => {
                        let _ = writeln!(notes, "report {}: {e}", r.goal);
                    }
                }
            }
            if waiting {
                // Poll the worker's fd and the builders, as a daemon would.
                let mut fds = vec![wait_fd];
                fds.extend(running.iter().map(|r| r.pidfd));
                let mut timeout = wait_timeout.map_or(1000, |t| t.as_millis() as i64);
                for r in &running {
                    let left = r.deadline.saturating_duration_since(Instant::now());
                    timeout = timeout.min(left.as_millis() as i64 + 1);
                }
                poll_read(&fds, timeout.clamp(0, 1000) as i32);
                waiting = false;
                continue;
            }
            let ev = match w.next_event() {
                Ok(ev) => ev,
                Err(e @ Error::Invariant(_)) => {
                    violations.push(format!("next_event: {e}"));
                    if violations.len() > 20 {
                        break 'main;
                    }
                    continue;
                }
                Err(e @ Error::SchedulerDeadlock(_)) => {
                    deadlock = Some(e.to_string());
                    break 'main;
                }
                Err(e) => {
                    let _ = writeln!(notes, "next_event: {e}");
                    write_result(&spec, &outcomes, &counts, &violations, &notes, None, false);
                    return 11;
                }
            };
            let a = w.audit();
            if a.locks_held_by_finished != 0 || a.slots_used > max_jobs || a.violations != 0 {
                violations.push(format!(
                    "audit after {ev:?}: locks_held_by_finished={} slots_used={} violations={}",
                    a.locks_held_by_finished, a.slots_used, a.violations
                ));
            }
            match ev {
                Event::Run { goal, .. } => {
                    let g = index[&goal];
                    let outs = &spec.goals[g];
                    let t = mono_ns();
                    for o in outs {
                        append_line(
                            log,
                            &format!("S {pid} {} {t}", spec.store.join(o).display()),
                        );
                    }
                    let locks = outs
                        .iter()
                        .map(|o| lock_inode(&spec.store.join(o)))
                        .collect();
                    let tmps: Vec<PathBuf> = (0..outs.len())
                        .map(|k| spec.scratch.join(format!("tmp-{pid}-{g}-{k}")))
                        .collect();
                    let script = match plan[g] {
                        Builder::Ok => {
                            r#"sleep "$1"; shift; for f in "$@"; do printf 'built\n' > "$f"; done"#
                        }
                        Builder::Fail => "exit 1",
                        Builder::NoWrite => "exit 0",
                        Builder::Hang => "exec sleep 60",
                    };
                    let mut cmd = Command::new("/bin/sh");
                    cmd.arg("-c").arg(script).arg("builder");
                    if plan[g] == Builder::Ok {
                        // Builds take a while, so that holders get killed,
                        // stopped and waited for.
                        cmd.arg(format!("0.0{:02}", rng.below(40)));
                    }
                    let child = cmd
                        .args(&tmps)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("spawn builder");
                    let pidfd = pidfd_open(child.id() as i32);
                    *counts.entry("builds started").or_default() += 1;
                    running.push(Running {
                        goal: g,
                        child,
                        pidfd,
                        deadline: Instant::now() + spec.build_timeout,
                        tmps,
                        locks,
                    });
                }
                Event::Finished { goal, outcome } => {
                    outcomes.insert(index[&goal], outcome);
                }
                Event::Wait { fd, timeout } => {
                    wait_fd = fd;
                    wait_timeout = timeout;
                    waiting = true;
                }
                Event::Done => break 'main,
            }
        }
        // Goals that ran ended through report(): read every outcome back.
        for (g, id) in ids.iter().enumerate() {
            if let Ok(r) = w.result(*id) {
                if let Some(o) = r.outcome {
                    outcomes.insert(g, o);
                }
            }
        }
        for line in w.take_log() {
            if line.contains("no space left") {
                *counts.entry("ENOSPC seen").or_default() += 1;
            }
            if line.contains("symbolic link") {
                *counts.entry("symlinked lock files seen").or_default() += 1;
            }
            if line.contains("deleted under us") {
                *counts.entry("stale retries exhausted").or_default() += 1;
            }
        }
        let done = deadlock.is_none() && outcomes.len() == ids.len();
        write_result(
            &spec,
            &outcomes,
            &counts,
            &violations,
            &notes,
            deadlock,
            done,
        );
        close(log);
        0
    }

    fn write_result(
        spec: &Spec,
        outcomes: &BTreeMap<usize, Outcome>,
        counts: &BTreeMap<&'static str, u64>,
        violations: &[String],
        notes: &str,
        deadlock: Option<String>,
        done: bool,
    ) {
        let mut s = String::new();
        for (g, o) in outcomes {
            let _ = writeln!(s, "outcome {g} {} {}", o.name(), o.is_success() as u8);
        }
        for (k, v) in counts {
            let _ = writeln!(s, "count {v} {k}");
        }
        for v in violations {
            let _ = writeln!(s, "violation {}", v.replace('\n', " "));
        }
        if let Some(d) = deadlock {
            let _ = writeln!(s, "deadlock {}", d.replace('\n', " "));
        }
        for n in notes.lines() {
            let _ = writeln!(s, "note {n}");
        }
        if done {
            s.push_str("done\n");
        }
        let tmp = spec.result.with_extension("tmp");
        std::fs::write(&tmp, s).expect("write result");
        std::fs::rename(&tmp, &spec.result).expect("publish result");
    }
}

// ---------------------------------------------------------------------------
// The coordinator.
// ---------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Totals {
    runs: u64,
    faults: BTreeMap<String, u64>,
    /// Observations that are not injected faults (configurations, outcomes).
    info: BTreeMap<String, u64>,
    double_holders: u64,
    /// Overlaps involving a legacy peer that took an unlinked inode for a
    /// live lock (a client killed between the unlink and the mark): the
    /// documented crash window, counted apart (not a failure).
    window_double_holders: u64,
    double_builds: u64,
    deadlocks: u64,
    lost_outputs: u64,
    unfinished_goals: u64,
    violations: u64,
    left_locked: u64,
    wedged: u64,
    wedged_legacy_peers: u64,
    client_errors: u64,
    goals: u64,
    goals_succeeded: u64,
    max_client_ms: u64,
    failures: Vec<String>,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.runs += o.runs;
        for (k, v) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.info {
            *self.info.entry(k.clone()).or_default() += v;
        }
        self.double_holders += o.double_holders;
        self.window_double_holders += o.window_double_holders;
        self.double_builds += o.double_builds;
        self.deadlocks += o.deadlocks;
        self.lost_outputs += o.lost_outputs;
        self.unfinished_goals += o.unfinished_goals;
        self.violations += o.violations;
        self.left_locked += o.left_locked;
        self.wedged += o.wedged;
        self.wedged_legacy_peers += o.wedged_legacy_peers;
        self.client_errors += o.client_errors;
        self.goals += o.goals;
        self.goals_succeeded += o.goals_succeeded;
        self.max_client_ms = self.max_client_ms.max(o.max_client_ms);
        self.failures.extend(o.failures.iter().cloned());
    }
    fn fault(&mut self, k: &str, n: u64) {
        if n > 0 {
            *self.faults.entry(k.to_string()).or_default() += n;
        }
    }
    fn note(&mut self, k: &str, n: u64) {
        if n > 0 {
            *self.info.entry(k.to_string()).or_default() += n;
        }
    }
    fn injected(&self) -> u64 {
        self.faults.values().sum()
    }
    fn bad(&self) -> bool {
        self.double_holders
            + self.double_builds
            + self.deadlocks
            + self.lost_outputs
            + self.unfinished_goals
            + self.violations
            + self.left_locked
            + self.wedged
            + self.wedged_legacy_peers
            + self.client_errors
            > 0
    }
}

struct ClientProc {
    pid: i32,
    pidfd: RawFd,
    child: std::process::Child,
    result: PathBuf,
    goals: Vec<Vec<String>>,
    /// The crash point armed in this client, if any (one per client).
    crash_at: Option<&'static str>,
    killed_at: Option<u64>,
    exited: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Chaos {
    Kill,
    Stop(u64),
    Storm,
    LegacyHold(u64),
    LegacyDelete(u64),
    Symlink(u64),
    Mode000(u64),
}

/// Bound on a client's life: far above a normal run (hundreds of ms), far
/// below "forever".
const CLIENT_BOUND: Duration = Duration::from_secs(30);

/// How long a legacy peer may take, once told to stop, to finish its hold
/// and lock every output path at once. Every client is gone by then, so it
/// takes milliseconds; a peer spinning on a lock file it takes for stale
/// never answers.
const PEER_BOUND: Duration = Duration::from_secs(5);

/// One run's directories and derivations.
struct Run {
    seed: u64,
    _store: common::TempStore,
    scratch: common::TempStore,
    dir: PathBuf,
    log_path: PathBuf,
    /// Outputs per derivation.
    derivs: Vec<Vec<String>>,
    /// `(d, e)`: derivation d depends on e < d.
    edges: Vec<(usize, usize)>,
}

impl Run {
    /// A fresh store and scratch directory, and a random DAG of 6..=16
    /// derivations with 1..=2 outputs each.
    fn new(seed: u64, rng: &mut Rng) -> Run {
        let store = common::TempStore::new();
        let scratch = common::TempStore::new();
        let dir = store.dir().to_path_buf();
        let log_path = scratch.dir().join("holders.log");
        std::fs::write(&log_path, b"").unwrap();
        let nderiv = rng.range(6, 16) as usize;
        let derivs: Vec<Vec<String>> = (0..nderiv)
            .map(|d| {
                (0..rng.range(1, 2))
                    .map(|k| format!("{d:02}-{seed:x}-out{k}"))
                    .collect()
            })
            .collect();
        let mut edges: Vec<(usize, usize)> = Vec::new();
        for d in 1..nderiv {
            for _ in 0..rng.below(3) {
                let e = rng.below(d as u64) as usize;
                if !edges.contains(&(d, e)) {
                    edges.push((d, e));
                }
            }
        }
        Run {
            seed,
            _store: store,
            scratch,
            dir,
            log_path,
            derivs,
            edges,
        }
    }

    fn all_outputs(&self) -> Vec<String> {
        self.derivs.iter().flatten().cloned().collect()
    }

    /// A failure of this run, with its seed.
    fn fail(&self, t: &mut Totals, what: String) {
        t.failures.push(format!("seed {:#x}: {what}", self.seed));
    }
}

fn run_one(seed: u64, exe: &Path, peer_exe: &Path) -> Totals {
    let mut t = Totals {
        runs: 1,
        ..Totals::default()
    };
    let mut rng = Rng(seed);
    let run = Run::new(seed, &mut rng);
    let mut clients = spawn_clients(&run, &mut rng, exe, &mut t);
    let peers = spawn_legacy_peers(&run, &mut rng, peer_exe);
    let started = Instant::now();
    let chaos = Chaos::start(&run, &clients, &mut rng, started);
    wait_for_clients(&run, &mut clients, started, &mut t);
    let chaos_log = chaos.stop();
    record_chaos(&chaos_log, &mut clients, &mut t);
    let survivors = reap_clients(&run, &mut clients, started, &mut t);
    stop_legacy_peers(&run, peers, &mut t);
    let lock_files = check_nothing_locked_or_wedged(&run, &clients, &mut t);
    kill_orphaned_builders(&clients);
    check_holder_log(&run, &clients, &mut t);
    check_survivors(&run, &clients, &survivors, &mut t);
    if t.bad() {
        keep_evidence(&run, &clients, &chaos_log, &mut t);
    }
    remove_chaos_symlinks(lock_files);
    t
}

/// Starts 2..=5 clients, each wanting a random subset of the derivations
/// (closed under dependencies), some with faults armed through the fault
/// hook: ENOSPC on the token or on lock-file creation, and a crash at one
/// instant of a release with deletion.
fn spawn_clients(run: &Run, rng: &mut Rng, exe: &Path, t: &mut Totals) -> Vec<ClientProc> {
    let nderiv = run.derivs.len();
    let nclients = rng.range(2, 5) as usize;
    let mut clients = Vec::new();
    for c in 0..nclients {
        let mut want: BTreeSet<usize> = (0..nderiv).filter(|_| rng.chance(55)).collect();
        if want.is_empty() {
            want.insert(rng.below(nderiv as u64) as usize);
        }
        loop {
            let more: Vec<usize> = run
                .edges
                .iter()
                .filter(|(d, e)| want.contains(d) && !want.contains(e))
                .map(|&(_, e)| e)
                .collect();
            if more.is_empty() {
                break;
            }
            want.extend(more);
        }
        let order: Vec<usize> = want.iter().copied().collect();
        let pos: BTreeMap<usize, usize> = order.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let mut spec = String::new();
        let result = run.scratch.dir().join(format!("result-{c}"));
        let _ = writeln!(spec, "store {}", run.dir.display());
        let _ = writeln!(spec, "scratch {}", run.scratch.dir().display());
        let _ = writeln!(spec, "log {}", run.log_path.display());
        let _ = writeln!(spec, "result {}", result.display());
        let _ = writeln!(spec, "max_jobs {}", rng.range(1, 3));
        let _ = writeln!(spec, "keep_going {}", rng.below(2));
        let _ = writeln!(spec, "seed {}", rng.next());
        let _ = writeln!(spec, "build_timeout_ms {}", rng.range(150, 300));
        let _ = writeln!(spec, "start_delay_ms {}", rng.below(40));
        let mut goals = Vec::new();
        for &d in &order {
            let _ = writeln!(spec, "goal {}", run.derivs[d].join(" "));
            goals.push(run.derivs[d].clone());
        }
        for &(d, e) in &run.edges {
            if let (Some(&a), Some(&b)) = (pos.get(&d), pos.get(&e)) {
                let _ = writeln!(spec, "dep {a} {b}");
            }
        }
        let spec_path = run.scratch.dir().join(format!("spec-{c}"));
        std::fs::write(&spec_path, spec).unwrap();
        let mut cmd = Command::new(exe);
        cmd.arg("--client")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut faults = Vec::new();
        if rng.chance(25) {
            faults.push(format!("token-write-enospc:{}", rng.range(10, 60)));
            t.note("clients with ENOSPC on the deletion token", 1);
        }
        if rng.chance(10) {
            faults.push(format!("open-enospc:{}", rng.range(2, 10)));
            t.note("clients with ENOSPC on lock-file creation", 1);
        }
        let mut crash_at = None;
        if rng.chance(15) {
            // One crash point per client, so that its death can be named.
            let at = goalkeeper::fault::Point::crashes()[rng.below(3) as usize];
            faults.push(format!("{}:{}", at.name(), rng.range(20, 60)));
            crash_at = Some(at.name());
        }
        if !faults.is_empty() {
            cmd.env("GOALKEEPER_FAULTS", faults.join(","));
        } else {
            cmd.env_remove("GOALKEEPER_FAULTS");
        }
        let child = cmd.spawn().expect("spawn client");
        let pid = child.id() as i32;
        clients.push(ClientProc {
            pid,
            pidfd: pidfd_open(pid),
            child,
            result,
            goals,
            crash_at,
            killed_at: None,
            exited: None,
        });
    }
    clients
}

/// Two guix-daemon-style peers (tests/cxx/legacy_peer.cc, POSIX locks,
/// st_size as the only stale check, unbounded retries) locking random
/// outputs of the run until told to stop: one blocking, one trying without
/// waiting.
fn spawn_legacy_peers(run: &Run, rng: &mut Rng, peer_exe: &Path) -> Vec<(&'static str, Helper)> {
    let paths: Vec<String> = run
        .all_outputs()
        .iter()
        .map(|o| run.dir.join(o).display().to_string())
        .collect();
    ["wait", "nowait"]
        .into_iter()
        .map(|mode| {
            let mut cmd = Command::new(peer_exe);
            cmd.arg("loop")
                .arg(&run.log_path)
                .arg(rng.next().to_string())
                .arg(mode)
                .args(&paths);
            (mode, Helper::spawn(cmd, &format!("legacy peer ({mode})")))
        })
        .collect()
}

/// One chaos step done: `(client, time, what)`.
type ChaosDone = (usize, u64, &'static str);

/// The chaos thread and what it did.
struct ChaosThread {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    log: Arc<Mutex<Vec<ChaosDone>>>,
}

impl Chaos {
    /// Plans 2..=6 chaos steps in the first 300 ms and runs them on a thread.
    fn start(run: &Run, clients: &[ClientProc], rng: &mut Rng, started: Instant) -> ChaosThread {
        let nclients = clients.len();
        let mut plan: Vec<(u64, usize, Chaos)> = Vec::new();
        for _ in 0..rng.range(2, 7) {
            let at = rng.below(300);
            let c = rng.below(nclients as u64) as usize;
            let what = match rng.below(100) {
                0..=14 => Chaos::Kill,
                15..=29 => Chaos::Stop(rng.range(10, 150)),
                30..=44 => Chaos::Storm,
                45..=59 => Chaos::LegacyHold(rng.range(5, 80)),
                60..=84 => Chaos::LegacyDelete(rng.range(5, 80)),
                85..=92 => Chaos::Symlink(rng.range(5, 60)),
                _ => Chaos::Mode000(rng.range(5, 60)),
            };
            plan.push((at, c, what));
        }
        plan.sort_by_key(|p| p.0);
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let pidfds: Vec<(i32, RawFd)> = clients.iter().map(|c| (c.pid, c.pidfd)).collect();
            let dir = run.dir.clone();
            let log_path = run.log_path.clone();
            let outputs = run.all_outputs();
            let chaos_log = log.clone();
            let mut rng = Rng(rng.next());
            std::thread::spawn(move || {
                let log = open_append(&log_path);
                for (at, c, what) in plan {
                    let due = started + Duration::from_millis(at);
                    while Instant::now() < due {
                        if stop.load(Ordering::Relaxed) {
                            close(log);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(2)); // scenario timing
                    }
                    // Kills and stops prefer a client that holds a lock right
                    // now (an open interval in the holder log).
                    let mut c = c;
                    if matches!(what, Chaos::Kill | Chaos::Stop(_)) && rng.chance(70) {
                        let holding = holders_now(&log_path);
                        let cands: Vec<usize> = (0..pidfds.len())
                            .filter(|&i| holding.contains(&pidfds[i].0.to_string()))
                            .collect();
                        if !cands.is_empty() {
                            c = cands[rng.below(cands.len() as u64) as usize];
                        }
                    }
                    let (pid, pidfd) = pidfds[c];
                    // Prefer an output not built yet: clients will want it, wait
                    // for it, and cannot skip it as already valid.
                    let mut path = dir.join(&outputs[rng.below(outputs.len() as u64) as usize]);
                    for _ in 0..8 {
                        if !path.exists() {
                            break;
                        }
                        path = dir.join(&outputs[rng.below(outputs.len() as u64) as usize]);
                    }
                    // Taken before the step: for a kill, a lower bound of when
                    // the kernel released the client's locks.
                    let at = mono_ns();
                    if let Some(n) = chaos_step(what, pid, pidfd, &path, log, &stop) {
                        chaos_log.lock().unwrap().push((c, at, n));
                    }
                }
                close(log);
            })
        };
        ChaosThread { stop, thread, log }
    }
}

impl ChaosThread {
    /// Stops the thread and returns what it did.
    fn stop(self) -> Vec<ChaosDone> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("chaos thread");
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// Waits for every client to exit, within [`CLIENT_BOUND`]; a client still
/// running then is a deadlock, and is killed.
fn wait_for_clients(run: &Run, clients: &mut [ClientProc], started: Instant, t: &mut Totals) {
    loop {
        let live: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].exited.is_none())
            .collect();
        if live.is_empty() {
            return;
        }
        let fds: Vec<RawFd> = live.iter().map(|&i| clients[i].pidfd).collect();
        let ready = poll_read(&fds, 100);
        for (k, &i) in live.iter().enumerate() {
            if ready[k] {
                clients[i].exited = Some(Instant::now());
            }
        }
        if started.elapsed() > CLIENT_BOUND {
            for &i in &live {
                if clients[i].exited.is_none() {
                    t.deadlocks += 1;
                    run.fail(
                        t,
                        format!(
                            "client {i} (pid {}) did not finish within {CLIENT_BOUND:?}",
                            clients[i].pid
                        ),
                    );
                    clients[i].killed_at = Some(mono_ns());
                    pidfd_signal(clients[i].pidfd, libc::SIGCONT);
                    pidfd_signal(clients[i].pidfd, libc::SIGKILL);
                }
            }
        }
    }
}

/// Counts the chaos steps, and notes when each killed client was killed.
fn record_chaos(chaos_log: &[ChaosDone], clients: &mut [ClientProc], t: &mut Totals) {
    for (c, at, what) in chaos_log {
        t.fault(what, 1);
        if *what == "kill -9 of a client" {
            clients[*c].killed_at.get_or_insert(*at);
        }
    }
}

/// Reaps the clients and notes how each ended: survivors (returned), killed
/// by the chaos, crashed at their crash point, or failed.
fn reap_clients(
    run: &Run,
    clients: &mut [ClientProc],
    started: Instant,
    t: &mut Totals,
) -> Vec<usize> {
    let mut survivors = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let st = c.child.wait().expect("wait client");
        close(c.pidfd);
        let ms = c
            .exited
            .map_or(0, |e| e.duration_since(started).as_millis() as u64);
        match (st.signal(), c.killed_at) {
            (Some(libc::SIGKILL), None) => {
                // Killed itself inside a release, at its crash point.
                let at = c.crash_at.unwrap_or("an unknown point");
                t.fault(&format!("crash inside a release ({at})"), 1);
                c.killed_at = Some(0);
            }
            (_, Some(_)) => {}
            (None, None) if st.success() => {
                survivors.push(i);
                t.max_client_ms = t.max_client_ms.max(ms);
            }
            _ => {
                t.client_errors += 1;
                let res = std::fs::read_to_string(&c.result).unwrap_or_default();
                run.fail(
                    t,
                    format!(
                        "client {i} ended with {st}: {}",
                        res.lines()
                            .filter(|l| l.starts_with("note"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                );
            }
        }
    }
    survivors
}

/// Tells the legacy peers to stop: each must then lock every output path at
/// once and report within [`PEER_BOUND`]; one that does not is wedged
/// (spinning on a lock file it takes for stale), and is killed.
fn stop_legacy_peers(run: &Run, peers: Vec<(&'static str, Helper)>, t: &mut Totals) {
    let mut peers = peers;
    for (_, p) in &mut peers {
        p.close_stdin();
    }
    for (mode, mut p) in peers {
        match p.next_within(PEER_BOUND) {
            Some(r) if r.starts_with("done ") => {
                // done HOLDS STALE UNLINKED FINAL_US
                let f: Vec<u64> = r[5..].split(' ').filter_map(|x| x.parse().ok()).collect();
                if let [holds, stale, unlinked, _final_us] = f[..] {
                    t.note("legacy peer holds", holds);
                    t.note("legacy peer stale retries (deleted lock files)", stale);
                    t.note(
                        "legacy peer locks granted on an unlinked, unmarked inode",
                        unlinked,
                    );
                }
                t.note(&format!("legacy peers ({mode})"), 1);
            }
            other => {
                t.wedged_legacy_peers += 1;
                run.fail(
                    t,
                    format!(
                        "legacy peer ({mode}) did not lock every path within {PEER_BOUND:?} \
                         after the run (said {other:?}): wedged\n{}",
                        p.transcript()
                    ),
                );
                p.kill9();
            }
        }
    }
}

/// Nothing may remain locked, even with orphaned builders still alive, and
/// no lock file may be left linked and marked (guix-daemon would spin on it
/// for ever; no crash leaves one, and the next goalkeeper locker would heal
/// it). Returns the lock files found.
fn check_nothing_locked_or_wedged(
    run: &Run,
    clients: &[ClientProc],
    t: &mut Totals,
) -> Vec<PathBuf> {
    let mut lock_files = Vec::new();
    for e in std::fs::read_dir(&run.dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "lock") {
            lock_files.push(p);
        }
    }
    for p in &lock_files {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if !meta.file_type().is_file() {
            continue; // a symlink left by the chaos: removed below
        }
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        let free = probe_free(fd) || only_pre_exec_builders_hold(p, fd, clients);
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        unsafe { libc::fstat(fd, &mut st) };
        close(fd);
        if !free {
            t.left_locked += 1;
            run.fail(t, format!("{} still locked after the run", p.display()));
        }
        if st.st_nlink > 0 && st.st_size != 0 {
            t.wedged += 1;
            run.fail(
                t,
                format!(
                    "{} was left linked and marked ({} bytes): old daemons spin on it",
                    p.display(),
                    st.st_size
                ),
            );
        }
    }
    lock_files
}

/// A client killed just after it forked a builder leaves that child holding
/// the inherited lock descriptors until its `exec` closes them (they are
/// `O_CLOEXEC`; a `posix_spawn` child runs no atfork handler). On a loaded
/// machine the child may not have run yet when the run is checked. So when
/// `lock_file` is busy, the holders are looked up: if every one is a
/// process of a client's group that has not exec'd yet (its executable is
/// still this test binary), this waits (bounded) for them to exec or exit
/// and probes again. Any other holder, or one that stays past the bound, is
/// a real leak: `false`.
fn only_pre_exec_builders_hold(lock_file: &Path, fd: RawFd, clients: &[ClientProc]) -> bool {
    let me = std::fs::read_link("/proc/self/exe").ok();
    let groups: BTreeSet<i32> = clients.iter().map(|c| c.pid).collect();
    let pre_exec = |pid: u32| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        // SAFETY: getpgid has no memory preconditions.
        let pgid = unsafe { libc::getpgid(pid as i32) };
        exe.is_some() && exe == me && groups.contains(&pgid)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(info) = goalkeeper::inspect::lock_info(lock_file) else {
            return false;
        };
        let pids = info.holder_pids();
        if pids.is_empty() || pids.len() < info.holders.len() || !pids.iter().all(|&p| pre_exec(p))
        {
            return probe_free(fd);
        }
        if Instant::now() > deadline {
            return false;
        }
        // Bounded polling of another process's progress to exec, which
        // nothing signals to us.
        std::thread::sleep(Duration::from_millis(2));
        if probe_free(fd) {
            return true;
        }
    }
}

/// Orphaned builders (their client was killed) go now.
fn kill_orphaned_builders(clients: &[ClientProc]) {
    for c in clients {
        // SAFETY: signalling the client's process group, which only our
        // client and its builders are in.
        unsafe { libc::kill(-c.pid, libc::SIGKILL) };
    }
}

/// One holder's interval on a path: `(start, end, holder, how)`.
type Interval = (u64, u64, String, Taken);

/// What a holder locked, as its `S` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Taken {
    /// The path's lock file.
    LockFile,
    /// A legacy peer took an unlinked inode for a live lock (`unlinked`).
    Unlinked,
    /// A legacy peer locked a file reached through a symlink, or not a
    /// regular file (`symlink`): the chaos replaced the lock file by a
    /// symlink, which guix-daemon's open follows and goalkeeper refuses.
    Symlink,
    /// A hold (the chaos's legacy hold, or a client's) whose lock file a
    /// legacy peer that locked through a symlink deleted under it (`E ...
    /// deleted-under`): it excluded nobody from that peer's release on.
    DeletedUnder,
}

/// The holder log: intervals per path must not overlap, outside the crash
/// window; each output is moved into the store at most once.
fn check_holder_log(run: &Run, clients: &[ClientProc], t: &mut Totals) {
    let text = std::fs::read_to_string(&run.log_path).unwrap();
    let killed: BTreeMap<String, u64> = clients
        .iter()
        .filter_map(|c| {
            c.killed_at
                .filter(|&k| k != 0)
                .map(|k| (c.pid.to_string(), k))
        })
        .collect();
    let mut open: BTreeMap<(String, String), (u64, Taken)> = BTreeMap::new();
    let mut intervals: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    let mut writes: BTreeMap<String, u64> = BTreeMap::new();
    let mut reports: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (kind, pid, path, at) = (f[0], f[1], f[2], f[3].parse::<u64>().unwrap());
        match kind {
            "S" => {
                let marks = f.get(4..).unwrap_or_default();
                let how = if marks.contains(&"unlinked") {
                    Taken::Unlinked
                } else if marks.contains(&"symlink") {
                    t.note("legacy peer locks taken through a symlinked lock file", 1);
                    Taken::Symlink
                } else {
                    Taken::LockFile
                };
                open.insert((pid.to_string(), path.to_string()), (at, how));
            }
            "E" => {
                if let Some((s, mut u)) = open.remove(&(pid.to_string(), path.to_string())) {
                    if f.get(4) == Some(&"deleted-under") {
                        u = Taken::DeletedUnder;
                    }
                    intervals.entry(path.to_string()).or_default().push((
                        s,
                        at,
                        pid.to_string(),
                        u,
                    ));
                }
            }
            "W" => *writes.entry(path.to_string()).or_default() += 1,
            "R" => reports.entry(pid.to_string()).or_default().push(at),
            _ => panic!("bad log line {line:?}"),
        }
    }
    let mut killed_holders = BTreeSet::new();
    for ((pid, path), (s, u)) in open {
        // No end: the holder died with the lock. It died after the kill was
        // sent to it, if one was; or, if it crashed itself, inside a
        // report() that began after its last R line (and after s: no
        // report after s means no crash after s). The earliest such bound
        // is a lower bound of when the kernel released the lock.
        let last_report = reports
            .get(&pid)
            .and_then(|r| r.iter().copied().filter(|&r| r > s).max());
        let end = [killed.get(&pid).copied(), last_report]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(s);
        if killed.get(&pid) == Some(&end) {
            killed_holders.insert(pid.clone());
        }
        intervals
            .entry(path)
            .or_default()
            .push((s, end.max(s), pid, u));
    }
    t.note(
        "kills that hit a client holding locks",
        killed_holders.len() as u64,
    );
    for (path, iv) in intervals {
        count_overlaps(run, &path, iv, t);
    }
    for (path, n) in &writes {
        if *n > 1 {
            t.double_builds += 1;
            run.fail(t, format!("{path} built {n} times"));
        }
    }
}

/// Whether hold `a`'s lock file was deleted under it (`E ... deleted-under`)
/// by a legacy peer that held this path through a symlink (its release
/// unlinks the path), and `b` began after that release, inside `a`: `b`
/// then locked a fresh lock file.
fn deleted_under_before(iv: &[Interval], a: &Interval, b: &Interval) -> bool {
    a.3 == Taken::DeletedUnder
        && iv
            .iter()
            .any(|s| s.3 == Taken::Symlink && a.0 <= s.1 && s.1 <= b.0)
}

/// Counts the overlapping pairs of holder intervals on `path`: in the crash
/// window when one of the two is a legacy peer's lock on an unlinked inode;
/// apart when one is a legacy peer's lock through a symlink (which excludes
/// nobody: guix-daemon follows a symlinked lock file, goalkeeper refuses
/// it); double holders otherwise.
fn count_overlaps(run: &Run, path: &str, mut iv: Vec<Interval>, t: &mut Totals) {
    iv.sort();
    for (i, a) in iv.iter().enumerate() {
        for b in &iv[i + 1..] {
            if b.0 >= a.1 {
                break;
            }
            if a.2 == b.2 {
                continue;
            }
            if a.3 == Taken::Unlinked || b.3 == Taken::Unlinked {
                t.window_double_holders += 1;
            } else if a.3 == Taken::Symlink || b.3 == Taken::Symlink {
                t.note(
                    "overlaps with a legacy lock taken through a symlink (guix-daemon follows it)",
                    1,
                );
            } else if deleted_under_before(&iv, a, b) || deleted_under_before(&iv, b, a) {
                t.note(
                    "overlaps with a hold whose lock file a symlink-following peer deleted",
                    1,
                );
            } else {
                t.double_holders += 1;
                run.fail(
                    t,
                    format!(
                        "two holders of {path}: pid {} from {} until {}, pid {} from {}",
                        a.2, a.0, a.1, b.2, b.0
                    ),
                );
            }
        }
    }
}

/// Surviving clients: every goal finished, successes have their outputs.
fn check_survivors(run: &Run, clients: &[ClientProc], survivors: &[usize], t: &mut Totals) {
    for &i in survivors {
        let c = &clients[i];
        let res = std::fs::read_to_string(&c.result).unwrap_or_default();
        if !res.lines().any(|l| l == "done") {
            t.unfinished_goals += 1;
        }
        let mut seen = BTreeSet::new();
        for line in res.lines() {
            let f: Vec<&str> = line.splitn(3, ' ').collect();
            match f[0] {
                "outcome" => {
                    let g: usize = f[1].parse().unwrap();
                    seen.insert(g);
                    t.goals += 1;
                    if line.ends_with(" 1") {
                        t.goals_succeeded += 1;
                        for o in &c.goals[g] {
                            if !run.dir.join(o).exists() {
                                t.lost_outputs += 1;
                                run.fail(
                                    t,
                                    format!("client {i} goal {g} succeeded but {o} is missing"),
                                );
                            }
                        }
                    }
                }
                "count" => {
                    let (n, what) = f[1..]
                        .join(" ")
                        .split_once(' ')
                        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.to_string()))
                        .unwrap();
                    match what.as_str() {
                        "builds started" => t.note("builders run", n),
                        "symlinked lock files seen" => {
                            t.note("goals failed on a symlinked lock file", n)
                        }
                        "stale retries exhausted" => {
                            t.wedged += n;
                            run.fail(
                                t,
                                format!(
                                    "client {i}: {n} goals failed on a permanently stale lock file"
                                ),
                            );
                        }
                        w => t.fault(w, n),
                    }
                }
                "violation" => {
                    t.violations += 1;
                    run.fail(t, format!("client {i}: {line}"));
                }
                "deadlock" => {
                    t.deadlocks += 1;
                    run.fail(t, format!("client {i}: {line}"));
                }
                _ => {}
            }
        }
        let missing = c.goals.len() - seen.len().min(c.goals.len());
        if missing > 0 {
            t.unfinished_goals += missing as u64;
            run.fail(t, format!("client {i}: {missing} goals never finished"));
        }
    }
}

/// Keeps the evidence of a failed run: the holder log, the specs, the
/// results and the chaos steps.
fn keep_evidence(run: &Run, clients: &[ClientProc], chaos_log: &[ChaosDone], t: &mut Totals) {
    let keep = std::env::temp_dir().join(format!("gk-soak-failed-{:x}", run.seed));
    let _ = std::fs::create_dir_all(&keep);
    for e in std::fs::read_dir(run.scratch.dir()).unwrap().flatten() {
        let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
    }
    let mut chaos = String::new();
    for (c, at, what) in chaos_log {
        let _ = writeln!(chaos, "{at} client {c} pid {} {what}", clients[*c].pid);
    }
    let _ = std::fs::write(keep.join("chaos"), chaos);
    run.fail(t, format!("evidence kept in {}", keep.display()));
}

/// Removes the symlinks the chaos left at lock files, so that the store can
/// be cleaned up.
fn remove_chaos_symlinks(lock_files: Vec<PathBuf>) {
    for p in lock_files {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// The pids with an open holder interval in the log (S without E).
fn holders_now(log: &Path) -> BTreeSet<String> {
    let mut open: BTreeMap<(String, String), u32> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 4 {
            continue;
        }
        let key = (f[1].to_string(), f[2].to_string());
        match f[0] {
            "S" => *open.entry(key).or_default() += 1,
            "E" => {
                open.remove(&key);
            }
            _ => {}
        }
    }
    open.into_keys().map(|(pid, _)| pid).collect()
}

/// Whether every kind of lock on `fd`'s file is free.
fn probe_free(fd: RawFd) -> bool {
    // SAFETY: plain fcntl/flock calls on our descriptor with a valid struct.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        let ofd = libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) == 0;
        let fl2 = libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0;
        ofd && fl2
    }
}

fn chaos_step(
    what: Chaos,
    pid: i32,
    pidfd: RawFd,
    path: &Path,
    log: RawFd,
    stop: &AtomicBool,
) -> Option<&'static str> {
    let sleep = |ms: u64| {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1)); // scenario timing
        }
    };
    match what {
        Chaos::Kill => (!poll_read(&[pidfd], 0)[0] && pidfd_signal(pidfd, libc::SIGKILL))
            .then_some("kill -9 of a client"),
        Chaos::Stop(ms) => {
            if poll_read(&[pidfd], 0)[0] || !pidfd_signal(pidfd, libc::SIGSTOP) {
                return None;
            }
            sleep(ms);
            pidfd_signal(pidfd, libc::SIGCONT);
            Some("SIGSTOP/SIGCONT of a client")
        }
        Chaos::Storm => {
            let mut sent = 0;
            for _ in 0..5 {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    break;
                };
                for t in tasks.flatten() {
                    if let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() {
                        // SAFETY: plain syscall; the pid is not reaped yet,
                        // so its tids cannot be reused.
                        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0
                        {
                            sent += 1;
                        }
                    }
                }
                sleep(3);
            }
            (sent > 0).then_some("SIGUSR1 storm (EINTR in blocking waits)")
        }
        Chaos::LegacyHold(ms)
        | Chaos::LegacyDelete(ms)
        | Chaos::Symlink(ms)
        | Chaos::Mode000(ms) => {
            // A legacy daemon: classic POSIX fcntl lock, as guix-daemon's
            // PathLocks, with its st_size stale check.
            let lock = {
                let mut s = path.as_os_str().as_bytes().to_vec();
                s.extend_from_slice(b".lock");
                PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(s))
            };
            let c = CString::new(lock.as_os_str().as_bytes()).unwrap();
            // SAFETY: NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd < 0 {
                return None;
            }
            // SAFETY: plain fcntl with a valid struct.
            let got = unsafe {
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as _;
                fl.l_whence = libc::SEEK_SET as _;
                libc::fcntl(fd, libc::F_SETLK, &mut fl) == 0
            };
            // SAFETY: an all-zero stat is valid.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: valid out pointer.
            unsafe { libc::fstat(fd, &mut st) };
            if !got || st.st_size != 0 || st.st_nlink == 0 {
                close(fd); // busy or stale: a legacy daemon would retry later
                return None;
            }
            let me = std::process::id();
            let shown = path.display().to_string();
            append_line(log, &format!("S {me} {shown} {}", mono_ns()));
            let mut ended = false;
            let name = match what {
                Chaos::LegacyHold(_) => {
                    sleep(ms);
                    "legacy daemon held a lock file"
                }
                Chaos::LegacyDelete(_) => {
                    sleep(ms);
                    // The hold ends at the unlink: from then on a newcomer
                    // creates and locks a fresh P.lock, while this inode is
                    // still locked until the close. Logging the end after
                    // the unlink made that protocol-correct overlap look
                    // like two holders (seen once under heavy load).
                    append_line(log, &format!("E {me} {shown} {}", mono_ns()));
                    ended = true;
                    // The C++ order: unlink, then the token.
                    // SAFETY: NUL-terminated path; our descriptor.
                    unsafe {
                        libc::unlink(c.as_ptr());
                        libc::write(fd, b"d".as_ptr().cast(), 1);
                    }
                    "legacy daemon deleted a lock file under its waiters"
                }
                Chaos::Symlink(_) => {
                    sleep(ms / 2);
                    // The hold ends at the rename, which unlinks this inode
                    // (as at the unlink of LegacyDelete).
                    append_line(log, &format!("E {me} {shown} {}", mono_ns()));
                    ended = true;
                    let tmp = lock.with_extension("chaos-symlink");
                    let _ = std::os::unix::fs::symlink("/dev/null", &tmp);
                    let _ = std::fs::rename(&tmp, &lock);
                    "lock file replaced by a symlink"
                }
                _ => {
                    // SAFETY: our descriptor.
                    unsafe { libc::fchmod(fd, 0) };
                    sleep(ms);
                    // SAFETY: our descriptor.
                    unsafe { libc::fchmod(fd, 0o600) };
                    "lock file made mode 000 (no effect on root)"
                }
            };
            if !ended {
                // A legacy peer that locked /dev/null through a symlink the
                // chaos left may have deleted "its" lock file, this inode,
                // under the hold: from then on a newcomer locks a fresh
                // P.lock, and the hold excluded nobody.
                // SAFETY: an all-zero stat is valid; valid out pointer.
                let mut now: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: our descriptor, a valid out pointer.
                unsafe { libc::fstat(fd, &mut now) };
                let mark = if now.st_nlink == 0 {
                    " deleted-under"
                } else {
                    ""
                };
                append_line(log, &format!("E {me} {shown} {}{mark}", mono_ns()));
            }
            close(fd); // POSIX lock released
            if matches!(what, Chaos::Symlink(_)) {
                sleep(ms);
                if std::fs::symlink_metadata(&lock).is_ok_and(|m| m.file_type().is_symlink()) {
                    let _ = std::fs::remove_file(&lock);
                }
            }
            Some(name)
        }
    }
}

struct Config {
    runs: Option<u64>,
    run_seed: Option<u64>,
    duration: Option<Duration>,
    jobs: u64,
    seed: u64,
    fuzz_summary: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Option<Config> {
    let mut c = Config {
        runs: None,
        run_seed: None,
        duration: None,
        jobs: 2,
        seed: mono_ns() ^ (std::process::id() as u64) << 32,
        fuzz_summary: None,
    };
    let mut i = 0;
    let mut filters = Vec::new();
    while i < args.len() {
        let a = args[i].as_str();
        let val = || args.get(i + 1).cloned().unwrap_or_default();
        match a {
            "--runs" => {
                c.runs = Some(val().parse().expect("--runs N"));
                i += 1;
            }
            "--duration" => {
                let v = val();
                let secs: f64 = if let Some(m) = v.strip_suffix('m') {
                    m.parse::<f64>().expect("--duration") * 60.0
                } else {
                    v.trim_end_matches('s').parse().expect("--duration SECS")
                };
                c.duration = Some(Duration::from_secs_f64(secs));
                i += 1;
            }
            "--jobs" => {
                c.jobs = val().parse().expect("--jobs J");
                i += 1;
            }
            "--seed" => {
                let v = val();
                c.seed = u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("--seed HEX");
                i += 1;
            }
            "--run-seed" => {
                let v = val();
                c.run_seed = Some(
                    u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("--run-seed HEX"),
                );
                c.runs = Some(1);
                i += 1;
            }
            "--fuzz-summary" => {
                c.fuzz_summary = Some(val().into());
                i += 1;
            }
            "--list" => {
                println!("soak: test");
                return None;
            }
            // libtest options cargo may pass along: ignored.
            s if s.starts_with('-') => {}
            s => filters.push(s.to_string()),
        }
        i += 1;
    }
    // `cargo test NAME` passes NAME to every test binary: run only if it
    // selects this one, as libtest would.
    if !filters.is_empty() && !filters.iter().any(|f| "soak".contains(f.as_str())) {
        println!("soak: skipped (filtered out)");
        return None;
    }
    if c.runs.is_none() && c.duration.is_none() {
        c.runs = Some(150); // the short run of `make check`
    }
    Some(c)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--client") {
        std::process::exit(client::main(&args[1..]));
    }
    let Some(cfg) = parse_args(&args) else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let peer_exe = common::legacy_peer_exe();
    let started = Instant::now();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "soak: seed {:#x}, {} parallel runs, {}",
        cfg.seed,
        cfg.jobs,
        match (cfg.runs, cfg.duration) {
            (Some(n), _) => format!("{n} runs"),
            (None, Some(d)) => format!("for {d:?}"),
            _ => unreachable!(),
        }
    );
    let workers: Vec<_> = (0..cfg.jobs)
        .map(|_| {
            let (totals, next, stop, exe, peer_exe) = (
                totals.clone(),
                next.clone(),
                stop.clone(),
                exe.clone(),
                peer_exe.clone(),
            );
            let (runs, duration, seed, fixed) = (cfg.runs, cfg.duration, cfg.seed, cfg.run_seed);
            std::thread::spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if runs.is_some_and(|n| k >= n)
                    || duration.is_some_and(|d| started.elapsed() >= d)
                    || stop.load(Ordering::Relaxed)
                {
                    return;
                }
                let run_seed = match fixed {
                    Some(s) => s,
                    None => Rng(seed ^ k.wrapping_mul(0x2545_f491_4f6c_dd1d)).next(),
                };
                let r = run_one(run_seed, &exe, &peer_exe);
                let mut t = totals.lock().unwrap();
                t.add(&r);
                if r.bad() {
                    for f in &r.failures {
                        eprintln!("soak: FAIL {f}");
                    }
                    eprintln!("soak: this run alone: --run-seed {run_seed:#x} (run {k} of --seed {seed:#x}; timing varies)");
                }
                if t.runs % 100 == 0 {
                    println!(
                        "soak: {} runs, {} faults, {:.0} s",
                        t.runs,
                        t.injected(),
                        started.elapsed().as_secs_f64()
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("soak worker");
    }
    let t = totals.lock().unwrap().clone();
    println!("soak: faults injected by kind:");
    for (k, v) in &t.faults {
        println!("soak:   {v:6}  {k}");
    }
    println!("soak: also:");
    for (k, v) in &t.info {
        println!("soak:   {v:6}  {k}");
    }
    println!(
        "soak: {} goals in surviving clients ({} succeeded); slowest surviving client {} ms \
         (bound {} s); {} still locked, {} wedged lock files, {} client errors, {} unfinished goals, \
         {} double builds, {} invariant violations; {:.0} s",
        t.goals,
        t.goals_succeeded,
        t.max_client_ms,
        CLIENT_BOUND.as_secs(),
        t.left_locked,
        t.wedged,
        t.client_errors,
        t.unfinished_goals,
        t.double_builds,
        t.violations,
        started.elapsed().as_secs_f64()
    );
    // The ABI fuzz's own summary lines ("abi_fuzz: N cases, ...",
    // "abi_fuzz_worker: N cases, ...", "abi_fuzz_store_db: N cases, ..."),
    // when make soak ran it first.
    let fuzz: Option<u64> = cfg
        .fuzz_summary
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("abi_fuzz"))
                .filter_map(|l| {
                    l.split_once(": ")?
                        .1
                        .split(" cases")
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        });
    println!(
        "soak: {} runs, {} faults injected, {} double holders ({} more inside the crash window), \
         {} deadlocks, {} lost outputs{}, {} wedged legacy peers",
        t.runs,
        t.injected(),
        t.double_holders,
        t.window_double_holders,
        t.deadlocks,
        t.lost_outputs,
        fuzz.map_or(String::new(), |n| format!(
            ", {n} ABI fuzz cases (0 failures)"
        )),
        t.wedged_legacy_peers
    );
    let _ = std::io::stdout().flush();
    if t.bad() {
        eprintln!("soak: FAILED ({} problems)", t.failures.len());
        std::process::exit(1);
    }
}
