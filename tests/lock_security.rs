//! Security of lock files (issues 6 and 10): `O_NOFOLLOW`, mode 0600,
//! refusing a store directory other users may write without the sticky bit,
//! no lock descriptor crossing `exec`, and L11: never writing to a file
//! that is not a lock file (planted hard links, foreign owners, FIFOs,
//! a replaced name).

mod common;
mod lockkit;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::TempStore;
use goalkeeper::ffi::gk_status;
use goalkeeper::lock::{Backend, LockSet, WaitMode};
use goalkeeper::Error;
use lockkit::{bounded, REPLY};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A symbolic link planted at `P.lock`, pointing at a file elsewhere, is
/// refused with the Symlink error in every mode and for both backends: the
/// target is neither opened for writing, locked, truncated, nor changed in
/// any way, and the link stays as it was.
#[test]
fn planted_symlink_at_lock_file_is_refused_and_target_untouched() {
    let s = TempStore::new();
    let outside = TempStore::new();
    let target = outside.dir().join("precious");
    std::fs::write(&target, "precious contents").unwrap();
    chmod(&target, 0o644);
    let before = std::fs::metadata(&target).unwrap();
    let link = s.lock_file("aaa-out");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let p = s.path("aaa-out");
    for b in [Backend::Ofd, Backend::Flock] {
        for mode in [
            WaitMode::Try,
            WaitMode::Forever,
            WaitMode::Timeout(Duration::from_secs(30)),
        ] {
            let p2 = p.clone();
            let e = bounded("acquire", REPLY, move || LockSet::acquire([p2], b, mode)).unwrap_err();
            assert!(matches!(e, Error::Symlink { .. }), "{b:?}/{mode:?}: {e}");
            assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_SYMLINK);
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
    }
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "precious contents"
    );
    assert_eq!(
        (
            after.ino(),
            after.len(),
            after.mode(),
            after.mtime(),
            after.mtime_nsec()
        ),
        (
            before.ino(),
            before.len(),
            before.mode(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the symlink's target was touched"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        target,
        "the link was replaced"
    );
    assert!(!lockkit::busy_for("posix", &target), "the target is locked");
}

/// A dangling symbolic link at `P.lock` is not followed either: `O_CREAT`
/// would otherwise create the file it points to, anywhere.
#[test]
fn planted_dangling_symlink_creates_nothing() {
    let s = TempStore::new();
    let outside = TempStore::new();
    let target = outside.dir().join("would-be-created");
    std::os::unix::fs::symlink(&target, s.lock_file("aaa-out")).unwrap();
    let e = LockSet::try_acquire([s.path("aaa-out")], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::Symlink { .. }), "{e}");
    assert!(
        !target.exists(),
        "O_CREAT followed the link and created its target"
    );
}

/// Lock files are created with mode 0600, with the usual umask, with umask
/// 0 (which must not widen it), and with a restrictive umask. The umask is
/// per process, so the checks run in helper processes.
#[test]
fn lock_files_are_created_mode_0600_whatever_the_umask() {
    let kit = kit!();
    let s = TempStore::new();
    let set = LockSet::try_acquire([s.path("aaa-default")], Backend::Ofd).unwrap();
    let mode = std::fs::metadata(s.lock_file("aaa-default"))
        .unwrap()
        .mode()
        & 0o7777;
    set.release().unwrap();
    assert_eq!(mode, 0o600, "default umask: {mode:o}");
    for umask in ["0", "022", "077"] {
        let name = format!("umask-{umask}");
        let h = kit.helper("umask", &[umask, &s.path(&name)]);
        assert_eq!(h.expect("mode"), "600", "umask {umask}");
    }
}

/// A store directory writable by other users without the sticky bit is
/// refused (they could replace lock files), before any lock file is created
/// in it: world-writable (0777, 0757) and group-writable (0775, 0770, as a
/// build-users group could write). Sticky directories like `/gnu/store`
/// (1775 root:guixbuild) and `/tmp` (1777), and private ones, are accepted.
#[test]
fn store_dir_writable_by_others_without_sticky_bit_is_refused() {
    let base = TempStore::new();
    for (mode, ok) in [
        (0o777, false),
        (0o757, false),
        (0o775, false),
        (0o770, false),
        (0o1777, true),
        (0o1775, true),
        (0o755, true),
        (0o700, true),
    ] {
        // A fresh directory for each mode: good verdicts are cached per process.
        let dir = base.dir().join(format!("store-{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, mode);
        let p = format!("{}/aaa-out", dir.display());
        let lf = dir.join("aaa-out.lock");
        match LockSet::try_acquire([&p], Backend::Ofd) {
            Ok(set) => {
                assert!(ok, "mode {mode:o} accepted");
                set.release().unwrap();
                assert!(lf.exists());
            }
            Err(e) => {
                assert!(!ok, "mode {mode:o} refused: {e}");
                match &e {
                    Error::InsecureStore { dir: d, mode: m } => {
                        assert_eq!(d, &dir);
                        assert_eq!(*m, mode);
                    }
                    other => panic!("mode {mode:o}: {other}"),
                }
                assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_INSECURE_STORE);
                assert!(e.to_string().contains(&format!("{mode:04o}")), "{e}");
                assert!(
                    !lf.exists(),
                    "mode {mode:o}: a lock file was created anyway"
                );
            }
        }
    }
}

/// No lock descriptor crosses `exec`: a child started while this process
/// holds locks with both backends and has a thread blocked in the kernel on
/// another lock file (its own descriptor) sees none of them in
/// `/proc/self/fd`.
#[test]
fn no_lock_descriptor_leaks_across_exec() {
    let kit = kit!();
    let s = TempStore::new();
    let ofd = LockSet::try_acquire([s.path("aaa-1"), s.path("bbb-2")], Backend::Ofd).unwrap();
    let fl = LockSet::try_acquire([s.path("ccc-3")], Backend::Flock).unwrap();
    let mut other = kit.helper("hold", &["ofd", "try", &s.path("ddd-4")]);
    other.expect("locked");
    let p4 = s.path("ddd-4");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(LockSet::acquire([p4], Backend::Ofd, WaitMode::Forever));
    });
    lockkit::wait_for_waiters(lockkit::inode_of(&s.lock_file("ddd-4")), 1);

    let h = kit.helper("fdlist", &[]);
    let fds = h.expect("fds");
    let (n, list) = fds.split_once(' ').unwrap_or((&fds, ""));
    let n: usize = n.parse().unwrap();
    assert!(
        !list.contains(".lock") && !list.contains(s.dir().to_str().unwrap()),
        "lock descriptors crossed exec: {list}"
    );
    // stdin, stdout, stderr (the test's pipes); anything else would be a
    // descriptor without O_CLOEXEC somewhere in this process.
    let extra: Vec<&str> = list
        .split('|')
        .filter(|e| !e.starts_with("0=") && !e.starts_with("1=") && !e.starts_with("2="))
        .collect();
    assert!(n >= 3, "{fds}");
    if !extra.is_empty() {
        eprintln!("note: the child inherited non-lock descriptors: {extra:?}");
    }
    other.send("release");
    other.expect("released");
    let waited = rx.recv_timeout(REPLY).unwrap().unwrap();
    waited.release().unwrap();
    ofd.release().unwrap();
    fl.release().unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

/// What must not change about a file goalkeeper was tricked into opening.
fn fingerprint(p: &Path) -> (Vec<u8>, u64, u64, i64, i64, u32) {
    let m = std::fs::metadata(p).unwrap();
    (
        std::fs::read(p).unwrap(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.mode(),
    )
}

/// Every way of asking for the lock on `p`, each with deletion set if it
/// were granted: all must be refused with ForeignLockFile naming the file.
fn assert_refused_everywhere(p: &str, lock: &Path, why: &str) {
    for b in [Backend::Ofd, Backend::Flock] {
        for mode in [
            WaitMode::Try,
            WaitMode::Forever,
            WaitMode::Timeout(Duration::from_secs(30)),
        ] {
            let p2 = p.to_string();
            let r = bounded("acquire", REPLY, move || {
                LockSet::acquire([p2], b, mode).map(|mut set| {
                    set.set_deletion(true);
                    set.release()
                })
            });
            let e = match r {
                Err(e) => e,
                Ok(_) => panic!("{why}: {b:?}/{mode:?}: a foreign file was taken as a lock file"),
            };
            assert!(
                matches!(e, Error::ForeignLockFile { .. }),
                "{why}: {b:?}/{mode:?}: {e}"
            );
            assert_eq!(gk_status::from(&e), gk_status::GK_ERROR_FOREIGN_LOCK_FILE);
            assert!(
                e.to_string().contains(lock.to_str().unwrap()),
                "{why}: the error does not name the file: {e}"
            );
        }
    }
    assert!(!lockkit::busy_for("posix", lock), "{why}: left locked");
}

/// L11: in a sticky, shared store directory on a system with
/// `fs.protected_hardlinks=0`, a user can plant `P.lock` as a hard link to
/// a file owned by root, empty or not. Releasing with deletion used to
/// write the token into it; now acquisition refuses any lock file with more
/// than one link, naming it, and the planted target keeps its contents,
/// inode, size, times and mode (root creates the link here, as root is not
/// bound by `protected_hardlinks`).
#[test]
fn l11_planted_hard_link_is_refused_and_its_target_untouched() {
    let base = TempStore::new();
    let store = base.dir().join("store");
    std::fs::create_dir(&store).unwrap();
    chmod(&store, 0o1777); // sticky and shared, as /tmp
    for (name, contents) in [("empty", &b""[..]), ("precious", &b"root's data\n"[..])] {
        let target = base.dir().join(name);
        std::fs::write(&target, contents).unwrap();
        chmod(&target, 0o644);
        let lock = store.join(format!("{name}-out.lock"));
        std::fs::hard_link(&target, &lock).unwrap();
        let before = fingerprint(&target);
        let p = format!("{}/{name}-out", store.display());
        assert_refused_everywhere(&p, &lock, name);
        let e = LockSet::try_acquire([&p], Backend::Ofd).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert_eq!(
            fingerprint(&target),
            before,
            "{name}: the planted target changed"
        );
        assert!(lock.exists(), "{name}: the planted link was removed");
        assert!(
            !lockkit::busy_for("posix", &target),
            "{name}: target left locked"
        );
    }
}

/// L11: a lock file owned by neither this process's effective user nor the
/// store directory's owner is refused, untouched; one owned by either is
/// accepted (the daemon runs as root in a root-owned store; a user's own
/// store is theirs).
#[test]
fn l11_lock_file_with_a_foreign_owner_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("chown needs root; skipped");
        return;
    }
    // Root store, file owned by another user (as a user could plant in a
    // sticky shared store): refused, contents untouched.
    let s = TempStore::new();
    let lock = s.lock_file("aaa-out");
    std::fs::write(&lock, b"").unwrap();
    chmod(&lock, 0o666);
    chown(&lock, 65534);
    let before = fingerprint(&lock);
    assert_refused_everywhere(&s.path("aaa-out"), &lock, "foreign owner");
    let e = LockSet::try_acquire([s.path("aaa-out")], Backend::Ofd).unwrap_err();
    assert!(
        e.to_string().contains("owned by uid 65534")
            && e.to_string().contains("store directory's owner (uid 0)"),
        "{e}"
    );
    assert_eq!(fingerprint(&lock), before, "the foreign file changed");

    // A store owned by another user: a file of that user is accepted (the
    // directory's owner), and so is one of this process's user; a third
    // user's is not. Fresh directories: the owner is cached per directory.
    let base = TempStore::new();
    for (file_owner, ok) in [(65534, true), (0, true), (12345, false)] {
        let dir = base.dir().join(format!("store-{file_owner}"));
        std::fs::create_dir(&dir).unwrap();
        chown(&dir, 65534);
        let lock = dir.join("aaa-out.lock");
        std::fs::write(&lock, b"").unwrap();
        chmod(&lock, 0o600);
        chown(&lock, file_owner);
        let p = format!("{}/aaa-out", dir.display());
        match LockSet::try_acquire([&p], Backend::Ofd) {
            Ok(mut set) => {
                assert!(ok, "uid {file_owner} accepted");
                set.set_deletion(true);
                set.release().unwrap();
                assert!(!lock.exists(), "deleted");
            }
            Err(e) => {
                assert!(!ok, "uid {file_owner}: {e}");
                assert!(matches!(e, Error::ForeignLockFile { .. }), "{e}");
                assert!(lock.exists());
            }
        }
    }
}

/// L11: a file that is not a regular file at `P.lock` (a FIFO a user
/// planted) is refused before anything is written.
#[test]
fn l11_non_regular_lock_file_is_refused() {
    let s = TempStore::new();
    let lock = s.lock_file("aaa-out");
    let c = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = LockSet::try_acquire([s.path("aaa-out")], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::ForeignLockFile { .. }), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// A release with deletion unlinks `P.lock` only if the name still refers to
/// the locked inode: a file put there meanwhile (by someone outside the
/// protocol) is neither removed nor written to, while the inode that was
/// held is marked for whoever is blocked on it.
#[test]
fn release_with_deletion_never_touches_a_file_that_replaced_the_lock_file() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let lock = s.lock_file("aaa-out");
    let mut set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let held = std::fs::File::open(&lock).unwrap();
    let other = s.dir().join("other");
    std::fs::write(&other, b"").unwrap();
    chmod(&other, 0o600);
    std::fs::rename(&other, &lock).unwrap();
    let before = fingerprint(&lock);
    set.set_deletion(true);
    set.release().unwrap();
    assert_eq!(fingerprint(&lock), before, "the replacement was touched");
    let m = held.metadata().unwrap();
    assert_eq!((m.nlink(), m.len()), (0, 1), "the held inode is marked");
}

/// L11 at release: a hard link made to a held lock file (as anyone may do
/// with `fs.protected_hardlinks=0`; root here) keeps the inode linked after
/// the unlink, so it is not marked: the other name is not left carrying the
/// token (a file old daemons would spin on), and the release says why.
#[test]
fn release_never_marks_a_lock_file_that_gained_a_link_while_held() {
    let s = TempStore::new();
    let p = s.path("aaa-out");
    let mut set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    let other = s.dir().join("bbb-out.lock");
    std::fs::hard_link(s.lock_file("aaa-out"), &other).unwrap();
    set.set_deletion(true);
    let e = set.release().unwrap_err();
    assert!(matches!(e, Error::ForeignLockFile { .. }), "{e}");
    assert!(e.to_string().contains("not marked"), "{e}");
    assert!(!s.lock_file("aaa-out").exists(), "the name was unlinked");
    assert_eq!(
        std::fs::metadata(&other).unwrap().len(),
        0,
        "the other link is unmarked"
    );
    assert!(!lockkit::busy_for("posix", &other), "released anyway");
}
