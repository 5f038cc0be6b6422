//! Builds and runs the C benchmark program against the release library
//! (built with the `noop` feature).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report::Measured;
use crate::{root, target_dir};

/// The directory of the benchmarks' library, with the soname link programs
/// need: the release library with the `noop` feature (which only adds the
/// export `gk_noop`, the baseline of `boundary_call_ns`), built once per run
/// apart from the production library in target/release, which never has it.
fn release_lib_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let target = target_dir().join("bench-lib");
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "goalkeeper", "--release", "--lib", "--quiet"])
            .args(["--features", "noop"])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build --release --features noop failed");
    });
    let dir = target.join("release");
    let link = dir.join(format!(
        "libgoalkeeper.so.{}",
        env!("CARGO_PKG_VERSION_MAJOR")
    ));
    if std::fs::read_link(&link).is_err() {
        let _ = std::os::unix::fs::symlink("libgoalkeeper.so", &link);
    }
    dir
}

/// Compiles `benches/c/<name>.c` with -O2 against the header and the release library.
pub fn compile(name: &str) -> PathBuf {
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let tool = cc::Build::new()
        .target(&target)
        .host(&target)
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let lib = release_lib_dir();
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let out = out_dir.join(name);
    let o = tool
        .to_command()
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join(format!("benches/c/{name}.c")))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lgoalkeeper")
        .output()
        .expect("run the C compiler");
    assert!(
        o.status.success(),
        "compiling {name}.c failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// One `RESULT name value baseline min max ratio_min ratio_max reps` line
/// (`-` where a field has no value).
pub struct CResult {
    pub name: String,
    pub value: f64,
    pub baseline: f64,
    pub spread: Option<(f64, f64)>,
    pub ratio_spread: Option<(f64, f64)>,
    pub reps: Option<usize>,
}

/// Parses the `RESULT` lines.
pub fn parse(out: &str) -> Vec<CResult> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 4 || w[0] != "RESULT" {
                return None;
            }
            let f = |i: usize| w.get(i).and_then(|v| v.parse::<f64>().ok());
            let pair = |i: usize| Some((f(i)?, f(i + 1)?));
            Some(CResult {
                name: w[1].to_string(),
                value: f(2)?,
                baseline: f(3)?,
                spread: pair(4),
                ratio_spread: pair(6),
                reps: w.get(8).and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// The value of `INFO name key value` in the program's output.
fn info(out: &str, name: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first() != Some(&"INFO") || w.get(1) != Some(&name) {
            return None;
        }
        let i = w.iter().position(|x| *x == key)?;
        w.get(i + 1)?.parse().ok()
    })
}

/// A command that runs a C program of [`compile`] on the benchmarks'
/// library. `cargo bench` puts target/release, the production library
/// without `gk_noop`, on `LD_LIBRARY_PATH`, which the dynamic loader
/// searches before a program's runpath.
pub fn command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env("LD_LIBRARY_PATH", release_lib_dir());
    c
}

/// Compiles `benches/c/NAME.c` and runs it on `store`; its standard output.
fn run_c(name: &str, store: &Path) -> String {
    let o = command(&compile(name))
        .arg(store)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(o.status.success(), "{name} failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `benches/c/syscall_frames.c` in `store` and prints what it measured
/// (no figure of the table: it explains the lock cycle's, see
/// doc/design.md#where-an-uncontended-lock-cycles-time-goes).
pub fn syscall_frames(store: &Path) {
    for line in run_c("syscall_frames", store).lines() {
        eprintln!("  {line}");
    }
}

/// Runs the lock benchmarks in `store`.
pub fn run(store: &Path) -> Vec<(&'static str, Measured)> {
    let out = run_c("lock_bench", store);
    let results = parse(&out);
    let lockset = |n: &str| results.iter().find(|r| r.name == n).map(|r| r.value);
    let mut v = Vec::new();
    for r in &results {
        let Some(spec) = crate::report::SPECS.iter().find(|s| s.name == r.name) else {
            continue;
        };
        let note = match spec.name {
            "handoff_cross_process_p50" | "handoff_cross_process_p99" => Some(format!(
                "A unlocks (raw OFD); B is a worker whose build goal waits for the lock; time until \
                 B's next_event returns RUN. B blocked in gk_lockset_acquire instead: p50 {:.1} µs, \
                 p99 {:.1} µs. Spread: the same quantile over 5 consecutive blocks of the \
                 iterations, in which the waiters take turns",
                lockset("handoff_lockset_p50").unwrap_or(f64::NAN),
                lockset("handoff_lockset_p99").unwrap_or(f64::NAN)
            )),
            "schedule_100k_c" => Some(
                "\"single calls\": 3 calls per goal, each goal added with its dependencies in one \
                 call (gk_worker_add_goals with one goal; the host looks its dependencies' ids up \
                 in its own table), then gk_worker_next_event and gk_worker_report one at a time; \
                 construction included. Baseline: the flat-array walk written in the same C \
                 program; the C loops and the walk take turns in each of 7 rounds"
                    .into(),
            ),
            "schedule_100k_c_per_edge" => {
                let edges = info(&out, "schedule_100k_c", "edges").unwrap_or(f64::NAN);
                let per_edge = info(&out, "schedule_100k_c", "per_edge_ns").unwrap_or(f64::NAN);
                Some(format!(
                    "the loop of ABI 1, 7 calls per goal: gk_worker_add_goal, one \
                     gk_worker_add_dependency per edge (4), next_event, report; shown without a \
                     target, for comparison with schedule_100k_c. One add_dependency call: \
                     {per_edge:.0} ns ({edges:.0} edges, {:.0} ns per goal)",
                    per_edge * edges / 100_000.0
                ))
            }
            "schedule_100k_c_batch" => Some(
                "the batch calls: the whole request in one gk_worker_add_goals (the host writes \
                 its edges as GK_BATCH_GOAL references, CSR style, in the measured time), then \
                 gk_worker_next_events for up to 256 events and gk_worker_report_many for their \
                 outcomes"
                    .into(),
            ),
            "boundary_call_ns" => Some("gk_worker_audit on an idle worker, from C".into()),
            _ => None,
        };
        v.push((
            spec.name,
            Measured {
                value: Some(r.value),
                baseline_value: Some(r.baseline),
                note,
                spread: r.spread,
                ratio_spread: r.ratio_spread,
                reps: r.reps,
            },
        ));
    }
    v
}
