//! The store the fuzzers lock in: a pool of names with known properties,
//! the model's own path normalisation, and kernel probes that are
//! independent of the library.

use crate::*;
use std::os::unix::io::RawFd;

pub(crate) const PATH_MAX: usize = libc::PATH_MAX as usize;

/// The library's limit on the number of paths in one set.
pub(crate) const MAX_SET_LEN: usize = 1 << 20;

pub(crate) const OFD: u32 = 0;

pub(crate) const FLOCK: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// An ordinary, lockable store path.
    Lockable,
    /// `P.lock` is a directory: `open(O_RDWR)` fails with `EISDIR`.
    IsDir,
    /// `P.lock` is a symlink: `O_NOFOLLOW` refuses it.
    Symlink,
    /// The parent directory does not exist.
    NoDir,
    /// The lock file's name is longer than `NAME_MAX`.
    NameTooLong,
}

/// Pool entries: the name under the store and its class.
pub(crate) fn pool() -> Vec<(Vec<u8>, Class)> {
    vec![
        (b"a".to_vec(), Class::Lockable),
        (b"b".to_vec(), Class::Lockable),
        (b"c".to_vec(), Class::Lockable),
        (b"d\xff\xfe-non-utf8".to_vec(), Class::Lockable),
        (b"e".to_vec(), Class::Lockable),
        // 250 + ".lock" = 255 = NAME_MAX: the longest lockable name.
        (vec![b'n'; 250], Class::Lockable),
        (vec![b'n'; 251], Class::NameTooLong),
        (b"isdir".to_vec(), Class::IsDir),
        (b"sym".to_vec(), Class::Symlink),
        (b"nodir/x".to_vec(), Class::NoDir),
    ]
}

/// Indices of the lockable pool entries.
pub(crate) const LOCKABLE: [usize; 6] = [0, 1, 2, 3, 4, 5];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Form {
    Plain,
    DoubleSlash,
    TrailingSlash,
    /// Thousands of slashes: over `PATH_MAX` as given, short once normalised.
    SlashPadded,
}

#[derive(Clone, Debug)]
pub(crate) enum PathSpec {
    Pool(usize, Form),
    Relative,
    DotDot,
    Dot,
    Root,
    Empty,
    /// More than `PATH_MAX` bytes after normalisation.
    TooLong,
    /// `store/a NUL b`: one path truncated (array API) or two items (packed).
    NulInside,
    /// A NULL element (array API only; an empty item in the packed API).
    Null,
}

pub(crate) fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        8 => Just(Form::Plain),
        1 => Just(Form::DoubleSlash),
        1 => Just(Form::TrailingSlash),
        1 => Just(Form::SlashPadded),
    ]
}

pub(crate) fn path_spec() -> impl Strategy<Value = PathSpec> {
    prop_oneof![
        30 => (0..LOCKABLE.len(), form()).prop_map(|(i, f)| PathSpec::Pool(i, f)),
        4 => (6usize..10, form()).prop_map(|(i, f)| PathSpec::Pool(i, f)),
        1 => Just(PathSpec::Relative),
        1 => Just(PathSpec::DotDot),
        1 => Just(PathSpec::Dot),
        1 => Just(PathSpec::Root),
        1 => Just(PathSpec::Empty),
        1 => Just(PathSpec::TooLong),
        1 => Just(PathSpec::NulInside),
        1 => Just(PathSpec::Null),
    ]
}

/// A normalised store path (no `.lock`), as the model computes it.
pub(crate) type NPath = Vec<u8>;

/// The lock file's bytes: the library orders sets by them.
pub(crate) fn lock_key(p: &NPath) -> Vec<u8> {
    let mut k = p.clone();
    k.extend_from_slice(b".lock");
    k
}

/// The model's own normalisation (independent of `StorePath`).
pub(crate) fn normalise(raw: &[u8]) -> Option<NPath> {
    if raw.is_empty() || raw.contains(&0) || raw[0] != b'/' {
        return None;
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if c == b"." || c == b".." {
            return None;
        }
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() || out.len() + ".lock".len() + 1 > PATH_MAX {
        return None;
    }
    Some(out)
}

pub(crate) fn cpath(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.push(0);
    v
}

/// Opens `P.lock` (optionally creating it) on a fresh open file description.
pub(crate) fn open_lock(p: &NPath, create: bool) -> Option<RawFd> {
    let c = cpath(&lock_key(p));
    let flags =
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | if create { libc::O_CREAT } else { 0 };
    // SAFETY: NUL-terminated path; mode passed as the variadic argument.
    let fd = unsafe { libc::open(c.as_ptr().cast(), flags, 0o600 as libc::c_uint) };
    (fd >= 0).then_some(fd)
}

pub(crate) fn ofd_try(fd: RawFd) -> bool {
    // SAFETY: all-zero flock is valid; whole-file write lock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: valid fd and struct.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) == 0 }
}

pub(crate) fn flock_try(fd: RawFd) -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
