//! Test harness: real `ringkv serve` processes on loopback, each with its own
//! port (picked by the kernel, `--port 0`) and data dir, which a test can
//! kill, freeze, restart and add to. Waiting is always polling a condition
//! with a deadline. The processes are started and signalled through
//! `ringkv::local` (the spawner `ringkv cluster` and the lab use too); this
//! harness adds the test flags, logs, network namespaces and restarts.

#![allow(dead_code)]

pub mod checker;
pub mod history;
pub mod netns;
pub mod ports;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ringkv::local::{Launch, LocalNode, Log};

use serde_json::Value;

/// The binary under test.
pub const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");

/// The port of nodes in their own network namespaces.
pub const NETNS_PORT: u16 = 7000;

/// Generous deadline for conditions on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a node may take to print its listening line: far more than
/// it needs, so that only a node that hangs at start fails a test.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node process.
pub struct Node {
    /// `127.0.0.1:PORT`.
    pub id: String,
    /// Its port (TCP and UDP).
    pub port: u16,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Extra flags it was started with (kept for restarts).
    pub flags: Vec<String>,
    /// Its own network namespace, when the cluster has a [`netns::Net`].
    pub space: Option<String>,
    /// Its process, while running.
    process: Option<LocalNode>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Node {
    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.id)
    }

    /// Its OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(LocalNode::pid)
    }

    fn signal(&self, signal: i32) {
        if let Some(process) = &self.process {
            process.signal(signal);
        }
    }
}

/// A set of nodes under test.
pub struct Cluster {
    /// Holds every node's data dir and log.
    pub dir: tempfile::TempDir,
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    /// Client for the tests' own requests.
    pub http: reqwest::Client,
    /// The nodes' network namespaces, when they have their own.
    pub net: Option<netns::Net>,
    /// The API token the tests' own requests carry, when the nodes need one.
    pub token: Option<String>,
    /// The cluster secret file every node in a network namespace gets
    /// (beyond loopback a node needs one, F27).
    pub netns_secret: Option<String>,
}

/// Options for a test cluster.
#[derive(Clone)]
pub struct Options {
    /// Nodes to start.
    pub nodes: usize,
    /// Replication factor.
    pub replicas: usize,
    /// Extra flags for every node.
    pub flags: Vec<String>,
    /// Each node in its own network namespace (needs root), so that links
    /// can be cut with [`netns::Net`].
    pub netns: bool,
    /// The API token the tests' own requests (and `balance`) carry, for
    /// nodes started with `--api-token-file`.
    pub token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            replicas: 3,
            flags: Vec::new(),
            netns: false,
            token: None,
        }
    }
}

impl Cluster {
    /// Starts `options.nodes` nodes, the first founding, the others joining
    /// it, and waits until every node sees all of them as normal.
    pub async fn start(options: Options) -> Cluster {
        let mut cluster = Cluster::empty(options.token.clone());
        cluster.net = options.netns.then(netns::Net::new);
        // Nodes beyond loopback need a cluster secret (F27): the fault
        // matrix runs with it on.
        cluster.netns_secret = options.netns.then(|| cluster.secret_file("cluster.secret"));
        for i in 0..options.nodes {
            let mut flags = vec!["--replicas".to_string(), options.replicas.to_string()];
            flags.extend(options.flags.iter().cloned());
            if i > 0 {
                flags.push("--join".into());
                flags.push(cluster.nodes[0].id.clone());
            }
            cluster.spawn(flags);
        }
        cluster.wait_converged().await;
        cluster
    }

    /// A cluster of no node yet, whose requests carry `token`.
    pub fn empty(token: Option<String>) -> Cluster {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        Cluster {
            // RINGKV_TEST_KEEP=1 keeps the nodes' data and logs, to read
            // after a failure.
            dir: tempfile::Builder::new()
                .prefix("ringkv-test-")
                .disable_cleanup(std::env::var_os("RINGKV_TEST_KEEP").is_some())
                .tempdir()
                .expect("temp dir"),
            nodes: Vec::new(),
            http: ringkv::tls::http_client_builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .expect("client"),
            net: None,
            token,
            netns_secret: None,
        }
    }

    /// Writes a new cluster secret (`ringkv secret`) to `name` in the
    /// cluster's dir; returns its path.
    pub fn secret_file(&self, name: &str) -> String {
        let out = Command::new(RINGKV)
            .arg("secret")
            .output()
            .expect("ringkv secret");
        assert!(out.status.success(), "{out:?}");
        let path = self.dir.path().join(name);
        std::fs::write(&path, &out.stdout).expect("secret file");
        path.display().to_string()
    }

    /// `ringkv ARGS` against node `i`, with the cluster's token.
    pub fn cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let mut all: Vec<&str> = Vec::new();
        if let Some(token) = &self.token {
            all.extend(["--token", token.as_str()]);
        }
        all.extend(args);
        ringkv_cli(&self.nodes[i].id, &all)
    }

    /// Starts one more node with `flags` (plus the usual test flags) and
    /// returns its index. Does not wait for it to join.
    pub fn spawn(&mut self, mut flags: Vec<String>) -> usize {
        if let Some(secret) = &self.netns_secret
            && !flags.iter().any(|f| f == "--cluster-secret-file")
        {
            flags.extend(["--cluster-secret-file".to_string(), secret.clone()]);
        }
        let index = self.nodes.len();
        let data_dir = self.dir.path().join(format!("node{index}"));
        let log = self.dir.path().join(format!("node{index}.log"));
        // In its own namespace every port is free: all nodes use one.
        let (host, space, port) = match &mut self.net {
            Some(net) => (net.host(index), Some(net.space(index)), NETNS_PORT),
            None => ("127.0.0.1".to_string(), None, 0),
        };
        let process = launch(&host, space.as_deref(), port, &data_dir, &flags, &log);
        let port = process.port();
        self.nodes.push(Node {
            id: format!("{host}:{port}"),
            port,
            data_dir,
            flags,
            space,
            process: Some(process),
            log,
        });
        index
    }

    /// URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill();
        }
    }

    /// Sends SIGSTOP to node `i`.
    ///
    /// Returns once every thread of it is stopped: kill(2) returns before
    /// the threads of a process have all taken the stop, and on a loaded
    /// machine one of them could still serve a request sent right after.
    pub fn freeze(&self, i: usize) {
        self.nodes[i].signal(libc::SIGSTOP);
        let Some(pid) = self.nodes[i].pid() else {
            return;
        };
        let started = Instant::now();
        while !all_threads_stopped(pid) {
            assert!(started.elapsed() < DEADLINE, "node {i} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends SIGCONT to node `i`.
    pub fn thaw(&self, i: usize) {
        self.nodes[i].signal(libc::SIGCONT);
    }

    /// Sends `signal` to node `i`.
    pub fn signal(&self, i: usize, signal: i32) {
        self.nodes[i].signal(signal);
    }

    /// Waits for node `i` to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, i: usize, deadline: Duration) -> Option<i32> {
        let started = Instant::now();
        let process = self.nodes[i].process.as_mut()?;
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                self.nodes[i].process = None;
                return status.code();
            }
            assert!(started.elapsed() < deadline, "node {i} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops node `i` with SIGTERM and waits for it to exit; returns its exit code.
    pub fn terminate(&mut self, i: usize) -> Option<i32> {
        let mut process = self.nodes[i].process.take()?;
        process.signal(libc::SIGTERM);
        process.wait().ok().flatten().and_then(|s| s.code())
    }

    /// Restarts node `i` (killed or stopped) on its port and data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "node {i} is still running");
        let node = &self.nodes[i];
        let host = node
            .id
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("127.0.0.1");
        let process = launch(
            host,
            node.space.as_deref(),
            node.port,
            &node.data_dir,
            &node.flags,
            &node.log,
        );
        self.nodes[i].process = Some(process);
    }

    /// `GET /ring` of node `i`.
    pub async fn ring(&self, i: usize) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/ring", self.url(i)))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until every running node sees every node as normal, with one digest.
    pub async fn wait_converged(&self) {
        let urls: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].process.is_some())
            .map(|i| self.url(i))
            .collect();
        wait_converged(&self.http, &urls, self.nodes.len()).await;
    }

    /// `ringkv --json balance` through node `i`: the cluster-wide summary.
    pub fn balance(&self, i: usize) -> Value {
        let (ok, out, err) = self.cli(i, &["--json", "balance"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).expect("balance summary")
    }

    /// State of `member` in node `observer`'s `/ring`.
    pub async fn state_seen(&self, observer: usize, member: &str) -> Option<String> {
        let ring = self.ring(observer).await?;
        ring["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == member)
            .and_then(|m| m["state"].as_str().map(str::to_string))
    }

    /// Waits until every node in `observers` shows `member` in `state`;
    /// returns how long that took.
    pub async fn wait_state(
        &self,
        observers: &[usize],
        member: &str,
        state: &str,
        limit: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        wait_for(
            &format!("{member} to be {state} everywhere"),
            limit,
            || async {
                for &i in observers {
                    if self.state_seen(i, member).await.as_deref() != Some(state) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        started.elapsed()
    }

    /// Waits until node `i` answers `/health` with ready.
    pub async fn wait_ready(&self, i: usize) {
        let url = format!("{}/health", self.url(i));
        wait_for("the node to be ready", DEADLINE, || async {
            let response = self.http.get(&url).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }

    /// The body of `GET url`.
    pub async fn get_bytes(&self, url: &str) -> bytes::Bytes {
        self.http
            .get(url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
    }

    /// `GET /haskey/{key}` on node `i`: (timestamp, deleted).
    pub async fn haskey(&self, i: usize, key: &str) -> (u64, bool) {
        let url = format!("{}/haskey/{}", self.url(i), ringkv::key::to_url_path(key));
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("haskey")
            .json()
            .await
            .expect("json");
        (
            body["timestamp"].as_u64().expect("timestamp"),
            body["deleted"].as_bool().expect("deleted"),
        )
    }

    /// Waits until node `i` stores `key` at `expected` (timestamp, deleted).
    pub async fn wait_haskey(&self, i: usize, key: &str, expected: (u64, bool)) {
        wait_for(
            &format!("node {i} to hold {key} at {expected:?}"),
            DEADLINE,
            || async { (self.haskey(i, key).await == expected).then_some(()) },
        )
        .await;
    }

    /// Index of the node whose id is `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The last lines of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // SIGCONT first in case it is frozen, then SIGKILL, and reaped.
            if let Some(mut process) = node.process.take() {
                process.kill();
            }
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in its
/// `/proc` stat line); false when they cannot be read.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            return false;
        }
        any = true;
    }
    any
}

/// Starts `ringkv serve` (through `ip netns exec` in a namespace) with the
/// test flags and `flags`, its stderr appended to `log`, and returns it
/// once it printed its listening line (which gives its port).
fn launch(
    host: &str,
    space: Option<&str>,
    port: u16,
    data_dir: &std::path::Path,
    flags: &[String],
    log: &std::path::Path,
) -> LocalNode {
    let mut launch = Launch::new(RINGKV)
        .args(["--host", host, "--port", &port.to_string()])
        .args([std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()])
        .args(["--gossip-interval", "100ms"])
        .args(flags)
        .env("RINGKV_LOG", "info,ringkv=debug")
        .log(Log::File(log.to_path_buf()))
        .start_timeout(START_TIMEOUT);
    if let Some(space) = space {
        launch = launch.wrapper(["ip", "netns", "exec", space]);
    }
    launch.start().unwrap_or_else(|err| {
        panic!(
            "ringkv did not start ({err}); log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
}

/// Waits until every node at `urls` sees `expected` members, all normal,
/// with one ring digest, and sees each of the nodes at `urls` live (a node
/// just restarted can be in everyone's ring, and the digests agree, before
/// the others' failure detectors have seen it back).
pub async fn wait_converged(http: &reqwest::Client, urls: &[String], expected: usize) {
    wait_for("the ring to converge", DEADLINE, || async {
        let mut rings = Vec::new();
        for url in urls {
            let ring: Value = http
                .get(format!("{url}/ring"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let members = ring["members"].as_array()?;
            let normal = members.iter().filter(|m| m["state"] == "normal").count();
            // `agreed`: it also sees every member publish that digest.
            if members.len() != expected || normal != expected || ring["agreed"] != true {
                return None;
            }
            rings.push(ring);
        }
        let answering: Vec<&Value> = rings.iter().map(|r| &r["node"]).collect();
        let all_live = rings.iter().all(|ring| {
            ring["members"].as_array().is_some_and(|members| {
                members
                    .iter()
                    .filter(|m| answering.contains(&&m["node"]))
                    .all(|m| m["live"] == true)
            })
        });
        let one_digest = rings.windows(2).all(|w| w[0]["digest"] == w[1]["digest"]);
        (all_live && one_digest).then_some(())
    })
    .await;
}

/// The JSON body of `GET url`.
pub async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> T {
    http.get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON body")
}

/// Runs the `ringkv` CLI against `node`: (success, stdout, stderr).
pub fn ringkv_cli(node: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(RINGKV)
        .args(["--node", node])
        .args(args)
        .output()
        .expect("run ringkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// URL of `key` on node `node`.
pub fn key_url(cluster: &Cluster, node: usize, key: &str) -> String {
    format!(
        "{}/keys/{}",
        cluster.url(node),
        ringkv::key::to_url_path(key)
    )
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
