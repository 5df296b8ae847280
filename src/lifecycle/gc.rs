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

use std::collections::{BTreeMap, BTreeSet};
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
/// how many. Does nothing while one of them is down.
pub async fn collect(lifecycle: &Lifecycle, range: TokenRange, replicas: &[NodeId]) -> Result<u64> {
    let me = &lifecycle.inner.node;
    let store = &lifecycle.inner.store;
    let ring = lifecycle.inner.membership.ring();
    let grace = lifecycle.inner.options.tombstone_grace;
    let others: Vec<&NodeId> = replicas.iter().filter(|r| *r != me).collect();
    if others.iter().any(|r| !ring.is_live(r)) {
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
                dropped +=
                    collect_batch(lifecycle, range, &others, std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        dropped += collect_batch(lifecycle, range, &others, batch).await?;
    }
    if dropped > 0 {
        tracing::info!(dropped, ?range, "collected expired tombstones");
    }
    Ok(dropped)
}

/// Checks `tombstones` with each of `others` and drops those every one of
/// them holds (or lacks entirely).
async fn collect_batch(
    lifecycle: &Lifecycle,
    range: TokenRange,
    others: &[&NodeId],
    mut tombstones: BTreeMap<String, Version>,
) -> Result<u64> {
    let coordinator = &lifecycle.inner.coordinator;
    let spans: Vec<TokenRange> = tombstones
        .keys()
        .map(|k| merkle::leaf_of(Token::of_key(k.as_bytes())))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(merkle::leaf_span)
        .collect();
    for peer in others {
        let mut items = coordinator.replica(peer).scan(&spans, 0).await?;
        while let Some(item) = items.next().await {
            let meta = item?
                .meta
                .ok_or_else(|| Error::invalid("scan item without meta"))?;
            if !range.contains(Token::of_key(meta.key.as_bytes())) {
                continue;
            }
            // Older than the tombstone: that replica still needs it.
            if tombstones
                .get(&meta.key)
                .is_some_and(|v| meta.version() < *v)
            {
                tombstones.remove(&meta.key);
            }
        }
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
