//! `redoubt verify GROUP` and `redoubt resync GROUP --server S --checksum`: start the
//! console operation, draw its progress, print the result (`docs/verify.md`).
//!
//! Exit codes: 0 every replica equals production (verify) / the resync converged; 1 a region
//! differs (verify) or the operation failed; 2 invalid input; 3 refused (one already
//! running); 4 console unreachable.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    pub group: String,
    /// Region size in bytes (default 1 MiB; 4 KiB..=64 MiB, a multiple of 4096).
    #[arg(long)]
    pub region_size_bytes: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ResyncArgs {
    pub group: String,
    /// The recovery server to resync.
    #[arg(long, short = 's')]
    pub server: String,
    /// Compare region hashes and send only the regions that differ.
    #[arg(long)]
    pub checksum: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

fn check_name(group: &str) -> Result<(), Failure> {
    let valid = group.len() <= 63
        && group
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && group.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if valid {
        Ok(())
    } else {
        Err(Failure::new(
            ExitCodeKind::Invalid,
            format!("{group:?} is not a valid name ([a-z0-9][a-z0-9._-]{{0,62}})"),
        ))
    }
}

fn failed(operation: &Value) -> Failure {
    Failure::new(
        ExitCodeKind::Failed,
        format!(
            "{} {} failed: {}",
            operation["kind"].as_str().unwrap_or("operation"),
            operation["id"].as_str().unwrap_or("?"),
            operation["error"].as_str().unwrap_or("unknown error")
        ),
    )
}

pub fn verify(
    args: VerifyArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    check_name(&args.group)?;
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let mut body = json!({});
        if let Some(region_size_bytes) = args.region_size_bytes {
            body["region_size_bytes"] = json!(region_size_bytes);
        }
        let started = client
            .post(&format!("/v1/groups/{}/verify", args.group), &body)
            .await?;
        let id = started["operation"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Progress on stderr (stdout carries the result); a failed operation is exit 1.
        let operation = crate::progress::operation(&client, &id).await?;
        if operation["state"] != "done" {
            return Err(failed(&operation));
        }
        let result = &operation["result"];
        let total = result["differences_total"].as_u64().unwrap_or(0);
        match args.format {
            Format::Json => println!("{result}"),
            Format::Text => {
                println!(
                    "{}",
                    operation["message"].as_str().unwrap_or("verify finished")
                );
                for difference in result["differences"].as_array().into_iter().flatten() {
                    println!(
                        "  {} {} region {} (offset {} bytes, {} bytes)",
                        difference["server"].as_str().unwrap_or("?"),
                        difference["volume"].as_str().unwrap_or("?"),
                        difference["region"],
                        difference["offset_bytes"],
                        difference["length_bytes"],
                    );
                }
                let listed = result["differences"].as_array().map_or(0, Vec::len) as u64;
                if total > listed {
                    println!("  … and {} more", total - listed);
                }
            }
        }
        if total > 0 {
            return Err(Failure::silent(ExitCodeKind::Failed));
        }
        Ok(())
    })
}

pub fn resync(
    args: ResyncArgs,
    console: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    check_name(&args.group)?;
    check_name(&args.server)?;
    if !args.checksum {
        return Err(Failure::new(
            ExitCodeKind::Invalid,
            "only `--checksum` resyncs are started by hand; full and bitmap resyncs run on their own",
        ));
    }
    let client = ConsoleClient::from_options(console, token_file)?;
    crate::remote_cmd::runtime()?.block_on(async {
        let started = client
            .post(
                &format!("/v1/groups/{}/resync", args.group),
                &json!({"server": args.server, "checksum": true}),
            )
            .await?;
        let id = started["operation"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Progress on stderr (stdout carries the result); a failed operation is exit 1.
        let operation = crate::progress::operation(&client, &id).await?;
        if operation["state"] != "done" {
            return Err(failed(&operation));
        }
        match args.format {
            Format::Json => println!("{}", operation["result"]),
            Format::Text => println!(
                "{}",
                operation["message"].as_str().unwrap_or("resync finished")
            ),
        }
        Ok(())
    })
}
