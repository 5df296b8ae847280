//! The token index and the hash-tree leaves: every key by its ring token
//! (`by_token`), read a ring range at a time by repair, transfers and
//! collection, and the leaves of `merkle.rs` kept in memory.
//!
//! Invariants: the index entry of a key is written in the same batch as
//! its record, so the two agree; a leaf is the XOR of its held entries'
//! hashes, toggled out and in by every commit after its batch is applied,
//! and rebuilt from the index at open. Also counts live keys and, per
//! leaf, tombstones and expiring values. Does not decide what is newer
//! (`Store::commit` does) nor compare trees (`merkle.rs`).

use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::codec::{Held, decode_record_of, decode_token_entry, token_entry, token_key};
use super::{Op, Space, Store, step};
use crate::error::{Error, Result};
use crate::merkle;
use crate::ring::{Token, TokenRange};
use crate::version::Version;

impl Store {
    /// Computes the hash-tree leaves from the token index.
    pub(super) fn load_leaves(&self) -> Result<()> {
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

    /// XORs an entry into (`added`) or out of its leaf, and counts the
    /// leaf's tombstones and expiring values and the store's live keys.
    pub(super) fn toggle_leaf(&self, key: &str, held: Held, added: bool) {
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
    pub(super) fn index_if_missing(&self) -> Result<()> {
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
