//! Streamed writes of large values: [`StreamWriter`] puts each chunk on
//! disk as it arrives, under a pending marker, and commits the record at
//! the end if the trailer's size and checksum match what arrived.
//!
//! Invariants: nothing of a stream is visible before its record commits;
//! a writer dropped unfinished removes its chunks and marker (unless a
//! record of the same base committed meanwhile: the chunks are its own),
//! and `Store::open` removes those a crash left. Does not decide what is
//! newer: `Store::commit` does.

use bytes::{Bytes, BytesMut};

use super::codec::{CHUNK_CHECKSUM_BYTES, chunk_key, pending_key, seal};
use super::{
    CHUNK_SIZE_BYTES, INLINE_MAX_BYTES, Op, Space, Staged, Store, WriteOutcome, check_meta,
};
use crate::error::{Error, Result};
use crate::proto::{RecordMeta, StoredRecord};

impl Store {
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
    pub(super) finished: bool,
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
