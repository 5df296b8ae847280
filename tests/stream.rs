//! A 1 GiB value streamed through the cluster (F3, F16): stored and read
//! back byte-identical through another node, replicas receiving it while the
//! upload is still going, and no node's peak RSS past 128 MiB.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::{Cluster, DEADLINE, Options, wait_for};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

const SIZE: u64 = 1 << 30;
const PIECE: usize = 1 << 20;
/// Where the upload pauses until every replica has the bytes sent so far.
const PAUSE_AT: u64 = 256 << 20;
const PEAK_RSS_LIMIT: u64 = 128 << 20;

fn piece(index: u64) -> Bytes {
    let mut state = (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(PIECE);
    while out.len() < PIECE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(out)
}

async fn health(http: &reqwest::Client, url: &str) -> Value {
    common::get_json(http, &format!("{url}/health")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_streams_through_with_bounded_memory() {
    let cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let mut disk_before = Vec::new();
    for url in &urls {
        disk_before.push(health(&http, url).await["disk_bytes"].as_u64().unwrap());
    }
    let mut expected = blake3::Hasher::new();
    for i in 0..SIZE / PIECE as u64 {
        expected.update(&piece(i));
    }
    let expected = expected.finalize();

    // A chunked upload that stops at PAUSE_AT until the two replicas other
    // than the coordinator hold most of what was sent: they store the stream
    // as it arrives, not after the coordinator has it all.
    let seen_midway = Arc::new(AtomicBool::new(false));
    let (replica_urls, before) = (urls[1..].to_vec(), disk_before[1..].to_vec());
    let (http2, seen) = (http.clone(), seen_midway.clone());
    let body = futures::stream::iter(0..SIZE / PIECE as u64).then(move |i| {
        let (http, urls, before, seen) = (
            http2.clone(),
            replica_urls.clone(),
            before.clone(),
            seen.clone(),
        );
        async move {
            if i * PIECE as u64 == PAUSE_AT {
                wait_for(
                    "replicas to store the first part of the stream",
                    DEADLINE,
                    || async {
                        for (url, before) in urls.iter().zip(&before) {
                            let now = health(&http, url).await["disk_bytes"].as_u64()?;
                            if now < before + PAUSE_AT / 2 {
                                return None;
                            }
                        }
                        Some(())
                    },
                )
                .await;
                seen.store(true, Ordering::SeqCst);
            }
            Ok::<_, std::io::Error>(piece(i))
        }
    });
    let put = http
        .put(format!("{}/keys/gigabyte", urls[0]))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "{:?}", put.text().await);
    assert!(seen_midway.load(Ordering::SeqCst));

    // Read back through another node.
    let got = http
        .get(format!("{}/keys/gigabyte", urls[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-length"], SIZE.to_string().as_str());
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    let mut body = got.bytes_stream();
    while let Some(part) = body.next().await {
        let part = part.unwrap();
        read += part.len() as u64;
        hasher.update(&part);
    }
    assert_eq!(read, SIZE);
    assert_eq!(hasher.finalize(), expected, "the value read back differs");

    for url in &urls {
        let peak = health(&http, url).await["memory"]["peak_rss_bytes"]
            .as_u64()
            .unwrap();
        eprintln!(
            "{url}: peak RSS {:.1} MiB",
            peak as f64 / f64::from(1 << 20)
        );
        assert!(peak > 0, "peak RSS not reported by {url}");
        assert!(peak < PEAK_RSS_LIMIT, "{url} peaked at {} MiB", peak >> 20);
    }
}
