//! Hints (F15): writes a replica missed, kept in the `hints` space under
//! `target ++ key ++ version` until `lifecycle/hints.rs` delivers them.
//!
//! Invariants: a hint is the record as written (its value inline when
//! small; a large one is fetched from a replica at delivery); the count of
//! hints pending is taken at open and kept by every add and removal. Does
//! not deliver hints nor decide when one is obsolete.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::codec::{decode_record, encode_record, hint_key, hint_prefix, hint_target};
use super::{Op, Space, Store, step};
use crate::error::{Error, Result};
use crate::proto::StoredRecord;

impl Store {
    /// Counts the hints kept from an earlier run.
    pub(super) fn count_hints(&self) -> Result<()> {
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

    /// Hints waiting for delivery to other replicas.
    pub fn hints_pending(&self) -> u64 {
        self.inner.hints.load(Ordering::Relaxed)
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
}
