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
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

/// What a node is at the moment of a scrape (filled in by the HTTP layer
/// from the store, the ring and the lifecycle).
#[derive(Debug, Clone, Default)]
pub struct NodeFigures {
    /// Keys stored with a live value (tombstones not counted).
    pub keys: u64,
    /// Bytes the store uses on disk (0 with `--in-memory`).
    pub disk_bytes: u64,
    /// Hints waiting for delivery to other replicas.
    pub hints_pending: u64,
    /// Corrupt copies dropped since the node started.
    pub corrupt_copies: u64,
    /// Members of the ring by shown state (names from [`MEMBER_STATES`]).
    pub members: Vec<(&'static str, u64)>,
    /// Every live member publishes the ring digest this node computes.
    pub agreed: bool,
    /// Anti-entropy, running or last run.
    pub repair: RepairFigures,
    /// Ranges streaming into this node (bootstrap, removals, N changes),
    /// running or last.
    pub transfer: TransferFigures,
    /// The scrub of this node's data, running or last run.
    pub scrub: ScrubFigures,
    /// Bytes free for this process on the data disk (`None` with
    /// `--in-memory`).
    pub disk_free: Option<u64>,
}

/// The scrub on this node (the lifecycle's scrub progress).
#[derive(Debug, Clone, Default)]
pub struct ScrubFigures {
    /// A run is under way.
    pub active: bool,
    /// Records checked by the current or last run.
    pub records: u64,
    /// Value bytes checked by it.
    pub bytes: u64,
    /// Runs finished since the node started.
    pub runs: u64,
}

/// Anti-entropy on this node (the lifecycle's repair progress).
#[derive(Debug, Clone, Default)]
pub struct RepairFigures {
    /// A run is under way.
    pub active: bool,
    /// Ranges compared by the current or last run.
    pub ranges_done: u64,
    /// Ranges this node is a replica of.
    pub ranges: u64,
    /// Hash-tree leaves found differing by it.
    pub leaves: u64,
    /// Records it fetched from other replicas.
    pub pulled: u64,
    /// Records it sent to other replicas.
    pub pushed: u64,
    /// Bytes of its comparisons' messages, sent and received.
    pub bytes: u64,
    /// Expired tombstones it dropped.
    pub tombstones_dropped: u64,
    /// Runs finished since the node started.
    pub runs: u64,
}

/// Ranges streaming into this node (the lifecycle's transfer progress).
#[derive(Debug, Clone, Default)]
pub struct TransferFigures {
    /// A transfer is running.
    pub active: bool,
    /// Records stored by the current or last transfer.
    pub records: u64,
    /// Value bytes received by it.
    pub bytes: u64,
    /// Sources finished.
    pub sources_done: u64,
    /// Sources to read.
    pub sources: u64,
}

/// A count as a gauge value (saturating: a gauge is an i64).
fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn flag(value: bool) -> ConstGauge {
    ConstGauge::new(i64::from(value))
}

impl NodeFigures {
    /// These figures as a registry of constant metrics, for one scrape.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "keys_stored",
            "Keys this node stores with a live value (tombstones not counted)",
            gauge(self.keys),
        );
        r.register(
            "bytes_stored",
            "Bytes this node's store uses on disk (0 with --in-memory)",
            gauge(self.disk_bytes),
        );
        r.register(
            "hints_pending",
            "Hints waiting on this node for replicas that missed writes",
            gauge(self.hints_pending),
        );
        r.register(
            "corrupt_copies_dropped",
            "Copies this node found corrupt (by the scrub or a read) and dropped since it started",
            ConstCounter::new(self.corrupt_copies),
        );
        let members = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for state in MEMBER_STATES {
            let count = self
                .members
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| *n)
                .sum::<u64>();
            members
                .get_or_create(&[("state", state)])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        r.register(
            "members",
            "Members of the ring as this node sees them, by state",
            members,
        );
        r.register(
            "ring_agreed",
            "1 when every live member publishes the ring digest this node computes",
            flag(self.agreed),
        );
        let repair = &self.repair;
        r.register(
            "repair_active",
            "1 while an anti-entropy run is under way on this node",
            flag(repair.active),
        );
        r.register(
            "repair_ranges_done",
            "Ranges compared by the current or last anti-entropy run",
            gauge(repair.ranges_done),
        );
        r.register(
            "repair_ranges",
            "Ranges this node is a replica of (what a run compares)",
            gauge(repair.ranges),
        );
        r.register(
            "repair_leaves_differing",
            "Hash-tree leaves found differing by the current or last run",
            gauge(repair.leaves),
        );
        let records = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for (direction, count) in [("pulled", repair.pulled), ("pushed", repair.pushed)] {
            records
                .get_or_create(&[("direction", direction)])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        r.register(
            "repair_records",
            "Records the current or last run fetched from (pulled) or sent to (pushed) other replicas",
            records,
        );
        r.register(
            "repair_bytes",
            "Bytes of the comparisons' messages of the current or last run, sent and received",
            gauge(repair.bytes),
        );
        r.register(
            "repair_tombstones_dropped",
            "Expired tombstones the current or last run dropped",
            gauge(repair.tombstones_dropped),
        );
        r.register(
            "repair_runs",
            "Anti-entropy runs finished since the node started",
            ConstCounter::new(repair.runs),
        );
        let transfer = &self.transfer;
        r.register(
            "transfer_active",
            "1 while ranges stream into this node (bootstrap, removal, change of N)",
            flag(transfer.active),
        );
        r.register(
            "transfer_records",
            "Records stored by the current or last range transfer into this node",
            gauge(transfer.records),
        );
        r.register(
            "transfer_bytes",
            "Value bytes received by the current or last range transfer",
            gauge(transfer.bytes),
        );
        r.register(
            "transfer_sources_done",
            "Sources the current or last transfer finished reading",
            gauge(transfer.sources_done),
        );
        r.register(
            "transfer_sources",
            "Sources the current or last transfer reads",
            gauge(transfer.sources),
        );
        let scrub = &self.scrub;
        r.register(
            "scrub_active",
            "1 while the scrub reads back and checks this node's values",
            flag(scrub.active),
        );
        r.register(
            "scrub_records",
            "Records checked by the current or last scrub run",
            gauge(scrub.records),
        );
        r.register(
            "scrub_bytes",
            "Value bytes checked by the current or last scrub run",
            gauge(scrub.bytes),
        );
        r.register(
            "scrub_runs",
            "Scrub runs finished since the node started",
            ConstCounter::new(scrub.runs),
        );
        if let Some(free) = self.disk_free {
            r.register(
                "disk_free_bytes",
                "Bytes free for this node on its data disk (writes get 507 below --disk-reserve)",
                gauge(free),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
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
}
