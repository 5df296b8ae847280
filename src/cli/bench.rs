//! `ringkv bench` (F25): drives a running cluster over HTTP.
//!
//! - mix (default): `--concurrency` keep-alive clients spread over the
//!   nodes run a put/get mix on `--keys` keys for `--duration`, and the
//!   bench prints ops/s and p50/p99/p99.9 latency per operation.
//! - `--stream SIZE`: streams one value of SIZE through the first node,
//!   reads it back through the second, checks it byte for byte (blake3),
//!   and prints MB/s both ways and each node's peak RSS.
//! - `--placement NODES`: token balance, computed locally.
//! - `--convergence NODES` and `--join-speed`: membership changes on local
//!   clusters the bench starts itself (`bench_membership.rs`).
//! - `--repair-cost` and `--repair-load`: anti-entropy's bytes and time, and
//!   client latency while it runs, on local nodes (`bench_repair.rs`).

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
    /// Tokens per node for `--placement`, `--convergence` and `--join-speed`.
    #[arg(long, default_value_t = ringkv::ring::DEFAULT_TOKENS_PER_NODE)]
    tokens: usize,
    /// Replication factor for `--placement`, `--convergence` and `--join-speed`.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Instead of driving a cluster, start this many local nodes (`ringkv
    /// serve` children on --base-port and up, data in a temporary
    /// directory), then time --changes membership changes (a node joins,
    /// one leaves with POST /leave, another joins, ...): from each change
    /// until every node's /ring shows one digest, agreed, all members
    /// normal. Prints each time and the max (target: 3 s).
    #[arg(long, value_name = "NODES", conflicts_with_all = ["placement", "stream", "join_speed"])]
    convergence: Option<usize>,
    /// Number of changes for --convergence (joins and leaves alternate,
    /// starting with a join).
    #[arg(long, default_value_t = 3)]
    changes: usize,
    /// Instead of driving a cluster, start 3 local nodes, write --keys
    /// values of --value-size (--concurrency clients; values over 1 MiB
    /// streamed one at a time), start a 4th and time it until it is normal
    /// on every node; prints the keys and bytes it received (its /ring
    /// transfer object) and MB/s. 1 GiB: --keys 16 --value-size 64MiB.
    #[arg(long, conflicts_with_all = ["placement", "stream"])]
    join_speed: bool,
    /// First port of the local nodes of --convergence, --join-speed,
    /// --repair-cost and --repair-load (TCP and UDP, on 127.0.0.1; the
    /// nodes take the following ports).
    #[arg(long, default_value_t = 21000)]
    base_port: u16,
    /// Instead of driving a cluster, start 2 local nodes (N = 2) holding
    /// the same --repair-keys records (written offline), make one differ in
    /// each count of --repair-diffs keys, and time one POST /balance per
    /// case; prints bytes exchanged (encoded messages and TCP payload) and
    /// seconds, and checks that a second balance finds nothing.
    #[arg(long, conflicts_with_all = ["placement", "stream", "join_speed", "convergence"])]
    repair_cost: bool,
    /// Keys each replica holds for --repair-cost (default 1,000,000), or
    /// the keys the third node lacks for --repair-load (default 20,000).
    #[arg(long)]
    repair_keys: Option<usize>,
    /// Differing keys per --repair-cost case (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,100000")]
    repair_diffs: Vec<usize>,
    /// Instead of driving a cluster, start 3 local nodes (N = 3) holding
    /// --keys records for the mix and --repair-keys others (written
    /// offline) and run the put/get mix with --concurrency clients: for
    /// --duration with all replicas in line, then while a full repair
    /// copies the --repair-keys records to the third node, which lacks
    /// them, without and with --repair-rate; prints p50/p99 per case.
    #[arg(long, conflicts_with_all = ["placement", "stream", "join_speed", "convergence", "repair_cost"])]
    repair_load: bool,
    /// --repair-rate of the nodes in the throttled --repair-load case.
    #[arg(long, value_parser = parse_size, default_value = "2MiB")]
    repair_rate: u64,
}

/// Latencies of one operation kind, in microseconds.
#[derive(Default)]
pub(super) struct Samples {
    /// Successful operations' latencies (sorted once [`mix`] returns).
    pub(super) micros: Vec<u32>,
    /// Failed operations.
    pub(super) errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    /// The `p`th percentile of `sorted` latencies, in milliseconds.
    pub(super) fn percentile(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }
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
    let local = super::bench_membership::Settings {
        base_port: args.base_port,
        replicas: args.replicas,
        tokens: args.tokens,
        flags: Vec::new(),
    };
    if args.repair_cost {
        let cost = super::bench_repair::RepairCost {
            base_port: args.base_port,
            tokens: args.tokens,
            keys: args.repair_keys.unwrap_or(1_000_000),
            value_size: args.value_size,
            diffs: args.repair_diffs,
        };
        return super::bench_repair::repair_cost(cost, out).await;
    }
    if args.repair_load {
        let load = super::bench_repair::RepairLoad {
            base_port: args.base_port,
            tokens: args.tokens,
            keys: args.keys,
            repair_keys: args.repair_keys.unwrap_or(20_000),
            value_size: args.value_size,
            concurrency: args.concurrency,
            get_ratio: args.get_ratio,
            duration: args.duration,
            repair_rate: args.repair_rate,
        };
        return super::bench_repair::repair_load(load, out).await;
    }
    if let Some(count) = args.convergence {
        return super::bench_membership::convergence(local, count, args.changes, out).await;
    }
    if args.join_speed {
        return super::bench_membership::join_speed(
            local,
            args.keys,
            args.value_size,
            args.concurrency,
            out,
        )
        .await;
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

/// Runs `concurrency` keep-alive clients (spread over `clients`), each
/// putting `value` or getting one of `keys` keys (`bench/K`, a get with
/// probability `get_ratio`), until `stop` is set; the put and get
/// latencies.
pub(super) async fn mix(
    clients: &[Client],
    concurrency: usize,
    keys: usize,
    value: Bytes,
    get_ratio: f64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Samples, Samples)> {
    anyhow::ensure!(!clients.is_empty(), "no client");
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let value = value.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut puts, mut gets) = (Samples::default(), Samples::default());
                let mut seed = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = format!("bench/{}", seed % keys as u64);
                    let is_get = ((seed >> 32) as f64 / u32::MAX as f64) < get_ratio;
                    let begin = Instant::now();
                    let ok = if is_get {
                        client.get_bytes(&key).await.is_ok()
                    } else {
                        client
                            .put(&key, Upload::Bytes(value.clone()), None, None)
                            .await
                            .is_ok()
                    };
                    let samples = if is_get { &mut gets } else { &mut puts };
                    if ok {
                        samples
                            .micros
                            .push(begin.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        samples.errors += 1;
                    }
                }
                (puts, gets)
            })
        })
        .collect();
    let (mut puts, mut gets) = (Samples::default(), Samples::default());
    for worker in workers {
        let (p, g) = worker.await?;
        puts.merge(p);
        gets.merge(g);
    }
    puts.micros.sort_unstable();
    gets.micros.sort_unstable();
    Ok((puts, gets))
}

/// One client per node, each starting at its own node and failing over to
/// the others (with the caller's token and TLS settings, no discovery).
pub(super) fn rotated_clients(
    nodes: &[String],
    options: &ClientOptions,
) -> ringkv::error::Result<Vec<Client>> {
    (0..nodes.len())
        .map(|i| {
            let mut order = nodes.to_vec();
            order.rotate_left(i);
            Client::with_options(order, options.clone())
        })
        .collect()
}

/// Pseudo-random bytes, generated on the fly, 1 MiB at a time.
pub(super) fn generated(size: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    const PIECE: u64 = 1 << 20;
    futures::stream::unfold(
        (0u64, 0x2545_F491_4F6C_DD1Du64),
        move |(sent, mut state)| async move {
            if sent >= size {
                return None;
            }
            let len = PIECE.min(size - sent) as usize;
            let mut piece = Vec::with_capacity(len + 8);
            while piece.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                piece.extend_from_slice(&state.to_le_bytes());
            }
            piece.truncate(len);
            Some((Ok(Bytes::from(piece)), (sent + len as u64, state)))
        },
    )
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
