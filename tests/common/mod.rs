//! Support shared by the integration tests: private temporary stores, the
//! built shared library, compiling C and C++ programs against it, and
//! bounded waits. Each test binary includes it with `mod common;`.
#![allow(dead_code)]

pub mod db;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A private temporary store directory (mode 0700), removed on drop.
pub struct TempStore {
    dir: PathBuf,
}

impl TempStore {
    /// Creates a fresh store under the system temporary directory.
    pub fn new() -> TempStore {
        let dir = std::env::temp_dir().join(format!(
            "gk-store-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            Instant::now().elapsed().as_nanos() ^ (std::ptr::addr_of!(SEQ) as u128)
        ));
        std::fs::create_dir_all(&dir).expect("create temp store");
        // 0700 whatever the umask: lock files are refused in a store
        // directory that other users may write to without the sticky bit.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod temp store");
        TempStore { dir }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store path `<store>/<name>` as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .to_str()
            .expect("UTF-8 temp dir")
            .to_string()
    }

    /// The lock file of `<store>/<name>`.
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the test executable's profile (`target/debug`), where
/// cargo put `libgoalkeeper.so`. Ensures the soname link `libgoalkeeper.so.0`
/// exists beside it, so programs linked with `-lgoalkeeper` can start.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    ensure_cdylib(dir.file_name().is_some_and(|n| n == "release"));
    let so = dir.join("libgoalkeeper.so");
    assert!(
        so.exists(),
        "{} missing: cargo test builds the cdylib",
        so.display()
    );
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let link = dir.join(format!("libgoalkeeper.so.{major}"));
    if std::fs::read_link(&link).is_err() {
        let _ = std::os::unix::fs::symlink("libgoalkeeper.so", &link);
    }
    dir
}

/// Builds `libgoalkeeper.so` once per test binary. `cargo test` builds only
/// the rlib for integration tests, so without this a fresh clone has no
/// shared library, and after a change the programs would load a stale one.
/// It is built with the test-only features (`legacy-hold`,
/// `fault-injection`), as `cargo test` builds the rlib (the same features,
/// so the two builds do not undo each other), so that the C, C++ and Guile
/// suites can show the ledger catching a finished goal's kept lock.
fn ensure_cdylib(release: bool) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "goalkeeper", "--lib", "--quiet"])
            .args(["--features", "legacy-hold,fault-injection"])
            .current_dir(root());
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build --lib");
        assert!(st.success(), "cargo build --lib failed");
    });
}

/// The repository root (the workspace root: the test may belong to the
/// `cli/` member, which includes this file too).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("include/goalkeeper.h").is_file())
        .expect("the repository root above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

/// Where tests put the programs they compile.
pub fn build_dir() -> PathBuf {
    let d = lib_dir().join("gk-test-programs");
    std::fs::create_dir_all(&d).expect("create build dir");
    d
}

/// Compiles C (`cpp == false`) or C++ sources into an executable linked with
/// the built `libgoalkeeper.so`, with `-Wall -Wextra -Werror`, using the
/// compiler the `cc` crate finds. Returns the executable's path.
pub fn compile(name: &str, sources: &[PathBuf], cpp: bool, extra: &[&str]) -> PathBuf {
    let target = "x86_64-unknown-linux-gnu";
    let tool = cc::Build::new()
        .cpp(cpp)
        .target(target)
        .host(target)
        .opt_level(1)
        .cargo_metadata(false)
        .get_compiler();
    let out = build_dir().join(name);
    let lib = lib_dir();
    let mut cmd = tool.to_command();
    cmd.args(["-Wall", "-Wextra", "-Werror", "-g"])
        .arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .arg("-I")
        .arg(root().join("include"))
        .args(sources)
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lgoalkeeper");
    let o = cmd.output().expect("run the C compiler");
    assert!(
        o.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Runs `cmd` with a hard time limit; a hang becomes a failure with a message.
/// The limit covers the child's output too: a process the child left behind
/// that keeps its stdout or stderr open is a failure that says so, not a wait
/// for an end of file that never comes.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    // Drain pipes on threads so a chatty child cannot block on a full pipe;
    // each sends what it read once its pipe reaches end of file.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            pipe.read_to_end(&mut v).ok();
            let _ = tx.send(v);
        });
        rx
    };
    let so = drain(Box::new(child.stdout.take().expect("stdout")));
    let se = drain(Box::new(child.stderr.take().expect("stderr")));
    // What a pipe gave, or None if it is still open when the limit is up.
    let collect = |rx: &std::sync::mpsc::Receiver<Vec<u8>>| -> Option<Vec<u8>> {
        let left = limit.saturating_sub(start.elapsed());
        rx.recv_timeout(left.max(Duration::from_secs(1))).ok()
    };
    let text = |v: &Option<Vec<u8>>| match v {
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => "[still open]".to_string(),
    };
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            match (collect(&so), collect(&se)) {
                (Some(stdout), Some(stderr)) => {
                    return std::process::Output {
                        status,
                        stdout,
                        stderr,
                    }
                }
                (stdout, stderr) => panic!(
                    "{cmd:?} exited ({status}), but its output stayed open after {limit:?}: \
                     a process it left behind holds it\nstdout:\n{}\nstderr:\n{}",
                    text(&stdout),
                    text(&stderr)
                ),
            }
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {limit:?} (killed)\nstdout:\n{}\nstderr:\n{}",
                cmd,
                text(&collect(&so)),
                text(&collect(&se))
            );
        }
        // Bounded polling of a child's exit status; not used for synchronisation.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A command that runs a compiled C/C++ test program, under valgrind's
/// memcheck when `GOALKEEPER_VALGRIND=1` (`make check-valgrind`): any memory
/// error, or a definite or indirect leak, then makes it exit with status 99.
/// Fork children are checked too. The program then sees
/// `GOALKEEPER_UNDER_VALGRIND=1`: valgrind does not know that
/// `fcntl(F_OFD_SETLKW)` may block, so a thread blocked in it freezes the
/// whole process; programs use the flock backend for blocking waits then.
pub fn c_command(exe: &Path) -> Command {
    if under_valgrind() {
        let mut c = Command::new("valgrind");
        c.env("GOALKEEPER_UNDER_VALGRIND", "1");
        c.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--track-origins=yes",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

/// Whether C/C++ test programs run under valgrind (`GOALKEEPER_VALGRIND=1`).
pub fn under_valgrind() -> bool {
    std::env::var_os("GOALKEEPER_VALGRIND").is_some_and(|v| v == "1")
}

/// The guix-daemon-style lock peer (tests/cxx/legacy_peer.cc with
/// legacy_pathlocks.cc), compiled once per test binary.
pub fn legacy_peer_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let cxx = root().join("tests/cxx");
        // One executable per test binary: binaries may build at once.
        let exe = std::env::current_exe().expect("current_exe");
        let stem = exe.file_stem().expect("exe name").to_string_lossy();
        compile(
            &format!("legacy_peer-{stem}"),
            &[cxx.join("legacy_peer.cc"), cxx.join("legacy_pathlocks.cc")],
            true,
            &["-I", cxx.to_str().expect("UTF-8 path")],
        )
    })
    .clone()
}

/// Records the result of one suite inside a test binary (an SRFI-64 file, a
/// C or C++ program) for `make check`'s summary: `build-aux/check` sets
/// `GOALKEEPER_CHECK_RESULTS` to a fresh directory and prints one line per
/// record (`PASS: tests/scheme/locks.scm (70 passed)`) after the binary's
/// own line. Without the variable (plain `cargo test`) nothing is written.
/// Call it before asserting, so that a failing suite has its FAIL line.
pub fn record_suite(name: &str, ok: bool, passed: u64, failed: u64, detail: &str) {
    let Some(dir) = std::env::var_os("GOALKEEPER_CHECK_RESULTS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // One `key=value` per line; the detail is the text in parentheses.
    let text = format!(
        "result={}\nname={name}\npassed={passed}\nfailed={failed}\ndetail={}\n",
        if ok { "PASS" } else { "FAIL" },
        detail.replace('\n', " ")
    );
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{file}.trs"))));
    if let Err(e) = written {
        panic!("recording the result of {name} in {}: {e}", dir.display());
    }
}

/// "N passed[, N failed]" for a suite's line in `make check`.
pub fn counts_detail(passed: u64, failed: u64) -> String {
    if failed == 0 {
        format!("{passed} passed")
    } else {
        format!("{passed} passed, {failed} failed")
    }
}
