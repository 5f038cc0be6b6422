//! Store validity from the store's own database.
//!
//! In Guix and Nix a store path is *valid* when it is registered in the
//! store's SQLite database (`/var/guix/db/db.sqlite`,
//! `/nix/var/nix/db/db.sqlite`): a row of table `ValidPaths` whose column
//! `path` is the absolute store path, e.g. `/gnu/store/…-hello-2.12`. That a
//! file exists at the path is not enough: a daemon that builds without a
//! chroot writes its output in place, and registers it only once the build
//! succeeded. [`StoreDb`] answers "is this path registered?" with read-only
//! queries of that table, while the daemon keeps writing the database.
//!
//! # Reading a database that the daemon writes
//!
//! * **Never modified.** Every connection is opened with the URI parameter
//!   `mode=ro` (`SQLITE_OPEN_READONLY`, never `SQLITE_OPEN_CREATE`), with
//!   SQLite's checkpoint-on-close disabled. goalkeeper never opens the
//!   database file with a descriptor of its own either (see "One SQLite"
//!   below): everything goes through SQLite.
//! * **While the daemon has the database open** (the normal case: the
//!   daemon holds its connection for as long as it serves a client, so the
//!   goalkeeper worker inside it always sees this case): one cached
//!   connection and one cached prepared statement, SQLite's normal locking
//!   protocol, and a busy timeout ([`StoreDbOptions::busy_timeout`]). In WAL
//!   mode (the default of both daemons) a reader never waits for the writer
//!   and sees every committed registration, including those still in
//!   `db.sqlite-wal`; a reader that cannot write the daemon's `db.sqlite-shm`
//!   (not root) uses SQLite's read-only shared-memory mode. In rollback-journal
//!   mode (`use-sqlite-wal = false`) a read waits, up to the busy timeout,
//!   while the daemon commits. Like any other open connection, a cached one
//!   keeps the daemon's last connection from removing `db.sqlite-wal` when it
//!   closes; the daemon's next open takes it over, as after any reader
//!   (`tests/nix_interop.rs` runs Nix again on such a database).
//! * **A WAL database that no process has open** (no `db.sqlite-wal` beside
//!   it: the last connection checkpointed and removed it). SQLite would
//!   create `db.sqlite-wal` and `db.sqlite-shm` next to the daemon's database
//!   to read it, even read-only (as root), or fail with "attempt to write a
//!   readonly database" (as a user who cannot write the directory). goalkeeper
//!   does neither: the main file is then the whole database, so it reads it
//!   as a snapshot through a short-lived `immutable=1` connection, and accepts
//!   the answer only if no `-wal` file appeared and the file's identity, size,
//!   modification and change times are unchanged after the query; otherwise
//!   it asks again. Such a connection is never cached: `immutable=1` on a
//!   database that a daemon writes would miss the registrations held in the
//!   WAL and could read torn pages, which is why it is used for nothing else.
//!   The header that tells a WAL database from a rollback-journal one is read
//!   through that same SQLite connection, with no lock taken. The `-wal` file
//!   is looked for beside the database with symbolic links resolved, where
//!   SQLite puts it.
//! * A database error is an error, never "valid": the caller keeps waiting or
//!   fails the goal.
//!
//! # One SQLite per process
//!
//! POSIX `fcntl` locks belong to a process and an inode: closing *any*
//! descriptor of a file drops all of the process's locks on it. SQLite works
//! around this inside one copy of the library (it tracks open files per inode
//! and defers closing a descriptor while another connection holds a lock),
//! but two copies of SQLite in one process know nothing of each other.
//! goalkeeper is loaded into `guix-daemon`, which links the system
//! `libsqlite3` and has the same `db.sqlite` open; a private (bundled) SQLite
//! inside `libgoalkeeper.so` closing its descriptor would silently drop the
//! daemon's locks on its own database, and another process could then
//! checkpoint or write under the daemon's read transaction. goalkeeper
//! therefore links the **system** `libsqlite3` (dynamically, by its soname),
//! so that in the daemon's process both share one copy, and never opens the
//! database with a descriptor of its own. `tests/store_db.rs` shows the hazard
//! with a raw descriptor and checks that goalkeeper's connections keep a host
//! connection's locks.
//!
//! # Schema
//!
//! Guix (schema version 7, `nix/libstore/schema.sql`) and Nix 2.8 (schema
//! version 10) share `ValidPaths (id integer primary key autoincrement not
//! null, path text unique not null, hash text not null, registrationTime
//! integer not null, deriver text, narSize integer, …)`; Nix adds `ultimate`,
//! `sigs` and `ca`. Only `path` is read: `SELECT 1 FROM ValidPaths WHERE path
//! = ?`, an index lookup (the column is `unique`). Guix also has
//! `FailedPaths (path text primary key, time integer)`, the outputs of
//! failed builds under `--cache-failures`; [`StoreDb::failed_paths`] reads
//! its `path` the same way (Nix 2.8 has no such table).

use std::ffi::{c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ffi, Connection, ErrorCode, OpenFlags};

/// The query, prepared once per connection (SQLite's statement cache).
const QUERY: &str = "SELECT 1 FROM ValidPaths WHERE path = ?1";

/// The failed-path query: Guix's `FailedPaths (path, time)`, where
/// guix-daemon `--cache-failures` records the outputs of failed builds.
const FAILED_QUERY: &str = "SELECT 1 FROM FailedPaths WHERE path = ?1";

/// Whether the database has table `?1`.
const TABLE_QUERY: &str = "SELECT 1 FROM sqlite_master WHERE type = 'table' \
                           AND name = ?1 COLLATE NOCASE";

/// How often a snapshot read is retried when the database changed under it.
const SNAPSHOT_ATTEMPTS: u32 = 5;

pub use crate::error::DbErrorKind;

/// An error of the store database. Its message always names the database file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store database {}: {detail}", path.display())]
pub struct DbError {
    kind: DbErrorKind,
    path: PathBuf,
    detail: String,
}

impl DbError {
    fn new(kind: DbErrorKind, path: &Path, detail: impl Into<String>) -> DbError {
        DbError {
            kind,
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// The database file concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The explanation, without the file name.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl From<DbError> for crate::error::Error {
    fn from(e: DbError) -> crate::error::Error {
        crate::error::Error::StoreDatabase {
            path: e.path,
            kind: e.kind,
            detail: e.detail,
        }
    }
}

/// The result type of this module.
pub type DbResult<T> = std::result::Result<T, DbError>;

/// How a [`StoreDb`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDbOptions {
    /// How long a query waits for a writer's lock before it fails with
    /// [`DbErrorKind::Locked`] (SQLite's busy timeout). Only a
    /// rollback-journal database (or WAL recovery) makes a reader wait.
    /// Default: 5 s.
    pub busy_timeout: Duration,
}

impl Default for StoreDbOptions {
    fn default() -> Self {
        StoreDbOptions {
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A read-only view of a store database: "is this store path registered?".
///
/// Holds at most one SQLite connection (and its prepared statement), opened
/// read-only; see the module documentation for how it reads while the daemon
/// writes. Not `Sync`: use one per thread (the scheduler's worker owns one).
#[derive(Debug)]
pub struct StoreDb {
    /// The path as given (for messages).
    path: PathBuf,
    /// The path with symbolic links resolved: SQLite names the `-wal` file
    /// after the resolved file, so that is where to look for it.
    real: PathBuf,
    options: StoreDbOptions,
    /// The cached connection to a database that a daemon has open, or that
    /// is in rollback-journal mode. `None` between snapshot reads of a
    /// quiescent WAL database, and after an error.
    live: Option<Connection>,
    /// Snapshot (quiescent WAL) reads done so far, for tests and diagnostics.
    snapshot_reads: u64,
    /// The process that opened it (see the `Drop` implementation).
    pid: u32,
}

impl Drop for StoreDb {
    /// Closes the cached connection, except in a fork child: SQLite must not
    /// be used, not even to close a connection, on the far side of a
    /// `fork(2)` (its inode table and mutexes are the parent's), so a
    /// connection inherited from the parent is left alone (leaked) there.
    fn drop(&mut self) {
        if crate::base::pid() != self.pid {
            std::mem::forget(self.live.take());
        }
    }
}

/// The state of the database file when a snapshot read begins: device,
/// inode, size, and modification and change times (seconds, nanoseconds).
type FileId = (u64, u64, u64, (i64, i64), (i64, i64));

impl StoreDb {
    /// Opens the store database at `path` (absolute) with default options,
    /// and checks that it is an SQLite database with table `ValidPaths`.
    pub fn open(path: impl AsRef<Path>) -> DbResult<StoreDb> {
        StoreDb::with_options(path, StoreDbOptions::default())
    }

    /// [`StoreDb::open`] with explicit options.
    pub fn with_options(path: impl AsRef<Path>, options: StoreDbOptions) -> DbResult<StoreDb> {
        let path = path.as_ref();
        if !path.is_absolute() {
            return Err(DbError::new(
                DbErrorKind::RelativePath,
                path,
                "the database path must be absolute",
            ));
        }
        let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(path),
            _ => DbError::new(
                DbErrorKind::Unreadable,
                path,
                format!("resolving the path: {e}"),
            ),
        })?;
        let mut db = StoreDb {
            path: path.to_path_buf(),
            real,
            options,
            live: None,
            snapshot_reads: 0,
            pid: crate::base::pid(),
        };
        // Fail now, not at the first query, on a wrong path or file.
        db.run(|_| Ok(()))?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options in force.
    pub fn options(&self) -> &StoreDbOptions {
        &self.options
    }

    /// How many queries were answered from a snapshot of a WAL database that
    /// no process had open (see the module documentation).
    pub fn snapshot_reads(&self) -> u64 {
        self.snapshot_reads
    }

    /// Whether `store_path` (absolute, as the daemon registers it: e.g.
    /// `/gnu/store/…-hello-2.12`, no trailing slash) is registered in
    /// `ValidPaths`. The path's bytes are compared exactly.
    pub fn is_valid(&mut self, store_path: impl AsRef<Path>) -> DbResult<bool> {
        let p = store_path.as_ref();
        self.check_store_path(p)?;
        let bytes = p.as_os_str().as_bytes();
        self.run(|c| c.prepare_cached(QUERY)?.exists([text(bytes)]))
    }

    /// [`StoreDb::is_valid`] for several paths, answered from one read
    /// transaction (one consistent snapshot of the database). The result is
    /// in the order of `store_paths`.
    pub fn valid_paths<I, P>(&mut self, store_paths: I) -> DbResult<Vec<bool>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        self.each_listed(QUERY, None, store_paths)
    }

    /// Whether each of `store_paths` is listed in `FailedPaths`: the
    /// outputs of builds that failed while guix-daemon ran with
    /// `--cache-failures` (until `guix gc --clear-failures`). One read
    /// transaction, results in the order of `store_paths`. A database
    /// without that table (Nix's: it dropped failure caching) lists no
    /// path as failed.
    pub fn failed_paths<I, P>(&mut self, store_paths: I) -> DbResult<Vec<bool>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        self.each_listed(FAILED_QUERY, Some("FailedPaths"), store_paths)
    }

    /// Runs `query` (one `?1`, a store path) for each of `store_paths` in one
    /// read transaction: whether it returns a row. A database without the
    /// table `optional` names lists none of them.
    fn each_listed<I, P>(
        &mut self,
        query: &str,
        optional: Option<&str>,
        store_paths: I,
    ) -> DbResult<Vec<bool>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let paths: Vec<P> = store_paths.into_iter().collect();
        for p in &paths {
            self.check_store_path(p.as_ref())?;
        }
        self.run(|c| {
            let tx = c.unchecked_transaction()?;
            if let Some(table) = optional {
                if !tx.prepare_cached(TABLE_QUERY)?.exists([table])? {
                    return Ok(vec![false; paths.len()]);
                }
            }
            let mut st = tx.prepare_cached(query)?;
            let out = paths
                .iter()
                .map(|p| st.exists([text(p.as_ref().as_os_str().as_bytes())]))
                .collect::<rusqlite::Result<Vec<bool>>>()?;
            drop(st);
            tx.commit()?;
            Ok(out)
        })
    }

    fn check_store_path(&self, p: &Path) -> DbResult<()> {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(DbError::new(
                DbErrorKind::RelativePath,
                &self.path,
                format!(
                    "queried store path {:?} is not absolute (the database registers absolute paths)",
                    p
                ),
            ))
        }
    }

    /// Runs `f` on a connection: the cached one, a new cached one, or a
    /// checked snapshot.
    fn run<T>(&mut self, f: impl Fn(&Connection) -> rusqlite::Result<T>) -> DbResult<T> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let cached = self.live.is_some();
            let (conn, snapshot) = match self.live.take() {
                Some(c) => (c, None),
                None => self.connect()?,
            };
            let op = snapshot.map_or("query", |_| "snapshot query");
            let v = f(&conn).map_err(|e| self.sqlite_error(e, op));
            let Some(before) = snapshot else {
                // After an error, reconnect next time (the file may have
                // been replaced), unless a cached connection met a writer.
                if v.as_ref()
                    .err()
                    .is_none_or(|e| cached && e.kind == DbErrorKind::Locked)
                {
                    self.live = Some(conn);
                }
                return v;
            };
            drop(conn);
            // A snapshot counts only if no process opened the database
            // meanwhile (no `-wal` file) and the file is unchanged; else a
            // daemon opened (or wrote) it: ask again.
            if !self.wal_file_exists()? && self.file_id()? == before {
                self.snapshot_reads += 1;
                return v;
            }
        }
        Err(DbError::new(
            DbErrorKind::Locked,
            &self.path,
            format!(
                "the database changed during each of {SNAPSHOT_ATTEMPTS} snapshot reads \
                 (a daemon opening and closing it in a loop?)"
            ),
        ))
    }

    /// Opens a connection suited to the database's current state: one to
    /// cache, or a snapshot of a quiescent WAL database, with the file's
    /// state when it was opened.
    fn connect(&self) -> DbResult<(Connection, Option<FileId>)> {
        let before = self.file_id()?;
        if !self.wal_file_exists()? {
            // No -wal file: a rollback-journal database, or a WAL database
            // that no process has open. Look at the header without taking a
            // lock or creating a file.
            let conn = self.open_uri("mode=ro&immutable=1")?;
            let header = self.header(&conn)?;
            if header[18] == 2 && header[19] == 2 {
                self.check_schema(&conn)?;
                return Ok((conn, Some(before)));
            }
            drop(conn);
        }
        let conn = self.open_uri("mode=ro")?;
        conn.busy_timeout(self.options.busy_timeout)
            .map_err(|e| self.sqlite_error(e, "setting the busy timeout"))?;
        conn.set_prepared_statement_cache_capacity(4);
        self.check_schema(&conn)?;
        Ok((conn, None))
    }

    fn open_uri(&self, params: &str) -> DbResult<Connection> {
        let uri = format!("file://{}?{params}", uri_path(&self.real));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(uri, flags).map_err(|e| self.sqlite_error(e, "open"))?;
        // A read-only connection cannot checkpoint anyway; say so explicitly.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(|e| self.sqlite_error(e, "configuring the connection"))?;
        Ok(conn)
    }

    /// The first 100 bytes of the database file, read through SQLite's own
    /// file handle of `conn` (never a descriptor of ours: see the module
    /// documentation).
    fn header(&self, conn: &Connection) -> DbResult<[u8; 100]> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: `conn.handle()` is the live `sqlite3*` of `conn`, used only
        // for this call, on this thread; SQLITE_FCNTL_FILE_POINTER writes one
        // `sqlite3_file*` to the pointer we pass, which points to `file`.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&mut file as *mut *mut ffi::sqlite3_file).cast::<c_void>(),
            )
        };
        let unreadable = |what: &str| DbError::new(DbErrorKind::Unreadable, &self.path, what);
        if rc != ffi::SQLITE_OK || file.is_null() {
            return Err(unreadable("SQLite has no open file for the database"));
        }
        // SAFETY: `file` is SQLite's open file object of the main database of
        // `conn`, which outlives this function's use of it; `pMethods` is
        // set for an open file.
        let read = unsafe { (*file).pMethods.as_ref().and_then(|m| m.xRead) };
        let Some(read) = read else {
            return Err(unreadable("SQLite's file object has no read method"));
        };
        let mut buf = [0u8; 100];
        // SAFETY: xRead reads at most `buf.len()` bytes into `buf` from offset
        // 0 of `file`; a short read zero-fills the rest and says so.
        let rc = unsafe { read(file, buf.as_mut_ptr().cast(), buf.len() as c_int, 0) };
        match rc {
            ffi::SQLITE_OK => {}
            ffi::SQLITE_IOERR_SHORT_READ if buf == [0; 100] => {
                return Err(DbError::new(
                    DbErrorKind::NoValidPaths,
                    &self.path,
                    "the file is empty: an empty database, without table ValidPaths",
                ))
            }
            ffi::SQLITE_IOERR_SHORT_READ => return Err(not_sqlite(&self.path)),
            rc => {
                return Err(unreadable(&format!(
                    "reading the database header failed (SQLite error {rc})"
                )))
            }
        }
        if &buf[..16] != b"SQLite format 3\0" {
            return Err(not_sqlite(&self.path));
        }
        Ok(buf)
    }

    /// Checks that the database has `ValidPaths(path)`.
    fn check_schema(&self, conn: &Connection) -> DbResult<()> {
        let checks = [
            (TABLE_QUERY, "has no table ValidPaths"),
            (
                "SELECT 1 FROM pragma_table_info(?1) WHERE name = 'path'",
                "table ValidPaths has no column path",
            ),
        ];
        for (query, missing) in checks {
            let found = conn
                .prepare(query)
                .and_then(|mut s| s.exists(["ValidPaths"]))
                .map_err(|e| self.sqlite_error(e, "reading the schema"))?;
            if !found {
                return Err(DbError::new(
                    DbErrorKind::NoValidPaths,
                    &self.path,
                    format!("{missing}: not a Nix or Guix store database"),
                ));
            }
        }
        Ok(())
    }

    /// `stat` of the database file (never an open descriptor), with the
    /// missing-file and not-a-file errors.
    fn file_id(&self) -> DbResult<FileId> {
        let m = std::fs::metadata(&self.real).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(&self.path),
            _ => DbError::new(DbErrorKind::Unreadable, &self.path, format!("stat: {e}")),
        })?;
        if !m.is_file() {
            return Err(DbError::new(
                DbErrorKind::NotAFile,
                &self.path,
                "is not a regular file",
            ));
        }
        Ok((
            m.dev(),
            m.ino(),
            m.size(),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        ))
    }

    fn wal_file_exists(&self) -> DbResult<bool> {
        let mut wal = self.real.clone().into_os_string();
        wal.push("-wal");
        match std::fs::symlink_metadata(&wal) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DbError::new(
                DbErrorKind::Unreadable,
                &self.path,
                format!("stat of {}: {e}", Path::new(&wal).display()),
            )),
        }
    }

    fn sqlite_error(&self, e: rusqlite::Error, op: &str) -> DbError {
        let (code, msg) = match &e {
            rusqlite::Error::SqliteFailure(f, m) => {
                (Some(f.code), m.clone().unwrap_or_else(|| f.to_string()))
            }
            other => (None, other.to_string()),
        };
        let (kind, detail) = match code {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => (
                DbErrorKind::Locked,
                format!(
                    "{op}: still locked by a writer after the busy timeout of {} ms ({msg})",
                    self.options.busy_timeout.as_millis()
                ),
            ),
            Some(ErrorCode::NotADatabase) => return not_sqlite(&self.path),
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => (
                DbErrorKind::Unreadable,
                format!(
                    "{op}: {msg} (check that this user may read the file, and its -wal and \
                     -shm files when the daemon has the database open)"
                ),
            ),
            Some(ErrorCode::ReadOnly) => (
                DbErrorKind::Unreadable,
                format!("{op}: {msg} (a read-only reader cannot recover this database)"),
            ),
            _ => (DbErrorKind::Sqlite, format!("{op}: {msg}")),
        };
        DbError::new(kind, &self.path, detail)
    }
}

/// A store path as an SQL text value, byte for byte (a file name need not
/// be UTF-8; the daemons' store paths are ASCII).
fn text(bytes: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(bytes))
}

fn missing(path: &Path) -> DbError {
    DbError::new(
        DbErrorKind::Missing,
        path,
        "no such file (the store database is db.sqlite in the daemon's state directory, \
         e.g. /var/guix/db/db.sqlite)",
    )
}

fn not_sqlite(path: &Path) -> DbError {
    DbError::new(
        DbErrorKind::NotSqlite,
        path,
        "is not an SQLite database (no \"SQLite format 3\" header)",
    )
}

/// The path part of a `file:` URI: every byte outside the unreserved set
/// (and `/`) percent-encoded, so that `?`, `#` and `%` in a file name are
/// taken literally.
fn uri_path(path: &Path) -> String {
    let mut s = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// One query, for hosts that ask rarely: opens `db` read-only, asks whether
/// `store_path` is registered, and closes it. A host that asks often keeps a
/// [`StoreDb`].
pub fn is_valid(db: impl AsRef<Path>, store_path: impl AsRef<Path>) -> DbResult<bool> {
    StoreDb::open(db)?.is_valid(store_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_path_escapes_what_sqlite_would_parse() {
        assert_eq!(
            uri_path(Path::new("/var/guix/db/db.sqlite")),
            "/var/guix/db/db.sqlite"
        );
        assert_eq!(uri_path(Path::new("/a b/c?d#e%f")), "/a%20b/c%3Fd%23e%25f");
    }

    #[test]
    fn relative_database_path_is_refused_without_touching_it() {
        let e = StoreDb::open("db.sqlite").unwrap_err();
        assert_eq!(e.kind(), DbErrorKind::RelativePath);
        assert!(e.to_string().contains("db.sqlite"), "{e}");
    }
}
