//! Scale: one console managing 200 groups on 12 agents (processes on loopback, one 1 MiB LV
//! per group): initialization of every group, status aggregation over all of them, and the
//! plan of a 1000-LV group. `bench/scale.sh` runs this test and keeps the figures it prints
//! (`SCALE_GROUPS`, `SCALE_AGENTS`, `SCALE_PLAN_LVS` change the sizes).

mod ha;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ha::{Api, Server};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_console_initializes_and_reports_200_groups_on_12_agents() {
    let groups = env_usize("SCALE_GROUPS", 200);
    let agent_count = env_usize("SCALE_AGENTS", 12);
    let plan_lvs = env_usize("SCALE_PLAN_LVS", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let console = ha::console(dir.path(), "console", None).await;
    let mut agents = Vec::new();
    for index in 0..agent_count {
        agents.push(ha::agent(dir.path(), &format!("a{index:02}"), None).await);
    }
    let servers: Vec<Server> = agents
        .iter()
        .map(|agent| Server {
            name: agent.name.clone(),
            address: agent.address(),
            nbd_port: None,
        })
        .collect();
    let api = Api::new(&console.url(), &dir.path().join("console/token"));

    // Plan of one group with many LVs (dry run: nothing saved, no agent called).
    let big = ha::config(dir.path(), &servers[..2], 1, plan_lvs);
    let started = Instant::now();
    let (status, body) = api.post("/v1/config/plan", &json!({"toml": big})).await;
    let plan_time = started.elapsed();
    assert_eq!(status, 200, "plan: {body}");
    let rows: Vec<(u64, usize)> = body["plans"][0]["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    (
                        step["number"].as_u64().unwrap_or(0),
                        step["rows"].as_array().map_or(0, Vec::len),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(body["plans"][0]["group"], "g000");
    assert!(
        rows.first().map(|(number, _)| *number) == Some(1)
            && rows.last().map(|(number, _)| *number) == Some(20),
        "a new group's plan runs from step 1 to step 20: {rows:?}"
    );

    // Initialization of every group.
    let text = ha::config(dir.path(), &servers, groups, 1);
    let started = Instant::now();
    let (status, body) = api
        .post("/v1/config", &json!({"toml": text, "confirm": true}))
        .await;
    assert_eq!(status, 200, "apply: {body}");
    let apply_time = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut status_samples = Vec::new();
    loop {
        let asked = Instant::now();
        let (code, document) = api.get("/v1/status").await;
        status_samples.push(asked.elapsed());
        assert_eq!(code, 200, "status: {document}");
        let entries = document["groups"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), groups);
        let failed: Vec<&Value> = entries
            .iter()
            .filter(|entry| entry["initialization"]["state"] == "failed")
            .collect();
        assert!(failed.is_empty(), "failed initializations: {failed:?}");
        if entries
            .iter()
            .all(|entry| entry["initialization"]["state"] == "idle")
        {
            break;
        }
        assert!(Instant::now() < deadline, "initializations did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let init_time = started.elapsed();

    // Status over every group once everything runs: every server answers, every group's
    // production is reported.
    let mut settled = Vec::new();
    let mut document = Value::Null;
    for _ in 0..5 {
        let asked = Instant::now();
        let (code, answer) = api.get("/v1/status").await;
        settled.push(asked.elapsed());
        assert_eq!(code, 200);
        document = answer;
    }
    let servers_up = document["servers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter(|server| server["reachable"] == true)
                .count()
        })
        .unwrap_or(0);
    assert_eq!(servers_up, agent_count, "{document}");
    for index in [0, groups / 2, groups - 1] {
        let (code, record) = api.get(&format!("/v1/init/g{index:03}")).await;
        assert_eq!(code, 200);
        assert_eq!(record["state"], "done", "{record}");
    }
    let status_latency = median(settled);
    println!(
        "SCALE groups={groups} agents={agent_count} plan_lvs={plan_lvs} plan_ms={} apply_ms={} init_wall_ms={} status_ms_median={} status_ms_during_init_median={}",
        plan_time.as_millis(),
        apply_time.as_millis(),
        init_time.as_millis(),
        status_latency.as_millis(),
        median(status_samples).as_millis(),
    );
}
