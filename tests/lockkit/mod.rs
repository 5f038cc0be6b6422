//! Multi-process support for the lock-layer tests (`tests/lock_*.rs`).
//!
//! * **Helper processes.** A test re-executes its own test binary, filtered to
//!   itself (`--exact NAME`), with `GK_ROLE` set: the first line of the test,
//!   `kit!()`, sees the variable and runs the role (see [`roles`]) instead of
//!   the test. Helpers talk through pipes: commands on stdin, one per line;
//!   replies on stdout as lines starting with `@gk `. Every wait for a reply
//!   is bounded, and a missing reply fails the test with the helper's output.
//! * **A plain C lock peer** (`tests/c/locker.c`, compiled with
//!   `common::compile`), which locks like guix-daemon (POSIX `fcntl`) or Nix
//!   (`flock`) without goalkeeper.
//! * **`/proc/locks`**, to see from outside who holds and who waits for a
//!   lock file's inode. "The waiter is blocked in the kernel" has no event to
//!   wait for, so [`wait_until`] polls that kernel state every millisecond,
//!   with a deadline; it is never a sleep standing in for synchronisation.
#![allow(dead_code)]

pub mod roles;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a healthy helper may take to answer (they answer in milliseconds).
pub const REPLY: Duration = Duration::from_secs(10);

/// Enters a test: in a helper process, runs the helper's role and exits;
/// otherwise returns the [`Kit`] that spawns helpers for this test.
#[macro_export]
macro_rules! kit {
    () => {{
        fn here() {}
        $crate::lockkit::Kit::enter(std::any::type_name_of_val(&here))
    }};
}

/// The test's handle for spawning helpers.
pub struct Kit {
    test: String,
}

impl Kit {
    /// See [`kit!`]. `fn_path` is `crate::test_name::here`.
    pub fn enter(fn_path: &str) -> Kit {
        let test = fn_path
            .strip_suffix("::here")
            .and_then(|p| p.split_once("::"))
            .map(|(_, t)| t.to_string())
            .expect("kit!() must be called directly in a test function");
        if let Ok(role) = std::env::var("GK_ROLE") {
            let args: Vec<String> = std::env::var("GK_ARGS")
                .unwrap_or_default()
                .split('\u{1f}')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            roles::serve(&test, &role, &args); // never returns
        }
        Kit { test }
    }

    /// The command that runs `role` in a fresh copy of this test binary.
    pub fn role_command(&self, role: &str, args: &[&str]) -> Command {
        self.role_command_at(&std::env::current_exe().expect("current_exe"), role, args)
    }

    /// Like [`Kit::role_command`], running the test binary found at `exe`
    /// (a copy of it, e.g. one that an unprivileged user may execute).
    pub fn role_command_at(&self, exe: &Path, role: &str, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.args([
            "--exact",
            &self.test,
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("GK_ROLE", role)
        .env("GK_ARGS", args.join("\u{1f}"))
        .env_remove("GOALKEEPER_FAULTS");
        c
    }

    /// Spawns a helper running `role` with `args`.
    pub fn helper(&self, role: &str, args: &[&str]) -> Helper {
        Helper::spawn(self.role_command(role, args), &format!("{role} {args:?}"))
    }

    /// Spawns the C lock peer with `args` (see `tests/c/locker.c`).
    pub fn locker(&self, args: &[&str]) -> Helper {
        let mut c = Command::new(locker_exe());
        c.args(args);
        Helper::spawn(c, &format!("locker {args:?}"))
    }
}

/// A helper process and its pipes.
pub struct Helper {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Helper {
    /// Spawns `cmd` with piped stdio; `what` names it in failure messages.
    pub fn spawn(mut cmd: Command, what: &str) -> Helper {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, rx) = channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let out2 = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out2.lock().unwrap().push(line.clone());
                if let Some(rest) = line.strip_prefix("@gk ") {
                    if tx.send(rest.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let err2 = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
                if n == 0 {
                    break;
                }
                err2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Helper {
            what: what.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            out,
            err,
        }
    }

    /// The helper's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the helper printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} (pid {}) stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.child.id(),
            self.out.lock().unwrap().join("\n"),
            String::from_utf8_lossy(&self.err.lock().unwrap())
        )
    }

    /// Sends one command line, in one write: the C peer acts on the first
    /// bytes it reads and may exit before a second write.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(e) = stdin.write_all(format!("{cmd}\n").as_bytes()) {
            panic!("sending {cmd:?}: {e}\n{}", self.transcript());
        }
    }

    /// Closes the helper's stdin (helpers treat EOF as "release and exit").
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next reply, waiting at most `limit`; `None` on timeout or exit.
    pub fn next_within(&self, limit: Duration) -> Option<String> {
        match self.lines.recv_timeout(limit) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next reply; fails the test if none comes within [`REPLY`].
    pub fn next(&self) -> String {
        match self.lines.recv_timeout(REPLY) {
            Ok(l) => l,
            Err(e) => panic!("no reply from helper ({e:?})\n{}", self.transcript()),
        }
    }

    /// Waits for a reply whose first word is `word` and returns the rest.
    /// Any other reply fails the test.
    pub fn expect(&self, word: &str) -> String {
        let line = self.next();
        let (w, rest) = line.split_once(' ').unwrap_or((&line, ""));
        assert_eq!(
            w,
            word,
            "expected '@gk {word}', got '@gk {line}'\n{}",
            self.transcript()
        );
        rest.to_string()
    }

    /// A reply that is already waiting, without blocking.
    pub fn try_next(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Fails the test if a reply is already waiting (the helper has not
    /// reported anything since the last read).
    pub fn assert_quiet(&self, why: &str) {
        if let Ok(l) = self.lines.try_recv() {
            panic!("{why}: helper said '@gk {l}'\n{}", self.transcript());
        }
    }

    /// `kill -9`, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the helper to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if start.elapsed() > limit {
                let t = self.transcript();
                self.kill9();
                panic!("helper did not exit within {limit:?}\n{t}");
            }
            // Bounded polling of an exit status; not used for synchronisation.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The C lock peer, compiled once per test binary.
pub fn locker_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = crate::common::root().join("tests/c/locker.c");
        // One executable per test binary: binaries run one after another,
        // while the tests inside one binary share this compilation.
        let exe = std::env::current_exe().expect("current_exe");
        let stem = exe.file_stem().expect("exe name").to_string_lossy();
        crate::common::compile(&format!("locker-{stem}"), &[src], false, &[])
    })
    .clone()
}

/// Asks the C peer whether a `kind` (`posix`, `ofd`, `flock`) lock on
/// `lock_file` would be granted right now: `true` if it is busy.
pub fn busy_for(kind: &str, lock_file: &Path) -> bool {
    let out = crate::common::run_bounded(
        Command::new(locker_exe())
            .args([kind, "try"])
            .arg(lock_file),
        REPLY,
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "locker try failed: {s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match s.trim() {
        "@gk busy" => true,
        "@gk free" => false,
        other => panic!("locker try said {other:?}"),
    }
}

/// The device and inode of a file, as `/proc/locks` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    major: u32,
    minor: u32,
    ino: u64,
}

/// The inode currently at `path`.
pub fn inode_of(path: &Path) -> Inode {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let dev = m.dev();
    Inode {
        major: libc::major(dev),
        minor: libc::minor(dev),
        ino: m.ino(),
    }
}

/// Kernel lock entries on one inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockEntries {
    /// Granted locks: (kind, pid) with kind `POSIX`, `OFDLCK` or `FLOCK`
    /// (pid is -1 for OFD locks).
    pub held: Vec<(String, i64)>,
    /// Blocked requests.
    pub waiting: Vec<(String, i64)>,
}

/// The text of `/proc/locks`. Note that it is not a snapshot: the kernel
/// produces it a page (4 KiB) per read call, walking its lock list afresh
/// each time, so while locks come and go an entry can be listed twice or
/// not at all. [`proc_locks`] copes with that.
pub fn read_proc_locks() -> String {
    std::fs::read_to_string("/proc/locks").expect("read /proc/locks")
}

/// What `/proc/locks` says about `inode`: the entries that three reads in a
/// row agree on (see [`read_proc_locks`]; other tests' locks keep changing
/// the list, and a lone read may miss or double an entry).
pub fn proc_locks(inode: Inode) -> LockEntries {
    let mut seen: Vec<LockEntries> = Vec::new();
    for _ in 0..100 {
        let mut e = proc_locks_once(inode);
        e.held.sort();
        e.waiting.sort();
        seen.push(e);
        let n = seen.len();
        if n >= 3 && seen[n - 1] == seen[n - 2] && seen[n - 2] == seen[n - 3] {
            return seen.pop().expect("three reads");
        }
    }
    panic!(
        "/proc/locks never settled for inode {}: {seen:?}",
        inode.ino
    );
}

fn proc_locks_once(inode: Inode) -> LockEntries {
    let text = read_proc_locks();
    let mut e = LockEntries::default();
    for line in text.lines() {
        let mut t: Vec<&str> = line.split_whitespace().collect();
        let blocked = t.get(1) == Some(&"->");
        if blocked {
            t.remove(1);
        }
        // id: KIND ADVISORY WRITE PID MAJ:MIN:INO START END
        let (Some(kind), Some(pid), Some(dev)) = (t.get(1), t.get(4), t.get(5)) else {
            continue;
        };
        let parts: Vec<&str> = dev.split(':').collect();
        if parts.len() != 3 {
            continue;
        }
        let same = u32::from_str_radix(parts[0], 16).ok() == Some(inode.major)
            && u32::from_str_radix(parts[1], 16).ok() == Some(inode.minor)
            && parts[2].parse::<u64>().ok() == Some(inode.ino);
        if same {
            let entry = (kind.to_string(), pid.parse().unwrap_or(0));
            if blocked {
                e.waiting.push(entry);
            } else {
                e.held.push(entry);
            }
        }
    }
    e
}

/// Polls `cond` every millisecond until it holds; fails the test after
/// `limit`. Only for kernel state that has no event to wait on (a thread
/// blocked in `fcntl`, a process gone).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until at least `n` requests are blocked on `inode`.
pub fn wait_for_waiters(inode: Inode, n: usize) {
    wait_until(
        &format!("{n} waiter(s) block on inode {}", inode.ino),
        REPLY,
        || proc_locks(inode).waiting.len() >= n,
    );
}

/// Runs `f` on a thread and fails the test if it does not return within
/// `limit` (a self-block becomes a failure, not a hang).
pub fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {limit:?} (self-block?)"),
    }
}

/// Reads an O_APPEND log of "enter PID"/"exit PID" lines and checks that
/// holders never overlap: every enter is followed by the same pid's exit.
/// Returns the number of critical sections.
pub fn check_no_overlap(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).expect("read log");
    let mut inside: Option<&str> = None;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let (what, pid) = line.split_once(' ').expect("log line");
        match (what, inside) {
            ("enter", None) => inside = Some(pid),
            ("exit", Some(p)) if p == pid => {
                inside = None;
                n += 1;
            }
            _ => panic!(
                "two holders at once: line {} '{line}' while {inside:?} holds the lock\n{}",
                i + 1,
                text.lines()
                    .skip(i.saturating_sub(4))
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    assert!(inside.is_none(), "log ends inside a critical section");
    n
}
