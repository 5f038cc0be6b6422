//! Helpers shared by the scheduler tests: a host pull loop, polling the
//! worker's fd, building outputs atomically, and a foreign lock holder
//! process (tests/c/sched_holder.c: a classic POSIX fcntl or OFD lock, like the
//! C++ daemon's).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use goalkeeper::lock::{self, StorePath};
use goalkeeper::sched::{Event, GoalId, Outcome, Worker};

use crate::common;

/// Polls `fd` for reading for at most `timeout` (None: `cap`). Returns true if readable.
pub fn poll_fd(fd: i32, timeout: Option<Duration>, cap: Duration) -> bool {
    let t = timeout.unwrap_or(cap).min(cap);
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, t.as_millis() as i32) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Writes `path` atomically (temporary file, then rename), as a builder would.
pub fn build_output(path: &str) {
    let tmp = format!("{path}.tmp-{}", std::process::id());
    std::fs::write(&tmp, b"built\n").expect("write output");
    std::fs::rename(&tmp, path).expect("rename output");
}

/// Asserts that no goal of `w` that has finished holds a lock, through the audit.
pub fn assert_clean(w: &Worker, when: &str) {
    let a = w.audit();
    assert_eq!(
        a.locks_held_by_finished, 0,
        "{when}: a finished goal holds a lock: {a:?}"
    );
    assert!(
        a.slots_used <= a.max_jobs.max(1),
        "{when}: slots over max_jobs: {a:?}"
    );
}

/// `true` if this process holds the lock of `path`.
pub fn held(path: &str) -> bool {
    lock::is_held_by_me(&StorePath::new(path).unwrap())
}

/// Drives `w` to Done: each Run is answered by `host(goal)` at once. Every
/// event is recorded; after every event the audit must be clean. Wait events
/// poll the fd (bounded). Fails after `limit`.
pub fn drive(
    w: &mut Worker,
    limit: Duration,
    mut host: impl FnMut(&mut Worker, GoalId) -> Outcome,
) -> Vec<Event> {
    let start = Instant::now();
    let mut events = Vec::new();
    loop {
        assert!(
            start.elapsed() < limit,
            "not done within {limit:?}: {events:?}"
        );
        let ev = w.next_event().expect("next_event");
        assert_clean(w, &format!("after {ev:?}"));
        events.push(ev);
        match ev {
            Event::Run { goal, .. } => {
                let o = host(w, goal);
                w.report(goal, o).expect("report");
                assert_clean(w, "after report");
            }
            Event::Finished { .. } => {}
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, Duration::from_millis(200));
            }
            Event::Done => return events,
        }
    }
}

/// A process holding the lock of a store path (tests/c/sched_holder.c).
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// Compiles tests/c/sched_holder.c once per test binary.
pub fn holder_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        common::compile(
            &format!("gk-sched-holder-{}", std::process::id()),
            &[common::root().join("tests/c/sched_holder.c")],
            false,
            &[],
        )
    })
    .clone()
}

impl Holder {
    /// Starts a holder of `path`'s lock with `kind` ("posix", "ofd" or
    /// "flock") and waits until it holds it.
    pub fn start(path: &str, kind: &str) -> Holder {
        let lockfile = format!("{path}.lock");
        let mut child = Command::new(holder_exe())
            .args([&lockfile, kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("holder reports");
        assert_eq!(line.trim(), "locked", "holder said {line:?}");
        Holder {
            child,
            stdin,
            stdout,
        }
    }

    /// Asks the holder to release and waits until it has.
    pub fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("holder stdin");
        writeln!(stdin, "release").expect("tell holder");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("holder reports");
        assert_eq!(line.trim(), "released", "holder said {line:?}");
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `true` if the holder process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `true` if `p` exists.
pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}
