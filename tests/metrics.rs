//! `GET /metrics` and `GET /health` of real nodes: the exposition parses
//! as OpenMetrics, and its figures follow what was done to the cluster
//! (requests by operation and outcome, streams, a killed node, quorum
//! failures); `/health` answers liveness and readiness.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, DEADLINE, Options, wait_for};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use reqwest::StatusCode;
use serde_json::Value;

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Every key this test writes starts with this: it must never show up in
/// the exposition.
const KEY_PREFIX: &str = "metrics-key";

/// `GET /metrics` of `url`: the raw text, parsed.
async fn scrape(http: &reqwest::Client, url: &str) -> (String, Exposition) {
    let response = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    (text, parsed)
}

/// The value of the sample of `family` whose labels include `labels`
/// (counters and gauges); `None` when there is no such sample.
fn value(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = exposition
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!(
                "{} is not a counter or gauge: {other:?}",
                family.family_name
            ),
        })
}

/// The sum of every sample of counter `family` matching `labels`.
fn total(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    exposition.families[family]
        .iter_samples()
        .filter(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("not a counter: {other:?}"),
        })
        .sum()
}

/// Requests counted by `url` for `operation` ending in `outcome`.
fn requests(exposition: &Exposition, operation: &str, outcome: &str) -> f64 {
    value(
        exposition,
        "ringkv_http_requests",
        &[("operation", operation), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Scrapes `url` until `check` holds on the exposition.
async fn wait_metric(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    wait_for(what, DEADLINE, || async {
        let (_, parsed) = scrape(http, url).await;
        check(&parsed).then_some(parsed)
    })
    .await
}

/// Keys `GET /keys` lists on `url`, every page.
async fn listed_keys(http: &reqwest::Client, url: &str) -> usize {
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let mut request = http.get(format!("{url}/keys")).query(&[("limit", "1000")]);
        if let Some(after) = &after {
            request = request.query(&[("after", after)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        count += page["keys"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return count,
        }
    }
}

/// Every histogram sample: buckets cumulative (non-decreasing) up to +Inf,
/// +Inf equal to the count, the count equal to the matching counter.
fn check_histograms(exposition: &Exposition) {
    let family = &exposition.families["ringkv_http_request_duration_seconds"];
    assert_eq!(family.family_type, OpenMetricsType::Histogram);
    let mut seen = 0;
    for sample in family.iter_samples() {
        let OpenMetricsValue::Histogram(h) = &sample.value else {
            panic!("not a histogram: {:?}", sample.value);
        };
        let labels = sample.get_labelset().unwrap();
        let operation = labels.get_label_value("operation").unwrap();
        let outcome = labels.get_label_value("outcome").unwrap();
        let mut previous = (f64::NEG_INFINITY, 0.0);
        for bucket in &h.buckets {
            assert!(bucket.upper_bound > previous.0, "bucket order {h:?}");
            assert!(bucket.count.as_f64() >= previous.1, "not cumulative {h:?}");
            previous = (bucket.upper_bound, bucket.count.as_f64());
        }
        assert_eq!(previous.0, f64::INFINITY, "no +Inf bucket: {h:?}");
        let count = h.count.expect("count") as f64;
        assert_eq!(previous.1, count, "{operation}/{outcome}");
        assert!(h.sum.as_ref().expect("sum").as_f64() >= 0.0);
        // The counter may have moved on since: scrapes count themselves.
        let counted = requests(exposition, operation, outcome);
        if operation != "metrics" {
            assert_eq!(counted, count, "{operation}/{outcome}");
        }
        seen += 1;
    }
    assert!(seen >= 5, "{seen} histograms");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_requests_streams_failures_and_members() {
    let mut cluster = Cluster::start(Options::default()).await;
    let http = cluster.http.clone();
    let url = cluster.url(0);
    let key = |name: &str| format!("{url}/keys/{KEY_PREFIX}/{name}");

    // Before anything: every family is there, counters at zero (requests:
    // `Cluster::start` polled /ring; RPC errors only show with the first).
    let (_, first) = scrape(&http, &url).await;
    assert!(!first.families.contains_key("ringkv_replica_rpc_errors"));
    for family in [
        "ringkv_http_requests",
        "ringkv_http_request_duration_seconds",
        "ringkv_quorum_failures",
        "ringkv_read_repairs",
        "ringkv_hints_delivered",
        "ringkv_streams_in_progress",
        "ringkv_keys_stored",
        "ringkv_bytes_stored",
        "ringkv_hints_pending",
        "ringkv_corrupt_copies_dropped",
        "ringkv_members",
        "ringkv_ring_agreed",
        "ringkv_repair_active",
        "ringkv_repair_ranges_done",
        "ringkv_repair_ranges",
        "ringkv_repair_leaves_differing",
        "ringkv_repair_records",
        "ringkv_repair_bytes",
        "ringkv_repair_tombstones_dropped",
        "ringkv_repair_runs",
        "ringkv_transfer_active",
        "ringkv_transfer_records",
        "ringkv_transfer_bytes",
        "ringkv_transfer_sources_done",
        "ringkv_transfer_sources",
    ] {
        assert!(first.families.contains_key(family), "no family {family}");
    }
    let types: BTreeMap<&str, OpenMetricsType> = [
        ("ringkv_http_requests", OpenMetricsType::Counter),
        ("ringkv_quorum_failures", OpenMetricsType::Counter),
        ("ringkv_repair_runs", OpenMetricsType::Counter),
        ("ringkv_keys_stored", OpenMetricsType::Gauge),
        ("ringkv_members", OpenMetricsType::Gauge),
        ("ringkv_streams_in_progress", OpenMetricsType::Gauge),
    ]
    .into();
    for (family, kind) in types {
        assert_eq!(first.families[family].family_type, kind, "{family}");
    }
    assert_eq!(
        value(&first, "ringkv_quorum_failures", &[("operation", "put")]),
        Some(0.0)
    );
    assert_eq!(
        value(&first, "ringkv_members", &[("state", "normal")]),
        Some(3.0)
    );
    assert_eq!(
        value(&first, "ringkv_members", &[("state", "down")]),
        Some(0.0)
    );
    assert_eq!(value(&first, "ringkv_ring_agreed", &[]), Some(1.0));
    assert_eq!(value(&first, "ringkv_hints_pending", &[]), Some(0.0));

    // Small values: 4 puts, 3 gets, 2 misses, 1 head, 1 delete, 1 bad quorum,
    // 1 listing, 1 whereis, 1 haskey.
    for i in 0..4 {
        let reply = http
            .put(key(&format!("small-{i}")))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
    }
    for i in 0..3 {
        let reply = http.get(key(&format!("small-{i}"))).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
    }
    for i in 0..2 {
        let reply = http.get(key(&format!("missing-{i}"))).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    }
    let head = http.head(key("small-0")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let deleted = http.delete(key("small-3")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let bad = http
        .put(format!("{}?w=9", key("small-9")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let listing = http.get(format!("{url}/keys")).send().await.unwrap();
    assert_eq!(listing.status(), StatusCode::OK);
    let whereis = format!("{url}/whereis/{KEY_PREFIX}/small-0");
    assert_eq!(
        http.get(whereis).send().await.unwrap().status(),
        StatusCode::OK
    );
    let haskey = format!("{url}/haskey/{KEY_PREFIX}/small-0");
    assert_eq!(
        http.get(haskey).send().await.unwrap().status(),
        StatusCode::OK
    );

    // A 24 MiB upload, held after its first 1.5 MiB: counted as streaming
    // in until it ends. (24 MiB: more than loopback's socket buffers hold,
    // so the download below stays in progress while the client waits.)
    let big = common::bytes(5, 24 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let upload = tokio::spawn({
        let (http, url) = (http.clone(), key("big"));
        async move {
            let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            http.put(url).body(body).send().await.unwrap().status()
        }
    });
    tx.send(Ok(big[..3 << 19].to_vec())).await.unwrap();
    wait_metric(&http, &url, "an upload in progress", |p| {
        value(p, "ringkv_streams_in_progress", &[("direction", "in")]) == Some(1.0)
    })
    .await;
    for piece in big[3 << 19..].chunks(1 << 20) {
        tx.send(Ok(piece.to_vec())).await.unwrap();
    }
    drop(tx);
    assert_eq!(upload.await.unwrap(), StatusCode::CREATED);
    wait_metric(&http, &url, "the upload counted as over", |p| {
        value(p, "ringkv_streams_in_progress", &[("direction", "in")]) == Some(0.0)
    })
    .await;

    // Its download, read one piece and left waiting: streaming out until
    // the client goes away.
    let mut download = http.get(key("big")).send().await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert!(download.chunk().await.unwrap().is_some());
    wait_metric(&http, &url, "a download in progress", |p| {
        value(p, "ringkv_streams_in_progress", &[("direction", "out")]) == Some(1.0)
    })
    .await;
    drop(download);
    wait_metric(&http, &url, "the download counted as over", |p| {
        value(p, "ringkv_streams_in_progress", &[("direction", "out")]) == Some(0.0)
    })
    .await;

    // One balance: a repair run on every node, this one included.
    let balance = http.post(format!("{url}/balance")).send().await.unwrap();
    assert_eq!(balance.status(), StatusCode::OK);

    // The keys this node stores: the listing and the gauge agree (small-0..2
    // and big; small-3 is a tombstone). The node's own copy may land just
    // after the quorum answered, hence the wait.
    let parsed = wait_for("keys_stored to match /keys", DEADLINE, || async {
        let (_, parsed) = scrape(&http, &url).await;
        let stored = value(&parsed, "ringkv_keys_stored", &[])?;
        (stored == 4.0 && listed_keys(&http, &url).await == 4).then_some(parsed)
    })
    .await;
    assert_eq!(requests(&parsed, "put", "ok"), 5.0);
    assert_eq!(requests(&parsed, "put", "client_error"), 1.0);
    assert_eq!(requests(&parsed, "get", "ok"), 4.0);
    assert_eq!(requests(&parsed, "get", "not_found"), 2.0);
    assert_eq!(requests(&parsed, "head", "ok"), 1.0);
    assert_eq!(requests(&parsed, "delete", "ok"), 1.0);
    assert!(requests(&parsed, "list", "ok") >= 1.0);
    assert_eq!(requests(&parsed, "whereis", "ok"), 1.0);
    assert_eq!(requests(&parsed, "haskey", "ok"), 1.0);
    assert_eq!(requests(&parsed, "balance", "ok"), 1.0);
    assert!(
        requests(&parsed, "ring", "ok") >= 1.0,
        "Cluster::start polls /ring"
    );
    assert!(requests(&parsed, "metrics", "ok") >= 1.0);
    check_histograms(&parsed);
    assert!(value(&parsed, "ringkv_bytes_stored", &[]).unwrap() > 0.0);
    assert!(value(&parsed, "ringkv_repair_runs", &[]).unwrap() >= 1.0);
    let ranges = value(&parsed, "ringkv_repair_ranges", &[]).unwrap();
    assert!(ranges > 0.0);
    assert_eq!(
        value(&parsed, "ringkv_repair_ranges_done", &[]),
        Some(ranges)
    );
    assert_eq!(value(&parsed, "ringkv_repair_active", &[]), Some(0.0));
    assert_eq!(value(&parsed, "ringkv_transfer_active", &[]), Some(0.0));
    assert_eq!(
        value(&parsed, "ringkv_quorum_failures", &[("operation", "put")]),
        Some(0.0)
    );

    // Kill node 2: node 0 shows it down, and writes needing all three
    // replicas fail (503), counted as quorum failures, with RPC errors
    // naming node 2 and hints kept for it.
    let dead = cluster.nodes[2].id.clone();
    cluster.kill(2);
    wait_metric(&http, &url, "node 2 down in node 0's metrics", |p| {
        value(p, "ringkv_members", &[("state", "down")]) == Some(1.0)
            && value(p, "ringkv_members", &[("state", "normal")]) == Some(2.0)
    })
    .await;
    for i in 0..2 {
        let reply = http
            .put(format!("{}?w=3", key(&format!("all-{i}"))))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let reply = http
        .delete(format!("{}?w=all", key("small-0")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reply = http
        .get(format!("{}?r=3", key("small-1")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (text, parsed) = wait_for("hints kept for node 2", DEADLINE, || async {
        let (text, parsed) = scrape(&http, &url).await;
        (value(&parsed, "ringkv_hints_pending", &[])? >= 3.0).then_some((text, parsed))
    })
    .await;
    let quorum = |operation| {
        value(
            &parsed,
            "ringkv_quorum_failures",
            &[("operation", operation)],
        )
    };
    assert_eq!(quorum("put"), Some(2.0));
    assert_eq!(quorum("delete"), Some(1.0));
    assert_eq!(quorum("get"), Some(1.0));
    assert_eq!(requests(&parsed, "put", "unavailable"), 2.0);
    assert_eq!(requests(&parsed, "delete", "unavailable"), 1.0);
    assert_eq!(requests(&parsed, "get", "unavailable"), 1.0);
    assert_eq!(
        parsed.families["ringkv_replica_rpc_errors"].family_type,
        OpenMetricsType::Counter
    );
    let errors = total(
        &parsed,
        "ringkv_replica_rpc_errors",
        &[("peer", dead.as_str())],
    );
    assert!(errors >= 4.0, "{errors} RPC errors for {dead}\n{text}");
    assert!(
        total(
            &parsed,
            "ringkv_replica_rpc_errors",
            &[("peer", dead.as_str()), ("rpc", "write")]
        ) >= 3.0
    );
    check_histograms(&parsed);

    // Keys never become label values (nor anything else in the text).
    assert!(!text.contains(KEY_PREFIX), "a key in the metrics:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_tells_liveness_and_readiness_apart() {
    let mut cluster = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    let url = cluster.url(0);
    let health = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["live"], true, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    for check in ["gossip", "ring", "storage"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    assert_eq!(body["checks"]["storage"]["writable"], true, "{body}");
    assert_eq!(body["checks"]["storage"]["catching_up"], false, "{body}");
    assert_eq!(body["checks"]["ring"]["state"], "normal", "{body}");
    assert_eq!(body["checks"]["gossip"]["joined"], true, "{body}");
    assert!(body["disk_bytes"].as_u64().is_some(), "{body}");
    assert!(body["memory"]["rss_bytes"].as_u64().unwrap() > 0, "{body}");
    assert!(
        !cluster.nodes[0].data_dir.join(".health-probe").exists(),
        "the write probe is removed"
    );

    // A node whose seed is down has not joined: alive, not ready.
    let seed = cluster.nodes[0].id.clone();
    cluster.kill(0);
    let joiner = cluster.spawn(vec!["--join".into(), seed]);
    let url = cluster.url(joiner);
    let health = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["live"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["gossip"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["gossip"]["joined"], false, "{body}");
    let live = http.get(format!("{url}/health/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let body: Value = live.json().await.unwrap();
    assert_eq!(body["live"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_after_the_grace_period_is_not_ready_until_it_has_caught_up() {
    let grace = std::time::Duration::from_secs(1);
    let mut cluster = Cluster::start(Options {
        nodes: 2,
        replicas: 2,
        flags: vec!["--tombstone-grace".into(), "1s".into()],
        ..Options::default()
    })
    .await;
    let http = cluster.http.clone();
    cluster.kill(1);
    // Away longer than the grace period: that is the condition under test,
    // not a wait for something to happen.
    tokio::time::sleep(grace + std::time::Duration::from_millis(500)).await;
    // Its only peer frozen, node 1 cannot re-sync: alive, not ready, and
    // its storage check says why.
    cluster.freeze(0);
    cluster.restart(1);
    let url = cluster.url(1);
    let health = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["live"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["storage"]["catching_up"], true, "{body}");
    assert_eq!(body["checks"]["storage"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["storage"]["writable"], true, "{body}");
    // Once its peer is back it re-syncs and becomes ready.
    cluster.thaw(0);
    cluster.wait_ready(1).await;
    let body: Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["checks"]["storage"]["catching_up"], false, "{body}");
}

/// Body bytes are counted as they pass, and a response of known length
/// keeps its Content-Length (a body wrapper that drops the size hint would
/// turn every reply into a chunked one).
#[tokio::test(flavor = "multi_thread")]
async fn body_bytes_are_counted_and_lengths_kept() {
    let cluster = Cluster::start(Options {
        nodes: 1,
        replicas: 1,
        ..Options::default()
    })
    .await;
    let url = cluster.url(0);
    let (_, before) = scrape(&cluster.http, &url).await;
    let bytes_in = |e: &Exposition| value(e, "ringkv_http_bytes", &[("direction", "in")]);
    let bytes_out = |e: &Exposition| value(e, "ringkv_http_bytes", &[("direction", "out")]);
    let value_bytes = vec![7u8; 10_000];
    let put = cluster
        .http
        .put(format!("{url}/keys/counted"))
        .body(value_bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = cluster
        .http
        .get(format!("{url}/keys/counted"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["content-length"], "10000");
    assert_eq!(get.bytes().await.unwrap().len(), 10_000);
    let ring = cluster
        .http
        .get(format!("{url}/ring"))
        .send()
        .await
        .unwrap();
    assert!(
        ring.headers().contains_key("content-length"),
        "{:?}",
        ring.headers()
    );
    let (_, after) = scrape(&cluster.http, &url).await;
    let grew = |f: &dyn Fn(&Exposition) -> Option<f64>| f(&after).unwrap() - f(&before).unwrap();
    assert_eq!(grew(&bytes_in), 10_000.0);
    // The value, the PUT's reply, the ring and the first scrape went out.
    assert!(grew(&bytes_out) > 10_000.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_and_reads_queued_for_a_peer_go_in_batches_and_all_hold() {
    let cluster = Cluster::start(Options::default()).await;
    // Far more writes at once than calls a coordinator keeps in flight to
    // one peer (4): the rest wait and go together.
    let puts = (0..400).map(|i| {
        let (http, url) = (
            cluster.http.clone(),
            common::key_url(&cluster, 0, &format!("batched/{i}")),
        );
        async move {
            let response = http
                .put(url)
                .body(format!("value {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    });
    futures::future::join_all(puts).await;
    let gets = (0..400).map(|i| {
        let (http, url) = (
            cluster.http.clone(),
            common::key_url(&cluster, 1, &format!("batched/{i}")),
        );
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), format!("value {i}"));
        }
    });
    futures::future::join_all(gets).await;
    let counter = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    for i in [0, 1] {
        let (text, _) = scrape(&cluster.http, &cluster.url(i)).await;
        let batched = counter(&text, "ringkv_replica_batched_calls_total");
        let batches = counter(&text, "ringkv_replica_batches_total");
        assert!(
            batches > 0 && batched >= 2 * batches,
            "node {i}: {batched} calls in {batches} batches"
        );
    }
    // Every replica holds every write, batched or not.
    for i in 0..400 {
        let url = format!(
            "{}?r=all",
            common::key_url(&cluster, 2, &format!("batched/{i}"))
        );
        let response = cluster.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "batched/{i}");
    }
}
