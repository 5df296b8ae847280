//! The `ringkv` command line against real nodes: MyDHT-compatible output,
//! `--json`, fail-over between nodes, `ringkv cluster`, and a joiner whose
//! seeds are down.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, Options, RINGKV, ringkv_cli as ringkv, wait_converged};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn client_commands_print_what_mydht_printed() {
    let cluster = Cluster::start(Options::default()).await;
    let node = cluster.nodes[0].id.clone();
    let (ok, out, err) = ringkv(&node, &["put", "my key", "my value"]);
    assert!(ok, "{err}");
    assert_eq!(out, "PUT OK my key\n");
    let (ok, out, _) = ringkv(&cluster.nodes[1].id, &["get", "my key"]);
    assert!(ok);
    assert_eq!(out, "my value");

    // A file, stdin, and -o.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.bin");
    let data = common::bytes(5, 2_500_000);
    std::fs::write(&file, &data).unwrap();
    let (ok, out, err) = ringkv(
        &node,
        &["put", "files/in.bin", "-f", file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "PUT OK files/in.bin\n");
    let copy = dir.path().join("out.bin");
    let (ok, _, err) = ringkv(
        &cluster.nodes[2].id,
        &["get", "files/in.bin", "-o", copy.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), data);
    let mut child = Command::new(RINGKV)
        .args(["--node", &node, "put", "from-stdin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped bytes")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(ringkv(&node, &["get", "from-stdin"]).1, "piped bytes");

    // haskey prints the timestamp, whereis a comma-separated list.
    let (_, json, _) = ringkv(&node, &["--json", "put", "k", "v", "-w", "all"]);
    let put: Value = serde_json::from_str(&json).unwrap();
    let replicas: Vec<String> = serde_json::from_value(put["replicas"].clone()).unwrap();
    let (ok, out, _) = ringkv(&replicas[0], &["haskey", "k"]);
    assert!(ok);
    assert_eq!(out.trim(), put["timestamp"].to_string());
    assert_eq!(ringkv(&node, &["haskey", "absent"]).1.trim(), "0");
    assert_eq!(
        ringkv(&node, &["whereis", "k"]).1.trim(),
        replicas.join(",")
    );
    let (ok, out, _) = ringkv(&node, &["ring"]);
    assert!(ok && out.contains("normal") && out.contains(&node), "{out}");
    let (ok, out, _) = ringkv(&replicas[0], &["keys", "--prefix", "files/"]);
    assert!(ok);
    assert_eq!(out, "files/in.bin\n");

    // del, then get fails with a clear message and exit code 1.
    assert_eq!(ringkv(&node, &["del", "k"]).1, "DEL OK k\n");
    let (ok, _, err) = ringkv(&node, &["get", "k"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    // Fail-over: the first node listed is down, the second answers.
    let dead = "127.0.0.1:1";
    let (ok, out, err) = ringkv(&format!("{dead},{node}"), &["get", "my key"]);
    assert!(ok, "{err}");
    assert_eq!(out, "my value");
    // Only dead nodes: a clear error, non-zero exit.
    let (ok, _, err) = ringkv(dead, &["get", "my key"]);
    assert!(!ok);
    assert!(err.contains("error"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_seeds_are_down_keeps_trying_and_founds_nothing() {
    let mut cluster = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    let seed = cluster.nodes[0].id.clone();
    cluster.kill(0);
    let joiner = cluster.spawn(vec!["--join".into(), seed.clone()]);
    let url = cluster.url(joiner);
    // While the seed is down the joiner is not ready and refuses requests.
    for _ in 0..10 {
        let health = cluster
            .http
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 503);
        let put = cluster
            .http
            .put(format!("{url}/keys/x"))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 503);
        let ring = cluster.ring(joiner).await.unwrap();
        assert!(ring["members"].as_array().unwrap().is_empty(), "{ring}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The seed comes back: the joiner joins its cluster.
    cluster.restart(0);
    cluster.wait_converged().await;
    let put = cluster
        .http
        .put(format!("{url}/keys/x"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn ringkv_cluster_runs_a_working_cluster_until_stopped() {
    let base = common::ports::reserve(3);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(RINGKV)
        .args(["cluster", "--nodes", "3", "--base-port", &base.to_string()])
        .arg("--data-root")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for i in 0..3u16 {
        // `node N http://HOST:PORT/  redis HOST:PORT+1000`
        let line = lines.next().unwrap().unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        urls.push(words[2].trim_end_matches('/').to_string());
        assert_eq!(
            words.last().copied(),
            Some(format!("127.0.0.1:{}", base + 1000 + i).as_str()),
            "{line}"
        );
    }
    assert_eq!(urls[0], format!("http://127.0.0.1:{base}"));
    let http = ringkv::tls::http_client();
    wait_converged(&http, &urls, 3).await;
    let put = http
        .put(format!("{}/keys/hello", urls[0]))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let got = http
        .get(format!("{}/keys/hello", urls[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "world");
    // SIGTERM stops every node, and the data dirs hold the data.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    for i in 0..3 {
        assert!(
            dir.path()
                .join(format!("node-{}", base + i))
                .join("node.json")
                .exists()
        );
    }
    for i in 0..3 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok(),
            "node {i} still listening"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_command_prints_json_with_json_errors_included() {
    let cluster = Cluster::start(Options::default()).await;
    let node = cluster.nodes[0].id.clone();
    let json = |args: &[&str]| -> (bool, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = ringkv(&node, &all);
        let value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?} {err}"));
        (ok, value)
    };
    let (ok, put) = json(&["put", "j/k", "v1", "-w", "all"]);
    assert!(ok);
    assert_eq!(put["key"], "j/k");
    let timestamp = put["timestamp"].as_u64().unwrap();
    let (ok, got) = json(&["get", "j/k"]);
    assert!(ok);
    assert_eq!(
        (got["value"].as_str(), got["size"].as_u64()),
        (Some("v1"), Some(2))
    );
    assert_eq!(got["timestamp"].as_u64(), Some(timestamp));
    let (ok, has) = json(&["haskey", "j/k"]);
    assert!(ok);
    assert_eq!(has["timestamp"].as_u64(), Some(timestamp));
    let (ok, where_) = json(&["whereis", "j/k"]);
    assert!(ok);
    assert_eq!(where_.as_array().map(Vec::len), Some(3));
    let (ok, ring) = json(&["ring"]);
    assert!(ok);
    assert_eq!(ring["members"].as_array().map(Vec::len), Some(3));
    let (ok, keys) = json(&["keys", "--prefix", "j/"]);
    assert!(ok);
    assert_eq!(keys[0]["key"], "j/k");
    let (ok, del) = json(&["del", "j/k", "-w", "all"]);
    assert!(ok);
    assert_eq!(del["deleted"], true);
    // Errors: a JSON object on stdout, non-zero exit.
    let (ok, missing) = json(&["get", "j/k"]);
    assert!(!ok);
    assert_eq!(missing["code"], "not_found", "{missing}");
    assert!(missing["error"].as_str().unwrap().contains("j/k"));
    let (ok, bad) = json(&["put", "q", "v", "-w", "7"]);
    assert!(!ok);
    assert_eq!(
        (bad["code"].as_str(), bad["status"].as_u64()),
        (Some("invalid_input"), Some(400)),
        "{bad}"
    );
    let (ok, out, _) = ringkv("127.0.0.1:1", &["--json", "--retries", "0", "ring"]);
    assert!(!ok);
    let down: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(down["code"], "unreachable");
    assert!(
        down["error"]
            .as_str()
            .unwrap()
            .contains("is the node running? Start one with `ringkv serve`"),
        "{down}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_to_do() {
    let mut cluster = Cluster::start(Options::default()).await;
    let node = cluster.nodes[0].id.clone();
    // Nothing listening: which node, why, and how to fix it.
    let (ok, _, err) = ringkv("127.0.0.1:1", &["--retries", "1", "get", "x"]);
    assert!(!ok);
    assert!(
        err.starts_with(
            "error: cannot reach 127.0.0.1:1 (connection refused): is the node running?"
        ),
        "{err}"
    );
    assert!(err.contains("--node host:port or RINGKV_NODE"), "{err}");
    // Two of three replicas down: the quorum is not met, and the message
    // names the flag that lowers it.
    cluster.kill(1);
    cluster.kill(2);
    let (ok, _, err) = ringkv(&node, &["--retries", "0", "put", "k", "v"]);
    assert!(!ok);
    assert!(err.contains("only 1 of 2 replicas answered"), "{err}");
    assert!(
        err.contains("wait for the down nodes to come back"),
        "{err}"
    );
    assert!(err.contains("-w 1"), "{err}");
    let (ok, out, err) = ringkv(&node, &["put", "k", "v", "-w", "1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "PUT OK k\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_learns_the_members_and_survives_its_node_going_down() {
    let mut cluster = Cluster::start(Options::default()).await;
    let (a, b) = (cluster.nodes[0].id.clone(), cluster.nodes[1].id.clone());
    let (ok, _, err) = ringkv(&a, &["put", "learnt", "value", "-w", "all"]);
    assert!(ok, "{err}");
    // `--node DEAD,LIVE`: the dead one is skipped.
    let (ok, out, err) = ringkv(&format!("127.0.0.1:1,{b}"), &["get", "learnt"]);
    assert!(ok, "{err}");
    assert_eq!(out, "value");

    // Given only A, the client learns B and C from A's /ring …
    let client = ringkv::client::Client::with_options(
        vec![a.clone()],
        ringkv::client::ClientOptions {
            retries: 2,
            discover: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        client.get_bytes("learnt").await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    let mut learnt = client.learnt();
    learnt.sort();
    let mut others = vec![b.clone(), cluster.nodes[2].id.clone()];
    others.sort();
    assert_eq!(learnt, others);
    // … and keeps working once A is gone.
    cluster.kill(0);
    assert_eq!(
        client.get_bytes("learnt").await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    let reply = client
        .put(
            "after",
            ringkv::client::Upload::Bytes("x".into()),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(!reply.stored_on.contains(&a));
    // Node-specific questions do not move to another node.
    assert!(client.haskey("learnt").await.is_err());
}

#[test]
fn cluster_print_shows_commands_to_paste() {
    let exe = std::fs::canonicalize(RINGKV).unwrap();
    let exe = exe.to_str().unwrap();
    let out = Command::new(RINGKV)
        .args(["cluster", "--print", "--nodes", "3", "--base-port", "50140"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        commands,
        vec![
            format!(
                "{exe} serve --host 127.0.0.1 --port 50140 --replicas 3 --resp-port 51140 --data-dir ringkv-data/node-50140 --on-signal stop"
            ),
            format!(
                "{exe} serve --host 127.0.0.1 --port 50141 --replicas 3 --resp-port 51141 --data-dir ringkv-data/node-50141 --on-signal stop --join 127.0.0.1:50140"
            ),
            format!(
                "{exe} serve --host 127.0.0.1 --port 50142 --replicas 3 --resp-port 51142 --data-dir ringkv-data/node-50142 --on-signal stop --join 127.0.0.1:50140"
            ),
        ]
    );
    let out = Command::new(RINGKV)
        .args([
            "cluster",
            "--print",
            "--hosts",
            "db1,db2,10.0.0.3",
            "--replicas",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "# one node per host: start db1:50140 first, then the others\n\
         # first: `ringkv secret > ringkv-data/cluster.secret` and copy that file to every host\n\
         # on db1\n\
         ringkv serve --host db1 --port 50140 --replicas 2 --resp-port 51140 --data-dir ringkv-data/node-50140 --cluster-secret-file ringkv-data/cluster.secret\n\
         # on db2\n\
         ringkv serve --host db2 --port 50140 --replicas 2 --resp-port 51140 --data-dir ringkv-data/node-50140 --cluster-secret-file ringkv-data/cluster.secret --join db1:50140\n\
         # on 10.0.0.3\n\
         ringkv serve --host 10.0.0.3 --port 50140 --replicas 2 --resp-port 51140 --data-dir ringkv-data/node-50140 --cluster-secret-file ringkv-data/cluster.secret --join db1:50140\n"
    );
    // --hosts is for printing only.
    let out = Command::new(RINGKV)
        .args(["cluster", "--hosts", "a,b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn printed_cluster_commands_run_a_cluster() {
    let base = common::ports::reserve(2);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(RINGKV)
        .args(["cluster", "--print", "--nodes", "2", "--replicas", "2"])
        .args(["--base-port", &base.to_string()])
        .arg("--data-root")
        .arg(dir.path().join("data root"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // Pasted into a shell, as they are.
        let child = Command::new("sh")
            .args(["-c", &format!("exec {line}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.push(KillOnDrop(child));
    }
    let urls: Vec<String> = (0..2)
        .map(|i| format!("http://127.0.0.1:{}", base + i))
        .collect();
    wait_converged(&ringkv::tls::http_client(), &urls, 2).await;
    assert!(
        dir.path()
            .join("data root")
            .join(format!("node-{base}"))
            .join("node.json")
            .exists()
    );
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_name_the_peer_of_each_membership_change() {
    // The founder logs text, the joiner JSON lines (--log-format json).
    let mut cluster = Cluster::start(Options {
        nodes: 1,
        replicas: 1,
        ..Options::default()
    })
    .await;
    let joiner = cluster.spawn(vec![
        "--join".into(),
        cluster.nodes[0].id.clone(),
        "--log-format".into(),
        "json".into(),
    ]);
    cluster.wait_converged().await;
    let (founder_id, joiner_id) = (
        cluster.nodes[0].id.clone(),
        cluster.nodes[joiner].id.clone(),
    );
    let logs = cluster.dir.path().to_path_buf();
    let log =
        |i: usize| std::fs::read_to_string(logs.join(format!("node{i}.log"))).unwrap_or_default();
    let text = log(0);
    assert!(
        text.lines()
            .any(|l| l.contains(" member ") && l.contains(&format!("peer={joiner_id}"))),
        "{text}"
    );
    cluster.kill(0);
    common::wait_for(
        "the joiner to log the founder down",
        common::DEADLINE,
        || async {
            log(joiner).lines().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                let fields = &entry["fields"];
                (fields["message"].as_str()?.starts_with("member down")
                    && fields["peer"] == founder_id.as_str())
                .then_some(())
            })
        },
    )
    .await;
}

#[test]
fn serve_prints_its_address_as_json_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(RINGKV)
            .args(["--json", "serve", "--port", "0", "--in-memory"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(
        first["listening"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{first}"
    );
}
