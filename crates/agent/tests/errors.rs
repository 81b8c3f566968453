//! One agent: the API's error paths name what failed and where.

mod common;

use common::{config, free_port, RunningAgent, Servers};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_what_failed_and_where() {
    let root = tempfile::tempdir().unwrap();
    let prod_dir = root.path().join("prod-a");
    let prod = RunningAgent::start("prod-a", "127.0.0.1:0", &root.path().join("state")).await;
    let servers = Servers {
        prod_address: &prod.address,
        prod_dir: &prod_dir,
        nbd_port: free_port(),
        dr_address: "127.0.0.1:9",
        dr_dir: &root.path().join("dr-b"),
    };

    let (status, body) = prod.get("/v1/nope").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("/v1/step"),
        "{body}"
    );

    let (status, body) = prod.post("/v1/step", &json!({"group": "erp"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );

    let (status, body) = prod
        .step(
            2,
            json!({"server": "prod-a", "role": "production"}),
            1,
            "[[server]]\nname = 3\n",
            None,
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid configuration"),
        "{body}"
    );

    let good = config(&servers, "4MiB", "1MiB");
    let (status, body) = prod
        .step(
            2,
            json!({"server": "dr-b", "role": "recovery1"}),
            1,
            &good,
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the row is for server dr-b"),
        "{body}"
    );

    // A replication container someone else filled: step 11 names the LV and the container.
    prod.step_ok(2, "production", 1, &good).await;
    let capacities = redoubt_volume::ContainerCapacities {
        replication_bytes: 4 << 20,
        log_record_file_bytes: 16 << 20,
        snapshot_bytes: 1 << 20,
    };
    {
        let mut store =
            redoubt_volume::GroupStore::open_or_create(&prod_dir, "erp", capacities).unwrap();
        let squatter = redoubt_volume::VolumeSpec {
            name: "squatter".into(),
            size_bytes: 4 << 20,
            source: None,
        };
        store
            .ensure_volume(&squatter, Default::default(), Default::default())
            .unwrap();
    }
    let (status, body) = prod
        .step(
            11,
            json!({"server": "prod-a", "role": "production"}),
            1,
            &good,
            None,
        )
        .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("step 11 of group erp on prod-a: create LV lv0 (1MiB) in "),
        "{error}"
    );
    assert!(error.contains("replication"), "{error}");
    assert!(error.contains("is full"), "{error}");
    {
        let mut store =
            redoubt_volume::GroupStore::open_or_create(&prod_dir, "erp", capacities).unwrap();
        store.replication_mut().delete_lv("squatter").unwrap();
    }

    // An older configuration version is refused.
    prod.step_ok(2, "production", 2, &good).await;
    let (status, body) = prod
        .step(
            2,
            json!({"server": "prod-a", "role": "production"}),
            1,
            &good,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("older than version 2"),
        "{body}"
    );

    // Deleting the group: the production server's LVs are not deleted without destroy.
    prod.step_ok(11, "production", 2, &good).await;
    let without_group = good.split("[[group]]").next().unwrap().to_string();
    let (status, body) = prod
        .step(
            4,
            json!({"server": "prod-a", "role": "production"}),
            3,
            &without_group,
            Some(&good),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("refuse to delete LVs lv0"),
        "{body}"
    );
    assert!(prod_dir.join("groups/erp/replication/lv0").exists());

    // Verify on a server with no role left checks that nothing of the group is loaded; here
    // the production LVs are kept (no destroy), and the one peer of the old group is away.
    let (status, body) = prod
        .step(
            20,
            json!({"server": "prod-a", "role": "production"}),
            3,
            &without_group,
            Some(&good),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("peer dr-b at 127.0.0.1:9"), "{error}");
    assert!(!error.contains("still exists"), "{error}");

    prod.stop().await.expect("clean shutdown");
}
