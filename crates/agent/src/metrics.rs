//! `GET /metrics` of the agent: the Prometheus text format (prometheus-client), built on each
//! scrape from the same document as `GET /v1/status`, plus the durations of the
//! initialization steps this agent ran (kept since the agent started).
//!
//! Like the rest of the agent's HTTP API it needs no token (the agent's port is reached by
//! the console and peers; mutual TLS guards it when configured): see `docs/console.md`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// The OpenMetrics content type (what Prometheus asks for first).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
type FloatGauge = Gauge<f64, AtomicU64>;

/// Bucket bounds of the step-duration histogram, in seconds (10 ms .. ~82 min).
const STEP_BUCKETS_COUNT: u16 = 14;

/// What the agent keeps between scrapes: per-step durations and outcomes.
#[derive(Clone)]
pub struct AgentMetrics {
    step_seconds: Family<Labels, Histogram>,
    step_runs: Family<Labels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn step_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.01,
        2.0,
        STEP_BUCKETS_COUNT,
    ))
}

impl AgentMetrics {
    pub fn new() -> Self {
        AgentMetrics {
            step_seconds: Family::new_with_constructor(step_histogram),
            step_runs: Family::default(),
        }
    }

    /// Records one run of initialization step `step` of `group` on this agent.
    pub fn record_step(&self, group: &str, step: u8, seconds: f64, ok: bool) {
        let labels = vec![
            ("group".to_string(), group.to_string()),
            ("step".to_string(), step.to_string()),
        ];
        self.step_seconds
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
        let mut with_outcome = labels;
        with_outcome.push((
            "outcome".to_string(),
            if ok { "done" } else { "failed" }.to_string(),
        ));
        self.step_runs.get_or_create(&with_outcome).inc();
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

struct Families {
    float: Vec<(&'static str, &'static str, Family<Labels, FloatGauge>)>,
    counters: Vec<(&'static str, &'static str, Family<Labels, Counter>)>,
}

impl Families {
    fn gauge(&mut self, name: &'static str, help: &'static str) -> Family<Labels, FloatGauge> {
        if let Some((_, _, family)) = self.float.iter().find(|(n, _, _)| *n == name) {
            return family.clone();
        }
        let family = Family::<Labels, FloatGauge>::default();
        self.float.push((name, help, family.clone()));
        family
    }

    fn counter(&mut self, name: &'static str, help: &'static str) -> Family<Labels, Counter> {
        if let Some((_, _, family)) = self.counters.iter().find(|(n, _, _)| *n == name) {
            return family.clone();
        }
        let family = Family::<Labels, Counter>::default();
        self.counters.push((name, help, family.clone()));
        family
    }

    fn set(&mut self, name: &'static str, help: &'static str, labels: &Labels, value: &Value) {
        let value = match value {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            other => other.as_f64(),
        };
        if let Some(value) = value.filter(|v| v.is_finite()) {
            self.gauge(name, help).get_or_create(labels).set(value);
        }
    }

    fn count(&mut self, name: &'static str, help: &'static str, labels: &Labels, value: &Value) {
        if let Some(value) = value.as_u64() {
            self.counter(name, help).get_or_create(labels).inc_by(value);
        }
    }
}

/// The text exposition of `status` (the agent's `GET /v1/status` document) and `kept`.
pub fn render(status: &Value, kept: &AgentMetrics) -> String {
    let mut families = Families {
        float: Vec::new(),
        counters: Vec::new(),
    };
    let server = status["server"].as_str().unwrap_or("");
    families.set(
        "redoubt_agent_config_version",
        "Configuration version copied to this server (0: none yet)",
        &labels(&[("server", server)]),
        &status["config_version"],
    );
    families.count(
        "redoubt_tls_refusals",
        "Peers refused by mutual TLS since the agent started (failed handshakes, names not allowed)",
        &labels(&[("server", server)]),
        &status["tls_refusals"],
    );
    for group in status["groups"].as_array().into_iter().flatten() {
        let name = group["name"].as_str().unwrap_or("");
        let role = group["role"].as_str().unwrap_or("none");
        let group_labels = labels(&[("group", name), ("role", role)]);
        let loaded = Value::Bool(group["data_path"] == "loaded");
        families.set(
            "redoubt_data_path_loaded",
            "1 when the group's data path runs on this server",
            &group_labels,
            &loaded,
        );
        families.set(
            "redoubt_journal_usage_percent",
            "How full the group's log record file container is (production: source backlog; recovery: target backlog)",
            &group_labels,
            &group["journal_usage_pct"],
        );
        families.set(
            "redoubt_needs_resync",
            "1 when the group needs a resync (super transaction)",
            &group_labels,
            &group["needs_resync"],
        );
        families.set(
            "redoubt_journal_seq",
            "Newest durable sequence number of production's journal",
            &group_labels,
            &group["journal_seq"],
        );
        if role != "production" {
            families.set(
                "redoubt_apply_received_seq",
                "Newest sequence number received from production",
                &group_labels,
                &group["received_seq"],
            );
            families.set(
                "redoubt_apply_durable_seq",
                "Newest sequence number held durably in the journal copy",
                &group_labels,
                &group["durable_seq"],
            );
            families.set(
                "redoubt_apply_connected",
                "1 while production's send process is connected",
                &group_labels,
                &group["connected"],
            );
            families.set(
                "redoubt_replica_consistent",
                "1 when the replica equals production as of its applied sequence number (0 during a super transaction, or before its first sync ended)",
                &group_labels,
                &group["replica_consistent"],
            );
            families.count(
                "redoubt_applied_records",
                "Records applied to the replica (the applied sequence number; rate() is the apply rate)",
                &group_labels,
                &group["applied_seq"],
            );
        }
        for target in group["targets"].as_array().into_iter().flatten() {
            let target_name = target["server"].as_str().unwrap_or("");
            let target_labels = labels(&[("group", name), ("target", target_name)]);
            for (metric, help, field) in [
                ("redoubt_target_connected", "1 while the send process is connected to the target", "connected"),
                ("redoubt_target_status_code", "The product's status code: 30 loaded and running, 60 loaded and stopped, 100 unloaded", "status_code"),
                ("redoubt_target_durable_seq", "Newest sequence number the target holds durably", "durable_seq"),
                ("redoubt_target_applied_seq", "Newest sequence number the target applied", "applied_seq"),
                ("redoubt_target_sent_seq", "Newest sequence number sent to the target", "sent_seq"),
                ("redoubt_target_backlog_bytes", "Bytes of journal the target does not hold durably yet", "backlog_bytes"),
                ("redoubt_target_lag_seconds", "Replication lag (RPO) of the target", "lag_seconds"),
                ("redoubt_target_speed_megabytes_per_second", "Replication throughput to the target (MB/s)", "speed_mb_s"),
                ("redoubt_super_transaction_percent", "Progress of the running super transaction (100: none running)", "super_transaction_pct"),
                ("redoubt_target_needs_resync", "1 when the target needs a resync", "needs_resync"),
            ] {
                families.set(metric, help, &target_labels, &target[field]);
            }
            families.count(
                "redoubt_target_sent_bytes",
                "Bytes sent to the target since the data path started",
                &target_labels,
                &target["sent_bytes"],
            );
        }
    }
    let mut registry = Registry::default();
    for (name, help, family) in families.float {
        registry.register(name, help, family);
    }
    for (name, help, family) in families.counters {
        registry.register(name, help, family);
    }
    registry.register(
        "redoubt_step_duration_seconds",
        "Duration of the initialization steps this agent ran",
        kept.step_seconds.clone(),
    );
    registry.register(
        "redoubt_step_runs",
        "Initialization steps this agent ran, by outcome",
        kept.step_runs.clone(),
    );
    let mut out = String::new();
    if let Err(error) = encode(&mut out, &registry) {
        tracing::error!("encode the metrics: {error}");
    }
    out
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
    fn status_fields_become_labelled_metrics() {
        let kept = AgentMetrics::new();
        kept.record_step("erp", 11, 0.25, true);
        kept.record_step("erp", 11, 0.5, false);
        let status = json!({"server": "prod-a", "config_version": 3, "tls_refusals": 2, "groups": [
            {"name": "erp", "role": "production", "data_path": "loaded", "journal_seq": 812,
             "journal_usage_pct": 12.5, "needs_resync": false,
             "targets": [{"server": "dr-b", "connected": true, "status_code": 30,
                          "durable_seq": 810, "applied_seq": 800, "sent_seq": 812,
                          "sent_bytes": 4096, "backlog_bytes": 1024, "lag_seconds": 0.25,
                          "speed_mb_s": 85.5, "super_transaction_pct": 100.0,
                          "needs_resync": false}]},
            {"name": "crm", "role": "recovery1", "data_path": "loaded", "received_seq": 9,
             "durable_seq": 9, "applied_seq": 7, "connected": true, "journal_usage_pct": 1.0,
             "replica_consistent": true}]});
        let text = render(&status, &kept);
        for expected in [
            "redoubt_agent_config_version{server=\"prod-a\"} 3.0",
            "redoubt_tls_refusals_total{server=\"prod-a\"} 2",
            "redoubt_journal_seq{group=\"erp\",role=\"production\"} 812.0",
            "redoubt_target_backlog_bytes{group=\"erp\",target=\"dr-b\"} 1024.0",
            "redoubt_target_speed_megabytes_per_second{group=\"erp\",target=\"dr-b\"} 85.5",
            "redoubt_target_sent_bytes_total{group=\"erp\",target=\"dr-b\"} 4096",
            "redoubt_applied_records_total{group=\"crm\",role=\"recovery1\"} 7",
            "redoubt_replica_consistent{group=\"crm\",role=\"recovery1\"} 1.0",
            "redoubt_step_duration_seconds_count{group=\"erp\",step=\"11\"} 2",
            "redoubt_step_runs_total{group=\"erp\",step=\"11\",outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
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
