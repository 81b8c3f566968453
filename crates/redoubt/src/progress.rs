//! Progress displays. The initialization's step list with a mark per step and row, redrawn in
//! place on a terminal, one line per change otherwise (logs, pipes); and [`operation`], the bar
//! of any long operation of the recovery API (rollback, failover, failback, verify, resync):
//! it polls `GET /v1/operations/{id}` (`docs/recovery-api.md`) and draws an indicatif bar on
//! a terminal, a line per change otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

/// How often [`operation`] polls the operation's state.
pub const OPERATION_POLL_MS: u64 = 250;

pub struct Progress {
    terminal: bool,
    lines_drawn: usize,
    last: Vec<Entry>,
    /// The step whose line the log printed last (not a terminal).
    last_step: Option<String>,
}

fn mark(state: &str) -> &'static str {
    match state {
        "done" => "\u{2713}",
        "running" => "\u{25b6}",
        "failed" => "\u{2717}",
        _ => "\u{b7}",
    }
}

/// One line of an initialization document's display, with what identifies it across polls.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// `header`, `step N`, `row N LABEL`, `error N LABEL`: the same line in the next poll.
    key: String,
    /// The key of the step the line belongs to (rows and errors), for the log display.
    step_key: Option<String>,
    /// The line as drawn, indented.
    text: String,
    /// A step or row that has not started: the plan printed before already listed it.
    pending: bool,
}

/// The lines of an initialization document (`GET /v1/init/{group}`).
fn entries(init: &Value) -> Vec<Entry> {
    let mut out = vec![Entry {
        key: "header".into(),
        step_key: None,
        text: format!(
            "Configuration initialization of {} (version {}): {}",
            init["group"].as_str().unwrap_or("?"),
            init["version"],
            init["state"].as_str().unwrap_or("?")
        ),
        pending: false,
    }];
    for step in init["steps"].as_array().into_iter().flatten() {
        let rows = step["rows"].as_array().cloned().unwrap_or_default();
        let step_state = step["state"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let states: Vec<&str> = rows.iter().filter_map(|r| r["state"].as_str()).collect();
                if states.contains(&"failed") {
                    "failed".into()
                } else if !states.is_empty() && states.iter().all(|s| *s == "done") {
                    "done".into()
                } else if states.iter().any(|s| *s == "running" || *s == "done") {
                    "running".into()
                } else {
                    "pending".into()
                }
            });
        let step_key = format!("step {}", step["number"]);
        out.push(Entry {
            key: step_key.clone(),
            step_key: None,
            text: format!(
                "  {} {:>2}. {}",
                mark(&step_state),
                step["number"],
                step["title"].as_str().unwrap_or("")
            ),
            pending: step_state == "pending",
        });
        let error_entry = |label: &str, error: &str| Entry {
            key: format!("error {} {label}", step["number"]),
            step_key: Some(step_key.clone()),
            text: format!("          error: {error}"),
            pending: false,
        };
        if rows.len() > 1
            || rows
                .iter()
                .any(|r| r.get("server").is_some() || r.get("volume").is_some())
        {
            for row in &rows {
                let state = row["state"].as_str().unwrap_or("pending");
                let label = match (row["server"].as_str(), row["volume"].as_str()) {
                    (Some(server), _) => match row["role"].as_str() {
                        Some(role) => format!("{server} ({role})"),
                        None => server.to_string(),
                    },
                    (None, Some(volume)) => format!("volume {volume}"),
                    _ => String::new(),
                };
                if label.is_empty() {
                    continue;
                }
                out.push(Entry {
                    key: format!("row {} {label}", step["number"]),
                    step_key: Some(step_key.clone()),
                    text: format!("        {} {label}", mark(state)),
                    pending: state == "pending",
                });
                if let Some(error) = row["error"].as_str() {
                    out.push(error_entry(&label, error));
                }
            }
        } else if let Some(error) = rows.first().and_then(|r| r["error"].as_str()) {
            out.push(error_entry("", error));
        }
    }
    out
}

/// The lines a log (not a terminal) gets when the document goes from `previous` to `current`:
/// one line per change of state, nothing for what has not started (the plan listed it), and a
/// row's or an error's step line before it when the log's last step line was another step, so
/// every row is read under its step.
///
/// The header (the initialization's state) comes first on the first poll, and after the
/// steps otherwise: "done" is read after the steps that made it so.
fn log_lines(previous: &[Entry], current: &[Entry], last_step: &mut Option<String>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut header = None;
    for entry in current {
        let before = previous.iter().find(|old| old.key == entry.key);
        let changed = match before {
            Some(old) => old.text != entry.text,
            None => !entry.pending,
        };
        if !changed {
            continue;
        }
        if entry.key == "header" && !previous.is_empty() {
            header = Some(entry.text.clone());
            continue;
        }
        match &entry.step_key {
            None if entry.key != "header" => *last_step = Some(entry.key.clone()),
            None => {}
            Some(step_key) if last_step.as_ref() != Some(step_key) => {
                if let Some(step) = current.iter().find(|step| &step.key == step_key) {
                    lines.push(step.text.clone());
                }
                *last_step = Some(step_key.clone());
            }
            Some(_) => {}
        }
        lines.push(entry.text.clone());
    }
    lines.extend(header);
    lines
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            lines_drawn: 0,
            last: Vec::new(),
            last_step: None,
        }
    }

    pub fn show(&mut self, init: &Value) {
        let current = entries(init);
        if current == self.last {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if self.terminal {
            if self.lines_drawn > 0 {
                // Up to the first line we drew, and clear from there down.
                let _ = write!(stdout, "\x1b[{}A\x1b[J", self.lines_drawn);
            }
            for entry in &current {
                let _ = writeln!(stdout, "{}", entry.text);
            }
            self.lines_drawn = current.len();
        } else {
            for line in log_lines(&self.last, &current, &mut self.last_step) {
                let _ = writeln!(stdout, "{line}");
            }
        }
        let _ = stdout.flush();
        self.last = current;
    }
}

/// Where an operation stands, from its `GET /v1/operations/{id}` document.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationView {
    pub state: String,
    /// 0..=100.
    pub pct: u64,
    pub line: String,
}

/// Pure: what to show of an operation document.
pub fn operation_view(document: &Value) -> OperationView {
    let state = document["state"].as_str().unwrap_or("running").to_string();
    let pct = match document["pct"].as_f64().filter(|pct| pct.is_finite()) {
        Some(pct) => pct.clamp(0.0, 100.0).round() as u64,
        None if state == "done" => 100,
        None => 0,
    };
    let mut line = format!(
        "{} {}",
        document["kind"].as_str().unwrap_or("operation"),
        document["id"].as_str().unwrap_or("")
    );
    if let Some(message) = document["message"].as_str().filter(|m| !m.is_empty()) {
        line.push_str(": ");
        line.push_str(message);
    }
    if state == "failed" {
        line.push_str(" — failed: ");
        line.push_str(document["error"].as_str().unwrap_or("no reason given"));
    }
    OperationView { state, pct, line }
}

/// Follows operation `id` until it is done or failed, with a progress bar; returns its final
/// document (`result` holds the outcome). A failed operation is an error (exit 1) carrying the
/// operation's error. Ctrl-C detaches: the operation goes on, and the document returned is
/// still `running`.
pub async fn operation(client: &ConsoleClient, id: &str) -> Result<Value, Failure> {
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new(100);
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:40}] {pos:>3}% {elapsed_precise} {msg}",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let mut last_line = String::new();
    loop {
        let document = client.get(&format!("/v1/operations/{id}")).await?;
        let view = operation_view(&document);
        match &bar {
            Some(bar) => {
                bar.set_position(view.pct);
                bar.set_message(view.line.clone());
            }
            None => {
                let line = format!("{:>3}% {}", view.pct, view.line);
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
        }
        match view.state.as_str() {
            "done" => {
                if let Some(bar) = &bar {
                    bar.finish_with_message(view.line);
                }
                return Ok(document);
            }
            "failed" => {
                if let Some(bar) = &bar {
                    bar.abandon_with_message(view.line.clone());
                }
                return Err(Failure::new(ExitCodeKind::Failed, view.line));
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(OPERATION_POLL_MS)) => {}
            _ = tokio::signal::ctrl_c() => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("Detached: operation {id} goes on; follow it with GET /v1/operations/{id}.");
                return Ok(document);
            }
        }
    }
}

/// `redoubt operations [ID] [--watch] [--format json]`.
pub async fn operations_cmd(
    client: &ConsoleClient,
    id: Option<&str>,
    watch: bool,
    format: crate::cli::Format,
) -> Result<(), Failure> {
    let document = match (id, watch) {
        (Some(id), true) => operation(client, id).await?,
        (Some(id), false) => client.get(&format!("/v1/operations/{id}")).await?,
        (None, _) => client.get("/v1/operations").await?,
    };
    match format {
        crate::cli::Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        ),
        crate::cli::Format::Text => {
            let list = match document.as_array() {
                Some(list) => list.clone(),
                None => document["operations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_else(|| vec![document.clone()]),
            };
            for entry in &list {
                let view = operation_view(entry);
                println!(
                    "{:<8} {:>3}%  {:<8} {}",
                    view.state,
                    view.pct,
                    entry["group"].as_str().unwrap_or("-"),
                    view.line
                );
            }
        }
    }
    Ok(())
}

/// `status --wait-sync` gives up after this long (exit 1).
pub const SYNC_WAIT_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// How often `status --wait-sync` polls the status.
pub const SYNC_POLL_MS: u64 = 500;

/// How far the super transactions of the chosen groups are, from `GET /v1/status`.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncView {
    /// The least complete target's super transaction %, 0..=100 (100 without targets).
    pub pct: f64,
    /// The largest backlog of any target.
    pub backlog_bytes: u64,
    /// Every target at 100 %, nothing in flight, connected (30), no resync pending.
    pub in_sync: bool,
    pub line: String,
}

/// Pure: the sync state of `group` (or of every group) in a status document.
pub fn sync_view(status: &Value, group: Option<&str>) -> SyncView {
    let mut pct: f64 = 100.0;
    let mut backlog_bytes = 0u64;
    let mut in_sync = true;
    let mut behind = Vec::new();
    for entry in status["groups"].as_array().into_iter().flatten() {
        if group.is_some_and(|group| entry["name"].as_str() != Some(group)) {
            continue;
        }
        if entry["initialization"]["state"] == "running" {
            in_sync = false;
        }
        for target in entry["targets"].as_array().into_iter().flatten() {
            let target_pct = target["super_transaction_pct"]
                .as_f64()
                .filter(|v| v.is_finite())
                .map_or(0.0, |v| v.clamp(0.0, 100.0));
            let target_backlog = target["backlog_bytes"].as_u64().unwrap_or(u64::MAX);
            pct = pct.min(target_pct);
            backlog_bytes = backlog_bytes.max(target_backlog);
            let ok = target_pct >= 100.0
                && target_backlog == 0
                && target["status_code"] == 30
                && target["needs_resync"] != true;
            if !ok {
                in_sync = false;
                behind.push(format!(
                    "{}/{} {target_pct:.0}%",
                    entry["name"].as_str().unwrap_or("?"),
                    target["server"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    let line = if in_sync {
        "every recovery server is in sync".to_string()
    } else {
        format!("syncing: {}", behind.join(", "))
    };
    SyncView {
        pct,
        backlog_bytes,
        in_sync,
        line,
    }
}

/// Follows the super transactions of `group` (or every group) with a progress bar until every
/// recovery server is in sync. Ctrl-C detaches (the sync goes on).
pub async fn wait_sync(client: &ConsoleClient, group: Option<&str>) -> Result<(), Failure> {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(100);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:40}] {pos:>3}% {elapsed_precise} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let started = std::time::Instant::now();
    let mut last_line = String::new();
    loop {
        let status = client.get("/v1/status").await?;
        if let Some(group) = group {
            let known = status["groups"]
                .as_array()
                .is_some_and(|groups| groups.iter().any(|g| g["name"].as_str() == Some(group)));
            if !known {
                return Err(Failure::new(
                    ExitCodeKind::Invalid,
                    format!("no group named {group}"),
                ));
            }
        }
        let view = sync_view(&status, group);
        let position = view.pct.floor() as u64;
        match &bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(view.line.clone());
            }
            None => {
                let line = format!("{position:>3}% {}", view.line);
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
        }
        if view.in_sync {
            if let Some(bar) = &bar {
                bar.finish_with_message(view.line);
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_millis(SYNC_WAIT_TIMEOUT_MS) {
            return Err(Failure::new(
                ExitCodeKind::Failed,
                format!(
                    "not in sync after {} s: {}",
                    SYNC_WAIT_TIMEOUT_MS / 1000,
                    view.line
                ),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(SYNC_POLL_MS)) => {}
            _ = tokio::signal::ctrl_c() => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("Detached: the sync goes on.");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn init(state: &str, rows: [&str; 2], verify: &str) -> Value {
        json!({"group": "erp", "version": 2, "state": state, "steps": [
            {"number": 11, "title": "Create containers", "rows": [
                {"server": "dr-b", "role": "recovery 1", "state": rows[0]},
                {"server": "dr-c", "role": "recovery 2", "state": rows[1],
                 "error": if rows[1] == "failed" { json!("disk full") } else { json!(null) }}]},
            {"number": 20, "title": "Verify configuration", "rows": [{"state": verify}]}]})
    }

    #[test]
    fn a_log_gets_one_line_per_change_with_rows_under_their_step() {
        let polls = [
            init("running", ["pending", "pending"], "pending"),
            init("running", ["running", "pending"], "pending"),
            init("running", ["running", "pending"], "pending"),
            init("running", ["done", "running"], "pending"),
            init("running", ["done", "done"], "running"),
            init("done", ["done", "done"], "done"),
        ];
        let mut previous = Vec::new();
        let mut last_step = None;
        let mut log = Vec::new();
        for poll in &polls {
            let current = entries(poll);
            log.extend(log_lines(&previous, &current, &mut last_step));
            previous = current;
        }
        assert_eq!(
            log,
            [
                // Nothing that has not started: the plan printed before listed it.
                "Configuration initialization of erp (version 2): running",
                "  \u{25b6} 11. Create containers",
                "        \u{25b6} dr-b (recovery 1)",
                "        \u{2713} dr-b (recovery 1)",
                "        \u{25b6} dr-c (recovery 2)",
                "  \u{2713} 11. Create containers",
                "        \u{2713} dr-c (recovery 2)",
                "  \u{25b6} 20. Verify configuration",
                "  \u{2713} 20. Verify configuration",
                "Configuration initialization of erp (version 2): done",
            ]
        );
    }

    #[test]
    fn a_row_that_changes_after_another_step_is_logged_under_its_own_step_again() {
        let before = entries(&init("running", ["done", "running"], "running"));
        let after = entries(&init("failed", ["done", "failed"], "running"));
        let mut last_step = Some("step 20".to_string());
        let log = log_lines(&before, &after, &mut last_step);
        assert_eq!(
            log,
            [
                "  \u{2717} 11. Create containers",
                "        \u{2717} dr-c (recovery 2)",
                "          error: disk full",
                "Configuration initialization of erp (version 2): failed",
            ]
        );
    }

    #[test]
    fn an_operation_document_becomes_a_bar_position_and_a_line() {
        let running = operation_view(
            &json!({"id": "op-3", "kind": "rollback", "state": "running",
            "pct": 41.6, "message": "undoing seq 812..400"}),
        );
        assert_eq!(running.pct, 42);
        assert_eq!(running.line, "rollback op-3: undoing seq 812..400");
        let failed = operation_view(&json!({"id": "op-4", "kind": "verify", "state": "failed",
            "pct": 10, "error": "dr-b unreachable"}));
        assert_eq!(failed.state, "failed");
        assert!(
            failed.line.ends_with("failed: dr-b unreachable"),
            "{}",
            failed.line
        );
        let done = operation_view(&json!({"id": "op-5", "kind": "failback", "state": "done"}));
        assert_eq!(done.pct, 100, "done without pct is complete");
        assert_eq!(operation_view(&json!({"pct": 250})).pct, 100, "clamped");
    }

    #[test]
    fn sync_is_done_when_every_target_is_complete_connected_and_drained() {
        let status = json!({"groups": [
            {"name": "erp", "initialization": {"state": "idle"}, "targets": [
                {"server": "dr-b", "super_transaction_pct": 100.0, "backlog_bytes": 0, "status_code": 30},
                {"server": "dr-c", "super_transaction_pct": 37.4, "backlog_bytes": 4096, "status_code": 30}]},
            {"name": "crm", "initialization": {"state": "idle"}, "targets": [
                {"server": "dr-b", "super_transaction_pct": 100.0, "backlog_bytes": 0, "status_code": 30}]}]});
        let erp = sync_view(&status, Some("erp"));
        assert!(!erp.in_sync);
        assert_eq!(erp.pct, 37.4);
        assert_eq!(erp.backlog_bytes, 4096);
        assert_eq!(erp.line, "syncing: erp/dr-c 37%");
        assert!(sync_view(&status, Some("crm")).in_sync);
        assert!(
            !sync_view(&status, None).in_sync,
            "every group counts without a name"
        );
        let mut stopped = status.clone();
        stopped["groups"][1]["targets"][0]["status_code"] = json!(60);
        assert!(
            !sync_view(&stopped, Some("crm")).in_sync,
            "a stopped target is not in sync"
        );
    }
}
