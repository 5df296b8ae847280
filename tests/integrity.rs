//! Integrity with real nodes (F26): bytes of stored values are flipped in a
//! stopped node's data files; once it runs again, a read through any node
//! returns the right bytes (from another replica) and the bad copy is
//! repaired, and the scrub finds and repairs such copies without a read.

mod common;

use std::path::Path;

use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

/// An inline value (under 64 KiB): stored inside its record in a table of
/// the `meta` keyspace. Its key sorts first so that its record's block is
/// not the large value's.
const SMALL_KEY: &str = "a-small";
/// A value of several 1 MiB chunks, stored in blob files.
const LARGE_KEY: &str = "b-large";
/// Bytes of each value searched for in the files: the small value's
/// middle, and the middle of the large value's second chunk.
const SMALL_PATTERN_AT: usize = 10_000;
const LARGE_PATTERN_AT: usize = 1024 * 1024 + 500_000;
const PATTERN_LEN: usize = 32;

/// Flags of every node: SIGTERM stops a node with its data (no leave), and
/// no anti-entropy, so that only reads or the scrub can repair.
fn flags(scrub_interval: &str) -> Vec<String> {
    [
        "--on-signal",
        "stop",
        "--repair-interval",
        "0",
        "--scrub-interval",
        scrub_interval,
    ]
    .map(String::from)
    .to_vec()
}

/// Writes both values on all three replicas; returns them with their
/// timestamps.
async fn write_values(cluster: &Cluster) -> [(String, Vec<u8>, u64); 2] {
    let values = [
        (SMALL_KEY.to_string(), common::bytes(11, 20_000)),
        (
            LARGE_KEY.to_string(),
            common::bytes(12, 3 * 1024 * 1024 + 123),
        ),
    ];
    let mut out = Vec::new();
    for (key, value) in values {
        let response = cluster
            .http
            .put(format!("{}?w=all", key_url(cluster, 0, &key)))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), StatusCode::CREATED, "{key}");
        let body: Value = response.json().await.expect("json");
        let timestamp = body["timestamp"].as_u64().expect("timestamp");
        assert_eq!(cluster.haskey(2, &key).await, (timestamp, false));
        out.push((key, value, timestamp));
    }
    out.try_into().expect("two values")
}

/// Flips a byte inside every occurrence of `pattern` in the engine's table
/// and blob files under `dir` (not its journal: the node flushed at
/// shutdown, so the journal is not replayed); returns how many it flipped.
fn flip_bytes(dir: &Path, pattern: &[u8]) -> usize {
    let mut flipped = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("dir entry").path());
            }
            continue;
        }
        let in_data_files = path
            .components()
            .any(|c| c.as_os_str() == "tables" || c.as_os_str() == "blobs");
        if !in_data_files {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read file");
        let found: Vec<usize> = bytes
            .windows(pattern.len())
            .enumerate()
            .filter(|(_, w)| *w == pattern)
            .map(|(at, _)| at)
            .collect();
        if found.is_empty() {
            continue;
        }
        for at in &found {
            bytes[at + pattern.len() / 2] ^= 0xff;
        }
        std::fs::write(&path, &bytes).expect("write file");
        flipped += found.len();
    }
    flipped
}

/// Stops node 2, flips bytes of both values in its files, starts it again
/// with `scrub_interval`.
async fn corrupt_node_2(cluster: &mut Cluster, values: &[(String, Vec<u8>, u64); 2]) {
    cluster.terminate(2);
    let dir = cluster.nodes[2].data_dir.clone();
    let small = &values[0].1[SMALL_PATTERN_AT..SMALL_PATTERN_AT + PATTERN_LEN];
    let large = &values[1].1[LARGE_PATTERN_AT..LARGE_PATTERN_AT + PATTERN_LEN];
    assert!(
        flip_bytes(&dir, small) >= 1,
        "the small value is in no table file"
    );
    assert!(
        flip_bytes(&dir, large) >= 1,
        "the large value is in no blob file"
    );
}

/// Node 2's scrub progress as node 2 reports it in `/ring`.
async fn scrub_of_node_2(cluster: &Cluster) -> Option<Value> {
    let ring = cluster.ring(2).await?;
    let id = cluster.nodes[2].id.as_str();
    ring["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"] == id)
        .map(|m| m["scrub"].clone())
}

/// Stops nodes 0 and 1 and reads both values through node 2 with R = 1:
/// the bytes can only come from node 2's own copies.
async fn node_2_alone_holds_good_copies(
    cluster: &mut Cluster,
    values: &[(String, Vec<u8>, u64); 2],
) {
    for (key, _, timestamp) in values {
        cluster.wait_haskey(2, key, (*timestamp, false)).await;
    }
    cluster.kill(0);
    cluster.kill(1);
    for (key, value, _) in values {
        let url = format!("{}?r=1", key_url(cluster, 2, key));
        let response = cluster.http.get(url).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        let body = response.bytes().await.expect("body");
        assert!(body.as_ref() == value.as_slice(), "{key}: node 2's copy");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_copy_is_served_from_another_replica_and_repaired_on_read() {
    let mut cluster = Cluster::start(Options {
        flags: flags("0"),
        ..Options::default()
    })
    .await;
    let values = write_values(&cluster).await;
    corrupt_node_2(&mut cluster, &values).await;
    cluster.restart(2);
    cluster.wait_converged().await;

    // Through the node with the bad copies (its own copy is read first)
    // and through another one: the right bytes every time.
    for node in [2, 0] {
        for (key, value, _) in &values {
            let response = cluster
                .http
                .get(key_url(&cluster, node, key))
                .send()
                .await
                .expect("get");
            assert_eq!(response.status(), StatusCode::OK, "{key} via node {node}");
            let body = response.bytes().await.expect("body");
            assert!(
                body.as_ref() == value.as_slice(),
                "{key} via node {node}: wrong bytes; node 2 log:\n{}",
                cluster.log_tail(2)
            );
        }
    }
    // Node 2 found both copies bad (so the reads did not pass vacuously)…
    wait_for("node 2 to report its corrupt copies", DEADLINE, || async {
        let scrub = scrub_of_node_2(&cluster).await?;
        (scrub["quarantined"].as_u64()? >= 2).then_some(())
    })
    .await;
    // …and holds the good ones again.
    node_2_alone_holds_good_copies(&mut cluster, &values).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scrub_finds_and_repairs_a_corrupt_copy_without_a_read() {
    let mut cluster = Cluster::start(Options {
        flags: flags("0"),
        ..Options::default()
    })
    .await;
    let values = write_values(&cluster).await;
    corrupt_node_2(&mut cluster, &values).await;
    let flags = &mut cluster.nodes[2].flags;
    let at = flags
        .iter()
        .position(|f| f == "--scrub-interval")
        .expect("scrub flag");
    flags[at + 1] = "1s".into();
    cluster.restart(2);
    cluster.wait_converged().await;

    let scrub = wait_for("node 2's scrub to repair", DEADLINE, || async {
        let scrub = scrub_of_node_2(&cluster).await?;
        let found = scrub["corrupt_total"].as_u64()?;
        let repaired = scrub["repaired_total"].as_u64()?;
        (found >= 2 && repaired == found).then_some(scrub)
    })
    .await;
    assert!(scrub["runs"].as_u64().is_some(), "{scrub}");
    // The other nodes see it too (gossip).
    wait_for("node 0 to show node 2's scrub", DEADLINE, || async {
        let ring = cluster.ring(0).await?;
        let id = cluster.nodes[2].id.as_str();
        let member = ring["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == id)?
            .clone();
        (member["scrub"]["repaired_total"].as_u64()? >= 2).then_some(())
    })
    .await;
    // Then every run finds every copy good.
    wait_for("a clean scrub run on node 2", DEADLINE, || async {
        let scrub = scrub_of_node_2(&cluster).await?;
        let clean = scrub["active"] == false
            && scrub["runs"].as_u64()? > 0
            && scrub["corrupt"] == 0
            && scrub["keys"].as_u64()? >= 2
            && scrub["bytes"].as_u64()? >= (values[0].1.len() + values[1].1.len()) as u64;
        clean.then_some(())
    })
    .await;
    node_2_alone_holds_good_copies(&mut cluster, &values).await;
}
