//! The last few minutes of a node's request figures, for the status page's
//! charts (F22): a fixed-size ring buffer of samples per member,
//! each sample the difference between two readings of the node's own
//! counters ([`Counts`], read from [`super::Metrics`], never counted a
//! second time).
//!
//! Time is cut in *slots* of the sampling interval, aligned to the wall
//! clock (slot `k` ends at `k × interval` ms since the epoch), so that the
//! samples of different nodes of a cluster line up and the cluster's figure
//! for a slot is the sum of its members' samples for it. Latency quantiles
//! come from the histogram buckets' increase over a slot, summed over nodes
//! before the quantile is taken (quantiles cannot be added).
//!
//! Each node gossips its latest [`GOSSIPED_SAMPLES`] samples ([`Summary`]),
//! a few hundred bytes (1.7 KB at most); every node keeps what it hears in the same ring
//! buffers, so a gossip round missed now and then leaves no gap.
//!
//! Invariants: a history holds at most [`SAMPLES`] samples, in increasing
//! slot order, none older than [`SAMPLES`] slots before its newest. Pure:
//! no clock, no I/O; the caller passes the slot.
//!
//! What it does not do: keep anything across restarts, or know the members
//! that have not gossiped a summary yet.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ring::NodeId;

/// Samples kept per node: with the default 10 s interval, 15 minutes.
pub const SAMPLES: usize = 90;
/// Samples each node gossips: its newest ones, so that a peer that missed
/// a gossip round or three still gets every sample (60 to 430 bytes each).
pub const GOSSIPED_SAMPLES: usize = 4;
/// A node whose newest sample is more than this many slots old no longer
/// holds the cluster's newest point back (it is down or partitioned).
pub const STALE_SLOTS: u64 = 3;
/// The operations charted, each a series; `other` is every other route
/// (`head`, `list`, `ring`, the page, `/metrics`…).
pub const CHART_OPERATIONS: [&str; 4] = ["get", "put", "delete", "other"];
/// Operations whose latency is charted: client reads and writes of keys.
pub const LATENCY_OPERATIONS: [&str; 4] = ["get", "head", "put", "delete"];
/// Upper bound of the smallest latency bucket, in seconds: 0.5 ms, about a
/// small read on a quiet node.
pub const LATENCY_FIRST_BUCKET_SECONDS: f64 = 0.0005;
/// Finite latency buckets, each twice the previous: 0.5 ms to 32.8 s
/// (large uploads land in the last ones or in +Inf).
pub const LATENCY_FINITE_BUCKETS: usize = 17;
/// Latency buckets with the +Inf one.
pub const LATENCY_BUCKETS: usize = LATENCY_FINITE_BUCKETS + 1;

/// Upper bound of latency bucket `index`, seconds (`+Inf` for the last).
pub fn latency_bound(index: usize) -> f64 {
    if index >= LATENCY_FINITE_BUCKETS {
        f64::INFINITY
    } else {
        LATENCY_FIRST_BUCKET_SECONDS * f64::from(1u32 << index)
    }
}

/// The chart series of an operation name.
pub fn chart_index(operation: &str) -> usize {
    CHART_OPERATIONS
        .iter()
        .position(|o| *o == operation)
        .unwrap_or(CHART_OPERATIONS.len() - 1)
}

/// Counter readings (totals since the node started) or their increase over
/// a slot: what a sample holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests answered, by [`CHART_OPERATIONS`].
    pub requests: [u64; 4],
    /// Of them, answered 5xx (`error` and `unavailable` outcomes).
    pub errors: [u64; 4],
    /// Latency of [`LATENCY_OPERATIONS`]: observations per bucket (not
    /// cumulative), by [`latency_bound`].
    pub latency: [u64; LATENCY_BUCKETS],
    /// Bytes of request bodies received.
    pub bytes_in: u64,
    /// Bytes of response bodies sent.
    pub bytes_out: u64,
}

impl Counts {
    /// The increase from `earlier` to `self` (0 where a counter went down,
    /// which counters do not).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut out = Counts {
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            ..Counts::default()
        };
        for i in 0..4 {
            out.requests[i] = self.requests[i].saturating_sub(earlier.requests[i]);
            out.errors[i] = self.errors[i].saturating_sub(earlier.errors[i]);
        }
        for i in 0..LATENCY_BUCKETS {
            out.latency[i] = self.latency[i].saturating_sub(earlier.latency[i]);
        }
        out
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for i in 0..4 {
            self.requests[i] += other.requests[i];
            self.errors[i] += other.errors[i];
        }
        for i in 0..LATENCY_BUCKETS {
            self.latency[i] += other.latency[i];
        }
    }
}

/// The `q` quantile (0..=1) of the latencies in `buckets`, seconds, as
/// Prometheus' `histogram_quantile` estimates it: linear within the bucket
/// the rank falls in, the largest finite bound for the +Inf bucket. `None`
/// without observations.
pub fn quantile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            if i >= LATENCY_FINITE_BUCKETS {
                return Some(latency_bound(LATENCY_FINITE_BUCKETS - 1));
            }
            let lower = if i == 0 { 0.0 } else { latency_bound(i - 1) };
            let upper = latency_bound(i);
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below += count;
    }
    Some(latency_bound(LATENCY_FINITE_BUCKETS - 1))
}

/// What happened on one node over one slot (or several, when the sampler
/// was late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The slot it ends: `slot × interval` ms since the epoch.
    pub slot: u64,
    /// Milliseconds it covers.
    pub span_ms: u64,
    /// The counters' increase over it.
    pub counts: Counts,
}

impl Sample {
    /// `count` per second over this sample.
    pub fn rate(&self, count: u64) -> f64 {
        count as f64 * 1000.0 / self.span_ms.max(1) as f64
    }
}

/// One node's samples, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds `sample` in slot order; a slot already held or older than the
    /// window is ignored.
    pub fn push(&mut self, sample: Sample) {
        if sample.span_ms == 0 || self.samples.iter().any(|s| s.slot == sample.slot) {
            return;
        }
        if let Some(newest) = self.newest()
            && sample.slot + SAMPLES as u64 <= newest
        {
            return;
        }
        let at = self.samples.partition_point(|s| s.slot < sample.slot);
        self.samples.insert(at, sample);
        let newest = self.newest().unwrap_or(sample.slot);
        while self.samples.len() > SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| s.slot + SAMPLES as u64 <= newest)
        {
            self.samples.pop_front();
        }
    }

    /// The newest sample's slot.
    pub fn newest(&self) -> Option<u64> {
        self.samples.back().map(|s| s.slot)
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// The sample of `slot`, when held.
    pub fn at(&self, slot: u64) -> Option<&Sample> {
        let i = self.samples.partition_point(|s| s.slot < slot);
        self.samples.get(i).filter(|s| s.slot == slot)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// A sample as gossiped: short names, latency buckets sparse.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireSample {
    /// Slot.
    t: u64,
    /// Span, ms.
    d: u64,
    /// Requests by chart operation.
    r: [u64; 4],
    /// 5xx answers by chart operation.
    e: [u64; 4],
    /// Latency buckets that are not 0: (index, count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    l: Vec<(usize, u64)>,
    /// Bytes in.
    i: u64,
    /// Bytes out.
    o: u64,
}

/// What a node gossips about its figures (gossip key `chart`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Its sampling interval, ms: slots of nodes with another interval do
    /// not line up, and theirs are not summed with this node's.
    interval_ms: u64,
    /// Its newest samples.
    samples: Vec<WireSample>,
}

impl Summary {
    /// The summary's JSON.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A summary from its JSON; `None` when it is not one.
    pub fn decode(json: &str) -> Option<Summary> {
        serde_json::from_str(json).ok()
    }

    /// Its samples; those that are not well formed are left out.
    fn decoded(&self) -> impl Iterator<Item = Sample> + '_ {
        self.samples.iter().filter_map(|w| {
            let mut latency = [0; LATENCY_BUCKETS];
            for &(index, count) in &w.l {
                *latency.get_mut(index)? = count;
            }
            (w.d > 0).then_some(Sample {
                slot: w.t,
                span_ms: w.d,
                counts: Counts {
                    requests: w.r,
                    errors: w.e,
                    latency,
                    bytes_in: w.i,
                    bytes_out: w.o,
                },
            })
        })
    }
}

/// The samples of every member this node knows of: its own, taken by
/// [`Charts::record`], and the others', heard in gossip
/// ([`Charts::ingest`]).
#[derive(Debug, Clone)]
pub struct Charts {
    /// This node.
    me: NodeId,
    /// The sampling interval, ms.
    interval_ms: u64,
    /// The last reading of this node's counters and its slot: the next
    /// sample is the increase from it.
    last: Option<(u64, Counts)>,
    /// Each member's samples.
    nodes: BTreeMap<NodeId, History>,
}

impl Charts {
    /// No sample yet, sampling every `interval_ms`.
    pub fn new(me: NodeId, interval_ms: u64) -> Charts {
        Charts {
            me,
            interval_ms: interval_ms.max(1),
            last: None,
            nodes: BTreeMap::new(),
        }
    }

    /// The sampling interval, ms.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// This node's counters read at the end of `slot`: records the sample
    /// since the last reading (the first reading only starts the count: it
    /// covers part of a slot). A slot not after the last one (the clock
    /// went back) is skipped, its requests left to the next sample.
    pub fn record(&mut self, slot: u64, counts: Counts) {
        let previous = self.last;
        if previous.is_some_and(|(last_slot, _)| slot <= last_slot) {
            return;
        }
        self.last = Some((slot, counts));
        if let Some((last_slot, last_counts)) = previous {
            let sample = Sample {
                slot,
                span_ms: (slot - last_slot) * self.interval_ms,
                counts: counts.since(&last_counts),
            };
            self.nodes.entry(self.me.clone()).or_default().push(sample);
        }
    }

    /// What this node gossips: its newest samples.
    pub fn summary(&self) -> Summary {
        let samples = self
            .nodes
            .get(&self.me)
            .map(|h| {
                let skip = h.len().saturating_sub(GOSSIPED_SAMPLES);
                h.samples()
                    .skip(skip)
                    .map(|s| WireSample {
                        t: s.slot,
                        d: s.span_ms,
                        r: s.counts.requests,
                        e: s.counts.errors,
                        l: s.counts
                            .latency
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| **c > 0)
                            .map(|(i, c)| (i, *c))
                            .collect(),
                        i: s.counts.bytes_in,
                        o: s.counts.bytes_out,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Summary {
            interval_ms: self.interval_ms,
            samples,
        }
    }

    /// Takes in what `node` gossips (this node's own summary is ignored:
    /// its history is here already). A summary of another interval is
    /// ignored too.
    pub fn ingest(&mut self, node: &NodeId, summary: &Summary) {
        if *node == self.me || summary.interval_ms != self.interval_ms {
            return;
        }
        let history = self.nodes.entry(node.clone()).or_default();
        for sample in summary.decoded() {
            history.push(sample);
        }
    }

    /// Forgets the members `keep` says no (removed from the ring).
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        let me = self.me.clone();
        self.nodes.retain(|id, _| *id == me || keep(id));
    }

    /// Each member's samples.
    pub fn nodes(&self) -> &BTreeMap<NodeId, History> {
        &self.nodes
    }

    /// The cluster's figures: per slot, the sum of every member's sample
    /// for it. The newest slot shown is the newest every member still
    /// reporting (a sample within [`STALE_SLOTS`] of `now_slot`) has
    /// reported, so that the last point is not low for want of a sample
    /// still in gossip.
    pub fn cluster(&self, now_slot: u64) -> History {
        let reporting = self
            .nodes
            .values()
            .filter_map(History::newest)
            .filter(|newest| newest + STALE_SLOTS >= now_slot);
        let complete = reporting
            .min()
            .or_else(|| self.nodes.values().filter_map(History::newest).max());
        let mut sums: BTreeMap<u64, (u64, Counts)> = BTreeMap::new();
        for history in self.nodes.values() {
            for s in history
                .samples()
                .filter(|s| complete.is_some_and(|c| s.slot <= c))
            {
                let entry = sums.entry(s.slot).or_default();
                entry.0 = entry.0.max(s.span_ms);
                entry.1.add(&s.counts);
            }
        }
        let mut out = History::default();
        for (slot, (span_ms, counts)) in sums {
            out.push(Sample {
                slot,
                span_ms,
                counts,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn counts(get: u64) -> Counts {
        Counts {
            requests: [get, 0, 0, 0],
            ..Counts::default()
        }
    }

    #[test]
    fn bounds_double_from_half_a_millisecond() {
        assert_eq!(latency_bound(0), 0.0005);
        assert_eq!(latency_bound(3), 0.004);
        assert_eq!(latency_bound(16), 0.0005 * 65536.0);
        assert!(latency_bound(17).is_infinite());
        assert_eq!(chart_index("put"), 1);
        assert_eq!(chart_index("status_page"), 3);
    }

    #[test]
    fn quantiles_from_bucket_deltas() {
        let mut buckets = [0; LATENCY_BUCKETS];
        assert_eq!(quantile(&buckets, 0.5), None);
        // 100 requests: 50 in (0.5, 1] ms, 49 in (1, 2] ms, 1 in (16, 32] ms.
        buckets[1] = 50;
        buckets[2] = 49;
        buckets[6] = 1;
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - 0.002).abs() < 1e-12, "{p99}");
        let p995 = quantile(&buckets, 0.995).unwrap();
        assert!((p995 - 0.024).abs() < 1e-9, "{p995}");
        // Rank inside the first bucket interpolates from 0.
        let mut first = [0; LATENCY_BUCKETS];
        first[0] = 4;
        assert!((quantile(&first, 0.5).unwrap() - 0.00025).abs() < 1e-12);
        // Beyond the last finite bound: that bound.
        let mut slow = [0; LATENCY_BUCKETS];
        slow[LATENCY_BUCKETS - 1] = 3;
        assert_eq!(quantile(&slow, 0.99), Some(latency_bound(16)));

        // The quantile of one interval is that of the buckets' increase, not
        // of the totals: an earlier slow minute does not hide a fast one.
        let mut before = Counts::default();
        before.latency[10] = 1000;
        let mut after = before;
        after.latency[0] += 10;
        let delta = after.since(&before);
        assert_eq!(delta.latency.iter().sum::<u64>(), 10);
        assert!(quantile(&delta.latency, 0.99).unwrap() <= 0.0005);
        assert!(quantile(&after.latency, 0.5).unwrap() > 0.1);
    }

    #[test]
    fn a_history_is_a_fixed_size_ring_buffer() {
        let mut h = History::default();
        for slot in 1..=1000 {
            h.push(Sample {
                slot,
                span_ms: 10,
                counts: counts(slot),
            });
            assert!(h.len() <= SAMPLES);
        }
        assert_eq!(h.len(), SAMPLES);
        assert_eq!(h.newest(), Some(1000));
        assert_eq!(h.samples().next().map(|s| s.slot), Some(1000 - 89));
        // Late samples fill their place; duplicates and samples older than
        // the window are ignored.
        let mut h = History::default();
        for slot in [10, 12, 11, 12, 10] {
            h.push(Sample {
                slot,
                span_ms: 10,
                counts: counts(slot),
            });
        }
        let slots: Vec<u64> = h.samples().map(|s| s.slot).collect();
        assert_eq!(slots, [10, 11, 12]);
        assert_eq!(h.at(11).map(|s| s.counts.requests[0]), Some(11));
        h.push(Sample {
            slot: 200,
            span_ms: 10,
            counts: counts(1),
        });
        let slots: Vec<u64> = h.samples().map(|s| s.slot).collect();
        assert_eq!(slots, [200], "samples a window behind go");
        h.push(Sample {
            slot: 5,
            span_ms: 10,
            counts: counts(1),
        });
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn samples_are_counter_increases_per_slot() {
        let mut charts = Charts::new(id("127.0.0.1:1"), 200);
        charts.record(100, counts(7));
        assert!(charts.nodes().is_empty(), "the first reading only starts");
        charts.record(101, counts(27));
        charts.record(101, counts(30));
        // The sampler was late: one sample over two slots.
        charts.record(103, counts(47));
        let mine: Vec<Sample> = charts.nodes()[&id("127.0.0.1:1")]
            .samples()
            .copied()
            .collect();
        assert_eq!(mine.len(), 2);
        assert_eq!((mine[0].slot, mine[0].counts.requests[0]), (101, 20));
        assert_eq!(mine[0].rate(mine[0].counts.requests[0]), 100.0);
        assert_eq!((mine[1].slot, mine[1].span_ms), (103, 400));
        // The repeated slot was skipped: its requests count in the next.
        assert_eq!(mine[1].counts.requests[0], 20);
    }

    #[test]
    fn a_summary_stays_small() {
        // The worst case: every counter large, every latency bucket used.
        let mut charts = Charts::new(id("127.0.0.1:1"), 10_000);
        for slot in 0..=20u64 {
            let n = slot * 123_456_789;
            let counts = Counts {
                requests: [n; 4],
                errors: [n; 4],
                latency: [n; LATENCY_BUCKETS],
                bytes_in: n * 1_000_000,
                bytes_out: n * 1_000_000,
            };
            charts.record(slot, counts);
        }
        let wire = charts.summary().encode();
        assert_eq!(
            Summary::decode(&wire).unwrap().samples.len(),
            GOSSIPED_SAMPLES
        );
        assert!(wire.len() < 2048, "{} bytes: {wire}", wire.len());
        eprintln!("a summary at its largest: {} bytes", wire.len());
    }

    #[test]
    fn gossiped_summaries_make_the_cluster_sum() {
        let (a, b, c) = (id("127.0.0.1:1"), id("127.0.0.1:2"), id("127.0.0.1:3"));
        let mut on_a = Charts::new(a.clone(), 200);
        let mut on_b = Charts::new(b.clone(), 200);
        let mut on_c = Charts::new(c.clone(), 200);
        for slot in 0..=10u64 {
            let mut fast = counts(slot * 10);
            fast.latency[0] = slot * 10;
            fast.bytes_in = slot * 100;
            on_a.record(slot, fast);
            on_b.record(slot, counts(slot));
            let mut slow_total = counts(slot);
            slow_total.latency[8] = slot;
            slow_total.errors[0] = slot;
            on_c.record(slot, slow_total);
            // Gossip reaches a every other slot only: summaries carry
            // several samples, so nothing is missed.
            if slot % 2 == 0 {
                let wire = on_b.summary().encode();
                assert!(wire.len() < 600, "{} bytes: {wire}", wire.len());
                on_a.ingest(&b, &Summary::decode(&wire).unwrap());
                on_a.ingest(&c, &Summary::decode(&on_c.summary().encode()).unwrap());
            }
        }
        assert_eq!(on_a.nodes()[&b].len(), 10);
        let cluster = on_a.cluster(10);
        assert_eq!(cluster.len(), 10);
        let last = cluster.at(10).unwrap();
        assert_eq!(last.counts.requests[0], 12);
        assert_eq!(last.counts.errors[0], 1);
        assert_eq!(last.counts.bytes_in, 100);
        assert_eq!(last.rate(last.counts.requests[0]), 60.0);
        // 10 fast requests and one slow: p50 fast, the slowest shows at p99.
        let p50 = quantile(&last.counts.latency, 0.5).unwrap();
        let p99 = quantile(&last.counts.latency, 0.99).unwrap();
        assert!(p50 <= 0.0005, "{p50}");
        assert!(p99 > 0.064, "{p99}");

        // a has slot 11, c reports but has not reached it: the cluster's
        // newest point waits for c.
        on_a.record(11, counts(200));
        assert_eq!(on_a.cluster(11).newest(), Some(10));
        // c stops reporting: after STALE_SLOTS it no longer holds it back.
        on_a.record(14, counts(300));
        assert_eq!(on_a.cluster(14).newest(), Some(14));

        // Another interval, this node's own summary and junk are ignored.
        let mut on_d = Charts::new(id("127.0.0.1:4"), 10_000);
        on_d.ingest(&a, &on_a.summary());
        assert!(on_d.nodes().is_empty());
        assert!(Summary::decode("{}").is_none());
        let bad = r#"{"interval_ms":200,"samples":[{"t":5,"d":200,"r":[1,0,0,0],"e":[0,0,0,0],"l":[[99,1]],"i":0,"o":0},{"t":6,"d":0,"r":[1,0,0,0],"e":[0,0,0,0],"i":0,"o":0}]}"#;
        let mut on_e = Charts::new(id("127.0.0.1:5"), 200);
        on_e.ingest(&a, &Summary::decode(bad).unwrap());
        assert!(on_e.nodes()[&a].is_empty());
        on_a.retain(|id| *id != b);
        assert!(!on_a.nodes().contains_key(&b));
        assert!(on_a.nodes().contains_key(&a));
    }
}
