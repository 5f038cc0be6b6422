//! The command line: every subcommand, option and help text, declared once
//! with clap. `--help`, usage errors and the man pages (`man.rs`) all come
//! from these definitions.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect store path locks, and run commands holding them.
///
/// goalkeeper is the store path lock and goal scheduler library of a
/// Nix/Guix-style build daemon. This command is its operator's view: which
/// lock files a store has, who holds each one and for at most how long, who
/// waits for it, and whether a lock outlived its build (Guix bug #31785).
#[derive(Debug, Parser)]
#[command(name = "goalkeeper", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    Locks(LocksArgs),
    Hold(HoldArgs),
    /// Write the man pages (goalkeeper.1 and one per subcommand) into DIR;
    /// `make install` uses it.
    #[command(hide = true, name = "man-pages")]
    ManPages {
        /// The directory to write them into (it must exist).
        dir: PathBuf,
    },
}

/// The store directory option shared by the subcommands.
#[derive(Debug, Args)]
pub struct Store {
    /// The store directory whose lock files (PATH.lock beside each store
    /// path) are meant.
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_STORE_DIR",
        default_value = "/gnu/store"
    )]
    pub store: PathBuf,
}

/// List every lock file in a store: held, free or stale, by whom and for at
/// most how long, and who waits.
///
/// For each PATH.lock file in the store: its state (held, free, stale: left
/// by a holder that deleted it, or invalid: not a regular file), the kind of
/// kernel lock on it (posix: fcntl, as guix-daemon takes them; ofd: open
/// file description locks, goalkeeper's default; flock: Nix's), the
/// holder's pid and command, and the processes blocked waiting for it with
/// how long they have waited.
///
/// HELD FOR is an upper bound: the kernel does not record when a lock was
/// granted. It is the time since the lock file was created (statx birth
/// time) or, for a posix lock, since its holder started, whichever is
/// shorter; "?" when neither is known.
///
/// With --db, each lock file's store path is looked up in the store's
/// database: a lock held on a path that is already valid (registered in
/// ValidPaths), or whose build failed (FailedPaths, guix-daemon
/// --cache-failures), is a suspected leak: a goal that finished and kept
/// its lock, as in Guix bug #31785. Clients waiting for that path wait
/// until the holder exits. A daemon registers a build's outputs (or its
/// failure) a moment before it releases their locks, so one look can catch
/// that instant; a leak persists, so alert on one seen twice.
///
/// --check turns the listing into a monitoring check: the exit status is 1
/// when a leak is suspected, a lock file is held through flock and fcntl at
/// once, or (with --max-wait) a waiter has been blocked longer than that.
#[derive(Debug, Args)]
#[command(after_long_help = LOCKS_EXIT_STATUS)]
pub struct LocksArgs {
    #[command(flatten)]
    pub store: Store,
    /// The store's database (/var/guix/db/db.sqlite for Guix,
    /// /nix/var/nix/db/db.sqlite for Nix), read only: flags locks held on
    /// valid or failed paths.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when a problem is found (see above); the last
    /// line (JSON: "check") says which.
    #[arg(long)]
    pub check: bool,
    /// With --check: a waiter blocked longer than SECONDS is a problem.
    #[arg(long, value_name = "SECONDS", requires = "check", value_parser = seconds)]
    pub max_wait: Option<Duration>,
}

/// The exit statuses of `goalkeeper locks`, for --help and the man page.
pub const LOCKS_EXIT_STATUS: &str = "\
Exit status:
  0  the store was listed (with --check: and no problem was found)
  1  with --check: a problem was found
  2  a usage error, or the store or database could not be read";

/// Run a command while holding the locks of store paths.
///
/// Takes the locks of PATH... all or nothing (each PATH.lock, with the
/// protocol guix-daemon and Nix use, so that a daemon building one of them
/// waits), runs CMD, and releases them when CMD exits. CMD's exit status
/// becomes goalkeeper's (128 + N if a signal N killed it). CMD does not
/// inherit the lock descriptors; SIGTERM and SIGHUP are forwarded to it, and
/// it is killed if goalkeeper dies, so it never runs on without the locks.
/// While a lock is busy, goalkeeper says who holds it and waits (unless
/// --no-wait or --timeout).
#[derive(Debug, Args)]
#[command(after_long_help = HOLD_EXIT_STATUS)]
pub struct HoldArgs {
    #[command(flatten)]
    pub store: Store,
    /// The lock backend: ofd (open file description locks, goalkeeper's
    /// default; guix-daemon's fcntl locks and these exclude each other) or
    /// flock (Nix's).
    #[arg(long, value_enum, default_value_t = BackendArg::Ofd)]
    pub backend: BackendArg,
    /// Do not wait: exit with status 75 at once if a lock is busy.
    #[arg(long, conflicts_with = "timeout")]
    pub no_wait: bool,
    /// Wait at most SECONDS for the locks, then exit with status 75.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<Duration>,
    /// Delete the lock files when CMD succeeds (exit status 0), as the
    /// daemon does once a build made its paths valid.
    #[arg(long)]
    pub delete: bool,
    /// Store paths: absolute, directly inside the store, or names relative
    /// to it.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<OsString>,
    /// The command to run, after `--`.
    #[arg(value_name = "CMD", last = true, required = true)]
    pub command: Vec<OsString>,
}

/// The exit statuses of `goalkeeper hold`, for --help and the man page.
pub const HOLD_EXIT_STATUS: &str = "\
Exit status:
  CMD's exit status, or 128 + N when signal N killed it
  2    a usage error
  75   a lock was busy (--no-wait) or the wait timed out (--timeout)
  125  goalkeeper failed before running CMD (a bad store or path)
  126  CMD could not be run; 127: CMD was not found";

/// `--backend`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Open file description locks (F_OFD_SETLK).
    Ofd,
    /// flock(2), as Nix locks.
    Flock,
}

/// A non-negative, finite number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("expected a number of seconds (0 or more), not {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_are_non_negative_and_finite() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "inf", "NaN", "", "1s"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
