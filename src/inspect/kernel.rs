//! The kernel's list of file locks, `/proc/locks`, parsed.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;

use super::key::FileKey;

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
        let kind = match word {
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            "FLOCK" => LockKind::Flock,
            _ => LockKind::Other,
        };
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

    /// The locked file's identity.
    pub fn file(&self) -> FileKey {
        FileKey {
            dev: libc::makedev(self.major, self.minor),
            ino: self.inode,
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
    let key = |l: &KernelLock| (l.kind, l.write, l.pid, l.file(), l.waiter);
    let mut seen = HashMap::new();
    for l in &first {
        *seen.entry(key(l)).or_default() += 1;
    }
    let mut out = first;
    for l in second {
        let n: &mut usize = seen.entry(key(&l)).or_default();
        if *n == 0 {
            out.push(l);
        } else {
            *n -= 1;
        }
    }
    out
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
}
