//! Model-based random-sequence testing of the C ABI (issue 6).
//!
//! proptest generates sequences of C ABI calls with random arguments: valid,
//! stale, forged, freed and wrong-kind handles; NULL and misaligned pointers;
//! zero, short and huge lengths; bad paths (relative, `.`/`..`, the root,
//! empty, over `PATH_MAX`, an embedded NUL through the packed API, non-UTF-8,
//! a directory or a symlink at `P.lock`, a missing parent, a name over
//! `NAME_MAX`); contention from a "foreign" holder (a second open file
//! description holding both an OFD lock and a `flock`, as another process
//! would); timeouts; `fork` children that must not believe they hold their
//! parent's locks; and ENOSPC on the deletion token (the `fault-injection`
//! feature).
//!
//! A reference model, written independently of the library, predicts the
//! status of every call. After every step the test checks, against the
//! model: the process's held-path registry (`gk_held_paths`,
//! `gk_held_count`), every live handle (`gk_lockset_check`), the kernel's
//! view (a probe on a fresh descriptor must find each path we hold locked
//! with its backend, and each free path free), which lock files exist, the
//! number of lock descriptors and of lock-wait threads, and that
//! `gk_last_error_message()` is empty exactly after `GK_OK`.
//!
//! A second test does the same for the worker functions (`gk_worker_*`),
//! see `worker_fuzz` below, and a third for the store database functions
//! (`gk_store_db_*`, `gk_store_path_valid`), see `storedb.rs`.
//!
//! `GOALKEEPER_FUZZ_CASES` sets the number of lock-set cases (default 2000;
//! `make soak` runs 100,000), `GOALKEEPER_FUZZ_WORKER_CASES` the worker
//! cases (default half as many; `make soak` runs 20,000).
//! `GOALKEEPER_FUZZ_SEED` fixes the seed. Each test prints how many calls it
//! made and which statuses it saw, and fails if the generator stopped
//! reaching one of the statuses it is meant to reach.
//!
//! Layout: this file holds the shared harness (status recording, the
//! runner) and the three tests; `store.rs` the pool of names and kernel
//! probes; `args.rs` generated pointers, lengths and output buffers;
//! `lockset.rs` the lock-set fuzzer and its model; `worker.rs` the worker
//! fuzzer; `storedb.rs` the store database fuzzer and its model.

use goalkeeper::ffi::gk_status::{self, *};
use goalkeeper::ffi::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

/// The tests in this binary share the process-wide registry; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set when a failing case left descriptors or threads behind.
static POISONED: AtomicBool = AtomicBool::new(false);

struct Stats {
    calls: u64,
    statuses: BTreeMap<&'static str, u64>,
    forks: u64,
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(fail(format!($($fmt)*)));
        }
    };
}

/// Lock-wait helper threads alive in this process (named `gk-lockwait`).
fn lockwait_threads() -> usize {
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("comm"))
                .map(|c| c.starts_with(b"gk-lockwait"))
                .unwrap_or(false)
        })
        .count()
}

fn message() -> Vec<u8> {
    // SAFETY: the library promises a valid, NUL-terminated string.
    unsafe { CStr::from_ptr(gk_last_error_message()) }
        .to_bytes()
        .to_vec()
}

fn record(stats: &mut Stats, s: gk_status) -> Result<gk_status, TestCaseError> {
    stats.calls += 1;
    *stats.statuses.entry(s.name()).or_default() += 1;
    let m = message();
    ensure!(
        std::str::from_utf8(&m).is_ok(),
        "message is not UTF-8: {m:?}"
    );
    if s == GK_OK {
        ensure!(
            m.is_empty(),
            "GK_OK left a message: {}",
            String::from_utf8_lossy(&m)
        );
    } else {
        ensure!(!m.is_empty(), "{} without a message", s.name());
    }
    ensure!(
        s != GK_ERROR_PANIC,
        "panic: {}",
        String::from_utf8_lossy(&m)
    );
    ensure!(
        s != GK_ERROR_INVARIANT_VIOLATION,
        "invariant violation: {}",
        String::from_utf8_lossy(&m)
    );
    Ok(s)
}

fn expect(
    stats: &mut Stats,
    what: &str,
    got: gk_status,
    want: gk_status,
) -> Result<(), TestCaseError> {
    record(stats, got)?;
    ensure!(
        got == want,
        "{what}: got {} ({}), model predicted {}",
        got.name(),
        String::from_utf8_lossy(&message()),
        want.name()
    );
    Ok(())
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("GOALKEEPER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4000,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    match std::env::var("GOALKEEPER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
        }
        None => TestRunner::new(config),
    }
}

#[path = "../common/mod.rs"]
mod common;

mod args;
mod lockset;
mod store;
mod storedb;
mod worker;
mod worker_batch;

#[test]
fn lockset_abi_random_call_sequences_match_the_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases_from_env(2000);
    let started = Instant::now();
    let stats = std::cell::RefCell::new(Stats {
        calls: 0,
        statuses: BTreeMap::new(),
        forks: 0,
    });
    let strategy = proptest::collection::vec(lockset::op(), 1..40);
    let result = runner(cases).run(&strategy, |ops| {
        lockset::run_case(&ops, &mut stats.borrow_mut())
    });
    let stats = stats.into_inner();
    println!(
        "abi_fuzz: {cases} cases, {} calls, {} forks in {:.1} s; statuses: {:?}",
        stats.calls,
        stats.forks,
        started.elapsed().as_secs_f64(),
        stats.statuses
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    if cases >= 1000 {
        let want: BTreeSet<&str> = [
            GK_OK,
            GK_BUSY,
            GK_HELD_BY_THIS_PROCESS,
            GK_TIMED_OUT,
            GK_ERROR_NULL_POINTER,
            GK_ERROR_INVALID_PATH,
            GK_ERROR_INVALID_ARGUMENT,
            GK_ERROR_STALE_HANDLE,
            GK_ERROR_BUFFER_TOO_SMALL,
            GK_ERROR_IO,
            GK_ERROR_SYMLINK,
            GK_ERROR_NAME_TOO_LONG,
        ]
        .iter()
        .map(|s| s.name())
        .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|s| !stats.statuses.contains_key(*s))
            .collect();
        assert!(
            missing.is_empty(),
            "the generator never produced {missing:?}"
        );
    }
}

#[test]
fn worker_abi_random_call_sequences_keep_the_invariants() {
    // The ledger's full sweep on every call, on top of the O(touched)
    // checks. The library reads GOALKEEPER_DEBUG_SWEEP once, when it is
    // loaded (before main), so setting it here would be too late: the test
    // runs itself again in a child process that has it from the start.
    if !goalkeeper::sched::debug_sweep_default() {
        let name = "worker_abi_random_call_sequences_keep_the_invariants";
        let out = common::run_bounded(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env("GOALKEEPER_DEBUG_SWEEP", "1"),
            std::time::Duration::from_secs(1800),
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "the fuzz run with the full sweep failed: {}",
            out.status
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran no test"
        );
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = std::env::var("GOALKEEPER_FUZZ_WORKER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases_from_env(2000) / 2);
    let started = Instant::now();
    let stats = std::cell::RefCell::new(Stats {
        calls: 0,
        statuses: BTreeMap::new(),
        forks: 0,
    });
    let strategy = proptest::collection::vec(worker::wop(), 1..60);
    let result = runner(cases).run(&strategy, |ops| {
        worker::run_case(&ops, &mut stats.borrow_mut())
    });
    let stats = stats.into_inner();
    let records = worker::LOG_RECORDS_CHECKED.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "abi_fuzz_worker: {cases} cases, {} calls in {:.1} s; {records} log records checked; \
         statuses: {:?}",
        stats.calls,
        started.elapsed().as_secs_f64(),
        stats.statuses
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    if cases >= 500 {
        assert!(
            records > 0,
            "the generator never made gk_worker_take_log_records return a record"
        );
        let missing: Vec<&str> = [
            GK_OK,
            GK_ERROR_NULL_POINTER,
            GK_ERROR_INVALID_PATH,
            GK_ERROR_INVALID_ARGUMENT,
            GK_ERROR_STALE_HANDLE,
            GK_ERROR_INVALID_STATE,
            GK_ERROR_BUFFER_TOO_SMALL,
        ]
        .iter()
        .map(|s| s.name())
        .filter(|s| !stats.statuses.contains_key(s))
        .collect();
        assert!(
            missing.is_empty(),
            "the generator never produced {missing:?}"
        );
    }
}

#[test]
fn store_db_abi_random_call_sequences_match_the_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases_from_env(2000) / 4;
    let started = Instant::now();
    let stats = std::cell::RefCell::new(Stats {
        calls: 0,
        statuses: BTreeMap::new(),
        forks: 0,
    });
    let strategy = proptest::collection::vec(storedb::dop(), 1..30);
    let result = runner(cases).run(&strategy, |ops| {
        storedb::run_case(&ops, &mut stats.borrow_mut())
    });
    let stats = stats.into_inner();
    println!(
        "abi_fuzz_store_db: {cases} cases, {} calls, {} forks in {:.1} s; statuses: {:?}",
        stats.calls,
        stats.forks,
        started.elapsed().as_secs_f64(),
        stats.statuses
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    if cases >= 250 {
        let missing: Vec<&str> = [
            GK_OK,
            GK_ERROR_NULL_POINTER,
            GK_ERROR_INVALID_PATH,
            GK_ERROR_INVALID_ARGUMENT,
            GK_ERROR_STALE_HANDLE,
            GK_ERROR_STORE_DB_MISSING,
            GK_ERROR_STORE_DB_NOT_SQLITE,
            GK_ERROR_STORE_DB_NO_VALID_PATHS,
        ]
        .iter()
        .map(|s| s.name())
        .filter(|s| !stats.statuses.contains_key(s))
        .collect();
        assert!(
            missing.is_empty(),
            "the generator never produced {missing:?}"
        );
    }
}
