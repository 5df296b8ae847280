//! Anti-entropy with real nodes: a replica that missed writes and deletes
//! (no hints, no reads) is brought in line by `ringkv balance`, which moves
//! only what differs.

mod common;

use common::{Cluster, Options, key_url, ringkv_cli};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn balance_brings_a_replica_that_was_away_in_line() {
    let mut cluster = Cluster::start(Options {
        flags: vec!["--no-hints".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    for i in 0..300 {
        let status = http
            .put(key_url(&cluster, i % 3, &format!("ae-{i}")))
            .body(format!("old {i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    // Nothing differs: a balance compares roots only and moves nothing.
    let quiet = cluster.balance(0);
    assert_eq!(quiet["pulled"], 0, "{quiet}");
    assert_eq!(quiet["pushed"], 0, "{quiet}");
    assert_eq!(quiet["leaves_differing"], 0, "{quiet}");

    // Node 2 misses 100 updates, 50 deletes, 100 new keys and a large value.
    cluster.kill(2);
    for i in 0..100 {
        let url = key_url(&cluster, i % 2, &format!("ae-{i}"));
        let status = http
            .put(url)
            .body(format!("new {i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    for i in 100..150 {
        let url = key_url(&cluster, i % 2, &format!("ae-{i}"));
        let status = http.delete(url).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK);
    }
    for i in 300..400 {
        let url = key_url(&cluster, i % 2, &format!("ae-{i}"));
        let status = http
            .put(url)
            .body(format!("fresh {i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    let large = common::bytes(7, 3_000_000);
    let status = http
        .put(key_url(&cluster, 0, "ae-large"))
        .body(large.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CREATED);
    cluster.restart(2);
    cluster.wait_converged().await;
    assert_eq!(cluster.haskey(2, "ae-350").await.0, 0, "node 2 is behind");
    // `haskey --all-replicas` shows it: one line per replica, node 2 at 0.
    let (ok, out, err) = ringkv_cli(
        &cluster.nodes[0].id,
        &["haskey", "ae-350", "--all-replicas"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(&format!("{} 0", cluster.nodes[2].id)), "{out}");

    let summary = cluster.balance(1);
    assert!(
        summary["failed"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    // 251 records differ; every pair that involves node 2 moves them, in
    // either direction, so at least 251 records moved.
    let moved = summary["pulled"].as_u64().unwrap() + summary["pushed"].as_u64().unwrap();
    assert!(moved >= 251, "{summary}");

    // Every node now holds every key at the same version, deletes included.
    let mut keys: Vec<String> = (0..400).map(|i| format!("ae-{i}")).collect();
    keys.push("ae-large".into());
    for key in &keys {
        let held: Vec<(u64, bool)> = [
            cluster.haskey(0, key).await,
            cluster.haskey(1, key).await,
            cluster.haskey(2, key).await,
        ]
        .to_vec();
        assert!(
            held[0].0 > 0 && held.iter().all(|h| *h == held[0]),
            "{key}: {held:?}"
        );
    }
    for i in 100..150 {
        assert!(
            cluster.haskey(2, &format!("ae-{i}")).await.1,
            "ae-{i} deleted on node 2"
        );
    }
    let got = cluster
        .get_bytes(&format!("{}?r=1", key_url(&cluster, 2, "ae-large")))
        .await;
    assert!(got.as_ref() == large.as_slice());

    let (ok, out, _) = ringkv_cli(
        &cluster.nodes[0].id,
        &["haskey", "ae-350", "--all-replicas"],
    );
    let stamps: Vec<&str> = out.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert!(
        ok && stamps.len() == 3 && stamps.iter().all(|t| *t == stamps[0] && *t != "0"),
        "{out}"
    );

    // Each node's last run shows in /ring, and one of them moved records.
    let moved_in_ring = common::wait_for("repair progress in /ring", common::DEADLINE, || async {
        let ring = cluster.ring(0).await?;
        let members = ring["members"].as_array()?;
        let runs_everywhere = members
            .iter()
            .all(|m| m["repair"]["runs"].as_u64().unwrap_or(0) >= 1);
        let moved: u64 = members
            .iter()
            .map(|m| {
                m["repair"]["pulled"].as_u64().unwrap_or(0)
                    + m["repair"]["pushed"].as_u64().unwrap_or(0)
            })
            .sum();
        let bytes: u64 = members
            .iter()
            .map(|m| m["repair"]["bytes"].as_u64().unwrap_or(0))
            .sum();
        // Each member's figures come by gossip: wait until they add up
        // (a check at the first nonzero sum read some members' old ones).
        (runs_everywhere && moved >= 251 && bytes > 0).then_some(moved)
    })
    .await;
    assert!(moved_in_ring >= 251);

    // In line: the next balance finds nothing to move.
    let (ok, out, err) = ringkv_cli(&cluster.nodes[2].id, &["balance"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 leaves differing, 0 pulled, 0 pushed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_anti_entropy_catches_a_replica_up_alone() {
    let mut cluster = Cluster::start(Options {
        flags: vec!["--no-hints".into(), "--repair-interval".into(), "1s".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    cluster.kill(2);
    for i in 0..50 {
        let url = key_url(&cluster, i % 2, &format!("tick-{i}"));
        let status = http.put(url).body("v").send().await.unwrap().status();
        assert_eq!(status, StatusCode::CREATED);
    }
    cluster.restart(2);
    cluster.wait_converged().await;
    for i in 0..50 {
        let key = format!("tick-{i}");
        let expected = cluster.haskey(0, &key).await;
        cluster.wait_haskey(2, &key, expected).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_keeps_each_key_only_on_its_owners() {
    let mut cluster = Cluster::start(Options {
        flags: vec!["--no-auto-purge".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    let keys: Vec<String> = (0..200).map(|i| format!("purge-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let status = http
            .put(key_url(&cluster, i % 3, key))
            .body("v")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    for _ in 0..2 {
        cluster.spawn(vec![
            "--no-auto-purge".into(),
            "--join".into(),
            cluster.nodes[0].id.clone(),
        ]);
        cluster.wait_converged().await;
    }
    let holders = |key: String| {
        let cluster = &cluster;
        async move {
            let mut held = Vec::new();
            for i in 0..cluster.nodes.len() {
                if cluster.haskey(i, &key).await.0 > 0 {
                    held.push(cluster.nodes[i].id.clone());
                }
            }
            held.sort();
            held
        }
    };
    // The joins moved keys to the new nodes; the old copies are still there.
    let mut surplus = 0;
    for key in &keys {
        surplus += holders(key.clone()).await.len() - 3;
    }
    assert!(surplus > 0);

    let (ok, out, err) = ringkv_cli(&cluster.nodes[1].id, &["--json", "purge", "--all"]);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    let nodes = summary["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 5, "{summary}");
    let dropped: u64 = nodes.values().map(|r| r["dropped"].as_u64().unwrap()).sum();
    assert_eq!(dropped as usize, surplus, "{summary}");
    for key in &keys {
        let url = format!("{}/whereis/{key}", cluster.url(0));
        let mut owners: Vec<String> = http.get(url).send().await.unwrap().json().await.unwrap();
        owners.sort();
        assert_eq!(holders(key.clone()).await, owners, "{key}");
        let got = http.get(key_url(&cluster, 4, key)).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{key}");
    }
}

/// Runs `f` on each of `items`, 32 at a time, in any order.
async fn each<T, F, Fut>(items: impl IntoIterator<Item = T>, f: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Writes key `cu-{i}` through node `i % 2`.
async fn put_numbered(cluster: &Cluster, i: usize, body: String) {
    let key = format!("cu-{i}");
    let status = cluster
        .http
        .put(key_url(cluster, i % 2, &key))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CREATED, "{key}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_away_during_ten_thousand_writes_catches_up() {
    let mut cluster = Cluster::start(Options {
        flags: vec!["--no-hints".into(), "--repair-interval".into(), "0".into()],
        ..Options::default()
    })
    .await;
    let key = |i: usize| format!("cu-{i}");
    each(0..2_000, |i| {
        put_numbered(&cluster, i, format!("first {i}"))
    })
    .await;

    // Node 2 misses 10,000 writes (2,000 updates, 8,000 new keys) and
    // 1,000 deletes (of updated and of new keys).
    cluster.kill(2);
    each(0..10_000, |i| {
        put_numbered(&cluster, i, format!("second {i}"))
    })
    .await;
    let deleted = 1_500..2_500;
    each(deleted.clone(), |i| {
        let cluster = &cluster;
        async move {
            let url = key_url(cluster, i % 2, &key(i));
            let status = cluster.http.delete(url).send().await.unwrap().status();
            assert_eq!(status, StatusCode::OK, "{}", key(i));
        }
    })
    .await;
    cluster.restart(2);
    cluster.wait_converged().await;

    let summary = cluster.balance(0);
    assert!(
        summary["failed"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    let moved = summary["pulled"].as_u64().unwrap() + summary["pushed"].as_u64().unwrap();
    assert!(moved >= 10_000, "{summary}");

    // Identical trees: the next balance compares the roots only.
    let again = cluster.balance(1);
    assert_eq!(again["leaves_differing"], 0, "{again}");
    assert_eq!(again["pulled"], 0, "{again}");
    assert_eq!(again["pushed"], 0, "{again}");
    assert_eq!(again["hashes_compared"], again["pairs"], "{again}");

    // Every replica holds every key at the same version; deleted keys are
    // tombstones and unreadable, the others read back their newest value
    // from node 2 alone.
    let cluster = &cluster;
    each(0..10_000, |i| {
        let deleted = deleted.contains(&i);
        async move {
            let k = key(i);
            let held = [
                cluster.haskey(0, &k).await,
                cluster.haskey(1, &k).await,
                cluster.haskey(2, &k).await,
            ];
            assert!(
                held[0].0 > 0 && held.iter().all(|h| *h == held[0]),
                "{k}: {held:?}"
            );
            assert_eq!(held[0].1, deleted, "{k}");
            let response = cluster
                .http
                .get(format!("{}?r=1", key_url(cluster, 2, &k)))
                .send()
                .await
                .unwrap();
            if deleted {
                assert_eq!(response.status(), StatusCode::NOT_FOUND, "{k}");
            } else {
                assert_eq!(response.status(), StatusCode::OK, "{k}");
                assert_eq!(response.text().await.unwrap(), format!("second {i}"));
            }
        }
    })
    .await;
}
