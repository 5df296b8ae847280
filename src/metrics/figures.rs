//! What a node is at the moment of a scrape ([`NodeFigures`]: keys,
//! bytes, hints pending, members by state, repair, transfer and scrub
//! progress, disk room), encoded as constant metrics for that scrape only.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::{MEMBER_STATES, PREFIX};

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
    pub(super) fn registry(&self) -> Registry {
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
