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
//! parent's locks; and ENOSPC on the deletion token (debug builds).
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
//! see `worker_fuzz` below.
//!
//! `GOALKEEPER_FUZZ_CASES` sets the number of lock-set cases (default 2000;
//! `make soak` runs 100,000), `GOALKEEPER_FUZZ_WORKER_CASES` the worker
//! cases (default half as many; `make soak` runs 20,000).
//! `GOALKEEPER_FUZZ_SEED` fixes the seed. Each test prints how many calls it
//! made and which statuses it saw, and fails if the generator stopped
//! reaching one of the statuses it is meant to reach.

mod common;

use common::TempStore;
use goalkeeper::ffi::gk_status::{self, *};
use goalkeeper::ffi::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, CStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PATH_MAX: usize = libc::PATH_MAX as usize;
/// The library's limit on the number of paths in one set.
const MAX_SET_LEN: usize = 1 << 20;
const OFD: u32 = 0;
const FLOCK: u32 = 1;

/// The tests in this binary share the process-wide registry; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set when a failing case left descriptors or threads behind.
static POISONED: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------
// The store: a pool of names with known properties.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// An ordinary, lockable store path.
    Lockable,
    /// `P.lock` is a directory: `open(O_RDWR)` fails with `EISDIR`.
    IsDir,
    /// `P.lock` is a symlink: `O_NOFOLLOW` refuses it.
    Symlink,
    /// The parent directory does not exist.
    NoDir,
    /// The lock file's name is longer than `NAME_MAX`.
    NameTooLong,
}

/// Pool entries: the name under the store and its class.
fn pool() -> Vec<(Vec<u8>, Class)> {
    vec![
        (b"a".to_vec(), Class::Lockable),
        (b"b".to_vec(), Class::Lockable),
        (b"c".to_vec(), Class::Lockable),
        (b"d\xff\xfe-non-utf8".to_vec(), Class::Lockable),
        (b"e".to_vec(), Class::Lockable),
        // 250 + ".lock" = 255 = NAME_MAX: the longest lockable name.
        (vec![b'n'; 250], Class::Lockable),
        (vec![b'n'; 251], Class::NameTooLong),
        (b"isdir".to_vec(), Class::IsDir),
        (b"sym".to_vec(), Class::Symlink),
        (b"nodir/x".to_vec(), Class::NoDir),
    ]
}

/// Indices of the lockable pool entries.
const LOCKABLE: [usize; 6] = [0, 1, 2, 3, 4, 5];

// ---------------------------------------------------------------------------
// Generated operations.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Form {
    Plain,
    DoubleSlash,
    TrailingSlash,
    /// Thousands of slashes: over `PATH_MAX` as given, short once normalised.
    SlashPadded,
}

#[derive(Clone, Debug)]
enum PathSpec {
    Pool(usize, Form),
    Relative,
    DotDot,
    Dot,
    Root,
    Empty,
    /// More than `PATH_MAX` bytes after normalisation.
    TooLong,
    /// `store/a NUL b`: one path truncated (array API) or two items (packed).
    NulInside,
    /// A NULL element (array API only; an empty item in the packed API).
    Null,
}

#[derive(Clone, Copy, Debug)]
enum Ptr {
    Valid,
    Null,
    Misaligned,
}

#[derive(Clone, Copy, Debug)]
enum Len {
    Actual,
    Zero,
    Huge(usize),
    Shorter(usize),
}

#[derive(Clone, Copy, Debug)]
enum Api {
    Try,
    Blocking,
    Timeout(u64),
    Packed(i64),
}

#[derive(Clone, Debug)]
struct Acquire {
    api: Api,
    items: Vec<PathSpec>,
    ptr: Ptr,
    len: Len,
    backend: u32,
    out: Ptr,
}

#[derive(Clone, Copy, Debug)]
enum HandleSpec {
    Live(usize),
    Released(usize),
    Forged(u64),
    /// A live or released handle with its generation and index nudged.
    Near(usize, i8, i8),
    /// A live handle with another kind byte (e.g. a worker's).
    WrongKind(usize, u8),
    Zero,
}

#[derive(Clone, Copy, Debug)]
enum Buf {
    NullZero,
    Small(usize),
    Exact,
    Large(usize),
    HugeCap,
    NullWithCap,
    LenOutNull,
    LenOutMisaligned,
}

#[derive(Clone, Debug)]
enum Op {
    Acquire(Acquire),
    Release(HandleSpec),
    SetDeletion(HandleSpec, bool),
    Check(HandleSpec),
    Paths(HandleSpec, Buf),
    IsLockedByMe(PathSpec, Ptr),
    HeldPaths(Buf),
    HeldCount(Ptr),
    StatusName(i32),
    ForeignLock(usize),
    ForeignUnlock(usize),
    Fork,
    ArmEnospc(bool),
    ArmTruncateEio(bool),
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        8 => Just(Form::Plain),
        1 => Just(Form::DoubleSlash),
        1 => Just(Form::TrailingSlash),
        1 => Just(Form::SlashPadded),
    ]
}

fn path_spec() -> impl Strategy<Value = PathSpec> {
    prop_oneof![
        30 => (0..LOCKABLE.len(), form()).prop_map(|(i, f)| PathSpec::Pool(i, f)),
        4 => (6usize..10, form()).prop_map(|(i, f)| PathSpec::Pool(i, f)),
        1 => Just(PathSpec::Relative),
        1 => Just(PathSpec::DotDot),
        1 => Just(PathSpec::Dot),
        1 => Just(PathSpec::Root),
        1 => Just(PathSpec::Empty),
        1 => Just(PathSpec::TooLong),
        1 => Just(PathSpec::NulInside),
        1 => Just(PathSpec::Null),
    ]
}

fn ptr() -> impl Strategy<Value = Ptr> {
    prop_oneof![30 => Just(Ptr::Valid), 1 => Just(Ptr::Null), 1 => Just(Ptr::Misaligned)]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        30 => Just(Len::Actual),
        1 => Just(Len::Zero),
        1 => prop_oneof![Just(MAX_SET_LEN * PATH_MAX + 1), Just(usize::MAX), Just(MAX_SET_LEN + 1)]
            .prop_map(Len::Huge),
        2 => (0usize..64).prop_map(Len::Shorter),
    ]
}

fn api() -> impl Strategy<Value = Api> {
    prop_oneof![
        12 => Just(Api::Try),
        3 => Just(Api::Blocking),
        3 => prop_oneof![
            3 => Just(0u64),
            2 => 1u64..=2,
            1 => Just(u64::MAX),
            1 => Just(1u64 << 63),
            1 => Just(i64::MAX as u64),
        ]
        .prop_map(Api::Timeout),
        6 => prop_oneof![
            4 => Just(0i64),
            1 => Just(-1i64),
            1 => Just(i64::MIN),
            1 => 1i64..=2,
            1 => Just(i64::MAX),
        ]
        .prop_map(Api::Packed),
    ]
}

fn acquire() -> impl Strategy<Value = Acquire> {
    (
        api(),
        proptest::collection::vec(path_spec(), 1..5),
        ptr(),
        len(),
        prop_oneof![10 => Just(OFD), 5 => Just(FLOCK), 1 => 2u32..=u32::MAX],
        ptr(),
    )
        .prop_map(|(api, items, ptr, len, backend, out)| Acquire {
            api,
            items,
            ptr,
            len,
            backend,
            out,
        })
}

fn handle() -> impl Strategy<Value = HandleSpec> {
    prop_oneof![
        12 => any::<usize>().prop_map(HandleSpec::Live),
        3 => any::<usize>().prop_map(HandleSpec::Released),
        1 => any::<u64>().prop_map(HandleSpec::Forged),
        2 => (any::<usize>(), -2i8..=2, -2i8..=2).prop_map(|(i, g, x)| HandleSpec::Near(i, g, x)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, k)| HandleSpec::WrongKind(i, k)),
        1 => Just(HandleSpec::Zero),
    ]
}

fn buf() -> impl Strategy<Value = Buf> {
    prop_oneof![
        2 => Just(Buf::NullZero),
        2 => (0usize..300).prop_map(Buf::Small),
        6 => Just(Buf::Exact),
        2 => (1usize..32).prop_map(Buf::Large),
        1 => Just(Buf::HugeCap),
        1 => Just(Buf::NullWithCap),
        1 => Just(Buf::LenOutNull),
        1 => Just(Buf::LenOutMisaligned),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => acquire().prop_map(Op::Acquire),
        14 => handle().prop_map(Op::Release),
        5 => (handle(), any::<bool>()).prop_map(|(h, d)| Op::SetDeletion(h, d)),
        3 => handle().prop_map(Op::Check),
        4 => (handle(), buf()).prop_map(|(h, b)| Op::Paths(h, b)),
        3 => (path_spec(), ptr()).prop_map(|(p, o)| Op::IsLockedByMe(p, o)),
        2 => buf().prop_map(Op::HeldPaths),
        1 => ptr().prop_map(Op::HeldCount),
        1 => prop_oneof![-3i32..40, any::<i32>()].prop_map(Op::StatusName),
        5 => (0..LOCKABLE.len()).prop_map(Op::ForeignLock),
        4 => (0..LOCKABLE.len()).prop_map(Op::ForeignUnlock),
        1 => Just(Op::Fork),
        1 => any::<bool>().prop_map(Op::ArmEnospc),
        1 => any::<bool>().prop_map(Op::ArmTruncateEio),
    ]
}

// ---------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------

/// A normalised store path (no `.lock`), as the model computes it.
type NPath = Vec<u8>;

/// The lock file's bytes: the library orders sets by them.
fn lock_key(p: &NPath) -> Vec<u8> {
    let mut k = p.clone();
    k.extend_from_slice(b".lock");
    k
}

/// The model's own normalisation (independent of `StorePath`).
fn normalise(raw: &[u8]) -> Option<NPath> {
    if raw.is_empty() || raw.contains(&0) || raw[0] != b'/' {
        return None;
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if c == b"." || c == b".." {
            return None;
        }
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() || out.len() + ".lock".len() + 1 > PATH_MAX {
        return None;
    }
    Some(out)
}

struct SetModel {
    paths: Vec<NPath>,
    backend: u32,
    delete: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FileState {
    Absent,
    Present,
}

struct Stats {
    calls: u64,
    statuses: BTreeMap<&'static str, u64>,
    forks: u64,
}

struct Model {
    _store: TempStore,
    prefix: Vec<u8>,
    classes: BTreeMap<NPath, Class>,
    lockables: Vec<NPath>,
    live: BTreeMap<u64, SetModel>,
    dead: Vec<u64>,
    held: BTreeMap<NPath, u64>,
    foreign: BTreeMap<NPath, RawFd>,
    /// Abandoned lock waits ("ghosts", after `GK_TIMED_OUT`), by path and
    /// backend: each is a thread blocked in the kernel on its own
    /// descriptor, adopted by the next wait for the same path and backend.
    ghosts: BTreeSet<(NPath, u32)>,
    files: BTreeMap<NPath, FileState>,
    /// The token write fails (ENOSPC): the release marks by ftruncate.
    enospc: bool,
    /// The ftruncate fallback fails too (EIO): the release reports it.
    truncate_eio: bool,
    threads_spawned: bool,
    log: Vec<String>,
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

impl Model {
    fn new() -> Model {
        let store = TempStore::new();
        let prefix = store.dir().as_os_str().as_bytes().to_vec();
        std::fs::create_dir(store.dir().join("isdir.lock")).unwrap();
        std::os::unix::fs::symlink("sym-target", store.dir().join("sym.lock")).unwrap();
        let mut classes = BTreeMap::new();
        let mut lockables = Vec::new();
        let mut files = BTreeMap::new();
        for (name, class) in pool() {
            let mut p = prefix.clone();
            p.push(b'/');
            p.extend_from_slice(&name);
            let p = normalise(&p).expect("pool paths are valid");
            if class == Class::Lockable {
                lockables.push(p.clone());
                files.insert(p.clone(), FileState::Absent);
            }
            classes.insert(p, class);
        }
        Model {
            _store: store,
            prefix,
            classes,
            lockables,
            live: BTreeMap::new(),
            dead: Vec::new(),
            held: BTreeMap::new(),
            foreign: BTreeMap::new(),
            ghosts: BTreeSet::new(),
            files,
            enospc: false,
            truncate_eio: false,
            threads_spawned: false,
            log: Vec::new(),
        }
    }

    /// The raw bytes a path spec produces (before any NUL handling).
    fn raw(&self, spec: &PathSpec) -> Option<Vec<u8>> {
        let pool = pool();
        let mut p = self.prefix.clone();
        Some(match spec {
            PathSpec::Pool(i, f) => {
                match f {
                    Form::Plain => p.push(b'/'),
                    Form::DoubleSlash => p.extend_from_slice(b"//"),
                    Form::TrailingSlash => p.push(b'/'),
                    Form::SlashPadded => p.extend(std::iter::repeat_n(b'/', PATH_MAX + 7)),
                }
                p.extend_from_slice(&pool[*i].0);
                if matches!(f, Form::TrailingSlash) {
                    p.push(b'/');
                }
                p
            }
            PathSpec::Relative => b"relative/a".to_vec(),
            PathSpec::DotDot => {
                p.extend_from_slice(b"/../a");
                p
            }
            PathSpec::Dot => {
                p.extend_from_slice(b"/./a");
                p
            }
            PathSpec::Root => b"/".to_vec(),
            PathSpec::Empty => Vec::new(),
            PathSpec::TooLong => {
                p.push(b'/');
                // Short components, so only the total length is wrong.
                while p.len() < PATH_MAX + 20 {
                    p.extend_from_slice(b"x/");
                }
                p.push(b'z');
                p
            }
            PathSpec::NulInside => {
                p.extend_from_slice(b"/a\0b");
                p
            }
            PathSpec::Null => return None,
        })
    }

    fn class(&self, p: &NPath) -> Class {
        self.classes.get(p).copied().unwrap_or(Class::NoDir)
    }

    fn resolve(&self, h: HandleSpec) -> u64 {
        let live: Vec<u64> = self.live.keys().copied().collect();
        let pick = |v: &[u64], i: usize| if v.is_empty() { 0 } else { v[i % v.len()] };
        match h {
            HandleSpec::Live(i) => pick(&live, i),
            HandleSpec::Released(i) => pick(&self.dead, i),
            HandleSpec::Forged(x) => x,
            HandleSpec::Near(i, dg, dx) => {
                let mut all = live.clone();
                all.extend_from_slice(&self.dead);
                let h = pick(&all, i);
                let gen = ((h >> 32) as u32 & 0xff_ffff) as i64 + dg as i64;
                let idx = (h as u32) as i64 + dx as i64;
                (h & 0xff00_0000_0000_0000)
                    | (((gen as u64) & 0xff_ffff) << 32)
                    | (idx as u64 & 0xffff_ffff)
            }
            HandleSpec::WrongKind(i, k) => {
                let k = if k == 0x4c { 0x57 } else { k };
                (pick(&live, i) & 0x00ff_ffff_ffff_ffff) | ((k as u64) << 56)
            }
            HandleSpec::Zero => 0,
        }
    }

    fn is_held_anywhere(&self, p: &NPath) -> bool {
        self.held.contains_key(p) || self.foreign.contains_key(p)
    }

    /// Ghosts on paths nobody holds any more take the lock, drop it and
    /// end; forget them.
    fn settle_waiters(&mut self) {
        let held: Vec<bool> = self
            .ghosts
            .iter()
            .map(|(p, _)| self.is_held_anywhere(p))
            .collect();
        let mut keep = held.into_iter();
        self.ghosts.retain(|_| keep.next().unwrap());
    }

    fn blocked_waiters(&self) -> usize {
        self.ghosts.len()
    }

    fn has_ghost(&self, p: &NPath) -> bool {
        self.ghosts.iter().any(|(g, _)| g == p)
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // Leave the process clean for the next case, whatever happened.
        for h in std::mem::take(&mut self.live).into_keys() {
            gk_lockset_release(h);
        }
        for (_, fd) in std::mem::take(&mut self.foreign) {
            // SAFETY: a descriptor this test opened.
            unsafe { libc::close(fd) };
        }
        goalkeeper::fault::arm(goalkeeper::fault::Point::TokenWrite, false);
        goalkeeper::fault::arm(goalkeeper::fault::Point::MarkTruncate, false);
        let start = Instant::now();
        while goalkeeper::lock::open_descriptor_count() != 0 || lockwait_threads() != 0 {
            if start.elapsed() > Duration::from_secs(5) {
                // The library leaked: every later case would fail for this
                // case's sake. Say so once, and make later cases fail fast.
                if !POISONED.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "abi_fuzz: the process was left dirty ({} lock descriptors, {} \
                         lock-wait threads) by this case; later failures, and the \
                         \"minimal\" case, may be consequences of it:\n  {}",
                        goalkeeper::lock::open_descriptor_count(),
                        lockwait_threads(),
                        self.log.join("\n  ")
                    );
                }
                return;
            }
            // Bounded wait for lock-wait threads to exit.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
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

// ---------------------------------------------------------------------------
// Kernel probes (independent of the library).
// ---------------------------------------------------------------------------

fn cpath(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.push(0);
    v
}

/// Opens `P.lock` (optionally creating it) on a fresh open file description.
fn open_lock(p: &NPath, create: bool) -> Option<RawFd> {
    let c = cpath(&lock_key(p));
    let flags =
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | if create { libc::O_CREAT } else { 0 };
    // SAFETY: NUL-terminated path; mode passed as the variadic argument.
    let fd = unsafe { libc::open(c.as_ptr().cast(), flags, 0o600 as libc::c_uint) };
    (fd >= 0).then_some(fd)
}

fn ofd_try(fd: RawFd) -> bool {
    // SAFETY: all-zero flock is valid; whole-file write lock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: valid fd and struct.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) == 0 }
}

fn flock_try(fd: RawFd) -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

// ---------------------------------------------------------------------------
// Running a case.
// ---------------------------------------------------------------------------

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

/// How an acquisition may wait, as the library interprets its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Try,
    /// Bounded by a few milliseconds: a foreign path times out.
    Short,
    /// Unbounded (or so long it is): a helper releases the foreign paths.
    Long,
}

fn mode_of(api: Api) -> Mode {
    match api {
        Api::Try => Mode::Try,
        Api::Blocking => Mode::Long,
        Api::Timeout(t) => match t as i64 {
            0 => Mode::Try,
            t if t < 0 => Mode::Long,
            1..=100 => Mode::Short,
            _ => Mode::Long,
        },
        Api::Packed(t) => match t {
            0 => Mode::Try,
            t if t < 0 => Mode::Long,
            1..=100 => Mode::Short,
            _ => Mode::Long,
        },
    }
}

/// The parsed set, or the status argument checking must return.
fn parse_array(m: &Model, a: &Acquire) -> Result<Vec<NPath>, gk_status> {
    let n = match a.len {
        Len::Actual => a.items.len(),
        Len::Zero => 0,
        Len::Huge(h) => h,
        Len::Shorter(k) => k.min(a.items.len()),
    };
    if n == 0 {
        return Err(GK_ERROR_INVALID_ARGUMENT);
    }
    match a.ptr {
        Ptr::Null => return Err(GK_ERROR_NULL_POINTER),
        _ if n > MAX_SET_LEN => return Err(GK_ERROR_INVALID_ARGUMENT),
        Ptr::Misaligned => return Err(GK_ERROR_INVALID_ARGUMENT),
        Ptr::Valid => {}
    }
    let mut v = Vec::new();
    for spec in &a.items[..n] {
        let Some(raw) = m.raw(spec) else {
            return Err(GK_ERROR_NULL_POINTER);
        };
        // C strings end at the first NUL; at most PATH_MAX bytes are read.
        let raw = match raw.iter().position(|&b| b == 0) {
            Some(i) => raw[..i].to_vec(),
            None => raw,
        };
        if raw.len() >= PATH_MAX {
            return Err(GK_ERROR_INVALID_PATH);
        }
        v.push(normalise(&raw).ok_or(GK_ERROR_INVALID_PATH)?);
    }
    Ok(v)
}

/// The packed buffer a spec produces.
fn packed_bytes(m: &Model, a: &Acquire) -> Vec<u8> {
    let mut buf = Vec::new();
    for spec in &a.items {
        // A NULL element has no packed form: it becomes an empty item.
        buf.extend_from_slice(&m.raw(spec).unwrap_or_default());
        buf.push(0);
    }
    buf
}

/// A "huge" packed length must exceed the library's plausibility limit,
/// or the library would (rightly) read that many bytes.
fn packed_huge(h: usize) -> usize {
    h.max(MAX_SET_LEN * PATH_MAX + 1)
}

fn parse_packed(a: &Acquire, buf: &[u8]) -> Result<Vec<NPath>, gk_status> {
    let len = match a.len {
        Len::Actual => buf.len(),
        Len::Zero => 0,
        Len::Huge(h) => packed_huge(h),
        Len::Shorter(k) => k.min(buf.len()),
    };
    if len == 0 {
        return Err(GK_ERROR_INVALID_ARGUMENT);
    }
    match a.ptr {
        Ptr::Null => return Err(GK_ERROR_NULL_POINTER),
        _ if len > MAX_SET_LEN * PATH_MAX => return Err(GK_ERROR_INVALID_ARGUMENT),
        _ => {}
    }
    let bytes = &buf[..len];
    if bytes[len - 1] != 0 {
        return Err(GK_ERROR_INVALID_ARGUMENT);
    }
    bytes[..len - 1]
        .split(|&b| b == 0)
        .map(|item| normalise(item).ok_or(GK_ERROR_INVALID_PATH))
        .collect()
}

fn run_acquire(m: &mut Model, st: &mut Stats, a: &Acquire) -> Result<(), TestCaseError> {
    let mode = mode_of(a.api);
    let packed = matches!(a.api, Api::Packed(_));
    let pbuf = packed_bytes(m, a);
    // Argument checking, in the library's order: out, paths, backend.
    let parsed = match a.out {
        Ptr::Null => Err(GK_ERROR_NULL_POINTER),
        Ptr::Misaligned => Err(GK_ERROR_INVALID_ARGUMENT),
        Ptr::Valid if packed => parse_packed(a, &pbuf),
        Ptr::Valid => parse_array(m, a),
    };
    let mut set = parsed.clone().unwrap_or_default();
    set.sort_by_key(lock_key);
    set.dedup();

    // Prediction.
    let mut helper_fds = Vec::new();
    let mut new_waiter = None;
    let mut created = Vec::new();
    let want = match &parsed {
        Err(s) => *s,
        Ok(_) => {
            if mode == Mode::Long {
                for p in &set {
                    if let Some(fd) = m.foreign.remove(p) {
                        helper_fds.push(fd);
                    }
                }
                if set.iter().any(|p| m.has_ghost(p)) {
                    // An abandoned wait and this call would race for the
                    // lock, and the model could not say who ends up
                    // waiting: release first and let the waiters finish.
                    for fd in helper_fds.drain(..) {
                        // SAFETY: a descriptor this test opened.
                        unsafe { libc::close(fd) };
                    }
                    check_state(m, st)?;
                }
            }
            if a.backend > 1 {
                GK_ERROR_INVALID_ARGUMENT
            } else if set.iter().any(|p| m.held.contains_key(p)) {
                GK_HELD_BY_THIS_PROCESS
            } else {
                let mut want = GK_OK;
                for p in &set {
                    if m.class(p) == Class::Lockable {
                        // Opened with O_CREAT before it is locked.
                        created.push(p.clone());
                    }
                    let s = match m.class(p) {
                        Class::IsDir | Class::NoDir => GK_ERROR_IO,
                        Class::Symlink => GK_ERROR_SYMLINK,
                        Class::NameTooLong => GK_ERROR_NAME_TOO_LONG,
                        Class::Lockable if m.foreign.contains_key(p) => match mode {
                            Mode::Try => GK_BUSY,
                            Mode::Short => {
                                new_waiter = Some(p.clone());
                                GK_TIMED_OUT
                            }
                            Mode::Long => unreachable!("handed to the helper"),
                        },
                        Class::Lockable => GK_OK,
                    };
                    if s != GK_OK {
                        want = s;
                        break;
                    }
                }
                want
            }
        }
    };
    if mode != Mode::Try {
        m.threads_spawned = true;
    }

    // The call.
    let cstrs: Vec<Option<Vec<u8>>> = a
        .items
        .iter()
        .map(|s| m.raw(s).map(|r| cpath(&r)))
        .collect();
    let ptrs: Vec<*const c_char> = cstrs
        .iter()
        .map(|c| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()))
        .collect();
    let mut misaligned_ptrs = vec![0u8; ptrs.len() * 8 + 8];
    // SAFETY: the byte buffer has room for the pointers at offset 1.
    unsafe {
        std::ptr::copy_nonoverlapping(
            ptrs.as_ptr().cast::<u8>(),
            misaligned_ptrs.as_mut_ptr().add(1),
            ptrs.len() * 8,
        )
    };
    let mut out_store = [0x5au8; 24];
    let aligned = (out_store.as_mut_ptr() as usize + 7) & !7;
    let out_ptr: *mut u64 = match a.out {
        Ptr::Valid => aligned as *mut u64,
        Ptr::Null => std::ptr::null_mut(),
        Ptr::Misaligned => (aligned + 1) as *mut u64,
    };
    let helper = (!helper_fds.is_empty()).then(|| {
        std::thread::spawn(move || {
            for fd in helper_fds {
                // SAFETY: descriptors this test opened; closing drops both locks.
                unsafe { libc::close(fd) };
            }
        })
    });
    let got = if packed {
        let l = match a.len {
            Len::Actual => pbuf.len(),
            Len::Zero => 0,
            Len::Huge(h) => packed_huge(h),
            Len::Shorter(k) => k.min(pbuf.len()),
        };
        let b = match a.ptr {
            Ptr::Null => std::ptr::null(),
            _ => pbuf.as_ptr(),
        };
        let Api::Packed(t) = a.api else {
            unreachable!()
        };
        // SAFETY: `b` is NULL or valid for `l` bytes unless `l` is huge,
        // which the library refuses before reading; `out_ptr` as generated.
        unsafe { gk_lockset_acquire_packed(b, l, a.backend, t, out_ptr) }
    } else {
        let n = match a.len {
            Len::Actual => ptrs.len(),
            Len::Zero => 0,
            Len::Huge(h) => h,
            Len::Shorter(k) => k.min(ptrs.len()),
        };
        let p: *const *const c_char = match a.ptr {
            Ptr::Valid => ptrs.as_ptr(),
            Ptr::Null => std::ptr::null(),
            Ptr::Misaligned => misaligned_ptrs.as_ptr().wrapping_add(1).cast(),
        };
        // SAFETY: as generated: the pointer array is valid for `n` entries
        // unless `n` is huge or the pointer is NULL/misaligned, which the
        // library refuses before reading.
        unsafe {
            match a.api {
                Api::Try => gk_lockset_try_acquire(p, n, a.backend, out_ptr),
                Api::Blocking => gk_lockset_acquire(p, n, a.backend, out_ptr),
                Api::Timeout(t) => gk_lockset_acquire_timeout(p, n, a.backend, t, out_ptr),
                Api::Packed(_) => unreachable!(),
            }
        }
    };
    if let Some(h) = helper {
        h.join().expect("helper thread");
    }
    expect(st, &format!("acquire {a:?}"), got, want)?;
    // SAFETY: reading back what the library wrote (or our fill pattern).
    let out_val = if matches!(a.out, Ptr::Valid) {
        unsafe { *out_ptr }
    } else {
        0
    };
    if matches!(a.out, Ptr::Misaligned) {
        ensure!(
            out_store.iter().all(|&b| b == 0x5a),
            "a misaligned out pointer was written through"
        );
    }
    for p in created {
        m.files.insert(p, FileState::Present);
    }
    if let Some(p) = new_waiter {
        m.ghosts.insert((p, a.backend));
    }
    if want == GK_OK {
        ensure!(out_val != 0, "GK_OK with a zero handle");
        ensure!(
            !m.live.contains_key(&out_val) && !m.dead.contains(&out_val),
            "handle {out_val:#x} issued twice"
        );
        for p in &set {
            m.held.insert(p.clone(), out_val);
            m.files.insert(p.clone(), FileState::Present);
        }
        m.live.insert(
            out_val,
            SetModel {
                paths: set,
                backend: a.backend,
                delete: false,
            },
        );
    } else if matches!(a.out, Ptr::Valid) {
        ensure!(out_val == 0, "{}: *out is {out_val:#x}, not 0", want.name());
    }
    Ok(())
}

/// An output buffer for the list functions, with canaries around it.
struct ListBuf {
    bytes: Vec<u8>,
    len_store: [u8; 24],
}

const CANARY: u8 = 0xa5;

fn call_list(
    spec: Buf,
    needed: usize,
    f: impl FnOnce(*mut c_char, usize, *mut usize) -> gk_status,
) -> (gk_status, ListBuf, usize, usize) {
    let size = match spec {
        Buf::Small(k) => k.min(needed.saturating_sub(1)),
        Buf::Exact => needed,
        Buf::Large(k) => needed + k,
        Buf::HugeCap => needed,
        _ => 0,
    };
    let mut lb = ListBuf {
        bytes: vec![CANARY; size + 16],
        len_store: [CANARY; 24],
    };
    let cap = match spec {
        Buf::NullZero | Buf::LenOutNull | Buf::LenOutMisaligned => 0,
        Buf::Small(_) | Buf::Exact => size,
        Buf::Large(k) => needed + k,
        Buf::HugeCap => usize::MAX,
        Buf::NullWithCap => needed.max(1),
    };
    let buf: *mut c_char = match spec {
        Buf::NullZero | Buf::NullWithCap => std::ptr::null_mut(),
        _ => lb.bytes.as_mut_ptr().cast(),
    };
    let base = lb.len_store.as_mut_ptr() as usize;
    let aligned = (base + 7) & !7;
    let len_out: *mut usize = match spec {
        Buf::LenOutNull => std::ptr::null_mut(),
        Buf::LenOutMisaligned => (aligned + 1) as *mut usize,
        _ => aligned as *mut usize,
    };
    let s = f(buf, cap, len_out);
    let len_val = if matches!(spec, Buf::LenOutNull | Buf::LenOutMisaligned) {
        usize::MAX
    } else {
        // SAFETY: aligned, inside len_store.
        unsafe { *(aligned as *const usize) }
    };
    (s, lb, cap, len_val)
}

/// Checks a list call against the expected items.
fn check_list(
    st: &mut Stats,
    what: &str,
    spec: Buf,
    items: &[Vec<u8>],
    pre_status: Option<gk_status>,
    f: impl FnOnce(*mut c_char, usize, *mut usize) -> gk_status,
) -> Result<(), TestCaseError> {
    let needed: usize = items.iter().map(|i| i.len() + 1).sum();
    let (got, lb, cap, len_val) = call_list(spec, needed, f);
    let want = if let Some(s) = pre_status {
        s
    } else {
        match spec {
            Buf::LenOutNull => GK_ERROR_NULL_POINTER,
            Buf::LenOutMisaligned => GK_ERROR_INVALID_ARGUMENT,
            _ if needed > cap => GK_ERROR_BUFFER_TOO_SMALL,
            _ if needed == 0 => GK_OK,
            Buf::NullZero | Buf::NullWithCap => GK_ERROR_NULL_POINTER,
            _ => GK_OK,
        }
    };
    expect(st, &format!("{what} {spec:?}"), got, want)?;
    let len_written =
        !matches!(spec, Buf::LenOutNull | Buf::LenOutMisaligned) && pre_status.is_none();
    if len_written {
        ensure!(
            len_val == needed,
            "{what}: *len_out {len_val}, expected {needed}"
        );
    } else if !matches!(spec, Buf::LenOutNull) {
        ensure!(
            lb.len_store.iter().all(|&b| b == CANARY),
            "{what}: len_out written on {}",
            got.name()
        );
    }
    if got == GK_OK && needed > 0 {
        let mut expect_bytes = Vec::new();
        for i in items {
            expect_bytes.extend_from_slice(i);
            expect_bytes.push(0);
        }
        ensure!(
            lb.bytes[..needed] == expect_bytes[..],
            "{what}: wrote {:?}, expected {:?}",
            String::from_utf8_lossy(&lb.bytes[..needed]),
            String::from_utf8_lossy(&expect_bytes)
        );
        ensure!(
            lb.bytes[needed..].iter().all(|&b| b == CANARY),
            "{what}: wrote past the {needed} bytes it needed"
        );
    } else {
        ensure!(
            lb.bytes.iter().all(|&b| b == CANARY),
            "{what}: buffer written on {}",
            got.name()
        );
    }
    Ok(())
}

fn run_op(m: &mut Model, st: &mut Stats, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Acquire(a) => run_acquire(m, st, a)?,
        Op::Release(h) => {
            let h = m.resolve(*h);
            let got = gk_lockset_release(h);
            match m.live.remove(&h) {
                None => expect(st, &format!("release {h:#x}"), got, GK_ERROR_STALE_HANDLE)?,
                Some(set) => {
                    // Unlink first, then mark: the file is gone whether or
                    // not the mark (token, then ftruncate) succeeded.
                    let fails = set.delete && m.enospc && m.truncate_eio && cfg!(debug_assertions);
                    let want = if fails { GK_ERROR_IO } else { GK_OK };
                    expect(st, &format!("release {h:#x}"), got, want)?;
                    for p in &set.paths {
                        m.held.remove(p);
                        let fs = if set.delete {
                            FileState::Absent
                        } else {
                            FileState::Present
                        };
                        m.files.insert(p.clone(), fs);
                    }
                    m.dead.push(h);
                }
            }
        }
        Op::SetDeletion(h, d) => {
            let h = m.resolve(*h);
            let got = gk_lockset_set_deletion(h, *d);
            match m.live.get_mut(&h) {
                None => expect(st, "set_deletion", got, GK_ERROR_STALE_HANDLE)?,
                Some(s) => {
                    expect(st, "set_deletion", got, GK_OK)?;
                    s.delete = *d;
                }
            }
        }
        Op::Check(h) => {
            let h = m.resolve(*h);
            let want = if m.live.contains_key(&h) {
                GK_OK
            } else {
                GK_ERROR_STALE_HANDLE
            };
            expect(st, "check", gk_lockset_check(h), want)?;
        }
        Op::Paths(h, b) => {
            let h = m.resolve(*h);
            let (items, pre) = match m.live.get(&h) {
                None => (Vec::new(), Some(GK_ERROR_STALE_HANDLE)),
                Some(s) => (s.paths.clone(), None),
            };
            // SAFETY: buffers as generated by call_list.
            check_list(
                st,
                "gk_lockset_paths",
                *b,
                &items,
                pre,
                |buf, cap, lo| unsafe { gk_lockset_paths(h, buf, cap, lo) },
            )?;
        }
        Op::IsLockedByMe(p, o) => {
            let raw = m.raw(p).map(|r| cpath(&r));
            let mut out = 7u8;
            let outp: *mut bool = match o {
                Ptr::Valid => (&mut out as *mut u8).cast(),
                Ptr::Null => std::ptr::null_mut(),
                // bool has alignment 1: a "misaligned" bool is just valid.
                Ptr::Misaligned => (&mut out as *mut u8).cast(),
            };
            let pp = raw
                .as_ref()
                .map_or(std::ptr::null(), |r| r.as_ptr().cast::<c_char>());
            // SAFETY: NUL-terminated path or NULL; out valid or NULL.
            let got = unsafe { gk_path_is_locked_by_me(pp, outp) };
            let (want, val) = if matches!(o, Ptr::Null) {
                (GK_ERROR_NULL_POINTER, None)
            } else {
                match &raw {
                    None => (GK_ERROR_NULL_POINTER, None),
                    Some(r) => {
                        let r = &r[..r.iter().position(|&b| b == 0).unwrap()];
                        match normalise(r).filter(|_| r.len() < PATH_MAX) {
                            None => (GK_ERROR_INVALID_PATH, None),
                            Some(n) => (GK_OK, Some(m.held.contains_key(&n))),
                        }
                    }
                }
            };
            expect(st, &format!("is_locked_by_me {p:?}"), got, want)?;
            if let Some(v) = val {
                ensure!(out == v as u8, "is_locked_by_me {p:?}: {out}, model {v}");
            }
        }
        Op::HeldPaths(b) => {
            let items: Vec<Vec<u8>> = sorted_held(m);
            // SAFETY: buffers as generated by call_list.
            check_list(
                st,
                "gk_held_paths",
                *b,
                &items,
                None,
                |buf, cap, lo| unsafe { gk_held_paths(buf, cap, lo) },
            )?;
        }
        Op::HeldCount(o) => {
            let mut store = [0usize; 2];
            let p: *mut usize = match o {
                Ptr::Valid => store.as_mut_ptr(),
                Ptr::Null => std::ptr::null_mut(),
                Ptr::Misaligned => (store.as_mut_ptr() as usize + 1) as *mut usize,
            };
            // SAFETY: valid, NULL or misaligned (refused before writing).
            let got = unsafe { gk_held_count(p) };
            let want = match o {
                Ptr::Valid => GK_OK,
                Ptr::Null => GK_ERROR_NULL_POINTER,
                Ptr::Misaligned => GK_ERROR_INVALID_ARGUMENT,
            };
            expect(st, "held_count", got, want)?;
            if want == GK_OK {
                ensure!(store[0] == m.held.len(), "held_count {}", store[0]);
            } else {
                ensure!(store == [0, 0], "held_count wrote on {}", got.name());
            }
        }
        Op::StatusName(v) => {
            // SAFETY: static strings.
            let name = unsafe { CStr::from_ptr(gk_status_name(*v)) }.to_bytes();
            let want = gk_status::from_raw(*v as i64).map_or("GK_UNKNOWN_STATUS", |s| s.name());
            ensure!(name == want.as_bytes(), "status name of {v}");
            st.calls += 1;
        }
        Op::ForeignLock(i) => {
            let p = m.lockables[*i].clone();
            if let Some(&h) = m.held.get(&p) {
                // Another open file description must not get our lock.
                let backend = m.live[&h].backend;
                let fd = open_lock(&p, false).ok_or_else(|| fail("held lock file missing"))?;
                let got = if backend == OFD {
                    ofd_try(fd)
                } else {
                    flock_try(fd)
                };
                // SAFETY: our descriptor.
                unsafe { libc::close(fd) };
                ensure!(!got, "a second holder got the lock on {:?}", lossy(&p));
            } else if !m.foreign.contains_key(&p) && !m.has_ghost(&p) {
                let fd = open_lock(&p, true).ok_or_else(|| fail("open for foreign lock"))?;
                ensure!(
                    ofd_try(fd) && flock_try(fd),
                    "foreign lock on free path {:?} refused",
                    lossy(&p)
                );
                m.foreign.insert(p.clone(), fd);
                m.files.insert(p, FileState::Present);
            }
        }
        Op::ForeignUnlock(i) => {
            let p = m.lockables[*i].clone();
            if let Some(fd) = m.foreign.remove(&p) {
                // SAFETY: our descriptor.
                unsafe { libc::close(fd) };
            }
        }
        Op::Fork => run_fork(m, st)?,
        Op::ArmEnospc(on) => {
            goalkeeper::fault::arm(goalkeeper::fault::Point::TokenWrite, *on);
            m.enospc = *on;
        }
        Op::ArmTruncateEio(on) => {
            goalkeeper::fault::arm(goalkeeper::fault::Point::MarkTruncate, *on);
            m.truncate_eio = *on;
        }
    }
    Ok(())
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn sorted_held(m: &Model) -> Vec<Vec<u8>> {
    let mut v: Vec<NPath> = m.held.keys().cloned().collect();
    v.sort_by_key(lock_key);
    v
}

/// A fork child must not believe it holds its parent's locks, must get
/// `GK_ERROR_WRONG_PROCESS` for the parent's handles, and must see the
/// parent's locks as another process's.
fn run_fork(m: &mut Model, st: &mut Stats) -> Result<(), TestCaseError> {
    st.forks += 1;
    let handles: Vec<(u64, u32, NPath)> = m
        .live
        .iter()
        .map(|(h, s)| (*h, s.backend, s.paths[0].clone()))
        .collect();
    let mut fds = [0; 2];
    // SAFETY: plain syscall with a valid array.
    ensure!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe"
    );
    // SAFETY: the child only calls the library and async-signal-safe libc
    // functions, then _exit()s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code: u8 = (|| {
            let mut n = 0usize;
            // SAFETY: valid out pointer.
            if unsafe { gk_held_count(&mut n) } != GK_OK || n != 0 {
                return 1;
            }
            for (h, backend, p) in &handles {
                if gk_lockset_check(*h) != GK_ERROR_WRONG_PROCESS {
                    return 2;
                }
                let c = cpath(p);
                let ptrs = [c.as_ptr().cast::<c_char>()];
                let mut out = 0u64;
                // SAFETY: one valid path, valid out.
                let s = unsafe { gk_lockset_try_acquire(ptrs.as_ptr(), 1, *backend, &mut out) };
                if s != GK_BUSY {
                    return 3;
                }
                if gk_lockset_release(*h) != GK_ERROR_WRONG_PROCESS {
                    return 4;
                }
                if gk_lockset_release(*h) != GK_ERROR_STALE_HANDLE {
                    return 5;
                }
            }
            0
        })();
        // SAFETY: writing one byte to our pipe, then leaving without
        // running the parent's destructors or test harness.
        unsafe {
            libc::write(fds[1], [code].as_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut pfd = libc::pollfd {
        fd: fds[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    let mut code = [255u8];
    if ready == 1 {
        // SAFETY: reading one byte into a valid buffer.
        unsafe { libc::read(fds[0], code.as_mut_ptr().cast(), 1) };
    } else {
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    ensure!(
        code[0] == 0,
        "fork child failed check {} (255: hung)",
        code[0]
    );
    Ok(())
}

/// The checks after every step.
fn check_state(m: &mut Model, st: &mut Stats) -> Result<(), TestCaseError> {
    // The registry, through the C ABI.
    let items = sorted_held(m);
    check_list(
        st,
        "held paths after step",
        Buf::Exact,
        &items,
        None,
        |b, c, l| {
            // SAFETY: buffers from call_list.
            unsafe { gk_held_paths(b, c, l) }
        },
    )?;
    for h in m.live.keys() {
        expect(st, "check live set", gk_lockset_check(*h), GK_OK)?;
    }
    // Wait for abandoned lock waits on freed paths to finish, so the kernel
    // view is stable, then compare descriptor and thread counts. A wait
    // abandoned before its thread opened the lock file ends at once; one
    // abandoned later stays blocked as a ghost. So each (path, backend)
    // that timed out has at most one ghost, with one descriptor.
    m.settle_waiters();
    let ghosts = m.blocked_waiters();
    let (min_fds, max_fds) = (m.held.len(), m.held.len() + ghosts);
    let start = Instant::now();
    loop {
        let fds = goalkeeper::lock::open_descriptor_count();
        let threads = if m.threads_spawned {
            lockwait_threads()
        } else {
            0
        };
        if (min_fds..=max_fds).contains(&fds) && threads <= ghosts {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "after 15 s: {fds} lock descriptors and {threads} lock-wait threads; \
             the model expects {min_fds}..={max_fds} and at most {ghosts}"
        );
        // Bounded wait for helper threads to exit; not a synchronisation sleep.
        std::thread::sleep(Duration::from_micros(200));
    }
    let want_threads = ghosts;
    if want_threads == 0 {
        m.threads_spawned = false;
    }
    // The kernel's view, on fresh open file descriptions.
    for p in m.lockables.clone() {
        let fd = open_lock(&p, false);
        let state = m.files[&p];
        match (state, fd) {
            (FileState::Absent, Some(_)) => {
                return Err(fail(format!("{}.lock exists; model: deleted", lossy(&p))))
            }
            (FileState::Present, None) => {
                return Err(fail(format!("{}.lock missing; model: present", lossy(&p))))
            }
            _ => {}
        }
        let Some(fd) = fd else { continue };
        let result = if let Some(h) = m.held.get(&p) {
            let backend = m.live[h].backend;
            let free = if backend == OFD {
                ofd_try(fd)
            } else {
                flock_try(fd)
            };
            if free {
                Err(format!(
                    "{} is free in the kernel; model: held by {h:#x}",
                    lossy(&p)
                ))
            } else {
                Ok(())
            }
        } else if m.foreign.contains_key(&p) || m.has_ghost(&p) {
            Ok(())
        } else if !(ofd_try(fd) && flock_try(fd)) {
            Err(format!(
                "{} is locked in the kernel; model: free",
                lossy(&p)
            ))
        } else {
            Ok(())
        };
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        result.map_err(fail)?;
    }
    Ok(())
}

fn run_case(ops: &[Op], st: &mut Stats) -> Result<(), TestCaseError> {
    if POISONED.load(Ordering::SeqCst) {
        return Err(fail(
            "an earlier failing case left the process dirty (see above)",
        ));
    }
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        m.log.push(format!("{op:?}"));
        run_op(&mut m, st, op)
            .and_then(|()| check_state(&mut m, st))
            .map_err(|e| fail(format!("step {i} ({op:?}): {e}")))?;
    }
    // Release everything explicitly, checking each status.
    for h in m.live.keys().copied().collect::<Vec<_>>() {
        run_op(&mut m, st, &Op::ArmEnospc(false))?;
        run_op(&mut m, st, &Op::ArmTruncateEio(false))?;
        let s = gk_lockset_release(h);
        expect(st, "final release", s, GK_OK)?;
        let set = m.live.remove(&h).unwrap();
        for p in &set.paths {
            m.held.remove(p);
            if set.delete {
                m.files.insert(p.clone(), FileState::Absent);
            }
        }
    }
    for (_, fd) in std::mem::take(&mut m.foreign) {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
    check_state(&mut m, st)?;
    let mut n = usize::MAX;
    // SAFETY: valid out pointer.
    expect(st, "final count", unsafe { gk_held_count(&mut n) }, GK_OK)?;
    ensure!(n == 0, "{n} paths still held after the case");
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
    let strategy = proptest::collection::vec(op(), 1..40);
    let result = runner(cases).run(&strategy, |ops| run_case(&ops, &mut stats.borrow_mut()));
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

// ---------------------------------------------------------------------------
// The worker half of the C ABI.
// ---------------------------------------------------------------------------

/// Random call sequences over the `gk_worker_*` functions, with one to
/// three workers sharing one store: misuse statuses are predicted exactly
/// (NULL and misaligned pointers, bad enum values, bad paths, stale, freed,
/// forged and lock-set handles, goal ids of another worker or out of range,
/// reports of goals that are not running, outcomes that cannot be
/// reported, predicates that return garbage or call back into their own
/// worker); valid calls are checked against the invariants after every
/// step: the process holds exactly the outputs of the running goals (G1,
/// G2), the audit's counts match the goals the model knows, no finished
/// goal holds a lock, slots stay within `max_jobs`, every goal finishes at
/// most once, and the ledger never reports a violation.
mod worker_fuzz {
    use super::*;
    use std::cell::Cell;
    use std::ffi::c_void;

    const POOL: usize = 6;

    #[derive(Clone, Copy, Debug)]
    pub(super) enum WSpec {
        Live(usize),
        Freed(usize),
        Forged(u64),
        LockSetKind(usize),
        Zero,
    }

    #[derive(Clone, Copy, Debug)]
    pub(super) enum GSpec {
        Own(usize),
        OtherWorker(usize),
        OutOfRange(usize),
        Forged(u64),
        Zero,
    }

    #[derive(Clone, Copy, Debug)]
    pub(super) enum Pred {
        Default,
        AlwaysValid,
        Garbage,
        Error,
        Reentrant,
    }

    #[derive(Clone, Debug)]
    pub(super) enum WOp {
        New {
            opts: Option<(u32, bool, u32)>,
            opts_ptr: Ptr,
            out: Ptr,
        },
        Free(WSpec),
        AddGoal {
            w: WSpec,
            kind: u32,
            outputs: Vec<usize>,
            bad: Option<PathSpec>,
            packed: bool,
            mode: u32,
            out: Ptr,
        },
        AddDep(WSpec, GSpec, GSpec),
        Next(WSpec, Ptr),
        Report {
            w: WSpec,
            goal: GSpec,
            outcome: u32,
            write: bool,
        },
        Cancel(WSpec, GSpec),
        Result(WSpec, GSpec, Ptr),
        Outputs(WSpec, GSpec, Buf),
        Audit(WSpec, Ptr),
        Fd(WSpec, Ptr),
        TakeLog(WSpec, Buf),
        SetValid(WSpec, Pred),
    }

    fn wspec() -> impl Strategy<Value = WSpec> {
        prop_oneof![
            20 => any::<usize>().prop_map(WSpec::Live),
            2 => any::<usize>().prop_map(WSpec::Freed),
            1 => any::<u64>().prop_map(WSpec::Forged),
            1 => any::<usize>().prop_map(WSpec::LockSetKind),
            1 => Just(WSpec::Zero),
        ]
    }

    fn gspec() -> impl Strategy<Value = GSpec> {
        prop_oneof![
            20 => any::<usize>().prop_map(GSpec::Own),
            2 => any::<usize>().prop_map(GSpec::OtherWorker),
            1 => any::<usize>().prop_map(GSpec::OutOfRange),
            1 => any::<u64>().prop_map(GSpec::Forged),
            1 => Just(GSpec::Zero),
        ]
    }

    fn ptr_mostly_valid() -> impl Strategy<Value = Ptr> {
        prop_oneof![40 => Just(Ptr::Valid), 1 => Just(Ptr::Null), 1 => Just(Ptr::Misaligned)]
    }

    pub(super) fn wop() -> impl Strategy<Value = WOp> {
        prop_oneof![
            3 => (
                proptest::option::weighted(0.8, (0u32..4, any::<bool>(), prop_oneof![9 => 0u32..2, 1 => 2u32..9])),
                ptr_mostly_valid(),
                ptr_mostly_valid()
            )
                .prop_map(|(opts, opts_ptr, out)| WOp::New { opts, opts_ptr, out }),
            1 => wspec().prop_map(WOp::Free),
            16 => (
                wspec(),
                prop_oneof![10 => 0u32..3, 1 => 3u32..=u32::MAX],
                proptest::collection::vec(0..POOL, 0..3),
                proptest::option::weighted(0.05, path_spec()),
                any::<bool>(),
                prop_oneof![10 => 0u32..3, 1 => 3u32..9],
                ptr_mostly_valid()
            )
                .prop_map(|(w, kind, outputs, bad, packed, mode, out)| WOp::AddGoal {
                    w,
                    kind,
                    outputs,
                    bad,
                    packed,
                    mode,
                    out
                }),
            6 => (wspec(), gspec(), gspec()).prop_map(|(w, g, d)| WOp::AddDep(w, g, d)),
            20 => (wspec(), ptr_mostly_valid()).prop_map(|(w, o)| WOp::Next(w, o)),
            12 => (wspec(), gspec(), prop_oneof![10 => Just(1u32), 6 => Just(4u32), 2 => Just(5u32), 1 => Just(2u32), 2 => 0u32..12], prop_oneof![3 => Just(true), 1 => Just(false)])
                .prop_map(|(w, goal, outcome, write)| WOp::Report { w, goal, outcome, write }),
            3 => (wspec(), gspec()).prop_map(|(w, g)| WOp::Cancel(w, g)),
            3 => (wspec(), gspec(), ptr_mostly_valid()).prop_map(|(w, g, o)| WOp::Result(w, g, o)),
            2 => (wspec(), gspec(), buf()).prop_map(|(w, g, b)| WOp::Outputs(w, g, b)),
            2 => (wspec(), ptr_mostly_valid()).prop_map(|(w, o)| WOp::Audit(w, o)),
            1 => (wspec(), ptr_mostly_valid()).prop_map(|(w, o)| WOp::Fd(w, o)),
            1 => (wspec(), buf()).prop_map(|(w, b)| WOp::TakeLog(w, b)),
            2 => (wspec(), prop_oneof![
                3 => Just(Pred::Default),
                1 => Just(Pred::AlwaysValid),
                1 => Just(Pred::Garbage),
                1 => Just(Pred::Error),
                2 => Just(Pred::Reentrant)
            ])
                .prop_map(|(w, p)| WOp::SetValid(w, p)),
        ]
    }

    struct MGoal {
        id: u64,
        kind: u32,
        outputs: Vec<NPath>,
        running: bool,
        done: Option<u32>,
    }

    struct MWorker {
        h: u64,
        max_jobs: u32,
        goals: Vec<MGoal>,
        edges: Vec<(usize, usize)>,
    }

    struct WModel {
        _store: TempStore,
        pool: Vec<NPath>,
        live: Vec<MWorker>,
        freed: Vec<MWorker>,
        /// A goal id of no worker of this process (when there is no other).
        old_goal: u64,
    }

    thread_local! {
        /// What a reentrant predicate's call into its own worker returned.
        static REENTRANT: Cell<Option<gk_status>> = const { Cell::new(None) };
    }

    unsafe extern "C" fn pred_valid(_: *mut c_void, _: *const c_char) -> i32 {
        1
    }
    unsafe extern "C" fn pred_garbage(_: *mut c_void, _: *const c_char) -> i32 {
        7
    }
    unsafe extern "C" fn pred_error(_: *mut c_void, _: *const c_char) -> i32 {
        -3
    }
    unsafe extern "C" fn pred_reentrant(data: *mut c_void, path: *const c_char) -> i32 {
        // `data` carries the worker's own handle.
        let w = data as usize as u64;
        let mut a = std::mem::MaybeUninit::<gk_audit>::uninit();
        // SAFETY: a valid out pointer.
        let s = unsafe { gk_worker_audit(w, a.as_mut_ptr()) };
        REENTRANT.with(|r| r.set(Some(s)));
        // Then answer as the default would.
        // SAFETY: the library passes a NUL-terminated path.
        let p = unsafe { CStr::from_ptr(path) };
        std::path::Path::new(std::ffi::OsStr::from_bytes(p.to_bytes())).exists() as i32
    }

    impl WModel {
        fn worker(&self, w: WSpec) -> (u64, Option<usize>) {
            let pick = |n: usize, i: usize| if n == 0 { None } else { Some(i % n) };
            match w {
                WSpec::Live(i) => match pick(self.live.len(), i) {
                    Some(k) => (self.live[k].h, Some(k)),
                    None => (0, None),
                },
                WSpec::Freed(i) => (
                    pick(self.freed.len(), i).map_or(0, |k| self.freed[k].h),
                    None,
                ),
                WSpec::Forged(x) => (x, self.live.iter().position(|m| m.h == x)),
                WSpec::LockSetKind(i) => {
                    let h = pick(self.live.len(), i).map_or(0, |k| self.live[k].h);
                    ((h & 0x00ff_ffff_ffff_ffff) | 0x4c << 56, None)
                }
                WSpec::Zero => (0, None),
            }
        }

        /// The raw goal id, and its index if it is a goal of worker `k`.
        fn goal(&self, k: Option<usize>, g: GSpec) -> (u64, Option<usize>) {
            let own = |k: usize, i: usize| {
                let gs = &self.live[k].goals;
                (!gs.is_empty()).then(|| i % gs.len())
            };
            match (k, g) {
                (Some(k), GSpec::Own(i)) => match own(k, i) {
                    Some(j) => (self.live[k].goals[j].id, Some(j)),
                    None => (0, None),
                },
                (_, GSpec::OtherWorker(i)) => {
                    let others: Vec<u64> = self
                        .live
                        .iter()
                        .chain(self.freed.iter())
                        .enumerate()
                        .filter(|(n, _)| Some(*n) != k)
                        .flat_map(|(_, m)| m.goals.iter().map(|g| g.id))
                        .collect();
                    if others.is_empty() {
                        (self.old_goal, None)
                    } else {
                        (others[i % others.len()], None)
                    }
                }
                (Some(k), GSpec::OutOfRange(i)) => {
                    let base = self.live[k].goals.first().map_or(0, |g| g.id);
                    (
                        (base & !0xffff_ffff) | (self.live[k].goals.len() + i % 1000) as u64,
                        None,
                    )
                }
                (Some(k), GSpec::Forged(x)) => {
                    (x, self.live[k].goals.iter().position(|g| g.id == x))
                }
                (None, GSpec::Forged(x)) => (x, None),
                _ => (0, None),
            }
        }

        fn running_outputs(&self) -> Vec<NPath> {
            let mut v: Vec<NPath> = self
                .live
                .iter()
                .flat_map(|m| m.goals.iter())
                .filter(|g| g.running && g.kind != 2)
                .flat_map(|g| g.outputs.iter().cloned())
                .collect();
            v.sort_by_key(lock_key);
            v
        }
    }

    impl Drop for WModel {
        fn drop(&mut self) {
            for m in self.live.drain(..) {
                gk_worker_free(m.h);
            }
        }
    }

    fn out_ptr<T>(store: &mut [u64; 8], p: Ptr) -> *mut T {
        let base = store.as_mut_ptr() as usize;
        match p {
            Ptr::Valid => base as *mut T,
            Ptr::Null => std::ptr::null_mut(),
            Ptr::Misaligned => (base + 1) as *mut T,
        }
    }

    /// NULL/misaligned out pointers are checked first, with these statuses.
    fn out_status(p: Ptr) -> Option<gk_status> {
        match p {
            Ptr::Valid => None,
            Ptr::Null => Some(GK_ERROR_NULL_POINTER),
            Ptr::Misaligned => Some(GK_ERROR_INVALID_ARGUMENT),
        }
    }

    fn has_cycle(edges: &[(usize, usize)], goals: &[MGoal]) -> bool {
        // goal -> dep edges among goals not known to be done.
        let n = goals.len();
        let mut adj = vec![Vec::new(); n];
        for &(g, d) in edges {
            if goals[g].done.is_none() && goals[d].done.is_none() {
                adj[g].push(d);
            }
        }
        let mut color = vec![0u8; n];
        fn dfs(u: usize, adj: &[Vec<usize>], color: &mut [u8]) -> bool {
            color[u] = 1;
            for &v in &adj[u] {
                if color[v] == 1 || (color[v] == 0 && dfs(v, adj, color)) {
                    return true;
                }
            }
            color[u] = 2;
            false
        }
        (0..n).any(|u| color[u] == 0 && dfs(u, &adj, &mut color))
    }

    fn result_of(h: u64, id: u64) -> Option<gk_goal_result> {
        let mut r = std::mem::MaybeUninit::<gk_goal_result>::uninit();
        // SAFETY: a valid out pointer.
        (unsafe { gk_worker_goal_result(h, id, r.as_mut_ptr()) } == GK_OK)
            // SAFETY: written on GK_OK.
            .then(|| unsafe { r.assume_init() })
    }

    fn run_wop(m: &mut WModel, st: &mut Stats, op: &WOp) -> Result<(), TestCaseError> {
        let mut store = [0u64; 8];
        match op {
            WOp::New {
                opts,
                opts_ptr,
                out,
            } => {
                if m.live.len() >= 3 {
                    return Ok(());
                }
                let o = opts.map(|(max_jobs, keep_going, backend)| gk_worker_options {
                    max_jobs,
                    keep_going,
                    backend,
                    recheck_interval_ms: 50,
                    legacy_hold: false,
                });
                let mut ostore = [0u64; 8];
                let op: *const gk_worker_options = match (o, opts_ptr) {
                    (None, _) | (_, Ptr::Null) => std::ptr::null(),
                    (Some(o), Ptr::Valid) => {
                        // SAFETY: the u64 array is large and aligned enough.
                        unsafe { std::ptr::write(ostore.as_mut_ptr().cast(), o) };
                        ostore.as_ptr().cast()
                    }
                    (Some(_), Ptr::Misaligned) => (ostore.as_ptr() as usize + 1) as *const _,
                };
                let outp = out_ptr::<u64>(&mut store, *out);
                // SAFETY: pointers as generated; bad ones are refused unread.
                let got = unsafe { gk_worker_new(op, outp) };
                let want = out_status(*out).unwrap_or(match (o, opts_ptr) {
                    (Some(_), Ptr::Misaligned) => GK_ERROR_INVALID_ARGUMENT,
                    (Some(o), Ptr::Valid) if o.backend > 1 => GK_ERROR_INVALID_ARGUMENT,
                    _ => GK_OK,
                });
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    let max_jobs = match (o, opts_ptr) {
                        (Some(o), Ptr::Valid) => o.max_jobs,
                        _ => 1,
                    };
                    m.live.push(MWorker {
                        h: store[0],
                        max_jobs,
                        goals: Vec::new(),
                        edges: Vec::new(),
                    });
                }
            }
            WOp::Free(w) => {
                let (h, k) = m.worker(*w);
                let want = if k.is_some() {
                    GK_OK
                } else {
                    GK_ERROR_STALE_HANDLE
                };
                expect(st, "free", gk_worker_free(h), want)?;
                if let Some(k) = k {
                    let mut mw = m.live.remove(k);
                    for g in &mut mw.goals {
                        g.running = false;
                    }
                    m.freed.push(mw);
                }
            }
            WOp::AddGoal {
                w,
                kind,
                outputs,
                bad,
                packed,
                mode,
                out,
            } => {
                let (h, k) = m.worker(*w);
                let mut raws: Vec<Option<Vec<u8>>> =
                    outputs.iter().map(|&i| Some(m.pool[i].clone())).collect();
                let mut bad_status = None;
                if let Some(b) = bad {
                    // A bad path from the lock-set fuzzer's generator.
                    let raw = match b {
                        PathSpec::Pool(..) => None,
                        PathSpec::Null if *packed => Some(Vec::new()),
                        PathSpec::Null => None,
                        PathSpec::Relative => Some(b"relative/x".to_vec()),
                        PathSpec::DotDot => Some(b"/s/../x".to_vec()),
                        PathSpec::Dot => Some(b"/s/./x".to_vec()),
                        PathSpec::Root => Some(b"/".to_vec()),
                        PathSpec::Empty => Some(Vec::new()),
                        PathSpec::TooLong => Some(
                            vec![b'/'; 1]
                                .into_iter()
                                .chain(std::iter::repeat_n(b'x', PATH_MAX + 5))
                                .collect(),
                        ),
                        PathSpec::NulInside if *packed => Some(b"/s/a\0b".to_vec()),
                        PathSpec::NulInside => None,
                    };
                    match (b, raw) {
                        (PathSpec::Pool(..), _) | (PathSpec::NulInside, None) => {}
                        (PathSpec::Null, None) => {
                            raws.push(None);
                            bad_status = Some(GK_ERROR_NULL_POINTER);
                        }
                        (_, Some(r)) => {
                            raws.push(Some(r));
                            bad_status = Some(GK_ERROR_INVALID_PATH);
                        }
                        _ => {}
                    }
                }
                let outp = out_ptr::<u64>(&mut store, *out);
                let got = if *packed {
                    let mut buf = Vec::new();
                    for r in &raws {
                        buf.extend_from_slice(r.as_deref().unwrap_or(b""));
                        buf.push(0);
                    }
                    // SAFETY: a buffer of buf.len() bytes; out as generated.
                    unsafe {
                        gk_worker_add_goal_packed(h, *kind, buf.as_ptr(), buf.len(), *mode, outp)
                    }
                } else {
                    let cs: Vec<Option<Vec<u8>>> =
                        raws.iter().map(|r| r.as_ref().map(|r| cpath(r))).collect();
                    let ptrs: Vec<*const c_char> = cs
                        .iter()
                        .map(|c| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()))
                        .collect();
                    let p = if ptrs.is_empty() {
                        std::ptr::null()
                    } else {
                        ptrs.as_ptr()
                    };
                    // SAFETY: `ptrs.len()` valid pointers (or NULL for 0).
                    unsafe { gk_worker_add_goal(h, *kind, p, ptrs.len(), *mode, outp) }
                };
                // The model: out, then kind and mode, then the paths, then the handle.
                let mut set: Vec<NPath> = outputs.iter().map(|&i| m.pool[i].clone()).collect();
                set.sort_by_key(lock_key);
                set.dedup();
                let want = out_status(*out)
                    .or((*kind > 2 || *mode > 2).then_some(GK_ERROR_INVALID_ARGUMENT))
                    .or(bad_status)
                    .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE));
                let mut same = None;
                let want = match (want, k) {
                    (Some(s), _) => s,
                    (None, Some(k)) => {
                        let mw = &m.live[k];
                        if (*kind == 0 && set.is_empty()) || (*kind == 1 && set.len() != 1) {
                            GK_ERROR_INVALID_ARGUMENT
                        } else if *kind == 2 {
                            GK_OK
                        } else {
                            let mut s = GK_OK;
                            for (j, g) in mw.goals.iter().enumerate() {
                                if g.kind == 2 || !g.outputs.iter().any(|o| set.contains(o)) {
                                    continue;
                                }
                                if g.kind == *kind && g.outputs == set {
                                    same = Some(j);
                                } else {
                                    s = GK_ERROR_INVALID_ARGUMENT;
                                }
                                break;
                            }
                            s
                        }
                    }
                    (None, None) => unreachable!(),
                };
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    let k = k.unwrap();
                    let id = store[0];
                    match same {
                        Some(j) => ensure!(
                            m.live[k].goals[j].id == id,
                            "the same outputs gave a new goal (S9)"
                        ),
                        None => {
                            ensure!(
                                id != 0
                                    && m.live.iter().all(|w| w.goals.iter().all(|g| g.id != id)),
                                "goal id {id:#x} issued twice"
                            );
                            m.live[k].goals.push(MGoal {
                                id,
                                kind: *kind,
                                outputs: set,
                                running: false,
                                done: None,
                            });
                        }
                    }
                } else if matches!(out, Ptr::Valid) {
                    ensure!(store[0] == 0, "*out not 0 on {}", got.name());
                }
            }
            WOp::AddDep(w, g, d) => {
                let (h, k) = m.worker(*w);
                let (gid, gi) = m.goal(k, *g);
                let (did, di) = m.goal(k, *d);
                let state = gi.and_then(|_| result_of(h, gid));
                let got = gk_worker_add_dependency(h, gid, did);
                let want = match (k, gi, di) {
                    (None, ..) | (_, None, _) | (_, _, None) => GK_ERROR_STALE_HANDLE,
                    (Some(_), Some(a), Some(b)) if a == b => GK_ERROR_INVALID_ARGUMENT,
                    _ => match state.map(|r| r.state) {
                        Some(0) | Some(1) => GK_OK,
                        _ => GK_ERROR_INVALID_STATE,
                    },
                };
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    let k = k.unwrap();
                    m.live[k].edges.push((gi.unwrap(), di.unwrap()));
                }
            }
            WOp::Next(w, out) => {
                let (h, k) = m.worker(*w);
                let outp = out_ptr::<gk_event>(&mut store, *out);
                // SAFETY: as generated.
                let got = unsafe { gk_worker_next_event(h, outp) };
                let pre = out_status(*out).or(k.is_none().then_some(GK_ERROR_STALE_HANDLE));
                if let Some(want) = pre {
                    return expect(st, "next_event", got, want);
                }
                let k = k.unwrap();
                if got == GK_ERROR_SCHEDULER_DEADLOCK {
                    record(st, got)?;
                    ensure!(
                        has_cycle(&m.live[k].edges, &m.live[k].goals),
                        "scheduler deadlock without a dependency cycle: {}",
                        String::from_utf8_lossy(&message())
                    );
                    return Ok(());
                }
                expect(st, "next_event", got, GK_OK)?;
                // SAFETY: written on GK_OK.
                let ev = unsafe { *outp };
                let name = [
                    "?",
                    "event RUN",
                    "event FINISHED",
                    "event WAIT",
                    "event DONE",
                ][(ev.kind as usize).min(4)];
                *st.statuses.entry(name).or_default() += 1;
                let mw = &mut m.live[k];
                let j = mw.goals.iter().position(|g| g.id == ev.goal);
                match ev.kind {
                    1 => {
                        let j = j.ok_or_else(|| fail("RUN of an unknown goal"))?;
                        let g = &mut mw.goals[j];
                        ensure!(
                            g.done.is_none() && !g.running,
                            "RUN of a goal that is {:?}/{}",
                            g.done,
                            g.running
                        );
                        ensure!(ev.goal_kind == g.kind, "RUN with the wrong kind");
                        g.running = true;
                        let running =
                            mw.goals.iter().filter(|g| g.running && g.kind != 2).count() as u32;
                        ensure!(
                            running <= mw.max_jobs.max(1),
                            "{running} goals running, max_jobs {}",
                            mw.max_jobs
                        );
                    }
                    2 => {
                        let j = j.ok_or_else(|| fail("FINISHED of an unknown goal"))?;
                        let g = &mut mw.goals[j];
                        ensure!(g.done.is_none(), "goal {:#x} finished twice", g.id);
                        ensure!(
                            (1..=8).contains(&ev.outcome),
                            "FINISHED with outcome {}",
                            ev.outcome
                        );
                        g.done = Some(ev.outcome);
                        g.running = false;
                    }
                    3 => ensure!(ev.fd >= 0, "WAIT with fd {}", ev.fd),
                    4 => {
                        for g in &mut mw.goals {
                            let r = result_of(mw.h, g.id).ok_or_else(|| fail("result"))?;
                            ensure!(
                                r.state == 5,
                                "DONE, but goal {:#x} is in state {}",
                                g.id,
                                r.state
                            );
                            ensure!(!g.running, "DONE while goal {:#x} runs", g.id);
                            g.done = Some(r.outcome);
                        }
                    }
                    e => return Err(fail(format!("event kind {e}"))),
                }
            }
            WOp::Report {
                w,
                goal,
                outcome,
                write,
            } => {
                let (h, k) = m.worker(*w);
                let (gid, gi) = m.goal(k, *goal);
                if *write {
                    if let (Some(k), Some(j)) = (k, gi) {
                        for o in &m.live[k].goals[j].outputs {
                            let _ = std::fs::write(std::ffi::OsStr::from_bytes(o), b"built");
                        }
                    }
                }
                let got = gk_worker_report(h, gid, *outcome);
                let want = if !(1..=8).contains(outcome) {
                    GK_ERROR_INVALID_ARGUMENT
                } else if k.is_none() || gi.is_none() {
                    GK_ERROR_STALE_HANDLE
                } else if !matches!(outcome, 1 | 2 | 4 | 5) {
                    GK_ERROR_INVALID_ARGUMENT
                } else if !m.live[k.unwrap()].goals[gi.unwrap()].running {
                    GK_ERROR_INVALID_STATE
                } else {
                    GK_OK
                };
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    let g = &mut m.live[k.unwrap()].goals[gi.unwrap()];
                    g.running = false;
                    let r = result_of(h, gid).ok_or_else(|| fail("result"))?;
                    ensure!(r.state == 5, "reported goal not finished");
                    if *outcome == 1 || *outcome == 2 {
                        // Success stands only if every output is valid.
                        let valid = g
                            .outputs
                            .iter()
                            .all(|o| std::path::Path::new(std::ffi::OsStr::from_bytes(o)).exists());
                        if g.kind != 2 && !valid && r.outcome == *outcome {
                            // A predicate may say valid anyway; only the default cannot.
                        }
                    } else {
                        ensure!(
                            r.outcome == *outcome,
                            "reported {outcome}, recorded {}",
                            r.outcome
                        );
                    }
                    g.done = Some(r.outcome);
                }
            }
            WOp::Cancel(w, g) => {
                let (h, k) = m.worker(*w);
                let (gid, gi) = m.goal(k, *g);
                let state = gi.and_then(|_| result_of(h, gid));
                let got = gk_worker_cancel(h, gid);
                let want = match (k, gi, state) {
                    (Some(_), Some(_), Some(r)) if r.state == 5 => GK_ERROR_INVALID_STATE,
                    (Some(_), Some(_), Some(_)) => GK_OK,
                    _ => GK_ERROR_STALE_HANDLE,
                };
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    let g = &mut m.live[k.unwrap()].goals[gi.unwrap()];
                    ensure!(g.done.is_none(), "cancelled a goal the model saw finish");
                    g.running = false;
                    g.done = Some(8);
                }
            }
            WOp::Result(w, g, out) => {
                let (h, k) = m.worker(*w);
                let (gid, gi) = m.goal(k, *g);
                let outp = out_ptr::<gk_goal_result>(&mut store, *out);
                // SAFETY: as generated.
                let got = unsafe { gk_worker_goal_result(h, gid, outp) };
                let want = out_status(*out)
                    .or((k.is_none() || gi.is_none()).then_some(GK_ERROR_STALE_HANDLE))
                    .unwrap_or(GK_OK);
                expect(st, &format!("{op:?}"), got, want)?;
                if got == GK_OK {
                    // SAFETY: written on GK_OK.
                    let r = unsafe { *outp };
                    let g = &m.live[k.unwrap()].goals[gi.unwrap()];
                    ensure!(r.kind == g.kind, "kind {} vs {}", r.kind, g.kind);
                    if g.running {
                        ensure!(r.state == 4, "model: running; library: state {}", r.state);
                    }
                    if let Some(o) = g.done {
                        ensure!(
                            r.state == 5 && r.outcome == o,
                            "model: done {o}; library: {}/{}",
                            r.state,
                            r.outcome
                        );
                    }
                    ensure!(
                        (r.state == 5) == (r.outcome != 0),
                        "state {} with outcome {}",
                        r.state,
                        r.outcome
                    );
                }
            }
            WOp::Outputs(w, g, b) => {
                let (h, k) = m.worker(*w);
                let (gid, gi) = m.goal(k, *g);
                let (items, pre) = match (k, gi) {
                    (Some(k), Some(j)) => (m.live[k].goals[j].outputs.clone(), None),
                    _ => (Vec::new(), Some(GK_ERROR_STALE_HANDLE)),
                };
                // SAFETY: buffers from call_list.
                check_list(
                    st,
                    "gk_worker_goal_outputs",
                    *b,
                    &items,
                    pre,
                    |buf, cap, lo| unsafe { gk_worker_goal_outputs(h, gid, buf, cap, lo) },
                )?;
            }
            WOp::Audit(w, out) => {
                let (h, k) = m.worker(*w);
                let outp = out_ptr::<gk_audit>(&mut store, *out);
                let mut a = std::mem::MaybeUninit::<gk_audit>::uninit();
                let p = if matches!(out, Ptr::Valid) {
                    a.as_mut_ptr()
                } else {
                    outp
                };
                // SAFETY: as generated.
                let got = unsafe { gk_worker_audit(h, p) };
                let want = out_status(*out)
                    .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE))
                    .unwrap_or(GK_OK);
                expect(st, "audit", got, want)?;
            }
            WOp::Fd(w, out) => {
                let (h, k) = m.worker(*w);
                let mut fd = -7i32;
                let p: *mut i32 = match out {
                    Ptr::Valid => &mut fd,
                    Ptr::Null => std::ptr::null_mut(),
                    Ptr::Misaligned => out_ptr::<i32>(&mut store, Ptr::Misaligned),
                };
                // SAFETY: as generated.
                let got = unsafe { gk_worker_fd(h, p) };
                let want = out_status(*out)
                    .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE))
                    .unwrap_or(GK_OK);
                expect(st, "fd", got, want)?;
                if got == GK_OK {
                    ensure!(fd >= 0, "fd {fd}");
                }
            }
            WOp::TakeLog(w, b) => {
                let (h, k) = m.worker(*w);
                // The log's size is the library's to know: ask, then check the
                // protocol around it.
                let mut need = 0usize;
                // SAFETY: a size query.
                let s = unsafe { gk_worker_take_log(h, std::ptr::null_mut(), 0, &mut need) };
                if k.is_none() {
                    expect(st, "take_log", s, GK_ERROR_STALE_HANDLE)?;
                    return Ok(());
                }
                record(st, s)?;
                ensure!(
                    s == GK_OK || s == GK_ERROR_BUFFER_TOO_SMALL,
                    "take_log size query: {}",
                    s.name()
                );
                ensure!(
                    (s == GK_OK) == (need == 0),
                    "take_log: {} with {need} bytes",
                    s.name()
                );
                let (got, lb, _cap, len) = call_list(*b, need, |buf, cap, lo| {
                    // SAFETY: buffers from call_list.
                    unsafe { gk_worker_take_log(h, buf, cap, lo) }
                });
                record(st, got)?;
                if got == GK_OK && need > 0 {
                    ensure!(len == need, "take_log wrote {len} of {need}");
                    let text = &lb.bytes[..need];
                    ensure!(text.last() == Some(&0), "log not NUL-terminated");
                    ensure!(std::str::from_utf8(text).is_ok(), "log not UTF-8");
                    ensure!(
                        lb.bytes[need..].iter().all(|&c| c == CANARY),
                        "take_log wrote past its size"
                    );
                }
            }
            WOp::SetValid(w, p) => {
                let (h, k) = m.worker(*w);
                let f: gk_path_predicate = match p {
                    Pred::Default => None,
                    Pred::AlwaysValid => Some(pred_valid),
                    Pred::Garbage => Some(pred_garbage),
                    Pred::Error => Some(pred_error),
                    Pred::Reentrant => Some(pred_reentrant),
                };
                let got = gk_worker_set_valid_path(h, f, h as usize as *mut c_void);
                let want = if k.is_some() {
                    GK_OK
                } else {
                    GK_ERROR_STALE_HANDLE
                };
                expect(st, "set_valid_path", got, want)?;
            }
        }
        Ok(())
    }

    fn check(m: &mut WModel, st: &mut Stats) -> Result<(), TestCaseError> {
        if let Some(s) = REENTRANT.with(|r| r.take()) {
            ensure!(
                s == GK_ERROR_INVALID_STATE,
                "a predicate calling its own worker got {}",
                s.name()
            );
        }
        // G1/G2: the process holds exactly the outputs of running goals.
        let items = m.running_outputs();
        check_list(st, "held paths", Buf::Exact, &items, None, |b, c, l| {
            // SAFETY: buffers from call_list.
            unsafe { gk_held_paths(b, c, l) }
        })?;
        for mw in &m.live {
            let mut a = std::mem::MaybeUninit::<gk_audit>::uninit();
            // SAFETY: a valid out pointer.
            expect(
                st,
                "audit",
                unsafe { gk_worker_audit(mw.h, a.as_mut_ptr()) },
                GK_OK,
            )?;
            // SAFETY: written on GK_OK.
            let a = unsafe { a.assume_init() };
            let running = mw.goals.iter().filter(|g| g.running).count() as u64;
            let locks: u64 = mw
                .goals
                .iter()
                .filter(|g| g.running && g.kind != 2)
                .map(|g| g.outputs.len() as u64)
                .sum();
            ensure!(a.violations == 0, "audit: {} violations", a.violations);
            ensure!(
                a.locks_held_by_finished == 0,
                "audit: finished goals hold locks"
            );
            ensure!(
                a.goals == mw.goals.len() as u64,
                "audit: {} goals, model {}",
                a.goals,
                mw.goals.len()
            );
            ensure!(
                a.running == running,
                "audit: {} running, model {running}",
                a.running
            );
            ensure!(
                a.locks_held == locks,
                "audit: {} locks held, model {locks}",
                a.locks_held
            );
            ensure!(
                a.slots_used <= mw.max_jobs.max(1) as u64,
                "audit: {} slots of {}",
                a.slots_used,
                mw.max_jobs
            );
            let done = mw.goals.iter().filter(|g| g.done.is_some()).count() as u64;
            ensure!(
                a.finished >= done,
                "audit: {} finished, model saw {done}",
                a.finished
            );
        }
        Ok(())
    }

    pub(super) fn run_case(ops: &[WOp], st: &mut Stats) -> Result<(), TestCaseError> {
        if POISONED.load(Ordering::SeqCst) {
            return Err(fail(
                "an earlier failing case left the process dirty (see above)",
            ));
        }
        let store = TempStore::new();
        let pool = (0..POOL)
            .map(|i| normalise(store.path(&format!("o{i}")).as_bytes()).unwrap())
            .collect();
        let mut m = WModel {
            _store: store,
            pool,
            live: Vec::new(),
            freed: Vec::new(),
            // Worker serial u32::MAX is never issued. (It was 1 << 32 | 1:
            // goal 1 of worker serial 1, which is this process's first
            // worker, so in the very first case that "foreign" id was valid.)
            old_goal: 0xffff_ffff << 32 | 1,
        };
        // Every case starts with one worker.
        run_wop(
            &mut m,
            st,
            &WOp::New {
                opts: None,
                opts_ptr: Ptr::Valid,
                out: Ptr::Valid,
            },
        )?;
        for (i, op) in ops.iter().enumerate() {
            run_wop(&mut m, st, op)
                .and_then(|()| check(&mut m, st))
                .map_err(|e| fail(format!("step {i} ({op:?}): {e}")))?;
        }
        for mw in std::mem::take(&mut m.live) {
            expect(st, "final free", gk_worker_free(mw.h), GK_OK)?;
        }
        let mut n = usize::MAX;
        // SAFETY: valid out pointer.
        expect(st, "final count", unsafe { gk_held_count(&mut n) }, GK_OK)?;
        ensure!(n == 0, "{n} paths still held after every worker was freed");
        Ok(())
    }
}

#[test]
fn worker_abi_random_call_sequences_keep_the_invariants() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The ledger's full sweep on every call, on top of the O(touched) checks.
    std::env::set_var("GOALKEEPER_DEBUG_SWEEP", "1");
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
    let strategy = proptest::collection::vec(worker_fuzz::wop(), 1..60);
    let result = runner(cases).run(&strategy, |ops| {
        worker_fuzz::run_case(&ops, &mut stats.borrow_mut())
    });
    let stats = stats.into_inner();
    println!(
        "abi_fuzz_worker: {cases} cases, {} calls in {:.1} s; statuses: {:?}",
        stats.calls,
        started.elapsed().as_secs_f64(),
        stats.statuses
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    if cases >= 500 {
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
