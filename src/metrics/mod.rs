//! A node's figures for Prometheus (`GET /metrics`, F20): what happened
//! (requests, replica RPC errors, quorum failures, read repairs, hints
//! delivered: counted as it happens) and what is (keys, bytes, hints
//! pending, members by state, repair and transfer progress: read from the
//! node when scraped, [`NodeFigures`]).
//!
//! One [`Metrics`] per node, owning its own `prometheus_client` registry:
//! several nodes in one process (unit tests, `ringkv cluster`) keep
//! separate figures, and nothing is global. The handle is cheap to clone.
//!
//! Label values are `&'static str` wherever a request could put its own
//! text there (operation, outcome, RPC, error kind): a key can never become
//! a label value, so a scrape stays small whatever the clients do. The
//! `peer` label is a member's `host:port`, bounded by the cluster's size.
//!
//! What it does not do: it records nothing by itself. The HTTP layer
//! (`http/metrics.rs`) counts requests, the RPC pool (`rpc::Peers`) counts
//! failed calls to peers, the coordinator counts quorum failures, read
//! repairs and streamed uploads, the HTTP GET path streamed downloads, and
//! the lifecycle's hint task delivered hints.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};
use crate::ring::NodeId;

pub mod history;

use self::history::{
    CHART_OPERATIONS, Counts, LATENCY_BUCKETS, LATENCY_OPERATIONS, chart_index, latency_bound,
};

/// Prefix of every family name.
const PREFIX: &str = "ringkv";
/// Every operation a request can be counted as (`http::metrics::operation`
/// names them from routes): the charts read each one's counters.
pub const OPERATIONS: [&str; 18] = [
    "put",
    "get",
    "head",
    "delete",
    "list",
    "status_page",
    "favicon",
    "ring",
    "remove",
    "whereis",
    "haskey",
    "health",
    "metrics",
    "balance",
    "purge",
    "leave",
    "replicas",
    "other",
];
/// Every outcome a request can end with (`http::metrics::outcome`).
pub const OUTCOMES: [&str; 5] = ["ok", "not_found", "client_error", "unavailable", "error"];
/// The outcome an answer with HTTP status `status` is counted under (a
/// RESP error reply under its error's status): `ok` (1xx–3xx, 304 and 206
/// included), `not_found` (404), `client_error` (other 4xx),
/// `unavailable` (503: no quorum, or the node not ready), `error` (other
/// 5xx, 507 included).
pub fn outcome(status: u16) -> &'static str {
    match status {
        404 => "not_found",
        503 => "unavailable",
        s if s < 400 => "ok",
        s if s < 500 => "client_error",
        _ => "error",
    }
}
/// The outcomes charted as errors: the server failed (5xx).
const ERROR_OUTCOMES: [&str; 2] = ["unavailable", "error"];
/// The operations whose quorum failures are counted (shown as 0 before any).
const QUORUM_OPERATIONS: [&str; 3] = ["put", "delete", "get"];
/// Member states, as `Member::shown_state` names them (each shown, 0 when
/// no member is in it).
pub const MEMBER_STATES: [&str; 5] = ["joining", "normal", "leaving", "down", "removed"];

/// Labels of one kind of HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// What was asked (`put`, `get`, `ring`…), from the matched route and
    /// the method, never the path.
    operation: &'static str,
    /// How it ended (`ok`, `not_found`, `client_error`, `unavailable`,
    /// `error`).
    outcome: &'static str,
}

/// Labels of a failed call to a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabels {
    /// The peer called.
    peer: String,
    /// The call (`write`, `read`, `read_stream`…).
    rpc: &'static str,
    /// What went wrong ([`Error::code`]: `rpc_failed`, `timeout`…).
    kind: &'static str,
}

/// Labels naming one client operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// `put`, `delete` or `get`.
    operation: &'static str,
}

/// Labels naming a direction of streaming.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    /// `in` (uploads) or `out` (downloads).
    direction: &'static str,
}

/// Labels naming why this node refused a replica write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    /// `deadline` (its caller's deadline had passed) or `stalled` (read just
    /// after this process was stopped, so of unknown age).
    reason: &'static str,
}

/// Why a replica write was refused unapplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's deadline passed before the write was applied.
    Deadline,
    /// Read right after this process was stopped: its age is unknown.
    Stalled,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Deadline => "deadline",
            Refusal::Stalled => "stalled",
        }
    }
}

/// Which way a large value streams between a client and this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A client uploads (a streamed PUT this node coordinates).
    In,
    /// A client downloads (a GET whose value is streamed from a replica).
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// Its place in a pair of counters.
    fn index(self) -> usize {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
}

/// The figures of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every family counted as things happen; the figures read at scrape
    /// time go in a registry of their own per scrape.
    registry: Registry,
    /// HTTP requests answered.
    requests: Family<RequestLabels, Counter>,
    /// Time to answer them (to the response headers).
    durations: Family<RequestLabels, LatencyHistogram>,
    /// Failed calls to peers.
    rpc_errors: Family<RpcErrorLabels, Counter>,
    /// Client operations that did not get their quorum.
    quorum_failures: Family<OperationLabels, Counter>,
    /// Records sent to replicas a read found stale.
    read_repairs: Counter,
    /// Hints delivered to the replicas they were kept for.
    hints_delivered: Counter,
    /// Large values streaming between clients and this node now.
    streams: Family<DirectionLabels, Gauge>,
    /// Replica writes refused unapplied, by reason.
    refused_writes: Family<RefusalLabels, Counter>,
    /// Client reads and writes refused because their coordinator planned
    /// them on a ring that places the key elsewhere, by call.
    fence_refusals: Family<FenceLabels, Counter>,
    /// Replica calls sent together in one `Batch` call, and those calls.
    batched_calls: Counter,
    batches: Counter,
    /// Bytes of HTTP request and response bodies, by direction (two
    /// counters, indexed by [`Direction`], cloned out of the family once).
    http_bytes: [Counter; 2],
    /// RESP commands answered, by chart operation and outcome.
    resp_commands: Family<RequestLabels, Counter>,
    /// Time to answer them.
    resp_durations: Family<RequestLabels, LatencyHistogram>,
    /// Bytes of RESP requests read and replies written, by direction.
    resp_bytes: [Counter; 2],
    /// Node-to-node packets and connections refused for want of the
    /// cluster secret (or as replays), by channel and reason.
    cluster_rejections: Family<RejectionLabels, Counter>,
}

/// Labels of a refused node-to-node packet or connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    /// `gossip` or `rpc`.
    channel: &'static str,
    /// `unsealed`, `bad_key`, `stale`, `replay` or `malformed`.
    reason: &'static str,
}

/// Labels naming the call a ring fence refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FenceLabels {
    /// `write`, `write_stream` or `read`.
    rpc: &'static str,
}

/// A latency histogram with the buckets of [`latency_bound`], encoded as
/// an OpenMetrics histogram like `prometheus_client`'s own, whose bucket
/// counts it does not let one read: the charts read these
/// ([`LatencyHistogram::buckets`]), so latency is counted once.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<std::sync::Mutex<LatencyCounts>>,
}

/// What a [`LatencyHistogram`] counted.
#[derive(Debug, Default)]
struct LatencyCounts {
    /// Sum of the observations, seconds.
    sum: f64,
    /// Observations.
    count: u64,
    /// Observations per bucket (not cumulative).
    buckets: [u64; LATENCY_BUCKETS],
}

impl LatencyHistogram {
    /// Counts one request that took `seconds`.
    pub fn observe(&self, seconds: f64) {
        let index = (0..LATENCY_BUCKETS)
            .find(|i| seconds <= latency_bound(*i))
            .unwrap_or(LATENCY_BUCKETS - 1);
        let mut counts = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        counts.sum += seconds;
        counts.count += 1;
        counts.buckets[index] += 1;
    }

    /// Observations per bucket so far (not cumulative).
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS] {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).buckets
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::result::Result<(), std::fmt::Error> {
        let (sum, count, buckets) = {
            let counts = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let buckets: Vec<(f64, u64)> = counts
                .buckets
                .iter()
                .enumerate()
                .map(|(i, c)| (latency_bound(i), *c))
                .collect();
            (counts.sum, counts.count, buckets)
        };
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of figures, all zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by operation and outcome",
            requests.clone(),
        );
        let durations = Family::<RequestLabels, LatencyHistogram>::default();
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response headers (a streamed GET's body not included), by operation and outcome",
            durations.clone(),
        );
        let rpc_errors = Family::<RpcErrorLabels, Counter>::default();
        registry.register(
            "replica_rpc_errors",
            "Failed calls to other nodes, by peer, call and kind of failure",
            rpc_errors.clone(),
        );
        let quorum_failures = Family::<OperationLabels, Counter>::default();
        for operation in QUORUM_OPERATIONS {
            // Created at zero, so that the series exist before any failure.
            let _ = quorum_failures.get_or_create(&OperationLabels { operation });
        }
        registry.register(
            "quorum_failures",
            "Reads and writes this node coordinated that fewer replicas than the quorum answered (503, or 507 when every failure was a full disk)",
            quorum_failures.clone(),
        );
        let read_repairs = Counter::default();
        registry.register(
            "read_repairs",
            "Records sent to replicas that a read found stale or missing",
            read_repairs.clone(),
        );
        let hints_delivered = Counter::default();
        registry.register(
            "hints_delivered",
            "Hints this node delivered to the replicas that had missed the writes",
            hints_delivered.clone(),
        );
        let streams = Family::<DirectionLabels, Gauge>::default();
        for direction in [Direction::In, Direction::Out] {
            let _ = streams.get_or_create(&DirectionLabels {
                direction: direction.label(),
            });
        }
        registry.register(
            "streams_in_progress",
            "Large values streaming between clients and this node now (in: uploads, out: downloads)",
            streams.clone(),
        );
        let refused_writes = Family::<RefusalLabels, Counter>::default();
        for refusal in [Refusal::Deadline, Refusal::Stalled] {
            let _ = refused_writes.get_or_create(&RefusalLabels {
                reason: refusal.label(),
            });
        }
        registry.register(
            "replica_writes_refused",
            "Writes from coordinators this node refused without applying them: past their caller's deadline, or read just after this process was stopped (no ghost writes)",
            refused_writes.clone(),
        );
        let fence_refusals = Family::<FenceLabels, Counter>::default();
        for rpc in ["write", "write_stream", "read"] {
            let _ = fence_refusals.get_or_create(&FenceLabels { rpc });
        }
        registry.register(
            "ring_fence_refusals",
            "Client reads and writes this replica refused because their coordinator planned them on a ring that places the key on other nodes (the coordinator learns this node's ring and asks again)",
            fence_refusals.clone(),
        );
        let batched_calls = Counter::default();
        registry.register(
            "replica_batched_calls",
            "Small replica calls (whole writes, reads) this node sent to a peer inside a Batch call, queued while other calls to that peer were in flight",
            batched_calls.clone(),
        );
        let batches = Counter::default();
        registry.register(
            "replica_batches",
            "Batch calls this node sent to its peers",
            batches.clone(),
        );
        let http_bytes_family = Family::<DirectionLabels, Counter>::default();
        let http_bytes = [Direction::In, Direction::Out].map(|direction| {
            http_bytes_family.get_or_create_owned(&DirectionLabels {
                direction: direction.label(),
            })
        });
        registry.register(
            "http_bytes",
            "Bytes of HTTP request bodies received (in) and response bodies sent (out)",
            http_bytes_family,
        );
        let resp_commands = Family::<RequestLabels, Counter>::default();
        let resp_durations = Family::<RequestLabels, LatencyHistogram>::default();
        for operation in CHART_OPERATIONS {
            // Created at zero, so that a dashboard finds the series before
            // the first command.
            let labels = RequestLabels {
                operation,
                outcome: "ok",
            };
            let _ = resp_commands.get_or_create(&labels);
            if LATENCY_OPERATIONS.contains(&operation) {
                let _ = resp_durations.get_or_create(&labels);
            }
        }
        registry.register(
            "resp_commands",
            "RESP commands answered, by operation (get: commands that read keys, put: that write them, delete: DEL and UNLINK, other: the rest, unknown commands included) and outcome",
            resp_commands.clone(),
        );
        registry.register(
            "resp_command_duration_seconds",
            "Time from a RESP command's turn in its pipeline to its reply, by operation and outcome",
            resp_durations.clone(),
        );
        let resp_bytes_family = Family::<DirectionLabels, Counter>::default();
        let resp_bytes = [Direction::In, Direction::Out].map(|direction| {
            resp_bytes_family.get_or_create_owned(&DirectionLabels {
                direction: direction.label(),
            })
        });
        registry.register(
            "resp_bytes",
            "Bytes of RESP requests read (in) and replies written (out)",
            resp_bytes_family,
        );
        let cluster_rejections = Family::<RejectionLabels, Counter>::default();
        for channel in [crate::secret::Channel::Gossip, crate::secret::Channel::Rpc] {
            for reason in crate::secret::Refused::ALL {
                let _ = cluster_rejections.get_or_create(&RejectionLabels {
                    channel: channel.as_str(),
                    reason: reason.as_str(),
                });
            }
        }
        registry.register(
            "cluster_rejections",
            "Node-to-node gossip packets and RPC connections this node refused (no or another cluster secret, replays, outside the replay window), by channel and reason",
            cluster_rejections.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                rpc_errors,
                quorum_failures,
                read_repairs,
                hints_delivered,
                streams,
                refused_writes,
                fence_refusals,
                batched_calls,
                batches,
                http_bytes,
                resp_commands,
                resp_durations,
                resp_bytes,
                cluster_rejections,
            }),
        }
    }

    /// Counts `bytes` of HTTP body received (`In`) or sent (`Out`).
    pub fn http_bytes(&self, direction: Direction, bytes: usize) {
        self.inner.http_bytes[direction.index()].inc_by(bytes as u64);
    }

    /// Counts `bytes` of RESP read (`In`) or written (`Out`).
    pub fn resp_bytes(&self, direction: Direction, bytes: usize) {
        self.inner.resp_bytes[direction.index()].inc_by(bytes as u64);
    }

    /// Counts a RESP command answered after `elapsed`; `operation` is one
    /// of [`CHART_OPERATIONS`], `outcome` one of [`OUTCOMES`].
    pub fn resp_command_done(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let labels = RequestLabels { operation, outcome };
        self.inner.resp_commands.get_or_create(&labels).inc();
        self.inner
            .resp_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a node-to-node packet or connection refused.
    pub fn cluster_rejected(&self, channel: &'static str, reason: &'static str) {
        self.inner
            .cluster_rejections
            .get_or_create(&RejectionLabels { channel, reason })
            .inc();
    }

    /// Counts a call refused by the ring fence.
    pub fn fence_refused(&self, rpc: &'static str) {
        self.inner
            .fence_refusals
            .get_or_create(&FenceLabels { rpc })
            .inc();
    }

    /// Counts one `Batch` call of `calls` replica calls sent to a peer.
    pub fn batch_sent(&self, calls: usize) {
        self.inner.batches.inc();
        self.inner.batched_calls.inc_by(calls as u64);
    }

    /// Counts a replica write refused unapplied.
    pub fn write_refused(&self, refusal: Refusal) {
        self.inner
            .refused_writes
            .get_or_create(&RefusalLabels {
                reason: refusal.label(),
            })
            .inc();
    }

    /// Counts an HTTP request answered after `elapsed`.
    pub fn request_done(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let labels = RequestLabels { operation, outcome };
        self.inner.requests.get_or_create(&labels).inc();
        self.inner
            .durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The request counters now, as the charts sample them: HTTP requests
    /// and RESP commands together, answered and failed (5xx, or a RESP
    /// error for the same causes) by chart operation, latency of key reads
    /// and writes, and bytes: HTTP bodies and RESP requests and replies.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        let families = [
            (&self.inner.requests, &self.inner.durations, &OPERATIONS[..]),
            (
                &self.inner.resp_commands,
                &self.inner.resp_durations,
                &CHART_OPERATIONS[..],
            ),
        ];
        for (requests, durations, operations) in families {
            for &operation in operations {
                let series = chart_index(operation);
                let timed = LATENCY_OPERATIONS.contains(&operation);
                for outcome in OUTCOMES {
                    let labels = RequestLabels { operation, outcome };
                    let Some(answered) = requests.get(&labels) else {
                        continue;
                    };
                    let answered = answered.get();
                    counts.requests[series] += answered;
                    if ERROR_OUTCOMES.contains(&outcome) {
                        counts.errors[series] += answered;
                    }
                    if timed && let Some(histogram) = durations.get(&labels) {
                        for (total, n) in counts.latency.iter_mut().zip(histogram.buckets()) {
                            *total += n;
                        }
                    }
                }
            }
        }
        counts.bytes_in = self.inner.http_bytes[0].get() + self.inner.resp_bytes[0].get();
        counts.bytes_out = self.inner.http_bytes[1].get() + self.inner.resp_bytes[1].get();
        counts
    }

    /// Counts a failed call `rpc` to `peer` that ended with `err`.
    pub fn rpc_failed(&self, peer: &NodeId, rpc: &'static str, err: &Error) {
        self.inner
            .rpc_errors
            .get_or_create(&RpcErrorLabels {
                peer: peer.to_string(),
                rpc,
                kind: err.code(),
            })
            .inc();
    }

    /// Counts `operation` as a quorum failure when `result` is one: too few
    /// replicas answered (503), or every one that failed had a full disk.
    pub fn observe_quorum<T>(&self, operation: &'static str, result: &Result<T>) {
        if matches!(result, Err(Error::Unavailable { .. } | Error::DiskFull)) {
            self.inner
                .quorum_failures
                .get_or_create(&OperationLabels { operation })
                .inc();
        }
    }

    /// Counts a record sent to a stale replica by read repair.
    pub fn read_repaired(&self) {
        self.inner.read_repairs.inc();
    }

    /// Counts `count` hints delivered.
    pub fn hints_delivered(&self, count: u64) {
        self.inner.hints_delivered.inc_by(count);
    }

    /// Counts a large value streaming in `direction` until the guard is
    /// dropped.
    pub fn stream_started(&self, direction: Direction) -> StreamGuard {
        let gauge = self.stream_gauge(direction);
        gauge.inc();
        StreamGuard { gauge }
    }

    fn stream_gauge(&self, direction: Direction) -> Gauge {
        self.inner.streams.get_or_create_owned(&DirectionLabels {
            direction: direction.label(),
        })
    }

    /// Large values streaming now: (in from clients, out to clients).
    pub fn streams_in_progress(&self) -> (u64, u64) {
        let now = |d| u64::try_from(self.stream_gauge(d).get()).unwrap_or(0);
        (now(Direction::In), now(Direction::Out))
    }

    /// The OpenMetrics text of every family: those counted so far and
    /// `figures`, read from the node for this scrape.
    pub fn encode(&self, figures: &NodeFigures) -> Result<String> {
        let mut text = String::new();
        encode_registry(&mut text, &self.inner.registry).map_err(encode_error)?;
        encode_registry(&mut text, &figures.registry()).map_err(encode_error)?;
        encode_eof(&mut text).map_err(encode_error)?;
        Ok(text)
    }
}

fn encode_error(err: std::fmt::Error) -> Error {
    Error::internal(format!("cannot encode the metrics: {err}"))
}

/// Keeps a stream counted in `ringkv_streams_in_progress` while it lives.
#[derive(Debug)]
pub struct StreamGuard {
    /// The gauge of its direction, decremented on drop.
    gauge: Gauge,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

mod figures;

pub use figures::{NodeFigures, RepairFigures, ScrubFigures, TransferFigures};

#[cfg(test)]
mod tests;
