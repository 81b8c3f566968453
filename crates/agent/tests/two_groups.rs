//! Two groups replicated from prod-a to dr-b: dr-b's one port routes each replication
//! connection to the apply process of the group its Hello names.

mod common;

use common::{free_port, wait_for, RunningAgent};
use redoubt_testkit::NbdClient;

const LV_BYTES: usize = 256 << 10;

fn group_toml(name: &str) -> String {
    format!(
        r#"
[[group]]
name = "{name}"
production = "prod-a"
recovery = ["dr-b"]
mode = "sync"
retention = "1h"
throttle = "0"
compression = "none"

[group.containers]
replication = "1MiB"
log_record_file = "16MiB"
snapshot = "1MiB"

[[group.volume]]
name = "lv0"
size = "256KiB"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replication_connection_reaches_its_group() {
    let root = tempfile::tempdir().unwrap();
    let prod = RunningAgent::start("prod-a", "127.0.0.1:0", &root.path().join("prod-state")).await;
    let dr = RunningAgent::start("dr-b", "127.0.0.1:0", &root.path().join("dr-state")).await;
    let dr_dir = root.path().join("dr-b");
    // One nbd_listen per server: only erp's datatap is loaded on prod-a (a second group's
    // export listener would collide); dr-b runs both apply processes, so each replication
    // connection must be routed by the group its Hello names.
    let text = format!(
        r#"[[server]]
name = "prod-a"
address = "{}"
data_dir = "{}"
nbd_listen = "127.0.0.1:{}"

[[server]]
name = "dr-b"
address = "{}"
data_dir = "{}"
{}{}"#,
        prod.address,
        root.path().join("prod-a").display(),
        free_port(),
        dr.address,
        dr_dir.display(),
        group_toml("erp"),
        group_toml("crm"),
    );
    for agent in [&prod, &dr] {
        agent
            .group_step_ok(
                "erp",
                2,
                if agent.name == "dr-b" {
                    "recovery1"
                } else {
                    "production"
                },
                1,
                &text,
            )
            .await;
    }
    for group in ["erp", "crm"] {
        for step in [11, 16] {
            dr.group_step_ok(group, step, "recovery1", 1, &text).await;
        }
    }
    // Only erp gets the listener; a second group on the same nbd_listen would collide.
    for step in [11, 16] {
        prod.group_step_ok("erp", step, "production", 1, &text)
            .await;
    }
    let status = prod.group_status().await;
    let uri = status["exports"][0]["export"].as_str().unwrap().to_string();
    let export = uri
        .trim_start_matches("nbd://")
        .trim_end_matches("/lv0")
        .to_string();
    let image: Vec<u8> = (0..LV_BYTES).map(|i| (i % 241) as u8).collect();
    let written = image.clone();
    // Sync mode: each write is acknowledged once dr-b holds it, through the routed connection.
    tokio::task::spawn_blocking(move || {
        let mut client = NbdClient::connect(&export, "lv0").unwrap();
        client.write(0, &written, true).unwrap();
        client.disconnect().unwrap();
    })
    .await
    .unwrap();
    let replica = dr_dir.join("groups/erp/replication/lv0");
    wait_for("erp's replica on dr-b", || async {
        std::fs::read(&replica).is_ok_and(|bytes| bytes == image)
    })
    .await;
    let (_, dr_status) = dr.get("/v1/status").await;
    let groups = dr_status["groups"].as_array().unwrap();
    let erp = groups.iter().find(|g| g["name"] == "erp").unwrap();
    let crm = groups.iter().find(|g| g["name"] == "crm").unwrap();
    assert!(erp["durable_seq"].as_u64().unwrap() >= 1, "{dr_status}");
    assert_eq!(crm["data_path"], "loaded", "{dr_status}");
    assert_eq!(crm["durable_seq"], 0, "{dr_status}");
    assert!(
        std::fs::read(dr_dir.join("groups/crm/replication/lv0"))
            .unwrap()
            .iter()
            .all(|byte| *byte == 0),
        "crm's replica got nothing of erp's writes"
    );
    prod.stop().await.expect("prod-a stops");
    dr.stop().await.expect("dr-b stops");
}
