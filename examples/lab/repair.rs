//! `lab repair-cost` and `lab repair-load`: anti-entropy measured on
//! local `ringkv serve` nodes the lab starts itself ([`crate::cluster`]:
//! ports from `--base-port`, data on disk in a temporary directory,
//! removed at the end).
//!
//! The data is written offline, before any node starts: one store is filled
//! in-process through [`Store`] with `bench/K` records (the same versions
//! everywhere), its files are copied into each node's data dir, and each
//! dir gets a `node.json` with its tokens and `bootstrapped: true`
//! (written by `ringkv::identity`, which owns that file), so the
//! nodes start as members that already own their ranges (a joining node
//! would fetch its ranges and so repair the differences before the
//! measured balance). Nodes run with `--repair-interval 0` and
//! `--no-auto-purge`: the only anti-entropy is the measured `POST /balance`
//! and nothing else walks the data meanwhile.
//!
//! - repair cost: two nodes, N = 2 (each holds every key). For each count
//!   of `--repair-diffs`, one replica gets that many differences (a third
//!   new keys, a third newer versions, a third tombstones), then one
//!   `POST /balance` is timed. Bytes are counted two ways: the messages of
//!   the comparison as encoded (`bytes_sent + bytes_received` of the
//!   balance reply) and the TCP payload between the two node processes
//!   (`ss`'s per-connection `bytes_sent`/`bytes_received` of every
//!   connection from one node to the other, HTTP/2 framing included). A
//!   second balance must then find nothing to do (when the measured one
//!   failed some pair, more run, at most [`SETTLE_ROUNDS`], and the row
//!   says how many it took).
//! - repair load: three nodes, N = 3, `--concurrency` clients running the
//!   put/get mix of `ringkv bench` on the `--keys` keys `bench/K`; client
//!   latency with all replicas in line (for `--duration`), then while a
//!   full repair runs, without and with `--repair-rate`: the third node
//!   lacks all `--repair-keys` keys `repair/K` (which the mix never
//!   touches, so its writes and read repairs do none of the repair's work)
//!   and one `POST /balance` copies them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};

use ringkv::load::{Samples, mix, rotated_clients};
use ringkv::proto::RecordMeta;
use ringkv::ring::{NodeId, Token};
use ringkv::storage::{StorageOptions, Store};
use ringkv::version::Version;

use crate::cluster::{LocalCluster, Settings};
use crate::units::{mib, size_text};
use crate::wire::{wire_bytes, wire_delta};

/// Deadline of one `POST /balance` (a full repair of many keys is slow).
const BALANCE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Writer id of the prefilled records' versions.
const BASE_WRITER: u64 = 1;
/// Writer id of the differences applied to one replica.
const DIFF_WRITER: u64 = 2;
/// What the issue holds 10 differing keys in 1,000,000 against.
const TARGET_BYTES: u64 = 1 << 20;
/// The time target of the same case.
const TARGET_SECONDS: f64 = 2.0;
/// Threads filling the base store (the build machine has 2 cores).
const FILL_THREADS: usize = 2;
/// Balances run after the measured one, at most, until one finds the
/// replicas in line (one, unless the measured one failed some pair).
const SETTLE_ROUNDS: usize = 5;

/// What `lab repair-cost` runs.
#[derive(Debug, Clone)]
pub struct RepairCost {
    /// The `ringkv` binary the nodes run.
    pub binary: PathBuf,
    /// First port of the local nodes.
    pub base_port: u16,
    /// Tokens per node.
    pub tokens: usize,
    /// Keys both replicas hold.
    pub keys: usize,
    /// Bytes per value.
    pub value_size: u64,
    /// Counts of differing keys, one case each.
    pub diffs: Vec<usize>,
}

/// What `lab repair-load` runs.
#[derive(Debug, Clone)]
pub struct RepairLoad {
    /// The `ringkv` binary the nodes run.
    pub binary: PathBuf,
    /// First port of the local nodes.
    pub base_port: u16,
    /// Tokens per node.
    pub tokens: usize,
    /// `bench/K` keys of the client mix, held by every replica.
    pub keys: usize,
    /// `repair/K` keys, held by every replica except the third in the
    /// repair cases (so that the mix's own writes and read repairs do not
    /// do the repair's work).
    pub repair_keys: usize,
    /// Bytes per value.
    pub value_size: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Share of gets in the mix.
    pub get_ratio: f64,
    /// Length of the run without repair.
    pub duration: Duration,
    /// `--repair-rate` of the throttled case, bytes per second.
    pub repair_rate: u64,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "ringkv-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {err}", self.0.display());
        }
    }
}

/// The value of key `k`: `size` bytes that differ per key.
fn value_of(k: usize, size: u64) -> Bytes {
    let mut value = format!("{k:016x}").into_bytes();
    value.resize(size as usize, b'.');
    Bytes::from(value)
}

/// Opens the store of data dir `dir` (no node running on it).
fn open_store(dir: &Path) -> anyhow::Result<Store> {
    Store::open(&StorageOptions {
        data_dir: Some(dir.to_path_buf()),
        fsync: false,
        disk_reserve: 0,
    })
    .with_context(|| format!("cannot open the store in {}", dir.display()))
}

/// Writes `{prefix}0` … `{prefix}{keys-1}` at `version` into the store of
/// data dir `dir`, on [`FILL_THREADS`] threads, and flushes it.
fn fill(
    dir: &Path,
    prefix: &str,
    keys: usize,
    value_size: u64,
    version: Version,
) -> anyhow::Result<()> {
    let store = open_store(dir)?;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..FILL_THREADS)
            .map(|t| {
                let store = store.clone();
                scope.spawn(move || -> anyhow::Result<()> {
                    for k in (t..keys).step_by(FILL_THREADS) {
                        let value = value_of(k, value_size);
                        let meta = RecordMeta::whole(format!("{prefix}{k}"), version, &value);
                        store.write_whole(meta, value)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    store.persist()?;
    Ok(())
}

/// What [`apply_differences`] changed.
#[derive(Debug, Default, Clone, Copy)]
struct Differences {
    /// Keys the other replica lacks.
    added: usize,
    /// Keys written again with a newer version.
    updated: usize,
    /// Keys deleted (a newer tombstone).
    deleted: usize,
}

/// Makes the store of data dir `dir` differ from the base in `count` keys,
/// spread over the key space: a third new keys (`extra/I`), a third newer
/// versions of `bench/K`, a third tombstones of `bench/K`.
fn apply_differences(
    dir: &Path,
    keys: usize,
    count: usize,
    value_size: u64,
    base: Version,
) -> anyhow::Result<Differences> {
    let store = open_store(dir)?;
    let newer = Version::new(base.timestamp + 1_000_000_000, DIFF_WRITER);
    let existing = count - count / 3;
    let stride = (keys / existing.max(1)).max(1);
    let mut done = Differences::default();
    for i in 0..count {
        match i % 3 {
            0 => {
                let value = value_of(keys + i, value_size);
                store.write_whole(
                    RecordMeta::whole(format!("extra/{i}"), newer, &value),
                    value,
                )?;
                done.added += 1;
            }
            kind => {
                // The existing keys changed are `stride` apart.
                let k = ((i - i / 3 - 1) * stride) % keys.max(1);
                let key = format!("bench/{k}");
                if kind == 1 {
                    let value = value_of(k + keys, value_size);
                    store.write_whole(RecordMeta::whole(key, newer, &value), value)?;
                    done.updated += 1;
                } else {
                    let mut meta = RecordMeta::whole(key, newer, &Bytes::new());
                    meta.deleted = true;
                    meta.checksum = Bytes::new();
                    store.write_whole(meta, Bytes::new())?;
                    done.deleted += 1;
                }
            }
        }
    }
    store.persist()?;
    Ok(done)
}

/// Copies directory `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `per_node` tokens for each of `nodes` nodes, spread evenly round the
/// ring and interleaved (node i takes every `nodes`-th slot).
fn spread_tokens(nodes: usize, per_node: usize) -> Vec<Vec<Token>> {
    let total = (nodes * per_node).max(1) as u64;
    let step = u64::MAX / total;
    let mut out = vec![Vec::new(); nodes];
    for slot in 0..total {
        out[slot as usize % nodes].push(Token(slot * step + step / 2));
    }
    out
}

/// The ports of `cluster`'s first `count` nodes (from its base port).
fn ports(cluster: &LocalCluster, count: usize) -> anyhow::Result<Vec<u16>> {
    (1..=count).map(|k| cluster.port_of(k)).collect()
}

/// Prepares the data dirs of `cluster`'s first nodes: node k (on
/// `ports[k - 1]`) gets a copy of the store in data dir `sources[k - 1]`
/// and a `node.json` with its share of evenly spread tokens.
fn prepare_dirs(
    cluster: &LocalCluster,
    sources: &[&Path],
    ports: &[u16],
    tokens: usize,
) -> anyhow::Result<()> {
    let spread = spread_tokens(ports.len(), tokens);
    for (k, ((port, source), tokens)) in ports.iter().zip(sources).zip(spread).enumerate() {
        let dir = cluster.data_dir(k + 1);
        copy_dir(&source.join("engine"), &dir.join("engine"))?;
        let id = NodeId::parse(&format!("127.0.0.1:{port}"))?;
        ringkv::identity::write_bootstrapped(&dir, &id, &tokens)?;
    }
    Ok(())
}

/// `POST /balance` on `node`: its JSON reply and how long it took.
async fn balance(http: &reqwest::Client, node: &str) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let response = http
        .post(format!("http://{node}/balance"))
        .timeout(BALANCE_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("POST /balance to {node}"))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        response.status().is_success(),
        "POST /balance: {}",
        response.text().await.unwrap_or_default()
    );
    let reply: Value = response.json().await.context("balance reply")?;
    Ok((reply, elapsed))
}

/// The `failed` entries of a balance reply.
fn failures(reply: &Value) -> Vec<String> {
    reply["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Balances after the measured one, until one finds nothing to do and no
/// failure; how many it took.
async fn settle(http: &reqwest::Client, node: &str) -> anyhow::Result<usize> {
    for round in 1..=SETTLE_ROUNDS {
        let (check, _) = balance(http, node).await?;
        let quiet = number(&check, "leaves_differing") == 0
            && number(&check, "pulled") + number(&check, "pushed") == 0
            && failures(&check).is_empty();
        if quiet {
            return Ok(round);
        }
        eprintln!("balance {} after the measured one: {check}", round);
    }
    anyhow::bail!("the replicas still differ after {SETTLE_ROUNDS} more balances")
}

fn number(reply: &Value, field: &str) -> u64 {
    reply[field].as_u64().unwrap_or(0)
}

/// Fills a base store with `keys` records per prefix of `sets`, timing it.
async fn fill_base(
    sets: &[(&'static str, usize)],
    value_size: u64,
    base: Version,
) -> anyhow::Result<TempDir> {
    let dir = TempDir::new("repair-base")?;
    let started = Instant::now();
    let sets = sets.to_vec();
    eprintln!("writing {sets:?} records of {value_size} B into a base store…");
    let path = dir.0.clone();
    tokio::task::spawn_blocking(move || {
        sets.iter()
            .try_for_each(|(prefix, keys)| fill(&path, prefix, *keys, value_size, base))
    })
    .await??;
    eprintln!(
        "base store written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

fn base_version() -> Version {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    Version::new(now, BASE_WRITER)
}

/// `lab repair-cost`.
pub async fn repair_cost(args: RepairCost, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.keys >= 1, "need keys");
    let base = base_version();
    let base_dir = fill_base(&[("bench/", args.keys)], args.value_size, base).await?;
    let http = ringkv::tls::http_client_builder()
        .build()
        .context("http client")?;
    let mut rows = Vec::new();
    for &count in &args.diffs {
        let mut cluster = LocalCluster::new(Settings {
            binary: args.binary.clone(),
            base_port: Some(args.base_port),
            replicas: 2,
            tokens: args.tokens,
            flags: ["--repair-interval", "0", "--no-auto-purge"]
                .map(String::from)
                .to_vec(),
        })?;
        let ports = ports(&cluster, 2)?;
        prepare_dirs(&cluster, &[&base_dir.0, &base_dir.0], &ports, args.tokens)?;
        let changed = {
            let dir = cluster.data_dir(2);
            let (keys, size) = (args.keys, args.value_size);
            tokio::task::spawn_blocking(move || apply_differences(&dir, keys, count, size, base))
                .await??
        };
        let measured = async {
            cluster.start_nodes(2).await?;
            let first = cluster.nodes[0].id.clone();
            let pids = cluster.pids();
            let before = wire_bytes(&pids, &ports);
            let (reply, elapsed) = balance(&http, &first).await?;
            let after = wire_bytes(&pids, &ports);
            let rounds = settle(&http, &first).await?;
            anyhow::Ok((
                reply,
                elapsed,
                wire_delta(before.as_ref(), after.as_ref()),
                rounds,
            ))
        };
        let (reply, elapsed, wire, rounds) = match measured.await {
            Ok(done) => done,
            Err(err) => {
                cluster.keep_dir = true;
                eprintln!("node logs kept in {}", cluster.dir.display());
                cluster.stop().await;
                return Err(err.context(format!("{count} differing keys")));
            }
        };
        let failed = failures(&reply);
        if !failed.is_empty() {
            cluster.keep_dir = true;
            eprintln!("node logs kept in {}", cluster.dir.display());
        }
        cluster.stop().await;
        let messages = number(&reply, "bytes_sent") + number(&reply, "bytes_received");
        for failure in &failed {
            eprintln!("{count} differing keys: the measured balance failed: {failure}");
        }
        // In line once the balance after it found nothing (else it took
        // more rounds: the measured one failed some pair).
        let in_line = rounds == 1 && failed.is_empty();
        rows.push(json!({
            "differing_keys": count,
            "added": changed.added,
            "updated": changed.updated,
            "deleted": changed.deleted,
            "leaves_differing": number(&reply, "leaves_differing"),
            "hashes_compared": number(&reply, "hashes_compared"),
            "pulled": number(&reply, "pulled"),
            "pushed": number(&reply, "pushed"),
            "message_bytes": messages,
            "wire_bytes": wire,
            "seconds": elapsed.as_secs_f64(),
            "in_line_after": in_line,
            "failed": failed,
            "balances_to_settle": rounds,
        }));
        eprintln!(
            "{count} differing keys: {:.2} s, {messages} message bytes",
            elapsed.as_secs_f64()
        );
    }
    let target = rows.iter().find(|r| r["differing_keys"] == 10).map(|r| {
        let bytes = r["wire_bytes"]
            .as_u64()
            .unwrap_or(number(r, "message_bytes"));
        bytes < TARGET_BYTES
            && r["seconds"].as_f64().unwrap_or(f64::MAX) < TARGET_SECONDS
            && r["in_line_after"] == true
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "keys": args.keys,
                "value_size": args.value_size,
                "cases": rows,
                "target_met": target,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lab repair-cost: 2 nodes, N = 2, {} keys of {} B on each, {} tokens per node",
        args.keys, args.value_size, args.tokens
    );
    println!(
        "{:>10} {:>8} {:>9} {:>9} {:>13} {:>13} {:>9}  in line after",
        "differing", "leaves", "pulled", "pushed", "message MiB", "wire MiB", "seconds"
    );
    for r in &rows {
        let wire = r["wire_bytes"]
            .as_u64()
            .map(|b| format!("{:.3}", mib(b)))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{:>10} {:>8} {:>9} {:>9} {:>13.3} {:>13} {:>9.2}  {}",
            number(r, "differing_keys"),
            number(r, "leaves_differing"),
            number(r, "pulled"),
            number(r, "pushed"),
            mib(number(r, "message_bytes")),
            wire,
            r["seconds"].as_f64().unwrap_or(0.0),
            if r["in_line_after"] == true {
                "yes".to_string()
            } else {
                format!(
                    "no: {} failed pairs, in line after {} more balances",
                    r["failed"].as_array().map_or(0, Vec::len),
                    r["balances_to_settle"]
                )
            },
        );
    }
    match target {
        Some(true) => println!("10 differing keys: under 1 MiB and 2 s: target met"),
        Some(false) => println!("10 differing keys: target (1 MiB, 2 s) NOT met"),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// One run of the load bench.
struct LoadCase {
    /// What it shows.
    name: String,
    /// The third node starts with the `repair/` keys too (false: it lacks
    /// them and a balance copies them).
    third_full: bool,
    /// `--repair-rate` of every node.
    rate: Option<u64>,
}

/// `lab repair-load`.
pub async fn repair_load(args: RepairLoad, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.keys >= 1 && args.concurrency >= 1,
        "need keys and clients"
    );
    let base = base_version();
    let mixed = [("bench/", args.keys), ("repair/", args.repair_keys)];
    let full = fill_base(&mixed, args.value_size, base).await?;
    let partial = fill_base(&mixed[..1], args.value_size, base).await?;
    let http = ringkv::tls::http_client_builder()
        .build()
        .context("http client")?;
    let value = Bytes::from(vec![b'x'; args.value_size as usize]);
    let cases = [
        LoadCase {
            name: "no repair".into(),
            third_full: true,
            rate: None,
        },
        LoadCase {
            name: "full repair, unlimited".into(),
            third_full: false,
            rate: None,
        },
        LoadCase {
            name: format!("full repair, --repair-rate {}", size_text(args.repair_rate)),
            third_full: false,
            rate: Some(args.repair_rate),
        },
    ];
    let mut rows = Vec::new();
    for case in &cases {
        let mut flags: Vec<String> = ["--repair-interval", "0", "--no-auto-purge", "--no-hints"]
            .map(String::from)
            .to_vec();
        if let Some(rate) = case.rate {
            flags.extend(["--repair-rate".to_string(), rate.to_string()]);
        }
        let mut cluster = LocalCluster::new(Settings {
            binary: args.binary.clone(),
            base_port: Some(args.base_port),
            replicas: 3,
            tokens: args.tokens,
            flags,
        })?;
        let ports = ports(&cluster, 3)?;
        let third = if case.third_full { &full.0 } else { &partial.0 };
        prepare_dirs(&cluster, &[&full.0, &full.0, third], &ports, args.tokens)?;
        let running = cluster.start_nodes(3).await?;
        let ids: Vec<String> = running.into_iter().collect();
        let clients = rotated_clients(&ids, &ringkv::client::ClientOptions::default())?;
        let stop = Arc::new(AtomicBool::new(false));
        eprintln!("{}: {} clients…", case.name, args.concurrency);
        let started = Instant::now();
        let load = {
            let (clients, value, stop) = (clients.clone(), value.clone(), stop.clone());
            let (concurrency, keys, ratio) = (args.concurrency, args.keys, args.get_ratio);
            tokio::spawn(async move { mix(&clients, concurrency, keys, value, ratio, stop).await })
        };
        let repair = if case.third_full {
            tokio::time::sleep(args.duration).await;
            None
        } else {
            match balance(&http, &ids[0]).await {
                Ok(reply) => Some(reply),
                Err(err) => {
                    stop.store(true, Ordering::Relaxed);
                    let _ = load.await;
                    cluster.stop().await;
                    return Err(err);
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        let (puts, gets) = load.await??;
        let elapsed = started.elapsed().as_secs_f64();
        let third_id = ids.get(2).cloned().unwrap_or_default();
        let held = match &repair {
            Some(_) => count_keys(&http, &third_id, "repair/").await.ok(),
            None => None,
        };
        cluster.stop().await;
        let row = |samples: &Samples| {
            json!({
                "count": samples.micros.len(),
                "ops_per_sec": samples.micros.len() as f64 / elapsed,
                "p50_ms": Samples::percentile(&samples.micros, 50.0),
                "p99_ms": Samples::percentile(&samples.micros, 99.0),
                "errors": samples.errors,
            })
        };
        rows.push(json!({
            "case": case.name,
            "seconds": elapsed,
            "put": row(&puts),
            "get": row(&gets),
            "repair": repair.as_ref().map(|(reply, took)| json!({
                "seconds": took.as_secs_f64(),
                "pulled": number(reply, "pulled"),
                "pushed": number(reply, "pushed"),
                "bytes": number(reply, "bytes_sent") + number(reply, "bytes_received"),
            })),
            "third_node_keys_after": held,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lab repair-load: 3 nodes, N = 3, {} mix keys + {} repair keys of {} B, {} clients, {:.0}% gets",
        args.keys,
        args.repair_keys,
        args.value_size,
        args.concurrency,
        args.get_ratio * 100.0
    );
    println!(
        "{:<34} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}  repair",
        "case", "seconds", "ops/s", "put p50", "put p99", "get p50", "get p99"
    );
    for r in &rows {
        let ops = r["put"]["ops_per_sec"].as_f64().unwrap_or(0.0)
            + r["get"]["ops_per_sec"].as_f64().unwrap_or(0.0);
        let repair = match r["repair"].as_object() {
            Some(repair) => format!(
                "{:.1} s, {} pulled + {} pushed, {:.1} MiB; third node holds {} keys after",
                repair["seconds"].as_f64().unwrap_or(0.0),
                repair["pulled"],
                repair["pushed"],
                mib(repair["bytes"].as_u64().unwrap_or(0)),
                r["third_node_keys_after"],
            ),
            None => "none".into(),
        };
        println!(
            "{:<34} {:>7.1} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
            r["case"].as_str().unwrap_or(""),
            r["seconds"].as_f64().unwrap_or(0.0),
            ops,
            r["put"]["p50_ms"].as_f64().unwrap_or(0.0),
            r["put"]["p99_ms"].as_f64().unwrap_or(0.0),
            r["get"]["p50_ms"].as_f64().unwrap_or(0.0),
            r["get"]["p99_ms"].as_f64().unwrap_or(0.0),
            repair,
        );
        let errors = number(&r["put"], "errors") + number(&r["get"], "errors");
        if errors > 0 {
            println!("  ({errors} requests failed)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keys starting with `prefix` that `node` stores (`GET /keys`, paged).
async fn count_keys(http: &reqwest::Client, node: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut after: Option<String> = None;
    let mut count = 0u64;
    loop {
        let mut request = http
            .get(format!("http://{node}/keys"))
            .query(&[("limit", "1000"), ("prefix", prefix)]);
        if let Some(after) = &after {
            request = request.query(&[("after", after.as_str())]);
        }
        let page: Value = request.send().await?.json().await?;
        count += page["keys"].as_array().map(Vec::len).unwrap_or(0) as u64;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_spread_and_interleaved() {
        let spread = spread_tokens(2, 16);
        assert!(spread.iter().all(|t| t.len() == 16));
        let mut all: Vec<Token> = spread.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 32);
        assert!(spread[0][0] < spread[1][0] && spread[1][0] < spread[0][1]);
    }
}
