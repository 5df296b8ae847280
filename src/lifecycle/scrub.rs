//! Scrub (F26): this node reads back everything it stores, without a
//! client asking, and checks it: each record, its inline value against its
//! blake3, each chunk of a large value against its checksum and the chunks
//! together against the value's size and blake3 (`Store::verify`; the
//! engine checks its own block and blob checksums on the way). A copy that
//! fails is dropped (`Store::quarantine`) and fetched again from the key's
//! other replicas, newest version winning (`Coordinator::repair_copy`).
//!
//! A run walks the token index in pages, so it sees every key once even
//! while writes go on (a key written during the run may be checked in its
//! new version or not at all), and is paced by `--scrub-rate` so that it
//! leaves the disk to clients. Runs every `--scrub-interval` (jittered);
//! progress is published in gossip and shown in `/ring`.
//!
//! What it does not do: it does not check hints or copies it does not
//! index, and it cannot read past a corrupt block of the token index
//! itself (the run stops with an error; reads of single keys still work).

use std::sync::Arc;

use super::Lifecycle;
use crate::error::{Error, Result};
use crate::ring::{Token, TokenRange};
use crate::storage::IndexEntry;
use crate::throttle::Throttle;

/// Token-index entries read per page.
const SCRUB_PAGE: usize = 64;
/// What the throttle charges per record on top of its value bytes: the
/// record's own read, so that many small values are paced too.
const RECORD_COST_BYTES: u64 = 512;

/// Scrub of this node, running or last run (shown in `/ring`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScrubProgress {
    /// A run is under way.
    pub active: bool,
    /// Records checked by the current (or last) run.
    pub keys: u64,
    /// Value bytes checked by it.
    pub bytes: u64,
    /// Corrupt copies it found (and dropped).
    pub corrupt: u64,
    /// Of those, copies fetched again from another replica.
    pub repaired: u64,
    /// Runs finished since the node started.
    pub runs: u64,
    /// Corrupt copies found by every run since the node started.
    pub corrupt_total: u64,
    /// Copies repaired by every run since the node started.
    pub repaired_total: u64,
    /// Corrupt copies this node dropped since it started, found by the
    /// scrub or by reads and writes (`Store::quarantined`).
    pub quarantined: u64,
}

/// Checks every record this node holds once; repairs what fails.
pub async fn scrub_local(lifecycle: &Lifecycle, throttle: &Arc<Throttle>) -> Result<()> {
    update(lifecycle, |p| {
        p.active = true;
        p.keys = 0;
        p.bytes = 0;
        p.corrupt = 0;
        p.repaired = 0;
    });
    let result = walk(lifecycle, throttle).await;
    update(lifecycle, |p| {
        p.active = false;
        p.runs += 1;
    });
    let progress = lifecycle.scrub_progress();
    if progress.corrupt > 0 {
        tracing::warn!(
            keys = progress.keys,
            corrupt = progress.corrupt,
            repaired = progress.repaired,
            "scrub found corrupt copies"
        );
    } else {
        tracing::debug!(
            keys = progress.keys,
            bytes = progress.bytes,
            "scrub found nothing wrong"
        );
    }
    result
}

/// Changes this node's scrub progress.
fn update(lifecycle: &Lifecycle, f: impl FnOnce(&mut ScrubProgress)) {
    let mut progress = lifecycle
        .inner
        .scrub
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    f(&mut progress);
}

/// The pages of one run.
async fn walk(lifecycle: &Lifecycle, throttle: &Arc<Throttle>) -> Result<()> {
    let store = &lifecycle.inner.store;
    let whole = TokenRange {
        start: Token(0),
        end: Token(0),
    };
    let mut after: Option<Vec<u8>> = None;
    loop {
        if lifecycle.is_leaving() {
            return Ok(());
        }
        let page = {
            let (store, after) = (store.clone(), after.clone());
            tokio::task::spawn_blocking(move || {
                store.keys_in_range(whole, after.as_deref(), SCRUB_PAGE)
            })
            .await
            .map_err(|e| Error::internal(format!("scrub listing task: {e}")))??
        };
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.cursor.clone());
        for entry in page {
            check(lifecycle, throttle, entry).await?;
        }
    }
}

/// Checks one record; drops and repairs it when it fails.
async fn check(lifecycle: &Lifecycle, throttle: &Arc<Throttle>, entry: IndexEntry) -> Result<()> {
    let store = &lifecycle.inner.store;
    throttle.take(RECORD_COST_BYTES).await;
    let verified = {
        let (store, throttle, key) = (store.clone(), throttle.clone(), entry.key.clone());
        tokio::task::spawn_blocking(move || {
            store.verify(&key, entry.version, |bytes| {
                std::thread::sleep(throttle.book(bytes));
            })
        })
        .await
        .map_err(|e| Error::internal(format!("scrub check task: {e}")))?
    };
    let reason = match verified {
        Ok(Some(bytes)) => {
            update(lifecycle, |p| {
                p.keys += 1;
                p.bytes += bytes;
            });
            return Ok(());
        }
        // Replaced or deleted since the page was read.
        Ok(None) => return Ok(()),
        Err(Error::Corrupt { reason }) => reason,
        Err(err) => return Err(err),
    };
    let key = &entry.key;
    tracing::warn!(%key, %reason, "corrupt copy found by the scrub");
    if !store.quarantine(key, Some(entry.version))? {
        // A good write replaced it meanwhile.
        return Ok(());
    }
    update(lifecycle, |p| {
        p.keys += 1;
        p.corrupt += 1;
        p.corrupt_total += 1;
    });
    let me = &lifecycle.inner.node;
    match lifecycle.inner.coordinator.repair_copy(me, key).await {
        Ok(true) => {
            tracing::info!(%key, "repaired a corrupt copy from another replica");
            update(lifecycle, |p| {
                p.repaired += 1;
                p.repaired_total += 1;
            });
        }
        Ok(false) => {
            tracing::warn!(%key, "no other replica holds the key; its corrupt copy is gone")
        }
        Err(err) => tracing::warn!(
            %key,
            %err,
            "could not repair a corrupt copy now; read repair or anti-entropy will"
        ),
    }
    Ok(())
}
