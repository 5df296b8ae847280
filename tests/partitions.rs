//! Real network partitions (SPEC §7): five nodes, each in its own network
//! namespace, with links between them cut by blackhole routes while the
//! clients (this process) still reach every node. Needs root.

mod common;

use common::checker::{Checker, assert_clean};
use common::{Cluster, DEADLINE, Options, wait_for};

/// Node `observer`'s view of `member`: its state, as it reports it.
async fn seen_state(cluster: &Cluster, observer: usize, member: usize) -> Option<String> {
    cluster
        .state_seen(observer, &cluster.nodes[member].id)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minority_partition_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(Options {
        nodes: 5,
        netns: true,
        ..Options::default()
    })
    .await;
    let majority: Vec<String> = (0..4).map(|i| cluster.url(i)).collect();
    let checker = Checker::start(majority.clone(), "minority-", 200);

    // Node 4 is cut off from the other four; this process still reaches it.
    let net = cluster.net.as_mut().expect("namespaces");
    net.partition(&[4], &[0, 1, 2, 3]);
    wait_for("both sides to see the partition", DEADLINE, || async {
        let cut_off = seen_state(&cluster, 4, 0).await.as_deref() == Some("down");
        let seen = seen_state(&cluster, 0, 4).await.as_deref() == Some("down");
        (cut_off && seen).then_some(())
    })
    .await;
    // Writes go on through the majority while the partition lasts.
    let writes_before = checker.writes();
    wait_for("writes during the partition", DEADLINE, || async {
        (checker.writes() >= writes_before + 200).then_some(())
    })
    .await;

    let net = cluster.net.as_mut().expect("namespaces");
    net.heal_partition(&[4], &[0, 1, 2, 3]);
    wait_for("node 4 to be back", DEADLINE, || async {
        let back = seen_state(&cluster, 0, 4).await.as_deref() == Some("normal");
        let sees = seen_state(&cluster, 4, 0).await.as_deref() == Some("normal");
        (back && sees).then_some(())
    })
    .await;
    let report = checker.stop().await;
    assert_clean(&report);

    // After a balance every replica holds the last acknowledged version,
    // and reads return the last acknowledged value.
    let summary = cluster.balance(0);
    assert_eq!(
        summary["failed"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    for (key, value) in &report.acked {
        let whereis: Vec<String> =
            common::get_json(&cluster.http, &format!("{}/whereis/{key}", cluster.url(0))).await;
        let mut held = Vec::new();
        for node in &whereis {
            held.push(cluster.haskey(cluster.index_of(node), key).await);
        }
        assert!(held.windows(2).all(|w| w[0] == w[1]), "{key}: {held:?}");
        let body = cluster
            .get_bytes(&format!("{}/keys/{key}", cluster.url(4)))
            .await;
        assert_eq!(String::from_utf8_lossy(&body), value.to_string(), "{key}");
    }
}
