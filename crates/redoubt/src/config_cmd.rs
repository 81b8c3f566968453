//! `redoubt config …`: the commands that read configuration files (`validate`, `diff`,
//! `plan --from`) need no console; `plan` without `--from` asks the console for the
//! configuration in effect when one is given, and the others go to the console.

use std::path::{Path, PathBuf};

use redoubt_config::{Config, Diagnostic};
use redoubt_plan::{plan, report, PlanOptions};
use serde::Serialize;

use crate::cli::{ConfigCommand, Format};
use crate::exit::{ExitCodeKind, Failure};

pub fn run(
    command: ConfigCommand,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = || crate::client::ConsoleClient::from_options(console.clone(), token_file.clone());
    match command {
        ConfigCommand::Apply {
            file,
            yes,
            destroy,
            detach,
        } => {
            let client = client()?;
            crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::apply(
                &client, &file, yes, destroy, !detach,
            ))
        }
        ConfigCommand::Watch { group } => {
            let client = client()?;
            crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::watch(&client, &group))
        }
        ConfigCommand::Retry { group } => {
            let client = client()?;
            crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::retry(&client, &group))
        }
        ConfigCommand::Show { format } => {
            let client = client()?;
            crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::show(&client, format))
        }
        ConfigCommand::History { format } => {
            let client = client()?;
            crate::remote_cmd::runtime()?.block_on(crate::remote_cmd::history(&client, format))
        }
        ConfigCommand::Validate { files, format } => validate(&files, format),
        ConfigCommand::Diff { old, new, format } => diff(&old, &new, format),
        ConfigCommand::Plan {
            from,
            new,
            destroy,
            format,
        } => match from {
            Some(from) => plan_command(Some(&from), &new, destroy, format),
            // Without --from, the base is what is in effect: the console's, when one is
            // given. Never an empty base that would call a deletion "no change".
            None if crate::client::ConsoleClient::named(console.as_deref()) => {
                let client = client()?;
                crate::remote_cmd::runtime()?
                    .block_on(crate::remote_cmd::plan(&client, &new, destroy, format))
            }
            None => {
                eprintln!(
                    "note: no console (--console or REDOUBT_CONSOLE): this plan is against an empty configuration, as for a first apply; pass --from FILE to plan against another"
                );
                plan_command(None, &new, destroy, format)
            }
        },
    }
}

#[derive(Serialize)]
struct ValidateJson {
    files: Vec<FileJson>,
}

#[derive(Serialize)]
struct FileJson {
    file: String,
    valid: bool,
    errors: Vec<ErrorJson>,
}

#[derive(Serialize)]
struct ErrorJson {
    line: usize,
    column: usize,
    field: String,
    reason: String,
}

fn validate(files: &[std::path::PathBuf], format: Format) -> Result<(), Failure> {
    let mut report = ValidateJson { files: Vec::new() };
    let mut any_invalid = false;
    for file in files {
        let (valid, errors, summary) = match redoubt_config::load(file) {
            Ok(config) => (true, Vec::new(), describe(&config)),
            Err(diagnostics) => (false, diagnostics, String::new()),
        };
        any_invalid |= !valid;
        if format == Format::Text {
            if valid {
                println!("{}: valid ({summary})", file.display());
            } else {
                for diagnostic in &errors {
                    eprintln!("{diagnostic}");
                }
                eprintln!("{}: {} error(s)", file.display(), errors.len());
            }
        }
        report.files.push(FileJson {
            file: file.display().to_string(),
            valid,
            errors: errors
                .into_iter()
                .map(|d| ErrorJson {
                    line: d.line,
                    column: d.column,
                    field: d.field,
                    reason: d.reason,
                })
                .collect(),
        });
    }
    if format == Format::Json {
        print_json(&report)?;
    }
    if any_invalid {
        Err(Failure::silent(ExitCodeKind::Invalid))
    } else {
        Ok(())
    }
}

fn describe(config: &Config) -> String {
    let volumes: usize = config.groups.iter().map(|g| g.volumes.len()).sum();
    format!(
        "{} server(s), {} group(s), {} volume(s)",
        config.servers.len(),
        config.groups.len(),
        volumes
    )
}

/// Loads a config or prints all of its diagnostics and fails with exit code 2.
fn load(path: &Path) -> Result<Config, Failure> {
    redoubt_config::load(path).map_err(|diagnostics: Vec<Diagnostic>| {
        for diagnostic in &diagnostics {
            eprintln!("{diagnostic}");
        }
        Failure::new(
            ExitCodeKind::Invalid,
            format!(
                "{} is not a valid configuration ({} error(s))",
                path.display(),
                diagnostics.len()
            ),
        )
    })
}

#[derive(Serialize)]
struct DiffJson {
    group: String,
    changes: Vec<String>,
}

fn diff(old: &Path, new: &Path, format: Format) -> Result<(), Failure> {
    let old = load(old)?;
    let new = load(new)?;
    let diffs = redoubt_config::diff(Some(&old), &new);
    match format {
        Format::Json => {
            let json: Vec<DiffJson> = diffs
                .iter()
                .map(|d| DiffJson {
                    group: d.group.clone(),
                    changes: d.changes.iter().map(ToString::to_string).collect(),
                })
                .collect();
            print_json(&json)?;
        }
        Format::Text => {
            if diffs.is_empty() {
                println!("No change.");
            }
            for group_diff in &diffs {
                println!("group {}:", group_diff.group);
                for change in &group_diff.changes {
                    println!("  - {change}");
                }
            }
        }
    }
    Ok(())
}

fn plan_command(
    from: Option<&Path>,
    new: &Path,
    destroy: bool,
    format: Format,
) -> Result<(), Failure> {
    let old = from.map(load).transpose()?;
    let new = load(new)?;
    let options = PlanOptions {
        destroy_production_data: destroy,
    };
    let plans = plan(old.as_ref(), &new, options).map_err(|errors| {
        for error in &errors {
            eprintln!("refused: {error}");
        }
        Failure::new(
            ExitCodeKind::Invalid,
            format!("the change cannot be planned ({} problem(s))", errors.len()),
        )
    })?;
    match format {
        Format::Json => print_json(&report::to_json(&plans))?,
        Format::Text if plans.is_empty() => match from {
            Some(from) => println!("No change from {}: nothing to initialize.", from.display()),
            None => println!("Nothing to initialize: the file configures no replication group."),
        },
        Format::Text => print!("{}", report::to_text(&plans)),
    }
    Ok(())
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::new(ExitCodeKind::Failed, format!("encode JSON: {error}")))?;
    println!("{text}");
    Ok(())
}
