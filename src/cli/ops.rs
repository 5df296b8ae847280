//! Client commands: put, get, del, haskey, whereis, ring, keys. Output
//! matches MyDHT's where it had one (`PUT OK key`, `DEL OK key`, a timestamp
//! for haskey, a comma-separated list for whereis); `--json` prints JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::Command;
use ringkv::client::{Client, Upload};
use ringkv::error::Error;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON instead of text.
    pub json: bool,
}

/// `put KEY [VALUE | -f FILE | -]`.
#[derive(Debug, Parser)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value, or `-` to read it from stdin.
    value: Option<String>,
    /// Read the value from this file (streamed).
    #[arg(short, long, conflicts_with = "value")]
    file: Option<PathBuf>,
    /// Content type to store (default: guessed from the key on reads).
    #[arg(long)]
    content_type: Option<String>,
    /// Write quorum: 1…N or `all`.
    #[arg(short, long)]
    w: Option<String>,
}

/// `get KEY [-o FILE]`.
#[derive(Debug, Parser)]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Write the value to this file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Read quorum: 1…N or `all`.
    #[arg(short, long)]
    r: Option<String>,
}

/// `haskey KEY [--all-replicas]`.
#[derive(Debug, Parser)]
pub struct HaskeyArgs {
    /// The key.
    key: String,
    /// Ask each of the key's replicas, not just the node: one line each,
    /// `host:port timestamp` (MyDHT's HASKEY across the ring).
    #[arg(long)]
    all_replicas: bool,
}

/// `purge [--all]`.
#[derive(Debug, Parser)]
pub struct PurgeArgs {
    /// Every member purges, not just the node asked.
    #[arg(long)]
    all: bool,
}

/// `remove HOST:PORT`.
#[derive(Debug, Parser)]
pub struct RemoveArgs {
    /// The member to remove, as host:port.
    member: String,
}

/// `replicas N`.
#[derive(Debug, Parser)]
pub struct ReplicasArgs {
    /// Copies of each key.
    n: usize,
}

/// `del KEY [-w W]`.
#[derive(Debug, Parser)]
pub struct DelArgs {
    /// The key.
    key: String,
    /// Write quorum: 1…N or `all`.
    #[arg(short, long)]
    w: Option<String>,
}

/// A command taking just a key.
#[derive(Debug, Parser)]
pub struct KeyArgs {
    /// The key.
    key: String,
}

/// `keys [--prefix P] [--limit N]`.
#[derive(Debug, Parser)]
pub struct KeysArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Only keys after this one.
    #[arg(long)]
    after: Option<String>,
    /// At most this many keys (all when unset).
    #[arg(long)]
    limit: Option<usize>,
}

/// Prints `value` as indented JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a client command.
pub async fn run(command: Command, client: Client, out: Output) -> anyhow::Result<ExitCode> {
    match command {
        Command::Put(args) => {
            let upload = match (&args.file, args.value.as_deref()) {
                (Some(path), _) => Upload::File(path.clone()),
                (None, Some("-")) => {
                    let stdin =
                        tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 256 * 1024);
                    Upload::Stream(reqwest::Body::wrap_stream(stdin))
                }
                (None, Some(value)) => Upload::Bytes(Bytes::from(value.to_string())),
                (None, None) => anyhow::bail!("give a VALUE, -f FILE, or - for stdin"),
            };
            let reply = client
                .put(
                    &args.key,
                    upload,
                    args.content_type.as_deref(),
                    args.w.as_deref(),
                )
                .await?;
            if out.json {
                print_json(&serde_json::json!({
                    "key": reply.key, "timestamp": reply.timestamp,
                    "replicas": reply.replicas, "stored_on": reply.stored_on,
                }))?;
            } else {
                println!("PUT OK {}", reply.key);
            }
        }
        Command::Get(args) if out.json => return get_json(&client, &args).await,
        Command::Get(args) => {
            let Some(response) = client.get(&args.key, args.r.as_deref()).await? else {
                return Err(Error::not_found(args.key).into());
            };
            let mut body = response.bytes_stream();
            let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = match &args.output {
                Some(path) => Box::new(
                    tokio::fs::File::create(path)
                        .await
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(tokio::io::stdout()),
            };
            while let Some(piece) = body.next().await {
                sink.write_all(&piece.context("the value stream broke off")?)
                    .await?;
            }
            sink.flush().await?;
        }
        Command::Del(args) => {
            let reply = client.delete(&args.key, args.w.as_deref()).await?;
            if out.json {
                print_json(&serde_json::json!({
                    "key": reply.key, "timestamp": reply.timestamp, "deleted": true,
                    "replicas": reply.replicas, "stored_on": reply.stored_on,
                }))?;
            } else {
                println!("DEL OK {}", reply.key);
            }
        }
        Command::Haskey(args) if args.all_replicas => {
            let replicas = client.whereis(&args.key).await?;
            let mut rows = Vec::new();
            for node in replicas {
                let answer = client.for_node(&node).haskey(&args.key).await;
                rows.push((node, answer));
            }
            if out.json {
                let json: Vec<Value> = rows
                    .iter()
                    .map(|(node, answer)| match answer {
                        Ok(has) => serde_json::json!({
                            "node": node, "timestamp": has.timestamp, "deleted": has.deleted,
                        }),
                        Err(err) => serde_json::json!({ "node": node, "error": err.to_string() }),
                    })
                    .collect();
                print_json(&json)?;
            } else {
                for (node, answer) in rows {
                    match answer {
                        Ok(has) if has.deleted => println!("{node} {} deleted", has.timestamp),
                        Ok(has) => println!("{node} {}", has.timestamp),
                        Err(err) => println!("{node} unreachable: {err}"),
                    }
                }
            }
        }
        Command::Haskey(args) => {
            let has = client.haskey(&args.key).await?;
            if out.json {
                print_json(&serde_json::json!({
                    "key": has.key, "timestamp": has.timestamp, "deleted": has.deleted,
                }))?;
            } else {
                println!("{}", has.timestamp);
            }
        }
        Command::Whereis(args) => {
            let nodes = client.whereis(&args.key).await?;
            if out.json {
                print_json(&nodes)?;
            } else {
                println!("{}", nodes.join(","));
            }
        }
        Command::Ring => {
            let ring = client.ring().await?;
            if out.json {
                print_json(&ring)?;
            } else {
                println!(
                    "ring digest {}  replicas {}",
                    ring["digest"].as_str().unwrap_or("?"),
                    ring["replicas"]
                );
                let list = |field: &str| {
                    let names: Vec<&str> = ring[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(",")
                    }
                };
                println!("owning ranges: {}", list("nodes"));
                println!("joining (own nothing yet): {}", list("joining"));
                for t in ring["transitions"].as_array().into_iter().flatten() {
                    if t["done"] == true {
                        continue;
                    }
                    println!(
                        "{} {}: waiting for {}",
                        t["action"].as_str().unwrap_or("?"),
                        t["target"].as_str().unwrap_or(""),
                        t["waiting_for"].as_str().unwrap_or("?")
                    );
                }
                println!(
                    "{:<24} {:<8} {:<10} {:>7} {:>6}  TRANSFER",
                    "NODE", "STATE", "ZONE", "LOAD", "TOKENS"
                );
                for m in ring["members"].as_array().into_iter().flatten() {
                    let transfer = &m["transfer"];
                    let moving = if transfer["active"].as_bool() == Some(true) {
                        format!(
                            "receiving: {} keys, {:.1} MB",
                            transfer["keys"],
                            transfer["bytes"].as_f64().unwrap_or(0.0) / 1e6
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "{:<24} {:<8} {:<10} {:>6.1}% {:>6}  {}",
                        m["node"].as_str().unwrap_or("?"),
                        m["state"].as_str().unwrap_or("?"),
                        m["zone"].as_str().unwrap_or(""),
                        m["load"].as_f64().unwrap_or(0.0) * 100.0,
                        m["tokens"],
                        moving,
                    );
                }
            }
        }
        Command::Keys(args) => {
            let mut after = args.after.clone();
            let mut left = args.limit.unwrap_or(usize::MAX);
            let mut all = Vec::new();
            while left > 0 {
                let page = client
                    .keys(&args.prefix, after.as_deref(), left.min(1000))
                    .await?;
                let keys = page["keys"].as_array().cloned().unwrap_or_default();
                left = left.saturating_sub(keys.len());
                for k in keys {
                    if out.json {
                        all.push(k);
                    } else {
                        println!("{}", k["key"].as_str().unwrap_or_default());
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            if out.json {
                print_json(&all)?;
            }
        }
        Command::Balance => {
            let summary = client.balance().await?;
            if out.json {
                print_json(&summary)?;
            } else {
                println!(
                    "BALANCE OK: {} ranges, {} replica pairs, {} hashes compared, {} leaves differing, {} pulled, {} pushed, {} bytes exchanged, {} expired tombstones dropped",
                    summary["ranges"],
                    summary["pairs"],
                    summary["hashes_compared"],
                    summary["leaves_differing"],
                    summary["pulled"],
                    summary["pushed"],
                    summary["bytes_sent"].as_u64().unwrap_or(0)
                        + summary["bytes_received"].as_u64().unwrap_or(0),
                    summary["tombstones_dropped"]
                );
                for failure in summary["failed"].as_array().into_iter().flatten() {
                    println!("failed: {}", failure.as_str().unwrap_or_default());
                }
            }
        }
        Command::Purge(args) => {
            let summary = client.purge(args.all).await?;
            if out.json {
                print_json(&summary)?;
            } else {
                let reports: Vec<(String, Value)> = match summary["nodes"].as_object() {
                    Some(nodes) => nodes.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
                    None => vec![(client.nodes().first().cloned().unwrap_or_default(), summary)],
                };
                for (node, report) in reports {
                    match report["error"].as_str() {
                        Some(err) => println!("PURGE FAILED {node}: {err}"),
                        None => println!(
                            "PURGE OK {node}: {} dropped, {} kept",
                            report["dropped"], report["kept"]
                        ),
                    }
                }
            }
        }
        Command::Leave => {
            let summary = client.leave().await?;
            if out.json {
                print_json(&summary)?;
            } else {
                println!(
                    "LEAVE OK {}",
                    client.nodes().first().map(String::as_str).unwrap_or("?")
                );
            }
        }
        Command::Remove(args) => {
            let summary = until_done(&out, || client.remove(&args.member)).await?;
            if out.json {
                print_json(&summary)?;
            } else {
                println!("REMOVE OK {}", args.member);
            }
        }
        Command::Replicas(args) => {
            let summary = until_done(&out, || client.set_replicas(args.n)).await?;
            if out.json {
                print_json(&summary)?;
            } else {
                println!("REPLICAS OK {}", args.n);
            }
        }
        Command::Serve(_)
        | Command::Cluster(_)
        | Command::Bench(_)
        | Command::Secret
        | Command::Upload(_)
        | Command::Download(_)
        | Command::Config(_) => {
            unreachable!("handled by cli::run")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks for a membership change again while the node answers that it is
/// still in progress (each request waits up to a minute for it), saying
/// on stderr what it waits for; Ctrl-C leaves it running on the cluster.
async fn until_done<F, Fut>(out: &Output, mut ask: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ringkv::error::Result<Value>>,
{
    loop {
        let reply = ask().await?;
        if reply["in_progress"] != true {
            return Ok(reply);
        }
        if !out.json {
            eprintln!(
                "{} {} in progress: waiting for {}{}",
                reply["action"].as_str().unwrap_or("change"),
                reply["target"].as_str().unwrap_or(""),
                reply["waiting_for"].as_str().unwrap_or("it"),
                reply["last_error"]
                    .as_str()
                    .map(|e| format!(" (last failure: {e})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Largest value `get --json` prints inline (it holds it in memory).
const JSON_VALUE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `get KEY --json [-o FILE]`: the value's metadata, and the value itself
/// (as a string when it is UTF-8, else base64) unless written to a file.
async fn get_json(client: &Client, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let Some(response) = client.get(&args.key, args.r.as_deref()).await? else {
        return Err(Error::not_found(args.key.clone()).into());
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let timestamp: u64 = header("x-ringkv-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let content_type = header("content-type").unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut kept = Vec::new();
    let mut file = match &args.output {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => None,
    };
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.context("the value stream broke off")?;
        hasher.update(&piece);
        size += piece.len() as u64;
        match &mut file {
            Some(file) => file.write_all(&piece).await?,
            None => {
                anyhow::ensure!(
                    size <= JSON_VALUE_MAX_BYTES,
                    "the value is larger than {JSON_VALUE_MAX_BYTES} bytes: write it to a file \
                     with -o FILE"
                );
                kept.extend_from_slice(&piece);
            }
        }
    }
    let mut reply = serde_json::json!({
        "key": args.key,
        "timestamp": timestamp,
        "size": size,
        "content_type": content_type,
        "blake3": hasher.finalize().to_hex().to_string(),
    });
    match (&args.output, file) {
        (Some(path), Some(mut file)) => {
            file.flush().await?;
            reply["file"] = serde_json::json!(path);
        }
        _ => match String::from_utf8(kept) {
            Ok(text) => reply["value"] = Value::String(text),
            Err(bytes) => {
                use base64::Engine as _;
                reply["value"] = Value::String(
                    base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes()),
                );
                reply["encoding"] = Value::String("base64".into());
            }
        },
    }
    print_json(&reply)?;
    Ok(ExitCode::SUCCESS)
}
