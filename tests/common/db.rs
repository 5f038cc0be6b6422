//! Store databases for tests: real SQLite files with the `ValidPaths` table
//! of Guix's `nix/libstore/schema.sql` (schema version 7), written through
//! rusqlite, which links the same system `libsqlite3` as goalkeeper.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// `ValidPaths` as Guix creates it, with the table that refers to it, and
/// `FailedPaths`.
pub const GUIX_SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create table if not exists FailedPaths (
    path text primary key not null,
    time integer not null
);";

/// Creates `dir/db.sqlite` with the Guix schema in `journal_mode` ("wal",
/// "delete", "truncate"), registers `paths`, and closes it.
pub fn create(dir: &Path, journal_mode: &str, paths: &[&str]) -> PathBuf {
    let db = dir.join("db.sqlite");
    let c = Connection::open(&db).expect("create the store database");
    let mode: String = c
        .query_row(&format!("pragma journal_mode = {journal_mode}"), [], |r| {
            r.get(0)
        })
        .expect("set the journal mode");
    assert_eq!(mode, journal_mode);
    // Test databases in temporary directories need no fsync.
    c.execute_batch("pragma synchronous = off")
        .expect("pragma synchronous");
    c.execute_batch(GUIX_SCHEMA).expect("create the schema");
    for p in paths {
        insert(&c, p);
    }
    db
}

/// Registers `path` through `c`, as the daemon does when a build succeeds.
pub fn insert(c: &Connection, path: &str) {
    c.execute(
        "insert into ValidPaths (path, hash, registrationTime, narSize) \
         values (?1, 'sha256:0', 1, 0)",
        [path],
    )
    .expect("register a path");
}

/// Opens `db` and registers `path` (one short write transaction).
pub fn register(db: &Path, path: &str) {
    let c = Connection::open(db).expect("open the store database");
    c.busy_timeout(std::time::Duration::from_secs(20)).unwrap();
    insert(&c, path);
}

/// Opens `db` and lists `path` in `FailedPaths`, as guix-daemon
/// `--cache-failures` does when a build fails (`insert or ignore`).
pub fn register_failed(db: &Path, path: &str) {
    let c = Connection::open(db).expect("open the store database");
    c.busy_timeout(std::time::Duration::from_secs(20)).unwrap();
    c.execute(
        "insert or ignore into FailedPaths (path, time) values (?1, 1)",
        [path],
    )
    .expect("register a failed path");
}

/// The database file's bytes replaced in place (same inode, same size) by
/// garbage; returns the original bytes for [`restore`]. A connection that
/// has the file open sees it at its next read transaction.
pub fn garble(db: &Path) -> Vec<u8> {
    let original = std::fs::read(db).expect("read the database");
    let garbage: Vec<u8> = (0..original.len()).map(|i| (i * 7 + 13) as u8).collect();
    write_in_place(db, &garbage);
    original
}

/// Puts back the bytes [`garble`] returned, in place.
pub fn restore(db: &Path, original: &[u8]) {
    write_in_place(db, original);
}

fn write_in_place(db: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .expect("open the database for writing");
    f.write_all(bytes).expect("write the database");
    f.sync_all().ok();
}
