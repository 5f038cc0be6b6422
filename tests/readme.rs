//! The README's examples are the files in `examples/`, verbatim, and they
//! run.
//!
//! In README.md a fenced block right after a line `<!-- examples/FILE -->`
//! must be that file's whole text, so that what a reader copies is what the
//! tests run: `examples/hello.cc` by `tests/cxx.rs` (`cxx_readme_example`),
//! `examples/operator.sh` by `cli/tests/inspector.rs`, `examples/hello.scm`
//! here, and all of them from an installed prefix by `make check-install`
//! (`build-aux/check-install`, in CI).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{root, run_bounded, TempStore};

/// `(file, block)` for each marked block of `readme`.
fn marked_blocks(readme: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(file) = line
            .strip_prefix("<!-- ")
            .and_then(|l| l.strip_suffix(" -->"))
            .filter(|f| f.starts_with("examples/"))
        else {
            continue;
        };
        assert!(
            lines.get(i + 1).is_some_and(|l| l.starts_with("```")),
            "README.md line {}: the marker of {file} must be followed by a fenced block",
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect();
        out.push((file.to_string(), body.join("\n") + "\n"));
    }
    out
}

#[test]
fn the_readme_shows_the_example_files_verbatim() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    let files: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for expected in [
        "examples/hello.scm",
        "examples/hello.cc",
        "examples/CMakeLists.txt",
        "examples/operator.sh",
    ] {
        assert!(
            files.contains(&expected),
            "README.md does not show {expected}"
        );
    }
    for (file, block) in &blocks {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("README.md shows {file}: {e}"));
        assert!(
            *block == text,
            "README.md's block differs from {file}; copy the file into the README\n--- README:\n{block}--- {file}:\n{text}"
        );
    }
    // The check sees a difference.
    let bad = "<!-- examples/x -->\n```sh\necho a\n```\n";
    assert_eq!(
        marked_blocks(bad),
        vec![("examples/x".to_string(), "echo a\n".to_string())]
    );
}

/// The Guile example against the build tree, as `./pre-inst-env guile
/// examples/hello.scm STORE` runs it: the lock, then both goals built.
#[test]
fn the_guile_example_runs() {
    let store = TempStore::new();
    let lib = common::lib_dir().join("libgoalkeeper.so");
    let o = run_bounded(
        Command::new("guile")
            .args(["--no-auto-compile", "-L"])
            .arg(root().join("scheme"))
            .arg(root().join("examples/hello.scm"))
            .arg(store.dir())
            .env("GOALKEEPER_LIBRARY", &lib)
            .env_remove("GUILE_LOAD_COMPILED_PATH"),
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = store.dir().display();
    assert_eq!(
        out,
        format!("aaa-src locked by me: #t\n({d}/bbb-lib): built\n({d}/ccc-app): built\n")
    );
    for name in ["bbb-lib", "ccc-app"] {
        assert_eq!(
            std::fs::read_to_string(Path::new(&store.path(name))).unwrap(),
            "built\n"
        );
    }
}
