//! Who holds a lock file, and who waits for it, as far as `/proc` can tell.
//!
//! Neither Nix nor Guix can say who holds a store path's lock. The kernel
//! can, and this module asks it:
//!
//! * `/proc/locks` lists every file lock in the system with its kind (POSIX,
//!   OFD, flock), the pid for POSIX and flock locks, and the device and inode
//!   of the locked file; blocked requests (waiters) follow their blocker on
//!   lines marked `->`. Entries are matched to a lock file by the device
//!   (major:minor) and inode that `stat` gives for it.
//! * OFD locks belong to an open file description, not a process, so
//!   `/proc/locks` shows them with pid −1. Their holders are found by
//!   scanning `/proc/*/fd/*` for descriptors of the same file and reading the
//!   `lock:` lines of their `/proc/PID/fdinfo/FD`, which list the locks held
//!   through that very description. Every process sharing the description
//!   (e.g. after `fork`) is named.
//! * A waiter's pid (and, for OFD waiters, the waiter itself) is found in
//!   `/proc/PID/task/TID/syscall`: a thread blocked in `fcntl(fd, F_SETLKW
//!   or F_OFD_SETLKW)` or `flock(fd, LOCK_EX)` on a descriptor of the file.
//!   How long it has been blocked is the time since that thread last ran
//!   (`se.exec_start` in `/proc/PID/task/TID/sched`, in the scheduler clock,
//!   which is `CLOCK_MONOTONIC` on Linux): a thread blocked in the kernel
//!   does not run, so this is the length of the current wait, unless a
//!   signal interrupted and restarted it. The kernel records no wait start
//!   time anywhere else; when these files are not readable the duration is
//!   unknown ([`Party::blocked_for`] is `None`).
//!
//! Processes come and go during the scan: a vanished process or descriptor
//! is skipped; one whose files are not readable (another user's, without
//! privilege) is counted in [`LockInfo::unreadable`], so a caller can say
//! "holder not found (N processes not readable)" instead of guessing.
//!
//! Cost: one read of `/proc/locks`; the descriptor scan (one `stat` per open
//! descriptor in the system: milliseconds, tens of them on a loaded machine
//! with many processes) happens only when an OFD lock or a waiter needs it,
//! and at most once per [`Inspector`]. The diagnostics helpers
//! ([`describe_holders`], [`holder_pids`]), which a scheduler calls whenever
//! a goal starts waiting for another process's lock, reuse the descriptor
//! table of a scan younger than [`SCAN_REUSE`] and rescan at most once per
//! [`SCAN_REUSE`] (when the table lacks the holder), so that many goals
//! starting to wait at once cost one scan, not one each. The lock entries,
//! fdinfo lines and blocked threads are always read afresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kind of a kernel file lock, as `/proc/locks` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKind {
    /// A classic POSIX `fcntl` record lock (`F_SETLK`), owned by a process:
    /// what guix-daemon's C++ `PathLocks` takes.
    Posix,
    /// An open-file-description lock (`F_OFD_SETLK`), goalkeeper's default.
    Ofd,
    /// A `flock(2)` lock, as current Nix takes.
    Flock,
    /// Anything else (leases, delegations, `ACCESS` entries).
    Other,
}

impl LockKind {
    /// The name used in goalkeeper's output: `posix`, `ofd`, `flock`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Posix => "posix",
            LockKind::Ofd => "ofd",
            LockKind::Flock => "flock",
            LockKind::Other => "other",
        }
    }

    fn from_proc(word: &str) -> LockKind {
        match word {
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            "FLOCK" => LockKind::Flock,
            _ => LockKind::Other,
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of `/proc/locks` (or a `lock:` line of an fdinfo file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLock {
    /// The entry's ordinal; a waiter carries the ordinal of the lock it waits behind.
    pub id: u64,
    /// The lock's kind.
    pub kind: LockKind,
    /// `true` for a write (exclusive) lock, `false` for a read (shared) one.
    pub write: bool,
    /// The pid the kernel reports: `None` for OFD locks (shown as −1).
    pub pid: Option<u32>,
    /// The device major number of the locked file's file system.
    pub major: u32,
    /// The device minor number.
    pub minor: u32,
    /// The locked file's inode number.
    pub inode: u64,
    /// `true` for a blocked request (a `->` line): a waiter, not a holder.
    pub waiter: bool,
}

impl KernelLock {
    /// Parses one line; `None` for lines that are not lock entries.
    ///
    /// The format is the kernel's `lock_get_status`:
    /// `"3: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"`, with `"-> "`
    /// (indented by nesting depth) before the kind on blocked requests.
    pub fn parse(line: &str) -> Option<KernelLock> {
        let mut words = line.split_whitespace();
        let id = words.next()?.strip_suffix(':')?.parse().ok()?;
        let mut word = words.next()?;
        let waiter = word == "->";
        if waiter {
            word = words.next()?;
        }
        let kind = LockKind::from_proc(word);
        let rest: Vec<&str> = words.collect();
        // The device:inode field is the only `x:y:z` word; the pid and the
        // access type come just before it.
        let at = rest.iter().position(|w| w.matches(':').count() == 2)?;
        if at < 2 {
            return None;
        }
        let mut dev = rest[at].split(':');
        let major = u32::from_str_radix(dev.next()?, 16).ok()?;
        let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
        let inode = dev.next()?.parse().ok()?;
        let pid: i64 = rest[at - 1].parse().ok()?;
        let write = rest[at - 2] == "WRITE";
        Some(KernelLock {
            id,
            kind,
            write,
            pid: u32::try_from(pid).ok().filter(|&p| p > 0),
            major,
            minor,
            inode,
            waiter,
        })
    }

    fn file(&self) -> FileKey {
        FileKey {
            major: self.major,
            minor: self.minor,
            inode: self.inode,
        }
    }
}

/// Parses the text of `/proc/locks`, skipping lines it does not understand.
pub fn parse_proc_locks(text: &str) -> Vec<KernelLock> {
    text.lines().filter_map(KernelLock::parse).collect()
}

/// Reads and parses `/proc/locks`.
///
/// The kernel produces that file a page at a time, and an entry removed
/// between two pages shifts the following ones, so on a busy system one
/// read can miss a lock that was held throughout. The file is therefore
/// read twice and the two lists merged (an entry seen in either read is
/// kept, as many times as the read that saw it more often).
pub fn read_proc_locks() -> io::Result<Vec<KernelLock>> {
    let first = parse_proc_locks(&fs::read_to_string("/proc/locks")?);
    let second = parse_proc_locks(&fs::read_to_string("/proc/locks")?);
    Ok(merge_reads(first, second))
}

/// The union, as multisets, of two readings of the lock list (entries
/// compared without their ordinal, which differs between readings).
fn merge_reads(first: Vec<KernelLock>, second: Vec<KernelLock>) -> Vec<KernelLock> {
    let mut seen: HashMap<(LockKind, bool, Option<u32>, FileKey, bool), usize> = HashMap::new();
    for l in &first {
        *seen
            .entry((l.kind, l.write, l.pid, l.file(), l.waiter))
            .or_default() += 1;
    }
    let mut out = first;
    for l in second {
        let n = seen
            .entry((l.kind, l.write, l.pid, l.file(), l.waiter))
            .or_default();
        if *n == 0 {
            out.push(l);
        } else {
            *n -= 1;
        }
    }
    out
}

/// A file as the kernel's lock list names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FileKey {
    major: u32,
    minor: u32,
    inode: u64,
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> FileKey {
        let dev = meta.dev();
        FileKey {
            major: libc::major(dev),
            minor: libc::minor(dev),
            inode: meta.ino(),
        }
    }
}

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

/// A descriptor of some process open on one of the files of interest.
#[derive(Clone, Debug)]
struct OpenFd {
    pid: u32,
    /// The `lock:` lines of its fdinfo: locks held through this description.
    locks: Vec<KernelLock>,
}

/// A thread blocked in a lock call on one of the files of interest.
#[derive(Clone, Debug)]
struct Blocked {
    pid: u32,
    kind: LockKind,
    blocked_for: Option<Duration>,
}

/// The result of the descriptor scan.
#[derive(Debug, Default)]
struct Scan {
    fds: HashMap<FileKey, Vec<OpenFd>>,
    blocked: HashMap<FileKey, Vec<Blocked>>,
    unreadable: usize,
}

/// One consistent look at the system's locks: `/proc/locks` is read once,
/// the descriptor scan is done at most once, and any number of lock files
/// can then be inspected against them.
#[derive(Debug)]
pub struct Inspector {
    locks: Vec<KernelLock>,
    by_file: HashMap<FileKey, Vec<usize>>,
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
        let mut by_file: HashMap<FileKey, Vec<usize>> = HashMap::new();
        for (i, l) in locks.iter().enumerate() {
            by_file.entry(l.file()).or_default().push(i);
        }
        Inspector {
            locks,
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

    /// The kernel entries this inspector works from.
    pub fn kernel_locks(&self) -> &[KernelLock] {
        &self.locks
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
            .filter_map(|m| m.as_ref().ok().map(FileKey::of))
            .collect();
        self.ensure_scan(&keys);
        metas
            .into_iter()
            .map(|m| m.map(|m| self.info_for(FileKey::of(&m))))
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
                self.by_file.get(k).is_some_and(|ix| {
                    ix.iter().any(|&i| {
                        let l = &self.locks[i];
                        l.pid.is_none() || l.waiter
                    })
                })
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
        let (scan, rescan) = match recent {
            Some(t) => {
                let scan = inspect_fds(t, &needed);
                let rescan = needed
                    .iter()
                    .any(|k| !self.resolved_by(k, &scan) && !t.misses.contains(k));
                (scan, rescan)
            }
            None => (Scan::default(), true),
        };
        self.scan = Some(if rescan {
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
        } else {
            scan
        });
    }

    /// `true` if `scan` accounts for every OFD holder of `key`.
    fn resolved_by(&self, key: &FileKey, scan: &Scan) -> bool {
        let ofd_held = self.by_file.get(key).is_some_and(|ix| {
            ix.iter()
                .any(|&i| !self.locks[i].waiter && self.locks[i].pid.is_none())
        });
        !ofd_held
            || scan.fds.get(key).is_some_and(|fds| {
                fds.iter()
                    .any(|f| f.locks.iter().any(|l| !l.waiter && l.kind == LockKind::Ofd))
            })
    }

    fn info_for(&mut self, key: FileKey) -> LockInfo {
        let mut info = LockInfo::default();
        let entries: Vec<KernelLock> = self
            .by_file
            .get(&key)
            .map(|ix| ix.iter().map(|&i| self.locks[i].clone()).collect())
            .unwrap_or_default();
        let empty_fds = Vec::new();
        let empty_blocked = Vec::new();
        let (fds, blocked, unreadable) = match &self.scan {
            Some(s) => (
                s.fds.get(&key).unwrap_or(&empty_fds).clone(),
                s.blocked.get(&key).unwrap_or(&empty_blocked).clone(),
                s.unreadable,
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        let mut unresolved = false;
        // Holders. POSIX and flock entries name their pid. OFD entries
        // (pid -1) are matched, per kind and mode, with the descriptors
        // whose fdinfo lists such a lock: each process sharing a holding
        // description is a holder.
        let mut ofd_groups: BTreeMap<(LockKind, bool), usize> = BTreeMap::new();
        for l in entries.iter().filter(|l| !l.waiter) {
            match l.pid {
                Some(pid) => info.holders.push(self.party(l, pid)),
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
            let template = KernelLock {
                id: 0,
                kind,
                write,
                pid: None,
                major: key.major,
                minor: key.minor,
                inode: key.inode,
                waiter: false,
            };
            if pids.is_empty() {
                unresolved = true;
                for _ in 0..count {
                    info.holders.push(Party {
                        kind,
                        write,
                        pid: None,
                        command: None,
                        blocked_for: None,
                    });
                }
            }
            for pid in pids {
                info.holders.push(self.party(&template, pid));
            }
        }
        // Waiters: match each `->` entry with a thread found blocked on the
        // file, by pid when the kernel gives it, else by kind.
        let mut pool = blocked;
        for l in entries.iter().filter(|l| l.waiter) {
            let found = pool
                .iter()
                .position(|b| b.kind == l.kind && (l.pid.is_none() || l.pid == Some(b.pid)));
            let (pid, blocked_for) = match found {
                Some(i) => {
                    let b = pool.remove(i);
                    (Some(b.pid), b.blocked_for)
                }
                None => (l.pid, None),
            };
            if pid.is_none() {
                unresolved = true;
            }
            let mut p = match pid {
                Some(pid) => self.party(l, pid),
                None => Party {
                    kind: l.kind,
                    write: l.write,
                    pid: None,
                    command: None,
                    blocked_for: None,
                },
            };
            p.blocked_for = blocked_for;
            info.waiters.push(p);
        }
        if unresolved {
            info.unreadable = unreadable;
        }
        info
    }

    fn party(&mut self, l: &KernelLock, pid: u32) -> Party {
        let command = self
            .commands
            .entry(pid)
            .or_insert_with(|| command_of(pid))
            .clone();
        Party {
            kind: l.kind,
            write: l.write,
            pid: Some(pid),
            command,
            blocked_for: None,
        }
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
    Inspector::with_recent_scan()
        .and_then(|mut i| i.inspect(lock_file))
        .map(|i| i.holder_pids())
        .unwrap_or_default()
}

/// A short description of who holds `lock_file`, for "waiting for lock"
/// diagnostics: `"pid 1234 (guix-daemon …), ofd lock"`, several separated
/// by `"; "`; `None` when nobody holds it or nothing can be told. May
/// reuse a recent descriptor table ([`Inspector::with_recent_scan`]), so it
/// is cheap enough to call whenever a goal starts waiting.
pub fn describe_holders(lock_file: &Path) -> Option<String> {
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
    Some(s.join("; "))
}

/// The command of `pid`: its command line with arguments joined by spaces,
/// or `[comm]` for processes without one (kernel threads, zombies).
pub fn command_of(pid: u32) -> Option<String> {
    if let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) {
        let words: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if !words.is_empty() {
            return Some(words.join(" "));
        }
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("[{}]", comm.trim_end()))
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// How long the diagnostics helpers reuse a descriptor table (they rescan
/// sooner for a holder the table lacks).
pub const SCAN_REUSE: Duration = Duration::from_secs(2);

/// The last full descriptor table, for [`Inspector::with_recent_scan`].
static FD_TABLE: Mutex<Option<FdTable>> = Mutex::new(None);

/// Where files are open: `(pid, fd)` per file, from one walk of `/proc/*/fd`.
#[derive(Debug)]
struct FdTable {
    taken: Instant,
    open: HashMap<FileKey, Vec<(u32, i32)>>,
    unreadable: usize,
    /// Files whose OFD holder this very scan could not find (unreadable
    /// processes): rescanning for them before the table expires is useless.
    misses: BTreeSet<FileKey>,
}

/// Walks every process's descriptors (`stat` of each `/proc/PID/fd/N`,
/// which follows the magic link to the open file, even a deleted one) and
/// records the regular files among `wanted` (all of them for `None`).
/// Vanished processes are skipped; unreadable ones counted.
fn list_fds(wanted: Option<&BTreeSet<FileKey>>) -> FdTable {
    let mut table = FdTable {
        taken: Instant::now(),
        open: HashMap::new(),
        unreadable: 0,
        misses: BTreeSet::new(),
    };
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return table;
    };
    for ent in proc_dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(d) => d,
            Err(e) => {
                if is_denied(&e) {
                    table.unreadable += 1;
                }
                continue; // vanished, or a permission problem
            }
        };
        for fd_ent in fds.flatten() {
            let Some(fd) = fd_ent
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(meta) = fs::metadata(fd_ent.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = FileKey::of(&meta);
            if wanted.is_none_or(|w| w.contains(&key)) {
                table.open.entry(key).or_default().push((pid, fd));
            }
        }
    }
    table
}

/// Reads, afresh, the fdinfo lock lines of the descriptors `table` lists
/// for the files in `wanted`, then the threads of their processes for
/// blocked lock calls. Descriptors closed since the table was taken are
/// skipped.
fn inspect_fds(table: &FdTable, wanted: &BTreeSet<FileKey>) -> Scan {
    let mut scan = Scan {
        unreadable: table.unreadable,
        ..Scan::default()
    };
    let mut matched: BTreeMap<u32, Vec<(i32, FileKey)>> = BTreeMap::new();
    for key in wanted {
        for &(pid, fd) in table.open.get(key).into_iter().flatten() {
            // Still open on this file? (From a reused table, the number may
            // have been closed or reused since.)
            match fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
                Ok(m) if FileKey::of(&m) == *key => {}
                _ => continue,
            }
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
                continue; // closed, or the process is gone
            };
            let locks = text
                .lines()
                .filter_map(|l| l.strip_prefix("lock:"))
                .filter_map(KernelLock::parse)
                .filter(|l| l.file() == *key) // the number may have been reused
                .collect();
            scan.fds
                .entry(*key)
                .or_default()
                .push(OpenFd { pid, locks });
            matched.entry(pid).or_default().push((fd, *key));
        }
    }
    let now = monotonic();
    for (pid, fds) in matched {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((fd, kind)) = blocked_lock_call(pid, tid) else {
                continue;
            };
            let Some(&(_, key)) = fds.iter().find(|(f, _)| *f == fd) else {
                continue;
            };
            let blocked_for = last_ran(pid, tid).and_then(|t| now.checked_sub(t));
            scan.blocked.entry(key).or_default().push(Blocked {
                pid,
                kind,
                blocked_for,
            });
        }
    }
    scan
}

/// If thread `tid` of `pid` is blocked in a blocking lock call, the
/// descriptor and the kind of lock it waits for.
fn blocked_lock_call(pid: u32, tid: u32) -> Option<(i32, LockKind)> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut w = text.split_whitespace();
    let nr: i64 = w.next()?.parse().ok()?;
    let arg = |s: Option<&str>| -> Option<u64> {
        u64::from_str_radix(s?.trim_start_matches("0x"), 16).ok()
    };
    let fd = arg(w.next())? as i32;
    let op = arg(w.next())? as i64;
    if nr == libc::SYS_fcntl {
        match op as i32 {
            libc::F_OFD_SETLKW => Some((fd, LockKind::Ofd)),
            libc::F_SETLKW => Some((fd, LockKind::Posix)),
            _ => None,
        }
    } else if nr == libc::SYS_flock
        && op as i32 & libc::LOCK_NB == 0
        && op as i32 & libc::LOCK_UN == 0
    {
        Some((fd, LockKind::Flock))
    } else {
        None
    }
}

/// When thread `tid` last ran, on the scheduler clock (`CLOCK_MONOTONIC`).
fn last_ran(pid: u32, tid: u32) -> Option<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    let line = text.lines().find(|l| l.starts_with("se.exec_start"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(ms / 1000.0))
}

fn monotonic() -> Duration {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let text = "\
1: POSIX  ADVISORY  WRITE 1234 fe:00:10010885 0 EOF
1: -> POSIX  ADVISORY  WRITE 1240 fe:00:10010885 0 EOF
2: OFDLCK ADVISORY  WRITE -1 08:11:77 0 EOF
2:  -> OFDLCK ADVISORY  WRITE -1 08:11:77 0 EOF
3: FLOCK  ADVISORY  READ 9315 fe:00:10010884 0 EOF
4: LEASE  ACTIVE    READ 99 00:2f:5 0 EOF
garbage line
";
        let v = parse_proc_locks(text);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].kind, LockKind::Posix);
        assert_eq!(v[0].pid, Some(1234));
        assert!(v[0].write && !v[0].waiter);
        assert_eq!((v[0].major, v[0].minor, v[0].inode), (0xfe, 0, 10010885));
        assert!(v[1].waiter);
        assert_eq!(v[1].id, 1);
        assert_eq!(v[2].kind, LockKind::Ofd);
        assert_eq!(v[2].pid, None);
        assert_eq!((v[2].major, v[2].minor), (8, 0x11));
        assert!(v[3].waiter && v[3].kind == LockKind::Ofd);
        assert_eq!(v[4].kind, LockKind::Flock);
        assert!(!v[4].write);
        assert_eq!(v[5].kind, LockKind::Other);
        let twice = merge_reads(parse_proc_locks(text), parse_proc_locks(text));
        assert_eq!(twice.len(), 6, "the same entries read twice are kept once");
        let missed_one = merge_reads(v[1..].to_vec(), v[..5].to_vec());
        assert_eq!(missed_one.len(), 6, "an entry missed by one read is kept");
        let fdinfo_line = "\t1: OFDLCK ADVISORY  WRITE -1 08:11:77 0 EOF";
        assert_eq!(KernelLock::parse(fdinfo_line).unwrap().inode, 77);
    }

    #[test]
    fn entries_are_matched_to_files_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("gk-holder-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.lock"), dir.join("b.lock"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let key = |p: &Path| FileKey::of(&fs::metadata(p).unwrap());
        let (ka, kb) = (key(&a), key(&b));
        let entry = |k: FileKey, kind, pid, waiter| KernelLock {
            id: 1,
            kind,
            write: true,
            pid,
            major: k.major,
            minor: k.minor,
            inode: k.inode,
            waiter,
        };
        // Pids no process has (above pid_max), so the scan finds nothing for them.
        let mut i = Inspector::from_locks(vec![
            entry(ka, LockKind::Posix, Some(u32::MAX - 1), false),
            entry(ka, LockKind::Posix, Some(u32::MAX - 2), true),
            entry(kb, LockKind::Ofd, None, false),
            // Same inode, another device: not b's.
            KernelLock {
                minor: kb.minor.wrapping_add(1),
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
