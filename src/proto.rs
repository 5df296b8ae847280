//! Types generated from `proto/ringkv.proto` (node-to-node messages and the
//! on-disk record), plus conversions to the library's own types.
//!
//! Pure data: no networking here. `rpc/` serves and calls the `Replica`
//! service; `storage/` encodes [`StoredRecord`]s.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("ringkv.v1");

impl From<crate::version::Version> for Version {
    fn from(v: crate::version::Version) -> Self {
        Version {
            timestamp: v.timestamp,
            writer: v.writer,
            touch: v.touch,
        }
    }
}

impl From<Version> for crate::version::Version {
    fn from(v: Version) -> Self {
        crate::version::Version {
            timestamp: v.timestamp,
            writer: v.writer,
            touch: v.touch,
        }
    }
}

impl RecordMeta {
    /// The metadata of `value`, whole, stored under `key` at `version`: no
    /// content type, no expiry, its blake3 checksum.
    pub fn whole(key: impl Into<String>, version: crate::version::Version, value: &[u8]) -> Self {
        RecordMeta {
            key: key.into(),
            version: Some(version.into()),
            deleted: false,
            content_type: String::new(),
            size: value.len() as u64,
            checksum: bytes::Bytes::copy_from_slice(blake3::hash(value).as_bytes()),
            expires_at: 0,
        }
    }

    /// The record's version; absent on the wire means [`Version::ZERO`](crate::version::Version::ZERO).
    pub fn version(&self) -> crate::version::Version {
        self.version.map(Into::into).unwrap_or_default()
    }

    /// Whether this is a value whose expiry has passed at `now_ms`
    /// (milliseconds since the epoch, cluster time).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        !self.deleted && self.expires_at != 0 && self.expires_at <= now_ms
    }

    /// Whether this reads as absent at `now_ms`: a tombstone or an expired
    /// value (F13, F28).
    pub fn is_dead_at(&self, now_ms: u64) -> bool {
        self.deleted || self.expired_at(now_ms)
    }

    /// The milliseconds `now_ms` a tombstone or expired value has been dead
    /// since (its deletion or its expiry); `None` for a value that has not
    /// expired.
    pub fn dead_since_ms(&self, now_ms: u64) -> Option<u64> {
        if self.deleted {
            Some(self.version().timestamp / 1_000_000)
        } else if self.expired_at(now_ms) {
            Some(self.expires_at)
        } else {
            None
        }
    }
}
