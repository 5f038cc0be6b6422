//! The C boundary through the exported functions, with no file locks but
//! the flock backend's, so that it runs under Miri too (`make miri` runs
//! this file with the library's unit tests): argument checking of every
//! exported function up to the point where it would make a system call,
//! stale and forged handles, status and outcome names, reading
//! `gk_worker_options` with any byte in its `bool`s, a worker driven
//! through the C ABI over plain goals (no lock files), calls and a free
//! from other threads waiting for a worker's call in progress, a worker
//! freed by another thread (and, outside Miri, used by a fork child), the
//! flock lock cycle, and `gk_spawn`'s and the signal watch's argument
//! checks.
//!
//! Miri checks every read and write these make for undefined behaviour; the
//! unterminated path of exactly `PATH_MAX` bytes, for instance, fails under
//! Miri if the library reads one byte past it.

use std::ffi::{c_char, c_void, CStr};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use goalkeeper::ffi::gk_status::*;
use goalkeeper::ffi::*;
use goalkeeper::lock::PATH_MAX;

/// A byte buffer aligned for any argument type, so that `+ 1` is misaligned.
#[repr(C, align(8))]
struct Aligned([u8; 64]);

fn message() -> String {
    // SAFETY: the library promises a valid NUL-terminated string.
    unsafe { CStr::from_ptr(gk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn status_and_outcome_names_cover_every_value() {
    for v in -3..120 {
        // SAFETY: static strings.
        let name = unsafe { CStr::from_ptr(gk_status_name(v)) }
            .to_str()
            .unwrap();
        match gk_status::from_raw(v as i64) {
            Some(s) => assert_eq!(name, s.name()),
            None => assert_eq!(name, "GK_UNKNOWN_STATUS"),
        }
    }
    for v in [0u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1000, u32::MAX] {
        // SAFETY: static strings.
        let name = unsafe { CStr::from_ptr(gk_outcome_name(v)) }
            .to_str()
            .unwrap();
        assert!(!name.is_empty());
        if v > 8 {
            assert_eq!(name, "unknown");
        }
    }
    // SAFETY: a static string.
    let v = unsafe { CStr::from_ptr(gk_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
}

/// Every lock-set entry point refuses bad arguments before it touches a
/// file, and writes 0 to `*out` when it can.
#[test]
fn lockset_arguments_are_refused_before_any_system_call() {
    let ok_path = c"/s/a";
    let one = [ok_path.as_ptr()];
    let mut out: gk_lockset = 99;
    // SAFETY: (all calls below) pointers are NULL, or valid for what the
    // call is told, or refused by the library before it reads them.
    unsafe {
        assert_eq!(
            gk_lockset_try_acquire(one.as_ptr(), 1, 0, std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_lockset_try_acquire(std::ptr::null(), 1, 0, &mut out),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(out, 0);
        assert_eq!(
            gk_lockset_try_acquire(one.as_ptr(), 0, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT
        );
        // A huge count is refused before the array is read.
        assert_eq!(
            gk_lockset_acquire(one.as_ptr(), usize::MAX, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_lockset_acquire_timeout(one.as_ptr(), 1, 2, 5, &mut out),
            GK_ERROR_INVALID_ARGUMENT,
            "bad backend"
        );
        // Misaligned array and out pointers.
        let mut bytes = Aligned([0u8; 64]);
        let mis = bytes.0.as_mut_ptr().wrapping_add(1);
        assert_eq!(
            gk_lockset_try_acquire(mis.cast(), 1, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_lockset_try_acquire(one.as_ptr(), 1, 0, mis.cast()),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert!(bytes.0.iter().all(|&b| b == 0), "nothing written");

        for bad in [c"rel/a", c"/s/../a", c"/s/./a", c"/", c"", c"//"] {
            let p = [bad.as_ptr()];
            assert_eq!(
                gk_lockset_try_acquire(p.as_ptr(), 1, 0, &mut out),
                GK_ERROR_INVALID_PATH,
                "{bad:?}"
            );
        }
        let with_null = [ok_path.as_ptr(), std::ptr::null()];
        assert_eq!(
            gk_lockset_try_acquire(with_null.as_ptr(), 2, 0, &mut out),
            GK_ERROR_NULL_POINTER
        );
        // Exactly PATH_MAX bytes without a NUL: never read past them.
        let mut long = vec![b'x'; PATH_MAX];
        long[0] = b'/';
        let p = [long.as_ptr().cast::<c_char>()];
        assert_eq!(
            gk_lockset_try_acquire(p.as_ptr(), 1, 0, &mut out),
            GK_ERROR_INVALID_PATH
        );
        // The longest string with a NUL inside the limit is read, and refused
        // for its lock file name.
        long[PATH_MAX - 1] = 0;
        assert_eq!(
            gk_lockset_try_acquire(p.as_ptr(), 1, 0, &mut out),
            GK_ERROR_INVALID_PATH
        );

        // The packed form.
        let packed = b"/s/a\0b\0";
        assert_eq!(
            gk_lockset_acquire_packed(packed.as_ptr(), packed.len(), 0, 0, &mut out),
            GK_ERROR_INVALID_PATH,
            "an embedded NUL makes a relative item"
        );
        assert_eq!(
            gk_lockset_acquire_packed(packed.as_ptr(), 4, 0, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT,
            "no terminating NUL"
        );
        assert_eq!(
            gk_lockset_acquire_packed(packed.as_ptr(), 0, 0, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_lockset_acquire_packed(std::ptr::null(), 5, 0, 0, &mut out),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_lockset_acquire_packed(packed.as_ptr(), usize::MAX, 0, -1, &mut out),
            GK_ERROR_INVALID_ARGUMENT
        );
        let double = b"/s/a\0\0";
        assert_eq!(
            gk_lockset_acquire_packed(double.as_ptr(), double.len(), 0, 0, &mut out),
            GK_ERROR_INVALID_PATH,
            "an empty item"
        );
        let fine = b"/s/a\0/s//b/\0";
        assert_eq!(
            gk_lockset_acquire_packed(fine.as_ptr(), fine.len(), 9, 0, &mut out),
            GK_ERROR_INVALID_ARGUMENT,
            "valid paths, bad backend"
        );
        assert_eq!(out, 0);
    }
}

#[test]
fn stale_forged_and_wrong_kind_handles_are_refused() {
    let worker_kind = 0x57u64 << 56 | 1 << 32;
    for h in [0, u64::MAX, 0x4c << 56 | 1 << 32 | 123_456, worker_kind] {
        assert_eq!(gk_lockset_release(h), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_lockset_check(h), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_lockset_set_deletion(h, true), GK_ERROR_STALE_HANDLE);
        assert!(!message().is_empty());
        let mut len = 77usize;
        let mut buf = [1 as c_char; 8];
        // SAFETY: valid buffer and out pointer.
        let s = unsafe { gk_lockset_paths(h, buf.as_mut_ptr(), buf.len(), &mut len) };
        assert_eq!(s, GK_ERROR_STALE_HANDLE);
        assert_eq!(len, 77, "len_out untouched");
        assert!(buf.iter().all(|&b| b == 1), "buffer untouched");
    }
    let lockset_kind = 0x4cu64 << 56 | 1 << 32;
    for w in [0, u64::MAX, lockset_kind, 0x57 << 56 | 7 << 32 | 99] {
        let mut ev = gk_event {
            kind: 77,
            goal: 0,
            goal_kind: 0,
            tag: 0,
            outcome: 0,
            fd: 0,
            timeout_ms: 0,
        };
        assert_eq!(gk_worker_free(w), GK_ERROR_STALE_HANDLE);
        // SAFETY: valid out pointers.
        unsafe {
            assert_eq!(gk_worker_next_event(w, &mut ev), GK_ERROR_STALE_HANDLE);
            let mut fd = 5;
            assert_eq!(gk_worker_fd(w, &mut fd), GK_ERROR_STALE_HANDLE);
            let mut g = 5;
            let outs = [c"/s/x".as_ptr()];
            assert_eq!(
                gk_worker_add_goal(w, 0, outs.as_ptr(), 1, 0, 0, &mut g),
                GK_ERROR_STALE_HANDLE
            );
            assert_eq!(g, 0);
        }
        assert_eq!(gk_worker_report(w, 1, 1), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_worker_cancel(w, 1), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_worker_add_dependency(w, 1, 2), GK_ERROR_STALE_HANDLE);
    }
}

/// A C caller may leave any byte in a `bool` field; the options are read
/// through a byte-typed mirror, so that is defined (Miri checks it).
#[test]
fn worker_options_are_read_whatever_bytes_their_bools_hold() {
    #[repr(C, align(8))]
    struct Bytes([u8; std::mem::size_of::<gk_worker_options>()]);
    for fill in [0u8, 1, 2, 0xff] {
        let mut b = Bytes([fill; std::mem::size_of::<gk_worker_options>()]);
        // max_jobs = 1, backend = 7 (invalid): refused after the read.
        b.0[..4].copy_from_slice(&1u32.to_ne_bytes());
        b.0[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let mut w = 5;
        // SAFETY: an aligned buffer of the struct's size.
        let s = unsafe { gk_worker_new((&b as *const Bytes).cast(), &mut w) };
        assert_eq!(s, GK_ERROR_INVALID_ARGUMENT, "{}", message());
        assert_eq!(w, 0);
    }
    let mut w = 5;
    let bytes = Aligned([0u8; 64]);
    // SAFETY: refused for its alignment before any read.
    let s = unsafe { gk_worker_new(bytes.0.as_ptr().wrapping_add(1).cast(), &mut w) };
    assert_eq!(s, GK_ERROR_INVALID_ARGUMENT);
    // SAFETY: NULL out.
    let s = unsafe { gk_worker_new(std::ptr::null(), std::ptr::null_mut()) };
    assert_eq!(s, GK_ERROR_NULL_POINTER);
}

/// A worker over plain goals (no outputs, so no lock files), driven through
/// the C pull loop: every goal runs once, after its dependency, and the
/// handle goes stale when freed.
#[test]
fn a_worker_runs_plain_goals_through_the_c_abi() {
    let mut w = 0;
    // SAFETY: (all calls below) valid out pointers and buffers.
    unsafe {
        assert_eq!(
            gk_worker_new(std::ptr::null(), &mut w),
            GK_OK,
            "{}",
            message()
        );
        let (mut a, mut b) = (0, 0);
        assert_eq!(
            gk_worker_add_goal(w, 2, std::ptr::null(), 0, 0, 0, &mut a),
            GK_OK
        );
        assert_eq!(
            gk_worker_add_goal_packed(w, 2, std::ptr::null(), 0, 0, 0, &mut b),
            GK_OK
        );
        assert_ne!(a, b);
        assert_eq!(gk_worker_add_dependency(w, b, a), GK_OK);
        assert_eq!(gk_worker_add_dependency(w, b, 12345), GK_ERROR_STALE_HANDLE);
        assert_eq!(
            gk_worker_add_goal(w, 9, std::ptr::null(), 0, 0, 0, &mut a),
            GK_ERROR_INVALID_ARGUMENT,
            "bad kind"
        );
        let mut ran = Vec::new();
        let mut ev = std::mem::zeroed::<gk_event>();
        for _ in 0..10 {
            assert_eq!(gk_worker_next_event(w, &mut ev), GK_OK, "{}", message());
            match ev.kind {
                1 => {
                    ran.push(ev.goal);
                    assert_eq!(gk_worker_report(w, ev.goal, 1), GK_OK, "{}", message());
                    assert_eq!(gk_worker_report(w, ev.goal, 1), GK_ERROR_INVALID_STATE);
                }
                2 => {}
                4 => break,
                k => panic!("unexpected event kind {k}"),
            }
        }
        assert_eq!(ev.kind, 4, "done");
        assert_eq!(ran.len(), 2, "{ran:?}");
        let mut r = std::mem::zeroed::<gk_goal_result>();
        assert_eq!(gk_worker_goal_result(w, b, &mut r), GK_OK);
        assert_eq!(r.outcome, 1);
        let mut a_audit = std::mem::zeroed::<gk_audit>();
        assert_eq!(gk_worker_audit(w, &mut a_audit), GK_OK);
        assert_eq!((a_audit.goals, a_audit.violations), (2, 0));
        let mut len = 0;
        let s = gk_worker_take_log(w, std::ptr::null_mut(), 0, &mut len);
        assert!(s == GK_OK || s == GK_ERROR_BUFFER_TOO_SMALL);
        let mut log = vec![0 as c_char; len];
        assert_eq!(
            gk_worker_take_log(w, log.as_mut_ptr(), log.len(), &mut len),
            GK_OK
        );
        assert_eq!(gk_worker_free(w), GK_OK);
        assert_eq!(gk_worker_free(w), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_worker_next_event(w, &mut ev), GK_ERROR_STALE_HANDLE);
    }
}

/// Log records through the C ABI, without lock files (a build goal asked
/// for again in a weaker mode logs without locking anything), so Miri
/// checks the records' strings and the writes into `out`.
#[test]
fn log_records_cross_the_c_abi_with_their_strings() {
    // SAFETY: every pointer passed is valid for what the function writes,
    // or deliberately NULL/misaligned, which must be refused before use.
    unsafe {
        let mut w: gk_worker = 0;
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w), GK_OK);
        let path = c"/gk-miri-store/aaaa-out".as_ptr();
        let mut g: gk_goal = 0;
        assert_eq!(gk_worker_add_goal(w, 0, &path, 1, 2, 0, &mut g), GK_OK);
        for _ in 0..3 {
            assert_eq!(gk_worker_add_goal(w, 0, &path, 1, 0, 0, &mut g), GK_OK);
        }
        let mut recs = [std::mem::MaybeUninit::<gk_log_record>::uninit(); 4];
        let out = recs.as_mut_ptr().cast::<gk_log_record>();
        let mut n = 9usize;
        assert_eq!(
            gk_worker_take_log_records(w, out, 1, std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_worker_take_log_records(w, std::ptr::null_mut(), 1, &mut n),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(n, 0);
        let mut bytes = Aligned([0; 64]);
        let mis = bytes.0.as_mut_ptr().add(1).cast::<gk_log_record>();
        assert_eq!(
            gk_worker_take_log_records(w, mis, 1, &mut n),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_worker_take_log_records(w, out, usize::MAX, &mut n),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_worker_take_log_records(w, std::ptr::null_mut(), 0, &mut n),
            GK_OK
        );
        assert_eq!(n, 0);
        assert_eq!(gk_worker_take_log_records(w, out, 1, &mut n), GK_OK);
        assert_eq!(n, 1);
        let first = recs[0].assume_init();
        let text = CStr::from_ptr(first.message).to_str().unwrap().to_owned();
        assert_eq!(text.len(), first.message_len);
        assert!(text.contains("keeps mode"), "{text}");
        assert_eq!(
            (first.goal, first.holder_pid, first.duration_ns),
            (g, -1, -1)
        );
        assert!(first.path.is_null() && first.path_len == 0);
        let kind = CStr::from_ptr(gk_log_kind_name(first.kind));
        assert_eq!(kind.to_str().unwrap(), "mode-kept");
        assert_eq!(gk_worker_take_log_records(w, out, 4, &mut n), GK_OK);
        assert_eq!(n, 2);
        for r in &recs[..2] {
            let r = r.assume_init();
            let m = CStr::from_ptr(r.message).to_bytes();
            assert_eq!(m.len(), r.message_len);
        }
        assert_eq!(gk_worker_take_log_records(w, out, 4, &mut n), GK_OK);
        assert_eq!(n, 0);
        assert_eq!(gk_worker_free(w), GK_OK);
        assert_eq!(
            gk_worker_take_log_records(w, out, 4, &mut n),
            GK_ERROR_STALE_HANDLE
        );
    }
}

/// The whole lock-file protocol with the flock backend, through the C ABI:
/// open, lock, fstat, the deletion token, unlink, close. Miri runs this one
/// too (with `-Zmiri-disable-isolation`), so the lock layer's unsafe code is
/// checked for the flock backend; OFD locks (`F_OFD_SETLK`) are not
/// implemented by Miri.
#[test]
fn flock_lock_cycle_through_the_c_abi() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let dir = std::env::temp_dir().join(format!(
        "gk-ffi-unit-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| {
        let mut v = dir.join(name).as_os_str().as_bytes().to_vec();
        v.push(0);
        v
    };
    let (a, b) = (path("a"), path("b"));
    let paths = [b.as_ptr().cast::<c_char>(), a.as_ptr().cast()];
    let mut set = 0;
    // SAFETY: (all calls below): valid paths, buffers and out pointers.
    unsafe {
        assert_eq!(
            gk_lockset_try_acquire(paths.as_ptr(), 2, 1, &mut set),
            GK_OK,
            "{}",
            message()
        );
        assert_eq!(gk_lockset_check(set), GK_OK);
        let mut again = 7;
        assert_eq!(
            gk_lockset_try_acquire(paths.as_ptr(), 1, 1, &mut again),
            GK_HELD_BY_THIS_PROCESS
        );
        let mut len = 0;
        assert_eq!(
            gk_lockset_paths(set, std::ptr::null_mut(), 0, &mut len),
            GK_ERROR_BUFFER_TOO_SMALL
        );
        let mut buf = vec![0 as c_char; len];
        assert_eq!(
            gk_lockset_paths(set, buf.as_mut_ptr(), len, &mut len),
            GK_OK
        );
        let listed: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
        assert_eq!(listed, [&a[..], &b[..]].concat(), "sorted, NUL-separated");
        let mut held = false;
        assert_eq!(gk_path_is_locked_by_me(a.as_ptr().cast(), &mut held), GK_OK);
        assert!(held);
        assert_eq!(gk_lockset_set_deletion(set, true), GK_OK);
        assert_eq!(gk_lockset_release(set), GK_OK);
        assert_eq!(gk_lockset_release(set), GK_ERROR_STALE_HANDLE);
        assert!(!dir.join("a.lock").exists(), "deleted on release");

        // Another open file description holding the flock: busy, and nothing
        // of the set is kept (L8).
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("b.lock"))
            .unwrap();
        assert_eq!(
            libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
        assert_eq!(
            gk_lockset_try_acquire(paths.as_ptr(), 2, 1, &mut set),
            GK_BUSY
        );
        let mut n = 9;
        assert_eq!(gk_held_count(&mut n), GK_OK);
        assert_eq!(n, 0);
        drop(other);
        // A lock file that carries the deletion token but was never unlinked
        // (its holder died between the two) is healed by the next holder:
        // the deletion is finished and the set taken on a fresh file.
        std::fs::write(dir.join("a.lock"), b"d").unwrap();
        let packed = [&a[..], &b[..]].concat();
        assert_eq!(
            gk_lockset_acquire_packed(packed.as_ptr(), packed.len(), 1, 0, &mut set),
            GK_OK
        );
        assert_eq!(std::fs::metadata(dir.join("a.lock")).unwrap().len(), 0);
        assert_eq!(gk_lockset_release(set), GK_OK);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Calls into goalkeeper from inside a predicate: a nested call must not
/// disturb the outer call's worker. A validity predicate of worker A calls
/// worker B, frees worker C, then calls and tries to free A itself: B
/// answers, C is freed (stale from then on), and A refuses both with
/// `GK_ERROR_INVALID_STATE`. Run once with A the last worker this thread
/// called before the outer call, and once with B; A and B keep working.
#[test]
fn a_predicate_may_call_and_free_other_workers_but_not_its_own() {
    type Seen = [gk_status; 5];
    struct Ctx {
        a: u64,
        b: u64,
        c: u64,
        seen: Vec<Seen>,
    }
    unsafe extern "C" fn pred(data: *mut c_void, _path: *const c_char) -> i32 {
        // SAFETY: `data` is the test's `Ctx`, not otherwise borrowed meanwhile.
        let ctx = unsafe { &mut *data.cast::<Ctx>() };
        // SAFETY: a zeroed gk_audit is valid; the out pointers are live.
        let mut au = unsafe { std::mem::zeroed::<gk_audit>() };
        // SAFETY: as above.
        let seen = unsafe {
            [
                gk_worker_audit(ctx.b, &mut au),
                gk_worker_free(ctx.c),
                gk_worker_audit(ctx.c, &mut au),
                gk_worker_audit(ctx.a, &mut au),
                gk_worker_free(ctx.a),
            ]
        };
        ctx.seen.push(seen);
        1 // valid: the goal ends already-valid without taking its lock
    }
    for warm_own in [true, false] {
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: (all calls below) valid out pointers; `ctx` outlives the worker.
        unsafe {
            assert_eq!(gk_worker_new(std::ptr::null(), &mut a), GK_OK);
            assert_eq!(gk_worker_new(std::ptr::null(), &mut b), GK_OK);
            assert_eq!(gk_worker_new(std::ptr::null(), &mut c), GK_OK);
            let mut ctx = Ctx {
                a,
                b,
                c,
                seen: Vec::new(),
            };
            let data: *mut Ctx = &mut ctx;
            assert_eq!(gk_worker_set_valid_path(a, Some(pred), data.cast()), GK_OK);
            let out = b"/gk-unit-test-store/aaa-out\0";
            let outs = [out.as_ptr().cast::<c_char>()];
            let mut g = 0;
            assert_eq!(
                gk_worker_add_goal(a, 0, outs.as_ptr(), 1, 0, 0, &mut g),
                GK_OK,
                "{}",
                message()
            );
            let mut au = std::mem::zeroed::<gk_audit>();
            // Which worker this thread's cache holds when the call starts.
            assert_eq!(
                gk_worker_audit(if warm_own { a } else { b }, &mut au),
                GK_OK
            );
            let mut ev = std::mem::zeroed::<gk_event>();
            assert_eq!(gk_worker_next_event(a, &mut ev), GK_OK, "{}", message());
            assert_eq!(
                (ev.kind, ev.goal, ev.outcome),
                (2, g, 3),
                "finished, already valid"
            );
            let seen = (*data).seen.clone();
            assert_eq!(
                seen,
                vec![[
                    GK_OK,
                    GK_OK,
                    GK_ERROR_STALE_HANDLE,
                    GK_ERROR_INVALID_STATE,
                    GK_ERROR_INVALID_STATE
                ]],
                "warm_own {warm_own}"
            );
            assert_eq!(gk_worker_next_event(a, &mut ev), GK_OK);
            assert_eq!(ev.kind, 4, "done");
            assert_eq!(gk_worker_audit(b, &mut au), GK_OK);
            assert_eq!(gk_worker_audit(a, &mut au), GK_OK);
            assert_eq!(gk_worker_audit(c, &mut au), GK_ERROR_STALE_HANDLE);
            assert_eq!(gk_worker_free(c), GK_ERROR_STALE_HANDLE);
            assert_eq!(gk_worker_free(a), GK_OK);
            assert_eq!(gk_worker_free(b), GK_OK);
            assert_eq!(gk_worker_audit(a, &mut au), GK_ERROR_STALE_HANDLE);
        }
    }
}

/// How long a parked predicate (see [`parked_worker`]) waits to be let
/// go: longer than its tests wait for anything else, so that a failing test
/// says why before the predicate gives up.
const PARK_BOUND: Duration = Duration::from_secs(120);

/// What a parking predicate shares with its test.
struct Park {
    inside: Sender<()>,
    go: Receiver<()>,
}

/// A validity predicate that says it was asked (`inside`), then waits to
/// be let go (`go`) and answers "valid".
unsafe extern "C" fn park(data: *mut c_void, _path: *const c_char) -> i32 {
    // SAFETY: `data` is the test's `Park`, used only by this thread now.
    let p = unsafe { &*data.cast::<Park>() };
    p.inside.send(()).unwrap();
    p.go.recv_timeout(PARK_BOUND)
        .expect("the test lets the predicate return");
    1 // valid: the goal ends already-valid
}

/// A worker with one goal (output `out`) whose validity predicate parks the
/// thread that asks it: that thread's call (its `next_event`) stays inside
/// the worker, holding its mutex, until the test sends on the returned
/// `Sender`; the `Receiver` hears when it got there. The `Park` must
/// outlive the worker's calls. (An `Rc`, not a `Box`: moving a `Box` out
/// of this function would invalidate the pointer the predicate holds.)
fn parked_worker(out: &CStr) -> (gk_worker, Rc<Park>, Receiver<()>, Sender<()>) {
    let ((inside, inside_rx), (go_tx, go)) = (channel(), channel());
    let park_ctx = Rc::new(Park { inside, go });
    let (mut w, mut g) = (0, 0);
    let outs = [out.as_ptr()];
    // SAFETY: valid out pointers; the caller keeps `park_ctx` alive.
    unsafe {
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w), GK_OK);
        let data = Rc::as_ptr(&park_ctx).cast_mut().cast::<c_void>();
        assert_eq!(gk_worker_set_valid_path(w, Some(park), data), GK_OK);
        let s = gk_worker_add_goal(w, 0, outs.as_ptr(), 1, 0, 0, &mut g);
        assert_eq!(s, GK_OK);
    }
    (w, park_ctx, inside_rx, go_tx)
}

/// Calls from other threads on a worker that is inside a call wait for it,
/// and so does a free: while thread A's call is inside a validity
/// predicate, thread B calls `gk_worker_audit` and thread C
/// `gk_worker_free` on the same worker. Each of them finds the worker's
/// mutex held and waits for it holding a reference to the worker, not the
/// handle table's lock; on Linux the test lets the predicate return only
/// once both are asleep, so both take that path (under Miri, which has no
/// `/proc`, they race A instead). Then A's call ends normally, the free
/// succeeds once, B's audit succeeds if it came first and otherwise finds
/// the handle stale, and the handle is stale from then on.
#[test]
fn other_threads_wait_for_a_call_in_progress_and_a_free_after_it() {
    use std::time::Instant;
    const BOUND: Duration = Duration::from_secs(60);
    /// Waits until thread `tid` of this process sleeps: in a futex wait for
    /// the worker's mutex (or, when another test of this file holds a
    /// handle table's lock at that moment, briefly for that lock; the
    /// thread then races A, and the assertions below allow either order).
    fn asleep(tid: i32) {
        if cfg!(miri) {
            return;
        }
        let stat = format!("/proc/self/task/{tid}/stat");
        let t0 = Instant::now();
        loop {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command's closing parenthesis.
            if s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'))
            {
                return;
            }
            assert!(t0.elapsed() < BOUND, "thread {tid} never waited: {s}");
            std::thread::yield_now();
        }
    }
    fn tid() -> i32 {
        if cfg!(miri) {
            return 0;
        }
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }
    let (w, ctx, inside, go) = parked_worker(c"/gk-unit-test-store/aaa-wait");
    let (done, results) = channel::<(char, gk_status, u32)>();
    let spawn = |who: char, f: fn(gk_worker) -> (gk_status, u32)| {
        let (done, (tid_tx, tid_rx)) = (done.clone(), channel());
        std::thread::spawn(move || {
            tid_tx.send(tid()).unwrap();
            let (st, what) = f(w);
            done.send((who, st, what)).unwrap();
        });
        tid_rx.recv_timeout(BOUND).expect("thread started")
    };
    spawn('A', |w| {
        // SAFETY: a zeroed gk_event is valid; the out pointer is live.
        let mut ev = unsafe { std::mem::zeroed::<gk_event>() };
        // SAFETY: as above.
        let st = unsafe { gk_worker_next_event(w, &mut ev) };
        (st, ev.kind * 10 + ev.outcome)
    });
    inside
        .recv_timeout(BOUND)
        .expect("A's call reaches the predicate");
    asleep(spawn('B', |w| {
        // SAFETY: a zeroed gk_audit is valid; the out pointer is live.
        let mut au = unsafe { std::mem::zeroed::<gk_audit>() };
        // SAFETY: as above.
        (unsafe { gk_worker_audit(w, &mut au) }, 0)
    }));
    asleep(spawn('C', |w| (gk_worker_free(w), 0)));
    go.send(()).unwrap();
    let mut got: Vec<(char, gk_status, u32)> = (0..3)
        .map(|_| results.recv_timeout(BOUND).expect("every thread returns"))
        .collect();
    got.sort_by_key(|r| r.0);
    assert_eq!(got[0], ('A', GK_OK, 23), "A: finished, already valid");
    assert!(matches!(got[1].1, GK_OK | GK_ERROR_STALE_HANDLE), "{got:?}");
    assert_eq!(got[2], ('C', GK_OK, 0), "C's free");
    // SAFETY: a zeroed gk_audit is valid; the out pointer is live.
    let mut au = unsafe { std::mem::zeroed::<gk_audit>() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { gk_worker_audit(w, &mut au) },
        GK_ERROR_STALE_HANDLE
    );
    assert_eq!(gk_worker_free(w), GK_ERROR_STALE_HANDLE);
    drop(ctx);
}

/// A worker freed by another thread is refused to the thread that called
/// it last (whose next call finds it without the handle table), and a new
/// worker in its slot is not confused with it.
#[test]
fn a_worker_freed_by_another_thread_is_stale_for_the_thread_that_called_it_last() {
    // SAFETY: (all calls below) a zeroed gk_audit and gk_event are valid;
    // the out pointers are live.
    unsafe {
        let mut au = std::mem::zeroed::<gk_audit>();
        let mut ev = std::mem::zeroed::<gk_event>();
        let mut w = 0;
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w), GK_OK);
        assert_eq!(gk_worker_audit(w, &mut au), GK_OK);
        let freed = std::thread::spawn(move || gk_worker_free(w));
        assert_eq!(freed.join().unwrap(), GK_OK);
        assert_eq!(gk_worker_audit(w, &mut au), GK_ERROR_STALE_HANDLE);
        assert!(message().contains("stale"), "{}", message());
        assert_eq!(gk_worker_next_event(w, &mut ev), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_worker_free(w), GK_ERROR_STALE_HANDLE);
        let mut w2 = 0;
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w2), GK_OK);
        assert_ne!(w2, w, "a slot's next worker has another handle");
        assert_eq!(gk_worker_audit(w2, &mut au), GK_OK);
        assert_eq!(gk_worker_audit(w, &mut au), GK_ERROR_STALE_HANDLE);
        assert_eq!(gk_worker_next_event(w2, &mut ev), GK_OK);
        assert_eq!(ev.kind, 4, "done: w2 has no goals");
        assert_eq!(gk_worker_free(w2), GK_OK);
        assert_eq!(gk_worker_audit(w2, &mut au), GK_ERROR_STALE_HANDLE);
    }
}

/// A fork child's calls on its parent's worker answer
/// `GK_ERROR_WRONG_PROCESS`, even when the forking thread called that
/// worker last and another thread of the parent was inside a call on it
/// (holding its mutex, which stays held in the child) at the fork: the
/// child never waits for that mutex.
#[test]
#[cfg_attr(miri, ignore)] // fork
fn a_fork_child_is_refused_its_parents_worker_without_waiting_for_it() {
    const BOUND: Duration = Duration::from_secs(60);
    let (w, ctx, inside, go) = parked_worker(c"/gk-unit-test-store/aaa-fork");
    let a = std::thread::spawn(move || {
        // SAFETY: a zeroed gk_event is valid; the out pointer is live.
        let mut ev = unsafe { std::mem::zeroed::<gk_event>() };
        // SAFETY: as above.
        (unsafe { gk_worker_next_event(w, &mut ev) }, ev.kind)
    });
    inside
        .recv_timeout(BOUND)
        .expect("A's call reaches the predicate");
    let mut fds = [0; 2];
    // SAFETY: (fork and what follows) `fds` has room for two descriptors;
    // the child only calls goalkeeper, writes and exits.
    let (n, statuses, st) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut au = std::mem::zeroed::<gk_audit>();
            let got = [gk_worker_audit(w, &mut au), gk_worker_free(w)].map(|s| s as u8);
            libc::write(fds[1], got.as_ptr().cast(), 2);
            libc::_exit(0);
        }
        libc::close(fds[1]);
        let mut p = libc::pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        };
        let mut got = [0u8; 2];
        let n = match libc::poll(&mut p, 1, BOUND.as_millis() as i32) {
            1 => libc::read(fds[0], got.as_mut_ptr().cast(), 2),
            _ => libc::kill(pid, libc::SIGKILL) as isize - 1,
        };
        libc::close(fds[0]);
        let mut st = 0;
        assert_eq!(libc::waitpid(pid, &mut st, 0), pid);
        (n, got, st)
    };
    go.send(()).unwrap();
    assert_eq!(a.join().unwrap(), (GK_OK, 2), "A: finished, in the parent");
    assert_eq!(n, 2, "the child answered within {BOUND:?} (status {st:#x})");
    let wrong = GK_ERROR_WRONG_PROCESS as u8;
    assert_eq!(statuses, [wrong, wrong], "the child's audit and free");
    assert_eq!(gk_worker_free(w), GK_OK, "the parent still owns it");
    drop(ctx);
}

#[test]
fn store_db_arguments_are_refused_before_sqlite_is_reached() {
    let mut out: gk_store_db = 7;
    let mut valid = true;
    let long = vec![b'/'; PATH_MAX];
    let paths = [c"/s/a".as_ptr(), c"/s/b".as_ptr()];
    let mut answers = [true, true];
    let mut w: gk_worker = 0;
    // SAFETY: (all calls below) pointers are NULL, or valid for what the
    // call is told, or refused by the library before it reads them.
    unsafe {
        assert_eq!(
            gk_store_db_open(std::ptr::null(), 0, &mut out),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(out, 0, "*out is 0 on every error");
        assert_eq!(
            gk_store_db_open(c"/var/guix/db/db.sqlite".as_ptr(), 0, std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_store_db_open(c"var/guix/db/db.sqlite".as_ptr(), 0, &mut out),
            GK_ERROR_INVALID_PATH
        );
        assert!(message().contains("var/guix/db/db.sqlite"), "{}", message());
        // Exactly PATH_MAX bytes and no NUL: refused without reading past them.
        assert_eq!(
            gk_store_db_open(long.as_ptr().cast(), 0, &mut out),
            GK_ERROR_INVALID_PATH
        );
        assert_eq!(
            gk_store_path_valid(c"db.sqlite".as_ptr(), c"/s/x".as_ptr(), &mut valid),
            GK_ERROR_INVALID_PATH
        );
        assert!(!valid, "*valid is false on every error");
        assert_eq!(
            gk_store_path_valid(c"/db".as_ptr(), std::ptr::null(), &mut valid),
            GK_ERROR_NULL_POINTER
        );
        // Stale, zero and wrong-kind handles.
        for h in [0, u64::MAX, (0x44u64 << 56) | (1 << 32) | 12345] {
            valid = true;
            assert_eq!(
                gk_store_db_is_valid(h, c"/s/x".as_ptr(), &mut valid),
                GK_ERROR_STALE_HANDLE
            );
            assert!(!valid);
            assert_eq!(gk_store_db_free(h), GK_ERROR_STALE_HANDLE);
        }
        assert_eq!(
            gk_store_db_valid_paths(1, paths.as_ptr(), 2, std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_store_db_valid_paths(1, paths.as_ptr(), 0, answers.as_mut_ptr()),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            gk_store_db_valid_paths(1, paths.as_ptr(), usize::MAX, answers.as_mut_ptr()),
            GK_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            answers,
            [true, true],
            "untouched until the count is known good"
        );
        assert_eq!(
            gk_store_db_valid_paths(1, std::ptr::null(), 2, answers.as_mut_ptr()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(answers, [false, false]);
        assert_eq!(
            gk_store_db_valid_paths(1, paths.as_ptr(), 2, answers.as_mut_ptr()),
            GK_ERROR_STALE_HANDLE
        );
        // A worker: NULL is the default; a relative database is refused.
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w), GK_OK);
        assert_eq!(gk_worker_set_store_database(w, std::ptr::null()), GK_OK);
        assert_eq!(
            gk_worker_set_store_database(w, c"db.sqlite".as_ptr()),
            GK_ERROR_INVALID_PATH
        );
        assert_eq!(
            gk_worker_set_store_database(0, std::ptr::null()),
            GK_ERROR_STALE_HANDLE
        );
    }
    assert_eq!(gk_worker_free(w), GK_OK);
}

/// `gk_worker_add_goals` keeps the memory of a thread's last batch for the
/// next one (the goals borrow each call's arrays): batches of any size,
/// refused ones (one refused as a whole after its goals were read) and
/// smaller ones after a larger one included, follow each other on one
/// thread (Miri checks the reuse: `make miri`).
#[test]
fn batches_of_any_size_follow_each_other_on_one_thread() {
    const BATCH_GOAL: u64 = 0xffff_ffff_0000_0000;
    unsafe {
        let mut w = 0;
        assert_eq!(gk_worker_new(std::ptr::null(), &mut w), GK_OK);
        let mut added = Vec::new();
        for (n, ok) in [(3u32, true), (1, true), (2, false), (100, true), (1, true)] {
            let kinds = vec![2u32; n as usize];
            let tags: Vec<u64> = (0..n as u64).collect();
            // Goal k depends on goal k - 1 of its batch; a refused batch's
            // last goal names a goal beyond the batch.
            let mut deps: Vec<u64> = (1..n as u64).map(|k| BATCH_GOAL | (k - 1)).collect();
            if !ok {
                deps.push(BATCH_GOAL | 99);
            }
            let mut offsets: Vec<u32> = (0..n).map(|k| k.saturating_sub(1)).collect();
            offsets.push(deps.len() as u32);
            let batch = gk_goal_batch {
                struct_size: std::mem::size_of::<gk_goal_batch>() as u32,
                n_goals: n,
                kinds: kinds.as_ptr(),
                modes: std::ptr::null(),
                tags: tags.as_ptr(),
                output_offsets: std::ptr::null(),
                outputs: std::ptr::null(),
                outputs_packed: std::ptr::null(),
                outputs_packed_len: 0,
                dep_offsets: offsets.as_ptr(),
                deps: deps.as_ptr(),
            };
            let mut ids = vec![7u64; n as usize];
            let mut err = std::mem::zeroed::<gk_batch_error>();
            let s = gk_worker_add_goals(w, &batch, ids.as_mut_ptr(), &mut err);
            if ok {
                assert_eq!(s, GK_OK, "{}", message());
                assert!(ids.iter().all(|&id| id != 0 && !added.contains(&id)));
                added.extend(ids);
            } else {
                assert_eq!(s, GK_ERROR_INVALID_ARGUMENT, "{}", message());
                assert_eq!((err.index, err.field), (n as usize - 1, 5));
                assert!(ids.iter().all(|&id| id == 0), "ids_out is zeroed");
            }
        }
        // A batch refused as a whole after its goals were read (bytes after
        // the last packed output), then the same batch without them.
        let packed = b"/tmp/gk-store/aaaa-out\0/x\0";
        let (kinds, offsets) = ([2u32], [0u32, 1]);
        for (len, want) in [
            (packed.len(), GK_ERROR_INVALID_ARGUMENT),
            (packed.len() - 3, GK_OK),
        ] {
            let batch = gk_goal_batch {
                struct_size: std::mem::size_of::<gk_goal_batch>() as u32,
                n_goals: 1,
                kinds: kinds.as_ptr(),
                modes: std::ptr::null(),
                tags: std::ptr::null(),
                output_offsets: offsets.as_ptr(),
                outputs: std::ptr::null(),
                outputs_packed: packed.as_ptr(),
                outputs_packed_len: len,
                dep_offsets: std::ptr::null(),
                deps: std::ptr::null(),
            };
            let mut id = 7u64;
            let s = gk_worker_add_goals(w, &batch, &mut id, std::ptr::null_mut());
            assert_eq!(s, want, "{}", message());
            if s == GK_OK {
                added.push(id);
            }
        }
        let mut au = std::mem::zeroed::<gk_audit>();
        assert_eq!(gk_worker_audit(w, &mut au), GK_OK);
        assert_eq!(au.goals as usize, added.len());
        assert_eq!(gk_worker_free(w), GK_OK);
    }
}

#[test]
fn layouts_are_as_documented() {
    assert_eq!(std::mem::size_of::<gk_goal_batch>(), 80);
    assert_eq!(std::mem::size_of::<gk_batch_error>(), 24);
    assert_eq!(std::mem::size_of::<gk_report>(), 16);
    assert_eq!(std::mem::size_of::<gk_event>(), 40);
}

#[test]
fn batch_goal_references_never_name_a_goal() {
    let r = goalkeeper::sched::GoalId::from_raw(0xffff_ffff_0000_0003);
    assert_eq!(r.batch_index(), Some(3));
}

fn spawn(argv: &[*const c_char], fds: [i32; 3]) -> (gk_status, i32) {
    let mut pid = 0;
    // SAFETY: `argv` holds `argv.len()` pointers; `pid` is writable.
    let s = unsafe { gk_spawn(argv.as_ptr(), argv.len(), fds[0], fds[1], fds[2], &mut pid) };
    (s, pid)
}

#[test]
fn spawn_arguments_are_errors_before_any_fork() {
    let sh = c"/bin/sh".as_ptr();
    // SAFETY: a NULL argv and a NULL pid_out are refused before use.
    let s = unsafe { gk_spawn(std::ptr::null(), 1, -1, -1, -1, &mut 0) };
    assert_eq!(s, GK_ERROR_NULL_POINTER);
    // SAFETY: as above.
    let s = unsafe { gk_spawn([sh].as_ptr(), 1, -1, -1, -1, std::ptr::null_mut()) };
    assert_eq!(s, GK_ERROR_NULL_POINTER);
    assert_eq!(spawn(&[], [-1; 3]), (GK_ERROR_INVALID_ARGUMENT, -1));
    assert_eq!(
        spawn(&[sh, std::ptr::null()], [-1; 3]),
        (GK_ERROR_NULL_POINTER, -1)
    );
    assert_eq!(
        spawn(&[c"".as_ptr()], [-1; 3]),
        (GK_ERROR_INVALID_ARGUMENT, -1)
    );
}

#[test]
#[cfg_attr(miri, ignore)] // fork and exec
fn a_builder_runs_and_a_missing_program_or_descriptor_is_an_error_here() {
    let sh = c"/bin/sh".as_ptr();
    for fds in [[-2, -1, -1], [-1, i32::MAX, -1], [-1, -1, i32::MIN]] {
        assert_eq!(spawn(&[sh], fds), (GK_ERROR_INVALID_ARGUMENT, -1));
    }
    let argv = [sh, c"-c".as_ptr(), c"exit 7".as_ptr()];
    let (s, pid) = spawn(&argv, [-1; 3]);
    assert_eq!(s, GK_OK);
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(libc::WEXITSTATUS(status), 7);
    let (s, pid) = spawn(&[c"/nonexistent/program".as_ptr()], [-1; 3]);
    assert_eq!((s, pid), (GK_ERROR_IO, -1));
}

/// The handler `signal` has now.
fn current_handler(signal: i32) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is valid; a NULL new action only queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

fn set_handler(signal: i32, handler: libc::sighandler_t) {
    // SAFETY: SIG_DFL and SIG_IGN are valid dispositions.
    unsafe { libc::signal(signal, handler) };
}

/// One test, as the watch is process-wide (the real signals are
/// tests/scheme/supervisor.scm's, sent to host processes).
#[test]
#[cfg_attr(miri, ignore)] // sigaction, eventfd
fn watches_nest_take_default_signals_and_give_them_back() {
    // SAFETY: NULL is refused; the others are valid out-parameters.
    unsafe {
        assert_eq!(
            gk_signal_watch_start(std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
        assert_eq!(
            gk_signal_watch_caught(std::ptr::null_mut()),
            GK_ERROR_NULL_POINTER
        );
    }
    assert_eq!(gk_signal_watch_stop(), GK_ERROR_INVALID_STATE);
    // What the test inherited is not known (a shell's background job
    // ignores SIGINT): set each disposition the test relies on.
    set_handler(libc::SIGINT, libc::SIG_DFL);
    set_handler(libc::SIGTERM, libc::SIG_DFL);
    set_handler(libc::SIGHUP, libc::SIG_IGN);
    let (mut fd, mut fd2, mut caught) = (-1, -1, -1);
    // SAFETY: valid out-parameters.
    unsafe {
        assert_eq!(gk_signal_watch_start(&mut fd), GK_OK);
        assert_eq!(gk_signal_watch_start(&mut fd2), GK_OK);
        assert_eq!(gk_signal_watch_caught(&mut caught), GK_OK);
    }
    assert!(fd >= 0 && fd == fd2, "{fd} {fd2}");
    assert_eq!(caught, 0);
    // The library's handler: the one function the watch installed.
    let handler = current_handler(libc::SIGTERM);
    assert!(handler != libc::SIG_DFL && handler != libc::SIG_IGN);
    assert_eq!(current_handler(libc::SIGINT), handler);
    assert_eq!(
        current_handler(libc::SIGHUP),
        libc::SIG_IGN,
        "ignored: left alone"
    );
    assert_eq!(gk_signal_watch_stop(), GK_OK);
    assert_eq!(current_handler(libc::SIGTERM), handler, "still nested");
    assert_eq!(gk_signal_watch_stop(), GK_OK);
    assert_eq!(current_handler(libc::SIGTERM), libc::SIG_DFL);
    assert_eq!(current_handler(libc::SIGINT), libc::SIG_DFL);
    assert_eq!(current_handler(libc::SIGHUP), libc::SIG_IGN);
    assert_eq!(gk_signal_watch_stop(), GK_ERROR_INVALID_STATE);
    set_handler(libc::SIGHUP, libc::SIG_DFL);
}
