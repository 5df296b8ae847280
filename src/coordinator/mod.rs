//! Quorum reads and writes (F12), deletes as tombstones (F13), read repair
//! (F14) and streaming replication (F16). Any node coordinates any request.
//!
//! # Write
//! The coordinator stamps the write with its clock (F11) and sends it to all
//! N replicas of the key at once. A value that fits in one piece goes in one
//! `Write` call per replica; a larger one is streamed: each piece read from
//! the client is handed to every replica's stream as it arrives, through
//! bounded channels, so memory stays bounded by
//! `replicas x STREAM_QUEUE_PIECES x STREAM_PIECE_BYTES` whatever the size.
//! A replica that stops accepting for [`STREAM_STEP_TIMEOUT`] is dropped
//! from the write; when fewer than W remain, the write is abandoned and no
//! replica commits it. The reply comes once W replicas confirmed; the other
//! calls carry on in the background.
//!
//! # Read
//! The coordinator asks R of the key's replicas (this node first, then
//! those seen up): the first for the record with its value when small,
//! the others for the record alone, whose version says whether it is the
//! newest. It asks the remaining replicas too when one of those fails or
//! has not answered within the hedge delay (three times the mean time a
//! peer takes to answer a read, 5 ms to 1 s), and on one read in
//! `--full-read-every` (10), so that read repair also reaches replicas a
//! quorum leaves out. It answers from the newest of the first R replies
//! (its value streamed from a replica holding it when the one that sent a
//! value is stale), and keeps listening to the rest in the background:
//! every replica seen holding an older version (or nothing) is sent the
//! newest one (read repair). A
//! replica whose copy fails its checksums answers `Corrupt` (and drops the
//! copy): it counts as a failed answer, the read is served by the others,
//! and it is sent the newest version like a stale one. A large value whose
//! source fails as corrupt midway is resumed from the next source, and the
//! failed source is sent the value in the background.
//!
//! # What is not guaranteed
//! - A failed write (503) may still have been stored by some replicas and
//!   may surface later through read repair; it never half-applies on one
//!   replica.
//! - With W + R <= N a read may miss the latest acknowledged write.
//!
//! # Expiry (F28)
//! A value may carry an expiry (`RecordMeta::expires_at`, cluster time in
//! ms): set when it is written, or changed alone by [`Coordinator::touch`],
//! which keeps the value's version and sets its `touch` (see `version.rs`),
//! so that it orders after that value and before any later write. Every
//! replica keeps the newest record as usual; a read whose newest record has
//! expired answers `NotFound`, judged against the latest clock among this
//! node's and those of the replicas that answered ([`Clock::cluster_now_ns`]),
//! so that a node whose clock is behind does not serve it. Read repair
//! still sends that expired record to stale replicas: an older value can
//! never come back from them.
//!
//! # Transitions and hints
//! While a node joins or leaves or N changes, a write also goes to the
//! key's *pending* replicas (those it will have once the transition is
//! over, [`Ring::pending_of`]) and needs W of the current replicas and W of
//! the target ones ([`WritePlan`]), so that at least W of the key's
//! replicas have it whichever way the transition ends, and a pending
//! replica that is down does not fail writes. Reads stay with the current
//! replicas.
//!
//! A replica that fails a write (down, timed out) gets a *hint*: the
//! record kept in this node's store, with its value when small, delivered
//! by the lifecycle's hint task when the replica is back (F15). Hints do
//! not count towards W.
//!
//! # Files
//! - `mod.rs`: [`Coordinator`] and its settings and results; planning
//!   (read and write plans, the ring fence, learning from refusals) and
//!   the helpers every request uses (`gather`, `quorum_error`).
//! - `write.rs`: whole writes, deletes and expiry changes, stamping again
//!   after a newer version, hints.
//! - `stream.rs`: streamed writes to every replica at once, reading the
//!   client's body in pieces, and value streams with fail-over between
//!   sources.
//! - `read.rs`: quorum reads, read repair, and making a replica hold a
//!   record (`push_record`, `repair_copy`).
//! - `quorum.rs`: [`Quorum`], [`WritePlan`] and [`ReadPlan`], pure.
//! - `tests.rs`: unit tests of the decisions above, against fake replicas.
//!
//! # Testing without a network
//! Two seams let unit tests drive a real [`Coordinator`]: the rings come
//! from `Rings` (gossip's [`Membership`], or in tests a
//! `membership::fixed::FixedMembership` built from a fixed view), and
//! [`Coordinator::replica`] hands out a `ReplicaHandle::Fake` for a node
//! the test registered (`rpc/fake.rs`: a replica in memory that can be
//! slow, fail, or refuse on the ring fence). Both are enum variants that
//! exist only in test builds, not trait objects: a production build has
//! one way to reach a ring and two to reach a replica, each call is direct,
//! and no future is boxed on the hot path for the sake of tests.

mod quorum;
mod read;
mod stream;
#[cfg(test)]
mod tests;
mod write;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prost::Message;

pub use self::quorum::{Quorum, ReadPlan, WritePlan};
pub use self::stream::{STREAM_PIECE_BYTES, STREAM_STEP_TIMEOUT};
use crate::error::{Error, Result};
use crate::membership::{Membership, PeerState, merge};
use crate::metrics::Metrics;
use crate::proto::{Fence, FenceRefusal, RecordMeta};
use crate::ring::{NodeId, Ring};
use crate::rpc::{LocalReplica, Peers, ReplicaHandle};
use crate::stall::StallWatch;
use crate::version::{Clock, Version};

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Largest value accepted (`--max-value-size`), in bytes.
    pub max_value_size: u64,
    /// Keep hints for replicas that miss a write (off with `--no-hints`).
    pub hints: bool,
    /// Fence client reads and writes with the ring they were planned on
    /// (off with the hidden `--no-ring-fence`, for fault tests).
    pub ring_fence: bool,
    /// Every this many reads one asks all the key's replicas instead of
    /// R of them, so that read repair also reaches the replicas outside
    /// the quorum (`--full-read-every`; 1: every read, 0: none).
    pub full_read_every: u64,
}

/// When a written value expires (F28).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// This long after the write is stamped.
    After(Duration),
    /// At this time, ms since the Unix epoch (cluster time); a time in the
    /// past makes a value that reads as absent at once.
    AtMs(u64),
}

impl Expiry {
    /// The `expires_at` of a record stamped at `now_ms` (0: never).
    pub fn at_ms(self, now_ms: u64) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::After(ttl) => {
                now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            }
            Expiry::AtMs(at) => at.max(1),
        }
    }
}

/// What a successful write (or delete) reports.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// The version stamped on it.
    pub version: Version,
    /// The key's replicas, in preference order.
    pub replicas: Vec<NodeId>,
    /// Those of `replicas` that confirmed before the reply.
    pub stored_on: Vec<NodeId>,
    /// Nodes becoming replicas of the key (a transition is under way) that
    /// confirmed before the reply.
    pub pending: Vec<NodeId>,
    /// When the value written expires (ms since the epoch), if it does.
    pub expires_at: Option<u64>,
}

impl WriteResult {
    /// The result of a write of `meta` under `plan`, confirmed by `acked`.
    fn new(meta: &RecordMeta, plan: &WritePlan, acked: &[NodeId]) -> WriteResult {
        let of = |set: &[NodeId]| {
            acked
                .iter()
                .filter(|n| set.contains(n))
                .cloned()
                .collect::<Vec<_>>()
        };
        WriteResult {
            version: meta.version(),
            stored_on: of(&plan.replicas),
            pending: of(&plan.pending),
            replicas: plan.replicas.clone(),
            expires_at: (meta.expires_at != 0 && !meta.deleted).then_some(meta.expires_at),
        }
    }
}

/// The newest record found by a quorum read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The newest record (a value; tombstones come back as `NotFound`).
    pub meta: RecordMeta,
    /// The whole value when it was small enough to come with the reply.
    pub value: Option<Bytes>,
    /// Replicas known to hold exactly this version, preferred first.
    pub sources: Vec<NodeId>,
}

/// A write too few replicas stored: those that did, and the failures (a
/// ring-fence refusal among them means asking again on a newer ring).
struct Refused {
    acked: Vec<NodeId>,
    failed: Vec<(NodeId, Error)>,
}

/// How often a client's read or write is planned again after replicas
/// said the ring changed (each time the coordinator learns their ring).
const FENCE_ATTEMPTS: usize = 3;

/// The request router of one node.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

/// Where the coordinator's rings come from: gossip, or in unit tests a
/// fixed view (see the module doc).
enum Rings {
    /// This node's membership.
    Gossip(Arc<Membership>),
    /// Rings from a fixed view and what it learns.
    #[cfg(test)]
    Fixed(Arc<crate::membership::fixed::FixedMembership>),
}

impl Rings {
    /// The current ring.
    fn ring(&self) -> Arc<Ring> {
        match self {
            Rings::Gossip(membership) => membership.ring(),
            #[cfg(test)]
            Rings::Fixed(fixed) => fixed.ring(),
        }
    }

    /// The last agreed ring ([`Membership::agreed_ring`]).
    fn agreed_ring(&self) -> Arc<Ring> {
        match self {
            Rings::Gossip(membership) => membership.agreed_ring(),
            #[cfg(test)]
            Rings::Fixed(fixed) => fixed.agreed_ring(),
        }
    }

    /// What this node knows of the ring, to send a replica that lags.
    fn ring_view(&self) -> Vec<PeerState> {
        match self {
            Rings::Gossip(membership) => membership.ring_view(),
            #[cfg(test)]
            Rings::Fixed(fixed) => fixed.ring_view(),
        }
    }

    /// Merges a view a replica sent ([`Membership::learn`]).
    async fn learn(&self, view: Vec<PeerState>) {
        match self {
            Rings::Gossip(membership) => membership.learn(view).await,
            #[cfg(test)]
            Rings::Fixed(fixed) => fixed.learn(view).await,
        }
    }
}

struct Inner {
    /// This node.
    node: NodeId,
    /// Where the ring comes from.
    membership: Rings,
    /// This node's replica logic, called directly when it is a replica.
    local: LocalReplica,
    /// Connections to peers.
    peers: Peers,
    /// Stamps writes.
    clock: Arc<Clock>,
    /// Settings.
    options: CoordinatorOptions,
    /// This node's figures: quorum failures, read repairs, uploads
    /// streaming now.
    metrics: Metrics,
    /// Notices when the process was stopped, so that writes read right
    /// after are not stamped as new (see [`crate::stall`]).
    stall: Arc<StallWatch>,
    /// How long peers take to answer reads, and how many reads there were.
    reads: read::ReadStats,
    /// Fake replicas a unit test called instead of these nodes.
    #[cfg(test)]
    fakes: Vec<Arc<crate::rpc::fake::FakeReplica>>,
}

impl Coordinator {
    /// A coordinator for this node.
    pub fn new(
        node: NodeId,
        membership: Arc<Membership>,
        local: LocalReplica,
        peers: Peers,
        options: CoordinatorOptions,
        metrics: Metrics,
    ) -> Coordinator {
        let clock = local.clock.clone();
        Coordinator {
            inner: Arc::new(Inner {
                node,
                membership: Rings::Gossip(membership),
                local,
                peers,
                clock,
                options,
                metrics,
                stall: Arc::new(StallWatch::default()),
                reads: read::ReadStats::default(),
                #[cfg(test)]
                fakes: Vec::new(),
            }),
        }
    }

    /// A coordinator for unit tests: rings from `membership`, the nodes of
    /// `fakes` called through them, `local` for this node (and its hints).
    #[cfg(test)]
    fn with_fakes(
        node: NodeId,
        membership: Arc<crate::membership::fixed::FixedMembership>,
        local: LocalReplica,
        fakes: Vec<Arc<crate::rpc::fake::FakeReplica>>,
        options: CoordinatorOptions,
    ) -> Coordinator {
        let metrics = Metrics::new();
        let clock = local.clock.clone();
        Coordinator {
            inner: Arc::new(Inner {
                node,
                membership: Rings::Fixed(membership),
                local,
                peers: Peers::new(crate::rpc::RpcOptions::default(), metrics.clone()),
                clock,
                options,
                metrics,
                stall: Arc::new(StallWatch::default()),
                reads: read::ReadStats::default(),
                fakes,
            }),
        }
    }

    /// The node's stall watch, which the replica service consults too.
    pub fn stall_watch(&self) -> Arc<StallWatch> {
        self.inner.stall.clone()
    }

    /// This node's figures.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The largest value accepted.
    pub fn max_value_size(&self) -> u64 {
        self.inner.options.max_value_size
    }

    /// Cluster time in ms since the epoch, what expiry is judged against
    /// ([`Clock::cluster_now_ns`]).
    pub fn cluster_now_ms(&self) -> u64 {
        self.inner.clock.cluster_now_ms()
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.inner.membership.ring()
    }

    /// The handle to call `node` with.
    pub fn replica(&self, node: &NodeId) -> ReplicaHandle {
        #[cfg(test)]
        if let Some(fake) = self.inner.fakes.iter().find(|f| f.node() == node) {
            return ReplicaHandle::Fake(fake.clone());
        }
        if *node == self.inner.node {
            ReplicaHandle::Local(self.inner.local.clone())
        } else {
            ReplicaHandle::Remote {
                node: node.clone(),
                peers: self.inner.peers.clone(),
            }
        }
    }

    /// Where a read of `key` goes on `ring` (and, with ring fencing on,
    /// this node's last agreed ring `agreed`) and what makes it succeed.
    fn read_plan(&self, ring: &Ring, agreed: &Ring, key: &str, r: Quorum) -> Result<ReadPlan> {
        crate::key::validate(key)?;
        let agreed = self.inner.options.ring_fence.then_some(agreed);
        let plan = ReadPlan::new(ring, agreed, key.as_bytes(), r)?;
        if plan.replicas.is_empty() {
            return Err(no_members());
        }
        Ok(plan)
    }

    /// Where a write of `key` goes on `ring` (and this node's last agreed
    /// ring, `agreed`) and what makes it succeed; `lagging` are the sets
    /// replicas whose agreement lags asked for when they refused it.
    fn write_plan(
        &self,
        ring: &Ring,
        agreed: &Ring,
        key: &str,
        w: Quorum,
        lagging: &[LaggingSet],
    ) -> Result<WritePlan> {
        crate::key::validate(key)?;
        let mut plan = WritePlan::new(ring, agreed, key.as_bytes(), w)?;
        for set in lagging {
            plan.require(set.nodes.clone(), w.count_clamped(set.replicas));
        }
        if plan.replicas.is_empty() {
            return Err(no_members());
        }
        Ok(plan)
    }

    /// The fence of a client's read or write planned on `ring` and
    /// `agreed`, needing a quorum of each of `sets` (replica set hashes);
    /// with `view` (asking again after a refusal), this node's view of the
    /// ring goes with it, so that a replica whose ring lags learns it.
    /// `None` with fencing off.
    fn fence(&self, ring: &Ring, agreed: &Ring, sets: Vec<u64>, view: bool) -> Option<Fence> {
        self.inner.options.ring_fence.then(|| Fence {
            digest: ring.digest(),
            agreed: agreed.digest(),
            sets,
            view: view.then(|| merge::to_wire(&self.inner.membership.ring_view())),
        })
    }

    /// The current ring and the last agreed one.
    fn rings(&self) -> (Arc<Ring>, Arc<Ring>) {
        let membership = &self.inner.membership;
        (membership.ring(), membership.agreed_ring())
    }

    /// Learns the ring views replicas sent with their refusals (see
    /// `rpc/service.rs`), and adds to `lagging` the sets of a write they
    /// need a quorum of; true when there was a refusal to learn from.
    async fn learn_from<'a>(
        &self,
        failures: impl IntoIterator<Item = &'a Error>,
        lagging: &mut Vec<LaggingSet>,
    ) -> bool {
        let mut learned = Vec::new();
        let mut refused = false;
        for failure in failures {
            let Error::RingChanged { node, refusal } = failure else {
                continue;
            };
            let refusal = match FenceRefusal::decode(refusal.clone()) {
                Ok(refusal) => refusal,
                Err(err) => {
                    tracing::warn!(%node, %err, "a replica sent a refusal that does not decode");
                    continue;
                }
            };
            refused = true;
            if let Some(view) = refusal.view {
                learned = merge::merge(&learned, &merge::from_wire(view));
            }
            let nodes: Vec<NodeId> = refusal
                .previous
                .iter()
                .filter_map(|n| NodeId::parse(n).ok())
                .collect();
            if !nodes.is_empty() && !lagging.iter().any(|set| set.nodes == nodes) {
                lagging.push(LaggingSet {
                    nodes,
                    replicas: refusal.previous_replicas as usize,
                });
            }
        }
        if !refused {
            return false;
        }
        tracing::debug!(
            peers = learned.len(),
            "a replica places a key elsewhere: learning its ring"
        );
        self.inner.membership.learn(learned).await;
        true
    }
}

/// The error of a request that came before this node knew any member.
fn no_members() -> Error {
    Error::NotReady {
        reason: "the ring has no members yet (is the node still joining?)".into(),
    }
}

/// Calls to replicas in flight, each resolving to the replica and its answer.
type Calls<T> = FuturesUnordered<BoxFuture<'static, (NodeId, Result<T>)>>;

/// Polls `calls` until the nodes that succeeded are `enough` or none is
/// left; the calls still running stay in `calls`.
async fn gather<T>(
    calls: &mut Calls<T>,
    enough: impl Fn(&[NodeId]) -> bool,
) -> (Vec<(NodeId, T)>, Vec<(NodeId, Error)>) {
    let mut ok: Vec<(NodeId, T)> = Vec::new();
    let mut succeeded: Vec<NodeId> = Vec::new();
    let mut failed = Vec::new();
    while !enough(&succeeded) {
        match calls.next().await {
            Some((node, Ok(answer))) => {
                succeeded.push(node.clone());
                ok.push((node, answer));
            }
            Some((node, Err(err))) => {
                tracing::debug!(replica = %node, %err, "replica call failed");
                failed.push((node, err));
            }
            None => break,
        }
    }
    (ok, failed)
}

/// The error of a quorum that was not met: 507 when every failure was a
/// full disk, else 503 with `(needed, got)` among the set that fell short
/// (see [`WritePlan::shortfall`]), the nodes that answered and those that
/// failed.
fn quorum_error(
    (needed, got): (usize, usize),
    answered: Vec<NodeId>,
    failed: Vec<(NodeId, Error)>,
) -> Error {
    if !failed.is_empty() && failed.iter().all(|(_, e)| matches!(e, Error::DiskFull)) {
        return Error::DiskFull;
    }
    Error::Unavailable {
        needed,
        got,
        answered,
        failed: failed
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect(),
    }
}

/// A replica set a replica whose agreement lags needs a write quorum of
/// (see `FenceRefusal` in the protocol).
struct LaggingSet {
    /// The key's replicas in that replica's last agreed ring.
    nodes: Vec<NodeId>,
    /// That ring's replication factor.
    replicas: usize,
}
