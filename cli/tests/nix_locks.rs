//! `goalkeeper locks --db` against real Nix (Debian's nix-bin, Nix 2.8) in
//! a private store: its own lock files and database. Without nix-bin the
//! test fails, saying how to install it.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/lockkit/mod.rs"]
mod lockkit;
#[path = "../../tests/nixkit/mod.rs"]
mod nixkit;

use std::process::Command;

use goalkeeper::lock::{Backend, LockSet};
use nixkit::{Gate, NixStore, GATED_BUILDER, LIMIT};

/// `goalkeeper locks --store DIR --db FILE` against Nix's own store and
/// database: while nix-store builds, it names the nix-store process as the
/// holder of OUT.lock (flock), with "path_valid": false and no leak; once
/// the build is registered, a lock still held on the path (a goalkeeper
/// LockSet kept after the build, as a #31785 daemon would) is flagged
/// "leak_suspected": true, in `--json` and in words.
#[test]
fn locks_db_names_nix_store_and_flags_a_lock_held_on_a_valid_path() {
    let nix = NixStore::new();
    let gate = Gate::new(&nix, "cli");
    let (drv, out) = nix.instantiate("cli", GATED_BUILDER, &gate.attrs());
    let r = nix.realise(&drv);
    gate.wait_started();
    let exe = env!("CARGO_BIN_EXE_goalkeeper");
    let locks = |json: bool| {
        let mut c = Command::new(exe);
        c.args(["locks", "--store"])
            .arg(nix.store())
            .arg("--db")
            .arg(nix.db());
        if json {
            c.arg("--json");
        }
        let o = common::run_bounded(&mut c, LIMIT);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let lock_name = format!("{}.lock", out.file_name().unwrap().to_str().unwrap());
    let entry = |text: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == lock_name.as_str())
            .unwrap_or_else(|| panic!("{lock_name} missing from {v:#}"))
            .clone()
    };
    let text = locks(true);
    let e = entry(&text);
    assert_eq!(e["state"], "held", "{e:#}");
    assert_eq!(e["kind"], "flock", "{e:#}");
    assert_eq!(e["holders"][0]["pid"], r.pid(), "{e:#}");
    assert!(
        e["holders"][0]["command"]
            .as_str()
            .is_some_and(|c| c.contains("nix-store")),
        "{e:#}"
    );
    assert_eq!(e["path_valid"], false, "{e:#}");
    assert_eq!(e["leak_suspected"], false, "{e:#}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["summary"]["leaks_suspected"], 0);
    gate.open();
    r.finish();
    // Nix registered the output and deleted its lock file. A lock taken on
    // the valid path and kept is what a finished goal of a #31785 daemon
    // looks like.
    let held = LockSet::try_acquire([&out], Backend::Flock).unwrap();
    let e = entry(&locks(true));
    assert_eq!(
        (&e["state"], &e["path_valid"], &e["leak_suspected"]),
        (
            &serde_json::Value::from("held"),
            &serde_json::Value::Bool(true),
            &serde_json::Value::Bool(true)
        ),
        "{e:#}"
    );
    assert_eq!(e["holders"][0]["pid"], std::process::id());
    let words = locks(false);
    assert!(
        words.contains("LEAK SUSPECTED") && words.contains("#31785"),
        "{words}"
    );
    held.release().unwrap();
    let e = entry(&locks(true));
    assert_eq!(
        (&e["state"], &e["leak_suspected"]),
        (
            &serde_json::Value::from("free"),
            &serde_json::Value::Bool(false)
        ),
        "{e:#}"
    );
}
