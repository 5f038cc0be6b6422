//! The store directory check: refuse to lock in a directory that other users
//! may write to without the sticky bit, since any of them could then unlink
//! or replace our lock files (a waiter blocked on a replaced file and a
//! newcomer locking the replacement would be two holders). Other users means
//! the group's members as well as everyone: Guix's build users are members of
//! `guixbuild`, the group that owns the store. `/gnu/store` is
//! `1775 root:guixbuild` (group writable, sticky) and `/tmp` is `1777`; both
//! are accepted, while `0775` or `0777` are refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::path::StorePath;
use super::process::State;
use crate::error::{Error, Result};

/// Checks `dir` once per process; successful checks are cached in `st`.
pub(crate) fn check_cached(st: &mut State, path: &StorePath) -> Result<()> {
    let dir = path.store_dir_bytes();
    if st.checked_dirs.iter().any(|d| d.as_slice() == dir) {
        return Ok(());
    }
    check(path.store_dir())?;
    st.checked_dirs.push(dir.to_vec());
    Ok(())
}

/// Checks the permissions of `dir` (following symlinks, as `open` does for
/// directories on the way).
pub fn check(dir: &Path) -> Result<()> {
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
    Ok(())
}
