//! A private Nix store (Debian's nix-bin, Nix 2.8) for the tests that run
//! real Nix against goalkeeper: `tests/nix_interop.rs` and the inspector's
//! test in `cli/tests/nix_locks.rs`. A test crate that includes it also
//! includes `common` and `lockkit` at its root.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Bound on every wait for Nix (it answers in well under a second; the
/// lock retry is 1 s here).
pub const LIMIT: Duration = Duration::from_secs(30);

pub static SEQ: AtomicU64 = AtomicU64::new(0);

/// A private Nix store: NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR and
/// NIX_CONF_DIR under one temporary directory, NIX_REMOTE empty (no daemon).
pub struct NixStore {
    root: PathBuf,
}

impl NixStore {
    pub fn new() -> NixStore {
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

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Nix's own database.
    pub fn db(&self) -> PathBuf {
        self.root.join("state/db/db.sqlite")
    }

    pub fn work(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    pub fn command(&self, program: &str) -> Command {
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
    pub fn instantiate(
        &self,
        name: &str,
        script: &str,
        attrs: &[(&str, &Path)],
    ) -> (String, PathBuf) {
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

    pub fn run_ok(&self, cmd: &mut Command) -> String {
        let o = crate::common::run_bounded(cmd, LIMIT);
        assert!(
            o.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// Starts `nix-store --realise drv`; its stderr lines go to a channel.
    pub fn realise(&self, drv: &str) -> Realise {
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
pub fn nix_string(s: &str) -> String {
    assert!(!s.contains("${"), "no interpolation in {s:?}");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running `nix-store --realise`.
pub struct Realise {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Realise {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text`.
    pub fn expect_line(&mut self, text: &str) {
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
    pub fn finish(mut self) -> (ExitStatus, String) {
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
pub struct Gate {
    started: PathBuf,
    go: PathBuf,
}

/// The builder's script: write a partial output, say "started", wait for
/// "go", finish the output.
pub const GATED_BUILDER: &str =
    "echo partial > $out && echo started > $started && read x < $go && echo done >> $out";

impl Gate {
    pub fn new(nix: &NixStore, name: &str) -> Gate {
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

    pub fn attrs(&self) -> [(&'static str, &Path); 2] {
        [("started", &self.started), ("go", &self.go)]
    }

    /// Waits until the builder has written its partial output and said so.
    pub fn wait_started(&self) {
        let f = self.started.clone();
        let got = crate::lockkit::bounded("the builder's start", LIMIT, move || {
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
    pub fn open(&self) {
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
