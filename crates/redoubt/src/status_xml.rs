//! `redoubt status --format xml`: the product's status document (`shared/spec/PRODUCT.md`),
//! built from the same JSON the console returns for `GET /v1/status` (and that
//! `--format json` prints), so both always agree. Schema: `docs/status.xsd`.
//!
//! ```text
//! <redoubt_status config_version="3">
//!   <replication_group name="erp">
//!     <production>prod-a</production> <direction>prod-a -> dr-b, dr-c</direction> <mode>async</mode>
//!     <recovery name="dr-b"> <status>30</status> <speed unit="MB/s">85.1</speed> … </recovery>
//!   </replication_group>
//! </redoubt_status>
//! ```
//!
//! Status codes: 30 = data path loaded and the target's agent running (connected), 60 = loaded
//! and the target stopped (not connected), 100 = data path unloaded. ST_IO is the target's
//! speed while a super transaction runs (initial sync or resync), APP_IO the speed of ordinary
//! replication of application writes; one of them is 0.

use std::fmt::Write;

use serde_json::Value;

use crate::cli::{Format, StatusFormat};
use crate::client::ConsoleClient;
use crate::exit::{ExitCodeKind, Failure};

/// The XML namespace of the status document (`docs/status.xsd`'s target namespace).
pub const STATUS_NAMESPACE: &str = "urn:redoubt:status:1";

/// Status code: data path loaded, target agent running.
pub const STATUS_LOADED_RUNNING: u64 = 30;
/// Status code: data path loaded, target agent stopped or unreachable.
pub const STATUS_LOADED_STOPPED: u64 = 60;
/// Status code: data path unloaded (and the target stopped).
pub const STATUS_UNLOADED: u64 = 100;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The status code of a target (30/60/100) from the status document.
pub fn status_code(group: &Value, target: &Value) -> u64 {
    if group["data_path"].as_str() != Some("loaded") {
        return STATUS_UNLOADED;
    }
    match target["status_code"].as_u64() {
        Some(code @ (STATUS_LOADED_RUNNING | STATUS_LOADED_STOPPED | STATUS_UNLOADED)) => code,
        _ if target["connected"] == true => STATUS_LOADED_RUNNING,
        _ => STATUS_LOADED_STOPPED,
    }
}

/// A number element, left out when the console did not know the value.
fn number(out: &mut String, indent: &str, name: &str, unit: Option<&str>, value: &Value) {
    let Some(number) = value.as_f64().filter(|v| v.is_finite()) else {
        return;
    };
    let unit = unit
        .map(|unit| format!(" unit=\"{}\"", escape(unit)))
        .unwrap_or_default();
    // Integers as integers (seqs, bytes), fractions as JSON wrote them.
    let text = match value.as_u64() {
        Some(integer) => integer.to_string(),
        None => number.to_string(),
    };
    let _ = writeln!(out, "{indent}<{name}{unit}>{text}</{name}>");
}

fn text_element(out: &mut String, indent: &str, name: &str, value: &Value) {
    if let Some(text) = value.as_str() {
        let _ = writeln!(out, "{indent}<{name}>{}</{name}>", escape(text));
    }
}

/// `<failover>` while a failover is in effect (the group's `failover` object is not null).
fn failover_element(out: &mut String, failover: &Value) {
    let (Some(state), Some(kind), Some(point_seq), Some(old), Some(old_state)) = (
        failover["state"].as_str(),
        failover["kind"].as_str(),
        failover["point_seq"].as_u64(),
        failover["old_production"]["server"].as_str(),
        failover["old_production"]["state"].as_str(),
    ) else {
        return;
    };
    let _ = writeln!(
        out,
        "    <failover state=\"{}\" kind=\"{}\" point_seq=\"{point_seq}\">",
        escape(state),
        escape(kind)
    );
    let _ = writeln!(
        out,
        "      <old_production state=\"{}\">{}</old_production>",
        escape(old_state),
        escape(old)
    );
    out.push_str("    </failover>\n");
}

/// Pure: the XML status document of a `GET /v1/status` document.
pub fn render(status: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let version = status["config_version"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "<redoubt_status xmlns=\"{STATUS_NAMESPACE}\" config_version=\"{version}\">"
    );
    for group in status["groups"].as_array().into_iter().flatten() {
        let name = group["name"].as_str().unwrap_or("");
        let _ = writeln!(out, "  <replication_group name=\"{}\">", escape(name));
        text_element(&mut out, "    ", "production", &group["production"]);
        text_element(
            &mut out,
            "    ",
            "configured_production",
            &group["configured_production"],
        );
        text_element(&mut out, "    ", "direction", &group["direction"]);
        text_element(&mut out, "    ", "mode", &group["mode"]);
        let data_path = group["data_path"].as_str().unwrap_or("unknown");
        let _ = writeln!(out, "    <data_path>{}</data_path>", escape(data_path));
        let init = &group["initialization"];
        let _ = writeln!(
            out,
            "    <initialization state=\"{}\"{}/>",
            escape(init["state"].as_str().unwrap_or("idle")),
            init["step"]
                .as_u64()
                .map(|step| format!(" step=\"{step}\""))
                .unwrap_or_default()
        );
        failover_element(&mut out, &group["failover"]);
        for volume in group["volumes"].as_array().into_iter().flatten() {
            let _ = write!(
                out,
                "    <volume name=\"{}\" size_bytes=\"{}\"",
                escape(volume["name"].as_str().unwrap_or("")),
                volume["size_bytes"].as_u64().unwrap_or(0)
            );
            match volume["export"].as_str() {
                Some(export) => {
                    let _ = writeln!(out, " export=\"{}\"/>", escape(export));
                }
                None => out.push_str("/>\n"),
            }
        }
        for target in group["targets"].as_array().into_iter().flatten() {
            let server = target["server"].as_str().unwrap_or("");
            let _ = writeln!(out, "    <recovery name=\"{}\">", escape(server));
            let code = status_code(group, target);
            let _ = writeln!(out, "      <status>{code}</status>");
            let speed = &target["speed_mb_s"];
            number(&mut out, "      ", "speed", Some("MB/s"), speed);
            let pct = &target["super_transaction_pct"];
            number(&mut out, "      ", "super_transaction", Some("%"), pct);
            // ST_IO and APP_IO split the speed by what is being sent.
            if speed.as_f64().is_some_and(f64::is_finite) {
                let syncing = pct.as_f64().is_some_and(|pct| pct < 100.0);
                let (st, app) = if syncing {
                    (speed.clone(), Value::from(0.0))
                } else {
                    (Value::from(0.0), speed.clone())
                };
                number(&mut out, "      ", "ST_IO", Some("MB/s"), &st);
                number(&mut out, "      ", "APP_IO", Some("MB/s"), &app);
            }
            number(
                &mut out,
                "      ",
                "snapshot_usage",
                Some("%"),
                &target["snapshot_usage_pct"],
            );
            number(
                &mut out,
                "      ",
                "Current_SRC_Backlog",
                Some("%"),
                &target["source_backlog_pct"],
            );
            number(
                &mut out,
                "      ",
                "Current_TGT_Backlog",
                Some("%"),
                &target["target_backlog_pct"],
            );
            number(
                &mut out,
                "      ",
                "backlog_bytes",
                None,
                &target["backlog_bytes"],
            );
            number(
                &mut out,
                "      ",
                "lag_seconds",
                None,
                &target["lag_seconds"],
            );
            number(
                &mut out,
                "      ",
                "journal_seq",
                None,
                &target["journal_seq"],
            );
            number(
                &mut out,
                "      ",
                "applied_seq",
                None,
                &target["applied_seq"],
            );
            if let Some(resync) = target["needs_resync"].as_bool() {
                let _ = writeln!(out, "      <needs_resync>{resync}</needs_resync>");
            }
            out.push_str("    </recovery>\n");
        }
        out.push_str("  </replication_group>\n");
    }
    out.push_str("</redoubt_status>\n");
    out
}

/// `redoubt status [GROUP] --format text|json|xml`.
pub async fn status(
    client: &ConsoleClient,
    group: Option<&str>,
    format: StatusFormat,
) -> Result<(), Failure> {
    let format = match format {
        StatusFormat::Text => Format::Text,
        StatusFormat::Json => Format::Json,
        StatusFormat::Xml => {
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
            print!("{}", render(&status));
            return Ok(());
        }
    };
    crate::remote_cmd::status(client, group, format).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Value {
        json!({"config_version": 3, "groups": [{
            "name": "erp", "production": "prod-a", "direction": "prod-a -> dr-b, dr-c",
            "mode": "async", "data_path": "loaded",
            "initialization": {"state": "idle", "step": null},
            "volumes": [{"name": "lv_data01", "size_bytes": 1073741824,
                         "export": "nbd://127.0.0.1:10809/lv_data01"}],
            "targets": [
                {"server": "dr-b", "status_code": 30, "speed_mb_s": 85.1,
                 "super_transaction_pct": 100.0, "snapshot_usage_pct": 0.0,
                 "source_backlog_pct": 1.5, "target_backlog_pct": 0.25, "backlog_bytes": 0,
                 "lag_seconds": 0.2, "journal_seq": 815, "applied_seq": 812,
                 "needs_resync": false},
                {"server": "dr-c", "status_code": 60, "speed_mb_s": 12.0,
                 "super_transaction_pct": 40.0, "connected": false}]}]})
    }

    #[test]
    fn every_product_element_is_there_with_the_json_numbers() {
        let xml = render(&status());
        for expected in [
            "<replication_group name=\"erp\">",
            "<production>prod-a</production>",
            "<direction>prod-a -&gt; dr-b, dr-c</direction>",
            "<recovery name=\"dr-b\">",
            "<status>30</status>",
            "<speed unit=\"MB/s\">85.1</speed>",
            "<super_transaction unit=\"%\">100</super_transaction>",
            "<ST_IO unit=\"MB/s\">0</ST_IO>",
            "<APP_IO unit=\"MB/s\">85.1</APP_IO>",
            "<snapshot_usage unit=\"%\">0</snapshot_usage>",
            "<Current_SRC_Backlog unit=\"%\">1.5</Current_SRC_Backlog>",
            "<Current_TGT_Backlog unit=\"%\">0.25</Current_TGT_Backlog>",
            "<status>60</status>",
            "<ST_IO unit=\"MB/s\">12</ST_IO>",
        ] {
            assert!(xml.contains(expected), "missing {expected} in\n{xml}");
        }
    }

    #[test]
    fn an_unloaded_data_path_is_status_100() {
        let mut document = status();
        document["groups"][0]["data_path"] = json!("stopped");
        let xml = render(&document);
        assert_eq!(xml.matches("<status>100</status>").count(), 2, "{xml}");
    }

    #[test]
    fn hostile_names_are_escaped() {
        let mut document = status();
        document["groups"][0]["name"] = json!("a\"<&>\u{1}");
        let xml = render(&document);
        assert!(xml.contains("name=\"a&quot;&lt;&amp;&gt;?\""), "{xml}");
    }

    #[test]
    fn a_failover_in_effect_names_the_configured_and_the_old_production() {
        let mut document = status();
        document["groups"][0]["production"] = json!("dr-b");
        document["groups"][0]["configured_production"] = json!("prod-a");
        document["groups"][0]["failover"] = json!({"state": "committed", "kind": "unplanned",
            "point_seq": 322, "old_production": {"server": "prod-a", "state": "fenced"}});
        let xml = render(&document);
        for expected in [
            "<production>dr-b</production>\n    <configured_production>prod-a</configured_production>",
            "<failover state=\"committed\" kind=\"unplanned\" point_seq=\"322\">",
            "<old_production state=\"fenced\">prod-a</old_production>",
        ] {
            assert!(xml.contains(expected), "missing {expected} in\n{xml}");
        }
        assert!(!render(&status()).contains("<failover"));
    }
}
