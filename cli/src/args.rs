//! The little argument handling the two subcommands need.
//!
//! Arguments are `OsString`s (`std::env::args_os`): store paths and
//! commands need not be UTF-8, and a non-UTF-8 argument must be a clear
//! answer, never a panic. Options and their values that must be text
//! (`--backend`, `--timeout`) are converted with [`text`], which names the
//! option when the value is not UTF-8.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// A failure with the exit status to report it with.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

/// A usage error (exit status 2).
pub(crate) fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: crate::EXIT_USAGE,
        message: msg.into(),
    }
}

/// A runtime failure (exit status 1).
pub(crate) fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: msg.into(),
    }
}

/// Takes the value of option `name` at `args[*i]`, accepting `--name VALUE`
/// and `--name=VALUE`. Returns `None` if `args[*i]` is not that option.
pub(crate) fn value(
    args: &[OsString],
    i: &mut usize,
    name: &str,
) -> Result<Option<OsString>, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let a = args[*i].as_bytes();
    if let Some(v) = a
        .strip_prefix(name.as_bytes())
        .and_then(|r| r.strip_prefix(b"="))
    {
        return Ok(Some(OsStr::from_bytes(v).to_owned()));
    }
    if a == name.as_bytes() {
        *i += 1;
        return match args.get(*i) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(usage(format!("{name} needs a value"))),
        };
    }
    Ok(None)
}

/// The value of option `name` as text, or a usage error naming the option.
pub(crate) fn text(name: &str, v: &OsStr) -> Result<String, Failure> {
    v.to_str()
        .map(str::to_string)
        .ok_or_else(|| usage(format!("{name}: {v:?} is not valid UTF-8")))
}

/// Checks the `--store` argument: it must be given and be a directory.
pub(crate) fn store(dir: Option<OsString>) -> Result<PathBuf, Failure> {
    let dir = dir.ok_or_else(|| usage("--store DIR is required"))?;
    let p = PathBuf::from(&dir);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(fail(format!("{}: not a directory", p.display()))),
        Err(e) => Err(fail(format!("{}: {e}", p.display()))),
    }
}
