//! Who holds a lock file and who waits for it: the [`Inspector`] joins the
//! kernel's lock list with the descriptor scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::kernel::{read_proc_locks, KernelLock, LockKind};
use super::key::FileKey;
use super::procfs::{command_of, inspect_fds, list_fds, Scan, FD_TABLE, SCAN_REUSE};

/// A process holding or waiting for a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// The lock's kind.
    pub kind: LockKind,
    /// Exclusive (`true`) or shared.
    pub write: bool,
    /// The process, when known: always for POSIX and flock entries, for OFD
    /// entries when the descriptor scan found it.
    pub pid: Option<u32>,
    /// The process's command line (`/proc/PID/cmdline`, arguments joined by
    /// spaces), or `[comm]` when it has none; `None` if it could not be read.
    pub command: Option<String>,
    /// For a waiter: how long it has been blocked, when knowable (see the
    /// module documentation). Always `None` for holders: the kernel does not
    /// record when a lock was granted.
    pub blocked_for: Option<Duration>,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "unknown process")?,
        }
        if let Some(c) = &self.command {
            write!(f, " ({})", shorten(c, 80))?;
        }
        write!(f, ", {} lock", self.kind)
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// What the kernel says about one lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// Who holds it. Several entries for a shared (read) lock, or for an OFD
    /// lock whose description several processes share after a `fork`.
    pub holders: Vec<Party>,
    /// Who is blocked waiting for it.
    pub waiters: Vec<Party>,
    /// Processes whose descriptors could not be inspected (permission), so
    /// an unidentified holder or waiter may be among them.
    pub unreadable: usize,
}

impl LockInfo {
    /// `true` if some process holds a lock on the file.
    pub fn is_held(&self) -> bool {
        !self.holders.is_empty()
    }

    /// The distinct pids of the holders that could be identified.
    pub fn holder_pids(&self) -> Vec<u32> {
        let s: BTreeSet<u32> = self.holders.iter().filter_map(|p| p.pid).collect();
        s.into_iter().collect()
    }
}

/// One consistent look at the system's locks: `/proc/locks` is read once,
/// the descriptor scan is done at most once, and any number of lock files
/// can then be inspected against them.
#[derive(Debug)]
pub struct Inspector {
    /// The kernel's entries, by locked file.
    by_file: HashMap<FileKey, Vec<KernelLock>>,
    scan: Option<Scan>,
    commands: HashMap<u32, Option<String>>,
    /// Reuse a recent descriptor table (see [`SCAN_REUSE`]).
    reuse_fd_table: bool,
}

impl Inspector {
    /// Reads `/proc/locks`.
    pub fn new() -> io::Result<Inspector> {
        Ok(Inspector::from_locks(read_proc_locks()?))
    }

    /// An inspector over an already parsed lock list (for tests).
    pub fn from_locks(locks: Vec<KernelLock>) -> Inspector {
        let mut by_file: HashMap<FileKey, Vec<KernelLock>> = HashMap::new();
        for l in locks {
            by_file.entry(l.file()).or_default().push(l);
        }
        Inspector {
            by_file,
            scan: None,
            commands: HashMap::new(),
            reuse_fd_table: false,
        }
    }

    /// Like [`Inspector::new`], but the descriptor scan may reuse the table
    /// of a scan younger than [`SCAN_REUSE`] (the cheap mode for
    /// diagnostics; see the module documentation).
    pub fn with_recent_scan() -> io::Result<Inspector> {
        let mut i = Inspector::new()?;
        i.reuse_fd_table = true;
        Ok(i)
    }

    /// Inspects several lock files at once, sharing one descriptor scan.
    /// A file that cannot be `stat`ed (e.g. it vanished) gets the error.
    pub fn inspect_many<'p>(
        &mut self,
        files: impl IntoIterator<Item = &'p Path>,
    ) -> Vec<io::Result<LockInfo>> {
        let metas: Vec<io::Result<fs::Metadata>> =
            files.into_iter().map(fs::symlink_metadata).collect();
        let keys: Vec<FileKey> = metas
            .iter()
            .filter_map(|m| m.as_ref().ok().map(FileKey::of_metadata))
            .collect();
        self.ensure_scan(&keys);
        metas
            .into_iter()
            .map(|m| m.map(|m| self.info_for(FileKey::of_metadata(&m))))
            .collect()
    }

    /// Inspects one lock file.
    pub fn inspect(&mut self, lock_file: &Path) -> io::Result<LockInfo> {
        self.inspect_many([lock_file])
            .pop()
            .unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::NotFound)))
    }

    /// Runs the descriptor scan if any of `keys` needs it: an OFD entry
    /// (pid −1) or a waiter, whose process and wait time only the scan can
    /// tell. Files without kernel entries need no scan.
    fn ensure_scan(&mut self, keys: &[FileKey]) {
        if self.scan.is_some() {
            return;
        }
        let needed: BTreeSet<FileKey> = keys
            .iter()
            .copied()
            .filter(|k| {
                self.by_file
                    .get(k)
                    .is_some_and(|v| v.iter().any(|l| l.pid.is_none() || l.waiter))
            })
            .collect();
        if needed.is_empty() {
            return;
        }
        if !self.reuse_fd_table {
            self.scan = Some(inspect_fds(&list_fds(Some(&needed)), &needed));
            return;
        }
        // A recent table, if any (never wait for the cache: a fork child
        // could otherwise block on a copy locked by a vanished thread).
        let mut cache = FD_TABLE.try_lock().ok();
        let recent = cache
            .as_deref()
            .and_then(|c| c.as_ref())
            .filter(|t| t.taken.elapsed() < SCAN_REUSE);
        // Rescan when there is no recent table, or when it lacks the holder
        // of a file that a full scan has not already failed to explain
        // (a holder that appeared since; not one we may not read).
        let reused = recent.and_then(|t| {
            let scan = inspect_fds(t, &needed);
            let explained = |k| self.resolved_by(k, &scan) || t.misses.contains(k);
            needed.iter().all(explained).then_some(scan)
        });
        self.scan = Some(reused.unwrap_or_else(|| {
            let mut table = list_fds(None);
            let scan = inspect_fds(&table, &needed);
            table.misses = needed
                .iter()
                .filter(|k| !self.resolved_by(k, &scan))
                .copied()
                .collect();
            if let Some(c) = cache.as_deref_mut() {
                *c = Some(table);
            }
            scan
        }));
    }

    /// `true` if `scan` accounts for every OFD holder of `key`.
    fn resolved_by(&self, key: &FileKey, scan: &Scan) -> bool {
        let ofd_held = self
            .by_file
            .get(key)
            .is_some_and(|v| v.iter().any(|l| !l.waiter && l.pid.is_none()));
        !ofd_held
            || scan.fds.get(key).is_some_and(|fds| {
                fds.iter()
                    .any(|f| f.locks.iter().any(|l| !l.waiter && l.kind == LockKind::Ofd))
            })
    }

    fn info_for(&mut self, key: FileKey) -> LockInfo {
        let mut info = LockInfo::default();
        let entries = self.by_file.get(&key).map_or(&[][..], |v| v);
        let scan = self.scan.as_ref();
        let fds = scan.and_then(|s| s.fds.get(&key)).map_or(&[][..], |v| v);
        let mut pool = scan
            .and_then(|s| s.blocked.get(&key))
            .cloned()
            .unwrap_or_default();
        let commands = &mut self.commands;
        let mut party = |kind, write, pid: Option<u32>| Party {
            kind,
            write,
            pid,
            command: pid.and_then(|pid| {
                commands
                    .entry(pid)
                    .or_insert_with(|| command_of(pid))
                    .clone()
            }),
            blocked_for: None,
        };
        let mut unresolved = false;
        // Holders. POSIX and flock entries name their pid. OFD entries
        // (pid -1) are matched, per kind and mode, with the descriptors
        // whose fdinfo lists such a lock: each process sharing a holding
        // description is a holder.
        let mut ofd_groups: BTreeMap<(LockKind, bool), usize> = BTreeMap::new();
        for l in entries.iter().filter(|l| !l.waiter) {
            match l.pid {
                Some(_) => info.holders.push(party(l.kind, l.write, l.pid)),
                None => *ofd_groups.entry((l.kind, l.write)).or_default() += 1,
            }
        }
        for ((kind, write), count) in ofd_groups {
            let pids: BTreeSet<u32> = fds
                .iter()
                .filter(|f| {
                    f.locks
                        .iter()
                        .any(|fl| !fl.waiter && fl.kind == kind && fl.write == write)
                })
                .map(|f| f.pid)
                .collect();
            if pids.is_empty() {
                unresolved = true;
                for _ in 0..count {
                    info.holders.push(party(kind, write, None));
                }
            }
            for pid in pids {
                info.holders.push(party(kind, write, Some(pid)));
            }
        }
        // Waiters: match each `->` entry with a thread found blocked on the
        // file, by pid when the kernel gives it, else by kind.
        for l in entries.iter().filter(|l| l.waiter) {
            let found = pool
                .iter()
                .position(|b| b.kind == l.kind && (l.pid.is_none() || l.pid == Some(b.pid)))
                .map(|i| pool.remove(i));
            let pid = found.as_ref().map_or(l.pid, |b| Some(b.pid));
            unresolved |= pid.is_none();
            info.waiters.push(Party {
                blocked_for: found.and_then(|b| b.blocked_for),
                ..party(l.kind, l.write, pid)
            });
        }
        if unresolved {
            info.unreadable = scan.map_or(0, |s| s.unreadable);
        }
        info
    }
}

/// Everything the kernel says about `lock_file`: holders, waiters, and how
/// long the waiters have waited, as far as `/proc` tells.
pub fn lock_info(lock_file: &Path) -> io::Result<LockInfo> {
    Inspector::new()?.inspect(lock_file)
}

/// The pids holding `lock_file`, best effort: empty if none holds it or if
/// none could be identified. Never fails. May reuse a recent descriptor
/// table ([`Inspector::with_recent_scan`]).
pub fn holder_pids(lock_file: &Path) -> Vec<u32> {
    describe_holders_and_pids(lock_file).map_or(Vec::new(), |(_, pids)| pids)
}

/// A short description of who holds `lock_file`, for "waiting for lock"
/// diagnostics: `"pid 1234 (guix-daemon …), ofd lock"`, several separated
/// by `"; "`; `None` when nobody holds it or nothing can be told. May
/// reuse a recent descriptor table ([`Inspector::with_recent_scan`]), so it
/// is cheap enough to call whenever a goal starts waiting.
pub fn describe_holders(lock_file: &Path) -> Option<String> {
    describe_holders_and_pids(lock_file).map(|(text, _)| text)
}

/// [`describe_holders`], with the distinct pids of the holders that could
/// be identified (sorted; empty if none could), from the same look.
pub fn describe_holders_and_pids(lock_file: &Path) -> Option<(String, Vec<u32>)> {
    let info = Inspector::with_recent_scan()
        .and_then(|mut i| i.inspect(lock_file))
        .ok()?;
    if info.holders.is_empty() {
        return None;
    }
    let mut s: Vec<String> = info.holders.iter().map(|p| p.to_string()).collect();
    if info.holders.iter().any(|p| p.pid.is_none()) && info.unreadable > 0 {
        s.push(format!("{} processes not readable", info.unreadable));
    }
    Some((s.join("; "), info.holder_pids()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_matched_to_files_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("gk-holder-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.lock"), dir.join("b.lock"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let key = |p: &Path| FileKey::of_metadata(&fs::metadata(p).unwrap());
        let (ka, kb) = (key(&a), key(&b));
        let entry = |k: FileKey, kind, pid, waiter| KernelLock {
            id: 1,
            kind,
            write: true,
            pid,
            major: libc::major(k.dev),
            minor: libc::minor(k.dev),
            inode: k.ino,
            waiter,
        };
        // Pids no process has (above pid_max), so the scan finds nothing for them.
        let mut i = Inspector::from_locks(vec![
            entry(ka, LockKind::Posix, Some(u32::MAX - 1), false),
            entry(ka, LockKind::Posix, Some(u32::MAX - 2), true),
            entry(kb, LockKind::Ofd, None, false),
            // Same inode, another device: not b's.
            KernelLock {
                minor: libc::minor(kb.dev).wrapping_add(1),
                ..entry(kb, LockKind::Flock, Some(u32::MAX - 3), false)
            },
        ]);
        let infos = i.inspect_many([a.as_path(), b.as_path(), dir.join("gone.lock").as_path()]);
        let ia = infos[0].as_ref().unwrap();
        assert_eq!(ia.holder_pids(), vec![u32::MAX - 1]);
        assert_eq!(ia.waiters.len(), 1);
        assert_eq!(ia.waiters[0].pid, Some(u32::MAX - 2));
        assert_eq!(ia.waiters[0].blocked_for, None, "no such thread to time");
        let ib = infos[1].as_ref().unwrap();
        assert_eq!(ib.holders.len(), 1, "{ib:?}");
        assert_eq!(ib.holders[0].kind, LockKind::Ofd);
        assert_eq!(
            ib.holders[0].pid, None,
            "no descriptor holds it: unknown, not guessed"
        );
        assert!(
            infos[2].is_err(),
            "a vanished file is an error, not a free lock"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
