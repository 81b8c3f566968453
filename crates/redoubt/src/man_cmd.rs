//! `redoubt man --out DIR` (hidden): the manual pages, generated from the command-line grammar
//! itself (clap_mangen), so they cannot drift from it: `redoubt.1` and one page per
//! subcommand (`redoubt-config-apply.1`, …). The .deb build runs it (`packaging/build-deb.sh`).

use std::path::Path;

use crate::exit::{ExitCodeKind, Failure};

pub fn run(out: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|error| {
        Failure::new(
            ExitCodeKind::Failed,
            format!("create {}: {error}", out.display()),
        )
    })?;
    let command = crate::cli::command();
    let mut written = 0usize;
    write_pages(&command, "redoubt", out, &mut written)?;
    println!("wrote {written} manual pages to {}", out.display());
    Ok(())
}

/// Writes the page of `command` (named `name`) and, recursively, of its visible subcommands.
fn write_pages(
    command: &clap::Command,
    name: &str,
    out: &Path,
    written: &mut usize,
) -> Result<(), Failure> {
    let page = command.clone().bin_name(name.replace('-', " "));
    let path = out.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page)
        .title(name.to_string())
        .render(&mut bytes)
        .and_then(|()| std::fs::write(&path, &bytes))
        .map_err(|error| {
            Failure::new(
                ExitCodeKind::Failed,
                format!("write {}: {error}", path.display()),
            )
        })?;
    *written += 1;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), out, written)?;
    }
    Ok(())
}
