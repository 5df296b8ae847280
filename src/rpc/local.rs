//! The replica side of every node-to-node call, run against the local store.
//! The gRPC service (`service.rs`) and the coordinator's local shortcut both
//! call these, so a local replica behaves exactly like a remote one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::proto::{ReadReply, RecordMeta, ScanItem, WriteReply};
use crate::ring::TokenRange;
use crate::rpc::WriteMsg;
use crate::storage::{Store, WriteOutcome};
use crate::version::{Clock, Version};

/// Chunks read ahead of the consumer by [`LocalReplica::read_stream`].
const READ_AHEAD_CHUNKS: usize = 2;
/// Records read from the engine at a time by [`LocalReplica::scan`].
const SCAN_BATCH: usize = 256;
/// Scan items queued ahead of the consumer.
const SCAN_AHEAD_ITEMS: usize = 512;
/// Most tree nodes one `Tree` call may ask for: a comparison round never
/// asks more than the leaves (16 children of each differing node of the
/// level above), so more is a malformed request, refused before any work.
pub const MAX_TREE_NODES: usize = crate::merkle::LEAVES;
/// Most ranges one `Scan` call may list: repair asks at most one per leaf
/// (65,536) and a bootstrap one per range of the ring (at most 4,096 tokens
/// per member); 2^18 leaves room for 64 members of 4,096 tokens.
pub const MAX_SCAN_RANGES: usize = 1 << 18;

/// Replica operations on this node's store.
#[derive(Clone)]
pub struct LocalReplica {
    /// The node's store.
    pub store: Store,
    /// The node's clock, moved forward by the versions it stores.
    pub clock: Arc<Clock>,
    /// Set while the node re-syncs after a long absence (see
    /// `lifecycle/alive.rs`): its copies may be deleted keys, so it serves
    /// neither reads nor tree comparisons.
    pub catching_up: Arc<AtomicBool>,
}

impl LocalReplica {
    /// Fails while the node re-syncs after a long absence.
    fn serving(&self) -> Result<()> {
        if self.catching_up.load(Ordering::Acquire) {
            return Err(Error::NotReady {
                reason: "re-syncing after an absence longer than the tombstone grace period".into(),
            });
        }
        Ok(())
    }
}

fn reply(outcome: WriteOutcome, clock: &Clock) -> WriteReply {
    WriteReply {
        applied: outcome.applied,
        current: Some(outcome.current.into()),
        now: clock.physical_ns(),
    }
}

impl LocalReplica {
    /// Stores a whole value or tombstone if newer.
    pub async fn write(&self, meta: RecordMeta, value: Bytes) -> Result<WriteReply> {
        self.clock.observe(meta.version());
        // At most one 1 MiB chunk: written inline, like every engine write
        // here (an append to the journal in the page cache). Hopping to
        // blocking-pool threads instead scattered chunk-sized buffers over
        // many threads' allocator caches and grew streaming nodes past 128 MiB.
        let outcome = self.store.write_whole(meta, value)?;
        self.store.sync().await?;
        Ok(reply(outcome, &self.clock))
    }

    /// Stores a streamed value: `header`, then the messages of `rx`, which
    /// must end with a trailer. A stream that ends early stores nothing.
    pub async fn write_stream(
        &self,
        header: RecordMeta,
        mut rx: impl Stream<Item = Result<WriteMsg>> + Unpin,
    ) -> Result<WriteReply> {
        use futures::StreamExt;
        self.clock.observe(header.version());
        let mut writer = self.store.begin_stream(header)?;
        while let Some(msg) = rx.next().await {
            match msg? {
                WriteMsg::Data(data) => {
                    self.store.wait_for_flush_room().await;
                    writer.write(&data)?;
                }
                WriteMsg::Trailer { size, checksum } => {
                    let outcome = writer.finish(size, &checksum)?;
                    self.store.sync().await?;
                    return Ok(reply(outcome, &self.clock));
                }
            }
        }
        Err(Error::Aborted {
            reason: "the stream ended before its trailer".into(),
        })
    }

    /// What this replica holds for `key`, with the value when it is at most
    /// `inline_max` bytes and stored inline. A copy that fails its checks
    /// is dropped ([`Store::quarantine`]) and answered with `Corrupt`: the
    /// coordinator reads the other replicas and repairs this one.
    pub async fn read(&self, key: &str, inline_max: u64) -> Result<ReadReply> {
        crate::key::validate(key)?;
        self.serving()?;
        let record = match self.store.record(key) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Ok(ReadReply {
                    now: self.clock.physical_ns(),
                    ..ReadReply::default()
                });
            }
            Err(err) => return Err(self.dropping_corrupt(key, None, err)),
        };
        let meta = record.meta.clone();
        let size = meta.as_ref().map(|m| m.size).unwrap_or(0);
        let value = if size <= inline_max {
            let version = meta.as_ref().map(|m| m.version());
            self.store
                .inline_value(&record)
                .map_err(|err| self.dropping_corrupt(key, version, err))?
        } else {
            None
        };
        Ok(ReadReply {
            meta,
            value,
            now: self.clock.physical_ns(),
        })
    }

    /// Passes `err` on, first dropping the copy of `key` (at `version`, if
    /// known) when `err` says it is corrupt.
    fn dropping_corrupt(&self, key: &str, version: Option<Version>, err: Error) -> Error {
        quarantine_if_corrupt(&self.store, key, version, &err);
        err
    }

    /// The bytes `offset..offset+length` (length 0: to the end) of `key` at
    /// exactly `version`, as a stream of chunks read just ahead of the
    /// consumer.
    pub fn read_stream(
        &self,
        key: String,
        version: Version,
        offset: u64,
        length: u64,
    ) -> Result<mpsc::Receiver<Result<Bytes>>> {
        crate::key::validate(&key)?;
        self.serving()?;
        let record = self
            .store
            .record(&key)
            .map_err(|err| self.dropping_corrupt(&key, None, err))?
            .ok_or_else(|| Error::not_found(format!("key {key:?}")))?;
        let meta = record.meta.clone().unwrap_or_default();
        if meta.version() != version || meta.deleted {
            return Err(Error::not_found(format!("{key:?} at version {version:?}")));
        }
        if offset > meta.size {
            return Err(Error::invalid("offset past the end of the value"));
        }
        let end = if length == 0 {
            meta.size
        } else {
            offset.saturating_add(length).min(meta.size)
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
        let inline = self
            .store
            .inline_value(&record)
            .map_err(|err| self.dropping_corrupt(&key, Some(version), err))?;
        if let Some(value) = inline {
            let piece = value.slice(offset as usize..end as usize);
            let _ = tx.try_send(Ok(piece));
            return Ok(rx);
        }
        let store = self.store.clone();
        let chunk = record.chunk_size.max(1) as u64;
        tokio::task::spawn_blocking(move || {
            let mut position = offset;
            while position < end {
                let index = (position / chunk) as u32;
                let start_in_chunk = (position % chunk) as usize;
                let piece = store.read_chunk(&key, version, index).and_then(|data| {
                    let stop = ((end - index as u64 * chunk) as usize).min(data.len());
                    if start_in_chunk >= stop {
                        return Err(Error::corrupt(format!("chunk {index} of {key:?} is short")));
                    }
                    Ok(data.slice(start_in_chunk..stop))
                });
                // A chunk missing under the committed record is a broken
                // copy too (a newer write removing it is not).
                let piece = piece.map_err(|err| match err {
                    Error::NotFound { .. } if store.holds_version(&key, version) => {
                        Error::corrupt(format!("{key:?} chunk {index} is missing"))
                    }
                    other => other,
                });
                if let Err(err) = &piece {
                    quarantine_if_corrupt(&store, &key, Some(version), err);
                }
                let failed = piece.is_err();
                if let Ok(p) = &piece {
                    position += p.len() as u64;
                }
                if tx.blocking_send(piece).is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Hashes of hash-tree nodes of `range` at `level` as this replica
    /// holds it.
    pub fn tree(&self, range: TokenRange, level: u32, nodes: &[usize]) -> Result<Vec<u64>> {
        self.serving()?;
        if nodes.len() > MAX_TREE_NODES {
            return Err(Error::invalid(format!(
                "{} tree nodes asked at once; at most {MAX_TREE_NODES}",
                nodes.len()
            )));
        }
        if level > crate::merkle::LEAF_BITS {
            return Err(Error::invalid(format!(
                "tree level {level} is past the leaves"
            )));
        }
        if let Some(bad) = nodes.iter().find(|n| **n >= 1usize << level) {
            return Err(Error::invalid(format!(
                "no node {bad} at tree level {level}"
            )));
        }
        let leaves = self.store.leaf_hashes(range)?;
        Ok(nodes.iter().map(|n| leaves.node(level, *n)).collect())
    }

    /// Every record (values and tombstones) whose key hashes into one of
    /// `ranges`, in key order, with the value when it is stored inline and
    /// at most `inline_max` bytes; at most `limit` of them (0: all). More
    /// than [`MAX_SCAN_RANGES`] ranges is an error at once.
    pub fn scan(
        &self,
        ranges: Vec<TokenRange>,
        inline_max: u64,
        limit: u64,
    ) -> Result<mpsc::Receiver<Result<ScanItem>>> {
        if ranges.len() > MAX_SCAN_RANGES {
            return Err(Error::invalid(format!(
                "{} ranges in one scan; at most {MAX_SCAN_RANGES}",
                ranges.len()
            )));
        }
        let (tx, rx) = mpsc::channel(SCAN_AHEAD_ITEMS);
        let store = self.store.clone();
        let mut left = if limit == 0 { u64::MAX } else { limit };
        tokio::task::spawn_blocking(move || {
            for range in ranges {
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let batch = match store.keys_in_range(range, after.as_deref(), SCAN_BATCH) {
                        Ok(batch) => batch,
                        Err(err) => {
                            let _ = tx.blocking_send(Err(err));
                            return;
                        }
                    };
                    let Some(last) = batch.last() else { break };
                    after = Some(last.cursor.clone());
                    for entry in batch {
                        let item = match scan_item(&store, &entry.key, inline_max) {
                            Ok(Some(item)) => Ok(item),
                            Ok(None) => continue,
                            Err(err) => Err(err),
                        };
                        if tx.blocking_send(item).is_err() {
                            return;
                        }
                        left -= 1;
                        if left == 0 {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Drops the copy of `key` (at `version`, if known) when `err` says it is
/// corrupt; logs when even that fails.
fn quarantine_if_corrupt(store: &Store, key: &str, version: Option<Version>, err: &Error) {
    if !matches!(err, Error::Corrupt { .. }) {
        return;
    }
    tracing::warn!(%key, %err, "corrupt copy found by a read");
    if let Err(drop_err) = store.quarantine(key, version) {
        tracing::warn!(%key, %drop_err, "could not drop a corrupt copy");
    }
}

/// The record of `key` as a scan item; `None` when it was dropped since
/// the index was read, or for a copy that fails its checks (dropped, and
/// not handed on: the other sources of the range serve it).
fn scan_item(store: &Store, key: &str, inline_max: u64) -> Result<Option<ScanItem>> {
    let record = match store.record(key) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(err @ Error::Corrupt { .. }) => {
            quarantine_if_corrupt(store, key, None, &err);
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let Some(meta) = record.meta.clone() else {
        return Ok(None);
    };
    let value = if meta.size <= inline_max {
        match store.inline_value(&record) {
            Ok(v) => v,
            Err(err) => {
                quarantine_if_corrupt(store, key, Some(meta.version()), &err);
                return Ok(None);
            }
        }
    } else {
        None
    };
    Ok(Some(ScanItem {
        meta: Some(meta),
        value,
    }))
}
