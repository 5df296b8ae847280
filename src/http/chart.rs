//! The status page's live charts (F22): requests and 5xx answers per
//! second by operation, p50/p99 latency of key reads and writes, and body
//! bytes in and out per second, for the cluster and for each member, over
//! the last [`SAMPLES`] sampling intervals (15 minutes at the default
//! 10 s).
//!
//! [`sample_forever`] is the driver: at every slot boundary of the wall
//! clock it reads this node's request counters ([`Metrics::counts`]) into
//! [`Charts`] (the pure ring buffers of `metrics/history.rs`), takes in the
//! summaries the other members gossip, and gossips this node's own
//! ([`Membership::set_chart`]). [`charts`] renders all of it as inline SVG
//! on the server, one `<figure>` per chart; the page's script swaps the
//! part in with the other live parts (`/?part=charts`). Node names go
//! through the page's one [`escape`].

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::page::{colour, escape, human_bytes, shown_members};
use crate::membership::{Membership, View};
use crate::metrics::Metrics;
use crate::metrics::history::{
    CHART_OPERATIONS, Charts, History, SAMPLES, STALE_SLOTS, Sample, quantile,
};
use crate::ring::Ring;

/// The charts' samples, shared by the sampler and the page. A std mutex,
/// never held across an `.await`.
pub type SharedCharts = Arc<Mutex<Charts>>;

/// Milliseconds since the epoch now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes in every member's gossiped summary and forgets members no longer
/// in the ring.
pub fn ingest(charts: &mut Charts, view: &View, ring: &Ring) {
    for (node, json) in &view.charts {
        if let Some(summary) = crate::metrics::history::Summary::decode(json) {
            charts.ingest(node, &summary);
        }
    }
    charts.retain(|id| ring.member(id).is_some());
}

/// Samples this node's counters at every slot boundary, forever, and
/// gossips its newest samples.
pub async fn sample_forever(metrics: Metrics, membership: Arc<Membership>, charts: SharedCharts) {
    let interval = lock(&charts).interval_ms();
    loop {
        // Slots end on multiples of the interval since the epoch, so that
        // every node's samples line up.
        let now = now_ms();
        let slot = now / interval + 1;
        tokio::time::sleep(Duration::from_millis(slot * interval - now)).await;
        let counts = metrics.counts();
        let summary = {
            let mut charts = lock(&charts);
            charts.record(slot, counts);
            ingest(&mut charts, &membership.view(), &membership.ring());
            charts.summary().encode()
        };
        membership.set_chart(summary).await;
    }
}

fn lock(charts: &SharedCharts) -> std::sync::MutexGuard<'_, Charts> {
    charts.lock().unwrap_or_else(|p| p.into_inner())
}

/// The charts part of the page, as it is now.
pub fn charts_part(charts: &SharedCharts, view: &View, ring: &Ring) -> String {
    let mut charts = lock(charts);
    ingest(&mut charts, view, ring);
    let now_slot = now_ms() / charts.interval_ms();
    render(&charts, ring, now_slot)
}

/// How far back the charts go: `15 min` at the default interval.
pub fn window(charts: &SharedCharts) -> String {
    span(SAMPLES as u64 * lock(charts).interval_ms() / 1000)
}

/// What a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Requests per second, by operation.
    Requests,
    /// 5xx answers per second, by operation.
    Errors,
    /// p50 and p99 latency of key reads and writes, ms.
    Latency,
    /// Body bytes per second, in and out.
    Bytes,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Requests, Kind::Errors, Kind::Latency, Kind::Bytes];

    fn name(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Errors => "errors",
            Kind::Latency => "latency",
            Kind::Bytes => "bytes",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Requests => "requests/s",
            Kind::Errors => "errors/s (5xx)",
            Kind::Latency => "latency of key reads and writes",
            Kind::Bytes => "body bytes/s",
        }
    }

    fn series(self) -> &'static [&'static str] {
        match self {
            Kind::Requests | Kind::Errors => &CHART_OPERATIONS,
            Kind::Latency => &["p50", "p99"],
            Kind::Bytes => &["in", "out"],
        }
    }

    /// Series `index` of `sample`.
    fn value(self, index: usize, sample: &Sample) -> Option<f64> {
        let c = &sample.counts;
        match self {
            Kind::Requests => Some(sample.rate(c.requests[index])),
            Kind::Errors => Some(sample.rate(c.errors[index])),
            Kind::Latency => {
                let q = if index == 0 { 0.5 } else { 0.99 };
                quantile(&c.latency, q).map(|s| s * 1000.0)
            }
            Kind::Bytes => Some(sample.rate(if index == 0 { c.bytes_in } else { c.bytes_out })),
        }
    }

    /// The smallest top of the scale: an idle chart is flat at the bottom.
    fn floor(self) -> f64 {
        match self {
            Kind::Requests | Kind::Errors | Kind::Latency => 1.0,
            Kind::Bytes => 1024.0,
        }
    }

    /// `value` as people read it.
    fn format(self, value: f64) -> String {
        match self {
            Kind::Requests | Kind::Errors => format!("{}/s", short(value)),
            Kind::Latency => format!("{} ms", short(value)),
            Kind::Bytes => format!("{}/s", human_bytes(value.round() as u64)),
        }
    }
}

/// A number in three significant digits or so, without trailing zeros.
fn short(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ (for bytes 1, 2, 4, 8… × 1024ⁿ) at least
/// `value`.
fn nice_ceiling(value: f64, kind: Kind) -> f64 {
    let value = value.max(kind.floor());
    if kind == Kind::Bytes {
        return 2f64.powf(value.log2().ceil());
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// `seconds` as a window's length: `15 min`, `18 s`.
fn span(seconds: u64) -> String {
    if seconds >= 120 && seconds.is_multiple_of(60) {
        format!("{} min", seconds / 60)
    } else {
        format!("{seconds} s")
    }
}

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 110.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 14.0;

/// One chart of `history` ending at `now_slot`.
fn chart(kind: Kind, history: &History, now_slot: u64, scope: &str, window: &str) -> String {
    // Point i is slot `now_slot - (SAMPLES - 1 - i)`: the newest at the
    // right edge.
    let slot = |i: usize| now_slot.checked_sub((SAMPLES - 1 - i) as u64);
    let series: Vec<Vec<Option<f64>>> = (0..kind.series().len())
        .map(|index| {
            (0..SAMPLES)
                .map(|i| {
                    slot(i)
                        .and_then(|slot| history.at(slot))
                        .and_then(|s| kind.value(index, s))
                })
                .collect()
        })
        .collect();
    let peak = series
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(0.0, f64::max);
    let top = nice_ceiling(peak, kind);
    let x = |i: usize| i as f64 * WIDTH / (SAMPLES - 1) as f64;
    let y = |v: f64| TOP + (1.0 - (v / top).clamp(0.0, 1.0)) * (HEIGHT - TOP - BOTTOM);
    let mut paths = String::new();
    let mut legend = String::new();
    for (index, (name, values)) in kind.series().iter().zip(&series).enumerate() {
        let mut d = String::new();
        let mut drawing = false;
        for (i, value) in values.iter().enumerate() {
            match value {
                Some(v) => {
                    let command = if drawing { 'L' } else { 'M' };
                    let _ = write!(d, "{command}{:.1} {:.1}", x(i), y(*v));
                    drawing = true;
                }
                None => drawing = false,
            }
        }
        // The newest value, unless it is old: a member down shows none.
        let last = values
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, v)| v.map(|v| (i, v)))
            .filter(|(i, _)| (i + STALE_SLOTS as usize) >= SAMPLES - 1)
            .map(|(_, v)| v);
        let _ = write!(
            paths,
            r#"<path class="series s{index}" data-series="{name}" data-last="{last}" d="{d}"/>"#,
            last = last.map(|v| format!("{v:.3}")).unwrap_or_default(),
        );
        let _ = write!(
            legend,
            r#"<span class="key"><i class="s{index}"></i>{name} {value}</span>"#,
            value = last.map(|v| kind.format(v)).unwrap_or_else(|| "—".into()),
        );
    }
    let (base, middle) = (HEIGHT - BOTTOM, TOP + (HEIGHT - TOP - BOTTOM) / 2.0);
    format!(
        r#"<figure class="chart" data-chart="{name}"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}, {scope}"><line class="grid" x1="0" x2="{WIDTH}" y1="{TOP}" y2="{TOP}"/><line class="grid" x1="0" x2="{WIDTH}" y1="{middle}" y2="{middle}"/><line class="axis" x1="0" x2="{WIDTH}" y1="{base}" y2="{base}"/><text class="label" x="2" y="{ty}">{max}</text><text class="label" x="2" y="{HEIGHT}">−{window}</text><text class="label end" x="{WIDTH}" y="{HEIGHT}">now</text>{paths}</svg><figcaption><b>{title}</b> {legend}</figcaption></figure>"#,
        name = kind.name(),
        title = kind.title(),
        ty = TOP - 3.0,
        max = kind.format(top),
    )
}

/// Every chart: the cluster's row, then one row per member.
fn render(charts: &Charts, ring: &Ring, now_slot: u64) -> String {
    let interval_ms = charts.interval_ms();
    let window = span(SAMPLES as u64 * interval_ms / 1000);
    let row = |history: &History, scope: &str| {
        Kind::ALL
            .iter()
            .map(|kind| chart(*kind, history, now_slot, scope, &window))
            .collect::<String>()
    };
    let cluster = charts.cluster(now_slot);
    let reporting = charts.nodes().values().filter(|h| !h.is_empty()).count();
    let mut out = format!(
        r#"<p class="summary">one point per {every} over the last {window}; the cluster's figures are the sum of the {reporting} member{s} reporting (requests each node answered as the client's entry point; latency to the response headers)</p>
<div class="chart-row" data-scope="cluster"><h3>Cluster</h3><div class="charts">{row}</div></div>"#,
        every = if interval_ms.is_multiple_of(1000) {
            span(interval_ms / 1000)
        } else {
            format!("{interval_ms} ms")
        },
        s = if reporting == 1 { "" } else { "s" },
        row = row(&cluster, "cluster"),
    );
    let empty = History::default();
    for (index, member) in shown_members(ring).into_iter().enumerate() {
        let id = escape(member.id.as_str());
        let history = charts.nodes().get(&member.id).unwrap_or(&empty);
        let _ = write!(
            out,
            r#"<div class="chart-row" data-scope="node" data-node="{id}"><h3><span class="swatch" style="background:{colour}"></span>{id}{you}</h3><div class="charts">{row}</div></div>"#,
            colour = colour(index),
            you = if member.id == *charts.me() {
                " <small>(this node)</small>"
            } else {
                ""
            },
            row = row(history, &id),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::history::Counts;
    use crate::ring::{Member, MemberState, NodeId, Token};

    fn member(id: &str) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            zone: String::new(),
            state: MemberState::Normal,
            live: true,
            tokens: vec![Token(1)],
        }
    }

    #[test]
    fn scales_are_round() {
        assert_eq!(nice_ceiling(0.0, Kind::Requests), 1.0);
        assert_eq!(nice_ceiling(1.2, Kind::Requests), 2.0);
        assert_eq!(nice_ceiling(37.0, Kind::Latency), 50.0);
        assert_eq!(nice_ceiling(500.0, Kind::Requests), 500.0);
        assert_eq!(nice_ceiling(3000.0, Kind::Bytes), 4096.0);
        assert_eq!(span(900), "15 min");
        assert_eq!(span(18), "18 s");
        assert_eq!(short(50.0), "50");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(1234.4), "1234");
    }

    #[test]
    fn every_member_and_the_cluster_get_a_row_of_four_charts() {
        let me = NodeId::parse("127.0.0.1:1").unwrap();
        let ring = Ring::new(vec![member("127.0.0.1:1"), member("127.0.0.1:2")], 2);
        let mut charts = Charts::new(me, 200);
        for slot in 1001..=1005u64 {
            let mut counts = Counts {
                requests: [slot * 10, slot, 0, 0],
                bytes_out: slot * 4096,
                ..Counts::default()
            };
            counts.latency[2] = slot * 11;
            charts.record(slot, counts);
        }
        let html = render(&charts, &ring, 1005);
        assert_eq!(html.matches(r#"class="chart-row""#).count(), 3);
        assert_eq!(html.matches("<figure").count(), 12);
        // 4 + 4 + 2 + 2 series per row.
        assert_eq!(html.matches("<path class=\"series").count(), 36);
        // Four samples (the first reading starts the count), 10 gets per
        // 200 ms: 50/s.
        assert!(
            html.contains(r#"data-series="get" data-last="50.000""#),
            "{html}"
        );
        assert!(html.contains("get 50/s"), "{html}");
        let cluster = &html[..html.find(r#"data-scope="node""#).unwrap()];
        assert_eq!(cluster.matches(r#"data-last="50.000""#).count(), 1);
        // The second member has no samples: its paths are empty.
        let other = &html[html.find(r#"data-node="127.0.0.1:2""#).unwrap()..];
        assert_eq!(other.matches(r#"d="""#).count(), 12);
        // The newest point is at the right edge, the gap before the first
        // sample is not drawn.
        assert!(html.contains("L300.0 "), "{html}");
        assert!(html.contains(r#"d="M289.9 "#), "{html}");
        // Later, with no new sample (the node stopped), the lines stay but
        // show no current value.
        let later = render(&charts, &ring, 1005 + STALE_SLOTS + 1);
        assert!(
            later.contains(r#"data-series="get" data-last="" d="M"#),
            "{later}"
        );
        assert!(later.contains("get —"), "{later}");
        let soon = render(&charts, &ring, 1005 + STALE_SLOTS);
        assert!(soon.contains("get 50/s"), "{soon}");
    }
}
