//! The worker's C ABI, driven by a real C program (tests/c/worker_test.c)
//! compiled against the built library and header.

mod common;

use std::time::Duration;

use common::{compile, root, run_bounded, TempStore};

#[test]
fn c_program_drives_a_worker_through_the_c_abi() {
    let exe = compile(
        "worker_test",
        &[root().join("tests/c/worker_test.c")],
        false,
        &[],
    );
    let store = TempStore::new();
    let limit = Duration::from_secs(if common::under_valgrind() { 300 } else { 60 });
    let out = run_bounded(common::c_command(&exe).arg(store.dir()), limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checks: Option<u64> = stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok());
    match checks {
        Some(n) if out.status.success() => common::record_suite(
            "tests/c/worker_test.c",
            n > 80,
            n,
            0,
            &format!(
                "{n} passed{}",
                if n > 80 {
                    ""
                } else {
                    "; expected more than 80"
                }
            ),
        ),
        _ => common::record_suite(
            "tests/c/worker_test.c",
            false,
            0,
            1,
            &format!("{}", out.status),
        ),
    }
    assert!(
        out.status.success(),
        "worker_test failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let n = checks.unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    assert!(n > 80, "only {n} checks ran");
}

/// The store database through the C ABI (tests/c/store_db_test.c): the
/// handle, the one-call query and `gk_worker_set_store_database`, every
/// error path, with real SQLite files the program writes through the
/// system libsqlite3.
#[test]
fn c_program_queries_the_store_database() {
    let exe = compile(
        "store_db_test",
        &[root().join("tests/c/store_db_test.c")],
        false,
        &["-lsqlite3"],
    );
    let store = TempStore::new();
    let limit = Duration::from_secs(if common::under_valgrind() { 300 } else { 60 });
    let out = run_bounded(common::c_command(&exe).arg(store.dir()), limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "store_db_test failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let n: u32 = stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    assert!(n > 100, "only {n} checks ran");
}
