//! L2: interoperation with other daemons' locks on the same lock files, and
//! L4: the lock belongs to goalkeeper's own open file description.
//!
//! The peer is a plain C program (`tests/c/locker.c`) that locks the way
//! guix-daemon's C++ `PathLocks` does (classic process-owned POSIX `fcntl`
//! `F_SETLK`) or the way Nix does (`flock`).

mod common;
mod lockkit;

use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::ffi::gk_status;
use goalkeeper::lock::{Backend, LockSet, WaitMode};
use goalkeeper::Error;
use lockkit::{bounded, busy_for, inode_of, wait_for_waiters};

/// L2 (issue 2, "done when"): a plain C program holding a POSIX `fcntl`
/// F_SETLK lock on `P.lock`, as guix-daemon does, makes the OFD backend's
/// try report busy (GK_BUSY through the C ABI too), and a timed wait time out.
#[test]
fn l2_posix_fcntl_holder_makes_ofd_try_busy() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut peer = kit.locker(&["posix", "hold", lf.to_str().unwrap()]);
    peer.expect("locked");
    let e = LockSet::try_acquire([&p], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert_eq!(gk_status::from(&e), gk_status::GK_BUSY);
    assert!(e.to_string().contains("aaa-out"), "names the path: {e}");
    let t = Instant::now();
    let e = LockSet::acquire(
        [&p],
        Backend::Ofd,
        WaitMode::Timeout(Duration::from_millis(50)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(50));
    peer.send("release");
    peer.expect("released");
    LockSet::try_acquire([&p], Backend::Ofd)
        .expect("free once the peer released")
        .release()
        .unwrap();
}

/// L2, the reverse: goalkeeper's OFD lock makes the C program's F_SETLK fail,
/// and its release lets the program in.
#[test]
fn l2_ofd_holder_makes_posix_fcntl_try_fail() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    assert!(
        busy_for("posix", &lf),
        "F_SETLK succeeded against our OFD lock"
    );
    assert!(busy_for("ofd", &lf));
    set.release().unwrap();
    assert!(!busy_for("posix", &lf), "still busy after release");
}

/// L2, blocking both ways: a POSIX holder's release wakes goalkeeper's
/// blocked OFD waiter (no polling), and goalkeeper's release wakes a
/// blocked POSIX waiter (F_SETLKW).
#[test]
fn l2_blocking_handoff_between_posix_and_ofd() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut peer = kit.locker(&["posix", "hold", lf.to_str().unwrap()]);
    peer.expect("locked");
    let p2 = p.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = LockSet::acquire([&p2], Backend::Ofd, WaitMode::Forever);
        let _ = tx.send((Instant::now(), r));
    });
    wait_for_waiters(inode_of(&lf), 1);
    assert!(
        rx.try_recv().is_err(),
        "acquired while the POSIX lock is held"
    );
    let released = Instant::now();
    peer.send("release");
    let (got, set) = rx.recv_timeout(lockkit::REPLY).expect("waiter woke");
    let set = set.expect("acquired");
    assert!(got.duration_since(released) < Duration::from_secs(2));

    // Now the reverse: a POSIX F_SETLKW waiter behind our OFD lock.
    let waiter = kit.locker(&["posix", "holdw", lf.to_str().unwrap()]);
    wait_for_waiters(inode_of(&lf), 1);
    waiter.assert_quiet("F_SETLKW granted while goalkeeper holds the lock");
    set.release().unwrap();
    waiter.expect("locked");
}

/// L2 for Nix-compatible stores: the flock backend and a flock holder
/// exclude each other in both directions.
#[test]
fn l2_flock_backend_and_flock_holder_exclude_each_other() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut peer = kit.locker(&["flock", "hold", lf.to_str().unwrap()]);
    peer.expect("locked");
    let e = LockSet::try_acquire([&p], Backend::Flock).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    peer.send("release");
    peer.expect("released");
    let set = LockSet::try_acquire([&p], Backend::Flock).unwrap();
    assert!(
        busy_for("flock", &lf),
        "flock(LOCK_NB) succeeded against our flock lock"
    );
    set.release().unwrap();
    assert!(!busy_for("flock", &lf));
}

/// L2 between goalkeeper processes: OFD locks taken by two processes exclude
/// each other (and so do flock locks), through the C ABI statuses.
#[test]
fn l2_two_goalkeeper_processes_exclude_each_other() {
    let kit = kit!();
    for b in ["ofd", "flock"] {
        let s = TempStore::new();
        let p = s.path("aaa-out");
        let mut h = kit.helper("hold", &[b, "try", &p]);
        h.expect("locked");
        let other = kit.helper("hold", &[b, "try", &p]);
        let r = other.expect("err");
        assert!(r.starts_with("GK_BUSY"), "{b}: {r}");
        h.send("release");
        h.expect("released");
        let third = kit.helper("hold", &[b, "try", &p]);
        third.expect("locked");
    }
}

/// L4: closing another descriptor of the same lock file, opened and closed
/// by this process, keeps goalkeeper's lock (with classic POSIX locks, this
/// close would silently drop the lock of the whole process). Both backends.
#[test]
fn l4_closing_an_unrelated_fd_to_the_lock_file_keeps_the_lock() {
    for (b, kind) in [(Backend::Ofd, "posix"), (Backend::Flock, "flock")] {
        let s = TempStore::new();
        let p = s.path("aaa-out");
        let lf = s.lock_file("aaa-out");
        let set = LockSet::try_acquire([&p], b).unwrap();
        for _ in 0..3 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&lf)
                .unwrap();
            drop(f); // close(2) of an unrelated descriptor of the same file
        }
        assert!(
            busy_for(kind, &lf),
            "{b:?}: closing another fd dropped the lock"
        );
        set.check().unwrap();
        set.release().unwrap();
        assert!(!busy_for(kind, &lf));
    }
}

/// A timed wait that gave up leaves a helper thread blocked on its own
/// descriptor of the file; when that thread is granted the lock later, it
/// lets go at once: the path becomes free for everyone, not held by a ghost.
#[test]
fn timed_out_wait_lets_go_of_the_lock_it_is_granted_later() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut other = kit.helper("hold", &["ofd", "try", &p]);
    other.expect("locked");
    // Our timed wait gives up; its helper thread keeps a descriptor of the
    // file open and blocked until it is granted the lock, then drops it.
    let e = LockSet::acquire(
        [&p],
        Backend::Ofd,
        WaitMode::Timeout(Duration::from_millis(20)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    other.send("release");
    other.expect("released");
    // The abandoned wait must not keep the lock it is eventually granted.
    lockkit::wait_until("the abandoned wait lets go", lockkit::REPLY, || {
        !busy_for("ofd", &lf)
    });
    let set = bounded("re-acquire", lockkit::REPLY, {
        let p = p.clone();
        move || LockSet::acquire([&p], Backend::Ofd, WaitMode::Forever)
    })
    .unwrap();
    assert!(busy_for("posix", &lf));
    set.release().unwrap();
}

/// The inspector (`inspect`) reads `/proc/locks`, which the kernel
/// produces afresh for every read call: read in several chunks while other
/// locks come and go, an entry can shift across a chunk boundary and be
/// missed or listed twice. A lock held steadily by one process must be seen
/// exactly once, every time, while this process churns locks on other files.
///
/// Known to fail (one inspection in a few hundred to a few in ten, with
/// this churn): `inspect::read_proc_locks` reads the file with
/// `read_to_string`, and no number of re-reads makes such a list reliable
/// under churn; the fix is for the inspector to confirm holders through
/// `/proc/PID/fdinfo` (as it already does for OFD locks). Run with
/// `cargo test --test lock_interop -- --ignored`.
#[test]
#[ignore = "known bug in the inspector: /proc/locks read in 4 KiB pieces misses or doubles entries under churn"]
fn inspector_sees_a_steady_holder_once_while_other_locks_churn() {
    use goalkeeper::inspect;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let kit = kit!();
    let s = TempStore::new();
    let lf = s.lock_file("zzz-steady");
    let peer = kit.locker(&["posix", "hold", lf.to_str().unwrap()]);
    peer.expect("locked");
    // Enough locks before it in the kernel's list to need several reads.
    let many: Vec<LockSet> = (0..60)
        .map(|i| LockSet::try_acquire([s.path(&format!("held-{i:03}"))], Backend::Ofd).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut churn = Vec::new();
    for t in 0..2 {
        let (stop, paths) = (
            stop.clone(),
            (0..40)
                .map(|i| s.path(&format!("churn-{t}-{i:03}")))
                .collect::<Vec<_>>(),
        );
        churn.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in &paths {
                    LockSet::try_acquire([p], Backend::Ofd)
                        .unwrap()
                        .release()
                        .unwrap();
                }
            }
        }));
    }
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&lf).unwrap().ino();
    let mut wrong = Vec::new();
    for i in 0..2000 {
        let entries: Vec<_> = inspect::read_proc_locks()
            .unwrap()
            .into_iter()
            .filter(|l| l.inode == ino && !l.waiter)
            .collect();
        if entries.len() != 1 {
            wrong.push(format!("read_proc_locks: {entries:?}"));
        }
        if i % 20 == 0 {
            let info = inspect::lock_info(&lf).unwrap();
            if info.holder_pids() != vec![peer.pid() as u32] {
                wrong.push(format!("lock_info: {:?}", info.holders));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().unwrap();
    }
    drop(many);
    assert!(
        wrong.is_empty(),
        "{} of 2100 inspections got the steady holder wrong, e.g. {}",
        wrong.len(),
        wrong[0]
    );
}

/// Issue 10, item 4: GK_BUSY (and GK_TIMED_OUT) name the holder in
/// `gk_last_error_message()`: its pid, its command and the lock kind, for
/// each kind of peer the kernel can tell us about.
#[test]
fn busy_message_names_the_holder_pid_command_and_kind() {
    use goalkeeper::ffi::{
        gk_last_error_message, gk_lockset_acquire_timeout, gk_lockset_try_acquire,
    };
    use std::ffi::{CStr, CString};
    let kit = kit!();
    let s = TempStore::new();
    for (kind, backend, word) in [
        ("posix", 0u32, "posix lock"),
        ("ofd", 0, "ofd lock"),
        ("flock", 1, "flock lock"),
    ] {
        let name = format!("aaa-{kind}");
        let p = CString::new(s.path(&name)).unwrap();
        let lf = s.lock_file(&name);
        let mut peer = kit.locker(&[kind, "hold", lf.to_str().unwrap()]);
        peer.expect("locked");
        let mut set = 0u64;
        let paths = [p.as_ptr()];
        // SAFETY: one valid NUL-terminated path and a valid out pointer.
        let st = unsafe { gk_lockset_try_acquire(paths.as_ptr(), 1, backend, &mut set) };
        assert_eq!(st, gk_status::GK_BUSY, "{kind}");
        // SAFETY: the library's thread-local message, read at once.
        let msg = unsafe { CStr::from_ptr(gk_last_error_message()) }
            .to_string_lossy()
            .into_owned();
        let pid = format!("pid {} (", peer.pid());
        assert!(msg.contains(&name), "{kind}: names the path: {msg}");
        assert!(msg.contains(&pid), "{kind}: names the holder's pid: {msg}");
        assert!(msg.contains("locker"), "{kind}: names its command: {msg}");
        assert!(msg.contains(word), "{kind}: names the lock kind: {msg}");
        // The message stays put once read (the pointer is valid until the
        // next call on this thread).
        // SAFETY: as above.
        let again = unsafe { CStr::from_ptr(gk_last_error_message()) };
        assert_eq!(again.to_string_lossy(), msg);
        // A timed-out wait names the holder too.
        // SAFETY: as above.
        let st = unsafe { gk_lockset_acquire_timeout(paths.as_ptr(), 1, backend, 20, &mut set) };
        assert_eq!(st, gk_status::GK_TIMED_OUT, "{kind}");
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(gk_last_error_message()) }.to_string_lossy();
        assert!(msg.contains(&pid) && msg.contains(word), "{kind}: {msg}");
        peer.send("release");
        peer.expect("released");
    }
}
