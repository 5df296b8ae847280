//! Corrupt copies: [`Store::quarantine`] drops a copy that fails its
//! checks (found by a read, a write or the scrub) so that ordinary repair
//! brings the good one back, and [`Store::verify`] reads back every byte
//! of a value and checks it (the scrub, `lifecycle/scrub.rs`).
//!
//! Invariants: a quarantine removes the record, its index entry, its chunks
//! (not those of a streamed write in flight) and its share of the leaves,
//! in one batch under the key's lock, even when the record cannot be read.
//! Does not fetch the good copy: repair does.

use std::ops::Bound;

use super::codec::{Held, decode_token_entry, key_prefix, token_key};
use super::{Op, Space, Store};
use crate::error::{Error, Result};
use crate::version::Version;

impl Store {
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
    pub(super) fn quarantine_locked(&self, key: &str, expected: Option<Version>) -> Result<bool> {
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
}
