//! Tombstone collection (F13) and the rules that keep deleted keys dead.
//!
//! A delete leaves a tombstone so that replicas which missed it learn of it
//! from the others. Tombstones older than the grace period
//! (`--tombstone-grace`, 10 days by default) are dropped, range by range,
//! once every other replica of the range is live and holds the tombstone or
//! something newer, or holds nothing for the key any more (it has nothing
//! that could come back, and may have collected the tombstone already).
//! A replica that is down keeps every tombstone of its ranges alive.
//!
//! Once a tombstone may have been collected somewhere, a copy of the key
//! older than the grace period that a replica lacks may be a deleted value;
//! so such copies are never handed to a replica that holds nothing:
//! - anti-entropy does not push or pull an expired tombstone to or from a
//!   replica holding nothing (it would only be collected again);
//! - purge drops an expired tombstone an owner lacks, and keeps (never
//!   pushes) an expired value an owner lacks;
//! - hints older than the grace period are dropped undelivered;
//! - a node back after more than the grace period away (see
//!   `server::Alive`) re-syncs its ranges as if joining, and drops its own
//!   expired copies that no current replica holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::Lifecycle;
use crate::error::{Error, Result};
use crate::merkle;
use crate::ring::{NodeId, Token, TokenRange};
use crate::version::Version;

/// Expired tombstones checked with the other replicas at a time.
const BATCH: usize = 1024;

/// Whether a copy written at `version` is older than `grace`.
pub fn expired(version: Version, grace: Duration) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let grace = grace.as_nanos().min(u64::MAX as u128) as u64;
    version.timestamp < now.saturating_sub(grace)
}

/// Drops this node's expired tombstones of `range` that every other
/// replica in `replicas` holds (or no longer holds anything for); returns
/// how many. Does nothing while one of them is down or the ring changes.
pub async fn collect(lifecycle: &Lifecycle, range: TokenRange, replicas: &[NodeId]) -> Result<u64> {
    let me = &lifecycle.inner.node;
    let store = &lifecycle.inner.store;
    let ring = lifecycle.inner.membership.ring();
    let grace = lifecycle.inner.options.tombstone_grace;
    let others: Vec<&NodeId> = replicas.iter().filter(|r| *r != me).collect();
    // While the ring changes, nodes gaining the range are not all listed.
    if ring.in_transition() || others.iter().any(|r| !ring.is_live(r)) {
        return Ok(0);
    }
    let mut dropped = 0;
    let mut batch: BTreeMap<String, Version> = BTreeMap::new();
    for leaf in store.leaves_with_tombstones(range) {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let entries = store.keys_in_range(merkle::leaf_span(leaf), after.as_deref(), BATCH)?;
            let Some(last) = entries.last() else { break };
            after = Some(last.cursor.clone());
            for entry in entries {
                if entry.deleted && range.contains(entry.token) && expired(entry.version, grace) {
                    batch.insert(entry.key, entry.version);
                }
            }
            if batch.len() >= BATCH {
                dropped += collect_batch(lifecycle, &others, std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        dropped += collect_batch(lifecycle, &others, batch).await?;
    }
    if dropped > 0 {
        tracing::info!(dropped, ?range, "collected expired tombstones");
    }
    Ok(dropped)
}

/// The versions `peer` holds of `keys` (absent: it holds nothing), in one
/// `Scan` of their hash-tree leaves rather than a call per key.
pub async fn versions_held<'a>(
    lifecycle: &Lifecycle,
    peer: &NodeId,
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<HashMap<String, Version>> {
    let mut wanted: HashSet<&str> = HashSet::new();
    let mut leaves = BTreeSet::new();
    for key in keys {
        wanted.insert(key);
        leaves.insert(merkle::leaf_of(Token::of_key(key.as_bytes())));
    }
    let spans: Vec<TokenRange> = leaves.into_iter().map(merkle::leaf_span).collect();
    let mut held = HashMap::new();
    if spans.is_empty() {
        return Ok(held);
    }
    let mut items = lifecycle
        .inner
        .coordinator
        .replica(peer)
        .scan(&spans, 0)
        .await?;
    while let Some(item) = items.next().await {
        let meta = item?
            .meta
            .ok_or_else(|| Error::invalid("scan item without meta"))?;
        if wanted.contains(meta.key.as_str()) {
            let version = meta.version();
            held.insert(meta.key, version);
        }
    }
    Ok(held)
}

/// Checks `tombstones` with each of `others` and drops those every one of
/// them holds (or lacks entirely).
async fn collect_batch(
    lifecycle: &Lifecycle,
    others: &[&NodeId],
    mut tombstones: BTreeMap<String, Version>,
) -> Result<u64> {
    for peer in others {
        let held = versions_held(lifecycle, peer, tombstones.keys()).await?;
        // Older than the tombstone: that replica still needs it.
        tombstones.retain(|key, version| held.get(key).is_none_or(|v| v >= version));
    }
    let store = &lifecycle.inner.store;
    let mut dropped = 0;
    for (key, version) in tombstones {
        if store.drop_if(&key, version)? {
            dropped += 1;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_older_than_the_grace_period_are_expired() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let at = |ago: Duration| Version {
            timestamp: now - ago.as_nanos() as u64,
            writer: 1,
        };
        let grace = Duration::from_secs(60);
        assert!(expired(at(Duration::from_secs(120)), grace));
        assert!(!expired(at(Duration::from_secs(10)), grace));
        assert!(!expired(
            at(Duration::ZERO),
            Duration::from_secs(10 * 86_400)
        ));
        // A grace longer than the epoch expires nothing.
        assert!(!expired(at(Duration::from_secs(1)), Duration::MAX));
    }
}
