//! Quorums with nodes down, crash and restart, read repair and joins, with
//! real processes killed and restarted on their data dirs.

mod common;

use std::time::Duration;

use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn quorums_with_nodes_down() {
    let mut cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let base = cluster.url(0);
    let put = |key: &str, query: &str| {
        let url = format!("{base}/keys/{key}{query}");
        let http = http.clone();
        async move { http.put(url).body("v").send().await.unwrap() }
    };
    assert_eq!(put("before", "").await.status(), StatusCode::CREATED);

    // One of three down: majority quorums still succeed; `all` does not.
    cluster.kill(2);
    assert_eq!(put("one-down", "").await.status(), StatusCode::CREATED);
    let got = http
        .get(key_url(&cluster, 1, "before"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let all = put("needs-all", "?w=all").await;
    assert_eq!(all.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = all.json().await.unwrap();
    assert_eq!(body["needed"], 3);
    assert_eq!(body["answered"].as_array().unwrap().len(), 2);
    let failed = body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["node"], cluster.nodes[2].id.as_str());

    // Two of three down: 503 naming the replica that answered.
    cluster.kill(1);
    let refused = put("two-down", "").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["needed"], 2);
    assert_eq!(body["answered"], serde_json::json!([cluster.nodes[0].id]));
    let read = http
        .get(key_url(&cluster, 0, "before"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = read.json().await.unwrap();
    assert_eq!(body["answered"], serde_json::json!([cluster.nodes[0].id]));

    // Per-request quorums override the defaults.
    assert_eq!(put("w1", "?w=1").await.status(), StatusCode::CREATED);
    let read = http
        .get(format!("{}?r=1", key_url(&cluster, 0, "before")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.text().await.unwrap(), "v");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill_and_a_whole_cluster_restart() {
    let mut cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let mut acknowledged: Vec<(String, Vec<String>)> = Vec::new();
    for i in 0..150 {
        let key = format!("durable/{i}");
        let reply: Value = http
            .put(key_url(&cluster, i % 3, &key))
            .body(format!("value {i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored_on: Vec<String> = serde_json::from_value(reply["stored_on"].clone()).unwrap();
        acknowledged.push((key, stored_on));
    }
    // SIGKILL one node right after the writes and restart it: every write it
    // acknowledged is in its own store.
    cluster.kill(1);
    cluster.restart(1);
    cluster.wait_ready(1).await;
    let id = cluster.nodes[1].id.clone();
    for (key, stored_on) in &acknowledged {
        if stored_on.contains(&id) {
            let (timestamp, deleted) = cluster.haskey(1, key).await;
            assert!(timestamp > 0 && !deleted, "{key} lost by {id}");
        }
    }
    // Kill every node at once, restart them all: every value is readable.
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_converged().await;
    for (i, (key, _)) in acknowledged.iter().enumerate() {
        let got = http
            .get(key_url(&cluster, i % 3, key))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{key}");
        assert_eq!(
            got.text().await.unwrap(),
            format!("value {}", key.trim_start_matches("durable/"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn read_repair_brings_a_stale_replica_up_to_date_and_never_resurrects() {
    // Without hints, so that only read repair can bring node 2 up to date.
    let mut cluster = Cluster::start(Options {
        flags: vec!["--no-hints".into(), "--full-read-every".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    for key in ["updated", "deleted", "large"] {
        let status = http
            .put(format!("{}?w=all", key_url(&cluster, 0, key)))
            .body(if key == "large" {
                vec![1u8; 2_000_000]
            } else {
                b"old".to_vec()
            })
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    let old_updated = cluster.haskey(2, "updated").await;
    // Node 2 misses an update, a delete and a large update.
    cluster.kill(2);
    let new: Value = http
        .put(key_url(&cluster, 0, "updated"))
        .body("new")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_ts = new["timestamp"].as_u64().unwrap();
    let del: Value = http
        .delete(key_url(&cluster, 1, "deleted"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let del_ts = del["timestamp"].as_u64().unwrap();
    let large = vec![2u8; 3_000_000];
    let big: Value = http
        .put(key_url(&cluster, 0, "large"))
        .body(large.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let big_ts = big["timestamp"].as_u64().unwrap();
    cluster.restart(2);
    cluster.wait_converged().await;
    assert_eq!(
        cluster.haskey(2, "updated").await,
        old_updated,
        "node 2 is stale before the read"
    );

    // Reads through any node see the newest version and repair node 2.
    let got = http
        .get(key_url(&cluster, 0, "updated"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "new");
    cluster.wait_haskey(2, "updated", (new_ts, false)).await;
    let got = http
        .get(key_url(&cluster, 1, "deleted"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND);
    cluster.wait_haskey(2, "deleted", (del_ts, true)).await;
    let got = http
        .get(key_url(&cluster, 1, "large"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), large.as_slice());
    cluster.wait_haskey(2, "large", (big_ts, false)).await;
    // The repaired node serves the new value itself, and the deleted key
    // stays deleted through every node and every quorum.
    let got = http
        .get(format!("{}?r=1", key_url(&cluster, 2, "large")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), large.as_slice());
    for node in 0..3 {
        for r in ["1", "2", "all"] {
            let got = http
                .get(format!("{}?r={r}", key_url(&cluster, node, "deleted")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                got.status(),
                StatusCode::NOT_FOUND,
                "deleted key via {node} with r={r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_node_is_seen_by_all_and_takes_its_keys() {
    let mut cluster = Cluster::start(Options::default()).await;
    // Join through a node other than the founder.
    let seed = cluster.nodes[1].id.clone();
    let new = cluster.spawn(vec!["--replicas".into(), "3".into(), "--join".into(), seed]);
    tokio::time::timeout(Duration::from_secs(60), cluster.wait_converged())
        .await
        .unwrap_or_else(|_| panic!("no convergence; log:\n{}", cluster.log_tail(new)));
    let new_id = cluster.nodes[new].id.clone();
    let http = cluster.http.clone();
    let mut on_new = 0;
    for i in 0..60 {
        let key = format!("after-join/{i}");
        let reply: Value = http
            .put(format!("{}?w=all", key_url(&cluster, i % 4, &key)))
            .body("v")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let whereis: Vec<String> = http
            .get(format!("{}/whereis/{}", cluster.url((i + 1) % 4), key))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_value::<Vec<String>>(reply["replicas"].clone()).unwrap(),
            whereis
        );
        for node in &whereis {
            let (timestamp, _) = cluster.haskey(cluster.index_of(node), &key).await;
            assert_eq!(
                timestamp,
                reply["timestamp"].as_u64().unwrap(),
                "{key} on {node}"
            );
        }
        on_new += whereis.contains(&new_id) as usize;
    }
    assert!(on_new > 0, "the new node holds none of 60 keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_resumed_after_a_pause_applies_no_ghost_write() {
    let cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let first = http
        .put(key_url(&cluster, 1, "ghost"))
        .body("first")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);

    // Node 0 stops; a client sends it a write and gives up waiting.
    cluster.freeze(0);
    let paused = std::time::Instant::now();
    let impatient = ringkv::tls::http_client_builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let given_up = impatient
        .put(key_url(&cluster, 0, "ghost"))
        .body("ghost")
        .send()
        .await;
    assert!(given_up.is_err(), "a stopped node answered");
    // Another client's write is acknowledged in the meantime.
    let second: Value = http
        .put(key_url(&cluster, 1, "ghost"))
        .body("second")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second_ts = second["timestamp"].as_u64().unwrap();
    // The pause itself (the fault, not a wait for a condition): longer than
    // a node takes to notice it was stopped.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed())).await;
    cluster.thaw(0);

    // Node 0 reads the buffered request on resuming and refuses it.
    wait_for("node 0 to refuse the stale write", DEADLINE, || async {
        cluster
            .log_tail(0)
            .contains("did not run for a while")
            .then_some(())
    })
    .await;
    cluster.wait_ready(0).await;
    for i in 0..3 {
        let got = cluster
            .get_bytes(&format!("{}?r=all", key_url(&cluster, i, "ghost")))
            .await;
        assert_eq!(got.as_ref(), b"second", "through node {i}");
        assert_eq!(cluster.haskey(i, "ghost").await, (second_ts, false));
    }
}

/// The value of one sample of node `i`'s `/metrics`, 0 when absent.
async fn metric(cluster: &Cluster, i: usize, sample: &str) -> f64 {
    let text = cluster
        .http
        .get(format!("{}/metrics", cluster.url(i)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_resumed_after_a_pause_drops_the_write_its_coordinator_gave_up_on() {
    // Hints off: a hint would deliver the write properly later; here only
    // the request buffered in the stopped replica's socket could bring it.
    let cluster = Cluster::start(Options {
        flags: vec!["--no-hints".into(), "--rpc-timeout".into(), "1s".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    // Node 0's connection to node 2 is open before node 2 stops, so the
    // write below reaches node 2's socket rather than failing to connect.
    let warm = http
        .put(key_url(&cluster, 0, "warm"))
        .body("w")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::CREATED);
    cluster
        .wait_haskey(2, "warm", cluster.haskey(0, "warm").await)
        .await;

    cluster.freeze(2);
    let paused = std::time::Instant::now();
    // Nodes 0 and 1 make the quorum; the copy for node 2 waits in its
    // socket and node 0 gives up on it after its 1 s RPC deadline.
    let put = http
        .put(key_url(&cluster, 0, "late"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    // The pause itself (the fault, not a wait for a condition): longer
    // than a node takes to notice it was stopped.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed())).await;
    cluster.thaw(2);

    let refused = r#"ringkv_replica_writes_refused_total{reason="stalled"}"#;
    wait_for(
        "node 2 to refuse the write read after its pause",
        DEADLINE,
        || async { (metric(&cluster, 2, refused).await >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        cluster.haskey(2, "late").await,
        (0, false),
        "node 2 applied it"
    );
    // Its coordinator's copies are untouched, and a later write lands.
    assert_ne!(cluster.haskey(0, "late").await.0, 0);
    // Writes read in the second after a stall are refused too, and node 0
    // may still count node 2 as down: a client retries until all three take it.
    wait_for("a write to all three replicas", DEADLINE, || async {
        let again = http
            .put(key_url(&cluster, 0, "late"))
            .query(&[("w", "all")])
            .body("again")
            .send()
            .await
            .ok()?;
        (again.status() == StatusCode::CREATED).then_some(())
    })
    .await;
    assert_eq!(
        cluster.haskey(2, "late").await,
        cluster.haskey(0, "late").await
    );
}
