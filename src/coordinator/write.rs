//! Whole writes: puts of values that fit in one piece, deletes
//! (tombstones) and expiry changes ([`Coordinator::touch`]), sent to every
//! replica of the plan in one call each. Owns stamping a write again when a
//! replica of the quorum already holds a newer version (a clock behind
//! another's), sending it again after a ring-fence refusal, and the hints
//! kept for replicas that miss a write. A put too large for one piece is
//! handed to `stream.rs` once its version is settled.

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};

use super::{
    Calls, Coordinator, Expiry, FENCE_ATTEMPTS, Quorum, ReadResult, Refused, WritePlan,
    WriteResult, gather, quorum_error,
};
use crate::error::{Error, Result};
use crate::proto::{Fence, ReadReply, RecordMeta, StoredRecord, WriteReply};
use crate::ring::{NodeId, replica_set_hash};
use crate::storage::{CHUNK_SIZE_BYTES, INLINE_MAX_BYTES};
use crate::version::Version;

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

/// A write that reached its quorum, and the newest version one of the
/// quorum already held instead, when newer than the write's.
struct Stamped {
    written: WriteResult,
    newer: Option<Version>,
}

/// How long a streamed write waits for a replica's version before it
/// stamps its own.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a write is stamped again after meeting a newer version (a
/// concurrent writer can keep winning; after these, the write fails).
const RESTAMP_ATTEMPTS: usize = 3;

impl Coordinator {
    /// Keeps a write `target` missed, to deliver when it is back.
    pub(super) fn hint(
        &self,
        target: &NodeId,
        meta: &RecordMeta,
        value: Option<&Bytes>,
        err: &Error,
    ) {
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
}

/// Whether a write of `value` for `meta` is an expiry change of a large
/// value, which carries no bytes (see `WriteRequest` in the .proto).
fn touch_only(meta: &RecordMeta, value: &Bytes) -> bool {
    !meta.deleted && value.is_empty() && meta.size > 0
}
