//! Validation and normalisation of store paths, and their lock-file names.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The suffix that turns store path `P` into its lock file `P.lock`.
pub const LOCK_SUFFIX: &str = ".lock";

/// `PATH_MAX` of the platform, counting the terminating NUL.
pub const PATH_MAX: usize = libc::PATH_MAX as usize;

/// A validated, normalised absolute store path, with its lock-file name
/// precomputed (the lock hot path does no allocation for it).
///
/// Normalisation collapses repeated slashes and drops a trailing slash, so
/// `/s//x/` and `/s/x` name the same lock. `.` and `..` components, NUL
/// bytes, relative paths, the root itself, and names whose lock file would
/// exceed `PATH_MAX` are refused.
///
/// Paths order by their store path bytes (not by lock-file name), the order
/// in which guix-daemon's `PathLocks` takes a `PathSet`: `/s/wb` sorts before
/// `/s/wb-doc`, although `wb-doc.lock` sorts before `wb.lock`.
///
/// A path also carries, computed once when it is made, the length of its
/// store directory and a hash of its bytes: the in-process registry and the
/// store-directory cache, which the lock cycle consults for every path, then
/// never scan or hash the path again. `Hash` writes that hash only.
///
/// The bytes are shared, not copied, by clones: the registry's entry for a
/// held path is a clone of its lock set's path, so the lock cycle makes one
/// allocation per path, and the registry finds its own entry by address
/// before it compares bytes.
#[derive(Clone)]
pub struct StorePath {
    /// `P.lock` followed by NUL; the store path is the prefix without the
    /// suffix. Never empty, no NUL before the last byte.
    lock: Arc<[u8]>,
    /// The length of the store directory: the bytes before the last `/`
    /// (1 for a path directly under `/`).
    dir_len: u32,
    /// A hash of the store path's bytes ([`hash_bytes`]).
    hash: u64,
}

impl PartialEq for StorePath {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.lock, &other.lock) || self.lock == other.lock)
    }
}

impl Eq for StorePath {}

impl std::hash::Hash for StorePath {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The lock-file name of store path `path` (`path` without NUL), with its
/// terminating NUL: `P.lock\0`, in one shared allocation of exactly that
/// size (`Arc::from(Vec)` would allocate a second time and copy).
#[inline]
fn lock_name(path: &[u8]) -> Arc<[u8]> {
    let n = path.len();
    let mut a = Arc::<[u8]>::new_uninit_slice(n + LOCK_SUFFIX.len() + 1);
    let dst = Arc::get_mut(&mut a).expect("a new Arc is unique");
    // SAFETY: `dst` has room for `path`, the suffix and the NUL, and is a new
    // allocation that overlaps neither source.
    unsafe {
        let to = dst.as_mut_ptr().cast::<u8>();
        std::ptr::copy_nonoverlapping(path.as_ptr(), to, n);
        std::ptr::copy_nonoverlapping(LOCK_SUFFIX.as_ptr(), to.add(n), LOCK_SUFFIX.len());
        to.add(n + LOCK_SUFFIX.len()).write(0);
    }
    // SAFETY: the block above wrote every byte.
    unsafe { a.assume_init() }
}

/// The first occurrence of `byte` in `s` (libc's `memchr`, vectorised).
#[inline]
fn find(s: &[u8], byte: u8) -> Option<usize> {
    // SAFETY: `s` is valid for `s.len()` bytes; memchr reads no further.
    let p = unsafe { libc::memchr(s.as_ptr().cast(), byte as libc::c_int, s.len()) };
    (!p.is_null()).then(|| p as usize - s.as_ptr() as usize)
}

/// A 64-bit hash of `bytes`, a word at a time (an FxHash-style multiply and
/// rotate, then a final mix). Only this process's own tables use it.
fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl StorePath {
    /// Validates and normalises `path`.
    pub fn new(path: impl AsRef<OsStr>) -> Result<StorePath> {
        Self::from_bytes(path.as_ref().as_bytes())
    }

    /// Validates and normalises a path given as raw bytes (no NUL terminator).
    pub fn from_bytes(bytes: &[u8]) -> Result<StorePath> {
        match Self::from_normal_bytes(bytes, false) {
            Some(p) => Ok(p),
            None => Self::from_bytes_general(bytes),
        }
    }

    /// [`StorePath::from_bytes`] for bytes known to hold no NUL (a C string
    /// measured up to its terminator): the fast path skips that scan.
    pub(crate) fn from_nul_free_bytes(bytes: &[u8]) -> Result<StorePath> {
        debug_assert!(!bytes.contains(&0));
        match Self::from_normal_bytes(bytes, true) {
            Some(p) => Ok(p),
            None => Self::from_bytes_general(bytes),
        }
    }

    /// The common case of [`StorePath::from_bytes`], in one pass: a path that
    /// is already normal (absolute, not the root, no NUL, no empty, `.` or
    /// `..` component, no trailing slash, short enough) is copied as it is.
    /// `None` sends anything else to the general code, which normalises it
    /// or says why it is refused.
    #[inline]
    fn from_normal_bytes(bytes: &[u8], nul_free: bool) -> Option<StorePath> {
        let n = bytes.len();
        if n < 2
            || bytes[0] != b'/'
            || bytes[n - 1] == b'/'
            || n + LOCK_SUFFIX.len() + 1 > PATH_MAX
            || (!nul_free && find(bytes, 0).is_some())
        {
            return None;
        }
        // Each component, from after one slash to the next.
        let mut slash = 0;
        loop {
            let rest = &bytes[slash + 1..];
            let end = find(rest, b'/');
            let comp = &rest[..end.unwrap_or(rest.len())];
            if comp.is_empty() || comp == b"." || comp == b".." {
                return None;
            }
            match end {
                Some(k) => slash += 1 + k,
                None => break,
            }
        }
        // `bytes` has no NUL (checked above), nor has the suffix.
        let lock = lock_name(bytes);
        Some(StorePath {
            lock,
            dir_len: slash.max(1) as u32,
            hash: hash_bytes(bytes),
        })
    }

    fn from_bytes_general(bytes: &[u8]) -> Result<StorePath> {
        let refuse = |reason| Error::InvalidPath {
            path: String::from_utf8_lossy(bytes).into_owned(),
            reason,
        };
        if bytes.is_empty() {
            return Err(refuse("empty path"));
        }
        if bytes.contains(&0) {
            return Err(refuse("contains a NUL byte"));
        }
        if bytes[0] != b'/' {
            return Err(refuse("not absolute"));
        }
        let mut out = Vec::with_capacity(bytes.len() + LOCK_SUFFIX.len() + 1);
        for comp in bytes.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." || comp == b".." {
                return Err(refuse("contains a '.' or '..' component"));
            }
            out.push(b'/');
            out.extend_from_slice(comp);
        }
        if out.is_empty() {
            return Err(refuse("is the root directory"));
        }
        let dir_len = out.iter().rposition(|&c| c == b'/').unwrap_or(0).max(1) as u32;
        let hash = hash_bytes(&out);
        if out.len() + LOCK_SUFFIX.len() + 1 > PATH_MAX {
            return Err(refuse("its lock file name would exceed PATH_MAX"));
        }
        // NULs were refused above.
        let lock = lock_name(&out);
        Ok(StorePath {
            lock,
            dir_len,
            hash,
        })
    }

    /// The normalised store path.
    pub fn as_path(&self) -> &Path {
        let b = &self.lock[..self.lock.len() - 1 - LOCK_SUFFIX.len()];
        Path::new(OsStr::from_bytes(b))
    }

    /// The lock file `P.lock`, as a C string ready for `open(2)`.
    pub fn lock_cstr(&self) -> &CStr {
        // SAFETY: `lock` ends with its only NUL (see `lock_name`'s callers).
        unsafe { CStr::from_bytes_with_nul_unchecked(&self.lock) }
    }

    /// The lock file `P.lock`.
    pub fn lock_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.lock[..self.lock.len() - 1]))
    }

    /// The store directory as bytes, without parsing path components: the
    /// lock file name up to its last `/` (`/` itself for a path in `/`).
    #[inline]
    pub(crate) fn store_dir_bytes(&self) -> &[u8] {
        &self.lock[..self.dir_len as usize]
    }

    /// The directory holding the path and its lock file (the store directory).
    pub fn store_dir(&self) -> &Path {
        self.as_path().parent().unwrap_or(Path::new("/"))
    }
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_path()
            .as_os_str()
            .as_bytes()
            .cmp(other.as_path().as_os_str().as_bytes())
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_path(), f)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_path().display(), f)
    }
}

/// Validates, normalises, sorts and deduplicates a set of store paths.
/// An empty set is refused: locking nothing is always a caller bug.
pub fn normalize_set<I, P>(paths: I) -> Result<Vec<StorePath>>
where
    I: IntoIterator<Item = P>,
    P: AsRef<OsStr>,
{
    normalize_paths(
        paths
            .into_iter()
            .map(StorePath::new)
            .collect::<Result<Vec<_>>>()?,
    )
}

/// Sorts and deduplicates store paths that are already validated and
/// normalised (every [`StorePath`] is). An empty set is refused, as by
/// [`normalize_set`]. The C ABI uses this instead of validating each path a
/// second time.
pub fn normalize_paths(mut v: Vec<StorePath>) -> Result<Vec<StorePath>> {
    if v.is_empty() {
        return Err(Error::InvalidArgument("empty set of paths".into()));
    }
    if v.len() > 1 {
        v.sort_unstable();
        v.dedup();
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_slashes() {
        let p = StorePath::new("/s//x/").unwrap();
        assert_eq!(p.as_path(), Path::new("/s/x"));
        assert_eq!(p.lock_path(), Path::new("/s/x.lock"));
        assert_eq!(p.store_dir(), Path::new("/s"));
        assert_eq!(p.store_dir_bytes(), b"/s");
        assert_eq!(StorePath::new("/top").unwrap().store_dir_bytes(), b"/");
        assert_eq!(StorePath::new("/a/b/c").unwrap().store_dir_bytes(), b"/a/b");
    }

    /// The one-pass fast path agrees with the general code on every short
    /// string over an alphabet of the interesting bytes: same path, same
    /// store directory and hash, or handed over to the general code.
    #[test]
    fn the_fast_path_agrees_with_the_general_code() {
        let alphabet = [b'/', b'.', b'a', 0u8];
        // Every string up to 7 bytes (21,845 of them); 5 under Miri, where
        // the 7-byte sweep takes minutes. Each also after prefixes that move
        // it across the 8-byte words of the hash.
        let (longest, min_fast) = if cfg!(miri) { (5u32, 10) } else { (7, 100) };
        let prefixes: [&[u8]; 4] = [b"", b"/aaaaaa", b"/aaaaaaa", b"/aaaaaaaaaaaaa"];
        let mut fast = 0;
        for prefix in prefixes {
            for len in 0..=longest {
                for mut k in 0..4usize.pow(len) {
                    let mut v = prefix.to_vec();
                    for _ in 0..len {
                        v.push(alphabet[k % 4]);
                        k /= 4;
                    }
                    let general = StorePath::from_bytes_general(&v);
                    if let Some(p) = StorePath::from_normal_bytes(&v, false) {
                        fast += 1;
                        let g =
                            general.expect("the fast path accepts only what the general one does");
                        assert_eq!(p.lock, g.lock, "{v:?}");
                        assert_eq!((p.dir_len, p.hash), (g.dir_len, g.hash), "{v:?}");
                    }
                }
            }
        }
        assert!(fast > min_fast, "{fast}");
        let p = StorePath::new("/gnu/store/abc-hello-2.12").unwrap();
        assert_eq!(p.store_dir_bytes(), b"/gnu/store");
        assert_eq!(p, StorePath::new("/gnu//store/abc-hello-2.12/").unwrap());
        assert_ne!(p, StorePath::new("/gnu/store/abc-hello-2.13").unwrap());
    }

    #[test]
    fn refuses_bad_paths() {
        for bad in ["", "rel/x", "/", "//", "/s/../x", "/s/./x", "/a\0b"] {
            assert!(
                matches!(StorePath::new(bad), Err(Error::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        let long = format!("/{}", "a/".repeat(PATH_MAX / 2));
        assert!(matches!(
            StorePath::new(long),
            Err(Error::InvalidPath { .. })
        ));
    }

    #[test]
    fn longest_accepted_path_fits_path_max() {
        let n = PATH_MAX - 1 - LOCK_SUFFIX.len();
        let ok = format!("/{}", "a".repeat(n - 1));
        assert_eq!(
            StorePath::new(&ok)
                .unwrap()
                .lock_cstr()
                .to_bytes_with_nul()
                .len(),
            PATH_MAX
        );
        let over = format!("/{}", "a".repeat(n));
        assert!(StorePath::new(over).is_err());
    }

    #[test]
    fn sets_sort_by_store_path_like_the_daemon() {
        let v = normalize_set(["/s/wb-doc", "/s/wb"]).unwrap();
        assert_eq!(v[0].as_path(), Path::new("/s/wb"));
        assert_eq!(v[1].as_path(), Path::new("/s/wb-doc"));
    }

    #[test]
    fn set_is_sorted_and_deduplicated() {
        let v = normalize_set(["/s/b", "/s/a", "/s//b"]).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0] < v[1]);
        assert!(matches!(
            normalize_set(Vec::<&str>::new()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
