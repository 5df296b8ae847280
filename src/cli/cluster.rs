//! `ringkv cluster`: runs N `ringkv serve` processes on this machine
//! (ports base, base+1, …; the Redis protocol on base+1000, base+1001, …),
//! the first founding the cluster and the others joining it, until Ctrl-C
//! (MyDHT's createservers.py, but running).
//! With `--json` it prints one JSON object per line as nodes start
//! (`{"node", "url"}`, then `{"running"}`). `--print` prints those
//! commands instead, and with `--hosts h1,h2,…` the
//! commands of one node per host, all on the base port, each joining the
//! first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use ringkv::config::DEFAULT_PORT;
use ringkv::local::{Launch, LocalNode};

/// The Redis protocol port of a node is its port plus this.
const RESP_PORT_OFFSET: u16 = 1000;

/// How long a node may take to print its second line (its Redis
/// protocol address) after its listening line.
const RESP_LINE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Print the `ringkv serve` commands instead of running them.
    #[arg(long)]
    print: bool,
    /// With --print: one node per host (comma separated), each on
    /// --base-port, the others joining the first.
    #[arg(long, value_delimiter = ',', requires = "print", conflicts_with_all = ["nodes", "host"])]
    hosts: Vec<String>,
    /// With --hosts: write one configuration file per host here
    /// (`HOST.toml`, for `serve --config` and contrib/systemd/ringkv.service,
    /// data in /var/lib/ringkv) and print how to install and start each.
    #[arg(long, requires = "hosts")]
    config_dir: Option<PathBuf>,
    /// Seal node-to-node traffic with a cluster secret, made once in
    /// DATA_ROOT/cluster.secret (always so with --hosts: nodes beyond
    /// loopback need one).
    #[arg(long)]
    secret: bool,
    /// Serve HTTPS with a throwaway CA and certificate made in
    /// DATA_ROOT/tls/ (a local demo), and print how to use them with curl.
    #[arg(long)]
    tls: bool,
}

/// Where `--secret` keeps the cluster secret, under the data root.
fn secret_path(args: &ClusterArgs) -> PathBuf {
    args.data_root.join("cluster.secret")
}

/// Where `--tls` keeps the demo CA, certificate and key.
fn tls_paths(args: &ClusterArgs) -> (PathBuf, PathBuf, PathBuf) {
    let dir = args.data_root.join("tls");
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Makes what `--secret` and `--tls` need, unless it exists already.
fn prepare(args: &ClusterArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if args.secret {
        let path = secret_path(args);
        if !path.exists() {
            std::fs::create_dir_all(&args.data_root)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{}", ringkv::secret::generate_hex()?)?;
        }
    }
    if args.tls {
        let (ca, cert, key) = tls_paths(args);
        if !(ca.exists() && cert.exists() && key.exists()) {
            let dir = args.data_root.join("tls");
            std::fs::create_dir_all(&dir)?;
            let mut names = vec![args.host.clone(), "localhost".to_string()];
            names.extend(args.hosts.iter().cloned());
            names.dedup();
            let (ca_pem, cert_pem, key_pem) = ringkv::tls::demo_certificates(&names)?;
            std::fs::write(&ca, &ca_pem)?;
            // The CA after the node's certificate: `purge --all` trusts it.
            std::fs::write(&cert, format!("{cert_pem}{ca_pem}"))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key)?
                .write_all(key_pem.as_bytes())?;
        }
    }
    Ok(())
}

/// One node of the cluster: where it runs and the `serve` flags it gets.
struct Plan {
    /// `host:port`.
    id: String,
    /// Flags after `ringkv serve`.
    flags: Vec<String>,
}

/// The nodes `args` describe, the first founding the cluster. `local`: all
/// on this machine, run by `ringkv cluster` (Ctrl-C stops them with their
/// data); otherwise one per host of `--hosts`, with serve's default
/// on-signal behaviour (leave the cluster).
fn plan(args: &ClusterArgs) -> anyhow::Result<Vec<Plan>> {
    let local = args.hosts.is_empty();
    let hosts: Vec<(String, u16)> = if local {
        anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
        (0..args.nodes)
            .map(|i| {
                let port = args
                    .base_port
                    .checked_add(i)
                    .context("ports run past 65535")?;
                Ok((args.host.clone(), port))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        args.hosts
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| (h.to_string(), args.base_port))
            .collect()
    };
    anyhow::ensure!(!hosts.is_empty(), "--hosts names no host");
    let seed = format!("{}:{}", hosts[0].0, hosts[0].1);
    let mut plans = Vec::new();
    for (i, (host, port)) in hosts.iter().enumerate() {
        let mut flags: Vec<String> = vec![
            "--host".into(),
            host.clone(),
            "--port".into(),
            port.to_string(),
        ];
        flags.extend(["--replicas".into(), args.replicas.to_string()]);
        let resp_port = port
            .checked_add(RESP_PORT_OFFSET)
            .context("Redis protocol ports run past 65535")?;
        flags.extend(["--resp-port".into(), resp_port.to_string()]);
        if args.in_memory {
            flags.push("--in-memory".into());
        } else {
            flags.push("--data-dir".into());
            flags.push(
                args.data_root
                    .join(format!("node-{port}"))
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        if args.fsync {
            flags.push("--fsync".into());
        }
        if args.secret || !local {
            flags.push("--cluster-secret-file".into());
            flags.push(secret_path(args).to_string_lossy().into_owned());
        }
        if args.tls {
            let (_, cert, key) = tls_paths(args);
            flags.push("--tls-cert".into());
            flags.push(cert.to_string_lossy().into_owned());
            flags.push("--tls-key".into());
            flags.push(key.to_string_lossy().into_owned());
        }
        if local {
            flags.extend(["--on-signal".into(), "stop".into()]);
        }
        if i > 0 {
            flags.extend(["--join".into(), seed.clone()]);
        }
        plans.push(Plan {
            id: format!("{host}:{port}"),
            flags,
        });
    }
    Ok(plans)
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,=@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The program to print: `ringkv`, unless this one was started by a path
/// (e.g. `target/release/ringkv`) and the nodes run here: then that path,
/// absolute, so that the commands work where `ringkv` is not installed.
fn program(local: bool) -> String {
    let invoked_by_path = std::env::args_os()
        .next()
        .is_some_and(|a| a.to_string_lossy().contains('/'));
    if local
        && invoked_by_path
        && let Ok(exe) = std::env::current_exe()
    {
        return exe.to_string_lossy().into_owned();
    }
    "ringkv".to_string()
}

/// Where the systemd unit keeps a node's data (`StateDirectory=ringkv`).
const SYSTEMD_DATA_DIR: &str = "/var/lib/ringkv";

/// Where the written configuration files expect the cluster secret.
const SYSTEMD_SECRET_FILE: &str = "/etc/ringkv/cluster.secret";

/// Where the written configuration files expect the API tokens.
const SYSTEMD_TOKEN_FILE: &str = "/etc/ringkv/api-tokens";

/// `flags` (of `serve`) as a configuration file: `--name value` as
/// `name = value`, a switch as `name = true`, `--join` as a list.
fn config_text(id: &str, flags: &[String]) -> String {
    let mut out = format!(
        "# ringkv node {id}: /etc/ringkv/ringkv.toml for contrib/systemd/ringkv.service\n\
         # (written by `ringkv cluster --print --hosts … --config-dir`; `ringkv config\n\
         # example` lists every setting).\n"
    );
    let mut words = flags.iter().peekable();
    while let Some(flag) = words.next() {
        let name = flag.trim_start_matches("--").replace('-', "_");
        let value = match words.peek() {
            Some(next) if !next.starts_with("--") => words.next().cloned(),
            _ => None,
        };
        let literal = |v: &str| {
            if v.parse::<u64>().is_ok() {
                v.to_string()
            } else {
                toml_edit::Value::from(v).to_string().trim().to_string()
            }
        };
        let line = match (name.as_str(), value) {
            ("data_dir", Some(_)) => format!("data_dir = {}", literal(SYSTEMD_DATA_DIR)),
            ("cluster_secret_file", Some(_)) => {
                format!("cluster_secret_file = {}", literal(SYSTEMD_SECRET_FILE))
            }
            ("join", Some(v)) => {
                let seeds: Vec<String> = v.split(',').map(literal).collect();
                format!("join = [{}]", seeds.join(", "))
            }
            (_, Some(v)) => format!("{name} = {}", literal(&v)),
            (_, None) => format!("{name} = true"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    // API tokens: `SCOPE TOKEN` lines; every request but /health needs one.
    out.push_str(&format!(
        "api_token_file = {}\n",
        toml_edit::Value::from(SYSTEMD_TOKEN_FILE)
            .to_string()
            .trim()
    ));
    out
}

/// `--config-dir`: writes each host's file and prints how to install it
/// and start the node under systemd.
fn write_configs(dir: &std::path::Path, plans: &[Plan]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!(
        "# one node per host, under contrib/systemd/ringkv.service: start {} first",
        plans[0].id
    );
    println!(
        "# first, once: ringkv secret > cluster.secret; \
         printf 'admin %s\\n' \"$(ringkv secret)\" > api-tokens   (add read/write/metrics tokens as needed)"
    );
    println!(
        "# then on every host: install -D -m 0640 -g ringkv cluster.secret {SYSTEMD_SECRET_FILE}; \
         install -D -m 0640 -g ringkv api-tokens {SYSTEMD_TOKEN_FILE}"
    );
    for plan in plans {
        let host = plan
            .id
            .rsplit_once(':')
            .map_or(plan.id.as_str(), |(h, _)| h);
        let file = dir.join(format!("{host}.toml"));
        std::fs::write(&file, config_text(&plan.id, &plan.flags))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let file = shell_quote(&file.to_string_lossy());
        println!("# on {host}");
        println!("install -D -m 0640 -g ringkv {file} /etc/ringkv/ringkv.toml");
        println!("systemctl enable --now ringkv");
    }
    Ok(())
}

/// `ringkv cluster --print`: the commands, one per line (a `# on HOST`
/// comment before each with --hosts), or a JSON array with --json.
fn print(args: &ClusterArgs, out: super::ops::Output) -> anyhow::Result<ExitCode> {
    let plans = plan(args)?;
    if let Some(dir) = &args.config_dir {
        write_configs(dir, &plans)?;
        return Ok(ExitCode::SUCCESS);
    }
    let local = args.hosts.is_empty();
    let exe = program(local);
    let lines: Vec<(String, String)> = plans
        .iter()
        .map(|p| {
            let words: Vec<String> = std::iter::once(exe.clone())
                .chain(std::iter::once("serve".to_string()))
                .chain(p.flags.iter().cloned())
                .map(|w| shell_quote(&w))
                .collect();
            (p.id.clone(), words.join(" "))
        })
        .collect();
    if out.json {
        let json: Vec<serde_json::Value> = lines
            .iter()
            .map(|(id, command)| serde_json::json!({ "node": id, "command": command }))
            .collect();
        super::ops::print_json(&json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if local {
        println!(
            "# {} nodes on this machine: run each in its own terminal, the first one first",
            plans.len()
        );
    } else {
        println!(
            "# one node per host: start {} first, then the others",
            plans[0].id
        );
        println!(
            "# first: `ringkv secret > {}` and copy that file to every host",
            secret_path(args).display()
        );
    }
    for (id, command) in &lines {
        if !local {
            println!(
                "# on {}",
                id.rsplit_once(':').map_or(id.as_str(), |(h, _)| h)
            );
        }
        println!("{command}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long each node may take to join before the cluster gives up.
const NODE_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the nodes and waits for Ctrl-C (or prints their commands).
pub async fn run(args: ClusterArgs, out: super::ops::Output) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    if args.print {
        return print(&args, out);
    }
    // Before any node starts: a SIGTERM or Ctrl-C while they start stops
    // the ones started, instead of killing this process and leaving them.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    prepare(&args)?;
    let ca = args.tls.then(|| tls_paths(&args).0);
    let mut children: Vec<(String, LocalNode)> = Vec::new();
    let started = tokio::select! {
        started = start_nodes(&args, ca.as_deref(), out, &mut children) => started,
        _ = term.recv() => Err(anyhow::anyhow!("terminated while the nodes started")),
        _ = int.recv() => Err(anyhow::anyhow!("interrupted while the nodes started")),
    };
    if let Err(err) = started {
        stop_all(&mut children).await;
        return Err(err);
    }
    if let (Some(ca), false) = (&ca, out.json) {
        println!(
            "HTTPS with a throwaway CA (for this demo only): curl --cacert {ca} {url}/ring ; \
             ringkv --ca {ca} --node {node} ring",
            ca = ca.display(),
            url = children[0].0,
            node = children[0].0.trim_start_matches("https://"),
        );
    }
    if out.json {
        println!("{}", serde_json::json!({ "running": children.len() }));
    } else {
        println!(
            "cluster of {} nodes running; try: curl -T FILE {}/keys/NAME , or redis-cli -c -p {} ; \
             Ctrl-C stops it",
            children.len(),
            children[0].0,
            args.base_port.saturating_add(RESP_PORT_OFFSET)
        );
    }
    let exited = async {
        loop {
            for (url, node) in children.iter_mut() {
                if let Ok(Some(status)) = node.try_wait() {
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
    stop_all(&mut children).await;
    Ok(ExitCode::SUCCESS)
}

/// Starts the nodes one after another, each pushed onto `children` as soon
/// as it runs, and prints each one's addresses.
async fn start_nodes(
    args: &ClusterArgs,
    ca: Option<&std::path::Path>,
    out: super::ops::Output,
    children: &mut Vec<(String, LocalNode)>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the ringkv binary")?;
    for (i, node) in plan(args)?.into_iter().enumerate() {
        wait_ports_free(&node.id).await?;
        // Node logs go to this terminal, as the nodes' own stderr.
        let launch = Launch::new(&exe).args(&node.flags);
        let started = tokio::task::spawn_blocking(move || {
            let started = launch.start()?;
            // The second line names the Redis protocol address.
            let resp = started
                .next_line(RESP_LINE_TIMEOUT)
                .map(|l| l.trim_start_matches("redis protocol on ").to_string())
                .unwrap_or_default();
            Ok::<_, ringkv::error::Error>((started, resp))
        })
        .await
        .context("the node's start task failed")?;
        let (started, resp) = started
            .with_context(|| format!("cannot start node {} (is the port taken?)", node.id))?;
        let url = started.url().to_string();
        children.push((url.clone(), started));
        if out.json {
            println!(
                "{}",
                serde_json::json!({ "node": i + 1, "url": format!("{url}/"), "resp": resp })
            );
        } else {
            println!("node {} {}/  redis {}", i + 1, url, resp);
        }
        // One at a time: a node chooses its tokens on the ring it finds, so
        // nodes joining together would choose without seeing each other.
        wait_normal(&url, ca).await?;
    }
    Ok(())
}

/// SIGTERM to every node (each stops as `--on-signal stop` says), then
/// SIGKILL to any still running after 10 s.
async fn stop_all(children: &mut Vec<(String, LocalNode)>) {
    let mut nodes = std::mem::take(children);
    let stopped = tokio::task::spawn_blocking(move || {
        let results = ringkv::local::stop_all(
            nodes.iter_mut().map(|(_, node)| node),
            ringkv::local::STOP_GRACE,
        );
        nodes
            .iter()
            .zip(results)
            .filter_map(|((url, _), result)| match result {
                Ok(stopped) if stopped.killed => {
                    Some(format!("{url} did not stop in time; killed it"))
                }
                Ok(_) => None,
                Err(err) => Some(format!("stopping {url}: {err}")),
            })
            .collect::<Vec<_>>()
    })
    .await;
    match stopped {
        Ok(lines) => lines.iter().for_each(|line| eprintln!("{line}")),
        Err(err) => eprintln!("the stop task failed: {err}"),
    }
}

/// How long a taken port is tried again before the cluster gives up: an
/// outgoing connection of any program may hold a port of the ephemeral
/// range for a while after it closes.
const PORT_RETRY: Duration = Duration::from_secs(5);

/// Waits (up to [`PORT_RETRY`]) until the TCP and UDP ports of the node
/// `id` (`host:port`) can be bound, so that a node fails to start only
/// for a port that stays taken, and says which one.
async fn wait_ports_free(id: &str) -> anyhow::Result<()> {
    let (host, port) = id.rsplit_once(':').context("node without a port")?;
    let port: u16 = port.parse().context("bad port")?;
    let ip: std::net::IpAddr = host
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, port);
    let deadline = tokio::time::Instant::now() + PORT_RETRY;
    loop {
        let taken = match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some("TCP"),
            _ => match std::net::UdpSocket::bind(addr) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some("UDP"),
                _ => None,
            },
        };
        let Some(protocol) = taken else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ringkv::error::Error::PortInUse { protocol, addr }).context(format!(
                "still taken after {PORT_RETRY:?}; use --base-port to pick other ports"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the node at `url` shows itself normal in its `/ring`.
async fn wait_normal(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<()> {
    let id = url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let mut builder = ringkv::tls::http_client_builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)?;
        builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?);
    }
    let http = builder.build()?;
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
