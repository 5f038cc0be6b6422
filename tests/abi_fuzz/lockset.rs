//! The lock-set half of the fuzzer: the generated calls, an independent
//! model that predicts every status, and the checks after every step.

use crate::args::*;
use crate::common::TempStore;
use crate::store::*;
use crate::*;
use goalkeeper::ffi::gk_status::{self};
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, CStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Api {
    Try,
    Blocking,
    Timeout(u64),
    Packed(i64),
}

#[derive(Clone, Debug)]
pub(crate) struct Acquire {
    api: Api,
    items: Vec<PathSpec>,
    ptr: Ptr,
    len: Len,
    backend: u32,
    out: Ptr,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum HandleSpec {
    Live(usize),
    Released(usize),
    Forged(u64),
    /// A live or released handle with its generation and index nudged.
    Near(usize, i8, i8),
    /// A live handle with another kind byte (e.g. a worker's).
    WrongKind(usize, u8),
    Zero,
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
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

pub(crate) fn op() -> impl Strategy<Value = Op> {
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
                    let fails = set.delete && m.enospc && m.truncate_eio;
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

pub(crate) fn run_case(ops: &[Op], st: &mut Stats) -> Result<(), TestCaseError> {
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
