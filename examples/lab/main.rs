//! The lab: experiments on local clusters it starts itself, kept out of
//! the shipped `ringkv` binary. Each prints the figures `bench/run.sh`
//! collects (sections 5 to 8):
//!
//! - `convergence`: seconds until every node shows one ring digest after
//!   a join, a leave, a join ([`membership`]);
//! - `join-speed`: a 4th node joins 3 holding data; MB/s into it;
//! - `repair-cost`: bytes and seconds of one anti-entropy balance between
//!   two replicas differing in a few keys ([`repair`]);
//! - `repair-load`: client latency while a full repair runs.
//!
//! The nodes run the `ringkv` binary (`--ringkv`, by default the one
//! beside this example's directory: build it first, `cargo build
//! --release`), started through `ringkv::local` ([`cluster`]). Run with
//! `cargo run --release --example lab -- MODE [options]`.

mod cluster;
mod membership;
mod repair;
mod units;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringkv::config::{parse_duration, parse_size};

use cluster::Settings;

/// Flags of the lab.
#[derive(Debug, Parser)]
#[command(name = "lab", about = "ringkv's experiments on local clusters")]
struct Args {
    /// JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The `ringkv` binary the nodes run (default: `ringkv` in the
    /// directory above this program's, e.g. target/release/ringkv).
    #[arg(long, global = true, env = "RINGKV_BIN")]
    ringkv: Option<PathBuf>,
    /// The experiment.
    #[command(subcommand)]
    mode: Mode,
}

/// The experiments.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Start --nodes local nodes, then time --changes membership changes
    /// (a node joins, one leaves with POST /leave, another joins, ...):
    /// from each change until every node's /ring shows one digest,
    /// agreed, all members normal. Prints each time and the max (target:
    /// 3 s).
    Convergence(ConvergenceArgs),
    /// Start 3 local nodes, write --keys values of --value-size
    /// (--concurrency clients; values over 1 MiB streamed one at a time),
    /// start a 4th and time it until it is normal on every node; prints
    /// the keys and bytes it received (its /ring transfer object) and MB/s.
    /// 1 GiB: --keys 16 --value-size 64MiB.
    JoinSpeed(JoinSpeedArgs),
    /// Start 2 local nodes (N = 2) holding the same --repair-keys records
    /// (written offline), make one differ in each count of --repair-diffs
    /// keys, and time one POST /balance per case; prints bytes exchanged
    /// (encoded messages and TCP payload) and seconds, and checks that a
    /// second balance finds nothing.
    RepairCost(RepairCostArgs),
    /// Start 3 local nodes (N = 3) holding --keys records for the mix and
    /// --repair-keys others (written offline) and run the put/get mix with
    /// --concurrency clients: for --duration with all replicas in line,
    /// then while a full repair copies the --repair-keys records to the
    /// third node, which lacks them, without and with --repair-rate;
    /// prints p50/p99 per case.
    RepairLoad(RepairLoadArgs),
}

/// How the nodes of a membership experiment are started.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Tokens per node.
    #[arg(long, default_value_t = ringkv::ring::DEFAULT_TOKENS_PER_NODE)]
    tokens: usize,
    /// Replication factor N.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Port of the first node, the others taking the following ones (TCP
    /// and UDP, on 127.0.0.1); by default the kernel picks each node's.
    #[arg(long)]
    base_port: Option<u16>,
}

/// Flags of `lab convergence`.
#[derive(Debug, clap::Args)]
struct ConvergenceArgs {
    /// Nodes started before the changes.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Number of changes (joins and leaves alternate, starting with a
    /// join).
    #[arg(long, default_value_t = 3)]
    changes: usize,
    #[command(flatten)]
    node: NodeArgs,
}

/// Flags of `lab join-speed`.
#[derive(Debug, clap::Args)]
struct JoinSpeedArgs {
    /// Keys written before the 4th node joins.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, value_parser = parse_size, default_value = "100")]
    value_size: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    node: NodeArgs,
}

/// Flags of `lab repair-cost`.
#[derive(Debug, clap::Args)]
struct RepairCostArgs {
    /// Keys each replica holds.
    #[arg(long, default_value_t = 1_000_000)]
    repair_keys: usize,
    /// Differing keys per case (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,100000")]
    repair_diffs: Vec<usize>,
    /// Bytes per value.
    #[arg(long, value_parser = parse_size, default_value = "100")]
    value_size: u64,
    /// Tokens per node.
    #[arg(long, default_value_t = ringkv::ring::DEFAULT_TOKENS_PER_NODE)]
    tokens: usize,
    /// Port of the first node, the second on the next (TCP and UDP, on
    /// 127.0.0.1): fixed, because each node's `node.json` is written
    /// before it starts.
    #[arg(long, default_value_t = 21000)]
    base_port: u16,
}

/// Flags of `lab repair-load`.
#[derive(Debug, clap::Args)]
struct RepairLoadArgs {
    /// `bench/K` keys of the client mix, held by every replica.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// `repair/K` keys the third node lacks in the repair cases.
    #[arg(long, default_value_t = 20_000)]
    repair_keys: usize,
    /// Bytes per value.
    #[arg(long, value_parser = parse_size, default_value = "100")]
    value_size: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Share of operations that are gets, 0.0–1.0.
    #[arg(long, default_value_t = 0.5)]
    get_ratio: f64,
    /// How long the mix runs without repair.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// --repair-rate of the nodes in the throttled case.
    #[arg(long, value_parser = parse_size, default_value = "2MiB")]
    repair_rate: u64,
    /// Tokens per node.
    #[arg(long, default_value_t = ringkv::ring::DEFAULT_TOKENS_PER_NODE)]
    tokens: usize,
    /// Port of the first node, the others on the next ones (TCP and UDP,
    /// on 127.0.0.1): fixed, because each node's `node.json` is written
    /// before it starts.
    #[arg(long, default_value_t = 21000)]
    base_port: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lab: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("lab: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let binary = match args.ringkv {
        Some(binary) => binary,
        None => cluster::default_binary()?,
    };
    anyhow::ensure!(
        binary.is_file(),
        "no ringkv binary at {} (build it: cargo build --release, or give --ringkv PATH)",
        binary.display()
    );
    let json = args.json;
    let settings = |node: &NodeArgs| Settings {
        binary: binary.clone(),
        base_port: node.base_port,
        replicas: node.replicas,
        tokens: node.tokens,
        flags: Vec::new(),
    };
    match args.mode {
        Mode::Convergence(a) => {
            membership::convergence(settings(&a.node), a.nodes, a.changes, json).await
        }
        Mode::JoinSpeed(a) => {
            membership::join_speed(settings(&a.node), a.keys, a.value_size, a.concurrency, json)
                .await
        }
        Mode::RepairCost(a) => {
            let cost = repair::RepairCost {
                binary,
                base_port: a.base_port,
                tokens: a.tokens,
                keys: a.repair_keys,
                value_size: a.value_size,
                diffs: a.repair_diffs,
            };
            repair::repair_cost(cost, json).await
        }
        Mode::RepairLoad(a) => {
            anyhow::ensure!((0.0..=1.0).contains(&a.get_ratio), "--get-ratio is 0.0–1.0");
            let load = repair::RepairLoad {
                binary,
                base_port: a.base_port,
                tokens: a.tokens,
                keys: a.keys,
                repair_keys: a.repair_keys,
                value_size: a.value_size,
                concurrency: a.concurrency,
                get_ratio: a.get_ratio,
                duration: a.duration,
                repair_rate: a.repair_rate,
            };
            repair::repair_load(load, json).await
        }
    }
}
