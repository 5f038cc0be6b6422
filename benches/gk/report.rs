//! The result rows: their names, units, baselines and targets (issues 7
//! and 18: the no-op scheduling figures are shown with floors a daemon would
//! never notice; the daemon's workload is `schedule_10k_build_goals`),
//! `results.json`, and the Markdown table rendered from it.

use serde_json::{json, Value};

/// What issues 7 and 12 ask of one benchmark.
pub struct Spec {
    pub name: &'static str,
    pub unit: &'static str,
    /// What the value is compared with, measured in the same run.
    pub baseline: Option<&'static str>,
    /// The target, in words.
    pub target: &'static str,
    /// Whether (value, ratio) meets the target.
    pub met: fn(f64, Option<f64>) -> bool,
}

/// The target of a figure shown for transparency only (its `met` is null).
pub const NO_TARGET: &str = "— (shown for comparison)";

/// Every benchmark, in the order of the table.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "lock_cycle_c",
        unit: "ns",
        baseline: Some("raw C: open, OFD lock, fstat, unlock, close"),
        target: "ratio ≤ 1.15",
        met: |_, r| r.is_some_and(|r| r <= 1.15),
    },
    Spec {
        name: "lock_cycle_delete_c",
        unit: "ns",
        baseline: Some("raw C cycle with unlink + \"d\" token"),
        target: "ratio ≤ 1.25",
        met: |_, r| r.is_some_and(|r| r <= 1.25),
    },
    Spec {
        name: "lock_set_100_c",
        unit: "ns/path",
        baseline: Some("raw C loop over 100 paths"),
        target: "ratio ≤ 1.15",
        met: |_, r| r.is_some_and(|r| r <= 1.15),
    },
    Spec {
        name: "lock_cycle_guile",
        unit: "ns",
        baseline: Some("raw C cycle"),
        target: "ratio ≤ 1.6",
        met: |_, r| r.is_some_and(|r| r <= 1.6),
    },
    Spec {
        name: "lock_set_100_guile",
        unit: "ns/path",
        baseline: Some("raw C loop over 100 paths"),
        target: "ratio ≤ 1.4",
        met: |_, r| r.is_some_and(|r| r <= 1.4),
    },
    Spec {
        name: "handoff_cross_process_p50",
        unit: "µs",
        baseline: Some("raw C waiter blocked in F_OFD_SETLKW"),
        target: "≤ 100 µs, ratio ≤ 20",
        met: |v, r| v <= 100.0 && r.is_some_and(|r| r <= 20.0),
    },
    Spec {
        name: "handoff_cross_process_p99",
        unit: "µs",
        baseline: Some("raw C waiter blocked in F_OFD_SETLKW"),
        target: "≤ 2000 µs",
        met: |v, _| v <= 2000.0,
    },
    Spec {
        name: "schedule_10k_build_goals",
        unit: "µs/goal",
        baseline: Some("the same system calls and queries in a flat loop"),
        target: "ratio ≤ 1.2",
        met: |_, r| r.is_some_and(|r| r <= 1.2),
    },
    Spec {
        name: "schedule_100k_rust",
        unit: "goals/s",
        baseline: Some("flat-array DAG walk, same binary"),
        target: "≥ 5 M goals/s",
        met: |v, _| v >= 5e6,
    },
    Spec {
        name: "schedule_100k_c",
        unit: "goals/s",
        baseline: Some("flat-array DAG walk, same C program"),
        target: "≥ 3 M goals/s",
        met: |v, _| v >= 3e6,
    },
    Spec {
        name: "schedule_100k_c_per_edge",
        unit: "goals/s",
        baseline: Some("flat-array DAG walk, same C program"),
        target: NO_TARGET,
        met: |_, _| true,
    },
    Spec {
        name: "schedule_100k_c_batch",
        unit: "goals/s",
        baseline: Some("flat-array DAG walk, same C program"),
        target: "≥ 5 M goals/s",
        met: |v, _| v >= 5e6,
    },
    Spec {
        name: "schedule_100k_guile",
        unit: "goals/s",
        baseline: Some("flat-array DAG walk in C, another process"),
        target: "≥ 0.5 M goals/s",
        met: |v, _| v >= 0.5e6,
    },
    Spec {
        name: "schedule_1m_scaling",
        unit: "×",
        baseline: Some("linear"),
        target: "≤ 12",
        met: |v, _| v <= 12.0,
    },
    Spec {
        name: "goal_memory_bytes",
        unit: "bytes/goal",
        baseline: None,
        target: "≤ 150",
        met: |v, _| v <= 150.0,
    },
    Spec {
        name: "boundary_call_ns",
        unit: "ns",
        baseline: Some("gk_noop: an empty exported Rust function"),
        target: "≤ 50 ns",
        met: |v, _| v <= 50.0,
    },
    Spec {
        name: "validity_query_ns",
        unit: "ns",
        baseline: Some("raw rusqlite prepared-statement query"),
        target: "ratio ≤ 1.5",
        met: |_, r| r.is_some_and(|r| r <= 1.5),
    },
];

/// One measured (or missing) figure.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// The median over the repetitions (a target counts as met on it).
    pub value: Option<f64>,
    pub baseline_value: Option<f64>,
    pub note: Option<String>,
    /// The value's spread over the repetitions: (min, max).
    pub spread: Option<(f64, f64)>,
    /// The spread of the per-repetition ratio value/baseline, for figures
    /// measured in pairs (each repetition of the value next to one of the
    /// baseline): (min, max).
    pub ratio_spread: Option<(f64, f64)>,
    /// How many repetitions the figures summarise.
    pub reps: Option<usize>,
}

/// Sorted copy.
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The median (the upper one for an even count, as the C side does).
pub fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    v[v.len() / 2]
}

impl Measured {
    /// A figure from its repetitions: the value's samples and, measured in
    /// pairs with them (sample `i` of each next to the other), the
    /// baseline's. The value is the median, with its min and max; the ratio
    /// is of the medians, with the min and max of the per-pair ratios.
    pub fn samples(value: &[f64], baseline: Option<&[f64]>, note: impl Into<String>) -> Measured {
        assert!(!value.is_empty(), "no samples");
        let v = sorted(value);
        let ratio_spread = baseline.map(|b| {
            assert_eq!(b.len(), value.len(), "paired samples");
            let r = sorted(
                &value
                    .iter()
                    .zip(b)
                    .map(|(x, y)| x / y)
                    .collect::<Vec<f64>>(),
            );
            (r[0], r[r.len() - 1])
        });
        Measured {
            value: Some(v[v.len() / 2]),
            baseline_value: baseline.map(median),
            note: Some(note.into()),
            spread: Some((v[0], v[v.len() - 1])),
            ratio_spread,
            reps: Some(value.len()),
        }
    }
}

/// The `results.json` row for `spec`.
pub fn row(spec: &Spec, m: &Measured) -> Value {
    let ratio = match (m.value, m.baseline_value) {
        (Some(v), Some(b)) if b != 0.0 => Some(v / b),
        _ => None,
    };
    let met = m
        .value
        .filter(|_| spec.target != NO_TARGET)
        .map(|v| (spec.met)(v, ratio));
    let r3 = |r: f64| (r * 1000.0).round() / 1000.0;
    json!({
        "name": spec.name,
        "unit": spec.unit,
        "value": m.value.map(round),
        "min": m.spread.map(|s| round(s.0)),
        "max": m.spread.map(|s| round(s.1)),
        "reps": m.reps,
        "baseline": spec.baseline,
        "baseline_value": m.baseline_value.map(round),
        "ratio": ratio.map(r3),
        "ratio_min": m.ratio_spread.map(|s| r3(s.0)),
        "ratio_max": m.ratio_spread.map(|s| r3(s.1)),
        "target": spec.target,
        "met": met,
        "note": m.note,
    })
}

fn round(x: f64) -> f64 {
    if x.abs() >= 1000.0 {
        x.round()
    } else {
        (x * 100.0).round() / 100.0
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        None => "—".into(),
        Some(x) if x.abs() >= 1e6 => format!("{:.2} M", x / 1e6),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// `min–max` of a row's value, or of its ratio.
fn spread(r: &Value, lo: &str, hi: &str, f: fn(&Value) -> String) -> String {
    if r[lo].is_null() || r[hi].is_null() {
        return "—".into();
    }
    format!("{}–{}", f(&r[lo]), f(&r[hi]))
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.2}"))
}

/// The Markdown table of doc/performance.md, from the rows of `results.json`.
pub fn markdown(rows: &[Value], context: &str) -> String {
    let mut s = String::new();
    s.push_str(
        "| benchmark | value (median) | min–max | baseline (same run) | baseline value | ratio | \
         ratio min–max | target | met |\n",
    );
    s.push_str("|---|---:|---:|---|---:|---:|---:|---|:---:|\n");
    let mut notes = Vec::new();
    for r in rows {
        let unit = r["unit"].as_str().unwrap_or("");
        let val = if r["value"].is_null() {
            "not measured".to_string()
        } else {
            format!("{} {unit}", num(&r["value"]))
        };
        let met = match r["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let mut name = format!("`{}`", r["name"].as_str().unwrap_or("?"));
        if let Some(n) = r["note"].as_str() {
            let i = match notes.iter().position(|x| x == n) {
                Some(i) => i,
                None => {
                    notes.push(n.to_string());
                    notes.len() - 1
                }
            };
            name.push_str(&format!(" [{}]", i + 1));
        }
        s.push_str(&format!(
            "| {name} | {val} | {} | {} | {} | {} | {} | {} | {met} |\n",
            spread(r, "min", "max", num),
            r["baseline"].as_str().unwrap_or("—"),
            num(&r["baseline_value"]),
            ratio(&r["ratio"]),
            spread(r, "ratio_min", "ratio_max", ratio),
            r["target"].as_str().unwrap_or(""),
        ));
    }
    s.push('\n');
    for (i, n) in notes.iter().enumerate() {
        s.push_str(&format!("[{}] {n}  \n", i + 1));
    }
    if !context.is_empty() {
        s.push_str(&format!("\n{context}\n"));
    }
    s
}

/// The plain-text table printed by `make bench`.
pub fn text(rows: &[Value]) -> String {
    let mut s = format!(
        "{:<27} {:>14} {:>19} {:>12} {:>8} {:>11}  {:<28} {}\n",
        "benchmark", "value", "min-max", "baseline", "ratio", "ratio range", "target", "met"
    );
    for r in rows {
        let val = if r["value"].is_null() {
            "—".into()
        } else {
            format!("{} {}", num(&r["value"]), r["unit"].as_str().unwrap_or(""))
        };
        let met = match r["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        s.push_str(&format!(
            "{:<27} {:>14} {:>19} {:>12} {:>8} {:>11}  {:<28} {met}\n",
            r["name"].as_str().unwrap_or("?"),
            val,
            spread(r, "min", "max", num),
            num(&r["baseline_value"]),
            ratio(&r["ratio"]),
            spread(r, "ratio_min", "ratio_max", ratio),
            r["target"].as_str().unwrap_or(""),
        ));
    }
    s
}
