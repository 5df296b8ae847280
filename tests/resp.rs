//! The Redis protocol front end (F24) with the real tools: redis-cli
//! (Debian's redis-tools) and redis-py (in the virtual environment
//! scripts/test.sh makes) against a real 3-node cluster, plain and
//! cluster-aware, including a node killed under a cluster client; expiry
//! over RESP with a replica away (F28); bad input on the port (F26).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn options(extra: &[&str]) -> Options {
    let mut flags: Vec<String> = vec!["--resp-port".into(), "0".into()];
    flags.extend(extra.iter().map(|s| s.to_string()));
    Options {
        flags,
        ..Options::default()
    }
}

/// The RESP port of node `i`, from its `/ring`.
async fn resp_port(cluster: &Cluster, i: usize) -> u16 {
    let id = cluster.nodes[i].id.clone();
    wait_for("the node's RESP address", DEADLINE, || async {
        let ring = cluster.ring(i).await?;
        let member = ring["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == id.as_str())?
            .clone();
        let port: u16 = member["resp"].as_str()?.rsplit(':').next()?.parse().ok()?;
        // A restarted node publishes its new port after a moment.
        TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        Some(port)
    })
    .await
}

/// `redis-cli -p PORT args…`: its stdout, trimmed (raw output: not a tty).
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect(
            "redis-cli is needed (Debian's redis-tools; scripts/test.sh installs it when missing)",
        );
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_drives_every_command() {
    let cluster = Cluster::start(options(&[])).await;
    let mut ports = Vec::new();
    for i in 0..3 {
        ports.push(resp_port(&cluster, i).await);
    }
    let (a, b, c) = (ports[0], ports[1], ports[2]);
    // Connection.
    assert_eq!(cli(a, &["ping"]), "PONG");
    assert_eq!(cli(a, &["ping", "hi"]), "hi");
    assert_eq!(cli(a, &["echo", "x y"]), "x y");
    assert_eq!(cli(a, &["select", "0"]), "OK");
    assert!(cli(a, &["select", "1"]).starts_with("ERR DB index is out of range"));
    assert!(cli(a, &["auth", "secret"]).contains("no API tokens"));
    assert_eq!(cli(a, &["client", "setname", "me"]), "OK");
    assert!(cli(a, &["hello", "3"]).contains("proto"));
    assert!(cli(a, &["hello", "4"]).starts_with("NOPROTO"));
    // Strings, through any node.
    assert_eq!(cli(a, &["set", "k", "v1"]), "OK");
    assert_eq!(cli(b, &["get", "k"]), "v1");
    assert_eq!(cli(c, &["set", "k", "v2", "NX"]), "");
    assert_eq!(cli(c, &["set", "k", "v3", "XX", "GET"]), "v1");
    assert_eq!(cli(a, &["set", "nothing", "v", "XX"]), "");
    assert_eq!(cli(a, &["setnx", "k", "x"]), "0");
    assert_eq!(cli(a, &["setnx", "fresh", "x"]), "1");
    assert_eq!(cli(a, &["getset", "fresh", "y"]), "x");
    assert_eq!(cli(b, &["strlen", "k"]), "2");
    assert_eq!(cli(b, &["getrange", "k", "0", "0"]), "v");
    assert_eq!(cli(a, &["mset", "m1", "1", "m2", "2"]), "OK");
    assert_eq!(cli(b, &["mget", "none", "m1", "m2"]), "\n1\n2");
    assert_eq!(cli(a, &["getdel", "m1"]), "1");
    assert_eq!(cli(a, &["get", "m1"]), "");
    // Expiry.
    assert_eq!(cli(a, &["set", "e", "x", "EX", "100"]), "OK");
    assert_eq!(cli(b, &["ttl", "e"]), "100");
    assert_eq!(cli(a, &["set", "e", "y", "KEEPTTL"]), "OK");
    let pttl: i64 = cli(c, &["pttl", "e"]).parse().unwrap();
    assert!((95_000..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(cli(a, &["expire", "e", "200", "LT"]), "0");
    assert_eq!(cli(a, &["expire", "e", "200", "GT"]), "1");
    assert_eq!(cli(a, &["expire", "e", "300", "NX"]), "0");
    assert_eq!(cli(a, &["persist", "e"]), "1");
    assert_eq!(cli(b, &["ttl", "e"]), "-1");
    assert_eq!(cli(b, &["get", "e"]), "y");
    assert_eq!(cli(b, &["ttl", "nothing"]), "-2");
    assert!(cli(a, &["set", "e", "x", "EX", "0"]).contains("invalid expire time"));
    assert!(cli(a, &["expire", "e", "1", "NX", "XX"]).contains("not compatible"));
    assert_eq!(cli(a, &["setex", "s", "100", "v"]), "OK");
    assert_eq!(cli(a, &["psetex", "p", "300", "v"]), "OK");
    assert_eq!(cli(a, &["getex", "s", "PX", "50000"]), "v");
    let left: i64 = cli(b, &["pttl", "s"]).parse().unwrap();
    assert!((45_000..=50_000).contains(&left), "{left}");
    wait_for("p to expire", DEADLINE, || async {
        (cli(c, &["get", "p"]).is_empty()).then_some(())
    })
    .await;
    assert_eq!(cli(a, &["exists", "p"]), "0");
    // Keys.
    assert_eq!(cli(a, &["exists", "k", "k", "none"]), "2");
    assert_eq!(cli(a, &["type", "k"]), "string");
    assert_eq!(cli(a, &["type", "none"]), "none");
    assert_eq!(cli(a, &["del", "k", "fresh", "none"]), "2");
    assert_eq!(cli(a, &["unlink", "m2"]), "1");
    for i in 0..50 {
        assert_eq!(cli(b, &["set", &format!("scan:{i}"), "x"]), "OK");
    }
    let mut keys = cli(a, &["keys", "scan:*"])
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>();
    keys.sort();
    assert_eq!(keys.len(), 50, "{keys:?}");
    let scanned = cli(c, &["--scan", "--pattern", "scan:*"]);
    assert_eq!(scanned.lines().count(), 50, "{scanned}");
    // The same values as over HTTP.
    let response = cluster
        .http
        .put(key_url(&cluster, 0, "from-http"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(cli(c, &["get", "from-http"]), "hello");
    // Server.
    assert!(cli(a, &["info"]).contains("# Ringkv"));
    assert!(cli(a, &["info", "cluster"]).contains("cluster_enabled:1"));
    let count: usize = cli(a, &["command", "count"]).parse().unwrap();
    assert!(count > 50);
    assert!(cli(a, &["command", "docs", "get"]).contains("summary"));
    assert!(cli(a, &["flushall"]).contains("--resp-allow-flush"));
    let dbsize: i64 = cli(a, &["dbsize"]).parse().unwrap();
    assert!(dbsize >= 0);
    // Refused, clearly, and the connection stays usable.
    for command in [
        vec!["incr", "n"],
        vec!["append", "n", "x"],
        vec!["multi"],
        vec!["watch", "n"],
        vec!["rename", "e", "f"],
        vec!["eval", "return 1", "0"],
    ] {
        let reply = cli(a, &command);
        assert!(
            reply.starts_with("ERR") && reply.contains("ringkv"),
            "{command:?}: {reply}"
        );
    }
    assert!(cli(a, &["lpush", "e", "x"]).starts_with("WRONGTYPE"));
    assert!(cli(a, &["nosuch", "a", "b"]).starts_with("ERR unknown command 'nosuch'"));
    assert!(cli(a, &["get"]).starts_with("ERR wrong number of arguments for 'get' command"));
    // Cluster discovery: every node holds a share of the slots, no MOVED.
    let nodes = cli(a, &["cluster", "nodes"]);
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    assert!(
        nodes.contains(" 0-5460") && nodes.contains("-16383"),
        "{nodes}"
    );
    assert!(cli(a, &["cluster", "info"]).contains("cluster_state:ok"));
    assert_eq!(cli(a, &["cluster", "keyslot", "foo"]), "12182");
    assert_eq!(cli(a, &["-c", "set", "cluster:key", "v"]), "OK");
    assert_eq!(cli(b, &["-c", "get", "cluster:key"]), "v");
    // Inline commands.
    let mut stream = TcpStream::connect(("127.0.0.1", a)).await.unwrap();
    stream.write_all(b"PING\r\nget k\r\n\r\n").await.unwrap();
    let reply = read_until(&mut stream, b"$-1\r\n").await;
    assert_eq!(reply, b"+PONG\r\n$-1\r\n");
}

/// Reads from `stream` until what was read ends with `end` (or 10 s).
async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.ends_with(end) && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    out
}

/// Sends `input` on a fresh connection; what comes back until the server
/// closes it (or 10 s).
async fn exchange(port: u16, input: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(input).await;
    let mut out = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_an_error_and_loses_nothing() {
    let cluster = Cluster::start(options(&[
        "--resp-idle-timeout",
        "2s",
        "--resp-max-connections",
        "8",
        "--max-value-size",
        "1MiB",
    ]))
    .await;
    let port = resp_port(&cluster, 0).await;
    assert_eq!(cli(port, &["set", "kept", "value"]), "OK");
    // Malformed frames: an error, then the connection closes.
    for input in [
        &b"*1\r\n!4\r\nPING\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n$4\r\nPINGxx",
        b"*-5\r\n",
    ] {
        let (reply, closed) = exchange(port, input).await;
        assert!(
            reply.starts_with(b"-ERR Protocol error"),
            "{input:?}: {reply:?}"
        );
        assert!(closed, "{input:?}");
    }
    // A bulk longer than the limit is refused on its header.
    let (reply, closed) = exchange(port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000000\r\n").await;
    assert!(
        String::from_utf8_lossy(&reply).contains("invalid bulk length"),
        "{reply:?}"
    );
    assert!(closed);
    // Nested too deep.
    let (reply, closed) = exchange(port, "*1\r\n".repeat(20).as_bytes()).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("nested"),
        "{reply:?}"
    );
    assert!(closed);
    // An array announcing more elements than allowed.
    let (reply, _) = exchange(port, b"*99999999\r\n").await;
    assert!(String::from_utf8_lossy(&reply).contains("multibulk length"));
    // A million-element request: read whole, answered, the node goes on.
    let mut big = b"*1000000\r\n$7\r\nNOSUCH1\r\n".to_vec();
    for _ in 1..1_000_000 {
        big.extend_from_slice(b"$1\r\na\r\n");
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&big).await.unwrap();
    stream.write_all(b"PING\r\n").await.unwrap();
    let reply = read_until(&mut stream, b"+PONG\r\n").await;
    assert!(
        reply.starts_with(b"-ERR unknown command 'NOSUCH1'"),
        "{:?}",
        &reply[..40.min(reply.len())]
    );
    assert!(reply.ends_with(b"+PONG\r\n"));
    drop(stream);
    // An inline line over 64 KiB.
    let (reply, closed) = exchange(port, &vec![b'a'; 70 * 1024]).await;
    assert!(String::from_utf8_lossy(&reply).contains("too big inline request"));
    assert!(closed);
    // Half-closed halfway through a request: the node just drops it.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"*2\r\n$3\r\nGET\r\n$4\r\nke")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    // A slow client: one byte a second never completes a request within
    // the idle timeout; the connection is closed.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let closed = loop {
        if slow.write_all(b"*").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(closed, "a trickling client was not cut off");
    // A client writing without reading replies is slowed down by TCP (the
    // node stops reading while its replies wait), not buffered without end.
    let mut flood = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let chunk = b"*2\r\n$3\r\nGET\r\n$4\r\nkept\r\n".repeat(4096);
    let mut sent = 0u64;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(2), flood.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len() as u64,
            Ok(Err(_)) => break false,
            Err(_) => break true,
        }
        if sent > 1 << 30 {
            break false;
        }
    };
    assert!(stalled, "1 GiB went in without the node pushing back");
    // Meanwhile others are served, and nothing was lost.
    assert_eq!(cli(port, &["get", "kept"]), "value");
    drop(flood);
    drop(slow);
    wait_for("the other connections to close", DEADLINE, || async {
        cli(port, &["info", "clients"])
            .contains("connected_clients:1\r")
            .then_some(())
    })
    .await;
    // Connections are bounded.
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_until(&mut s, b"+PONG\r\n").await, b"+PONG\r\n");
        open.push(s);
    }
    let (reply, closed) = exchange(port, b"PING\r\n").await;
    assert!(String::from_utf8_lossy(&reply).contains("max number of clients"));
    assert!(closed);
    drop(open);
    wait_for("a connection to be free again", DEADLINE, || async {
        (cli(port, &["get", "kept"]) == "value").then_some(())
    })
    .await;
    let health = cluster
        .http
        .get(format!("{}/health", cluster.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expire_while_a_replica_is_away_does_not_come_undone() {
    let mut cluster = Cluster::start(options(&[
        "--no-hints",
        "--repair-interval",
        "0",
        "--resp-allow-flush",
    ]))
    .await;
    let ports = [resp_port(&cluster, 0).await, resp_port(&cluster, 1).await];
    assert_eq!(cli(ports[0], &["set", "brief", "v"]), "OK");
    // Acknowledged by two replicas; the third may store it a moment later.
    let timestamp = wait_for("node 2 to hold the value", DEADLINE, || async {
        let (timestamp, _) = cluster.haskey(2, "brief").await;
        (timestamp != 0).then_some(timestamp)
    })
    .await;
    cluster.kill(2);
    // The expiry change reaches two replicas; the third holds the value
    // without it.
    assert_eq!(cli(ports[1], &["pexpire", "brief", "300"]), "1");
    wait_for("the key to expire", DEADLINE, || async {
        cli(ports[0], &["get", "brief"]).is_empty().then_some(())
    })
    .await;
    cluster.restart(2);
    cluster.wait_converged().await;
    let third = resp_port(&cluster, 2).await;
    // A majority read through the node that was away: absent, and read
    // repair gives it the expiry change (same value timestamp, a touch).
    assert_eq!(cli(third, &["get", "brief"]), "");
    wait_for("node 2 to hold the expiry", DEADLINE, || async {
        let url = format!("{}/haskey/brief", cluster.url(2));
        let has: serde_json::Value = common::get_json(&cluster.http, &url).await;
        (has["expired"] == true).then_some(())
    })
    .await;
    assert_eq!(cluster.haskey(2, "brief").await.0, timestamp);
    let r1 = cluster
        .http
        .get(format!("{}?r=1", key_url(&cluster, 2, "brief")))
        .send()
        .await
        .unwrap();
    assert_eq!(r1.status(), 404);
    // A write after the expiry is a new value, with no expiry.
    assert_eq!(cli(third, &["set", "brief", "again"]), "OK");
    assert_eq!(cli(ports[0], &["ttl", "brief"]), "-1");
    // FLUSHALL, allowed on these nodes, deletes every key of the cluster.
    for i in 0..20 {
        assert_eq!(cli(ports[1], &["set", &format!("f{i}"), "x"]), "OK");
    }
    assert_eq!(cli(ports[0], &["flushall"]), "OK");
    assert_eq!(cli(third, &["keys", "*"]), "");
    assert_eq!(cli(third, &["get", "f7"]), "");
}

/// A Python with redis-py: `$RINGKV_PYTHON`, the virtual environment that
/// scripts/test.sh makes, or `python3`.
fn python() -> String {
    let candidates = [
        std::env::var("RINGKV_PYTHON").ok(),
        Some(format!(
            "{}/target/redis-venv/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )),
        Some("python3".to_string()),
    ];
    for candidate in candidates.into_iter().flatten() {
        let ok = Command::new(&candidate)
            .args(["-c", "import redis"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return candidate;
        }
    }
    panic!(
        "redis-py is needed: run scripts/test.sh (it makes target/redis-venv), or \
         set RINGKV_PYTHON to a python with `redis` installed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_py_plain_and_cluster_aware_survives_a_node_death() {
    let mut cluster = Cluster::start(options(&[])).await;
    let mut ports = Vec::new();
    for i in 0..3 {
        ports.push(resp_port(&cluster, i).await);
    }
    let script = format!("{}/tests/resp_client.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(&script)
        .args(ports.iter().map(|p| p.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.next();
        (line, lines)
    });
    let (line, mut lines) = first.await.unwrap();
    let line = line.and_then(|l| l.ok()).unwrap_or_default();
    if line != "KILL" {
        let out = child.wait_with_output().unwrap();
        panic!(
            "redis-py run failed before the kill: {line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.kill(2);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let done = tokio::task::spawn_blocking(move || lines.next())
        .await
        .unwrap()
        .and_then(|l| l.ok())
        .unwrap_or_default();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && done.starts_with("DONE"),
        "{done}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refreshed map lists the two live nodes only.
    let expected = format!("nodes={:?}", {
        let mut live = vec![ports[0], ports[1]];
        live.sort();
        live
    });
    assert!(done.contains(&expected), "{done}, expected {expected}");
    eprintln!("redis-py across a node's death: {done}");
}

/// Tokens of the AUTH test (at least 16 bytes each).
const READ: &str = "resp-read-token-0123456789";
const WRITE: &str = "resp-write-token-0123456789";
const ADMIN: &str = "resp-admin-token-0123456789";

/// `redis-cli -p PORT flags…` fed `lines` on stdin, one command each, on
/// one connection: its output lines.
fn cli_lines(port: u16, flags: &[&str], lines: &[&str]) -> Vec<String> {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning"])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli (Debian's redis-tools)");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    // (After an error reply it prints a blank line.)
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// One RESP exchange on an open connection: the reply's first line.
async fn ask(stream: &mut TcpStream, command: &[&str]) -> String {
    let mut out = format!("*{}\r\n", command.len());
    for word in command {
        out.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    stream.write_all(out.as_bytes()).await.unwrap();
    let reply = read_until(stream, b"\r\n").await;
    String::from_utf8_lossy(&reply).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_takes_an_api_token_with_its_scopes() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("tokens");
    std::fs::write(
        &path,
        format!("read {READ}\nwrite {WRITE}\nadmin {ADMIN}\n"),
    )
    .unwrap();
    let mut options = options(&["--api-token-file", path.to_str().unwrap()]);
    options.token = Some(ADMIN.to_string());
    let cluster = Cluster::start(options).await;
    let (a, b) = (resp_port(&cluster, 0).await, resp_port(&cluster, 1).await);
    // Without a token only AUTH, HELLO, QUIT and RESET run.
    assert!(
        cli(a, &["get", "k"]).starts_with("NOAUTH"),
        "{}",
        cli(a, &["get", "k"])
    );
    assert!(cli(a, &["ping"]).starts_with("NOAUTH"));
    assert!(cli(a, &["cluster", "slots"]).starts_with("NOAUTH"));
    assert!(cli(a, &["hello", "3"]).contains("proto"));
    // A wrong token authenticates nothing.
    assert_eq!(
        cli_lines(a, &[], &["auth nobody-knows-this-token", "get k"]),
        [
            "WRONGPASS invalid username-password pair or user is disabled.",
            "NOAUTH Authentication required: send AUTH with an API token first"
        ]
    );
    // The write token writes and does not read (AUTH username token: the
    // username is ignored).
    let wrote = cli_lines(
        b,
        &["--user", "app", "--pass", WRITE],
        &["set k v", "get k", "ping"],
    );
    assert_eq!(wrote[0], "OK");
    assert!(
        wrote[1].starts_with("NOPERM")
            && wrote[1].contains("'get'")
            && wrote[1].contains("read scope"),
        "{wrote:?}"
    );
    assert_eq!(wrote[2], "PONG");
    // The read token reads through any node, SCANs, and writes nothing.
    let read = cli_lines(
        a,
        &["-a", READ],
        &[
            "get k",
            "set k w",
            "scan 0",
            "del k",
            "flushall",
            "cluster shards",
        ],
    );
    assert_eq!(read[0], "v", "{read:?}");
    assert!(
        read[1].starts_with("NOPERM") && read[1].contains("write scope"),
        "{read:?}"
    );
    assert!(
        read.iter().any(|l| l == "k"),
        "SCAN shows the key: {read:?}"
    );
    assert!(
        read.iter()
            .any(|l| l.starts_with("NOPERM") && l.contains("'del'")),
        "{read:?}"
    );
    assert!(
        read.iter()
            .any(|l| l.starts_with("NOPERM") && l.contains("'flushall'") && l.contains("admin")),
        "{read:?}"
    );
    // HELLO 3 AUTH, and an AUTH in the same pipeline as what follows.
    let hello_auth = format!("hello 3 auth default {ADMIN}");
    let hello = cli_lines(a, &[], &[hello_auth.as_str(), "get k"]);
    assert_eq!(hello.last().map(String::as_str), Some("v"), "{hello:?}");
    let (out, _) = exchange(a, format!("AUTH {READ}\r\nGET k\r\nQUIT\r\n").as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&out), "+OK\r\n$1\r\nv\r\n+OK\r\n");
    // A cluster-aware client with a password.
    let script = format!(
        "import redis\n\
         c = redis.RedisCluster(host='127.0.0.1', port={a}, password='{ADMIN}')\n\
         c.set('py', 'yes')\n\
         print(c.get('py').decode())\n"
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token removed by a reload stops working on open connections.
    let mut open = TcpStream::connect(("127.0.0.1", a)).await.unwrap();
    assert_eq!(ask(&mut open, &["AUTH", READ]).await, "+OK");
    let got = ask(&mut open, &["GET", "k"]).await;
    if got == "$1" {
        read_until(&mut open, b"\r\n").await;
    } else {
        assert_eq!(got, "$1\r\nv");
    }
    std::fs::write(&path, format!("admin {ADMIN}\n")).unwrap();
    cluster.signal(0, libc::SIGHUP);
    wait_for("the reader's token to stop working", DEADLINE, || async {
        let mut fresh = TcpStream::connect(("127.0.0.1", a)).await.ok()?;
        ask(&mut fresh, &["AUTH", READ])
            .await
            .starts_with("-WRONGPASS")
            .then_some(())
    })
    .await;
    assert!(ask(&mut open, &["GET", "k"]).await.starts_with("-NOAUTH"));
    // No token in any node's log.
    for i in 0..3 {
        let log = std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default();
        for token in [READ, WRITE, ADMIN] {
            assert!(!log.contains(token), "node {i}'s log shows a token");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_in_a_terminal_completes_and_hints_from_command_docs() {
    let cluster = Cluster::start(options(&[])).await;
    let port = resp_port(&cluster, 0).await;
    let script = format!("{}/tests/resp_hints.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(out.status.success() && lines.len() == 3, "{text}\n{out:?}");
    // SET's arguments as a hint after the command.
    assert!(
        lines[0].contains("set ") && lines[0].contains("key value [NX|XX]"),
        "{}",
        lines[0]
    );
    // No hint for a command ringkv does not document: the hints come from
    // its COMMAND DOCS, not from redis-cli's own table.
    assert!(
        lines[1].contains("lpush ") && !lines[1].contains("element"),
        "{}",
        lines[1]
    );
    // Tab completes from the server's commands, then hints.
    assert!(
        lines[2].contains("GETEX") && lines[2].contains("PERSIST"),
        "{}",
        lines[2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_cursor_survives_a_members_death() {
    let mut cluster = Cluster::start(options(&[])).await;
    let (a, b) = (resp_port(&cluster, 0).await, resp_port(&cluster, 1).await);
    for i in 0..60 {
        assert_eq!(cli(b, &["set", &format!("dead:{i}"), "x"]), "OK");
    }
    // One page, then a member dies, then the rest of the walk.
    let page = |port: u16, cursor: &str| -> (String, Vec<String>) {
        let out = cli(port, &["scan", cursor, "match", "dead:*", "count", "10"]);
        let mut lines = out.lines().map(str::to_string);
        let next = lines.next().unwrap_or_default();
        (next, lines.filter(|l| !l.is_empty()).collect())
    };
    let (mut cursor, mut seen) = page(a, "0");
    assert_ne!(cursor, "0", "one page of 10 should not hold all 60 keys");
    cluster.kill(2);
    let mut pages = 1;
    while cursor != "0" {
        let (next, keys) = page(a, &cursor);
        seen.extend(keys);
        cursor = next;
        pages += 1;
        assert!(pages < 1_000, "the walk does not end");
    }
    seen.sort();
    seen.dedup();
    let mut all: Vec<String> = (0..60).map(|i| format!("dead:{i}")).collect();
    all.sort();
    assert_eq!(
        seen, all,
        "every key present for the whole walk, after {pages} pages"
    );
}

/// The newest value the charts part (`/?part=charts` of `html`) draws for
/// `series` of `chart` in the row of `scope` (`cluster` or a node's id), if
/// it draws one.
fn chart_last(html: &str, scope: &str, chart: &str, series: &str) -> Option<f64> {
    let row_start = if scope == "cluster" {
        r#"data-scope="cluster""#.to_string()
    } else {
        format!(r#"data-node="{scope}""#)
    };
    let row = &html[html.find(&row_start)?..];
    let row = &row[..row[1..].find("chart-row").map_or(row.len(), |end| end + 1)];
    let figure = &row[row.find(&format!(r#"data-chart="{chart}""#))?..];
    let figure = &figure[..figure.find("</figure>")?];
    let at = format!(r#"data-series="{series}" data-last=""#);
    let value = &figure[figure.find(&at)? + at.len()..];
    value[..value.find('"')?].parse().ok()
}

/// Node 0's charts part, as the page's script fetches it.
async fn charts_html(cluster: &Cluster) -> Option<String> {
    let url = format!("{}/?part=charts", cluster.url(0));
    cluster.http.get(url).send().await.ok()?.text().await.ok()
}

/// `redis-cli -p PORT` fed `lines` on its standard input, one command each
/// (how scripts pipe commands to it).
fn cli_stdin(port: u16, lines: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is needed (Debian's redis-tools)");
    let mut stdin = child.stdin.take().expect("redis-cli's stdin");
    stdin
        .write_all(lines.as_bytes())
        .expect("commands to redis-cli");
    drop(stdin);
    let out = child.wait_with_output().expect("redis-cli ran");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn resp_commands_show_in_the_metrics_and_the_charts() {
    let mut cluster = Cluster::start(options(&["--chart-interval", "200ms"])).await;
    let ports = [resp_port(&cluster, 0).await, resp_port(&cluster, 1).await];
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();

    // RESP load only, on two nodes, until told to stop: no HTTP request
    // reads or writes a key, so whatever the charts show of them is RESP.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut round = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let port = ports[round % 2];
                let lines: String = (0..50)
                    .map(|i| format!("SET chart:{i} value-{round}\nGET chart:{i}\nDEL gone:{i}\n"))
                    .collect();
                let out = cli_stdin(port, &lines);
                assert_eq!(out.matches("OK").count(), 50, "{out}");
                round += 1;
            }
            round
        })
    };

    // The cluster's row and each loaded node's draw the commands: reads
    // under get, writes under put, DEL under delete, with their latency and
    // the bytes of requests and replies.
    wait_for("RESP load in the charts", DEADLINE, || async {
        let html = charts_html(&cluster).await?;
        let busy = |scope: &str, chart: &str, series: &str| {
            chart_last(&html, scope, chart, series).is_some_and(|v| v > 0.0)
        };
        let drawn = ["cluster", &ids[0], &ids[1]].iter().all(|scope| {
            ["get", "put", "delete"]
                .iter()
                .all(|op| busy(scope, "requests", op))
                && busy(scope, "latency", "p99")
                && busy(scope, "bytes", "in")
                && busy(scope, "bytes", "out")
        });
        drawn.then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = load.join().expect("the load ran");
    assert!(rounds > 0);

    // /metrics counts them by operation and outcome, and their bytes.
    let (http, metrics_url) = (cluster.http.clone(), format!("{}/metrics", cluster.url(0)));
    let metrics = || {
        let (http, url) = (http.clone(), metrics_url.clone());
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let sample = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let text = metrics().await;
    for op in ["get", "put", "delete"] {
        let series = format!(r#"ringkv_resp_commands_total{{operation="{op}",outcome="ok"}}"#);
        assert!(sample(&text, &series) >= 50.0, "{series}");
    }
    assert!(sample(&text, r#"ringkv_resp_bytes_total{direction="in"}"#) > 0.0);
    assert!(sample(&text, r#"ringkv_resp_bytes_total{direction="out"}"#) > 0.0);

    // With two of three nodes gone, writes fail for want of a quorum: the
    // cluster's failure, charted as errors, counted as unavailable.
    cluster.kill(1);
    cluster.kill(2);
    wait_for(
        "unavailable RESP writes in the charts",
        DEADLINE,
        || async {
            let out = cli_stdin(ports[0], "SET lonely value\n");
            assert!(
                out.starts_with("TRYAGAIN") || out.starts_with("OK"),
                "{out}"
            );
            let html = charts_html(&cluster).await?;
            chart_last(&html, &ids[0], "errors", "put")
                .filter(|v| *v > 0.0)
                .map(|_| ())
        },
    )
    .await;
    let text = metrics().await;
    let series = r#"ringkv_resp_commands_total{operation="put",outcome="unavailable"}"#;
    assert!(sample(&text, series) >= 1.0, "{series}");
    // A wrong command is the client's error, not the cluster's.
    let _ = cli_stdin(ports[0], "NOSUCHCOMMAND\n");
    let text = metrics().await;
    let series = r#"ringkv_resp_commands_total{operation="other",outcome="client_error"}"#;
    assert!(sample(&text, series) >= 1.0, "{series}");
}
