//! Every citation of `doc/design.md` in the sources points at something
//! that exists, and `doc/design.md` cites only tests and files that exist.
//!
//! The sources (README.md, Makefile, src/, tests/, scheme/, include/,
//! demo/, benches/, examples/, cli/) cite the guarantees and the failure
//! catalogue by number (`G1`, `L9`, `V1`, `S13`) and sections by link
//! (`doc/design.md#7-measured-limits`). A number must be defined in
//! doc/design.md (a list item starting `- **L9`), a link must name one of
//! its headings (GitHub's anchors), and nothing may cite files that are not
//! in the repository (`DESIGN.md`, `WORKER_ABI.md`).
//!
//! In doc/design.md itself, every `tests/FILE.rs::function` must name a
//! test function of that file, every repository path in backquotes must
//! exist, and every `(#anchor)` link must name a heading, except in a
//! paragraph or list item marked `test: pending merge` (its tests are being
//! written on another branch).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Where citations are looked for, relative to the repository root.
const SCANNED: &[&str] = &[
    "README.md",
    "Makefile",
    "src",
    "tests",
    "scheme",
    "include",
    "demo",
    "benches",
    "examples",
    "cli",
];

/// This file cites bad references on purpose (in its self-test).
const SELF: &str = "tests/doc_refs.rs";

/// Repository paths in doc/design.md that must exist start with one of these.
const REPO_DIRS: &[&str] = &[
    "src/", "tests/", "benches/", "include/", "scheme/", "demo/", "doc/", "cli/",
];

const PENDING: &str = "test: pending merge";

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The item numbers cited on a line: `G1`…, `L1`…, `V1`…, `S1`…, as whole
/// words.
fn item_tokens(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_word = i == 0 || !is_word(chars[i - 1]);
        if starts_word && matches!(c, 'G' | 'L' | 'V' | 'S') {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            let digits = j - i - 1;
            let ends_word = j == chars.len() || !is_word(chars[j]);
            if (1..=2).contains(&digits) && ends_word {
                out.push(chars[i..j].iter().collect());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// What doc/design.md defines: item numbers and heading anchors.
struct Design {
    items: BTreeSet<String>,
    anchors: BTreeSet<String>,
}

fn parse_design(text: &str) -> Design {
    let mut items = BTreeSet::new();
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(rest) = line.strip_prefix("- **") {
            let id: String = rest.chars().take_while(|c| is_word(*c)).collect();
            if item_tokens(&id) == [id.clone()] {
                items.insert(id);
            }
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(&line[hashes..]);
            let mut a = base.clone();
            let mut n = 0;
            while anchors.contains(&a) {
                n += 1;
                a = format!("{base}-{n}");
            }
            anchors.insert(a);
        }
    }
    Design { items, anchors }
}

/// The anchors of `doc/design.md#ANCHOR` links on a line.
fn design_links(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("design.md#") {
        rest = &rest[i + "design.md#".len()..];
        out.push(
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect(),
        );
    }
    out
}

/// Every bad citation in the sources under `root`.
fn source_problems(root: &Path, design: &Design) -> Vec<String> {
    let mut all = Vec::new();
    for s in SCANNED {
        let p = root.join(s);
        if p.is_file() {
            all.push(p);
        } else {
            files(&p, &mut all);
        }
    }
    all.sort();
    let mut bad = Vec::new();
    for file in all {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if rel == SELF {
            continue;
        }
        let Ok(text) = fs::read_to_string(&file) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            let at = format!("{rel}:{}", n + 1);
            for id in item_tokens(line) {
                if !design.items.contains(&id) {
                    bad.push(format!(
                        "{at}: cites {id}, which doc/design.md does not define"
                    ));
                }
            }
            for a in design_links(line) {
                if !design.anchors.contains(&a) {
                    bad.push(format!(
                        "{at}: links to doc/design.md#{a}, which is no heading there"
                    ));
                }
            }
            let stripped = line.replace("doc/design.md", "");
            for gone in ["DESIGN.md", "WORKER_ABI"] {
                if stripped.contains(gone) {
                    bad.push(format!(
                        "{at}: cites {gone}, which is not in the repository; cite doc/design.md"
                    ));
                }
            }
        }
    }
    bad
}

/// The paragraphs and list items of a Markdown text (outside code blocks).
fn blocks(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let new_item = !in_code && (line.starts_with("- ") || line.starts_with('#'));
        let boundary = (line.trim().is_empty() && !in_code) || new_item;
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(line);
        cur.push('\n');
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Every bad reference inside doc/design.md.
fn design_problems(root: &Path, text: &str, design: &Design) -> Vec<String> {
    let mut bad = Vec::new();
    for block in blocks(text) {
        let pending = block.contains(PENDING);
        // Internal links.
        let mut rest = block.as_str();
        while let Some(i) = rest.find("](#") {
            rest = &rest[i + 3..];
            let a: String = rest.chars().take_while(|c| *c != ')').collect();
            if !design.anchors.contains(&a) {
                bad.push(format!("doc/design.md: link to #{a}, which is no heading"));
            }
        }
        if pending {
            continue;
        }
        // Code spans.
        for (k, span) in block.split('`').enumerate() {
            if k % 2 == 0 || span.contains(char::is_whitespace) {
                continue;
            }
            if !REPO_DIRS.iter().any(|d| span.starts_with(d)) {
                continue;
            }
            let (path, func) = match span.split_once("::") {
                Some((p, f)) => (p, Some(f)),
                None => (span, None),
            };
            let full = root.join(path.trim_end_matches('/'));
            if !full.exists() {
                bad.push(format!("doc/design.md cites {span}: {path} does not exist"));
                continue;
            }
            if let Some(f) = func {
                let src = fs::read_to_string(&full).unwrap_or_default();
                if !src.contains(&format!("fn {f}(")) {
                    bad.push(format!(
                        "doc/design.md cites {span}: {path} has no function {f}; \
                         update the failure catalogue"
                    ));
                }
            }
        }
    }
    bad
}

fn check(root: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join("doc/design.md")).unwrap_or_default();
    let design = parse_design(&text);
    let mut bad = source_problems(root, &design);
    bad.extend(design_problems(root, &text, &design));
    bad
}

#[test]
fn every_citation_points_at_something_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = parse_design(&fs::read_to_string(root.join("doc/design.md")).unwrap());
    for id in ["G1", "G7", "L1", "L11", "V1", "V2", "S1", "S13"] {
        assert!(design.items.contains(id), "doc/design.md lacks {id}");
    }
    let bad = check(root);
    assert!(bad.is_empty(), "broken references:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_broken_references() {
    let dir = std::env::temp_dir().join(format!("gk-doc-refs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("doc")).unwrap();
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("tests")).unwrap();
    fs::write(
        dir.join("doc/design.md"),
        "# Design\n\n## 2. The guarantees\n\n- **G1 — release.** See [x](#nowhere).\n\
         - **L1 — deleted.** Test: `tests/t.rs::real_test`, `tests/t.rs::gone_test`.\n\
         - **S3 — valid.** `tests/missing.rs`.\n\
         - **L10 — crash.** `tests/later.rs` <!-- test: pending merge -->\n",
    )
    .unwrap();
    fs::write(dir.join("tests/t.rs"), "#[test]\nfn real_test() {}\n").unwrap();
    fs::write(
        dir.join("src/a.rs"),
        "// G1, L1 and S3 are fine (doc/design.md#2-the-guarantees).\n\
         // L12 is not; nor S14 (doc/design.md#9-nothing), nor DESIGN.md section 6.\n\
         // See WORKER_ABI.md.\n",
    )
    .unwrap();
    let bad = check(&dir);
    fs::remove_dir_all(&dir).unwrap();
    let has = |s: &str| bad.iter().any(|b| b.contains(s));
    assert!(has("cites L12"), "{bad:#?}");
    assert!(has("cites S14"), "{bad:#?}");
    assert!(has("doc/design.md#9-nothing"), "{bad:#?}");
    assert!(has("cites DESIGN.md"), "{bad:#?}");
    assert!(has("cites WORKER_ABI"), "{bad:#?}");
    assert!(has("#nowhere"), "{bad:#?}");
    assert!(has("no function gone_test"), "{bad:#?}");
    assert!(has("tests/missing.rs does not exist"), "{bad:#?}");
    assert!(
        !has("later.rs"),
        "pending references are not checked: {bad:#?}"
    );
    assert!(!has("real_test"), "{bad:#?}");
    assert_eq!(bad.len(), 8, "{bad:#?}");
}
