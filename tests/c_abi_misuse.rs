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
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "abi_misuse: all checks passed (N checks)" or, on stderr,
    // "abi_misuse: F of N checks failed".
    let number_before = |text: &str, suffix: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.contains(suffix))?;
        let head = &line[..line.find(suffix)?];
        head.rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let ok = out.status.success() && stdout.contains("all checks passed");
    if ok {
        let n = number_before(&stdout, " checks)").unwrap_or(0);
        common::record_suite("tests/c/abi_misuse.c", n > 0, n, 0, &format!("{n} passed"));
    } else {
        let total = number_before(&stderr, " checks failed");
        let failed = stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("abi_misuse: ")?
                    .split(" of ")
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(1u64);
        let passed = total.map_or(0, |t| t.saturating_sub(failed));
        let detail = format!("{}; {}", common::counts_detail(passed, failed), out.status);
        common::record_suite("tests/c/abi_misuse.c", false, passed, failed, &detail);
    }
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "abi_misuse failed ({:?}{}):\n{stdout}\n{}",
        out.status,
        if valgrind { ", under valgrind" } else { "" },
        stderr
    );
}
