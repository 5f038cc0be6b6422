//! What a helper process does. Each role reports on stdout with lines
//! starting `@gk ` and takes commands from stdin; see the module comment of
//! `lockkit`. Errors are reported as `@gk err STATUS message`, STATUS being
//! the C ABI's status name for the error.

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use goalkeeper::ffi::gk_status;
use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode};
use goalkeeper::Error;

/// Runs `role` and exits the process with its status.
pub fn serve(test: &str, role: &str, args: &[String]) -> ! {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match role {
        "hold" => hold(test, &a),
        "fdlist" => fdlist(),
        "forkcheck" => forkcheck(&a),
        "eintr" => eintr(&a),
        "stress" => stress(&a),
        "try" => try_once(&a),
        "umask" => umask(&a),
        "tmpfs" => tmpfs(&a),
        "ghosts" => ghosts(&a),
        _ => {
            eprintln!("unknown role {role}");
            64
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Prints one reply line.
pub fn reply(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@gk {s}");
    let _ = out.flush();
}

fn reply_err(e: &Error) {
    reply(&format!("err {} {e}", gk_status::from(e).name()));
}

pub fn backend(s: &str) -> Backend {
    match s {
        "ofd" => Backend::Ofd,
        "flock" => Backend::Flock,
        _ => panic!("backend {s}"),
    }
}

pub fn mode(s: &str) -> WaitMode {
    match s {
        "try" => WaitMode::Try,
        "forever" => WaitMode::Forever,
        t => WaitMode::Timeout(Duration::from_millis(
            t.strip_prefix("timeout:")
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("mode {t}")),
        )),
    }
}

fn stdin_lines() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

/// Reads fd 0 with raw `read(2)` until EOF (for fork children, which must not
/// touch the parent's Rust-level stdin lock).
fn read_raw_until_eof() {
    let mut b = [0u8; 64];
    loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            return;
        }
    }
}

/// `hold BACKEND MODE PATH...`: acquire, report `locked` (or `err`), then obey
/// commands: `delete` (set deletion), `release`, `fork` (fork a child that
/// says `child-ready` once fork has returned in it and lives on, reading
/// stdin until EOF, while this process only waits for it),
/// `spawn` (the same with an exec'd `fdlist` child), `exit`. EOF: exit
/// (the kernel drops whatever is still held).
fn hold(test: &str, a: &[&str]) -> i32 {
    let set = match LockSet::acquire(&a[2..], backend(a[0]), mode(a[1])) {
        Ok(s) => {
            reply("locked");
            s
        }
        Err(e) => {
            reply_err(&e);
            return 0;
        }
    };
    let mut set = Some(set);
    for cmd in stdin_lines() {
        match cmd.as_str() {
            "delete" => {
                set.as_mut().expect("still held").set_deletion(true);
                reply("ok");
            }
            "release" => match set.take().expect("still held").release() {
                Ok(()) => reply("released"),
                Err(e) => reply_err(&e),
            },
            "fork" => {
                // SAFETY: the child only calls read(2) and _exit(2).
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // fork() returned here, so the atfork handlers have run:
                    // from now on the child shares no lock with the parent.
                    let msg = b"@gk child-ready\n";
                    // SAFETY: writing a static buffer to stdout.
                    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
                    read_raw_until_eof();
                    // SAFETY: leaving the fork child without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                reply(&format!("forked {pid}"));
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                return 0;
            }
            "spawn" => {
                let mut child = Command::new(std::env::current_exe().expect("exe"))
                    .args(["--exact", test, "--nocapture", "--test-threads=1", "-q"])
                    .env("GK_ROLE", "fdlist")
                    .env("GK_ARGS", "")
                    .spawn()
                    .expect("spawn fdlist");
                reply(&format!("spawned {}", child.id()));
                let _ = child.wait();
                return 0;
            }
            "exit" => return 0,
            other => panic!("unknown command {other}"),
        }
    }
    0
}

/// The targets of this process's open descriptors (without the one used to
/// list them).
pub fn open_fds() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd") {
        let e = e.expect("entry");
        let fd: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
        if let Ok(t) = std::fs::read_link(e.path()) {
            v.push((fd, t.to_string_lossy().into_owned()));
        }
    }
    // The directory stream's own descriptor points at /proc/<pid>/fd.
    v.retain(|(_, t)| !(t.starts_with("/proc/") && t.ends_with("/fd")));
    v
}

/// `fdlist`: reports `fds N fd=target|fd=target...`, then lives until EOF on stdin.
fn fdlist() -> i32 {
    let fds = open_fds();
    let list: Vec<String> = fds.iter().map(|(f, t)| format!("{f}={t}")).collect();
    reply(&format!("fds {} {}", fds.len(), list.join("|")));
    read_raw_until_eof();
    0
}

/// `forkcheck BACKEND P Q`: holds P, forks, and checks in the child that it
/// does not hold P (registry, descriptors, kernel), that the parent's lock
/// set is foreign there, and that releasing that foreign set cannot touch a
/// lock the child took itself (whose descriptor may reuse the same number).
/// Reports `forkcheck ok` or `forkcheck FAILURES`.
fn forkcheck(a: &[&str]) -> i32 {
    let b = backend(a[0]);
    let (p, q) = (a[1], a[2]);
    let set = LockSet::try_acquire([p], b).expect("parent locks P");
    set.check().expect("parent's set is sound");
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child uses the lock layer (whose state the atfork handler
    // made consistent), allocates (glibc's malloc is fork-safe), writes to a
    // pipe and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut bad: Vec<String> = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                bad.push(what.to_string());
            }
        };
        let sp = StorePath::new(p).unwrap();
        let sq = StorePath::new(q).unwrap();
        check(lock::held_count() == 0, "child's registry is not empty");
        check(!lock::is_held_by_me(&sp), "child believes it holds P");
        check(
            lock::open_descriptor_count() == 0,
            "child has tracked lock descriptors",
        );
        check(
            matches!(set.check(), Err(Error::WrongProcess(_))),
            "parent's set checks fine in the child",
        );
        check(
            !open_fds().iter().any(|(_, t)| t.ends_with(".lock")),
            "child inherited an open lock descriptor",
        );
        check(
            matches!(LockSet::try_acquire([p], b), Err(Error::Busy { .. })),
            "P is not busy for the child (the parent holds it)",
        );
        let mine = LockSet::try_acquire([q], b);
        check(mine.is_ok(), "child cannot lock Q");
        check(
            matches!(set.release(), Err(Error::WrongProcess(_))),
            "releasing the parent's set in the child did not say WrongProcess",
        );
        if let Ok(mine) = &mine {
            check(
                mine.check().is_ok(),
                "child's own set broke after release of the parent's",
            );
            check(lock::is_held_by_me(&sq), "child forgot Q");
            // An independent description must still find Q locked.
            let q_lock = StorePath::new(q).unwrap().lock_path().to_path_buf();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&q_lock);
            check(
                f.map(|f| kernel_busy(b, &f)).unwrap_or(false),
                "child's lock on Q was dropped by releasing the parent's set",
            );
        }
        let msg = if bad.is_empty() {
            "ok".to_string()
        } else {
            bad.join("; ")
        };
        // SAFETY: writing a local buffer to our pipe.
        unsafe { libc::write(fds[1], msg.as_ptr().cast(), msg.len()) };
        // SAFETY: leave the fork child at once.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        // SAFETY: reading into a buffer of the given size.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    let mut status = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The parent still holds P after all that.
    set.check().expect("parent's set still sound");
    reply(&format!("forkcheck {}", String::from_utf8_lossy(&got)));
    set.release().expect("parent releases P");
    0
}

/// Whether `backend`'s non-blocking exclusive lock on `f` is refused.
pub fn kernel_busy(b: Backend, f: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    let fd = f.as_raw_fd();
    match b {
        // SAFETY: flock on an open descriptor.
        Backend::Flock => (unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }) == -1,
        Backend::Ofd => {
            // SAFETY: an all-zero flock is valid; fcntl gets a valid pointer.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) == -1 }
        }
    }
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// `eintr BACKEND MODE PATH`: installs a SIGUSR1 handler *without*
/// `SA_RESTART` (so a blocked `fcntl`/`flock` returns `EINTR`), reports
/// `ready`, acquires, reports `locked SIGNALS_SEEN`, and releases on `release`.
fn eintr(a: &[&str]) -> i32 {
    // SAFETY: a zeroed sigaction with a plain handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = 0; // no SA_RESTART
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    reply("ready");
    let set = match LockSet::acquire([a[2]], backend(a[0]), mode(a[1])) {
        Ok(s) => s,
        Err(e) => {
            reply_err(&e);
            return 0;
        }
    };
    reply(&format!("locked {}", SIGNALS.load(Ordering::Relaxed)));
    for cmd in stdin_lines() {
        if cmd == "release" {
            break;
        }
    }
    set.release().expect("release");
    reply("released");
    0
}

/// `stress BACKEND MODE PATH ITERS LOG`: ITERS times: acquire, append
/// `enter PID` and `exit PID` to LOG, release with deletion. Reports
/// `done NOSPACE` (how many deletions failed with ENOSPC, e.g. injected).
fn stress(a: &[&str]) -> i32 {
    let (b, m, p) = (backend(a[0]), mode(a[1]), a[2]);
    let iters: usize = a[3].parse().expect("iters");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(a[4])
        .expect("open log");
    let pid = std::process::id();
    let mut nospace = 0;
    for _ in 0..iters {
        let mut set = loop {
            match LockSet::acquire([p], b, m) {
                Ok(s) => break s,
                Err(Error::TimedOut { .. }) => continue,
                Err(e) => {
                    reply_err(&e);
                    return 1;
                }
            }
        };
        log.write_all(format!("enter {pid}\n").as_bytes()).unwrap();
        log.write_all(format!("exit {pid}\n").as_bytes()).unwrap();
        set.set_deletion(true);
        match set.release() {
            Ok(()) => {}
            // The deletion could not be completed (both marks failed, or
            // no space): reported, the lock released all the same.
            Err(Error::NoSpace { .. }) => nospace += 1,
            Err(Error::Io { op, .. }) if op.starts_with("mark") => nospace += 1,
            Err(e) => {
                reply_err(&e);
                return 1;
            }
        }
    }
    reply(&format!("done {nospace}"));
    0
}

/// `try BACKEND PATH`: one try; reports `locked` (and releases) or `err`.
fn try_once(a: &[&str]) -> i32 {
    match LockSet::try_acquire([a[1]], backend(a[0])) {
        Ok(s) => {
            reply("locked");
            s.release().expect("release");
        }
        Err(e) => reply_err(&e),
    }
    0
}

/// `umask MASK PATH`: sets the umask, locks PATH (creating its lock file),
/// reports `mode OCTAL` of the lock file.
fn umask(a: &[&str]) -> i32 {
    let m = u32::from_str_radix(a[0], 8).expect("octal umask");
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(m as libc::mode_t) };
    let set = LockSet::try_acquire([a[1]], Backend::Ofd).expect("lock");
    let lf = StorePath::new(a[1]).unwrap().lock_path().to_path_buf();
    let mode = std::fs::metadata(&lf).expect("stat").permissions().mode() & 0o7777;
    set.release().expect("release");
    reply(&format!("mode {mode:o}"));
    0
}

/// Makes this thread's mount namespace private and mounts a tmpfs with
/// `opts` on `dir`. `Err(errno text)` when the system does not allow it.
fn private_tmpfs(dir: &str, opts: &str) -> Result<(), String> {
    use std::ffi::CString;
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let root = CString::new("/").unwrap();
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!(
                "make / private: {}",
                std::io::Error::last_os_error()
            ));
        }
        let (src, d, ty, o) = (
            CString::new("gk-test").unwrap(),
            CString::new(dir).unwrap(),
            CString::new("tmpfs").unwrap(),
            CString::new(opts).unwrap(),
        );
        if libc::mount(src.as_ptr(), d.as_ptr(), ty.as_ptr(), 0, o.as_ptr().cast()) != 0 {
            return Err(format!("mount tmpfs: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `tmpfs KIND DIR`, in a private mount namespace with a tiny tmpfs on DIR
/// (the namespace, and the mount, die with this process):
/// * `inodes`: every inode used up, then a lock file cannot be created:
///   reports the error of `try_acquire`.
/// * `blocks`: a lock file exists and is held, then the file system is
///   filled, then a release with deletion cannot write its token: reports
///   `token ERR`, then `after SIZE LOCKED` (the lock file left in place, its
///   size, and whether it can be locked again).
///
/// Reports `unsupported WHY` when mounting is not allowed here.
fn tmpfs(a: &[&str]) -> i32 {
    let (kind, dir) = (a[0], a[1]);
    let opts = match kind {
        "inodes" => "nr_inodes=4,size=1m,mode=1777",
        _ => "size=64k,mode=1777",
    };
    if let Err(why) = private_tmpfs(dir, opts) {
        reply(&format!("unsupported {why}"));
        return 0;
    }
    let p = format!("{dir}/aaa-out");
    let fill = |prefix: &str| {
        for i in 0.. {
            let f = format!("{dir}/{prefix}{i}");
            match std::fs::File::create(&f) {
                Ok(mut f) if kind == "blocks" => {
                    if f.write_all(&[0u8; 65536]).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    match kind {
        "inodes" => {
            fill("filler-");
            match LockSet::try_acquire([&p], Backend::Ofd) {
                Ok(_) => reply("locked"),
                Err(e) => reply_err(&e),
            }
            let exists = std::path::Path::new(&format!("{p}.lock")).exists();
            reply(&format!("created {exists}"));
        }
        "blocks" => {
            let mut set = LockSet::try_acquire([&p], Backend::Ofd).expect("lock before the fill");
            // Another description of the lock file, to look at its inode
            // after the deletion.
            let inode = std::fs::File::open(format!("{p}.lock")).expect("open the lock file");
            fill("filler-");
            // A one-byte write must really fail now.
            let probe = std::fs::write(format!("{dir}/probe"), b"x").is_err();
            set.set_deletion(true);
            match set.release() {
                Ok(()) => reply(&format!("token ok full={probe}")),
                Err(e) => reply(&format!(
                    "token {} full={probe}",
                    gk_status::from(&e).name()
                )),
            }
            let size = std::fs::metadata(format!("{p}.lock"))
                .map(|m| m.len() as i64)
                .unwrap_or(-1);
            let m = inode.metadata().expect("fstat the old inode");
            let again = LockSet::try_acquire([&p], Backend::Ofd);
            reply(&format!(
                "after {size} {} {} {}",
                std::os::unix::fs::MetadataExt::nlink(&m),
                m.len(),
                again.is_ok()
            ));
        }
        _ => panic!("tmpfs kind {kind}"),
    }
    0
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `ghosts PATH ROUNDS MS`: PATH is held elsewhere; ROUNDS timed
/// acquisitions (MS milliseconds each) time out, each leaving a wait behind. Reports `after-timeouts
/// THREADS DESCRIPTORS` (beyond this process's baseline); then, on
/// `released` (the holder let go, deleting the lock file), waits until
/// every lock descriptor is closed and reports `settled EXISTS` (whether a
/// lock file is at PATH now).
fn ghosts(a: &[&str]) -> i32 {
    let p = a[0];
    let rounds: usize = a[1].parse().expect("rounds");
    let ms: u64 = a[2].parse().expect("ms");
    let base_threads = thread_count();
    for _ in 0..rounds {
        match LockSet::acquire(
            [p],
            Backend::Ofd,
            WaitMode::Timeout(Duration::from_millis(ms)),
        ) {
            Err(Error::TimedOut { .. }) => {}
            other => {
                reply(&format!("err unexpected {other:?}"));
                return 1;
            }
        }
    }
    reply(&format!(
        "after-timeouts {} {}",
        thread_count().saturating_sub(base_threads),
        lock::open_descriptor_count()
    ));
    for cmd in stdin_lines() {
        if cmd == "released" {
            break;
        }
    }
    let start = std::time::Instant::now();
    // The abandoned waits see the release at once; bounded polling of the
    // library's own descriptor count.
    while lock::open_descriptor_count() != 0 {
        if start.elapsed() > Duration::from_secs(10) {
            reply("err waits never ended");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let exists = StorePath::new(p).unwrap().lock_path().exists();
    reply(&format!("settled {exists}"));
    0
}
