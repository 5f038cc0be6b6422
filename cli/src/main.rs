//! `goalkeeper`: the operator's view of store path locks.
//!
//! ```text
//! goalkeeper locks [--store DIR] [--db FILE] [--json] [--check [--max-wait SECONDS]]
//! goalkeeper hold [--store DIR] [--backend ofd|flock] [--no-wait | --timeout SECONDS] [--delete] PATH... -- CMD [ARG...]
//! ```
//!
//! The command line is declared in `cli.rs` (clap); `--help` for each
//! subcommand, usage errors and the man pages (`man.rs`) come from it.
//! `locks` is in `locks.rs`, `hold` in `hold.rs`.

mod cli;
mod held;
mod hold;
mod locks;
mod man;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// A failure: the message to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub code: u8,
    /// What went wrong, without the `goalkeeper: ` prefix.
    pub message: String,
}

impl Failure {
    /// A failure with exit status `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The `--store` directory, checked: it must be a directory.
pub fn store_dir(dir: &Path) -> Result<PathBuf, Failure> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(dir.to_path_buf()),
        Ok(_) => Err(Failure::new(
            1,
            format!("{}: not a directory", dir.display()),
        )),
        Err(e) => Err(Failure::new(
            1,
            format!(
                "store {}: {e} (set --store or NIX_STORE_DIR)",
                dir.display()
            ),
        )),
    }
}

fn main() -> ExitCode {
    // clap prints help and version (exit 0) and usage errors (exit 2).
    let cli = cli::Cli::parse();
    let result = match &cli.command {
        cli::Command::Locks(a) => locks::main(a),
        cli::Command::Hold(a) => hold::main(a),
        cli::Command::ManPages { dir } => man::write(dir)
            .map(|()| 0)
            .map_err(|e| Failure::new(1, format!("{}: {e}", dir.display()))),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("goalkeeper: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
