//! `redoubt audit` and `redoubt token rotate`: the console's audit log and API tokens
//! (`docs/security.md`).

use serde_json::{json, Value};

use crate::cli::{Format, TokenCommand};
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

/// Entries asked per request while paging through the log.
const AUDIT_PAGE_ENTRIES: usize = 1000;

pub async fn audit(client: &ConsoleClient, after: u64, format: Format) -> Result<(), Failure> {
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor = after;
    loop {
        let page = client
            .get(&format!(
                "/v1/audit?after={cursor}&limit={AUDIT_PAGE_ENTRIES}"
            ))
            .await?;
        let batch = page["entries"].as_array().cloned().unwrap_or_default();
        let next = page["next_after"].as_u64().unwrap_or(cursor);
        let done = batch.len() < AUDIT_PAGE_ENTRIES || next <= cursor;
        entries.extend(batch);
        cursor = next;
        if done {
            break;
        }
    }
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&entries)
                .map_err(|error| Failure::new(ExitCodeKind::Failed, error.to_string()))?;
            println!("{text}");
        }
        Format::Text => {
            println!(
                "{:>6}  {:<13}  {:<9}  {:<6} {:<32} {:<10} {:>3} {:<7}  SUMMARY",
                "ID", "WHEN (unix ms)", "WHO", "METHOD", "PATH", "GROUP", "", "OUTCOME"
            );
            for entry in &entries {
                println!(
                    "{:>6}  {:<13}  {:<9}  {:<6} {:<32} {:<10} {:>3} {:<7}  {}",
                    entry["id"],
                    entry["unix_ms"],
                    entry["who"].as_str().unwrap_or(""),
                    entry["method"].as_str().unwrap_or(""),
                    entry["path"].as_str().unwrap_or(""),
                    entry["group"].as_str().unwrap_or("-"),
                    entry["status"],
                    entry["outcome"].as_str().unwrap_or(""),
                    entry["summary"].as_str().unwrap_or(""),
                );
            }
        }
    }
    Ok(())
}

pub async fn token(client: &ConsoleClient, command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Rotate { role } => {
            let answer = client
                .post("/v1/auth/rotate", &json!({"role": role}))
                .await?;
            println!(
                "New {} token written to {} (the old one no longer works):",
                answer["role"].as_str().unwrap_or(""),
                answer["file"]
                    .as_str()
                    .unwrap_or("the console's state directory"),
            );
            println!("{}", answer["token"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
