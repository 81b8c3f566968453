//! The console's HTML, rendered on the server from the same JSON documents the API serves
//! (`GET /v1/status`, `GET /v1/init/{group}`, the plan of `POST /v1/config/plan`). Pure
//! functions from documents to text; every value that came from outside is escaped.

use std::fmt::Write;

use serde_json::Value;

use redoubt_config::units::{Bytes, Seconds};
use redoubt_config::Config;

use super::samples::{svg_plot, History};
use super::wizard::ChangeForm;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "–".to_string(),
        Value::String(s) => escape(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => escape(&other.to_string()),
    }
}

fn number(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

/// A byte count as a person reads it (`1.5 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The page frame: navigation, the CSRF token for the script, the content.
pub fn layout(title: &str, csrf: &str, groups: &[String], body: &str) -> String {
    let mut nav = String::from("<a href=\"/ui\">Dashboard</a>");
    for group in groups {
        let _ = write!(
            nav,
            "<a href=\"/ui/groups/{g}\">Group {g}</a>",
            g = escape(group)
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title} · Redoubt</title>\
<link rel=\"icon\" href=\"data:,\">\
<link rel=\"stylesheet\" href=\"/ui/assets/app.css\"></head>\
<body><header><span class=\"brand\">Redoubt</span><nav>{nav}</nav>\
<form method=\"post\" action=\"/ui/logout\" class=\"logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Log out</button></form>\
</header><main>{body}</main>\
<dialog id=\"confirm-dialog\"><form method=\"dialog\"><p id=\"confirm-text\"></p>\
<menu><button value=\"cancel\" id=\"confirm-cancel\">Cancel</button>\
<button value=\"ok\" id=\"confirm-ok\" class=\"danger\">Confirm</button></menu></form></dialog>\
<script src=\"/ui/assets/app.js\"></script></body></html>\n",
        csrf = escape(csrf),
        title = escape(title),
    )
}

pub fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Log in · Redoubt</title><link rel=\"icon\" href=\"data:,\">\
<link rel=\"stylesheet\" href=\"/ui/assets/app.css\"></head>\
<body class=\"login\"><main><h1>Redoubt console</h1>{error}\
<form method=\"post\" action=\"/ui/login\" id=\"login-form\">\
<label>API token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required></label>\
<p class=\"hint\">The token is in the console's state directory (<code>token</code>; \
<code>redoubt lab up</code> prints where).</p>\
<button type=\"submit\">Log in</button></form></main></body></html>\n"
    )
}

/// A group's one-word state for the dashboard.
pub fn group_state(group: &Value) -> (&'static str, String) {
    let init = &group["initialization"];
    match init["state"].as_str() {
        Some("running") => {
            return (
                "busy",
                format!("initializing (step {})", text(&init["step"])),
            )
        }
        Some("failed") => {
            return (
                "bad",
                format!("initialization failed at step {}", text(&init["step"])),
            )
        }
        _ => {}
    }
    if group["production_reachable"] == false {
        return ("bad", "production unreachable".into());
    }
    let targets = group["targets"].as_array().cloned().unwrap_or_default();
    if targets.iter().any(|t| t["needs_resync"] == true) {
        return ("bad", "needs resync".into());
    }
    if let Some(pct) = targets
        .iter()
        .filter_map(|t| t["super_transaction_pct"].as_f64())
        .find(|pct| *pct < 100.0)
    {
        return ("busy", format!("syncing {pct:.0}%"));
    }
    if !targets.is_empty() && targets.iter().all(|t| t["status_code"] == 30) {
        return ("good", "replicating".into());
    }
    if group["data_path"].as_str() == Some("loaded") {
        return (
            "busy",
            "degraded: a recovery server is not connected".into(),
        );
    }
    ("idle", "data path not loaded".into())
}

/// While a failover is in effect: who serves the group, since when, where applications connect
/// now, and what became of the configured production. Empty otherwise.
pub fn failover_notice(group: &Value) -> String {
    let failover = &group["failover"];
    if !failover.is_object() {
        return String::new();
    }
    let exports: Vec<String> = group["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|volume| volume["export"].as_str())
        .map(|export| format!("<code>{}</code>", escape(export)))
        .collect();
    let old = &failover["old_production"];
    let old_state = match old["state"].as_str() {
        Some("following") => "follows it",
        Some("fenced") => "is fenced until failback",
        Some("unreachable") => "is unreachable",
        Some("serving") => "STILL SERVES AS PRODUCTION: fence it",
        _ => "is in an unknown state",
    };
    let state = match failover["state"].as_str() {
        Some("before_commit") => "not committed yet (commit or abort)",
        Some("committed") => "committed (failback returns)",
        Some("failing_back") => "failing back",
        _ => "state unknown",
    };
    format!(
        "<p class=\"failover state busy\" data-testid=\"failover\">Failed over: <b>{acting}</b> serves the group \
         since seq {seq} ({kind} failover, {state}); configured production {old} {old_state}.{exports}</p>",
        acting = text(&group["production"]),
        seq = text(&failover["point_seq"]),
        kind = text(&failover["kind"]),
        old = text(&old["server"]),
        exports = if exports.is_empty() {
            " No export is served yet.".to_string()
        } else {
            format!(" Applications connect to {}.", exports.join(", "))
        },
    )
}

/// The dashboard's content (refreshed in place by the script).
pub fn dashboard(status: &Value, history: &History, now_unix_ms: u64) -> String {
    let mut out = String::new();
    let groups = status["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        out.push_str("<p class=\"empty\">No replication group is configured yet: apply a configuration with <code>redoubt config apply FILE</code>.</p>");
    }
    for group in &groups {
        let name = group["name"].as_str().unwrap_or("?");
        let (class, state) = group_state(group);
        let _ = write!(
            out,
            "<section class=\"group\" data-group=\"{g}\"><h2><a href=\"/ui/groups/{g}\">{g}</a> \
             <span class=\"state {class}\" data-testid=\"group-state\">{state}</span></h2>\
             <p class=\"facts\">production <b data-testid=\"production\">{production}</b> · direction <b>{direction}</b> · mode <b>{mode}</b> · configuration version <b>{version}</b></p>",
            g = escape(name),
            state = escape(&state),
            production = text(&group["production"]),
            direction = text(&group["direction"]),
            mode = text(&group["mode"]),
            version = text(&group["config_version"]),
        );
        out.push_str(&failover_notice(group));
        out.push_str("<table class=\"targets\"><thead><tr><th>recovery server</th><th>status</th><th>applied / journal seq</th><th>backlog</th><th>RPO (lag)</th><th>speed</th><th>super transaction</th><th>journals src/tgt</th></tr></thead><tbody>");
        for target in group["targets"].as_array().into_iter().flatten() {
            let code = target["status_code"].as_u64();
            let code_text = match code {
                Some(30) => "30 · loaded, running",
                Some(60) => "60 · loaded, stopped",
                Some(100) => "100 · unloaded",
                _ => "unknown",
            };
            let _ = write!(
                out,
                "<tr><td>{server}{resync}</td><td>{code_text}</td><td>{applied} / {journal}</td>\
                 <td>{backlog}</td><td>{lag} s</td><td>{speed} MB/s</td><td>{st} %</td><td>{src} % / {tgt} %</td></tr>",
                server = text(&target["server"]),
                resync = if target["needs_resync"] == true { " <span class=\"state bad\">needs resync</span>" } else { "" },
                applied = text(&target["applied_seq"]),
                journal = text(&target["journal_seq"]),
                backlog = target["backlog_bytes"].as_u64().map_or("–".into(), human_bytes),
                lag = number(&target["lag_seconds"], 1),
                speed = number(&target["speed_mb_s"], 1),
                st = number(&target["super_transaction_pct"], 0),
                src = number(&target["source_backlog_pct"], 1),
                tgt = number(&target["target_backlog_pct"], 1),
            );
        }
        out.push_str("</tbody></table>");
        let samples = history.samples(name);
        let speed: Vec<(u64, f64)> = samples
            .iter()
            .map(|s| (s.time_unix_ms, s.speed_mb_s))
            .collect();
        let backlog: Vec<(u64, f64)> = samples
            .iter()
            .map(|s| (s.time_unix_ms, s.backlog_bytes as f64 / (1024.0 * 1024.0)))
            .collect();
        let _ = write!(
            out,
            "<div class=\"plots\"><figure>{}<figcaption>speed, last hour</figcaption></figure>\
             <figure>{}<figcaption>backlog, last hour</figcaption></figure></div>",
            svg_plot("speed", "MB/s", now_unix_ms, &speed),
            svg_plot("backlog", "MiB", now_unix_ms, &backlog)
        );
        out.push_str("</section>");
    }
    out
}

/// The recovery actions of a group: forms the script sends to the recovery API with a
/// confirmation for the destructive ones. Rendered once per page (not refreshed).
pub fn recovery_panel(group: &str, recovery_servers: &[String]) -> String {
    let options = |servers: &[String]| {
        servers
            .iter()
            .map(|s| format!("<option value=\"{s}\">{s}</option>", s = escape(s)))
            .collect::<String>()
    };
    let any_options = format!(
        "<option value=\"\">(chosen by the console)</option>{}",
        options(recovery_servers)
    );
    format!(
        "<section class=\"recovery\" data-group=\"{g}\"><h2>Recovery of {g}</h2>\
<div class=\"points\" data-points=\"{g}\"><p class=\"hint\">Loading restore points…</p></div>\
<div class=\"snapshots\" data-snapshots=\"{g}\"></div>\
<div class=\"actions\">\
<form class=\"action\" data-action=\"mark\" data-group=\"{g}\"><h3>Event marker</h3>\
<label>name <input name=\"name\" required pattern=\"[a-z0-9][a-z0-9._\\-]{{0,62}}\"></label>\
<button type=\"submit\">Mark</button></form>\
<form class=\"action\" data-action=\"snapshot\" data-group=\"{g}\"><h3>Snapshot</h3>\
<label>server <select name=\"server\">{servers}</select></label>\
<label>at <input name=\"at\" value=\"latest\" required></label>\
<label>name <input name=\"name\" placeholder=\"(automatic)\"></label>\
<label><input type=\"checkbox\" name=\"writable\"> writable</label>\
<button type=\"submit\" id=\"snapshot-{g}\">Create snapshot</button></form>\
<form class=\"action\" data-action=\"rollback\" data-group=\"{g}\" data-confirm=\"Roll the replica back? Its apply pauses until resumed.\"><h3>Rollback</h3>\
<label>server <select name=\"server\">{servers}</select></label>\
<label>to <input name=\"to\" required placeholder=\"seq:N, mark:NAME, time\"></label>\
<button type=\"submit\" class=\"danger\">Roll back</button></form>\
<form class=\"action\" data-action=\"failover\" data-group=\"{g}\" data-confirm=\"Fail over group {g}? The recovery server becomes production.\"><h3>Failover</h3>\
<label>server <select name=\"server\">{any}</select></label>\
<label>at <input name=\"at\" placeholder=\"latest\"></label>\
<label><input type=\"checkbox\" name=\"test\"> test failover (replication keeps running)</label>\
<button type=\"submit\" class=\"danger\">Fail over</button></form>\
<form class=\"action\" data-action=\"failback\" data-group=\"{g}\" data-confirm=\"Fail back group {g}? Replication reverses and production switches back.\"><h3>Failback</h3>\
<button type=\"submit\" class=\"danger\">Fail back</button></form>\
</div><div class=\"result\" role=\"status\" data-result=\"{g}\"></div></section>",
        g = escape(group),
        servers = options(recovery_servers),
        any = any_options,
    )
}

fn mark(state: &str) -> &'static str {
    match state {
        "done" => "\u{2713}",
        "running" => "\u{25b6}",
        "failed" => "\u{2717}",
        _ => "\u{b7}",
    }
}

fn step_state(step: &Value) -> &'static str {
    let states: Vec<&str> = step["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["state"].as_str())
        .collect();
    if states.contains(&"failed") {
        "failed"
    } else if !states.is_empty() && states.iter().all(|s| *s == "done") {
        "done"
    } else if states.iter().any(|s| *s == "running" || *s == "done") {
        "running"
    } else {
        "pending"
    }
}

fn row_label(row: &Value) -> String {
    match (row["server"].as_str(), row["volume"].as_str()) {
        (Some(server), _) => match row["role"].as_str() {
            Some(role) => format!("{} ({})", escape(server), escape(role)),
            None => escape(server),
        },
        (None, Some(volume)) => format!("volume {}", escape(volume)),
        _ => String::new(),
    }
}

/// The step list of an initialization (`GET /v1/init/{group}`): a checkmark per completed
/// step and row, the running one highlighted, failed ones with their error and Retry.
pub fn steps(init: &Value) -> String {
    let group = init["group"].as_str().unwrap_or("");
    let mut out = format!(
        "<ol class=\"steps\" data-testid=\"steps\" data-state=\"{}\">",
        escape(init["state"].as_str().unwrap_or("?"))
    );
    for step in init["steps"].as_array().into_iter().flatten() {
        let state = step_state(step);
        let _ = write!(
            out,
            "<li class=\"step {state}\" data-step=\"{n}\" data-state=\"{state}\"><span class=\"mark\">{m}</span> \
             <span class=\"number\">{n}.</span> {title}",
            n = text(&step["number"]),
            m = mark(state),
            title = text(&step["title"]),
        );
        for deletion in step["deletes"].as_array().into_iter().flatten() {
            let _ = write!(
                out,
                "<div class=\"deletes{}\">{}</div>",
                if deletion["data"] == true {
                    " data"
                } else {
                    ""
                },
                text(&deletion["description"])
            );
        }
        let rows = step["rows"].as_array().cloned().unwrap_or_default();
        let labelled = rows.iter().any(|r| !row_label(r).is_empty());
        if labelled || rows.iter().any(|r| r["error"].is_string()) {
            out.push_str("<ul class=\"rows\">");
            for row in &rows {
                let row_state = row["state"].as_str().unwrap_or("pending");
                let key = match (row["server"].as_str(), row["volume"].as_str()) {
                    (Some(server), _) => format!(" data-server=\"{}\"", escape(server)),
                    (None, Some(volume)) => format!(" data-volume=\"{}\"", escape(volume)),
                    _ => String::new(),
                };
                let _ = write!(
                    out,
                    "<li class=\"row {s}\" data-state=\"{s}\"{key}><span class=\"mark\">{m}</span> {label}",
                    s = escape(row_state),
                    m = mark(row_state),
                    label = row_label(row),
                );
                if let Some(error) = row["error"].as_str() {
                    let _ = write!(out, "<div class=\"error\">{}</div>", escape(error));
                }
                out.push_str("</li>");
            }
            out.push_str("</ul>");
        }
        if state == "failed" {
            let _ = write!(
                out,
                "<button type=\"button\" class=\"retry\" data-retry=\"{}\">Retry</button>",
                escape(group)
            );
        }
        out.push_str("</li>");
    }
    out.push_str("</ol>");
    out
}

/// Rows done and rows in all, over the initialization.
fn row_counts(init: &Value) -> (usize, usize) {
    let rows: Vec<&Value> = init["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["rows"].as_array().into_iter().flatten())
        .collect();
    let done = rows.iter().filter(|r| r["state"] == "done").count();
    (done, rows.len())
}

/// The Configuration Summary of a group: servers and roles, LVs, containers and their usage,
/// mode, retention and the other tunables.
pub fn summary(config: &Config, group_name: &str, status_group: Option<&Value>) -> String {
    let Some(group) = config.group(group_name) else {
        return format!(
            "<p class=\"error\">No group named {} in the configuration.</p>",
            escape(group_name)
        );
    };
    let mut out = String::from(
        "<section class=\"summary\" data-testid=\"summary\"><h2>Configuration Summary</h2>",
    );
    out.push_str("<h3>Servers</h3><table><thead><tr><th>server</th><th>role</th><th>address</th><th>reachable</th></tr></thead><tbody>");
    for (name, role) in group.members() {
        let address = config
            .server(name)
            .map(|s| s.address.clone())
            .unwrap_or_default();
        let reachable = if role.is_recovery() {
            status_group
                .and_then(|g| g["targets"].as_array())
                .and_then(|targets| targets.iter().find(|t| t["server"] == name))
                .map(|t| text(&t["reachable"]))
        } else {
            status_group.map(|g| text(&g["production_reachable"]))
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&role.to_string()),
            escape(&address),
            reachable.unwrap_or_else(|| "–".into())
        );
    }
    out.push_str("</tbody></table><h3>Logical volumes</h3><table><thead><tr><th>LV</th><th>size</th><th>export</th></tr></thead><tbody>");
    for volume in &group.volumes {
        let export = status_group
            .and_then(|g| g["volumes"].as_array())
            .and_then(|volumes| volumes.iter().find(|v| v["name"] == volume.name.as_str()))
            .map(|v| text(&v["export"]))
            .unwrap_or_else(|| "–".into());
        let _ = write!(
            out,
            "<tr data-volume=\"{n}\"><td>{n}</td><td>{}</td><td><code>{export}</code></td></tr>",
            Bytes(volume.size_bytes),
            n = escape(&volume.name),
        );
    }
    let used = group.volume_bytes_total();
    let capacity = group.containers.replication_bytes;
    let replication_pct = if capacity == 0 {
        0.0
    } else {
        used as f64 * 100.0 / capacity as f64
    };
    let targets = status_group
        .and_then(|g| g["targets"].as_array())
        .cloned()
        .unwrap_or_default();
    let max_of = |field: &str| {
        targets
            .iter()
            .filter_map(|t| t[field].as_f64())
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            })
            .map_or("–".to_string(), |v| format!("{v:.1} %"))
    };
    let _ = write!(
        out,
        "</tbody></table><h3>Containers</h3><table><thead><tr><th>container</th><th>size</th><th>usage</th></tr></thead><tbody>\
<tr><td>replication</td><td>{}</td><td>{} of LVs ({replication_pct:.1} %)</td></tr>\
<tr><td>log record file</td><td>{}</td><td>production {} · recovery {}</td></tr>\
<tr><td>snapshot</td><td>{}</td><td>{}</td></tr></tbody></table>",
        Bytes(capacity),
        Bytes(used),
        Bytes(group.containers.log_record_file_bytes),
        max_of("source_backlog_pct"),
        max_of("target_backlog_pct"),
        Bytes(group.containers.snapshot_bytes),
        max_of("snapshot_usage_pct"),
    );
    let throttle = if group.throttle_bytes_per_second == 0 {
        "unlimited".to_string()
    } else {
        format!("{}/s", Bytes(group.throttle_bytes_per_second))
    };
    let _ = write!(
        out,
        "<h3>Replication</h3><dl class=\"facts\"><dt>mode</dt><dd data-testid=\"mode\">{}</dd>\
<dt>retention</dt><dd data-testid=\"retention\">{}</dd><dt>throttle</dt><dd>{}</dd><dt>compression</dt><dd>{}</dd></dl></section>",
        group.mode.as_str(),
        Seconds(group.retention_seconds),
        escape(&throttle),
        group.compression.as_str(),
    );
    out
}

/// The Configuration Window's changing part: the summary when no change is pending or
/// running, the step list otherwise; with the Initialization Progress section.
pub fn window(config: &Config, group: &str, status_group: Option<&Value>, init: &Value) -> String {
    let state = init["state"].as_str().unwrap_or("idle");
    let active = matches!(state, "running" | "failed");
    let (done, total) = row_counts(init);
    let mut out = format!(
        "<div id=\"window\" data-init-state=\"{}\" data-version=\"{}\">",
        escape(state),
        text(&init["version"])
    );
    if active {
        let _ = write!(
            out,
            "<section class=\"pending\"><h2>Configuration change to version {} — {}</h2>{}</section>",
            text(&init["version"]),
            if state == "failed" { "stopped at a failed step" } else { "initializing" },
            steps(init)
        );
    } else {
        out.push_str(&summary(config, group, status_group));
    }
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let _ = write!(
        out,
        "<section class=\"progress\"><h2>Configuration Initialization Progress</h2>\
<p><progress max=\"100\" value=\"{pct:.0}\"></progress> <span data-testid=\"progress-text\">{done} of {total} rows done · {}</span></p></section></div>",
        escape(state),
    );
    out
}

/// A plan (`redoubt_plan::report::to_json`, one entry per changed group) as the wizard's last
/// panel shows it: changes, steps with rows, deletions flagged.
pub fn plan(plans: &Value) -> String {
    let plans = plans.as_array().cloned().unwrap_or_default();
    if plans.is_empty() {
        return "<p class=\"empty\" data-testid=\"no-change\">No change: this configuration is already in effect; nothing to initialize.</p>".into();
    }
    let mut out = String::new();
    for plan in &plans {
        let _ = write!(
            out,
            "<div class=\"plan\"><h3>Replication group {}</h3><ul class=\"changes\">",
            text(&plan["group"])
        );
        for change in plan["changes"].as_array().into_iter().flatten() {
            let _ = write!(out, "<li>{}</li>", text(change));
        }
        out.push_str("</ul><ol class=\"plan-steps\">");
        for step in plan["steps"].as_array().into_iter().flatten() {
            let deletes = step["deletes"].as_array().cloned().unwrap_or_default();
            let flag = if deletes.iter().any(|d| d["data"] == true) {
                " <span class=\"state bad\">DELETES DATA</span>"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<li data-step=\"{n}\"><span class=\"number\">{n}.</span> {}{flag}",
                text(&step["title"]),
                n = text(&step["number"]),
            );
            let labels: Vec<String> = step["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(row_label)
                .filter(|l| !l.is_empty())
                .collect();
            if !labels.is_empty() {
                let _ = write!(out, "<div class=\"rows\">{}</div>", labels.join(" · "));
            }
            for deletion in &deletes {
                let _ = write!(
                    out,
                    "<div class=\"deletes\">{}</div>",
                    text(&deletion["description"])
                );
            }
            out.push_str("</li>");
        }
        out.push_str("</ol>");
        for warning in plan["warnings"].as_array().into_iter().flatten() {
            let _ = write!(out, "<p class=\"warning\">Note: {}</p>", text(warning));
        }
        out.push_str("</div>");
    }
    out
}

/// The Change Replication Group wizard: one panel per kind of change, then the Summary (the
/// plan, filled in by the script from `POST /ui/groups/{group}/change/plan`).
pub fn wizard(config: &Config, group: &str, form: &ChangeForm) -> String {
    let production = config
        .group(group)
        .map(|g| g.production.clone())
        .unwrap_or_default();
    let mut volumes = String::new();
    for volume in &form.volumes {
        let _ = write!(
            volumes,
            "<tr data-volume=\"{n}\"><td>{n}</td><td><input name=\"size\" value=\"{s}\" data-current=\"{s}\"></td>\
<td><label><input type=\"checkbox\" name=\"remove\"> remove</label></td></tr>",
            n = escape(&volume.name),
            s = escape(&volume.size),
        );
    }
    let mut servers = String::new();
    for server in config.servers.iter().filter(|s| s.name != production) {
        let checked = if form.recovery.contains(&server.name) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            servers,
            "<li><label><input type=\"checkbox\" name=\"recovery\" value=\"{n}\"{checked}> {n} <small>{a}</small></label></li>",
            n = escape(&server.name),
            a = escape(&server.address),
        );
    }
    let selected = |value: &str, current: &str| if value == current { " selected" } else { "" };
    format!(
        "<h1>Change Replication Group {g}</h1>\
<form id=\"wizard\" data-group=\"{g}\" novalidate>\
<ol class=\"wizard-nav\"><li data-panel=\"0\">Logical volumes</li><li data-panel=\"1\">Containers</li>\
<li data-panel=\"2\">Recovery servers</li><li data-panel=\"3\">Tunables</li><li data-panel=\"4\">Summary</li></ol>\
<fieldset class=\"panel\" data-panel=\"0\"><legend>Logical volumes</legend>\
<table class=\"volumes\"><thead><tr><th>LV</th><th>size (grow only)</th><th></th></tr></thead><tbody>{volumes}</tbody></table>\
<h3>Add logical volumes</h3><table class=\"add-volumes\"><thead><tr><th>name</th><th>size</th></tr></thead><tbody></tbody></table>\
<button type=\"button\" id=\"add-volume\">Add a logical volume</button></fieldset>\
<fieldset class=\"panel\" data-panel=\"1\" hidden><legend>Containers</legend>\
<label>replication <input name=\"replication\" value=\"{rep}\"></label>\
<label>log record file <input name=\"log_record_file\" value=\"{lrf}\"></label>\
<label>snapshot <input name=\"snapshot\" value=\"{snap}\"></label></fieldset>\
<fieldset class=\"panel\" data-panel=\"2\" hidden><legend>Recovery servers (1 or 2; production is {p})</legend>\
<ul class=\"servers\">{servers}</ul><h3>A new server</h3>\
<label>name <input name=\"new_name\"></label><label>address <input name=\"new_address\" placeholder=\"host:port\"></label>\
<label>data directory <input name=\"new_data_dir\"></label></fieldset>\
<fieldset class=\"panel\" data-panel=\"3\" hidden><legend>Tunables</legend>\
<label>mode <select name=\"mode\"><option value=\"async\"{a}>async</option><option value=\"sync\"{s}>sync</option></select></label>\
<label>retention <input name=\"retention\" value=\"{ret}\"></label>\
<label>throttle <input name=\"throttle\" value=\"{thr}\"></label>\
<label>compression <select name=\"compression\"><option value=\"zstd\"{z}>zstd</option><option value=\"none\"{n}>none</option></select></label></fieldset>\
<fieldset class=\"panel\" data-panel=\"4\" hidden><legend>Summary</legend>\
<div id=\"plan\" data-testid=\"plan\"><p class=\"hint\">Computing the plan…</p></div></fieldset>\
<div class=\"error\" id=\"wizard-error\" role=\"alert\" hidden></div>\
<div class=\"buttons\"><button type=\"button\" id=\"back\" disabled>Back</button>\
<button type=\"button\" id=\"next\">Next</button>\
<button type=\"button\" id=\"finish\" hidden disabled>Finish</button>\
<a href=\"/ui/groups/{g}\">Cancel</a></div></form>",
        g = escape(group),
        p = escape(&production),
        rep = escape(&form.replication),
        lrf = escape(&form.log_record_file),
        snap = escape(&form.snapshot),
        ret = escape(&form.retention),
        thr = escape(&form.throttle),
        a = selected("async", &form.mode),
        s = selected("sync", &form.mode),
        z = selected("zstd", &form.compression),
        n = selected("none", &form.compression),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_step_list_marks_done_running_and_failed_rows() {
        let init = json!({"group": "erp", "state": "failed", "version": 2, "steps": [
            {"number": 1, "title": "Save configuration", "deletes": [], "rows": [{"state": "done"}]},
            {"number": 2, "title": "Copy configuration to S", "deletes": [], "rows": [
                {"server": "prod-a", "role": "production", "state": "done"},
                {"server": "dr-b", "role": "recovery1", "state": "failed", "error": "disk <full>"}]},
            {"number": 20, "title": "Verify configuration on S", "deletes": [], "rows": [
                {"server": "prod-a", "role": "production", "state": "pending"}]},
        ]});
        let html = steps(&init);
        assert!(html.contains("<li class=\"step done\" data-step=\"1\" data-state=\"done\"><span class=\"mark\">\u{2713}</span>"), "{html}");
        assert!(
            html.contains("class=\"step failed\" data-step=\"2\""),
            "{html}"
        );
        assert!(
            html.contains("<div class=\"error\">disk &lt;full&gt;</div>"),
            "{html}"
        );
        assert!(html.contains("data-retry=\"erp\""), "{html}");
        assert!(
            html.contains("class=\"step pending\" data-step=\"20\""),
            "{html}"
        );
        assert_eq!(row_counts(&init), (2, 4));
    }

    #[test]
    fn group_state_names_the_worst_condition() {
        let healthy = json!({"initialization": {"state": "idle"}, "production_reachable": true,
            "targets": [{"status_code": 30, "super_transaction_pct": 100.0, "needs_resync": false}]});
        assert_eq!(group_state(&healthy).1, "replicating");
        let syncing = json!({"initialization": {"state": "idle"}, "production_reachable": true,
            "targets": [{"status_code": 30, "super_transaction_pct": 42.0}]});
        assert_eq!(group_state(&syncing).1, "syncing 42%");
        let running = json!({"initialization": {"state": "running", "step": 11}});
        assert_eq!(group_state(&running).1, "initializing (step 11)");
    }

    #[test]
    fn a_failover_in_effect_says_who_serves_and_where_applications_connect() {
        let group = json!({"production": "dr-b", "configured_production": "prod-a",
            "failover": {"state": "committed", "kind": "unplanned", "point_seq": 322,
                         "old_production": {"server": "prod-a", "state": "unreachable"}},
            "volumes": [{"name": "lv_data01", "export": "nbd://127.0.0.1:10810/lv_data01"}]});
        let notice = failover_notice(&group);
        assert!(
            notice.contains("<b>dr-b</b> serves the group since seq 322"),
            "{notice}"
        );
        assert!(
            notice.contains("configured production prod-a is unreachable"),
            "{notice}"
        );
        assert!(
            notice.contains("<code>nbd://127.0.0.1:10810/lv_data01</code>"),
            "{notice}"
        );
        assert_eq!(failover_notice(&json!({"failover": null})), "");
    }
}
