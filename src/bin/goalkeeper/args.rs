//! The little argument handling the two subcommands need.

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
pub(crate) fn value(args: &[String], i: &mut usize, name: &str) -> Result<Option<String>, Failure> {
    let a = &args[*i];
    if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
        return Ok(Some(v.to_string()));
    }
    if a == name {
        *i += 1;
        return match args.get(*i) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(usage(format!("{name} needs a value"))),
        };
    }
    Ok(None)
}

/// Checks the `--store` argument: it must be given and be a directory.
pub(crate) fn store(dir: Option<String>) -> Result<PathBuf, Failure> {
    let dir = dir.ok_or_else(|| usage("--store DIR is required"))?;
    let p = PathBuf::from(&dir);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(fail(format!("{dir}: not a directory"))),
        Err(e) => Err(fail(format!("{dir}: {e}"))),
    }
}
