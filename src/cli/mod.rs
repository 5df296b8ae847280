//! The command line (F21): one binary, one subcommand group per file.
//! `anyhow` lives here and nowhere below.
//!
//! Errors: a command that fails exits 1 (2 for a bad command line, which
//! clap reports) and says what went wrong and what to do, on stderr as
//! `error: …`; with `--json`, as `{"error": "…", "code": "…"}` on stdout
//! instead (plus `status` and `node` when a node answered with an error),
//! so that a script reading stdout always gets one JSON document.

mod bench;
mod cluster;
mod config_file;
mod files;
mod ops;
mod serve;

pub use ringkv::config::ServeArgs;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use ringkv::client::{Client, ClientOptions};
use ringkv::error::Error;

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
    /// Print machine-readable JSON (errors too: `{"error", "code"}` on stdout).
    #[arg(long, global = true)]
    json: bool,
    /// Further rounds over the nodes when none answers, with exponential
    /// backoff and jitter (0.5 s, 1 s, 2 s… ±50 %).
    #[arg(long, global = true, env = "RINGKV_RETRIES", default_value_t = 2)]
    retries: u32,
    /// API token for nodes started with --api-token-file (sent as
    /// `Authorization: Bearer`).
    #[arg(long, global = true, env = "RINGKV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Talk HTTPS to the nodes (started with --tls-cert), verifying them
    /// against the system's root certificates.
    #[arg(long, global = true, env = "RINGKV_TLS")]
    tls: bool,
    /// Talk HTTPS, verifying the nodes against the CA certificates of this
    /// PEM file only (e.g. the CA of `ringkv cluster --tls`).
    #[arg(long, global = true, env = "RINGKV_CA")]
    ca: Option<std::path::PathBuf>,
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
    Serve(Box<ServeArgs>),
    /// Run a local cluster of several nodes until Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Store a value: `put KEY VALUE`, `put KEY -f FILE`, `put KEY -` (stdin).
    Put(ops::PutArgs),
    /// Print a value (or write it to a file with -o).
    Get(ops::GetArgs),
    /// Delete a key.
    Del(ops::DelArgs),
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
    /// Store every file under a directory (keys: PREFIX/relative path),
    /// checked by blake3, with a manifest for `download`.
    Upload(files::UploadArgs),
    /// Fetch every key under a prefix into a directory, each file checked
    /// against the manifest `upload` stored.
    Download(files::DownloadArgs),
    /// Drive a cluster with a put/get mix, or stream one large value.
    Bench(bench::BenchArgs),
    /// Print a new random secret (32 bytes as 64 hex digits): for
    /// `--cluster-secret-file`, or as an API token.
    Secret,
    /// Configuration files of `serve --config`.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `ringkv config …`.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a configuration file with every setting, its help and its
    /// default, commented out.
    Example,
    /// Check a configuration file: it parses, every key is a setting, every
    /// value is valid; errors give the line and column.
    Check {
        /// The file.
        file: std::path::PathBuf,
    },
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
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    if let Command::Serve(serve) = &args.command
        && let Some(path) = &serve.config
    {
        let serve = matches
            .subcommand_matches("serve")
            .cloned()
            .unwrap_or_default();
        match config_file::apply(path, &serve) {
            Ok(serve) => args.command = Command::Serve(Box::new(serve)),
            Err(err) => {
                report(&anyhow::Error::from(err), args.json, "");
                return ExitCode::from(2);
            }
        }
    }
    if let Command::Config(config) = &args.command {
        return config_command(config, args.json);
    }
    let json = args.json;
    let default_level = match args.command {
        Command::Serve(_) | Command::Cluster(_) => "info",
        _ => "warn",
    };
    if !matches!(args.command, Command::Serve(_) | Command::Cluster(_)) {
        // A client command piped into `head` ends quietly when the pipe
        // closes, as Unix tools do, instead of panicking in println!.
        // SAFETY: restores the default action of one signal before any
        // thread starts; sockets write with MSG_NOSIGNAL, so only stdout
        // and stderr can raise it.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let _guard = match init_logging(&args, default_level) {
        Ok(guard) => guard,
        Err(err) => {
            report(&err, json, "-w/-r");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            report(
                &anyhow::Error::from(err).context("cannot start the runtime"),
                json,
                "",
            );
            return ExitCode::FAILURE;
        }
    };
    let quorum_flag = match args.command {
        Command::Put(_) | Command::Del(_) | Command::Upload(_) => "-w",
        Command::Get(_) | Command::Download(_) => "-r",
        _ => "-w/-r",
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            report(&err, json, quorum_flag);
            ExitCode::FAILURE
        }
    }
}

/// `ringkv config example|check`.
fn config_command(command: &ConfigCommand, json: bool) -> ExitCode {
    match command {
        ConfigCommand::Example => {
            print!("{}", config_file::example());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { file } => match config_file::check(file) {
            Ok(settings) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "ok": true, "settings": settings })
                    );
                } else {
                    println!("{}: OK ({settings} settings)", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                report(&anyhow::Error::from(err), json, "");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints a failed command's error: `error: …` on stderr, or with `--json`
/// a JSON object on stdout.
fn report(err: &anyhow::Error, json: bool, quorum_flag: &str) {
    let mut parts = Vec::new();
    let mut ours = None;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            parts.push(explain(e, quorum_flag));
            ours = Some(e);
            break;
        }
        parts.push(cause.to_string());
    }
    let message = parts.join(": ");
    if !json {
        eprintln!("error: {message}");
        return;
    }
    let mut body = serde_json::json!({
        "error": message,
        "code": ours.map_or("failed", error_code),
    });
    match ours {
        Some(Error::Remote { node, status, .. }) => {
            body["status"] = (*status).into();
            body["node"] = node.as_str().into();
        }
        Some(Error::Unreachable { node, .. }) => body["node"] = node.as_str().into(),
        Some(Error::Unavailable {
            needed,
            got,
            answered,
            ..
        }) => {
            body["needed"] = (*needed).into();
            body["got"] = (*got).into();
            body["answered"] = serde_json::json!(answered);
        }
        _ => {}
    }
    println!("{body}");
}

/// The machine-readable code of an error: the library's, or for a node's
/// error answer the code its status stands for.
fn error_code(err: &Error) -> &'static str {
    match err {
        Error::Remote { status, .. } => match status {
            400 => "invalid_input",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            413 => "too_large",
            503 => "not_ready",
            504 => "timeout",
            507 => "disk_full",
            _ => "remote",
        },
        other => other.code(),
    }
}

/// An error as a sentence that says what to do about it. `quorum_flag`
/// names the flag that lowers the quorum of the command (`-w`, `-r`).
fn explain(err: &Error, quorum_flag: &str) -> String {
    match err {
        Error::Unreachable { node, reason } => {
            let question = if node.contains(", ") {
                "are the nodes running?"
            } else {
                "is the node running?"
            };
            format!(
                "cannot reach {node} ({reason}): {question} Start one with `ringkv serve` (or \
                 `ringkv cluster`), or pass a running node with --node host:port or RINGKV_NODE"
            )
        }
        Error::Unavailable {
            needed,
            got,
            answered,
            failed,
        } => {
            let mut text = format!("only {got} of {needed} replicas answered");
            if !answered.is_empty() {
                let names: Vec<String> = answered.iter().map(|n| n.to_string()).collect();
                text.push_str(&format!(" ({})", names.join(", ")));
            }
            if !failed.is_empty() {
                let names: Vec<String> = failed
                    .iter()
                    .map(|(node, why)| format!("{node}: {why}"))
                    .collect();
                text.push_str(&format!("; failed: {}", names.join("; ")));
            }
            text.push_str(&format!(
                ": wait for the down nodes to come back (`ringkv ring` shows them), or ask for \
                 fewer answers with {quorum_flag} {got}"
            ));
            text
        }
        Error::Remote {
            node,
            status: 503,
            message,
        } => format!(
            "{node} cannot serve yet ({message}): it is joining, or its seeds are down, or it \
             is stopping; wait, or pass another node with --node"
        ),
        Error::Remote {
            node,
            status: 401,
            message,
        } => format!(
            "{node} refused the request ({message}): pass an API token of the node's token \
             file with --token TOKEN or RINGKV_TOKEN"
        ),
        Error::Remote {
            node,
            status: 403,
            message,
        } => format!("{node} refused the request: {message}; use a token with that scope"),
        Error::Remote {
            node,
            status: 413,
            message,
        } => format!("{node} refused the value: {message} (the nodes' --max-value-size)"),
        Error::Remote {
            node,
            status,
            message,
        } => format!("{node} answered {status}: {message}"),
        other => other.to_string(),
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
    let options = ClientOptions {
        retries: args.retries,
        discover: true,
        token: args.token.clone(),
        tls: (args.tls || args.ca.is_some()).then(|| ringkv::client::ClientTls {
            ca: args.ca.clone(),
        }),
        ..ClientOptions::default()
    };
    let client = || Client::with_options(nodes.clone(), options.clone());
    match args.command {
        Command::Serve(serve) => serve::run(*serve, args.json).await,
        Command::Secret => {
            println!("{}", ringkv::secret::generate_hex()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(cluster) => cluster::run(cluster, out).await,
        Command::Bench(bench) => {
            // The bench's clients stay on the nodes given.
            let options = ClientOptions {
                discover: false,
                ..options.clone()
            };
            bench::run(bench, nodes, options, out).await
        }
        Command::Upload(upload) => files::upload(upload, client()?, out).await,
        Command::Download(download) => files::download(download, client()?, out).await,
        command => ops::run(command, client()?, out).await,
    }
}
