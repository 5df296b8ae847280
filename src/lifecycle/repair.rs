//! Anti-entropy (F17): this node compares each range it holds with every
//! other live replica of it, top down through the hash trees
//! (`merkle::Descent`, `Tree` RPC), lists the keys of the differing leaves
//! on both sides (`Scan` without values) and moves only those records,
//! newest version winning, tombstones included.

use std::collections::BTreeMap;

use super::{Lifecycle, gc};
use crate::error::{Error, Result};
use crate::merkle::{self, Descent};
use crate::proto::{BalanceReply, RecordMeta, StoredRecord};
use crate::ring::{NodeId, TokenRange};

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
        if !active {
            progress.runs += 1;
        }
    };
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
            if let Err(err) = compare(lifecycle, range, peer, &mut reply).await {
                tracing::warn!(%peer, %err, "anti-entropy with a replica failed");
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
    let local = store.leaf_hashes(range)?;
    let root = remote.tree(range, 0, &[0]).await?;
    reply.hashes += 1;
    if root.first() == Some(&local.node(0, 0)) {
        return Ok(());
    }
    let mut descent = Descent::new(FANOUT_BITS);
    while !descent.done() {
        let (level, nodes) = descent.next_nodes();
        let theirs = remote.tree(range, level, &nodes).await?;
        let ours: Vec<u64> = nodes.iter().map(|n| local.node(level, *n)).collect();
        reply.hashes += nodes.len() as u64;
        descent.advance(level, nodes, &ours, &theirs);
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
    use futures::StreamExt;
    while let Some(item) = items.next().await {
        let meta = item?
            .meta
            .ok_or_else(|| Error::invalid("scan item without meta"))?;
        if range.contains(crate::ring::Token::of_key(meta.key.as_bytes())) {
            theirs.insert(meta.key.clone(), meta);
        }
    }
    let me = lifecycle.inner.node.clone();
    let grace = lifecycle.inner.options.tombstone_grace;
    // An expired tombstone is not handed to a replica holding nothing: it
    // may have collected it already (see gc.rs).
    let expired_tombstone = |m: &RecordMeta| m.deleted && gc::expired(m.version(), grace);
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
            coordinator
                .push_record(peer, mine.clone(), value, std::slice::from_ref(&me))
                .await?;
            reply.pushed += 1;
        }
    }
    for (key, remote_meta) in theirs {
        let newer_there = match ours.get(&key) {
            Some((m, _)) => m.version() < remote_meta.version(),
            None => !expired_tombstone(&remote_meta),
        };
        if newer_there {
            coordinator
                .push_record(&me, remote_meta, None, std::slice::from_ref(peer))
                .await?;
            reply.pulled += 1;
        }
    }
    Ok(())
}
