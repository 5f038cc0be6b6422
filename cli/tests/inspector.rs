//! The lock inspector and `goalkeeper hold`, against real processes: lock
//! files held through goalkeeper's OFD locks (by `goalkeeper hold`), by a C
//! program's classic POSIX `fcntl` lock and by its `flock`, waiters blocked
//! on them, free and stale lock files; checked in text and in `--json`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{compile, root, run_bounded, TempStore};
use goalkeeper::inspect::{Inspector, LockKind};
use goalkeeper::lock::{Backend, LockSet};
use goalkeeper::Error;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

fn gk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_goalkeeper"))
}

/// The C holder program, compiled once per test binary: the tests run in
/// parallel, and recompiling it to the same path while another test runs it
/// fails with "Text file busy".
fn holder_exe() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        compile(
            "inspector-holder",
            &[root().join("tests/c/holder.c")],
            false,
            &[],
        )
    })
    .clone()
}

/// A running process that signals readiness with a first line on stdout and
/// keeps going until its stdin is closed.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines: rx,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the next line of output.
    fn line(&self) -> String {
        self.lines.recv_timeout(LIMIT).unwrap_or_else(|e| {
            panic!(
                "process {} printed no line within {LIMIT:?}: {e}",
                self.pid()
            )
        })
    }

    /// `true` if the process has printed nothing more (without waiting).
    fn silent(&self) -> bool {
        self.lines.try_recv().is_err()
    }

    /// Closes its stdin and waits (bounded) for it to exit; returns the status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut err).ok();
                }
                return (st, err);
            }
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                panic!("process {} did not exit within {LIMIT:?}", self.child.id());
            }
            // Bounded polling of an exit status, not synchronisation.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `goalkeeper hold` running `sh -c SCRIPT` on `paths`.
fn hold(store: &TempStore, extra: &[&str], paths: &[&str], script: &str) -> Proc {
    let mut c = gk();
    c.arg("hold")
        .arg("--store")
        .arg(store.dir())
        .args(extra)
        .args(paths);
    c.args(["--", "sh", "-c", script]);
    Proc::spawn(&mut c)
}

/// Waits until the kernel lists `n` waiters on `lock_file` (a blocked waiter
/// is not observable any other way), bounded.
fn await_waiters(lock_file: &Path, n: usize) {
    let start = Instant::now();
    loop {
        let info = Inspector::new().unwrap().inspect(lock_file).unwrap();
        if info.waiters.len() >= n {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{} never had {n} waiters: {info:?}",
            lock_file.display()
        );
        std::thread::yield_now();
    }
}

fn locks_json(store: &TempStore) -> Value {
    let o = run_bounded(
        gk().args(["locks", "--json", "--store"]).arg(store.dir()),
        LIMIT,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("valid JSON")
}

fn entry<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {v:#}"))
}

#[test]
fn locks_reports_held_free_stale_and_waiters() {
    let s = TempStore::new();
    let exe = holder_exe();
    // Held through goalkeeper's OFD lock, by `goalkeeper hold`.
    let ofd = hold(&s, &[], &["aaa-ofd"], "echo held; read x; true");
    assert_eq!(ofd.line(), "held");
    // Held by classic POSIX fcntl and by flock, from C.
    let posix = Proc::spawn(
        Command::new(&exe)
            .arg("posix")
            .arg(s.lock_file("bbb-posix")),
    );
    assert_eq!(posix.line(), "locked");
    let flock = Proc::spawn(
        Command::new(&exe)
            .arg("flock")
            .arg(s.lock_file("ccc-flock")),
    );
    assert_eq!(flock.line(), "locked");
    // Free, and stale (deletion token left in the directory).
    std::fs::write(s.lock_file("ddd-free"), b"").unwrap();
    std::fs::write(s.lock_file("eee-stale"), b"d").unwrap();
    // Waiters: another `hold` blocked on the OFD lock, a C POSIX waiter.
    let ofd_waiter = hold(&s, &[], &["aaa-ofd"], "echo got-it");
    let posix_waiter = Proc::spawn(
        Command::new(&exe)
            .arg("posix-wait")
            .arg(s.lock_file("bbb-posix")),
    );
    await_waiters(&s.lock_file("aaa-ofd"), 1);
    await_waiters(&s.lock_file("bbb-posix"), 1);

    let v = locks_json(&s);
    assert_eq!(v["summary"]["total"], 5, "{v:#}");
    assert_eq!(v["summary"]["held"], 3);
    assert_eq!(v["summary"]["free"], 1);
    assert_eq!(v["summary"]["stale"], 1);
    assert_eq!(v["summary"]["waiters"], 2);

    let a = entry(&v, "aaa-ofd.lock");
    assert_eq!(a["state"], "held");
    assert_eq!(a["kind"], "ofd");
    let holders = a["holders"].as_array().unwrap();
    assert_eq!(
        holders.len(),
        1,
        "only `hold` holds it, not its command: {a:#}"
    );
    assert_eq!(holders[0]["pid"], ofd.pid());
    assert!(
        holders[0]["command"].as_str().unwrap().contains("hold"),
        "{a:#}"
    );
    let w = &a["waiters"].as_array().unwrap()[0];
    assert_eq!(
        w["pid"],
        ofd_waiter.pid(),
        "OFD waiter found through /proc/PID/task: {a:#}"
    );
    assert_eq!(w["kind"], "ofd");
    assert!(w["blocked_ms"].as_f64().unwrap() >= 0.0, "{a:#}");

    let b = entry(&v, "bbb-posix.lock");
    assert_eq!(b["state"], "held");
    assert_eq!(b["kind"], "posix");
    assert_eq!(b["holders"][0]["pid"], posix.pid());
    assert!(b["holders"][0]["command"]
        .as_str()
        .unwrap()
        .contains("inspector-holder posix"));
    assert_eq!(b["waiters"][0]["pid"], posix_waiter.pid());
    assert_eq!(b["waiters"][0]["kind"], "posix");

    let c = entry(&v, "ccc-flock.lock");
    assert_eq!(c["state"], "held");
    assert_eq!(c["kind"], "flock");
    assert_eq!(c["holders"][0]["pid"], flock.pid());
    assert!(c["waiters"].as_array().unwrap().is_empty());

    let d = entry(&v, "ddd-free.lock");
    assert_eq!(d["state"], "free");
    assert_eq!(d["kind"], Value::Null);
    assert!(d["holders"].as_array().unwrap().is_empty());

    let e = entry(&v, "eee-stale.lock");
    assert_eq!(e["state"], "stale");
    assert_eq!(e["stale_token"], true);
    assert_eq!(e["size"], 1);

    // The same in text.
    let o = run_bounded(gk().args(["locks", "--store"]).arg(s.dir()), LIMIT);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{text}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("aaa-ofd.lock")[1..4],
        ["held", "ofd", &ofd.pid().to_string()]
    );
    assert_eq!(
        line("bbb-posix.lock")[1..4],
        ["held", "posix", &posix.pid().to_string()]
    );
    assert_eq!(
        line("ccc-flock.lock")[1..4],
        ["held", "flock", &flock.pid().to_string()]
    );
    assert_eq!(line("ddd-free.lock")[1], "free");
    assert_eq!(line("eee-stale.lock")[1], "stale");
    let waiter_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("waiter"))
        .collect();
    assert_eq!(waiter_lines.len(), 2, "{text}");
    assert!(
        waiter_lines[0].contains(&ofd_waiter.pid().to_string()),
        "{text}"
    );
    assert!(waiter_lines[0].contains("blocked "), "{text}");
    assert!(
        waiter_lines[1].contains(&posix_waiter.pid().to_string()),
        "{text}"
    );
    assert!(
        text.contains("5 lock files: 3 held, 1 free, 1 stale; 2 waiting"),
        "{text}"
    );

    // Releasing the OFD holder hands the lock to the waiting `hold`.
    let (st, _) = ofd.finish();
    assert!(st.success());
    assert_eq!(ofd_waiter.line(), "got-it");
    let (st, err) = ofd_waiter.finish();
    assert!(st.success(), "{err}");
    drop((posix_waiter, posix, flock));
}

#[test]
fn library_names_the_holder_for_diagnostics() {
    let s = TempStore::new();
    let h = hold(&s, &[], &["x"], "echo held; read x; true");
    assert_eq!(h.line(), "held");
    let lock_file = s.lock_file("x");
    assert_eq!(goalkeeper::inspect::holder_pids(&lock_file), vec![h.pid()]);
    let d = goalkeeper::inspect::describe_holders(&lock_file).unwrap();
    assert!(
        d.starts_with(&format!("pid {} (", h.pid())) && d.ends_with("ofd lock"),
        "{d}"
    );
    let info = Inspector::new().unwrap().inspect(&lock_file).unwrap();
    assert_eq!(info.holders[0].kind, LockKind::Ofd);
    drop(h);
    // A free or missing file has no holder.
    std::fs::write(s.lock_file("free"), b"").unwrap();
    assert!(goalkeeper::inspect::holder_pids(&s.lock_file("free")).is_empty());
    assert!(goalkeeper::inspect::describe_holders(&s.lock_file("missing")).is_none());
}

#[test]
fn hold_excludes_others_while_the_command_runs() {
    let s = TempStore::new();
    let fds = s.dir().join("fds.txt");
    let script = format!(
        "for f in /proc/$$/fd/*; do readlink $f; done > {}; echo running; read x; exit 3",
        fds.display()
    );
    let h = hold(&s, &[], &["p1", "p2"], &script);
    assert_eq!(h.line(), "running");
    // The command does not inherit the lock descriptors (O_CLOEXEC).
    let open = std::fs::read_to_string(&fds).unwrap();
    assert!(
        !open.contains(".lock"),
        "lock descriptors leaked into the command:\n{open}"
    );
    // This process (OFD through the library) is excluded, on either path.
    for p in ["p1", "p2"] {
        let e = LockSet::try_acquire([s.path(p)], Backend::Ofd).unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
    }
    // Another `hold` is excluded, told who holds the lock, and exits 75.
    let o = run_bounded(
        gk().args(["hold", "--no-wait", "--store"])
            .arg(s.dir())
            .args(["p2", "--", "true"]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(75));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("held by pid {}", h.pid())), "{err}");
    let o = run_bounded(
        gk().args(["hold", "--timeout", "0.05", "--store"])
            .arg(s.dir())
            .args(["p1", "--", "true"]),
        LIMIT,
    );
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The command's exit status is propagated, and the locks are released.
    let (st, _) = h.finish();
    assert_eq!(st.code(), Some(3));
    LockSet::try_acquire([s.path("p1"), s.path("p2")], Backend::Ofd)
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn a_waiting_hold_runs_its_command_only_after_the_release() {
    let s = TempStore::new();
    let first = hold(&s, &[], &["q"], "echo first; read x; true");
    assert_eq!(first.line(), "first");
    let second = hold(&s, &[], &["q"], "echo second");
    await_waiters(&s.lock_file("q"), 1);
    assert!(
        second.silent(),
        "the second command ran while the lock was held"
    );
    assert!(first.silent());
    let (st, _) = first.finish();
    assert!(st.success());
    assert_eq!(second.line(), "second");
    let (st, err) = second.finish();
    assert!(st.success());
    assert!(
        err.contains("waiting") && err.contains("held by pid"),
        "{err}"
    );
}

#[test]
fn hold_forwards_sigterm_and_reports_the_signal() {
    let s = TempStore::new();
    let h = hold(&s, &[], &["t"], "echo running; read x; true");
    assert_eq!(h.line(), "running");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(h.pid() as i32, libc::SIGTERM) }, 0);
    let mut h = h;
    let stdin = h.stdin.take(); // keep the command's stdin open: only the signal ends it
    let (st, _) = {
        let start = Instant::now();
        loop {
            if let Some(st) = h.child.try_wait().unwrap() {
                break (st, ());
            }
            assert!(start.elapsed() < LIMIT, "hold did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    drop(stdin);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM));
    LockSet::try_acquire([s.path("t")], Backend::Ofd)
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["hold", "--store", "/tmp", "x"],
        vec!["hold", "--store", "/tmp", "--", "true"],
        vec!["hold", "--no-wait", "--timeout", "1", "x", "--", "true"],
        vec!["hold", "--timeout", "-1", "x", "--", "true"],
        vec!["locks", "--max-wait", "5"],
        vec!["locks", "--frobnicate"],
        vec!["frobnicate"],
        vec![],
    ] {
        let o = run_bounded(gk().args(&args), LIMIT);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("Usage: goalkeeper"), "{args:?}: {err}");
    }
    let _ = std::io::stdout().flush();
}

/// Issue 19, item 4: help for every subcommand (exit 0), the version, and
/// the man pages made from the same definitions.
#[test]
fn every_subcommand_has_help_and_the_man_pages_are_written() {
    for (args, words) in [
        (vec!["locks", "--help"], "--max-wait"),
        (vec!["hold", "--help"], "--no-wait"),
        (vec!["help", "locks"], "--check"),
        (vec!["hold", "-h"], "--delete"),
        (vec!["--help"], "locks"),
    ] {
        let o = run_bounded(gk().args(&args), LIMIT);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(
            out.contains(words) && out.contains("Usage:"),
            "{args:?}: {out}"
        );
    }
    let o = run_bounded(gk().arg("--version"), LIMIT);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("goalkeeper {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = TempStore::new();
    let o = run_bounded(gk().arg("man-pages").arg(dir.dir()), LIMIT);
    assert!(o.status.success(), "{o:?}");
    for (page, words) in [
        ("goalkeeper.1", "goalkeeper\\-locks(1)"),
        ("goalkeeper-locks.1", "\\-\\-max\\-wait"),
        ("goalkeeper-hold.1", "\\-\\-no\\-wait"),
    ] {
        let text = std::fs::read_to_string(dir.dir().join(page)).unwrap();
        assert_eq!(text.matches(".TH goalkeeper").count(), 1, "{page}: {text}");
        assert_eq!(text.matches(".ds Aq").count(), 2, "one prelude: {text}");
        assert!(text.contains(words), "{page} lacks {words}: {text}");
        if page != "goalkeeper.1" {
            assert!(text.contains(".SH \"EXIT STATUS\""), "{page}: {text}");
        }
    }
}

/// Issue 19, item 4: `--store` defaults to $NIX_STORE_DIR, else /gnu/store.
#[test]
fn the_store_defaults_to_nix_store_dir_then_gnu_store() {
    let s = TempStore::new();
    std::fs::write(s.lock_file("aaa-x"), b"").unwrap();
    let o = run_bounded(gk().arg("locks").env("NIX_STORE_DIR", s.dir()), LIMIT);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(
        out.contains("aaa-x.lock") && out.contains(&format!("{}: 1 lock files", s.dir().display())),
        "{out}"
    );
    let o = run_bounded(gk().arg("locks").env_remove("NIX_STORE_DIR"), LIMIT);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("/gnu/store"), "{all}");
}

/// Arguments need not be UTF-8 (store paths are bytes): a non-UTF-8
/// argument is used as given or refused with a message, never a panic.
#[test]
fn non_utf8_arguments_never_panic() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let store = TempStore::new();
    let bad = OsStr::from_bytes(b"x\xff-name");
    // A non-UTF-8 store path is a path like any other: held, then released.
    let o = run_bounded(
        gk().arg("hold")
            .arg("--store")
            .arg(store.dir())
            .arg(bad)
            .args(["--", "true"]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // Where text is needed, a usage error naming the option.
    let o = run_bounded(
        gk().arg("hold")
            .arg("--store")
            .arg(store.dir())
            .arg("--backend")
            .arg(bad)
            .args(["p", "--", "true"]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--backend"),
        "{o:?}"
    );
    for args in [
        vec![OsStr::new("locks"), OsStr::new("--store"), bad],
        vec![bad],
    ] {
        let o = run_bounded(gk().args(&args), LIMIT);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    }
}

#[test]
fn the_worker_names_the_foreign_holder_when_a_goal_waits() {
    use goalkeeper::sched::{BuildMode, Event, GoalKind, Outcome, Worker, WorkerOptions};
    let s = TempStore::new();
    let h = hold(&s, &[], &["out"], "echo held; read x; true");
    assert_eq!(h.line(), "held");
    let mut w = Worker::new(WorkerOptions::default()).unwrap();
    let g = w
        .add_goal(GoalKind::Build, &[s.path("out")], BuildMode::Normal)
        .unwrap();
    assert!(matches!(w.next_event().unwrap(), Event::Wait { .. }));
    let log = w.take_log().join("\n");
    assert!(
        log.contains(&format!("held by another process (pid {} (", h.pid()))
            && log.contains("ofd lock"),
        "the 'waiting for lock' line does not name the holder:\n{log}"
    );
    // Then the goal gets the lock when the holder lets go.
    let (st, _) = h.finish();
    assert!(st.success());
    let start = Instant::now();
    loop {
        match w.next_event().unwrap() {
            Event::Run { goal, .. } => {
                assert_eq!(goal, g);
                break;
            }
            Event::Wait { fd, .. } => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; bounded wait on the worker's eventfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            e => panic!("unexpected event {e:?}"),
        }
        assert!(start.elapsed() < LIMIT, "the goal never got the lock");
    }
    w.report(g, Outcome::Failed).unwrap();
}

#[test]
fn diagnostics_reuse_a_recent_scan_but_find_a_new_holder() {
    use goalkeeper::inspect::holder_pids;
    let s = TempStore::new();
    let lock_file = s.lock_file("y");
    let a = hold(&s, &[], &["y"], "echo held; read x; true");
    assert_eq!(a.line(), "held");
    assert_eq!(holder_pids(&lock_file), vec![a.pid()]);
    // Within the reuse period, from the same table.
    assert_eq!(holder_pids(&lock_file), vec![a.pid()]);
    let (st, _) = a.finish();
    assert!(st.success());
    // A new holder right away: the recent table lacks its descriptor, so
    // the lookup rescans instead of answering from the old table.
    let b = hold(&s, &[], &["y"], "echo held; read x; true");
    assert_eq!(b.line(), "held");
    assert_eq!(holder_pids(&lock_file), vec![b.pid()]);
    drop(b);
}

/// Issue 11, item 4: how long a waiter has been blocked is measured on the
/// scheduler's own clock. `se.exec_start` (when the waiter last ran) is the
/// scheduler clock, which on some machines trails `CLOCK_MONOTONIC` by
/// seconds; subtracting it from `CLOCK_MONOTONIC` showed "blocked 5.8 s"
/// for a waiter blocked 1 s. A waiter blocked for a known time must be
/// reported within 0.5 s of it, by the library and by `goalkeeper locks`.
///
/// Each CPU's scheduler clock trails by its own amount (on this project's
/// 2-CPU VM the two differ by more than a second), so the waiter runs on
/// one CPU and the inspection on another, when there are two: reading
/// "now" on the inspecting thread's CPU instead of the waiter's fails here.
#[test]
fn a_waiters_blocked_time_is_measured_on_the_schedulers_clock() {
    let cpus = allowed_cpus();
    let s = TempStore::new();
    let lf = s.lock_file("aaa-held");
    let holder = Proc::spawn(Command::new(holder_exe()).arg("posix").arg(&lf));
    assert_eq!(holder.line(), "locked");
    // The waiter inherits this thread's affinity: the first CPU.
    pin_this_thread(cpus[0]);
    let t0 = Instant::now();
    let waiter = Proc::spawn(Command::new(holder_exe()).arg("posix-wait").arg(&lf));
    // The inspection (here and in `goalkeeper locks`) on another CPU.
    pin_this_thread(*cpus.last().unwrap());
    await_waiters(&lf, 1);
    let t1 = Instant::now();
    // The known time: the quantity under test, not a synchronisation.
    std::thread::sleep(Duration::from_millis(1500));
    let before = Instant::now();
    let info = Inspector::new().unwrap().inspect(&lf).unwrap();
    let json = locks_json(&s);
    let after = Instant::now();
    let lo = before - t1; // blocked at least since we saw it blocked
    let hi = after - t0; // and at most since it was started
    let slack = Duration::from_millis(500);
    let got = info.waiters[0]
        .blocked_for
        .expect("the waiter's thread is readable");
    assert!(
        got + slack >= lo && got <= hi + slack,
        "library: blocked {got:?}, expected between {lo:?} and {hi:?} (± 0.5 s)"
    );
    let ms = entry(&json, "aaa-held.lock")["waiters"][0]["blocked_ms"]
        .as_f64()
        .expect("blocked_ms");
    let got = Duration::from_secs_f64(ms / 1000.0);
    assert!(
        got + slack >= lo && got <= hi + slack,
        "goalkeeper locks --json: blocked {got:?}, expected between {lo:?} and {hi:?} (± 0.5 s)"
    );
    drop(holder);
    let (st, err) = waiter.finish();
    assert!(st.success() || st.code().is_some(), "{err}");
}

/// Issue 11, item 5: `hold --delete` deletes the lock files when the command
/// succeeds (it produced the paths), keeps them when it fails, and a
/// process that waited meanwhile ends up holding a live, linked lock file.
#[test]
fn hold_delete_deletes_the_lock_files_after_success_only() {
    use std::os::unix::fs::MetadataExt;
    let s = TempStore::new();
    let out = s.path("aaa-made");
    let script = format!("echo running; read x; echo built > {out}");
    let h = hold(&s, &["--delete"], &["aaa-made"], &script);
    assert_eq!(h.line(), "running");
    // A goalkeeper waiter, blocked on the lock file that is about to go.
    let path = out.clone();
    let waiter = std::thread::spawn(move || {
        LockSet::acquire([&path], Backend::Ofd, goalkeeper::WaitMode::Forever)
    });
    await_waiters(&s.lock_file("aaa-made"), 1);
    let (st, err) = h.finish();
    assert!(st.success(), "{err}");
    let set = waiter.join().unwrap().expect("the waiter gets the lock");
    // The waiter noticed the deletion and holds a fresh, linked file.
    let meta = std::fs::metadata(s.lock_file("aaa-made")).expect("a live lock file");
    assert_eq!((meta.nlink(), meta.len()), (1, 0), "{meta:?}");
    set.release().unwrap();
    // A command that fails leaves the lock file (the path is not valid).
    let o = run_bounded(
        gk().args(["hold", "--delete", "--store"])
            .arg(s.dir())
            .args(["bbb-failed", "--", "false"]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        s.lock_file("bbb-failed").exists(),
        "deleted after a failure"
    );
    // Without --delete, success keeps it too.
    let o = run_bounded(
        gk().args(["hold", "--store"])
            .arg(s.dir())
            .args(["ccc-kept", "--", "true"]),
        LIMIT,
    );
    assert!(o.status.success());
    assert!(s.lock_file("ccc-kept").exists());
    // With --delete and success, gone.
    let o = run_bounded(
        gk().args(["hold", "--delete", "--store"])
            .arg(s.dir())
            .args(["ccc-kept", "--", "true"]),
        LIMIT,
    );
    assert!(o.status.success());
    assert!(!s.lock_file("ccc-kept").exists(), "kept after --delete");
}

/// Issue 11, item 3: one lock file held through flock and through a POSIX
/// record lock at once (they do not exclude each other on Linux) is flagged
/// as two protocols sharing a store, in words and in `--json`.
#[test]
fn locks_warns_when_flock_and_fcntl_holders_share_a_lock_file() {
    let s = TempStore::new();
    let mixed = s.lock_file("aaa-mixed");
    let single = s.lock_file("bbb-single");
    let posix = Proc::spawn(Command::new(holder_exe()).arg("posix").arg(&mixed));
    assert_eq!(posix.line(), "locked");
    let flock = Proc::spawn(Command::new(holder_exe()).arg("flock").arg(&mixed));
    assert_eq!(
        flock.line(),
        "locked",
        "flock and fcntl do not exclude each other"
    );
    let only = Proc::spawn(Command::new(holder_exe()).arg("posix").arg(&single));
    assert_eq!(only.line(), "locked");
    let json = locks_json(&s);
    assert_eq!(
        entry(&json, "aaa-mixed.lock")["mixed_kinds"],
        Value::Bool(true)
    );
    assert_eq!(
        entry(&json, "bbb-single.lock")["mixed_kinds"],
        Value::Bool(false)
    );
    assert_eq!(json["summary"]["mixed_kinds"], 1);
    let o = run_bounded(gk().args(["locks", "--store"]).arg(s.dir()), LIMIT);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("WARNING") && text.contains("two lock protocols"),
        "{text}"
    );
    drop((posix, flock, only));
}

fn locks_with_db(store: &TempStore, db: &Path, json: bool) -> std::process::Output {
    let mut c = gk();
    c.args(["locks", "--store"])
        .arg(store.dir())
        .arg("--db")
        .arg(db);
    if json {
        c.arg("--json");
    }
    run_bounded(&mut c, LIMIT)
}

/// Issue 11, item 3: `goalkeeper locks --db` flags every lock held on a path
/// that is already valid in the store's database (the #31785 symptom: a
/// finished build still holding its lock), in words and in `--json`, with
/// real holder processes: one holds a registered path (a leak), one an
/// unregistered path (a build in progress), and a free lock file of a
/// registered path is no leak.
#[test]
fn locks_db_flags_locks_held_on_valid_paths() {
    let s = TempStore::new();
    let state = s.dir().join("state");
    std::fs::create_dir(&state).unwrap();
    let (leaked, building, done) = (
        s.path("aaa-leaked"),
        s.path("bbb-building"),
        s.path("ccc-done"),
    );
    let db = common::db::create(&state, "wal", &[&leaked, &done]);
    std::fs::write(s.lock_file("ccc-done"), b"").unwrap();
    let leak = Proc::spawn(
        Command::new(holder_exe())
            .arg("posix")
            .arg(s.lock_file("aaa-leaked")),
    );
    assert_eq!(leak.line(), "locked");
    let build = hold(&s, &[], &[&building], "echo locked; cat");
    assert_eq!(build.line(), "locked");

    let o = locks_with_db(&s, &db, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let e = entry(&json, "aaa-leaked.lock");
    assert_eq!(
        (&e["state"], &e["path_valid"], &e["leak_suspected"]),
        (&Value::from("held"), &Value::Bool(true), &Value::Bool(true)),
        "{e:#}"
    );
    assert_eq!(e["holders"][0]["pid"], leak.pid());
    let e = entry(&json, "bbb-building.lock");
    assert_eq!(
        (&e["state"], &e["path_valid"], &e["leak_suspected"]),
        (
            &Value::from("held"),
            &Value::Bool(false),
            &Value::Bool(false)
        ),
        "{e:#}"
    );
    let e = entry(&json, "ccc-done.lock");
    assert_eq!(
        (&e["state"], &e["path_valid"], &e["leak_suspected"]),
        (
            &Value::from("free"),
            &Value::Bool(true),
            &Value::Bool(false)
        ),
        "{e:#}"
    );
    assert_eq!(json["summary"]["leaks_suspected"], 1);

    // In words: the leaked lock, its holder, and what it means.
    let o = locks_with_db(&s, &db, false);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("aaa-leaked.lock"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[at].contains(" yes "), "{text}");
    assert!(lines[at + 1].contains("LEAK SUSPECTED"), "{text}");
    assert!(
        lines[at + 2].contains(&format!("pid {}", leak.pid())),
        "{text}"
    );
    assert!(text.contains("#31785"), "{text}");
    assert_eq!(
        text.matches("LEAK SUSPECTED").count(),
        2,
        "one mark, one summary: {text}"
    );
    assert!(
        text.contains("WARNING: 1 lock(s) held on paths that are already valid"),
        "{text}"
    );
    let building_line = lines
        .iter()
        .find(|l| l.starts_with("bbb-building.lock"))
        .unwrap();
    assert!(building_line.contains(" no "), "{text}");

    // The build finishes and registers its path, but keeps holding: now a leak too.
    common::db::register(&db, &building);
    let json: Value = serde_json::from_slice(&locks_with_db(&s, &db, true).stdout).unwrap();
    assert_eq!(entry(&json, "bbb-building.lock")["leak_suspected"], true);
    assert_eq!(json["summary"]["leaks_suspected"], 2);
    drop(leak);
    let (st, _) = build.finish();
    assert!(st.success());
    // Without --db: validity is unknown, never guessed.
    let json = locks_json(&s);
    let e = entry(&json, "aaa-leaked.lock");
    assert_eq!(
        (&e["path_valid"], &e["leak_suspected"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(json["summary"]["leaks_suspected"], Value::Null);
    let o = run_bounded(gk().args(["locks", "--store"]).arg(s.dir()), LIMIT);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("VALID") && !text.contains("LEAK"), "{text}");
}

/// A bad `--db` is a clear error naming the file (exit status 2), for each
/// kind of bad database; the store is not listed.
#[test]
fn locks_db_refuses_a_bad_database() {
    let s = TempStore::new();
    let garbage = s.dir().join("garbage.sqlite");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    let other = s.dir().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("create table t (x)")
        .unwrap();
    let missing = s.dir().join("missing.sqlite");
    for (db, words) in [
        (missing.as_path(), "no such file"),
        (garbage.as_path(), "not an SQLite database"),
        (other.as_path(), "ValidPaths"),
        (s.dir(), "not a regular file"),
    ] {
        let o = locks_with_db(&s, db, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", db.display());
        assert!(
            err.contains(&db.display().to_string()) && err.contains(words),
            "{}: {err}",
            db.display()
        );
        assert!(o.stdout.is_empty(), "nothing listed");
    }
    // --db needs a value.
    let o = run_bounded(
        gk().args(["locks", "--store"]).arg(s.dir()).arg("--db"),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(2));
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity
    // fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` < CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    assert!(!cpus.is_empty());
    cpus
}

/// Runs this thread (and the processes it starts from now on) on `cpu` only.
fn pin_this_thread(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; `cpu` < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        r,
        0,
        "sched_setaffinity({cpu}): {}",
        std::io::Error::last_os_error()
    );
}

/// `hold`'s own failures exit 125 (as timeout(1) and env(1) do), never a
/// status CMD could have returned, and CMD does not run.
#[test]
fn hold_failures_exit_125_without_running_the_command() {
    let s = TempStore::new();
    let marker = s.dir().join("ran");
    let script = format!("touch {}", marker.display());
    let file = s.dir().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    for (store, path) in [
        (file.as_path(), "x"),
        (s.dir(), "/elsewhere/x"),
        (s.dir(), "sub/dir"),
    ] {
        let o = run_bounded(
            gk().arg("hold")
                .arg("--store")
                .arg(store)
                .args([path, "--", "sh", "-c", &script]),
            LIMIT,
        );
        assert_eq!(o.status.code(), Some(125), "{path}: {o:?}");
        assert!(!o.stderr.is_empty(), "{o:?}");
        assert!(!marker.exists(), "{path}: the command ran");
    }
}

/// Issue 19, item 4: holders show for at most how long they have held the
/// lock: the lock file's age, or a POSIX holder's age when it is shorter
/// (the lock file here is older than its holder); never less than the
/// time the test has seen it held, never more than since it could have
/// been taken. An OFD holder (an inherited description could be older
/// than its process) is bounded by its lock file only.
#[test]
fn holders_show_for_at_most_how_long_they_hold() {
    let s = TempStore::new();
    let old = s.lock_file("aaa-posix");
    std::fs::write(&old, b"").unwrap();
    // The quantity under test: the lock file is this much older than its holder.
    std::thread::sleep(Duration::from_millis(400));
    let t1 = Instant::now();
    let posix = Proc::spawn(Command::new(holder_exe()).arg("posix").arg(&old));
    assert_eq!(posix.line(), "locked");
    let t2 = Instant::now();
    let ofd = hold(&s, &[], &["bbb-ofd"], "echo held; read x; true");
    assert_eq!(ofd.line(), "held");
    let t3 = Instant::now();
    let before = Instant::now();
    let v = locks_json(&s);
    let after = Instant::now();
    // A process's start time counts in clock ticks (10 ms here), rounded up
    // by one; a file's birth time is read from a coarse clock (a few ms
    // behind): 25 ms of slack above.
    let slack = Duration::from_millis(25);
    let within = |what: &str, h: &Value, lo: Duration, hi: Duration| {
        let got = Duration::from_secs_f64(h["held_at_most_ms"].as_f64().unwrap() / 1e3);
        assert!(
            got >= lo && got <= hi + slack,
            "{what}: {got:?} not within [{lo:?}, {hi:?} + {slack:?}]: {h:#}"
        );
    };
    let h = &entry(&v, "aaa-posix.lock")["holders"][0];
    assert_eq!(h["held_bound"], "holder_started", "{h:#}");
    within("posix", h, before - t2, after - t1);
    let h = &entry(&v, "bbb-ofd.lock")["holders"][0];
    assert_eq!(h["held_bound"], "lock_file_created", "{h:#}");
    within("ofd", h, before - t3, after - t2);
    let o = run_bounded(gk().args(["locks", "--store"]).arg(s.dir()), LIMIT);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("HELD FOR"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("aaa-posix.lock"))
        .unwrap();
    assert!(line.contains("≤ "), "{text}");
    assert!(
        text.contains("HELD FOR is an upper bound")
            && text.contains("since the holder started")
            && text.contains("since the lock file was created"),
        "{text}"
    );
    drop((posix, ofd));
}

/// Issue 17: a lock held on a path that the store database lists as failed
/// (guix-daemon --cache-failures: FailedPaths) is flagged as a suspected
/// leak, as one held on a valid path is; a free lock file of a failed path
/// is not.
#[test]
fn locks_db_flags_locks_held_on_failed_paths() {
    let s = TempStore::new();
    let state = s.dir().join("state");
    std::fs::create_dir(&state).unwrap();
    let (failed, free_failed, building) = (
        s.path("aaa-failed"),
        s.path("bbb-failed-free"),
        s.path("ccc-building"),
    );
    let db = common::db::create(&state, "wal", &[]);
    common::db::register_failed(&db, &failed);
    common::db::register_failed(&db, &free_failed);
    std::fs::write(s.lock_file("bbb-failed-free"), b"").unwrap();
    let leak = Proc::spawn(
        Command::new(holder_exe())
            .arg("posix")
            .arg(s.lock_file("aaa-failed")),
    );
    assert_eq!(leak.line(), "locked");
    let build = hold(&s, &[], &[&building], "echo locked; cat");
    assert_eq!(build.line(), "locked");
    let o = locks_with_db(&s, &db, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let flags = |name: &str| {
        let e = entry(&json, name);
        (
            e["state"].clone(),
            e["path_valid"].clone(),
            e["path_failed"].clone(),
            e["leak_suspected"].clone(),
        )
    };
    let (t, f) = (Value::Bool(true), Value::Bool(false));
    assert_eq!(
        flags("aaa-failed.lock"),
        (Value::from("held"), f.clone(), t.clone(), t.clone())
    );
    assert_eq!(
        flags("bbb-failed-free.lock"),
        (Value::from("free"), f.clone(), t.clone(), f.clone())
    );
    assert_eq!(
        flags("ccc-building.lock"),
        (Value::from("held"), f.clone(), f.clone(), f.clone())
    );
    assert_eq!(json["summary"]["leaks_suspected"], 1);
    let o = locks_with_db(&s, &db, false);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("aaa-failed.lock"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[at].contains(" failed "), "{text}");
    assert!(
        lines[at + 1].contains("LEAK SUSPECTED") && lines[at + 1].contains("FailedPaths"),
        "{text}"
    );
    assert!(
        lines[at + 2].contains(&format!("pid {}", leak.pid())),
        "{text}"
    );
    assert!(
        text.contains("WARNING: 1 lock(s) held on paths whose build failed"),
        "{text}"
    );
    drop(leak);
    let (st, _) = build.finish();
    assert!(st.success());
}

/// Issue 19, item 4: `locks --check` is a monitoring check: exit 0 when
/// nothing is wrong, 1 (saying what) when a leak is suspected or a waiter
/// has been blocked longer than --max-wait, 2 when it cannot look.
#[test]
fn locks_check_exits_non_zero_on_a_leak_or_a_long_wait() {
    let s = TempStore::new();
    let state = s.dir().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = common::db::create(&state, "wal", &[&s.path("aaa-done")]);
    let check = |extra: &[&str]| {
        let o = run_bounded(
            gk().args(["locks", "--check", "--store"])
                .arg(s.dir())
                .args(extra),
            LIMIT,
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let db_arg = db.to_str().unwrap();
    // A lock held on a path being built, a waiter: nothing wrong.
    let holder = hold(&s, &[], &["bbb-building"], "echo held; read x; true");
    assert_eq!(holder.line(), "held");
    let waiter = Proc::spawn(
        Command::new(holder_exe())
            .arg("posix-wait")
            .arg(s.lock_file("bbb-building")),
    );
    await_waiters(&s.lock_file("bbb-building"), 1);
    let (code, out) = check(&["--db", db_arg, "--max-wait", "3600"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("check: OK\n"), "{out}");
    // A waiter blocked longer than --max-wait.
    let (code, out) = check(&["--db", db_arg, "--max-wait", "0"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("check: PROBLEM: bbb-building.lock: pid")
            && out.contains("more than --max-wait"),
        "{out}"
    );
    // A lock held on a valid path.
    let leak = hold(&s, &[], &["aaa-done"], "echo held; read x; true");
    assert_eq!(leak.line(), "held");
    let (code, out) = check(&["--db", db_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "check: PROBLEM: aaa-done.lock: held by pid {}",
            leak.pid()
        )) && out.contains("check: 1 problem(s)"),
        "{out}"
    );
    let o = run_bounded(
        gk().args(["locks", "--check", "--json", "--db", db_arg, "--store"])
            .arg(s.dir()),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"]["ok"], false, "{v:#}");
    assert_eq!(v["check"]["problems"].as_array().unwrap().len(), 1, "{v:#}");
    // Without --db it cannot see that leak, and says so.
    let (code, out) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("check: no --db"), "{out}");
    // Cannot look: 2.
    let o = run_bounded(
        gk().args(["locks", "--check", "--store"])
            .arg(s.dir().join("missing")),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(2));
    drop((waiter, holder, leak));
}

/// The README's operator example (`examples/operator.sh`, shown verbatim by
/// README.md: tests/readme.rs) runs as written, in a temporary store
/// instead of /tmp/gk-store: every command is accepted (no usage error),
/// the build holds its locks while `locks` looks, the waiter runs after
/// it, and the JSON lists both lock files, free at the end. (Whether the
/// waiter is already blocked when `locks` looks depends on the script's
/// `sleep 1`, so the check's status is not asserted here.)
#[test]
fn the_readme_operator_example_runs() {
    let s = TempStore::new();
    let script = std::fs::read_to_string(root().join("examples/operator.sh"))
        .unwrap()
        .replace("/tmp/gk-store", s.dir().to_str().unwrap());
    let bin = Path::new(env!("CARGO_BIN_EXE_goalkeeper"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = run_bounded(
        Command::new("bash")
            .args(["-c", &script])
            .env("PATH", path)
            .env_remove("NIX_STORE_DIR"),
        LIMIT,
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(!err.contains("Usage:") && !err.contains("error:"), "{err}");
    let table = out
        .lines()
        .skip_while(|l| !l.starts_with("LOCK FILE"))
        .take(6)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        table.contains("aaa-hello.lock      held") && table.contains("bbb-hello-doc.lock  held"),
        "{out}"
    );
    assert!(out.contains("check: exit status "), "{out}");
    assert!(out.contains("got aaa-hello after the build"), "{out}");
    assert!(
        out.ends_with(
            "      \"name\": \"aaa-hello.lock\",\n      \"state\": \"free\",\n      \
             \"name\": \"bbb-hello-doc.lock\",\n      \"state\": \"free\",\n"
        ),
        "{out}"
    );
}
