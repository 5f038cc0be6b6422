//! Builds and runs the C benchmark program against the release library.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report::Measured;
use crate::{root, target_dir};

/// The release library's directory, with the soname link programs need.
fn release_lib_dir() -> PathBuf {
    let dir = target_dir().join("release");
    let so = dir.join("libgoalkeeper.so");
    assert!(
        so.exists(),
        "{} missing: run `cargo build --release` (make bench does)",
        so.display()
    );
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

/// Parses `RESULT name value baseline` lines.
pub fn parse(out: &str) -> Vec<(String, f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 4 && w[0] == "RESULT")
                .then(|| Some((w[1].to_string(), w[2].parse().ok()?, w[3].parse().ok()?)))
                .flatten()
        })
        .collect()
}

/// Runs the lock benchmarks in `store`.
pub fn run(store: &Path) -> Vec<(&'static str, Measured)> {
    let exe = compile("lock_bench");
    let o = Command::new(&exe)
        .arg(store)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run lock_bench");
    assert!(o.status.success(), "lock_bench failed");
    let out = String::from_utf8_lossy(&o.stdout);
    let results = parse(&out);
    let lockset = |n: &str| {
        results
            .iter()
            .find(|(name, ..)| name == n)
            .map(|(_, v, _)| *v)
    };
    let mut v = Vec::new();
    for (name, value, base) in &results {
        let Some(spec) = crate::report::SPECS.iter().find(|s| s.name == name) else {
            continue;
        };
        let note = match spec.name {
            "handoff_cross_process_p50" | "handoff_cross_process_p99" => Some(format!(
                "A unlocks (raw OFD); B is a worker whose build goal waits for the lock; time until \
                 B's next_event returns RUN. B blocked in gk_lockset_acquire instead: p50 {:.1} µs, \
                 p99 {:.1} µs",
                lockset("handoff_lockset_p50").unwrap_or(f64::NAN),
                lockset("handoff_lockset_p99").unwrap_or(f64::NAN)
            )),
            "schedule_100k_c" => Some(
                "the same DAG through gk_worker_add_goal/add_dependency/next_event/report; \
                 baseline: the flat-array walk written in the same C program"
                    .into(),
            ),
            "boundary_call_ns" => Some("gk_worker_audit on an idle worker, from C".into()),
            _ => None,
        };
        v.push((
            spec.name,
            Measured {
                value: Some(*value),
                baseline_value: Some(*base),
                note,
            },
        ));
    }
    v
}
