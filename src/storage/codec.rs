//! The byte layout of every space (see the layout in the module doc of
//! `storage`): keys of chunks, pending markers, the token index and hints,
//! token-index values, chunk checksums and record framing.
//!
//! Invariants: an encoding here is the on-disk format, so changing one
//! breaks data dirs already written; every decoder takes arbitrary bytes
//! and answers `None` or `Corrupt`, never panics. Does not read or write
//! the engine: callers do.

use bytes::{Bytes, BytesMut};
use prost::Message;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::proto::{RecordMeta, StoredRecord};
use crate::ring::Token;
use crate::version::Version;

/// Format byte in front of every encoded record.
pub(super) const RECORD_FORMAT_V1: u8 = 1;
/// Checksum bytes appended to every chunk.
pub(super) const CHUNK_CHECKSUM_BYTES: usize = 8;

/// The key and version a pending marker names.
pub(super) fn decode_pending(marker: &[u8]) -> Option<(String, Version)> {
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

pub(super) fn key_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + 20);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Keyed by the version's base: see the module doc.
pub(super) fn pending_key(key: &str, version: Version) -> Vec<u8> {
    let version = version.base();
    let mut out = key_prefix(key);
    out.extend_from_slice(&version.timestamp.to_be_bytes());
    out.extend_from_slice(&version.writer.to_be_bytes());
    out
}

pub(super) fn chunk_key(key: &str, version: Version, index: u32) -> Vec<u8> {
    let mut out = pending_key(key, version);
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// Appends the chunk's checksum, in place.
pub(super) fn seal(mut chunk: BytesMut) -> Bytes {
    let sum = xxh3_64(&chunk);
    chunk.extend_from_slice(&sum.to_le_bytes());
    chunk.freeze()
}

pub(super) fn seal_chunk(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + CHUNK_CHECKSUM_BYTES);
    out.extend_from_slice(data);
    seal(out)
}

pub(super) fn open_chunk(mut raw: Bytes) -> Result<Bytes> {
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

/// What the token index and the hash-tree leaves know of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    /// Its version.
    pub(super) version: Version,
    /// A tombstone.
    pub(super) deleted: bool,
    /// Its expiry, ms since the epoch; 0: never.
    pub(super) expires_at: u64,
}

impl Held {
    pub(super) fn of(meta: &RecordMeta) -> Held {
        Held {
            version: meta.version(),
            deleted: meta.deleted,
            expires_at: meta.expires_at,
        }
    }
}

/// `token ++ key`: where a key sits in the token index.
pub(super) fn token_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&Token::of_key(key.as_bytes()).0.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// What a token-index value says is held: 17 bytes, or 33 with an expiry
/// change or an expiry.
pub(super) fn decode_token_entry(value: &[u8]) -> Option<Held> {
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
pub(super) fn token_entry(held: Held) -> Bytes {
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
pub(super) fn hint_prefix(target: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + target.len() + 64);
    out.extend_from_slice(&(target.len() as u16).to_be_bytes());
    out.extend_from_slice(target.as_bytes());
    out
}

/// `u16 len + target + u16 len + key + timestamp + writer`, then `+ touch`
/// when set.
pub(super) fn hint_key(target: &str, key: &str, version: Version) -> Vec<u8> {
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

pub(super) fn hint_target(raw: &[u8]) -> Option<&str> {
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
pub(super) fn decode_record_of(key: &[u8], raw: &[u8]) -> Result<StoredRecord> {
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
