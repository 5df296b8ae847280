//! Membership lifecycle with real nodes: failure detection, bootstrap,
//! graceful leave, hints, removal, zones, replication factor at runtime,
//! simultaneous joins. Each test runs a concurrent client (`Checker`) for
//! its whole length where the issue asks for one.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::checker::{Checker, assert_clean};
use common::{Cluster, DEADLINE, Options, key_url, ringkv_cli, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

/// What the issue allows for failure detection (F7).
const DETECTION: Duration = Duration::from_secs(5);

/// Writes `count` keys `{prefix}{i}` through rotating nodes of `through`.
async fn write_keys(cluster: &Cluster, through: &[usize], prefix: &str, count: usize) {
    for i in 0..count {
        let node = through[i % through.len()];
        let status = cluster
            .http
            .put(key_url(cluster, node, &format!("{prefix}{i}")))
            .body(format!("value {i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED, "put {prefix}{i}");
    }
}

/// The replicas `/whereis` names for `key`, asked of node `via`.
async fn whereis(cluster: &Cluster, via: usize, key: &str) -> Vec<String> {
    let url = format!(
        "{}/whereis/{}",
        cluster.url(via),
        ringkv::key::to_url_path(key)
    );
    common::get_json(&cluster.http, &url).await
}

/// Waits until, for every key, each replica `/whereis` names (asked of
/// `via`) holds the newest version any node in `live` holds, and returns
/// how many nodes of `live` hold each key.
async fn wait_fully_replicated(
    cluster: &Cluster,
    via: usize,
    live: &[usize],
    keys: &[String],
) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for key in keys {
        let replicas = whereis(cluster, via, key).await;
        let n = cluster.ring(via).await.unwrap()["replicas"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(replicas.len(), n, "{key}: {replicas:?}");
        wait_for(&format!("{key} on {replicas:?}"), DEADLINE, || async {
            let mut held = Vec::new();
            for &i in live {
                held.push((cluster.nodes[i].id.clone(), cluster.haskey(i, key).await.0));
            }
            let newest = held.iter().map(|(_, ts)| *ts).max().unwrap_or(0);
            let all = replicas
                .iter()
                .all(|r| held.iter().any(|(id, ts)| id == r && *ts == newest));
            (newest > 0 && all).then(|| held.iter().filter(|(_, ts)| *ts > 0).count())
        })
        .await;
        let count = {
            let mut c = 0;
            for &i in live {
                if cluster.haskey(i, key).await.0 > 0 {
                    c += 1;
                }
            }
            c
        };
        copies.insert(key.clone(), count);
    }
    copies
}

fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_and_frozen_nodes_are_seen_down_and_back() {
    let mut cluster = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    })
    .await;
    let checker = Checker::start(vec![cluster.url(0), cluster.url(1)], "fd-", 20);
    let victim = cluster.nodes[3].id.clone();

    cluster.kill(3);
    let took = cluster
        .wait_state(&[0, 1, 2], &victim, "down", DETECTION)
        .await;
    eprintln!("SIGKILL seen down everywhere after {took:?}");
    let (ok, out, _) = ringkv_cli(&cluster.nodes[0].id, &["ring"]);
    assert!(ok && out.contains(&victim) && out.contains("down"), "{out}");
    cluster.restart(3);
    let took = cluster
        .wait_state(&[0, 1, 2, 3], &victim, "normal", DETECTION)
        .await;
    eprintln!("restart seen normal everywhere after {took:?}");

    let victim = cluster.nodes[2].id.clone();
    cluster.freeze(2);
    let took = cluster
        .wait_state(&[0, 1, 3], &victim, "down", DETECTION)
        .await;
    eprintln!("SIGSTOP seen down everywhere after {took:?}");
    cluster.thaw(2);
    let took = cluster
        .wait_state(&[0, 1, 2, 3], &victim, "normal", DETECTION)
        .await;
    eprintln!("SIGCONT seen normal everywhere after {took:?}");

    assert_clean(&checker.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_node_streams_its_ranges_before_turning_normal() {
    let mut cluster = Cluster::start(Options::default()).await;
    write_keys(&cluster, &[0, 1, 2], "boot-", 400).await;
    let checker = Checker::start(vec![cluster.url(0), cluster.url(1)], "boot-live-", 30);
    // Throttled so that the joining phase lasts long enough to be seen.
    let joiner = cluster.spawn(vec![
        "--join".into(),
        cluster.nodes[1].id.clone(),
        "--stream-rate".into(),
        "4KB".into(),
    ]);
    let id = cluster.nodes[joiner].id.clone();
    cluster
        .wait_state(&[0, 1, 2], &id, "joining", DEADLINE)
        .await;
    // While joining it owns nothing yet: no key names it as a replica,
    // and its transfer shows in /ring.
    for key in keys("boot-", 50) {
        assert!(!whereis(&cluster, 0, &key).await.contains(&id));
    }
    wait_for("transfer progress in /ring", DEADLINE, || async {
        let transfer = transfer_seen(&cluster, 0, &id).await?;
        (transfer["active"] == true && transfer["keys"].as_u64()? > 0).then_some(())
    })
    .await;
    cluster.wait_converged().await;
    let report = checker.stop().await;
    assert_clean(&report);
    let mut all = keys("boot-", 400);
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    wait_fully_replicated(&cluster, joiner, &[0, 1, 2, 3], &all).await;
    // The new node holds its share without any read having repaired it.
    let mut owned = 0;
    for key in keys("boot-", 400) {
        if whereis(&cluster, 0, &key).await.contains(&id) {
            owned += 1;
            assert!(cluster.haskey(joiner, &key).await.0 > 0, "{key}");
        }
    }
    assert!(owned > 100, "the new node owns only {owned} of 400 keys");
    // Its finished transfer shows every key it fetched, over all its
    // passes (the last pass before it turned normal found nothing new and
    // used to show 0).
    wait_for("the joiner's whole transfer in /ring", DEADLINE, || async {
        let transfer = transfer_seen(&cluster, 0, &id).await?;
        (transfer["active"] == false && transfer["keys"].as_u64()? >= owned as u64).then_some(())
    })
    .await;
}

/// The `transfer` object node `i`'s `/ring` shows for member `id`.
async fn transfer_seen(cluster: &Cluster, i: usize, id: &str) -> Option<Value> {
    let ring = cluster.ring(i).await?;
    let member = ring["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"] == id)?;
    Some(member["transfer"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_makes_a_node_hand_its_ranges_over_and_exit_zero() {
    let mut cluster = Cluster::start(Options {
        nodes: 5,
        ..Options::default()
    })
    .await;
    write_keys(&cluster, &[0, 1, 2, 3, 4], "leave-", 300).await;
    let checker = Checker::start(vec![cluster.url(0), cluster.url(1)], "leave-live-", 30);
    let leaver = cluster.nodes[4].id.clone();
    let started = Instant::now();
    let code = cluster.terminate(4);
    assert_eq!(code, Some(0), "log:\n{}", cluster.log_tail(4));
    eprintln!("node left in {:?}", started.elapsed());
    for i in 0..4 {
        assert_eq!(
            cluster.state_seen(i, &leaver).await.as_deref(),
            Some("removed")
        );
    }
    // The rest of the cluster keeps every key on its full N replicas,
    // without the leaver, and without reads having repaired anything.
    let mut all = keys("leave-", 300);
    let report = checker.stop().await;
    assert_clean(&report);
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    let copies = wait_fully_replicated(&cluster, 0, &[0, 1, 2, 3], &all).await;
    assert!(copies.values().all(|c| *c >= 3), "{copies:?}");

    // `ringkv leave` does the same through the API; a cluster that would
    // be left with fewer members than N refuses.
    let (ok, out, err) = ringkv_cli(&cluster.nodes[3].id, &["leave"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("LEAVE OK {}", cluster.nodes[3].id));
    let (ok, _, err) = ringkv_cli(&cluster.nodes[2].id, &["leave"]);
    assert!(!ok && err.contains("fewer than the 3 replicas"), "{err}");
    wait_fully_replicated(&cluster, 0, &[0, 1, 2], &keys("leave-", 300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let mut cluster = Cluster::start(Options {
        nodes: 4,
        flags: vec!["--stream-rate".into(), "100".into()],
        ..Options::default()
    })
    .await;
    write_keys(&cluster, &[0, 1, 2, 3], "sig-", 200).await;
    let leaver = cluster.nodes[3].id.clone();
    cluster.signal(3, libc::SIGTERM);
    cluster
        .wait_state(&[0, 1, 2], &leaver, "leaving", DEADLINE)
        .await;
    cluster.signal(3, libc::SIGINT);
    let code = cluster.wait_exit(3, DEADLINE);
    assert_eq!(code, Some(130));
}

#[tokio::test(flavor = "multi_thread")]
async fn hints_reach_a_node_that_comes_back_and_remove_re_replicates() {
    let mut cluster = Cluster::start(Options {
        nodes: 5,
        ..Options::default()
    })
    .await;
    let checker = Checker::start(
        vec![cluster.url(0), cluster.url(1), cluster.url(2)],
        "hint-live-",
        30,
    );
    let down = cluster.nodes[4].id.clone();
    cluster.kill(4);
    // Writes for its ranges succeed while it is down...
    write_keys(&cluster, &[0, 1, 2, 3], "hint-", 200).await;
    let mut missed = Vec::new();
    for key in keys("hint-", 200) {
        if whereis(&cluster, 0, &key).await.contains(&down) {
            missed.push(key);
        }
    }
    assert!(!missed.is_empty());
    // ...and reach it from the hints when it is back, before any read.
    cluster.restart(4);
    cluster
        .wait_state(&[0, 1, 2, 3], &down, "normal", DEADLINE)
        .await;
    for key in &missed {
        wait_for(&format!("the hint for {key}"), DEADLINE, || async {
            (cluster.haskey(4, key).await.0 > 0).then_some(())
        })
        .await;
    }

    // Bad input changes nothing.
    let url0 = cluster.url(0);
    let live = cluster.nodes[1].id.clone();
    for (path, status) in [
        (format!("{url0}/ring/127.0.0.1:1"), StatusCode::NOT_FOUND),
        (format!("{url0}/ring/{live}"), StatusCode::CONFLICT),
        (format!("{url0}/ring/not-a-node"), StatusCode::BAD_REQUEST),
    ] {
        let response = cluster.http.delete(&path).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().is_some());
    }
    let (ok, _, err) = ringkv_cli(&cluster.nodes[0].id, &["remove", &live]);
    assert!(!ok && err.contains("is up"), "{err}");

    // Removed for good: its ranges come back to N copies on the others.
    cluster.kill(4);
    cluster
        .wait_state(&[0, 1, 2, 3], &down, "down", DEADLINE)
        .await;
    let (ok, out, err) = ringkv_cli(&cluster.nodes[0].id, &["remove", &down]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("REMOVE OK {down}"));
    cluster
        .wait_state(&[0, 1, 2, 3], &down, "removed", DEADLINE)
        .await;
    let report = checker.stop().await;
    assert_clean(&report);
    let mut all = keys("hint-", 200);
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    let copies = wait_fully_replicated(&cluster, 2, &[0, 1, 2, 3], &all).await;
    assert!(copies.values().all(|c| *c >= 3), "{copies:?}");
    for key in keys("hint-", 20) {
        assert!(!whereis(&cluster, 1, &key).await.contains(&down));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_too_long_is_removed_automatically() {
    let mut cluster = Cluster::start(Options {
        nodes: 4,
        flags: vec!["--auto-remove-after".into(), "2s".into()],
        ..Options::default()
    })
    .await;
    write_keys(&cluster, &[0, 1, 2, 3], "auto-", 150).await;
    let checker = Checker::start(vec![cluster.url(0), cluster.url(1)], "auto-live-", 30);
    let down = cluster.nodes[3].id.clone();
    cluster.kill(3);
    cluster
        .wait_state(&[0, 1, 2], &down, "removed", DEADLINE)
        .await;
    let report = checker.stop().await;
    assert_clean(&report);
    let mut all = keys("auto-", 150);
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    let copies = wait_fully_replicated(&cluster, 0, &[0, 1, 2], &all).await;
    assert!(copies.values().all(|c| *c == 3), "{copies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn zones_get_one_replica_each() {
    let mut cluster = Cluster::start(Options {
        nodes: 1,
        flags: vec!["--zone".into(), "z0".into()],
        ..Options::default()
    })
    .await;
    let mut checker = None;
    for i in 1..6 {
        if i == 3 {
            // From three nodes on, quorums can be met: the client starts.
            cluster.wait_converged().await;
            checker = Some(Checker::start(vec![cluster.url(0)], "zone-live-", 30));
        }
        cluster.spawn(vec![
            "--zone".into(),
            format!("z{}", i % 3),
            "--join".into(),
            cluster.nodes[0].id.clone(),
        ]);
    }
    cluster.wait_converged().await;
    let checker = checker.expect("started");
    write_keys(&cluster, &[0, 1, 2, 3, 4, 5], "zone-", 120).await;
    let zone_of: BTreeMap<String, String> = cluster.ring(0).await.unwrap()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node"].as_str().unwrap().to_string(),
                m["zone"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for key in keys("zone-", 120) {
        let replicas = whereis(&cluster, 1, &key).await;
        let mut zones: Vec<_> = replicas.iter().map(|r| zone_of[r].clone()).collect();
        zones.sort();
        assert_eq!(zones, ["z0", "z1", "z2"], "{key}: {replicas:?}");
    }
    let report = checker.stop().await;
    assert_clean(&report);
    let mut all = keys("zone-", 120);
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    wait_fully_replicated(&cluster, 0, &[0, 1, 2, 3, 4, 5], &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fewer_zones_than_replicas_still_means_distinct_nodes() {
    let mut cluster = Cluster::start(Options {
        nodes: 1,
        flags: vec!["--zone".into(), "a".into()],
        ..Options::default()
    })
    .await;
    for zone in ["a", "b", "b"] {
        cluster.spawn(vec![
            "--zone".into(),
            zone.into(),
            "--join".into(),
            cluster.nodes[0].id.clone(),
        ]);
    }
    cluster.wait_converged().await;
    write_keys(&cluster, &[0, 1, 2, 3], "fz-", 60).await;
    for key in keys("fz-", 60) {
        let mut replicas = whereis(&cluster, 0, &key).await;
        replicas.sort();
        replicas.dedup();
        assert_eq!(replicas.len(), 3, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replication_factor_changes_at_runtime() {
    let cluster = Cluster::start(Options {
        nodes: 6,
        ..Options::default()
    })
    .await;
    write_keys(&cluster, &[0, 1, 2, 3, 4, 5], "rf-", 200).await;
    let checker = Checker::start(vec![cluster.url(0), cluster.url(3)], "rf-live-", 30);
    let all_nodes = [0, 1, 2, 3, 4, 5];

    // Bad input first: nothing changes.
    for bad in ["0", "7", "x"] {
        let (ok, _, err) = ringkv_cli(&cluster.nodes[0].id, &["replicas", bad]);
        assert!(!ok, "replicas {bad} was accepted");
        assert!(!err.is_empty());
    }
    assert_eq!(cluster.ring(0).await.unwrap()["replicas"], 3);

    let (ok, out, err) = ringkv_cli(&cluster.nodes[2].id, &["replicas", "5"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "REPLICAS OK 5");
    for i in all_nodes {
        assert_eq!(cluster.ring(i).await.unwrap()["replicas"], 5);
    }
    let copies = wait_fully_replicated(&cluster, 1, &all_nodes, &keys("rf-", 200)).await;
    assert!(copies.values().all(|c| *c >= 5), "{copies:?}");

    let (ok, out, err) = ringkv_cli(&cluster.nodes[4].id, &["replicas", "2"]);
    assert!(ok, "{out}{err}");
    // Surplus copies go once the two owners hold the key.
    for key in keys("rf-", 200) {
        wait_for(&format!("{key} trimmed to 2 copies"), DEADLINE, || async {
            let mut count = 0;
            for i in all_nodes {
                if cluster.haskey(i, &key).await.0 > 0 {
                    count += 1;
                }
            }
            (count == 2).then_some(())
        })
        .await;
    }
    let report = checker.stop().await;
    assert_clean(&report);
    wait_fully_replicated(&cluster, 5, &all_nodes, &keys("rf-", 200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_joining_at_once_end_with_one_ring() {
    let mut cluster = Cluster::start(Options {
        nodes: 2,
        ..Options::default()
    })
    .await;
    write_keys(&cluster, &[0, 1], "trio-", 200).await;
    // Large values too: they move replica to replica as streams.
    for i in 0..8 {
        let status = cluster
            .http
            .put(key_url(&cluster, i % 2, &format!("trio-big-{i}")))
            .body(common::bytes(i as u64, 2_500_000))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    let checker = Checker::start(vec![cluster.url(0), cluster.url(1)], "trio-live-", 30);
    let seed = cluster.nodes[0].id.clone();
    for _ in 0..3 {
        cluster.spawn(vec!["--join".into(), seed.clone()]);
    }
    cluster.wait_converged().await;
    let report = checker.stop().await;
    assert_clean(&report);
    let mut all = keys("trio-", 200);
    all.extend(keys("trio-big-", 8));
    all.extend(report.acked.iter().map(|(k, _)| k.clone()));
    let copies = wait_fully_replicated(&cluster, 4, &[0, 1, 2, 3, 4], &all).await;
    for i in 0..8usize {
        let key = format!("trio-big-{i}");
        for node in whereis(&cluster, 0, &key).await {
            let index = cluster.index_of(&node);
            let url = format!("{}?r=1", key_url(&cluster, index, &key));
            let body = cluster.get_bytes(&url).await;
            assert!(
                body.as_ref() == common::bytes(i as u64, 2_500_000),
                "{key} via {node}"
            );
        }
    }
    assert!(copies.values().all(|c| *c >= 3), "{copies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reusing_a_members_address_is_refused() {
    let cluster = Cluster::start(Options::default()).await;
    let before = cluster.ring(0).await.unwrap()["digest"].clone();
    let taken = cluster.nodes[1].port;
    let dir = cluster.dir.path().join("impostor");
    // Same identity (127.0.0.1:PORT) as node 1, listening on another
    // loopback address so that the bind itself succeeds.
    let output = std::process::Command::new(common::RINGKV)
        .args(["serve", "--host", "127.0.0.1", "--bind", "127.0.0.2"])
        .args(["--port", &taken.to_string(), "--gossip-interval", "100ms"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--join", &cluster.nodes[0].id])
        .output()
        .expect("run ringkv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("already uses"), "{stderr}");
    assert_eq!(cluster.ring(0).await.unwrap()["digest"], before);
    cluster.wait_converged().await;
}
