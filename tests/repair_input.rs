//! Bad input between nodes: malformed, truncated and oversized `Tree` and
//! `Scan` messages, sent as raw gRPC over HTTP/2 to a live node, are each an
//! error on that call only. The node keeps serving (`/ring`, a well-formed
//! `Tree` call) and a balance afterwards still brings a stale replica in
//! line.

mod common;

use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use prost::Message;
use reqwest::StatusCode;
use ringkv::proto::{ScanRequest, TokenRange, TreeReply, TreeRequest};
use serde_json::Value;

const TREE: &str = "/ringkv.v1.Replica/Tree";
const SCAN: &str = "/ringkv.v1.Replica/Scan";

/// What a raw gRPC call answered.
#[derive(Debug)]
struct Answer {
    /// `grpc-status` of a trailers-only answer (an error before any
    /// message); `None` when the call went on to send messages.
    status: Option<i32>,
    /// `grpc-message`, when given.
    message: String,
    /// The response body (messages with their 5-byte prefixes).
    body: bytes::Bytes,
}

/// A gRPC message frame: flag, big-endian length, bytes.
fn frame(compressed: bool, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A well-formed frame of `message`.
fn framed(message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    frame(false, payload.len() as u32, &payload)
}

/// Posts `body` as the request stream of gRPC method `path` on `node`.
async fn call(h2: &reqwest::Client, node: &str, path: &str, body: Vec<u8>) -> Answer {
    let response = h2
        .post(format!("http://{node}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .send()
        .await
        .expect("the node answers the call");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "gRPC answers over HTTP 200"
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = header("grpc-status").and_then(|s| s.parse().ok());
    let message = header("grpc-message").unwrap_or_default();
    let body = response.bytes().await.unwrap_or_default();
    Answer {
        status,
        message,
        body,
    }
}

/// Asserts the call failed with a gRPC error (any non-OK status).
fn assert_refused(what: &str, answer: &Answer) {
    match answer.status {
        Some(code) if code != 0 => {}
        _ => panic!("{what}: expected an error, got {answer:?}"),
    }
}

fn whole_ring() -> Option<TokenRange> {
    Some(TokenRange { start: 7, end: 7 })
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tree_and_scan_messages_fail_alone_and_the_node_stays_up() {
    let mut cluster = Cluster::start(Options {
        nodes: 2,
        replicas: 2,
        flags: vec!["--no-hints".into(), "--repair-interval".into(), "0".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    let h2 = ringkv::tls::http_client_builder()
        .http2_prior_knowledge()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("h2 client");
    let target = cluster.nodes[0].id.clone();

    let valid = TreeRequest {
        range: whole_ring(),
        level: 4,
        nodes: (0..16).collect(),
    };
    let valid_bytes = valid.encode_to_vec();
    let tree_cases: Vec<(&str, Vec<u8>)> = vec![
        ("no message at all", Vec::new()),
        ("garbage protobuf", frame(false, 8, &[0xff; 8])),
        (
            "protobuf cut mid-field",
            frame(
                false,
                (valid_bytes.len() - 3) as u32,
                &valid_bytes[..valid_bytes.len() - 3],
            ),
        ),
        (
            "frame shorter than its prefix says",
            frame(false, 1000, &valid_bytes),
        ),
        ("prefix cut short", vec![0, 0, 0]),
        (
            "length prefix of 4 GiB",
            frame(false, u32::MAX, &valid_bytes),
        ),
        (
            "compressed flag without an encoding",
            frame(true, valid_bytes.len() as u32, &valid_bytes),
        ),
        (
            "no range",
            framed(&TreeRequest {
                range: None,
                level: 0,
                nodes: vec![0],
            }),
        ),
        (
            "level past the leaves",
            framed(&TreeRequest {
                range: whole_ring(),
                level: 17,
                nodes: vec![0],
            }),
        ),
        (
            "level u32::MAX",
            framed(&TreeRequest {
                range: whole_ring(),
                level: u32::MAX,
                nodes: vec![0],
            }),
        ),
        (
            "node index past its level",
            framed(&TreeRequest {
                range: whole_ring(),
                level: 4,
                nodes: vec![16],
            }),
        ),
        (
            "node index 10^9 at the leaves",
            framed(&TreeRequest {
                range: whole_ring(),
                level: 16,
                nodes: vec![1_000_000_000],
            }),
        ),
        (
            "node index u64::MAX",
            framed(&TreeRequest {
                range: whole_ring(),
                level: 16,
                nodes: vec![u64::MAX],
            }),
        ),
        (
            // 10^6 valid indexes (1 MB packed): more than any round asks.
            "a million nodes in one request",
            framed(&TreeRequest {
                range: whole_ring(),
                level: 0,
                nodes: vec![0; 1_000_000],
            }),
        ),
    ];
    for (what, body) in tree_cases {
        let answer = call(&h2, &target, TREE, body).await;
        assert_refused(what, &answer);
    }
    let level_error = call(
        &h2,
        &target,
        TREE,
        framed(&TreeRequest {
            range: whole_ring(),
            level: 17,
            nodes: vec![0],
        }),
    )
    .await;
    assert_eq!(level_error.status, Some(3), "{level_error:?}");
    assert!(level_error.message.contains("level"), "{level_error:?}");

    let scan_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage protobuf",
            frame(false, 5, &[0x0a, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "frame shorter than its prefix says",
            frame(false, 64, &[0x0a, 0x04]),
        ),
        (
            "more ranges than any caller sends",
            framed(&ScanRequest {
                ranges: vec![TokenRange::default(); 300_000],
                inline_max: 0,
                limit: 0,
            }),
        ),
    ];
    for (what, body) in scan_cases {
        let answer = call(&h2, &target, SCAN, body).await;
        assert_refused(what, &answer);
    }

    // Still up: the API answers, a well-formed Tree call gets its hashes.
    let ring: Value = http
        .get(format!("{}/ring", cluster.url(0)))
        .send()
        .await
        .expect("/ring answers after bad input")
        .json()
        .await
        .expect("/ring is JSON");
    assert_eq!(ring["nodes"].as_array().map(Vec::len), Some(2), "{ring}");
    let answer = call(&h2, &target, TREE, framed(&valid)).await;
    assert_eq!(answer.status, None, "{answer:?}");
    let reply =
        TreeReply::decode(answer.body.get(5..).expect("one message")).expect("a well-formed reply");
    assert_eq!(reply.hashes.len(), 16);

    // And anti-entropy still works: node 1 misses 20 writes, a balance
    // brings it in line, a second finds nothing.
    cluster.kill(1);
    for i in 0..20 {
        let status = http
            .put(format!(
                "{}?w=1",
                key_url(&cluster, 0, &format!("bad-input-{i}"))
            ))
            .body(format!("v{i}"))
            .send()
            .await
            .expect("put")
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    cluster.restart(1);
    cluster.wait_converged().await;
    let balance_url = format!("{}/balance", cluster.url(0));
    wait_for("a balance that reaches both nodes", DEADLINE, || async {
        let reply: Value = http
            .post(&balance_url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let failed = reply["failed"].as_array().map(Vec::len).unwrap_or(1);
        (failed == 0).then_some(())
    })
    .await;
    let second: Value = http
        .post(&balance_url)
        .send()
        .await
        .expect("balance")
        .json()
        .await
        .expect("JSON");
    assert_eq!(second["leaves_differing"], 0, "{second}");
    // Even a quiet balance compares roots: its bytes are counted.
    assert!(second["bytes_sent"].as_u64().unwrap_or(0) > 0, "{second}");
    assert!(
        second["bytes_received"].as_u64().unwrap_or(0) > 0,
        "{second}"
    );
    assert_eq!(
        second["failed"].as_array().map(Vec::len),
        Some(0),
        "{second}"
    );
    for i in 0..20 {
        let ts = cluster.haskey(1, &format!("bad-input-{i}")).await.0;
        assert!(ts > 0, "node 1 lacks bad-input-{i}");
    }
}
