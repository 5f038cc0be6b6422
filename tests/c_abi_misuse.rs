//! `tests/c/abi_misuse.c`: the lock-set C ABI misused from C in every way
//! the header gives an answer for, with contention from a real second
//! process and a fork child. It is written to run under valgrind's memcheck
//! as well (`make check-valgrind`, where `common::c_command` wraps it): its
//! blocking waits use the flock backend there, since valgrind does not know
//! that `fcntl(F_OFD_SETLKW)` blocks.

mod common;

use std::time::Duration;

#[test]
fn c_abi_misuse_gets_the_documented_statuses() {
    let src = common::root().join("tests/c/abi_misuse.c");
    let exe = common::compile("abi_misuse", &[src], false, &[]);
    let valgrind = common::under_valgrind();
    let limit = Duration::from_secs(if valgrind { 300 } else { 60 });
    let out = common::run_bounded(&mut common::c_command(&exe), limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "abi_misuse failed ({:?}{}):\n{stdout}\n{}",
        out.status,
        if valgrind { ", under valgrind" } else { "" },
        String::from_utf8_lossy(&out.stderr)
    );
}
