//! The command line (F21): one binary, one subcommand group per file.
//! `anyhow` lives here and nowhere below.

mod bench;
mod bench_membership;
mod bench_repair;
mod cluster;
mod ops;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// ringkv: a distributed hash table of equal nodes.
#[derive(Debug, Parser)]
#[command(name = "ringkv", version, about)]
pub struct Args {
    /// Node(s) to talk to, `host:port[,host:port…]`; the client fails over
    /// between them.
    #[arg(
        long,
        global = true,
        env = "RINGKV_NODE",
        default_value = "127.0.0.1:50140"
    )]
    node: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Also write logs to this file.
    #[arg(long, global = true)]
    log_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Run a local cluster of several nodes until Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Store a value: `put KEY VALUE`, `put KEY -f FILE`, `put KEY -` (stdin).
    Put(ops::PutArgs),
    /// Print a value (or write it to a file with -o).
    Get(ops::GetArgs),
    /// Delete a key.
    Del(ops::KeyArgs),
    /// What the node stores for a key: its timestamp (0 when absent);
    /// `--all-replicas`: each replica's.
    Haskey(ops::HaskeyArgs),
    /// The replicas of a key, comma separated.
    Whereis(ops::KeyArgs),
    /// The ring: members, states, zones, loads.
    Ring,
    /// The keys the node stores.
    Keys(ops::KeysArgs),
    /// Compare every range's replicas (hash trees) and exchange what differs.
    Balance,
    /// Drop the keys the node no longer owns, once every owner holds them.
    Purge(ops::PurgeArgs),
    /// Make the node (--node) leave the cluster: it hands its ranges over, then exits.
    Leave,
    /// Remove a dead member for good; its ranges are re-replicated.
    Remove(ops::RemoveArgs),
    /// Change the cluster's replication factor; data is copied or trimmed to match.
    Replicas(ops::ReplicasArgs),
    /// Drive a cluster with a put/get mix, or stream one large value.
    Bench(bench::BenchArgs),
}

fn init_logging(
    args: &Args,
    default_level: &str,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let level = match args.verbose {
        0 => default_level,
        1 => "debug",
        _ => "trace",
    };
    let filter = || {
        EnvFilter::try_from_env("RINGKV_LOG").unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "{level},h2=warn,hyper=warn,tower=warn,chitchat=warn,fjall=warn,lsm_tree=warn"
            ))
        })
    };
    let json = matches!(args.log_format, LogFormat::Json);
    let stderr = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    } else {
        // Colours only for a person watching, not in a redirected log.
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    };
    let (file_layer, guard) = match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let (writer, guard) = tracing_appender::non_blocking(file);
            let layer = if json {
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_filter(filter())
                    .boxed()
            } else {
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer)
                    .with_filter(filter())
                    .boxed()
            };
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    Ok(guard)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let default_level = match args.command {
        Command::Serve(_) | Command::Cluster(_) => "info",
        _ => "warn",
    };
    let _guard = match init_logging(&args, default_level) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let nodes: Vec<String> = args
        .node
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let out = ops::Output { json: args.json };
    match args.command {
        Command::Serve(serve) => serve::run(serve).await,
        Command::Cluster(cluster) => cluster::run(cluster).await,
        Command::Bench(bench) => bench::run(bench, nodes, out).await,
        command => {
            let client = crate::client::Client::new(nodes)?;
            ops::run(command, client, out).await
        }
    }
}
