//! The crate's error type, and the mapping from `errno` values to it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in goalkeeper.
///
/// Contention outcomes ([`Error::Busy`], [`Error::HeldByThisProcess`],
/// [`Error::TimedOut`]) are variants too, so that `?` works, but they are
/// expected results rather than faults: see [`Error::is_contention`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path given to the library is not an acceptable store path.
    #[error("invalid store path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given (lossily converted for display).
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An argument other than a path is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The lock is held by another process (or another open file description).
    #[error("{} is locked by another process", path.display())]
    Busy {
        /// The store path whose lock is held.
        path: PathBuf,
    },
    /// The lock is already held inside this process (G5: never a silent
    /// re-acquisition, never a self-block).
    #[error("{} is already locked by this process (lock set {lockset}{})", path.display(), tag_note(*tag))]
    HeldByThisProcess {
        /// The store path.
        path: PathBuf,
        /// The id of the lock set of this process that holds it.
        lockset: u64,
        /// That lock set's owner tag (0: none; the scheduler's goal id).
        tag: u64,
    },
    /// A blocking acquisition reached its deadline without the lock.
    #[error("timed out after {waited_ms} ms waiting for the lock on {}", path.display())]
    TimedOut {
        /// The store path that was still busy.
        path: PathBuf,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// `EACCES`/`EPERM` opening or modifying a lock file.
    #[error("{}: permission denied ({op})", path.display())]
    PermissionDenied {
        /// The lock file.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
    },
    /// `ELOOP`: the lock file is a symbolic link; it is never followed (`O_NOFOLLOW`).
    #[error("{}: is a symbolic link; refusing to follow it (O_NOFOLLOW)", path.display())]
    Symlink {
        /// The lock file.
        path: PathBuf,
    },
    /// `ENAMETOOLONG`: a path component is longer than the file system allows.
    #[error("{}: file name too long", path.display())]
    NameTooLong {
        /// The lock file.
        path: PathBuf,
    },
    /// `ENOSPC`/`EDQUOT`: the store is full.
    #[error("{}: no space left on device ({op})", path.display())]
    NoSpace {
        /// The lock file.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
    },
    /// `EDEADLK`: the kernel refused a blocking lock because it would deadlock.
    #[error("{}: the kernel reports that waiting for this lock would deadlock (EDEADLK)", path.display())]
    Deadlock {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file kept being deleted by its holders; the bounded re-open loop gave up.
    #[error("{}: lock file was deleted under us {attempts} times in a row; giving up", path.display())]
    StaleRetriesExhausted {
        /// The lock file.
        path: PathBuf,
        /// How many times it was re-opened.
        attempts: u32,
    },
    /// The store directory is writable by other users (its group or
    /// everyone) without the sticky bit, so any of them could replace lock files.
    #[error("store directory {} has mode {mode:04o}: writable by other users (group or others) without the sticky bit; refusing to lock there", dir.display())]
    InsecureStore {
        /// The store directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file at `P.lock` is not a lock file this process may use: not a
    /// regular file, more than one hard link (perhaps a link planted to
    /// another file), or owned by neither this process's effective user nor
    /// the store directory's owner. It is never written to (L11).
    #[error("{}: refusing to use this file as a lock file: {reason}", path.display())]
    ForeignLockFile {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The object was created by another process: this process is a fork
    /// child, and a fork child never holds or releases its parent's locks.
    #[error("{0} was created by the parent process before fork(); a fork child does not hold its parent's locks")]
    WrongProcess(&'static str),
    /// A call that is not allowed in the object's current state.
    #[error("{0}")]
    InvalidState(String),
    /// A ledger invariant does not hold (G6).
    #[error("invariant violation: {0}")]
    Invariant(String),
    /// The scheduler cannot make progress: goals remain but nothing is
    /// runnable, running, or waited on.
    #[error("scheduler deadlock: nothing is runnable, running or waited on, but these goals remain: {0}")]
    SchedulerDeadlock(String),
    /// A required pointer argument was null (C ABI).
    #[error("{0} must not be NULL")]
    NullPointer(&'static str),
    /// A handle that is stale, freed, forged, or of the wrong kind (C ABI).
    #[error("{0}")]
    StaleHandle(String),
    /// An output buffer is too small; `needed` bytes are required (C ABI).
    #[error("buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The size required, terminating NULs included.
        needed: usize,
    },
    /// The store's database (`db.sqlite`, see `crate::store_db`) could not
    /// answer: missing, not SQLite, without `ValidPaths`, locked past the
    /// busy timeout, unreadable, or a relative path. The message names the
    /// file. Validity is never assumed on this error.
    #[error("store database {}: {detail}", path.display())]
    StoreDatabase {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        kind: DbErrorKind,
        /// The explanation, without the file name.
        detail: String,
    },
    /// An element of a batched call (a goal, one of its outputs or
    /// dependencies, a report) is bad; `source` says how, `element` names
    /// it (`goals[3].deps[1]`). The batch changed nothing.
    #[error("{element}: {source}")]
    InBatch {
        /// The element, as the C fields name it.
        element: String,
        /// What is wrong with it.
        source: Box<Error>,
    },
    /// Any other system error.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// `true` for the expected outcomes of contention (busy, held by this
    /// process, timed out), `false` for real errors.
    pub fn is_contention(&self) -> bool {
        matches!(
            self,
            Error::Busy { .. } | Error::HeldByThisProcess { .. } | Error::TimedOut { .. }
        )
    }

    /// Maps an OS error from operation `op` on `path` to the most specific variant.
    pub fn from_io(path: impl Into<PathBuf>, op: &'static str, err: io::Error) -> Error {
        let path = path.into();
        match err.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied { path, op },
            Some(libc::ELOOP) => Error::Symlink { path },
            Some(libc::ENAMETOOLONG) => Error::NameTooLong { path },
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace { path, op },
            Some(libc::EDEADLK) => Error::Deadlock { path },
            _ => Error::Io {
                path,
                op,
                source: err,
            },
        }
    }
}

/// What went wrong with a store database (`crate::store_db` re-exports it).
/// It lives here, in the base layer, so that [`Error::StoreDatabase`] can
/// carry it without this module naming a layer above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbErrorKind {
    /// The database path (or a queried store path) is not absolute.
    RelativePath,
    /// There is no file at the database path.
    Missing,
    /// The database path is not a regular file (a directory, a device, …).
    NotAFile,
    /// The file is not an SQLite database.
    NotSqlite,
    /// The database has no table `ValidPaths` with a column `path`: it is
    /// not a Nix or Guix store database.
    NoValidPaths,
    /// The database stayed locked by a writer for longer than the busy timeout.
    Locked,
    /// The database (or its `-wal`/`-shm` files) cannot be opened or read by
    /// this process (permissions, I/O).
    Unreadable,
    /// Any other SQLite error (e.g. a corrupt database).
    Sqlite,
}

fn tag_note(tag: u64) -> String {
    if tag == 0 {
        String::new()
    } else {
        format!(", owner tag {tag:#x}")
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
