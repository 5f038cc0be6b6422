//! S1, the Guix #31785 regression: three worker *processes* build
//! overlapping DAGs (15 leaves plus a root each, all top-level goals,
//! max_jobs 1) with staggered starts. All must finish within a bound that
//! is shorter than the validity re-check period (so hand-offs must be
//! event-driven), every shared leaf must be built exactly once, and after
//! every event each process asserts through the audit that no finished goal
//! holds a lock. The same run with `legacy_hold` (finished goals keep their
//! locks, like the C++ daemon) must FAIL that check: the test can fail.
//!
//! The worker processes are this test binary, re-run with `--exact
//! s1_child` and the role in the environment; they talk to the parent over
//! pipes (stdin: "go", "continue"; stdout: lines starting with "GK:").

mod common;
mod sched_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::sched::{BuildMode, Event, GoalKind, Outcome, Worker, WorkerOptions};
use goalkeeper::Error;
use sched_support::poll_fd;

const LEAVES: usize = 15;
const ALL_LEAVES: usize = 20;
const RECHECK: Duration = Duration::from_secs(20);
const BOUND: Duration = Duration::from_secs(15);

fn leaf_name(k: usize) -> String {
    format!("leaf-{k:02}")
}

/// Process `p` builds leaf 0 first (all three contend for it), then 14 of
/// leaves 1..=19 rotated by `3p` (overlapping), then its own root.
fn leaves_of(p: usize) -> Vec<usize> {
    std::iter::once(0)
        .chain((0..LEAVES - 1).map(|j| 1 + (3 * p + j) % (ALL_LEAVES - 1)))
        .collect()
}

// ---------------------------------------------------------------- child

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "GK: {line}").unwrap();
    out.flush().unwrap();
}

fn read_cmd(stdin: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), want, "child expected {want:?}");
}

/// The worker process. Exit codes: 0 ok, 3 ledger violation reported by a
/// call, 4 the audit found a finished goal holding a lock, 5 other failure.
fn child(p: usize, store: &str, legacy: bool, build_log: &str) -> i32 {
    let mut stdin = std::io::stdin().lock();
    let mut w = Worker::new(WorkerOptions {
        max_jobs: 1,
        recheck_interval: RECHECK,
        legacy_hold: legacy,
        ..WorkerOptions::default()
    })
    .unwrap();
    let path = |name: &str| format!("{store}/{name}");
    let mut leaves = Vec::new();
    for k in leaves_of(p) {
        leaves.push(
            w.add_goal(GoalKind::Build, &[path(&leaf_name(k))], BuildMode::Normal)
                .unwrap(),
        );
    }
    let root = w
        .add_goal(
            GoalKind::Build,
            &[path(&format!("root-{p}"))],
            BuildMode::Normal,
        )
        .unwrap();
    for l in &leaves {
        w.add_dependency(root, *l).unwrap();
    }
    read_cmd(&mut stdin, "go");
    let mut first_run = true;
    let mut announced_wait = false;
    let mut violations = 0;
    let start = Instant::now();
    loop {
        if start.elapsed() > BOUND {
            say("TIMEOUT");
            return 5;
        }
        let ev = match w.next_event() {
            Ok(ev) => ev,
            Err(e @ Error::Invariant(_)) => {
                say(&format!("VIOLATION {e}"));
                violations += 1;
                continue;
            }
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 5;
            }
        };
        let a = w.audit();
        if a.locks_held_by_finished != 0 {
            say(&format!(
                "AUDIT-FAIL locks_held_by_finished={} after {ev:?}",
                a.locks_held_by_finished
            ));
            return 4;
        }
        if a.slots_used > 1 {
            say(&format!("AUDIT-FAIL slots_used={}", a.slots_used));
            return 5;
        }
        if a.foreign_waits > 0 && !announced_wait {
            announced_wait = true;
            say("foreign-wait");
        }
        match ev {
            Event::Run { goal, .. } => {
                let out = w.result(goal).unwrap().outputs[0].clone();
                let out = out.to_str().unwrap().to_string();
                if first_run {
                    first_run = false;
                    say(&format!("run {out}"));
                    if p == 0 {
                        // Hold the first build until the others found it locked.
                        read_cmd(&mut stdin, "continue");
                    }
                }
                // The builder: some work, then the output appears atomically.
                std::thread::sleep(Duration::from_millis(3));
                sched_support::build_output(&out);
                // One line, one write(2) on an O_APPEND descriptor, so that
                // the three processes' lines never tear (`writeln!` on a
                // `File` makes one write per formatted piece).
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(build_log)
                    .unwrap();
                f.write_all(format!("{p} {out}\n").as_bytes()).unwrap();
                match w.report(goal, Outcome::Built) {
                    Ok(()) => {}
                    Err(e @ Error::Invariant(_)) => {
                        say(&format!("VIOLATION {e}"));
                        violations += 1;
                    }
                    Err(e) => {
                        say(&format!("ERROR {e}"));
                        return 5;
                    }
                }
                let a = w.audit();
                if a.locks_held_by_finished != 0 {
                    say(&format!(
                        "AUDIT-FAIL locks_held_by_finished={} after reporting {out}",
                        a.locks_held_by_finished
                    ));
                    return 4;
                }
            }
            Event::Finished { .. } => {}
            Event::Wait { fd, timeout } => {
                poll_fd(fd, timeout, BOUND);
            }
            Event::Done => break,
        }
    }
    let a = w.audit();
    let outcomes: Vec<Outcome> = leaves
        .iter()
        .chain([&root])
        .map(|g| w.result(*g).unwrap().outcome.unwrap())
        .collect();
    if violations > 0 {
        return 3;
    }
    if !outcomes.iter().all(|o| o.is_success()) || a.locks_held != 0 || a.succeeded != 16 {
        say(&format!("ERROR outcomes {outcomes:?}, audit {a:?}"));
        return 5;
    }
    say(&format!(
        "done handoffs={} already_valid={} ms={}",
        a.handoffs,
        outcomes
            .iter()
            .filter(|o| **o == Outcome::AlreadyValid)
            .count(),
        start.elapsed().as_millis()
    ));
    0
}

/// Entry point of the worker processes (a no-op in the normal test run).
#[test]
fn s1_child() {
    let Ok(role) = std::env::var("GK_S1_CHILD") else {
        return;
    };
    let p: usize = role.parse().unwrap();
    let store = std::env::var("GK_S1_STORE").unwrap();
    let legacy = std::env::var("GK_S1_LEGACY").as_deref() == Ok("1");
    let log = std::env::var("GK_S1_LOG").unwrap();
    let code = child(p, &store, legacy, &log);
    std::process::exit(code);
}

// ---------------------------------------------------------------- parent

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(p: usize, store: &TempStore, legacy: bool, log: &str) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "s1_child", "--nocapture", "--test-threads=1"])
            .env("GK_S1_CHILD", p.to_string())
            .env("GK_S1_STORE", store.dir())
            .env("GK_S1_LEGACY", if legacy { "1" } else { "0" })
            .env("GK_S1_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(|l| l.ok()) {
                // The test harness may print "test s1_child ... " first on the same line.
                if let Some(at) = line.find("GK: ") {
                    if tx.send(line[at + 4..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for a line starting with `prefix` (or for one that ends the child).
    fn expect(&mut self, prefix: &str, deadline: Instant) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Some(l);
                    }
                    if l.starts_with("AUDIT-FAIL") || l.starts_with("ERROR") {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for the child to exit; returns its exit code and every line it said.
    fn finish(mut self, deadline: Instant) -> (i32, Vec<String>) {
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Drain to EOF: the reader thread may not have read the
                // last lines yet (bounded, in case a descendant keeps the
                // pipe open).
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(l);
                }
                return (st.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.seen.extend(self.lines.try_iter());
                panic!("a worker process did not finish in time: {:?}", self.seen);
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the three processes; returns (exit code, lines) per process and the build log.
fn run_s1(legacy: bool) -> (Vec<(i32, Vec<String>)>, String) {
    let store = TempStore::new();
    let log = store.dir().join("builds.log").to_str().unwrap().to_string();
    let start = Instant::now();
    let deadline = start + BOUND + Duration::from_secs(10);
    let mut procs: Vec<Proc> = (0..3)
        .map(|p| Proc::spawn(p, &store, legacy, &log))
        .collect();
    // Staggered starts: 0 starts and holds its first build (leaf-00); then 1,
    // then 2 start, and each must find leaf-00 locked by process 0.
    procs[0].send("go");
    let first = procs[0].expect("run ", deadline);
    assert!(
        first.is_some(),
        "process 0 did not start: {:?}",
        procs[0].seen
    );
    for (p, proc_) in procs.iter_mut().enumerate().skip(1) {
        proc_.send("go");
        let w = proc_.expect("foreign-wait", deadline);
        assert!(w.is_some(), "process {p} never waited: {:?}", proc_.seen);
    }
    procs[0].send("continue");
    let results: Vec<(i32, Vec<String>)> = procs.into_iter().map(|p| p.finish(deadline)).collect();
    assert!(start.elapsed() < deadline - start, "bounded");
    let builds = std::fs::read_to_string(&log).unwrap_or_default();
    (results, builds)
}

#[test]
fn s1_three_worker_processes_on_overlapping_dags_finish_and_never_keep_a_finished_lock() {
    let t0 = Instant::now();
    let (results, builds) = run_s1(false);
    for (p, (code, lines)) in results.iter().enumerate() {
        assert_eq!(*code, 0, "process {p} failed: {lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("done ")), "{lines:?}");
    }
    // Every output was built exactly once across the three processes.
    let mut count: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in builds.lines() {
        let (p, out) = l.split_once(' ').unwrap();
        count
            .entry(out.to_string())
            .or_default()
            .push(p.to_string());
    }
    assert_eq!(count.len(), ALL_LEAVES + 3, "outputs built: {count:?}");
    for (out, by) in &count {
        assert_eq!(by.len(), 1, "{out} was built by processes {by:?}");
    }
    // The contended leaf was handed over or found valid, promptly.
    let done: Vec<&String> = results
        .iter()
        .map(|(_, l)| l.iter().find(|l| l.starts_with("done ")).unwrap())
        .collect();
    for (p, d) in done.iter().enumerate().skip(1) {
        let field = |k: &str| -> u64 {
            d.split(' ')
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        assert!(
            field("handoffs=") >= 1 && field("already_valid=") >= 1,
            "process {p} waited for leaf-00 in the kernel; its wait must end by a hand-off \
             and find the leaf valid: {d}"
        );
    }
    assert!(
        t0.elapsed() < BOUND,
        "took {:?} (re-checks are every {RECHECK:?}, so hand-offs were not event-driven): {done:?}",
        t0.elapsed()
    );
}

#[test]
fn s1_fails_when_finished_goals_keep_their_locks_like_the_cpp_daemon() {
    let (results, _) = run_s1(true);
    let mut audit_failures = 0;
    let mut violation_lines = Vec::new();
    for (code, lines) in &results {
        if *code == 4 {
            audit_failures += 1;
        }
        violation_lines.extend(lines.iter().filter(|l| l.starts_with("VIOLATION")).cloned());
    }
    assert_eq!(
        audit_failures, 3,
        "every process must catch its finished goals holding locks: {results:?}"
    );
    assert!(
        violation_lines.iter().any(|l| l
            .contains("is finished (built) but still holds the lock on")
            && l.contains("leaf-")),
        "the boundary calls must name goal and path: {violation_lines:?}"
    );
}
