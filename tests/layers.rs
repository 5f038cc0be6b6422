//! The crate's modules, and two checks on how they name each other.
//!
//! The top-level modules form layers, bottom first: the base (`base`, the
//! process-wide primitives; `error`; `fault`, test-only fault injection),
//! the read-only views of the system (`inspect`, who holds a lock file,
//! from /proc; `store_db`, validity from the store's SQLite database),
//! `lock` (lock files and sets), `sched` (the scheduler), `ffi` (the C ABI),
//! and `lifecycle` (the load-time and fork handlers, which name every layer
//! and which nothing names). The crate root (`lib.rs`) only re-exports.
//!
//! 1. Every arrow between top-level modules points down a layer (or stays
//!    in the layer, between two of its modules).
//! 2. No module names, directly or through others, a module that names it:
//!    no circle. A module is a file (`src/sched/worker.rs` is
//!    `sched::worker`, `src/ffi/mod.rs` is `ffi`) or an inline module in
//!    one (`mod tests { ... }`). A child that named an item its parent
//!    re-exports would make a circle with the parent's `pub use`: children
//!    name their siblings' modules (`super::slots::Slots`).
//!
//! Arrows are read from the code (comments left out): every path that
//! starts with `crate::`, `super::` or `self::`, and every path that starts
//! with the name of a child module (`use worker::Worker;` in `mod.rs`),
//! with `use` groups (`use crate::{a::B, c::{self, D}}`) expanded, over
//! several lines if need be. A path names the longest module it starts
//! with. A failure names the file, the line and the arrow. `doc/design.md`
//! describes the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first, with the top-level modules in each.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["base", "error", "fault"]),
    ("views", &["inspect", "store_db"]),
    ("lock", &["lock"]),
    ("sched", &["sched"]),
    ("ffi", &["ffi"]),
    ("lifecycle", &["lifecycle"]),
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// One arrow: from module `from` (in `file` at `line`) to module `to`.
#[derive(Clone, Debug)]
struct Arrow {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
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

/// The module a file is (`""` for the crate root), or `None` for binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts.join("::"))
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

fn parent(m: &str) -> String {
    m.rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_string())
}

/// The code of `text` with comments blanked out (line structure kept).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| {
            let mut in_str = false;
            let b = l.as_bytes();
            for i in 0..b.len() {
                match b[i] {
                    b'"' if i == 0 || b[i - 1] != b'\\' => in_str = !in_str,
                    b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &l[..i],
                    _ => {}
                }
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cursor over code, counting lines.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.b.len()
            && (self.b[self.i].is_ascii_alphanumeric() || self.b[self.i] == b'_')
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }
    fn eat(&mut self, s: &str) -> bool {
        let save = self.i;
        self.skip_ws();
        if self.b[self.i..].starts_with(s.as_bytes()) {
            self.i += s.len();
            return true;
        }
        self.i = save;
        false
    }
    /// The rest of a path after `prefix` (whose `::` was just read): more
    /// segments, or a group; every full path goes to `out`.
    fn path_rest(&mut self, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.eat("{") {
            loop {
                if self.eat("}") {
                    return;
                }
                match self.ident() {
                    Some(seg) if seg == "self" => out.push(prefix.clone()),
                    Some(seg) => {
                        let mut p = prefix.clone();
                        p.push(seg);
                        if self.eat("::") {
                            self.path_rest(p, out);
                        } else {
                            out.push(p);
                        }
                    }
                    None => {
                        // `*`, `as`, a stray token: step over it.
                        if self.i < self.b.len() {
                            self.i += 1;
                        } else {
                            return;
                        }
                    }
                }
                if self.eat("as") {
                    self.ident();
                }
                self.eat(",");
            }
        }
        let mut p = prefix;
        match self.ident() {
            Some(seg) => {
                p.push(seg);
                if self.eat("::") {
                    return self.path_rest(p, out);
                }
                out.push(p);
            }
            None => out.push(p), // `a::*`
        }
    }
}

/// Every path in `code` that starts with `crate`, `super`, `self` or one
/// of `children`, with the line it starts on.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<(usize, Vec<String>)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut c = Cursor { b, i: 0 };
    while c.i < b.len() {
        let ch = b[c.i];
        let boundary = c.i == 0
            || !(b[c.i - 1].is_ascii_alphanumeric() || b[c.i - 1] == b'_' || b[c.i - 1] == b':');
        if !(boundary && (ch.is_ascii_alphabetic() || ch == b'_')) {
            c.i += 1;
            continue;
        }
        let at = c.i;
        let first = c.ident().unwrap();
        let known =
            ["crate", "super", "self"].contains(&first.as_str()) || children.contains(&first);
        if known && b[c.i..].starts_with(b"::") {
            c.i += 2;
            let line = 1 + b[..at].iter().filter(|&&x| x == b'\n').count();
            let mut found = Vec::new();
            c.path_rest(vec![first], &mut found);
            out.extend(found.into_iter().map(|p| (line, p)));
        }
    }
    out
}

/// The crate's modules (files and inline modules) and their arrows.
fn arrows(src: &Path) -> (BTreeSet<String>, Vec<Arrow>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    // Each module with the code it holds: (module, file, first line, code).
    let mut units: Vec<(String, PathBuf, usize, String)> = Vec::new();
    for file in &files {
        let Some(module) = module_of(src, file) else {
            continue;
        };
        let code = strip_comments(&fs::read_to_string(file).unwrap());
        // Inline modules at column 0 (`mod tests {` ... `}`) are modules of
        // their own; the rest of the file is the file's module.
        let (mut outer, mut inner, mut name) = (String::new(), String::new(), None);
        for (n, l) in code.lines().enumerate() {
            let t = l
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            match &name {
                None if t.starts_with("mod ") && l.ends_with('{') && !l.starts_with(' ') => {
                    let m = t["mod ".len()..].trim_end_matches('{').trim().to_string();
                    name = Some((m, n + 1));
                    outer.push('\n');
                    inner.clear();
                }
                Some((m, first)) if l == "}" => {
                    units.push((join(&module, m), file.clone(), *first, inner.clone()));
                    name = None;
                    outer.push('\n');
                }
                Some(_) => {
                    inner.push_str(l);
                    inner.push('\n');
                    outer.push('\n');
                }
                None => {
                    outer.push_str(l);
                    outer.push('\n');
                }
            }
        }
        units.push((module, file.clone(), 0, outer));
    }
    let modules: BTreeSet<String> = units.iter().map(|u| u.0.clone()).collect();
    let mut all = Vec::new();
    for (module, file, first, code) in &units {
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| parent(m) == *module && !m.is_empty())
            .map(|m| m.rsplit("::").next().unwrap().to_string())
            .collect();
        for (line, p) in paths(code, &children) {
            let mut base = module.clone();
            let mut segs = p.as_slice();
            match segs[0].as_str() {
                "crate" => {
                    base.clear();
                    segs = &segs[1..];
                }
                "self" => segs = &segs[1..],
                "super" => {
                    while segs.first().is_some_and(|s| s == "super") {
                        base = parent(&base);
                        segs = &segs[1..];
                    }
                }
                _ => {}
            }
            // The longest module the path starts with.
            let mut to = base.clone();
            for s in segs {
                let next = join(&to, s);
                if !modules.contains(&next) {
                    break;
                }
                to = next;
            }
            if to != *module {
                all.push(Arrow {
                    from: module.clone(),
                    to,
                    file: file.clone(),
                    line: first + line,
                });
            }
        }
    }
    (modules, all)
}

/// Arrows between top-level modules that point up, or that name the crate
/// root or a module in no layer.
fn upward(arrows: &[Arrow]) -> Vec<String> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut bad = Vec::new();
    for a in arrows {
        let (f, t) = (top(&a.from), top(&a.to));
        if f == t || f.is_empty() {
            continue; // inside one top-level module, or the crate root's re-exports
        }
        let what = match (layer_of(&f), layer_of(&t)) {
            (None, _) | (_, None) if !t.is_empty() => continue, // reported apart
            (_, None) => format!("{} names the crate root; name the module instead", a.from),
            (None, _) => continue,
            (Some(lf), Some(lt)) if lt <= lf => continue,
            (Some(lf), Some(lt)) => format!(
                "{} ({} layer) names {} ({} layer): an arrow pointing up",
                a.from, LAYERS[lf].0, a.to, LAYERS[lt].0
            ),
        };
        bad.push(format!("{}:{}: {what}", a.file.display(), a.line));
    }
    bad
}

/// The circles among the modules: each strongly connected component of
/// more than one module, with the arrows inside it.
fn circles(modules: &BTreeSet<String>, arrows: &[Arrow]) -> Vec<String> {
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in arrows {
        next.entry(&a.from).or_default().insert(&a.to);
    }
    // Reachability by search from each module (a few hundred arrows).
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(m) = todo.pop() {
            for &n in next.get(m).into_iter().flatten() {
                if seen.insert(n) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<&str>> =
        modules.iter().map(|m| (m.as_str(), reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in modules {
        if done.contains(m.as_str()) || !reaches[m.as_str()].contains(m.as_str()) {
            continue;
        }
        let scc: BTreeSet<&str> = reaches[m.as_str()]
            .iter()
            .copied()
            .filter(|n| reaches[n].contains(m.as_str()))
            .collect();
        done.extend(scc.iter().copied());
        let inside: BTreeSet<String> = arrows
            .iter()
            .filter(|a| scc.contains(a.from.as_str()) && scc.contains(a.to.as_str()))
            .map(|a| format!("  {}:{}: {} -> {}", a.file.display(), a.line, a.from, a.to))
            .collect();
        out.push(format!(
            "a circle among {}:\n{}",
            scc.iter().copied().collect::<Vec<_>>().join(", "),
            inside.into_iter().collect::<Vec<_>>().join("\n")
        ));
    }
    out
}

fn check(src: &Path) -> Vec<String> {
    let (modules, arrows) = arrows(src);
    let mut bad: Vec<String> = modules
        .iter()
        .filter(|m| !m.is_empty() && !m.contains("::") && layer_of(m).is_none())
        .map(|m| {
            format!("module `{m}` is in no layer; add it to LAYERS in tests/layers.rs (and to doc/design.md)")
        })
        .collect();
    bad.extend(upward(&arrows));
    bad.extend(circles(&modules, &arrows));
    bad
}

#[test]
fn every_dependency_points_down_and_no_module_is_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = check(&src);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

/// The check itself sees an arrow pointing up (through `crate::` and a
/// `use` group over several lines), a circle made through `super::`
/// (a child naming what its parent re-exports), a circle through a child
/// module's relative path, and a module in no layer.
#[test]
fn the_check_sees_arrows_up_and_circles() {
    let dir = std::env::temp_dir().join(format!("gk-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["lock", "sched", "ffi"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let files = [
        ("lib.rs", "mod lock;\npub use lock::LockSet;\n"),
        ("error.rs", "// use crate::lock::Owner; (a comment)\n"),
        ("lock/mod.rs", "mod set;\npub use set::LockSet;\n"),
        (
            "lock/set.rs",
            "use crate::error::Result;\nuse crate::{\n    inspect::FileKey,\n    sched::Worker,\n};\n",
        ),
        ("sched/mod.rs", "mod a;\nmod b;\npub use a::A;\n"),
        ("sched/a.rs", "use super::b::B;\npub struct A;\n"),
        ("sched/b.rs", "use super::A; // the parent's re-export\n"),
        ("ffi/mod.rs", "mod x;\nfn f() { x::g() }\n"),
        ("ffi/x.rs", "pub fn g() { super::f() }\n"),
        ("extra.rs", "fn f() {}\n"),
        ("inspect.rs", "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
    ];
    for (f, text) in files {
        fs::write(dir.join(f), text).unwrap();
    }
    let bad = check(&dir);
    fs::remove_dir_all(&dir).unwrap();
    let all = bad.join("\n");
    assert_eq!(bad.len(), 4, "{all}");
    assert!(all.contains("module `extra` is in no layer"), "{all}");
    assert!(
        all.contains("set.rs:2: lock::set (lock layer) names sched (sched layer)"),
        "{all}"
    );
    assert!(
        all.contains("a circle among sched, sched::a, sched::b"),
        "{all}"
    );
    assert!(all.contains("sched/b.rs:1: sched::b -> sched"), "{all}");
    assert!(all.contains("a circle among ffi, ffi::x"), "{all}");
    assert!(!all.contains("error"), "comments are not code: {all}");
}
