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
    let http = reqwest::Client::new();
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
    let http = reqwest::Client::new();
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
async fn the_cli_takes_a_token_and_purge_all_passes_it_on() {
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

    // Purge on every member: the node asks the others with the caller's token.
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
    let http = reqwest::Client::new();
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
