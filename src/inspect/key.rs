//! The identity of a file: its device and inode.

use std::fs;
use std::os::unix::fs::MetadataExt;

/// The identity of a file's inode, `(st_dev, st_ino)`. Two names of one file
/// (a store directory reached through a symbolic link or a bind mount) have
/// the same key, and so do two descriptors of it. The kernel's lock list
/// names files the same way (`major:minor:inode`), so this one key serves
/// both the lock layer's registry and the inspector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// The device number (`st_dev`).
    pub dev: u64,
    /// The inode number (`st_ino`).
    pub ino: u64,
}

impl FileKey {
    /// The key of a file described by `stat(2)`.
    pub fn of_stat(st: &libc::stat) -> FileKey {
        FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The key of a file described by [`fs::Metadata`].
    pub fn of_metadata(meta: &fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}
