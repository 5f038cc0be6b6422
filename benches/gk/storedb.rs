//! validity_query_ns: one `StoreDb::is_valid` query against one query of a
//! raw rusqlite prepared statement on the same database, in the same run,
//! alternately.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use goalkeeper::store_db::StoreDb;
use rusqlite::{Connection, OpenFlags};

use crate::report::Measured;

/// Paths registered in the benchmark database.
const REGISTERED: usize = 10_000;
/// Queries timed per repetition and side.
const QUERIES: usize = 20_000;
/// Repetitions (each side once per repetition, in alternating order).
const ROUNDS: usize = 7;
/// One-call queries (open, check, query, close) timed per repetition.
const ONE_CALLS: usize = 200;

fn path(i: usize) -> String {
    // Store-path-shaped: 32 base-32 characters of hash, then a name.
    let mut h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let hash: String = (0..32)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            b"0123456789abcdfghijklmnpqrsvwxyz"[(h % 32) as usize] as char
        })
        .collect();
    format!("/gnu/store/{hash}-package-{i}")
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// validity_query_ns.
pub fn run(dir: &Path) -> Vec<(&'static str, Measured)> {
    let db = dir.join("db.sqlite");
    let _ = std::fs::remove_file(&db);
    // The "daemon": creates the database (Guix's ValidPaths) in WAL mode and
    // keeps it open, as guix-daemon does while it serves a client.
    let daemon = Connection::open(&db).expect("create the benchmark database");
    daemon
        .execute_batch(
            "pragma journal_mode = wal;
             create table ValidPaths (
                 id integer primary key autoincrement not null,
                 path text unique not null, hash text not null,
                 registrationTime integer not null, deriver text, narSize integer);
             begin;",
        )
        .expect("schema");
    for i in 0..REGISTERED {
        daemon
            .execute(
                "insert into ValidPaths (path, hash, registrationTime) values (?1, 'sha256:0', 1)",
                [path(i)],
            )
            .expect("insert");
    }
    daemon.execute_batch("commit").expect("commit");

    // Half registered, half not (every other query misses), fixed order.
    let queries: Vec<String> = (0..1000)
        .map(|k| {
            let i = (k * 7919) % REGISTERED;
            if k % 2 == 0 {
                path(i)
            } else {
                format!("{}-unregistered", path(i))
            }
        })
        .collect();

    let mut gk = StoreDb::open(&db).expect("StoreDb::open");
    let raw = Connection::open_with_flags(
        &db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("raw connection");
    let mut stmt = raw
        .prepare("SELECT 1 FROM ValidPaths WHERE path = ?1")
        .expect("prepare");

    let mut time_gk = || {
        let t = Instant::now();
        let mut n = 0usize;
        for k in 0..QUERIES {
            n += gk.is_valid(&queries[k % queries.len()]).expect("is_valid") as usize;
        }
        black_box(n);
        assert_eq!(n, QUERIES / 2);
        t.elapsed().as_nanos() as f64 / QUERIES as f64
    };
    let mut time_raw = || {
        let t = Instant::now();
        let mut n = 0usize;
        for k in 0..QUERIES {
            n += stmt
                .exists([queries[k % queries.len()].as_str()])
                .expect("raw query") as usize;
        }
        black_box(n);
        assert_eq!(n, QUERIES / 2);
        t.elapsed().as_nanos() as f64 / QUERIES as f64
    };
    time_gk(); // warm-up: page cache, statement caches
    time_raw();
    let (mut g, mut r) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            g.push(time_gk());
            r.push(time_raw());
        } else {
            r.push(time_raw());
            g.push(time_gk());
        }
    }
    // The batch form: 16 paths per read transaction (one snapshot), ns per path.
    let mut batch = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut n = 0usize;
        for chunk in queries.chunks(16).cycle().take(QUERIES / 16) {
            n += gk
                .valid_paths(chunk)
                .expect("valid_paths")
                .iter()
                .filter(|&&v| v)
                .count();
        }
        black_box(n);
        batch.push(t.elapsed().as_nanos() as f64 / (QUERIES / 16 * 16) as f64);
    }
    // The one-call form (gk_store_path_valid, Guile's store-path-valid?):
    // open, check the schema, query, close; µs per call.
    let mut one_call = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut n = 0usize;
        for q in queries.iter().take(ONE_CALLS) {
            n += goalkeeper::store_db::is_valid(&db, q).expect("one call") as usize;
        }
        black_box(n);
        one_call.push(t.elapsed().as_nanos() as f64 / ONE_CALLS as f64 / 1e3);
    }
    let snapshot_reads = gk.snapshot_reads();
    drop((stmt, gk));
    drop(raw);
    drop(daemon);
    let _ = std::fs::remove_file(&db);
    let (_, bmed, _) = stats(batch);
    let (_, omed, _) = stats(one_call);
    assert_eq!(snapshot_reads, 0, "the live path was measured");
    let note = format!(
        "StoreDb::is_valid vs a raw rusqlite prepared statement, same read-only WAL \
                 database held open by a writer connection, {REGISTERED} registered paths, \
                 half the queries miss; {QUERIES} queries per repetition, medians of {ROUNDS} \
                 alternating repetitions; the batch form (valid_paths, 16 paths per read \
                 transaction) costs {bmed:.0} ns per path: each read transaction takes and drops \
                 a WAL read lock, two fcntl calls, which dominate a single query; the one-call \
                 form (open, check the schema, query, close: gk_store_path_valid) costs \
                 {omed:.1} µs"
    );
    vec![("validity_query_ns", Measured::samples(&g, Some(&r), note))]
}
