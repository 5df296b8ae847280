//! Access control on real processes (F27): API tokens and their scopes on
//! every endpoint, reloads on SIGHUP, the CLI's `--token`, and tokens kept
//! out of logs, `/ring`, `/metrics` and the page. Requests go through
//! reqwest and through the real `curl`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, DEADLINE, RINGKV, wait_for};
use serde_json::Value;

const READ: &str = "read-token-4f1c2a9d8e7b6a5c";
const WRITE: &str = "write-token-0a9b8c7d6e5f4a3b";
const ADMIN: &str = "admin-token-9e8d7c6b5a4f3e2d";
const METRICS: &str = "metrics-token-1a2b3c4d5e6f7a8b";
const UNKNOWN: &str = "unknown-token-7f7f7f7f7f7f7f7f";

/// Every token of these tests, for checks that none leaks.
const ALL: [&str; 5] = [READ, WRITE, ADMIN, METRICS, UNKNOWN];

fn token_file(dir: &Path, lines: &str) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, lines).expect("token file");
    path
}

fn standard_tokens() -> String {
    format!("# test tokens\nread {READ}\nwrite {WRITE}\nadmin {ADMIN}\nmetrics {METRICS}\n")
}

/// A cluster of `nodes` whose nodes need the standard tokens; its own
/// requests carry the admin token.
async fn guarded(nodes: usize) -> Cluster {
    let mut cluster = Cluster::empty(Some(ADMIN.to_string()));
    // In the cluster's own dir, so that it lives as long as the nodes.
    let path = token_file(cluster.dir.path(), &standard_tokens());
    for i in 0..nodes {
        let mut flags = vec![
            "--replicas".to_string(),
            nodes.to_string(),
            "--api-token-file".into(),
            path.display().to_string(),
        ];
        if i > 0 {
            flags.extend(["--join".to_string(), cluster.nodes[0].id.clone()]);
        }
        cluster.spawn(flags);
    }
    cluster.wait_converged().await;
    cluster
}

/// `curl -s -i` with extra arguments: (status, headers lower-cased, body).
fn curl(args: &[&str]) -> (u16, BTreeMap<String, String>, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (scripts/test.sh installs it)");
    assert!(out.status.success(), "curl {args:?} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Each endpoint with the scope it needs.
fn endpoints(node: &str) -> Vec<(&'static str, String, Option<&'static str>)> {
    let url = |path: &str| format!("http://{node}{path}");
    vec![
        ("GET", url("/health"), None),
        ("GET", url("/health/live"), None),
        ("PUT", url("/keys/scoped"), Some("write")),
        ("GET", url("/keys/scoped"), Some("read")),
        ("HEAD", url("/keys/scoped"), Some("read")),
        ("GET", url("/keys"), Some("read")),
        ("GET", url("/whereis/scoped"), Some("read")),
        ("GET", url("/haskey/scoped"), Some("read")),
        ("GET", url("/ring"), Some("read")),
        ("GET", url("/"), Some("read")),
        ("GET", url("/?part=members"), Some("read")),
        ("GET", url("/favicon.ico"), Some("read")),
        ("GET", url("/metrics"), Some("metrics")),
        ("POST", url("/balance"), Some("admin")),
        ("POST", url("/purge"), Some("admin")),
        ("POST", url("/replicas?n=1"), Some("admin")),
        // One node with N = 1: leaving is refused (nobody would hold its data).
        ("POST", url("/leave"), Some("admin")),
        ("DELETE", url("/ring/127.0.0.1:1"), Some("admin")),
        ("GET", url("/no/such/route"), Some("admin")),
        ("DELETE", url("/keys/scoped"), Some("write")),
    ]
}

#[tokio::test]
async fn every_endpoint_against_each_scope() {
    let cluster = guarded(1).await;
    let node = cluster.nodes[0].id.clone();
    let http = ringkv::tls::http_client();
    let tokens: [(&str, Option<&str>); 6] = [
        ("none", None),
        ("unknown", Some(UNKNOWN)),
        ("read", Some(READ)),
        ("write", Some(WRITE)),
        ("metrics", Some(METRICS)),
        ("admin", Some(ADMIN)),
    ];
    let mut checked = 0;
    for (method, url, needed) in endpoints(&node) {
        for (name, token) in tokens {
            let mut request = http.request(method.parse().expect("method"), &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if method == "PUT" {
                request = request.body("v");
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().expect("ascii").to_string());
            let body = response.text().await.expect("body");
            let what = format!("{method} {url} with the {name} token: {status} {body}");
            let allowed = match (needed, name) {
                (None, _) => true,
                (Some(_), "none" | "unknown") => false,
                (Some(_), "admin") => true,
                (Some(scope), name) => scope == name,
            };
            if allowed {
                assert!(status != 401 && status != 403, "{what}");
                continue;
            }
            let expected = if matches!(name, "none" | "unknown") {
                401
            } else {
                403
            };
            assert_eq!(status, expected, "{what}");
            let challenge = challenge.unwrap_or_else(|| panic!("no WWW-Authenticate: {what}"));
            assert!(challenge.starts_with("Bearer realm=\"ringkv\""), "{what}");
            if name == "unknown" {
                assert!(challenge.contains("invalid_token"), "{what}");
            }
            if expected == 403 {
                assert!(challenge.contains("insufficient_scope"), "{what}");
                assert!(
                    challenge.contains(&format!("scope=\"{}\"", needed.unwrap_or(""))),
                    "{what}"
                );
            }
            if method != "HEAD" {
                let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}"));
                assert_eq!(json["status"], expected, "{what}");
                let code = if expected == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(json["code"], code, "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} refusals checked");
}

#[tokio::test]
async fn curl_sees_challenges_and_a_browser_the_token_form() {
    let cluster = guarded(1).await;
    let node = &cluster.nodes[0].id;
    let (status, headers, body) = curl(&[&format!("http://{node}/ring")]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"ringkv\"");
    let json: Value = serde_json::from_str(&body).expect("json");
    assert!(
        json["error"].as_str().expect("error").contains("--token"),
        "{body}"
    );

    let (status, _, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {READ}"),
        &format!("http://{node}/ring"),
    ]);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {READ}"),
        "--data-binary",
        "x",
        &format!("http://{node}/keys/k"),
    ]);
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = curl(&[&format!("http://{node}/health")]);
    assert_eq!(status, 200);

    // A browser asking for the page without a token: the 401 is a form
    // asking for one, without any of the node's data.
    let (status, headers, body) = curl(&["-H", "Accept: text/html", &format!("http://{node}/")]);
    assert_eq!(status, 401);
    assert!(
        headers["content-type"].starts_with("text/html"),
        "{headers:?}"
    );
    assert!(body.contains("id=\"token-form\""), "{body}");
    assert!(
        body.contains("sessionStorage"),
        "the script keeps the token per tab"
    );
    assert!(
        !body.contains(node.as_str()),
        "the locked page shows no node data"
    );
    // Its parts, asked by the script, are JSON refusals like any request.
    let (status, _, _) = curl(&[
        "-H",
        "Accept: text/html",
        &format!("http://{node}/?part=members"),
    ]);
    assert_eq!(status, 401);
    // With the token the page itself.
    let (status, _, body) = curl(&[
        "-H",
        "Accept: text/html",
        "-H",
        &format!("Authorization: Bearer {READ}"),
        &format!("http://{node}/"),
    ]);
    assert_eq!(status, 200);
    assert!(body.contains("id=\"members\""), "{body}");
    // Writes from another origin stay refused, token or not.
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {WRITE}"),
        "-H",
        "Origin: http://evil.example",
        "--data-binary",
        "x",
        &format!("http://{node}/keys/k"),
    ]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross_origin"), "{body}");
}

#[tokio::test]
async fn sighup_reloads_the_token_file() {
    let cluster = guarded(1).await;
    let node = &cluster.nodes[0];
    let path = node
        .flags
        .iter()
        .skip_while(|f| *f != "--api-token-file")
        .nth(1)
        .expect("token file flag")
        .clone();
    let http = ringkv::tls::http_client();
    let status = |token: &'static str| {
        let http = http.clone();
        let url = format!("{}/ring", node.url());
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("ring")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(READ).await, 200);
    assert_eq!(status(UNKNOWN).await, 401);
    // The file changes: the unknown token becomes a reader, the reader goes.
    std::fs::write(&path, format!("read {UNKNOWN}\nadmin {ADMIN}\n")).expect("write");
    cluster.signal(0, libc::SIGHUP);
    wait_for("the new tokens to be in force", DEADLINE, || async {
        (status(UNKNOWN).await == 200).then_some(())
    })
    .await;
    assert_eq!(status(READ).await, 401);
    // A broken file keeps the tokens in force.
    std::fs::write(&path, format!("reed {READ}\n")).expect("write");
    cluster.signal(0, libc::SIGHUP);
    let log = cluster.nodes[0].data_dir.with_file_name("node0.log");
    wait_for("the reload error in the log", DEADLINE, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("API tokens not reloaded").then_some(())
    })
    .await;
    assert_eq!(status(UNKNOWN).await, 200);
    assert_eq!(status(READ).await, 401);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("line 1"), "the error names the line");
    for token in ALL {
        assert!(!text.contains(token), "a token is in the log");
    }
}

#[tokio::test]
async fn the_cli_takes_a_token_and_purge_all_reaches_every_member() {
    let cluster = guarded(3).await;
    let node = cluster.nodes[0].id.clone();
    let run = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(RINGKV);
        command.args(["--node", &node]).args(args);
        command.env_remove("RINGKV_TOKEN");
        if let Some(token) = env {
            command.env("RINGKV_TOKEN", token);
        }
        let out = command.output().expect("ringkv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["put", "cli-key", "value"], None);
    assert!(!ok);
    assert!(
        err.contains("--token") && err.contains("RINGKV_TOKEN"),
        "{err}"
    );
    let (ok, out, _) = run(&["--json", "get", "cli-key"], None);
    assert!(!ok);
    let json: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["code"], "unauthorized", "{out}");
    assert_eq!(json["status"], 401, "{out}");

    let (ok, _, err) = run(&["--token", WRITE, "put", "cli-key", "value"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["get", "cli-key"], Some(READ));
    assert!(ok, "{err}");
    assert_eq!(out, "value");
    let (ok, _, err) = run(&["--token", READ, "del", "cli-key"], None);
    assert!(!ok);
    assert!(err.contains("write scope"), "{err}");
    for token in ALL {
        assert!(!err.contains(token), "the CLI printed a token: {err}");
    }

    // Purge on every member: the node asks the others over RPC.
    let (ok, out, err) = run(&["--json", "purge", "--all"], Some(ADMIN));
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).expect("json");
    let reports = json["nodes"].as_object().expect("nodes");
    assert_eq!(reports.len(), 3, "{out}");
    for (member, report) in reports {
        assert!(report.get("error").is_none(), "{member}: {report}");
    }
}

#[tokio::test]
async fn tokens_stay_out_of_logs_ring_metrics_and_the_page() {
    let cluster = guarded(3).await;
    let http = ringkv::tls::http_client();
    // Requests with every token, good and bad, on every node.
    for i in 0..3 {
        for token in ALL {
            for path in ["/ring", "/metrics", "/", "/keys/x", "/balance"] {
                let _ = http
                    .get(format!("{}{path}", cluster.url(i)))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request");
            }
        }
    }
    let mut shown = String::new();
    for i in 0..3 {
        for path in ["/ring", "/metrics", "/", "/?part=members", "/?part=work"] {
            shown.push_str(
                &http
                    .get(format!("{}{path}", cluster.url(i)))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .expect("get")
                    .text()
                    .await
                    .expect("body"),
            );
        }
        shown.push_str(
            &std::fs::read_to_string(
                cluster.nodes[i]
                    .data_dir
                    .with_file_name(format!("node{i}.log")),
            )
            .unwrap_or_default(),
        );
    }
    assert!(shown.len() > 10_000, "little was read: {}", shown.len());
    for token in ALL {
        assert!(!shown.contains(token), "token {token} shown");
    }
}

#[tokio::test]
async fn a_bad_token_file_stops_the_node_naming_the_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = token_file(dir.path(), &format!("read {READ}\nsuperuser {ADMIN}\n"));
    let out = Command::new(RINGKV)
        .args(["serve", "--port", "0", "--in-memory", "--api-token-file"])
        .arg(&path)
        .output()
        .expect("ringkv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("superuser"), "{err}");
    assert!(!err.contains(ADMIN) && !err.contains(READ), "{err}");
}

// ---- The cluster secret ----

/// `ringkv_cluster_rejections_total` of node `i`, by `channel/reason`.
async fn rejections(cluster: &Cluster, i: usize) -> BTreeMap<String, u64> {
    let text = cluster
        .http
        .get(format!("{}/metrics", cluster.url(i)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter_map(|l| l.strip_prefix("ringkv_cluster_rejections_total{channel=\""))
        .filter_map(|l| {
            let (channel, rest) = l.split_once("\",reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((format!("{channel}/{reason}"), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until node `i` counted at least `at_least` refusals `what`
/// (`channel/reason`).
async fn wait_rejected(cluster: &Cluster, i: usize, what: &str, at_least: u64) -> u64 {
    wait_for(
        &format!("{what} refusals on node {i}"),
        DEADLINE,
        || async {
            let count = rejections(cluster, i).await.get(what).copied().unwrap_or(0);
            (count >= at_least).then_some(count)
        },
    )
    .await
}

/// A cluster of `nodes` sharing a new secret `cluster.secret`; returns it
/// with the secret file's path.
async fn sealed(nodes: usize, extra: &[&str]) -> (Cluster, String) {
    let mut cluster = Cluster::empty(None);
    let secret = cluster.secret_file("cluster.secret");
    for i in 0..nodes {
        let mut flags = vec![
            "--replicas".to_string(),
            nodes.min(3).to_string(),
            "--cluster-secret-file".into(),
            secret.clone(),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        if i > 0 {
            flags.extend(["--join".to_string(), cluster.nodes[0].id.clone()]);
        }
        cluster.spawn(flags);
    }
    cluster.wait_converged().await;
    (cluster, secret)
}

/// Every member named in node `i`'s `/ring`.
async fn members_seen(cluster: &Cluster, i: usize) -> Vec<String> {
    let ring = cluster.ring(i).await.expect("ring");
    ring["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["node"].as_str().expect("node").to_string())
        .collect()
}

#[tokio::test]
async fn nodes_without_the_secret_are_never_heard() {
    let (mut cluster, _) = sealed(3, &[]).await;
    let seed = cluster.nodes[0].id.clone();
    let wrong = cluster.secret_file("wrong.secret");
    let outsider = cluster.spawn(vec![
        "--cluster-secret-file".into(),
        wrong,
        "--join".into(),
        seed.clone(),
    ]);
    let plain = cluster.spawn(vec!["--join".into(), seed.clone()]);
    // Their gossip reaches the seed and is refused, round after round.
    wait_rejected(&cluster, 0, "gossip/bad_key", 20).await;
    wait_rejected(&cluster, 0, "gossip/unsealed", 20).await;
    let (outsider_id, plain_id) = (
        cluster.nodes[outsider].id.clone(),
        cluster.nodes[plain].id.clone(),
    );
    for i in 0..3 {
        let seen = members_seen(&cluster, i).await;
        assert_eq!(seen.len(), 3, "node {i} sees {seen:?}");
        assert!(!seen.contains(&outsider_id) && !seen.contains(&plain_id));
    }
    // Neither heard the cluster either: each sees itself at most.
    for i in [outsider, plain] {
        let seen = members_seen(&cluster, i).await;
        assert!(seen.iter().all(|m| m == &cluster.nodes[i].id), "{seen:?}");
        let health = cluster
            .http
            .get(format!("{}/health", cluster.url(i)))
            .send()
            .await
            .expect("health");
        assert_eq!(
            health.status(),
            503,
            "a joiner that hears nobody is not ready"
        );
    }
    // The refusals are logged once a minute per peer, not per packet.
    let log = std::fs::read_to_string(cluster.dir.path().join("node0.log")).expect("log");
    let lines = log
        .lines()
        .filter(|l| l.contains("refused a node-to-node gossip packet"))
        .count();
    assert!((2..=4).contains(&lines), "{lines} log lines of refusals");
    // The cluster still works.
    let (ok, _, err) = cluster.cli(1, &["put", "still", "here"]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn replica_rpcs_need_the_secret() {
    use ringkv::proto::PingRequest;
    use ringkv::proto::replica_client::ReplicaClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cluster, secret) = sealed(1, &[]).await;
    let node = cluster.nodes[0].id.clone();

    // gRPC in clear on the public port: refused as unauthenticated.
    let mut client = ReplicaClient::connect(format!("http://{node}"))
        .await
        .expect("h2c connection");
    let status = client
        .ping(PingRequest {})
        .await
        .expect_err("a ping without the handshake");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    wait_rejected(&cluster, 0, "rpc/unsealed", 1).await;

    // A handshake with another secret: the node closes without a word.
    let wrong =
        ringkv::secret::Keys::from_text(ringkv::secret::generate_hex().expect("secret").as_bytes())
            .expect("keys");
    let tcp = tokio::net::TcpStream::connect(&node).await.expect("tcp");
    let err = ringkv::rpc::noise::connect(tcp, &wrong)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("another cluster secret"), "{err}");
    wait_rejected(&cluster, 0, "rpc/bad_key", 1).await;

    // A captured first message of a real handshake, played twice: the
    // node answers the first time (it is genuine) and refuses the replay.
    let keys = ringkv::secret::Keys::from_file(std::path::Path::new(&secret)).expect("keys");
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let capture = tokio::spawn(async move {
        let mut sent = vec![0u8; 4 + 1 + 2 + 72];
        b.read_exact(&mut sent).await.expect("first message");
        sent
    });
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        ringkv::rpc::noise::connect(a, &keys),
    )
    .await;
    let captured = capture.await.expect("captured");
    for replay in [false, true] {
        let mut tcp = tokio::net::TcpStream::connect(&node).await.expect("tcp");
        tcp.write_all(&captured).await.expect("send");
        if replay {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer)).await;
            assert!(answer.is_empty(), "a replayed handshake got an answer");
        } else {
            let mut answer = [0u8; 2 + 48];
            tokio::time::timeout(DEADLINE, tcp.read_exact(&mut answer))
                .await
                .expect("an answer in time")
                .expect("the genuine handshake's answer");
        }
    }
    wait_rejected(&cluster, 0, "rpc/replay", 1).await;

    // With the secret the same call works, as a peer makes it.
    let peers = ringkv::rpc::Peers::new(
        ringkv::rpc::RpcOptions {
            secrets: Some(std::sync::Arc::new(ringkv::secret::Secrets {
                current: keys,
                next: None,
            })),
            ..Default::default()
        },
        ringkv::metrics::Metrics::new(),
    );
    let node_id = ringkv::ring::NodeId::parse(&node).expect("id");
    let reply = peers
        .client(&node_id)
        .expect("client")
        .ping(PingRequest {})
        .await
        .expect("a ping through the Noise session");
    assert_eq!(reply.into_inner().node, node);
}

#[tokio::test]
async fn a_replayed_gossip_packet_is_dropped() {
    let (mut cluster, secret) = sealed(1, &[]).await;
    // A node of the cluster gossiping to a socket of this test: its packets
    // are captured there.
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let trap_addr = trap.local_addr().expect("addr").to_string();
    cluster.spawn(vec![
        "--cluster-secret-file".into(),
        secret,
        "--join".into(),
        trap_addr,
    ]);
    let mut packet = vec![0u8; 65_536];
    let len = tokio::time::timeout(DEADLINE, trap.recv(&mut packet))
        .await
        .expect("a gossip packet in time")
        .expect("recv");
    packet.truncate(len);
    assert!(packet.starts_with(b"RKG1"), "sealed");
    assert!(
        !String::from_utf8_lossy(&packet).contains("127.0.0.1"),
        "gossip is encrypted: no address readable"
    );
    let before = rejections(&cluster, 0).await;
    let target = &cluster.nodes[0].id;
    // Delivered once: a genuine packet. Again: a replay.
    for _ in 0..3 {
        trap.send_to(&packet, target).await.expect("send");
    }
    let count = wait_rejected(&cluster, 0, "gossip/replay", before["gossip/replay"] + 2).await;
    assert_eq!(count, before["gossip/replay"] + 2);
    // Changed in one byte: refused as sealed with another key.
    let last = packet.len() - 1;
    packet[last] ^= 0x01;
    trap.send_to(&packet, target).await.expect("send");
    wait_rejected(&cluster, 0, "gossip/bad_key", before["gossip/bad_key"] + 1).await;
}

#[tokio::test]
async fn beyond_loopback_a_node_needs_a_secret() {
    let out = Command::new(RINGKV)
        .args(["serve", "--bind", "0.0.0.0", "--port", "0", "--in-memory"])
        .output()
        .expect("ringkv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a cluster secret") && err.contains("--cluster-secret-file"),
        "{err}"
    );
    // On loopback it starts, with a warning.
    let mut cluster = Cluster::empty(None);
    cluster.spawn(vec![]);
    cluster.wait_ready(0).await;
    let log = std::fs::read_to_string(cluster.dir.path().join("node0.log")).expect("log");
    assert!(log.contains("no cluster secret"), "{log}");
    // A secret too short, or two sources at once, is refused.
    let dir = tempfile::tempdir().expect("dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "0123456789abcdef").expect("write");
    let out = Command::new(RINGKV)
        .args([
            "serve",
            "--port",
            "0",
            "--in-memory",
            "--cluster-secret-file",
        ])
        .arg(&short)
        .output()
        .expect("ringkv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32"), "{err}");
    assert!(
        !err.contains("0123456789abcdef"),
        "the secret is not printed: {err}"
    );
    let out = Command::new(RINGKV)
        .args([
            "serve",
            "--port",
            "0",
            "--in-memory",
            "--cluster-secret-file",
        ])
        .arg(&short)
        .env("RINGKV_CLUSTER_SECRET", "x".repeat(40))
        .output()
        .expect("ringkv");
    assert!(String::from_utf8_lossy(&out.stderr).contains("once"));
}

#[tokio::test]
async fn the_secret_rotates_with_rolling_restarts() {
    let (mut cluster, old) = sealed(3, &["--on-signal", "stop"]).await;
    let new = cluster.secret_file("new.secret");
    let (ok, _, err) = cluster.cli(0, &["put", "before", "rotation"]);
    assert!(ok, "{err}");
    // A writer going on through the rotation, failing over between nodes.
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = ringkv::client::Client::with_options(
            nodes.clone(),
            ringkv::client::ClientOptions {
                retries: 6,
                ..Default::default()
            },
        )
        .expect("client");
        tokio::spawn(async move {
            let (mut written, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("during/{written}");
                let value = ringkv::client::Upload::Bytes(bytes::Bytes::from(key.clone()));
                match client.put(&key, value, None, None).await {
                    Ok(_) => written += 1,
                    Err(err) => failed.push(err.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (written, failed)
        })
    };
    // Three rolling restarts: accept the new secret too; send with it,
    // still accepting the old; the new one alone.
    let phases: [Vec<String>; 3] = [
        vec![
            "--cluster-secret-file".into(),
            old.clone(),
            "--cluster-secret-file-next".into(),
            new.clone(),
        ],
        vec![
            "--cluster-secret-file".into(),
            new.clone(),
            "--cluster-secret-file-next".into(),
            old.clone(),
        ],
        vec!["--cluster-secret-file".into(), new.clone()],
    ];
    for phase in &phases {
        for i in 0..3 {
            cluster.terminate(i);
            let flags = &mut cluster.nodes[i].flags;
            let at = flags
                .iter()
                .position(|f| f == "--cluster-secret-file")
                .expect("secret flag");
            flags.drain(at..at + 2);
            if let Some(at) = flags.iter().position(|f| f == "--cluster-secret-file-next") {
                flags.drain(at..at + 2);
            }
            flags.extend(phase.iter().cloned());
            cluster.restart(i);
            cluster.wait_converged().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failed) = writer.await.expect("writer");
    assert!(
        failed.is_empty(),
        "writes failed during the rotation: {failed:?}"
    );
    assert!(written > 20, "only {written} writes during the rotation");
    for i in 0..3 {
        let (ok, out, err) = cluster.cli(i, &["get", "before"]);
        assert!(ok && out == "rotation", "{err}");
        let (ok, out, err) = cluster.cli(i, &["get", &format!("during/{}", written - 1)]);
        assert!(ok && out == format!("during/{}", written - 1), "{err}");
    }
    // The old secret no longer gets in.
    let seed = cluster.nodes[0].id.clone();
    let stale = cluster.spawn(vec![
        "--cluster-secret-file".into(),
        old,
        "--join".into(),
        seed,
    ]);
    wait_rejected(&cluster, 0, "gossip/bad_key", 10).await;
    let stale_id = cluster.nodes[stale].id.clone();
    assert!(!members_seen(&cluster, 0).await.contains(&stale_id));
}

// ---- TLS on the public port ----

/// Writes a throwaway CA and a certificate for 127.0.0.1 signed by it
/// (rcgen) into `dir`: (ca, cert chain, key) paths.
fn certificates(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, cert, key) = ringkv::tls::demo_certificates(&["127.0.0.1".into(), "localhost".into()])
        .expect("certificates");
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-cert.pem")),
        dir.join(format!("{tag}-key.pem")),
    );
    std::fs::write(&paths.0, &ca).expect("ca");
    std::fs::write(&paths.1, format!("{cert}{ca}")).expect("cert");
    std::fs::write(&paths.2, key).expect("key");
    paths
}

#[tokio::test]
async fn tls_with_curl_and_the_cli() {
    let mut cluster = Cluster::empty(None);
    let secret = cluster.secret_file("cluster.secret");
    let (ca, cert, key) = certificates(cluster.dir.path(), "first");
    for i in 0..3 {
        let mut flags: Vec<String> = vec![
            "--cluster-secret-file".into(),
            secret.clone(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        if i > 0 {
            flags.extend(["--join".to_string(), cluster.nodes[0].id.clone()]);
        }
        cluster.spawn(flags);
    }
    ringkv::tls::install_provider();
    let pem = std::fs::read(&ca).expect("ca");
    let https = ringkv::tls::http_client_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
        .build()
        .expect("client");
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.id))
        .collect();
    common::wait_converged(&https, &urls, 3).await;
    let node = cluster.nodes[0].id.clone();
    let cacert = ca.display().to_string();

    // curl over TLS, HTTP/2 by ALPN (and HTTP/1.1 when asked).
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                flag,
            ])
            .args(["--cacert", &cacert, &format!("https://{node}/ring")])
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}")
        );
    }
    let (status, _, body) = curl(&[
        "--cacert",
        &cacert,
        "-X",
        "PUT",
        "--data-binary",
        "over tls",
        &format!("https://{node}/keys/tls-key"),
    ]);
    assert_eq!(status, 201, "{body}");
    // Without the CA, curl refuses the certificate.
    let out = Command::new("curl")
        .args(["-s", &format!("https://{node}/ring")])
        .output()
        .expect("curl");
    assert_eq!(out.status.code(), Some(60), "curl: certificate not trusted");
    // Plain HTTP to the TLS port: a clear 400, at once.
    let started = std::time::Instant::now();
    let (status, _, body) = curl(&[&format!("http://{node}/ring")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("use https://"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // The CLI with --ca, on another node; without it the system's roots
    // do not know this CA.
    let cli = |args: &[&str]| {
        let out = Command::new(RINGKV)
            .args(["--node", &cluster.nodes[2].id])
            .args(args)
            .output()
            .expect("ringkv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["--ca", &cacert, "get", "tls-key"]);
    assert!(ok, "{err}");
    assert_eq!(out, "over tls");
    let (ok, _, err) = cli(&["--ca", &cacert, "put", "cli-tls", "yes"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["--tls", "--retries", "0", "get", "tls-key"]);
    assert!(!ok, "the demo CA is not a system root");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A new certificate from another CA, read on SIGHUP.
    let (new_ca, new_cert, new_key) = certificates(cluster.dir.path(), "second");
    std::fs::copy(&new_cert, &cert).expect("cert");
    std::fs::copy(&new_key, &key).expect("key");
    cluster.signal(0, libc::SIGHUP);
    let new_cacert = new_ca.display().to_string();
    wait_for("the new certificate to be served", DEADLINE, || async {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--cacert", &new_cacert, &format!("https://{node}/health")])
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_bench_sends_the_clis_token() {
    let cluster = guarded(1).await;
    let out = Command::new(RINGKV)
        .env_remove("RINGKV_TOKEN")
        .args(["--node", &cluster.nodes[0].id, "--token", ADMIN])
        .args(["bench", "--json", "--duration", "1s", "--keys", "20"])
        .args(["--concurrency", "2", "--get-ratio", "0.5"])
        .output()
        .expect("ringkv bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout).expect("bench json");
    assert!(!rows.is_empty(), "{stdout}");
    for row in &rows {
        assert_eq!(row["errors"], 0, "{row}");
        assert!(row["count"].as_u64().unwrap_or(0) > 0, "{row}");
    }
}
