//! Hinted handoff (F15): writes a replica missed are kept on the node that
//! coordinated them (`Store::add_hint`) and delivered here once the replica
//! is up again. A hint with its value is written as is; one without (a
//! large value) is copied from a replica that holds that version. Hints for
//! removed members are dropped; a hint superseded by a newer version on
//! the target is dropped when the target refuses it as older. A hint older
//! than the tombstone grace period is dropped undelivered: a delete of its
//! key may have been collected everywhere since (see `gc.rs`).

use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

use super::Lifecycle;
use crate::error::{Error, Result};
use crate::proto::StoredRecord;
use crate::ring::{MemberState, NodeId, Ring};
use crate::storage::Store;

/// Time between delivery rounds.
const ROUND: Duration = Duration::from_millis(500);
/// Hints read at a time.
const BATCH: usize = 128;

/// Delivers hints forever.
pub async fn deliver_forever(lifecycle: Lifecycle) {
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ring = lifecycle.inner.membership.ring();
        match deliver_round(&lifecycle, &ring).await {
            Ok(delivered) => {
                for (peer, delivered) in delivered {
                    let metrics = lifecycle.inner.coordinator.metrics();
                    metrics.hints_delivered(delivered);
                    tracing::info!(%peer, delivered, "hints delivered");
                }
            }
            Err(err) => tracing::warn!(%err, "hint delivery stopped"),
        }
    }
}

/// One pass over the stored hints; returns how many were delivered to
/// each target.
async fn deliver_round(
    lifecycle: &Lifecycle,
    ring: &Ring,
) -> Result<std::collections::BTreeMap<NodeId, u64>> {
    let store = &lifecycle.inner.store;
    let mut after = Bound::Unbounded;
    let mut delivered = std::collections::BTreeMap::new();
    loop {
        let batch = store.hints_after(after.clone(), BATCH)?;
        let Some((last, _, _)) = batch.last() else {
            return Ok(delivered);
        };
        after = Bound::Excluded(last.clone());
        for (raw, target, record) in batch {
            let Ok(node) = NodeId::parse(&target) else {
                store.remove_hint(raw)?;
                continue;
            };
            match ring.member(&node) {
                None => {
                    store.remove_hint(raw)?;
                    continue;
                }
                Some(m) if m.state == MemberState::Removed => {
                    store.remove_hint(raw)?;
                    continue;
                }
                Some(m) if !m.live => {
                    // Skip the rest of this target's hints this round.
                    after = Bound::Excluded(Store::hints_end_of(&target));
                    break;
                }
                Some(_) => {}
            }
            let grace = lifecycle.inner.options.tombstone_grace;
            if record
                .meta
                .as_ref()
                .is_none_or(|m| super::gc::expired(m.version(), grace))
            {
                store.remove_hint(raw)?;
                continue;
            }
            match deliver(lifecycle, ring, &node, record).await {
                Ok(()) => {
                    store.remove_hint(raw)?;
                    *delivered.entry(node).or_insert(0) += 1;
                }
                Err(err) => {
                    tracing::debug!(%node, %err, "hint not delivered yet");
                    after = Bound::Excluded(Store::hints_end_of(&target));
                    break;
                }
            }
        }
    }
}

/// Makes `target` hold the hinted record (or something newer).
async fn deliver(
    lifecycle: &Lifecycle,
    ring: &Ring,
    target: &NodeId,
    record: StoredRecord,
) -> Result<()> {
    let meta = record
        .meta
        .ok_or_else(|| Error::corrupt("hint without meta"))?;
    let coordinator = &lifecycle.inner.coordinator;
    let handle = coordinator.replica(target);
    if meta.deleted {
        return handle.write(meta, Bytes::new()).await.map(|_| ());
    }
    if let Some(value) = record.inline_value {
        return handle.write(meta, value).await.map(|_| ());
    }
    // A large value: the target may already have it or something newer.
    let held = handle.read(&meta.key, 0).await?.meta.map(|m| m.version());
    if held.is_some_and(|v| v >= meta.version()) {
        return Ok(());
    }
    let sources: Vec<NodeId> = ring
        .nodes_of(meta.key.as_bytes())
        .into_iter()
        .chain(ring.pending_of(meta.key.as_bytes()))
        .filter(|n| n != target && ring.is_live(n))
        .collect();
    match coordinator.push_record(target, meta, None, &sources).await {
        // No replica holds that version any more: a newer one replaced it,
        // which read repair and the owners' own copies take care of.
        Err(Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}
