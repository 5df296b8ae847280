//! The manifest an upload stores under `PREFIX/.ringkv-manifest`: what
//! each file was (size, blake3, version timestamp), so that a download
//! can check what it fetched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ringkv::client::Client;

/// Name of the manifest key under a prefix.
pub const MANIFEST_NAME: &str = ".ringkv-manifest";

/// Version of the manifest's format.
pub(super) const MANIFEST_FORMAT: u32 = 1;

/// What an upload recorded about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Its length in bytes.
    pub size: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
    /// Timestamp of the version the upload stored (F11).
    pub timestamp: u64,
}

/// The manifest stored under `PREFIX/.ringkv-manifest`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Path relative to the prefix (`/`-separated) → what was stored.
    pub files: BTreeMap<String, ManifestEntry>,
}

/// The manifest stored under `key`, an empty one when there is none, or
/// why it is unusable.
pub(super) async fn fetch_manifest(
    client: &Client,
    key: &str,
) -> ringkv::error::Result<Result<Option<Manifest>, String>> {
    let Some(bytes) = client.get_bytes(key).await? else {
        return Ok(Ok(None));
    };
    Ok(serde_json::from_slice::<Manifest>(&bytes)
        .map(Some)
        .map_err(|e| format!("the manifest {key} is not one: {e}")))
}
