//! The lab's local clusters: `ringkv serve` children started through
//! `ringkv::local` (the one spawner, shared with `ringkv cluster` and the
//! tests), each with its own data dir (real disk) and log under a fresh
//! temporary directory, `--on-signal stop` and the default gossip interval.
//! The first node founds the cluster, the others `--join` it.
//!
//! Ports: with `--base-port` node k listens on base + k - 1 (the repair
//! experiments need that: they write each node's `node.json`, which names
//! its address, before it starts); without it the kernel picks (`--port
//! 0`) and the node's listening line says which. Nothing is probed by
//! binding it: a node whose port is taken exits, and its log says so.
//!
//! Every wait polls each running node's `GET /ring` with a deadline. At
//! the end the nodes are stopped (SIGTERM, SIGKILL after [`STOP_TIMEOUT`])
//! and the directory removed, or kept, with each node's log, when the
//! experiment failed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use ringkv::local::{Launch, LocalNode, Log};
use serde_json::Value;

/// Time between two polls of the nodes' `/ring` (the resolution of the
/// times; more often would load the 2-core build machine's nodes).
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Deadline of one `/ring` request.
const RING_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a change (without data) to converge.
pub const CHANGE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node may take to exit once told to.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the local nodes are started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `ringkv` binary the nodes run.
    pub binary: PathBuf,
    /// Port of the first node, the others taking the following ones;
    /// `None`: ports the kernel picks.
    pub base_port: Option<u16>,
    /// Replication factor N the founder starts the cluster with.
    pub replicas: usize,
    /// Tokens per node.
    pub tokens: usize,
    /// More `ringkv serve` flags for every node (e.g. `--repair-interval 0`).
    pub flags: Vec<String>,
}

impl Settings {
    /// Where node ports come from, for progress lines.
    pub fn ports_text(&self, count: usize) -> String {
        match self.base_port {
            Some(base) => format!("ports {base}–{}", base as usize + count - 1),
            None => "ports the kernel picks".to_string(),
        }
    }
}

/// One `/ring` answer per running node (`None`: no answer).
pub type Polled = Vec<(String, Option<Value>)>;

/// A node process of the lab.
pub struct LabNode {
    /// `127.0.0.1:PORT`.
    pub id: String,
    /// The process (stopped when the node left or the cluster stops).
    pub process: LocalNode,
}

/// Local `ringkv serve` processes and their directory.
pub struct LocalCluster {
    /// Holds each node's data dir and log.
    pub dir: PathBuf,
    /// Flags of the nodes.
    settings: Settings,
    /// Nodes in start order (node k is `nodes[k - 1]`).
    pub nodes: Vec<LabNode>,
    /// Client for `/ring` polls, with a short deadline.
    http: reqwest::Client,
    /// Keep `dir` (failed runs, for the logs).
    pub keep_dir: bool,
}

impl LocalCluster {
    pub fn new(settings: Settings) -> anyhow::Result<LocalCluster> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("ringkv-lab-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let http = ringkv::tls::http_client_builder()
            .timeout(RING_TIMEOUT)
            .build()
            .context("http client")?;
        Ok(LocalCluster {
            dir,
            settings,
            nodes: Vec::new(),
            http,
            keep_dir: false,
        })
    }

    /// The data dir of node `k` (1-based, in start order), which an
    /// experiment may fill before starting it.
    pub fn data_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("node-{k}"))
    }

    /// The port node `k` (1-based) gets: base + k - 1, or 0 (the kernel
    /// picks) without a base port.
    pub fn port_of(&self, k: usize) -> anyhow::Result<u16> {
        match self.settings.base_port {
            None => Ok(0),
            Some(base) => u16::try_from(k - 1)
                .ok()
                .and_then(|i| base.checked_add(i))
                .context("ports run past 65535; pick a lower --base-port"),
        }
    }

    /// Starts the next node (founding when it is the first, else joining
    /// the first) and waits for its listening line; returns its id.
    pub async fn spawn(&mut self) -> anyhow::Result<String> {
        let k = self.nodes.len() + 1;
        let port = self.port_of(k)?;
        let log = self.dir.join(format!("node-{k}.log"));
        let mut args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--data-dir".into(),
            self.data_dir(k).to_string_lossy().into_owned(),
            "--replicas".into(),
            self.settings.replicas.to_string(),
            "--tokens".into(),
            self.settings.tokens.to_string(),
            "--on-signal".into(),
            "stop".into(),
        ];
        args.extend(self.settings.flags.iter().cloned());
        if let Some(first) = self.nodes.first() {
            args.extend(["--join".to_string(), first.id.clone()]);
        }
        let launch = Launch::new(&self.settings.binary)
            .args(args)
            .log(Log::File(log));
        let process = tokio::task::spawn_blocking(move || launch.start())
            .await
            .context("the node's start task failed")?
            .with_context(|| format!("starting node {k}"))?;
        let id = process.addr().to_string();
        self.nodes.push(LabNode {
            id: id.clone(),
            process,
        });
        Ok(id)
    }

    /// Starts `count` nodes one after the other, each once the previous one
    /// is normal in its own `/ring`, then waits until all agree; returns
    /// the running set.
    pub async fn start_nodes(&mut self, count: usize) -> anyhow::Result<BTreeSet<String>> {
        let started = Instant::now();
        let mut running = BTreeSet::new();
        for _ in 0..count {
            let id = self.spawn().await?;
            running.insert(id.clone());
            let only = BTreeSet::from([id.clone()]);
            self.wait_until(
                &only,
                Instant::now(),
                CHANGE_DEADLINE,
                &format!("{id} to be normal"),
                |polled| {
                    let ring = polled.first()?.1.as_ref()?;
                    (state_in(ring, &id) == Some("normal")).then_some(())
                },
            )
            .await?;
        }
        self.wait_until(
            &running,
            Instant::now(),
            CHANGE_DEADLINE,
            "the first nodes to agree",
            |polled| converged(polled, &running),
        )
        .await?;
        eprintln!(
            "{count} nodes normal with one ring digest after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(running)
    }

    /// `GET /ring` of one node.
    async fn ring(&self, id: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("http://{id}/ring"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `GET /ring` of every node in `ids`, at once.
    async fn poll(&self, ids: &BTreeSet<String>) -> Polled {
        let rings = futures::future::join_all(ids.iter().map(|id| self.ring(id))).await;
        ids.iter().cloned().zip(rings).collect()
    }

    /// Polls the `/ring` of every node in `running` until `done` returns
    /// `Some`, and returns that with the time since `started`
    /// at the end of that poll; fails once `limit` has passed since
    /// `started`, describing what the nodes last showed.
    pub async fn wait_until<T>(
        &self,
        running: &BTreeSet<String>,
        started: Instant,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Polled) -> Option<T>,
    ) -> anyhow::Result<(T, Duration)> {
        loop {
            let polled = self.poll(running).await;
            let elapsed = started.elapsed();
            if let Some(value) = done(&polled) {
                return Ok((value, elapsed));
            }
            if elapsed >= limit {
                anyhow::bail!(
                    "timed out after {limit:?} waiting for {what}; the nodes showed:\n{}",
                    describe(&polled)
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits (up to [`STOP_TIMEOUT`]) for a node to exit by itself (a
    /// leaver); its exit status.
    pub async fn wait_exit(&mut self, id: &str) -> anyhow::Result<String> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))?;
        if !node.process.is_running() {
            return Ok("already stopped".into());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = node
                .process
                .try_wait()
                .with_context(|| format!("waiting for {id}"))?
            {
                return Ok(status.to_string());
            }
            if Instant::now() >= deadline {
                return Ok(format!("still running after {STOP_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.process.pid()).collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and
    /// removes the directory unless it is kept.
    pub async fn stop(&mut self) {
        let mut nodes = std::mem::take(&mut self.nodes);
        let stopped = tokio::task::spawn_blocking(move || {
            let results =
                ringkv::local::stop_all(nodes.iter_mut().map(|n| &mut n.process), STOP_TIMEOUT);
            let lines: Vec<String> = nodes
                .iter()
                .zip(results)
                .filter_map(|(node, result)| match result {
                    Ok(stopped) if stopped.killed => {
                        Some(format!("{} did not stop in time; killed it", node.id))
                    }
                    Ok(_) => None,
                    Err(err) => Some(format!("stopping {}: {err}", node.id)),
                })
                .collect();
            lines
        })
        .await;
        match stopped {
            Ok(lines) => lines.iter().for_each(|line| eprintln!("{line}")),
            Err(err) => eprintln!("the stop task failed: {err}"),
        }
        self.remove_dir();
    }

    fn remove_dir(&mut self) {
        if self.keep_dir {
            return;
        }
        if self.dir.exists()
            && let Err(err) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!("cannot remove {}: {err}", self.dir.display());
        }
    }
}

impl Drop for LocalCluster {
    /// On an early return: kill whatever still runs, drop the directory.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process.kill();
        }
        self.remove_dir();
    }
}

/// Stops the cluster; on failure keeps its directory and says where.
pub async fn finish(
    mut cluster: LocalCluster,
    result: anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    if result.is_err() {
        cluster.keep_dir = true;
        eprintln!("node data and logs kept in {}", cluster.dir.display());
    }
    cluster.stop().await;
    result
}

/// The `ringkv` binary beside this example's directory: examples build
/// into `target/PROFILE/examples/`, the binary into `target/PROFILE/`.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("this program is not in target/PROFILE/examples")?;
    Ok(profile_dir.join("ringkv"))
}

/// The state `ring` shows for `node`.
pub fn state_in<'a>(ring: &'a Value, node: &str) -> Option<&'a str> {
    ring["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"].as_str() == Some(node))
        .and_then(|m| m["state"].as_str())
}

/// The common digest when every node answered with it, `agreed`, no
/// transition, and exactly `running` as its members that are not removed,
/// each of them normal.
pub fn converged(polled: &Polled, running: &BTreeSet<String>) -> Option<String> {
    let mut digest: Option<&str> = None;
    for (_, ring) in polled {
        let ring = ring.as_ref()?;
        let d = ring["digest"].as_str()?;
        if *digest.get_or_insert(d) != d
            || ring["agreed"].as_bool() != Some(true)
            || ring["in_transition"].as_bool() != Some(false)
        {
            return None;
        }
        let mut present = BTreeSet::new();
        for member in ring["members"].as_array()? {
            match member["state"].as_str()? {
                "removed" => continue,
                "normal" => present.insert(member["node"].as_str()?.to_string()),
                _ => return None,
            };
        }
        if present != *running {
            return None;
        }
    }
    digest.map(str::to_string)
}

/// One line per node: its digest, whether it agrees, members not normal.
fn describe(polled: &Polled) -> String {
    let mut out = String::new();
    for (id, ring) in polled {
        let Some(ring) = ring else {
            out.push_str(&format!("  {id}: no answer\n"));
            continue;
        };
        let odd: Vec<String> = ring["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter(|m| !matches!(m["state"].as_str(), Some("normal" | "removed")))
                    .map(|m| format!("{} {}", m["node"], m["state"]))
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  {id}: digest {} agreed {} in_transition {} members {} not normal: [{}]\n",
            ring["digest"],
            ring["agreed"],
            ring["in_transition"],
            ring["members"].as_array().map_or(0, Vec::len),
            odd.join(", ")
        ));
    }
    out
}
