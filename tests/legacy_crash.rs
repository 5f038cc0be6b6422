//! Issue 10: no crash of a goalkeeper process, at any instant of a release
//! with deletion, may leave a state that guix-daemon's lock code handles
//! worse than the same crash of guix-daemon itself.
//!
//! The old-protocol peer is `tests/cxx/legacy_peer.cc`, a real process
//! locking through `legacy_pathlocks.cc`, which behaves as guix-daemon's
//! `PathLocks::lockPaths`: POSIX `fcntl` locks, `st_size` as the only stale
//! check, unbounded retries in both blocking and non-blocking mode.
//!
//! Each round forks a goalkeeper process (the victim) that locks `P`, then
//! releases it with deletion with one crash point of `src/fault.rs` armed,
//! so that it kills itself (`SIGKILL`) before the unlink, between the
//! unlink and the mark, or after the mark. A legacy waiter is present:
//! blocked in `F_SETLKW` on the victim's inode, retrying without waiting
//! every millisecond, or arriving after the kill. Checked after every kill:
//!
//! * no linked lock file carries the deletion mark (the state guix-daemon
//!   spins on for ever);
//! * the waiter gets the lock within 1 s (the worst case is printed);
//! * a second legacy peer then tries the lock once, without waiting: it
//!   must be busy. It may get it only in the documented crash window (the
//!   victim died between the unlink and the mark, and the waiter, blocked
//!   on the unlinked inode, took it for live: exactly what a crash of
//!   guix-daemon at the same instant causes); such cases are counted
//!   separately and printed. Everywhere else there must be 0 double holders,
//!   checked both by that try and by the O_APPEND holder log.
//!
//! `GOALKEEPER_LEGACY_CRASH_KILLS=N` sets the number of kills (default 1002,
//! a third per crash point).

mod common;
mod lockkit;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{legacy_peer_exe, TempStore};
use goalkeeper::fault::Point;
use goalkeeper::lock::{Backend, LockSet, WaitMode};
use lockkit::{inode_of, wait_for_waiters, Helper};

/// How long the legacy peer may take to get the lock after a kill.
const PEER_BOUND: Duration = Duration::from_secs(1);
/// How long anything else may take (a hang becomes a failure).
const BOUND: Duration = Duration::from_secs(10);

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn open_append(path: &Path) -> RawFd {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open {}", path.display());
    fd
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this test owns.
    unsafe { libc::close(fd) };
}

/// Reads one byte from `fd` within `limit`; false on timeout or EOF.
fn read_byte_within(fd: RawFd, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
        if n > 0 {
            let mut b = 0u8;
            // SAFETY: reading one byte into a local.
            return unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) } == 1;
        }
        if n == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// A forked goalkeeper process holding `P`, that crashes at `at` inside
/// its release with deletion once told to go.
struct Victim {
    pid: i32,
    go: RawFd,
}

/// Forks the victim and waits until it holds `p` (logged in the holder log
/// as `S PID P T`).
fn spawn_victim(p: &str, log: RawFd, at: Point) -> Victim {
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    let line = |pid: u32| format!("S {pid} {p} ");
    // SAFETY: the child only uses the lock layer (fork-safe by design),
    // allocates (glibc's malloc is fork-safe), writes to pipes and a log,
    // and leaves with _exit or dies by SIGKILL.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        goalkeeper::fault::arm(at, true);
        let Ok(mut set) = LockSet::acquire([p], Backend::Ofd, WaitMode::Forever) else {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(2) };
        };
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let s = format!("{}{}\n", line(me), mono_ns());
        // SAFETY: writing local buffers to descriptors the child owns.
        unsafe {
            libc::write(log, s.as_ptr().cast(), s.len());
            libc::write(ready_w, b"r".as_ptr().cast(), 1);
        }
        if !read_byte_within(go_r, BOUND) {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(4) };
        }
        set.set_deletion(true);
        let _ = set.release(); // killed in here
                               // SAFETY: leaving the child at once.
        unsafe { libc::_exit(3) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    close(ready_w);
    close(go_r);
    assert!(
        read_byte_within(ready_r, BOUND),
        "the victim never locked {p}"
    );
    close(ready_r);
    Victim { pid, go: go_w }
}

/// Tells the victim to release, and reaps it: it must die by SIGKILL at its
/// crash point. Returns when it is reaped.
fn crash(v: Victim, at: Point) {
    // SAFETY: writing one byte to our pipe.
    assert_eq!(unsafe { libc::write(v.go, b"g".as_ptr().cast(), 1) }, 1);
    close(v.go);
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child without blocking.
        let r = unsafe { libc::waitpid(v.pid, &mut status, libc::WNOHANG) };
        if r == v.pid {
            break;
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        assert!(start.elapsed() < BOUND, "the victim never died");
        // Bounded polling of an exit status (it dies at once); not used for
        // synchronisation.
        std::thread::yield_now();
    }
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the victim should have crashed at {} (status {status:#x})",
        at.name()
    );
}

/// How the legacy waiter is present at the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Waiter {
    /// Blocked in F_SETLKW on the victim's inode.
    Blocked,
    /// Retrying lockPaths without waiting every millisecond.
    Polling,
    /// Asks for the lock only after the kill.
    Late,
}

/// A reply `locked US UNLINKED STALE` of the peer.
struct Locked {
    unlinked: bool,
}

fn parse_locked(r: &str, peer: &Helper) -> Locked {
    let f: Vec<&str> = r.split(' ').collect();
    assert!(
        f.len() == 4 && f[0] == "locked",
        "unexpected reply {r:?}\n{}",
        peer.transcript()
    );
    Locked {
        unlinked: f[2] == "1",
    }
}

#[derive(Default)]
struct Tally {
    kills: BTreeMap<&'static str, u64>,
    linked_marked: u64,
    worst_ms: f64,
    worst_at: String,
    window_double: u64,
    window_taken: u64,
    double_outside: Vec<String>,
}

fn kills_wanted() -> u64 {
    std::env::var("GOALKEEPER_LEGACY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1002)
}

/// The intervals of the holder log per holder, `(start, end, who, unlinked)`;
/// a victim's interval ends when it was told to release (before its
/// death: a lower bound of the real end, so any overlap found is real).
fn check_log(log: &Path, victim_ends: &BTreeMap<String, u64>) -> (u64, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut open: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    let mut iv: Vec<(u64, u64, String, bool)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (kind, who, t) = (f[0], f[1].to_string(), f[3].parse::<u64>().unwrap());
        match kind {
            "S" => {
                open.insert(who, (t, f.get(4) == Some(&"unlinked")));
            }
            "E" => {
                let (s, u) = open.remove(&who).expect("E without S");
                iv.push((s, t, who, u));
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    for (who, (s, u)) in open {
        let end = *victim_ends
            .get(&who)
            .unwrap_or_else(|| panic!("{who} never let go (S at {s})"));
        iv.push((s, end.max(s), who, u));
    }
    iv.sort();
    let (mut window, mut outside) = (0, Vec::new());
    for (i, a) in iv.iter().enumerate() {
        for b in &iv[i + 1..] {
            if b.0 >= a.1 {
                break;
            }
            if a.2 != b.2 {
                if a.3 || b.3 {
                    window += 1;
                } else {
                    outside.push(format!("{a:?} overlaps {b:?}"));
                }
            }
        }
    }
    (window, outside)
}

/// See the module comment.
#[test]
fn crashes_inside_a_release_never_wedge_a_legacy_peer() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lock = s.lock_file("aaa-out");
    let log_path = s.dir().join("holders.log");
    std::fs::write(&log_path, b"").unwrap();
    let log = open_append(&log_path);
    let peer = |what: &str| {
        let mut c = std::process::Command::new(legacy_peer_exe());
        c.arg("serve").arg(&log_path);
        Helper::spawn(c, what)
    };
    let mut waiter = peer("legacy waiter");
    let mut newcomer = peer("legacy newcomer");
    let mut t = Tally::default();
    let mut victim_ends = BTreeMap::new();
    let kills = kills_wanted();
    let started = Instant::now();
    for k in 0..kills {
        let at = Point::crashes()[(k % 3) as usize];
        let mode = [Waiter::Blocked, Waiter::Polling, Waiter::Late][((k / 3) % 3) as usize];
        let v = spawn_victim(&p, log, at);
        match mode {
            Waiter::Blocked => {
                waiter.send(&format!("lock wait {p}"));
                wait_for_waiters(inode_of(&lock), 1);
            }
            Waiter::Polling => waiter.send(&format!("lock nowait {p}")),
            Waiter::Late => {}
        }
        let vpid = v.pid.to_string();
        victim_ends.insert(vpid, mono_ns());
        crash(v, at);
        let killed = Instant::now();
        *t.kills.entry(at.name()).or_default() += 1;
        // The state the crash left, before anyone else writes: never a
        // linked lock file carrying the mark (legacy peers write only when
        // told to release with deletion).
        if let Ok(m) = std::fs::symlink_metadata(&lock) {
            if m.nlink() > 0 && m.len() != 0 {
                t.linked_marked += 1;
            }
        }
        if mode == Waiter::Late {
            waiter.send(&format!("lock wait {p}"));
        }
        let r = waiter.next_within(PEER_BOUND).unwrap_or_else(|| {
            panic!(
                "kill {k} ({}, waiter {mode:?}): the legacy peer did not get the lock \
                 within {PEER_BOUND:?} (wedged?)\n{}",
                at.name(),
                waiter.transcript()
            )
        });
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        if ms > t.worst_ms {
            t.worst_ms = ms;
            t.worst_at = format!("{}, waiter {mode:?}", at.name());
        }
        let got = parse_locked(&r, &waiter);
        if got.unlinked {
            t.window_taken += 1;
        }
        // A newcomer must find the path busy, unless the waiter took the
        // unlinked inode for live (the crash window).
        newcomer.send(&format!("try {p}"));
        let r = newcomer.next_within(PEER_BOUND).unwrap_or_else(|| {
            panic!(
                "kill {k}: the newcomer's try did not return (wedged?)\n{}",
                newcomer.transcript()
            )
        });
        if r != "busy" {
            parse_locked(&r, &newcomer);
            if got.unlinked {
                t.window_double += 1;
            } else {
                t.double_outside.push(format!(
                    "kill {k} ({}, waiter {mode:?}): waiter and newcomer both hold {p}",
                    at.name()
                ));
            }
            newcomer.send("release keep");
            newcomer.expect("released");
        }
        waiter.send(if k % 2 == 0 {
            "release delete"
        } else {
            "release keep"
        });
        waiter.expect("released");
    }
    close(log);
    let (log_window, log_outside) = check_log(&log_path, &victim_ends);
    println!(
        "legacy_crash: {kills} kills inside a release with deletion ({}), {:.0} s",
        t.kills
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    println!(
        "legacy_crash: the legacy peer got the lock after every kill, worst {:.1} ms ({}; bound {} ms)",
        t.worst_ms,
        t.worst_at,
        PEER_BOUND.as_millis()
    );
    println!(
        "legacy_crash: {} linked lock files left carrying the mark, {} double holders outside \
         the crash window ({} in the holder log)",
        t.linked_marked,
        t.double_outside.len(),
        log_outside.len()
    );
    println!(
        "legacy_crash: inside the crash window (killed after the unlink, before the mark): \
         {} waiters took the unlinked inode for live, {} double holders with a newcomer \
         ({} overlaps in the holder log), as after the same crash of guix-daemon",
        t.window_taken, t.window_double, log_window
    );
    assert_eq!(
        t.linked_marked, 0,
        "a crash left a linked, marked lock file"
    );
    assert!(
        t.double_outside.is_empty() && log_outside.is_empty(),
        "double holders outside the crash window:\n{}\n{}",
        t.double_outside.join("\n"),
        log_outside.join("\n")
    );
    waiter.close_stdin();
    newcomer.close_stdin();
}

/// The measurement of issue 10, as a test: SIGKILLs at random moments of a
/// loop of acquire, set deletion, release (no fault hook; any build) never
/// leave a linked lock file carrying the token. (The order of earlier
/// versions, token before unlink, left one in 229 of 2,000 kills in a
/// release build.) `GOALKEEPER_RANDOM_KILLS=N` sets the number (default 300).
#[test]
fn random_kills_of_a_deleting_release_loop_leave_no_linked_token_file() {
    let n: u64 = std::env::var("GOALKEEPER_RANDOM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lock = s.lock_file("aaa-out");
    let mut linked_marked = 0;
    let mut seed = mono_ns() | 1;
    for _ in 0..n {
        let (ready_r, ready_w) = pipe();
        // SAFETY: the child only uses the lock layer (fork-safe by design)
        // and writes to a pipe until it is killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            close(ready_r);
            // SAFETY: one byte to our pipe.
            unsafe { libc::write(ready_w, b"r".as_ptr().cast(), 1) };
            loop {
                if let Ok(mut set) = LockSet::acquire([&p], Backend::Ofd, WaitMode::Forever) {
                    set.set_deletion(true);
                    let _ = set.release();
                }
            }
        }
        close(ready_w);
        assert!(
            read_byte_within(ready_r, BOUND),
            "the looping child never started"
        );
        close(ready_r);
        // xorshift: a random moment within the first 2 ms of the loop
        // (scenario timing, not synchronisation).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pause = Duration::from_micros(seed % 2000);
        let until = Instant::now() + pause;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if let Ok(m) = std::fs::symlink_metadata(&lock) {
            if m.nlink() > 0 && m.len() != 0 {
                linked_marked += 1;
                // Leave a clean path for the next round.
                let _ = std::fs::remove_file(&lock);
            }
        }
    }
    println!("random_kills: {n} kills, {linked_marked} left a linked lock file carrying the token");
    assert_eq!(linked_marked, 0);
}
