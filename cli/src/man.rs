//! The man pages, from the clap definitions (clap_mangen): goalkeeper.1 and
//! one page per subcommand (goalkeeper-locks.1, goalkeeper-hold.1), as git
//! and cargo have them. `make install` writes them with the hidden
//! `goalkeeper man-pages DIR`.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;

/// Writes every page into `dir`.
pub fn write(dir: &Path) -> std::io::Result<()> {
    let mut top = crate::cli::Cli::command().disable_help_subcommand(true);
    // Names the subcommands' pages goalkeeper-locks etc.
    top.build();
    let subs: Vec<clap::Command> = top
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let see_also: Vec<String> = subs
        .iter()
        .map(|s| format!("{}(1)", page_name(s)))
        .collect();
    page(dir, top.clone(), &see_also)?;
    for s in subs {
        page(dir, s, &["goalkeeper(1)".to_string()])?;
    }
    Ok(())
}

fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// One page: clap_mangen's sections, then EXIT STATUS (the command's
/// after-help, which starts with "Exit status:") and SEE ALSO.
fn page(dir: &Path, cmd: clap::Command, see_also: &[String]) -> std::io::Result<()> {
    let exit_status = cmd
        .get_after_long_help()
        .map(|h| h.to_string())
        .and_then(|h| h.strip_prefix("Exit status:\n").map(str::to_string));
    let man = Man::new(cmd.clone())
        .manual("goalkeeper")
        .source(format!("goalkeeper {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(text) = exit_status {
        out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
        for line in text.lines() {
            // One line each, as in --help.
            let _ = writeln!(out, ".br\n{}", escape(line.trim_start()));
        }
    }
    out.extend_from_slice(b".SH \"SEE ALSO\"\n");
    let _ = writeln!(out, "{}", escape(&see_also.join(", ")));
    man.render_version_section(&mut out)?;
    std::fs::write(
        dir.join(format!("{}.1", page_name(&cmd))),
        once_prelude(out),
    )
}

/// Each section clap_mangen renders starts with the same two-line prelude
/// (the `Aq` string for apostrophes); a page needs it once, at the top.
fn once_prelude(page: Vec<u8>) -> String {
    let text = String::from_utf8_lossy(&page);
    let mut lines: Vec<&str> = text.lines().collect();
    let prelude: Vec<&str> = lines.iter().take(2).copied().collect();
    if prelude.len() == 2 && prelude[0].starts_with(".ie ") {
        let mut i = 2;
        while i + 1 < lines.len() {
            if lines[i] == prelude[0] && lines[i + 1] == prelude[1] {
                lines.drain(i..i + 2);
            } else {
                i += 1;
            }
        }
    }
    lines.join("\n") + "\n"
}

/// Plain text as a roff text line: backslashes and hyphens escaped, and no
/// control character at the start.
fn escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
