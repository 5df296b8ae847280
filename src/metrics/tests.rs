//! Figures counted and encoded, parsed back as OpenMetrics text.

use super::*;
use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};

fn parse(
    metrics: &Metrics,
    figures: &NodeFigures,
) -> openmetrics_parser::MetricsExposition<OpenMetricsType, OpenMetricsValue> {
    let text = metrics.encode(figures).unwrap();
    openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("{e:?} in\n{text}"))
}

fn counter(
    exposition: &openmetrics_parser::MetricsExposition<OpenMetricsType, OpenMetricsValue>,
    family: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let family = &exposition.families[family];
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
            other => panic!("not a counter or gauge: {other:?}"),
        })
        .unwrap_or_else(|| panic!("no sample {labels:?}"))
}

#[test]
fn two_nodes_in_one_process_keep_their_own_figures() {
    let (a, b) = (Metrics::new(), Metrics::new());
    a.request_done("put", "ok", Duration::from_millis(3));
    a.request_done("put", "ok", Duration::from_millis(40));
    b.request_done("get", "not_found", Duration::from_millis(1));
    let figures = NodeFigures::default();
    let (pa, pb) = (parse(&a, &figures), parse(&b, &figures));
    let requests = "ringkv_http_requests";
    assert_eq!(
        counter(&pa, requests, &[("operation", "put"), ("outcome", "ok")]),
        2.0
    );
    assert_eq!(pa.families[requests].iter_samples().count(), 1);
    assert_eq!(pb.families[requests].iter_samples().count(), 1);
    let OpenMetricsValue::Histogram(h) = &pa.families["ringkv_http_request_duration_seconds"]
        .iter_samples()
        .next()
        .unwrap()
        .value
    else {
        panic!("not a histogram");
    };
    assert_eq!(h.count, Some(2));
    // 3 ms lands in the 4 ms bucket, 40 ms in the 64 ms one.
    let at = |le: f64| {
        h.buckets
            .iter()
            .find(|b| (b.upper_bound - le).abs() < 1e-9)
            .map(|b| b.count.as_f64())
    };
    assert_eq!(at(0.002), Some(0.0));
    assert_eq!(at(0.004), Some(1.0));
    assert_eq!(at(0.064), Some(2.0));
}

#[test]
fn the_charts_read_the_request_counters() {
    let metrics = Metrics::new();
    metrics.request_done("put", "ok", Duration::from_millis(3));
    metrics.request_done("put", "unavailable", Duration::from_millis(300));
    metrics.request_done("head", "ok", Duration::from_micros(100));
    metrics.request_done("ring", "error", Duration::from_millis(3));
    metrics.http_bytes(Direction::In, 10);
    metrics.http_bytes(Direction::Out, 7);
    let counts = metrics.counts();
    assert_eq!(counts.requests, [0, 2, 0, 2]);
    assert_eq!(counts.errors, [0, 1, 0, 1]);
    // put (3 ms, 300 ms) and head (0.1 ms); ring is not a key operation.
    let mut latency = [0; LATENCY_BUCKETS];
    latency[0] = 1;
    latency[3] = 1;
    latency[10] = 1;
    assert_eq!(counts.latency, latency);
    assert_eq!((counts.bytes_in, counts.bytes_out), (10, 7));
}

#[test]
fn the_charts_add_resp_commands_to_http_requests() {
    let metrics = Metrics::new();
    metrics.request_done("get", "ok", Duration::from_millis(3));
    metrics.resp_command_done("get", "ok", Duration::from_millis(3));
    metrics.resp_command_done("delete", "unavailable", Duration::from_millis(300));
    metrics.resp_command_done("other", "client_error", Duration::from_millis(1));
    metrics.http_bytes(Direction::In, 10);
    metrics.resp_bytes(Direction::In, 5);
    metrics.resp_bytes(Direction::Out, 4);
    let counts = metrics.counts();
    assert_eq!(counts.requests, [2, 0, 1, 1]);
    // A wrong command is the client's error, not charted as one.
    assert_eq!(counts.errors, [0, 0, 1, 0]);
    // Two gets of 3 ms and the delete; `other` is not a key operation.
    let mut latency = [0; LATENCY_BUCKETS];
    latency[3] = 2;
    latency[10] = 1;
    assert_eq!(counts.latency, latency);
    assert_eq!((counts.bytes_in, counts.bytes_out), (15, 4));
    let p = parse(&metrics, &NodeFigures::default());
    let commands = "ringkv_resp_commands";
    assert_eq!(
        counter(
            &p,
            commands,
            &[("operation", "delete"), ("outcome", "unavailable")]
        ),
        1.0
    );
    assert_eq!(
        counter(&p, "ringkv_resp_bytes", &[("direction", "out")]),
        4.0
    );
}

#[test]
fn errors_quorums_and_streams_are_counted() {
    let metrics = Metrics::new();
    let peer = NodeId::parse("127.0.0.1:7000").unwrap();
    let down = Error::Rpc {
        node: peer.clone(),
        reason: "connection refused".into(),
    };
    metrics.rpc_failed(&peer, "write", &down);
    metrics.observe_quorum::<()>(
        "put",
        &Err(Error::Unavailable {
            needed: 3,
            got: 2,
            answered: vec![],
            failed: vec![],
        }),
    );
    metrics.observe_quorum::<()>("get", &Err(Error::not_found("k")));
    metrics.observe_quorum("delete", &Ok(()));
    let upload = metrics.stream_started(Direction::In);
    let download = metrics.stream_started(Direction::Out);
    let second = metrics.stream_started(Direction::Out);
    assert_eq!(metrics.streams_in_progress(), (1, 2));
    drop((upload, second));
    assert_eq!(metrics.streams_in_progress(), (0, 1));
    let p = parse(&metrics, &NodeFigures::default());
    let rpc = [
        ("peer", "127.0.0.1:7000"),
        ("rpc", "write"),
        ("kind", "rpc_failed"),
    ];
    assert_eq!(counter(&p, "ringkv_replica_rpc_errors", &rpc), 1.0);
    let quorum = "ringkv_quorum_failures";
    assert_eq!(counter(&p, quorum, &[("operation", "put")]), 1.0);
    assert_eq!(counter(&p, quorum, &[("operation", "get")]), 0.0);
    assert_eq!(counter(&p, quorum, &[("operation", "delete")]), 0.0);
    let streams = "ringkv_streams_in_progress";
    assert_eq!(counter(&p, streams, &[("direction", "in")]), 0.0);
    assert_eq!(counter(&p, streams, &[("direction", "out")]), 1.0);
    drop(download);
}

#[test]
fn scrape_time_figures_are_encoded() {
    let figures = NodeFigures {
        keys: 7,
        disk_bytes: 4096,
        hints_pending: 2,
        corrupt_copies: 1,
        members: vec![("normal", 2), ("down", 1)],
        agreed: true,
        repair: RepairFigures {
            ranges_done: 16,
            ranges: 16,
            pulled: 3,
            runs: 4,
            ..RepairFigures::default()
        },
        transfer: TransferFigures {
            active: true,
            records: 10,
            ..TransferFigures::default()
        },
        scrub: ScrubFigures {
            active: true,
            bytes: 1 << 20,
            runs: 2,
            ..ScrubFigures::default()
        },
        disk_free: Some(1 << 30),
    };
    let metrics = Metrics::new();
    metrics.http_bytes(Direction::In, 100);
    metrics.http_bytes(Direction::Out, 30);
    metrics.http_bytes(Direction::Out, 12);
    let p = parse(&metrics, &figures);
    assert_eq!(counter(&p, "ringkv_scrub_active", &[]), 1.0);
    assert_eq!(counter(&p, "ringkv_scrub_bytes", &[]), f64::from(1 << 20));
    assert_eq!(counter(&p, "ringkv_scrub_runs", &[]), 2.0);
    assert_eq!(
        counter(&p, "ringkv_disk_free_bytes", &[]),
        f64::from(1 << 30)
    );
    assert_eq!(
        counter(&p, "ringkv_http_bytes", &[("direction", "in")]),
        100.0
    );
    assert_eq!(
        counter(&p, "ringkv_http_bytes", &[("direction", "out")]),
        42.0
    );
    assert_eq!(counter(&p, "ringkv_keys_stored", &[]), 7.0);
    assert_eq!(counter(&p, "ringkv_bytes_stored", &[]), 4096.0);
    assert_eq!(counter(&p, "ringkv_hints_pending", &[]), 2.0);
    assert_eq!(counter(&p, "ringkv_corrupt_copies_dropped", &[]), 1.0);
    assert_eq!(counter(&p, "ringkv_members", &[("state", "normal")]), 2.0);
    assert_eq!(counter(&p, "ringkv_members", &[("state", "down")]), 1.0);
    assert_eq!(counter(&p, "ringkv_members", &[("state", "joining")]), 0.0);
    assert_eq!(counter(&p, "ringkv_ring_agreed", &[]), 1.0);
    assert_eq!(counter(&p, "ringkv_repair_ranges_done", &[]), 16.0);
    assert_eq!(
        counter(&p, "ringkv_repair_records", &[("direction", "pulled")]),
        3.0
    );
    assert_eq!(counter(&p, "ringkv_repair_runs", &[]), 4.0);
    assert_eq!(counter(&p, "ringkv_transfer_active", &[]), 1.0);
    assert_eq!(counter(&p, "ringkv_transfer_records", &[]), 10.0);
    assert_eq!(
        p.families["ringkv_repair_runs"].family_type,
        OpenMetricsType::Counter
    );
}
