//! Tombstone collection (F13), expired values' collection (F28) and the
//! rules that keep deleted keys dead.
//!
//! A delete leaves a tombstone so that replicas which missed it learn of it
//! from the others. Tombstones older than the grace period
//! (`--tombstone-grace`, 10 days by default) are dropped, range by range,
//! once every other replica of the range is live and holds the tombstone or
//! something newer, or holds nothing for the key any more (it has nothing
//! that could come back, and may have collected the tombstone already).
//! A replica that is down keeps every tombstone of its ranges alive.
//!
//! A value whose expiry passed reads as absent like a tombstone, and is
//! collected like one: once its expiry is older than the grace period,
//! under the same rule (every other replica holds it, something newer or
//! nothing). Until then it stays, so that a replica holding an older value
//! of the key learns of it. Below, "dead" means either.
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
    let grace = grace.as_nanos().min(u64::MAX as u128) as u64;
    version.timestamp < now_ns().saturating_sub(grace)
}

/// Whether a record is a tombstone or an expired value, dead for longer
/// than `grace`: such a copy is collected once every replica has it, and
/// never handed to a replica holding nothing.
pub fn dead_past_grace(deleted: bool, version: Version, expires_at: u64, grace: Duration) -> bool {
    if deleted {
        return expired(version, grace);
    }
    let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
    expires_at != 0 && expires_at < (now_ns() / 1_000_000).saturating_sub(grace_ms)
}

/// [`dead_past_grace`] of a record's metadata.
pub fn meta_dead_past_grace(meta: &crate::proto::RecordMeta, grace: Duration) -> bool {
    dead_past_grace(meta.deleted, meta.version(), meta.expires_at, grace)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Drops this node's tombstones and expired values, dead for longer than the
/// grace period, of `range` that every other
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
    for leaf in store.leaves_to_collect(range) {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let entries = store.keys_in_range(merkle::leaf_span(leaf), after.as_deref(), BATCH)?;
            let Some(last) = entries.last() else { break };
            after = Some(last.cursor.clone());
            for entry in entries {
                if range.contains(entry.token)
                    && dead_past_grace(entry.deleted, entry.version, entry.expires_at, grace)
                {
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
        tracing::info!(dropped, ?range, "collected tombstones and expired values");
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
        let at = |ago: Duration| Version::new(now - ago.as_nanos() as u64, 1);
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

    #[test]
    fn values_are_dead_past_the_grace_period_once_their_expiry_is() {
        let now_ms = now_ns() / 1_000_000;
        let grace = Duration::from_secs(60);
        let fresh = Version::new(now_ns(), 1);
        // Expired two minutes ago: past a minute's grace.
        assert!(dead_past_grace(false, fresh, now_ms - 120_000, grace));
        // Expired ten seconds ago, or not yet, or never: not yet.
        assert!(!dead_past_grace(false, fresh, now_ms - 10_000, grace));
        assert!(!dead_past_grace(false, fresh, now_ms + 10_000, grace));
        assert!(!dead_past_grace(false, fresh, 0, grace));
        // A tombstone counts from its version.
        assert!(!dead_past_grace(true, fresh, 0, grace));
    }
}
