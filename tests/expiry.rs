//! Expiring keys (F28) with real nodes: a value written with a TTL over
//! HTTP reads as absent everywhere once it expires, at any quorum, and
//! never comes back: not from a replica that was down while it expired
//! (holding it, or an older value), not by read repair, anti-entropy or
//! hints, and not through a node whose clock runs seconds behind. Expired
//! values are collected like tombstones. The history checker reads while
//! values expire.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::history::{Change, Lifetime, Outcome, Workload, allowed_at, assert_consistent, verify};
use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

fn flags(extra: &[&str]) -> Vec<String> {
    extra.iter().map(|s| s.to_string()).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// Waits until the wall clock is past `ms` (ms since the epoch) by `by`.
async fn wait_past(ms: u64, by: Duration) {
    let target = ms + by.as_millis() as u64;
    let left = target.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(left)).await;
}

/// PUTs `value` to `key` through node `i` with `query` (e.g. `ttl=2s&w=all`);
/// the reply body.
async fn put(cluster: &Cluster, i: usize, key: &str, value: &str, query: &str) -> Value {
    let response = cluster
        .http
        .put(format!("{}?{query}", key_url(cluster, i, key)))
        .body(value.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED, "PUT {key}?{query}");
    response.json().await.expect("put reply")
}

/// The status of a GET of `key` through node `i` with `?r=`.
/// The status of a GET of `key` through node `i` at read quorum `r`, with
/// the body of an error reply (what a failed assertion should show).
async fn status(cluster: &Cluster, i: usize, key: &str, r: &str) -> (StatusCode, String) {
    let reply = cluster
        .http
        .get(format!("{}?r={r}", key_url(cluster, i, key)))
        .send()
        .await
        .expect("get");
    let code = reply.status();
    let body = if code.is_success() {
        String::new()
    } else {
        reply.text().await.unwrap_or_default()
    };
    (code, body)
}

/// Asserts that `key` reads as absent through every running node in
/// `nodes`, at every read quorum.
async fn assert_absent(cluster: &Cluster, nodes: &[usize], key: &str) {
    for &i in nodes {
        for r in ["1", "2", "all"] {
            let (code, body) = status(cluster, i, key, r).await;
            assert_eq!(
                code,
                StatusCode::NOT_FOUND,
                "{key} through node {i} at r={r}: {body}"
            );
        }
    }
}

/// `/haskey` of `key` on node `i`, whole.
async fn haskey(cluster: &Cluster, i: usize, key: &str) -> Value {
    common::get_json(
        &cluster.http,
        &format!(
            "{}/haskey/{}",
            cluster.url(i),
            ringkv::key::to_url_path(key)
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_with_a_ttl_reads_as_absent_everywhere_once_it_expires() {
    let cluster = Cluster::start(Options::default()).await;
    let before = now_ms();
    let reply = put(&cluster, 0, "short", "lived", "ttl=1500ms").await;
    let expires = reply["expires"].as_u64().expect("expires in the PUT reply");
    assert!(
        (before + 1_400..=now_ms() + 1_600).contains(&expires),
        "{reply}"
    );
    // Before: served with its expiry, remaining time and all.
    let response = cluster
        .http
        .get(key_url(&cluster, 1, "short"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let http_date = header("expires").expect("Expires header");
    let at = httpdate::parse_http_date(&http_date).unwrap();
    let at_ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(at_ms >= expires && at_ms < expires + 1_000, "{http_date}");
    let left: u64 = header("x-ringkv-ttl-ms").unwrap().parse().unwrap();
    assert!(left <= 1_500, "{left}");
    assert_eq!(response.text().await.unwrap(), "lived");
    for i in 0..3 {
        let has = haskey(&cluster, i, "short").await;
        assert_eq!(has["expires"], expires, "node {i}: {has}");
        assert_eq!(has["expired"], false, "node {i}: {has}");
    }

    // An absolute expiry as an `Expires` header.
    let at = SystemTime::now() + Duration::from_secs(60);
    let response = cluster
        .http
        .put(key_url(&cluster, 2, "dated"))
        .header("expires", httpdate::fmt_http_date(at))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let reply: Value = response.json().await.unwrap();
    let whole_seconds = at.duration_since(UNIX_EPOCH).unwrap().as_secs() * 1000;
    assert_eq!(reply["expires"], whole_seconds, "{reply}");

    // Bad expiries are refused before anything is written.
    for (query, header) in [
        ("ttl=abc", None),
        ("ttl=0", None),
        ("ttl=5s", Some("Wed, 21 Oct 2099 07:28:00 GMT")),
        ("", Some("tomorrow")),
    ] {
        let mut request = cluster
            .http
            .put(format!("{}?{query}", key_url(&cluster, 0, "bad")))
            .body("x");
        if let Some(h) = header {
            request = request.header("expires", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{query} {header:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    assert_absent(&cluster, &[0], "bad").await;

    // After: absent through every node at every quorum, and out of the
    // nodes' key listings.
    wait_past(expires, Duration::from_millis(20)).await;
    assert_absent(&cluster, &[0, 1, 2], "short").await;
    for i in 0..3 {
        let page: Value =
            common::get_json(&cluster.http, &format!("{}/keys", cluster.url(i))).await;
        let keys: Vec<&str> = page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["key"].as_str())
            .collect();
        assert!(!keys.contains(&"short"), "node {i} lists it: {page}");
        assert_eq!(haskey(&cluster, i, "short").await["expired"], true);
    }
    // A later write of the key is a value like any other.
    put(&cluster, 1, "short", "again", "").await;
    let got = cluster.get_bytes(&key_url(&cluster, 2, "short")).await;
    assert_eq!(got.as_ref(), b"again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_away_while_a_key_expired_never_brings_it_back() {
    let mut cluster = Cluster::start(Options {
        flags: flags(&["--no-hints", "--repair-interval", "0"]),
        ..Options::default()
    })
    .await;
    // `own`: node 2 holds the expiring value itself. `read` and `balanced`:
    // node 2 holds an older value without an expiry and misses the write
    // that expires; one is then read (read repair), the other balanced.
    let own = put(&cluster, 0, "own", "soon gone", "ttl=2s&w=all").await;
    for key in ["read", "balanced"] {
        put(&cluster, 0, key, "old", "w=all").await;
    }
    cluster.kill(2);
    let mut expiring = Vec::new();
    for key in ["read", "balanced"] {
        let reply = put(&cluster, 1, key, "new", "ttl=1s&w=2").await;
        expiring.push((key, reply["timestamp"].as_u64().unwrap()));
    }
    let latest = own["expires"].as_u64().unwrap().max(now_ms() + 1_000);
    wait_past(latest, Duration::from_millis(50)).await;

    // Back after the expiry, with its stale copies.
    cluster.restart(2);
    cluster.wait_converged().await;
    cluster.wait_ready(2).await;
    assert_absent(&cluster, &[0, 1, 2], "own").await;
    // A quorum read sees the newest record, expired: absent, and its read
    // repair gives node 2 that record, so even r=1 on node 2 is absent.
    let (code, body) = status(&cluster, 2, "read", "2").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (_, stamp) = expiring[0];
    cluster.wait_haskey(2, "read", (stamp, false)).await;
    assert_absent(&cluster, &[0, 1, 2], "read").await;
    // Anti-entropy hands node 2 the expired record too (not the other way
    // round: its older value goes nowhere). A node just restarted can be
    // suspected down again for a moment on a loaded machine, and a balance
    // then skips it: balance again, as an operator would, until one
    // reaches every replica.
    wait_for("a balance that reaches every replica", DEADLINE, || async {
        let summary = cluster.balance(0);
        summary["failed"].as_array()?.is_empty().then_some(())
    })
    .await;
    let (_, stamp) = expiring[1];
    cluster.wait_haskey(2, "balanced", (stamp, false)).await;
    for i in 0..3 {
        let has = haskey(&cluster, i, "balanced").await;
        assert_eq!(has["timestamp"], stamp, "node {i}: {has}");
        assert_eq!(has["expired"], true, "node {i}: {has}");
    }
    for (key, _) in &expiring {
        assert_absent(&cluster, &[0, 1, 2], key).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hint_delivers_the_expiring_write_to_a_replica_that_missed_it() {
    let mut cluster = Cluster::start(Options {
        flags: flags(&["--repair-interval", "0"]),
        ..Options::default()
    })
    .await;
    put(&cluster, 0, "hinted", "old", "w=all").await;
    cluster.kill(2);
    let reply = put(&cluster, 0, "hinted", "new", "ttl=1s&w=2").await;
    let stamp = reply["timestamp"].as_u64().unwrap();
    wait_past(
        reply["expires"].as_u64().unwrap(),
        Duration::from_millis(50),
    )
    .await;
    cluster.restart(2);
    cluster.wait_converged().await;
    cluster.wait_haskey(2, "hinted", (stamp, false)).await;
    assert_absent(&cluster, &[0, 1, 2], "hinted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_clock_runs_behind_does_not_serve_an_expired_value() {
    let mut cluster = Cluster::start(Options {
        nodes: 2,
        ..Options::default()
    })
    .await;
    // A third node whose clock runs 4 s behind.
    let joined = cluster.nodes[0].id.clone();
    cluster.spawn(flags(&[
        "--replicas",
        "3",
        "--join",
        &joined,
        "--clock-skew-ms=-4000",
    ]));
    cluster.wait_converged().await;
    let reply = put(&cluster, 0, "skewed", "v", "ttl=1s&w=all").await;
    let expires = reply["expires"].as_u64().unwrap();
    wait_past(expires, Duration::from_millis(20)).await;
    // By its own clock the value has 3 s to go; the others' clocks, seen in
    // the write and in every reply, say it has expired.
    assert_absent(&cluster, &[2, 0, 1], "skewed").await;
    assert_eq!(haskey(&cluster, 2, "skewed").await["expired"], true);
    // A TTL given to it counts from the cluster's time, not its own.
    let reply = put(&cluster, 2, "from-behind", "v", "ttl=10s").await;
    let expires = reply["expires"].as_u64().unwrap();
    let expected = now_ms() + 10_000;
    assert!(
        expires.abs_diff(expected) < 1_000,
        "expires {expires}, expected about {expected}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_values_are_collected_like_tombstones() {
    let mut cluster = Cluster::start(Options {
        flags: flags(&["--repair-interval", "0", "--tombstone-grace", "2s"]),
        ..Options::default()
    })
    .await;
    let keys: Vec<String> = (0..20).map(|i| format!("brief-{i}")).collect();
    let mut expires = 0;
    for key in &keys {
        expires = put(&cluster, 0, key, "x", "ttl=500ms&w=all").await["expires"]
            .as_u64()
            .unwrap();
    }
    put(&cluster, 0, "lasting", "y", "w=all").await;
    // Expired, but not for longer than the grace period: kept, so that a
    // replica holding an older value learns it is gone.
    wait_past(expires, Duration::from_millis(50)).await;
    let summary = cluster.balance(0);
    assert_eq!(summary["tombstones_dropped"], 0, "{summary}");
    assert_ne!(cluster.haskey(1, &keys[0]).await.0, 0);
    // Past it, with a replica down: still kept.
    wait_past(expires, Duration::from_millis(2_200)).await;
    cluster.kill(2);
    let summary = cluster.balance(0);
    assert_eq!(summary["tombstones_dropped"], 0, "{summary}");
    cluster.restart(2);
    cluster.wait_converged().await;
    // Every replica live: collected everywhere.
    wait_for("every expired value collected", DEADLINE, || {
        let summary = cluster.balance(1);
        let cluster = &cluster;
        let keys = &keys;
        async move {
            summary["failed"].as_array()?;
            for key in keys {
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
    assert_absent(&cluster, &[0, 1, 2], &keys[0]).await;
    let got = cluster.get_bytes(&key_url(&cluster, 2, "lasting")).await;
    assert_eq!(got.as_ref(), b"y");
    let summary = cluster.balance(2);
    assert_eq!(summary["leaves_differing"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_checker_sees_no_expired_value_come_back() {
    let mut cluster = Cluster::start(Options::default()).await;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let workload = Workload::start_expiring(
        urls.clone(),
        "ttl-",
        4,
        8,
        Duration::from_secs(5),
        15,
        Some((Duration::from_millis(100), Duration::from_millis(1_500))),
    );
    let deadline = |ops: u64| {
        let workload = &workload;
        async move { (workload.acknowledged() >= ops).then_some(()) }
    };
    wait_for("writes before the fault", DEADLINE, || deadline(150)).await;
    // A replica goes away and comes back while values expire.
    workload.set_targets(urls[..2].to_vec());
    cluster.kill(2);
    wait_for("writes while a node is down", DEADLINE, || deadline(300)).await;
    cluster.restart(2);
    cluster.wait_converged().await;
    workload.set_targets(urls.clone());
    wait_for("writes after it is back", DEADLINE, || deadline(450)).await;
    let history = workload.stop().await;
    let summary = cluster.balance(0);
    assert!(
        summary["failed"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    let verdict = verify(&cluster.http, &urls, &history).await;
    assert_consistent("expiring workload", &history, &verdict);
}

#[test]
fn what_a_read_may_return_as_values_expire() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let write = |value, outcome, ttl: Option<u64>| Change {
        effect: Some(value),
        outcome,
        expiry: ttl.map(|ttl| Lifetime {
            sent: t0,
            answered: t0 + ms(10),
            ttl: ms(ttl),
        }),
    };
    let changes = [
        write(1, Outcome::Acknowledged, None),
        write(2, Outcome::Acknowledged, Some(1_000)),
    ];
    // Well before the expiry: the value; around it: either; after: absent.
    assert_eq!(
        allowed_at(&changes, t0 + ms(20), t0 + ms(30)),
        vec![Some(2)]
    );
    assert_eq!(
        allowed_at(&changes, t0 + ms(990), t0 + ms(1_000)),
        vec![None, Some(2)]
    );
    assert_eq!(
        allowed_at(&changes, t0 + ms(1_100), t0 + ms(1_200)),
        vec![None]
    );
    // A failed write with a TTL after an acknowledged one: the first value,
    // or the second until it expires.
    let changes = [
        write(1, Outcome::Acknowledged, None),
        write(2, Outcome::Failed, Some(100)),
    ];
    assert_eq!(
        allowed_at(&changes, t0 + ms(20), t0 + ms(30)),
        vec![Some(1), Some(2)]
    );
    assert_eq!(
        allowed_at(&changes, t0 + ms(500), t0 + ms(510)),
        vec![None, Some(1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_values_stay_dead_through_a_bootstrap_and_a_handover() {
    // N = 2 on 3 nodes, then 4: a joiner and a leaver move ranges.
    let mut cluster = Cluster::start(Options {
        replicas: 2,
        ..Options::default()
    })
    .await;
    let mut latest = 0;
    for i in 0..40 {
        let reply = put(
            &cluster,
            i % 3,
            &format!("gone/{i}"),
            "soon",
            "ttl=1s&w=all",
        )
        .await;
        latest = latest.max(reply["expires"].as_u64().expect("expires"));
        put(&cluster, i % 3, &format!("kept/{i}"), "here", "w=all").await;
    }
    wait_past(latest, Duration::from_millis(50)).await;
    // A fourth node joins: its bootstrap streams the expired records too.
    let joiner = cluster.spawn(vec![
        "--replicas".into(),
        "2".into(),
        "--join".into(),
        cluster.nodes[0].id.clone(),
    ]);
    cluster.wait_converged().await;
    for i in 0..40 {
        let key = format!("gone/{i}");
        assert_absent(&cluster, &[0, 1, 2, joiner], &key).await;
        let has = haskey(&cluster, joiner, &key).await;
        assert!(
            has["timestamp"].as_u64().unwrap_or(0) == 0 || has["expired"] == true,
            "the joiner holds {key} live: {has}"
        );
    }
    // Node 1 leaves, handing its ranges over.
    let leaver = cluster.nodes[1].id.clone();
    assert_eq!(cluster.terminate(1), Some(0), "{}", cluster.log_tail(1));
    for node in [0, 2, joiner] {
        wait_for("the leaver removed everywhere", DEADLINE, || async {
            (cluster.state_seen(node, &leaver).await.as_deref() == Some("removed")).then_some(())
        })
        .await;
    }
    for i in 0..40 {
        assert_absent(&cluster, &[0, 2, joiner], &format!("gone/{i}")).await;
        for node in [0, 2, joiner] {
            let (code, body) = status(&cluster, node, &format!("kept/{i}"), "all").await;
            assert_eq!(code, StatusCode::OK, "kept/{i} through node {node}: {body}");
        }
    }
}
