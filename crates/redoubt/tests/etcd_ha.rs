//! The HA console and the production fence against a real 3-member etcd cluster (three `etcd`
//! processes on loopback, `redoubt_fence::testing::EtcdCluster`), with `redoubt console` and
//! `redoubt agent` processes.

mod ha;

use std::time::{Duration, Instant};

use redoubt_console::record::{InitRecord, InitState};
use redoubt_console::store::{ConfigVersion, Store};
use redoubt_console::store_etcd::EtcdStore;
use redoubt_fence::testing::{CuttableProxy, EtcdCluster};
use redoubt_fence::{EtcdFence, Fence, FenceTiming};
use serde_json::json;

use ha::{Api, Server};

fn record(group: &str, version: u64) -> InitRecord {
    InitRecord {
        group: group.to_string(),
        version,
        previous_version: None,
        destroy: false,
        state: InitState::Running,
        plan: json!({"group": group}),
        steps: Vec::new(),
        started_unix_ms: 1,
        finished_unix_ms: None,
    }
}

/// Blocking store calls run on a blocking thread (the store waits on its own runtime).
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(call)
        .await
        .expect("blocking call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_keeps_versions_records_and_refuses_a_deposed_leader() {
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster");
    let url = cluster.url();
    blocking(move || {
        let store = EtcdStore::connect(&url).expect("connect");
        assert_eq!(store.current().expect("current"), None);
        // 150 groups: more than one transaction holds; saved in chunks, version last.
        let records: Vec<InitRecord> = (0..150).map(|i| record(&format!("g{i:03}"), 1)).collect();
        let v1 = ConfigVersion {
            version: 1,
            toml: "# one".into(),
            saved_unix_ms: 10,
            groups: records.iter().map(|r| r.group.clone()).collect(),
        };
        store.save_version(&v1, &records).expect("save v1");
        let v2 = ConfigVersion {
            version: 2,
            toml: "# two".into(),
            saved_unix_ms: 20,
            groups: vec!["crm".into()],
        };
        store
            .save_version(&v2, &[record("crm", 2)])
            .expect("save v2");
        assert_eq!(
            store.current().expect("current").map(|v| v.version),
            Some(2)
        );
        assert_eq!(
            store.version(1).expect("v1").map(|v| v.toml),
            Some("# one".into())
        );
        let history: Vec<u64> = store
            .history()
            .expect("history")
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(history, [1, 2]);
        assert_eq!(store.inits().expect("inits").len(), 151);
        let mut done = record("g007", 1);
        done.state = InitState::Done;
        store.put_init(&done).expect("put");
        assert_eq!(
            store.init("g007").expect("g007").map(|r| r.state),
            Some(InitState::Done)
        );
        assert_eq!(store.init("nope").expect("none"), None);

        // A deposed leader's writes are refused (its lease no longer holds the leader key).
        let other = EtcdStore::connect(store.url()).expect("second instance");
        other.set_leader_lease(Some(0x7fff_0000));
        let refused = other
            .put_init(&record("g007", 1))
            .expect_err("not the leader");
        assert!(
            refused.to_string().contains("no longer the leader"),
            "{refused}"
        );
        assert_eq!(
            store.init("g007").expect("g007").map(|r| r.state),
            Some(InitState::Done)
        );

        // The shared token: the first candidate wins.
        let token = store.shared_token("aaaa").expect("token");
        assert_eq!(token, "aaaa");
        assert_eq!(other.shared_token("bbbb").expect("token"), "aaaa");

        // The audit log: ids increase across instances.
        let entry = redoubt_console::audit::AuditEntry {
            id: 0,
            unix_ms: 5,
            who: "operator".into(),
            method: "POST".into(),
            path: "/v1/config".into(),
            group: None,
            summary: Some("test".into()),
            status: 200,
            outcome: "ok".into(),
        };
        assert_eq!(store.append_audit(&entry).expect("append"), 1);
        assert_eq!(other.append_audit(&entry).expect("append"), 2);
        let ids: Vec<u64> = store
            .audit_entries(0, 10)
            .expect("read")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(store.audit_entries(1, 10).expect("read").len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_console_mid_initialization_another_completes_it() {
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = cluster.url();
    let store_url = url.clone();
    let store = blocking(move || EtcdStore::connect(&store_url).expect("store")).await;
    let store = std::sync::Arc::new(store);
    let leader = |store: &std::sync::Arc<EtcdStore>| store.leader_url().ok().flatten();

    let mut first = ha::console(dir.path(), "console-1", Some(&url)).await;
    ha::wait_for("console-1 to lead", Duration::from_secs(20), || {
        leader(&store) == Some(first.url())
    })
    .await;
    let second = ha::console(dir.path(), "console-2", Some(&url)).await;
    // Both serve with the token stored in etcd (console-2 copies it once it joined).
    let token = |name: &str| {
        std::fs::read_to_string(dir.path().join(name).join("token")).unwrap_or_default()
    };
    ha::wait_for(
        "console-2 to share the token",
        Duration::from_secs(10),
        || !token("console-1").trim().is_empty() && token("console-1") == token("console-2"),
    )
    .await;

    let mut agents = Vec::new();
    for name in ["a00", "a01", "a02"] {
        agents.push(ha::agent(dir.path(), name, None).await);
    }
    let servers: Vec<Server> = agents
        .iter()
        .map(|agent| Server {
            name: agent.name.clone(),
            address: agent.address(),
            nbd_port: None,
        })
        .collect();
    let groups = 12;
    let text = ha::config(dir.path(), &servers, groups, 2);

    // The follower forwards the apply to the leader.
    let follower = Api::new(&second.url(), &dir.path().join("console-2/token"));
    let (status, body) = follower
        .post("/v1/config", &json!({"toml": text, "confirm": true}))
        .await;
    assert_eq!(status, 200, "apply through the follower: {body}");
    assert_eq!(body["version"], 1);

    // Kill the leader as soon as a row is done somewhere while initializations run.
    let names: Vec<String> = (0..groups).map(|i| format!("g{i:03}")).collect();
    let watched = std::sync::Arc::clone(&store);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = std::sync::Arc::clone(&watched);
        let records = blocking(move || store.inits().expect("inits")).await;
        let any_row_done = records.iter().any(|record| {
            record
                .steps
                .iter()
                .flat_map(|step| step.rows.iter())
                .any(|row| row.state == redoubt_console::record::RowState::Done)
        });
        if any_row_done {
            break;
        }
        assert!(Instant::now() < deadline, "no row ever finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();
    let killed_at = Instant::now();
    let frozen = {
        let store = std::sync::Arc::clone(&store);
        blocking(move || store.inits().expect("inits")).await
    };
    let running_at_kill = frozen
        .iter()
        .filter(|record| record.state == InitState::Running)
        .count();
    assert!(
        running_at_kill > 0,
        "every initialization had ended before the leader was killed"
    );

    // The follower takes over within the lease TTL and completes every initialization.
    ha::wait_for("console-2 to lead", Duration::from_secs(20), || {
        leader(&store) == Some(second.url())
    })
    .await;
    let took_over = killed_at.elapsed();
    assert!(
        took_over < Duration::from_secs(12),
        "takeover took {took_over:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in &names {
        loop {
            let state = follower.init_state(name).await;
            if state == "done" {
                break;
            }
            assert_ne!(state, "failed", "{name} failed after the takeover");
            assert!(Instant::now() < deadline, "{name} stuck in {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The new leader answers status for every group.
    let (status, body) = follower.get("/v1/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"].as_array().map(Vec::len), Some(groups));
    eprintln!(
        "takeover after {took_over:?}; {running_at_kill} of {groups} initializations were running at the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_production_stops_writes_before_a_promoted_server_can_take_the_fence() {
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    // Production reaches etcd only through proxies the test can cut.
    let mut proxies = Vec::new();
    for port in cluster.client_ports() {
        proxies.push(CuttableProxy::start(*port).await.expect("proxy"));
    }
    let through: Vec<String> = proxies
        .iter()
        .map(|proxy| format!("127.0.0.1:{}", proxy.port()))
        .collect();
    let production_fence = format!("etcd://{}", through.join(","));

    let console = ha::console(dir.path(), "console", None).await;
    let production = ha::agent(dir.path(), "prod-a", Some(&production_fence)).await;
    let recovery = ha::agent(dir.path(), "dr-b", Some(&cluster.url())).await;
    let nbd_port = ha::free_port();
    let servers = [
        Server {
            name: "prod-a".into(),
            address: production.address(),
            nbd_port: Some(nbd_port),
        },
        Server {
            name: "dr-b".into(),
            address: recovery.address(),
            nbd_port: None,
        },
    ];
    let text = ha::config(dir.path(), &servers, 1, 1);
    let api = Api::new(&console.url(), &dir.path().join("console/token"));
    let (status, body) = api
        .post("/v1/config", &json!({"toml": text, "confirm": true}))
        .await;
    assert_eq!(status, 200, "apply: {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.init_state("g000").await != "done" {
        assert!(Instant::now() < deadline, "initialization did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Production holds the fence of g000; a second server cannot take it.
    let promoted = EtcdFence::connect(&cluster.url(), FenceTiming::default())
        .await
        .expect("fence");
    assert_eq!(
        promoted.holder("g000").await.expect("holder").as_deref(),
        Some("prod-a")
    );
    assert!(promoted.acquire_production("g000", "dr-b").await.is_err());

    // Writes go through while production holds the fence.
    let address = format!("127.0.0.1:{nbd_port}");
    let writer = tokio::task::spawn_blocking(move || {
        let mut client =
            redoubt_testkit::nbd_client::NbdClient::connect(&address, "lv0000").expect("nbd");
        let block = vec![0x5au8; 4096];
        assert_eq!(client.write(0, &block, true).expect("write"), 0);
        client
    });
    let mut client = writer.await.expect("writer");

    for proxy in &proxies {
        proxy.cut();
    }
    let cut_at = Instant::now();
    // Write every 20 ms: remember when the last write was acknowledged and when the first
    // one failed; meanwhile the promoted server tries to take the fence.
    let promote = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(lease) = promoted.acquire_production("g000", "dr-b").await {
                return (Instant::now(), lease);
            }
            assert!(
                Instant::now() < deadline,
                "the promoted server never got the fence"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let writes = tokio::task::spawn_blocking(move || {
        let block = vec![0xa5u8; 4096];
        let mut last_ok = None;
        let mut first_refused = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let errno = client.write(4096, &block, true).expect("write answered");
            if errno == 0 {
                assert!(
                    first_refused.is_none(),
                    "a write succeeded after one was refused"
                );
                last_ok = Some(Instant::now());
            } else if first_refused.is_none() {
                first_refused = Some(Instant::now());
            }
            if first_refused.is_some_and(|at: Instant| at.elapsed() > Duration::from_secs(5)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (last_ok, first_refused)
    });
    let (last_ok, first_refused) = writes.await.expect("writes");
    let (taken_at, lease) = promote.await.expect("promotion");
    let first_refused = first_refused.expect("production never stopped accepting writes");
    let last_ok = last_ok.expect("no write succeeded after the cut");
    assert!(
        last_ok < taken_at,
        "production acknowledged a write {:?} after the promoted server took the fence",
        last_ok - taken_at
    );
    assert!(first_refused < taken_at);
    let stopped_after = first_refused - cut_at;
    let taken_after = taken_at - cut_at;
    assert!(
        stopped_after <= Duration::from_millis(3_000 + 100),
        "writes stopped {stopped_after:?} after the cut (margin 3 s)"
    );
    assert!(taken_after >= Duration::from_millis(3_000));
    eprintln!(
        "partition: production refused writes after {stopped_after:?}, the promoted server took the fence after {taken_after:?}"
    );
    lease.release().await;
}
