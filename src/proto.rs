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
        }
    }
}

impl From<Version> for crate::version::Version {
    fn from(v: Version) -> Self {
        crate::version::Version {
            timestamp: v.timestamp,
            writer: v.writer,
        }
    }
}

impl RecordMeta {
    /// The record's version; absent on the wire means [`Version::ZERO`](crate::version::Version::ZERO).
    pub fn version(&self) -> crate::version::Version {
        self.version.map(Into::into).unwrap_or_default()
    }
}
