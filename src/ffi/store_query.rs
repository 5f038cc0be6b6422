//! The store database for hosts: "is this store path registered in
//! `ValidPaths`?", outside any worker.
//!
//! Two forms:
//!
//! * a handle, `gk_store_db` (`gk_store_db_open`, `gk_store_db_is_valid`,
//!   `gk_store_db_valid_paths`, `gk_store_db_free`), for a host that asks
//!   often: it keeps one read-only connection and its prepared statement, so
//!   a query costs what `validity_query_ns` in `make bench` says, and it
//!   answers a set of paths from one consistent read transaction;
//! * one call, `gk_store_path_valid`, for a host or script that asks rarely
//!   and would rather not manage a handle (the Guile `store-path-valid?`): it
//!   opens the database, checks its schema, asks and closes, every time.
//!
//! A handle is used outside the handle table's lock (the table only hands
//! out a reference), so a query waiting for the busy timeout never delays
//! other goalkeeper calls. A handle may be used from any thread of the
//! process that opened it; its queries are serialised. In a fork child it is
//! refused (`GK_ERROR_WRONG_PROCESS`): an SQLite connection must not cross
//! a `fork(2)`.

use std::ffi::c_char;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::args;
use super::boundary::call;
use super::handle::{HandleTable, Kind};
use super::status::gk_status;
use crate::base::ForkMutex;
use crate::error::{Error, Result};
use crate::store_db::{self, StoreDb, StoreDbOptions};

/// An opaque handle to a store database opened read-only by
/// `gk_store_db_open`. 0 is never a valid handle.
pub type gk_store_db = u64;

/// The store databases opened through the C ABI (last in the lock order of
/// the handle tables: see `ffi::before_fork`). A query holds the database's
/// own mutex, not the table's.
pub(super) static STORE_DBS: ForkMutex<HandleTable<Arc<Mutex<StoreDb>>>> =
    ForkMutex::new(HandleTable::new(Kind::StoreDb));

/// The most paths `gk_store_db_valid_paths` takes in one call.
const MAX_QUERY_PATHS: usize = args::MAX_SET_LEN;

fn with_db<R>(db: gk_store_db, f: impl FnOnce(&mut StoreDb) -> Result<R>) -> Result<R> {
    let shared = STORE_DBS.with(|h| h.get(db).map(|d| d.clone()))?;
    let mut guard = shared.lock().map_err(|_| {
        Error::Invariant(format!(
            "store database handle {db:#x} was left inconsistent by an internal error; free it"
        ))
    })?;
    f(&mut guard)
}

/// Opens the store database at `db_path` (absolute, e.g.
/// `/var/guix/db/db.sqlite`) read-only and checks that it is an SQLite
/// database with table `ValidPaths`. `busy_timeout_ms` is how long a query
/// waits for a writer's lock before it fails with `GK_ERROR_STORE_DB_LOCKED`
/// (0: 5000 ms). On success `*out` is the new handle; otherwise `*out` is 0
/// and the status says why, with a message naming the file:
/// `GK_ERROR_INVALID_PATH` (relative path), `GK_ERROR_STORE_DB_MISSING`,
/// `GK_ERROR_STORE_DB_NOT_SQLITE`, `GK_ERROR_STORE_DB_NO_VALID_PATHS`,
/// `GK_ERROR_STORE_DB_LOCKED`, `GK_ERROR_STORE_DB_UNREADABLE`,
/// `GK_ERROR_STORE_DB`. goalkeeper never writes the database.
///
/// # Safety
/// `db_path` must be NULL or a NUL-terminated string; `out` must be valid
/// for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_store_db_open(
    db_path: *const c_char,
    busy_timeout_ms: u32,
    out: *mut gk_store_db,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { args::out(out, "out") }?;
        *out = 0;
        // SAFETY: as above.
        let path = unsafe { args::path(db_path, "db_path") }?;
        let mut options = StoreDbOptions::default();
        if busy_timeout_ms != 0 {
            options.busy_timeout = Duration::from_millis(busy_timeout_ms.into());
        }
        let db = StoreDb::with_options(path, options)?;
        *out = STORE_DBS.with(|h| h.insert(Arc::new(Mutex::new(db))));
        Ok(())
    })
}

/// Stores in `*valid` whether `store_path` (absolute, as the daemon registers
/// it, e.g. `/gnu/store/…-hello-2.12`; bytes compared exactly) is registered
/// in the database's `ValidPaths`. On any error `*valid` is false and the
/// status says why (see `gk_store_db_open`; `GK_ERROR_INVALID_PATH` for a
/// relative store path): an error is never "valid".
///
/// # Safety
/// `store_path` must be NULL or a NUL-terminated string; `valid` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_store_db_is_valid(
    db: gk_store_db,
    store_path: *const c_char,
    valid: *mut bool,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let valid = unsafe { args::out(valid, "valid") }?;
        *valid = false;
        // SAFETY: as above.
        let path = unsafe { args::path(store_path, "store_path") }?;
        *valid = with_db(db, |d| Ok(d.is_valid(path)?))?;
        Ok(())
    })
}

/// For each of `paths[0..n_paths]`, stores in `valid[i]` whether it is
/// registered, answered from one read transaction (one consistent snapshot
/// of the database), in the order given (duplicates allowed). On any error
/// every `valid[i]` is false (when `valid` is not NULL).
///
/// # Safety
/// `paths` must be NULL or point to `n_paths` pointers, each NULL or a
/// NUL-terminated string; `valid` must be NULL or valid for writing
/// `n_paths` `bool`s.
#[no_mangle]
pub unsafe extern "C" fn gk_store_db_valid_paths(
    db: gk_store_db,
    paths: *const *const c_char,
    n_paths: usize,
    valid: *mut bool,
) -> gk_status {
    call(|_| {
        if valid.is_null() {
            return Err(Error::NullPointer("valid"));
        }
        if n_paths == 0 {
            return Err(Error::InvalidArgument(
                "empty list of paths (n_paths is 0)".into(),
            ));
        }
        if n_paths > MAX_QUERY_PATHS {
            return Err(Error::InvalidArgument(format!(
                "n_paths is {n_paths}; at most {MAX_QUERY_PATHS} paths in one query"
            )));
        }
        // SAFETY: non-null, and the caller guarantees `n_paths` writable
        // bools (bool has alignment 1).
        let out = unsafe { std::slice::from_raw_parts_mut(valid, n_paths) };
        out.fill(false);
        // SAFETY: the caller guarantees `n_paths` pointers.
        let list = unsafe { args::array(paths, n_paths, "paths") }?
            .iter()
            // SAFETY: each element is guaranteed by the caller.
            .map(|&p| unsafe { args::path(p, "an element of paths") })
            .collect::<Result<Vec<&Path>>>()?;
        let answers = with_db(db, |d| Ok(d.valid_paths(&list)?))?;
        out.copy_from_slice(&answers);
        Ok(())
    })
}

/// Closes a store database opened by `gk_store_db_open`. The handle goes
/// stale; a second free gives `GK_ERROR_STALE_HANDLE`. A query running on
/// another thread finishes first (the connection is closed after it).
#[no_mangle]
pub extern "C" fn gk_store_db_free(db: gk_store_db) -> gk_status {
    call(|_| STORE_DBS.with(|h| h.remove(db)).map(drop))
}

/// One query without a handle: opens the store database at `db_path`
/// read-only (busy timeout 5000 ms), stores in `*valid` whether
/// `store_path` is registered in `ValidPaths`, and closes it. Errors as
/// `gk_store_db_open` and `gk_store_db_is_valid`; on any error `*valid` is
/// false. Each call opens and checks the database: a host that asks often
/// keeps a `gk_store_db`.
///
/// # Safety
/// `db_path` and `store_path` must be NULL or NUL-terminated strings;
/// `valid` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn gk_store_path_valid(
    db_path: *const c_char,
    store_path: *const c_char,
    valid: *mut bool,
) -> gk_status {
    call(|_| {
        // SAFETY: forwarded from this function's contract.
        let valid = unsafe { args::out(valid, "valid") }?;
        *valid = false;
        // SAFETY: as above.
        let db = unsafe { args::path(db_path, "db_path") }?;
        // SAFETY: as above.
        let path = unsafe { args::path(store_path, "store_path") }?;
        *valid = store_db::is_valid(db, path)?;
        Ok(())
    })
}
