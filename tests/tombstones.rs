//! Tombstone GC (F13) with real nodes and a short `--tombstone-grace`:
//! tombstones go only once every replica has them, a node away longer than
//! the grace period re-syncs instead of bringing deleted keys back, and a
//! removed node's stale copies are not pushed back by purge.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Options, key_url, ringkv_cli};
use reqwest::StatusCode;
use serde_json::Value;

/// The grace period the tests run with.
const GRACE: Duration = Duration::from_secs(3);

fn flags(extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--no-hints",
        "--repair-interval",
        "0",
        "--tombstone-grace",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

async fn write(cluster: &Cluster, keys: &[String]) {
    for (i, key) in keys.iter().enumerate() {
        let status = cluster
            .http
            .put(key_url(cluster, i % 2, key))
            .body(format!("value of {key}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED, "{key}");
    }
}

/// Deletes `keys` through nodes 0 and 1, acknowledged by one replica.
async fn delete(cluster: &Cluster, keys: &[String]) {
    for (i, key) in keys.iter().enumerate() {
        let status = cluster
            .http
            .delete(format!("{}?w=1", key_url(cluster, i % 2, key)))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{key}");
    }
}

/// Asserts that no node in `nodes` answers a read of any of `keys`.
async fn assert_unreadable(cluster: &Cluster, nodes: &[usize], keys: &[String]) {
    for &i in nodes {
        for key in keys {
            let status = cluster
                .http
                .get(key_url(cluster, i, key))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::NOT_FOUND, "{key} read through node {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstones_go_only_once_every_replica_has_them() {
    let mut cluster = Cluster::start(Options {
        flags: flags(&[]),
        ..Options::default()
    })
    .await;
    let keys: Vec<String> = (0..60).map(|i| format!("gc-{i}")).collect();
    let (gone, kept) = keys.split_at(40);
    write(&cluster, &keys).await;

    // Node 2 misses the deletes (no hints, no repair).
    cluster.kill(2);
    delete(&cluster, gone).await;
    tokio::time::sleep_until((Instant::now() + GRACE + Duration::from_millis(500)).into()).await;

    // Past the grace period, but node 2 is down: nothing is collected.
    let summary = cluster.balance(0);
    assert_eq!(summary["tombstones_dropped"], 0, "{summary}");
    assert!(!summary["failed"].as_array().unwrap().is_empty());
    for key in gone {
        assert!(cluster.haskey(0, key).await.1, "{key} on node 0");
        assert!(cluster.haskey(1, key).await.1, "{key} on node 1");
    }

    // Node 2 was away longer than the grace period: it re-syncs alone (no
    // balance, no read) and holds the tombstones before anything else.
    cluster.restart(2);
    cluster.wait_converged().await;
    for key in gone {
        let expected = cluster.haskey(0, key).await;
        cluster.wait_haskey(2, key, expected).await;
    }
    assert_unreadable(&cluster, &[0, 1, 2], gone).await;

    // Now every replica has them: balances collect them everywhere.
    let mut dropped = 0;
    common::wait_for("every tombstone collected", common::DEADLINE, || {
        let summary = cluster.balance(1);
        dropped += summary["tombstones_dropped"].as_u64().unwrap();
        let cluster = &cluster;
        async move {
            for key in gone {
                for i in 0..3 {
                    if cluster.haskey(i, key).await != (0, false) {
                        return None;
                    }
                }
            }
            Some(())
        }
    })
    .await;
    assert_eq!(dropped, 3 * gone.len() as u64);
    assert_unreadable(&cluster, &[0, 1, 2], gone).await;
    for key in kept {
        let got = cluster.get_bytes(&key_url(&cluster, 2, key)).await;
        assert_eq!(got.as_ref(), format!("value of {key}").as_bytes());
    }
    // The replicas agree: nothing left to move, nothing comes back.
    let summary = cluster.balance(2);
    assert_eq!(summary["leaves_differing"], 0, "{summary}");
    assert_eq!(summary["pulled"], 0, "{summary}");
    assert_eq!(summary["pushed"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_back_after_the_grace_period_resurrects_nothing() {
    let mut cluster = Cluster::start(Options {
        replicas: 2,
        flags: flags(&["--no-auto-purge"]),
        ..Options::default()
    })
    .await;
    let keys: Vec<String> = (0..60).map(|i| format!("back-{i}")).collect();
    write(&cluster, &keys).await;
    let mut stale = Vec::new();
    for key in &keys {
        if cluster.haskey(2, key).await.0 > 0 {
            stale.push(key.clone());
        }
    }
    assert!(!stale.is_empty());

    // Node 2 dies holding its copies; the keys are deleted and node 2 is
    // removed; past the grace period the tombstones are collected.
    cluster.kill(2);
    delete(&cluster, &keys).await;
    let node2 = cluster.nodes[2].id.clone();
    cluster
        .wait_state(&[0, 1], &node2, "down", common::DEADLINE)
        .await;
    let (ok, _, err) = ringkv_cli(&cluster.nodes[0].id, &["remove", &cluster.nodes[2].id]);
    assert!(ok, "{err}");
    tokio::time::sleep_until((Instant::now() + GRACE + Duration::from_millis(500)).into()).await;
    common::wait_for("every tombstone collected", common::DEADLINE, || {
        cluster.balance(0);
        let cluster = &cluster;
        let keys = &keys;
        async move {
            for key in keys {
                for i in 0..2 {
                    if cluster.haskey(i, key).await != (0, false) {
                        return None;
                    }
                }
            }
            Some(())
        }
    })
    .await;

    // Node 2 comes back with its old copies. A purge on it must not hand
    // them to the owners, who hold nothing: they may be deletes.
    cluster.restart(2);
    cluster.wait_ready(2).await;
    common::wait_for("node 2 to agree on the ring", common::DEADLINE, || async {
        let ring = cluster.ring(2).await?;
        (ring["agreed"] == true && ring["in_transition"] == false).then_some(())
    })
    .await;
    for key in &stale {
        assert!(cluster.haskey(2, key).await.0 > 0, "{key} still on node 2");
    }
    let (ok, out, err) = ringkv_cli(&cluster.nodes[2].id, &["--json", "purge"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["kept"], stale.len(), "{report}");
    assert!(
        report["kept_keys"][0][1]
            .as_str()
            .unwrap()
            .contains("older than the tombstone grace period"),
        "{report}"
    );
    for key in &keys {
        for i in 0..2 {
            assert_eq!(
                cluster.haskey(i, key).await,
                (0, false),
                "{key} on node {i}"
            );
        }
    }
    assert_unreadable(&cluster, &[0, 1, 2], &keys).await;
}
