//! The deployment files in `contrib/`, checked as far as this machine
//! allows: the systemd unit with `systemd-analyze`, the container image
//! built and run as a 3-node cluster with podman.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{DEADLINE, RINGKV, wait_converged, wait_for};

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit with `ExecStart` pointing at the binary under test (verify
/// checks that it exists).
fn unit_under_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(contrib("systemd/ringkv.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ringkv serve --config /etc/ringkv/ringkv.toml")
    );
    let path = dir.join("ringkv.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ringkv", RINGKV)).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let unit = unit.to_str().unwrap();
    let verify = run("systemd-analyze", &["verify", unit]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).trim().is_empty(), "{}", text(&verify));
    // Exposure as systemd rates it: 0 (locked down) to 10 (none).
    let security = run("systemd-analyze", &["security", "--offline=yes", unit]);
    let report = text(&security);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ringkv.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{report}"));
    assert!(level <= 2.0, "exposure {level}:\n{report}");
    let settings = std::fs::read_to_string(contrib("systemd/ringkv.service")).unwrap();
    for line in [
        "User=ringkv",
        "ProtectSystem=strict",
        "StateDirectory=ringkv",
        "LimitNOFILE=65536",
        "KillSignal=SIGTERM",
    ] {
        assert!(settings.lines().any(|l| l == line), "{line} missing");
    }
    // Long enough for a leave to hand the node's ranges over.
    assert!(settings.lines().any(|l| l == "TimeoutStopSec=30min"));
    // The configuration file it reads is valid, and its data dir is the
    // unit's state directory.
    let config = contrib("systemd/ringkv.toml");
    let check = run(RINGKV, &["config", "check", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let config = std::fs::read_to_string(&config).unwrap();
    assert!(config.contains("data_dir = \"/var/lib/ringkv\""));
}

/// podman with the flags this environment needs to run a container: the
/// defaults, or runc with cgroupfs and limits no higher than ours (a
/// container here may not raise RLIMIT_NOFILE or RLIMIT_NPROC, and crun
/// refuses hybrid cgroups). Panics, saying why, if neither runs.
fn podman_flags(image: &str) -> (Vec<String>, Vec<String>) {
    let attempts: [(&[&str], &[&str]); 2] = [
        (&[], &[]),
        (
            &["--runtime", "runc", "--cgroup-manager", "cgroupfs"],
            &[
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (global, run_flags) in attempts {
        let mut args: Vec<&str> = global.to_vec();
        args.extend(["run", "--rm"]);
        args.extend(run_flags);
        args.extend([image, "--version"]);
        let out = run("podman", &args);
        if out.status.success() && text(&out).contains("ringkv") {
            let own = |flags: &[&str]| flags.iter().map(|s| s.to_string()).collect();
            return (own(global), own(run_flags));
        }
        failures.push(format!("podman {}: {}", args.join(" "), text(&out).trim()));
    }
    panic!(
        "podman cannot run containers in this environment:\n{}",
        failures.join("\n")
    );
}

/// Containers and the image of one test, removed on drop.
struct Podman {
    global: Vec<String>,
    run_flags: Vec<String>,
    image: String,
    containers: Vec<String>,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend(args);
        run("podman", &all)
    }

    /// Starts a node container on the host's network; returns its port.
    async fn start_node(&mut self, name: &str, join: Option<&str>) -> u16 {
        let mut args = vec!["run", "-d", "--name", name, "--network", "host"];
        args.extend(self.run_flags.iter().map(String::as_str));
        args.extend([
            self.image.as_str(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]);
        args.extend(["--data-dir", "/data", "--replicas", "2"]);
        if let Some(seed) = join {
            args.extend(["--join", seed]);
        }
        let out = self.cmd(&args);
        assert!(out.status.success(), "{}", text(&out));
        self.containers.push(name.to_string());
        let what = format!("container {name} to listen");
        wait_for(&what, DEADLINE, || async {
            let logs = text(&self.cmd(&["logs", name]));
            logs.lines()
                .find_map(|l| l.strip_prefix("listening on http://127.0.0.1:"))
                .and_then(|p| p.trim().parse().ok())
        })
        .await
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.cmd(&["rm", "-f", "-t", "0", name]);
        }
        let _ = self.cmd(&["rmi", "-f", &self.image]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_container_image_runs_a_three_node_cluster() {
    let tag = format!("localhost/ringkv-test:{}", std::process::id());
    let build = run(
        contrib("container/build.sh").to_str().unwrap(),
        &[RINGKV, &tag],
    );
    assert!(build.status.success(), "{}", text(&build));
    let (global, run_flags) = podman_flags(&tag);
    let mut podman = Podman {
        global,
        run_flags,
        image: tag,
        containers: Vec::new(),
    };
    // The image holds the binary and its libraries and nothing else.
    let history = podman.cmd(&[
        "image",
        "inspect",
        "--format",
        "{{.User}} {{.Config.Entrypoint}}",
        &podman.image,
    ]);
    assert!(text(&history).contains("65532:65532"), "{}", text(&history));
    let pid = std::process::id();
    let names: Vec<String> = (0..3).map(|i| format!("ringkv-test-{pid}-{i}")).collect();
    let first = podman.start_node(&names[0], None).await;
    let seed = format!("127.0.0.1:{first}");
    let mut ports = vec![first];
    for name in &names[1..] {
        ports.push(podman.start_node(name, Some(&seed)).await);
    }
    let http = ringkv::tls::http_client();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    wait_converged(&http, &urls, 3).await;
    // A value written through one container is read through another, from
    // the data volume (N = 2, so that one may leave).
    let put = http
        .put(format!("{}/keys/from-a-container", urls[0]))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let got = http
        .get(format!("{}/keys/from-a-container", urls[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "hello");
    // `podman stop` sends SIGTERM: the node leaves, exits 0, and the
    // others hold its data.
    let stop = podman.cmd(&["stop", "-t", "60", &names[1]]);
    assert!(stop.status.success(), "{}", text(&stop));
    let code = podman.cmd(&["inspect", "--format", "{{.State.ExitCode}}", &names[1]]);
    assert_eq!(
        text(&code).trim(),
        "0",
        "{}",
        text(&podman.cmd(&["logs", &names[1]]))
    );
    let left = format!("127.0.0.1:{}", ports[1]);
    wait_for("the others to see it removed", DEADLINE, || async {
        for url in [&urls[0], &urls[2]] {
            let ring: serde_json::Value = http
                .get(format!("{url}/ring"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let members = ring["members"].as_array()?;
            let state = members.iter().find(|m| m["node"] == left.as_str())?;
            if state["state"] != "removed" {
                return None;
            }
        }
        Some(())
    })
    .await;
    for url in [&urls[0], &urls[2]] {
        let got = http
            .get(format!("{url}/keys/from-a-container"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(got.text().await.unwrap(), "hello");
    }
}

/// The YAML documents of `path`, as JSON (PyYAML, installed by
/// scripts/test.sh).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)";
    let out = run("python3", &["-c", script, path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kills the process on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_manifest_is_consistent_with_the_binary() {
    let docs = yaml_documents(&contrib("kubernetes/ringkv.yaml"));
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let headless = of_kind("Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let protocols: Vec<&str> = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert!(protocols.contains(&"TCP") && protocols.contains(&"UDP"));
    let set = of_kind("StatefulSet")[0];
    assert_eq!(set["spec"]["serviceName"], headless["metadata"]["name"]);
    let pdb = of_kind("PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let pod = &set["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= 600, "{grace} s is too short for a leave");
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/health/live"
    );
    // The pod's arguments and the ConfigMap's file, run by the binary
    // under test on loopback: the pod's name resolves to 127.0.0.1 and the
    // founder's name is this node, which must found the cluster (a node is
    // not its own seed).
    let config = of_kind("ConfigMap")[0]["data"]["ringkv.toml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("join = [\"ringkv-0.ringkv:50140\"]"),
        "{config}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = common::ports::reserve(1);
    let config = config
        .replace("ringkv-0.ringkv:50140", &format!("127.0.0.1:{port}"))
        .replace("port = 50140", &format!("port = {port}"))
        .replace("\"/data\"", &format!("{:?}", dir.path().join("data")));
    // The tokens come from the Secret, mounted where the file says.
    let secret = of_kind("Secret")[0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "secret")
        .expect("the secret mount");
    let tokens_in_pod = format!("{}/api-tokens", mount["mountPath"].as_str().unwrap());
    assert!(
        config.contains(&format!("api_token_file = \"{tokens_in_pod}\"")),
        "{config}"
    );
    assert!(secret["stringData"]["api-tokens"].is_string());
    let token = "0123456789abcdef0123456789abcdef";
    let tokens = dir.path().join("api-tokens");
    std::fs::write(&tokens, format!("admin {token}\n")).unwrap();
    let config = config.replace(&tokens_in_pod, tokens.to_str().unwrap());
    // It binds beyond loopback: it needs the cluster secret, from there too.
    let secret_in_pod = format!("{}/cluster-secret", mount["mountPath"].as_str().unwrap());
    assert!(
        config.contains(&format!("cluster_secret_file = \"{secret_in_pod}\"")),
        "{config}"
    );
    assert!(secret["stringData"]["cluster-secret"].is_string());
    let cluster_secret = dir.path().join("cluster-secret");
    std::fs::write(&cluster_secret, "ab".repeat(32)).unwrap();
    let config = config.replace(&secret_in_pod, cluster_secret.to_str().unwrap());
    let config_path = dir.path().join("ringkv.toml");
    std::fs::write(&config_path, &config).unwrap();
    let check = run(RINGKV, &["config", "check", config_path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let mounted = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config mount");
    let in_pod = format!("{}/ringkv.toml", mounted["mountPath"].as_str().unwrap());
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a == in_pod {
                config_path.to_str().unwrap().to_string()
            } else {
                a.replace("$(POD_NAME).ringkv", "127.0.0.1")
            }
        })
        .collect();
    assert_eq!(args[0], "serve");
    let _node = Killed(
        Command::new(RINGKV)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = ringkv::tls::http_client();
    for probe in ["/health/live", "/health"] {
        let url = format!("http://127.0.0.1:{port}{probe}");
        wait_for(&format!("{probe} to answer 200"), DEADLINE, || async {
            let status = http.get(&url).send().await.ok()?.status();
            (status == 200).then_some(())
        })
        .await;
    }
    let ring = format!("http://127.0.0.1:{port}/ring");
    assert_eq!(http.get(&ring).send().await.unwrap().status(), 401);
    let ring: serde_json::Value = http
        .get(&ring)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ring["nodes"],
        serde_json::json!([format!("127.0.0.1:{port}")])
    );
}

/// The `ringkv_…` names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ringkv_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_uses_is_in_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana/ringkv.json")).unwrap())
            .unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    let used = metric_names(&exprs.join("\n"));
    // What the issue asks the dashboard to show.
    for needed in [
        "ringkv_http_requests_total",
        "ringkv_http_request_duration_seconds_bucket",
        "ringkv_quorum_failures_total",
        "ringkv_hints_pending",
        "ringkv_repair_ranges_done",
        "ringkv_transfer_sources_done",
        "ringkv_scrub_bytes",
        "ringkv_bytes_stored",
        "ringkv_disk_free_bytes",
        "ringkv_http_bytes_total",
        "ringkv_resp_commands_total",
        "ringkv_resp_command_duration_seconds_bucket",
        "ringkv_resp_bytes_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }
    let cluster = common::Cluster::start(common::Options {
        nodes: 1,
        replicas: 1,
        ..common::Options::default()
    })
    .await;
    let put = cluster
        .http
        .put(format!("{}/keys/k", cluster.url(0)))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let scraped = cluster
        .http
        .get(format!("{}/metrics", cluster.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples: String = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let exposed = metric_names(&samples);
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_print_writes_a_config_file_per_host_that_runs() {
    // Three "hosts" on one machine: 127.0.0.1 to .3 are all loopback.
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let port = common::ports::reserve(1);
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    let out = run(
        RINGKV,
        &[
            "cluster",
            "--print",
            "--hosts",
            &hosts.join(","),
            "--base-port",
            &port.to_string(),
            "--config-dir",
            configs.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        printed.contains("cluster.secret /etc/ringkv/cluster.secret"),
        "says where the secret goes: {printed}"
    );
    let secret = dir.path().join("cluster.secret");
    let made = run(RINGKV, &["secret"]);
    assert!(made.status.success(), "{}", text(&made));
    std::fs::write(&secret, &made.stdout).unwrap();
    assert!(printed.contains("/etc/ringkv/api-tokens"), "{printed}");
    let token = "deploy-admin-token-0123456789";
    let tokens = dir.path().join("api-tokens");
    std::fs::write(&tokens, format!("admin {token}\n")).unwrap();
    let mut nodes = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let file = configs.join(format!("{host}.toml"));
        assert!(
            printed.contains(&format!(
                "# on {host}\ninstall -D -m 0640 -g ringkv {}",
                file.display()
            )),
            "{printed}"
        );
        let check = run(RINGKV, &["config", "check", file.to_str().unwrap()]);
        assert!(check.status.success(), "{}", text(&check));
        let content = std::fs::read_to_string(&file).unwrap();
        assert!(
            content.contains("data_dir = \"/var/lib/ringkv\"")
                && content.contains("cluster_secret_file = \"/etc/ringkv/cluster.secret\"")
                && content.contains("api_token_file = \"/etc/ringkv/api-tokens\""),
            "{content}"
        );
        // As the unit runs it, but with the data and the secret here (a
        // flag overrides the file).
        let data = dir.path().join(format!("data-{i}"));
        nodes.push(Killed(
            Command::new(RINGKV)
                .args(["serve", "--config", file.to_str().unwrap(), "--data-dir"])
                .arg(&data)
                .arg("--cluster-secret-file")
                .arg(&secret)
                .arg("--api-token-file")
                .arg(&tokens)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    assert!(printed.matches("systemctl enable --now ringkv").count() == 3);
    let http = {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        ringkv::tls::http_client_builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    // The tokens are in force: without one, 401.
    wait_for_status(&format!("http://{}:{port}/ring", hosts[0]), 401).await;
    let urls: Vec<String> = hosts.iter().map(|h| format!("http://{h}:{port}")).collect();
    wait_converged(&http, &urls, 3).await;
}

/// Waits until a GET of `url` (without a token) answers `status`.
async fn wait_for_status(url: &str, status: u16) {
    let http = ringkv::tls::http_client();
    wait_for(&format!("{url} to answer {status}"), DEADLINE, || async {
        let got = http.get(url).send().await.ok()?.status().as_u16();
        (got == status).then_some(())
    })
    .await;
}
