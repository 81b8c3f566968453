//! `redoubt snapshot create | list | delete`: thin client of the console's snapshot routes
//! (`docs/snapshots.md`, `docs/recovery-api.md`).
//!
//! Exit codes: 0 done; 1 failed; 2 invalid input (a bad POINT or name, an unknown server, a
//! point outside the window); 3 refused; 4 console unreachable.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot every LV of the group at a restore point on a recovery server; each LV is
    /// exported over NBD as SNAPSHOT.LV while apply goes on.
    Create(CreateArgs),
    /// The group's snapshots on every recovery server, with their exports and the snapshot
    /// container usage.
    List(ListArgs),
    /// Delete a snapshot: its exports go, and a writable snapshot's writes with it.
    Delete(DeleteArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    pub group: String,
    /// The recovery server whose replica is snapshotted.
    #[arg(long, short = 's')]
    pub server: String,
    /// latest, seq:N, mark:NAME or an RFC 3339 time (with its zone).
    #[arg(long)]
    pub at: String,
    /// Accept writes (kept copy-on-write in the snapshot container, discarded on delete).
    #[arg(long)]
    pub writable: bool,
    /// The snapshot's name (default: snap-SEQ).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    pub group: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub group: String,
    pub name: String,
    /// The recovery server that holds the snapshot.
    #[arg(long, short = 's')]
    pub server: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(
    command: SnapshotCommand,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    match command {
        SnapshotCommand::Create(args) => create(args, console, token_file),
        SnapshotCommand::List(args) => list(args, console, token_file),
        SnapshotCommand::Delete(args) => delete(args, console, token_file),
    }
}

fn invalid(message: String) -> Failure {
    Failure::new(ExitCodeKind::Invalid, message)
}

fn check_name(name: &str) -> Result<(), Failure> {
    if redoubt_config::is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid snapshot name {name:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

fn create(
    args: CreateArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    redoubt_points::Point::parse(&args.at)
        .map_err(|error| invalid(format!("--at {:?}: {error}", args.at)))?;
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let client = ConsoleClient::from_options(console, token_file)?;
    let mut body = json!({"server": args.server, "at": args.at, "writable": args.writable});
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    crate::remote_cmd::runtime()?.block_on(async {
        let snapshot = client
            .post(&format!("/v1/groups/{}/snapshots", args.group), &body)
            .await?;
        match args.format {
            Format::Json => println!("{snapshot}"),
            Format::Text => print_snapshot(&snapshot),
        }
        Ok(())
    })
}

fn print_snapshot(snapshot: &Value) {
    println!(
        "snapshot {} on {} at seq {} ({}){}{}",
        snapshot["name"].as_str().unwrap_or("?"),
        snapshot["server"].as_str().unwrap_or("?"),
        snapshot["point"]["seq"],
        snapshot["point"]["time"].as_str().unwrap_or("time unknown"),
        if snapshot["writable"].as_bool() == Some(true) {
            ", writable"
        } else {
            ", read-only"
        },
        snapshot["invalid"]
            .as_str()
            .map(|reason| format!(", INVALID: {reason}"))
            .unwrap_or_default(),
    );
    for export in snapshot["exports"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {}",
            export["volume"].as_str().unwrap_or("?"),
            export["export"].as_str().unwrap_or("?")
        );
    }
}

fn list(
    args: ListArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let answer = client
            .get(&format!("/v1/groups/{}/snapshots", args.group))
            .await?;
        match args.format {
            Format::Json => println!("{answer}"),
            Format::Text => {
                for server in answer["servers"].as_array().into_iter().flatten() {
                    match server["error"].as_str() {
                        Some(error) => println!(
                            "{}: unreachable: {error}",
                            server["server"].as_str().unwrap_or("?")
                        ),
                        None => println!(
                            "{}: snapshot container {:.1}% used ({} of {} bytes)",
                            server["server"].as_str().unwrap_or("?"),
                            server["snapshot_usage_pct"].as_f64().unwrap_or(0.0),
                            server["usage_bytes"],
                            server["capacity_bytes"]
                        ),
                    }
                }
                let snapshots = answer["snapshots"].as_array().cloned().unwrap_or_default();
                if snapshots.is_empty() {
                    println!("no snapshots in group {}", args.group);
                }
                for snapshot in &snapshots {
                    print_snapshot(snapshot);
                }
            }
        }
        Ok(())
    })
}

fn delete(
    args: DeleteArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    check_name(&args.name)?;
    if !redoubt_config::is_valid_name(&args.server) {
        return Err(invalid(format!("invalid server name {:?}", args.server)));
    }
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let answer = client
            .delete(&format!(
                "/v1/groups/{}/snapshots/{}?server={}",
                args.group, args.name, args.server
            ))
            .await?;
        match args.format {
            Format::Json => println!("{answer}"),
            Format::Text => println!(
                "deleted snapshot {} on {}",
                answer["deleted"].as_str().unwrap_or(&args.name),
                args.server
            ),
        }
        Ok(())
    })
}
