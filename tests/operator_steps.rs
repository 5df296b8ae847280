//! The steps an operator's script takes, as MyDHT's users took them: start
//! nodes with `--join`, wait until `GET /ring` lists them, then use
//! `/whereis`, `DELETE /ring/{node}` and `POST /purge`, and expect each to
//! do what it says. Real processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, DEADLINE, Options, RINGKV, key_url, ringkv_cli, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

/// Bytes per value: enough that a joiner throttled by `--stream-rate`
/// stays joining for a few seconds.
const VALUE_BYTES: usize = 2048;

/// Writes `count` keys `{prefix}{i}` through node `via`; their timestamps.
async fn write_keys(
    cluster: &Cluster,
    via: usize,
    prefix: &str,
    count: usize,
) -> BTreeMap<String, u64> {
    let mut written = BTreeMap::new();
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let reply: Value = put(cluster, via, &key).await;
        written.insert(key, reply["timestamp"].as_u64().expect("timestamp"));
    }
    written
}

/// `PUT` of a value under `key` through node `via`: the 201 reply.
async fn put(cluster: &Cluster, via: usize, key: &str) -> Value {
    let response = cluster
        .http
        .put(key_url(cluster, via, key))
        .body(common::bytes(key.len() as u64, VALUE_BYTES))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "put {key}");
    response.json().await.unwrap()
}

/// `/whereis/{key}` asked of node `via`.
async fn whereis(cluster: &Cluster, via: usize, key: &str) -> Vec<String> {
    let url = format!(
        "{}/whereis/{}",
        cluster.url(via),
        ringkv::key::to_url_path(key)
    );
    common::get_json(&cluster.http, &url).await
}

/// The names in field `field` of node `i`'s `/ring`.
async fn ring_list(cluster: &Cluster, i: usize, field: &str) -> Vec<String> {
    cluster
        .ring(i)
        .await
        .and_then(|r| {
            r[field].as_array().map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Starts a node joining through node 0, throttled so that it stays
/// joining while the test looks; waits until nodes `observers` see it
/// joining.
async fn spawn_slow_joiner(cluster: &mut Cluster, observers: &[usize]) -> usize {
    let seed = cluster.nodes[0].id.clone();
    let joiner = cluster.spawn(vec![
        "--join".into(),
        seed,
        "--stream-rate".into(),
        "100KB".into(),
    ]);
    let id = cluster.nodes[joiner].id.clone();
    cluster
        .wait_state(observers, &id, "joining", DEADLINE)
        .await;
    joiner
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_nodes_are_the_owners_and_a_node_listed_there_holds_its_keys() {
    let mut cluster = Cluster::start(Options::default()).await;
    let written = write_keys(&cluster, 0, "owned-", 300).await;
    let joiner = spawn_slow_joiner(&mut cluster, &[0, 1, 2]).await;
    let id = cluster.nodes[joiner].id.clone();

    // Joining: listed apart on every node, owning nothing yet.
    for i in 0..3 {
        let ring = cluster.ring(i).await.unwrap();
        let nodes = ring_list(&cluster, i, "nodes").await;
        let joining = ring_list(&cluster, i, "joining").await;
        if !joining.contains(&id) {
            break; // done already (a fast machine): nothing more to see here
        }
        assert!(!nodes.contains(&id), "{ring}");
        let me = ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node"] == id.as_str())
            .unwrap();
        assert_eq!(me["owns_ranges"], false, "{me}");
    }
    let (ok, out, err) = ringkv_cli(&cluster.nodes[0].id, &["ring"]);
    assert!(ok, "{err}");
    assert!(out.contains("owning ranges:"), "{out}");
    // Writes made meanwhile: stored_on names only the replicas /whereis
    // names; the joiner's copy is reported as pending.
    let mut pending_seen = 0;
    let mut later = BTreeMap::new();
    for i in 0..30 {
        let key = format!("during-{i}");
        let reply = put(&cluster, 1, &key).await;
        later.insert(key.clone(), reply["timestamp"].as_u64().unwrap());
        let replicas: Vec<String> = serde_json::from_value(reply["replicas"].clone()).unwrap();
        let stored_on: Vec<String> = serde_json::from_value(reply["stored_on"].clone()).unwrap();
        let pending: Vec<String> = serde_json::from_value(reply["pending"].clone()).unwrap();
        assert!(stored_on.iter().all(|n| replicas.contains(n)), "{reply}");
        assert!(pending.iter().all(|n| *n == id), "{reply}");
        if !pending.is_empty() {
            assert!(!replicas.contains(&id), "{reply}");
            pending_seen += 1;
        }
        // /whereis names the ring this write used (unless the join ended
        // in between).
        let named = whereis(&cluster, 1, &key).await;
        assert!(
            named == replicas || named.contains(&id),
            "{named:?} {reply}"
        );
    }
    let still_joining = ring_list(&cluster, 1, "joining").await.contains(&id);
    assert!(
        pending_seen > 0 || !still_joining,
        "no write went to the joiner"
    );

    // The script's wait: every node lists it in `nodes`.
    wait_for(
        "every node to list the joiner in nodes",
        DEADLINE,
        || async {
            for i in 0..=joiner {
                if !ring_list(&cluster, i, "nodes").await.contains(&id) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Then, at once: /whereis names it on every node alike, and it holds
    // every key /whereis gives it, at the version written.
    let mut assigned = 0;
    for (key, timestamp) in written.iter().chain(&later) {
        let named = whereis(&cluster, 0, key).await;
        for i in 1..=joiner {
            assert_eq!(whereis(&cluster, i, key).await, named, "{key} via node {i}");
        }
        if named.contains(&id) {
            assigned += 1;
            assert_eq!(
                cluster.haskey(joiner, key).await,
                (*timestamp, false),
                "{key}: the joiner is named but lacks it"
            );
        }
    }
    assert!(assigned > 100, "the joiner owns {assigned} keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_while_joining_fails_no_write_and_is_removed() {
    // Nodes started one after another, N = 3: the third is still joining.
    let mut cluster = Cluster::start(Options {
        nodes: 2,
        ..Options::default()
    })
    .await;
    write_keys(&cluster, 0, "before-", 200).await;
    let joiner = spawn_slow_joiner(&mut cluster, &[0, 1]).await;
    let id = cluster.nodes[joiner].id.clone();
    cluster.kill(joiner);
    // Writes and reads at the default quorums succeed at once, before the
    // failure detector sees it down and after.
    let written = write_keys(&cluster, 1, "after-", 50).await;
    for key in written.keys() {
        let response = cluster
            .http
            .get(key_url(&cluster, 0, key))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "get {key}");
    }
    cluster.wait_state(&[0, 1], &id, "down", DEADLINE).await;
    // It never comes back: removed like any dead member.
    let (ok, out, err) = ringkv_cli(&cluster.nodes[0].id, &["remove", &id]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("REMOVE OK {id}"));
    cluster.wait_state(&[0, 1], &id, "removed", DEADLINE).await;
    write_keys(&cluster, 0, "removed-", 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_paused_while_writes_went_on_has_them_when_it_turns_normal() {
    let mut cluster = Cluster::start(Options::default()).await;
    write_keys(&cluster, 0, "base-", 200).await;
    let joiner = spawn_slow_joiner(&mut cluster, &[0, 1, 2]).await;
    let id = cluster.nodes[joiner].id.clone();
    // Stopped while it joins: the writes meanwhile miss it (their copies
    // for it become hints), and hints are not what it waits for.
    cluster.freeze(joiner);
    let missed = write_keys(&cluster, 2, "missed-", 60).await;
    cluster.thaw(joiner);
    cluster
        .wait_state(&[0, 1, 2, joiner], &id, "normal", DEADLINE)
        .await;
    for (key, timestamp) in &missed {
        if whereis(&cluster, joiner, key).await.contains(&id) {
            assert_eq!(
                cluster.haskey(joiner, key).await,
                (*timestamp, false),
                "{key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_does_what_the_operator_asked() {
    let mut cluster = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    })
    .await;
    let written = write_keys(&cluster, 0, "rm-", 100).await;
    let url0 = cluster.url(0);
    let dead = cluster.nodes[3].id.clone();
    // Asked right after SIGKILL, before the failure detector noticed.
    cluster.kill(3);
    let killed = Instant::now();
    let response = cluster
        .http
        .delete(format!("{url0}/ring/{dead}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(
        status == StatusCode::OK || status == StatusCode::ACCEPTED,
        "{status} {body}"
    );
    cluster
        .wait_state(&[0, 1, 2], &dead, "removed", DEADLINE)
        .await;
    eprintln!(
        "SIGKILL to removed on every node: {:.2} s ({status})",
        killed.elapsed().as_secs_f64()
    );
    // Every key has its N copies on the three left.
    for (key, timestamp) in &written {
        let replicas = whereis(&cluster, 1, key).await;
        assert_eq!(replicas.len(), 3);
        assert!(!replicas.contains(&dead));
        for replica in replicas {
            let i = cluster.index_of(&replica);
            cluster.wait_haskey(i, key, (*timestamp, false)).await;
        }
    }
    // Once more: 409, removed already. Unknown: 404. Up: 409, saying how.
    let live = cluster.nodes[1].id.clone();
    for (node, status, says) in [
        (dead.as_str(), StatusCode::CONFLICT, "already removed"),
        ("127.0.0.1:1", StatusCode::NOT_FOUND, "no member"),
        (live.as_str(), StatusCode::CONFLICT, "ringkv leave --node"),
    ] {
        let response = cluster
            .http
            .delete(format!("{url0}/ring/{node}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{node}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    assert_eq!(
        cluster.state_seen(0, &live).await.as_deref(),
        Some("normal")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_and_balance_wait_for_the_ring_to_settle() {
    let mut cluster = Cluster::start(Options::default()).await;
    let written = write_keys(&cluster, 0, "p-", 200).await;
    let joiner = spawn_slow_joiner(&mut cluster, &[0, 1, 2]).await;
    let url0 = cluster.url(0);
    // Not willing to wait: 503, retryable, saying what it waited for.
    for path in ["purge", "balance"] {
        let response = cluster
            .http
            .post(format!("{url0}/{path}?wait=0"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            continue; // the join ended already (a fast machine)
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("ring change"),
            "{body}"
        );
    }
    // A second node joins too; purge on each node at once, as MyDHT's
    // "add nodes, balance, purge": each waits for the ring to settle.
    let seed = cluster.nodes[0].id.clone();
    let second = cluster.spawn(vec!["--join".into(), seed]);
    let second_id = cluster.nodes[second].id.clone();
    cluster
        .wait_state(&[0], &second_id, "joining", DEADLINE)
        .await;
    let (ok, out, err) = ringkv_cli(&cluster.nodes[0].id, &["--json", "balance"]);
    assert!(ok, "{out}{err}");
    for i in 0..=second {
        let response = cluster
            .http
            .post(format!("{}/purge", cluster.url(i)))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "purge on node {i}: {body}");
    }
    let _ = joiner;
    // Each key is left on its three owners only.
    for (key, timestamp) in written.iter().take(50) {
        let owners = whereis(&cluster, 0, key).await;
        assert_eq!(owners.len(), 3);
        for i in 0..=second {
            let id = &cluster.nodes[i].id;
            let held = cluster.haskey(i, key).await;
            if owners.contains(id) {
                assert_eq!(held, (*timestamp, false), "{key} on owner {id}");
            } else {
                assert_eq!(held, (0, false), "{key} left on {id}");
            }
        }
    }
}

/// Runs `ringkv` with `args`; waits for it to exit (or kills it after
/// `limit`): (exited with success, stderr).
fn run_ringkv(args: &[&str], limit: Duration) -> (Option<bool>, String) {
    let mut child = std::process::Command::new(RINGKV)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn serve_and_cluster_name_the_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    // TCP taken.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port().to_string();
    let (ok, stderr) = run_ringkv(
        &["serve", "--port", &port, "--in-memory"],
        Duration::from_secs(20),
    );
    assert_eq!(ok, Some(false), "{stderr}");
    assert!(
        stderr.contains(&format!("TCP 127.0.0.1:{port} is in use")),
        "{stderr}"
    );
    assert!(stderr.contains("ip_local_reserved_ports"), "{stderr}");
    // UDP taken (gossip), TCP free: a port the kernel gave for TCP, then
    // held over UDP only.
    let udp = loop {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            break udp;
        }
    };
    let udp_port = udp.local_addr().unwrap().port().to_string();
    let (ok, stderr) = run_ringkv(
        &["serve", "--port", &udp_port, "--in-memory"],
        Duration::from_secs(20),
    );
    assert_eq!(ok, Some(false), "{stderr}");
    assert!(
        stderr.contains(&format!("UDP 127.0.0.1:{udp_port} is in use")),
        "{stderr}"
    );
    // `cluster` tries a taken port again for a few seconds, then names it.
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, stderr) = run_ringkv(
        &[
            "cluster",
            "--nodes",
            "1",
            "--base-port",
            &port,
            "--data-root",
            data,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(ok, Some(false), "{stderr}");
    assert!(
        stderr.contains(&format!("TCP 127.0.0.1:{port} is in use")),
        "{stderr}"
    );
    assert!(stderr.contains("still taken after"), "{stderr}");
    drop(tcp);
    drop(udp);
}

#[test]
fn cluster_waits_for_a_port_that_is_freed_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    // The fault: the port stays taken for one second (a connection
    // closing), then is free.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(held);
    });
    let mut child = std::process::Command::new(RINGKV)
        .args(["cluster", "--nodes", "1", "--in-memory", "--base-port"])
        .arg(port.to_string())
        .arg("--data-root")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    releaser.join().unwrap();
    // The SIGTERM came while the cluster started: the node it started
    // stops too, instead of living on without it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node outlived the cluster that started it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        first,
        format!(
            "node 1 http://127.0.0.1:{port}/  redis 127.0.0.1:{}",
            port + 1000
        )
    );
}
