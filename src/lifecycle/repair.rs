//! Anti-entropy (F17): this node compares each range it holds with every
//! other live replica of it, top down through the hash trees
//! (`merkle::Descent`, `Tree` RPC), lists the keys of the differing leaves
//! on both sides (`Scan` without values) and moves only those records,
//! newest version winning, tombstones included. The records moved are paced
//! by the node's `--repair-rate` throttle, and the bytes of every exchange
//! are counted in the [`BalanceReply`]. A peer's answer that does not fit
//! the question (a `Tree` reply with another number of hashes, a `Scan`
//! item without metadata or with an invalid key) fails that comparison
//! only.

use std::collections::BTreeMap;

use super::{Lifecycle, gc};
use crate::error::{Error, Result};
use crate::merkle::{self, Descent};
use crate::proto::{BalanceReply, RecordMeta, ScanRequest, StoredRecord, TreeReply, TreeRequest};
use crate::ring::{NodeId, TokenRange};
use crate::storage::INLINE_MAX_BYTES;

/// Leaf-index bits resolved per round of a tree comparison.
const FANOUT_BITS: u32 = 4;

/// Anti-entropy on this node, running or last run (shown in `/ring`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairProgress {
    /// A run is under way.
    pub active: bool,
    /// Ranges compared so far, of `ranges`.
    pub ranges_done: u64,
    /// Ranges this node is a replica of.
    pub ranges: u64,
    /// Leaves found differing.
    pub leaves: u64,
    /// Records fetched from other replicas.
    pub pulled: u64,
    /// Records sent to other replicas.
    pub pushed: u64,
    /// Bytes of the comparisons' messages, sent and received.
    pub bytes: u64,
    /// Expired tombstones dropped.
    pub tombstones_dropped: u64,
    /// Runs finished since the node started.
    pub runs: u64,
}

/// Compares every range this node holds with each other live replica and
/// exchanges what differs.
pub async fn balance_local(lifecycle: &Lifecycle) -> Result<BalanceReply> {
    if lifecycle.is_catching_up() {
        return Err(Error::NotReady {
            reason: "re-syncing after an absence longer than the tombstone grace period".into(),
        });
    }
    let me = &lifecycle.inner.node;
    let ring = lifecycle.inner.membership.ring();
    let mut reply = BalanceReply::default();
    let ranges = ring.ranges_of(me);
    let show = |reply: &BalanceReply, active: bool| {
        let mut progress = lifecycle
            .inner
            .repair
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        progress.active = active;
        progress.ranges = ranges.len() as u64;
        progress.ranges_done = reply.ranges;
        progress.leaves = reply.leaves;
        progress.pulled = reply.pulled;
        progress.pushed = reply.pushed;
        progress.bytes = reply.bytes_sent + reply.bytes_received;
        progress.tombstones_dropped = reply.tombstones_dropped;
        if !active {
            progress.runs += 1;
        }
    };
    // Records pulled from and pushed to each replica in this run.
    let mut per_peer: std::collections::BTreeMap<NodeId, (u64, u64)> = Default::default();
    for (range, replicas) in &ranges {
        let (range, replicas) = (*range, replicas);
        show(&reply, true);
        reply.ranges += 1;
        let mut in_line = true;
        for peer in replicas.iter().filter(|p| *p != me) {
            if !ring.is_live(peer) {
                reply.failed.push(format!("{peer}: down"));
                in_line = false;
                continue;
            }
            reply.pairs += 1;
            let before = (reply.pulled, reply.pushed);
            let result = compare(lifecycle, range, peer, &mut reply).await;
            let moved = per_peer.entry(peer.clone()).or_insert((0, 0));
            moved.0 += reply.pulled - before.0;
            moved.1 += reply.pushed - before.1;
            if let Err(err) = result {
                tracing::warn!(%peer, %err, ?range, "anti-entropy with a replica failed");
                reply.failed.push(format!("{peer}: {err}"));
                in_line = false;
            }
        }
        // Tombstones go only from a range every replica was compared on.
        if in_line {
            match gc::collect(lifecycle, range, replicas).await {
                Ok(dropped) => reply.tombstones_dropped += dropped,
                Err(err) => tracing::warn!(%err, "tombstone collection failed"),
            }
        }
    }
    show(&reply, false);
    // One line per replica this run exchanged records with (F5).
    for (peer, (pulled, pushed)) in &per_peer {
        if pulled + pushed > 0 {
            tracing::info!(%peer, pulled, pushed, "anti-entropy exchanged records with a replica");
        }
    }
    if reply.pulled + reply.pushed > 0 {
        tracing::info!(
            pulled = reply.pulled,
            pushed = reply.pushed,
            leaves = reply.leaves,
            "anti-entropy moved records"
        );
    }
    Ok(reply)
}

/// Brings this node and `peer` in line on `range`.
async fn compare(
    lifecycle: &Lifecycle,
    range: TokenRange,
    peer: &NodeId,
    reply: &mut BalanceReply,
) -> Result<()> {
    let coordinator = &lifecycle.inner.coordinator;
    let store = &lifecycle.inner.store;
    let remote = coordinator.replica(peer);
    let throttle = &lifecycle.inner.repair_throttle;
    let local = store.leaf_hashes(range)?;
    let root = remote.tree(range, 0, &[0]).await?;
    count_tree(reply, range, 0, &[0], &root);
    reply.hashes += 1;
    match root.as_slice() {
        [hash] if *hash == local.node(0, 0) => return Ok(()),
        [_] => {}
        _ => return Err(peer_error(peer, format!("{} root hashes", root.len()))),
    }
    let mut descent = Descent::new(FANOUT_BITS);
    while !descent.done() {
        let (level, nodes) = descent.next_nodes();
        let theirs = remote.tree(range, level, &nodes).await?;
        count_tree(reply, range, level, &nodes, &theirs);
        let ours: Vec<u64> = nodes.iter().map(|n| local.node(level, *n)).collect();
        reply.hashes += nodes.len() as u64;
        descent
            .advance(level, nodes, &ours, &theirs)
            .map_err(|mismatch| peer_error(peer, mismatch.to_string()))?;
    }
    let leaves = descent.differing();
    reply.leaves += leaves.len() as u64;
    if leaves.is_empty() {
        return Ok(());
    }
    // Both sides' records of the differing leaves, by key.
    let spans: Vec<TokenRange> = leaves.iter().map(|l| merkle::leaf_span(*l)).collect();
    // Ours with the whole record, whose inline value a push sends.
    let mut ours: BTreeMap<String, (RecordMeta, StoredRecord)> = BTreeMap::new();
    for span in &spans {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = store.keys_in_range(*span, after.as_deref(), 1024)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.cursor.clone());
            for entry in batch.into_iter().filter(|e| range.contains(e.token)) {
                // A corrupt copy is dropped and then pulled like a missing one.
                let record = match store.record(&entry.key) {
                    Err(Error::Corrupt { reason }) => {
                        tracing::warn!(key = %entry.key, %reason, "corrupt copy found by anti-entropy");
                        store.quarantine(&entry.key, Some(entry.version))?;
                        continue;
                    }
                    other => other?,
                };
                if let Some(record) = record
                    && let Some(meta) = record.meta.clone()
                {
                    ours.insert(entry.key, (meta, record));
                }
            }
        }
    }
    let mut theirs: BTreeMap<String, RecordMeta> = BTreeMap::new();
    let mut items = remote.scan(&spans, 0).await?;
    reply.bytes_sent += message_bytes(&scan_request(&spans));
    use futures::StreamExt;
    while let Some(item) = items.next().await {
        let item = item?;
        reply.bytes_received += message_bytes(&item);
        let meta = item
            .meta
            .ok_or_else(|| peer_error(peer, "scan item without meta".into()))?;
        crate::key::validate(&meta.key)
            .map_err(|err| peer_error(peer, format!("scan item: {err}")))?;
        if range.contains(crate::ring::Token::of_key(meta.key.as_bytes())) {
            theirs.insert(meta.key.clone(), meta);
        }
    }
    let me = lifecycle.inner.node.clone();
    let grace = lifecycle.inner.options.tombstone_grace;
    // A tombstone or expired value dead past the grace period is not handed
    // to a replica holding nothing: it may have collected it already (see
    // gc.rs).
    let expired_tombstone = |m: &RecordMeta| gc::meta_dead_past_grace(m, grace);
    for (key, (mine, record)) in &ours {
        let newer_here = match theirs.get(key) {
            Some(t) => t.version() < mine.version(),
            None => !expired_tombstone(mine),
        };
        if newer_here {
            let value = match store.inline_value(record) {
                Err(Error::Corrupt { reason }) => {
                    tracing::warn!(%key, %reason, "corrupt copy found by anti-entropy");
                    store.quarantine(key, Some(mine.version()))?;
                    continue;
                }
                other => other?,
            };
            let bytes = record_bytes(mine, value.as_ref());
            throttle.take(bytes).await;
            coordinator
                .push_record(peer, mine.clone(), value, std::slice::from_ref(&me))
                .await?;
            reply.pushed += 1;
            reply.bytes_sent += bytes;
        }
    }
    for (key, remote_meta) in theirs {
        let newer_there = match ours.get(&key) {
            Some((m, _)) => m.version() < remote_meta.version(),
            None => !expired_tombstone(&remote_meta),
        };
        if newer_there {
            let bytes = record_bytes(&remote_meta, None);
            throttle.take(bytes).await;
            pull(lifecycle, peer, remote_meta).await?;
            reply.pulled += 1;
            reply.bytes_received += bytes;
        }
    }
    Ok(())
}

/// Stores `peer`'s record `meta` here: a tombstone as it is, a small value
/// with one `Read` (the value comes inline, whatever version the peer holds
/// by then: newest wins anyway), a large one streamed replica to replica.
/// One `Read` instead of a `ReadStream` into a streamed local write is what
/// keeps a repair of many small records fast.
async fn pull(lifecycle: &Lifecycle, peer: &NodeId, meta: RecordMeta) -> Result<()> {
    let coordinator = &lifecycle.inner.coordinator;
    let me = &lifecycle.inner.node;
    if !meta.deleted && meta.size <= INLINE_MAX_BYTES as u64 {
        let read = coordinator
            .replica(peer)
            .read(&meta.key, INLINE_MAX_BYTES as u64)
            .await?;
        // The peer may hold a newer version by now, even a tombstone.
        let value = match (&read.meta, read.value) {
            (Some(held), _) if held.deleted => Some(bytes::Bytes::new()),
            (_, value) => value,
        };
        if let (Some(held), Some(value)) = (read.meta, value)
            && held.key == meta.key
        {
            coordinator.replica(me).write(held, value).await?;
            return Ok(());
        }
    }
    coordinator
        .push_record(me, meta, None, std::slice::from_ref(peer))
        .await
}

/// gRPC's prefix in front of every message: a compression flag and a
/// 4-byte length.
const GRPC_PREFIX_BYTES: u64 = 5;

/// A message's bytes on a gRPC stream (HTTP/2 framing aside).
fn message_bytes(message: &impl prost::Message) -> u64 {
    message.encoded_len() as u64 + GRPC_PREFIX_BYTES
}

/// Counts one `Tree` exchange in `reply`.
fn count_tree(
    reply: &mut BalanceReply,
    range: TokenRange,
    level: u32,
    nodes: &[usize],
    hashes: &[u64],
) {
    reply.bytes_sent += message_bytes(&TreeRequest {
        range: Some(proto_range(range)),
        level,
        nodes: nodes.iter().map(|n| *n as u64).collect(),
    });
    reply.bytes_received += message_bytes(&TreeReply {
        hashes: hashes.to_vec(),
    });
}

/// The `Scan` request listing `spans` (keys only).
fn scan_request(spans: &[TokenRange]) -> ScanRequest {
    ScanRequest {
        ranges: spans.iter().map(|s| proto_range(*s)).collect(),
        inline_max: 0,
        limit: 0,
    }
}

fn proto_range(range: TokenRange) -> crate::proto::TokenRange {
    crate::proto::TokenRange {
        start: range.start.0,
        end: range.end.0,
    }
}

/// Bytes of moving one record to or from a peer: its metadata and value
/// (`value` when it goes whole, else `meta.size` streamed), each value
/// message with its prefix. What `--repair-rate` paces.
fn record_bytes(meta: &RecordMeta, value: Option<&bytes::Bytes>) -> u64 {
    let value_len = match value {
        Some(value) => value.len() as u64,
        None if meta.deleted => 0,
        None => meta.size,
    };
    let pieces = value_len.div_ceil(crate::storage::CHUNK_SIZE_BYTES as u64);
    message_bytes(meta) + value_len + pieces * GRPC_PREFIX_BYTES
}

/// A peer's answer that does not fit what was asked.
fn peer_error(peer: &NodeId, reason: String) -> Error {
    Error::Rpc {
        node: peer.clone(),
        reason,
    }
}
