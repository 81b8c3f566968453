//! The etcd fence against a real 3-member etcd cluster on loopback.

use std::time::{Duration, Instant};

use redoubt_fence::testing::{CuttableProxy, EtcdCluster};
use redoubt_fence::{EtcdFence, Fence, FenceError, FenceTiming, Validity};

/// Short leases so the tests take seconds: TTL 2 s, renew 200 ms, margin 1 s.
fn timing() -> FenceTiming {
    FenceTiming {
        lease_ttl_ms: 2_000,
        renew_interval_ms: 200,
        safety_margin_ms: 1_000,
    }
}

/// Polls `acquire` until it succeeds (deadline 20 s); returns the lease and when it came.
async fn acquire_when_free(
    fence: &EtcdFence,
    group: &str,
    server: &str,
) -> (redoubt_fence::FenceLease, Instant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fence.acquire_production(group, server).await {
            Ok(lease) => return (lease, Instant::now()),
            Err(FenceError::HeldBy { .. }) | Err(FenceError::Timeout { .. }) => {}
            Err(error) => panic!("acquire: {error}"),
        }
        assert!(Instant::now() < deadline, "{server} never got the fence");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn until(validity: Validity) -> Instant {
    match validity {
        Validity::Held { until, .. } => until,
        other => panic!("not held: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_release_hands_over_and_drop_waits_for_the_ttl() {
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster");
    let a = EtcdFence::connect(&cluster.url(), timing())
        .await
        .expect("a");
    let b = EtcdFence::connect(&cluster.url(), timing())
        .await
        .expect("b");

    let lease = a
        .acquire_production("erp", "prod-a")
        .await
        .expect("a takes");
    assert!(lease.is_valid());
    assert_eq!(
        a.holder("erp").await.expect("holder").as_deref(),
        Some("prod-a")
    );
    match b.acquire_production("erp", "dr-b").await {
        Err(FenceError::HeldBy { holder, .. }) => assert_eq!(holder, "prod-a"),
        other => panic!(
            "b must be refused, got {:?}",
            other.map(|l| l.holder().to_string())
        ),
    }
    // The same server may take its own key again (an agent restart).
    let again = a
        .acquire_production("erp", "prod-a")
        .await
        .expect("ours again");
    drop(lease);
    // Renewals keep it past several TTLs.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(again.is_valid(), "renewal keeps the fence");
    assert!(b.acquire_production("erp", "dr-b").await.is_err());

    // A clean release hands over at once.
    again.release().await;
    let handed = b
        .acquire_production("erp", "dr-b")
        .await
        .expect("b after release");
    assert_eq!(
        b.holder("erp").await.expect("holder").as_deref(),
        Some("dr-b")
    );

    // A holder that stops renewing (crash): the key outlives its validity.
    let last_until = until(*handed.validity().borrow());
    drop(handed);
    let (taken, at) = acquire_when_free(&a, "erp", "prod-a").await;
    assert!(
        at > last_until,
        "the key was taken before the old holder's validity ended"
    );
    taken.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_stops_before_another_takes_over_and_stays_lost() {
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster");
    let mut proxies = Vec::new();
    for port in cluster.client_ports() {
        proxies.push(CuttableProxy::start(*port).await.expect("proxy"));
    }
    let through: Vec<String> = proxies
        .iter()
        .map(|proxy| format!("127.0.0.1:{}", proxy.port()))
        .collect();
    let old = EtcdFence::connect(&format!("etcd://{}", through.join(",")), timing())
        .await
        .expect("old");
    let new = EtcdFence::connect(&cluster.url(), timing())
        .await
        .expect("new");
    let lease = old
        .acquire_production("crm", "prod-a")
        .await
        .expect("old takes");
    let mut validity = lease.validity();
    tokio::time::sleep(Duration::from_millis(500)).await;

    for proxy in &proxies {
        proxy.cut();
    }
    let cut_at = Instant::now();
    let last_until = until(*validity.borrow());
    // The old holder reports the loss by itself, no later than its validity plus one renewal.
    tokio::time::timeout(
        Duration::from_secs(5),
        validity.wait_for(|v| *v == Validity::Lost),
    )
    .await
    .expect("loss reported in time")
    .expect("validity channel");
    let lost_at = Instant::now();
    assert!(
        lost_at <= last_until + Duration::from_millis(400),
        "loss reported late"
    );
    assert!(!lease.is_valid());

    let (taken, taken_at) = acquire_when_free(&new, "crm", "dr-b").await;
    assert!(
        taken_at > last_until,
        "the new holder got the fence {:?} after the cut, before the old one stopped",
        taken_at - cut_at
    );
    assert!(taken_at >= cut_at + Duration::from_millis(1_000));

    // The partition heals: the old holder sees another holder and stays lost.
    for proxy in &proxies {
        proxy.restore();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(*lease.validity().borrow(), Validity::Lost);
    assert_eq!(
        new.holder("crm").await.expect("holder").as_deref(),
        Some("dr-b")
    );
    taken.release().await;
}
