//! Real Nix (Debian's nix-bin, Nix 2.8) against goalkeeper, in a private
//! store under /tmp: `nix-instantiate` and `nix-store --realise` of plain
//! `derivation { builder = "/bin/sh"; … }` expressions (no nixpkgs).
//!
//! What Nix 2.8 does with an output's lock file, from its source
//! (src/libstore/pathlocks.cc, build/derivation-goal.cc) and as observed
//! with strace: `open(OUT.lock, O_RDWR|O_CREAT|O_CLOEXEC, 0600)`, then
//! `flock(LOCK_EX|LOCK_NB)`; on EWOULDBLOCK it closes the file, prints
//! "waiting for lock on …" and tries again after `build-poll-interval`
//! seconds (5 by default; 1 here, to keep the tests fast); once it has the
//! lock it `fstat`s the file and starts over if the size is not 0 (a stale,
//! deleted lock file). After the build it registers the output in its
//! database, then unlinks OUT.lock, writes "d" into it, and closes it.
//!
//! Without nix-bin these tests fail, saying how to install it: they never
//! skip.

mod common;
mod lockkit;
mod nixkit;

use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::time::Duration;

use goalkeeper::lock::{Backend, LockSet, WaitMode};
use goalkeeper::store_db::{self, StoreDb};
use goalkeeper::Error;
use lockkit::{inode_of, proc_locks, wait_until};
use nixkit::{Gate, NixStore, GATED_BUILDER, LIMIT};

/// What this process's open descriptors on `lf` point to, as the kernel
/// names them (`… (deleted)` for an unlinked file).
fn fds_of(lf: &Path) -> Vec<String> {
    let name = lf.display().to_string();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with(&name))
        .collect()
}

fn lock_file(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", out.display()))
}

/// Kernel `FLOCK` entries held on the lock file now at `lf`, as (pid) list.
fn flock_holders(lf: &Path) -> Vec<i64> {
    proc_locks(inode_of(lf))
        .held
        .into_iter()
        .filter(|(k, _)| k == "FLOCK")
        .map(|(_, p)| p)
        .collect()
}

/// goalkeeper's `flock` backend and Nix 2.8 exclude each other, both ways.
///
/// 1. goalkeeper holds OUT.lock: nix-store says "waiting for lock", does not
///    build, and builds once goalkeeper releases (without deletion); it then
///    deletes the lock file, as after every build.
/// 2. nix-store holds OUT.lock while its builder runs: goalkeeper's try is
///    busy and a timed wait times out; after the build goalkeeper gets it.
#[test]
fn flock_backend_excludes_nix_both_ways() {
    let nix = NixStore::new();

    // 1. goalkeeper first.
    let (drv, out) = nix.instantiate("gk-first", "echo built > $out", &[]);
    let lf = lock_file(&out);
    let set = LockSet::try_acquire([&out], Backend::Flock).unwrap();
    let mut r = nix.realise(&drv);
    r.expect_line("waiting for lock on");
    assert!(!out.exists(), "Nix built while goalkeeper held the lock");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    // Nix is not blocked in the kernel: it polls with LOCK_NB.
    assert!(proc_locks(inode_of(&lf)).waiting.is_empty());
    set.release().unwrap();
    let (_, stdout) = r.finish();
    assert_eq!(stdout.trim(), out.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    assert!(!lf.exists(), "Nix deletes the lock file after its build");
    assert!(store_db::is_valid(nix.db(), &out).unwrap());

    // 2. Nix first.
    let gate = Gate::new(&nix, "nix-first");
    let (drv, out) = nix.instantiate("nix-first", GATED_BUILDER, &gate.attrs());
    let lf = lock_file(&out);
    let r = nix.realise(&drv);
    gate.wait_started();
    assert_eq!(
        flock_holders(&lf),
        vec![r.pid() as i64],
        "nix-store holds OUT.lock"
    );
    let e = LockSet::try_acquire([&out], Backend::Flock).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    let e = LockSet::acquire(
        [&out],
        Backend::Flock,
        WaitMode::Timeout(Duration::from_millis(100)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    gate.open();
    r.finish();
    let set = LockSet::try_acquire([&out], Backend::Flock).expect("free after Nix's build");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    set.release().unwrap();
}

/// A goalkeeper waiter blocked (in the kernel, on flock) while Nix builds
/// wakes when Nix deletes the lock file, notices that the file it locked is
/// stale (unlinked, "d" written), and ends up holding a live lock file: the
/// one now linked at OUT.lock, a new inode, that Nix would lock too.
#[test]
fn waiter_blocked_on_nix_survives_the_deletion() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "deleted");
    let (drv, out) = nix.instantiate("deleted", GATED_BUILDER, &gate.attrs());
    let lf = lock_file(&out);
    let r = nix.realise(&drv);
    gate.wait_started();
    let nix_inode = inode_of(&lf);
    assert_eq!(flock_holders(&lf), vec![r.pid() as i64]);

    let out2 = out.clone();
    let (tx, rx) = channel();
    let waiter = std::thread::spawn(move || {
        let r = LockSet::acquire([&out2], Backend::Flock, WaitMode::Timeout(LIMIT));
        let _ = tx.send(());
        r
    });
    wait_until("the goalkeeper waiter blocks on Nix's lock", LIMIT, || {
        !proc_locks(nix_inode).waiting.is_empty()
    });
    assert_eq!(
        fds_of(&lf),
        vec![lf.display().to_string()],
        "the waiter waits on the file Nix holds"
    );
    assert!(rx.try_recv().is_err(), "acquired while Nix builds");

    gate.open();
    r.finish();
    rx.recv_timeout(LIMIT).expect("the waiter did not wake");
    let set = waiter.join().unwrap().expect("the waiter acquires");
    let m = std::fs::metadata(&lf).expect("OUT.lock is linked while goalkeeper holds it");
    assert_eq!(m.len(), 0, "not a stale ('d') file");
    // This process's descriptors of the lock file: exactly one, and it is
    // the linked file, not the one Nix unlinked (its inode number may have
    // been reused, so compare what the kernel says of the descriptors).
    let ours = fds_of(&lf);
    assert_eq!(ours, vec![lf.display().to_string()], "{ours:?}");
    assert_eq!(flock_holders(&lf), vec![std::process::id() as i64]);
    // A Nix (or goalkeeper) locker now contends on this very file.
    let e = LockSet::try_acquire([&out], Backend::Flock).unwrap_err();
    assert!(matches!(e, Error::HeldByThisProcess { .. }), "{e}");
    // The waiter's goal would now find the output valid, from the database.
    assert!(store_db::is_valid(nix.db(), &out).unwrap());
    let mut set = set;
    set.set_deletion(true);
    set.release().unwrap();
    assert!(!lf.exists());
}

/// The database validity source reads Nix's own db.sqlite: while the
/// builder has written its output in place and is still running, the path
/// exists but is NOT valid (the file-existence default would say valid);
/// after the build it is valid.
#[test]
fn store_db_reads_nix_database_not_valid_during_build_valid_after() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "inplace");
    let (drv, out) = nix.instantiate("inplace", GATED_BUILDER, &gate.attrs());
    let r = nix.realise(&drv);
    gate.wait_started();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "partial\n",
        "the builder writes its output in place"
    );
    let db = nix.db();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(wal.exists(), "Nix has its database open in WAL mode");
    let mut sdb = StoreDb::open(&db).unwrap();
    assert!(!sdb.is_valid(&out).unwrap(), "valid while still building");
    assert!(sdb.is_valid(&drv).unwrap(), "the .drv is registered");
    assert_eq!(
        sdb.snapshot_reads(),
        0,
        "read through SQLite's live protocol"
    );
    gate.open();
    r.finish();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "partial\ndone\n");
    assert!(sdb.is_valid(&out).unwrap(), "registered after the build");
    assert_eq!(
        sdb.valid_paths([&out, &PathBuf::from(&drv)]).unwrap(),
        vec![true, true]
    );
    drop(sdb);
    assert!(store_db::is_valid(&db, &out).unwrap());
    // The next nix-store finds its database in order (and the path valid).
    let out_again = nix.run_ok(nix.command("nix-store").args(["--realise", &drv]));
    assert_eq!(out_again, out.to_str().unwrap());
}
