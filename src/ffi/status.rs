//! The status codes every exported function returns.

use crate::error::{DbErrorKind, Error};

/// The result of every goalkeeper call.
///
/// `GK_OK` is success. `GK_BUSY`, `GK_HELD_BY_THIS_PROCESS` and
/// `GK_TIMED_OUT` are expected outcomes of contention, not faults. Every
/// other value is an error; `gk_last_error_message()` then says what
/// happened, naming the path, handle or goal concerned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum gk_status {
    /// Success.
    GK_OK = 0,
    /// A lock is held by another process (or another open file description).
    GK_BUSY = 1,
    /// A lock is already held by this process (never granted twice, never a self-block).
    GK_HELD_BY_THIS_PROCESS = 2,
    /// A blocking call reached its timeout.
    GK_TIMED_OUT = 3,
    /// A required pointer argument was NULL.
    GK_ERROR_NULL_POINTER = 10,
    /// A path is not absolute, contains NUL or a `.`/`..` component, is the
    /// root, or is too long for `PATH_MAX`.
    GK_ERROR_INVALID_PATH = 11,
    /// Another argument is out of range (empty set, unknown enum value, …).
    GK_ERROR_INVALID_ARGUMENT = 12,
    /// The handle is stale (released or freed), forged, or of another kind.
    GK_ERROR_STALE_HANDLE = 13,
    /// The handle was created by the parent of this fork child.
    GK_ERROR_WRONG_PROCESS = 14,
    /// An output buffer is too small; the needed size was stored.
    GK_ERROR_BUFFER_TOO_SMALL = 15,
    /// The call is not allowed in the object's current state.
    GK_ERROR_INVALID_STATE = 16,
    /// Any other system error.
    GK_ERROR_IO = 20,
    /// `EACCES`/`EPERM` on a lock file.
    GK_ERROR_PERMISSION_DENIED = 21,
    /// The lock file is a symbolic link (`ELOOP`); it is never followed.
    GK_ERROR_SYMLINK = 22,
    /// `ENAMETOOLONG`.
    GK_ERROR_NAME_TOO_LONG = 23,
    /// `ENOSPC`/`EDQUOT`.
    GK_ERROR_NO_SPACE = 24,
    /// `EDEADLK` from the kernel.
    GK_ERROR_DEADLOCK = 25,
    /// The lock file kept being deleted under us; the bounded retry gave up.
    GK_ERROR_STALE_LOCK_FILE = 26,
    /// The store directory is writable by other users (its group or everyone)
    /// without the sticky bit; `/gnu/store` (1775) and `/tmp` (1777) are fine.
    GK_ERROR_INSECURE_STORE = 27,
    /// The file at `P.lock` is not a lock file goalkeeper may use: not a
    /// regular file, more than one hard link, or owned by neither this
    /// process's user nor the store directory's owner. It is left untouched.
    GK_ERROR_FOREIGN_LOCK_FILE = 28,
    /// The store database does not exist (no file at the given path).
    GK_ERROR_STORE_DB_MISSING = 40,
    /// The store database is not an SQLite database (or not a regular file).
    GK_ERROR_STORE_DB_NOT_SQLITE = 41,
    /// The store database has no table `ValidPaths` (with a column `path`):
    /// it is not a Nix or Guix store database.
    GK_ERROR_STORE_DB_NO_VALID_PATHS = 42,
    /// The store database stayed locked by a writer past the busy timeout.
    GK_ERROR_STORE_DB_LOCKED = 43,
    /// The store database (or its `-wal`/`-shm` file) cannot be read by this
    /// process (permissions, I/O).
    GK_ERROR_STORE_DB_UNREADABLE = 44,
    /// Any other error of the store database (e.g. a corrupt file). A
    /// relative database path is `GK_ERROR_INVALID_PATH`.
    GK_ERROR_STORE_DB = 45,
    /// A ledger invariant does not hold (a lock without a live owner, a
    /// finished goal holding a lock, …). The message names goal and path.
    GK_ERROR_INVARIANT_VIOLATION = 30,
    /// The scheduler cannot progress; the message names the stuck goals.
    GK_ERROR_SCHEDULER_DEADLOCK = 31,
    /// An internal error (a caught panic). Please report it.
    GK_ERROR_PANIC = 99,
}

/// Writes `gk_status::ALL` and `gk_status::name_c` from one list of the
/// enumerators.
macro_rules! names {
    ($($s:ident),+ $(,)?) => {
        impl gk_status {
            /// Every status, for `gk_status_name` and tests.
            pub(crate) const ALL: &[gk_status] = &[$(gk_status::$s),+];

            /// The enumerator's name as a C string.
            pub fn name_c(self) -> &'static std::ffi::CStr {
                match self {
                    $(gk_status::$s => const {
                        match std::ffi::CStr::from_bytes_with_nul(
                            concat!(stringify!($s), "\0").as_bytes(),
                        ) {
                            Ok(c) => c,
                            Err(_) => panic!("a NUL in a status name"),
                        }
                    },)+
                }
            }
        }
    };
}

names!(
    GK_OK,
    GK_BUSY,
    GK_HELD_BY_THIS_PROCESS,
    GK_TIMED_OUT,
    GK_ERROR_NULL_POINTER,
    GK_ERROR_INVALID_PATH,
    GK_ERROR_INVALID_ARGUMENT,
    GK_ERROR_STALE_HANDLE,
    GK_ERROR_WRONG_PROCESS,
    GK_ERROR_BUFFER_TOO_SMALL,
    GK_ERROR_INVALID_STATE,
    GK_ERROR_IO,
    GK_ERROR_PERMISSION_DENIED,
    GK_ERROR_SYMLINK,
    GK_ERROR_NAME_TOO_LONG,
    GK_ERROR_NO_SPACE,
    GK_ERROR_DEADLOCK,
    GK_ERROR_STALE_LOCK_FILE,
    GK_ERROR_INSECURE_STORE,
    GK_ERROR_FOREIGN_LOCK_FILE,
    GK_ERROR_STORE_DB_MISSING,
    GK_ERROR_STORE_DB_NOT_SQLITE,
    GK_ERROR_STORE_DB_NO_VALID_PATHS,
    GK_ERROR_STORE_DB_LOCKED,
    GK_ERROR_STORE_DB_UNREADABLE,
    GK_ERROR_STORE_DB,
    GK_ERROR_INVARIANT_VIOLATION,
    GK_ERROR_SCHEDULER_DEADLOCK,
    GK_ERROR_PANIC,
);

impl gk_status {
    /// The enumerator's name, e.g. `"GK_BUSY"`.
    pub fn name(self) -> &'static str {
        self.name_c().to_str().unwrap_or("GK_?")
    }

    /// The status for an integer from C, if it is one.
    pub fn from_raw(v: i64) -> Option<gk_status> {
        Self::ALL.iter().copied().find(|s| *s as i64 == v)
    }
}

impl From<&Error> for gk_status {
    fn from(e: &Error) -> gk_status {
        use gk_status::*;
        match e {
            Error::InvalidPath { .. } => GK_ERROR_INVALID_PATH,
            Error::InvalidArgument(_) => GK_ERROR_INVALID_ARGUMENT,
            Error::Busy { .. } => GK_BUSY,
            Error::HeldByThisProcess { .. } => GK_HELD_BY_THIS_PROCESS,
            Error::TimedOut { .. } => GK_TIMED_OUT,
            Error::PermissionDenied { .. } => GK_ERROR_PERMISSION_DENIED,
            Error::Symlink { .. } => GK_ERROR_SYMLINK,
            Error::NameTooLong { .. } => GK_ERROR_NAME_TOO_LONG,
            Error::NoSpace { .. } => GK_ERROR_NO_SPACE,
            Error::Deadlock { .. } => GK_ERROR_DEADLOCK,
            Error::StaleRetriesExhausted { .. } => GK_ERROR_STALE_LOCK_FILE,
            Error::InsecureStore { .. } => GK_ERROR_INSECURE_STORE,
            Error::ForeignLockFile { .. } => GK_ERROR_FOREIGN_LOCK_FILE,
            Error::WrongProcess(..) => GK_ERROR_WRONG_PROCESS,
            Error::InvalidState(_) => GK_ERROR_INVALID_STATE,
            Error::Invariant(_) => GK_ERROR_INVARIANT_VIOLATION,
            Error::SchedulerDeadlock(_) => GK_ERROR_SCHEDULER_DEADLOCK,
            Error::NullPointer(_) => GK_ERROR_NULL_POINTER,
            Error::StaleHandle(_) => GK_ERROR_STALE_HANDLE,
            Error::BufferTooSmall { .. } => GK_ERROR_BUFFER_TOO_SMALL,
            Error::Io { .. } => GK_ERROR_IO,
            Error::InBatch { source, .. } => gk_status::from(&**source),
            Error::StoreDatabase { kind, .. } => match kind {
                DbErrorKind::RelativePath => GK_ERROR_INVALID_PATH,
                DbErrorKind::Missing => GK_ERROR_STORE_DB_MISSING,
                DbErrorKind::NotAFile | DbErrorKind::NotSqlite => GK_ERROR_STORE_DB_NOT_SQLITE,
                DbErrorKind::NoValidPaths => GK_ERROR_STORE_DB_NO_VALID_PATHS,
                DbErrorKind::Locked => GK_ERROR_STORE_DB_LOCKED,
                DbErrorKind::Unreadable => GK_ERROR_STORE_DB_UNREADABLE,
                DbErrorKind::Sqlite => GK_ERROR_STORE_DB,
            },
        }
    }
}
