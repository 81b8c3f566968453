//! `GET /metrics` of the console: Prometheus/OpenMetrics text (prometheus-client), built on
//! each scrape from the status document of `GET /v1/status` (every group and target, as the
//! agents report them) and the initialization records (state, and each step's duration).
//!
//! Auth: `/metrics` sits behind the API's bearer-token check like every other route (give
//! Prometheus the token with `authorization: {credentials_file: …}`); see `docs/console.md`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::record::{InitRecord, InitState};
use crate::runner::Shared;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The OpenMetrics content type Prometheus negotiates for this text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Default)]
struct Families {
    gauges: Vec<(&'static str, &'static str, Family<Labels, FloatGauge>)>,
    counters: Vec<(&'static str, &'static str, Family<Labels, Counter>)>,
}

impl Families {
    fn set(&mut self, name: &'static str, help: &'static str, labels: &Labels, value: &Value) {
        let value = match value {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            other => other.as_f64(),
        };
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return;
        };
        let family = match self.gauges.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, family)) => family.clone(),
            None => {
                let family = Family::<Labels, FloatGauge>::default();
                self.gauges.push((name, help, family.clone()));
                family
            }
        };
        family.get_or_create(labels).set(value);
    }

    fn count(&mut self, name: &'static str, help: &'static str, labels: &Labels, value: &Value) {
        let Some(value) = value.as_u64() else {
            return;
        };
        let family = match self.counters.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, family)) => family.clone(),
            None => {
                let family = Family::<Labels, Counter>::default();
                self.counters.push((name, help, family.clone()));
                family
            }
        };
        family.get_or_create(labels).inc_by(value);
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Pure: the exposition text of a status document and the initialization records.
pub fn render(status: &Value, inits: &[InitRecord]) -> String {
    let mut families = Families::default();
    families.set(
        "redoubt_config_version",
        "Configuration version in effect",
        &Vec::new(),
        &status["config_version"],
    );
    for server in status["servers"].as_array().into_iter().flatten() {
        let name = server["name"].as_str().unwrap_or("");
        families.set(
            "redoubt_server_reachable",
            "1 when the server's agent answered the console",
            &labels(&[("server", name)]),
            &server["reachable"],
        );
    }
    for group in status["groups"].as_array().into_iter().flatten() {
        let name = group["name"].as_str().unwrap_or("");
        let group_labels = labels(&[("group", name)]);
        families.set(
            "redoubt_group_production_reachable",
            "1 when the group's production agent answered",
            &group_labels,
            &group["production_reachable"],
        );
        // Which server serves the group now (a failover moves it): 1 on the acting production.
        if let Some(production) = group["production"].as_str() {
            families.set(
                "redoubt_group_production",
                "1 for the server acting as the group's production (the configured one, or the one a failover promoted)",
                &labels(&[("group", name), ("server", production)]),
                &Value::Bool(true),
            );
        }
        families.set(
            "redoubt_group_failed_over",
            "1 while a failover is in effect (production is not the configured one until failback)",
            &group_labels,
            &Value::Bool(group["failover"].is_object()),
        );
        families.set(
            "redoubt_group_data_path_loaded",
            "1 when the group's data path runs on its acting production",
            &group_labels,
            &Value::Bool(group["data_path"] == "loaded"),
        );
        for target in group["targets"].as_array().into_iter().flatten() {
            let server = target["server"].as_str().unwrap_or("");
            let target_labels = labels(&[("group", name), ("target", server)]);
            for (metric, help, field) in [
                ("redoubt_target_status_code", "The product's status code: 30 loaded and running, 60 loaded and stopped, 100 unloaded", "status_code"),
                ("redoubt_target_connected", "1 while production's send process is connected to the target", "connected"),
                ("redoubt_target_journal_seq", "Newest durable sequence number of production's journal", "journal_seq"),
                ("redoubt_target_durable_seq", "Newest sequence number the target holds durably", "durable_seq"),
                ("redoubt_target_applied_seq", "Newest sequence number the target applied", "applied_seq"),
                ("redoubt_target_backlog_bytes", "Bytes of journal the target does not hold durably yet", "backlog_bytes"),
                ("redoubt_target_lag_seconds", "Replication lag (RPO) of the target", "lag_seconds"),
                ("redoubt_target_speed_megabytes_per_second", "Replication throughput to the target (MB/s)", "speed_mb_s"),
                ("redoubt_target_super_transaction_percent", "Progress of the running super transaction (100: none running)", "super_transaction_pct"),
                ("redoubt_target_source_journal_usage_percent", "Current_SRC_Backlog: how full production's log record file container is", "source_backlog_pct"),
                ("redoubt_target_journal_usage_percent", "Current_TGT_Backlog: how full the target's log record file container is", "target_backlog_pct"),
                ("redoubt_target_snapshot_usage_percent", "How full the target's snapshot container is", "snapshot_usage_pct"),
                ("redoubt_target_needs_resync", "1 when the target needs a resync", "needs_resync"),
            ] {
                families.set(metric, help, &target_labels, &target[field]);
            }
            families.count(
                "redoubt_target_applied_records",
                "Records the target applied (its applied sequence number; rate() is the apply rate)",
                &target_labels,
                &target["applied_seq"],
            );
            families.count(
                "redoubt_target_sent_bytes",
                "Bytes production sent to the target since its data path started",
                &target_labels,
                &target["sent_bytes"],
            );
        }
    }
    for record in inits {
        let group_labels = labels(&[("group", &record.group)]);
        for state in [InitState::Running, InitState::Failed, InitState::Done] {
            let mut with_state = group_labels.clone();
            with_state.push(("state".into(), state.as_str().into()));
            families.set(
                "redoubt_initialization_state",
                "1 for the state the group's latest configuration initialization is in",
                &with_state,
                &Value::Bool(record.state == state),
            );
        }
        families.set(
            "redoubt_initialization_version",
            "Configuration version of the group's latest initialization",
            &group_labels,
            &Value::from(record.version),
        );
        for step in &record.steps {
            // A step's duration: from its first row's start to its last row's end.
            let started = step.rows.iter().filter_map(|r| r.started_unix_ms).min();
            let finished = step.rows.iter().filter_map(|r| r.finished_unix_ms).max();
            let all_finished = step.rows.iter().all(|r| r.finished_unix_ms.is_some());
            if let (Some(started), Some(finished), true) = (started, finished, all_finished) {
                let step_labels =
                    labels(&[("group", &record.group), ("step", &step.number.to_string())]);
                families.set(
                    "redoubt_initialization_step_duration_seconds",
                    "Duration of each step of the group's latest initialization",
                    &step_labels,
                    &Value::from(finished.saturating_sub(started) as f64 / 1000.0),
                );
            }
        }
    }
    let mut registry = Registry::default();
    for (name, help, family) in families.gauges {
        registry.register(name, help, family);
    }
    for (name, help, family) in families.counters {
        registry.register(name, help, family);
    }
    let mut out = String::new();
    if let Err(error) = encode(&mut out, &registry) {
        tracing::error!("encode the metrics: {error}");
    }
    out
}

/// `GET /metrics` (behind the API's token check).
pub async fn handler(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let status = match crate::web::status_document(&shared).await {
        Ok((_, status)) => status,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    };
    let inits = match shared.store.inits() {
        Ok(inits) => inits,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = negotiate(render(&status, &inits), accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The content type of the classic Prometheus text format (what a scraper gets unless it asks
/// for OpenMetrics).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type for a scraper's `Accept` header.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        (
            PROMETHEUS_TEXT_CONTENT_TYPE,
            to_prometheus_text(&openmetrics),
        )
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus does when it can).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// Pure: the OpenMetrics text prometheus-client writes → the classic Prometheus text format
/// (version 0.0.4): a counter's family is named with its `_total` suffix, and the `# EOF` and
/// `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_and_servers_become_labelled_metrics() {
        let status = json!({"config_version": 3, "servers": [
            {"name": "prod-a", "reachable": true}, {"name": "dr-b", "reachable": false}],
            "groups": [{"name": "erp", "production_reachable": true, "data_path": "loaded",
              "targets": [{"server": "dr-b", "status_code": 30, "connected": true,
                "journal_seq": 815, "applied_seq": 812, "backlog_bytes": 2048,
                "lag_seconds": 0.2, "speed_mb_s": 85.1, "super_transaction_pct": 100.0,
                "source_backlog_pct": 3.5, "target_backlog_pct": null, "sent_bytes": 99}]}]});
        let text = render(&status, &[]);
        for expected in [
            "redoubt_config_version 3.0",
            "redoubt_server_reachable{server=\"dr-b\"} 0.0",
            "redoubt_target_status_code{group=\"erp\",target=\"dr-b\"} 30.0",
            "redoubt_target_backlog_bytes{group=\"erp\",target=\"dr-b\"} 2048.0",
            "redoubt_target_lag_seconds{group=\"erp\",target=\"dr-b\"} 0.2",
            "redoubt_target_speed_megabytes_per_second{group=\"erp\",target=\"dr-b\"} 85.1",
            "redoubt_target_applied_records_total{group=\"erp\",target=\"dr-b\"} 812",
            "redoubt_target_source_journal_usage_percent{group=\"erp\",target=\"dr-b\"} 3.5",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(
            !text.contains("redoubt_target_journal_usage_percent{"),
            "null fields are left out:\n{text}"
        );
    }

    #[test]
    fn the_acting_production_and_a_failover_in_effect_are_metrics() {
        let status = json!({"config_version": 3, "servers": [], "groups": [
            {"name": "erp", "production": "dr-b", "production_reachable": true,
             "data_path": "loaded", "failover": {"state": "committed"}, "targets": []},
            {"name": "crm", "production": "prod-a", "production_reachable": true,
             "data_path": "loaded", "failover": null, "targets": []}]});
        let text = render(&status, &[]);
        for expected in [
            "redoubt_group_production{group=\"erp\",server=\"dr-b\"} 1.0",
            "redoubt_group_production{group=\"crm\",server=\"prod-a\"} 1.0",
            "redoubt_group_failed_over{group=\"erp\"} 1.0",
            "redoubt_group_failed_over{group=\"crm\"} 0.0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn the_classic_text_format_names_counters_with_total_and_has_no_eof() {
        let openmetrics = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\nx_bytes_total{a=\"b\"} 4\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total{a=\"b\"} 4\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
