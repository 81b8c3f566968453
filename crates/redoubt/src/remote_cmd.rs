//! The commands that talk to the console: `config apply/watch/retry/show/history` and
//! `status`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};
use crate::progress::Progress;

/// How often a watching CLI polls the initialization state.
pub const WATCH_POLL_MS: u64 = 200;

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::new(ExitCodeKind::Failed, format!("start the runtime: {error}")))
}

fn read_config(path: &Path) -> Result<String, Failure> {
    // Validate locally first: every error at once, with lines, and nothing sent.
    if let Err(diagnostics) = redoubt_config::load(path) {
        for diagnostic in &diagnostics {
            eprintln!("{diagnostic}");
        }
        return Err(Failure::new(
            ExitCodeKind::Invalid,
            format!(
                "{} is not a valid configuration ({} error(s))",
                path.display(),
                diagnostics.len()
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(|error| {
        Failure::new(
            ExitCodeKind::Invalid,
            format!("read {}: {error}", path.display()),
        )
    })
}

fn print_plans(plans: &Value) {
    let Some(plans) = plans.as_array() else {
        return;
    };
    if plans.is_empty() {
        println!("No change: the configuration is already in effect; nothing to initialize.");
    }
    for plan in plans {
        println!(
            "Replication group {}",
            plan["group"].as_str().unwrap_or("?")
        );
        for change in plan["changes"].as_array().into_iter().flatten() {
            println!("  - {}", change.as_str().unwrap_or(""));
        }
        for step in plan["steps"].as_array().into_iter().flatten() {
            let deletes = step["deletes"].as_array().cloned().unwrap_or_default();
            let flag = if deletes.iter().any(|d| d["data"] == true) {
                "   [DELETES DATA]"
            } else {
                ""
            };
            println!(
                "  {:>4}. {}{flag}",
                step["number"],
                step["title"].as_str().unwrap_or("")
            );
            for row in step["rows"].as_array().into_iter().flatten() {
                match (row["server"].as_str(), row["volume"].as_str()) {
                    (Some(server), _) => println!(
                        "          {server} ({})",
                        row["role"].as_str().unwrap_or("")
                    ),
                    (None, Some(volume)) => println!("          volume {volume}"),
                    _ => {}
                }
            }
            for deletion in &deletes {
                let marker = if deletion["data"] == true { "!" } else { "-" };
                println!(
                    "          {marker} {}",
                    deletion["description"].as_str().unwrap_or("")
                );
            }
        }
        for warning in plan["warnings"].as_array().into_iter().flatten() {
            println!("  Note: {}", warning.as_str().unwrap_or(""));
        }
    }
}

fn confirm(question: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            ExitCodeKind::Refused,
            "confirmation needed: run on a terminal or pass --yes",
        ));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            ExitCodeKind::Refused,
            "not confirmed; nothing was changed",
        ))
    }
}

/// `redoubt config plan FILE` with a console: the plan against the configuration in effect,
/// computed by the console exactly as `config apply` computes it, nothing saved.
pub async fn plan(
    client: &ConsoleClient,
    file: &Path,
    destroy: bool,
    format: Format,
) -> Result<(), Failure> {
    let toml = read_config(file)?;
    let planned = client
        .post(
            "/v1/config/plan",
            &json!({"toml": toml, "destroy": destroy}),
        )
        .await?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&planned["plans"]).unwrap_or_default()
        ),
        Format::Text => {
            match planned["base_version"].as_u64() {
                Some(0) | None => {
                    println!("Planned against the console's configuration: none is in effect yet.")
                }
                Some(version) => println!(
                    "Planned against configuration version {version}, in effect on the console."
                ),
            }
            let no_plan = planned["plans"].as_array().is_none_or(Vec::is_empty);
            if no_plan && planned["changed"] == true {
                println!("No group changes, so nothing to initialize; `config apply` saves it as a new version.");
            } else {
                print_plans(&planned["plans"]);
            }
        }
    }
    Ok(())
}

/// `redoubt config apply FILE`: plan, confirm, save (step 1), then follow the initialization.
pub async fn apply(
    client: &ConsoleClient,
    file: &Path,
    yes: bool,
    destroy: bool,
    follow: bool,
) -> Result<(), Failure> {
    let toml = read_config(file)?;
    let mut body = json!({"toml": toml, "destroy": destroy});
    let planned = client.post("/v1/config/plan", &body).await?;
    let plans = planned["plans"].clone();
    let groups: Vec<String> = plans
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|plan| plan["group"].as_str().map(str::to_string))
        .collect();
    if groups.is_empty() && planned["changed"] == true {
        // Saved as a new version; no group changes, so nothing runs on any server.
        body["confirm"] = json!(true);
        let applied = client.post("/v1/config", &body).await?;
        println!(
            "No group changes, so nothing to initialize. Saved configuration version {}.",
            applied["version"]
        );
        return Ok(());
    }
    print_plans(&plans);
    if groups.is_empty() {
        return Ok(());
    }
    let destructive = plans
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|plan| plan["steps"].as_array().cloned().unwrap_or_default())
        .any(|step| {
            step["deletes"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["data"] == true))
        });
    if !yes {
        let question = if destructive {
            "This initialization DELETES DATA as listed above. Apply it?"
        } else {
            "Apply this configuration?"
        };
        confirm(question)?;
    }
    // Confirmed (or --yes): the console refuses a destructive change without it (412).
    body["confirm"] = json!(true);
    let applied = client.post("/v1/config", &body).await?;
    println!("Saved configuration version {}.", applied["version"]);
    if !follow {
        return Ok(());
    }
    for group in &groups {
        watch(client, group).await?;
    }
    // The initialization is done, but a full sync it started (new LV, new recovery server)
    // goes on: say so, and how to follow it, rather than let "done" read as "in sync".
    if let Ok(status) = client.get("/v1/status").await {
        for group in &groups {
            if let Some(line) = sync_going_on(&status, group) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Pure: a line saying that `group`'s full sync goes on after its initialization, if it does.
fn sync_going_on(status: &Value, group: &str) -> Option<String> {
    let entry = status["groups"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"].as_str() == Some(group))?;
    let syncing: Vec<String> = entry["targets"]
        .as_array()?
        .iter()
        .filter_map(|target| {
            let pct = target["super_transaction_pct"].as_f64()?;
            (pct < 100.0).then(|| format!("{} {pct:.0}%", target["server"].as_str().unwrap_or("?")))
        })
        .collect();
    if syncing.is_empty() {
        return None;
    }
    Some(format!(
        "The initialization of {group} is done; its full sync goes on in the background ({}): follow it with `redoubt status {group} --wait-sync`.",
        syncing.join(", ")
    ))
}

/// Follows one group's initialization until it is done or failed. Ctrl-C detaches only.
pub async fn watch(client: &ConsoleClient, group: &str) -> Result<(), Failure> {
    let mut progress = Progress::new();
    loop {
        let init = client.get(&format!("/v1/init/{group}")).await?;
        progress.show(&init);
        match init["state"].as_str() {
            Some("done") | Some("idle") => return Ok(()),
            Some("failed") => {
                return Err(Failure::new(
                    ExitCodeKind::Failed,
                    format!("the initialization of {group} failed; fix the cause, then `redoubt config retry {group}`"),
                ))
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(WATCH_POLL_MS)) => {}
            _ = tokio::signal::ctrl_c() => {
                println!("\nDetached: the initialization goes on (it cannot be stopped). Follow it again with `redoubt config watch {group}`.");
                return Ok(());
            }
        }
    }
}

pub async fn retry(client: &ConsoleClient, group: &str) -> Result<(), Failure> {
    client
        .post(&format!("/v1/init/{group}/retry"), &json!({}))
        .await?;
    watch(client, group).await
}

pub async fn show(client: &ConsoleClient, format: Format) -> Result<(), Failure> {
    let current = client.get("/v1/config").await?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&current).unwrap_or_default()
        ),
        Format::Text => {
            println!("# configuration version {}", current["version"]);
            print!(
                "{}",
                without_version_header(current["toml"].as_str().unwrap_or(""))
            );
        }
    }
    Ok(())
}

/// The TOML without the `# configuration version N` lines a `config show` put at its top: a
/// file saved from `config show` and applied again would otherwise stack them.
fn without_version_header(toml: &str) -> &str {
    let mut rest = toml;
    while let Some(line_end) = rest.find('\n') {
        let line = &rest[..line_end];
        let is_header = line
            .strip_prefix("# configuration version ")
            .is_some_and(|number| {
                !number.is_empty() && number.trim().bytes().all(|b| b.is_ascii_digit())
            });
        if !is_header {
            break;
        }
        rest = &rest[line_end + 1..];
    }
    rest
}

pub async fn history(client: &ConsoleClient, format: Format) -> Result<(), Failure> {
    let history = client.get("/v1/config/history").await?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&history).unwrap_or_default()
        ),
        Format::Text => {
            for version in history.as_array().into_iter().flatten() {
                let saved = version["saved_unix_ms"].as_u64().map_or_else(
                    || "at an unknown time".to_string(),
                    |ms| redoubt_points::format_time(ms.saturating_mul(1_000_000)),
                );
                println!(
                    "version {}  saved {saved}  groups: {}",
                    version["version"],
                    version["groups"]
                        .as_array()
                        .map(|g| g
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub async fn status(
    client: &ConsoleClient,
    group: Option<&str>,
    format: Format,
) -> Result<(), Failure> {
    let mut status = client.get("/v1/status").await?;
    if let (Some(group), Some(groups)) = (group, status["groups"].as_array_mut()) {
        groups.retain(|g| g["name"].as_str() == Some(group));
        if groups.is_empty() {
            return Err(Failure::new(
                ExitCodeKind::Invalid,
                format!("no group named {group}"),
            ));
        }
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        ),
        Format::Text => print!("{}", status_text(&status)),
    }
    Ok(())
}

/// A field for people: `-` when unknown (null or missing), never `null`.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A status code with what it means (the product's codes: `shared/spec/PRODUCT.md`).
fn status_code_text(code: &Value) -> String {
    match code.as_u64() {
        Some(30) => "30 (replicating)".to_string(),
        Some(60) => "60 (loaded, apply stopped)".to_string(),
        Some(100) => "100 (not loaded)".to_string(),
        Some(other) => other.to_string(),
        None => "- (unknown: production does not report this server)".to_string(),
    }
}

fn status_text(status: &Value) -> String {
    let mut out = String::new();
    let groups = status["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        out.push_str("no groups are configured (`redoubt config apply FILE` adds them)\n");
        for server in status["servers"].as_array().into_iter().flatten() {
            let state = if server["reachable"] == true {
                format!(
                    "reachable, config version {}",
                    shown(&server["config_version"])
                )
            } else {
                format!("UNREACHABLE: {}", shown(&server["error"]))
            };
            out.push_str(&format!(
                "server {:<10} {:<22} {state}\n",
                shown(&server["name"]),
                shown(&server["address"])
            ));
        }
        return out;
    }
    for group in &groups {
        out.push_str(&format!(
            "group {}  {}  mode {}  config version {}  initialization {}\n",
            group["name"].as_str().unwrap_or("?"),
            group["direction"].as_str().unwrap_or(""),
            group["mode"].as_str().unwrap_or(""),
            group["config_version"],
            group["initialization"]["state"].as_str().unwrap_or("?"),
        ));
        let production = shown(&group["production"]);
        let reachable = if group["production_reachable"] == false {
            "  UNREACHABLE"
        } else {
            ""
        };
        let failover = &group["failover"];
        if failover.is_object() {
            let old = &failover["old_production"];
            out.push_str(&format!(
                "  production {production}{reachable}  (configured: {}; {} failover at seq {}, {})\n",
                shown(&group["configured_production"]),
                shown(&failover["kind"]),
                shown(&failover["point_seq"]),
                match failover["state"].as_str() {
                    Some("before_commit") => "not committed: `redoubt failover commit|abort`",
                    Some("committed") => "committed: `redoubt failback` returns",
                    Some("failing_back") => "failing back",
                    _ => "state unknown",
                }
            ));
            out.push_str(&format!(
                "  old production {}: {}\n",
                shown(&old["server"]),
                match old["state"].as_str() {
                    Some("following") => "follows the acting production",
                    Some("fenced") => "fenced (its data path is down until failback)",
                    Some("unreachable") => "unreachable",
                    Some("serving") => "STILL SERVING AS PRODUCTION: fence it",
                    _ => "state unknown",
                }
            ));
        } else {
            out.push_str(&format!("  production {production}{reachable}\n"));
        }
        for volume in group["volumes"].as_array().into_iter().flatten() {
            let attached = &volume["attached"];
            let device = if attached.is_object() {
                format!(
                    "  attached {} ({})",
                    shown(&attached["link"]),
                    shown(&attached["state"])
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  volume {:<16} {:>12} bytes  export {}{device}\n",
                volume["name"].as_str().unwrap_or(""),
                volume["size_bytes"],
                shown(&volume["export"])
            ));
        }
        for target in group["targets"].as_array().into_iter().flatten() {
            let behind = target["journal_seq"]
                .as_u64()
                .zip(target["applied_seq"].as_u64())
                .map_or_else(
                    || "-".to_string(),
                    |(journal, applied)| journal.saturating_sub(applied).to_string(),
                );
            let percent = |value: &Value| {
                value
                    .as_f64()
                    .map_or_else(|| "-".to_string(), |pct| format!("{pct:.1}%"))
            };
            out.push_str(&format!(
                "  target {:<10} status {}  applied seq {} of {} ({behind} behind)  in flight {} bytes  lag {} s  {} MB/s  sync {}  journal use: production {} recovery {}{}\n",
                target["server"].as_str().unwrap_or(""),
                status_code_text(&target["status_code"]),
                shown(&target["applied_seq"]),
                shown(&target["journal_seq"]),
                shown(&target["backlog_bytes"]),
                target["lag_seconds"].as_f64().map_or_else(|| "-".to_string(), |lag| format!("{lag:.1}")),
                target["speed_mb_s"].as_f64().map_or_else(|| "-".to_string(), |speed| format!("{speed:.1}")),
                target["super_transaction_pct"].as_f64().map_or_else(|| "-".to_string(), |pct| format!("{pct:.0}%")),
                percent(&target["source_backlog_pct"]),
                percent(&target["target_backlog_pct"]),
                if target["needs_resync"] == true { "  NEEDS RESYNC" } else { "" }
            ));
            if target["apply_paused"] == true {
                out.push_str(&format!(
                    "    apply PAUSED by a rollback: records are received, not applied, until `redoubt resume {} -s {}`\n",
                    group["name"].as_str().unwrap_or("GROUP"),
                    target["server"].as_str().unwrap_or("SERVER")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_status_after_a_failover_names_the_acting_production_and_the_old_one() {
        let status = json!({"groups": [{
            "name": "erp", "production": "dr-b", "configured_production": "prod-a",
            "production_reachable": true, "direction": "dr-b -> dr-c", "mode": "async",
            "config_version": 3, "initialization": {"state": "idle"},
            "failover": {"state": "committed", "kind": "unplanned", "point_seq": 322,
                         "old_production": {"server": "prod-a", "state": "unreachable"}},
            "volumes": [{"name": "lv_data01", "size_bytes": 1024,
                         "export": "nbd://127.0.0.1:10810/lv_data01",
                         "attached": {"link": "/dev/redoubt/erp/lv_data01", "state": "attached"}}],
            "targets": [{"server": "dr-c", "status_code": null, "applied_seq": 322,
                         "journal_seq": null}]}]});
        let text = status_text(&status);
        assert!(text.contains("group erp  dr-b -> dr-c"), "{text}");
        assert!(
            text.contains(
                "production dr-b  (configured: prod-a; unplanned failover at seq 322, committed"
            ),
            "{text}"
        );
        assert!(
            text.contains("old production prod-a: unreachable"),
            "{text}"
        );
        assert!(
            text.contains("export nbd://127.0.0.1:10810/lv_data01  attached /dev/redoubt/erp/lv_data01 (attached)"),
            "{text}"
        );
        assert!(text.contains("applied seq 322 of - (- behind)"), "{text}");
        assert!(!text.contains("null"), "no JSON null for people: {text}");
    }

    #[test]
    fn a_full_sync_that_goes_on_after_the_initialization_is_announced() {
        let status = json!({"groups": [{"name": "erp", "targets": [
            {"server": "dr-b", "super_transaction_pct": 56.4},
            {"server": "dr-c", "super_transaction_pct": 100.0}]}]});
        let line = sync_going_on(&status, "erp").unwrap();
        assert!(line.contains("(dr-b 56%)"), "{line}");
        assert!(line.contains("redoubt status erp --wait-sync"), "{line}");
        let synced = json!({"groups": [{"name": "erp", "targets": [
            {"server": "dr-b", "super_transaction_pct": 100.0}]}]});
        assert_eq!(sync_going_on(&synced, "erp"), None);
    }

    #[test]
    fn config_show_does_not_stack_version_headers() {
        let saved = "# configuration version 9\n# configuration version 1\n[[server]]\n";
        assert_eq!(without_version_header(saved), "[[server]]\n");
        let mine = "# my own comment\n# configuration version 3\n";
        assert_eq!(without_version_header(mine), mine);
    }

    #[test]
    fn text_status_without_groups_shows_the_servers_and_says_so() {
        let status = json!({"groups": [], "servers": [
            {"name": "prod-a", "address": "127.0.0.1:7411", "reachable": true, "config_version": 0},
            {"name": "dr-b", "address": "127.0.0.1:7412", "reachable": false,
             "error": "connection refused"}]});
        let text = status_text(&status);
        assert!(text.starts_with("no groups are configured"), "{text}");
        assert!(text.contains("server prod-a"), "{text}");
        assert!(text.contains("UNREACHABLE: connection refused"), "{text}");
    }
}
