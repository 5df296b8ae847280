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

mod engine;

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use xxhash_rust::xxh3::xxh3_64;

pub use self::engine::{Engine, FjallEngine, MemoryEngine, Op, Space};
use crate::error::{Error, Result};
use crate::merkle;
use crate::proto::{RecordMeta, StoredRecord};
use crate::ring::{Token, TokenRange};
use crate::version::Version;

/// Largest value kept inside its record (bytes): one read serves it.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;
/// Bytes per stored chunk of a large value: 1 MiB keeps each engine write
/// and each RPC message well under the 4 MiB gRPC default.
pub const CHUNK_SIZE_BYTES: usize = 1024 * 1024;
/// Longest [`Store::flush`] waits for the engine to write its memtables.
const FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest a streamed write waits for flushes before going ahead anyway.
const BACKLOG_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a waiting streamed write checks the flush backlog.
const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// Key locks striped over this many mutexes.
const LOCK_STRIPES: usize = 256;
/// Format byte in front of every encoded record.
const RECORD_FORMAT_V1: u8 = 1;
/// Checksum bytes appended to every chunk.
const CHUNK_CHECKSUM_BYTES: usize = 8;

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
    syncer: Option<mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>>,
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
            }),
        };
        store.clean_pending()?;
        store.index_if_missing()?;
        store.load_leaves()?;
        store.count_hints()?;
        Ok(store)
    }

    /// Computes the hash-tree leaves from the token index.
    fn load_leaves(&self) -> Result<()> {
        let whole = TokenRange {
            start: Token(0),
            end: Token(0),
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self.keys_in_range(whole, after.as_deref(), 4096)?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            after = Some(last.cursor.clone());
            for entry in batch {
                self.toggle_leaf(&entry.key, entry.held(), true);
            }
        }
    }

    /// Counts the hints kept from an earlier run.
    fn count_hints(&self) -> Result<()> {
        let mut after = Bound::Unbounded;
        let mut count = 0u64;
        loop {
            let batch = self
                .inner
                .engine
                .scan_keys(Space::Hints, b"", after, 4096)?;
            let Some(last) = batch.last() else {
                break;
            };
            count += batch.len() as u64;
            after = Bound::Excluded(last.clone());
        }
        self.inner.hints.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// XORs an entry into (`added`) or out of its leaf, and counts the
    /// leaf's tombstones and expiring values and the store's live keys.
    fn toggle_leaf(&self, key: &str, held: Held, added: bool) {
        let leaf = merkle::leaf_of(Token::of_key(key.as_bytes()));
        self.inner.leaves[leaf].fetch_xor(
            merkle::entry_hash(key, held.version, held.deleted),
            Ordering::Relaxed,
        );
        if !held.deleted {
            step(&self.inner.live_keys, added);
        }
        if held.deleted || held.expires_at != 0 {
            step(&self.inner.collectable[leaf], added);
        }
    }

    /// Keys held with a value (tombstones not counted; values whose expiry
    /// passed are, until they are collected).
    pub fn key_count(&self) -> u64 {
        self.inner.live_keys.load(Ordering::Relaxed)
    }

    /// Hints waiting for delivery to other replicas.
    pub fn hints_pending(&self) -> u64 {
        self.inner.hints.load(Ordering::Relaxed)
    }

    /// The hash-tree leaves of `range` holding at least one tombstone or
    /// value with an expiry.
    pub fn leaves_to_collect(&self, range: TokenRange) -> Vec<usize> {
        merkle::leaves_of(range)
            .into_iter()
            .filter(|leaf| self.inner.collectable[*leaf].load(Ordering::Relaxed) > 0)
            .collect()
    }

    /// The hash-tree leaves of `range` as this store holds it: leaves wholly
    /// inside from the kept hashes, the (at most two) it only partly covers
    /// computed from the token index.
    pub fn leaf_hashes(&self, range: TokenRange) -> Result<merkle::LeafHashes> {
        let mut out = merkle::LeafHashes::default();
        for leaf in merkle::leaves_of(range) {
            let hash = if merkle::leaf_inside(leaf, range) {
                self.inner.leaves[leaf].load(Ordering::Relaxed)
            } else {
                let mut hash = 0;
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let batch =
                        self.keys_in_range(merkle::leaf_span(leaf), after.as_deref(), 1024)?;
                    let Some(last) = batch.last() else { break };
                    after = Some(last.cursor.clone());
                    for entry in batch.iter().filter(|e| range.contains(e.token)) {
                        hash ^= merkle::entry_hash(&entry.key, entry.version, entry.deleted);
                    }
                }
                hash
            };
            if hash != 0 {
                out.0.insert(leaf, hash);
            }
        }
        Ok(out)
    }

    /// Builds the token index of a data dir written before it existed.
    fn index_if_missing(&self) -> Result<()> {
        let engine = &self.inner.engine;
        // The index first: with one, the records are not read at all, so a
        // corrupt block among them cannot keep the node from starting.
        let has_index = !engine
            .scan(Space::ByToken, b"", Bound::Unbounded, 1)?
            .is_empty();
        if has_index {
            return Ok(());
        }
        let has_records = !engine
            .scan(Space::Meta, b"", Bound::Unbounded, 1)?
            .is_empty();
        if !has_records {
            return Ok(());
        }
        tracing::info!("building the token index of this data dir");
        // The cursor is the engine's key, never the key a record names: a
        // corrupt record naming an earlier key would send the scan back.
        let mut after = Bound::Unbounded;
        loop {
            let batch = engine.scan(Space::Meta, b"", after, 1024)?;
            let Some((last, _)) = batch.last() else {
                return Ok(());
            };
            after = Bound::Excluded(last.clone());
            let ops = batch
                .iter()
                .filter_map(|(key, raw)| match decode_record_of(key, raw) {
                    Ok(record) => record.meta,
                    Err(err) => {
                        // Left out of the index: reads of it fail as corrupt
                        // and quarantine it, then repair brings it back.
                        tracing::warn!(key = %String::from_utf8_lossy(key), %err, "not indexing a corrupt record");
                        None
                    }
                })
                .map(|m| Op::Put(Space::ByToken, token_key(&m.key), token_entry(Held::of(&m))))
                .collect();
            engine.apply(ops)?;
        }
    }

    /// Keys whose token lies in `range`, in ring order from its start, with
    /// their version and tombstone flag: at most `limit`, after `after` (a
    /// token-index key from an earlier page; `None` starts at the range).
    pub fn keys_in_range(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        // A wrapping range is two runs: (start, MAX] then [0, end].
        let runs: Vec<(u64, u64)> = match range.start.0.cmp(&range.end.0) {
            std::cmp::Ordering::Less => vec![(range.start.0 + 1, range.end.0)],
            _ if range.start.0 == u64::MAX => vec![(0, range.end.0)],
            _ => vec![(range.start.0 + 1, u64::MAX), (0, range.end.0)],
        };
        // A cursor resumes inside its run; the runs before it are done.
        let cursor_token = after
            .and_then(|a| a.get(..8))
            .and_then(|t| t.try_into().ok())
            .map(u64::from_be_bytes);
        let first_run = cursor_token
            .and_then(|t| runs.iter().position(|(from, to)| *from <= t && t <= *to))
            .unwrap_or(0);
        let mut out = Vec::new();
        for (index, (from, to)) in runs.into_iter().enumerate().skip(first_run) {
            let start = match after {
                Some(a) if index == first_run && cursor_token.is_some() => {
                    Bound::Excluded(a.to_vec())
                }
                _ => Bound::Included(from.to_be_bytes().to_vec()),
            };
            let want = limit - out.len();
            for (raw, value) in self.inner.engine.scan(Space::ByToken, b"", start, want)? {
                let entry = IndexEntry::decode(&raw, &value)?;
                if entry.token.0 > to || entry.token.0 < from {
                    break;
                }
                out.push(entry);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
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

    /// Starts a streamed write; see [`StreamWriter`].
    pub fn begin_stream(&self, header: RecordMeta) -> Result<StreamWriter> {
        check_meta(&header)?;
        if header.deleted {
            return Err(Error::invalid("a tombstone is not streamed"));
        }
        self.ensure_room(0)?;
        let marker = pending_key(&header.key, header.version());
        self.inner
            .engine
            .apply(vec![Op::Put(Space::Pending, marker.clone(), Bytes::new())])?;
        Ok(StreamWriter {
            store: self.clone(),
            header,
            marker,
            buffer: BytesMut::new(),
            chunks_written: 0,
            size: 0,
            hasher: blake3::Hasher::new(),
            finished: false,
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

    /// Drops whatever this store holds for `key` because its copy is
    /// corrupt: the record, its token-index entry, its chunks (except those
    /// of a streamed write still in flight, which has a pending marker) and
    /// its share of the hash-tree leaves. Works when the record itself
    /// cannot be read: the leaves are corrected from the token-index entry.
    /// With `expected`, only if the key is still held at that version (a
    /// good write may have replaced the bad copy since it was found).
    ///
    /// Afterwards the node holds nothing for the key, so ordinary repair
    /// (read repair, anti-entropy, a push) stores the good version, even
    /// when it is the very version of the bad copy (a write of a version
    /// already held is a no-op, which is why the copy must go). Tells
    /// whether anything was dropped.
    pub fn quarantine(&self, key: &str, expected: Option<Version>) -> Result<bool> {
        let _guard = self.lock(key);
        self.quarantine_locked(key, expected)
    }

    /// [`Store::quarantine`] with `key`'s lock held.
    fn quarantine_locked(&self, key: &str, expected: Option<Version>) -> Result<bool> {
        let engine = &self.inner.engine;
        let record = self.record(key);
        let index = engine
            .get(Space::ByToken, &token_key(key))
            .map(|entry| entry.and_then(|e| decode_token_entry(&e)));
        if matches!((&record, &index), (Ok(None), Ok(None))) {
            return Ok(false);
        }
        // What the leaves hold for the key: its index entry, written in the
        // record's batch; else the record, if that can be read.
        let held = match &index {
            Ok(Some(entry)) => Some(*entry),
            _ => record
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref())
                .and_then(|r| r.meta.as_ref())
                .map(Held::of),
        };
        if let (Some(expected), Some(held)) = (expected, held)
            && held.version != expected
        {
            return Ok(false);
        }
        let prefix = key_prefix(key);
        let in_flight =
            self.inner
                .engine
                .scan_keys(Space::Pending, &prefix, Bound::Unbounded, usize::MAX)?;
        let mut ops: Vec<Op> = self
            .chunk_keys_with_prefix(&prefix)?
            .into_iter()
            .filter(|chunk| {
                let marker = &chunk[..chunk.len().saturating_sub(4)];
                !in_flight.iter().any(|m| m.as_slice() == marker)
            })
            .map(|chunk| Op::Delete(Space::Chunks, chunk))
            .collect();
        let chunks = ops.len();
        ops.push(Op::Delete(Space::Meta, key.as_bytes().to_vec()));
        ops.push(Op::Delete(Space::ByToken, token_key(key)));
        engine.apply(ops)?;
        match held {
            Some(held) => self.toggle_leaf(key, held, false),
            None => tracing::warn!(
                %key,
                "neither the record nor the token index of a corrupt copy could be read; \
                 its hash-tree leaf is corrected at the next start"
            ),
        }
        self.inner
            .quarantined
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            %key,
            version = ?held.map(|h| h.version),
            chunks,
            "dropped a corrupt copy; repair brings the good one from another replica"
        );
        Ok(true)
    }

    /// Corrupt copies dropped since the store opened.
    pub fn quarantined(&self) -> u64 {
        self.inner
            .quarantined
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads `key`'s record and every byte of its value and checks them:
    /// the inline value against its blake3, each chunk against its own
    /// checksum, and the chunks together against the value's size and
    /// blake3. Returns the value bytes checked, `None` when the key is no
    /// longer held at `version`, and `Corrupt` when anything fails (a chunk
    /// missing under a committed record included). `pace` is called with
    /// the bytes of each piece read (a throttle may sleep in it). Reads the
    /// whole value from disk: call it off the async threads.
    pub fn verify(
        &self,
        key: &str,
        version: Version,
        mut pace: impl FnMut(u64),
    ) -> Result<Option<u64>> {
        let Some(record) = self.record(key)? else {
            return Ok(None);
        };
        let Some(meta) = record.meta.as_ref() else {
            return Err(Error::corrupt(format!("record of {key:?} without meta")));
        };
        if meta.version() != version {
            return Ok(None);
        }
        if meta.deleted {
            return Ok(Some(0));
        }
        if let Some(value) = self.inline_value(&record)? {
            pace(value.len() as u64);
            return Ok(Some(value.len() as u64));
        }
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        for index in 0..record.chunk_count {
            let data = match self.read_chunk(key, version, index) {
                Ok(data) => data,
                Err(Error::NotFound { .. }) if !self.holds_version(key, version) => {
                    return Ok(None);
                }
                Err(Error::NotFound { .. }) => {
                    return Err(Error::corrupt(format!("{key:?} chunk {index} is missing")));
                }
                Err(err) => return Err(err),
            };
            hasher.update(&data);
            size += data.len() as u64;
            pace(data.len() as u64);
        }
        if size != meta.size || hasher.finalize().as_bytes()[..] != meta.checksum[..] {
            return Err(Error::corrupt(format!(
                "chunks of {key:?} do not add up to its size and checksum"
            )));
        }
        Ok(Some(size))
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

    /// Keeps a write that `target` missed (F15): the record, with its value
    /// when small (a large one is fetched from a replica on delivery).
    pub fn add_hint(&self, target: &str, record: &StoredRecord) -> Result<()> {
        let meta = record
            .meta
            .as_ref()
            .ok_or_else(|| Error::invalid("hint without meta"))?;
        let key = hint_key(target, &meta.key, meta.version());
        self.ensure_room(record.inline_value.as_ref().map_or(0, |v| v.len() as u64))?;
        let _guard = self.lock(&meta.key);
        let new = self.inner.engine.get(Space::Hints, &key)?.is_none();
        self.inner
            .engine
            .apply(vec![Op::Put(Space::Hints, key, encode_record(record))])?;
        if new {
            step(&self.inner.hints, true);
        }
        Ok(())
    }

    /// Hints in storage order after `after` (a raw hint key), at most
    /// `limit`: the raw key, the replica it is for, and the record.
    pub fn hints_after(
        &self,
        after: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, String, StoredRecord)>> {
        let mut out = Vec::new();
        for (raw, value) in self.inner.engine.scan(Space::Hints, b"", after, limit)? {
            let target = hint_target(&raw)
                .ok_or_else(|| Error::corrupt("malformed hint key"))?
                .to_string();
            out.push((raw, target, decode_record(&value)?));
        }
        Ok(out)
    }

    /// Every hint key for `target` sorts below this bound.
    pub fn hints_end_of(target: &str) -> Vec<u8> {
        let mut end = hint_prefix(target);
        end.push(0xff);
        end.push(0xff);
        end.push(0xff);
        end
    }

    /// Drops a delivered (or obsolete) hint.
    pub fn remove_hint(&self, raw: Vec<u8>) -> Result<()> {
        let held = self.inner.engine.get(Space::Hints, &raw)?.is_some();
        self.inner
            .engine
            .apply(vec![Op::Delete(Space::Hints, raw)])?;
        if held {
            step(&self.inner.hints, false);
        }
        Ok(())
    }

    /// Waits until everything applied so far is on disk, when `fsync` is on.
    /// Concurrent callers share one fsync.
    pub async fn sync(&self) -> Result<()> {
        let Some(syncer) = &self.inner.syncer else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        syncer.send(tx).map_err(|_| Error::NotReady {
            reason: "store is closed".into(),
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Io(std::io::Error::other(reason))),
            Err(_) => Err(Error::NotReady {
                reason: "store is closed".into(),
            }),
        }
    }

    /// Flushes everything to disk (shutdown).
    pub fn persist(&self) -> Result<()> {
        self.inner.engine.persist()
    }

    /// Writes the engine's memtables to its tables, so that the next start
    /// replays no journal (shutdown). Blocks for up to 30 s.
    pub fn flush(&self) -> Result<()> {
        self.inner.engine.flush(FLUSH_DEADLINE)
    }

    /// Waits (at most [`BACKLOG_MAX_WAIT`]) while the engine's flushes are
    /// behind streamed writes: backpressure that bounds memory per node.
    pub async fn wait_for_flush_room(&self) {
        let started = tokio::time::Instant::now();
        while self.inner.engine.chunk_backlog() && started.elapsed() < BACKLOG_MAX_WAIT {
            tokio::time::sleep(BACKLOG_POLL).await;
        }
    }

    /// Whether writes are taken: the data disk has more than the reserve
    /// free (always, in memory).
    pub fn has_room(&self) -> bool {
        self.ensure_room(0).is_ok()
    }

    /// Refuses a write of `incoming` bytes that would leave less than the
    /// reserve free on the data disk.
    fn ensure_room(&self, incoming: u64) -> Result<()> {
        let Some((dir, reserve)) = &self.inner.reserve else {
            return Ok(());
        };
        match free_bytes(dir) {
            Some(free) if free < reserve.saturating_add(incoming) => Err(Error::DiskFull),
            _ => Ok(()),
        }
    }

    /// Bytes used on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.engine.disk_bytes()
    }

    /// Bytes free for this process on the data disk; `None` in memory.
    pub fn disk_free(&self) -> Option<u64> {
        let (dir, _) = self.inner.reserve.as_ref()?;
        free_bytes(dir)
    }
}

/// Bytes available to this process on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) reads a NUL-terminated path and fills the struct
    // it is given; it is zeroed first and read only on success.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stat) == 0)
            .then(|| stat.f_bavail.saturating_mul(stat.f_frsize))
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

/// Group commit: whoever waits when an fsync starts is answered by it.
fn spawn_group_commit(
    engine: Arc<dyn Engine>,
) -> mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), String>>>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut waiters = vec![first];
            while let Ok(more) = rx.try_recv() {
                waiters.push(more);
            }
            let engine = engine.clone();
            let result = tokio::task::spawn_blocking(move || engine.persist())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    });
    tx
}

/// A streamed write in progress on one replica. Bytes go to disk chunk by
/// chunk as they arrive; the record becomes visible only in [`finish`]
/// (`StreamWriter::finish`). Dropping an unfinished writer removes its chunks.
pub struct StreamWriter {
    /// The store written to.
    store: Store,
    /// Key, version and content type of the value.
    header: RecordMeta,
    /// This write's pending marker.
    marker: Vec<u8>,
    /// Bytes not yet making a full chunk.
    buffer: BytesMut,
    /// Chunks on disk so far.
    chunks_written: u32,
    /// Bytes received so far.
    size: u64,
    /// Running blake3 of the bytes received.
    hasher: blake3::Hasher,
    /// Set once the record is committed (or the write lost to a newer one).
    finished: bool,
}

impl StreamWriter {
    /// Appends bytes; full chunks go to disk now.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.store.ensure_room(data.len() as u64)?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.buffer.capacity() == 0 {
                // One allocation per chunk, with room for its checksum.
                self.buffer = BytesMut::with_capacity(CHUNK_SIZE_BYTES + CHUNK_CHECKSUM_BYTES);
            }
            let take = (CHUNK_SIZE_BYTES - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == CHUNK_SIZE_BYTES {
                let chunk = std::mem::take(&mut self.buffer);
                self.put_chunk(chunk)?;
            }
        }
        Ok(())
    }

    fn put_chunk(&mut self, chunk: BytesMut) -> Result<()> {
        let key = chunk_key(&self.header.key, self.header.version(), self.chunks_written);
        self.store
            .inner
            .engine
            .apply(vec![Op::Put(Space::Chunks, key, seal(chunk))])?;
        self.chunks_written += 1;
        Ok(())
    }

    /// Checks the trailer's size and checksum against what arrived and
    /// commits the record if its version is the newest.
    pub fn finish(mut self, size: u64, checksum: &[u8]) -> Result<WriteOutcome> {
        if size != self.size {
            return Err(Error::Aborted {
                reason: format!("trailer says {size} bytes, {} arrived", self.size),
            });
        }
        let digest = self.hasher.finalize();
        if digest.as_bytes()[..] != checksum[..] {
            return Err(Error::Aborted {
                reason: "checksum of the streamed bytes does not match the trailer".into(),
            });
        }
        let mut meta = self.header.clone();
        meta.size = size;
        meta.checksum = Bytes::copy_from_slice(digest.as_bytes());
        let record = if self.chunks_written == 0 && self.buffer.len() <= INLINE_MAX_BYTES {
            StoredRecord {
                meta: Some(meta),
                inline_value: Some(self.buffer.split().freeze()),
                chunk_count: 0,
                chunk_size: 0,
            }
        } else {
            if !self.buffer.is_empty() {
                let rest = std::mem::take(&mut self.buffer);
                self.put_chunk(rest)?;
            }
            StoredRecord {
                meta: Some(meta),
                inline_value: None,
                chunk_count: self.chunks_written,
                chunk_size: CHUNK_SIZE_BYTES as u32,
            }
        };
        let staged = Staged {
            chunks: (0..self.chunks_written)
                .map(|i| chunk_key(&self.header.key, self.header.version(), i))
                .collect(),
            marker: Some(self.marker.clone()),
        };
        let outcome = self.store.commit(record, Vec::new(), staged);
        // On error the marker stays; Drop and the next open clean up.
        self.finished = outcome.is_ok();
        outcome
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let version = self.header.version();
        let key = &self.header.key;
        let _guard = self.store.lock(key);
        // Chunks of the same base committed by another write are its own.
        let committed = self.store.holds_base(key, version);
        let mut ops: Vec<Op> = if committed {
            Vec::new()
        } else {
            (0..self.chunks_written)
                .map(|i| Op::Delete(Space::Chunks, chunk_key(key, version, i)))
                .collect()
        };
        ops.push(Op::Delete(Space::Pending, self.marker.clone()));
        if let Err(err) = self.store.inner.engine.apply(ops) {
            tracing::warn!(key = %self.header.key, %err, "could not remove an aborted write; the next start will");
        }
    }
}

fn check_meta(meta: &RecordMeta) -> Result<()> {
    crate::key::validate(&meta.key)?;
    if meta.version().timestamp == 0 {
        return Err(Error::invalid("write without a version"));
    }
    Ok(())
}

/// The key and version a pending marker names.
fn decode_pending(marker: &[u8]) -> Option<(String, Version)> {
    let len = u16::from_be_bytes([*marker.first()?, *marker.get(1)?]) as usize;
    let key = std::str::from_utf8(marker.get(2..2 + len)?)
        .ok()?
        .to_string();
    let rest = marker.get(2 + len..)?;
    if rest.len() != 16 {
        return None;
    }
    let timestamp = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let writer = u64::from_be_bytes(rest[8..].try_into().ok()?);
    Some((key, Version::new(timestamp, writer)))
}

fn key_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + 20);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Keyed by the version's base: see the module doc.
fn pending_key(key: &str, version: Version) -> Vec<u8> {
    let version = version.base();
    let mut out = key_prefix(key);
    out.extend_from_slice(&version.timestamp.to_be_bytes());
    out.extend_from_slice(&version.writer.to_be_bytes());
    out
}

fn chunk_key(key: &str, version: Version, index: u32) -> Vec<u8> {
    let mut out = pending_key(key, version);
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// Appends the chunk's checksum, in place.
fn seal(mut chunk: BytesMut) -> Bytes {
    let sum = xxh3_64(&chunk);
    chunk.extend_from_slice(&sum.to_le_bytes());
    chunk.freeze()
}

fn seal_chunk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + CHUNK_CHECKSUM_BYTES);
    out.extend_from_slice(data);
    seal(out)
}

fn open_chunk(mut raw: Bytes) -> Result<Bytes> {
    if raw.len() < CHUNK_CHECKSUM_BYTES {
        return Err(Error::corrupt("chunk shorter than its checksum"));
    }
    let sum = raw.split_off(raw.len() - CHUNK_CHECKSUM_BYTES);
    let mut expected = [0u8; CHUNK_CHECKSUM_BYTES];
    expected.copy_from_slice(&sum);
    if xxh3_64(&raw) != u64::from_le_bytes(expected) {
        return Err(Error::corrupt("chunk does not match its checksum"));
    }
    Ok(raw)
}

/// One key of the token index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The key's ring token.
    pub token: Token,
    /// The key.
    pub key: String,
    /// The version held.
    pub version: Version,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// When the value expires, ms since the epoch; 0: never.
    pub expires_at: u64,
    /// The raw index key, the cursor for the next page.
    pub cursor: Vec<u8>,
}

impl IndexEntry {
    fn decode(raw: &[u8], value: &[u8]) -> Result<IndexEntry> {
        let bad = || Error::corrupt("malformed token index entry");
        let token = u64::from_be_bytes(
            raw.get(..8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let key = std::str::from_utf8(&raw[8..])
            .map_err(|_| bad())?
            .to_string();
        let held = decode_token_entry(value).ok_or_else(bad)?;
        Ok(IndexEntry {
            token: Token(token),
            key,
            version: held.version,
            deleted: held.deleted,
            expires_at: held.expires_at,
            cursor: raw.to_vec(),
        })
    }

    /// What the entry says is held.
    fn held(&self) -> Held {
        Held {
            version: self.version,
            deleted: self.deleted,
            expires_at: self.expires_at,
        }
    }
}

/// What the token index and the hash-tree leaves know of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Its version.
    version: Version,
    /// A tombstone.
    deleted: bool,
    /// Its expiry, ms since the epoch; 0: never.
    expires_at: u64,
}

impl Held {
    fn of(meta: &RecordMeta) -> Held {
        Held {
            version: meta.version(),
            deleted: meta.deleted,
            expires_at: meta.expires_at,
        }
    }
}

/// `token ++ key`: where a key sits in the token index.
fn token_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&Token::of_key(key.as_bytes()).0.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// What a token-index value says is held: 17 bytes, or 33 with an expiry
/// change or an expiry.
fn decode_token_entry(value: &[u8]) -> Option<Held> {
    if value.len() != 17 && value.len() != 33 {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(value.get(at..at + 8)?.try_into().ok()?))
    };
    let (touch, expires_at) = if value.len() == 33 {
        (word(17)?, word(25)?)
    } else {
        (0, 0)
    };
    Some(Held {
        version: Version {
            timestamp: word(0)?,
            writer: word(8)?,
            touch,
        },
        deleted: value[16] == 1,
        expires_at,
    })
}

/// `timestamp ++ writer ++ deleted`, then `++ touch ++ expires_at` when
/// either is set.
fn token_entry(held: Held) -> Bytes {
    let mut out = Vec::with_capacity(33);
    out.extend_from_slice(&held.version.timestamp.to_be_bytes());
    out.extend_from_slice(&held.version.writer.to_be_bytes());
    out.push(u8::from(held.deleted));
    if held.version.touch != 0 || held.expires_at != 0 {
        out.extend_from_slice(&held.version.touch.to_be_bytes());
        out.extend_from_slice(&held.expires_at.to_be_bytes());
    }
    Bytes::from(out)
}

/// `u16 len + target`: the prefix of every hint for `target`.
fn hint_prefix(target: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + target.len() + 64);
    out.extend_from_slice(&(target.len() as u16).to_be_bytes());
    out.extend_from_slice(target.as_bytes());
    out
}

/// `u16 len + target + u16 len + key + timestamp + writer`, then `+ touch`
/// when set.
fn hint_key(target: &str, key: &str, version: Version) -> Vec<u8> {
    let mut out = hint_prefix(target);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&version.timestamp.to_be_bytes());
    out.extend_from_slice(&version.writer.to_be_bytes());
    if version.touch != 0 {
        out.extend_from_slice(&version.touch.to_be_bytes());
    }
    out
}

fn hint_target(raw: &[u8]) -> Option<&str> {
    let len = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]) as usize;
    std::str::from_utf8(raw.get(2..2 + len)?).ok()
}

/// Encodes a record for the `meta` space.
pub fn encode_record(record: &StoredRecord) -> Bytes {
    let mut out = Vec::with_capacity(1 + record.encoded_len());
    out.push(RECORD_FORMAT_V1);
    record
        .encode(&mut out)
        .expect("a Vec grows to fit the record");
    Bytes::from(out)
}

/// Decodes a record read back from disk; anything malformed is `Corrupt`.
pub fn decode_record(raw: &[u8]) -> Result<StoredRecord> {
    match raw.split_first() {
        Some((&RECORD_FORMAT_V1, body)) => {
            let record = StoredRecord::decode(body)
                .map_err(|e| Error::corrupt(format!("undecodable record: {e}")))?;
            if record.meta.is_none() {
                return Err(Error::corrupt("record without meta"));
            }
            Ok(record)
        }
        Some((format, _)) => Err(Error::corrupt(format!("unknown record format {format}"))),
        None => Err(Error::corrupt("empty record")),
    }
}

/// Decodes the record stored under `key` in the `meta` space; one that
/// names another key is `Corrupt` (pagination continues from the key a
/// record names, so a wrong one could send a listing back on itself).
fn decode_record_of(key: &[u8], raw: &[u8]) -> Result<StoredRecord> {
    let record = decode_record(raw)?;
    let named = record.meta.as_ref().map(|m| m.key.as_bytes());
    if named != Some(key) {
        return Err(Error::corrupt(format!(
            "the record stored under {:?} names the key {:?}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(named.unwrap_or_default())
        )));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, ts: u64, value: &[u8]) -> RecordMeta {
        RecordMeta {
            key: key.into(),
            version: Some(Version::new(ts, 1).into()),
            deleted: false,
            content_type: String::new(),
            size: value.len() as u64,
            checksum: Bytes::copy_from_slice(blake3::hash(value).as_bytes()),
            expires_at: 0,
        }
    }

    fn tombstone(key: &str, ts: u64) -> RecordMeta {
        RecordMeta {
            deleted: true,
            ..meta(key, ts, b"")
        }
    }

    fn space_is_empty(store: &Store, space: Space) -> bool {
        store
            .inner
            .engine
            .scan(space, b"", Bound::Unbounded, 1)
            .unwrap()
            .is_empty()
    }

    /// Every entry of `range`, read in pages of `page`.
    fn paged(store: &Store, range: TokenRange, page: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = store.keys_in_range(range, after.as_deref(), page).unwrap();
            let Some(last) = batch.last() else { return out };
            after = Some(last.cursor.clone());
            out.extend(batch.into_iter().map(|e| e.key));
        }
    }

    #[test]
    fn the_token_index_lists_exactly_the_keys_of_a_range() {
        for (store, _dir) in stores() {
            let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
            for (i, key) in keys.iter().enumerate() {
                store
                    .write_whole(meta(key, 10 + i as u64, b"v"), Bytes::from_static(b"v"))
                    .unwrap();
            }
            let mut tokens: Vec<u64> = keys.iter().map(|k| Token::of_key(k.as_bytes()).0).collect();
            tokens.sort();
            let ranges = [
                (tokens[10], tokens[200]), // plain
                (tokens[250], tokens[40]), // wrapping
                (tokens[5], tokens[5]),    // the whole ring
                (u64::MAX, tokens[30]),    // starting at the top
                (0, u64::MAX),             // all but token 0
            ];
            for (start, end) in ranges {
                let range = TokenRange {
                    start: Token(start),
                    end: Token(end),
                };
                let mut expected: Vec<(u64, String)> = keys
                    .iter()
                    .map(|k| (Token::of_key(k.as_bytes()).0, k.clone()))
                    .filter(|(t, _)| range.contains(Token(*t)))
                    .collect();
                // Ring order from the range's start.
                expected.sort_by_key(|(t, k)| (t.wrapping_sub(start).wrapping_sub(1), k.clone()));
                let expected: Vec<String> = expected.into_iter().map(|(_, k)| k).collect();
                for page in [1, 7, 1000] {
                    assert_eq!(
                        paged(&store, range, page),
                        expected,
                        "{range:?} page {page}"
                    );
                }
            }
            // Dropped keys leave the index; tombstones stay in it, flagged.
            let first = &keys[0];
            let version = store
                .record(first)
                .unwrap()
                .unwrap()
                .meta
                .unwrap()
                .version();
            assert!(store.drop_if(first, version).unwrap());
            let mut gone = meta(&keys[1], 1000, b"");
            gone.deleted = true;
            gone.size = 0;
            gone.checksum = Bytes::new();
            store.write_whole(gone, Bytes::new()).unwrap();
            let whole = TokenRange {
                start: Token(0),
                end: Token(0),
            };
            let all = store.keys_in_range(whole, None, 1000).unwrap();
            assert_eq!(all.len(), 299);
            assert!(all.iter().all(|e| e.key != *first));
            let tomb = all.iter().find(|e| e.key == keys[1]).unwrap();
            assert!(tomb.deleted);
            assert_eq!(tomb.version.timestamp, 1000);
        }
    }

    /// The leaves of `range` computed from every record, the slow way.
    fn leaves_by_brute_force(store: &Store, range: TokenRange) -> merkle::LeafHashes {
        let mut out = merkle::LeafHashes::default();
        for record in store.records_after(None, usize::MAX).unwrap() {
            let meta = record.meta.unwrap();
            let token = Token::of_key(meta.key.as_bytes());
            if range.contains(token) {
                *out.0.entry(merkle::leaf_of(token)).or_default() ^=
                    merkle::entry_hash(&meta.key, meta.version(), meta.deleted);
            }
        }
        out.0.retain(|_, h| *h != 0);
        out
    }

    #[test]
    fn writes_that_would_eat_into_the_disk_reserve_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let open = |reserve| {
            Store::open(&StorageOptions {
                data_dir: Some(dir.path().to_path_buf()),
                fsync: false,
                disk_reserve: reserve,
            })
            .unwrap()
        };
        {
            let store = open(free.saturating_mul(2));
            let err = store
                .write_whole(meta("k", 1, b"v"), Bytes::from_static(b"v"))
                .unwrap_err();
            assert!(matches!(err, Error::DiskFull), "{err}");
            assert!(matches!(
                store.begin_stream(meta("s", 1, b"")),
                Err(Error::DiskFull)
            ));
            assert_eq!(store.record("k").unwrap(), None);
        }
        let store = open(1024);
        store
            .write_whole(meta("k", 1, b"v"), Bytes::from_static(b"v"))
            .unwrap();
    }

    #[test]
    fn live_keys_and_hints_are_counted_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: 0,
        };
        {
            let store = Store::open(&options).unwrap();
            for i in 0..50u64 {
                let key = format!("count-{i}");
                store
                    .write_whole(meta(&key, 10, b"v"), Bytes::from_static(b"v"))
                    .unwrap();
            }
            // An overwrite counts once, a tombstone not at all, a drop goes.
            store
                .write_whole(meta("count-0", 20, b"w"), Bytes::from_static(b"w"))
                .unwrap();
            store
                .write_whole(tombstone("count-1", 30), Bytes::new())
                .unwrap();
            let version = store.version_of("count-2").unwrap().unwrap();
            assert!(store.drop_if("count-2", version).unwrap());
            assert_eq!(store.key_count(), 48);

            let record = store.record("count-3").unwrap().unwrap();
            store.add_hint("127.0.0.1:1", &record).unwrap();
            store.add_hint("127.0.0.1:1", &record).unwrap(); // the same hint again
            store.add_hint("127.0.0.1:2", &record).unwrap();
            assert_eq!(store.hints_pending(), 2);
            let (raw, _, _) = store
                .hints_after(Bound::Unbounded, 1)
                .unwrap()
                .pop()
                .unwrap();
            store.remove_hint(raw.clone()).unwrap();
            store.remove_hint(raw).unwrap(); // already gone
            assert_eq!(store.hints_pending(), 1);
        }
        let store = Store::open(&options).unwrap();
        assert_eq!(store.key_count(), 48);
        assert_eq!(store.hints_pending(), 1);
    }

    #[test]
    fn hash_tree_leaves_follow_every_write_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: 0,
        };
        let ranges = [
            TokenRange {
                start: Token(0),
                end: Token(0),
            },
            TokenRange {
                start: Token(u64::MAX / 3 + 12345),
                end: Token(u64::MAX / 3 * 2 + 999),
            },
            TokenRange {
                start: Token(u64::MAX - 1000),
                end: Token(u64::MAX / 5),
            },
        ];
        {
            let store = Store::open(&options).unwrap();
            for i in 0..2000u64 {
                let key = format!("tree-{i}");
                store
                    .write_whole(meta(&key, 10, b"v"), Bytes::from_static(b"v"))
                    .unwrap();
            }
            // Overwrites, tombstones, drops and a stale write that changes nothing.
            for i in 0..100u64 {
                let key = format!("tree-{i}");
                store
                    .write_whole(meta(&key, 20, b"w"), Bytes::from_static(b"w"))
                    .unwrap();
                let mut tomb = meta(&format!("tree-{}", 100 + i), 30, b"");
                tomb.deleted = true;
                tomb.checksum = Bytes::new();
                store.write_whole(tomb, Bytes::new()).unwrap();
                let dropped = format!("tree-{}", 200 + i);
                assert!(store.drop_if(&dropped, Version::new(10, 1)).unwrap());
                store
                    .write_whole(meta(&key, 5, b"x"), Bytes::from_static(b"x"))
                    .unwrap();
            }
            for range in ranges {
                assert_eq!(
                    store.leaf_hashes(range).unwrap(),
                    leaves_by_brute_force(&store, range)
                );
            }
        }
        let store = Store::open(&options).unwrap();
        for range in ranges {
            assert_eq!(
                store.leaf_hashes(range).unwrap(),
                leaves_by_brute_force(&store, range)
            );
        }
    }

    /// Found by the `record` fuzz target: a record naming an earlier key
    /// than the one it is stored under sent the index build (and any
    /// listing paged by the names) back to the same record, forever.
    #[test]
    fn a_record_naming_another_key_is_corrupt_and_cannot_loop_a_scan() {
        let engine = MemoryEngine::default();
        let misnamed = StoredRecord {
            meta: Some(meta("gone", 5, b"v")),
            inline_value: Some(Bytes::from_static(b"v")),
            chunk_count: 0,
            chunk_size: 0,
        };
        let good = StoredRecord {
            meta: Some(meta("small", 5, b"v")),
            ..misnamed.clone()
        };
        // No token index: the store builds it at open.
        engine
            .apply(vec![
                Op::Put(
                    Space::Meta,
                    "go\u{ee}e".as_bytes().to_vec(),
                    encode_record(&misnamed),
                ),
                Op::Put(Space::Meta, b"small".to_vec(), encode_record(&good)),
            ])
            .unwrap();
        let options = StorageOptions {
            data_dir: None,
            fsync: false,
            disk_reserve: 0,
        };
        let store = Store::open_engine(Arc::new(engine), &options).unwrap();
        let whole = TokenRange {
            start: Token(0),
            end: Token(0),
        };
        let indexed: Vec<String> = store
            .keys_in_range(whole, None, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(indexed, ["small"]);
        assert!(matches!(
            store.record("go\u{ee}e"),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            store.list("", None, 10),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(store.list("s", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_data_dir_without_the_index_gets_it_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: 0,
        };
        {
            let store = Store::open(&options).unwrap();
            for i in 0..50 {
                let key = format!("old-{i}");
                store
                    .write_whole(meta(&key, 5, b"v"), Bytes::from_static(b"v"))
                    .unwrap();
            }
            // As a data dir from before the index existed.
            let entries = store
                .inner
                .engine
                .scan(Space::ByToken, b"", Bound::Unbounded, 100)
                .unwrap();
            let ops = entries
                .into_iter()
                .map(|(k, _)| Op::Delete(Space::ByToken, k))
                .collect();
            store.inner.engine.apply(ops).unwrap();
            store.persist().unwrap();
        }
        let store = Store::open(&options).unwrap();
        let whole = TokenRange {
            start: Token(7),
            end: Token(7),
        };
        assert_eq!(store.keys_in_range(whole, None, 100).unwrap().len(), 50);
    }

    #[test]
    fn hints_are_kept_per_target_and_dropped_when_delivered() {
        for (store, _dir) in stores() {
            let record = |key: &str, ts: u64| StoredRecord {
                meta: Some(meta(key, ts, b"v")),
                inline_value: Some(Bytes::from_static(b"v")),
                chunk_count: 0,
                chunk_size: 0,
            };
            store.add_hint("b:1", &record("k1", 1)).unwrap();
            store.add_hint("b:1", &record("k2", 2)).unwrap();
            store.add_hint("a:1", &record("k1", 3)).unwrap();
            let all = store.hints_after(Bound::Unbounded, 10).unwrap();
            let targets: Vec<_> = all.iter().map(|(_, t, _)| t.as_str()).collect();
            assert_eq!(targets, ["a:1", "b:1", "b:1"]);
            // Skipping past a target's hints lands on the next target's.
            let after_a = Bound::Excluded(Store::hints_end_of("a:1"));
            let rest = store.hints_after(after_a, 10).unwrap();
            assert_eq!(rest.len(), 2);
            assert_eq!(rest[0].2.meta.as_ref().unwrap().key, "k1");
            for (raw, _, _) in all {
                store.remove_hint(raw).unwrap();
            }
            assert!(store.hints_after(Bound::Unbounded, 10).unwrap().is_empty());
        }
    }

    #[test]
    fn drop_if_removes_only_the_named_version() {
        for (store, _dir) in stores() {
            let value = vec![7u8; INLINE_MAX_BYTES * 2];
            let mut m = meta("big", 5, &value);
            m.size = value.len() as u64;
            store.write_whole(m, Bytes::from(value)).unwrap();
            let v = |ts| Version::new(ts, 1);
            assert!(!store.drop_if("big", v(4)).unwrap());
            assert!(store.record("big").unwrap().is_some());
            assert!(store.drop_if("big", v(5)).unwrap());
            assert!(store.record("big").unwrap().is_none());
            assert!(space_is_empty(&store, Space::Chunks));
            assert!(!store.drop_if("big", v(5)).unwrap());
        }
    }

    /// Every leaf hash of the whole ring, as kept and as recomputed.
    fn leaves_match(store: &Store) -> bool {
        let whole = TokenRange {
            start: Token(3),
            end: Token(3),
        };
        store.leaf_hashes(whole).unwrap() == leaves_by_brute_force(store, whole)
    }

    fn v(ts: u64) -> Version {
        Version::new(ts, 1)
    }

    /// A large value of `len` bytes written whole at `ts`.
    fn write_big(store: &Store, key: &str, ts: u64, value: &[u8]) {
        let mut m = meta(key, ts, value);
        m.size = value.len() as u64;
        store.write_whole(m, Bytes::copy_from_slice(value)).unwrap();
    }

    /// `m` with its expiry changed at `touch` to `expires_at`.
    fn touched(m: &RecordMeta, touch: u64, expires_at: u64) -> RecordMeta {
        RecordMeta {
            version: Some(m.version().touched(touch).into()),
            expires_at,
            ..m.clone()
        }
    }

    #[test]
    fn an_expiry_change_replaces_its_value_only_and_only_while_newest() {
        for (store, _dir) in stores() {
            let value = Bytes::from_static(b"v1");
            let first = meta("k", 10, &value);
            store.write_whole(first.clone(), value.clone()).unwrap();
            // EXPIRE: same value, a touch, an expiry.
            let expire = touched(&first, 50, 1_000);
            assert!(
                store
                    .write_whole(expire.clone(), value.clone())
                    .unwrap()
                    .applied
            );
            let held = store.record("k").unwrap().unwrap();
            assert_eq!(held.meta.as_ref().unwrap().expires_at, 1_000);
            assert_eq!(store.inline_value(&held).unwrap(), Some(value.clone()));
            // An earlier change of the same value loses to it; a later wins.
            assert!(
                !store
                    .write_whole(touched(&first, 40, 7), value.clone())
                    .unwrap()
                    .applied
            );
            let persist = touched(&first, 60, 0);
            assert!(store.write_whole(persist, value.clone()).unwrap().applied);
            assert_eq!(
                store.record("k").unwrap().unwrap().meta.unwrap().expires_at,
                0
            );
            // A later write wins over every change of the earlier value,
            // and no change of that value can come back over it.
            let second = meta("k", 11, b"v2");
            assert!(
                store
                    .write_whole(second, Bytes::from_static(b"v2"))
                    .unwrap()
                    .applied
            );
            let late = touched(&first, 99, 5);
            assert!(!store.write_whole(late, value.clone()).unwrap().applied);
            let held = store.record("k").unwrap().unwrap();
            assert_eq!(held.inline_value, Some(Bytes::from_static(b"v2")));
            assert!(leaves_match(&store));
        }
    }

    #[test]
    fn an_expiry_change_of_a_large_value_keeps_its_chunks() {
        for (store, dir) in stores() {
            let value = big(3 * CHUNK_SIZE_BYTES + 17);
            write_big(&store, "big", 10, &value);
            let base = store.record("big").unwrap().unwrap().meta.unwrap();
            // The record alone (no bytes): the value held at its base stays.
            let expire = touched(&base, 20, 5_000);
            assert!(
                store
                    .write_whole(expire.clone(), Bytes::new())
                    .unwrap()
                    .applied
            );
            assert_eq!(read_back(&store, "big"), value);
            // A whole write of the touched version (read repair of a replica
            // that lacked the change) rewrites the same chunks, removes none.
            let again = touched(&base, 30, 6_000);
            assert!(
                store
                    .write_whole(again, Bytes::from(value.clone()))
                    .unwrap()
                    .applied
            );
            assert_eq!(read_back(&store, "big"), value);
            // So does a streamed one, applied or not.
            for (touch, applied) in [(40, true), (35, false)] {
                let mut writer = store.begin_stream(touched(&base, touch, 7_000)).unwrap();
                writer.write(&value).unwrap();
                let sum = blake3::hash(&value);
                let outcome = writer.finish(value.len() as u64, sum.as_bytes()).unwrap();
                assert_eq!(outcome.applied, applied);
                assert_eq!(read_back(&store, "big"), value);
            }
            // An aborted stream of the same base leaves the chunks too.
            drop(store.begin_stream(touched(&base, 45, 1)).unwrap());
            assert_eq!(read_back(&store, "big"), value);
            assert!(leaves_match(&store));
            if let Some(dir) = dir {
                drop(store);
                let reopened = Store::open(&StorageOptions {
                    data_dir: Some(dir.path().to_path_buf()),
                    fsync: false,
                    disk_reserve: 0,
                })
                .unwrap();
                assert_eq!(read_back(&reopened, "big"), value);
                assert!(leaves_match(&reopened));
                let entry = reopened
                    .keys_in_range(
                        TokenRange {
                            start: Token(0),
                            end: Token(0),
                        },
                        None,
                        10,
                    )
                    .unwrap();
                assert_eq!(entry[0].expires_at, 7_000);
                assert_eq!(entry[0].version, base.version().touched(40));
            }
        }
    }

    #[test]
    fn an_expiry_change_without_bytes_needs_the_value_it_changes() {
        for (store, _dir) in stores() {
            let value = big(CHUNK_SIZE_BYTES + 1);
            let m = meta("big", 10, &value);
            // Nothing held, or another value held: NotFound.
            let expire = touched(&m, 20, 5_000);
            assert!(matches!(
                store.write_whole(expire.clone(), Bytes::new()),
                Err(Error::NotFound { .. })
            ));
            write_big(&store, "big", 9, &value);
            assert!(matches!(
                store.write_whole(expire, Bytes::new()),
                Err(Error::NotFound { .. })
            ));
        }
    }

    #[test]
    fn expiring_values_are_counted_for_collection() {
        for (store, _dir) in stores() {
            let whole = TokenRange {
                start: Token(0),
                end: Token(0),
            };
            let mut m = meta("e", 10, b"x");
            store
                .write_whole(m.clone(), Bytes::from_static(b"x"))
                .unwrap();
            assert!(store.leaves_to_collect(whole).is_empty());
            m = touched(&m, 11, 123);
            store
                .write_whole(m.clone(), Bytes::from_static(b"x"))
                .unwrap();
            assert_eq!(store.leaves_to_collect(whole).len(), 1);
            assert_eq!(store.key_count(), 1);
            store
                .write_whole(touched(&m, 12, 0), Bytes::from_static(b"x"))
                .unwrap();
            assert!(store.leaves_to_collect(whole).is_empty());
            assert!(leaves_match(&store));
        }
    }

    #[test]
    fn quarantine_drops_a_copy_whose_record_cannot_be_read() {
        for (store, _dir) in stores() {
            store
                .write_whole(meta("k", 5, b"good"), Bytes::from_static(b"good"))
                .unwrap();
            store
                .write_whole(meta("other", 5, b"o"), Bytes::from_static(b"o"))
                .unwrap();
            // Bytes changed behind the store's back: the record is unreadable.
            store
                .inner
                .engine
                .apply(vec![Op::Put(
                    Space::Meta,
                    b"k".to_vec(),
                    Bytes::from_static(&[RECORD_FORMAT_V1, 0xff, 0xff]),
                )])
                .unwrap();
            assert!(matches!(store.record("k"), Err(Error::Corrupt { .. })));
            assert!(matches!(
                store.verify("k", v(5), |_| {}),
                Err(Error::Corrupt { .. })
            ));
            // Another version than the index names: left alone.
            assert!(!store.quarantine("k", Some(v(4))).unwrap());
            assert!(store.quarantine("k", Some(v(5))).unwrap());
            assert_eq!(store.quarantined(), 1);
            assert!(store.record("k").unwrap().is_none());
            let whole = TokenRange {
                start: Token(0),
                end: Token(0),
            };
            let keys: Vec<String> = store
                .keys_in_range(whole, None, 10)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect();
            assert_eq!(keys, ["other"]);
            assert!(leaves_match(&store));
            // Nothing left to drop; and the same version is accepted again.
            assert!(!store.quarantine("k", None).unwrap());
            assert!(
                store
                    .write_whole(meta("k", 5, b"good"), Bytes::from_static(b"good"))
                    .unwrap()
                    .applied
            );
            assert_eq!(store.verify("k", v(5), |_| {}).unwrap(), Some(4));
            assert!(leaves_match(&store));
        }
    }

    #[test]
    fn quarantine_drops_a_large_value_with_a_corrupt_chunk() {
        for (store, _dir) in stores() {
            let value = big(CHUNK_SIZE_BYTES * 2 + 77);
            write_big(&store, "big", 7, &value);
            let mut paced = 0;
            assert_eq!(
                store.verify("big", v(7), |n| paced += n).unwrap(),
                Some(value.len() as u64)
            );
            assert_eq!(paced, value.len() as u64);
            // A flipped byte in chunk 1.
            let key = chunk_key("big", v(7), 1);
            let raw = store
                .inner
                .engine
                .get(Space::Chunks, &key)
                .unwrap()
                .unwrap();
            let mut bad = raw.to_vec();
            bad[10] ^= 0x40;
            store
                .inner
                .engine
                .apply(vec![Op::Put(Space::Chunks, key, Bytes::from(bad))])
                .unwrap();
            assert!(matches!(
                store.verify("big", v(7), |_| {}),
                Err(Error::Corrupt { .. })
            ));
            assert!(store.quarantine("big", Some(v(7))).unwrap());
            assert!(store.record("big").unwrap().is_none());
            assert!(space_is_empty(&store, Space::Chunks));
            assert!(space_is_empty(&store, Space::ByToken));
            assert!(leaves_match(&store));
            // The good copy of the same version goes in again.
            write_big(&store, "big", 7, &value);
            assert_eq!(read_back(&store, "big"), value);
            assert!(leaves_match(&store));
        }
    }

    #[test]
    fn verify_reports_a_missing_chunk_and_skips_a_replaced_value() {
        for (store, _dir) in stores() {
            let value = big(CHUNK_SIZE_BYTES + 5);
            write_big(&store, "big", 7, &value);
            assert_eq!(store.verify("big", v(6), |_| {}).unwrap(), None);
            store
                .inner
                .engine
                .apply(vec![Op::Delete(Space::Chunks, chunk_key("big", v(7), 1))])
                .unwrap();
            assert!(matches!(
                store.verify("big", v(7), |_| {}),
                Err(Error::Corrupt { .. })
            ));
            assert_eq!(store.verify("absent", v(7), |_| {}).unwrap(), None);
        }
    }

    #[test]
    fn a_write_over_an_unreadable_record_drops_it_first() {
        for (store, _dir) in stores() {
            store
                .write_whole(meta("k", 5, b"old"), Bytes::from_static(b"old"))
                .unwrap();
            store
                .inner
                .engine
                .apply(vec![Op::Put(
                    Space::Meta,
                    b"k".to_vec(),
                    Bytes::from_static(b"\x07garbage"),
                )])
                .unwrap();
            let outcome = store
                .write_whole(meta("k", 5, b"old"), Bytes::from_static(b"old"))
                .unwrap();
            assert!(outcome.applied);
            assert_eq!(store.quarantined(), 1);
            let rec = store.record("k").unwrap().unwrap();
            assert_eq!(store.inline_value(&rec).unwrap().unwrap(), "old");
            assert!(leaves_match(&store));
        }
    }

    #[test]
    fn quarantine_keeps_the_chunks_of_a_write_in_flight() {
        for (store, _dir) in stores() {
            let old = big(CHUNK_SIZE_BYTES + 9);
            write_big(&store, "big", 7, &old);
            let new = big(CHUNK_SIZE_BYTES * 2 + 3);
            let mut header = meta("big", 8, b"");
            header.checksum.clear();
            header.size = 0;
            let mut writer = store.begin_stream(header).unwrap();
            writer.write(&new[..CHUNK_SIZE_BYTES + 1]).unwrap();
            assert!(store.quarantine("big", None).unwrap());
            writer.write(&new[CHUNK_SIZE_BYTES + 1..]).unwrap();
            let sum = blake3::hash(&new);
            assert!(
                writer
                    .finish(new.len() as u64, sum.as_bytes())
                    .unwrap()
                    .applied
            );
            assert_eq!(read_back(&store, "big"), new);
            assert_eq!(
                store.verify("big", v(8), |_| {}).unwrap(),
                Some(new.len() as u64)
            );
            assert!(leaves_match(&store));
        }
    }

    fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        vec![
            (
                Store::open(&StorageOptions {
                    data_dir: None,
                    fsync: false,
                    disk_reserve: 0,
                })
                .unwrap(),
                None,
            ),
            (
                Store::open(&StorageOptions {
                    data_dir: Some(dir.path().to_path_buf()),
                    fsync: false,
                    disk_reserve: 0,
                })
                .unwrap(),
                Some(dir),
            ),
        ]
    }

    #[test]
    fn older_writes_never_replace_newer_ones() {
        for (store, _dir) in stores() {
            let new = store
                .write_whole(meta("k", 20, b"new"), Bytes::from_static(b"new"))
                .unwrap();
            assert!(new.applied);
            let old = store
                .write_whole(meta("k", 10, b"old"), Bytes::from_static(b"old"))
                .unwrap();
            assert!(!old.applied);
            assert_eq!(old.current.timestamp, 20);
            let rec = store.record("k").unwrap().unwrap();
            assert_eq!(
                store.inline_value(&rec).unwrap().unwrap(),
                Bytes::from_static(b"new")
            );
            // A tombstone older than the value does not delete it either.
            assert!(
                !store
                    .write_whole(tombstone("k", 15), Bytes::new())
                    .unwrap()
                    .applied
            );
            assert!(
                store
                    .write_whole(tombstone("k", 25), Bytes::new())
                    .unwrap()
                    .applied
            );
            assert!(store.record("k").unwrap().unwrap().meta.unwrap().deleted);
            // And an old value does not resurrect a deleted key.
            assert!(
                !store
                    .write_whole(meta("k", 22, b"x"), Bytes::from_static(b"x"))
                    .unwrap()
                    .applied
            );
        }
    }

    #[test]
    fn bad_writes_are_rejected() {
        for (store, _dir) in stores() {
            let mut m = meta("k", 1, b"abc");
            m.checksum = Bytes::from(vec![0; 32]);
            assert!(store.write_whole(m, Bytes::from_static(b"abc")).is_err());
            assert!(
                store
                    .write_whole(meta("k", 1, b"ab"), Bytes::from_static(b"abc"))
                    .is_err()
            );
            assert!(store.write_whole(meta("", 1, b""), Bytes::new()).is_err());
            assert!(store.write_whole(meta("k", 0, b""), Bytes::new()).is_err());
            assert!(store.record("k").unwrap().is_none());
        }
    }

    fn big(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Reads every chunk of the committed `key` back.
    fn read_back(store: &Store, key: &str) -> Vec<u8> {
        let rec = store.record(key).unwrap().unwrap();
        let version = rec.meta.as_ref().unwrap().version();
        let mut back = Vec::new();
        for i in 0..rec.chunk_count {
            back.extend_from_slice(&store.read_chunk(key, version, i).unwrap());
        }
        back
    }

    #[test]
    fn concurrent_writes_of_one_version_never_break_the_committed_one() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: 0,
        };
        let value = big(CHUNK_SIZE_BYTES * 2 + 99);
        let sum = blake3::hash(&value);
        let header = || {
            let mut h = meta("same", 9, b"");
            h.checksum.clear();
            h.size = 0;
            h
        };
        {
            let store = Store::open(&options).unwrap();
            let mut late = store.begin_stream(header()).unwrap();
            let mut dropped = store.begin_stream(header()).unwrap();
            let mut crashed = store.begin_stream(header()).unwrap();
            let mut first = store.begin_stream(header()).unwrap();
            first.write(&value).unwrap();
            assert!(
                first
                    .finish(value.len() as u64, sum.as_bytes())
                    .unwrap()
                    .applied
            );
            // The same version again: not applied, and the committed chunks stay.
            late.write(&value).unwrap();
            assert!(
                !late
                    .finish(value.len() as u64, sum.as_bytes())
                    .unwrap()
                    .applied
            );
            assert_eq!(read_back(&store, "same"), value);
            // One abandoned midway.
            dropped.write(&value[..CHUNK_SIZE_BYTES + 5]).unwrap();
            drop(dropped);
            assert_eq!(read_back(&store, "same"), value);
            // One cut off by a crash: its marker stays for the next start.
            crashed.write(&value[..CHUNK_SIZE_BYTES]).unwrap();
            crashed.finished = true; // as if the process died here
            drop(crashed);
            store.persist().unwrap();
        }
        let store = Store::open(&options).unwrap();
        assert_eq!(read_back(&store, "same"), value);
        assert!(space_is_empty(&store, Space::Pending));
    }

    #[test]
    fn streamed_values_are_chunked_and_read_back() {
        for (store, _dir) in stores() {
            let value = big(CHUNK_SIZE_BYTES * 2 + 1234);
            let mut header = meta("big", 5, b"");
            header.checksum.clear();
            header.size = 0;
            let mut writer = store.begin_stream(header).unwrap();
            for piece in value.chunks(70_000) {
                writer.write(piece).unwrap();
            }
            let sum = blake3::hash(&value);
            let outcome = writer.finish(value.len() as u64, sum.as_bytes()).unwrap();
            assert!(outcome.applied);
            let rec = store.record("big").unwrap().unwrap();
            assert_eq!(rec.chunk_count, 3);
            let mut back = Vec::new();
            for i in 0..rec.chunk_count {
                back.extend_from_slice(&store.read_chunk("big", Version::new(5, 1), i).unwrap());
            }
            assert_eq!(back, value);
        }
    }

    #[test]
    fn an_unfinished_stream_leaves_nothing_behind() {
        for (store, _dir) in stores() {
            let mut writer = store.begin_stream(meta("half", 5, b"")).unwrap();
            writer.write(&big(CHUNK_SIZE_BYTES + 10)).unwrap();
            drop(writer);
            assert!(store.record("half").unwrap().is_none());
            assert!(space_is_empty(&store, Space::Chunks));
            assert!(space_is_empty(&store, Space::Pending));
        }
    }

    #[test]
    fn a_stream_whose_trailer_lies_is_not_committed() {
        for (store, _dir) in stores() {
            let mut writer = store.begin_stream(meta("lie", 5, b"")).unwrap();
            writer.write(b"hello").unwrap();
            assert!(writer.finish(5, blake3::hash(b"jello").as_bytes()).is_err());
            assert!(store.record("lie").unwrap().is_none());
        }
    }

    #[test]
    fn chunks_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: false,
            disk_reserve: 0,
        };
        {
            let store = Store::open(&options).unwrap();
            let mut writer = store.begin_stream(meta("crash", 5, b"")).unwrap();
            writer.write(&big(CHUNK_SIZE_BYTES * 2)).unwrap();
            writer.finished = true; // simulate a crash: Drop does not clean up
        }
        let store = Store::open(&options).unwrap();
        assert!(space_is_empty(&store, Space::Chunks));
        assert!(store.record("crash").unwrap().is_none());
    }

    #[test]
    fn a_newer_value_removes_the_old_chunks() {
        for (store, _dir) in stores() {
            let v1 = big(CHUNK_SIZE_BYTES + 1);
            store
                .write_whole(meta("k", 1, &v1), Bytes::from(v1.clone()))
                .unwrap();
            store
                .write_whole(meta("k", 2, b"small"), Bytes::from_static(b"small"))
                .unwrap();
            assert!(space_is_empty(&store, Space::Chunks));
        }
    }

    #[test]
    fn corrupted_chunks_and_records_are_detected() {
        assert!(open_chunk(Bytes::from_static(b"abc")).is_err());
        let mut sealed = seal_chunk(b"hello world").to_vec();
        sealed[0] ^= 1;
        assert!(matches!(
            open_chunk(Bytes::from(sealed)),
            Err(Error::Corrupt { .. })
        ));
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[9, 1, 2]).is_err());
        assert!(decode_record(&[1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn list_pages_through_keys() {
        for (store, _dir) in stores() {
            for k in ["a/1", "a/2", "a/3", "b/1"] {
                store
                    .write_whole(meta(k, 1, b"v"), Bytes::from_static(b"v"))
                    .unwrap();
            }
            let first = store.list("a/", None, 2).unwrap();
            assert_eq!(
                first.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
                ["a/1", "a/2"]
            );
            let next = store.list("a/", Some("a/2"), 2).unwrap();
            assert_eq!(
                next.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
                ["a/3"]
            );
        }
    }

    #[tokio::test]
    async fn group_commit_answers_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StorageOptions {
            data_dir: Some(dir.path().to_path_buf()),
            fsync: true,
            disk_reserve: 0,
        })
        .unwrap();
        let waits: Vec<_> = (0..20)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.sync().await })
            })
            .collect();
        for w in waits {
            w.await.unwrap().unwrap();
        }
    }
}
