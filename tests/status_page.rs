//! The status page (F22) in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, fantoccini) against a 3-node cluster. The test
//! script installs Debian's `chromium` and `chromium-driver`; without them
//! this test fails, it does not skip.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Cluster, DEADLINE, Options, key_url, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "cannot run chromedriver: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does)",
            );
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                other => panic!("chromedriver did not start: {other:?}"),
            };
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse().expect("port");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session downloading into `downloads`.
async fn browser(driver: &Driver, downloads: &Path) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,1400",
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Browser console entries of level SEVERE since the last call
/// (chromedriver's log endpoint).
async fn console_errors(driver: &Driver, client: &Client) -> Vec<String> {
    let session = client.session_id().await.unwrap().expect("session id");
    let reply: Value = ringkv::tls::http_client()
        .post(format!(
            "http://127.0.0.1:{}/session/{session}/se/log",
            driver.port
        ))
        .json(&json!({ "type": "browser" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = reply["value"].as_array().expect("log entries").clone();
    entries
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Text of every element matching `css`.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap_or_default() {
        if let Ok(text) = element.text().await {
            out.push(text);
        }
    }
    out
}

/// Waits until `css` matches an element whose text contains `needle`.
async fn wait_text(client: &Client, css: &str, needle: &str) -> String {
    wait_for(&format!("{css} to show {needle:?}"), DEADLINE, || async {
        texts(client, css)
            .await
            .into_iter()
            .find(|t| t.contains(needle))
    })
    .await
}

/// Uploads the file `path` as `key` through the page's upload form.
async fn upload_with_the_form(client: &Client, path: &Path, key: &str) {
    client
        .find(Locator::Id("upload-file"))
        .await
        .unwrap()
        .send_keys(path.to_str().unwrap())
        .await
        .unwrap();
    client
        .find(Locator::Id("upload-key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    client
        .find(Locator::Css("#upload button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Where this test leaves files for people to look at.
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_works_in_a_real_browser() {
    let mut cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let hostile = r#"<script>window.__xss=1</script>"'&"#;
    let data = common::bytes(11, 200_000);
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("photos/cat.jpg", b"meow".to_vec()),
        ("photos/dog.png", b"woof".to_vec()),
        ("docs/read me.txt", b"hello".to_vec()),
        (hostile, b"<b>not html</b>".to_vec()),
        ("files/data.bin", data.clone()),
    ];
    for (key, value) in &values {
        let put = http
            .put(key_url(&cluster, 1, key))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{key}");
    }

    let driver = Driver::start();
    let downloads = tempfile::tempdir().unwrap();
    let client = browser(&driver, downloads.path()).await;
    let me = cluster.nodes[0].id.clone();
    client.goto(&cluster.url(0)).await.unwrap();
    assert_eq!(
        client.title().await.unwrap(),
        format!("ringkv · {me}"),
        "the page of node 0"
    );

    // The page loads with no console errors.
    let errors = console_errors(&driver, &client).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    // (The probe does see errors.)
    client
        .execute("console.error('probe')", vec![])
        .await
        .unwrap();
    let errors = console_errors(&driver, &client).await;
    assert!(errors.iter().any(|e| e.contains("probe")), "{errors:?}");

    // The ring: one arc group per member, this node's highlighted.
    let groups = client
        .find_all(Locator::Css("svg.ring g.arc-group"))
        .await
        .unwrap();
    let mut drawn = Vec::new();
    for group in &groups {
        drawn.push(group.attr("data-node").await.unwrap().unwrap_or_default());
        let arcs = group.find_all(Locator::Css("path")).await.unwrap();
        assert!(!arcs.is_empty(), "a member without arcs");
    }
    drawn.sort();
    let mut ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    assert_eq!(drawn, ids);
    let mine = client
        .find(Locator::Css("svg.ring g.arc-group.me"))
        .await
        .unwrap();
    assert_eq!(mine.attr("data-node").await.unwrap(), Some(me.clone()));

    // Every member is listed with its figures; the keys column counts the
    // five keys each holds (N = 3 on 3 nodes) once gossip carries them.
    assert_eq!(texts(&client, "#members tbody tr").await.len(), 3);
    wait_for("every member's key count", DEADLINE, || async {
        let keys = texts(&client, "#members td.keys").await;
        (keys.len() == 3 && keys.iter().all(|k| k == "5")).then_some(())
    })
    .await;

    // Hostile key names are shown as text, never run.
    assert_eq!(
        client
            .execute("return window.__xss === undefined", vec![])
            .await
            .unwrap(),
        json!(true)
    );
    let served = http
        .get(cluster.url(0))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(served.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;&quot;&#39;&amp;"));
    assert!(!served.contains("<script>window.__xss"));
    assert!(
        texts(&client, "#keys td.key")
            .await
            .iter()
            .any(|t| t == hostile)
    );

    // Prefix search narrows the list as one types, without a reload.
    let search = client.find(Locator::Id("prefix")).await.unwrap();
    search.send_keys("photos/").await.unwrap();
    wait_for("the search to narrow the list", DEADLINE, || async {
        let keys = texts(&client, "#keys td.key").await;
        (keys == ["photos/cat.jpg", "photos/dog.png"]).then_some(())
    })
    .await;

    // A click on a download link downloads the value's bytes.
    client
        .goto(&format!("{}/?prefix=files/", cluster.url(0)))
        .await
        .unwrap();
    client
        .find(Locator::Css("#keys a.download"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let file = downloads.path().join("data.bin");
    let downloaded = wait_for("the download", DEADLINE, || async {
        std::fs::read(&file).ok().filter(|b| b.len() == data.len())
    })
    .await;
    assert!(downloaded == data, "downloaded bytes differ");

    // The key detail view: each replica with its timestamp.
    client
        .goto(&format!("{}/?key=photos%2Fcat.jpg", cluster.url(0)))
        .await
        .unwrap();
    let replicas = texts(&client, "#key-detail tbody tr").await;
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(
        replicas.iter().all(|r| r.contains("newest")),
        "{replicas:?}"
    );

    // The upload form stores a file.
    let upload = downloads.path().join("upload.txt");
    std::fs::write(&upload, b"uploaded from the page").unwrap();
    client.goto(&cluster.url(0)).await.unwrap();
    upload_with_the_form(&client, &upload, "from/the page.txt").await;
    wait_text(&client, "#upload-result", "stored from/the page.txt").await;
    assert_eq!(
        cluster
            .get_bytes(&key_url(&cluster, 2, "from/the page.txt"))
            .await
            .as_ref(),
        b"uploaded from the page"
    );

    // The balance button asks first, then runs a balance.
    client
        .find(Locator::Id("balance"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the confirmation", DEADLINE, || async {
        client.accept_alert().await.ok()
    })
    .await;
    let result = wait_text(&client, "#action-result", "HTTP 200").await;
    assert!(result.contains("\"pairs\""), "{result}");

    // The same POST from another site is refused.
    let forged = http
        .post(format!("{}/balance", cluster.url(0)))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let screenshot = output_dir().join("status-page.png");
    std::fs::write(&screenshot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", screenshot.display());

    // Member links open the other nodes' own pages.
    let other = cluster.nodes[1].id.clone();
    client
        .find(Locator::Css(&format!(
            "#members a[href=\"http://{other}/\"]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("node 1's page", DEADLINE, || async {
        let title = client.title().await.ok()?;
        (title == format!("ringkv · {other}")).then_some(())
    })
    .await;
    let highlighted = client.find(Locator::Css("#members tr.me")).await.unwrap();
    assert_eq!(highlighted.attr("data-node").await.unwrap(), Some(other));

    // Figures update live: a node killed shows down without a reload.
    let dead = cluster.nodes[2].id.clone();
    cluster.kill(2);
    let row = format!("#members tr[data-node=\"{dead}\"] .health");
    wait_text(&client, &row, "down").await;
    let errors = console_errors(&driver, &client).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The page on a phone-sized screen, for people to look at.
    client.set_window_size(390, 1600).await.unwrap();
    let phone = output_dir().join("status-page-phone.png");
    std::fs::write(&phone, client.screenshot().await.unwrap()).unwrap();
    client.close().await.unwrap();
}

/// Tokens of the page-token test.
const PAGE_READ: &str = "page-read-token-0123456789";
const PAGE_ADMIN: &str = "page-admin-token-0123456789";

/// Types `token` into the 401 page's form and submits it.
async fn give_token(client: &Client, token: &str) {
    let field = wait_for("the token form", DEADLINE, || async {
        client.find(Locator::Id("token")).await.ok()
    })
    .await;
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    client
        .find(Locator::Css("#token-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// What `script` returns in the page, as text.
async fn eval(client: &Client, script: &str) -> String {
    let value = client.execute(script, vec![]).await.unwrap();
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_asks_for_a_token_and_keeps_it_for_the_tab_only() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("tokens");
    std::fs::write(&path, format!("read {PAGE_READ}\nadmin {PAGE_ADMIN}\n")).unwrap();
    let cluster = Cluster::start(Options {
        nodes: 1,
        replicas: 1,
        flags: vec!["--api-token-file".into(), path.display().to_string()],
        token: Some(PAGE_ADMIN.to_string()),
        ..Options::default()
    })
    .await;
    let me = cluster.nodes[0].id.clone();
    let driver = Driver::start();
    let downloads = tempfile::tempdir().unwrap();
    let client = browser(&driver, downloads.path()).await;
    client.goto(&cluster.url(0)).await.unwrap();
    // The 401 page: a form, and nothing of the status page.
    client.find(Locator::Id("token-form")).await.unwrap();
    assert!(client.find(Locator::Id("upload")).await.is_err());
    // A wrong token is refused and not kept.
    give_token(&client, "nobody-knows-this-token").await;
    wait_text(&client, "#token-result", "refused").await;
    assert_eq!(
        eval(
            &client,
            "return String(sessionStorage.getItem('ringkv-token'))"
        )
        .await,
        "null"
    );
    // The read token opens the page.
    give_token(&client, PAGE_READ).await;
    wait_for("the status page", DEADLINE, || async {
        (client.title().await.ok()? == format!("ringkv · {me}")).then_some(())
    })
    .await;
    wait_for("the upload form", DEADLINE, || async {
        client.find(Locator::Id("upload-file")).await.ok()
    })
    .await;
    // Kept in this tab's sessionStorage only: no cookie, no localStorage,
    // and not in the page.
    assert_eq!(
        eval(&client, "return sessionStorage.getItem('ringkv-token')").await,
        PAGE_READ
    );
    assert_eq!(
        eval(&client, "return String(localStorage.length)").await,
        "0"
    );
    assert_eq!(eval(&client, "return document.cookie").await, "");
    let source = client.source().await.unwrap();
    assert!(!source.contains(PAGE_READ), "the page shows the token");
    // Its requests carry it: a reload of the page opens it again at once,
    // and a write with a read token is refused (403).
    client.goto(&cluster.url(0)).await.unwrap();
    wait_for("the page again", DEADLINE, || async {
        client.find(Locator::Id("upload-file")).await.ok()
    })
    .await;
    let upload = downloads.path().join("upload.txt");
    std::fs::write(&upload, b"from a reader").unwrap();
    upload_with_the_form(&client, &upload, "reader/file.txt").await;
    wait_text(&client, "#upload-result", "HTTP 403").await;
    // Another tab has no token.
    let first = client.window().await.unwrap();
    let other = client.new_window(true).await.unwrap();
    client.switch_to_window(other.handle).await.unwrap();
    client.goto(&cluster.url(0)).await.unwrap();
    client.find(Locator::Id("token-form")).await.unwrap();
    assert_eq!(
        eval(
            &client,
            "return String(sessionStorage.getItem('ringkv-token'))"
        )
        .await,
        "null"
    );
    // "forget token" drops it in the first tab.
    client.close_window().await.unwrap();
    client.switch_to_window(first).await.unwrap();
    client
        .find(Locator::Id("forget-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the token form after forgetting", DEADLINE, || async {
        client.find(Locator::Id("token-form")).await.ok()
    })
    .await;
    assert_eq!(
        eval(
            &client,
            "return String(sessionStorage.getItem('ringkv-token'))"
        )
        .await,
        "null"
    );
    let errors = console_errors(&driver, &client).await;
    assert!(
        errors
            .iter()
            .all(|e| e.contains("401") || e.contains("403")),
        "console errors: {errors:?}"
    );
    assert!(
        !std::fs::read_to_string(&cluster.nodes[0].log)
            .unwrap_or_default()
            .contains(PAGE_READ)
    );
    client.close().await.unwrap();
}

/// What the page's charts show now, read in the browser: for each row
/// (`cluster` or a node id), each chart's series with their path data, the
/// latest value and the length the browser drew.
async fn charts_shown(client: &Client) -> Value {
    client
        .execute(
            r#"const out = {};
for (const row of document.querySelectorAll('#charts .chart-row')) {
  const name = row.dataset.scope === 'cluster' ? 'cluster' : row.dataset.node;
  const charts = {};
  for (const figure of row.querySelectorAll('figure.chart')) {
    const series = {};
    for (const path of figure.querySelectorAll('svg path.series')) {
      series[path.dataset.series] = {
        d: path.getAttribute('d'),
        last: path.dataset.last === '' ? null : parseFloat(path.dataset.last),
        drawn: path.getTotalLength(),
      };
    }
    charts[figure.dataset.chart] = series;
  }
  out[name] = charts;
}
return out;"#,
            vec![],
        )
        .await
        .expect("the charts read")
}

/// The series each chart draws.
const CHART_SERIES: [(&str, &[&str]); 4] = [
    ("requests", &["get", "put", "delete", "other"]),
    ("errors", &["get", "put", "delete", "other"]),
    ("latency", &["p50", "p99"]),
    ("bytes", &["in", "out"]),
];

/// Whether `shown` has a row for the cluster and each of `nodes`, every
/// chart with path data for each of its series, and requests and bytes in
/// the newest point of each row.
fn charts_drawn(shown: &Value, nodes: &[String]) -> bool {
    let rows = std::iter::once("cluster").chain(nodes.iter().map(String::as_str));
    rows.into_iter().all(|row| {
        let drawn = CHART_SERIES.iter().all(|(chart, series)| {
            series.iter().all(|s| {
                let path = &shown[row][chart][s];
                path["d"].as_str().is_some_and(|d| d.starts_with('M'))
            })
        });
        let busy = |chart: &str, series: &[&str]| {
            series.iter().any(|s| {
                shown[row][chart][s]["last"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0)
            })
        };
        let visible = shown[row]["requests"]["put"]["drawn"]
            .as_f64()
            .is_some_and(|len| len > 0.0);
        drawn && visible && busy("requests", &["get", "put"]) && busy("bytes", &["in"])
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_draw_and_move_under_load() {
    let mut cluster = Cluster::start(Options {
        flags: vec!["--chart-interval".into(), "200ms".into()],
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();

    // Load from the test, on every node: a put and a get per step, paced so
    // that Chromium keeps a core.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let load = {
        let (http, stop) = (cluster.http.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(std::time::Duration::from_millis(4));
            let mut done = 0u64;
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pace.tick().await;
                let key = format!("{}/keys/load-{}", urls[n % 3], n % 50);
                let put = http.put(&key).body(vec![b'x'; 512]).send().await;
                let get = http
                    .get(format!("{}/keys/load-{}", urls[(n + 1) % 3], n % 50))
                    .send()
                    .await;
                if put.is_ok_and(|r| r.status().is_success()) && get.is_ok() {
                    done += 1;
                }
                n += 1;
            }
            done
        })
    };

    let driver = Driver::start();
    let downloads = tempfile::tempdir().unwrap();
    let client = browser(&driver, downloads.path()).await;
    client.goto(&cluster.url(0)).await.unwrap();
    // Set on the loaded page: still there later means the charts moved by
    // the script's swaps, not by a reload.
    client
        .execute("window.__loaded_once = true", vec![])
        .await
        .unwrap();

    // Every chart renders, for the cluster and for each node (the other
    // nodes' samples come through gossip), with the newest requests above 0.
    let first = wait_for(
        "charts drawn for the cluster and each node",
        DEADLINE,
        || async {
            let shown = charts_shown(&client).await;
            charts_drawn(&shown, &ids).then_some(shown)
        },
    )
    .await;
    let before = first["cluster"]["requests"]["put"]["d"]
        .as_str()
        .unwrap()
        .to_string();
    for row in std::iter::once("cluster").chain(ids.iter().map(String::as_str)) {
        let latency = &first[row]["latency"]["p99"]["last"];
        assert!(
            latency.as_f64().is_some_and(|ms| ms > 0.0),
            "{row}: p99 {latency}"
        );
    }

    // They move: the next refreshes bring other path data, still drawn.
    let after = wait_for("the charts to move", DEADLINE, || async {
        let shown = charts_shown(&client).await;
        let d = shown["cluster"]["requests"]["put"]["d"]
            .as_str()?
            .to_string();
        (d != before && charts_drawn(&shown, &ids)).then_some(d)
    })
    .await;
    assert_ne!(after, before);
    assert_eq!(
        client
            .execute("return window.__loaded_once === true", vec![])
            .await
            .unwrap(),
        json!(true),
        "the page was reloaded"
    );

    // A node killed: writes that need every replica fail (503) and show as
    // errors, the cluster's lines go on without the dead node, whose own
    // line stops short of the right edge.
    cluster.kill(2);
    let must_fail = format!("{}?w=all", key_url(&cluster, 0, "needs-all"));
    let last_x = |d: &str| {
        let tail = d.rsplit(['M', 'L']).next()?;
        tail.split(' ').next()?.parse::<f64>().ok()
    };
    wait_for(
        "5xx charted, the dead node's line stopped",
        DEADLINE,
        || async {
            let _ = cluster.http.put(&must_fail).body("x").send().await;
            let shown = charts_shown(&client).await;
            let failing = |row: &str| {
                shown[row]["errors"]["put"]["last"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0)
            };
            let stopped = shown[&ids[2]]["requests"]["put"]["d"]
                .as_str()
                .and_then(last_x)
                .is_some_and(|x| x < 295.0);
            let going_on = shown["cluster"]["requests"]["put"]["d"]
                .as_str()
                .and_then(last_x)
                .is_some_and(|x| x >= 295.0);
            (failing("cluster") && failing(&ids[0]) && stopped && going_on).then_some(())
        },
    )
    .await;
    let errors = console_errors(&driver, &client).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    let charts = client.find(Locator::Id("charts-section")).await.unwrap();
    let screenshot = output_dir().join("status-page-charts.png");
    std::fs::write(&screenshot, charts.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", screenshot.display());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = load.await.unwrap();
    assert!(done > 0, "no request of the load succeeded");
    client.close().await.unwrap();
}
