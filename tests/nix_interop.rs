//! Real Nix (Debian's nix-bin, Nix 2.8) against goalkeeper, in a private
//! store under /tmp: `nix-instantiate` and `nix-store --realise` of plain
//! `derivation { builder = "/bin/sh"; … }` expressions (no nixpkgs).
//!
//! What Nix 2.8 does with an output's lock file, from its source
//! (src/libstore/pathlocks.cc, build/derivation-goal.cc) and as observed
//! with strace: `open(OUT.lock, O_RDWR|O_CREAT|O_CLOEXEC, 0600)`, then
//! `flock(LOCK_EX|LOCK_NB)`; on EWOULDBLOCK it closes the file, prints
//! "waiting for lock on …" and tries again after `build-poll-interval`
//! seconds (5 by default; 1 here, to keep the tests fast); once it has the
//! lock it `fstat`s the file and starts over if the size is not 0 (a stale,
//! deleted lock file). After the build it registers the output in its
//! database, then unlinks OUT.lock, writes "d" into it, and closes it.
//!
//! Without nix-bin these tests fail, saying how to install it: they never
//! skip.

mod common;
mod lockkit;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use goalkeeper::lock::{Backend, LockSet, WaitMode};
use goalkeeper::store_db::{self, StoreDb};
use goalkeeper::Error;
use lockkit::{inode_of, proc_locks, wait_until};

/// Bound on every wait for Nix (it answers in well under a second; the
/// lock retry is 1 s here).
const LIMIT: Duration = Duration::from_secs(30);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A private Nix store: NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR and
/// NIX_CONF_DIR under one temporary directory, NIX_REMOTE empty (no daemon).
struct NixStore {
    root: PathBuf,
}

impl NixStore {
    fn new() -> NixStore {
        let root = std::env::temp_dir().join(format!(
            "gk-nix-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["store", "state", "log", "conf", "home", "work"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("conf/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\nbuild-poll-interval = 1\n",
        )
        .unwrap();
        let nix = NixStore { root };
        nix.require_nix();
        nix
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Nix's own database.
    fn db(&self) -> PathBuf {
        self.root.join("state/db/db.sqlite")
    }

    fn work(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("NIX_STORE_DIR", self.store())
            .env("NIX_STATE_DIR", self.root.join("state"))
            .env("NIX_LOG_DIR", self.root.join("log"))
            .env("NIX_CONF_DIR", self.root.join("conf"))
            .env("NIX_USER_CONF_FILES", "")
            .env("NIX_REMOTE", "");
        c
    }

    /// Fails (never skips) when Nix is not installed. Asked in this private
    /// store's environment: with the default one, Nix 2.8 opens (and on a
    /// fresh machine creates) /nix/var/nix/db, and the tests of this file
    /// doing that at once made one of them fail on a new machine.
    fn require_nix(&self) {
        let ok = self
            .command("nix-store")
            .arg("--version")
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Nix"))
            .unwrap_or(false);
        assert!(
            ok,
            "these tests run the real Nix, but `nix-store --version` did not run. Install Debian's \
             nix-bin (Nix 2.8): `apt-get install -y nix-bin` (.ci/run does)"
        );
    }

    /// Instantiates `derivation { name; builder = "/bin/sh"; args = [ "-c"
    /// script ]; … attrs }` and returns (derivation, output path).
    fn instantiate(&self, name: &str, script: &str, attrs: &[(&str, &Path)]) -> (String, PathBuf) {
        let mut expr = format!(
            "derivation {{\n  name = {};\n  system = builtins.currentSystem;\n  \
             builder = \"/bin/sh\";\n  args = [ \"-c\" {} ];\n",
            nix_string(name),
            nix_string(script)
        );
        for (k, v) in attrs {
            expr.push_str(&format!("  {k} = {};\n", nix_string(v.to_str().unwrap())));
        }
        expr.push_str("}\n");
        let file = self.work(&format!("{name}.nix"));
        std::fs::write(&file, expr).unwrap();
        let drv = self.run_ok(self.command("nix-instantiate").arg(&file));
        let out = self.run_ok(
            self.command("nix-store")
                .args(["--query", "--outputs"])
                .arg(&drv),
        );
        assert!(
            Path::new(&out).starts_with(self.store()),
            "output {out} outside the private store"
        );
        (drv, PathBuf::from(out))
    }

    fn run_ok(&self, cmd: &mut Command) -> String {
        let o = common::run_bounded(cmd, LIMIT);
        assert!(
            o.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// Starts `nix-store --realise drv`; its stderr lines go to a channel.
    fn realise(&self, drv: &str) -> Realise {
        let mut child = self
            .command("nix-store")
            .args(["--realise", drv])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nix-store");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Realise {
            child,
            lines,
            log: Vec::new(),
        }
    }
}

impl Drop for NixStore {
    fn drop(&mut self) {
        // Store objects are read-only (0444/0555); make them removable.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&self.root)
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A Nix string literal (`${` would interpolate; the scripts here use `$x`).
fn nix_string(s: &str) -> String {
    assert!(!s.contains("${"), "no interpolation in {s:?}");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running `nix-store --realise`.
struct Realise {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Realise {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text`.
    fn expect_line(&mut self, text: &str) {
        let start = Instant::now();
        loop {
            let left = LIMIT.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(text);
                    self.log.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "nix-store did not print {text:?} within {LIMIT:?}; it printed:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for nix-store to exit, and returns its status and stdout.
    fn finish(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < LIMIT, "nix-store did not finish");
            // Bounded polling of an exit status; not synchronisation.
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(l);
        }
        if !status.success() {
            panic!("nix-store failed ({status}):\n{}", self.log.join("\n"));
        }
        (status, out)
    }
}

impl Drop for Realise {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A builder that writes its output in place and then blocks until the test
/// lets it go: two FIFOs, no sleeps.
struct Gate {
    started: PathBuf,
    go: PathBuf,
}

/// The builder's script: write a partial output, say "started", wait for
/// "go", finish the output.
const GATED_BUILDER: &str =
    "echo partial > $out && echo started > $started && read x < $go && echo done >> $out";

impl Gate {
    fn new(nix: &NixStore, name: &str) -> Gate {
        let g = Gate {
            started: nix.work(&format!("{name}.started")),
            go: nix.work(&format!("{name}.go")),
        };
        for f in [&g.started, &g.go] {
            let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }
        g
    }

    fn attrs(&self) -> [(&'static str, &Path); 2] {
        [("started", &self.started), ("go", &self.go)]
    }

    /// Waits until the builder has written its partial output and said so.
    fn wait_started(&self) {
        let f = self.started.clone();
        let got = lockkit::bounded("the builder's start", LIMIT, move || {
            let mut s = String::new();
            std::fs::File::open(f)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        });
        assert_eq!(got.trim(), "started");
    }

    /// Lets the builder finish.
    fn open(&self) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.go)
            .unwrap();
        f.write_all(b"go\n").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Unblock a builder left waiting by a failed test (non-blocking:
        // a FIFO without a reader or writer fails to open, which is fine).
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.started);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.go)
        {
            let _ = f.write_all(b"go\n");
        }
    }
}

/// What this process's open descriptors on `lf` point to, as the kernel
/// names them (`… (deleted)` for an unlinked file).
fn fds_of(lf: &Path) -> Vec<String> {
    let name = lf.display().to_string();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with(&name))
        .collect()
}

fn lock_file(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", out.display()))
}

/// Kernel `FLOCK` entries held on the lock file now at `lf`, as (pid) list.
fn flock_holders(lf: &Path) -> Vec<i64> {
    proc_locks(inode_of(lf))
        .held
        .into_iter()
        .filter(|(k, _)| k == "FLOCK")
        .map(|(_, p)| p)
        .collect()
}

/// goalkeeper's `flock` backend and Nix 2.8 exclude each other, both ways.
///
/// 1. goalkeeper holds OUT.lock: nix-store says "waiting for lock", does not
///    build, and builds once goalkeeper releases (without deletion); it then
///    deletes the lock file, as after every build.
/// 2. nix-store holds OUT.lock while its builder runs: goalkeeper's try is
///    busy and a timed wait times out; after the build goalkeeper gets it.
#[test]
fn flock_backend_excludes_nix_both_ways() {
    let nix = NixStore::new();

    // 1. goalkeeper first.
    let (drv, out) = nix.instantiate("gk-first", "echo built > $out", &[]);
    let lf = lock_file(&out);
    let set = LockSet::try_acquire([&out], Backend::Flock).unwrap();
    let mut r = nix.realise(&drv);
    r.expect_line("waiting for lock on");
    assert!(!out.exists(), "Nix built while goalkeeper held the lock");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    // Nix is not blocked in the kernel: it polls with LOCK_NB.
    assert!(proc_locks(inode_of(&lf)).waiting.is_empty());
    set.release().unwrap();
    let (_, stdout) = r.finish();
    assert_eq!(stdout.trim(), out.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    assert!(!lf.exists(), "Nix deletes the lock file after its build");
    assert!(store_db::is_valid(nix.db(), &out).unwrap());

    // 2. Nix first.
    let gate = Gate::new(&nix, "nix-first");
    let (drv, out) = nix.instantiate("nix-first", GATED_BUILDER, &gate.attrs());
    let lf = lock_file(&out);
    let r = nix.realise(&drv);
    gate.wait_started();
    assert_eq!(
        flock_holders(&lf),
        vec![r.pid() as i64],
        "nix-store holds OUT.lock"
    );
    let e = LockSet::try_acquire([&out], Backend::Flock).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    let e = LockSet::acquire(
        [&out],
        Backend::Flock,
        WaitMode::Timeout(Duration::from_millis(100)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    gate.open();
    r.finish();
    let set = LockSet::try_acquire([&out], Backend::Flock).expect("free after Nix's build");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    set.release().unwrap();
}

/// A goalkeeper waiter blocked (in the kernel, on flock) while Nix builds
/// wakes when Nix deletes the lock file, notices that the file it locked is
/// stale (unlinked, "d" written), and ends up holding a live lock file: the
/// one now linked at OUT.lock, a new inode, that Nix would lock too.
#[test]
fn waiter_blocked_on_nix_survives_the_deletion() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "deleted");
    let (drv, out) = nix.instantiate("deleted", GATED_BUILDER, &gate.attrs());
    let lf = lock_file(&out);
    let r = nix.realise(&drv);
    gate.wait_started();
    let nix_inode = inode_of(&lf);
    assert_eq!(flock_holders(&lf), vec![r.pid() as i64]);

    let out2 = out.clone();
    let (tx, rx) = channel();
    let waiter = std::thread::spawn(move || {
        let r = LockSet::acquire([&out2], Backend::Flock, WaitMode::Timeout(LIMIT));
        let _ = tx.send(());
        r
    });
    wait_until("the goalkeeper waiter blocks on Nix's lock", LIMIT, || {
        !proc_locks(nix_inode).waiting.is_empty()
    });
    assert_eq!(
        fds_of(&lf),
        vec![lf.display().to_string()],
        "the waiter waits on the file Nix holds"
    );
    assert!(rx.try_recv().is_err(), "acquired while Nix builds");

    gate.open();
    r.finish();
    rx.recv_timeout(LIMIT).expect("the waiter did not wake");
    let set = waiter.join().unwrap().expect("the waiter acquires");
    let m = std::fs::metadata(&lf).expect("OUT.lock is linked while goalkeeper holds it");
    assert_eq!(m.len(), 0, "not a stale ('d') file");
    // This process's descriptors of the lock file: exactly one, and it is
    // the linked file, not the one Nix unlinked (its inode number may have
    // been reused, so compare what the kernel says of the descriptors).
    let ours = fds_of(&lf);
    assert_eq!(ours, vec![lf.display().to_string()], "{ours:?}");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    // A Nix (or goalkeeper) locker now contends on this very file.
    let e = LockSet::try_acquire([&out], Backend::Flock).unwrap_err();
    assert!(matches!(e, Error::HeldByThisProcess { .. }), "{e}");
    // The waiter's goal would now find the output valid, from the database.
    assert!(store_db::is_valid(nix.db(), &out).unwrap());
    let mut set = set;
    set.set_deletion(true);
    set.release().unwrap();
    assert!(!lf.exists());
}

/// The database validity source reads Nix's own db.sqlite: while the
/// builder has written its output in place and is still running, the path
/// exists but is NOT valid (the file-existence default would say valid);
/// after the build it is valid.
#[test]
fn store_db_reads_nix_database_not_valid_during_build_valid_after() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "inplace");
    let (drv, out) = nix.instantiate("inplace", GATED_BUILDER, &gate.attrs());
    let r = nix.realise(&drv);
    gate.wait_started();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "partial\n",
        "the builder writes its output in place"
    );
    let db = nix.db();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(wal.exists(), "Nix has its database open in WAL mode");
    let mut sdb = StoreDb::open(&db).unwrap();
    assert!(!sdb.is_valid(&out).unwrap(), "valid while still building");
    assert!(sdb.is_valid(&drv).unwrap(), "the .drv is registered");
    assert_eq!(
        sdb.snapshot_reads(),
        0,
        "read through SQLite's live protocol"
    );
    gate.open();
    r.finish();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "partial\ndone\n");
    assert!(sdb.is_valid(&out).unwrap(), "registered after the build");
    assert_eq!(
        sdb.valid_paths([&out, &PathBuf::from(&drv)]).unwrap(),
        vec![true, true]
    );
    drop(sdb);
    assert!(store_db::is_valid(&db, &out).unwrap());
    // The next nix-store finds its database in order (and the path valid).
    let out_again = nix.run_ok(nix.command("nix-store").args(["--realise", &drv]));
    assert_eq!(out_again, out.to_str().unwrap());
}

/// `goalkeeper locks --store DIR --db FILE` against Nix's own store and
/// database: while nix-store builds, it names the nix-store process as the
/// holder of OUT.lock (flock), with "path_valid": false and no leak; once
/// the build is registered, a lock still held on the path (a goalkeeper
/// LockSet kept after the build, as a #31785 daemon would) is flagged
/// "leak_suspected": true, in `--json` and in words.
#[test]
fn locks_db_names_nix_store_and_flags_a_lock_held_on_a_valid_path() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "cli");
    let (drv, out) = nix.instantiate("cli", GATED_BUILDER, &gate.attrs());
    let r = nix.realise(&drv);
    gate.wait_started();
    let exe = env!("CARGO_BIN_EXE_goalkeeper");
    let locks = |json: bool| {
        let mut c = Command::new(exe);
        c.args(["locks", "--store"])
            .arg(nix.store())
            .arg("--db")
            .arg(nix.db());
        if json {
            c.arg("--json");
        }
        let o = common::run_bounded(&mut c, LIMIT);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let lock_name = format!("{}.lock", out.file_name().unwrap().to_str().unwrap());
    let entry = |text: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == lock_name.as_str())
            .unwrap_or_else(|| panic!("{lock_name} missing from {v:#}"))
            .clone()
    };
    let text = locks(true);
    let e = entry(&text);
    assert_eq!(e["state"], "held", "{e:#}");
    assert_eq!(e["kind"], "flock", "{e:#}");
    assert_eq!(e["holders"][0]["pid"], r.pid(), "{e:#}");
    assert!(
        e["holders"][0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("nix-store")),
        "{e:#}"
    );
    assert_eq!(e["path_valid"], false, "{e:#}");
    assert_eq!(e["leak_suspected"], false, "{e:#}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["summary"]["leaks_suspected"], 0);
    gate.open();
    r.finish();
    // Nix registered the output and deleted its lock file. A lock taken on
    // the valid path and kept is what a finished goal of a #31785 daemon
    // looks like.
    let held = LockSet::try_acquire([&out], Backend::Flock).unwrap();
    let e = entry(&locks(true));
    assert_eq!(
        (&e["state"], &e["path_valid"], &e["leak_suspected"]),
        (
            &serde_json::Value::from("held"),
            &serde_json::Value::Bool(true),
            &serde_json::Value::Bool(true)
        ),
        "{e:#}"
    );
    assert_eq!(e["holders"][0]["pid"], std::process::id());
    let words = locks(false);
    assert!(
        words.contains("LEAK SUSPECTED") && words.contains("#31785"),
        "{words}"
    );
    held.release().unwrap();
    let e = entry(&locks(true));
    assert_eq!(
        (&e["state"], &e["leak_suspected"]),
        (
            &serde_json::Value::from("free"),
            &serde_json::Value::Bool(false)
        ),
        "{e:#}"
    );
}
