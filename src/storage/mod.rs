//! Durable storage of versioned records on one node (F3).
//!
//! A [`Store`] keeps, per key, the newest record it has seen: a value or a
//! tombstone, with its version, content type, size and blake3 checksum. It
//! owns the merge rule on disk: a write whose version is not newer than the
//! stored one changes nothing (see `version.rs`).
//!
//! # On-disk layout (spaces of one engine, see `engine.rs`)
//!
//! - `meta`: `key` -> `0x01 ++ StoredRecord` (prost). Values of at most
//!   [`INLINE_MAX_BYTES`] live inside the record.
//! - `chunks`: `u16 key length ++ key ++ timestamp ++ writer ++ u32 index`
//!   (big-endian) -> `bytes ++ xxh3-64 of the bytes`. Larger values are cut
//!   into [`CHUNK_SIZE_BYTES`] chunks written as they stream in; chunks carry
//!   the version, so a new write never touches the chunks of the one it
//!   replaces until its record is committed.
//! - `pending`: `u16 key length ++ key ++ timestamp ++ writer` -> empty, set
//!   while a streamed write is in flight. The record commit removes it in the
//!   same batch; [`Store::open`] deletes the chunks of any marker left by a
//!   crash. A half-written value is therefore never visible.
//! - `by_token`: `token ++ key` -> `timestamp ++ writer ++ deleted`, then
//!   `++ touch ++ expires_at` when either is set (F28), one entry per
//!   record, written in the record's batch: the keys of a ring range in
//!   order, without reading the records.
//!
//! Chunks and pending markers are keyed by the version's base (`touch`
//! left out, see `version.rs`): a change of a value's expiry alone keeps
//! its bytes, so versions of one base share their chunks.
//! - `hints`: writes other replicas missed (see [`Store::add_hint`]).
//!
//! # Durability
//!
//! Every batch reaches the OS before `apply` returns (survives a process
//! kill). With `fsync` on, [`Store::sync`] additionally waits until the data
//! is on disk; concurrent callers share one fsync (group commit).
//!
//! # Files
//!
//! - `mod.rs`: [`Store`], open, reads, whole writes, expiry changes and
//!   the commit that applies the merge rule.
//! - `codec.rs`: the byte layout of every space.
//! - `index.rs`: the token index and the hash-tree leaves.
//! - `hints.rs`: writes kept for replicas that missed them.
//! - `integrity.rs`: quarantine of corrupt copies and verification.
//! - `durability.rs`: group commit, shutdown flush and the disk reserve.
//! - `stream.rs`: streamed writes of large values.
//! - `engine.rs`: the seam to the engine.

mod codec;
mod durability;
mod engine;
mod hints;
mod index;
mod integrity;
mod stream;
#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use xxhash_rust::xxh3::xxh3_64;

use self::codec::{
    Held, chunk_key, decode_pending, decode_record_of, open_chunk, seal_chunk, token_entry,
    token_key,
};
pub use self::codec::{decode_record, encode_record};
use self::durability::{SyncOutcome, spawn_group_commit};
pub use self::engine::{Engine, FjallEngine, MemoryEngine, Op, Space};
pub use self::index::IndexEntry;
pub use self::stream::StreamWriter;
use crate::error::{Error, Result};
use crate::merkle;
use crate::proto::{RecordMeta, StoredRecord};
use crate::version::Version;

/// Largest value kept inside its record (bytes): one read serves it.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;
/// Bytes per stored chunk of a large value: 1 MiB keeps each engine write
/// and each RPC message well under the 4 MiB gRPC default.
pub const CHUNK_SIZE_BYTES: usize = 1024 * 1024;
/// Key locks striped over this many mutexes.
const LOCK_STRIPES: usize = 256;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Where the engine keeps its files; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Wait for data to be on disk before acknowledging (group-committed).
    pub fsync: bool,
    /// Free bytes to keep on the data disk: a write that would leave less is
    /// refused with [`Error::DiskFull`] before the engine sees it. The engine
    /// treats a failed journal write as fatal (every later write fails
    /// until a restart), so it must never meet a full disk. 0: no check.
    pub disk_reserve: u64,
}

/// What happened to a write on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when the replica already held this or a newer version.
    pub applied: bool,
    /// The version the replica holds now.
    pub current: Version,
}

/// A node's store. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The engine: fjall on disk or maps in memory; shared with the
    /// group-commit task.
    engine: Arc<dyn Engine>,
    /// Serialises read-compare-write of one key's record; std mutexes,
    /// never held across an await.
    locks: Vec<Mutex<()>>,
    /// Group-commit queue, present when `fsync` is on.
    syncer: Option<mpsc::UnboundedSender<oneshot::Sender<SyncOutcome>>>,
    /// Hash-tree leaves of everything held (see `merkle.rs`), kept up to
    /// date by every commit and rebuilt from the token index at open.
    leaves: Vec<AtomicU64>,
    /// Tombstones and values with an expiry held per hash-tree leaf, so
    /// that their collection visits only the leaves that have some.
    collectable: Vec<AtomicU64>,
    /// Corrupt copies dropped by [`Store::quarantine`] since the store
    /// opened (found by reads, writes or the scrub), for progress reports.
    quarantined: AtomicU64,
    /// Keys held with a live value (not a tombstone), kept with the leaves.
    live_keys: AtomicU64,
    /// Hints waiting for delivery, counted at open and on every change.
    hints: AtomicU64,
    /// The data dir and the free space to keep on its disk
    /// ([`StorageOptions::disk_reserve`]); `None` in memory.
    reserve: Option<(PathBuf, u64)>,
    /// The data dir; `None` in memory.
    data_dir: Option<PathBuf>,
}

impl Store {
    /// Opens the store and removes what a crash left half-written. Must be
    /// called inside a tokio runtime when `fsync` is on.
    pub fn open(options: &StorageOptions) -> Result<Store> {
        let engine: Arc<dyn Engine> = match &options.data_dir {
            Some(dir) => Arc::new(FjallEngine::open(&dir.join("engine"))?),
            None => Arc::new(MemoryEngine::default()),
        };
        Store::open_engine(engine, options)
    }

    /// Opens the store over an engine already opened, reading back and
    /// cleaning whatever it holds as [`Store::open`] does (the fuzz target
    /// of the on-disk format fills a memory engine with arbitrary bytes).
    pub fn open_engine(engine: Arc<dyn Engine>, options: &StorageOptions) -> Result<Store> {
        let syncer = options.fsync.then(|| spawn_group_commit(engine.clone()));
        let store = Store {
            inner: Arc::new(Inner {
                engine,
                locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                syncer,
                leaves: (0..merkle::LEAVES).map(|_| AtomicU64::new(0)).collect(),
                collectable: (0..merkle::LEAVES).map(|_| AtomicU64::new(0)).collect(),
                quarantined: AtomicU64::new(0),
                live_keys: AtomicU64::new(0),
                hints: AtomicU64::new(0),
                reserve: options
                    .data_dir
                    .clone()
                    .filter(|_| options.disk_reserve > 0)
                    .map(|dir| (dir, options.disk_reserve)),
                data_dir: options.data_dir.clone(),
            }),
        };
        store.clean_pending()?;
        store.index_if_missing()?;
        store.load_leaves()?;
        store.count_hints()?;
        Ok(store)
    }

    /// The version held for `key`, if any.
    pub fn version_of(&self, key: &str) -> Result<Option<Version>> {
        Ok(self.record(key)?.and_then(|r| r.meta).map(|m| m.version()))
    }

    /// Whether the committed record of `key` is exactly `version` (false
    /// when it cannot be read).
    pub fn holds_version(&self, key: &str, version: Version) -> bool {
        matches!(self.version_of(key), Ok(Some(v)) if v == version)
    }

    /// Whether the committed record of `key` has the base of `version`, and
    /// with it the same chunks (false when it cannot be read).
    pub fn holds_base(&self, key: &str, version: Version) -> bool {
        matches!(self.version_of(key), Ok(Some(v)) if v.base() == version.base())
    }

    /// Deletes chunks of streamed writes that never committed.
    fn clean_pending(&self) -> Result<()> {
        loop {
            let markers = self
                .inner
                .engine
                .scan(Space::Pending, b"", Bound::Unbounded, 64)?;
            if markers.is_empty() {
                return Ok(());
            }
            for (marker, _) in markers {
                // Unless the record committed that same version meanwhile
                // (another write of it won): then the chunks are its own.
                let committed = decode_pending(&marker)
                    .is_some_and(|(key, version)| self.holds_base(&key, version));
                let mut ops = if committed {
                    Vec::new()
                } else {
                    self.chunk_deletes_with_prefix(&marker)?
                };
                ops.push(Op::Delete(Space::Pending, marker));
                self.inner.engine.apply(ops)?;
            }
        }
    }

    fn chunk_deletes_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Op>> {
        Ok(self
            .chunk_keys_with_prefix(prefix)?
            .into_iter()
            .map(|k| Op::Delete(Space::Chunks, k))
            .collect())
    }

    /// Keys of the chunks under `prefix` (their values are not read).
    fn chunk_keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let mut start = Bound::Unbounded;
        loop {
            let batch = self
                .inner
                .engine
                .scan_keys(Space::Chunks, prefix, start, 256)?;
            let Some(last) = batch.last() else {
                return Ok(keys);
            };
            start = Bound::Excluded(last.clone());
            keys.extend(batch);
        }
    }

    /// The record held for `key`, if any.
    pub fn record(&self, key: &str) -> Result<Option<StoredRecord>> {
        match self.inner.engine.get(Space::Meta, key.as_bytes())? {
            Some(bytes) => decode_record_of(key.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a whole value (or a tombstone) if newer than what is held.
    /// An empty `value` for a record of a non-zero size keeps the value held
    /// at the same base and changes only its expiry ([`Store::touch`]).
    pub fn write_whole(&self, meta: RecordMeta, value: Bytes) -> Result<WriteOutcome> {
        check_meta(&meta)?;
        self.ensure_room(value.len() as u64)?;
        if !meta.deleted && value.is_empty() && meta.size > 0 {
            return self.touch(meta);
        }
        if meta.deleted && !value.is_empty() {
            return Err(Error::invalid("a tombstone carries no value"));
        }
        if meta.size != value.len() as u64 {
            return Err(Error::invalid(format!(
                "size {} does not match the {} bytes sent",
                meta.size,
                value.len()
            )));
        }
        if !meta.deleted && blake3::hash(&value).as_bytes()[..] != meta.checksum[..] {
            return Err(Error::invalid("checksum does not match the value sent"));
        }
        let version = meta.version();
        if value.len() <= INLINE_MAX_BYTES {
            let deleted = meta.deleted;
            let record = StoredRecord {
                meta: Some(meta),
                inline_value: (!deleted).then_some(value),
                chunk_count: 0,
                chunk_size: 0,
            };
            return self.commit(record, Vec::new(), Staged::default());
        }
        let key = meta.key.clone();
        let mut ops = Vec::new();
        let mut count = 0u32;
        for (index, piece) in value.chunks(CHUNK_SIZE_BYTES).enumerate() {
            ops.push(Op::Put(
                Space::Chunks,
                chunk_key(&key, version, index as u32),
                seal_chunk(piece),
            ));
            count += 1;
        }
        let record = StoredRecord {
            meta: Some(meta),
            inline_value: None,
            chunk_count: count,
            chunk_size: CHUNK_SIZE_BYTES as u32,
        };
        self.commit(record, ops, Staged::default())
    }

    /// Gives the value held at `meta`'s base the version and expiry of
    /// `meta` (EXPIRE and friends on a large value), if `meta` is newer than
    /// what is held. A store holding another value (or none) cannot: that
    /// is `NotFound`, and the caller sends the whole value instead.
    pub fn touch(&self, meta: RecordMeta) -> Result<WriteOutcome> {
        check_meta(&meta)?;
        let key = meta.key.clone();
        let version = meta.version();
        let _guard = self.lock(&key);
        let lacking = || Error::not_found(format!("{key:?} at the version whose expiry changes"));
        let Some(mut record) = self.record(&key)? else {
            return Err(lacking());
        };
        let held = record
            .meta
            .clone()
            .ok_or_else(|| Error::corrupt("record without meta"))?;
        let current = held.version();
        if current >= version {
            return Ok(WriteOutcome {
                applied: false,
                current,
            });
        }
        if held.deleted || current.base() != version.base() {
            return Err(lacking());
        }
        let mut changed = held.clone();
        changed.version = meta.version;
        changed.expires_at = meta.expires_at;
        let now = Held::of(&changed);
        record.meta = Some(changed);
        self.inner.engine.apply(vec![
            Op::Put(Space::Meta, key.as_bytes().to_vec(), encode_record(&record)),
            Op::Put(Space::ByToken, token_key(&key), token_entry(now)),
        ])?;
        self.toggle_leaf(&key, Held::of(&held), false);
        self.toggle_leaf(&key, now, true);
        Ok(WriteOutcome {
            applied: true,
            current: version,
        })
    }

    /// Writes `record` (with `ops`) if its version is newer than the stored
    /// one; otherwise removes what `staged` put on disk beforehand.
    fn commit(
        &self,
        record: StoredRecord,
        mut ops: Vec<Op>,
        staged: Staged,
    ) -> Result<WriteOutcome> {
        let meta = record
            .meta
            .as_ref()
            .ok_or_else(|| Error::invalid("record without meta"))?;
        let key = meta.key.clone();
        let version = meta.version();
        let _guard = self.lock(&key);
        let existing = match self.record(&key) {
            // An unreadable copy must not block every later write of the
            // key (repair included): drop it, then write as onto nothing.
            Err(Error::Corrupt { reason }) => {
                tracing::warn!(%key, %reason, "the held copy is corrupt; dropping it before this write");
                self.quarantine_locked(&key, None)?;
                None
            }
            other => other?,
        };
        let current = existing
            .as_ref()
            .and_then(|r| r.meta.as_ref())
            .map(|m| m.version())
            .unwrap_or(Version::ZERO);
        if current >= version {
            // Keep the newer record; remove whatever this write staged. The
            // same version committed by another write (read repair, a hint
            // and anti-entropy may race), or another of the same base (an
            // expiry change), owns the very same chunk keys: then only the
            // marker goes.
            let undo = if current.base() == version.base() {
                staged
                    .marker
                    .into_iter()
                    .map(|m| Op::Delete(Space::Pending, m))
                    .collect()
            } else {
                staged.undo()
            };
            if !undo.is_empty() {
                self.inner.engine.apply(undo)?;
            }
            return Ok(WriteOutcome {
                applied: false,
                current,
            });
        }
        let existing_meta = existing.as_ref().and_then(|r| r.meta.clone());
        if let Some(old) = existing {
            let old_version = old.meta.as_ref().map(|m| m.version()).unwrap_or_default();
            // Chunks of the same base are this record's own.
            let chunks = if old_version.base() == version.base() {
                0
            } else {
                old.chunk_count
            };
            for index in 0..chunks {
                ops.push(Op::Delete(
                    Space::Chunks,
                    chunk_key(&key, old_version, index),
                ));
            }
        }
        ops.push(Op::Put(
            Space::Meta,
            key.as_bytes().to_vec(),
            encode_record(&record),
        ));
        let now = Held::of(meta);
        ops.push(Op::Put(Space::ByToken, token_key(&key), token_entry(now)));
        if let Some(marker) = staged.marker {
            ops.push(Op::Delete(Space::Pending, marker));
        }
        self.inner.engine.apply(ops)?;
        if let Some(old) = existing_meta {
            self.toggle_leaf(&key, Held::of(&old), false);
        }
        self.toggle_leaf(&key, now, true);
        Ok(WriteOutcome {
            applied: true,
            current: version,
        })
    }

    /// Drops `key` (record and chunks) if it is still held at exactly
    /// `version`; tells whether it was dropped. Used once other replicas
    /// are known to hold it (purge).
    pub fn drop_if(&self, key: &str, version: Version) -> Result<bool> {
        let _guard = self.lock(key);
        let Some(record) = self.record(key)? else {
            return Ok(false);
        };
        if record.meta.as_ref().map(|m| m.version()) != Some(version) {
            return Ok(false);
        }
        let mut ops: Vec<Op> = (0..record.chunk_count)
            .map(|index| Op::Delete(Space::Chunks, chunk_key(key, version, index)))
            .collect();
        ops.push(Op::Delete(Space::Meta, key.as_bytes().to_vec()));
        ops.push(Op::Delete(Space::ByToken, token_key(key)));
        let held = record.meta.as_ref().map(Held::of);
        self.inner.engine.apply(ops)?;
        if let Some(held) = held {
            self.toggle_leaf(key, held, false);
        }
        Ok(true)
    }

    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        let stripe = (xxh3_64(key.as_bytes()) % LOCK_STRIPES as u64) as usize;
        self.inner.locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes of chunk `index` of `key` at `version`, checked.
    pub fn read_chunk(&self, key: &str, version: Version, index: u32) -> Result<Bytes> {
        let raw = self
            .inner
            .engine
            .get(Space::Chunks, &chunk_key(key, version, index))?
            .ok_or_else(|| {
                Error::not_found(format!("chunk {index} of {key:?} at version {version:?}"))
            })?;
        open_chunk(raw).map_err(|e| match e {
            Error::Corrupt { reason } => Error::corrupt(format!("{key:?} chunk {index}: {reason}")),
            other => other,
        })
    }

    /// The whole inline value of a record, checked against its checksum.
    pub fn inline_value(&self, record: &StoredRecord) -> Result<Option<Bytes>> {
        let (Some(meta), Some(value)) = (&record.meta, &record.inline_value) else {
            return Ok(None);
        };
        if !meta.deleted && blake3::hash(value).as_bytes()[..] != meta.checksum[..] {
            return Err(Error::corrupt(format!(
                "value of {:?} does not match its checksum",
                meta.key
            )));
        }
        Ok(Some(value.clone()))
    }

    /// Records whose key starts with `prefix` and sorts after `after`, in key
    /// order, at most `limit`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<RecordMeta>> {
        let start = match after {
            Some(a) => Bound::Excluded(a.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.inner
            .engine
            .scan(Space::Meta, prefix.as_bytes(), start, limit)?
            .into_iter()
            .map(|(key, raw)| {
                decode_record_of(&key, &raw)?
                    .meta
                    .ok_or_else(|| Error::corrupt("record without meta"))
            })
            .collect()
    }

    /// Whole records in key order after `after`, at most `limit`.
    pub fn records_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredRecord>> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        self.inner
            .engine
            .scan(Space::Meta, b"", start, limit)?
            .into_iter()
            .map(|(key, raw)| decode_record_of(&key, &raw))
            .collect()
    }
}

/// Counts one up or down, never below zero whatever the order of racing
/// updates.
fn step(count: &AtomicU64, up: bool) {
    if up {
        count.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            Some(c.saturating_sub(1))
        });
    }
}

/// What a streamed write put on disk before its commit.
#[derive(Default)]
struct Staged {
    /// Keys of its chunks.
    chunks: Vec<Vec<u8>>,
    /// Its pending marker.
    marker: Option<Vec<u8>>,
}

impl Staged {
    /// The ops that remove it all.
    fn undo(self) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .chunks
            .into_iter()
            .map(|k| Op::Delete(Space::Chunks, k))
            .collect();
        ops.extend(self.marker.map(|m| Op::Delete(Space::Pending, m)));
        ops
    }
}

fn check_meta(meta: &RecordMeta) -> Result<()> {
    crate::key::validate(&meta.key)?;
    if meta.version().timestamp == 0 {
        return Err(Error::invalid("write without a version"));
    }
    Ok(())
}
