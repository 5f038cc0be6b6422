//! The committed `include/goalkeeper.h` must equal a fresh cbindgen run.
//! `make header` (GOALKEEPER_UPDATE_HEADER=1) rewrites it instead.

use std::path::Path;

#[test]
fn committed_header_matches_a_fresh_cbindgen_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("header is UTF-8");
    let path = root.join("include/goalkeeper.h");
    if std::env::var_os("GOALKEEPER_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let diff: Vec<String> = committed
            .lines()
            .zip(fresh.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  committed: {a}\n  fresh:     {b}", i + 1))
            .collect();
        panic!(
            "include/goalkeeper.h is out of date ({} vs {} lines); run `make header`.\n{}",
            committed.lines().count(),
            fresh.lines().count(),
            diff.join("\n")
        );
    }
}
