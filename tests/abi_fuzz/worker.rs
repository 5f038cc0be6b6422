//! Random call sequences over the `gk_worker_*` functions, with one to
//! three workers sharing one store: misuse statuses are predicted exactly
//! (NULL and misaligned pointers, bad enum values, bad paths, stale, freed,
//! forged and lock-set handles, goal ids of another worker or out of range,
//! reports of goals that are not running, outcomes that cannot be
//! reported, predicates that return garbage or call back into their own
//! worker); valid calls are checked against the invariants after every
//! step: the process holds exactly the outputs of the running goals (G1,
//! G2), the audit's counts match the goals the model knows, no finished
//! goal holds a lock, slots stay within `max_jobs`, every goal finishes at
//! most once, and the ledger never reports a violation. Workers may take
//! their validity from a store database (`gk_worker_set_store_database`,
//! with bad databases too), which the fuzzer overwrites with garbage and
//! puts back between calls: the invariants hold whatever it answers.

use crate::args::*;
use crate::common::{db, TempStore};
use crate::store::*;
use crate::*;
use goalkeeper::ffi::gk_status::{self};
use proptest::test_runner::TestCaseError;
use std::ffi::{c_char, CStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use std::cell::Cell;
use std::ffi::c_void;

pub(super) const POOL: usize = 6;

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
    TakeLogRecords(WSpec, RecBuf),
    SetStoreDb(WSpec, DbArg),
    /// Overwrites the store database with garbage (true) or puts it back.
    GarbleDb(bool),
    AddGoals {
        w: WSpec,
        goals: Vec<crate::worker_batch::BGoal>,
        packed: bool,
        ids: Ptr,
    },
    NextEvents {
        w: WSpec,
        cap: usize,
        events: Ptr,
    },
    ReportMany {
        w: WSpec,
        reports: Vec<crate::worker_batch::BReport>,
    },
}

/// Records `gk_worker_take_log_records` returned and the fuzzer checked.
pub(super) static LOG_RECORDS_CHECKED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The output arguments of `gk_worker_take_log_records`.
#[derive(Clone, Copy, Debug)]
pub(super) enum RecBuf {
    /// `out` NULL with `cap` 0: allowed, takes nothing.
    NullZero,
    /// A valid array of `cap` records (1..=8).
    Cap(usize),
    /// `out` NULL with a capacity.
    NullWithCap,
    /// `out` one byte past an aligned array.
    Misaligned,
    /// `cap` `usize::MAX`.
    HugeCap,
    /// `n_out` NULL.
    NOutNull,
    /// `n_out` misaligned.
    NOutMisaligned,
}

fn rec_buf() -> impl Strategy<Value = RecBuf> {
    prop_oneof![
        1 => Just(RecBuf::NullZero),
        8 => (1usize..=8).prop_map(RecBuf::Cap),
        1 => Just(RecBuf::NullWithCap),
        1 => Just(RecBuf::Misaligned),
        1 => Just(RecBuf::HugeCap),
        1 => Just(RecBuf::NOutNull),
        1 => Just(RecBuf::NOutMisaligned),
    ]
}

#[derive(Clone, Copy, Debug)]
pub(super) enum DbArg {
    Null,
    Good,
    Missing,
    Garbage,
    Relative,
    TooLong,
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

pub(super) fn gspec() -> impl Strategy<Value = GSpec> {
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
        2 => (wspec(), rec_buf()).prop_map(|(w, b)| WOp::TakeLogRecords(w, b)),
        2 => (wspec(), prop_oneof![
            3 => Just(Pred::Default),
            1 => Just(Pred::AlwaysValid),
            1 => Just(Pred::Garbage),
            1 => Just(Pred::Error),
            2 => Just(Pred::Reentrant)
        ])
            .prop_map(|(w, p)| WOp::SetValid(w, p)),
        3 => (wspec(), prop_oneof![
            2 => Just(DbArg::Null),
            6 => Just(DbArg::Good),
            1 => Just(DbArg::Missing),
            1 => Just(DbArg::Garbage),
            1 => Just(DbArg::Relative),
            1 => Just(DbArg::TooLong)
        ])
            .prop_map(|(w, d)| WOp::SetStoreDb(w, d)),
        2 => any::<bool>().prop_map(WOp::GarbleDb),
        8 => (
            wspec(),
            proptest::collection::vec(crate::worker_batch::bgoal(), 0..5),
            any::<bool>(),
            ptr_mostly_valid()
        )
            .prop_map(|(w, goals, packed, ids)| WOp::AddGoals { w, goals, packed, ids }),
        // Batches of plain goals without outputs (the library reads them in
        // place, the common request): well formed or with one bad element.
        4 => (
            wspec(),
            proptest::collection::vec(crate::worker_batch::bgoal_plain(), 1..8),
            ptr_mostly_valid()
        )
            .prop_map(|(w, goals, ids)| WOp::AddGoals { w, goals, packed: false, ids }),
        10 => (wspec(), prop_oneof![1 => Just(0usize), 20 => 1usize..6], ptr_mostly_valid())
            .prop_map(|(w, cap, events)| WOp::NextEvents { w, cap, events }),
        6 => (wspec(), proptest::collection::vec(crate::worker_batch::breport(), 0..4))
            .prop_map(|(w, reports)| WOp::ReportMany { w, reports }),
    ]
}

pub(super) struct MGoal {
    pub(super) id: u64,
    pub(super) kind: u32,
    pub(super) outputs: Vec<NPath>,
    pub(super) running: bool,
    pub(super) done: Option<u32>,
}

pub(super) struct MWorker {
    pub(super) h: u64,
    pub(super) max_jobs: u32,
    pub(super) goals: Vec<MGoal>,
    pub(super) edges: Vec<(usize, usize)>,
}

pub(super) struct WModel {
    _store: TempStore,
    /// The store database (`o0` and `o1` registered), its bytes, and
    /// whether it is overwritten with garbage now.
    db: std::path::PathBuf,
    db_original: Vec<u8>,
    garbled: bool,
    pub(super) pool: Vec<NPath>,
    pub(super) live: Vec<MWorker>,
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
    pub(super) fn worker(&self, w: WSpec) -> (u64, Option<usize>) {
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
    pub(super) fn goal(&self, k: Option<usize>, g: GSpec) -> (u64, Option<usize>) {
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
            (Some(k), GSpec::Forged(x)) => (x, self.live[k].goals.iter().position(|g| g.id == x)),
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
pub(super) fn out_status(p: Ptr) -> Option<gk_status> {
    match p {
        Ptr::Valid => None,
        Ptr::Null => Some(GK_ERROR_NULL_POINTER),
        Ptr::Misaligned => Some(GK_ERROR_INVALID_ARGUMENT),
    }
}

pub(super) fn has_cycle(edges: &[(usize, usize)], goals: &[MGoal]) -> bool {
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

pub(super) fn result_of(h: u64, id: u64) -> Option<gk_goal_result> {
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
                    gk_worker_add_goal_packed(h, *kind, buf.as_ptr(), buf.len(), *mode, 0, outp)
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
                unsafe { gk_worker_add_goal(h, *kind, p, ptrs.len(), *mode, 0, outp) }
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
                            id != 0 && m.live.iter().all(|w| w.goals.iter().all(|g| g.id != id)),
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
            apply_event(m, st, k, &ev)?;
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
        WOp::TakeLogRecords(w, b) => take_log_records(m, st, *w, *b)?,
        WOp::AddGoals {
            w,
            goals,
            packed,
            ids,
        } => crate::worker_batch::add_goals(m, st, *w, goals, *packed, *ids)?,
        WOp::NextEvents { w, cap, events } => {
            crate::worker_batch::next_events(m, st, *w, *cap, *events)?
        }
        WOp::ReportMany { w, reports } => crate::worker_batch::report_many(m, st, *w, reports)?,
        WOp::SetStoreDb(w, d) => {
            let (h, k) = m.worker(*w);
            let dir = m.db.parent().unwrap();
            let raw: Option<Vec<u8>> = match d {
                DbArg::Null => None,
                DbArg::Good => Some(m.db.as_os_str().as_bytes().to_vec()),
                DbArg::Missing => Some(dir.join("missing.sqlite").as_os_str().as_bytes().to_vec()),
                DbArg::Garbage => Some(dir.join("garbage.sqlite").as_os_str().as_bytes().to_vec()),
                DbArg::Relative => Some(b"db.sqlite".to_vec()),
                DbArg::TooLong => Some(
                    std::iter::once(b'/')
                        .chain(std::iter::repeat_n(b'z', PATH_MAX + 5))
                        .collect(),
                ),
            };
            let c = raw.map(|r| cpath(&r));
            let p = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast());
            // SAFETY: NULL or a NUL-terminated string.
            let got = unsafe { gk_worker_set_store_database(h, p) };
            let want = match d {
                DbArg::TooLong => GK_ERROR_INVALID_PATH,
                _ if k.is_none() => GK_ERROR_STALE_HANDLE,
                DbArg::Null => GK_OK,
                DbArg::Good if m.garbled => GK_ERROR_STORE_DB_NOT_SQLITE,
                DbArg::Good => GK_OK,
                DbArg::Missing => GK_ERROR_STORE_DB_MISSING,
                DbArg::Garbage => GK_ERROR_STORE_DB_NOT_SQLITE,
                DbArg::Relative => GK_ERROR_INVALID_PATH,
            };
            expect(st, &format!("{op:?}"), got, want)?;
        }
        WOp::GarbleDb(on) => {
            if *on {
                db::garble(&m.db);
            } else {
                db::restore(&m.db, &m.db_original);
            }
            m.garbled = *on;
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

/// What the model learns from event `ev` of live worker `k` (and checks).
pub(super) fn apply_event(
    m: &mut WModel,
    st: &mut Stats,
    k: usize,
    ev: &gk_event,
) -> Result<(), TestCaseError> {
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
            let running = mw.goals.iter().filter(|g| g.running && g.kind != 2).count() as u32;
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

/// `gk_worker_take_log_records` with generated arguments: the status the
/// documentation gives for them; on success, at most `cap` well-formed
/// records (known kinds, goals of this worker, strings of the stated
/// lengths, times in order) and nothing written past them.
fn take_log_records(
    m: &mut WModel,
    st: &mut Stats,
    w: WSpec,
    b: RecBuf,
) -> Result<(), TestCaseError> {
    const WORDS: usize = std::mem::size_of::<gk_log_record>() / 8;
    const FILL: u64 = 0xa5a5_a5a5_a5a5_a5a5;
    let (h, k) = m.worker(w);
    let room = match b {
        RecBuf::Cap(c) => c,
        _ => 2,
    };
    // Room for `room` records and one more, which must stay untouched.
    let mut array = vec![FILL; (room + 2) * WORDS];
    let base = array.as_mut_ptr() as usize;
    let (out, cap): (*mut gk_log_record, usize) = match b {
        RecBuf::NullZero => (std::ptr::null_mut(), 0),
        RecBuf::Cap(c) => (base as *mut gk_log_record, c),
        RecBuf::NullWithCap => (std::ptr::null_mut(), 3),
        RecBuf::Misaligned => ((base + 1) as *mut gk_log_record, 1),
        RecBuf::HugeCap => (base as *mut gk_log_record, usize::MAX),
        RecBuf::NOutNull | RecBuf::NOutMisaligned => (base as *mut gk_log_record, room),
    };
    let mut n_store = [FILL; 3];
    let n_base = n_store.as_mut_ptr() as usize;
    let n_out: *mut usize = match b {
        RecBuf::NOutNull => std::ptr::null_mut(),
        RecBuf::NOutMisaligned => (n_base + 1) as *mut usize,
        _ => n_base as *mut usize,
    };
    // SAFETY: `out` and `n_out` are as generated: valid for `cap` records
    // and one size_t, or deliberately NULL, misaligned or over-sized, which
    // the library must refuse before writing.
    let got = unsafe { gk_worker_take_log_records(h, out, cap, n_out) };
    let want = match b {
        RecBuf::NOutNull | RecBuf::NullWithCap => Some(GK_ERROR_NULL_POINTER),
        RecBuf::NOutMisaligned | RecBuf::Misaligned | RecBuf::HugeCap => {
            Some(GK_ERROR_INVALID_ARGUMENT)
        }
        RecBuf::NullZero | RecBuf::Cap(_) => None,
    }
    .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE))
    .unwrap_or(GK_OK);
    expect(st, "take_log_records", got, want)?;
    let n = if matches!(b, RecBuf::NOutNull | RecBuf::NOutMisaligned) {
        ensure!(
            n_store == [FILL; 3],
            "n_out was written through a bad pointer"
        );
        0
    } else {
        n_store[0] as usize
    };
    if got != GK_OK {
        ensure!(
            matches!(b, RecBuf::NOutNull | RecBuf::NOutMisaligned) || n == 0,
            "{}: *n_out is {n}, not 0",
            got.name()
        );
    } else {
        ensure!(n <= cap, "{n} records for a capacity of {cap}");
    }
    if got != GK_OK || n == 0 {
        ensure!(
            array.iter().all(|&x| x == FILL),
            "take_log_records wrote records with status {} and n {n}",
            got.name()
        );
        return Ok(());
    }
    let k = k.expect("a live worker on GK_OK");
    let goals: BTreeSet<u64> = m.live[k].goals.iter().map(|g| g.id).collect();
    let mut last_time = 0u64;
    for i in 0..n {
        // SAFETY: the library wrote `n <= cap` records at the start of `array`.
        let r = unsafe { std::ptr::read((base as *const gk_log_record).add(i)) };
        // SAFETY: gk_log_kind_name returns a static string.
        let kind = unsafe { CStr::from_ptr(gk_log_kind_name(r.kind)) };
        ensure!(kind.to_bytes() != b"unknown", "record {i}: kind {}", r.kind);
        ensure!(
            r.goal == 0 || goals.contains(&r.goal),
            "record {i}: goal {:#x} is not one of this worker's",
            r.goal
        );
        ensure!(
            r.holder_pid == -1 || r.holder_pid > 0,
            "holder pid {}",
            r.holder_pid
        );
        ensure!(r.duration_ns >= -1, "duration {}", r.duration_ns);
        ensure!(
            r.time_ns > 0 && r.time_ns >= last_time,
            "record {i}: time {} after {last_time}",
            r.time_ns
        );
        last_time = r.time_ns;
        ensure!(!r.message.is_null(), "record {i}: NULL message");
        // SAFETY: the strings are valid until the next take on this worker.
        let msg = unsafe { CStr::from_ptr(r.message) };
        ensure!(msg.to_bytes().len() == r.message_len, "message length");
        ensure!(
            std::str::from_utf8(msg.to_bytes()).is_ok(),
            "message not UTF-8"
        );
        if r.path.is_null() {
            ensure!(r.path_len == 0, "no path but path_len {}", r.path_len);
        } else {
            // SAFETY: as above.
            let path = unsafe { CStr::from_ptr(r.path) };
            ensure!(path.to_bytes().len() == r.path_len, "path length");
            ensure!(path.to_bytes().first() == Some(&b'/'), "path not absolute");
        }
    }
    ensure!(
        array[n * WORDS..].iter().all(|&x| x == FILL),
        "take_log_records wrote past its {n} records"
    );
    LOG_RECORDS_CHECKED.fetch_add(n as u64, Ordering::Relaxed);
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
    let db_dir = store.dir().join("state");
    std::fs::create_dir(&db_dir).unwrap();
    let p0 = store.path("o0");
    let p1 = store.path("o1");
    let db_file = db::create(&db_dir, "wal", &[&p0, &p1]);
    std::fs::write(db_dir.join("garbage.sqlite"), vec![b'g'; 4096]).unwrap();
    let db_original = std::fs::read(&db_file).unwrap();
    let mut m = WModel {
        _store: store,
        db: db_file,
        db_original,
        garbled: false,
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
