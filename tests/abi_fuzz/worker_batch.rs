//! The batch calls of the worker fuzzer: `gk_worker_add_goals` (goals with
//! outputs from the pool, as C strings or packed, and dependencies on goals
//! of the worker, of other workers, of the batch, beyond it, or the goal
//! itself; bad kinds, modes and paths), `gk_worker_next_events` and
//! `gk_worker_report_many` (reports of running and finished goals, twice,
//! with outcomes that cannot be reported). The status and the element
//! named are predicted exactly by a model of the documented order; a
//! refused batch must change nothing (the goals' states and outcomes, the
//! audit, and the locks the process holds, checked after every step).

use crate::args::*;
use crate::store::*;
use crate::worker::*;
use crate::*;
use goalkeeper::ffi::gk_status::{self};
use proptest::test_runner::TestCaseError;
use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;

/// A dependency of a goal of a generated batch.
#[derive(Clone, Copy, Debug)]
pub(super) enum BDep {
    /// A goal of the worker (or not: see [`GSpec`]).
    Goal(GSpec),
    /// `GK_BATCH_GOAL(k)` (possibly beyond the batch, or the goal itself).
    Batch(u32),
}

/// A goal of a generated batch.
#[derive(Clone, Debug)]
pub(super) struct BGoal {
    kind: u32,
    mode: u32,
    outputs: Vec<usize>,
    /// A relative path among the outputs, at this place.
    bad_path: Option<usize>,
    deps: Vec<BDep>,
}

pub(super) fn bgoal() -> impl Strategy<Value = BGoal> {
    (
        prop_oneof![10 => 0u32..3, 1 => 3u32..9],
        prop_oneof![20 => 0u32..3, 1 => 3u32..9],
        proptest::collection::vec(0..POOL, 0..3),
        proptest::option::weighted(0.05, 0usize..3),
        proptest::collection::vec(
            prop_oneof![
                4 => gspec().prop_map(BDep::Goal),
                3 => (0u32..6).prop_map(BDep::Batch),
            ],
            0..3,
        ),
    )
        .prop_map(|(kind, mode, outputs, bad_path, deps)| BGoal {
            kind,
            mode,
            bad_path: bad_path.map(|p| p.min(outputs.len())),
            outputs,
            deps,
        })
}

/// A plain goal without outputs (now and then a bad kind or mode), whose
/// dependencies are goals of the worker (or not) or of the batch (or
/// beyond it, or itself): batches of them take the library's in-place way.
pub(super) fn bgoal_plain() -> impl Strategy<Value = BGoal> {
    (
        prop_oneof![40 => Just(2u32), 1 => 3u32..9],
        prop_oneof![40 => 0u32..3, 1 => 3u32..9],
        proptest::collection::vec(
            prop_oneof![
                4 => gspec().prop_map(BDep::Goal),
                4 => (0u32..8).prop_map(BDep::Batch),
            ],
            0..4,
        ),
    )
        .prop_map(|(kind, mode, deps)| BGoal {
            kind,
            mode,
            outputs: Vec::new(),
            bad_path: None,
            deps,
        })
}

/// The model's verdict on a batch: the goals' resolutions, or the first
/// bad element.
enum Verdict {
    Ok(Vec<Res>),
    Refused(gk_status, usize, usize, u32),
}

/// How a goal of the batch resolves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Res {
    /// A new goal: the `n`th new one of the batch.
    New(usize),
    /// An existing goal of the worker (model index).
    Existing(usize),
    /// The same goal as goal `k` of the batch.
    Same(usize),
}

const FIELD_KIND: u32 = 1;
const FIELD_MODE: u32 = 2;
const FIELD_OUTPUT: u32 = 3;
const FIELD_DEPENDENCY: u32 = 5;
const FIELD_GOAL: u32 = 7;
const FIELD_OUTCOME: u32 = 8;

/// The caller's raw outputs of `g` (with the bad path in place), and its
/// normalised set.
fn raw_outputs(g: &BGoal, pool: &[NPath]) -> (Vec<Vec<u8>>, Vec<NPath>) {
    let mut raw: Vec<Vec<u8>> = g.outputs.iter().map(|&i| pool[i].clone()).collect();
    if let Some(at) = g.bad_path {
        raw.insert(at, b"relative/x".to_vec());
    }
    let mut set: Vec<NPath> = g.outputs.iter().map(|&i| pool[i].clone()).collect();
    set.sort_by_key(lock_key);
    set.dedup();
    (raw, set)
}

/// The model of `gk_worker_add_goals`'s validation, in the documented
/// order. `dep_ids[i][j]` is the raw id given for dependency `j` of goal `i`.
fn verdict(
    m: &WModel,
    k: usize,
    goals: &[BGoal],
    dep_ids: &[Vec<u64>],
) -> Result<Verdict, TestCaseError> {
    let mw = &m.live[k];
    let n = goals.len();
    // Pass 1: every goal's own checks and its resolution.
    let mut res = Vec::with_capacity(n);
    let mut errs: Vec<Option<(gk_status, usize, u32)>> = Vec::with_capacity(n);
    let mut new = 0;
    let mut batch_paths: Vec<(NPath, usize)> = Vec::new();
    for (i, g) in goals.iter().enumerate() {
        let (raw, set) = raw_outputs(g, &m.pool);
        let mut fresh = |err| {
            new += 1;
            (Res::New(new - 1), err)
        };
        let (r, e) = if g.kind > 2 {
            fresh(Some((GK_ERROR_INVALID_ARGUMENT, 0, FIELD_KIND)))
        } else if g.mode > 2 {
            fresh(Some((GK_ERROR_INVALID_ARGUMENT, 0, FIELD_MODE)))
        } else if let Some(at) = g.bad_path {
            fresh(Some((GK_ERROR_INVALID_PATH, at, FIELD_OUTPUT)))
        } else if g.kind == 2 {
            fresh(None)
        } else if (g.kind == 0 && set.is_empty()) || (g.kind == 1 && set.len() != 1) {
            fresh(Some((GK_ERROR_INVALID_ARGUMENT, 0, FIELD_OUTPUT)))
        } else {
            let owner = |p: &NPath| {
                mw.goals
                    .iter()
                    .position(|x| x.kind != 2 && x.outputs.contains(p))
            };
            let in_batch = |p: &NPath| batch_paths.iter().find(|(q, _)| q == p).map(|x| x.1);
            let caller = |p: &NPath| raw.iter().position(|r| r == p).unwrap();
            let first = &set[0];
            let shared = match owner(first) {
                Some(e) if mw.goals[e].kind == g.kind && mw.goals[e].outputs == set => {
                    Some(Res::Existing(e))
                }
                Some(_) => None,
                None => in_batch(first).and_then(|b| {
                    let (_, bset) = raw_outputs(&goals[b], &m.pool);
                    (goals[b].kind == g.kind && bset == set).then_some(Res::Same(b))
                }),
            };
            match shared {
                Some(s) => (s, None),
                None => match set
                    .iter()
                    .find(|p| owner(p).is_some() || in_batch(p).is_some())
                {
                    Some(p) => fresh(Some((GK_ERROR_INVALID_ARGUMENT, caller(p), FIELD_OUTPUT))),
                    None => {
                        for p in &set {
                            batch_paths.push((p.clone(), i));
                        }
                        fresh(None)
                    }
                },
            }
        };
        // The goal a resolution stands for: a model index of the worker,
        // or the number of a new goal.
        res.push(r);
        errs.push(e);
    }
    let target = |r: Res| -> Res {
        match r {
            Res::Same(b) => match res[b] {
                Res::Same(_) => unreachable!("Same of Same"),
                t => t,
            },
            t => t,
        }
    };
    // Then goal by goal: its own error, else its dependencies.
    for (i, g) in goals.iter().enumerate() {
        if let Some((s, sub, field)) = errs[i] {
            return Ok(Verdict::Refused(s, i, sub, field));
        }
        let me = target(res[i]);
        if !g.deps.is_empty() {
            if let Res::Existing(e) = me {
                let r = result_of(mw.h, mw.goals[e].id).ok_or_else(|| fail("result"))?;
                if r.state > 1 {
                    return Ok(Verdict::Refused(
                        GK_ERROR_INVALID_STATE,
                        i,
                        0,
                        FIELD_DEPENDENCY,
                    ));
                }
            }
        }
        for (j, &raw) in dep_ids[i].iter().enumerate() {
            let to = if raw >> 32 == 0xffff_ffff {
                let b = (raw & 0xffff_ffff) as usize;
                if b >= n {
                    return Ok(Verdict::Refused(
                        GK_ERROR_INVALID_ARGUMENT,
                        i,
                        j,
                        FIELD_DEPENDENCY,
                    ));
                }
                target(res[b])
            } else {
                match mw.goals.iter().position(|x| x.id == raw) {
                    Some(e) => Res::Existing(e),
                    None => {
                        return Ok(Verdict::Refused(
                            GK_ERROR_STALE_HANDLE,
                            i,
                            j,
                            FIELD_DEPENDENCY,
                        ))
                    }
                }
            };
            if to == me {
                return Ok(Verdict::Refused(
                    GK_ERROR_INVALID_ARGUMENT,
                    i,
                    j,
                    FIELD_DEPENDENCY,
                ));
            }
        }
    }
    Ok(Verdict::Ok(res))
}

/// The states and outcomes of the model's goals of worker `k`.
fn states(m: &WModel, k: usize) -> Vec<Option<(u32, u32)>> {
    let mw = &m.live[k];
    mw.goals
        .iter()
        .map(|g| result_of(mw.h, g.id).map(|r| (r.state, r.outcome)))
        .collect()
}

pub(super) fn add_goals(
    m: &mut WModel,
    st: &mut Stats,
    w: WSpec,
    goals: &[BGoal],
    packed: bool,
    ids_ptr: Ptr,
) -> Result<(), TestCaseError> {
    let (h, k) = m.worker(w);
    let n = goals.len();
    // The C arrays.
    let kinds: Vec<u32> = goals.iter().map(|g| g.kind).collect();
    let modes: Vec<u32> = goals.iter().map(|g| g.mode).collect();
    let tags: Vec<u64> = (0..n as u64).map(|i| 0x7a90_0000 + i).collect();
    let mut out_off = vec![0u32];
    let mut raws: Vec<Vec<u8>> = Vec::new();
    for g in goals {
        let (raw, _) = raw_outputs(g, &m.pool);
        raws.extend(raw);
        out_off.push(raws.len() as u32);
    }
    let mut dep_off = vec![0u32];
    let mut dep_ids: Vec<Vec<u64>> = Vec::new();
    for g in goals {
        let ids: Vec<u64> = g
            .deps
            .iter()
            .map(|d| match *d {
                BDep::Goal(s) => m.goal(k, s).0,
                BDep::Batch(b) => 0xffff_ffff_0000_0000 | b as u64,
            })
            .collect();
        dep_off.push(dep_off.last().unwrap() + ids.len() as u32);
        dep_ids.push(ids);
    }
    let deps: Vec<u64> = dep_ids.iter().flatten().copied().collect();
    let cstrings: Vec<Vec<u8>> = raws.iter().map(|r| cpath(r)).collect();
    let ptrs: Vec<*const c_char> = cstrings.iter().map(|c| c.as_ptr().cast()).collect();
    let packed_bytes: Vec<u8> = cstrings.iter().flatten().copied().collect();
    let batch = gk_goal_batch {
        struct_size: std::mem::size_of::<gk_goal_batch>() as u32,
        n_goals: n as u32,
        kinds: kinds.as_ptr(),
        modes: modes.as_ptr(),
        tags: tags.as_ptr(),
        output_offsets: if raws.is_empty() {
            std::ptr::null()
        } else {
            out_off.as_ptr()
        },
        outputs: if raws.is_empty() || packed {
            std::ptr::null()
        } else {
            ptrs.as_ptr()
        },
        outputs_packed: if raws.is_empty() || !packed {
            std::ptr::null()
        } else {
            packed_bytes.as_ptr()
        },
        outputs_packed_len: if packed { packed_bytes.len() } else { 0 },
        dep_offsets: if deps.is_empty() {
            std::ptr::null()
        } else {
            dep_off.as_ptr()
        },
        deps: if deps.is_empty() {
            std::ptr::null()
        } else {
            deps.as_ptr()
        },
    };
    let mut ids = vec![0x5555u64; n + 1];
    let ids_p: *mut u64 = match ids_ptr {
        Ptr::Valid => ids.as_mut_ptr(),
        Ptr::Null => std::ptr::null_mut(),
        Ptr::Misaligned => (ids.as_mut_ptr() as usize + 1) as *mut u64,
    };
    let mut err = gk_batch_error {
        index: 99,
        sub: 99,
        field: 99,
        reserved: 99,
    };
    let before = k.map(|k| states(m, k));
    // The model's verdict, before the call (it asks the goals' states).
    let verdict = match k {
        Some(k) => Some(verdict(m, k, goals, &dep_ids)?),
        None => None,
    };
    // SAFETY: the arrays live until the end of this function; pointers as generated.
    let got = unsafe { gk_worker_add_goals(h, &batch, ids_p, &mut err) };
    let what = format!("add_goals {goals:?}");
    if n > 0 {
        if let Some(s) = out_status(ids_ptr) {
            return expect(st, &what, got, s);
        }
    }
    let Some(k) = k else {
        return expect(st, &what, got, GK_ERROR_STALE_HANDLE);
    };
    match verdict.expect("a live worker") {
        Verdict::Refused(s, index, sub, field) => {
            expect(st, &what, got, s)?;
            ensure!(
                (err.index, err.sub, err.field) == (index, sub, field),
                "{what}: err {{{}, {}, {}}}, model {{{index}, {sub}, {field}}}: {}",
                err.index,
                err.sub,
                err.field,
                String::from_utf8_lossy(&message())
            );
            ensure!(
                ids[..n].iter().all(|&x| x == 0),
                "{what}: ids_out not zeroed"
            );
            ensure!(
                Some(states(m, k)) == before,
                "{what}: a refused batch changed goals"
            );
        }
        Verdict::Ok(res) => {
            expect(st, &what, got, GK_OK)?;
            ensure!(
                (err.index, err.sub, err.field) == (0, 0, 0),
                "{what}: err not zeroed on GK_OK"
            );
            let mut new_ids: Vec<Option<u64>> = Vec::new();
            for (i, r) in res.iter().enumerate() {
                let id = ids[i];
                match *r {
                    Res::New(nth) => {
                        ensure!(
                            id != 0 && m.live.iter().all(|w| w.goals.iter().all(|g| g.id != id)),
                            "{what}: goal id {id:#x} issued twice"
                        );
                        ensure!(nth == new_ids.len(), "model: new goals in order");
                        new_ids.push(Some(id));
                        let mut tag = 0;
                        // SAFETY: a valid out pointer.
                        expect(
                            st,
                            "goal_tag",
                            unsafe { gk_worker_goal_tag(h, id, &mut tag) },
                            GK_OK,
                        )?;
                        ensure!(
                            tag == 0x7a90_0000 + i as u64,
                            "{what}: tag {tag:#x} of goal {i}"
                        );
                        let (_, set) = raw_outputs(&goals[i], &m.pool);
                        m.live[k].goals.push(MGoal {
                            id,
                            kind: goals[i].kind,
                            outputs: set,
                            running: false,
                            done: None,
                        });
                    }
                    Res::Existing(e) => ensure!(
                        m.live[k].goals[e].id == id,
                        "{what}: goal {i} should be the existing goal (S9)"
                    ),
                    Res::Same(b) => ensure!(ids[b] == id, "{what}: goal {i} should be goal {b}"),
                }
            }
            // Edges, for the deadlock check.
            let index_of = |m: &WModel, id: u64| m.live[k].goals.iter().position(|g| g.id == id);
            for (i, ds) in dep_ids.iter().enumerate() {
                let gi = index_of(m, ids[i]).unwrap();
                for &d in ds {
                    let did = if d >> 32 == 0xffff_ffff {
                        ids[(d & 0xffff_ffff) as usize]
                    } else {
                        d
                    };
                    let di = index_of(m, did).unwrap();
                    m.live[k].edges.push((gi, di));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn next_events(
    m: &mut WModel,
    st: &mut Stats,
    w: WSpec,
    cap: usize,
    events: Ptr,
) -> Result<(), TestCaseError> {
    let (h, k) = m.worker(w);
    let mut evs = vec![
        gk_event {
            kind: 77,
            goal_kind: 0,
            goal: 0,
            tag: 0,
            outcome: 0,
            fd: 0,
            timeout_ms: 0
        };
        cap + 1
    ];
    let p: *mut gk_event = match events {
        Ptr::Valid => evs.as_mut_ptr(),
        Ptr::Null => std::ptr::null_mut(),
        Ptr::Misaligned => (evs.as_mut_ptr() as usize + 4) as *mut gk_event,
    };
    let mut n = usize::MAX;
    // SAFETY: room for `cap` events (one more for the misaligned case).
    let got = unsafe { gk_worker_next_events(h, p, cap, &mut n) };
    let pre = (cap == 0)
        .then_some(GK_ERROR_INVALID_ARGUMENT)
        .or(out_status(events))
        .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE));
    if let Some(want) = pre {
        expect(st, "next_events", got, want)?;
        ensure!(n == 0, "next_events: *n_out {n} on an error");
        return Ok(());
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
    expect(st, "next_events", got, GK_OK)?;
    ensure!(
        (1..=cap).contains(&n),
        "next_events gave {n} events for cap {cap}"
    );
    ensure!(evs[n].kind == 77, "next_events wrote past *n_out");
    for (i, ev) in evs[..n].iter().enumerate() {
        if ev.kind == 3 {
            ensure!(n == 1, "a WAIT among {n} events");
        }
        if ev.kind == 3 || ev.kind == 4 {
            ensure!(i + 1 == n, "WAIT or DONE not last");
        }
        apply_event(m, st, k, ev)?;
    }
    Ok(())
}

/// A generated report: a goal, an outcome number, and whether to write
/// the goal's outputs first.
pub(super) type BReport = (GSpec, u32, bool);

pub(super) fn breport() -> impl Strategy<Value = BReport> {
    (
        gspec(),
        prop_oneof![10 => Just(1u32), 5 => Just(4u32), 2 => Just(5u32), 1 => Just(2u32), 2 => 0u32..12],
        any::<bool>(),
    )
}

pub(super) fn report_many(
    m: &mut WModel,
    st: &mut Stats,
    w: WSpec,
    reports: &[BReport],
) -> Result<(), TestCaseError> {
    let (h, k) = m.worker(w);
    let resolved: Vec<(u64, Option<usize>)> = reports.iter().map(|r| m.goal(k, r.0)).collect();
    if let Some(k) = k {
        for ((_, _, write), (_, j)) in reports.iter().zip(&resolved) {
            if let (true, Some(j)) = (write, j) {
                for o in &m.live[k].goals[*j].outputs {
                    let _ = std::fs::write(std::ffi::OsStr::from_bytes(o), b"built");
                }
            }
        }
    }
    let mut c: Vec<gk_report> = reports
        .iter()
        .zip(&resolved)
        .map(|(r, (id, _))| gk_report {
            goal: *id,
            outcome: r.1,
            recorded: 77,
        })
        .collect();
    let mut err = gk_batch_error::default();
    let before = k.map(|k| states(m, k));
    // SAFETY: `c.len()` reports (NULL is allowed for 0).
    let got = unsafe {
        gk_worker_report_many(
            h,
            if c.is_empty() {
                std::ptr::null_mut()
            } else {
                c.as_mut_ptr()
            },
            c.len(),
            &mut err,
        )
    };
    let what = format!("report_many {reports:?}");
    let Some(k) = k else {
        return expect(st, &what, got, GK_ERROR_STALE_HANDLE);
    };
    // The model, report by report.
    let mut refused = None;
    for (j, (r, (_, gi))) in reports.iter().zip(&resolved).enumerate() {
        let outcome = r.1;
        let bad = if !(1..=8).contains(&outcome) {
            Some((GK_ERROR_INVALID_ARGUMENT, FIELD_OUTCOME))
        } else if gi.is_none() {
            Some((GK_ERROR_STALE_HANDLE, FIELD_GOAL))
        } else if !matches!(outcome, 1 | 2 | 4 | 5) {
            Some((GK_ERROR_INVALID_ARGUMENT, FIELD_OUTCOME))
        } else if !m.live[k].goals[gi.unwrap()].running {
            Some((GK_ERROR_INVALID_STATE, FIELD_GOAL))
        } else if resolved[..j].iter().any(|(_, x)| x == gi) {
            Some((GK_ERROR_INVALID_ARGUMENT, FIELD_GOAL))
        } else {
            None
        };
        if let Some((s, field)) = bad {
            refused = Some((s, j, field));
            break;
        }
    }
    match refused {
        Some((s, j, field)) => {
            expect(st, &what, got, s)?;
            ensure!(
                (err.index, err.sub, err.field) == (j, 0, field),
                "{what}: err {{{}, {}, {}}}, model {{{j}, 0, {field}}}",
                err.index,
                err.sub,
                err.field
            );
            ensure!(c.iter().all(|r| r.recorded == 0), "{what}: recorded not 0");
            ensure!(
                Some(states(m, k)) == before,
                "{what}: a refused batch changed goals"
            );
        }
        None => {
            expect(st, &what, got, GK_OK)?;
            for (r, (id, gi)) in c.iter().zip(&resolved) {
                let res = result_of(h, *id).ok_or_else(|| fail("result"))?;
                ensure!(
                    res.state == 5 && res.outcome == r.recorded,
                    "{what}: recorded {} but the goal is {}/{}",
                    r.recorded,
                    res.state,
                    res.outcome
                );
                if !matches!(r.outcome, 1 | 2) {
                    ensure!(
                        r.recorded == r.outcome,
                        "{what}: a failure recorded as {}",
                        r.recorded
                    );
                }
                let g = &mut m.live[k].goals[gi.unwrap()];
                g.running = false;
                g.done = Some(r.recorded);
            }
        }
    }
    Ok(())
}
