//! `goalkeeper locks`: every lock file in the store, whether it is held,
//! free or stale, by whom and for at most how long, and who waits.
//!
//! With `--db` (the store's database, e.g. `/var/guix/db/db.sqlite`), each
//! lock file's store path is looked up in `ValidPaths` and `FailedPaths`: a
//! lock held on a path that is already valid, or whose build failed, is
//! flagged as a suspected leak (a finished goal that kept its lock: Guix bug
//! #31785, or guix-daemon's cached-failure return that skips its unlock).
//! `--check` makes the exit status say whether anything is wrong.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use goalkeeper::inspect::{Inspector, LockKind, Party};
use goalkeeper::lock::LOCK_SUFFIX;
use goalkeeper::store_db::StoreDb;
use serde::Serialize;

use crate::cli::LocksArgs;
use crate::held::{self, Bound};
use crate::{store_dir, Failure};

/// Exit status of `--check` when it found a problem.
const EXIT_PROBLEM: u8 = 1;
/// Exit status when the store or the database cannot be read.
const EXIT_TROUBLE: u8 = 2;

/// One lock file: what the file system and the kernel say about it. The
/// JSON output is this, field for field.
#[derive(Serialize)]
struct Entry {
    name: String,
    path: String,
    state: State,
    kind: Option<&'static str>,
    /// A deletion token (size != 0): a holder deleted it.
    stale_token: bool,
    size: u64,
    inode: u64,
    /// Why it is not usable as a lock file (not a regular file), if so.
    invalid: Option<String>,
    holders: Vec<Holder>,
    waiters: Vec<Waiter>,
    unreadable_processes: usize,
    /// Held through flock and through fcntl at once.
    mixed_kinds: bool,
    /// Registered in ValidPaths (`None` without `--db`).
    path_valid: Option<bool>,
    /// Listed in FailedPaths (`None` without `--db`).
    path_failed: Option<bool>,
    /// Held while its path is valid or failed (`None` without `--db`).
    leak_suspected: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Held,
    Free,
    Stale,
    Invalid,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Free => "free",
            State::Stale => "stale",
            State::Invalid => "invalid",
        }
    }
}

/// A process and its lock, as both holders and waiters have them.
#[derive(Serialize)]
struct Process {
    pid: Option<u32>,
    command: Option<String>,
    kind: &'static str,
    mode: &'static str,
}

#[derive(Serialize)]
struct Holder {
    #[serde(flatten)]
    process: Process,
    /// An upper bound on how long it has held the lock (see `held.rs`).
    held_at_most_ms: Option<f64>,
    /// What the bound comes from.
    held_bound: Option<Bound>,
}

#[derive(Serialize)]
struct Waiter {
    #[serde(flatten)]
    process: Process,
    /// How long it has been blocked, when `/proc` tells.
    blocked_ms: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    total: usize,
    held: usize,
    free: usize,
    stale: usize,
    invalid: usize,
    waiters: usize,
    mixed_kinds: usize,
    leaks_suspected: Option<usize>,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    problems: Vec<String>,
    max_wait_s: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    store: String,
    db: Option<String>,
    locks: Vec<Entry>,
    summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<Check>,
}

fn process(p: &Party) -> Process {
    Process {
        pid: p.pid,
        command: p.command.clone(),
        kind: p.kind.name(),
        mode: if p.write { "write" } else { "read" },
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `goalkeeper locks`; returns the exit status.
pub fn main(args: &LocksArgs) -> Result<u8, Failure> {
    let trouble = |m: String| Failure::new(EXIT_TROUBLE, m);
    let store = store_dir(&args.store.store).map_err(|f| trouble(f.message))?;
    // Opened before the store is read: a wrong --db is an error at once.
    let mut db = match &args.db {
        Some(f) => {
            // A relative name is taken from the current directory, as a
            // shell user expects; the library itself wants an absolute one.
            let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            Some(StoreDb::open(&abs).map_err(|e| trouble(format!("--db: {e}")))?)
        }
        None => None,
    };
    let mut entries = collect(&store).map_err(trouble)?;
    if let Some(db) = &mut db {
        mark_in_db(&store, db, &mut entries).map_err(trouble)?;
    }
    let check = args.check.then(|| check(&entries, args));
    let count = |s: State| entries.iter().filter(|e| e.state == s).count();
    let summary = Summary {
        total: entries.len(),
        held: count(State::Held),
        free: count(State::Free),
        stale: count(State::Stale),
        invalid: count(State::Invalid),
        waiters: entries.iter().map(|e| e.waiters.len()).sum(),
        mixed_kinds: entries.iter().filter(|e| e.mixed_kinds).count(),
        leaks_suspected: db.as_ref().map(|_| {
            entries
                .iter()
                .filter(|e| e.leak_suspected == Some(true))
                .count()
        }),
    };
    let report = Report {
        store: store.to_string_lossy().into_owned(),
        db: args.db.as_ref().map(|d| d.to_string_lossy().into_owned()),
        locks: entries,
        summary,
        check,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| trouble(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", text(&report));
    }
    Ok(match &report.check {
        Some(c) if !c.ok => EXIT_PROBLEM,
        _ => 0,
    })
}

/// Looks up every lock file's store path (`<store>/<name without .lock>`)
/// in `ValidPaths` and `FailedPaths`.
fn mark_in_db(store: &Path, db: &mut StoreDb, entries: &mut [Entry]) -> Result<(), String> {
    // The store path as the daemon registers it: absolute, with the store
    // directory as given (not resolved: /gnu/store may be a symlink, and the
    // database names paths under /gnu/store).
    let dir = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
    let paths: Vec<PathBuf> = entries
        .iter()
        .map(|e| dir.join(&e.name[..e.name.len() - LOCK_SUFFIX.len()]))
        .collect();
    let valid = db.valid_paths(&paths).map_err(|e| format!("--db: {e}"))?;
    let failed = db.failed_paths(&paths).map_err(|e| format!("--db: {e}"))?;
    for ((e, v), f) in entries.iter_mut().zip(valid).zip(failed) {
        e.path_valid = Some(v);
        e.path_failed = Some(f);
        e.leak_suspected = Some((v || f) && e.state == State::Held);
    }
    Ok(())
}

fn collect(store: &Path) -> Result<Vec<Entry>, String> {
    let dir = fs::read_dir(store).map_err(|e| format!("{}: {e}", store.display()))?;
    let mut files: Vec<(String, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (name.ends_with(LOCK_SUFFIX) && name.len() > LOCK_SUFFIX.len())
                .then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    let mut inspector = Inspector::new().map_err(|e| format!("cannot read /proc/locks: {e}"))?;
    let infos = inspector.inspect_many(files.iter().map(|(_, p)| p.as_path()));
    let mut out = Vec::new();
    for ((name, path), info) in files.into_iter().zip(infos) {
        // A file deleted between the listing and the look is simply gone.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let info = info.unwrap_or_default();
        let invalid = (!meta.file_type().is_file()).then(|| {
            if meta.file_type().is_symlink() {
                "a symbolic link (goalkeeper refuses to follow it)".to_string()
            } else {
                "not a regular file".to_string()
            }
        });
        let state = if info.is_held() {
            State::Held
        } else if invalid.is_some() {
            State::Invalid
        } else if meta.size() != 0 {
            State::Stale
        } else {
            State::Free
        };
        let kinds = || info.holders.iter().map(|h| h.kind);
        let mixed_kinds = kinds().any(|k| k == LockKind::Flock)
            && kinds().any(|k| matches!(k, LockKind::Posix | LockKind::Ofd));
        let file_age = if info.is_held() {
            held::file_age(&path)
        } else {
            None
        };
        out.push(Entry {
            name,
            path: path.to_string_lossy().into_owned(),
            state,
            kind: info.holders.first().map(|h| h.kind.name()),
            stale_token: meta.size() != 0,
            size: meta.size(),
            inode: meta.ino(),
            invalid,
            holders: info
                .holders
                .iter()
                .map(|h| {
                    let bound = held::held_at_most(file_age, h.kind, h.pid);
                    Holder {
                        process: process(h),
                        held_at_most_ms: bound.map(|(d, _)| ms(d)),
                        held_bound: bound.map(|(_, b)| b),
                    }
                })
                .collect(),
            waiters: info
                .waiters
                .iter()
                .map(|w| Waiter {
                    process: process(w),
                    blocked_ms: w.blocked_for.map(ms),
                })
                .collect(),
            unreadable_processes: info.unreadable,
            mixed_kinds,
            path_valid: None,
            path_failed: None,
            leak_suspected: None,
        });
    }
    Ok(out)
}

/// `--check`: what is wrong, one line each.
fn check(entries: &[Entry], args: &LocksArgs) -> Check {
    let mut problems = Vec::new();
    for e in entries {
        if e.leak_suspected == Some(true) {
            let why = if e.path_valid == Some(true) {
                "already valid"
            } else {
                "failed"
            };
            problems.push(format!(
                "{}: held by {} on a path that is {why}: a leak is suspected",
                e.name,
                holders(e)
            ));
        }
        if e.mixed_kinds {
            problems.push(format!(
                "{}: held through flock and fcntl at once (two lock protocols in one store)",
                e.name
            ));
        }
        if let Some(max) = args.max_wait {
            for w in &e.waiters {
                if w.blocked_ms.is_some_and(|b| b > ms(max)) {
                    let (pid, _) = who(&w.process);
                    problems.push(format!(
                        "{}: pid {pid} blocked {} (more than --max-wait {})",
                        e.name,
                        human(w.blocked_ms.unwrap_or(0.0) / 1e3),
                        human(max.as_secs_f64())
                    ));
                }
            }
        }
    }
    Check {
        ok: problems.is_empty(),
        problems,
        max_wait_s: args.max_wait.map(|d| d.as_secs_f64()),
    }
}

fn who(p: &Process) -> (String, String) {
    let pid = p.pid.map_or("?".to_string(), |p| p.to_string());
    // One line per entry: control characters (newlines in arguments) become spaces.
    let cmd = p
        .command
        .as_deref()
        .unwrap_or("?")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (pid, cmd)
}

/// "pid 12 (cmd), pid 13 (cmd)".
fn holders(e: &Entry) -> String {
    let v: Vec<String> = e
        .holders
        .iter()
        .map(|h| {
            let (pid, cmd) = who(&h.process);
            format!("pid {pid} ({cmd})")
        })
        .collect();
    v.join(", ")
}

fn human(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 2.0 * 3600.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

fn text(r: &Report) -> String {
    let mut s = String::new();
    let with_db = r.db.is_some();
    let width = r
        .locks
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(9);
    let pad = "";
    // With --db, a VALID column: is the lock file's store path registered
    // (yes), listed as failed (failed), or neither (no)?
    let valid_col = |e: Option<&Entry>| match (with_db, e) {
        (false, _) => String::new(),
        (true, None) => format!("{pad:<6}  "),
        (true, Some(e)) => {
            let v = match (e.path_valid, e.path_failed) {
                (Some(true), _) => "yes",
                (_, Some(true)) => "failed",
                _ => "no",
            };
            format!("{v:<6}  ")
        }
    };
    let _ = writeln!(
        s,
        "{:<width$}  {:<7}  {}{:<5}  {:>7}  {:<9}  COMMAND",
        "LOCK FILE",
        "STATE",
        if with_db { "VALID   " } else { "" },
        "KIND",
        "PID",
        "HELD FOR",
    );
    let mut unreadable = 0;
    let mut bounds: Vec<Bound> = Vec::new();
    for e in &r.locks {
        let state = e.state.name();
        for (n, h) in e.holders.iter().enumerate() {
            let (pid, cmd) = who(&h.process);
            let (name, st, vc) = if n == 0 {
                (e.name.as_str(), state, valid_col(Some(e)))
            } else {
                ("", "", valid_col(None))
            };
            let held = match h.held_at_most_ms {
                Some(ms) => format!("≤ {}", human(ms / 1e3)),
                None => "?".to_string(),
            };
            if let Some(b) = h.held_bound {
                if !bounds.contains(&b) {
                    bounds.push(b);
                }
            }
            let _ = writeln!(
                s,
                "{name:<width$}  {st:<7}  {vc}{:<5}  {pid:>7}  {held:<9}  {cmd}",
                h.process.kind
            );
        }
        if e.holders.is_empty() {
            let note = match (&e.invalid, e.state) {
                (Some(why), _) => why.clone(),
                (None, State::Stale) => format!(
                    "deletion token present (size {}): left by a holder that deleted it",
                    e.size
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{:<width$}  {state:<7}  {}{:<5}  {:>7}  {:<9}  {note}",
                e.name,
                valid_col(Some(e)),
                "-",
                "-",
                "-"
            );
        }
        if e.leak_suspected == Some(true) {
            let (what, should) = if e.path_valid == Some(true) {
                (
                    "this path is already valid (registered in the store database)",
                    "A build that has finished should have released it (the symptom of Guix bug #31785)",
                )
            } else {
                (
                    "this path's build failed (listed in the store database's FailedPaths)",
                    "A goal that stopped at a failed build should have released it (a cached failure \
                     under guix-daemon --cache-failures)",
                )
            };
            let _ = write!(
                s,
                "{pad:<width$}  LEAK SUSPECTED: {what},\n\
                 {pad:<width$}  yet its lock is still held by {}.\n\
                 {pad:<width$}  {should};\n\
                 {pad:<width$}  clients waiting for this path wait until that process exits or \
                 releases the lock.\n",
                holders(e),
            );
        }
        if e.mixed_kinds {
            let _ = writeln!(
                s,
                "{pad:<width$}  WARNING: held through flock AND through fcntl record locks at once. \
                 These do not exclude each other,\n{pad:<width$}  so both holders think they own the \
                 path: this store is used with two lock protocols (e.g. Nix's flock and \
                 guix-daemon's fcntl)."
            );
        }
        if e.state == State::Held && e.size != 0 {
            let _ = writeln!(
                s,
                "{pad:<width$}  (deletion token present: being deleted by its holder)"
            );
        }
        for w in &e.waiters {
            let (pid, cmd) = who(&w.process);
            let blocked = match w.blocked_ms {
                Some(ms) => format!("blocked {}", human(ms / 1e3)),
                None => "blocked for ? (not exposed by /proc)".to_string(),
            };
            let _ = writeln!(
                s,
                "{:<width$}  {:<7}  {}{:<5}  {pid:>7}  {:<9}  {cmd}  [{blocked}]",
                "  waiter",
                "",
                valid_col(None),
                w.process.kind,
                ""
            );
        }
        let unidentified = e
            .holders
            .iter()
            .map(|h| &h.process)
            .chain(e.waiters.iter().map(|w| &w.process))
            .any(|p| p.pid.is_none());
        if unidentified {
            unreadable = unreadable.max(e.unreadable_processes);
        }
    }
    let m = &r.summary;
    let _ = writeln!(
        s,
        "{}: {} lock files: {} held, {} free, {} stale{}; {} waiting",
        r.store,
        m.total,
        m.held,
        m.free,
        m.stale,
        if m.invalid > 0 {
            format!(", {} invalid", m.invalid)
        } else {
            String::new()
        },
        m.waiters
    );
    if !bounds.is_empty() {
        let words: Vec<&str> = bounds.iter().map(|b| b.words()).collect();
        let _ = writeln!(
            s,
            "HELD FOR is an upper bound ({}): the kernel does not record when a lock was granted",
            words.join("; or ")
        );
    }
    if m.mixed_kinds > 0 {
        let _ = writeln!(
            s,
            "WARNING: {} lock file(s) held through two kinds of lock at once (flock and \
             fcntl); use one lock backend per store",
            m.mixed_kinds
        );
    }
    if let Some(db) = &r.db {
        let held_on = |valid: bool| {
            r.locks
                .iter()
                .filter(|e| e.leak_suspected == Some(true) && (e.path_valid == Some(true)) == valid)
                .count()
        };
        let (valid, failed) = (held_on(true), held_on(false));
        if valid > 0 {
            let _ = writeln!(
                s,
                "WARNING: {valid} lock(s) held on paths that are already valid in {db}: finished \
                 builds that kept their locks (Guix bug #31785; see LEAK SUSPECTED above). Clients \
                 waiting for those paths wait until the holding process exits."
            );
        }
        if failed > 0 {
            let _ = writeln!(
                s,
                "WARNING: {failed} lock(s) held on paths whose build failed (FailedPaths in {db}): \
                 goals that stopped at a failure and kept their locks (see LEAK SUSPECTED above). \
                 Clients waiting for those paths wait until the holding process exits."
            );
        }
        if valid + failed == 0 {
            let _ = writeln!(
                s,
                "no lock is held on a path that is already valid or failed in {db}"
            );
        }
    }
    if unreadable > 0 {
        let _ = writeln!(
            s,
            "some holders or waiters could not be identified: {unreadable} processes were not \
             readable (run as root to see them)"
        );
    }
    if let Some(c) = &r.check {
        if r.db.is_none() {
            let _ = writeln!(
                s,
                "check: no --db, so locks outliving their builds were not looked for"
            );
        }
        if c.ok {
            let _ = writeln!(s, "check: OK");
        } else {
            for p in &c.problems {
                let _ = writeln!(s, "check: PROBLEM: {p}");
            }
            let _ = writeln!(s, "check: {} problem(s)", c.problems.len());
        }
    }
    // Empty last columns leave trailing blanks.
    s.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}
