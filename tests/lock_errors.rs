//! L7: errno values from the kernel map to clear errors and C ABI statuses,
//! and a failed acquisition holds nothing.
//!
//! Real where the kernel can produce the error on this machine:
//! * ELOOP: a symbolic link planted at `P.lock` (`O_NOFOLLOW`);
//! * ENAMETOOLONG: a name component over `NAME_MAX`;
//! * EACCES: as an unprivileged user (a helper process running as `nobody`
//!   when the tests run as root, since root bypasses file permissions);
//! * ENOSPC: a tiny tmpfs, filled up, in a private mount namespace of a
//!   helper process (when mounting is not allowed, e.g. in an unprivileged
//!   container, the same checks run through the fault hooks of
//!   `src/fault.rs` instead, and say so);
//! * a lock file that stays "deleted" (token present, never unlinked).
//!
//! Simulated: EDEADLK. The kernel reports it only for deadlocks between
//! process-owned POSIX locks, never for OFD or `flock` locks, so it is
//! injected through `GOALKEEPER_FAULTS=lock-wait-edeadlk` (the
//! `fault-injection` feature, which the tests enable).

mod common;
mod lockkit;

use std::io;
use std::time::{Duration, Instant};

use common::TempStore;
use goalkeeper::ffi::gk_status;
use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode, MAX_STALE_ATTEMPTS};
use goalkeeper::Error;
use lockkit::{bounded, busy_for, REPLY};

/// Every errno goalkeeper names maps to its own error and status, and the
/// message names the file and the operation.
#[test]
fn l7_errno_values_map_to_their_errors_and_statuses() {
    use gk_status::*;
    let table = [
        (libc::EACCES, GK_ERROR_PERMISSION_DENIED),
        (libc::EPERM, GK_ERROR_PERMISSION_DENIED),
        (libc::ELOOP, GK_ERROR_SYMLINK),
        (libc::ENAMETOOLONG, GK_ERROR_NAME_TOO_LONG),
        (libc::ENOSPC, GK_ERROR_NO_SPACE),
        (libc::EDQUOT, GK_ERROR_NO_SPACE),
        (libc::EDEADLK, GK_ERROR_DEADLOCK),
        (libc::EIO, GK_ERROR_IO),
        (libc::EROFS, GK_ERROR_IO),
    ];
    for (errno, status) in table {
        let e = Error::from_io("/s/x.lock", "open", io::Error::from_raw_os_error(errno));
        assert_eq!(gk_status::from(&e), status, "errno {errno}: {e}");
        let m = e.to_string();
        assert!(m.contains("/s/x.lock"), "names the file: {m}");
        assert!(
            !e.is_contention(),
            "errno {errno} is an error, not contention"
        );
    }
    let e = Error::from_io(
        "/s/x.lock",
        "unlink",
        io::Error::from_raw_os_error(libc::EIO),
    );
    assert!(e.to_string().contains("unlink"), "names the operation: {e}");
    let e = Error::from_io(
        "/s/x.lock",
        "write deletion token",
        io::Error::from_raw_os_error(libc::ENOSPC),
    );
    assert!(e.to_string().contains("write deletion token"), "{e}");
}

/// ELOOP: a symbolic link at `P.lock` is refused with the Symlink error in
/// every mode, not followed, and nothing is held afterwards.
#[test]
fn l7_symlink_at_lock_file_is_eloop_symlink_error() {
    for b in [Backend::Ofd, Backend::Flock] {
        for mode in [
            WaitMode::Try,
            WaitMode::Forever,
            WaitMode::Timeout(Duration::from_secs(30)),
        ] {
            let s = TempStore::new();
            let p = s.path("aaa-out");
            let target = s.dir().join("target");
            std::fs::write(&target, "").unwrap();
            std::os::unix::fs::symlink(&target, s.lock_file("aaa-out")).unwrap();
            let p2 = p.clone();
            let e = bounded("acquire", REPLY, move || LockSet::acquire([p2], b, mode)).unwrap_err();
            assert!(matches!(e, Error::Symlink { .. }), "{b:?}/{mode:?}: {e}");
            assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_SYMLINK);
            assert!(e.to_string().contains("aaa-out.lock"), "{e}");
            assert!(!lock::is_held_by_me(&StorePath::new(&p).unwrap()));
        }
    }
}

/// ENAMETOOLONG: a store path whose last component is longer than NAME_MAX
/// (255) fits PATH_MAX, so it passes validation, and the kernel refuses it.
#[test]
fn l7_component_over_name_max_is_name_too_long() {
    let s = TempStore::new();
    let p = s.path(&"n".repeat(300));
    for b in [Backend::Ofd, Backend::Flock] {
        let e = LockSet::try_acquire([&p], b).unwrap_err();
        assert!(matches!(e, Error::NameTooLong { .. }), "{e}");
        assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_NAME_TOO_LONG);
    }
    // A valid path before it in the set is released again (L8 on errors).
    let first = s.path("aaa-first");
    let e = LockSet::try_acquire([&first, &p], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::NameTooLong { .. }), "{e}");
    assert!(!busy_for("posix", &s.lock_file("aaa-first")));
}

/// EACCES: an unprivileged process can neither open a lock file it may not
/// write (root's 0600 file) nor create one in a directory it may not write.
/// As root, the check runs in a helper process switched to `nobody`.
#[test]
fn l7_permission_denied_for_unprivileged_user() {
    let kit = kit!();
    let s = TempStore::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let existing = s.path("aaa-existing");
    LockSet::try_acquire([&existing], Backend::Ofd)
        .unwrap()
        .release()
        .unwrap();
    let new = s.path("bbb-new");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // Our own file, made unwritable.
        std::fs::set_permissions(
            s.lock_file("aaa-existing"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // `nobody` must be able to run the helper: the build tree may sit in a
    // directory only root can enter (a clone under /root), so run a copy.
    let exe_dir = TempStore::new();
    let exe = exe_dir.dir().join("helper");
    if root {
        std::fs::set_permissions(exe_dir.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (p, what) in [(&existing, "open existing"), (&new, "create")] {
        for b in ["ofd", "flock"] {
            let mut c = if root {
                kit.role_command_at(&exe, "try", &[b, p])
            } else {
                kit.role_command("try", &[b, p])
            };
            if root {
                std::os::unix::process::CommandExt::uid(&mut c, 65534);
                std::os::unix::process::CommandExt::gid(&mut c, 65534);
            }
            let h = lockkit::Helper::spawn(c, "unprivileged try");
            let r = h.expect("err");
            assert!(
                r.starts_with("GK_ERROR_PERMISSION_DENIED") && r.contains(".lock"),
                "{what}/{b}: {r}\n{}",
                h.transcript()
            );
        }
    }
    assert!(!s.lock_file("bbb-new").exists(), "nothing created");
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// EDEADLK (simulated: the kernel never reports it for OFD or flock locks):
/// a blocking wait that fails with it gives the Deadlock error naming the
/// path, through the blocking and the timed paths, and holds nothing.
#[test]
fn l7_edeadlk_from_a_blocking_wait_is_deadlock_error_holding_nothing() {
    let kit = kit!();
    for b in ["ofd", "flock"] {
        for mode in ["forever", "timeout:30000"] {
            let s = TempStore::new();
            let (pa, pb) = (s.path("aaa"), s.path("bbb"));
            let mut holder = kit.helper("hold", &[b, "try", &pb]);
            holder.expect("locked");
            let mut c = kit.role_command("hold", &[b, mode, &pa, &pb]);
            c.env("GOALKEEPER_FAULTS", "lock-wait-edeadlk");
            let h = lockkit::Helper::spawn(c, "waiter with EDEADLK");
            let r = h.expect("err");
            assert!(r.starts_with("GK_ERROR_DEADLOCK"), "{b}/{mode}: {r}");
            assert!(r.contains("bbb.lock") && r.contains("EDEADLK"), "{r}");
            let kind = if b == "ofd" { "posix" } else { "flock" };
            assert!(
                !busy_for(kind, &s.lock_file("aaa")),
                "{b}/{mode}: aaa left held"
            );
            holder.send("release");
            holder.expect("released");
        }
    }
}

/// A holder that dies between writing the deletion token and unlinking
/// leaves a linked lock file of size 1. Whoever takes its lock next
/// finishes the deletion and gets a fresh file: the path is not stale for
/// ever (a crash in the middle of a release must not need an operator).
#[test]
fn l7_a_deletion_interrupted_after_the_token_heals_at_the_next_acquisition() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    for b in [Backend::Ofd, Backend::Flock] {
        for mode in [WaitMode::Try, WaitMode::Forever] {
            std::fs::write(s.lock_file("aaa-out"), "d").unwrap();
            let p2 = p.clone();
            let set = bounded("acquire", REPLY, move || LockSet::acquire([p2], b, mode))
                .unwrap_or_else(|e| panic!("{b:?}/{mode:?}: {e}"));
            let meta = std::fs::metadata(s.lock_file("aaa-out")).unwrap();
            assert_eq!(meta.len(), 0, "{b:?}/{mode:?}: a fresh lock file");
            set.release().unwrap();
        }
    }
}

/// A lock file that always looks deleted (it carries the token "d" and
/// cannot be unlinked: here a read-only store, simulated) makes acquisition
/// give up after MAX_STALE_ATTEMPTS re-opens with a clear error: no endless
/// loop, not even for a blocking acquisition.
#[test]
fn l7_permanently_stale_lock_file_is_a_bounded_error() {
    // The fault is armed for a whole process: run in a child of our own, so
    // that the other tests of this binary are not affected.
    if std::env::var_os("GK_TEST_PERMANENTLY_STALE").is_none() {
        let out = common::run_bounded(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "l7_permanently_stale_lock_file_is_a_bounded_error",
                ])
                .env("GK_TEST_PERMANENTLY_STALE", "1")
                .env("GOALKEEPER_FAULTS", "finish-deletion-erofs"),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let s = TempStore::new();
    let p = s.path("aaa-out");
    std::fs::write(s.lock_file("aaa-out"), "d").unwrap();
    for b in [Backend::Ofd, Backend::Flock] {
        for mode in [WaitMode::Try, WaitMode::Forever] {
            let p2 = p.clone();
            let t = Instant::now();
            let e = bounded("acquire", REPLY, move || LockSet::acquire([p2], b, mode)).unwrap_err();
            match &e {
                Error::StaleRetriesExhausted { attempts, .. } => {
                    assert_eq!(*attempts, MAX_STALE_ATTEMPTS)
                }
                other => panic!("{b:?}/{mode:?}: {other}"),
            }
            assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_STALE_LOCK_FILE);
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }
}

/// Runs the `tmpfs` role and returns it with its first reply; `None` when
/// this system does not let the tests mount a file system.
fn tmpfs_role(kit: &lockkit::Kit, kind: &str, s: &TempStore) -> Option<(lockkit::Helper, String)> {
    let dir = s.dir().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let h = kit.helper("tmpfs", &[kind, dir.to_str().unwrap()]);
    let first = h.next();
    if let Some(why) = first.strip_prefix("unsupported ") {
        eprintln!("cannot mount a small tmpfs here ({why}); using the fault hooks instead");
        return None;
    }
    Some((h, first))
}

/// ENOSPC creating a lock file: a store whose file system has no free inode
/// left gives NoSpace, and nothing is held or created.
#[test]
fn l7_enospc_creating_a_lock_file_is_no_space() {
    let kit = kit!();
    let s = TempStore::new();
    match tmpfs_role(&kit, "inodes", &s) {
        Some((h, r)) => {
            assert!(
                r.starts_with("err GK_ERROR_NO_SPACE"),
                "{r}\n{}",
                h.transcript()
            );
            assert!(r.contains("aaa-out.lock"), "{r}");
            assert_eq!(h.expect("created"), "false");
        }
        None => {
            let mut c = kit.role_command("try", &["ofd", &s.path("aaa-out")]);
            c.env("GOALKEEPER_FAULTS", "open-enospc");
            let h = lockkit::Helper::spawn(c, "try with ENOSPC");
            let r = h.expect("err");
            assert!(r.starts_with("GK_ERROR_NO_SPACE"), "{r}");
        }
    }
}

/// ENOSPC writing the deletion token on a full store (L9 with a real full
/// file system): the release unlinks the file, the token write fails, and
/// the inode is marked by extending it to one byte instead (`ftruncate`
/// needs no data block), so the release succeeds; the old inode is
/// unlinked with size 1, and the path is lockable again.
#[test]
fn l7_enospc_writing_the_token_on_a_full_store_marks_the_inode_by_size() {
    let kit = kit!();
    let s = TempStore::new();
    match tmpfs_role(&kit, "blocks", &s) {
        Some((h, r)) => {
            assert_eq!(r, "token ok full=true", "{}", h.transcript());
            assert_eq!(
                h.expect("after"),
                "-1 0 1 true",
                "name gone, old inode unlinked and one byte long, lockable again"
            );
        }
        None => {
            let mut c = kit.role_command("hold", &["ofd", "try", &s.path("aaa-out")]);
            c.env("GOALKEEPER_FAULTS", "token-write-enospc");
            let mut h = lockkit::Helper::spawn(c, "holder with ENOSPC");
            h.expect("locked");
            let old = std::fs::File::open(s.lock_file("aaa-out")).unwrap();
            h.send("delete");
            h.expect("ok");
            h.send("release");
            h.expect("released");
            let m = old.metadata().unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!((m.nlink(), m.len()), (0, 1));
            assert!(!s.lock_file("aaa-out").exists());
        }
    }
}
