//! `lab convergence` and `lab join-speed`: membership changes timed on
//! local clusters the lab starts itself ([`crate::cluster`]).
//!
//! - convergence: NODES nodes, then `--changes` membership changes (a node
//!   joins, one leaves with `POST /leave`, another joins, …). Each change is
//!   timed from its start (the joiner's process spawned, the leave request
//!   sent) until every running node's `/ring` shows the same `digest`,
//!   `agreed: true`, no transition, and every member `normal` (a joiner has
//!   then bootstrapped; a leaver shows `removed`).
//! - join speed: 3 nodes holding `--keys` values of `--value-size` bytes; a
//!   4th joins; timed from its spawn until it is normal in every node's
//!   `/ring` (it has then fetched its share), with what its `transfer`
//!   object says it received (keys, bytes, seconds) and a check that it
//!   holds every key it now owns.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use ringkv::client::{Client, ClientOptions, Upload};
use ringkv::load::{generated, rotated_clients};
use serde_json::{Value, json};

use crate::cluster::{
    CHANGE_DEADLINE, LocalCluster, Polled, STOP_TIMEOUT, Settings, converged, finish, state_in,
};
use crate::units::{size_text, thousands};

/// What the convergence bench is held against (the target).
const CONVERGENCE_TARGET: Duration = Duration::from_secs(3);
/// Values up to this size are written whole; larger ones are streamed.
const WHOLE_VALUE_MAX: u64 = 1 << 20;
/// Concurrent `/whereis` requests of the share check.
const CHECK_CONCURRENCY: usize = 32;

/// Where the leave request puts its reply (or error) and when it came.
type LeaveAnswer = Mutex<Option<(Result<Value, String>, Duration)>>;

/// Whether every node answered and lists `node` among its members.
fn all_show(polled: &Polled, node: &str) -> bool {
    polled
        .iter()
        .all(|(_, ring)| ring.as_ref().and_then(|r| state_in(r, node)).is_some())
}

/// One timed membership change.
struct Change {
    /// `join` or `leave`.
    kind: &'static str,
    /// The node joining or leaving.
    node: String,
    /// Steps on the way, each with the time since the change started.
    steps: Vec<(&'static str, Duration)>,
    /// One digest, agreed, every member normal, on every running node.
    converged: Duration,
    /// That digest.
    digest: String,
    /// Leave: the leave's summary and how the node exited.
    detail: Option<String>,
}

/// When a joining node reached each step, from its spawn.
#[derive(Debug, Default)]
struct JoinSteps {
    /// Its listening line came.
    listening: Duration,
    /// Its own `/ring` lists it: it chose and announced its tokens.
    announced: Option<Duration>,
    /// Every node's `/ring` lists it.
    listed: Option<Duration>,
    /// Its own `/ring` shows it normal: its bootstrap is done.
    normal_on_itself: Option<Duration>,
}

impl JoinSteps {
    /// Notes the steps `polled` shows `joiner` at.
    fn observe(&mut self, polled: &Polled, joiner: &str, at: Duration) {
        let own = polled
            .iter()
            .find(|(id, _)| id == joiner)
            .and_then(|(_, ring)| ring.as_ref())
            .and_then(|ring| state_in(ring, joiner));
        if self.announced.is_none() && own.is_some() {
            self.announced = Some(at);
        }
        if self.listed.is_none() && all_show(polled, joiner) {
            self.listed = Some(at);
        }
        if self.normal_on_itself.is_none() && own == Some("normal") {
            self.normal_on_itself = Some(at);
        }
    }

    fn steps(&self) -> Vec<(&'static str, Duration)> {
        let mut steps = vec![("listening", self.listening)];
        for (name, at) in [
            ("tokens announced", self.announced),
            ("listed by every node", self.listed),
            ("normal on itself", self.normal_on_itself),
        ] {
            if let Some(at) = at {
                steps.push((name, at));
            }
        }
        steps
    }
}

/// Steps as `name 0.12 s, …`.
fn steps_line(steps: &[(&str, Duration)]) -> String {
    steps
        .iter()
        .map(|(name, at)| format!("{name} {:.2} s", at.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Steps as a JSON object of seconds.
fn steps_json(steps: &[(&str, Duration)]) -> Value {
    Value::Object(
        steps
            .iter()
            .map(|(name, at)| {
                let key = name
                    .to_lowercase()
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join("_");
                (key, json!(at.as_secs_f64()))
            })
            .collect(),
    )
}

/// `lab convergence`.
pub async fn convergence(
    settings: Settings,
    count: usize,
    changes: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        count >= 1 && count >= settings.replicas,
        "--convergence needs at least --replicas ({}) nodes",
        settings.replicas
    );
    anyhow::ensure!(changes >= 1, "--changes must be at least 1");
    let mut cluster = LocalCluster::new(settings.clone())?;
    let result = convergence_on(&mut cluster, &settings, count, changes, json).await;
    finish(cluster, result).await
}

async fn convergence_on(
    cluster: &mut LocalCluster,
    settings: &Settings,
    count: usize,
    changes: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "starting {count} nodes on {} (data in {})…",
        settings.ports_text(count),
        cluster.dir.display()
    );
    let mut running = cluster.start_nodes(count).await?;
    let mut done: Vec<Change> = Vec::new();
    for i in 0..changes {
        let change = if i % 2 == 0 {
            time_join(cluster, &mut running).await?
        } else {
            time_leave(cluster, &mut running).await?
        };
        if !json {
            print_change(i + 1, &change);
        }
        done.push(change);
    }
    let max = done
        .iter()
        .map(|c| c.converged)
        .max()
        .unwrap_or(Duration::ZERO);
    let met = max <= CONVERGENCE_TARGET;
    if json {
        let rows: Vec<Value> = done
            .iter()
            .map(|c| {
                json!({
                    "change": c.kind, "node": c.node,
                    "steps_seconds": steps_json(&c.steps),
                    "converged_seconds": c.converged.as_secs_f64(),
                    "digest": c.digest, "detail": c.detail,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "nodes": count, "replicas": settings.replicas, "changes": rows,
                "max_seconds": max.as_secs_f64(),
                "target_seconds": CONVERGENCE_TARGET.as_secs_f64(), "target_met": met,
            }))?
        );
    } else {
        println!(
            "max over {} changes: {:.2} s (target {} s: {})",
            done.len(),
            max.as_secs_f64(),
            CONVERGENCE_TARGET.as_secs(),
            if met { "met" } else { "MISSED" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_change(number: usize, change: &Change) {
    println!(
        "change {number}: {} {}s: one digest, agreed, all normal on every node after {:.2} s",
        change.node,
        change.kind,
        change.converged.as_secs_f64()
    );
    println!("  on the way: {}", steps_line(&change.steps));
    if let Some(detail) = &change.detail {
        println!("  {detail}");
    }
}

/// Starts one more node and times it until the ring settles with it.
async fn time_join(
    cluster: &mut LocalCluster,
    running: &mut BTreeSet<String>,
) -> anyhow::Result<Change> {
    let (id, steps, converged, digest) = join_one(cluster, running, CHANGE_DEADLINE).await?;
    Ok(Change {
        kind: "join",
        node: id,
        steps: steps.steps(),
        converged,
        digest,
        detail: None,
    })
}

/// Starts one more node, adds it to `running`, and waits (up to `limit`)
/// until every running node shows one digest with every member normal;
/// returns the node, its steps, the time that took, and the digest.
async fn join_one(
    cluster: &mut LocalCluster,
    running: &mut BTreeSet<String>,
    limit: Duration,
) -> anyhow::Result<(String, JoinSteps, Duration, String)> {
    let started = Instant::now();
    let id = cluster.spawn().await?;
    let mut steps = JoinSteps {
        listening: started.elapsed(),
        ..JoinSteps::default()
    };
    running.insert(id.clone());
    let (digest, converged_after) = cluster
        .wait_until(
            running,
            started,
            limit,
            &format!("the ring to settle with {id} normal"),
            |polled| {
                steps.observe(polled, &id, started.elapsed());
                converged(polled, running)
            },
        )
        .await?;
    Ok((id, steps, converged_after, digest))
}

/// Makes the earliest started node but the first leave (`POST /leave`) and
/// times it until the others settle without it.
async fn time_leave(
    cluster: &mut LocalCluster,
    running: &mut BTreeSet<String>,
) -> anyhow::Result<Change> {
    let leaver = cluster
        .nodes
        .iter()
        .skip(1)
        .map(|n| n.id.clone())
        .find(|id| running.contains(id))
        .context("no node to make leave (only the first is left)")?;
    let client = Client::new(vec![leaver.clone()])?;
    // The leave answers once the handover is done; it runs beside the polls.
    let answer: Arc<LeaveAnswer> = Arc::default();
    let started = Instant::now();
    running.remove(&leaver);
    let task = {
        let answer = answer.clone();
        tokio::spawn(async move {
            let reply = client.leave().await.map_err(|e| e.to_string());
            let mut slot = answer.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some((reply, started.elapsed()));
        })
    };
    let failed = |answer: &LeaveAnswer| {
        answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|(reply, _)| reply.as_ref().err().cloned())
    };
    // Every other node shows it leaving (or already removed), then removed.
    let (mut leaving_seen, mut removed_seen) = (None, None);
    let all_in = |polled: &Polled, states: &[&str]| {
        polled.iter().all(|(_, ring)| {
            ring.as_ref()
                .and_then(|r| state_in(r, &leaver))
                .is_some_and(|s| states.contains(&s))
        })
    };
    let (digest, converged_after) = cluster
        .wait_until(
            running,
            started,
            CHANGE_DEADLINE,
            &format!("the ring to settle without {leaver}"),
            |polled| {
                if failed(&answer).is_some() {
                    return Some(None);
                }
                if leaving_seen.is_none() && all_in(polled, &["leaving", "removed"]) {
                    leaving_seen = Some(started.elapsed());
                }
                if removed_seen.is_none() && all_in(polled, &["removed"]) {
                    removed_seen = Some(started.elapsed());
                }
                converged(polled, running).map(Some)
            },
        )
        .await?;
    if let Some(err) = failed(&answer) {
        anyhow::bail!("POST /leave to {leaver} failed: {err}");
    }
    let digest = digest.context("no digest")?;
    tokio::time::timeout(CHANGE_DEADLINE, task)
        .await
        .with_context(|| format!("POST /leave to {leaver} did not answer"))?
        .context("the leave request task failed")?;
    let (reply, answered) = answer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .context("the leave request left no answer")?;
    let reply = reply.map_err(|e| anyhow::anyhow!("POST /leave to {leaver} failed: {e}"))?;
    let exit = cluster.wait_exit(&leaver).await?;
    Ok(Change {
        kind: "leave",
        node: leaver,
        steps: [
            ("leaving on every other node", leaving_seen),
            ("removed on every other node", removed_seen),
            ("POST /leave answered", Some(answered)),
        ]
        .into_iter()
        .filter_map(|(name, at)| at.map(|at| (name, at)))
        .collect(),
        converged: converged_after,
        digest,
        detail: Some(format!(
            "leave summary: {} keys, {} bytes to [{}]; the node then exited: {exit}",
            reply["keys"],
            reply["bytes"],
            reply["receivers"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        )),
    })
}

/// `lab join-speed`.
pub async fn join_speed(
    settings: Settings,
    keys: usize,
    value_size: u64,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(keys >= 1 && concurrency >= 1, "need keys and clients");
    anyhow::ensure!(
        settings.replicas <= 3,
        "--join-speed runs 3 nodes: N is 1–3"
    );
    let mut cluster = LocalCluster::new(settings.clone())?;
    let result = join_speed_on(&mut cluster, &settings, keys, value_size, concurrency, json).await;
    finish(cluster, result).await
}

async fn join_speed_on(
    cluster: &mut LocalCluster,
    settings: &Settings,
    keys: usize,
    value_size: u64,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "starting 3 nodes on {} (data in {})…",
        settings.ports_text(3),
        cluster.dir.display()
    );
    let mut running = cluster.start_nodes(3).await?;
    let nodes: Vec<String> = running.iter().cloned().collect();
    let total = keys as u64 * value_size;
    eprintln!(
        "writing {} keys of {} ({:.1} MB)…",
        thousands(keys as u64),
        size_text(value_size),
        total as f64 / 1e6
    );
    let began = Instant::now();
    prefill(&nodes, keys, value_size, concurrency).await?;
    let secs = began.elapsed().as_secs_f64();
    eprintln!(
        "written in {secs:.1} s ({:.1} MB/s); starting node 4…",
        total as f64 / 1e6 / secs
    );

    // Generous: 60 s plus 5 MB/s for the data.
    let limit = CHANGE_DEADLINE + Duration::from_secs_f64(total as f64 / 5e6);
    let (joiner, steps, normal_after, _) = join_one(cluster, &mut running, limit).await?;
    // Progress reaches gossip every 500 ms: wait for the finished transfer.
    let only = BTreeSet::from([joiner.clone()]);
    let (transfer, _) = cluster
        .wait_until(
            &only,
            Instant::now(),
            STOP_TIMEOUT,
            &format!("{joiner}'s finished transfer in its /ring"),
            |polled| {
                let ring = polled.first()?.1.as_ref()?;
                let member = ring["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["node"].as_str() == Some(joiner.as_str()))?;
                let t = &member["transfer"];
                (t["active"].as_bool() == Some(false)
                    && t["sources"].as_u64().is_some_and(|s| s > 0)
                    && t["sources_done"] == t["sources"])
                    .then(|| t.clone())
            },
        )
        .await?;
    let (owned, held) = share_of(&joiner, keys).await?;
    let peak_rss = Client::new(vec![joiner.clone()])?
        .health()
        .await
        .with_context(|| format!("/health of {joiner}"))?["memory"]["peak_rss_bytes"]
        .as_u64()
        .unwrap_or(0);
    let moved_keys = transfer["keys"].as_u64().unwrap_or(0);
    let moved_bytes = transfer["bytes"].as_u64().unwrap_or(0);
    let transfer_secs = transfer["seconds"].as_f64().unwrap_or(0.0);
    let mb = moved_bytes as f64 / 1e6;
    let wall = normal_after.as_secs_f64();
    let transfer_rate = if transfer_secs > 0.0 {
        mb / transfer_secs
    } else {
        0.0
    };
    let complete = held == owned;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "nodes_before": 3, "replicas": settings.replicas,
                "keys_written": keys, "value_size": value_size,
                "joiner": joiner,
                "steps_seconds": steps_json(&steps.steps()),
                "normal_everywhere_seconds": wall,
                "transfer": transfer,
                "transfer_mb_per_sec": transfer_rate,
                "wall_mb_per_sec": mb / wall,
                "keys_owned": owned, "keys_held": held, "joiner_peak_rss_bytes": peak_rss,
            }))?
        );
    } else {
        println!(
            "join of node 4 ({} keys of {} on 3 nodes, N = {}): normal everywhere after {wall:.2} s; \
             {} keys ({mb:.1} MB) moved at {:.1} MB/s",
            thousands(keys as u64),
            size_text(value_size),
            settings.replicas,
            thousands(moved_keys),
            mb / wall
        );
        println!(
            "  its transfer object: {} keys, {} bytes in {transfer_secs:.2} s ({:.1} MB/s); it holds {} \
             of the {} keys it owns; its peak RSS {:.1} MiB",
            thousands(moved_keys),
            thousands(moved_bytes),
            transfer_rate,
            thousands(held),
            thousands(owned),
            peak_rss as f64 / (1u64 << 20) as f64,
        );
        println!("  on the way: {}", steps_line(&steps.steps()));
    }
    if !complete {
        eprintln!(
            "{joiner} lacks {} of the keys it owns",
            owned.saturating_sub(held)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The bytes of key `k` (pseudo-random, so that no compression helps).
fn small_value(k: usize, size: u64) -> Bytes {
    let mut state = (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut value = Vec::with_capacity(size as usize + 8);
    while (value.len() as u64) < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.extend_from_slice(&state.to_le_bytes());
    }
    value.truncate(size as usize);
    Bytes::from(value)
}

/// Writes `bench/0` … `bench/{keys-1}`: small values whole with
/// `concurrency` clients spread over the nodes, large ones streamed one at
/// a time, each through the next node.
async fn prefill(
    nodes: &[String],
    keys: usize,
    value_size: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    if value_size > WHOLE_VALUE_MAX {
        for k in 0..keys {
            let node = &nodes[k % nodes.len()];
            Client::new(vec![node.clone()])?
                .put(
                    &format!("bench/{k}"),
                    Upload::Stream(reqwest::Body::wrap_stream(generated(value_size))),
                    Some("application/octet-stream"),
                    None,
                )
                .await
                .with_context(|| format!("writing bench/{k} through {node}"))?;
        }
        return Ok(());
    }
    let clients = rotated_clients(nodes, &ClientOptions::default())?;
    let per_worker = keys.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            tokio::spawn(async move {
                for k in w * per_worker..((w + 1) * per_worker).min(keys) {
                    client
                        .put(
                            &format!("bench/{k}"),
                            Upload::Bytes(small_value(k, value_size)),
                            None,
                            None,
                        )
                        .await
                        .with_context(|| format!("writing bench/{k}"))?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a writer task failed")??;
    }
    Ok(())
}

/// How many of `bench/0…` the joiner owns now (`/whereis`, asked of it)
/// and how many of those it stores (`/keys`).
async fn share_of(joiner: &str, keys: usize) -> anyhow::Result<(u64, u64)> {
    let client = Client::new(vec![joiner.to_string()])?;
    let mut stored = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .keys("bench/", after.as_deref(), 1000)
            .await
            .with_context(|| format!("listing {joiner}'s keys"))?;
        for entry in page["keys"].as_array().into_iter().flatten() {
            if let Some(key) = entry["key"].as_str() {
                stored.insert(key.to_string());
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let owners = futures::stream::iter(0..keys)
        .map(|k| {
            let client = client.clone();
            async move {
                let key = format!("bench/{k}");
                let replicas = client
                    .whereis(&key)
                    .await
                    .with_context(|| format!("/whereis/{key} on {joiner}"))?;
                Ok::<_, anyhow::Error>((key, replicas))
            }
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let (mut owned, mut held) = (0, 0);
    for result in owners {
        let (key, replicas) = result?;
        if replicas.iter().any(|r| r == joiner) {
            owned += 1;
            if stored.contains(&key) {
                held += 1;
            }
        }
    }
    Ok((owned, held))
}
