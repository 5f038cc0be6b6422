//! The scheduler benchmarks: no-op goals through the Rust API against a
//! flat-array DAG walk of the same graph in the same binary, the 1M/100k
//! scaling, and the resident memory per goal (in a fresh process).

use std::hint::black_box;
use std::time::Instant;

use goalkeeper::sched::{BuildMode, Event, GoalId, GoalKind, Outcome, Worker, WorkerOptions};

use crate::report::Measured;

/// xorshift64, the same generator as benches/c/lock_bench.c.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Calls `f(goal, dep)` for the benchmark DAG's edges: goal `i` depends on
/// `min(i, 4)` distinct earlier goals (about 4 edges per goal).
pub fn for_each_edge(n: u32, mut f: impl FnMut(u32, u32)) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 1..n {
        let k = i.min(4) as usize;
        let mut got = [0u32; 4];
        let mut j = 0;
        while j < k {
            let d = (rng.next() % i as u64) as u32;
            if got[..j].contains(&d) {
                continue;
            }
            got[j] = d;
            j += 1;
            f(i, d);
        }
    }
}

/// The edge list, for the measured runs (generation is not measured).
pub fn edges(n: u32) -> Vec<(u32, u32)> {
    let mut v = Vec::with_capacity(4 * n as usize);
    for_each_edge(n, |g, d| v.push((g, d)));
    v
}

/// How the benchmark's host names a goal when it adds an edge.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// It keeps every goal's id in a table indexed by its own goal number
    /// and reads it for each edge (8 bytes per goal; at a million goals a
    /// random read of an 8 MB table per edge).
    Table,
    /// It computes the id from its goal number: the goals of a worker are
    /// numbered in the order they are added, so goal `k` of the request is
    /// the first id plus `k` (as `GK_BATCH_GOAL(k)` names goal `k` of a
    /// batch, and as the flat walk uses the edge list's numbers directly).
    Dense,
}

/// Builds a worker holding the DAG (plain goals, no locks); returns it and
/// the ids of the goals (made for `Ids::Table`, computed for `Ids::Dense`).
pub fn build_worker(
    n: u32,
    ids_by: Ids,
    edges: impl FnOnce(&mut dyn FnMut(u32, u32)),
) -> (Worker, Vec<GoalId>) {
    let mut w = Worker::new(WorkerOptions::default()).expect("worker");
    let none: &[&str] = &[];
    let ids: Vec<GoalId> = if ids_by == Ids::Table {
        (0..n)
            .map(|_| {
                w.add_goal(GoalKind::Plain, none, BuildMode::Normal)
                    .expect("add_goal")
            })
            .collect()
    } else {
        let first = w
            .add_goal(GoalKind::Plain, none, BuildMode::Normal)
            .expect("add_goal");
        for k in 1..n {
            let id = w
                .add_goal(GoalKind::Plain, none, BuildMode::Normal)
                .expect("add_goal");
            debug_assert_eq!(id.raw(), first.raw() + k as u64);
        }
        vec![first]
    };
    match ids_by {
        Ids::Table => edges(&mut |g, d| {
            w.add_dependency(ids[g as usize], ids[d as usize])
                .expect("add_dependency")
        }),
        Ids::Dense => {
            let first = ids[0].raw();
            let id = |k: u32| GoalId::from_raw(first + k as u64);
            edges(&mut |g, d| w.add_dependency(id(g), id(d)).expect("add_dependency"))
        }
    }
    (w, ids)
}

/// Runs every goal of `w` to completion as a no-op; returns how many ran.
pub fn drain(w: &mut Worker) -> u32 {
    let mut ran = 0;
    loop {
        match w.next_event().expect("next_event") {
            Event::Run { goal, .. } => {
                w.report(goal, Outcome::Built).expect("report");
                ran += 1;
            }
            Event::Done => return ran,
            e => panic!("unexpected event {e:?} in a DAG of plain goals"),
        }
    }
}

/// Seconds to build and run the DAG through the worker, by `clock`.
fn time_worker_by(n: u32, e: &[(u32, u32)], ids: Ids, clock: fn() -> f64) -> f64 {
    let t = clock();
    let (mut w, _) = build_worker(n, ids, |f| e.iter().for_each(|&(g, d)| f(g, d)));
    let ran = drain(&mut w);
    let dt = clock() - t;
    assert_eq!(ran, n);
    drop(w);
    dt
}

/// Wall-clock seconds since an arbitrary origin.
fn wall_now() -> f64 {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Wall-clock seconds to build and run the DAG through the worker.
fn time_worker(n: u32, e: &[(u32, u32)]) -> f64 {
    time_worker_by(n, e, Ids::Table, wall_now)
}

/// Seconds to build the same DAG as flat arrays (CSR of dependents,
/// in-degrees) and walk it in topological order: the floor.
fn time_flat(n: u32, e: &[(u32, u32)]) -> f64 {
    time_flat_by(n, e, wall_now)
}

/// [`time_flat`], by `clock`.
fn time_flat_by(n: u32, e: &[(u32, u32)], clock: fn() -> f64) -> f64 {
    let t = clock();
    let n = n as usize;
    let mut indeg = vec![0u32; n];
    let mut start = vec![0u32; n + 1];
    for &(g, d) in e {
        indeg[g as usize] += 1;
        start[d as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start[..n].to_vec();
    let mut adj = vec![0u32; e.len()];
    for &(g, d) in e {
        adj[fill[d as usize] as usize] = g;
        fill[d as usize] += 1;
    }
    let mut queue: Vec<u32> = Vec::with_capacity(n);
    queue.extend((0..n as u32).filter(|&i| indeg[i as usize] == 0));
    let mut head = 0;
    while head < queue.len() {
        let g = black_box(queue[head]) as usize;
        head += 1;
        for &a in &adj[start[g] as usize..start[g + 1] as usize] {
            indeg[a as usize] -= 1;
            if indeg[a as usize] == 0 {
                queue.push(a);
            }
        }
    }
    let dt = clock() - t;
    assert_eq!(queue.len(), n);
    dt
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// schedule_100k_rust and schedule_1m_scaling.
pub fn run() -> Vec<(&'static str, Measured)> {
    const N: u32 = 100_000;
    let e = edges(N);
    let rounds = 7;
    let (mut wk, mut flat) = (Vec::new(), Vec::new());
    time_worker(N, &e); // warm-up
    for r in 0..rounds {
        if r % 2 == 0 {
            wk.push(time_worker(N, &e));
            flat.push(time_flat(N, &e));
        } else {
            flat.push(time_flat(N, &e));
            wk.push(time_worker(N, &e));
        }
    }
    let rate = |v: &[f64]| v.iter().map(|t| N as f64 / t).collect::<Vec<f64>>();
    let mut out = vec![(
        "schedule_100k_rust",
        Measured::samples(
            &rate(&wk),
            Some(&rate(&flat)),
            format!(
                "{N} plain goals, {} edges, through Worker::add_goal/add_dependency/next_event/\
                 report, the host reading each dependency's id from its table of goal ids; \
                 construction included on both sides; wall time, {rounds} alternating \
                 repetitions",
                e.len()
            ),
        ),
    )];
    // Scaling: 1M against 100k, in pairs, by the thread's CPU time (wall
    // time counts the other processes of a loaded machine, which preempt
    // the long 1M runs far more often than the short 100k ones), each run in
    // a fresh process: in one process a 100k run after a 1M one finds the
    // allocator's memory returned to the kernel and pays its page faults
    // again, while one after another 100k run does not. The host names
    // dependencies by their number in its request (dense ids); the same
    // pairs with the host's id table are measured for the note.
    let pair = |what: &str, pairs: usize| {
        let ratios: Vec<f64> = (0..pairs)
            .map(|r| {
                let (big, small) = if r % 2 == 0 {
                    let b = run_child(1_000_000, what);
                    (b, run_child(N, what))
                } else {
                    let s = run_child(N, what);
                    (run_child(1_000_000, what), s)
                };
                big / small
            })
            .collect();
        ratios
    };
    let ratios = pair("worker", 11);
    let table_scaling = median(pair("worker-table", 7));
    let flat_scaling = median(pair("flat", 7));
    let mut scaling = Measured::samples(
        &ratios,
        None,
        format!(
            "thread CPU time (CLOCK_THREAD_CPUTIME_ID) per goal of 1,000,000 goals over \
             100,000, each run in a fresh process, 11 alternating pairs, the median of the \
             per-pair ratios (wall time moved this figure from 28.6 to 17.4 for the same \
             binary with the load of this shared 2-CPU machine). The host names each \
             dependency by its number in the request: a worker numbers its goals in the order \
             they are added, so goal k is the first id plus k (as GK_BATCH_GOAL(k) names goal \
             k of a batch, and as the flat walk uses the edge list's numbers). A host that \
             instead reads each dependency's id from a table of its own (8 MB at 1M goals, \
             read at random for every edge, as schedule_100k_rust does) scales \
             ×{table_scaling:.1} in this run (7 pairs). The flat-array walk of the same graphs scales \
             ×{flat_scaling:.1}: the DAG's edges are uniformly random, so at 1M goals most \
             accesses leave the caches"
        ),
    );
    scaling.baseline_value = Some(10.0);
    out.push(("schedule_1m_scaling", scaling));
    out
}

/// Runs `--sched-child N WHAT` (WHAT: `worker` or `flat`) in a fresh
/// process; returns the thread CPU seconds of its one run.
fn run_child(n: u32, what: &str) -> f64 {
    let o = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--sched-child", &n.to_string(), what])
        .output()
        .expect("run the scheduler child");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("seconds")
}

/// In a fresh process (`--sched-child N WHAT`): one run of the worker (the
/// host computing dependency ids, `worker`, or reading them from its table,
/// `worker-table`) or of the flat walk over the benchmark DAG of N goals (the
/// edge list is made first, untimed); prints its thread CPU seconds.
pub fn sched_child(n: u32, what: &str) {
    let e = edges(n);
    let t = match what {
        "worker" => time_worker_by(n, &e, Ids::Dense, cpu_now),
        "worker-table" => time_worker_by(n, &e, Ids::Table, cpu_now),
        "flat" => time_flat_by(n, &e, cpu_now),
        _ => panic!("--sched-child N worker|worker-table|flat"),
    };
    println!("{t}");
}

/// Resident bytes of `/proc/self/status` VmRSS.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// In a fresh process (`--memory-child N`): builds a worker with N goals
/// and the DAG's edges, generated on the fly so that no edge list is
/// resident, and prints the resident bytes per goal.
pub fn memory_child(n: u32) {
    let before = rss();
    let (w, ids) = build_worker(n, Ids::Table, |f| for_each_edge(n, f));
    drop(ids);
    let after = rss();
    black_box(&w);
    println!("{}", (after.saturating_sub(before)) as f64 / n as f64);
}

/// goal_memory_bytes, measured in 5 fresh processes.
pub fn memory() -> Vec<(&'static str, Measured)> {
    let v: Vec<f64> = (0..5)
        .map(|_| {
            let o = std::process::Command::new(std::env::current_exe().expect("current_exe"))
                .args(["--memory-child", "1000000"])
                .output()
                .expect("run the memory child");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .expect("bytes/goal")
        })
        .collect();
    vec![(
        "goal_memory_bytes",
        Measured::samples(
            &v,
            None,
            "VmRSS growth over building 1M plain goals and their ~4M edges, in a fresh process \
             (5 processes)",
        ),
    )]
}

/// Thread CPU time in seconds (for the scaling figure and `--sched-detail`:
/// it is less disturbed by other processes than wall time).
fn cpu_now() -> f64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `--sched-detail N`: CPU ns per goal to build and to drain the DAG, and
/// for the flat walk, medians of 5 (a tool for optimising, not a result).
pub fn detail(n: u32) {
    let e = edges(n);
    let (mut b, mut d, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = cpu_now();
        let (mut w, _) = build_worker(n, Ids::Table, |g| e.iter().for_each(|&(x, y)| g(x, y)));
        let t1 = cpu_now();
        assert_eq!(drain(&mut w), n);
        let t2 = cpu_now();
        drop(w);
        let t3 = cpu_now();
        time_flat(n, &e);
        f.push((cpu_now() - t3) * 1e9 / n as f64);
        b.push((t1 - t0) * 1e9 / n as f64);
        d.push((t2 - t1) * 1e9 / n as f64);
    }
    println!(
        "n={n}: build {:.0} ns/goal, drain {:.0} ns/goal, flat walk {:.0} ns/goal",
        median(b),
        median(d),
        median(f)
    );
}
