//! Lock-layer failure modes that need several processes (doc/design.md#lock-layer):
//! L1 stale lock files under a blocked waiter, `kill -9` of holders, L5 fork
//! and exec children, L6 EINTR in blocking waits, L9 unlink, token-write and
//! mark failures, and unlink races between many processes, including
//! guix-daemon-style POSIX peers.

mod common;
mod lockkit;

use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::lock::{Backend, LockSet};
use goalkeeper::Error;
use lockkit::{busy_for, check_no_overlap, inode_of, proc_locks, wait_for_waiters, REPLY};

const BACKENDS: [(&str, &str); 2] = [("ofd", "ofd"), ("flock", "flock")];

/// L1: the holder deletes the lock file while a waiter is blocked on the old
/// inode. The waiter must notice that the inode it got is stale (unlinked,
/// token "d"), re-open the file at the path, and hold *that*: a third party
/// opening the path must find it locked. One holder at any time.
#[test]
fn l1_waiter_on_deleted_inode_detects_staleness_and_holds_the_live_file() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let p = s.path("aaa-out");
        let lf = s.lock_file("aaa-out");
        let mut holder = kit.helper("hold", &[b, "try", &p]);
        holder.expect("locked");
        holder.send("delete");
        holder.expect("ok");
        let old = inode_of(&lf);
        // Keep the old inode alive, so that its number cannot be reused by
        // the file created after the deletion (ext4 reuses it at once).
        let keep = std::fs::File::open(&lf).unwrap();
        let waiter = kit.helper("hold", &[b, "forever", &p]);
        wait_for_waiters(old, 1);
        waiter.assert_quiet("the waiter got a lock that is still held");

        holder.send("release");
        holder.expect("released");
        waiter.expect("locked");

        use std::os::unix::fs::MetadataExt;
        let gone = keep.metadata().unwrap();
        assert_eq!(gone.nlink(), 0, "{b}: the holder deleted the old file");
        assert_eq!(gone.len(), 1, "{b}: with the token \"d\" in it");
        assert!(
            proc_locks(old).held.is_empty(),
            "{b}: nobody holds the old inode"
        );
        let new = inode_of(&lf);
        assert_ne!(
            old, new,
            "{b}: the holder deleted the file; a new one was created"
        );
        let on_new = proc_locks(new);
        assert_eq!(
            on_new.held.len(),
            1,
            "{b}: the waiter holds the live file: {on_new:?}"
        );
        assert!(
            busy_for(kind, &lf),
            "{b}: the file at the path is free while the waiter says it holds the lock: two holders"
        );
        match LockSet::try_acquire([&p], backend(b)) {
            Err(Error::Busy { .. }) => {}
            other => panic!("{b}: a third party got {other:?} while the waiter holds the lock"),
        }
    }
}

/// L1 with a guix-daemon-style peer: the C++ daemon deletes by unlinking and
/// then writing "d" (the reverse of goalkeeper's order). A goalkeeper waiter
/// blocked on that inode sees it unlinked and moves to a new file.
#[test]
fn l1_daemon_style_peer_deletes_under_a_goalkeeper_waiter() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut peer = kit.locker(&["posix", "holddel", lf.to_str().unwrap()]);
    peer.expect("locked");
    let old = inode_of(&lf);
    let keep = std::fs::File::open(&lf).unwrap(); // pins the old inode number
    let waiter = kit.helper("hold", &["ofd", "forever", &p]);
    wait_for_waiters(old, 1);
    peer.send("release");
    peer.expect("released");
    waiter.expect("locked");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        keep.metadata().unwrap().nlink(),
        0,
        "the peer deleted the old file"
    );
    let new = inode_of(&lf);
    assert_ne!(old, new, "the waiter kept the unlinked inode");
    let on_new = proc_locks(new);
    assert_eq!(
        on_new.held.len(),
        1,
        "the waiter holds the live file: {on_new:?}\n{}",
        lockkit::read_proc_locks()
    );
    assert!(
        busy_for("posix", &lf),
        "a daemon-style peer must find it locked"
    );
}

fn backend(b: &str) -> Backend {
    lockkit::roles::backend(b)
}

/// `kill -9` of the holder frees the lock for a waiter blocked in the
/// kernel, which then resumes promptly (G4, G7): both backends, and for a
/// guix-daemon-style POSIX holder against the OFD backend.
#[test]
fn kill9_of_holder_wakes_blocked_waiter() {
    let kit = kit!();
    for (b, kind) in BACKENDS.into_iter().chain([("ofd", "posix")]) {
        let s = TempStore::new();
        let p = s.path("aaa-out");
        let lf = s.lock_file("aaa-out");
        let mut holder = if kind == "posix" {
            kit.locker(&["posix", "hold", lf.to_str().unwrap()])
        } else {
            kit.helper("hold", &[b, "try", &p])
        };
        holder.expect("locked");
        let waiter = kit.helper("hold", &[b, "forever", &p]);
        wait_for_waiters(inode_of(&lf), 1);
        waiter.assert_quiet("waiter got the lock while the holder lives");
        let t = Instant::now();
        holder.kill9();
        waiter.expect("locked");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{b}/{kind}: hand-off after kill -9 took {:?}",
            t.elapsed()
        );
        assert!(busy_for(kind, &lf), "{b}/{kind}: the waiter holds it");
    }
}

/// L5: a fork child (no exec) does not believe it holds its parent's locks:
/// empty registry, no lock descriptors, the parent's set is foreign, the
/// parent's lock is busy for it, and releasing the foreign set cannot hurt a
/// lock the child took itself on a reused descriptor number.
#[test]
fn l5_fork_child_does_not_hold_or_release_parent_locks() {
    let kit = kit!();
    for (b, _) in BACKENDS {
        let s = TempStore::new();
        let h = kit.helper("forkcheck", &[b, &s.path("aaa-p"), &s.path("bbb-q")]);
        let r = h.expect("forkcheck");
        assert_eq!(r, "ok", "{b}: fork child: {r}\n{}", h.transcript());
    }
}

/// L5 and G7: the parent holds a lock and forks a child that lives on; a
/// `kill -9` of the parent frees the lock although the child still runs,
/// because the atfork handler closed the child's inherited descriptors.
#[test]
fn l5_kill9_parent_with_live_fork_child_frees_lock() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let p = s.path("aaa-out");
        let lf = s.lock_file("aaa-out");
        let mut parent = kit.helper("hold", &[b, "try", &p]);
        parent.expect("locked");
        parent.send("fork");
        // Both lines, in either order; "child-ready" means fork() has
        // returned in the child, after its atfork handler closed the
        // inherited lock descriptors (until then the child does share the
        // parent's open file description, as any fork child does).
        let mut child = None;
        let mut ready = false;
        for _ in 0..2 {
            let line = parent.next();
            match line.split_once(' ').unwrap_or((&line, "")) {
                ("forked", pid) => child = Some(pid.parse::<i32>().unwrap()),
                ("child-ready", _) => ready = true,
                _ => panic!("unexpected '@gk {line}'\n{}", parent.transcript()),
            }
        }
        assert!(ready);
        let child = child.expect("forked");
        assert!(busy_for(kind, &lf), "{b}: the parent holds the lock");
        parent.kill9();
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(
            unsafe { libc::kill(child, 0) },
            0,
            "{b}: the fork child lives on"
        );
        assert!(
            !busy_for(kind, &lf),
            "{b}: the lock survived kill -9 of its holder: the fork child kept it"
        );
        LockSet::try_acquire([&p], backend(b))
            .expect("free for us too")
            .release()
            .unwrap();
        // SAFETY: cleaning up the orphaned child, which is still ours to end.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
}

/// L5 and G7: a child exec'd while its parent holds locks inherits no lock
/// descriptor (they are O_CLOEXEC); `kill -9` of the parent frees the lock
/// although the exec'd child still runs.
#[test]
fn l5_exec_child_inherits_no_lock_descriptors() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        let s = TempStore::new();
        let paths = [s.path("aaa-1"), s.path("bbb-2"), s.path("ccc-3")];
        let mut args = vec![b, "try"];
        args.extend(paths.iter().map(String::as_str));
        let mut parent = kit.helper("hold", &args);
        parent.expect("locked");
        parent.send("spawn");
        // The parent and the exec'd child share the stdout pipe: either
        // line may come first.
        let (mut child, mut fds) = (None, None);
        for _ in 0..2 {
            let line = parent.next();
            match line.split_once(' ') {
                Some(("spawned", pid)) => child = Some(pid.parse::<i32>().unwrap()),
                Some(("fds", list)) => fds = Some(list.to_string()),
                _ => panic!("unexpected '@gk {line}'\n{}", parent.transcript()),
            }
        }
        let (child, fds) = (child.expect("spawned"), fds.expect("fds"));
        let (n, list) = fds.split_once(' ').unwrap_or((&fds, ""));
        assert!(
            !list.contains(".lock") && !list.contains(s.dir().to_str().unwrap()),
            "{b}: the exec'd child has lock descriptors: {list}"
        );
        assert!(n.parse::<usize>().unwrap() >= 3, "stdio at least: {fds}");
        parent.kill9();
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(
            unsafe { libc::kill(child, 0) },
            0,
            "{b}: the exec'd child lives on"
        );
        for p in &paths {
            let lf = std::path::PathBuf::from(format!("{p}.lock"));
            assert!(!busy_for(kind, &lf), "{b}: {p} still locked after kill -9");
        }
        // SAFETY: ending the orphaned child.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
}

/// Sends SIGUSR1 to every thread of `pid` (the blocked one among them).
fn signal_all_threads(pid: i32) -> usize {
    let mut n = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let tid: i32 = t.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: tgkill with a signal the helper handles.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) } == 0 {
                n += 1;
            }
        }
    }
    n
}

/// L6: signals hammering a thread blocked in `F_OFD_SETLKW`/`flock` (with a
/// handler installed without SA_RESTART, so the syscall fails with EINTR)
/// never turn into "acquired": the waiter stays blocked while the holder
/// holds, then gets the lock when it is released, and really holds it.
/// Both backends, blocking and timeout modes.
#[test]
fn l6_eintr_during_blocking_wait_never_acquires_without_the_lock() {
    let kit = kit!();
    for (b, kind) in BACKENDS {
        for mode in ["forever", "timeout:20000"] {
            let s = TempStore::new();
            let p = s.path("aaa-out");
            let lf = s.lock_file("aaa-out");
            let held = LockSet::try_acquire([&p], backend(b)).unwrap();
            let waiter = kit.helper("eintr", &[b, mode, &p]);
            waiter.expect("ready");
            let ino = inode_of(&lf);
            wait_for_waiters(ino, 1);
            let mut sent = 0;
            for _ in 0..50 {
                sent += signal_all_threads(waiter.pid());
                // Each round lands on a thread blocked in the kernel again;
                // a reply meanwhile means EINTR became "acquired".
                lockkit::wait_until("the waiter blocks again", REPLY, || {
                    if let Some(l) = waiter.try_next() {
                        panic!("{b}/{mode}: EINTR turned into '@gk {l}' while the lock is held");
                    }
                    proc_locks(ino).waiting.len() == 1
                });
            }
            assert!(sent >= 50);
            waiter.assert_quiet("EINTR turned into an acquisition while the lock is held");
            assert_eq!(proc_locks(ino).held.len(), 1, "only our lock is granted");
            held.release().unwrap();
            let seen: usize = waiter.expect("locked").parse().unwrap();
            assert!(
                seen > 0,
                "{b}/{mode}: no signal was delivered, EINTR untested"
            );
            assert!(
                busy_for(kind, &lf),
                "{b}/{mode}: the waiter says locked but is not"
            );
        }
    }
}

/// L6 with signals still arriving during the hand-off itself.
#[test]
fn l6_signals_during_handoff_still_one_holder() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    for round in 0..5 {
        let held = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
        let mut waiter = kit.helper("eintr", &["ofd", "forever", &p]);
        waiter.expect("ready");
        wait_for_waiters(inode_of(&lf), 1);
        let pid = waiter.pid();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let hammer = std::thread::spawn(move || {
            let mut n = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                signal_all_threads(pid);
                n += 1;
            }
        });
        held.release().unwrap();
        waiter.expect("locked");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hammer.join().unwrap();
        assert!(busy_for("ofd", &lf), "round {round}: waiter is not holding");
        waiter.send("release");
        waiter.expect("released");
    }
}

/// Runs `n` stress helpers plus `daemons` guix-daemon-style C peers on one
/// path with deletion on every release and checks the O_APPEND log for
/// overlapping critical sections.
fn unlink_race(
    kit: &lockkit::Kit,
    b: &str,
    mode: &str,
    n: usize,
    daemons: usize,
    faulty: usize,
) -> usize {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let log = s.dir().join("holders.log");
    std::fs::write(&log, "").unwrap();
    let iters = "150";
    let mut hs = Vec::new();
    for i in 0..n {
        let mut c = kit.role_command("stress", &[b, mode, &p, iters, log.to_str().unwrap()]);
        if i < faulty {
            c.env("GOALKEEPER_FAULTS", "token-write-enospc");
        }
        hs.push(lockkit::Helper::spawn(c, "stress"));
    }
    for _ in 0..daemons {
        hs.push(kit.locker(&["posix", "daemon", &p, iters, log.to_str().unwrap()]));
    }
    let mut nospace = 0;
    for (i, h) in hs.iter().enumerate() {
        let r = h.next();
        assert!(r.starts_with("done"), "helper {i}: {r}\n{}", h.transcript());
        nospace += r
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse::<usize>().ok())
            .unwrap_or(0);
    }
    let sections = check_no_overlap(&log);
    assert_eq!(sections, 150 * (n + daemons), "every section logged");
    // Whatever happened, the lock file is usable afterwards.
    let set = LockSet::try_acquire([&p], backend(b)).expect("usable after the race");
    set.release().unwrap();
    nospace
}

/// L1/L9 unlink races: holders delete the lock file on every release while
/// others are blocked on it; never two holders. OFD with goalkeeper peers
/// and guix-daemon-style POSIX peers mixed, and flock.
#[test]
fn unlink_races_never_make_two_holders() {
    let kit = kit!();
    unlink_race(&kit, "ofd", "forever", 3, 2, 0);
    unlink_race(&kit, "flock", "forever", 3, 0, 0);
}

/// The same race through timed waits (a helper thread blocks for the lock
/// and hands it over; abandoned waits release what they are granted).
#[test]
fn unlink_races_with_timed_waits_never_make_two_holders() {
    let kit = kit!();
    unlink_race(&kit, "ofd", "timeout:5", 3, 1, 0);
}

/// L9: when writing the deletion token fails (ENOSPC, injected through
/// GOALKEEPER_FAULTS, with the `fault-injection` feature), the unlinked
/// inode is marked by extending it to one byte (`ftruncate`, which needs no
/// data block), so guix-daemon-style peers blocked on it, which check only
/// `st_size`, still see it is stale: never two holders, and no failure reported.
#[test]
fn l9_token_write_failure_never_makes_two_holders() {
    let kit = kit!();
    let failed = unlink_race(&kit, "ofd", "forever", 3, 2, 2);
    assert_eq!(
        failed, 0,
        "the ftruncate fallback should absorb every failed write"
    );
}

/// L9, the case no order can fix: the token write and the `ftruncate`
/// fallback both fail (injected), so the unlinked inode stays empty. The
/// release reports it; goalkeeper's own waiters, which check `st_nlink`
/// too, still never make two holders.
#[test]
fn l9_both_marks_failing_is_reported_and_goalkeeper_waiters_stay_exclusive() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let log = s.dir().join("holders.log");
    std::fs::write(&log, "").unwrap();
    let mut hs = Vec::new();
    for _ in 0..3 {
        let mut c = kit.role_command(
            "stress",
            &["ofd", "forever", &p, "150", log.to_str().unwrap()],
        );
        c.env("GOALKEEPER_FAULTS", "token-write-enospc,mark-truncate-eio");
        hs.push(lockkit::Helper::spawn(c, "stress with both marks failing"));
    }
    let mut failed = 0;
    for (i, h) in hs.iter().enumerate() {
        let r = h.next();
        assert!(r.starts_with("done"), "helper {i}: {r}\n{}", h.transcript());
        failed += r
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse::<usize>().ok())
            .unwrap_or(0);
    }
    assert_eq!(
        check_no_overlap(&log),
        450,
        "every section logged, none overlapping"
    );
    assert_eq!(failed, 450, "every release reported the unmarked inode");
}

/// L9, one step at a time: a release with deletion whose token write fails
/// unlinks the file and marks the inode by size (one byte, no token), and
/// reports success; a waiter blocked on the old inode moves on to a fresh
/// lock file.
#[test]
fn l9_failed_token_write_marks_the_inode_by_size() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lf = s.lock_file("aaa-out");
    let mut c = kit.role_command("hold", &["ofd", "try", &p]);
    c.env("GOALKEEPER_FAULTS", "token-write-enospc");
    let mut holder = lockkit::Helper::spawn(c, "faulty holder");
    holder.expect("locked");
    holder.send("delete");
    holder.expect("ok");
    let ino = inode_of(&lf);
    // Another description of the old inode (unlocked), to look at it later.
    let old = std::fs::File::open(&lf).unwrap();
    let waiter = kit.helper("hold", &["ofd", "forever", &p]);
    wait_for_waiters(ino, 1);
    holder.send("release");
    holder.expect("released");
    waiter.expect("locked");
    let m = old.metadata().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (m.nlink(), m.len()),
        (0, 1),
        "old inode: unlinked, one byte"
    );
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &old, &mut bytes).unwrap();
    assert_eq!(bytes, b"\0", "extended, not written");
    assert_ne!(inode_of(&lf), ino, "the waiter holds a fresh lock file");
    assert!(busy_for("ofd", &lf), "the waiter holds the live file");
}

/// Timed acquisitions that give up leave their kernel wait behind (a thread
/// blocked in F_OFD_SETLKW cannot be called back). Repeated timeouts on one
/// path must reuse that wait instead of piling up a thread and a descriptor
/// each (a daemon retrying every second for an hour-long build would
/// otherwise collect thousands).
#[test]
fn repeated_timeouts_on_one_path_do_not_pile_up_waits() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let held = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let mut h = kit.helper("ghosts", &[&p, "40", "1"]);
    let r = h.expect("after-timeouts");
    let (threads, fds) = r.split_once(' ').unwrap();
    let (threads, fds): (usize, usize) = (threads.parse().unwrap(), fds.parse().unwrap());
    assert!(
        threads <= 2 && fds <= 2,
        "40 timeouts left {threads} threads and {fds} lock descriptors behind"
    );
    held.release().unwrap();
    h.send("released");
    assert_eq!(
        h.expect("settled"),
        "true",
        "the lock file stays (no deletion)"
    );
}

/// An abandoned wait that finds the lock file deleted by its holder stops:
/// it does not re-create the file the holder just removed (a valid path's
/// lock file would otherwise come back, empty, and stay in the store).
#[test]
fn abandoned_wait_does_not_recreate_a_deleted_lock_file() {
    let kit = kit!();
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let mut held = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    // Long enough for the wait thread to block in the kernel before the
    // timeout abandons it.
    let mut h = kit.helper("ghosts", &[&p, "1", "500"]);
    h.expect("after-timeouts");
    lockkit::wait_for_waiters(inode_of(&s.lock_file("aaa-out")), 1);
    held.set_deletion(true);
    held.release().unwrap();
    h.send("released");
    assert_eq!(
        h.expect("settled"),
        "false",
        "an abandoned wait re-created the deleted lock file"
    );
    assert!(!s.lock_file("aaa-out").exists());
}
