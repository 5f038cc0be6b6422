//! The store directory check: refuse to lock in a directory that other users
//! may write to without the sticky bit, since any of them could then unlink
//! or replace our lock files (a waiter blocked on a replaced file and a
//! newcomer locking the replacement would be two holders). Other users means
//! the group's members as well as everyone: Guix's build users are members of
//! `guixbuild`, the group that owns the store. `/gnu/store` is
//! `1775 root:guixbuild` (group writable, sticky) and `/tmp` is `1777`; both
//! are accepted, while `0775` or `0777` are refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use super::path::StorePath;
use crate::error::{Error, Result};

/// How many checked directories are remembered. A daemon locks in one
/// store; a process that locks in many directories re-checks the oldest
/// ones now and then, instead of growing the list (and the scan of it on
/// every open) without limit.
pub(crate) const CHECKED_DIRS_CACHED: usize = 16;

/// The store directories checked and found safe (the last
/// [`CHECKED_DIRS_CACHED`]), each with its owner's uid.
pub(crate) struct CheckedDirs(Vec<(PathBuf, libc::uid_t)>);

impl CheckedDirs {
    /// No directory checked yet.
    pub(crate) const fn new() -> CheckedDirs {
        CheckedDirs(Vec::new())
    }

    /// Checks the store directory of `path` once per process (while it
    /// stays among the last [`CHECKED_DIRS_CACHED`] directories checked).
    /// Returns its owner: a lock file must belong to it or to this process's
    /// effective user (L11).
    pub(crate) fn check(&mut self, path: &StorePath) -> Result<libc::uid_t> {
        let dir = path.store_dir();
        if let Some((_, owner)) = self.0.iter().find(|(d, _)| d == dir) {
            return Ok(*owner);
        }
        // Following symlinks, as `open` does for directories on the way.
        let meta =
            std::fs::metadata(dir).map_err(|e| Error::from_io(dir, "stat store directory", e))?;
        if !meta.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                op: "stat store directory",
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(Error::InsecureStore {
                dir: dir.to_path_buf(),
                mode,
            });
        }
        if self.0.len() >= CHECKED_DIRS_CACHED {
            self.0.remove(0);
        }
        self.0.push((dir.to_path_buf(), meta.uid()));
        Ok(meta.uid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the long ABI fuzz: every directory ever locked in stayed in
    /// this cache, which every lock-file open scans; after 100,000 cases
    /// (one temporary store each) each open scanned 100,000 entries and the
    /// fuzz ran CPU-bound, ever slower.
    #[test]
    fn store_dir_cache_stays_bounded_across_many_directories() {
        let base = std::env::temp_dir().join(format!("gk-dircache-{}", std::process::id()));
        let mut dirs = CheckedDirs::new();
        for i in 0..3 * CHECKED_DIRS_CACHED {
            let dir = base.join(format!("s{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let p = StorePath::new(dir.join("x")).unwrap();
            dirs.check(&p).unwrap();
            assert!(dirs.0.len() <= CHECKED_DIRS_CACHED);
            assert!(dirs.0.iter().any(|(d, _)| d == p.store_dir()));
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
