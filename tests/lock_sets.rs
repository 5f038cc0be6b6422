//! Lock sets inside one process and against others: L3 re-acquisition is
//! reported (G5), L8 all-or-nothing acquisition (G2), and timed waits.
//!
//! Tests in this binary run in parallel threads of one process and share
//! its registry, so each uses its own store and checks its own paths, never
//! process-wide counts (those are checked in helper processes).

mod common;
mod lockkit;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::ffi::gk_status;
use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode};
use goalkeeper::Error;
use lockkit::{bounded, busy_for, inode_of, wait_for_waiters, REPLY};

const BACKENDS: [(Backend, &str); 2] = [(Backend::Ofd, "posix"), (Backend::Flock, "flock")];

fn held_by_me(p: &str) -> bool {
    lock::is_held_by_me(&StorePath::new(p).unwrap())
}

fn lock_file(p: &str) -> PathBuf {
    PathBuf::from(format!("{p}.lock"))
}

/// L3: a second acquisition of a path this process holds is reported as
/// HeldByThisProcess, naming the path and the holding set, for both
/// backends and every wait mode: never granted, never a self-block (a
/// blocking or timed call returns at once rather than waiting).
#[test]
fn l3_reacquire_in_process_is_reported_for_every_mode_and_backend() {
    for (b, _) in BACKENDS {
        for mode in [
            WaitMode::Try,
            WaitMode::Forever,
            WaitMode::Timeout(Duration::from_secs(30)),
        ] {
            let s = TempStore::new();
            let p = s.path("aaa-out");
            let set = LockSet::try_acquire([&p], b).unwrap();
            let id = set.id();
            let t = Instant::now();
            let p2 = p.clone();
            let e = bounded("re-acquire", REPLY, move || {
                LockSet::acquire([&p2], b, mode)
            })
            .unwrap_err();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{b:?}/{mode:?}: waited {:?} on itself",
                t.elapsed()
            );
            match &e {
                Error::HeldByThisProcess { path, lockset, tag } => {
                    assert_eq!(path.to_str().unwrap(), p);
                    assert_eq!(*lockset, id, "names the holder");
                    assert_eq!(*tag, 0, "a bare lock set has no owner tag");
                }
                other => panic!("{b:?}/{mode:?}: {other}"),
            }
            assert_eq!(gk_status::from(&e), gk_status::GK_HELD_BY_THIS_PROCESS);
            assert!(e.to_string().contains(&format!("lock set {id}")), "{e}");
            // The first set is intact.
            set.check().unwrap();
            assert!(held_by_me(&p));
            set.release().unwrap();
            assert!(!held_by_me(&p));
        }
    }
}

/// L3 across spellings and threads: `/s//x/` names the same lock as `/s/x`,
/// and another thread of the process gets HeldByThisProcess too.
#[test]
fn l3_reacquire_from_another_thread_or_spelling_is_reported() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let odd = format!("{}//aaa-out/", s.dir().display());
    let e = bounded("other thread", REPLY, move || {
        LockSet::acquire([odd], Backend::Ofd, WaitMode::Forever)
    })
    .unwrap_err();
    assert!(matches!(e, Error::HeldByThisProcess { .. }), "{e}");
    set.release().unwrap();
}

/// L3 with overlapping sets: holding {a, b}, a request for {b, c} is refused
/// as HeldByThisProcess and takes nothing: c stays free for other processes
/// and this process does not claim it.
#[test]
fn l3_overlapping_set_is_refused_without_taking_anything() {
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let (pa, pb, pc) = (s.path("aaa"), s.path("bbb"), s.path("ccc"));
        let set = LockSet::try_acquire([&pa, &pb], b).unwrap();
        for mode in [WaitMode::Try, WaitMode::Forever] {
            let (pb2, pc2) = (pb.clone(), pc.clone());
            let e = bounded("overlap", REPLY, move || {
                LockSet::acquire([pc2, pb2], b, mode)
            })
            .unwrap_err();
            assert!(matches!(&e, Error::HeldByThisProcess { path, .. } if path.ends_with("bbb")));
            assert!(!held_by_me(&pc), "{b:?}: c claimed");
            if lock_file(&pc).exists() {
                assert!(!busy_for(kind, &lock_file(&pc)), "{b:?}: c left locked");
            }
        }
        set.release().unwrap();
        let all = LockSet::try_acquire([&pa, &pb, &pc], b).unwrap();
        assert_eq!(all.len(), 3);
        all.release().unwrap();
    }
}

/// L3 through another name for the same lock file (the store directory
/// reached through a symbolic link): the kernel sees the same inode, so a
/// second acquisition must still be reported, and a blocking one must not
/// wait forever on this process's own lock.
#[test]
fn l3_same_lock_file_through_a_symlinked_store_dir_is_not_a_self_block() {
    for (b, _) in BACKENDS {
        let s = TempStore::new();
        let real = s.dir().join("store");
        std::fs::create_dir(&real).unwrap();
        let alias = s.dir().join("alias");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let p_real = format!("{}/aaa-out", real.display());
        let p_alias = format!("{}/aaa-out", alias.display());
        let set = LockSet::try_acquire([&p_real], b).unwrap();
        for mode in [WaitMode::Try, WaitMode::Forever] {
            let pa = p_alias.clone();
            let e = bounded(
                "acquire through the alias",
                Duration::from_secs(5),
                move || LockSet::acquire([pa], b, mode),
            )
            .unwrap_err();
            assert!(
                matches!(e, Error::HeldByThisProcess { .. }),
                "{b:?}/{mode:?}: {e}"
            );
        }
        set.release().unwrap();
        LockSet::try_acquire([&p_alias], b)
            .unwrap()
            .release()
            .unwrap();
    }
}

/// One set naming the same lock file twice, through two names: it must be
/// refused with a clear error, not livelock (taking one name, finding the
/// other busy by itself, releasing, waiting, forever) nor self-block.
#[test]
fn one_set_naming_a_file_twice_through_a_symlink_is_refused_not_a_livelock() {
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let real = s.dir().join("store");
        std::fs::create_dir(&real).unwrap();
        let alias = s.dir().join("alias");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let twice = vec![
            format!("{}/aaa-out", real.display()),
            format!("{}/aaa-out", alias.display()),
        ];
        for mode in [
            WaitMode::Try,
            WaitMode::Forever,
            WaitMode::Timeout(Duration::from_secs(30)),
        ] {
            let t = twice.clone();
            let e = bounded("acquire both names", Duration::from_secs(5), move || {
                LockSet::acquire(t, b, mode)
            })
            .unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains("same lock file")),
                "{b:?}/{mode:?}: {e}"
            );
            assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_INVALID_ARGUMENT);
            assert!(!busy_for(kind, &real.join("aaa-out.lock")), "left locked");
            for p in &twice {
                assert!(!held_by_me(p));
            }
        }
    }
}

/// Deduplication: the same path given twice (in two spellings) is one lock.
#[test]
fn duplicate_paths_in_one_set_are_merged() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let set = LockSet::try_acquire([p.clone(), format!("{p}/"), p.clone()], Backend::Ofd).unwrap();
    assert_eq!(set.len(), 1);
    set.release().unwrap();
}

/// L8: a try that finds path k busy (held by another process) releases
/// paths 1..k-1 before it returns: checked from other processes, and in
/// the registry.
#[test]
fn l8_busy_at_k_releases_paths_before_k() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let names = ["aaa", "bbb", "ccc", "ddd", "eee"];
        let paths: Vec<String> = names.iter().map(|n| s.path(n)).collect();
        let bn = if b == Backend::Ofd { "ofd" } else { "flock" };
        let mut h = kit.helper("hold", &[bn, "try", &paths[3]]);
        h.expect("locked");
        // Given out of order; acquisition is in sorted order, so aaa..ccc
        // are taken before ddd is found busy.
        let e = LockSet::try_acquire(paths.iter().rev(), b).unwrap_err();
        match &e {
            Error::Busy { path } => assert!(path.ends_with("ddd"), "{e}"),
            other => panic!("{other}"),
        }
        for (i, p) in paths.iter().enumerate() {
            assert!(!held_by_me(p), "{b:?}: registry still claims {p}");
            if i != 3 {
                assert!(
                    !busy_for(kind, &lock_file(p)),
                    "{b:?}: {p} left locked after the failure at ddd"
                );
            }
        }
        h.send("release");
        h.expect("released");
        let all = LockSet::try_acquire(&paths, b).unwrap();
        for p in &paths {
            assert!(busy_for(kind, &lock_file(p)), "{b:?}: {p} not locked");
        }
        all.release().unwrap();
    }
}

/// L8 when path k fails with an error rather than contention (its lock
/// file is a symbolic link): the error is returned and 1..k-1 are free.
#[test]
fn l8_error_at_k_releases_paths_before_k() {
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let paths: Vec<String> = ["aaa", "bbb", "ccc"].iter().map(|n| s.path(n)).collect();
        let target = s.dir().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, lock_file(&paths[2])).unwrap();
        for mode in [WaitMode::Try, WaitMode::Forever] {
            let ps = paths.clone();
            let e = bounded("acquire", REPLY, move || LockSet::acquire(ps, b, mode)).unwrap_err();
            assert!(matches!(e, Error::Symlink { .. }), "{b:?}: {e}");
            for p in &paths[..2] {
                assert!(!held_by_me(p));
                assert!(!busy_for(kind, &lock_file(p)), "{b:?}: {p} left locked");
            }
        }
    }
}

/// G2 / L8 for blocking acquisition: while it waits for path k, it holds
/// nothing (every other path is free for other processes); once k is
/// released it holds them all.
#[test]
fn l8_blocking_acquire_holds_nothing_while_it_waits() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let paths: Vec<String> = ["aaa", "bbb", "ccc", "ddd"]
            .iter()
            .map(|n| s.path(n))
            .collect();
        let bn = if b == Backend::Ofd { "ofd" } else { "flock" };
        let mut h = kit.helper("hold", &[bn, "try", &paths[2]]);
        h.expect("locked");
        let (tx, rx) = std::sync::mpsc::channel();
        let ps = paths.clone();
        std::thread::spawn(move || {
            let _ = tx.send(LockSet::acquire(ps, b, WaitMode::Forever));
        });
        wait_for_waiters(inode_of(&lock_file(&paths[2])), 1);
        for (i, p) in paths.iter().enumerate() {
            if i != 2 {
                assert!(
                    !busy_for(kind, &lock_file(p)),
                    "{b:?}: {p} held while waiting for ccc (hold-and-wait)"
                );
            }
            assert!(!held_by_me(p), "{b:?}: registry claims {p} while waiting");
        }
        h.send("release");
        h.expect("released");
        let set = rx
            .recv_timeout(REPLY)
            .expect("acquired after release")
            .unwrap();
        assert_eq!(set.len(), 4);
        for p in &paths {
            assert!(busy_for(kind, &lock_file(p)), "{b:?}: {p} not held");
            assert!(held_by_me(p));
        }
        set.release().unwrap();
    }
}

/// A timed acquisition that cannot get path k returns TimedOut after about
/// the timeout, naming k, holding nothing (registry and kernel).
#[test]
fn timeout_returns_timed_out_holding_nothing() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let paths: Vec<String> = ["aaa", "bbb", "ccc"].iter().map(|n| s.path(n)).collect();
        let bn = if b == Backend::Ofd { "ofd" } else { "flock" };
        let mut h = kit.helper("hold", &[bn, "try", &paths[1]]);
        h.expect("locked");
        let t = Instant::now();
        let e =
            LockSet::acquire(&paths, b, WaitMode::Timeout(Duration::from_millis(150))).unwrap_err();
        let waited = t.elapsed();
        match &e {
            Error::TimedOut { path, waited_ms } => {
                assert!(path.ends_with("bbb"), "{e}");
                assert!(*waited_ms >= 150, "{e}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(gk_status::from(&e), gk_status::GK_TIMED_OUT);
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(5));
        for p in [&paths[0], &paths[2]] {
            assert!(!held_by_me(p));
            assert!(
                !busy_for(kind, &lock_file(p)),
                "{b:?}: {p} held after TimedOut"
            );
        }
        h.send("release");
        h.expect("released");
    }
}

/// A timed acquisition whose path is released in time gets the whole set.
#[test]
fn timeout_acquires_when_released_in_time() {
    let kit = kit!();
    let s = TempStore::new();
    let paths: Vec<String> = ["aaa", "bbb"].iter().map(|n| s.path(n)).collect();
    let mut h = kit.helper("hold", &["ofd", "try", &paths[1]]);
    h.expect("locked");
    let (tx, rx) = std::sync::mpsc::channel();
    let ps = paths.clone();
    std::thread::spawn(move || {
        let _ = tx.send(LockSet::acquire(
            ps,
            Backend::Ofd,
            WaitMode::Timeout(Duration::from_secs(30)),
        ));
    });
    wait_for_waiters(inode_of(&lock_file(&paths[1])), 1);
    h.send("release");
    h.expect("released");
    let set = rx.recv_timeout(REPLY).unwrap().unwrap();
    assert_eq!(set.len(), 2);
    set.release().unwrap();
}

/// `WaitMode::Timeout(Duration::MAX)` means "as long as it takes"; it must
/// neither panic on the deadline arithmetic nor fail.
#[test]
fn timeout_of_duration_max_does_not_panic() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let set = LockSet::acquire([&p], Backend::Ofd, WaitMode::Timeout(Duration::MAX))
        .expect("a free path is acquired");
    set.release().unwrap();
    let mut h = kit.helper("hold", &["ofd", "try", &p]);
    h.expect("locked");
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    std::thread::spawn(move || {
        let _ = tx.send(LockSet::acquire(
            [&p2],
            Backend::Ofd,
            WaitMode::Timeout(Duration::MAX),
        ));
    });
    wait_for_waiters(inode_of(&lock_file(&p)), 1);
    h.send("release");
    h.expect("released");
    rx.recv_timeout(REPLY)
        .expect("woke")
        .expect("acquired")
        .release()
        .unwrap();
}

/// Release with deletion removes every lock file of the set; without it,
/// the files stay. Drop releases without deleting (safety net).
#[test]
fn release_deletes_lock_files_only_when_asked_and_drop_never_does() {
    let s = TempStore::new();
    let paths: Vec<String> = ["aaa", "bbb"].iter().map(|n| s.path(n)).collect();
    let set = LockSet::try_acquire(&paths, Backend::Ofd).unwrap();
    set.release().unwrap();
    assert!(paths.iter().all(|p| lock_file(p).exists()));
    let mut set = LockSet::try_acquire(&paths, Backend::Ofd).unwrap();
    set.set_deletion(true);
    drop(set);
    assert!(paths.iter().all(|p| lock_file(p).exists()), "Drop deleted");
    assert!(paths.iter().all(|p| !held_by_me(p)), "Drop released");
    assert!(paths.iter().all(|p| !busy_for("posix", &lock_file(p))));
    let mut set = LockSet::try_acquire(&paths, Backend::Ofd).unwrap();
    set.set_deletion(true);
    assert!(set.deletion());
    set.release().unwrap();
    assert!(paths.iter().all(|p| !lock_file(p).exists()), "not deleted");
}

/// Many threads of one process contend for overlapping sets: each attempt
/// either holds its whole set or reports HeldByThisProcess (never Busy:
/// nothing outside the process holds these paths), and no path is ever in
/// two held sets at once.
#[test]
fn threads_contending_in_process_never_share_a_path() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = TempStore::new();
    let paths: Arc<Vec<String>> =
        Arc::new(["a", "b", "c", "d"].iter().map(|n| s.path(n)).collect());
    let owners: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let got = Arc::new(AtomicUsize::new(0));
    let mut ts = Vec::new();
    for t in 0..4usize {
        let (paths, owners, got) = (paths.clone(), owners.clone(), got.clone());
        ts.push(std::thread::spawn(move || {
            for i in 0..300usize {
                let pick = [(t + i) % 4, (t + i + 1) % 4];
                match LockSet::try_acquire(pick.iter().map(|&k| &paths[k]), Backend::Ofd) {
                    Ok(set) => {
                        for &k in &pick {
                            assert_eq!(
                                owners[k].swap(t + 1, Ordering::SeqCst),
                                0,
                                "path {k} in two sets"
                            );
                        }
                        for &k in &pick {
                            owners[k].store(0, Ordering::SeqCst);
                        }
                        set.release().unwrap();
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::HeldByThisProcess { .. }) => {}
                    Err(e) => panic!("thread {t}: {e}"),
                }
            }
        }));
    }
    for t in ts {
        t.join().unwrap();
    }
    assert!(got.load(Ordering::Relaxed) > 0);
}

/// While another process holds a path, threads of this process that merely
/// *try* it must all hear Busy, never HeldByThisProcess (nobody in this
/// process holds it), and a blocking acquisition running at the same time
/// must not fail with HeldByThisProcess because of their attempts; it gets
/// the lock once the other process lets go.
#[test]
fn concurrent_failing_tries_are_busy_not_held_by_this_process() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let mut h = kit.helper("hold", &["ofd", "try", &p]);
    h.expect("locked");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tries = Vec::new();
    for t in 0..2 {
        let (p, stop) = (p.clone(), stop.clone());
        tries.push(std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                match LockSet::try_acquire([&p], Backend::Ofd) {
                    Err(Error::Busy { .. }) => {}
                    Err(e @ Error::HeldByThisProcess { .. }) => {
                        wrong.push(format!("thread {t}: {e}"))
                    }
                    other => panic!("thread {t}: {other:?} while another process holds the path"),
                }
            }
            wrong
        }));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    std::thread::spawn(move || {
        let _ = tx.send(LockSet::acquire([&p2], Backend::Ofd, WaitMode::Forever));
    });
    let ino = inode_of(&lock_file(&p));
    lockkit::wait_until("the blocking acquisition blocks", REPLY, || {
        if let Ok(r) = rx.try_recv() {
            panic!("the blocking acquisition returned while another process holds the path: {r:?}");
        }
        lockkit::proc_locks(ino).waiting.len() == 1
    });
    // Let the tries run against the foreign holder for a while: a few
    // thousand attempts, counted by a third thread's own tries.
    for _ in 0..2000 {
        let _ = LockSet::try_acquire([&p], Backend::Ofd);
    }
    // Stop the tries (fcntl locks are not fair: hammering tries would
    // starve the blocked waiter for a while), then let the holder go.
    stop.store(true, Ordering::Relaxed);
    let wrong: Vec<String> = tries.into_iter().flat_map(|t| t.join().unwrap()).collect();
    h.send("release");
    h.expect("released");
    let got = rx
        .recv_timeout(REPLY)
        .expect("the blocking acquisition returned");
    assert!(
        wrong.is_empty(),
        "HeldByThisProcess while only another process held the path ({} times): {}",
        wrong.len(),
        wrong.first().unwrap()
    );
    got.expect("the blocking acquisition got the lock")
        .release()
        .unwrap();
}
