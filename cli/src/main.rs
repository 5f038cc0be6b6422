//! `goalkeeper`: the operator's view of store path locks.
//!
//! ```text
//! goalkeeper locks --store DIR [--db FILE] [--json]
//! goalkeeper hold --store DIR [--backend ofd|flock] [--no-wait | --timeout SECS] [--delete] PATH... -- CMD [ARG...]
//! ```
//!
//! `locks` lists every `*.lock` file in the store: held, free or stale, who
//! holds it (pid and command, from `/proc`), the kernel lock kind, and who
//! waits and for how long when the kernel lets us know; with `--db`, which
//! paths are valid, flagging locks held on valid paths (#31785). `hold` runs a
//! command while holding the locks of the given paths.
//!
//! Arguments are parsed by hand: two subcommands with a handful of options
//! do not justify a CLI framework dependency in a library crate.

mod args;
mod hold;
mod json;
mod locks;

use std::process::ExitCode;

const USAGE: &str = "\
usage: goalkeeper locks --store DIR [--db FILE] [--json]
       goalkeeper hold --store DIR [--backend ofd|flock] [--no-wait | --timeout SECS] [--delete]
                       PATH... -- CMD [ARG...]

  locks   list every *.lock file in the store: held, free or stale; the holder's
          pid and command, the lock kind (posix, ofd, flock), and the waiters.
          With --db FILE (the store's database, e.g. /var/guix/db/db.sqlite),
          whether each path is valid, and a warning for every lock still held
          on a valid path: a finished build that kept its lock (Guix #31785)
  hold    run CMD while holding the locks of PATH... (store paths, absolute or
          relative to the store); the locks are released when CMD exits, and
          CMD's exit status is goalkeeper's. Exit status 75 when a lock is busy
          (--no-wait) or the wait timed out (--timeout). With --delete, the lock
          files are deleted when CMD succeeds (exit status 0): for a script that
          produces the paths, as the daemon deletes them after a build.
";

/// Exit status for usage errors.
pub(crate) const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let result = match argv.first().and_then(|a| a.to_str()) {
        Some("locks") => locks::main(&argv[1..]),
        Some("hold") => hold::main(&argv[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            println!("goalkeeper {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => Err(args::usage("expected a command: locks or hold")),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("goalkeeper: {}", e.message);
            if e.code == EXIT_USAGE {
                eprint!("{USAGE}");
            }
            ExitCode::from(e.code)
        }
    }
}
