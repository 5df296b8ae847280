//! The seam between ringkv's record logic and the embedded engine: three
//! ordered byte maps ("spaces") with atomic multi-space batches.
//!
//! [`FjallEngine`] is the real one (an LSM tree on disk, see ARCHITECTURE.md
//! for why fjall). [`MemoryEngine`] backs `--in-memory` nodes (tests and
//! demos) with the same semantics and no durability.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::RwLock;

use bytes::Bytes;
use fjall::config::{PartitioningPolicy, PinningPolicy};
use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};

use crate::error::{Error, Result};

/// Memtable of the records: 16 MiB of small records between flushes.
const META_MEMTABLE_BYTES: u64 = 16 << 20;
/// Memtable of the chunks: 4 MiB (four chunks), so streaming a large value
/// holds little of it in memory; the bytes go to blob files on flush
/// (fjall's 64 MiB default let a 1 GiB upload grow a node past 128 MiB).
/// With one sealed memtable allowed this measured 105–114 MB/s for a 1 GiB
/// value with N = 3 here; 4 MiB with none allowed fell to 87 MB/s.
const CHUNK_MEMTABLE_BYTES: u64 = 4 << 20;
/// Sealed chunk memtables allowed to wait for their flush before streamed
/// writes wait too (see [`Engine::chunk_backlog`]).
const MAX_SEALED_CHUNK_MEMTABLES: usize = 1;
/// Block cache for reads (records and index blocks; chunks are read once).
const BLOCK_CACHE_BYTES: u64 = 8 << 20;
/// How often a shutdown flush checks whether the memtables are written.
const FLUSH_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The maps a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// One [`StoredRecord`](crate::rpc::proto::StoredRecord) per key.
    Meta,
    /// Value chunks of large values, keyed by key, version and index.
    Chunks,
    /// Markers of streamed writes in progress, cleaned up after a crash.
    Pending,
    /// Writes kept for replicas that missed them (F15), keyed by replica.
    Hints,
    /// Every key by its ring token: what range scans and repair walk.
    ByToken,
}

/// One change inside an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets a key.
    Put(Space, Vec<u8>, Bytes),
    /// Removes a key.
    Delete(Space, Vec<u8>),
}

/// An ordered key-value engine with atomic batches.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>>;
    /// Up to `limit` entries whose key starts with `prefix` and is after
    /// `start`, in key order.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>>;
    /// Up to `limit` keys starting with `prefix` after `start`, in order,
    /// without reading their values: chunks live in blob files, so a key
    /// scan neither loads megabytes nor fails on a value whose bytes are
    /// corrupt.
    fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>>;
    /// Applies every op or none.
    fn apply(&self, ops: Vec<Op>) -> Result<()>;
    /// Makes every applied batch durable against power loss (fsync).
    fn persist(&self) -> Result<()>;
    /// Writes the memtables out to the engine's tables (shutdown), so that
    /// the next start has no journal to replay; waits at most `deadline`.
    fn flush(&self, _deadline: std::time::Duration) -> Result<()> {
        Ok(())
    }
    /// Bytes the engine uses on disk (in memory: of the keys and values held).
    fn disk_bytes(&self) -> u64;
    /// Whether chunk writes are ahead of the engine's flushes. fjall keeps
    /// accepting writes while memtables wait to be flushed, so a fast stream
    /// would pile them up in memory; streamed writes wait while this holds.
    fn chunk_backlog(&self) -> bool {
        false
    }
}

/// fjall: a pure-Rust LSM tree, one database with a keyspace per [`Space`].
pub struct FjallEngine {
    /// The database; owns the journal shared by all keyspaces.
    db: Database,
    /// Records, small and hot: no key-value separation.
    meta: Keyspace,
    /// Chunks of up to 1 MiB: key-value separated so compaction never
    /// rewrites value bytes.
    chunks: Keyspace,
    /// Pending-write markers.
    pending: Keyspace,
    /// Hinted writes.
    hints: Keyspace,
    /// Keys in ring order.
    by_token: Keyspace,
}

impl FjallEngine {
    /// Opens (or creates) the engine under `path`.
    pub fn open(path: &Path) -> Result<FjallEngine> {
        std::fs::create_dir_all(path)?;
        let db = Database::builder(path)
            .cache_size(BLOCK_CACHE_BYTES)
            // Values are often compressed files already; LZ4 on every chunk
            // in the journal and blob files cost CPU and buffers for nothing.
            .journal_compression(CompressionType::None)
            .open()
            .map_err(Error::from_storage)?;
        let meta = db
            .keyspace("meta", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(META_MEMTABLE_BYTES)
                    // Every write reads its key's record first, and most
                    // keys written are new: each lookup asks the filter of
                    // every level. fjall pins only the first level's
                    // filters and partitions the deeper ones through the
                    // block cache, so past a few million keys each lookup
                    // read megabytes of filter blocks from the table files.
                    // Whole filters, pinned on every level, cost about
                    // 10 bits a key of memory.
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .filter_block_partitioning_policy(PartitioningPolicy::all(false))
                    // The same for the index blocks a lookup reads next
                    // (fjall pins them on the first two levels only, and
                    // the block cache is small): with 10 M keys stored a
                    // GET cost the nodes 8 ms of CPU, 164 µs with these
                    // pinned (and their RSS fell, 336-384 to 235-256 MiB).
                    .index_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_partitioning_policy(PartitioningPolicy::all(false))
            })
            .map_err(Error::from_storage)?;
        let chunks = db
            .keyspace("chunks", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(CHUNK_MEMTABLE_BYTES)
                    .with_kv_separation(Some(
                        KvSeparationOptions::default().compression(CompressionType::None),
                    ))
            })
            .map_err(Error::from_storage)?;
        let pending = db
            .keyspace("pending", KeyspaceCreateOptions::default)
            .map_err(Error::from_storage)?;
        let hints = db
            .keyspace("hints", KeyspaceCreateOptions::default)
            .map_err(Error::from_storage)?;
        let by_token = db
            .keyspace("by_token", KeyspaceCreateOptions::default)
            .map_err(Error::from_storage)?;
        Ok(FjallEngine {
            db,
            meta,
            chunks,
            pending,
            hints,
            by_token,
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        match space {
            Space::Meta => &self.meta,
            Space::Chunks => &self.chunks,
            Space::Pending => &self.pending,
            Space::Hints => &self.hints,
            Space::ByToken => &self.by_token,
        }
    }
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self
            .keyspace(space)
            .get(key)
            .map_err(Error::from_storage)?
            .map(Bytes::from))
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let start = match start {
            Bound::Unbounded => Bound::Included(prefix.to_vec()),
            other => other,
        };
        let mut out = Vec::new();
        for guard in self
            .keyspace(space)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (key, value) = guard.into_inner().map_err(Error::from_storage)?;
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((key.to_vec(), Bytes::from(value)));
        }
        Ok(out)
    }

    fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let start = match start {
            Bound::Unbounded => Bound::Included(prefix.to_vec()),
            other => other,
        };
        let mut out = Vec::new();
        for guard in self
            .keyspace(space)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let key = guard.key().map_err(Error::from_storage)?;
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(key.to_vec());
        }
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                // Zero-copy: fjall's `bytes_1` feature keeps our buffer.
                Op::Put(space, key, value) => batch.insert(self.keyspace(space), key, value),
                Op::Delete(space, key) => batch.remove(self.keyspace(space), key),
            }
        }
        batch.commit().map_err(Error::from_storage)
    }

    fn persist(&self) -> Result<()> {
        self.db
            .persist(PersistMode::SyncData)
            .map_err(Error::from_storage)
    }

    fn flush(&self, deadline: std::time::Duration) -> Result<()> {
        // fjall 3.1 has no public flush; `rotate_memtable` (public, hidden
        // from its docs) seals the active memtable and queues its flush,
        // which its workers run; we wait until nothing sealed is left.
        let started = std::time::Instant::now();
        let spaces = [
            &self.meta,
            &self.chunks,
            &self.pending,
            &self.hints,
            &self.by_token,
        ];
        for keyspace in spaces {
            keyspace.rotate_memtable().map_err(Error::from_storage)?;
        }
        while spaces.iter().any(|k| k.sealed_memtable_count() > 0) {
            if started.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: "flushing the memtables".into(),
                });
            }
            std::thread::sleep(FLUSH_POLL);
        }
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn chunk_backlog(&self) -> bool {
        self.chunks.sealed_memtable_count() > MAX_SEALED_CHUNK_MEMTABLES
    }
}

/// Ordered maps in memory; `--in-memory` nodes lose everything on exit.
#[derive(Default)]
pub struct MemoryEngine {
    /// One map per space. A std lock: never held across an await.
    spaces: RwLock<BTreeMap<Space, BTreeMap<Vec<u8>, Bytes>>>,
    /// Bytes of every key and value held, kept by `apply` under the lock.
    bytes: std::sync::atomic::AtomicU64,
}

impl Engine for MemoryEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Bytes>> {
        let spaces = self.spaces.read().unwrap_or_else(|p| p.into_inner());
        Ok(spaces.get(&space).and_then(|m| m.get(key)).cloned())
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let start = match start {
            Bound::Unbounded => Bound::Included(prefix.to_vec()),
            other => other,
        };
        let spaces = self.spaces.read().unwrap_or_else(|p| p.into_inner());
        let Some(map) = spaces.get(&space) else {
            return Ok(Vec::new());
        };
        Ok(map
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
        start: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let entries = self.scan(space, prefix, start, limit)?;
        Ok(entries.into_iter().map(|(k, _)| k).collect())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut spaces = self.spaces.write().unwrap_or_else(|p| p.into_inner());
        let (mut added, mut removed) = (0u64, 0u64);
        let size = |key: &[u8], value: &Bytes| (key.len() + value.len()) as u64;
        for op in ops {
            match op {
                Op::Put(space, key, value) => {
                    added += size(&key, &value);
                    let map = spaces.entry(space).or_default();
                    if let Some(old) = map.insert(key.clone(), value) {
                        removed += size(&key, &old);
                    }
                }
                Op::Delete(space, key) => {
                    if let Some(old) = spaces.entry(space).or_default().remove(&key) {
                        removed += size(&key, &old);
                    }
                }
            }
        }
        let bytes = &self.bytes;
        bytes.fetch_add(added, std::sync::atomic::Ordering::Relaxed);
        bytes.fetch_sub(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(engine: &dyn Engine) {
        engine
            .apply(vec![
                Op::Put(Space::Meta, b"a/1".to_vec(), Bytes::from_static(b"x")),
                Op::Put(Space::Meta, b"a/2".to_vec(), Bytes::from_static(b"y")),
                Op::Put(Space::Meta, b"b/1".to_vec(), Bytes::from_static(b"z")),
                Op::Put(Space::Chunks, b"a/1".to_vec(), Bytes::from_static(b"c")),
            ])
            .unwrap();
        assert_eq!(
            engine.get(Space::Meta, b"a/2").unwrap().unwrap(),
            Bytes::from_static(b"y")
        );
        let a = engine
            .scan(Space::Meta, b"a/", Bound::Unbounded, 10)
            .unwrap();
        assert_eq!(a.len(), 2);
        let after = engine
            .scan(Space::Meta, b"a/", Bound::Excluded(b"a/1".to_vec()), 10)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].0, b"a/2");
        let limited = engine.scan(Space::Meta, b"", Bound::Unbounded, 2).unwrap();
        assert_eq!(limited.len(), 2);
        let keys = engine
            .scan_keys(Space::Meta, b"a/", Bound::Excluded(b"a/1".to_vec()), 10)
            .unwrap();
        assert_eq!(keys, [b"a/2".to_vec()]);
        engine
            .apply(vec![Op::Delete(Space::Meta, b"a/1".to_vec())])
            .unwrap();
        assert!(engine.get(Space::Meta, b"a/1").unwrap().is_none());
        assert!(engine.get(Space::Chunks, b"a/1").unwrap().is_some());
        engine.persist().unwrap();
        engine.flush(std::time::Duration::from_secs(30)).unwrap();
        assert!(engine.get(Space::Meta, b"a/2").unwrap().is_some());
    }

    #[test]
    fn memory_engine_semantics() {
        exercise(&MemoryEngine::default());
    }

    #[test]
    fn fjall_engine_semantics_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = FjallEngine::open(dir.path()).unwrap();
            exercise(&engine);
        }
        let engine = FjallEngine::open(dir.path()).unwrap();
        assert!(engine.get(Space::Meta, b"b/1").unwrap().is_some());
        assert!(engine.get(Space::Meta, b"a/1").unwrap().is_none());
    }
}
