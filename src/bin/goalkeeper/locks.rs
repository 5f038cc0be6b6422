//! `goalkeeper locks --store DIR [--json]`: every lock file in the store,
//! whether it is held, free or stale, by whom, and who waits.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use goalkeeper::inspect::{Inspector, LockInfo, LockKind, Party};
use goalkeeper::lock::LOCK_SUFFIX;

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
    let mut json = false;
    let mut i = 0;
    while i < argv.len() {
        if let Some(v) = args::value(argv, &mut i, "--store")? {
            store = Some(v);
        } else if argv[i] == "--json" {
            json = true;
        } else {
            return Err(usage(format!("locks: unexpected argument {:?}", argv[i])));
        }
        i += 1;
    }
    let store = args::store(store)?;
    let entries = collect(&store)?;
    if json {
        print!("{}", to_json(&store, &entries).render());
    } else {
        print!("{}", to_text(&store, &entries));
    }
    Ok(0)
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

fn to_text(store: &Path, entries: &[Entry]) -> String {
    let mut s = String::new();
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(9);
    s.push_str(&format!(
        "{:<width$}  {:<7}  {:<5}  {:>7}  COMMAND\n",
        "LOCK FILE", "STATE", "KIND", "PID"
    ));
    let mut counts = [0usize; 4];
    let mut waiters = 0;
    let mut unreadable = 0;
    let mut mixed = 0;
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
                    let (name, st) = if n == 0 {
                        (e.name.as_str(), state)
                    } else {
                        ("", "")
                    };
                    s.push_str(&format!(
                        "{name:<width$}  {st:<7}  {:<5}  {pid:>7}  {cmd}\n",
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
                    "{:<width$}  {state:<7}  {:<5}  {:>7}  {note}\n",
                    e.name, "-", "-"
                ));
            }
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
                "{:<width$}  {:<7}  {:<5}  {pid:>7}  {cmd}  [{}]\n",
                "  waiter",
                "",
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

fn to_json(store: &Path, entries: &[Entry]) -> Json {
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
            ])
        })
        .collect();
    let count = |st: &str| Json::Int(entries.iter().filter(|e| e.state() == st).count() as i64);
    Json::Obj(vec![
        ("store", Json::Str(store.to_string_lossy().into_owned())),
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
            ]),
        ),
    ])
}
