//! `redoubt attach GROUP LV` / `redoubt detach GROUP LV`: a block device for applications,
//! `/dev/redoubt/GROUP/LV`, on the server that serves the LV (the group's production server,
//! or, with `--snapshot`, the recovery server holding the snapshot, read-only).
//!
//! The console finds that server and forwards to its agent, which owns the attachment
//! (`POST/DELETE /v1/groups/{group}/attachments`, `docs/agent-api.md`): the device appears on
//! that server, wherever the CLI runs. Exit codes: 3 when refused (attached already, in use).

use serde_json::json;

use crate::cli::{AttachArgs, Format};
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

fn check_names(args: &AttachArgs) -> Result<(), Failure> {
    let names = [
        ("group", Some(&args.group)),
        ("LV", Some(&args.volume)),
        ("snapshot", args.snapshot.as_ref()),
        ("server", args.server.as_ref()),
    ];
    for (what, name) in names {
        if let Some(name) = name {
            if !redoubt_config::is_valid_name(name) {
                return Err(Failure::new(
                    ExitCodeKind::Invalid,
                    format!("invalid {what} name {name:?}: 1 to 63 of a-z, 0-9, '.', '_', '-'"),
                ));
            }
        }
    }
    Ok(())
}

fn describe(args: &AttachArgs) -> String {
    match &args.snapshot {
        Some(snapshot) => format!("{}/{} of snapshot {snapshot}", args.group, args.volume),
        None => format!("{}/{}", args.group, args.volume),
    }
}

pub fn attach(
    args: AttachArgs,
    console: Option<String>,
    token_file: Option<std::path::PathBuf>,
) -> Result<(), Failure> {
    check_names(&args)?;
    let client = ConsoleClient::from_options(console, token_file)?;
    let mut body = json!({"volume": args.volume});
    if let Some(snapshot) = &args.snapshot {
        body["snapshot"] = json!(snapshot);
    }
    if let Some(server) = &args.server {
        body["server"] = json!(server);
    }
    let path = format!("/v1/groups/{}/attachments", args.group);
    let attachment = crate::remote_cmd::runtime()?.block_on(client.post(&path, &body))?;
    match args.format {
        Format::Json => println!("{attachment}"),
        Format::Text => println!(
            "attached {} on {}: {} -> {} ({}{})",
            describe(&args),
            attachment["server"].as_str().unwrap_or("?"),
            attachment["link"].as_str().unwrap_or("?"),
            attachment["device"].as_str().unwrap_or("?"),
            attachment["backend"].as_str().unwrap_or("?"),
            if attachment["read_only"] == true {
                ", read-only"
            } else {
                ""
            },
        ),
    }
    Ok(())
}

pub fn detach(
    args: AttachArgs,
    console: Option<String>,
    token_file: Option<std::path::PathBuf>,
) -> Result<(), Failure> {
    check_names(&args)?;
    let client = ConsoleClient::from_options(console, token_file)?;
    let mut query = Vec::new();
    if let Some(snapshot) = &args.snapshot {
        query.push(format!("snapshot={snapshot}"));
    }
    if let Some(server) = &args.server {
        query.push(format!("server={server}"));
    }
    let mut path = format!("/v1/groups/{}/attachments/{}", args.group, args.volume);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let answer = crate::remote_cmd::runtime()?.block_on(client.delete(&path))?;
    match args.format {
        Format::Json => println!("{answer}"),
        Format::Text => println!(
            "detached {} on {}: removed {} ({})",
            describe(&args),
            answer["server"].as_str().unwrap_or("?"),
            answer["detached"]["link"].as_str().unwrap_or("?"),
            answer["detached"]["device"].as_str().unwrap_or("?"),
        ),
    }
    Ok(())
}
