//! `ringkv bench` (F25): drives a running cluster over HTTP.
//!
//! - mix (default): `--concurrency` keep-alive clients spread over the
//!   nodes run a put/get mix on `--keys` keys for `--duration`, and the
//!   bench prints ops/s and p50/p99/p99.9 latency per operation (the mix
//!   itself is `ringkv::load`, shared with the lab).
//! - `--stream SIZE`: streams one value of SIZE through the first node,
//!   reads it back through the second, checks it byte for byte (blake3),
//!   and prints MB/s both ways and each node's peak RSS.
//! - `--placement NODES`: token balance, computed locally.
//!
//! Experiments that start clusters of their own (membership convergence,
//! join speed, anti-entropy cost and load) are not part of the product:
//! they are the lab, `cargo run --release --example lab`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;

use super::ops::Output;
use ringkv::client::{Client, ClientOptions, Upload};
use ringkv::config::{parse_duration, parse_size};
use ringkv::load::{Samples, generated, mix, rotated_clients};

/// Flags of `ringkv bench`.
#[derive(Debug, Parser)]
pub struct BenchArgs {
    /// How long to run the mix.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per value.
    #[arg(long, value_parser = parse_size, default_value = "100")]
    value_size: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Share of operations that are gets, 0.0–1.0.
    #[arg(long, default_value_t = 0.5)]
    get_ratio: f64,
    /// Instead of the mix, stream one value of this size (e.g. 1GiB).
    #[arg(long, value_parser = parse_size)]
    stream: Option<u64>,
    /// Instead of driving a cluster, measure token placement: this many
    /// nodes join one by one, then one more (no network involved).
    #[arg(long)]
    placement: Option<usize>,
    /// Tokens per node for `--placement`.
    #[arg(long, default_value_t = ringkv::ring::DEFAULT_TOKENS_PER_NODE)]
    tokens: usize,
    /// Replication factor for `--placement`.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

/// Runs the bench.
pub async fn run(
    args: BenchArgs,
    nodes: Vec<String>,
    options: ClientOptions,
    out: Output,
) -> anyhow::Result<ExitCode> {
    if let Some(count) = args.placement {
        return placement(count, args.tokens, args.replicas, out);
    }
    anyhow::ensure!(!nodes.is_empty(), "no node given");
    if let Some(size) = args.stream {
        return stream(size, nodes, &options, out).await;
    }
    anyhow::ensure!(
        args.concurrency >= 1 && args.keys >= 1,
        "need clients and keys"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.get_ratio),
        "--get-ratio is 0.0–1.0"
    );
    let value = Bytes::from(vec![b'x'; args.value_size as usize]);
    let clients = rotated_clients(&nodes, &options)?;
    eprintln!("prefilling {} keys…", args.keys);
    let per_worker = args.keys.div_ceil(args.concurrency);
    let prefill: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let value = value.clone();
            let keys = args.keys;
            tokio::spawn(async move {
                for k in
                    (w * per_worker..((w + 1) * per_worker).min(keys)).map(|k| format!("bench/{k}"))
                {
                    client
                        .put(&k, Upload::Bytes(value.clone()), None, None)
                        .await?;
                }
                Ok::<_, ringkv::error::Error>(())
            })
        })
        .collect();
    for task in prefill {
        task.await??;
    }
    eprintln!(
        "running {} clients for {:?}…",
        args.concurrency, args.duration
    );
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        let duration = args.duration;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (mut puts, mut gets) = mix(
        &clients,
        args.concurrency,
        args.keys,
        value,
        args.get_ratio,
        stop,
    )
    .await?;
    timer.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (name, samples) in [("put", &mut puts), ("get", &mut gets)] {
        samples.micros.sort_unstable();
        let s = &samples.micros;
        rows.push(serde_json::json!({
            "op": name,
            "count": s.len(),
            "ops_per_sec": s.len() as f64 / elapsed,
            "p50_ms": Samples::percentile(s, 50.0),
            "p99_ms": Samples::percentile(s, 99.0),
            "p999_ms": Samples::percentile(s, 99.9),
            "errors": samples.errors,
        }));
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "ringkv bench: {} nodes, {} clients, {}-byte values, {} keys, {:.0}% gets, {:.1}s",
            nodes.len(),
            args.concurrency,
            args.value_size,
            args.keys,
            args.get_ratio * 100.0,
            elapsed
        );
        println!(
            "{:<4} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
        );
        for r in &rows {
            println!(
                "{:<4} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                r["op"].as_str().unwrap_or(""),
                r["count"],
                r["ops_per_sec"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["p999_ms"].as_f64().unwrap_or(0.0),
                r["errors"],
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn stream(
    size: u64,
    nodes: Vec<String>,
    options: &ClientOptions,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let one = |node: &String| Client::with_options(vec![node.clone()], options.clone());
    let writer = one(&nodes[0])?;
    let reader = one(&nodes[nodes.len().min(2) - 1])?;
    let hashed = {
        let mut check = blake3::Hasher::new();
        let mut pieces = Box::pin(generated(size));
        while let Some(piece) = pieces.next().await {
            check.update(&piece?);
        }
        check.finalize()
    };
    eprintln!("streaming {size} bytes into {}…", nodes[0]);
    let began = Instant::now();
    writer
        .put(
            "bench/stream",
            Upload::Stream(reqwest::Body::wrap_stream(generated(size))),
            Some("application/octet-stream"),
            None,
        )
        .await?;
    let put_secs = began.elapsed().as_secs_f64();
    eprintln!("reading it back through {}…", reader.nodes()[0]);
    let began = Instant::now();
    let response = reader
        .get("bench/stream", None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the value is not there"))?;
    let mut body = response.bytes_stream();
    let mut got = blake3::Hasher::new();
    let mut read = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece?;
        read += piece.len() as u64;
        got.update(&piece);
    }
    let get_secs = began.elapsed().as_secs_f64();
    let identical = read == size && got.finalize() == hashed;
    let mut peaks = Vec::new();
    for node in &nodes {
        let health = one(node)?.health().await?;
        peaks.push((
            node.clone(),
            health["memory"]["peak_rss_bytes"].as_u64().unwrap_or(0),
        ));
    }
    let mb = size as f64 / 1e6;
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "bytes": size, "put_mb_per_sec": mb / put_secs, "get_mb_per_sec": mb / get_secs,
                "identical": identical,
                "peak_rss_bytes": peaks.iter().map(|(n, p)| serde_json::json!({"node": n, "peak_rss_bytes": p})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!(
            "stream of {size} bytes: put {:.0} MB/s ({put_secs:.1}s), get {:.0} MB/s ({get_secs:.1}s), identical: {identical}",
            mb / put_secs,
            mb / get_secs
        );
        for (node, peak) in &peaks {
            println!(
                "  {node}: peak RSS {:.1} MiB",
                *peak as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Grows a ring node by node with [`allocate_tokens`], then adds one more,
/// and prints the balance and the share the last node takes; random tokens
/// of the same count for comparison.
fn placement(
    count: usize,
    tokens: usize,
    replicas: usize,
    out: Output,
) -> anyhow::Result<ExitCode> {
    use ringkv::ring::{Member, MemberState, NodeId, Ring, Token, allocate_tokens};
    anyhow::ensure!(
        count >= 1 && tokens >= 1 && replicas >= 1,
        "need nodes, tokens and replicas"
    );
    let member = |i: usize| -> anyhow::Result<Member> {
        Ok(Member {
            id: NodeId::parse(&format!("10.0.{}.{}:50140", i / 250, i % 250 + 1))?,
            zone: String::new(),
            state: MemberState::Normal,
            live: true,
            tokens: Vec::new(),
        })
    };
    let spread = |ring: &Ring| {
        let loads = ring.load_shares();
        let mean = 1.0 / loads.len() as f64;
        let max = loads.values().fold(0.0f64, |m, l| m.max(*l));
        let min = loads.values().fold(f64::MAX, |m, l| m.min(*l));
        (max / mean, min / mean)
    };
    // `joining` enters `ring` with allocated or random tokens.
    let join = |ring: &Ring, joining: &Member, allocate: bool| -> Ring {
        let chosen = if allocate {
            allocate_tokens(ring, joining, tokens)
        } else {
            (0..tokens).map(|_| Token(rand::random())).collect()
        };
        let mut members: Vec<Member> = ring.members().cloned().collect();
        members.push(Member {
            tokens: chosen,
            ..joining.clone()
        });
        Ring::new(members, replicas)
    };
    let grow = |allocate: bool| -> anyhow::Result<(Ring, f64)> {
        let started = Instant::now();
        let mut ring = Ring::new(Vec::new(), replicas);
        for i in 0..count {
            ring = join(&ring, &member(i)?, allocate);
        }
        Ok((
            ring,
            started.elapsed().as_secs_f64() * 1000.0 / count as f64,
        ))
    };
    let mut rows = Vec::new();
    for (name, allocate) in [("allocated", true), ("random", false)] {
        let (ring, ms_per_join) = grow(allocate)?;
        let (max, min) = spread(&ring);
        let joining = member(count)?;
        let bigger = join(&ring, &joining, allocate);
        let moved = bigger
            .load_shares()
            .get(&joining.id)
            .copied()
            .unwrap_or(0.0);
        let minimum = 1.0 / (count + 1) as f64;
        rows.push(serde_json::json!({
            "tokens": name, "nodes": count, "tokens_per_node": tokens, "replicas": replicas,
            "max_over_mean": max, "min_over_mean": min,
            "next_node_share": moved, "next_node_over_minimum": moved / minimum,
            "ms_per_join": ms_per_join,
        }));
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("placement: {count} nodes joining one by one, {tokens} tokens each, N = {replicas}");
    println!(
        "{:<10} {:>13} {:>13} {:>22} {:>12}",
        "tokens", "max/mean", "min/mean", "node added: x minimum", "ms per join"
    );
    for r in &rows {
        println!(
            "{:<10} {:>13.4} {:>13.4} {:>22.4} {:>12.1}",
            r["tokens"].as_str().unwrap_or(""),
            r["max_over_mean"].as_f64().unwrap_or(0.0),
            r["min_over_mean"].as_f64().unwrap_or(0.0),
            r["next_node_over_minimum"].as_f64().unwrap_or(0.0),
            r["ms_per_join"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(ExitCode::SUCCESS)
}
