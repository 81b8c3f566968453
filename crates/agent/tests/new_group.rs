//! Two agents, prod-a and dr-b, driven through the steps of a "new group" plan by hand:
//! 2, 11, 12, 16, 20. Then writes through the datatap's NBD export reach dr-b's replica,
//! agents resume their data paths after a restart without any step, and verify names a
//! replica LV file deleted behind the agent's back.

mod common;

use std::path::PathBuf;

use common::{config, free_port, wait_for, RunningAgent, Servers};
use redoubt_testkit::NbdClient;

const LV_BYTES: usize = 1 << 20;

/// Writes `pattern`-derived 4 KiB blocks at a few offsets through the NBD export and returns
/// the whole LV as production should now hold it.
fn write_through_nbd(export: &str, mut image: Vec<u8>, pattern: u8) -> Vec<u8> {
    let mut client = NbdClient::connect(export, "lv0").expect("NBD connect");
    assert_eq!(client.size_bytes, LV_BYTES as u64);
    for (index, offset) in [0usize, 8192, 65536, LV_BYTES - 4096]
        .into_iter()
        .enumerate()
    {
        let block: Vec<u8> = (0..4096)
            .map(|i| {
                pattern
                    .wrapping_add((i % 251) as u8)
                    .wrapping_add(index as u8)
            })
            .collect();
        client
            .write(offset as u64, &block, false)
            .expect("NBD write");
        image[offset..offset + 4096].copy_from_slice(&block);
    }
    client.flush().expect("NBD flush");
    let read = client
        .read(8192, 4096)
        .expect("NBD read")
        .expect("NBD read succeeds");
    assert_eq!(
        read,
        image[8192..8192 + 4096],
        "production reads its own writes"
    );
    client.disconnect().expect("NBD disconnect");
    image
}

async fn replica_converges(replica: &PathBuf, image: &[u8]) {
    wait_for("the replica to hold production's bytes", || async {
        std::fs::read(replica).is_ok_and(|bytes| bytes == image)
    })
    .await;
}

fn nbd_address(status: &serde_json::Value) -> String {
    let uri = status["exports"][0]["export"]
        .as_str()
        .expect("an export URI");
    assert!(uri.ends_with("/lv0"), "{uri}");
    uri.trim_start_matches("nbd://")
        .trim_end_matches("/lv0")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_group_replicates_resumes_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let prod_dir = root.path().join("prod-a");
    let dr_dir = root.path().join("dr-b");
    let prod = RunningAgent::start("prod-a", "127.0.0.1:0", &root.path().join("prod-state")).await;
    let dr = RunningAgent::start("dr-b", "127.0.0.1:0", &root.path().join("dr-state")).await;

    let (status, health) = dr.get("/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["server"], "dr-b");
    assert_eq!(health["config_version"], 0);
    assert!(health["time_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);

    let text = config(
        &Servers {
            prod_address: &prod.address,
            prod_dir: &prod_dir,
            nbd_port: free_port(),
            dr_address: &dr.address,
            dr_dir: &dr_dir,
        },
        "4MiB",
        "1MiB",
    );
    let version = 1;
    // Step 2 on each row, twice: idempotent.
    for _ in 0..2 {
        prod.step_ok(2, "production", version, &text).await;
        dr.step_ok(2, "recovery1", version, &text).await;
    }
    assert_eq!(dr.get("/v1/health").await.1["config_version"], 1);
    assert!(root.path().join("dr-state/config-1.toml").exists());

    let created = dr.step_ok(11, "recovery1", version, &text).await;
    assert!(created.contains("created 1 LV"), "{created}");
    let again = dr.step_ok(11, "recovery1", version, &text).await;
    assert!(again.contains("already as configured"), "{again}");
    prod.step_ok(11, "production", version, &text).await;
    let marked = prod.step_ok(12, "", version, &text).await;
    assert!(marked.contains("lv0"), "{marked}");
    dr.step_ok(16, "recovery1", version, &text).await;
    prod.step_ok(16, "production", version, &text).await;
    let loaded_again = prod.step_ok(16, "production", version, &text).await;
    assert!(loaded_again.contains("already loaded"), "{loaded_again}");
    let verified = dr.step_ok(20, "recovery1", version, &text).await;
    assert!(verified.contains("peer prod-a reachable"), "{verified}");
    prod.step_ok(20, "production", version, &text).await;

    let prod_status = prod.group_status().await;
    assert_eq!(prod_status["role"], "production", "{prod_status}");
    assert_eq!(prod_status["data_path"], "loaded", "{prod_status}");
    assert_eq!(prod_status["targets"][0]["server"], "dr-b", "{prod_status}");
    // Step 12's request was handed to the datatap when step 16 loaded it: the super
    // transaction runs there, nothing is left pending in the agent.
    assert_eq!(
        prod_status["full_sync_requested"].as_array().map(Vec::len),
        Some(0),
        "{prod_status}"
    );
    let dr_status = dr.group_status().await;
    assert_eq!(dr_status["role"], "recovery1", "{dr_status}");
    assert_eq!(dr_status["data_path"], "loaded", "{dr_status}");

    // Writes through the export reach the replica.
    let export = nbd_address(&prod_status);
    let replica = dr_dir.join("groups/erp/replication/lv0");
    let image = {
        let export = export.clone();
        tokio::task::spawn_blocking(move || write_through_nbd(&export, vec![0u8; LV_BYTES], 7))
            .await
            .unwrap()
    };
    replica_converges(&replica, &image).await;
    wait_for("prod-a to see dr-b's acknowledgement", || async {
        let status = prod.group_status().await;
        status["targets"][0]["connected"] == true
            && status["targets"][0]["durable_seq"].as_u64() >= status["journal_seq"].as_u64()
    })
    .await;

    // A restarted production agent resumes its data path without any step, and shipping
    // resumes where it stopped.
    let prod = prod.restart().await;
    let resumed = prod.group_status().await;
    assert_eq!(resumed["data_path"], "loaded", "{resumed}");
    let export = nbd_address(&resumed);
    let image = tokio::task::spawn_blocking(move || write_through_nbd(&export, image, 91))
        .await
        .unwrap();
    replica_converges(&replica, &image).await;

    // The same for the recovery agent.
    let dr = dr.restart().await;
    let resumed = dr.group_status().await;
    assert_eq!(resumed["data_path"], "loaded", "{resumed}");
    assert_eq!(resumed["role"], "recovery1", "{resumed}");
    dr.step_ok(20, "recovery1", version, &text).await;

    // A replica LV deleted by hand: verify fails and names the file.
    std::fs::remove_file(&replica).unwrap();
    let (status, body) = dr
        .step(
            20,
            serde_json::json!({"server": "dr-b", "role": "recovery1"}),
            version,
            &text,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().expect("an error message");
    assert!(
        error.starts_with("step 20 of group erp on dr-b: "),
        "{error}"
    );
    assert!(error.contains(&replica.display().to_string()), "{error}");
    assert!(error.contains("is missing"), "{error}");

    // Verify with a version this server does not have is a mismatch too.
    let (status, body) = prod
        .step(
            20,
            serde_json::json!({"server": "prod-a", "role": "production"}),
            7,
            &text,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected version 7"),
        "{body}"
    );

    prod.stop().await.expect("prod-a stops cleanly");
    dr.stop().await.expect("dr-b stops cleanly");
}
