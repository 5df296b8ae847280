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
//! The coordinator asks all N replicas for the key's record (with the value
//! when small), answers from the newest of the first R replies, and keeps
//! listening to the rest in the background: every replica seen holding an
//! older version (or nothing) is sent the newest one (read repair). A
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

mod quorum;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;

pub use self::quorum::{Quorum, ReadPlan, WritePlan};
use crate::error::{Error, Result};
use crate::membership::{Membership, merge};
use crate::metrics::{Direction, Metrics};
use crate::proto::{Fence, FenceRefusal, ReadReply, RecordMeta, StoredRecord, WriteReply};
use crate::ring::{NodeId, Ring, replica_set_hash};
use crate::rpc::{LocalReplica, Peers, ReplicaHandle, WriteMsg};
use crate::stall::StallWatch;
use crate::storage::{CHUNK_SIZE_BYTES, INLINE_MAX_BYTES};
use crate::version::{Clock, Version};

/// Bytes gathered from the client before they go to the replicas as one
/// stream message; 256 KiB keeps messages few without much buffering.
pub const STREAM_PIECE_BYTES: usize = 256 * 1024;
/// Pieces queued per replica stream: enough to keep every replica busy
/// while bounding memory (4 x 256 KiB per replica).
const STREAM_QUEUE_PIECES: usize = 4;
/// A replica stream that accepts no piece for this long is dropped.
pub const STREAM_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long read repair waits for the replicas slower than the quorum.
const READ_REPAIR_WAIT: Duration = Duration::from_secs(5);

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

/// How a write that met a newer version on a replica is stamped again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restamp {
    /// A new value: a new version from the clock.
    Write,
    /// An expiry change of the value of the same base: a new `touch`; a
    /// newer value of another base means a later write replaced it, and
    /// this change is done (it orders before that write).
    Touch,
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

/// A write that reached its quorum, and the newest version one of the
/// quorum already held instead, when newer than the write's.
struct Stamped {
    written: WriteResult,
    newer: Option<Version>,
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

/// How long a streamed write waits for a replica's version before it
/// stamps its own.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a write is stamped again after meeting a newer version (a
/// concurrent writer can keep winning; after these, the write fails).
const RESTAMP_ATTEMPTS: usize = 3;

/// The request router of one node.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node.
    node: NodeId,
    /// Where the ring comes from.
    membership: Arc<Membership>,
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
                membership,
                local,
                peers,
                clock,
                options,
                metrics,
                stall: Arc::new(StallWatch::default()),
            }),
        }
    }

    /// Watches for stalls of this process until it ends (spawned once).
    pub async fn watch_stalls(self) {
        self.inner.stall.run().await;
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

    /// Keeps a write `target` missed, to deliver when it is back.
    fn hint(&self, target: &NodeId, meta: &RecordMeta, value: Option<&Bytes>, err: &Error) {
        if !self.inner.options.hints
            || *target == self.inner.node
            || matches!(
                err,
                // A ring-fence refusal: the write is planned again on the
                // replica's ring, and goes where that one says.
                Error::InvalidInput { .. } | Error::TooLarge { .. } | Error::RingChanged { .. }
            )
        {
            return;
        }
        // An expiry change of a large value carries no bytes (`touch_only`):
        // its hint is delivered like a large value's, from a replica holding it.
        let record = StoredRecord {
            meta: Some(meta.clone()),
            inline_value: value
                .filter(|v| v.len() <= INLINE_MAX_BYTES && !meta.deleted && !touch_only(meta, v))
                .cloned(),
            chunk_count: 0,
            chunk_size: 0,
        };
        match self.inner.local.store.add_hint(target.as_str(), &record) {
            Ok(()) => tracing::debug!(key = %meta.key, replica = %target, %err, "kept a hint"),
            Err(hint_err) => {
                tracing::warn!(key = %meta.key, replica = %target, %hint_err, "could not keep a hint")
            }
        }
    }

    /// Stores a value streamed from `body`, on W of the key's N replicas,
    /// expiring as `expiry` says.
    pub async fn put(
        &self,
        key: &str,
        content_type: &str,
        expiry: Expiry,
        body: impl Stream<Item = Result<Bytes>> + Send + Unpin,
        w: Quorum,
    ) -> Result<WriteResult> {
        let result = match self.inner.stall.check() {
            Ok(()) => self.put_value(key, content_type, expiry, body, w).await,
            Err(err) => Err(err),
        };
        self.inner.metrics.observe_quorum("put", &result);
        result
    }

    /// Stores `value` whole (a small value, as the Redis front end has).
    pub async fn put_bytes(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
        w: Quorum,
    ) -> Result<WriteResult> {
        let body = futures::stream::once(async move { Ok(value) });
        self.put(key, "", expiry, Box::pin(body), w).await
    }

    async fn put_value(
        &self,
        key: &str,
        content_type: &str,
        expiry: Expiry,
        body: impl Stream<Item = Result<Bytes>> + Send + Unpin,
        w: Quorum,
    ) -> Result<WriteResult> {
        let (ring, agreed) = self.rings();
        self.write_plan(&ring, &agreed, key, w, &[])?;
        let version = self.inner.clock.now();
        let header = RecordMeta {
            key: key.to_string(),
            version: Some(version.into()),
            deleted: false,
            content_type: content_type.to_string(),
            size: 0,
            checksum: Bytes::new(),
            expires_at: expiry.at_ms(self.cluster_now_ms()),
        };
        let mut body = body;
        let (first, ended) = self.read_piece(&mut body, CHUNK_SIZE_BYTES, 0).await?;
        if ended {
            let mut meta = header;
            meta.size = first.len() as u64;
            meta.checksum = Bytes::copy_from_slice(blake3::hash(&first).as_bytes());
            return self.write_whole(meta, first, w, Restamp::Write).await;
        }
        // A streamed body cannot be sent again under a new stamp (see
        // `write_whole`): the clock first moves past what the replicas hold
        // (and the ring, should a replica place the key elsewhere).
        let mut header = header;
        let (held, plan, fence) = self.newest_held(key, w).await?;
        if let Some(held) = held
            && held >= header.version()
            && self.inner.clock.observe(held)
        {
            header.version = Some(self.inner.clock.now().into());
        }
        self.write_streamed(header, first, body, plan, fence).await
    }

    /// Writes a tombstone for `key` on W of its replicas.
    pub async fn delete(&self, key: &str, w: Quorum) -> Result<WriteResult> {
        let result = match self.inner.stall.check() {
            Ok(()) => self.write_tombstone(key, w).await,
            Err(err) => Err(err),
        };
        self.inner.metrics.observe_quorum("delete", &result);
        result
    }

    async fn write_tombstone(&self, key: &str, w: Quorum) -> Result<WriteResult> {
        let (ring, agreed) = self.rings();
        self.write_plan(&ring, &agreed, key, w, &[])?;
        let version = self.inner.clock.now();
        let meta = RecordMeta {
            key: key.to_string(),
            version: Some(version.into()),
            deleted: true,
            content_type: String::new(),
            size: 0,
            checksum: Bytes::new(),
            expires_at: 0,
        };
        self.write_whole(meta, Bytes::new(), w, Restamp::Write)
            .await
    }

    /// Changes the expiry of the value `found` (the newest a quorum read
    /// returned) to `expires_at` (ms, cluster time; 0: never), on W of its
    /// replicas, keeping its bytes: EXPIRE, PERSIST, GETEX. The change
    /// keeps the value's version and sets its `touch`, so a value written
    /// after `found` always wins over it (the change then orders before
    /// that write, as if it had come first). A small value goes whole to
    /// each replica; a large one goes as its record alone, and a replica
    /// that lacks the value is sent it by its hint.
    pub async fn touch(
        &self,
        found: &ReadResult,
        expires_at: u64,
        w: Quorum,
    ) -> Result<WriteResult> {
        let result = match self.inner.stall.check() {
            Ok(()) => {
                let mut meta = found.meta.clone();
                let touch = self.inner.clock.now().timestamp;
                meta.version = Some(meta.version().touched(touch).into());
                meta.expires_at = expires_at;
                let value = found.value.clone().unwrap_or_default();
                self.write_whole(meta, value, w, Restamp::Touch).await
            }
            Err(err) => Err(err),
        };
        self.inner.metrics.observe_quorum("put", &result);
        result
    }

    /// Reads up to `limit` bytes from the body (the first piece), enforcing
    /// the size limit; `ended` tells whether the body is over.
    async fn read_piece(
        &self,
        body: &mut (impl Stream<Item = Result<Bytes>> + Unpin),
        limit: usize,
        already: u64,
    ) -> Result<(Bytes, bool)> {
        // Frames are kept as they come and joined once at the end: a small
        // body arriving in one frame is never copied, and no buffer is sized
        // for the limit before we know the body needs it.
        let mut frames: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        let ended = loop {
            if len >= limit {
                break false;
            }
            match body.next().await {
                Some(Ok(data)) => {
                    let total = already + len as u64 + data.len() as u64;
                    if total > self.max_value_size() {
                        return Err(Error::TooLarge {
                            size: total,
                            limit: self.max_value_size(),
                        });
                    }
                    if !data.is_empty() {
                        len += data.len();
                        frames.push(data);
                    }
                }
                Some(Err(err)) => return Err(err),
                None => break true,
            }
        };
        let piece = if frames.len() == 1 {
            frames.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(len);
            for frame in &frames {
                joined.extend_from_slice(frame);
            }
            joined.freeze()
        };
        Ok((piece, ended))
    }

    /// The newest version of `key` any of its live replicas holds, asked
    /// in parallel (those that do not answer within [`PROBE_TIMEOUT`] are
    /// left out), and the plan of the write: the probe is fenced, so that a
    /// streamed write starts on the ring its replicas place the key on.
    async fn newest_held(
        &self,
        key: &str,
        w: Quorum,
    ) -> Result<(Option<Version>, WritePlan, Option<Fence>)> {
        let mut fenced = 0;
        let mut lagging = Vec::new();
        loop {
            let (ring, agreed) = self.rings();
            let plan = self.write_plan(&ring, &agreed, key, w, &lagging)?;
            // The probe reads where the write goes: fenced like the write.
            let fence = self.fence(&ring, &agreed, plan.set_hashes(), fenced > 0);
            let read_fence = self.fence(
                &ring,
                &agreed,
                vec![replica_set_hash(&plan.replicas)],
                fenced > 0,
            );
            let asks = plan
                .replicas
                .iter()
                .filter(|n| ring.is_live(n))
                .map(|node| {
                    let (replica, fence) = (self.replica(node), read_fence.clone());
                    async move {
                        tokio::time::timeout(PROBE_TIMEOUT, replica.read_fenced(key, 0, fence))
                            .await
                    }
                });
            let replies: Vec<Result<ReadReply>> = futures::future::join_all(asks)
                .await
                .into_iter()
                .filter_map(|reply| reply.ok())
                .collect();
            let refusals = replies.iter().filter_map(|r| r.as_ref().err());
            if fenced < FENCE_ATTEMPTS && self.learn_from(refusals, &mut lagging).await {
                fenced += 1;
                continue;
            }
            let held = replies
                .into_iter()
                .filter_map(|reply| reply.ok()?.meta)
                .map(|meta| meta.version())
                .max();
            return Ok((held, plan, fence));
        }
    }

    /// Writes a whole value or a tombstone as `plan` says.
    ///
    /// A replica that already holds a newer version does not apply it. When
    /// one of the quorum says so, this write was stamped by a clock behind
    /// the one that stamped that version (another node's clock running
    /// ahead): acknowledging it would let a write that came before it win.
    /// The clock then moves past that version and the write is stamped
    /// again and resent, so that what is acknowledged last wins. Any two
    /// write quorums share a replica, so a write acknowledged before this
    /// one began is always seen.
    ///
    /// A replica whose ring places the key elsewhere refuses the write (see
    /// `rpc/service.rs`): the coordinator learns its ring and sends the
    /// write again, planned anew, to the nodes of the new plan that do not
    /// hold it yet, with its own view of the ring for replicas that lag.
    async fn write_whole(
        &self,
        mut meta: RecordMeta,
        value: Bytes,
        w: Quorum,
        restamp: Restamp,
    ) -> Result<WriteResult> {
        let mut attempt = 0;
        let mut fenced = 0;
        // Nodes that stored this version (kept across fence refusals).
        let mut acked: Vec<NodeId> = Vec::new();
        let mut lagging = Vec::new();
        loop {
            let (ring, agreed) = self.rings();
            let plan = self.write_plan(&ring, &agreed, &meta.key, w, &lagging)?;
            let fence = self.fence(&ring, &agreed, plan.set_hashes(), fenced > 0);
            let sent = self
                .write_whole_once(meta.clone(), value.clone(), &plan, fence, &acked)
                .await;
            let result = match sent {
                Err(Refused {
                    acked: stored,
                    failed,
                }) => {
                    if fenced < FENCE_ATTEMPTS
                        && self
                            .learn_from(failed.iter().map(|(_, e)| e), &mut lagging)
                            .await
                    {
                        fenced += 1;
                        acked = stored;
                        continue;
                    }
                    return Err(quorum_error(plan.shortfall(&stored), stored, failed));
                }
                Ok(result) => result,
            };
            let Some(newer) = result.newer else {
                return Ok(result.written);
            };
            if restamp == Restamp::Touch && newer.base() != meta.version().base() {
                // A later write replaced the value: this change came first.
                return Ok(result.written);
            }
            acked.clear();
            attempt += 1;
            if attempt > RESTAMP_ATTEMPTS || !self.inner.clock.observe(newer) {
                return Err(Error::NotReady {
                    reason: format!(
                        "a replica holds a newer version of {} ({} ns) than this node's clock \
                         can follow; are the nodes' clocks in sync?",
                        meta.key, newer.timestamp
                    ),
                });
            }
            tracing::debug!(key = %meta.key, ?newer, "a replica holds a newer version; stamping again");
            let now = self.inner.clock.now();
            meta.version = Some(
                match restamp {
                    Restamp::Write => now,
                    Restamp::Touch => meta.version().touched(now.timestamp),
                }
                .into(),
            );
        }
    }

    /// Sends the write to the nodes of `plan` not in `already` (which hold
    /// it) until the plan is satisfied; the nodes that hold it and the
    /// failures when it is not.
    async fn write_whole_once(
        &self,
        meta: RecordMeta,
        value: Bytes,
        plan: &WritePlan,
        fence: Option<Fence>,
        already: &[NodeId],
    ) -> std::result::Result<Stamped, Refused> {
        let version = meta.version();
        let mut calls: Calls<WriteReply> = plan
            .nodes()
            .filter(|node| !already.contains(node))
            .map(|node| {
                let (this, meta, value, node, fence) = (
                    self.clone(),
                    meta.clone(),
                    value.clone(),
                    node.clone(),
                    fence.clone(),
                );
                async move {
                    let handle = this.replica(&node);
                    let result = handle
                        .write_fenced(meta.clone(), value.clone(), fence)
                        .await;
                    if let Err(err) = &result {
                        this.hint(&node, &meta, Some(&value), err);
                    }
                    (node, result)
                }
                .boxed()
            })
            .collect();
        let (ok, failed) = gather(&mut calls, |ok| plan.satisfied(ok.iter().chain(already))).await;
        for (_, reply) in &ok {
            self.inner.clock.observe_time(reply.now);
        }
        let newer = ok
            .iter()
            .filter(|(_, reply)| !reply.applied)
            .filter_map(|(_, reply)| reply.current.map(Version::from))
            .filter(|current| *current > version)
            .max();
        if !calls.is_empty() {
            // The replicas slower than the quorum still get the write.
            tokio::spawn(async move { while calls.next().await.is_some() {} });
        }
        let mut acked: Vec<NodeId> = already.to_vec();
        acked.extend(ok.into_iter().map(|(n, _)| n));
        if !plan.satisfied(&acked) {
            return Err(Refused { acked, failed });
        }
        Ok(Stamped {
            written: WriteResult::new(&meta, plan, &acked),
            newer,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_streamed(
        &self,
        header: RecordMeta,
        first: Bytes,
        mut body: impl Stream<Item = Result<Bytes>> + Send + Unpin,
        plan: WritePlan,
        fence: Option<Fence>,
    ) -> Result<WriteResult> {
        let _streaming = self.inner.metrics.stream_started(Direction::In);
        let (result_tx, result_rx) = mpsc::unbounded_channel();
        let mut streams: Vec<(NodeId, mpsc::Sender<WriteMsg>)> = Vec::new();
        for node in plan.nodes() {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE_PIECES);
            let handle = self.replica(node);
            let (header, result_tx, node2) = (header.clone(), result_tx.clone(), node.clone());
            let fence = fence.clone();
            tokio::spawn(async move {
                let result = handle.write_stream(header, fence, rx).await;
                let _ = result_tx.send((node2, result.map(|_| ())));
            });
            streams.push((node.clone(), tx));
        }
        drop(result_tx);
        let mut failed: Vec<(NodeId, String)> = Vec::new();
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut piece = first;
        loop {
            if !piece.is_empty() {
                hasher.update(&piece);
                size += piece.len() as u64;
                fan_out(&mut streams, &mut failed, WriteMsg::Data(piece)).await;
                if !plan.satisfied(streams.iter().map(|(n, _)| n)) {
                    // Dropping the senders aborts every replica's write.
                    return Err(unavailable(&plan, &streams, failed));
                }
            }
            let (next, ended) = self.read_piece(&mut body, STREAM_PIECE_BYTES, size).await?;
            piece = next;
            if ended {
                if !piece.is_empty() {
                    hasher.update(&piece);
                    size += piece.len() as u64;
                    fan_out(&mut streams, &mut failed, WriteMsg::Data(piece)).await;
                }
                break;
            }
        }
        let checksum = Bytes::copy_from_slice(hasher.finalize().as_bytes());
        fan_out(
            &mut streams,
            &mut failed,
            WriteMsg::Trailer {
                size,
                checksum: checksum.clone(),
            },
        )
        .await;
        drop(streams);
        let (acked, rest) = match await_quorum(result_rx, &plan).await {
            Ok(done) => done,
            Err(Refused { acked, failed }) => {
                // A stream cannot be sent again: the client is told to.
                if self
                    .learn_from(failed.iter().map(|(_, e)| e), &mut Vec::new())
                    .await
                {
                    return Err(Error::NotReady {
                        reason: format!(
                            "the ring changed while {} streamed in: its replicas place it on \
                             other nodes now; send it again",
                            header.key
                        ),
                    });
                }
                return Err(quorum_error(plan.shortfall(&acked), acked, failed));
            }
        };
        // Replicas that failed the write get a hint with the whole record.
        let mut meta = header;
        meta.size = size;
        meta.checksum = checksum;
        let written = WriteResult::new(&meta, &plan, &acked);
        let this = self.clone();
        tokio::spawn(async move {
            for (node, err) in rest.collect().await {
                this.hint(&node, &meta, None, &err);
            }
        });
        Ok(written)
    }

    /// Reads the newest record of `key` from R of its replicas; repairs the
    /// stale ones in the background.
    pub async fn get(&self, key: &str, r: Quorum) -> Result<ReadResult> {
        let result = self.read_newest(key, r).await;
        self.inner.metrics.observe_quorum("get", &result);
        result
    }

    async fn read_newest(&self, key: &str, r: Quorum) -> Result<ReadResult> {
        let mut fenced = 0;
        let (mut answers, failed, calls) = loop {
            let (ring, agreed) = self.rings();
            let plan = self.read_plan(&ring, &agreed, key, r)?;
            let fence = self.fence(&ring, &agreed, plan.set_hashes(), fenced > 0);
            let mut calls: Calls<ReadReply> = plan
                .nodes()
                .map(|node| {
                    let (handle, node, key) = (self.replica(node), node.clone(), key.to_string());
                    let fence = fence.clone();
                    async move {
                        let reply = handle
                            .read_fenced(&key, INLINE_MAX_BYTES as u64, fence)
                            .await;
                        (node, reply)
                    }
                    .boxed()
                })
                .collect();
            let (answers, failed) = gather(&mut calls, |ok| plan.shortfall(ok).is_none()).await;
            let answered: Vec<NodeId> = answers.iter().map(|(n, _)| n.clone()).collect();
            let Some(short) = plan.shortfall(&answered) else {
                break (answers, failed, calls);
            };
            // Replicas that place the key elsewhere: learn their ring and
            // read again where it says.
            if fenced < FENCE_ATTEMPTS
                && self
                    .learn_from(failed.iter().map(|(_, e)| e), &mut Vec::new())
                    .await
            {
                fenced += 1;
                continue;
            }
            return Err(quorum_error(short, answered, failed));
        };
        // Replicas whose copy was corrupt have dropped it: for read repair
        // they hold nothing (they are not among the answers that make R).
        let corrupt: Vec<(NodeId, ReadReply)> = failed
            .into_iter()
            .filter(|(_, err)| matches!(err, Error::Corrupt { .. }))
            .map(|(node, _)| (node, ReadReply::default()))
            .collect();
        // Expiry is judged on the latest clock of this node and the replicas
        // that answered: one node's clock running behind changes nothing.
        for (_, reply) in &answers {
            self.inner.clock.observe_time(reply.now);
        }
        let now_ms = self.cluster_now_ms();
        let newest = answers
            .iter()
            .filter_map(|(_, reply)| reply.meta.as_ref())
            .max_by_key(|m| m.version())
            .cloned();
        let value = newest.as_ref().and_then(|m| {
            answers
                .iter()
                .find(|(_, r)| r.meta.as_ref().map(|x| x.version()) == Some(m.version()))
                .and_then(|(_, r)| r.value.clone())
        });
        let mut sources: Vec<NodeId> = newest
            .as_ref()
            .map(|m| {
                answers
                    .iter()
                    .filter(|(_, r)| r.meta.as_ref().map(|x| x.version()) == Some(m.version()))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        // Prefer reading large values from this node.
        sources.sort_by_key(|n| *n != self.inner.node);
        answers.extend(corrupt);
        if let Some(newest) = &newest {
            self.spawn_read_repair(
                newest.clone(),
                value.clone(),
                sources.clone(),
                answers,
                calls,
            );
        }
        match newest {
            Some(meta) if !meta.is_dead_at(now_ms) => Ok(ReadResult {
                meta,
                value,
                sources,
            }),
            _ => Err(Error::not_found(format!("key {key:?}"))),
        }
    }

    /// Sends the newest record to every replica seen holding an older one
    /// (or a corrupt one, now dropped), including those that answer after
    /// the quorum was met.
    fn spawn_read_repair(
        &self,
        newest: RecordMeta,
        value: Option<Bytes>,
        sources: Vec<NodeId>,
        answers: Vec<(NodeId, ReadReply)>,
        mut rest: Calls<ReadReply>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = answers;
            let deadline = tokio::time::Instant::now() + READ_REPAIR_WAIT;
            while let Ok(Some((node, result))) =
                tokio::time::timeout_at(deadline, rest.next()).await
            {
                match result {
                    Ok(reply) => seen.push((node, reply)),
                    Err(Error::Corrupt { .. }) => seen.push((node, ReadReply::default())),
                    Err(_) => {}
                }
            }
            let version = newest.version();
            for (node, reply) in seen {
                let held = reply
                    .meta
                    .as_ref()
                    .map(|m| m.version())
                    .unwrap_or(Version::ZERO);
                if held >= version {
                    continue;
                }
                tracing::debug!(key = %newest.key, replica = %node, "read repair");
                this.inner.metrics.read_repaired();
                let outcome = this
                    .push_record(&node, newest.clone(), value.clone(), &sources)
                    .await;
                if let Err(err) = outcome {
                    tracing::warn!(key = %newest.key, replica = %node, %err, "read repair failed");
                }
            }
        });
    }

    /// Makes `target` hold `meta`'s version: sent whole when small (or a
    /// tombstone), else streamed from one of `sources`.
    pub async fn push_record(
        &self,
        target: &NodeId,
        meta: RecordMeta,
        value: Option<Bytes>,
        sources: &[NodeId],
    ) -> Result<()> {
        let handle = self.replica(target);
        if meta.deleted {
            return handle.write(meta, Bytes::new()).await.map(|_| ());
        }
        if let Some(value) = value {
            return handle.write(meta, value).await.map(|_| ());
        }
        if meta.version().touch != 0 {
            // An expiry change: a target holding the value needs the record
            // alone; one that lacks it (NotFound) is sent the whole value.
            match handle.write(meta.clone(), Bytes::new()).await {
                Err(Error::NotFound { .. }) => {}
                other => return other.map(|_| ()),
            }
        }
        let stream = self.open_value(&meta, sources, 0, 0).await?;
        self.write_pieces(target, &meta, stream).await
    }

    /// Makes `target`, a node that dropped its copy of `key` as corrupt,
    /// hold the newest version the key's other replicas hold (asked all at
    /// once, newest wins, the value fetched from one holding it). False
    /// when none of them answered with a record, or when `target` is no
    /// replica of the key (a surplus copy is better gone).
    pub async fn repair_copy(&self, target: &NodeId, key: &str) -> Result<bool> {
        let ring = self.ring();
        let replicas = ring.nodes_of(key.as_bytes());
        if !replicas.contains(target) && !ring.pending_of(key.as_bytes()).contains(target) {
            return Ok(false);
        }
        let reads = replicas.iter().filter(|n| *n != target).map(|node| {
            let (handle, node) = (self.replica(node), node.clone());
            async move { (node, handle.read(key, INLINE_MAX_BYTES as u64).await) }
        });
        let mut answers: Vec<(NodeId, ReadReply)> = Vec::new();
        for (node, result) in futures::future::join_all(reads).await {
            match result {
                Ok(reply) if reply.meta.is_some() => answers.push((node, reply)),
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%key, replica = %node, %err, "no copy from this replica")
                }
            }
        }
        let Some(newest) = answers
            .iter()
            .filter_map(|(_, r)| r.meta.as_ref())
            .max_by_key(|m| m.version())
            .cloned()
        else {
            return Ok(false);
        };
        let holding: Vec<&(NodeId, ReadReply)> = answers
            .iter()
            .filter(|(_, r)| r.meta.as_ref().map(|m| m.version()) == Some(newest.version()))
            .collect();
        let value = holding.iter().find_map(|(_, r)| r.value.clone());
        let sources: Vec<NodeId> = holding.iter().map(|(n, _)| n.clone()).collect();
        self.push_record(target, newest, value, &sources).await?;
        Ok(true)
    }

    /// Sends `meta`'s version to `target`, a source of it that failed as
    /// corrupt (and dropped its copy), from the other `sources`; in the
    /// background.
    fn spawn_source_repair(&self, target: NodeId, meta: RecordMeta, sources: Vec<NodeId>) {
        let this = self.clone();
        tokio::spawn(async move {
            let good: Vec<NodeId> = sources.into_iter().filter(|n| *n != target).collect();
            match this.push_record(&target, meta.clone(), None, &good).await {
                Ok(()) => {
                    tracing::info!(key = %meta.key, replica = %target, "repaired a corrupt copy")
                }
                Err(err) => {
                    tracing::warn!(key = %meta.key, replica = %target, %err, "could not repair a corrupt copy")
                }
            }
        });
    }

    /// Streams the value `pieces` carries to `target` as `meta`'s version;
    /// the target checks size and checksum before it commits.
    pub async fn write_pieces(
        &self,
        target: &NodeId,
        meta: &RecordMeta,
        mut pieces: impl Stream<Item = Result<Bytes>> + Unpin,
    ) -> Result<()> {
        let handle = self.replica(target);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_PIECES);
        let mut header = meta.clone();
        header.size = 0;
        header.checksum = Bytes::new();
        let write = tokio::spawn(async move { handle.write_stream(header, None, rx).await });
        while let Some(piece) = pieces.next().await {
            if tx.send(WriteMsg::Data(piece?)).await.is_err() {
                break;
            }
        }
        let _ = tx
            .send(WriteMsg::Trailer {
                size: meta.size,
                checksum: meta.checksum.clone(),
            })
            .await;
        drop(tx);
        write
            .await
            .map_err(|e| Error::internal(format!("stream write task: {e}")))?
            .map(|_| ())
    }

    /// The bytes `offset..offset+length` (0 = to the end) of the value
    /// `meta` describes, read from the first of `sources` that serves them
    /// and resumed from the next one if a source fails midway. A source
    /// that fails as corrupt is sent the value from the others in the
    /// background.
    pub async fn open_value(
        &self,
        meta: &RecordMeta,
        sources: &[NodeId],
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let end = if length == 0 {
            meta.size
        } else {
            offset + length
        };
        let source = OpenSources {
            coordinator: self.clone(),
            meta: meta.clone(),
            nodes: sources.to_vec(),
        };
        // Open the first stream now so that "no source at all" is an error
        // before the response starts.
        let (mut index, mut stream) = source.open_from(0, offset, end).await?;
        Ok(async_stream::try_stream! {
            let mut position = offset;
            while position < end {
                let step = tokio::time::timeout(STREAM_STEP_TIMEOUT, stream.next()).await;
                match step {
                    Ok(Some(Ok(piece))) => {
                        position += piece.len() as u64;
                        yield piece;
                    }
                    failure => {
                        let reason = match failure {
                            Ok(Some(Err(err))) => {
                                source.repair_if_corrupt(index, &err);
                                err.to_string()
                            }
                            Ok(None) => "stream ended early".to_string(),
                            _ => "timed out".to_string(),
                        };
                        tracing::warn!(key = %source.meta.key, %reason, "value stream failed; trying another replica");
                        (index, stream) = source
                            .open_from(index + 1, position, end)
                            .await
                            .map_err(|err| Error::Aborted {
                                reason: format!(
                                    "no replica could finish streaming {:?}: {reason}; {err}",
                                    source.meta.key
                                ),
                            })?;
                    }
                }
            }
        }
        .boxed())
    }
}

/// The replicas a value is streamed from, in order of preference.
struct OpenSources {
    /// Opens the streams and repairs corrupt sources.
    coordinator: Coordinator,
    /// The value's record.
    meta: RecordMeta,
    /// Nodes holding exactly `meta`'s version.
    nodes: Vec<NodeId>,
}

impl OpenSources {
    /// Opens `start..end` of the value on the first source from `first` on
    /// that serves it: its index and the stream.
    async fn open_from(
        &self,
        first: usize,
        start: u64,
        end: u64,
    ) -> Result<(usize, BoxStream<'static, Result<Bytes>>)> {
        let mut last_error = None;
        for (index, node) in self.nodes.iter().enumerate().skip(first) {
            let handle = self.coordinator.replica(node);
            match handle
                .read_stream(&self.meta.key, self.meta.version(), start, end - start)
                .await
            {
                Ok(stream) => return Ok((index, stream)),
                Err(err) => {
                    self.repair_if_corrupt(index, &err);
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found(format!("{:?}", self.meta.key))))
    }

    /// Sends the value to source `index` from the others when `err` says
    /// its copy is corrupt.
    fn repair_if_corrupt(&self, index: usize, err: &Error) {
        if let (Error::Corrupt { .. }, Some(node)) = (err, self.nodes.get(index)) {
            self.coordinator.spawn_source_repair(
                node.clone(),
                self.meta.clone(),
                self.nodes.clone(),
            );
        }
    }
}

/// Whether a write of `value` for `meta` is an expiry change of a large
/// value, which carries no bytes (see `WriteRequest` in the .proto).
fn touch_only(meta: &RecordMeta, value: &Bytes) -> bool {
    !meta.deleted && value.is_empty() && meta.size > 0
}

/// Hands `msg` to every replica stream, dropping those that fail or stall.
async fn fan_out(
    streams: &mut Vec<(NodeId, mpsc::Sender<WriteMsg>)>,
    failed: &mut Vec<(NodeId, String)>,
    msg: WriteMsg,
) {
    let sends = streams.iter().map(|(_, tx)| {
        let msg = msg.clone();
        async move {
            match tokio::time::timeout(STREAM_STEP_TIMEOUT, tx.send(msg)).await {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some("replica stream failed".to_string()),
                Err(_) => Some(format!("replica stalled for {STREAM_STEP_TIMEOUT:?}")),
            }
        }
    });
    let outcomes = futures::future::join_all(sends).await;
    let mut kept = Vec::with_capacity(streams.len());
    for ((node, tx), outcome) in streams.drain(..).zip(outcomes) {
        match outcome {
            None => kept.push((node, tx)),
            Some(reason) => failed.push((node, reason)),
        }
    }
    *streams = kept;
}

fn unavailable(
    plan: &WritePlan,
    streams: &[(NodeId, mpsc::Sender<WriteMsg>)],
    failed: Vec<(NodeId, String)>,
) -> Error {
    let (needed, got) = plan.shortfall(streams.iter().map(|(n, _)| n));
    Error::Unavailable {
        needed,
        got,
        answered: streams.iter().map(|(n, _)| n.clone()).collect(),
        failed,
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

/// The replicas that failed a streamed write: those seen failing before the
/// quorum, then those failing after it.
struct Failures {
    seen: Vec<(NodeId, Error)>,
    rx: mpsc::UnboundedReceiver<(NodeId, Result<()>)>,
}

impl Failures {
    async fn collect(mut self) -> Vec<(NodeId, Error)> {
        while let Some((node, result)) = self.rx.recv().await {
            if let Err(err) = result {
                self.seen.push((node, err));
            }
        }
        self.seen
    }
}

/// Waits until the replicas that confirmed a streamed write satisfy `plan`
/// (or every one of its nodes answered).
async fn await_quorum(
    mut rx: mpsc::UnboundedReceiver<(NodeId, Result<()>)>,
    plan: &WritePlan,
) -> std::result::Result<(Vec<NodeId>, Failures), Refused> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    while !plan.satisfied(&ok) && ok.len() + failed.len() < plan.len() {
        match rx.recv().await {
            Some((node, Ok(()))) => ok.push(node),
            Some((node, Err(err))) => {
                tracing::debug!(replica = %node, %err, "replica write failed");
                failed.push((node, err));
            }
            None => break,
        }
    }
    if !plan.satisfied(&ok) {
        return Err(Refused { acked: ok, failed });
    }
    Ok((ok, Failures { seen: failed, rx }))
}
