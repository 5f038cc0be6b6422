//! The crate's layers, and a check that every dependency points down.
//!
//! From the bottom: `error` and `fault` (names nothing of the crate but
//! each other's error type); the read-only views of the system, `inspect`
//! (who holds a lock file, from /proc) and `store_db` (validity from the
//! store's SQLite database); `lock` (lock files and sets); `sched` (the
//! scheduler); `ffi` (the C ABI). A
//! module may name modules of lower layers, never its own layer's
//! neighbours above it. `lifecycle` is the crate root of process state: it
//! calls every layer's fork hooks in the lock order, and every layer may
//! use it for `ForkMutex` and `ensure_installed` (see `src/lifecycle.rs`).
//!
//! The check reads the sources: every `crate::NAME` path and every
//! `use crate::{...}` group. A failure names the file, the line and the
//! arrow that points up. `doc/design.md` describes the layers.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first, with the top-level modules in each.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["error", "fault"]),
    ("views", &["inspect", "store_db"]),
    ("lock", &["lock"]),
    ("sched", &["sched"]),
    ("ffi", &["ffi"]),
];

/// Modules any layer may name: the crate root of process state.
const ROOT: &[&str] = &["lifecycle"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/lock/set.rs` ->
/// `lock`, `src/error.rs` -> `error`), or `None` for the crate root and
/// binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "bin").then(|| name.to_string())
}

/// The crate modules a line names: `crate::x` and `use crate::{x, y::z}`.
fn named_modules(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let code = line.split("//").next().unwrap_or("");
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Every arrow that points up or sideways into another layer's neighbour.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        if ROOT.contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            bad.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS in tests/layers.rs \
                 (and to doc/design.md)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for named in named_modules(line) {
                if named == module || ROOT.contains(&named.as_str()) {
                    continue;
                }
                match layer_of(&named) {
                    Some(theirs) if theirs < mine => {}
                    // error and fault share the base layer: fault may name
                    // error, error names nothing.
                    Some(theirs) if theirs == mine && module != "error" => {}
                    Some(theirs) => bad.push(format!(
                        "{}:{}: {module} ({} layer) names crate::{named} ({} layer): an arrow \
                         pointing up",
                        file.display(),
                        n + 1,
                        LAYERS[mine].0,
                        LAYERS[theirs].0
                    )),
                    None => {}
                }
            }
        }
    }
    bad
}

#[test]
fn every_dependency_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_an_arrow_that_points_up() {
    let dir = std::env::temp_dir().join(format!("gk-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("lock")).unwrap();
    fs::write(
        dir.join("lock/set.rs"),
        "use crate::error::Result;\nuse crate::{inspect::FileKey, sched::Worker};\n",
    )
    .unwrap();
    fs::write(dir.join("error.rs"), "use crate::lock::Owner;\n").unwrap();
    fs::write(dir.join("lifecycle.rs"), "use crate::ffi::x;\n").unwrap();
    let bad = violations(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0].contains("error names crate::lock") || bad[0].contains("names crate::lock"));
    assert!(bad
        .iter()
        .any(|b| b.contains("set.rs:2") && b.contains("crate::sched")));
}
