//! `ringkv upload DIR` and `ringkv download DIR` (MyDHT's TestUpload and
//! TestDownload as commands): every file under a directory to keys under a
//! prefix and back, several files at once, with a progress bar on stderr,
//! each file checked by blake3.
//!
//! A file `a/b c.txt` under DIR becomes the key `PREFIX/a/b c.txt` (`a/b
//! c.txt` without `--prefix`). Upload hashes each file as it sends it,
//! reads it back to check it (unless `--no-verify`), then stores a
//! manifest under `PREFIX/.ringkv-manifest`: JSON `{format, files: {path:
//! {size, blake3, timestamp}}}`, merged with the manifest already there, so
//! that several uploads to one prefix add up. Download lists the keys under
//! the prefix on every live member (`/keys` lists one node's keys, and with
//! N < members no node holds them all), adds the files the manifests name,
//! writes each key to DIR through a temporary file and keeps it only when
//! its blake3 matches the manifest's. Keys no manifest names are written
//! and reported unverified. A key whose path would leave DIR (`..`, `.`,
//! an empty component, a leading `/`) is refused.
//!
//! What it does not do: delete keys or files that exist on one side only
//! (it is a copy, not a sync); make two concurrent uploads to one prefix
//! merge their manifests (the last one written wins).
//!
//! `walk.rs` finds the files under DIR and keeps every path inside it,
//! `upload.rs` and `download.rs` move them, `manifest.rs` is the record of
//! what an upload stored; this file holds what they share: key names under
//! a prefix, the progress bar, and the failures reported.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::ops::Output;
use ringkv::error::Error;

mod download;
mod manifest;
mod upload;
mod walk;

pub use download::{DownloadArgs, download};
pub use manifest::MANIFEST_NAME;
pub use upload::{UploadArgs, upload};

/// Files moved at once by default: enough to hide per-request latency on a
/// LAN, few enough not to crowd a small cluster.
const DEFAULT_PARALLEL: usize = 8;

#[derive(Debug, Serialize)]
struct Failure {
    /// Its path relative to DIR (or the key, for a key refused).
    path: String,
    /// Its key, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// What went wrong and what to do.
    error: String,
    /// Machine-readable kind: `checksum_mismatch`, `missing`, `unsafe_path`,
    /// `io`, or the error code of the request that failed.
    code: &'static str,
}

/// The prefix without trailing `/`.
fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}

/// The key of `rel` under `prefix`.
fn key_for(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// What `/keys?prefix=` is given to list the keys under `prefix`.
fn list_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Whether `key` is a manifest (of this prefix or of one below it).
fn is_manifest(key: &str) -> bool {
    key == MANIFEST_NAME || key.ends_with(&format!("/{MANIFEST_NAME}"))
}

/// A byte-counting progress bar on stderr; hidden with `--json` (and by
/// indicatif when stderr is not a terminal).
fn progress_bar(total: u64, out: Output) -> ProgressBar {
    let target = if out.json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Prints a line to stderr above the bar (text output only).
fn note(bar: &ProgressBar, out: Output, line: &str) {
    if !out.json {
        bar.suspend(|| eprintln!("{line}"));
    }
}

/// Reports a file that failed and keeps it for the summary.
fn failed(bar: &ProgressBar, out: Output, failure: Failure, failures: &mut Vec<Failure>) {
    note(
        bar,
        out,
        &format!("FAILED {}: {}", failure.path, failure.error),
    );
    failures.push(failure);
}

/// Megabytes per second.
fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// The code of a request's error, for [`Failure::code`].
fn code_of(err: &Error) -> &'static str {
    super::error_code(err)
}

// ---------------------------------------------------------------- upload --

#[cfg(test)]
mod tests;
