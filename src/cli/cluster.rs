//! `ringkv cluster`: runs N `ringkv serve` processes on this machine
//! (ports base, base+1, …), the first founding the cluster and the others
//! joining it, until Ctrl-C (MyDHT's createservers.py, but running).

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::DEFAULT_PORT;

/// How long a node may take to print its listening line.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `ringkv cluster`.
#[derive(Debug, Parser)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    base_port: u16,
    /// Host name of every node.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Replication factor N.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Directory holding each node's data dir (`node-PORT`).
    #[arg(long, default_value = "ringkv-data")]
    data_root: PathBuf,
    /// Keep data in memory only.
    #[arg(long)]
    in_memory: bool,
    /// Acknowledge writes only once on disk.
    #[arg(long)]
    fsync: bool,
}

/// How long each node may take to join before the cluster gives up.
const NODE_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the nodes and waits for Ctrl-C.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let exe = std::env::current_exe().context("cannot find the ringkv binary")?;
    let seed = format!("{}:{}", args.host, args.base_port);
    let mut children: Vec<(String, Child)> = Vec::new();
    for i in 0..args.nodes {
        let port = args
            .base_port
            .checked_add(i)
            .context("ports run past 65535")?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--host", &args.host, "--port", &port.to_string()])
            .args(["--replicas", &args.replicas.to_string()])
            .args(["--on-signal", "stop"])
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if args.in_memory {
            command.arg("--in-memory");
        } else {
            let dir = args.data_root.join(format!("node-{port}"));
            command.arg("--data-dir").arg(dir);
        }
        if args.fsync {
            command.arg("--fsync");
        }
        if i > 0 {
            command.args(["--join", &seed]);
        }
        let mut child = command.spawn().context("cannot start a node")?;
        let stdout = child.stdout.take().context("no stdout from the node")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(NODE_START_TIMEOUT, lines.next_line())
            .await
            .context("a node did not start in time")??
            .context("a node exited at start (is the port taken?)")?;
        let url = line.trim_start_matches("listening on ").to_string();
        println!("node {} {}/", i + 1, url);
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // One at a time: a node chooses its tokens on the ring it finds, so
        // nodes joining together would choose without seeing each other.
        wait_normal(&url).await?;
        children.push((url, child));
    }
    println!(
        "cluster of {} nodes running; try: curl -T FILE {}/keys/NAME ; Ctrl-C stops it",
        args.nodes, children[0].0
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let exited = async {
        loop {
            for (url, child) in children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("{url} exited ({status})");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let reason = tokio::select! {
        _ = term.recv() => "terminated".to_string(),
        _ = int.recv() => "interrupted".to_string(),
        why = exited => why,
    };
    eprintln!("stopping the cluster: {reason}");
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on a child we spawned and still own.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (url, child) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{url} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until the node at `url` shows itself normal in its `/ring`.
async fn wait_normal(url: &str) -> anyhow::Result<()> {
    let id = url.trim_start_matches("http://");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + NODE_JOIN_TIMEOUT;
    loop {
        let ring: Option<serde_json::Value> = match http.get(format!("{url}/ring")).send().await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let normal = ring
            .as_ref()
            .and_then(|r| r["members"].as_array())
            .is_some_and(|members| {
                members
                    .iter()
                    .any(|m| m["node"] == id && m["state"] == "normal")
            });
        if normal {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{url} did not join within {NODE_JOIN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
