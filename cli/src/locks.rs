//! `goalkeeper locks --store DIR [--db FILE] [--json]`: every lock file in
//! the store, whether it is held, free or stale, by whom, and who waits.
//!
//! With `--db` (the store's database, e.g. `/var/guix/db/db.sqlite`), each
//! lock file's store path is looked up in `ValidPaths`, in one read
//! transaction: a lock held on a path that is already valid is flagged as a
//! suspected leak, the symptom of Guix bug #31785 (a finished goal that
//! still holds its lock, and every client waiting for that path waits until
//! the holder exits).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use goalkeeper::inspect::{Inspector, LockInfo, LockKind, Party};
use goalkeeper::lock::LOCK_SUFFIX;
use goalkeeper::store_db::StoreDb;

use crate::args::{self, fail, usage, Failure};
use crate::json::Json;

/// One lock file and what the kernel says about it.
struct Entry {
    name: String,
    path: PathBuf,
    size: u64,
    inode: u64,
    /// Why the file is not usable as a lock file (not a regular file), if so.
    invalid: Option<String>,
    info: LockInfo,
    /// Whether its store path is registered in the store database (`None`
    /// without `--db`).
    path_valid: Option<bool>,
}

impl Entry {
    /// `held` if a kernel lock is on it; otherwise `stale` if it carries the
    /// deletion token (size != 0: a holder deleted it and it was left in the
    /// directory), `invalid` if it is not a regular file, else `free`.
    fn state(&self) -> &'static str {
        if self.info.is_held() {
            "held"
        } else if self.invalid.is_some() {
            "invalid"
        } else if self.size != 0 {
            "stale"
        } else {
            "free"
        }
    }

    /// The kind of the kernel lock on it, if held.
    fn kind(&self) -> Option<&'static str> {
        self.info.holders.first().map(|h| h.kind.name())
    }

    /// `Some(true)` when it is held while its store path is already valid:
    /// the build finished, yet its lock was not released (#31785). `None`
    /// without `--db`.
    fn leak_suspected(&self) -> Option<bool> {
        self.path_valid.map(|v| v && self.info.is_held())
    }

    /// `true` when it is held at once through `flock` and through a record
    /// lock (POSIX or OFD). Linux does not make those exclude each other, so
    /// two processes each believe they hold the path: the store is used by
    /// two lock protocols (say Nix's flock and guix-daemon's fcntl).
    fn mixed_kinds(&self) -> bool {
        let kinds = || self.info.holders.iter().map(|h| h.kind);
        kinds().any(|k| k == LockKind::Flock)
            && kinds().any(|k| matches!(k, LockKind::Posix | LockKind::Ofd))
    }
}

pub(crate) fn main(argv: &[std::ffi::OsString]) -> Result<u8, Failure> {
    let mut store = None;
    let mut db_file = None;
    let mut json = false;
    let mut i = 0;
    while i < argv.len() {
        if let Some(v) = args::value(argv, &mut i, "--store")? {
            store = Some(v);
        } else if let Some(v) = args::value(argv, &mut i, "--db")? {
            db_file = Some(std::path::PathBuf::from(v));
        } else if argv[i] == "--json" {
            json = true;
        } else {
            return Err(usage(format!("locks: unexpected argument {:?}", argv[i])));
        }
        i += 1;
    }
    let store = args::store(store)?;
    // Opened before the store is read: a wrong --db is an error at once.
    let db = match &db_file {
        Some(f) => Some(open_db(f)?),
        None => None,
    };
    let mut entries = collect(&store)?;
    if let Some(mut db) = db {
        mark_validity(&store, &mut db, &mut entries)?;
    }
    let db_name = db_file.as_deref();
    if json {
        print!("{}", to_json(&store, db_name, &entries).render());
    } else {
        print!("{}", to_text(&store, db_name, &entries));
    }
    Ok(0)
}

/// Opens the store database, or a failure naming the file and what is wrong.
fn open_db(file: &Path) -> Result<StoreDb, Failure> {
    // A relative name is taken from the current directory, as a shell user
    // expects; the library itself wants an absolute one.
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    StoreDb::open(&abs).map_err(|e| fail(format!("--db: {e}")))
}

/// Looks up every lock file's store path (`<store>/<name without .lock>`)
/// in `ValidPaths`, from one read transaction.
fn mark_validity(store: &Path, db: &mut StoreDb, entries: &mut [Entry]) -> Result<(), Failure> {
    // The store path as the daemon registers it: absolute, with the store
    // directory as given (not resolved: /gnu/store may be a symlink, and the
    // database names paths under /gnu/store).
    let dir = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
    let paths: Vec<PathBuf> = entries
        .iter()
        .map(|e| dir.join(&e.name[..e.name.len() - LOCK_SUFFIX.len()]))
        .collect();
    let valid = db
        .valid_paths(&paths)
        .map_err(|e| fail(format!("--db: {e}")))?;
    for (e, v) in entries.iter_mut().zip(valid) {
        e.path_valid = Some(v);
    }
    Ok(())
}

fn collect(store: &Path) -> Result<Vec<Entry>, Failure> {
    let dir = fs::read_dir(store).map_err(|e| fail(format!("{}: {e}", store.display())))?;
    let mut files: Vec<(String, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (name.ends_with(LOCK_SUFFIX) && name.len() > LOCK_SUFFIX.len())
                .then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    let mut inspector =
        Inspector::new().map_err(|e| fail(format!("cannot read /proc/locks: {e}")))?;
    let infos = inspector.inspect_many(files.iter().map(|(_, p)| p.as_path()));
    let mut out = Vec::new();
    for ((name, path), info) in files.into_iter().zip(infos) {
        // A file deleted between the listing and the look is simply gone.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let invalid = (!meta.file_type().is_file()).then(|| {
            if meta.file_type().is_symlink() {
                "a symbolic link (goalkeeper refuses to follow it)".to_string()
            } else {
                "not a regular file".to_string()
            }
        });
        out.push(Entry {
            name,
            path,
            size: meta.size(),
            inode: meta.ino(),
            invalid,
            info: info.unwrap_or_default(),
            path_valid: None,
        });
    }
    Ok(out)
}

fn who(p: &Party) -> (String, String) {
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

fn blocked(p: &Party) -> String {
    match p.blocked_for {
        Some(d) => format!("blocked {}", human(d.as_secs_f64())),
        None => "blocked for ? (not exposed by /proc)".to_string(),
    }
}

fn human(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else {
        format!("{:.1} min", secs / 60.0)
    }
}

fn to_text(store: &Path, db: Option<&Path>, entries: &[Entry]) -> String {
    let mut s = String::new();
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(9);
    // With --db, a VALID column: is the lock file's store path registered?
    let valid_col = |e: Option<&Entry>| match (db, e.and_then(|e| e.path_valid)) {
        (None, _) => String::new(),
        (Some(_), Some(true)) => format!("{:<5}  ", "yes"),
        (Some(_), Some(false)) => format!("{:<5}  ", "no"),
        (Some(_), None) => format!("{:<5}  ", ""),
    };
    s.push_str(&format!(
        "{:<width$}  {:<7}  {}{:<5}  {:>7}  COMMAND\n",
        "LOCK FILE",
        "STATE",
        if db.is_some() { "VALID  " } else { "" },
        "KIND",
        "PID"
    ));
    let mut counts = [0usize; 4];
    let mut waiters = 0;
    let mut unreadable = 0;
    let mut mixed = 0;
    let mut leaks = 0;
    for e in entries {
        let state = e.state();
        counts[match state {
            "held" => 0,
            "free" => 1,
            "stale" => 2,
            _ => 3,
        }] += 1;
        match e.info.holders.first() {
            Some(_) => {
                for (n, h) in e.info.holders.iter().enumerate() {
                    let (pid, cmd) = who(h);
                    let (name, st, vc) = if n == 0 {
                        (e.name.as_str(), state, valid_col(Some(e)))
                    } else {
                        ("", "", valid_col(None))
                    };
                    s.push_str(&format!(
                        "{name:<width$}  {st:<7}  {vc}{:<5}  {pid:>7}  {cmd}\n",
                        h.kind.name()
                    ));
                }
            }
            None => {
                let note = match (&e.invalid, state) {
                    (Some(why), _) => why.clone(),
                    (None, "stale") => format!(
                        "deletion token present (size {}): left by a holder that deleted it",
                        e.size
                    ),
                    _ => String::new(),
                };
                s.push_str(&format!(
                    "{:<width$}  {state:<7}  {}{:<5}  {:>7}  {note}\n",
                    e.name,
                    valid_col(Some(e)),
                    "-",
                    "-"
                ));
            }
        }
        if e.leak_suspected() == Some(true) {
            leaks += 1;
            let holders: Vec<String> = e
                .info
                .holders
                .iter()
                .map(|h| {
                    let (pid, cmd) = who(h);
                    format!("pid {pid} ({cmd})")
                })
                .collect();
            let pad = "";
            s.push_str(&format!(
                "{pad:<width$}  LEAK SUSPECTED: this path is already valid (registered in the \
                 store database),\n\
                 {pad:<width$}  yet its lock is still held by {}.\n\
                 {pad:<width$}  A build that has finished should have released it (the symptom \
                 of Guix bug #31785);\n\
                 {pad:<width$}  clients waiting for this path wait until that process exits or \
                 releases the lock.\n",
                holders.join(", "),
            ));
        }
        if e.mixed_kinds() {
            mixed += 1;
            s.push_str(&format!(
                "{:<width$}  WARNING: held through flock AND through fcntl record locks at once. \
                 These do not exclude each other,\n{:<width$}  so both holders think they own the \
                 path: this store is used with two lock protocols (e.g. Nix's flock and \
                 guix-daemon's fcntl).\n",
                "", ""
            ));
        }
        if e.info.is_held() && e.size != 0 {
            s.push_str(&format!(
                "{:<width$}  (deletion token present: being deleted by its holder)\n",
                ""
            ));
        }
        for w in &e.info.waiters {
            waiters += 1;
            let (pid, cmd) = who(w);
            s.push_str(&format!(
                "{:<width$}  {:<7}  {}{:<5}  {pid:>7}  {cmd}  [{}]\n",
                "  waiter",
                "",
                valid_col(None),
                w.kind.name(),
                blocked(w)
            ));
        }
        if e.info
            .holders
            .iter()
            .chain(&e.info.waiters)
            .any(|p| p.pid.is_none())
        {
            unreadable = unreadable.max(e.info.unreadable);
        }
    }
    s.push_str(&format!(
        "{}: {} lock files: {} held, {} free, {} stale{}; {} waiting\n",
        store.display(),
        entries.len(),
        counts[0],
        counts[1],
        counts[2],
        if counts[3] > 0 {
            format!(", {} invalid", counts[3])
        } else {
            String::new()
        },
        waiters
    ));
    if mixed > 0 {
        s.push_str(&format!(
            "WARNING: {mixed} lock file(s) held through two kinds of lock at once (flock and \
             fcntl); use one lock backend per store\n"
        ));
    }
    if let Some(db) = db {
        if leaks > 0 {
            s.push_str(&format!(
                "WARNING: {leaks} lock(s) held on paths that are already valid in {}: finished \
                 builds that kept their locks (Guix bug #31785; see LEAK SUSPECTED above). Clients \
                 waiting for those paths wait until the holding process exits.\n",
                db.display()
            ));
        } else {
            s.push_str(&format!(
                "no lock is held on a path that is already valid in {}\n",
                db.display()
            ));
        }
    }
    if unreadable > 0 {
        s.push_str(&format!(
            "some holders or waiters could not be identified: {unreadable} processes were not readable (run as root to see them)\n"
        ));
    }
    s
}

fn party_json(p: &Party, waiter: bool) -> Json {
    let mut v = vec![
        ("pid", Json::from(p.pid)),
        ("command", Json::from(p.command.clone())),
        ("kind", Json::Str(p.kind.name().into())),
        (
            "mode",
            Json::Str(if p.write { "write" } else { "read" }.into()),
        ),
    ];
    if waiter {
        v.push((
            "blocked_ms",
            p.blocked_for
                .map_or(Json::Null, |d| Json::Num(d.as_secs_f64() * 1e3)),
        ));
    }
    Json::Obj(v)
}

fn to_json(store: &Path, db: Option<&Path>, entries: &[Entry]) -> Json {
    let opt_bool = |v: Option<bool>| v.map_or(Json::Null, Json::Bool);
    let locks = entries
        .iter()
        .map(|e| {
            Json::Obj(vec![
                ("name", Json::Str(e.name.clone())),
                ("path", Json::Str(e.path.to_string_lossy().into_owned())),
                ("state", Json::Str(e.state().into())),
                ("kind", e.kind().map_or(Json::Null, |k| Json::Str(k.into()))),
                ("stale_token", Json::Bool(e.size != 0)),
                ("size", Json::Int(e.size as i64)),
                ("inode", Json::Int(e.inode as i64)),
                ("invalid", Json::from(e.invalid.clone())),
                (
                    "holders",
                    Json::Arr(
                        e.info
                            .holders
                            .iter()
                            .map(|p| party_json(p, false))
                            .collect(),
                    ),
                ),
                (
                    "waiters",
                    Json::Arr(e.info.waiters.iter().map(|p| party_json(p, true)).collect()),
                ),
                ("unreadable_processes", Json::Int(e.info.unreadable as i64)),
                ("mixed_kinds", Json::Bool(e.mixed_kinds())),
                ("path_valid", opt_bool(e.path_valid)),
                ("leak_suspected", opt_bool(e.leak_suspected())),
            ])
        })
        .collect();
    let count = |st: &str| Json::Int(entries.iter().filter(|e| e.state() == st).count() as i64);
    let leaks = db.map(|_| {
        entries
            .iter()
            .filter(|e| e.leak_suspected() == Some(true))
            .count() as i64
    });
    Json::Obj(vec![
        ("store", Json::Str(store.to_string_lossy().into_owned())),
        (
            "db",
            Json::from(db.map(|d| d.to_string_lossy().into_owned())),
        ),
        ("locks", Json::Arr(locks)),
        (
            "summary",
            Json::Obj(vec![
                ("total", Json::Int(entries.len() as i64)),
                ("held", count("held")),
                ("free", count("free")),
                ("stale", count("stale")),
                ("invalid", count("invalid")),
                (
                    "waiters",
                    Json::Int(entries.iter().map(|e| e.info.waiters.len()).sum::<usize>() as i64),
                ),
                (
                    "mixed_kinds",
                    Json::Int(entries.iter().filter(|e| e.mixed_kinds()).count() as i64),
                ),
                ("leaks_suspected", leaks.map_or(Json::Null, Json::Int)),
            ]),
        ),
    ])
}
