//! The Guile figures: `with-path-locks` from Guile (benches/guile/lock_bench.scm)
//! against the raw C cycle (benches/c/lock_bench.c --serve), two long-lived
//! processes driven batch by batch, alternately; and the scheduler through
//! `run-worker` (benches/guile/sched_bench.scm) against the flat-array walk
//! of the same DAG in C.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::report::Measured;
use crate::{root, target_dir};

struct Server {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Server {
    fn start(cmd: &mut Command) -> std::io::Result<Server> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let to = child.stdin.take().expect("stdin");
        let from = BufReader::new(child.stdout.take().expect("stdout"));
        Ok(Server { child, to, from })
    }

    /// Sends one command and parses the answer (ns per operation).
    fn ask(&mut self, cmd: &str) -> Result<f64, String> {
        writeln!(self.to, "{cmd}").map_err(|e| format!("{cmd}: {e}"))?;
        let mut line = String::new();
        self.from
            .read_line(&mut line)
            .map_err(|e| format!("{cmd}: {e}"))?;
        line.trim()
            .parse()
            .map_err(|_| format!("{cmd}: unexpected answer {:?}", line.trim()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(why: String) -> Vec<(&'static str, Measured)> {
    ["lock_cycle_guile", "lock_set_100_guile"]
        .into_iter()
        .map(|n| {
            (
                n,
                Measured {
                    note: Some(why.clone()),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Runs the Guile comparison in `store`, with the C program `lock_bench`.
pub fn run(store: &Path, lock_bench: &Path) -> Vec<(&'static str, Measured)> {
    match measure(store, lock_bench) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("guile benchmarks not measured: {e}");
            missing(format!("not measured: {e}"))
        }
    }
}

fn measure(store: &Path, lock_bench: &Path) -> Result<Vec<(&'static str, Measured)>, String> {
    let guile = std::env::var("GUILE").unwrap_or_else(|_| "guile".into());
    if !root().join("scheme/goalkeeper/locks.scm").exists() {
        return Err("the Guile bindings (scheme/goalkeeper) are not in this tree".into());
    }
    let lib = target_dir().join("release/libgoalkeeper.so");
    let log =
        std::fs::File::create(target_dir().join("bench/guile.log")).map_err(|e| e.to_string())?;
    let mut g = Server::start(
        Command::new(&guile)
            .arg(root().join("benches/guile/lock_bench.scm"))
            .arg(store)
            .env("GUILE_LOAD_PATH", root().join("scheme"))
            .env("GOALKEEPER_LIBRARY", &lib)
            .env("GUILE_AUTO_COMPILE", "1")
            .stderr(log),
    )
    .map_err(|e| format!("cannot run {guile}: {e}"))?;
    let mut c = Server::start(crate::cbench::command(lock_bench).arg(store).arg("--serve"))
        .map_err(|e| e.to_string())?;
    let guile_err = |e: String| {
        format!(
            "{e} (see {})",
            target_dir().join("bench/guile.log").display()
        )
    };
    // Warm up (Guile's first call also compiles and loads the modules).
    g.ask("cycle 500").map_err(guile_err)?;
    g.ask("set 5").map_err(guile_err)?;
    c.ask("raw_cycle 500")?;
    c.ask("raw_set 5")?;
    let (mut gc, mut cc, mut gs, mut cs) = (vec![], vec![], vec![], vec![]);
    for r in 0..21 {
        if r % 2 == 0 {
            gc.push(g.ask("cycle 1500").map_err(guile_err)?);
            cc.push(c.ask("raw_cycle 1500")?);
            gs.push(g.ask("set 15").map_err(guile_err)?);
            cs.push(c.ask("raw_set 15")?);
        } else {
            cc.push(c.ask("raw_cycle 1500")?);
            gc.push(g.ask("cycle 1500").map_err(guile_err)?);
            cs.push(c.ask("raw_set 15")?);
            gs.push(g.ask("set 15").map_err(guile_err)?);
        }
    }
    Ok(vec![
        (
            "lock_cycle_guile",
            Measured::samples(
                &gc,
                Some(&cc),
                "with-path-locks on 1 path (Guile 3, compiled), against the raw C cycle in \
                 another process, batches alternated",
            ),
        ),
        (
            "lock_set_100_guile",
            Measured::samples(
                &gs,
                Some(&cs),
                "with-path-locks on 100 paths, against the raw C loop",
            ),
        ),
    ])
}

/// Runs `schedule_100k_guile`, with the C program `lock_bench` for the
/// baseline.
pub fn run_sched(lock_bench: &Path) -> Vec<(&'static str, Measured)> {
    match measure_sched(lock_bench) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("guile scheduler benchmark not measured: {e}");
            vec![(
                "schedule_100k_guile",
                Measured {
                    note: Some(format!("not measured: {e}")),
                    ..Default::default()
                },
            )]
        }
    }
}

fn measure_sched(lock_bench: &Path) -> Result<Vec<(&'static str, Measured)>, String> {
    const N: u32 = 100_000;
    let guile = std::env::var("GUILE").unwrap_or_else(|_| "guile".into());
    if !root().join("scheme/goalkeeper/scheduler.scm").exists() {
        return Err("the Guile bindings (scheme/goalkeeper) are not in this tree".into());
    }
    // The DAG's edges, (goal, dependency) pairs of native u32s, grouped by
    // goal: the same graph as the other schedule figures.
    let dag = target_dir().join(format!("bench/dag-{N}.bin"));
    let bytes: Vec<u8> = crate::sched::edges(N)
        .into_iter()
        .flat_map(|(g, d)| g.to_ne_bytes().into_iter().chain(d.to_ne_bytes()))
        .collect();
    std::fs::write(&dag, bytes).map_err(|e| format!("{}: {e}", dag.display()))?;
    let lib = target_dir().join("release/libgoalkeeper.so");
    let log_path = target_dir().join("bench/guile-sched.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut g = Server::start(
        Command::new(&guile)
            .arg(root().join("benches/guile/sched_bench.scm"))
            .arg(&dag)
            .env("GUILE_LOAD_PATH", root().join("scheme"))
            .env("GOALKEEPER_LIBRARY", &lib)
            .env("GUILE_AUTO_COMPILE", "1")
            .stderr(log),
    )
    .map_err(|e| format!("cannot run {guile}: {e}"))?;
    let scratch = target_dir().join("bench");
    let mut c = Server::start(
        crate::cbench::command(lock_bench)
            .arg(&scratch)
            .arg("--serve"),
    )
    .map_err(|e| e.to_string())?;
    let guile_err = |e: String| format!("{e} (see {})", log_path.display());
    // Warm up (the first run also compiles and loads the modules).
    g.ask("sched").map_err(guile_err)?;
    c.ask(&format!("raw_walk {N}"))?;
    let (mut gs, mut cs) = (vec![], vec![]);
    let rate = |ns: f64| 1e9 / ns;
    for r in 0..7 {
        if r % 2 == 0 {
            gs.push(rate(g.ask("sched").map_err(guile_err)?));
            cs.push(rate(c.ask(&format!("raw_walk {N}"))?));
        } else {
            cs.push(rate(c.ask(&format!("raw_walk {N}"))?));
            gs.push(rate(g.ask("sched").map_err(guile_err)?));
        }
    }
    Ok(vec![(
        "schedule_100k_guile",
        Measured::samples(
            &gs,
            Some(&cs),
            "the same DAG from Guile 3 (compiled): the goal specifications made (goal-spec), \
             added in one worker-add-goals! call, every goal run as a no-op through run-worker \
             (events and reports in batches of up to 256), the worker closed; against the \
             flat-array walk in C in another process, runs alternated",
        ),
    )])
}
