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
/// precomputed.
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
/// The bytes are shared, not copied, by clones: the registry's entry for a
/// held path is a clone of its lock set's path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    /// `P.lock` followed by NUL; the store path is the prefix without the
    /// suffix. Never empty, no NUL before the last byte.
    lock: Arc<[u8]>,
    /// The length of the store directory: the bytes before the last `/`
    /// (1 for a path directly under `/`).
    dir_len: u32,
}

impl StorePath {
    /// Validates and normalises `path`.
    pub fn new(path: impl AsRef<OsStr>) -> Result<StorePath> {
        Self::from_bytes(path.as_ref().as_bytes())
    }

    /// Validates and normalises a path given as raw bytes (no NUL terminator).
    pub fn from_bytes(bytes: &[u8]) -> Result<StorePath> {
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
        // One pass: components copied with one `/` before each, empty ones
        // (repeated or trailing slashes) dropped, `.` and `..` refused.
        let mut out = Vec::with_capacity(bytes.len() + LOCK_SUFFIX.len() + 1);
        let mut dir_len = 1;
        for comp in bytes[1..].split(|&b| b == b'/') {
            match comp {
                b"" => continue,
                b"." | b".." => return Err(refuse("contains a '.' or '..' component")),
                _ => {}
            }
            dir_len = out.len().max(1);
            out.push(b'/');
            out.extend_from_slice(comp);
        }
        if out.is_empty() {
            return Err(refuse("is the root directory"));
        }
        out.extend_from_slice(LOCK_SUFFIX.as_bytes());
        out.push(0);
        if out.len() > PATH_MAX {
            return Err(refuse("its lock file name would exceed PATH_MAX"));
        }
        Ok(StorePath {
            lock: out.into(),
            dir_len: dir_len as u32,
        })
    }

    /// The normalised store path.
    pub fn as_path(&self) -> &Path {
        let b = &self.lock[..self.lock.len() - 1 - LOCK_SUFFIX.len()];
        Path::new(OsStr::from_bytes(b))
    }

    /// The lock file `P.lock`, as a C string ready for `open(2)`.
    pub fn lock_cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.lock).expect("one NUL, at the end")
    }

    /// The lock file `P.lock`.
    pub fn lock_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.lock[..self.lock.len() - 1]))
    }

    /// The directory holding the path and its lock file (the store
    /// directory): the lock file name up to its last `/` (`/` itself for a
    /// path in `/`).
    pub fn store_dir(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.lock[..self.dir_len as usize]))
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
        assert_eq!(p.store_dir().as_os_str().as_bytes(), b"/s");
        let dir = |p: &str| StorePath::new(p).unwrap().store_dir().to_path_buf();
        assert_eq!(dir("/top").as_os_str().as_bytes(), b"/");
        assert_eq!(dir("/a/b/c").as_os_str().as_bytes(), b"/a/b");
    }

    #[test]
    fn equal_after_normalisation() {
        let p = StorePath::new("/gnu/store/abc-hello-2.12").unwrap();
        assert_eq!(p.store_dir().as_os_str().as_bytes(), b"/gnu/store");
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
