//! The newcomer's scripts: `build-aux/ensure-deps` (the system packages of
//! `make demo` and `make check`, from the one list `build-aux/deps`) and
//! `build-aux/check` (the per-suite summary of `make check`).
//!
//! ensure-deps runs for real, with `apt-get` and `id` replaced by small
//! scripts first in `PATH`: the fake apt-get logs its arguments and
//! "installs" a package by creating the file its proof looks for, and the
//! fake id makes the script see root or an ordinary user. The check driver
//! summarizes a saved cargo log in the format cargo and libtest print.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{root, run_bounded, TempStore};

/// A scratch directory with a fake `apt-get` and `id` and a package list.
struct Fake {
    store: TempStore,
}

impl Fake {
    /// `uid` is what `id -u` prints; `apt_fails` makes every apt-get call fail.
    fn new(uid: u32, apt_fails: bool) -> Fake {
        let store = TempStore::new();
        let bin = store.dir().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        let apt = format!(
            "#!/bin/sh\n\
             echo \"$*\" >> '{log}'\n\
             {fail}\
             case \" $* \" in *' install '*)\n\
               for p in \"$@\"; do touch '{dir}/installed-'\"$p\"; done ;;\n\
             esac\n\
             echo 'apt-get progress output'\n",
            log = store.dir().join("apt.log").display(),
            dir = store.dir().display(),
            fail = if apt_fails {
                "echo 'E: no network' >&2; exit 100\n"
            } else {
                ""
            },
        );
        write_script(&bin.join("apt-get"), &apt);
        write_script(&bin.join("id"), &format!("#!/bin/sh\necho {uid}\n"));
        Fake { store }
    }

    /// A proof that holds once the fake apt-get has installed `pkg`.
    fn proof(&self, pkg: &str) -> String {
        format!("test -e {}/installed-{pkg}", self.store.dir().display())
    }

    fn write_list(&self, text: &str) -> PathBuf {
        let list = self.store.dir().join("deps");
        std::fs::write(&list, text).expect("write list");
        list
    }

    /// Runs `build-aux/ensure-deps TARGET --list LIST`.
    fn ensure(&self, target: &str, list: &Path) -> Output {
        let path = format!(
            "{}:{}",
            self.store.dir().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run_bounded(
            Command::new(root().join("build-aux/ensure-deps"))
                .arg(target)
                .arg("--list")
                .arg(list)
                .env("PATH", path)
                .env_remove("ENSURE_DEPS"),
            Duration::from_secs(60),
        )
    }

    /// The apt-get calls, one per line.
    fn apt_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.store.dir().join("apt.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod script");
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ensure_deps_is_silent_and_offline_when_everything_is_present() {
    let fake = Fake::new(0, true);
    let list = fake.write_list(
        "# a comment\n\
         \n\
         here-a | demo check | always there | true\n\
         here-b | check      | also there   | command -v sh\n",
    );
    for target in ["demo", "check"] {
        let out = fake.ensure(target, &list);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.is_empty() && stderr.is_empty(),
            "{target}: {:?}\n{stdout}{stderr}",
            out.status
        );
    }
    assert_eq!(
        fake.apt_calls(),
        Vec::<String>::new(),
        "apt-get must not run"
    );
}

#[test]
fn ensure_deps_as_root_installs_what_is_missing_and_says_so() {
    let fake = Fake::new(0, false);
    let list = fake.write_list(&format!(
        "here   | demo check | always there            | true\n\
         gk-a   | demo check | the first missing one   | {}\n\
         gk-b   | check      | needed by the suites    | {}\n",
        fake.proof("gk-a"),
        fake.proof("gk-b")
    ));
    // `make demo` needs only gk-a.
    let out = fake.ensure("demo", &list);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status);
    assert!(
        stdout.starts_with("make demo: installing gk-a with apt-get:\n")
            && stdout.contains("gk-a             the first missing one")
            && !stdout.contains("gk-b"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("apt-get progress output"),
        "apt's output is shown only on failure:\n{stdout}"
    );
    assert_eq!(
        fake.apt_calls(),
        ["-q update", "-q install -y --no-install-recommends gk-a"]
    );
    // `make check` then needs only gk-b; a second run needs nothing.
    let out = fake.ensure("check", &list);
    let (stdout, _) = text(&out);
    assert!(
        out.status.success() && stdout.contains("installing gk-b with apt-get"),
        "{stdout}"
    );
    assert_eq!(fake.apt_calls().len(), 4);
    let out = fake.ensure("check", &list);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(fake.apt_calls().len(), 4, "nothing missing: no apt-get");
}

#[test]
fn ensure_deps_as_a_user_stops_with_one_line_naming_the_command() {
    let fake = Fake::new(1000, false);
    let list = fake.write_list(&format!(
        "gk-a | demo check | one  | {}\n\
         gk-b | check      | two  | {}\n\
         here | check      | here | true\n",
        fake.proof("gk-a"),
        fake.proof("gk-b")
    ));
    let out = fake.ensure("check", &list);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "make check needs gk-a gk-b (see build-aux/deps); install them with: \
         sudo apt-get install -y gk-a gk-b\n"
    );
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        fake.apt_calls().is_empty(),
        "a user's run must not call apt-get"
    );
}

#[test]
fn ensure_deps_fails_when_apt_fails_or_the_package_does_not_help() {
    // apt-get fails: its output is shown, and the step fails.
    let fake = Fake::new(0, true);
    let list = fake.write_list(&format!("gk-a | check | one | {}\n", fake.proof("gk-a")));
    let out = fake.ensure("check", &list);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("E: no network") && stdout.contains("make check: apt-get update failed"),
        "{stdout}"
    );
    // apt-get succeeds but the proof still fails (a wrong package name).
    let fake = Fake::new(0, false);
    let list = fake.write_list("gk-a | check | one | false\n");
    let out = fake.ensure("check", &list);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("installed, but still missing: gk-a (false still fails)"),
        "{stdout}"
    );
    // A malformed list and an unknown target are errors, not silence.
    let list = fake.write_list("gk-a | check\n");
    assert_eq!(fake.ensure("check", &list).status.code(), Some(2));
    let list = fake.write_list("gk-a | check | one | true\n");
    assert_eq!(fake.ensure("dmeo", &list).status.code(), Some(2));
}

/// The real list: every proof holds on a machine where `make check` ran its
/// set-up (so a typo in a proof, which would reinstall a package on every
/// run, fails here), and `make demo` needs a subset of `make check`.
#[test]
fn the_package_list_is_satisfied_here_without_apt_get() {
    let fake = Fake::new(0, true);
    let list = root().join("build-aux/deps");
    for target in ["demo", "check"] {
        let out = fake.ensure(target, &list);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.is_empty(),
            "build-aux/ensure-deps {target} wants to install something here \
             (run `make check` as root once, or fix the proof):\n{stdout}{stderr}"
        );
    }
    assert!(fake.apt_calls().is_empty());
    let text = std::fs::read_to_string(&list).expect("read build-aux/deps");
    let needed: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            assert_eq!(f.len(), 4, "four fields: {l}");
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    for (pkg, by) in &needed {
        let by: Vec<&str> = by.split_whitespace().collect();
        assert!(
            by.contains(&"check") && by.iter().all(|t| ["demo", "check"].contains(t)),
            "{pkg}: 'needed by' must include check and name only demo/check: {by:?}"
        );
    }
    for pkg in [
        "guile-3.0",
        "guile-3.0-dev",
        "pkg-config",
        "g++",
        "valgrind",
    ] {
        assert!(needed.iter().any(|(p, _)| p == pkg), "{pkg} is not listed");
    }
}

/// Runs `build-aux/check --summarize` on `log` with the records in `results`.
fn summarize(log: &str, results: &Path, cargo_status: &str) -> (Option<i32>, String) {
    let status_file = results.join("status");
    std::fs::write(&status_file, cargo_status).expect("write status");
    let input = results.join("cargo.log");
    std::fs::write(&input, log).expect("write log");
    let out = run_bounded(
        Command::new(root().join("build-aux/check"))
            .arg("--summarize")
            .stdin(std::fs::File::open(&input).expect("open log"))
            .env("GOALKEEPER_CHECK_RESULTS", results)
            .env("CHECK_CARGO_STATUS_FILE", &status_file)
            .env_remove("VERBOSE"),
        Duration::from_secs(60),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What `cargo test --no-fail-fast` prints when one libtest binary fails,
/// a harness = false binary passes with a summary, another crashes, and a
/// binary runs SRFI-64 suites that recorded their counts.
const CARGO_LOG: &str = "   Compiling goalkeeper v0.1.0 (/src)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 1.00s
     Running unittests src/lib.rs (target/debug/deps/goalkeeper-1)

running 2 tests
test a ... ok
test b ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/lock_procs.rs (target/debug/deps/lock_procs-2)

running 3 tests
test good ... ok
test skipped ... ignored
test bad ... FAILED

failures:

---- bad stdout ----
THE FAILURE MESSAGE

failures:
    bad

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.08s

error: test failed, to rerun pass `--test lock_procs`
     Running tests/scheme.rs (target/debug/deps/scheme-3)

running 1 test
test scheme_locks ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.50s

     Running tests/soak.rs (target/debug/deps/soak-4)
soak: faults injected by kind: ...
soak: 150 runs, 973 faults injected, 0 double holders, 0 deadlocks, 0 lost outputs
     Running tests/crash.rs (target/debug/deps/crash-5)

running 1 test
error: test failed, to rerun pass `--test crash`

Caused by:
  process didn't exit successfully: `target/debug/deps/crash-5` (signal: 11, SIGSEGV: invalid memory reference)
   Doc-tests goalkeeper

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

error: 2 targets failed:
    `--test lock_procs`
    `--test crash`
";

#[test]
fn check_driver_prints_one_line_per_suite_and_the_failures() {
    let dir = TempStore::new();
    // A record the scheme binary wrote while it ran: the driver prints it
    // after the first binary's section (it was there before that ended).
    std::fs::write(
        dir.dir().join("tests_scheme_locks.scm.trs"),
        "result=PASS\nname=tests/scheme/locks.scm\npassed=70\nfailed=0\ndetail=70 passed\n",
    )
    .expect("write record");
    let (code, out) = summarize(CARGO_LOG, dir.dir(), "101");
    assert_eq!(code, Some(1), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("PASS: ") || l.starts_with("FAIL: ") || l.starts_with("Total"))
        .collect();
    assert_eq!(
        lines,
        [
            "PASS: src/lib.rs unit tests (2 passed)",
            "PASS: tests/scheme/locks.scm (70 passed)",
            "FAIL: tests/lock_procs.rs (1 passed, 1 failed, 1 ignored)",
            "PASS: tests/scheme.rs (1 passed)",
            "PASS: tests/soak.rs (soak: 150 runs, 973 faults injected, 0 double holders, \
             0 deadlocks, 0 lost outputs)",
            "FAIL: tests/crash.rs (signal: 11, SIGSEGV: invalid memory reference)",
            "PASS: doc tests of goalkeeper (no tests)",
            "Total: 75 passed, 2 failed, 1 ignored (7 suites, 2 failed)",
        ],
        "{out}"
    );
    // The compile step and each failing binary's output are shown.
    assert!(out.starts_with("   Compiling goalkeeper"), "{out}");
    assert!(out.contains("THE FAILURE MESSAGE"), "{out}");
    assert!(out.contains("process didn't exit successfully"), "{out}");
    assert!(
        !out.contains("test a ... ok"),
        "passing output stays in the log"
    );

    // All passing, cargo exit 0: exit 0.
    let dir = TempStore::new();
    let passing = "     Running tests/a.rs (x)\n\n\
                   test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                   finished in 0.00s\n";
    let (code, out) = summarize(passing, dir.dir(), "0");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Total: 3 passed, 0 failed (1 suite, 0 failed)"),
        "{out}"
    );
    // A failed record fails the run even when its binary passed.
    std::fs::write(
        dir.dir().join("x.trs"),
        "result=FAIL\nname=tests/c/x.c\npassed=0\nfailed=1\ndetail=exit status: 1\n",
    )
    .expect("write record");
    let (code, out) = summarize(passing, dir.dir(), "0");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL: tests/c/x.c (exit status: 1)"), "{out}");
    // cargo failed outside any suite (a compile error): exit non-zero.
    let dir = TempStore::new();
    let (code, out) = summarize("error[E0425]: cannot find value `x`\n", dir.dir(), "101");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[E0425]"), "{out}");
}

/// The test helper's bound covers the output too: a child that exits while a
/// process it left behind keeps its stdout open fails with a message within
/// the limit, instead of hanging on an end of file (how a deadlocked forked
/// builder once showed up).
#[test]
fn run_bounded_fails_on_an_output_a_leftover_process_keeps_open() {
    let r = std::panic::catch_unwind(|| {
        run_bounded(
            Command::new("sh").args(["-c", "sleep 5 & echo parent done"]),
            Duration::from_secs(1),
        )
    });
    let msg = match r {
        Ok(out) => panic!("no failure: {out:?}"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("a process it left behind holds it"), "{msg}");
}
