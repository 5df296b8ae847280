//! Moving records between nodes: fetching the ranges a node gains from
//! their current replicas (throttled, with progress), and purging what a
//! node no longer owns once every owner holds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::Lifecycle;
use crate::error::{Error, Result};
use crate::proto::{RecordMeta, SyncReply};
use crate::ring::{NodeId, Ring, Token, TokenRange};
use crate::storage::INLINE_MAX_BYTES;
use crate::throttle::Throttle;
use crate::version::Version;

/// Longest wait for the next record or chunk of a source before giving up
/// on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Records looked at per purge batch.
const PURGE_BATCH: usize = 256;

/// What a node is receiving, or last received (shown in `/ring`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// A transfer is running.
    pub active: bool,
    /// Records stored by the current (or last) transfer.
    pub keys: u64,
    /// Value bytes received by it.
    pub bytes: u64,
    /// Sources finished out of those to read.
    pub sources_done: usize,
    /// Sources to read.
    pub sources: usize,
    /// Seconds it has run (or ran).
    pub seconds: f64,
    /// Bytes per second so far.
    pub rate: f64,
}

/// A range to fetch and the replicas to read it from.
struct Wanted {
    /// The range.
    range: TokenRange,
    /// Its current replicas (this node left out).
    sources: Vec<NodeId>,
    /// How many of them must be read: enough that every write a default
    /// (majority) quorum of them acknowledged is among those read.
    enough: usize,
}

/// Sources of a range a node gaining it must read, of the `sources`
/// replicas it has now with replication factor `n`: every write was
/// acknowledged by a majority of N of them, so reading all but a majority
/// less one of them meets each such write (at least one).
fn sources_needed(sources: usize, n: usize) -> usize {
    (sources + 1)
        .saturating_sub(n / 2 + 1)
        .max(1)
        .min(sources.max(1))
}

/// Transfer state of one node: progress and the `--stream-rate` throttle.
pub struct Transfers {
    /// `--stream-rate`.
    throttle: Throttle,
    /// Progress, and when the current transfer started.
    progress: Mutex<(Progress, Option<Instant>)>,
    /// One transfer at a time.
    running: tokio::sync::Mutex<()>,
}

impl Transfers {
    pub fn new(rate: Option<u64>) -> Transfers {
        Transfers {
            throttle: Throttle::new(rate),
            progress: Mutex::new((Progress::default(), None)),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn progress(&self) -> Progress {
        let guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let (mut progress, started) = guard.clone();
        if let (true, Some(started)) = (progress.active, started) {
            progress.seconds = started.elapsed().as_secs_f64();
        }
        if progress.seconds > 0.0 {
            progress.rate = progress.bytes as f64 / progress.seconds;
        }
        progress
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        let mut guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard.0);
    }

    /// Waits as long as `--stream-rate` asks before `bytes` more.
    async fn throttle(&self, bytes: usize) {
        self.throttle.take(bytes as u64).await;
    }

    /// Fetches every range this node gains in `ring` from each live
    /// current replica of it, keeping the newest version of each key.
    /// Fails when some range could be read from none of its replicas.
    /// Values up to `inline_max` bytes come with the scan; the others (all
    /// with 0: a pass comparing keys and versions) are read on their own,
    /// only where the source holds a newer version.
    ///
    /// A `last_pass` (the one a joiner makes before it turns normal) adds
    /// to the figures of the pass before it instead of starting new ones,
    /// so that `/ring` shows what the whole bootstrap received.
    pub async fn receive(
        &self,
        lifecycle: &Lifecycle,
        ring: &Ring,
        inline_max: u64,
        last_pass: bool,
    ) -> Result<SyncReply> {
        let me = &lifecycle.inner.node;
        let mine: Vec<Wanted> = ring
            .movements()
            .into_iter()
            .filter(|m| m.gainer == *me)
            .map(|m| Wanted {
                range: m.range,
                enough: sources_needed(m.sources.len(), ring.replicas()),
                sources: m.sources,
            })
            .collect();
        self.fetch(lifecycle, ring, mine, inline_max, last_pass)
            .await
    }

    /// Re-reads every range this node holds from its other replicas, as
    /// a node back from longer than the tombstone grace period does.
    pub async fn resync(&self, lifecycle: &Lifecycle, ring: &Ring) -> Result<SyncReply> {
        let me = &lifecycle.inner.node;
        let mine: Vec<Wanted> = ring
            .ranges_of(me)
            .into_iter()
            .map(|(range, replicas)| Wanted {
                range,
                sources: replicas.into_iter().filter(|r| r != me).collect(),
                // A write this node missed is on every other replica of a
                // quorum without it: any one of them has it.
                enough: 1,
            })
            .filter(|w| !w.sources.is_empty())
            .collect();
        self.fetch(lifecycle, ring, mine, INLINE_MAX_BYTES as u64, false)
            .await
    }

    /// Fetches each wanted range from its live sources, newest version
    /// winning; fails when some range could be read from none of them.
    async fn fetch(
        &self,
        lifecycle: &Lifecycle,
        ring: &Ring,
        mine: Vec<Wanted>,
        inline_max: u64,
        continued: bool,
    ) -> Result<SyncReply> {
        let _running = self.running.lock().await;
        let me = &lifecycle.inner.node;
        let mut per_source: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        for movement in &mine {
            for source in &movement.sources {
                if source != me && ring.is_live(source) {
                    per_source
                        .entry(source.clone())
                        .or_default()
                        .push(movement.range);
                }
            }
        }
        // What earlier passes of the same transfer received, when this one
        // continues them; its seconds count on from theirs.
        let (before, started) = {
            let mut guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            let before = match continued {
                true => guard.0.clone(),
                false => Progress::default(),
            };
            let now = Instant::now();
            let started = now
                .checked_sub(Duration::from_secs_f64(before.seconds))
                .unwrap_or(now);
            *guard = (
                Progress {
                    active: true,
                    keys: before.keys,
                    bytes: before.bytes,
                    sources_done: before.sources_done,
                    sources: before.sources + per_source.len(),
                    ..Progress::default()
                },
                Some(started),
            );
            (before, now)
        };
        // This node's own copies older than the tombstone grace period in
        // the ranges it gains: those no current replica holds may be
        // deleted keys whose tombstones were collected (see `gc.rs`).
        let grace = lifecycle.inner.options.tombstone_grace;
        let mut stale = BTreeMap::new();
        for movement in &mine {
            stale.extend(expired_copies(lifecycle, movement.range, grace)?);
        }
        let mut answered: Vec<NodeId> = Vec::new();
        let mut failures: Vec<(NodeId, String)> = Vec::new();
        for (source, ranges) in &per_source {
            let before = self.progress();
            match self
                .receive_from(lifecycle, source, ranges, inline_max, &mut stale)
                .await
            {
                Ok(()) => {
                    let after = self.progress();
                    tracing::info!(
                        %source,
                        ranges = ranges.len(),
                        keys = after.keys.saturating_sub(before.keys),
                        bytes = after.bytes.saturating_sub(before.bytes),
                        "received ranges from a replica"
                    );
                    answered.push(source.clone());
                }
                Err(err) => {
                    tracing::warn!(%source, %err, "could not fetch ranges from a replica");
                    failures.push((source.clone(), err.to_string()));
                }
            }
            self.update(|p| p.sources_done += 1);
        }
        let elapsed = started.elapsed().as_secs_f64();
        self.update(|p| {
            p.active = false;
            p.seconds = before.seconds + elapsed;
        });
        let progress = self.progress();
        let (keys, bytes) = (progress.keys - before.keys, progress.bytes - before.bytes);
        // Dropped only where every current replica was read.
        let store = &lifecycle.inner.store;
        let mut dropped = 0;
        for (key, (token, version)) in stale {
            let read_all = mine
                .iter()
                .filter(|m| m.range.contains(token))
                .all(|m| m.sources.iter().all(|s| s == me || answered.contains(s)));
            if read_all && store.drop_if(&key, version)? {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped own copies older than the tombstone grace period that no replica holds"
            );
        }
        let read = |m: &Wanted| m.sources.iter().filter(|s| answered.contains(s)).count();
        if let Some(missed) = mine.iter().find(|m| read(m) < m.enough) {
            return Err(Error::Unavailable {
                needed: missed.enough,
                got: read(missed),
                answered,
                failed: if failures.is_empty() {
                    vec![(
                        me.clone(),
                        format!(
                            "range {:?} needs {} of its replicas {:?} to be read, {} live",
                            missed.range,
                            missed.enough,
                            missed.sources,
                            missed.sources.iter().filter(|s| ring.is_live(s)).count()
                        ),
                    )]
                } else {
                    failures
                },
            });
        }
        if !mine.is_empty() {
            tracing::info!(
                keys,
                bytes,
                seconds = elapsed,
                sources = per_source.len(),
                "received ranges"
            );
        }
        Ok(SyncReply { keys, bytes })
    }

    /// Stores every record of `ranges` that `source` holds newer than here
    /// (an expired tombstone only over an older copy), and strikes the keys
    /// it holds from `stale`.
    async fn receive_from(
        &self,
        lifecycle: &Lifecycle,
        source: &NodeId,
        ranges: &[TokenRange],
        inline_max: u64,
        stale: &mut BTreeMap<String, (Token, Version)>,
    ) -> Result<()> {
        let grace = lifecycle.inner.options.tombstone_grace;
        let coordinator = &lifecycle.inner.coordinator;
        let store = &lifecycle.inner.store;
        let local = coordinator.replica(&lifecycle.inner.node);
        let mut items = coordinator.replica(source).scan(ranges, inline_max).await?;
        loop {
            let item = match tokio::time::timeout(STEP_TIMEOUT, items.next()).await {
                Ok(Some(item)) => item?,
                Ok(None) => return Ok(()),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("scan of {source}"),
                    });
                }
            };
            let meta = item
                .meta
                .ok_or_else(|| Error::invalid("scan item without meta"))?;
            stale.remove(&meta.key);
            let held = store.version_of(&meta.key)?;
            if held.unwrap_or(Version::ZERO) >= meta.version()
                || (held.is_none() && super::gc::meta_dead_past_grace(&meta, grace))
            {
                continue;
            }
            let size = if meta.deleted { 0 } else { meta.size };
            match item.value {
                Some(value) => {
                    self.throttle(value.len()).await;
                    local.write(meta, value).await?;
                }
                None if meta.deleted => {
                    local.write(meta, Bytes::new()).await?;
                }
                None => match self.stream_value(lifecycle, source, meta).await {
                    Ok(()) => {}
                    // Overwritten (or deleted) at the source since the scan
                    // listed it: the newer write was sent here too, as this
                    // node already was a replica-to-be (or is kept as a
                    // hint for it).
                    Err(Error::NotFound { .. }) => continue,
                    Err(err) => return Err(err),
                },
            }
            self.update(|p| {
                p.keys += 1;
                p.bytes += size;
            });
        }
    }

    /// Copies a large value from `source` into this node's store, piece by
    /// piece, throttled.
    async fn stream_value(
        &self,
        lifecycle: &Lifecycle,
        source: &NodeId,
        meta: RecordMeta,
    ) -> Result<()> {
        let coordinator = &lifecycle.inner.coordinator;
        let pieces = coordinator
            .open_value(&meta, std::slice::from_ref(source), 0, 0)
            .await?;
        // Bytes count as they arrive, so that /ring shows a large value
        // moving; the key counts once it is stored.
        let arrived = std::sync::atomic::AtomicU64::new(0);
        let counted = pieces.then(|piece| {
            let arrived = &arrived;
            async move {
                let piece = piece?;
                self.throttle(piece.len()).await;
                let len = piece.len() as u64;
                arrived.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                self.update(|p| p.bytes += len);
                Ok(piece)
            }
        });
        let written = coordinator
            .write_pieces(&lifecycle.inner.node, &meta, Box::pin(counted))
            .await;
        // The caller counts the whole value with its key once it is stored.
        let arrived = arrived.into_inner();
        self.update(|p| p.bytes -= arrived.min(p.bytes));
        written
    }
}

/// This node's records in `range` older than `grace`, with their token
/// and version.
fn expired_copies(
    lifecycle: &Lifecycle,
    range: TokenRange,
    grace: Duration,
) -> Result<BTreeMap<String, (Token, Version)>> {
    let store = &lifecycle.inner.store;
    let mut out = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = store.keys_in_range(range, after.as_deref(), PURGE_BATCH)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        after = Some(last.cursor.clone());
        for entry in batch {
            if super::gc::expired(entry.version, grace) {
                out.insert(entry.key, (entry.token, entry.version));
            }
        }
    }
}

/// Drops every record this node holds but does not own in `ring` that each
/// of its owners holds in the same or a newer version (an owner that lacks
/// it is sent this copy first); returns how many. Records some owner cannot
/// be confirmed to hold stay. What the owners hold is asked in one `Scan`
/// per owner and batch of records. Past the tombstone grace period an owner that
/// holds nothing is not sent anything (see `gc.rs`): an expired tombstone
/// is dropped, an expired value is kept and reported.
pub async fn purge(lifecycle: &Lifecycle, ring: &Ring) -> Result<PurgeReport> {
    let me = &lifecycle.inner.node;
    let store = &lifecycle.inner.store;
    let coordinator = &lifecycle.inner.coordinator;
    let mut after: Option<Vec<u8>> = None;
    let mut report = PurgeReport::default();
    let grace = lifecycle.inner.options.tombstone_grace;
    // The token index, not the records: only the keys not owned are read,
    // and a corrupt record stops nothing but itself.
    let whole = TokenRange {
        start: Token(0),
        end: Token(0),
    };
    loop {
        let batch = store.keys_in_range(whole, after.as_deref(), PURGE_BATCH)?;
        let Some(last) = batch.last() else {
            return Ok(report);
        };
        after = Some(last.cursor.clone());
        // The records this node does not own, with their owners.
        let mut candidates = Vec::new();
        let mut per_owner: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for entry in batch {
            let owners = ring.target_nodes_of(entry.key.as_bytes());
            if owners.is_empty() || owners.contains(me) {
                continue;
            }
            // A corrupt copy of a key this node does not own just goes.
            let checked = store
                .record(&entry.key)
                .map(|r| r.map(|r| (store.inline_value(&r), r)));
            let (value, record) = match checked {
                Ok(Some((Ok(value), record))) => (value, record),
                Ok(None) => continue,
                Ok(Some((Err(Error::Corrupt { .. }), _))) | Err(Error::Corrupt { .. }) => {
                    store.quarantine(&entry.key, Some(entry.version))?;
                    continue;
                }
                Ok(Some((Err(err), _))) | Err(err) => return Err(err),
            };
            let Some(meta) = record.meta else {
                continue;
            };
            for owner in &owners {
                per_owner
                    .entry(owner.clone())
                    .or_default()
                    .push(meta.key.clone());
            }
            candidates.push((meta, value, owners));
        }
        // What each owner holds of them: one scan per owner and batch.
        let mut held: BTreeMap<NodeId, Result<HashMap<String, Version>>> = BTreeMap::new();
        for (owner, keys) in &per_owner {
            let versions = super::gc::versions_held(lifecycle, owner, keys).await;
            held.insert(owner.clone(), versions);
        }
        for (meta, value, owners) in candidates {
            let version = meta.version();
            let expired = super::gc::expired(version, grace);
            // A tombstone or an expired value dead past the grace period.
            let dead = super::gc::meta_dead_past_grace(&meta, grace);
            let mut unconfirmed = None;
            for owner in &owners {
                let held = match held.get(owner) {
                    Some(Ok(versions)) => {
                        Ok(versions.get(&meta.key).copied().unwrap_or(Version::ZERO))
                    }
                    _ => Err(()),
                };
                let confirmed = match held {
                    Ok(v) if v >= version => true,
                    Ok(Version::ZERO) if dead => true,
                    Ok(Version::ZERO) if expired => {
                        unconfirmed = Some(format!(
                            "{owner} holds nothing and this copy is older than the \
                             tombstone grace period (it may have been deleted)"
                        ));
                        break;
                    }
                    // An owner that lacks it gets this copy first.
                    Ok(_) => coordinator
                        .push_record(owner, meta.clone(), value.clone(), std::slice::from_ref(me))
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if !confirmed {
                    unconfirmed = Some(format!("{owner} could not be confirmed to hold it"));
                    break;
                }
            }
            match unconfirmed {
                None => {
                    if store.drop_if(&meta.key, version)? {
                        report.dropped += 1;
                        if report.dropped_keys.len() < REPORT_KEYS {
                            report.dropped_keys.push(meta.key);
                        }
                    }
                }
                Some(why) => {
                    report.kept += 1;
                    if report.kept_keys.len() < REPORT_KEYS {
                        report.kept_keys.push((meta.key, why));
                    }
                }
            }
        }
    }
}

/// Keys named per list in a purge report.
const REPORT_KEYS: usize = 100;

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Records dropped: every owner holds them.
    pub dropped: u64,
    /// Records kept for now: some owner could not be confirmed.
    pub kept: u64,
    /// The first dropped keys.
    pub dropped_keys: Vec<String>,
    /// The first kept keys, with why.
    pub kept_keys: Vec<(String, String)>,
}

impl From<PurgeReport> for crate::proto::PurgeReply {
    fn from(report: PurgeReport) -> Self {
        crate::proto::PurgeReply {
            dropped: report.dropped,
            kept: report.kept,
            dropped_keys: report.dropped_keys,
            kept_keys: report
                .kept_keys
                .into_iter()
                .map(|(key, why)| crate::proto::KeptKey { key, why })
                .collect(),
        }
    }
}

impl From<crate::proto::PurgeReply> for PurgeReport {
    fn from(reply: crate::proto::PurgeReply) -> Self {
        PurgeReport {
            dropped: reply.dropped,
            kept: reply.kept,
            dropped_keys: reply.dropped_keys,
            kept_keys: reply
                .kept_keys
                .into_iter()
                .map(|k| (k.key, k.why))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gainer_reads_enough_sources_to_meet_every_majority_write() {
        // N = 3, three replicas: any two meet every majority of the three.
        assert_eq!(sources_needed(3, 3), 2);
        // Two members so far (N = 3): a majority of 3 is both of them.
        assert_eq!(sources_needed(2, 3), 1);
        assert_eq!(sources_needed(5, 5), 3);
        assert_eq!(sources_needed(1, 1), 1);
        assert_eq!(sources_needed(2, 2), 1);
        assert_eq!(sources_needed(0, 3), 1);
    }
}
