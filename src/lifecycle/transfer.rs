//! Moving records between nodes: fetching the ranges a node gains from
//! their current replicas (throttled, with progress), and purging what a
//! node no longer owns once every owner holds it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use super::Lifecycle;
use crate::error::{Error, Result};
use crate::proto::{RecordMeta, SyncReply};
use crate::ring::{NodeId, Ring, TokenRange};
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
    pub async fn receive(&self, lifecycle: &Lifecycle, ring: &Ring) -> Result<SyncReply> {
        let _running = self.running.lock().await;
        let me = &lifecycle.inner.node;
        let mine: Vec<_> = ring
            .movements()
            .into_iter()
            .filter(|m| m.gainer == *me)
            .collect();
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
        let started = Instant::now();
        {
            let mut guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            *guard = (
                Progress {
                    active: true,
                    sources: per_source.len(),
                    ..Progress::default()
                },
                Some(started),
            );
        }
        let mut answered: Vec<NodeId> = Vec::new();
        let mut failures: Vec<(NodeId, String)> = Vec::new();
        for (source, ranges) in &per_source {
            match self.receive_from(lifecycle, source, ranges).await {
                Ok(()) => answered.push(source.clone()),
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
            p.seconds = elapsed;
        });
        let progress = self.progress();
        if let Some(missed) = mine
            .iter()
            .find(|m| !m.sources.iter().any(|s| answered.contains(s)))
        {
            return Err(Error::Unavailable {
                needed: 1,
                got: 0,
                answered,
                failed: if failures.is_empty() {
                    vec![(
                        me.clone(),
                        format!("no live replica of range {:?}", missed.range),
                    )]
                } else {
                    failures
                },
            });
        }
        if !mine.is_empty() {
            tracing::info!(
                keys = progress.keys,
                bytes = progress.bytes,
                seconds = elapsed,
                sources = per_source.len(),
                "received ranges"
            );
        }
        Ok(SyncReply {
            keys: progress.keys,
            bytes: progress.bytes,
        })
    }

    /// Stores every record of `ranges` that `source` holds newer than here.
    async fn receive_from(
        &self,
        lifecycle: &Lifecycle,
        source: &NodeId,
        ranges: &[TokenRange],
    ) -> Result<()> {
        let coordinator = &lifecycle.inner.coordinator;
        let store = &lifecycle.inner.store;
        let local = coordinator.replica(&lifecycle.inner.node);
        let mut items = coordinator
            .replica(source)
            .scan(ranges, INLINE_MAX_BYTES as u64)
            .await?;
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
            if store.version_of(&meta.key)?.unwrap_or(Version::ZERO) >= meta.version() {
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
                None => self.stream_value(lifecycle, source, meta).await?,
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

/// Drops every record this node holds but does not own in `ring` that each
/// of its owners holds in the same or a newer version (an owner that lacks
/// it is sent this copy first); returns how many. Records some owner cannot
/// be confirmed to hold stay.
pub async fn purge(lifecycle: &Lifecycle, ring: &Ring) -> Result<PurgeReport> {
    let me = &lifecycle.inner.node;
    let store = &lifecycle.inner.store;
    let coordinator = &lifecycle.inner.coordinator;
    let mut after: Option<Vec<u8>> = None;
    let mut report = PurgeReport::default();
    loop {
        let batch = store.records_after(after.as_deref(), PURGE_BATCH)?;
        let Some(last) = batch.last() else {
            return Ok(report);
        };
        after = last.meta.as_ref().map(|m| m.key.clone().into_bytes());
        for record in batch {
            let Some(meta) = record.meta.clone() else {
                continue;
            };
            let owners = ring.target_nodes_of(meta.key.as_bytes());
            if owners.is_empty() || owners.contains(me) {
                continue;
            }
            let version = meta.version();
            let mut unconfirmed = None;
            for owner in &owners {
                let held = coordinator
                    .replica(owner)
                    .read(&meta.key, 0)
                    .await
                    .map(|r| r.meta.map(|m| m.version()).unwrap_or(Version::ZERO));
                let confirmed = match held {
                    Ok(v) if v >= version => true,
                    // An owner that lacks it gets this copy first.
                    Ok(_) => coordinator
                        .push_record(
                            owner,
                            meta.clone(),
                            store.inline_value(&record)?,
                            std::slice::from_ref(me),
                        )
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if !confirmed {
                    unconfirmed = Some(owner.clone());
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
                Some(owner) => {
                    report.kept += 1;
                    if report.kept_keys.len() < REPORT_KEYS {
                        report.kept_keys.push((
                            meta.key,
                            format!("{owner} could not be confirmed to hold it"),
                        ));
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
