//! Deadlines travel with node-to-node calls and the node called keeps them:
//! a call whose caller gave up is dropped, and a write past its deadline is
//! refused unapplied (no ghost writes). One real node, called in-process
//! through the same router its port serves.

use std::time::Duration;

use axum::body::Body;
use axum::http;
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use prost::Message;
use ringkv::proto::{RecordMeta, SyncRequest, WriteRequest};
use ringkv::server::RunningNode;
use serde_json::Value;

async fn start_node() -> RunningNode {
    let args = ringkv::config::ServeArgs::try_parse_from([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--in-memory",
        "--replicas",
        "1",
    ])
    .expect("flags");
    let node = ringkv::server::start(args.config())
        .await
        .expect("node starts");
    node.wait_ready(Duration::from_secs(30))
        .await
        .expect("node ready");
    node
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .body(Body::empty())
        .expect("request")
}

/// Calls `method` of the replica service with one message and returns the
/// call's `grpc-status`.
async fn call(node: &RunningNode, method: &str, timeout: &str, message: Vec<u8>) -> String {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let request = http::Request::post(format!("/ringkv.v1.Replica/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Body::from(framed))
        .expect("request");
    let response = node.call(request).await;
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.expect("body").trailers().cloned();
    trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_else(|| "0".into())
}

fn write(key: &str, value: &'static [u8]) -> Vec<u8> {
    WriteRequest {
        meta: Some(RecordMeta {
            key: key.into(),
            version: Some(ringkv::version::Version::new(1_764_000_000_000_000_000, 9).into()),
            deleted: false,
            content_type: String::new(),
            size: value.len() as u64,
            checksum: Bytes::copy_from_slice(blake3::hash(value).as_bytes()),
            expires_at: 0,
        }),
        value: Bytes::from_static(value),
        fence: None,
    }
    .encode_to_vec()
}

/// The body of `GET path`.
async fn body_of(node: &RunningNode, path: &str) -> Bytes {
    let response = node.call(get(path)).await;
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

async fn held(node: &RunningNode, key: &str) -> u64 {
    let body = body_of(node, &format!("/haskey/{key}")).await;
    let json: Value = serde_json::from_slice(&body).expect("json");
    json["timestamp"].as_u64().expect("timestamp")
}

async fn refused(node: &RunningNode, reason: &str) -> String {
    let sample = format!("ringkv_replica_writes_refused_total{{reason=\"{reason}\"}} ");
    String::from_utf8_lossy(&body_of(node, "/metrics").await)
        .lines()
        .find_map(|l| l.strip_prefix(sample.as_str()).map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_past_its_callers_deadline_is_refused_unapplied() {
    let node = start_node().await;
    // Already past when the replica reads it (a 0 ms deadline).
    assert_eq!(call(&node, "Write", "0m", write("late", b"v")).await, "4");
    assert_eq!(held(&node, "late").await, 0);
    assert_eq!(refused(&node, "deadline").await, "1");
    // In time: applied.
    assert_eq!(call(&node, "Write", "5S", write("late", b"v")).await, "0");
    assert_ne!(held(&node, "late").await, 0);
    assert_eq!(refused(&node, "deadline").await, "1");
    node.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_is_answered_deadline_exceeded_once_its_caller_gave_up() {
    let node = start_node().await;
    // A sync for a ring this node never sees waits for it far longer than
    // its caller's 300 ms; the node answers DEADLINE_EXCEEDED in its place.
    let sync = SyncRequest { digest: 42 }.encode_to_vec();
    assert_eq!(call(&node, "Sync", "300m", sync).await, "4");
    node.stop().await.expect("stops");
}
