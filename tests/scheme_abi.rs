//! One source of ABI truth on the Scheme side: the enums and structs that
//! `(goalkeeper abi)` declares must agree with `include/goalkeeper.h`.
//!
//! Guile loads `scheme/goalkeeper/abi.scm` (from source, without the
//! library) and prints what it declares: every enum constant with its
//! number, every struct with its size, alignment and fields (C name, C type,
//! offset, size). This test then checks it twice:
//!
//! * against the header as text (it is cbindgen output, regular enough to
//!   read): every `gk_*` enum of the header has a Scheme table with exactly
//!   its constants and numbers; every struct the Scheme side declares exists
//!   in the header with the same fields, in the same order, of the same
//!   types (typedefs resolved; any pointer is a pointer), and the offsets
//!   and size the C layout rules give for them;
//! * by the C compiler: a C file of `_Static_assert`s generated from the
//!   Scheme declarations (each constant's value; each struct's `sizeof`,
//!   `_Alignof`, each field's `offsetof` and size) must compile against
//!   the header.
//!
//! A second test plants mismatches in scratch copies of `abi.scm` (a wrong
//! number, two fields swapped, a field's type changed, a constant and a
//! whole enum left out) and checks that each is caught, so the first test
//! can fail. Guile is required, as for tests/scheme.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `guile` from `PATH`, or a failure that says how to get it.
fn guile() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["guile", "guile-3.0"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "Guile 3.0 is required for the Scheme ABI test and was not found in PATH \
                 (Debian: apt-get install guile-3.0; `.ci/run` does this)"
            )
        })
}

/// A field as both sides describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    name: String,
    /// The C type after typedef resolution: `uint32_t`, `bool`, ...;
    /// `pointer` for any pointer.
    ctype: String,
    offset: usize,
    size: usize,
}

/// A struct as both sides describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Struct {
    size: usize,
    align: usize,
    fields: Vec<Field>,
}

/// Enums (name -> constant -> value) and structs (name -> layout).
#[derive(Debug, Default)]
struct Abi {
    enums: BTreeMap<String, BTreeMap<String, i64>>,
    structs: BTreeMap<String, Struct>,
}

// ---------------------------------------------------------------------------
// The Scheme side.
// ---------------------------------------------------------------------------

/// Prints `(abi-description)` one datum per line.
const DUMP: &str = r#"
(use-modules (goalkeeper abi) (ice-9 match))
(for-each
 (match-lambda
   (('enum name . constants)
    (format #t "enum ~a~%" name)
    (for-each (match-lambda
                ((constant value) (format #t "constant ~a ~a ~a~%" name constant value)))
              constants))
   (('struct name size alignment . fields)
    (format #t "struct ~a ~a ~a~%" name size alignment)
    (for-each (match-lambda
                ((field ctype offset size)
                 (format #t "field ~a ~a ~a ~a ~a~%" name field ctype offset size)))
              fields)))
 (abi-description))
"#;

/// What the `(goalkeeper abi)` module found under `scheme_dir` declares.
fn scheme_abi(scheme_dir: &Path) -> Result<Abi, String> {
    let out = common::run_bounded(
        Command::new(guile())
            .arg("--no-auto-compile")
            .arg("-L")
            .arg(scheme_dir)
            .arg("-c")
            .arg(DUMP)
            .env_remove("GUILE_LOAD_COMPILED_PATH")
            .env("GUILE_AUTO_COMPILE", "0"),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "guile could not describe the Scheme ABI ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut abi = Abi::default();
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| -> Result<usize, String> {
            s.parse().map_err(|_| format!("bad number in {line:?}"))
        };
        match w.as_slice() {
            ["enum", name] => {
                abi.enums.entry(name.to_string()).or_default();
            }
            ["constant", name, constant, value] => {
                let v = value
                    .parse()
                    .map_err(|_| format!("bad value in {line:?}"))?;
                if abi
                    .enums
                    .entry(name.to_string())
                    .or_default()
                    .insert(constant.to_string(), v)
                    .is_some()
                {
                    return Err(format!("{constant} is declared twice in Scheme"));
                }
            }
            ["struct", name, size, align] => {
                abi.structs.insert(
                    name.to_string(),
                    Struct {
                        size: num(size)?,
                        align: num(align)?,
                        fields: Vec::new(),
                    },
                );
            }
            ["field", name, field, ctype, offset, size] => {
                abi.structs
                    .get_mut(*name)
                    .ok_or_else(|| format!("field before its struct: {line:?}"))?
                    .fields
                    .push(Field {
                        name: field.to_string(),
                        ctype: ctype.to_string(),
                        offset: num(offset)?,
                        size: num(size)?,
                    });
            }
            _ => return Err(format!("unexpected line from guile: {line:?}")),
        }
    }
    Ok(abi)
}

// ---------------------------------------------------------------------------
// The header side.
// ---------------------------------------------------------------------------

/// The header without comments and preprocessor lines, as tokens:
/// identifiers, numbers and single punctuation characters.
fn tokens(header: &str) -> Vec<String> {
    let mut text = String::new();
    let mut rest = header;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            text.push(' ');
        } else if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else {
            let c = rest.chars().next().expect("non-empty");
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    let mut toks = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                let mut t = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || (d == '-' && t.is_empty()) {
                        t.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                toks.push(t);
            } else {
                toks.push(c.to_string());
                chars.next();
            }
        }
    }
    toks
}

/// Size and alignment of a C scalar type on x86_64 Linux (the only target
/// of these tests, as of `tests/common`).
fn scalar(ctype: &str) -> Option<(usize, usize)> {
    Some(match ctype {
        "bool" | "uint8_t" | "int8_t" | "char" => (1, 1),
        "uint16_t" | "int16_t" => (2, 2),
        "uint32_t" | "int32_t" | "int" | "float" => (4, 4),
        "uint64_t" | "int64_t" | "size_t" | "double" | "pointer" => (8, 8),
        _ => return None,
    })
}

/// The header's enums and structs, with struct layouts computed by the C
/// rules from the field types.
fn header_abi(header: &str) -> Result<Abi, String> {
    let t = tokens(header);
    let mut abi = Abi::default();
    let mut typedefs: BTreeMap<String, String> = BTreeMap::new();
    let mut raw_structs: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let close = |from: usize, open: &str, shut: &str| -> Result<usize, String> {
        let mut depth = 0;
        for (i, tok) in t.iter().enumerate().skip(from) {
            if tok == open {
                depth += 1;
            } else if tok == shut {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
        }
        Err(format!("unbalanced {open} at token {from}"))
    };
    let enum_body = |from: usize, to: usize| -> Result<BTreeMap<String, i64>, String> {
        let mut constants = BTreeMap::new();
        for item in t[from + 1..to].split(|x| x == ",") {
            match item {
                [] => {}
                [name, eq, value] if eq == "=" => {
                    let v: i64 = value
                        .parse()
                        .map_err(|_| format!("enum constant {name} = {value}"))?;
                    constants.insert(name.clone(), v);
                }
                other => return Err(format!("cannot read enum constant {other:?}")),
            }
        }
        Ok(constants)
    };
    let mut i = 0;
    while i < t.len() {
        match (t[i].as_str(), t.get(i + 1).map(String::as_str)) {
            // typedef enum { ... } NAME;
            ("typedef", Some("enum")) if t.get(i + 2).map(String::as_str) == Some("{") => {
                let end = close(i + 2, "{", "}")?;
                let name = t[end + 1].clone();
                abi.enums.insert(name, enum_body(i + 2, end)?);
                i = end + 2;
            }
            // typedef struct { ... } NAME;
            ("typedef", Some("struct")) if t.get(i + 2).map(String::as_str) == Some("{") => {
                let end = close(i + 2, "{", "}")?;
                let name = t[end + 1].clone();
                let mut fields = Vec::new();
                for decl in t[i + 3..end].split(|x| x == ";") {
                    if decl.is_empty() {
                        continue;
                    }
                    let (fname, ty) = decl.split_last().expect("non-empty");
                    let ctype = if ty.iter().any(|x| x == "*") {
                        "pointer".to_string()
                    } else {
                        ty.iter()
                            .filter(|x| *x != "const")
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    fields.push((fname.clone(), ctype));
                }
                raw_structs.push((name, fields));
                i = end + 2;
            }
            // enum NAME [: type] { ... };
            ("enum", Some(name)) if name.starts_with("gk_") => {
                match t[i + 2..].iter().position(|x| x == "{" || x == ";") {
                    Some(k) if t[i + 2 + k] == "{" => {
                        let open = i + 2 + k;
                        let end = close(open, "{", "}")?;
                        abi.enums.insert(name.to_string(), enum_body(open, end)?);
                        i = end + 1;
                    }
                    _ => i += 2,
                }
            }
            // typedef TYPE NAME; (one-word scalar typedefs, e.g. gk_goal)
            ("typedef", Some(ty)) if t.get(i + 3).map(String::as_str) == Some(";") => {
                typedefs.insert(t[i + 2].clone(), ty.to_string());
                i += 4;
            }
            _ => i += 1,
        }
    }
    for (name, fields) in raw_structs {
        let mut s = Struct {
            size: 0,
            align: 1,
            fields: Vec::new(),
        };
        let mut offset: usize = 0;
        for (fname, ctype) in fields {
            let mut resolved = ctype.clone();
            for _ in 0..8 {
                match typedefs.get(&resolved) {
                    Some(next) => resolved = next.clone(),
                    None => break,
                }
            }
            let (size, align) = scalar(&resolved).ok_or_else(|| {
                format!("{name}.{fname}: type {ctype} ({resolved}) is not one this test knows")
            })?;
            offset = offset.div_ceil(align) * align;
            s.fields.push(Field {
                name: fname,
                ctype: resolved,
                offset,
                size,
            });
            offset += size;
            s.align = s.align.max(align);
        }
        s.size = offset.div_ceil(s.align) * s.align;
        abi.structs.insert(name, s);
    }
    Ok(abi)
}

// ---------------------------------------------------------------------------
// The comparisons.
// ---------------------------------------------------------------------------

/// Every disagreement between the header and the Scheme declarations.
fn compare(header: &Abi, scheme: &Abi) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, constants) in &header.enums {
        let Some(ours) = scheme.enums.get(name) else {
            errors.push(format!(
                "enum {name} ({} constants) has no table in (goalkeeper abi)",
                constants.len()
            ));
            continue;
        };
        for (constant, value) in constants {
            match ours.get(constant) {
                None => errors.push(format!(
                    "{name}: {constant} = {value} is missing from the Scheme table"
                )),
                Some(v) if v != value => errors.push(format!(
                    "{name}: {constant} is {value} in the header but {v} in Scheme"
                )),
                Some(_) => {}
            }
        }
        for (constant, v) in ours {
            if !constants.contains_key(constant) {
                errors.push(format!(
                    "{name}: Scheme declares {constant} = {v}, which the header does not have"
                ));
            }
        }
    }
    for name in scheme.enums.keys() {
        if !header.enums.contains_key(name) {
            errors.push(format!("Scheme declares enum {name}, the header has none"));
        }
    }
    for (name, ours) in &scheme.structs {
        let Some(theirs) = header.structs.get(name) else {
            errors.push(format!(
                "Scheme declares struct {name}, the header has none"
            ));
            continue;
        };
        let names = |s: &Struct| s.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        if names(ours) != names(theirs) {
            errors.push(format!(
                "{name}: fields {:?} in Scheme, {:?} in the header",
                names(ours),
                names(theirs)
            ));
        }
        for (a, b) in ours.fields.iter().zip(&theirs.fields) {
            if a.name == b.name && a != b {
                errors.push(format!(
                    "{name}.{}: {} at offset {} ({} bytes) in Scheme, {} at offset {} ({} bytes) \
                     in the header",
                    a.name, a.ctype, a.offset, a.size, b.ctype, b.offset, b.size
                ));
            }
        }
        if (ours.size, ours.align) != (theirs.size, theirs.align) {
            errors.push(format!(
                "{name}: {} bytes aligned to {} in Scheme, {} aligned to {} in the header",
                ours.size, ours.align, theirs.size, theirs.align
            ));
        }
    }
    errors
}

/// A C translation unit asserting the Scheme declarations against the header.
fn static_asserts(scheme: &Abi) -> String {
    let mut c = String::from(
        "#include <goalkeeper.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <stdbool.h>\n",
    );
    for (name, constants) in &scheme.enums {
        for (constant, value) in constants {
            c.push_str(&format!(
                "_Static_assert({constant} == {value}, \"{name}: {constant} is not {value}\");\n"
            ));
        }
    }
    for (name, s) in &scheme.structs {
        c.push_str(&format!(
            "_Static_assert(sizeof({name}) == {}, \"sizeof({name}) is not {}\");\n",
            s.size, s.size
        ));
        c.push_str(&format!(
            "_Static_assert(_Alignof({name}) == {}, \"_Alignof({name}) is not {}\");\n",
            s.align, s.align
        ));
        for f in &s.fields {
            let field = &f.name;
            c.push_str(&format!(
                "_Static_assert(offsetof({name}, {field}) == {o}, \
                 \"offsetof({name}, {field}) is not {o}\");\n\
                 _Static_assert(sizeof((({name} *)0)->{field}) == {z}, \
                 \"sizeof {name}.{field} is not {z}\");\n",
                o = f.offset,
                z = f.size
            ));
        }
    }
    c
}

/// Compiles the static assertions against the header; the compiler's
/// complaints on failure.
fn compile_asserts(scheme: &Abi, tag: &str) -> Result<(), String> {
    let dir = common::build_dir();
    let src = dir.join(format!("scheme-abi-{tag}.c"));
    std::fs::write(&src, static_asserts(scheme)).expect("write the C file");
    let target = "x86_64-unknown-linux-gnu";
    let cc = cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(0)
        .cargo_metadata(false)
        .get_compiler();
    let out = cc
        .to_command()
        .args(["-std=c11", "-fsyntax-only", "-Wall", "-Werror"])
        .arg("-I")
        .arg(common::root().join("include"))
        .arg(&src)
        .output()
        .expect("run the C compiler");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn header() -> Abi {
    let text = std::fs::read_to_string(common::root().join("include/goalkeeper.h"))
        .expect("read include/goalkeeper.h");
    header_abi(&text).expect("read the header")
}

#[test]
fn scheme_declarations_agree_with_the_header() {
    let header = header();
    // The reader found what it must: a silent parse failure would pass.
    assert!(
        header.enums.len() >= 8 && header.enums.get("gk_status").is_some_and(|c| c.len() > 20),
        "the header reader found too little: {:?}",
        header.enums.keys()
    );
    assert!(
        [
            "gk_event",
            "gk_audit",
            "gk_worker_options",
            "gk_goal_result",
            "gk_goal_batch",
            "gk_batch_error",
            "gk_report"
        ]
        .iter()
        .all(|s| header.structs.contains_key(*s)),
        "the header reader missed structs: {:?}",
        header.structs.keys()
    );
    let scheme = scheme_abi(&common::root().join("scheme")).unwrap_or_else(|e| panic!("{e}"));
    let errors = compare(&header, &scheme);
    assert!(
        errors.is_empty(),
        "scheme/goalkeeper/abi.scm disagrees with include/goalkeeper.h:\n  {}",
        errors.join("\n  ")
    );
    if let Err(e) = compile_asserts(&scheme, "main") {
        panic!("the C compiler refutes the Scheme declarations:\n{e}");
    }
    let constants: usize = scheme.enums.values().map(BTreeMap::len).sum();
    let fields: usize = scheme.structs.values().map(|s| s.fields.len()).sum();
    eprintln!(
        "scheme abi: {} enums ({constants} constants), {} structs ({fields} fields) agree \
         with include/goalkeeper.h",
        scheme.enums.len(),
        scheme.structs.len()
    );
}

/// Mismatches planted in scratch copies of `abi.scm` are caught: by the
/// comparison with the header, and (for numbers and layouts) by the C
/// compiler.
#[test]
fn planted_mismatches_are_caught() {
    let original =
        std::fs::read_to_string(common::root().join("scheme/goalkeeper/abi.scm")).expect("abi.scm");
    let header = header();
    // (what, text to replace, replacement, caught by the compiler too?)
    let plants: &[(&str, &str, &str, bool)] = &[
        (
            "a wrong number",
            "(built             1)",
            "(built             9)",
            true,
        ),
        (
            "two fields swapped",
            "  (kind       uint32)                             ;a gk_event_kind\n  \
             (goal-kind  uint32)                             ;a gk_goal_kind\n",
            "  (goal-kind  uint32)                             ;a gk_goal_kind\n  \
             (kind       uint32)                             ;a gk_event_kind\n",
            true,
        ),
        (
            "a field's type",
            "(fd         int32)",
            "(fd         int64)",
            true,
        ),
        (
            "a constant left out",
            "  (scheduler-deadlock     31)\n  (panic                  99))",
            "  (scheduler-deadlock     31))",
            false,
        ),
        (
            "an enum left out",
            "%gk-event-kind %gk-goal-state %gk-log-kind",
            "%gk-event-kind %gk-log-kind",
            false,
        ),
    ];
    let scratch = common::build_dir().join(format!("scheme-abi-plants-{}", std::process::id()));
    for (n, (what, from, to, compiler)) in plants.iter().enumerate() {
        assert!(
            original.contains(from),
            "plant {what:?}: {from:?} is not in abi.scm any more; update this test"
        );
        let dir = scratch.join(n.to_string());
        std::fs::create_dir_all(dir.join("goalkeeper")).expect("scratch dir");
        std::fs::write(
            dir.join("goalkeeper/abi.scm"),
            original.replacen(from, to, 1),
        )
        .expect("write the scratch copy");
        let scheme = scheme_abi(&dir).unwrap_or_else(|e| panic!("plant {what:?}: {e}"));
        let errors = compare(&header, &scheme);
        assert!(
            !errors.is_empty(),
            "plant {what:?} was not caught by the comparison"
        );
        eprintln!("plant {what:?}: {}", errors.join("; "));
        if *compiler {
            assert!(
                compile_asserts(&scheme, &format!("plant-{n}")).is_err(),
                "plant {what:?} was not caught by the C compiler"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
