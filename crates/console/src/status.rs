//! `GET /v1/status`: each configured server's agent status, gathered in parallel, folded into
//! the `redoubt status --format json` shape (`shared/spec/cli.md`). An unreachable agent is
//! reported as such; the fields only it could give are `null`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use redoubt_config::Config;

use crate::agent::{AgentClient, STATUS_TIMEOUT_MS};
use crate::record::{self, InitRecord, InitState};

/// Each server's agent status document, or why it could not be had.
pub type AgentStatuses = HashMap<String, Result<Value, String>>;

pub async fn collect(agent: &Arc<dyn AgentClient>, config: &Config) -> AgentStatuses {
    let mut calls = JoinSet::new();
    for server in &config.servers {
        let agent = Arc::clone(agent);
        let name = server.name.clone();
        let address = server.address.clone();
        calls.spawn(async move {
            let answer = tokio::time::timeout(
                Duration::from_millis(STATUS_TIMEOUT_MS),
                agent.status_of(&name, &address),
            )
            .await;
            let result = match answer {
                Ok(Ok(document)) => Ok(document),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "the agent at {address} did not answer within {STATUS_TIMEOUT_MS} ms"
                )),
            };
            (name, result)
        });
    }
    let mut out = HashMap::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok((name, result)) = joined {
            out.insert(name, result);
        }
    }
    out
}

/// The agent's entry for `group`, if the agent answered and knows the group.
fn agent_group<'a>(agents: &'a AgentStatuses, server: &str, group: &str) -> Option<&'a Value> {
    agents
        .get(server)?
        .as_ref()
        .ok()?
        .get("groups")?
        .as_array()?
        .iter()
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some(group))
}

fn field(value: Option<&Value>, name: &str) -> Value {
    value
        .and_then(|value| value.get(name))
        .cloned()
        .unwrap_or(Value::Null)
}

fn first_present(values: &[Value]) -> Value {
    values
        .iter()
        .find(|value| !value.is_null())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Who serves a group now: the acting production, the servers that follow it, and the
/// failover context that says so (the newest any answering member holds; none without a
/// failover, and the configuration then says it all).
#[derive(Clone, Debug, PartialEq)]
struct Acting {
    production: String,
    targets: Vec<String>,
    context: Option<Value>,
}

fn acting(group: &redoubt_config::Group, agents: &AgentStatuses) -> Acting {
    let newest = std::iter::once(&group.production)
        .chain(group.recovery.iter())
        .filter_map(|server| agent_group(agents, server, &group.name)?.get("failover"))
        .filter(|context| context.is_object())
        .max_by_key(|context| context.get("since_unix_ms").and_then(Value::as_u64));
    let named = newest.and_then(|context| {
        let production = context.get("acting_production")?.as_str()?.to_string();
        let targets = context
            .get("targets")?
            .as_array()?
            .iter()
            .filter_map(|target| target.as_str().map(str::to_string))
            .collect();
        Some((production, targets))
    });
    match named {
        Some((production, targets)) => Acting {
            production,
            targets,
            context: newest.cloned(),
        },
        None => Acting {
            production: group.production.clone(),
            targets: group.recovery.clone(),
            context: None,
        },
    }
}

/// What became of a server that served the group before a failover and serves it no more:
/// `unreachable` (its agent does not answer), `following` (it applies the acting production's
/// history), `fenced` (its data path is down: it rejoins through failback), or `serving` (its
/// data path still runs as production: two productions, to be fenced at once).
fn former_state(
    agents: &AgentStatuses,
    server: &str,
    group: &str,
    acting: &Acting,
) -> &'static str {
    if !matches!(agents.get(server), Some(Ok(_))) {
        return "unreachable";
    }
    if acting.targets.iter().any(|target| target == server) {
        return "following";
    }
    let entry = agent_group(agents, server, group);
    let loaded = field(entry, "data_path") == "loaded";
    let production = field(entry, "role") == "production";
    if loaded && production {
        "serving"
    } else {
        "fenced"
    }
}

/// The `failover` object of a group's status: null without a failover.
fn failover_json(group: &redoubt_config::Group, agents: &AgentStatuses, acting: &Acting) -> Value {
    let Some(context) = &acting.context else {
        return Value::Null;
    };
    let old = field(Some(context), "old_production");
    let old_name = old.as_str().unwrap_or(group.production.as_str());
    json!({
        "state": field(Some(context), "state"),
        "kind": field(Some(context), "kind"),
        "point_seq": field(Some(context), "point_seq"),
        "since_unix_ms": field(Some(context), "since_unix_ms"),
        "acting_production": acting.production,
        "configured_production": group.production,
        "old_production": {
            "server": old_name,
            "state": former_state(agents, old_name, &group.name, acting),
        },
    })
}

/// Pure: the status document from the configuration, the initialization records and whatever
/// the agents said.
pub fn build(config: &Config, version: u64, inits: &[InitRecord], agents: &AgentStatuses) -> Value {
    let servers: Vec<Value> = config
        .servers
        .iter()
        .map(|server| match agents.get(&server.name) {
            Some(Ok(document)) => json!({
                "name": server.name, "address": server.address, "reachable": true,
                "config_version": field(Some(document), "config_version"),
            }),
            Some(Err(error)) => json!({
                "name": server.name, "address": server.address, "reachable": false,
                "error": error,
            }),
            None => json!({
                "name": server.name, "address": server.address, "reachable": false,
                "error": "not asked",
            }),
        })
        .collect();
    let reachable = |server: &str| matches!(agents.get(server), Some(Ok(_)));

    let groups: Vec<Value> = config
        .groups
        .iter()
        .map(|group| {
            let init = inits.iter().find(|record| record.group == group.name);
            let initialization = match init {
                Some(record) if record.state != InitState::Done => json!({
                    "state": record.state.as_str(),
                    "step": record::current_step(&record.steps),
                    "version": record.version,
                }),
                _ => json!({"state": "idle", "step": null}),
            };
            let acting = acting(group, agents);
            let production = agent_group(agents, &acting.production, &group.name);
            let exports = production
                .and_then(|entry| entry.get("exports"))
                .and_then(Value::as_array);
            let volumes: Vec<Value> = group
                .volumes
                .iter()
                .map(|volume| {
                    let export = exports
                        .and_then(|exports| {
                            exports.iter().find(|export| {
                                export.get("volume").and_then(Value::as_str)
                                    == Some(volume.name.as_str())
                            })
                        })
                        .and_then(|export| export.get("export"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    // `redoubt attach`: the production agent's block device of the LV.
                    let attached = production
                        .and_then(|entry| entry.get("attachments"))
                        .and_then(Value::as_array)
                        .and_then(|attachments| {
                            attachments.iter().find(|attachment| {
                                attachment.get("volume").and_then(Value::as_str)
                                    == Some(volume.name.as_str())
                                    && attachment.get("snapshot").is_none()
                            })
                        })
                        .cloned()
                        .unwrap_or(Value::Null);
                    json!({"name": volume.name, "size_bytes": volume.size_bytes, "export": export,
                           "attached": attached})
                })
                .collect();
            let journal_seq = field(production, "journal_seq");
            let targets: Vec<Value> = acting
                .targets
                .iter()
                .map(|server| {
                    let from_production = production
                        .and_then(|entry| entry.get("targets"))
                        .and_then(Value::as_array)
                        .and_then(|targets| {
                            targets.iter().find(|target| {
                                target.get("server").and_then(Value::as_str)
                                    == Some(server.as_str())
                            })
                        });
                    let from_recovery = agent_group(agents, server, &group.name);
                    json!({
                        "server": server,
                        "reachable": reachable(server),
                        "connected": field(from_production, "connected"),
                        "status_code": field(from_production, "status_code"),
                        "journal_seq": journal_seq,
                        "sent_seq": first_present(&[
                            field(from_production, "sent_seq"),
                            field(from_recovery, "received_seq"),
                        ]),
                        "durable_seq": first_present(&[
                            field(from_recovery, "durable_seq"),
                            field(from_production, "durable_seq"),
                        ]),
                        "applied_seq": first_present(&[
                            field(from_recovery, "applied_seq"),
                            field(from_production, "applied_seq"),
                        ]),
                        "sent_bytes": field(from_production, "sent_bytes"),
                        "source_backlog_pct": field(production, "journal_usage_pct"),
                        "target_backlog_pct": field(from_recovery, "journal_usage_pct"),
                        "backlog_bytes": field(from_production, "backlog_bytes"),
                        "lag_seconds": field(from_production, "lag_seconds"),
                        "speed_mb_s": field(from_production, "speed_mb_s"),
                        "super_transaction_pct": field(from_production, "super_transaction_pct"),
                        "snapshot_usage_pct": field(from_recovery, "snapshot_usage_pct"),
                        "needs_resync": first_present(&[
                            field(from_production, "needs_resync"),
                            field(from_recovery, "needs_resync"),
                        ]),
                        "data_path": field(from_recovery, "data_path"),
                        "replica_consistent": field(from_recovery, "replica_consistent"),
                        "apply_paused": field(from_recovery, "apply_paused"),
                        "pre_resync": field(from_recovery, "pre_resync"),
                    })
                })
                .collect();
            let direction = if acting.targets.is_empty() {
                format!("{} -> no recovery server", acting.production)
            } else {
                format!("{} -> {}", acting.production, acting.targets.join(", "))
            };
            json!({
                "name": group.name,
                "production": acting.production,
                "configured_production": group.production,
                "failover": failover_json(group, agents, &acting),
                "production_reachable": reachable(&acting.production),
                "direction": direction,
                "mode": group.mode.as_str(),
                "config_version": version,
                "data_path": field(production, "data_path"),
                "initialization": initialization,
                "volumes": volumes,
                "targets": targets,
            })
        })
        .collect();
    json!({"config_version": version, "groups": groups, "servers": servers})
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[server]]
name = "prod-a"
address = "127.0.0.1:7411"
data_dir = "/d/a"
nbd_listen = "127.0.0.1:10809"

[[server]]
name = "dr-b"
address = "127.0.0.1:7412"
data_dir = "/d/b"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "zstd"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"
"#;

    #[test]
    fn folds_agent_statuses_and_reports_unreachable_ones() {
        let config = redoubt_config::parse("c.toml", CONFIG).expect("valid");
        let mut agents = AgentStatuses::new();
        agents.insert(
            "prod-a".into(),
            Ok(json!({"server": "prod-a", "config_version": 3, "groups": [{
                "name": "erp", "role": "production", "data_path": "loaded",
                "exports": [{"volume": "lv_data01", "export": "nbd://127.0.0.1:10809/lv_data01"}],
                "journal_seq": 812, "applied_seq": 812,
                "targets": [{"server": "dr-b", "connected": true, "durable_seq": 812,
                             "applied_seq": 810, "sent_bytes": 1234, "needs_resync": false}]}]})),
        );
        agents.insert("dr-b".into(), Err("connection refused".into()));
        let status = build(&config, 3, &[], &agents);
        let group = &status["groups"][0];
        assert_eq!(group["name"], "erp");
        assert_eq!(group["direction"], "prod-a -> dr-b");
        assert_eq!(group["mode"], "async");
        assert_eq!(group["config_version"], 3);
        assert_eq!(group["initialization"]["state"], "idle");
        assert_eq!(group["volumes"][0]["size_bytes"], 1u64 << 30);
        assert_eq!(
            group["volumes"][0]["export"],
            "nbd://127.0.0.1:10809/lv_data01"
        );
        let target = &group["targets"][0];
        assert_eq!(target["server"], "dr-b");
        assert_eq!(target["reachable"], false);
        assert_eq!(target["journal_seq"], 812);
        assert_eq!(
            target["applied_seq"], 810,
            "production's view when dr-b is away"
        );
        assert_eq!(target["needs_resync"], false);
        assert_eq!(status["servers"][1]["reachable"], false);
        assert_eq!(status["servers"][1]["error"], "connection refused");
        assert_eq!(status["servers"][0]["config_version"], 3);
    }

    fn three_servers() -> Config {
        let text = CONFIG
            .replace(
                "recovery = [\"dr-b\"]",
                "recovery = [\"dr-b\", \"dr-c\"]",
            )
            .replace(
                "[[group]]",
                "[[server]]\nname = \"dr-c\"\naddress = \"127.0.0.1:7413\"\ndata_dir = \"/d/c\"\nnbd_listen = \"127.0.0.1:10811\"\n\n[[group]]",
            )
            .replace(
                "data_dir = \"/d/b\"",
                "data_dir = \"/d/b\"\nnbd_listen = \"127.0.0.1:10810\"",
            );
        redoubt_config::parse("c.toml", &text).expect("valid")
    }

    fn context(targets: &[&str], kind: &str, state: &str) -> Value {
        json!({"group": "erp", "acting_production": "dr-b", "old_production": "prod-a",
               "targets": targets, "point_seq": 322, "state": state, "kind": kind,
               "since_unix_ms": 1_000})
    }

    fn promoted_dr_b(context: &Value) -> Result<Value, String> {
        Ok(json!({"server": "dr-b", "config_version": 3, "groups": [{
            "name": "erp", "role": "production", "data_path": "loaded",
            "exports": [{"volume": "lv_data01", "export": "nbd://127.0.0.1:10810/lv_data01"}],
            "journal_seq": 400,
            "targets": [{"server": "dr-c", "connected": true, "status_code": 30,
                         "sent_seq": 400, "applied_seq": 399}],
            "failover": context}]}))
    }

    fn follower(server: &str, role: &str, context: &Value) -> Result<Value, String> {
        Ok(json!({"server": server, "config_version": 3, "groups": [{
            "name": "erp", "role": role, "data_path": "loaded", "applied_seq": 399,
            "failover": context}]}))
    }

    #[test]
    fn after_an_unplanned_failover_status_names_the_acting_production_and_its_followers() {
        let config = three_servers();
        let context = context(&["dr-c"], "unplanned", "committed");
        let mut agents = AgentStatuses::new();
        agents.insert("prod-a".into(), Err("connection refused".into()));
        agents.insert("dr-b".into(), promoted_dr_b(&context));
        agents.insert("dr-c".into(), follower("dr-c", "recovery1", &context));
        let status = build(&config, 3, &[], &agents);
        let group = &status["groups"][0];
        assert_eq!(group["production"], "dr-b");
        assert_eq!(group["configured_production"], "prod-a");
        assert_eq!(group["production_reachable"], true);
        assert_eq!(group["direction"], "dr-b -> dr-c");
        assert_eq!(group["data_path"], "loaded");
        assert_eq!(
            group["volumes"][0]["export"],
            "nbd://127.0.0.1:10810/lv_data01"
        );
        let targets = group["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "only the followers: {targets:?}");
        assert_eq!(targets[0]["server"], "dr-c");
        assert_eq!(targets[0]["status_code"], 30);
        assert_eq!(targets[0]["journal_seq"], 400);
        let failover = &group["failover"];
        assert_eq!(failover["state"], "committed");
        assert_eq!(failover["kind"], "unplanned");
        assert_eq!(failover["point_seq"], 322);
        assert_eq!(failover["old_production"]["server"], "prod-a");
        assert_eq!(failover["old_production"]["state"], "unreachable");

        // The old production's agent back, its data path kept down: fenced.
        agents.insert(
            "prod-a".into(),
            Ok(json!({"server": "prod-a", "config_version": 3, "groups": [{
                "name": "erp", "role": "production", "data_path": "failed",
                "error": "dr-b acts as production", "failover": null}]})),
        );
        let status = build(&config, 3, &[], &agents);
        assert_eq!(
            status["groups"][0]["failover"]["old_production"]["state"],
            "fenced"
        );
    }

    #[test]
    fn after_a_planned_failover_the_old_production_is_shown_following() {
        let config = three_servers();
        let context = context(&["dr-c", "prod-a"], "planned", "before_commit");
        let mut agents = AgentStatuses::new();
        agents.insert("prod-a".into(), follower("prod-a", "recovery1", &context));
        agents.insert("dr-b".into(), promoted_dr_b(&context));
        agents.insert("dr-c".into(), follower("dr-c", "recovery1", &context));
        let status = build(&config, 3, &[], &agents);
        let group = &status["groups"][0];
        assert_eq!(group["production"], "dr-b");
        assert_eq!(group["direction"], "dr-b -> dr-c, prod-a");
        assert_eq!(group["failover"]["state"], "before_commit");
        assert_eq!(group["failover"]["old_production"]["state"], "following");
        let servers: Vec<&Value> = group["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|target| &target["server"])
            .collect();
        assert_eq!(servers, ["dr-c", "prod-a"]);
    }

    #[test]
    fn without_a_failover_context_the_configuration_says_who_serves() {
        let config = three_servers();
        let mut agents = AgentStatuses::new();
        agents.insert(
            "prod-a".into(),
            follower("prod-a", "production", &Value::Null),
        );
        let status = build(&config, 3, &[], &agents);
        let group = &status["groups"][0];
        assert_eq!(group["production"], "prod-a");
        assert_eq!(group["configured_production"], "prod-a");
        assert_eq!(group["direction"], "prod-a -> dr-b, dr-c");
        assert_eq!(group["failover"], Value::Null);
    }
}
