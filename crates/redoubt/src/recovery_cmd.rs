//! `redoubt mark`, `points`, `rollback`, `resume` (and later failover/failback): thin
//! clients of the console's recovery routes (`docs/recovery-api.md`).
//!
//! Exit codes: 0 done; 1 the operation failed; 2 invalid input (a bad POINT, an unknown
//! server); 3 refused (confirmation missing without `--yes`, one already running);
//! 4 console unreachable.

use std::io::IsTerminal;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

#[derive(clap::Args, Debug)]
pub struct MarkArgs {
    pub group: String,
    /// The marker's name ([a-z0-9][a-z0-9._-]{0,62}), e.g. before-upgrade.
    pub name: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct PointsArgs {
    pub group: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    pub group: String,
    /// The recovery server whose replica rolls back.
    #[arg(long, short = 's')]
    pub server: String,
    /// latest, seq:N, mark:NAME or an RFC 3339 time (with its zone).
    #[arg(long)]
    pub to: String,
    /// Do not ask: the replica's apply pauses until `redoubt resume`.
    #[arg(long)]
    pub yes: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    pub group: String,
    #[arg(long, short = 's')]
    pub server: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

fn check_point(text: &str) -> Result<(), Failure> {
    redoubt_points::Point::parse(text)
        .map(|_| ())
        .map_err(|error| Failure::new(ExitCodeKind::Invalid, error.to_string()))
}

/// Asks on a terminal; without one, `--yes` is the only way to confirm.
pub fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            ExitCodeKind::Refused,
            format!("{question}: confirmation needed, pass --yes"),
        ));
    }
    eprint!("{question}? [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|error| Failure::new(ExitCodeKind::Failed, format!("read the answer: {error}")))?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            ExitCodeKind::Refused,
            "not confirmed; nothing changed",
        ))
    }
}

pub fn mark(
    args: MarkArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    redoubt_points::check_marker_name(&args.name)
        .map_err(|reason| Failure::new(ExitCodeKind::Invalid, reason))?;
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let marker = client
            .post(
                &format!("/v1/groups/{}/marks", args.group),
                &json!({"name": args.name}),
            )
            .await?;
        match args.format {
            Format::Json => println!("{marker}"),
            Format::Text => println!(
                "marker {} at seq {} ({})",
                marker["name"].as_str().unwrap_or("?"),
                marker["seq"],
                marker["time"].as_str().unwrap_or("?")
            ),
        }
        Ok(())
    })
}

pub fn points(
    args: PointsArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let points = client
            .get(&format!("/v1/groups/{}/points", args.group))
            .await?;
        match args.format {
            Format::Json => println!("{points}"),
            Format::Text => print_points(&points),
        }
        Ok(())
    })
}

fn print_points(points: &Value) {
    println!(
        "restore window of group {}",
        points["group"].as_str().unwrap_or("?")
    );
    for server in points["servers"].as_array().into_iter().flatten() {
        let name = server["server"].as_str().unwrap_or("?");
        let role = server["role"].as_str().unwrap_or("?");
        if let Some(error) = server["error"].as_str() {
            println!("  {name:<12} {role:<11} unreachable: {error}");
            continue;
        }
        if role == "production" {
            println!("  {name:<12} {role:<11} at seq {}", server["last_seq"]);
            continue;
        }
        println!(
            "  {name:<12} {role:<11} seq {}..={} ({} .. {}){}",
            server["first_seq"],
            server["last_seq"],
            server["first_time"].as_str().unwrap_or("-"),
            server["last_time"].as_str().unwrap_or("-"),
            if server["paused"].as_bool() == Some(true) {
                format!("  PAUSED at seq {} (redoubt resume)", server["applied_seq"])
            } else {
                String::new()
            }
        );
        if server["consistent_from_seq"].is_null() && server.get("consistent_from_seq").is_some() {
            println!(
                "  {:<24} no consistent image yet (its first sync has not ended)",
                ""
            );
        }
        if let Some(reset) = server["history_reset"].as_object() {
            println!(
                "  {:<24} window starts at seq {} since {}: {}",
                "",
                reset.get("seq").unwrap_or(&Value::Null),
                reset.get("since").and_then(Value::as_str).unwrap_or("-"),
                reset.get("reason").and_then(Value::as_str).unwrap_or("-")
            );
        }
        for interval in server["unrestorable"].as_array().into_iter().flatten() {
            let end = interval["end_seq"].as_u64().map_or_else(
                || "now (under way)".to_string(),
                |end| format!("{}", end - 1),
            );
            println!(
                "  {:<24} not restorable: seq {}..={end} (super transaction)",
                "", interval["begin_seq"]
            );
        }
    }
    let markers = points["markers"].as_array().cloned().unwrap_or_default();
    if markers.is_empty() {
        println!("markers: none");
    } else {
        println!("markers:");
        for marker in markers {
            let on: Vec<&str> = marker["restorable_on"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let where_ = if on.is_empty() {
                "restorable nowhere (before every restore window)".to_string()
            } else {
                format!("restorable on {}", on.join(", "))
            };
            println!(
                "  {:<24} seq {:<10} {}  {where_}",
                marker["name"].as_str().unwrap_or("?"),
                marker["seq"],
                marker["time"].as_str().unwrap_or("-")
            );
        }
    }
}

pub fn rollback(
    args: RollbackArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    check_point(&args.to)?;
    confirm(
        &format!(
            "roll the replica of group {} on {} back to {} (its apply pauses until resume)",
            args.group, args.server, args.to
        ),
        args.yes,
    )?;
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let started = client
            .post(
                &format!("/v1/groups/{}/rollback", args.group),
                &json!({"server": args.server, "to": args.to, "confirm": true}),
            )
            .await?;
        run_operation(&client, &started, args.format).await
    })
}

pub fn resume(
    args: ResumeArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let resumed = client
            .post(
                &format!("/v1/groups/{}/resume", args.group),
                &json!({"server": args.server}),
            )
            .await?;
        match args.format {
            Format::Json => println!("{resumed}"),
            Format::Text => println!(
                "{} applies again (at seq {})",
                resumed["server"].as_str().unwrap_or("?"),
                resumed["applied_seq"]
            ),
        }
        Ok(())
    })
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FailoverArgs {
    #[command(subcommand)]
    pub action: Option<FailoverAction>,
    /// The group to fail over.
    pub group: Option<String>,
    /// The recovery server to promote (default: recovery 1).
    #[arg(long, short = 's')]
    pub server: Option<String>,
    /// latest, seq:N or mark:NAME (default: latest; a planned failover when production is
    /// reachable drains it first and loses nothing).
    #[arg(long)]
    pub at: Option<String>,
    /// A test failover: the point as writable snapshots on the server, exported over NBD,
    /// while production and replication go on untouched.
    #[arg(long)]
    pub test: bool,
    #[arg(long)]
    pub yes: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Subcommand, Debug)]
pub enum FailoverAction {
    /// Keep the failover: the promoted server stays production.
    Commit(GroupYes),
    /// Undo the failover: fail back to the configured production (what the promoted server
    /// wrote is carried back).
    Abort(GroupYes),
}

#[derive(clap::Args, Debug)]
pub struct GroupYes {
    pub group: String,
    #[arg(long)]
    pub yes: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

async fn run_operation(
    client: &ConsoleClient,
    started: &Value,
    format: Format,
) -> Result<(), Failure> {
    let id = started["operation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let operation = crate::progress::operation(client, &id).await?;
    if operation["state"] != "done" {
        return Err(Failure::new(
            ExitCodeKind::Failed,
            format!(
                "{} {id} failed: {}",
                operation["kind"].as_str().unwrap_or("operation"),
                operation["error"].as_str().unwrap_or("unknown error")
            ),
        ));
    }
    match format {
        Format::Json => println!("{}", operation["result"]),
        Format::Text => println!("{}", operation["message"].as_str().unwrap_or("done")),
    }
    Ok(())
}

pub fn failover(
    args: FailoverArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = ConsoleClient::from_options(console, token_file)?;
    match args.action {
        Some(FailoverAction::Commit(action)) => {
            confirm(
                &format!("commit the failover of group {}", action.group),
                action.yes,
            )?;
            crate::remote_cmd::runtime()?.block_on(async {
                let committed = client
                    .post(
                        &format!("/v1/groups/{}/failover/commit", action.group),
                        &json!({"confirm": true}),
                    )
                    .await?;
                match action.format {
                    Format::Json => println!("{committed}"),
                    Format::Text => println!(
                        "committed: {} is production of group {}",
                        committed["context"]["acting_production"]
                            .as_str()
                            .unwrap_or("?"),
                        action.group
                    ),
                }
                Ok(())
            })
        }
        Some(FailoverAction::Abort(action)) => {
            confirm(
                &format!(
                    "abort the failover of group {} (fail back to the configured production)",
                    action.group
                ),
                action.yes,
            )?;
            crate::remote_cmd::runtime()?.block_on(async {
                let started = client
                    .post(
                        &format!("/v1/groups/{}/failover/abort", action.group),
                        &json!({"confirm": true}),
                    )
                    .await?;
                run_operation(&client, &started, action.format).await
            })
        }
        None => {
            let group = args.group.ok_or_else(|| {
                Failure::new(
                    ExitCodeKind::Invalid,
                    "failover needs a GROUP (or commit/abort GROUP)",
                )
            })?;
            if let Some(at) = &args.at {
                check_point(at)?;
            }
            if !args.test {
                confirm(
                    &format!(
                        "fail group {group} over to {}",
                        args.server
                            .as_deref()
                            .unwrap_or("its first recovery server")
                    ),
                    args.yes,
                )?;
            }
            crate::remote_cmd::runtime()?.block_on(async {
                let mut body = json!({"confirm": true, "test": args.test});
                if let Some(server) = &args.server {
                    body["server"] = json!(server);
                }
                if let Some(at) = &args.at {
                    body["at"] = json!(at);
                }
                let started = client
                    .post(&format!("/v1/groups/{group}/failover"), &body)
                    .await?;
                if args.test {
                    match args.format {
                        Format::Json => println!("{}", started["snapshot"]),
                        Format::Text => {
                            let snapshot = &started["snapshot"];
                            println!(
                                "test failover: writable snapshot {} of seq {} on {}; replication goes on",
                                snapshot["name"].as_str().unwrap_or("?"),
                                snapshot["point"]["seq"],
                                snapshot["server"].as_str().unwrap_or("?")
                            );
                            for export in snapshot["exports"].as_array().into_iter().flatten() {
                                println!(
                                    "  {:<16} {}",
                                    export["volume"].as_str().unwrap_or("?"),
                                    export["export"].as_str().unwrap_or("?")
                                );
                            }
                        }
                    }
                    return Ok(());
                }
                run_operation(&client, &started, args.format).await
            })
        }
    }
}

pub fn failback(
    args: GroupYes,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    confirm(
        &format!(
            "fail group {} back to its configured production (delta resync, then a planned switch)",
            args.group
        ),
        args.yes,
    )?;
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let started = client
            .post(
                &format!("/v1/groups/{}/failback", args.group),
                &json!({"confirm": true}),
            )
            .await?;
        run_operation(&client, &started, args.format).await
    })
}
