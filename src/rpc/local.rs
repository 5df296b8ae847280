//! The replica side of every node-to-node call, run against the local store.
//! The gRPC service (`service.rs`) and the coordinator's local shortcut both
//! call these, so a local replica behaves exactly like a remote one.

use std::sync::Arc;

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
}

fn reply(outcome: WriteOutcome) -> WriteReply {
    WriteReply {
        applied: outcome.applied,
        current: Some(outcome.current.into()),
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
        Ok(reply(outcome))
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
                    return Ok(reply(outcome));
                }
            }
        }
        Err(Error::Aborted {
            reason: "the stream ended before its trailer".into(),
        })
    }

    /// What this replica holds for `key`, with the value when it is at most
    /// `inline_max` bytes and stored inline.
    pub async fn read(&self, key: &str, inline_max: u64) -> Result<ReadReply> {
        crate::key::validate(key)?;
        let Some(record) = self.store.record(key)? else {
            return Ok(ReadReply::default());
        };
        let meta = record.meta.clone();
        let size = meta.as_ref().map(|m| m.size).unwrap_or(0);
        let value = if size <= inline_max {
            self.store.inline_value(&record)?
        } else {
            None
        };
        Ok(ReadReply { meta, value })
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
        let record = self
            .store
            .record(&key)?
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
        if let Some(value) = self.store.inline_value(&record)? {
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
    /// at most `inline_max` bytes. More than [`MAX_SCAN_RANGES`] ranges is
    /// an error at once.
    pub fn scan(
        &self,
        ranges: Vec<TokenRange>,
        inline_max: u64,
    ) -> Result<mpsc::Receiver<Result<ScanItem>>> {
        if ranges.len() > MAX_SCAN_RANGES {
            return Err(Error::invalid(format!(
                "{} ranges in one scan; at most {MAX_SCAN_RANGES}",
                ranges.len()
            )));
        }
        let (tx, rx) = mpsc::channel(SCAN_AHEAD_ITEMS);
        let store = self.store.clone();
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
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The record of `key` as a scan item; `None` when it was dropped since
/// the index was read, or for a value that fails its checksum (not handed
/// on: the other sources of the range serve it).
fn scan_item(store: &Store, key: &str, inline_max: u64) -> Result<Option<ScanItem>> {
    let Some(record) = store.record(key)? else {
        return Ok(None);
    };
    let Some(meta) = record.meta.clone() else {
        return Ok(None);
    };
    let value = if meta.size <= inline_max {
        match store.inline_value(&record) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(key = %meta.key, %err, "not streaming a corrupt value");
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
